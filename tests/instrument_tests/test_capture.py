"""Capture files on real files: round trips, torn tails, damage, errors, capture info, the CLI."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instrument.capture import (
    FILE_HEADER, FORMAT_MAJOR, FORMAT_MINOR, KIND_NAMES, MAGIC, RECORD_HEADER, RECORD_MARKER, RECORD_OVERHEAD, CaptureError,
    CaptureInfo, CaptureReader, CaptureVersionError, CaptureWriter, NotACaptureError, capture_info,
)
from instrument.frames import encode_scan, encode_status

T0 = 1_700_000_000_000_000_000


def make_frames(n: int, seed: int = 0, max_samples: int = 3000, status_every: int = 0) -> list[bytes]:
    """n valid frames, sequence 0..n-1, device time 10 ms apart; every status_every-th a STATUS frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if status_every and i % status_every == status_every - 1:
            out.append(encode_status(sequence=i, device_time_ns=i * 10_000_000, scan_number=i))
        else:
            k = int(rng.integers(0, max_samples + 1))
            samples = rng.integers(0, 4000, size=k).astype(np.uint16)
            out.append(encode_scan(samples, sequence=i, scan_number=i, device_time_ns=i * 10_000_000))
    return out


def write_capture(path, frames, times=None, **kw) -> CaptureWriter:
    times = times if times is not None else [T0 + i * 20_000_000 for i in range(len(frames))]
    with CaptureWriter(path, {"source": {"url": "test://", "kind": "test"}, "settings": {"x": 1}}, **kw) as w:
        for f, t in zip(frames, times):
            w.append(f, t)
    return w


def read_all(path) -> tuple[list[tuple[int, bytes]], CaptureReader]:
    with CaptureReader(path) as r:
        got = [(t, bytes(f)) for t, f in r]
    return got, r


def record_offsets(path) -> list[int]:
    """Offsets of the records of an undamaged file, and the file size at the end."""
    data = open(path, "rb").read()
    _, _, _, _, n = FILE_HEADER.unpack_from(data)
    pos = FILE_HEADER.size + n + 4
    out = []
    while pos < len(data):
        out.append(pos)
        length = RECORD_HEADER.unpack_from(data, pos)[4]
        pos += RECORD_OVERHEAD + length
    assert pos == len(data)
    return out + [pos]


COMPRESS = pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])


@COMPRESS
def test_round_trip(tmp_path, compress):
    frames = make_frames(300, status_every=25)
    times = [T0 + i * 7_000_000 - (5 if i % 3 else 0) for i in range(len(frames))]
    path = tmp_path / "a.isc"
    w = write_capture(path, frames, times, compress=compress)
    assert w.closed and w.records == 300 and w.bytes == sum(map(len, frames))
    assert w.file_bytes == os.path.getsize(path)
    got, r = read_all(path)
    assert got == list(zip(times, frames))
    assert r.torn_tail_bytes == 0 and r.corrupt_bytes == 0 and r.records == 300
    assert r.end["records"] == 300 and r.end["frame_bytes"] == w.bytes
    h = r.header
    assert h["format"] == "ionstream-capture" and h["format_version"] == f"1.{FORMAT_MINOR}"
    assert h["description"] == {"source": {"url": "test://", "kind": "test"}, "settings": {"x": 1}}
    assert {"ionstream_version", "created", "created_unix_ns", "host", "host_clock"} <= set(h)
    assert r.compressed == compress and (h["compression"] is not None) == compress
    # iterating again gives the same again
    with CaptureReader(path) as r2:
        assert [bytes(f) for _, f in r2] == frames
        assert [bytes(f) for _, f in r2] == frames
        assert not r2.closed
    assert r2.closed


@COMPRESS
def test_frames_larger_than_the_buffers(tmp_path, compress):
    """Frames bigger than a compressed block and the read window."""
    rng = np.random.default_rng(1)
    frames = [encode_scan(rng.integers(0, 9, size=k).astype(np.uint16), sequence=i, scan_number=i,
                          device_time_ns=i) for i, k in enumerate([10, 300_000, 5, 700_000, 40_000, 1])]
    path = tmp_path / "big.isc"
    write_capture(path, frames, compress=compress, block_bytes=200_000)
    for read_size in (4096, 1 << 20):
        with CaptureReader(path, read_size=read_size) as r:
            assert [bytes(f) for _, f in r] == frames and r.torn_tail_bytes == 0


