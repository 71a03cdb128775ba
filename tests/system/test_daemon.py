"""The daemon as a technician runs it: a real subprocess, real signals, real files."""
import os
import queue
import signal
import subprocess
import threading
import time

import pytest
from support import IONSTREAM, free_port, wait_until


def _endpoints() -> list[str]:
    return ["--endpoint", f"tcp://127.0.0.1:{free_port()}", "--control", f"tcp://127.0.0.1:{free_port()}"]


def _wait_for_scans(control: str, scans: int, proc, timeout: float = 60.0) -> None:
    """Poll the daemon's control socket until it has published ``scans`` scans (no sleeping and hoping)."""
    from ionstream.client.control import ControlClient, ControlError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with ControlClient(control, timeout=1.0) as client:
                if client.request({"cmd": "status"}).get("scans", 0) >= scans:
                    return
        except ControlError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {scans} scans within {timeout} s (exit {proc.poll()})")


def _start(args, tmp_path, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(IONSTREAM + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def test_run_on_the_simulator_stops_cleanly_on_sigterm(tmp_path):
    endpoints = _endpoints()
    proc = _start(["run", "--source", "sim://?rate=50&samples=8192", "--workers", "2",
                   "--record", "run1.isc"] + endpoints, tmp_path)
    try:
        _wait_for_scans(endpoints[3], 60, proc)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped:" in err and "Traceback" not in err
    capture = tmp_path / "captures" / "run1.isc"
    assert capture.exists() and capture.stat().st_size > 8192 * 2 * 50

    from instrument.capture import capture_info

    info = capture_info(capture)
    assert info.scans >= 50 and not info.torn_tail


def test_duration_ends_the_run_with_exit_0(tmp_path):
    proc = _start(["run", "--source", "sim://?rate=100&samples=4096", "--duration", "2s"] + _endpoints(), tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    scans = int(err.split("stopped: ")[1].split(" scans")[0])
    # sim:// never ends by itself, so exiting 0 is --duration's doing; no upper bound on the count,
    # which depends on how late a loaded host notices the deadline (a timed assert)
    assert scans >= 1


def test_bad_config_key_is_named_and_nothing_starts(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[dsp]\nworkerz = 2\n[ring]\nslots = "many"\n')
    proc = _start(["run", "-c", str(cfg)], tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "dsp.workerz: unknown key" in err and "ring.slots: expected an integer" in err


def test_port_in_use_is_reported_before_start(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _start(["run", "--endpoint", f"tcp://127.0.0.1:{port}", "--control", ""], tmp_path)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "publish.endpoint" in err and str(port) in err


def test_finite_replay_runs_to_the_end(tmp_path):
    rec = _start(["record", "--source", "sim://?rate=0&samples=2048&count=300", "--out", "cap.isc"], tmp_path)
    _, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    proc = _start(["run", "--source", f"replay://{tmp_path / 'cap.isc'}?speed=max"] + _endpoints(), tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: 300 scans" in err


def _stderr_lines(proc) -> "queue.Queue[str]":
    """A queue that a reader thread fills with ``proc``'s stderr lines (it ends with the pipe)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    return lines


def _read_until(proc, lines: "queue.Queue[str]", text: str, timeout: float = 60.0) -> list[str]:
    """Lines from ``lines`` up to the first that contains ``text`` (AssertionError at the deadline
    or if the process ends first): a deadline even when no line comes."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            assert proc.poll() is None, f"exited ({proc.returncode}) before {text!r}: {''.join(seen)}"
            continue
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout} s: {''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_exits_at_once(tmp_path, sig):
    """A second signal during the drain exits at once with 128 + signal (ionstream.daemon.signals).
    A source that never opens keeps the daemon reconnecting, so the drain takes about a second:
    the second signal is sent once the daemon has logged that it is stopping (the first one was
    handled), never two back to back (the kernel may merge two identical pending signals)."""
    proc = _start(["run", "--source", f"tcp://127.0.0.1:{free_port()}"] + _endpoints(), tmp_path)
    try:
        lines = _stderr_lines(proc)
        _read_until(proc, lines, "running:")
        proc.send_signal(sig)
        _read_until(proc, lines, "stopping:")
        assert proc.poll() is None, "the daemon finished its drain before the second signal could be sent"
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig


def test_sigkill_mid_recording_then_replay(tmp_path):
    """`ionstream record` killed with SIGKILL: the capture replays up to its last whole frame."""
    proc = _start(["record", "--source", "sim://?rate=400&samples=4096", "--out", "kill.isc"], tmp_path)
    capture = tmp_path / "kill.isc"
    # over 100 frames of 4096 samples (8 KiB each) on disk before the kill: polled, not slept for
    assert wait_until(lambda: capture.exists() and capture.stat().st_size > 120 * 8192, timeout=60)
    proc.kill()
    proc.communicate(timeout=10)
    from instrument.capture import capture_info
    from instrument.frames import FrameDecoder
    from instrument.sources import open_source

    capture = tmp_path / "kill.isc"
    info = capture_info(capture)
    assert info.scans >= 100, info
    # Replay through the real source and decoder: every frame whole, none corrupt.
    source = open_source(f"replay://{capture}?speed=max")
    source.open()
    decoder, buf, frames = FrameDecoder(), bytearray(1 << 20), 0
    from instrument.sources import EndOfSource

    try:
        while True:
            n = source.readinto(memoryview(buf))
            frames += sum(1 for _ in decoder.feed(memoryview(buf)[:n]))
    except EndOfSource:
        pass
    assert frames == info.scans + info.status_frames
    assert decoder.stats.payload_crc_errors == 0 and decoder.stats.header_crc_errors == 0


def test_recording_never_overwrites(tmp_path):
    (tmp_path / "taken.isc").write_bytes(b"precious")
    proc = _start(["record", "--source", "sim://?count=5", "--out", "taken.isc"], tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "already exists" in err
    assert (tmp_path / "taken.isc").read_bytes() == b"precious"
