"""A real process writing a capture is SIGKILLed mid-run; the file reads and replays up to its last whole record."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instrument.capture import CaptureReader, capture_info
from instrument.sources import EndOfSource, open_source

ROOT = Path(__file__).resolve().parents[2]

# Shared by the child and the test: frame i is a deterministic function of i (4 kB to 1.2 MB).
FRAME_CODE = r"""
import numpy as np
from instrument.frames import encode_scan, encode_status

def frame(i):
    if i % 50 == 49:
        return encode_status(sequence=i, device_time_ns=i * 1_000_000, scan_number=i)
    n = (600_000 if i % 37 == 0 else 2_000 + (i * 7919) % 30_000)
    samples = (np.arange(n, dtype=np.uint32) * (i + 1) % 65521).astype(np.uint16)
    return encode_scan(samples, sequence=i, scan_number=i, device_time_ns=i * 1_000_000)
"""

CHILD = FRAME_CODE + r"""
import sys, time
from instrument.capture import CaptureWriter

path, compress = sys.argv[1], sys.argv[2] == "1"
# Every record goes to the OS with one writev as it is appended; the kill lands wherever.
w = CaptureWriter(path, {"source": {"url": "test://sigkill"}}, fsync_interval_s=0.05, compress=compress)
i = 0
while True:
    w.append(frame(i), time.time_ns())
    i += 1
    if i == 200:
        w.flush()                      # the first 200 frames are with the OS: a kill cannot lose them
        print("ready", flush=True)
"""


def _frame_fn():
    ns: dict = {}
    exec(FRAME_CODE, ns)
    return ns["frame"]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_sigkill_mid_write_leaves_a_readable_replayable_capture(tmp_path, compress):
    path = tmp_path / "killed.isc"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "1" if compress else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        # let it run on while the file grows, then kill it wherever it is
        size0 = path.stat().st_size
        deadline = time.monotonic() + 20
        while path.stat().st_size < size0 + (8 << 20) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    frame = _frame_fn()
    with CaptureReader(path) as r:
        n = 0
        for t, f in r:
            assert bytes(f) == frame(n), f"record {n} differs"
            n += 1
    assert n >= 200
    assert r.end is None and r.corrupt_bytes == 0
    torn = r.torn_tail_bytes
    size = path.stat().st_size
    print(f"killed after {n} whole frames; file {size} bytes; torn tail {torn} bytes")

    info = capture_info(path)
    assert info.records == n and info.scans + info.status_frames == n
    assert info.sequence_gaps == 0 and info.crc_errors == 0 and info.invalid_records == 0
    assert info.torn_tail == (torn > 0) and info.torn_tail_bytes == torn and not info.closed_cleanly

    # replay gives exactly the whole records' frames, then ends
    src = open_source(f"replay://{path}?speed=max")
    src.open()
    buf = memoryview(bytearray(1 << 20))
    out = bytearray()
    while True:
        try:
            k = src.readinto(buf)
        except EndOfSource:
            break
        out += buf[:k]
    src.close()
    expected = b"".join(frame(i) for i in range(n))
    assert len(out) == len(expected) and out == expected
