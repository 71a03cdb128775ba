"""The recorder on real rings and files: rotation, the free-space floor and a full disk (a
size-limited tmpfs), failures that must close its ring reader, a refused start."""
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.capture import CaptureReader, capture_info
from instrument.frames import FrameDecoder, encode_scan
from instrument.recorder import Recorder, part_path
from instrument.ring import RingBuffer
from support import wait_until

SLOTS = 8


def frames(n: int, samples: int = 4000, seed: int = 0) -> list[tuple]:
    """n (header, raw) pairs of valid scan frames (raw ~ 2 x samples bytes), headers from the real decoder."""
    rng = np.random.default_rng(seed)
    out = []
    dec = FrameDecoder()
    for i in range(n):
        raw = encode_scan(rng.integers(0, 4000, samples).astype(np.uint16), sequence=i, scan_number=i,
                          device_time_ns=i * 1000)
        (f,) = list(dec.feed(raw))
        out.append((f.header, raw))
    return out


def ring_never_blocks(ring: RingBuffer, frame) -> bool:
    """True if 3 x the ring's capacity of puts succeed without waiting: no reader holds it back.
    (A pre-set stop event makes a put that would wait give up and return False instead.)"""
    stop = threading.Event()
    stop.set()
    header, raw = frame
    return all(ring.put(header, raw, 0, stop=stop) for _ in range(3 * ring.capacity))


def feed_until(ring: RingBuffer, items, cond, stop_after: float = 30.0) -> int:
    """Put frames (cycling through items) into a block-policy ring until cond(); returns how many."""
    stop = threading.Event()
    n = 0
    deadline = time.monotonic() + stop_after
    while not cond():
        assert time.monotonic() < deadline, "the recorder never reached the expected state"
        header, raw = items[n % len(items)]
        ring.put(header, raw, n, stop=stop)
        n += 1
    return n


def recorded(paths) -> list[bytes]:
    out = []
    for p in paths:
        with CaptureReader(p) as r:
            out += [bytes(f) for _, f in r]
    return out


# ---- start and stop -------------------------------------------------------------------------

def test_refused_start_leaves_no_ring_reader(tmp_path):
    """`record start EXISTING_FILE` is refused; the ring must not keep a reader that never reads
    (with the block policy it would stop acquisition for good: issue 14 item 2)."""
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    (tmp_path / "exists.isc").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        Recorder(ring, tmp_path / "exists.isc", {})
    with pytest.raises(OSError):
        Recorder(ring, tmp_path / "no-such-dir" / "a.isc", {})
    assert ring_never_blocks(ring, frames(1)[0])
    assert (tmp_path / "exists.isc").read_bytes() == b"keep me"


def test_stop_without_start_closes_everything(tmp_path):
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    rec = Recorder(ring, tmp_path / "a.isc", {}, min_free_bytes=0)
    rec.stop()
    assert rec.state == "stopped" and capture_info(tmp_path / "a.isc").closed_cleanly
    assert ring_never_blocks(ring, frames(1)[0])


def test_records_every_frame_and_reports_stats(tmp_path):
    items = frames(40)
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    rec = Recorder(ring, tmp_path / "a.isc", {"source": {"url": "test://"}}, min_free_bytes=0).start()
    for i, (h, raw) in enumerate(items):
        assert ring.put(h, raw, i)
    assert wait_until(lambda: rec.frames_written == 40, timeout=20.0), "40 frames written"
    s = rec.stats()
    assert s["state"] == "recording" and s["frames"] == 40 and s["parts"] == 1 and s["error"] is None
    rec.stop()
    assert rec.state == "stopped" and rec.stats()["frames_written"] == 40
    assert recorded([tmp_path / "a.isc"]) == [raw for _, raw in items]
    assert ring_never_blocks(ring, items[0])


