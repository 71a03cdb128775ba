"""replay:// on real capture files: bit-exact bytes, chunking, loop, pacing, errors, through the real acquisition thread."""
import math
import os
import time

import numpy as np
import pytest

from instrument.capture import CaptureReader, CaptureWriter
from instrument.frames import FrameDecoder, encode_scan, encode_status
from instrument.sources import EndOfSource, SourceConfigError, open_source

T0 = 1_700_000_000_000_000_000


def make_frames(n: int, seed: int = 0, max_samples: int = 2000) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(encode_status(sequence=i, device_time_ns=i * 10_000_000))
        else:
            samples = rng.integers(0, 60000, size=int(rng.integers(1, max_samples))).astype(np.uint16)
            out.append(encode_scan(samples, sequence=i, scan_number=i, device_time_ns=i * 10_000_000))
    return out


def write(path, frames, dt_ns=1_000_000, compress=False, times=None):
    times = times or [T0 + i * dt_ns for i in range(len(frames))]
    with CaptureWriter(path, {"source": {"url": "sim://?seed=3", "kind": "sim"}}, compress=compress) as w:
        for f, t in zip(frames, times):
            w.append(f, t)
    return path


def drain(source, size: int, limit_bytes: int | None = None) -> bytes:
    """Everything the source emits until EndOfSource (or limit_bytes), read into a size-byte buffer."""
    buf = memoryview(bytearray(size))
    out = bytearray()
    source.open()
    try:
        while limit_bytes is None or len(out) < limit_bytes:
            try:
                n = source.readinto(buf)
            except EndOfSource:
                break
            assert 0 <= n <= size
            out += buf[:n]
    finally:
        source.close()
    return bytes(out)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_replay_bytes_are_the_recorded_frames(tmp_path, compress, size):
    frames = make_frames(60 if size > 1 else 12)
    path = write(tmp_path / "a.isc", frames, compress=compress)
    src = open_source(f"replay://{path}?speed=max")
    assert src.finite
    assert drain(src, size) == b"".join(frames)
    assert src.frames == len(frames) and src.bytes == sum(map(len, frames))


def test_replay_decodes_to_the_same_frames(tmp_path):
    frames = make_frames(40)
    path = write(tmp_path / "a.isc", frames)
    data = drain(open_source(f"replay://{path}?speed=max"), 65536)
    dec = FrameDecoder()
    got = [bytes(f.raw) for f in dec.feed(data)]
    assert got == frames and dec.stats.bytes_skipped == 0 and dec.stats.sequence_gaps == 0


def test_relative_and_absolute_urls(tmp_path, monkeypatch):
    frames = make_frames(5)
    (tmp_path / "captures").mkdir()
    write(tmp_path / "captures" / "run1.isc", frames)
    monkeypatch.chdir(tmp_path)
    for url in ("replay://captures/run1.isc", "replay://./captures/run1.isc?speed=max",
                f"replay://{tmp_path}/captures/run1.isc?speed=max", "replay://captures/run1.isc?speed=4x"):
        assert drain(open_source(url), 1 << 16) == b"".join(frames), url
    monkeypatch.chdir(tmp_path / "captures")
    assert drain(open_source("replay://run1.isc?speed=max"), 1 << 16) == b"".join(frames)


def test_describe_names_the_file_and_the_recording(tmp_path):
    path = write(tmp_path / "a.isc", make_frames(3))
    d = open_source(f"replay://{path}?speed=2").describe()
    assert d["kind"] == "replay" and d["path"] == str(path.resolve()) and d["speed"] == 2.0 and d["loop"] is False
    assert d["recorded"]["source"]["url"] == "sim://?seed=3"
    assert open_source(f"replay://{path}?speed=max").describe()["speed"] == "max"


def test_bad_urls_are_config_errors(tmp_path):
    path = write(tmp_path / "a.isc", make_frames(3))
    (tmp_path / "raw.bin").write_bytes(b"".join(make_frames(3)))
    cases = {
        f"replay://{tmp_path}/missing.isc": "does not exist",
        f"replay://{path}?speed=0": "speed",
        f"replay://{path}?speed=-1": "speed",
        f"replay://{path}?speed=fast": "speed",
        f"replay://{path}?loop=2": "loop",
        f"replay://{path}?sped=2": "unknown option",
        f"replay://{tmp_path}/raw.bin": "raw frame stream",
        f"replay://{tmp_path}": "directory",
        "replay://": "no capture path",
    }
    for url, needle in cases.items():
        with pytest.raises(SourceConfigError) as exc:
            open_source(url)
        assert needle in str(exc.value), (url, exc.value)


def test_torn_tail_is_ignored(tmp_path, caplog):
    frames = make_frames(20)
    path = write(tmp_path / "a.isc", frames)
    data = path.read_bytes()
    # cut inside the last frame record (its END record and part of it gone)
    cut = len(data) - 100 - len(frames[-1]) // 2
    path.write_bytes(data[:cut])
    src = open_source(f"replay://{path}?speed=max")
    assert drain(src, 4096) == b"".join(frames[:-1])
    assert src.torn_tail_bytes > 0
    assert "torn tail" in caplog.text


def test_loop_replays_forever(tmp_path):
    frames = make_frames(7)
    path = write(tmp_path / "a.isc", frames)
    one = b"".join(frames)
    src = open_source(f"replay://{path}?speed=max&loop=1")
    assert not src.finite
    data = drain(src, 1000, limit_bytes=3 * len(one) + 1)
    assert data[:3 * len(one)] == one * 3 and src.passes >= 3


