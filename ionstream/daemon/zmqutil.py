"""Small ZeroMQ helpers shared by the daemon's sockets (publisher, control server)."""
from __future__ import annotations

import time

import zmq

__all__ = ["close_and_wait"]


def close_and_wait(sock: zmq.Socket, timeout_ms: int) -> None:
    """Close ``sock`` (with its linger) and wait until ZeroMQ has really closed it.

    zmq_close() returns at once and the reaper thread closes the listener later, so binding
    the same endpoint again right after close() could fail. A monitor reports
    EVENT_MONITOR_STOPPED when the socket is gone: after that the endpoint is free. (unbind()
    first would be quicker but discards messages still queued for subscribers.)
    """
    try:
        monitor = sock.get_monitor_socket(zmq.EVENT_CLOSED | zmq.EVENT_MONITOR_STOPPED)
    except zmq.ZMQError:
        sock.close()
        return
    try:
        sock.close()
        deadline = time.monotonic() + timeout_ms / 1000
        while monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            from zmq.utils.monitor import recv_monitor_message

            if recv_monitor_message(monitor)["event"] == zmq.EVENT_MONITOR_STOPPED:
                break
    finally:
        monitor.close(0)
