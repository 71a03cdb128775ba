"""`ionstream simulate` as a user runs it: a real subprocess writing to a real file, stdout,
a kernel pseudo-terminal and a TCP socket on 127.0.0.1."""
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tty

import pytest

from instrument.frames import FrameDecoder, FrameType
from support import wait_until

IONSTREAM = [sys.executable, "-P", "-m", "ionstream.cli"]
SMALL = ["--samples", "4096"]


def _start(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(IONSTREAM + ["simulate"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, **kw)


def _scans(data: bytes) -> tuple[list[int], FrameDecoder]:
    decoder = FrameDecoder()
    scans = [f.header.scan_number for f in decoder.feed(data) if f.header.frame_type == FrameType.SCAN]
    return scans, decoder


def _first_line(proc, timeout=30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no first line from `ionstream simulate`"
    return proc.stdout.readline().decode().strip()


def test_out_file_decodes(tmp_path):
    out = tmp_path / "frames.bin"
    proc = subprocess.run(IONSTREAM + ["simulate", "--count", "25", "--rate", "0", "--out", str(out)] + SMALL,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    scans, decoder = _scans(out.read_bytes())
    assert scans == list(range(25))
    assert decoder.stats.bytes_skipped == 0 and decoder.stats.status_frames == 2


def test_stdout_is_the_same_stream_as_the_file(tmp_path):
    out = tmp_path / "frames.bin"
    args = ["--count", "10", "--rate", "0", "--seed", "3"] + SMALL
    subprocess.run(IONSTREAM + ["simulate", "--out", str(out)] + args, check=True, capture_output=True, timeout=60)
    piped = subprocess.run(IONSTREAM + ["simulate"] + args, check=True, capture_output=True, timeout=60)
    assert piped.stdout == out.read_bytes()


def test_refuses_binary_to_a_terminal():
    master, slave = os.openpty()
    try:
        proc = subprocess.run(IONSTREAM + ["simulate", "--count", "1"] + SMALL, stdout=slave,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"refusing to write binary frames to a terminal" in proc.stderr


def test_pty_delivers_frames_to_a_late_reader():
    proc = _start(["--pty", "--rate", "100"] + SMALL)
    fd = None
    try:
        line = _first_line(proc)
        assert line.startswith("pty: /dev/")
        time.sleep(0.5)  # the reader is not there yet: frames are dropped whole, the run goes on
        assert proc.poll() is None
        fd = os.open(line.split(": ", 1)[1], os.O_RDONLY | os.O_NOCTTY)
        tty.setraw(fd)
        decoder = FrameDecoder()
        scans = []
        deadline = time.monotonic() + 20
        while len(scans) < 40 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                for f in decoder.feed(os.read(fd, 1 << 16)):
                    if f.header.frame_type == FrameType.SCAN:
                        scans.append(f.header.scan_number)
        assert len(scans) >= 40
        tail = scans[-30:]
        assert tail == list(range(tail[0], tail[0] + 30))  # once reading, nothing is lost
        assert decoder.stats.payload_crc_errors == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if fd is not None:
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tcp_serves_a_client_the_whole_run(tmp_path):
    args = ["--count", "60", "--rate", "0", "--seed", "8"] + SMALL
    proc = _start(["--tcp", "0"] + args)
    try:
        line = _first_line(proc)
        host, port = line.split(": ", 1)[1].rsplit(":", 1)
        assert host == "127.0.0.1"
        received = bytearray()
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            while chunk := sock.recv(1 << 20):
                received += chunk
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = tmp_path / "frames.bin"
    subprocess.run(IONSTREAM + ["simulate", "--out", str(out)] + args, check=True, capture_output=True, timeout=60)
    assert bytes(received) == out.read_bytes()
    assert _scans(bytes(received))[0] == list(range(60))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly(tmp_path, sig):
    out = tmp_path / "frames.bin"
    proc = _start(["--out", str(out), "--rate", "50"] + SMALL)
    try:
        assert wait_until(lambda: out.exists() and len(_scans(out.read_bytes())[0]) > 10, timeout=60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    scans, decoder = _scans(out.read_bytes())
    assert len(scans) > 10 and decoder.buffered == 0  # the file ends on a whole frame