def test_empty_capture_ends_even_when_looping(tmp_path):
    path = write(tmp_path / "e.isc", [])
    for url in (f"replay://{path}?speed=max", f"replay://{path}?loop=1"):
        assert drain(open_source(url), 100) == b""


# ---- pacing (lower bounds are exact, upper bounds loose) -----------------------------

def _timed(url, size=1 << 20):
    src = open_source(url)
    longest = 0.0
    buf = memoryview(bytearray(size))
    src.open()
    t0 = time.monotonic()
    n_bytes = 0
    while True:
        t = time.monotonic()
        try:
            n_bytes += src.readinto(buf)
        except EndOfSource:
            break
        longest = max(longest, time.monotonic() - t)
    src.close()
    return time.monotonic() - t0, longest, n_bytes


def test_pacing_follows_recorded_host_times(tmp_path):
    frames = make_frames(41, max_samples=100)
    path = write(tmp_path / "a.isc", frames, dt_ns=20_000_000)  # 0.8 s of recording
    total = sum(map(len, frames))
    t1, _, n1 = _timed(f"replay://{path}?speed=1.0")
    t4, _, n4 = _timed(f"replay://{path}?speed=4")
    _, _, nmax = _timed(f"replay://{path}?speed=max")
    assert n1 == n4 == nmax == total
    assert t1 >= 0.8 - 0.01          # never early (an absolute schedule, no drift)
    assert t4 >= 0.2 - 0.01          # speed 4: never earlier than its schedule either
    # No upper bounds (how late a loaded host runs is not the property): that speed=max does not
    # wait and that one read never sleeps out a long gap are test_long_gaps_return_zero_instead_of_blocking
    # and the zero-read counts there.


def test_long_gaps_return_zero_instead_of_blocking(tmp_path):
    frames = make_frames(2, max_samples=10)
    path = write(tmp_path / "a.isc", frames, times=[T0, T0 + 600_000_000])
    src = open_source(f"replay://{path}")
    src.open()
    buf = memoryview(bytearray(1 << 16))
    assert src.readinto(buf) == len(frames[0])
    zeros = 0
    t0 = time.monotonic()
    while True:  # several zero reads during the 0.6 s gap: readinto returned instead of sleeping it out
        n = src.readinto(buf)
        if n:
            break
        zeros += 1
    assert n == len(frames[1]) and zeros >= 3 and time.monotonic() - t0 >= 0.59
    with pytest.raises(EndOfSource):
        src.readinto(buf)


def test_clock_stepping_back_is_not_a_wait(tmp_path):
    frames = make_frames(3, max_samples=10)
    # the wall clock was set back 1000 s between frames 0 and 1; frame 2 came 100 ms after frame 1
    path = write(tmp_path / "a.isc", frames, times=[T0, T0 - 10**12, T0 - 10**12 + 100_000_000])
    t, _, n = _timed(f"replay://{path}?speed=1")
    assert n == sum(map(len, frames)) and 0.09 <= t < 1.5


# ---- through the real acquisition thread and ring, and back into a capture ---------------

def test_replay_through_acquisition_and_recorder_is_bit_exact(tmp_path):
    from instrument.acquisition import AcquisitionThread
    from instrument.recorder import Recorder
    from instrument.ring import RingBuffer

    frames = make_frames(150)
    path = write(tmp_path / "a.isc", frames, compress=True)
    source = open_source(f"replay://{path}?speed=max")
    ring = RingBuffer(slots=16, slot_bytes=1 << 16, policy="block")
    out = tmp_path / "b.isc"
    recorder = Recorder(ring, out, {"source": source.describe()}).start()
    acq = AcquisitionThread(source, ring).start()
    acq.join(30)
    assert not acq.alive and acq.stats.ended and acq.stats.error is None
    recorder.stop()
    assert recorder.error is None and recorder.dropped == 0
    with CaptureReader(out) as r:
        assert [bytes(f) for _, f in r] == frames
        assert r.torn_tail_bytes == 0 and r.end["records"] == 150
        assert r.description["source"]["recorded"]["source"]["url"] == "sim://?seed=3"


def test_replay_and_capture_info_agree_on_records_that_are_not_one_frame(tmp_path, caplog):
    """A third-party capture whose records split a frame: replay and `capture info` both use
    iter_frames(per_record=True), so neither joins the halves into a frame (review item 6)."""
    from instrument.capture import CaptureReader, capture_info, iter_frames

    f0, f1, f2 = make_frames(3)
    path = tmp_path / "split.isc"
    with CaptureWriter(path, {}) as w:
        for i, rec in enumerate([f0, f1[:-4], f1[-4:], f2]):
            w.append(rec, T0 + i)
    caplog.set_level("WARNING")
    src = open_source(f"replay://{path}?speed=max")
    out = drain(src, 4096)
    assert out == f0 + f2 and src.invalid_records == 2
    assert "2 records were not exactly one valid device frame" in caplog.text
    info = capture_info(path)
    assert info.records == 4 and info.invalid_records == 2 and info.scans + info.status_frames == 2
    with CaptureReader(path) as r:
        frames = iter_frames(r, per_record=True)
        assert [bytes(f.raw) for _, f in frames] == [f0, f2] and frames.invalid_records == 2
        stream = iter_frames(r, per_record=False)   # as a live byte stream: the halves join
        assert [bytes(f.raw) for _, f in stream] == [f0, f1, f2] and stream.invalid_records == 0
    # what the acquisition thread decodes from the replayed bytes is what capture info counted
    dec = FrameDecoder()
    assert [bytes(f.raw) for f in dec.feed(out)] == [f0, f2]
