"""Daemon start-up as systemd and a technician see it: real subprocesses, real ports, real ptys.

Issue 14: a restart right after a stop with a subscriber connected (item 9), a start that
fails half-way (item 10), and two daemons on one serial port (item 8).
"""
import os
import signal
import fcntl
import subprocess
import time
import tty

import pytest

from ionstream.client.subscriber import Subscriber
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


# ---- item 10: a start that fails half-way ----------------------------------------------------
def _tensorrt_usable() -> bool:
    from inference.backend import tensorrt_available

    return tensorrt_available()[0]


needs_no_tensorrt = pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is usable here: "
                                       "--backend tensorrt would start")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "level=error" in line or line.startswith("ERROR")]


@needs_no_tensorrt
def test_backend_tensorrt_without_tensorrt_is_one_clear_line_and_exit_2(tmp_path):
    proc = _start(["run", "--backend", "tensorrt", "--no-status-line", "--endpoint",
                   f"tcp://127.0.0.1:{free_port()}", "--control", f"tcp://127.0.0.1:{free_port()}"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    errors = _error_lines(err)
    assert len(errors) == 1, err
    assert "tensorrt" in errors[0].lower() and "--backend auto" in errors[0], errors[0]


PIPELINE_THREADS = ("ionstream-pub", "ionstream-control", "batcher", "dsp", "sequencer", "acquisition",
                    "recorder")


@pytest.fixture
def held_pty():
    """A pty slave path whose port lock (flock, as pyserial's exclusive=True takes it) this test holds."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    holder = os.open(path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield path
    for fd in (holder, slave, master):
        os.close(fd)


def _refused_config(case: str, held_pty: str):
    from ionstream.config import Config

    config = Config()
    config.publish.endpoint = f"tcp://127.0.0.1:{free_port()}"
    config.publish.control = f"tcp://127.0.0.1:{free_port()}"
    if case == "tensorrt":
        if _tensorrt_usable():
            pytest.skip("TensorRT is usable here: --backend tensorrt would start")
        config.inference.backend = "tensorrt"      # fails in pipeline.start(), before control starts
    else:
        config.inference.backend = "none"
        config.source.url = f"serial://{held_pty}"  # fails in start_acquisition(), after control started
    return config


@pytest.mark.parametrize("case", ["tensorrt", "serial-busy"])
def test_a_failed_start_closes_every_socket_and_thread(case, held_pty):
    """In-process, so the test can look: after the refused start the PUB and control ports bind
    again and none of the pipeline's threads is left running."""
    import threading

    import zmq

    from ionstream.daemon.lifecycle import EXIT_CONFIG, Daemon

    config = _refused_config(case, held_pty)
    before = set(threading.enumerate())
    daemon = Daemon(config, status_line=False)
    assert daemon._start() == EXIT_CONFIG
    # Every thread the daemon starts has its own name; none may outlive the refused start.
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not [name for name in left if name.startswith(PIPELINE_THREADS)], left
    sock = zmq.Context.instance().socket(zmq.PUB)
    try:
        sock.bind(config.publish.endpoint)   # would fail with EADDRINUSE if a socket were left open
        sock.bind(config.publish.control)
    finally:
        sock.close(0)


# ---- item 8: two daemons on one serial port ------------------------------------------------
def test_a_second_daemon_on_the_same_serial_port_refuses_to_start(tmp_path):
    from instrument.sources.serial import lock_holders

    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    link = tmp_path / "ttyIS0"   # the daemons use a udev-style symlink to it, as in the field
    link.symlink_to(port)

    def args() -> list[str]:
        return ["run", "--source", f"serial://{link}", "--backend", "none", "--no-status-line",
                "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--control", f"tcp://127.0.0.1:{free_port()}"]

    first = _start(args(), tmp_path)
    second = None
    try:
        deadline = time.monotonic() + 30
        while lock_holders(port) != [first.pid]:  # the first daemon has opened (and locked) the port
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first daemon never opened the port"
            time.sleep(0.02)
        second = _start(args(), tmp_path)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        assert "Traceback" not in err, err
        errors = _error_lines(err)
        assert len(errors) == 1, err
        assert f"serial port {link} ({port}) is in use by another process (pid {first.pid})" in errors[0], errors[0]
        assert first.poll() is None  # the first one goes on
        assert lock_holders(port) == [first.pid]
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.communicate()
        code, err = _stop(first)
        os.close(master)
        os.close(slave)
    assert code == 0, err


def test_record_on_a_held_serial_port_refuses_to_start(tmp_path, held_pty):
    proc = _start(["record", "--source", f"serial://{held_pty}", "--out", "busy.isc", "--duration", "5s"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    errors = _error_lines(err)
    assert len(errors) == 1, err
    assert f"serial port {held_pty} is in use by another process (pid {os.getpid()})" in errors[0], err