# ---- rotation -------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_rotation_by_size_makes_a_chain_of_whole_captures(tmp_path, compress):
    items = frames(60, seed=1)
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    first = tmp_path / "run1.isc"
    rec = Recorder(ring, first, {"source": {"url": "test://"}}, rotate_bytes=64 << 10, compress=compress,
                   min_free_bytes=0).start()
    for i, (h, raw) in enumerate(items):
        assert ring.put(h, raw, i)
    assert wait_until(lambda: rec.frames == 60, timeout=20.0), "60 frames appended"
    rec.stop()
    parts = [part_path(first, i) for i in range(rec.parts)]
    assert rec.parts >= 3 and [p.name for p in parts[:3]] == ["run1.isc", "run1.0001.isc", "run1.0002.isc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in parts)
    assert recorded(parts) == [raw for _, raw in items]
    for i, p in enumerate(parts):
        info = capture_info(p)
        assert info.outcome == "ok" and info.closed_cleanly, p
        assert info.part == {"index": i, "previous": parts[i - 1].name if i else None, "first": "run1.isc"}
        assert p.stat().st_size <= 64 << 10
        with CaptureReader(p) as r:
            list(r)
            assert r.end.get("next_part") == (parts[i + 1].name if i + 1 < len(parts) else None)
    assert part_path(Path("x/run"), 3) == Path("x/run.0003")


def test_rotation_by_time(tmp_path):
    items = frames(20, samples=100)
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    first = tmp_path / "t.isc"
    rec = Recorder(ring, first, {}, rotate_s=0.05, min_free_bytes=0).start()
    for i, (h, raw) in enumerate(items):
        assert ring.put(h, raw, i)
        assert wait_until(lambda: rec.frames == i + 1, timeout=20.0), f"frame {i}"
        time.sleep(0.02)  # spread the frames over ~0.4 s: a part lasts 0.05 s
    rec.stop()
    assert rec.parts >= 3
    assert recorded([part_path(first, i) for i in range(rec.parts)]) == [raw for _, raw in items]


def test_a_failure_in_the_thread_sets_error_and_closes_the_reader(tmp_path):
    """The next part's name is taken: the recorder thread dies of it, reports it, closes the
    file it had (valid) and its ring reader, and acquisition (the producer) goes on."""
    items = frames(30, seed=2)
    first = tmp_path / "run.isc"
    part_path(first, 1).write_bytes(b"someone else's file")
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    rec = Recorder(ring, first, {}, rotate_bytes=32 << 10, min_free_bytes=0).start()
    feed_until(ring, items, lambda: not rec.alive)
    assert rec.state == "failed" and "FileExistsError" in rec.error and not rec.low_space
    assert ring_never_blocks(ring, items[0])
    info = capture_info(first)
    assert info.outcome == "ok" and info.closed_cleanly and info.records == rec.frames_written > 0
    assert part_path(first, 1).read_bytes() == b"someone else's file"


# ---- disk space: a real size-limited filesystem ---------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount(2); skipped with the reason otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_free_space_floor_stops_recording_cleanly(small_disk, caplog):
    items = frames(10, samples=4000, seed=3)          # 8 kB frames
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    path = small_disk / "floor.isc"
    caplog.set_level("WARNING")
    rec = Recorder(ring, path, {}, min_free_bytes=1 << 20).start()
    feed_until(ring, items, lambda: not rec.alive)
    assert rec.state == "stopped_low_space" and rec.low_space
    assert "min_free_bytes" in rec.error and "acquisition continues" in caplog.text
    assert ring_never_blocks(ring, items[0])          # acquisition goes on without the recorder
    info = capture_info(path)
    assert info.outcome == "ok" and info.closed_cleanly and info.records == rec.frames_written > 50
    with CaptureReader(path) as r:
        list(r)
        assert r.end["stopped"] == "low_space"
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize >= (1 << 20) - (200 << 10)   # stopped near the floor, not at ENOSPC
    with pytest.raises(OSError, match="min_free_bytes"):       # and a new recording is refused at once
        Recorder(ring, small_disk / "again.isc", {}, min_free_bytes=1 << 20)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_disk_full_mid_write_stops_recording_with_a_valid_file(small_disk, compress):
    """No floor: the disk fills and a write fails with ENOSPC part-way through a record. The
    recorder truncates the partial record away, closes the file and its ring reader."""
    items = frames(10, samples=6000, seed=4)
    ring = RingBuffer(SLOTS, 1 << 14, policy="block")
    path = small_disk / "full.isc"
    rec = Recorder(ring, path, {}, min_free_bytes=0, compress=compress).start()
    feed_until(ring, items, lambda: not rec.alive)
    assert rec.state == "stopped_low_space" and "No space left" in rec.error
    assert ring_never_blocks(ring, items[0])
    info = capture_info(path)
    assert info.outcome == "ok" and info.torn_tail_bytes == 0          # no partial record left behind
    assert info.records == rec.frames_written > 50


def test_writer_disk_full_truncates_the_partial_record(small_disk):
    """CaptureWriter alone: the write that hits ENOSPC is taken back out, the END record is
    still tried, and the file reads as every frame append() accepted, with no torn tail."""
    from instrument.capture import CaptureWriter

    items = frames(4, samples=7000, seed=5)
    w = CaptureWriter(small_disk / "w.isc", {}, fsync_interval_s=None)
    accepted = 0
    with pytest.raises(OSError) as exc:
        for i in range(10_000):
            w.append(items[i % 4][1], i)
            accepted += 1
    assert exc.value.errno == 28  # ENOSPC
    with pytest.raises(OSError, match="failed earlier"):
        w.append(items[0][1], 0)
    w.close()
    info = capture_info(small_disk / "w.isc")
    assert info.outcome == "ok" and info.torn_tail_bytes == 0 and info.records == accepted > 100


# ---- a killed recorder process: nothing it counted is lost -----------------------------------

CHILD = r"""
import sys, time
from instrument.acquisition import AcquisitionThread
from instrument.recorder import Recorder
from instrument.ring import RingBuffer
from instrument.sources import open_source

path, compress = sys.argv[1], sys.argv[2] == "1"
source = open_source("sim://?rate=0&samples=4000&seed=5")
ring = RingBuffer(16, 1 << 15, "block")
rec = Recorder(ring, path, {}, fsync_interval_s=None, compress=compress, min_free_bytes=0)
rec.start()
AcquisitionThread(source, ring).start()
for _ in sys.stdin:  # on each request, report what the recorder says is in the file now
    n = rec.stats()["frames_written"] if compress else rec.frames
    print(n, flush=True)
"""


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_sigkill_after_n_reported_frames_leaves_at_least_n(tmp_path, compress):
    """The recorder counts a frame only once the OS has it; SIGKILL right after it reported N
    frames (the page cache survives a process kill) leaves >= N frames in the file."""
    import signal
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path = tmp_path / "killed.isc"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "1" if compress else "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    reported = 0
    try:
        deadline = time.monotonic() + 60
        while reported < 400:  # ask, read the answer, and kill at once: no lag behind the count
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            proc.stdin.write("?\n")
            proc.stdin.flush()
            reported = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    info = capture_info(path)
    print(f"reported {reported}, file holds {info.records} frames, torn tail {info.torn_tail_bytes} bytes")
    assert info.records >= reported and info.invalid_records == 0 and info.corrupt_bytes == 0