def test_frames_are_views_that_may_be_kept(tmp_path):
    frames = make_frames(50)
    write_capture(tmp_path / "a.isc", frames)
    with CaptureReader(tmp_path / "a.isc", read_size=4096) as r:
        kept = [f for _, f in r]
    assert all(isinstance(f, memoryview) and f.readonly for f in kept)
    assert [bytes(f) for f in kept] == frames


def test_append_accepts_any_bytes_like(tmp_path):
    frame = make_frames(1)[0]
    arr = np.frombuffer(frame, dtype=np.uint8).copy()
    with CaptureWriter(tmp_path / "a.isc", {}) as w:
        w.append(frame, 1)
        w.append(bytearray(frame), 2)
        w.append(memoryview(frame), 3)
        w.append(memoryview(arr), 4)           # what the ring's Slot.frame is
        w.append(arr, 5)
        w.append(memoryview(frame)[::1], 6)
        w.append(frame)                         # host time defaults to now
    got, _ = read_all(tmp_path / "a.isc")
    assert [f for _, f in got] == [frame] * 7
    assert [t for t, _ in got][:6] == [1, 2, 3, 4, 5, 6] and got[6][0] > T0


def test_empty_capture_is_valid(tmp_path):
    with CaptureWriter(tmp_path / "e.isc", {"source": {"url": "x"}}):
        pass
    got, r = read_all(tmp_path / "e.isc")
    assert got == [] and r.torn_tail_bytes == 0 and r.end["records"] == 0
    info = capture_info(tmp_path / "e.isc")
    assert info.records == 0 and info.scans == 0 and info.duration_host_s == 0 and info.closed_cleanly


def test_header_only_file_after_a_crash_reads_as_empty(tmp_path):
    w = CaptureWriter(tmp_path / "h.isc", {})
    # a writer abandoned without close(): the header alone was made durable at creation
    size = os.path.getsize(tmp_path / "h.isc")
    w._abort()
    assert size > len(MAGIC)
    got, r = read_all(tmp_path / "h.isc")
    assert got == [] and r.torn_tail_bytes == 0 and r.end is None


def test_closed_writer_refuses_appends_and_close_is_idempotent(tmp_path):
    w = CaptureWriter(tmp_path / "a.isc", {})
    w.close()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.append(b"x", 1)


def test_exclusive_refuses_to_overwrite(tmp_path):
    path = tmp_path / "a.isc"
    write_capture(path, make_frames(3))
    with pytest.raises(FileExistsError):
        CaptureWriter(path, {}, exclusive=True)
    assert len(read_all(path)[0]) == 3
    write_capture(path, make_frames(1))  # the default truncates, like open(path, "wb")
    assert len(read_all(path)[0]) == 1


def test_fsync_schedule(tmp_path):
    frames = make_frames(20)
    w = write_capture(tmp_path / "every.isc", frames, fsync_interval_s=0)
    assert w.fsyncs == 20 + 1              # each append, and close
    w = write_capture(tmp_path / "never.isc", frames, fsync_interval_s=None)
    assert w.fsyncs == 1                   # close only
    w = write_capture(tmp_path / "hour.isc", frames, fsync_interval_s=3600)
    assert w.fsyncs == 1


def test_each_append_is_in_the_os_when_it_returns(tmp_path):
    """Write-through (issue 14 item 14): a record is in the page cache, which survives a
    killed process, as soon as append() returns; nothing waits in a process buffer."""
    frames = make_frames(20)
    path = tmp_path / "wt.isc"
    w = CaptureWriter(path, {}, fsync_interval_s=None)
    for i, f in enumerate(frames):
        w.append(f, i)
        got, r = read_all(path)              # another file description: sees only what the OS has
        assert [g for _, g in got] == frames[:i + 1] and r.torn_tail_bytes == 0
        assert w.frames_written == i + 1 and w.file_bytes == os.path.getsize(path)
    w.close()


def test_flush_hands_everything_to_the_os(tmp_path):
    """After flush() another reader sees every appended frame, compressed or not."""
    for compress in (False, True):
        path = tmp_path / f"f{compress}.isc"
        frames = make_frames(30)
        w = CaptureWriter(path, {}, fsync_interval_s=None, compress=compress)
        for i, f in enumerate(frames[:10]):
            w.append(f, i)
        w.flush()
        assert [f for _, f in read_all(path)[0]] == frames[:10]
        for i, f in enumerate(frames[10:]):
            w.append(f, i)
        w.sync()
        got, r = read_all(path)
        assert [f for _, f in got] == frames and r.end is None and r.torn_tail_bytes == 0
        w.close()


