"""Daemon start-up as systemd and a technician see it: real subprocesses, real ports, real ptys.

Issue 14: a restart right after a stop with a subscriber connected (item 9), a start that
fails half-way (item 10), and two daemons on one serial port (item 8).
"""
import os
import signal
import subprocess
import time

from ionstream.subscriber import Subscriber
from support import IONSTREAM, free_port


def _start(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(IONSTREAM + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then the exit status and stderr (killed if it does not end)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def _next_message(sub: Subscriber, proc: subprocess.Popen, timeout: float = 30.0):
    """The next message, polling in 1-s steps so a daemon that exited fails the test at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sub.recv()
        except TimeoutError:
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {proc.returncode}: {proc.stderr.read()}") from None
            assert time.monotonic() < deadline, "no message from the daemon"


def test_restart_at_once_after_a_stop_with_a_subscriber_connected(tmp_path):
    """The stopped daemon's side of each subscriber connection stays in TIME_WAIT for ~60 s; a
    daemon started at once on the same ports must start (ZeroMQ binds with SO_REUSEADDR)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ["run", "--source", "sim://?rate=50&samples=1024", "--backend", "none", "--no-status-line",
            "--endpoint", endpoint, "--control", f"tcp://127.0.0.1:{free_port()}"]
    with Subscriber(endpoint, topics=["peaks"], timeout=1.0) as sub:
        first = _start(args, tmp_path)
        try:
            session = _next_message(sub, first).header["session"]  # connected, and receiving
        finally:
            code, err = _stop(first)
        assert code == 0, err
        second = _start(args, tmp_path)
        try:
            # The same subscriber, reconnected by ZeroMQ to the new daemon (a new session); what
            # the first daemon sent before it stopped may still be queued here.
            while _next_message(sub, second).header["session"] == session:
                pass
        finally:
            code, err = _stop(second)
    assert code == 0, err
    assert "cannot be bound" not in err and "Traceback" not in err