def test_compressed_blocks_are_independent(tmp_path):
    frames = make_frames(200, max_samples=2000)
    path = tmp_path / "z.isc"
    write_capture(path, frames, compress=True, block_bytes=64 * 1024)
    offsets = record_offsets(path)
    data = open(path, "rb").read()
    kinds = [KIND_NAMES[data[o + 4]] for o in offsets[:-1]]
    assert kinds.count("ZBLOCK") > 3 and kinds[-1] == "END"
    # drop the second block (cut it out of the file): every other block still reads
    cut = data[:offsets[1]] + data[offsets[2]:]
    (tmp_path / "cut.isc").write_bytes(cut)
    with CaptureReader(tmp_path / "cut.isc") as r:
        got = [bytes(f) for _, f in r]
    n_first = RECORD_HEADER.unpack_from(data, offsets[0])[3]
    n_second = RECORD_HEADER.unpack_from(data, offsets[1])[3]
    assert got == frames[:n_first] + frames[n_first + n_second:]


# ---- torn tails, garbage, damage -----------------------------------------------------

@COMPRESS
def test_torn_last_record_at_every_offset(tmp_path, compress):
    frames = make_frames(12, max_samples=200)
    path = tmp_path / "a.isc"
    kw = {"compress": compress, "block_bytes": 1500} if compress else {}
    write_capture(path, frames, **kw)
    data = open(path, "rb").read()
    offsets = record_offsets(path)
    end_rec, last_rec = offsets[-2], offsets[-3]  # the END record, and the last record with frames
    # frames in the whole records before the last data record
    before_last = sum(RECORD_HEADER.unpack_from(data, o)[3] for o in offsets[:-3])
    cut_file = tmp_path / "cut.isc"
    for cut in range(last_rec, len(data)):
        cut_file.write_bytes(data[:cut])
        with CaptureReader(cut_file) as r:
            got = [bytes(f) for _, f in r]
        if cut < end_rec:
            assert got == frames[:before_last], cut
            assert r.torn_tail_bytes == cut - last_rec, cut
        else:
            assert got == frames, cut
            assert r.torn_tail_bytes == cut - end_rec, cut
        assert r.corrupt_bytes == 0 and r.end is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16), cut_fraction=st.floats(0, 1))
def test_any_cut_reads_a_prefix(tmp_path_factory, n, seed, cut_fraction):
    d = tmp_path_factory.mktemp("cut")
    frames = make_frames(n, seed=seed, max_samples=300)
    write_capture(d / "a.isc", frames)
    data = (d / "a.isc").read_bytes()
    offsets = record_offsets(d / "a.isc")
    cut = offsets[0] + int(cut_fraction * (len(data) - offsets[0]))
    (d / "c.isc").write_bytes(data[:cut])
    with CaptureReader(d / "c.isc") as r:
        got = [bytes(f) for _, f in r]
    whole = sum(1 for a, b in zip(offsets, offsets[1:]) if b <= cut)
    assert got == frames[:min(whole, n)]
    assert r.torn_tail_bytes == cut - max([o for o in offsets if o <= cut])
    assert r.corrupt_bytes == 0


@pytest.mark.parametrize("garbage", [b"\x00" * 100, os.urandom(5000), RECORD_MARKER * 50,
                                     RECORD_MARKER + b"\x01\x00\x01\x00" + b"\xff" * 40])
def test_garbage_appended_is_a_torn_tail(tmp_path, garbage):
    frames = make_frames(20)
    path = tmp_path / "a.isc"
    write_capture(path, frames)
    with open(path, "ab") as f:
        f.write(garbage)
    got, r = read_all(path)
    assert [f for _, f in got] == frames
    assert r.torn_tail_bytes == len(garbage) and r.corrupt_bytes == 0
    info = capture_info(path)
    assert info.torn_tail and info.torn_tail_bytes == len(garbage) and info.records == 20 and not info.ok


def test_damage_in_the_middle_is_skipped_and_counted(tmp_path):
    frames = make_frames(40, max_samples=500)
    path = tmp_path / "a.isc"
    write_capture(path, frames)
    data = bytearray(path.read_bytes())
    offsets = record_offsets(path)
    # flip a payload byte of record 10, and overwrite record 20's header CRC
    data[offsets[10] + 24 + 10] ^= 0xFF
    data[offsets[20] + 21] ^= 0x01
    path.write_bytes(data)
    got, r = read_all(path)
    assert [f for _, f in got] == frames[:10] + frames[11:20] + frames[21:]
    assert r.corrupt_bytes == (offsets[11] - offsets[10]) + (offsets[21] - offsets[20])
    assert r.corrupt_regions == 2 and r.torn_tail_bytes == 0 and r.end is not None
    info = capture_info(path)
    assert info.corrupt_bytes == r.corrupt_bytes and info.sequence_gaps == 2 and not info.ok


def test_unknown_record_kinds_are_skipped(tmp_path):
    frames = make_frames(5)
    path = tmp_path / "a.isc"
    write_capture(path, frames)
    data = path.read_bytes()
    offsets = record_offsets(path)
    body = b"from the future"
    head = RECORD_HEADER.pack(RECORD_MARKER, 200, 0, 0, len(body), 0)
    rec = head + struct.pack("<I", zlib.crc32(head)) + body + struct.pack("<I", zlib.crc32(body))
    path.write_bytes(data[:offsets[2]] + rec + data[offsets[2]:])
    got, r = read_all(path)
    assert [f for _, f in got] == frames and r.unknown_records == 1 and r.corrupt_bytes == 0


# ---- files that are not captures -------------------------------------------------------

def test_not_a_capture_names_the_file_and_what_it_found(tmp_path):
    cases = {
        "empty.isc": (b"", "empty"),
        "text.isc": (b"hello world, this is text\n", "68 65 6c 6c"),
        "frames.bin": (b"".join(make_frames(3)), "raw frame stream"),
        "z.isc.zst": (b"\x28\xb5\x2f\xfd" + b"\x00" * 30, "zstd"),
    }
    for name, (content, expect) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NotACaptureError) as exc:
            CaptureReader(tmp_path / name)
        assert name in str(exc.value) and expect in str(exc.value)
    with pytest.raises(FileNotFoundError):
        CaptureReader(tmp_path / "missing.isc")


def _rewrite_header(path, major=None, minor=None, doc=None, fix_crc=True):
    data = bytearray(path.read_bytes())
    magic, ma, mi, flags, n = FILE_HEADER.unpack_from(data)
    old_doc = bytes(data[FILE_HEADER.size:FILE_HEADER.size + n])
    rest = data[FILE_HEADER.size + n + 4:]
    doc = old_doc if doc is None else doc
    head = FILE_HEADER.pack(magic, ma if major is None else major, mi if minor is None else minor, flags, len(doc)) + doc
    crc = zlib.crc32(head) if fix_crc else 0xDEADBEEF
    path.write_bytes(head + struct.pack("<I", crc) + rest)


def test_newer_major_version_is_refused_newer_minor_is_read(tmp_path):
    frames = make_frames(4)
    path = tmp_path / "a.isc"
    write_capture(path, frames)
    _rewrite_header(path, minor=7, doc=json.dumps({"new_key": [1, 2], "description": {}}).encode())
    got, r = read_all(path)
    assert [f for _, f in got] == frames and r.version == (1, 7) and r.header["new_key"] == [1, 2]
    _rewrite_header(path, major=FORMAT_MAJOR + 1)
    with pytest.raises(CaptureVersionError) as exc:
        CaptureReader(path)
    msg = str(exc.value)
    assert str(path) in msg and f"{FORMAT_MAJOR + 1}.7" in msg and "upgrade" in msg


def test_corrupt_or_cut_header_is_a_clear_error(tmp_path):
    path = tmp_path / "a.isc"
    write_capture(path, make_frames(2))
    good = path.read_bytes()
    _rewrite_header(path, fix_crc=False)
    with pytest.raises(CaptureError, match="corrupt"):
        CaptureReader(path)
    _rewrite_header(path, doc=b"[1, 2]")
    with pytest.raises(CaptureError, match="JSON"):
        CaptureReader(path)
    for cut in (10, 30):
        path.write_bytes(good[:cut])
        with pytest.raises(CaptureError, match="cut short"):
            CaptureReader(path)


# ---- capture info ---------------------------------------------------------------------

def test_capture_info_figures(tmp_path):
    """A known file: 100 frames (4 STATUS), 2 frames missing, 1 corrupt frame, 50 Hz host, 100 Hz device."""
    frames = make_frames(104, status_every=25, max_samples=1000)
    del frames[40:42]                     # two frames lost before recording: sequence gap of 2
    bad = bytearray(frames[60])
    bad[-1] ^= 0xFF                       # payload CRC error recorded as received
    frames[60] = bytes(bad)
    frames = frames[:102]
    times = [T0 + i * 20_000_000 for i in range(len(frames))]
    path = tmp_path / "known.isc"
    write_capture(path, frames, times)
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")
    info = capture_info(path)
    assert isinstance(info, CaptureInfo)
    assert info.records == 102
    assert info.status_frames == 4
    assert info.scans == 102 - 4 - 1      # the corrupt one is not a scan
    assert info.payload_crc_errors == 1 and info.crc_errors == 1 and info.invalid_records == 1
    # gaps: 2 lost frames, and the corrupt frame's sequence number is missing from the valid ones
    assert info.sequence_gaps == 3
    assert info.duration_host_s == pytest.approx(101 * 0.020)
    # device times: frames 0..103 at 10 ms; the last recorded frame is original index 103
    assert info.duration_device_s == pytest.approx(1.03)
    assert info.frame_bytes == sum(map(len, frames))
    assert info.mb_per_s == pytest.approx(info.frame_bytes / (101 * 0.020) / 1e6)
    assert info.scan_rate_hz == pytest.approx(96 / 2.02)  # (scans - 1) / span of their host times
    assert info.torn_tail and info.torn_tail_bytes == 3 and info.closed_cleanly
    assert info.description["source"]["url"] == "test://"
    from ionstream.cli.capture import format_info

    text = format_info(info)
    for needle in ("97  (+ 4 status frames)", "sequence gaps  3", "CRC errors     1", "torn tail      yes, 3 bytes",
                   "test://", "2.020 s host time"):
        assert needle in text, (needle, text)
    d = info.as_dict()
    json.dumps(d)
    assert d["scans"] == 97 and d["torn_tail_bytes"] == 3 and d["description"]["settings"] == {"x": 1}


# ---- the CLI ---------------------------------------------------------------------------

def test_cli_info_and_verify(tmp_path, capsys):
    from ionstream.cli import main

    frames = make_frames(30, status_every=10)
    path = tmp_path / "c.isc"
    write_capture(path, frames)
    assert main(["capture", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "27  (+ 3 status frames)" in out and "torn tail      no" in out and "closed cleanly yes" in out
    assert main(["capture", "info", "--json", str(path)]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["scans"] == 27 and d["torn_tail"] is False and d["records"] == 30
    assert main(["capture", "verify", str(path)]) == 0
    assert "ok" in capsys.readouterr().out
    whole = path.read_bytes()
    end_at = record_offsets(path)[-2]
    tail = len(whole) - 10 - end_at
    # a torn tail (the END record cut: a crash while closing) is intact: ok, exit 0, said so
    path.write_bytes(whole[:-10])
    assert main(["capture", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and f"torn tail: {tail} bytes ignored" in out and "DAMAGED" not in out
    assert main(["capture", "verify", "--json", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["outcome"] == "torn_tail" and d["ok"] is True and d["torn_tail_bytes"] == tail and d["frames"] == 30
    # a killed-but-whole capture (no END, no tail) is plainly ok
    path.write_bytes(whole[:end_at])
    assert main(["capture", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok (30 frames" in out and "no END record" in out and "torn" not in out
    # real damage in the middle: exit 1
    bad = bytearray(whole)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    assert main(["capture", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "damaged bytes" in out
    assert main(["capture", "verify", "--json", str(path)]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["outcome"] == "damaged" and d["ok"] is False
    # bytes after a whole END record: the writer never appends after END, so that is damage
    path.write_bytes(whole + b"\x00" * 5)
    assert main(["capture", "verify", str(path)]) == 1
    assert "after the END record" in capsys.readouterr().out
    (tmp_path / "x.txt").write_text("not a capture")
    assert main(["capture", "info", str(tmp_path / "x.txt")]) == 2
    assert "not an ionstream capture file" in capsys.readouterr().err
    assert main(["capture", "info", str(tmp_path / "nope.isc")]) == 2
    assert "No such file" in capsys.readouterr().err
