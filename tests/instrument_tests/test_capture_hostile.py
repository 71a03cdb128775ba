"""Hostile capture files: CRC-valid but crafted content (issue 14 item 4).

Every file here has correct CRCs, so only the reader's own checks stand between it and the
content. Each must give a clear CaptureError (header) or counted damage (records) in the
reader, `capture info`, `capture info --json`, `capture verify` and replay, with bounded
memory: the memory-heavy cases run in a subprocess under RLIMIT_AS, so an expansion the
reader should have refused ends in MemoryError instead of passing quietly.
"""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from instrument.capture import (
    FILE_HEADER, KIND_END, KIND_FRAME, KIND_ZBLOCK, MAGIC, MAX_JSON_DEPTH, RECORD_HEADER, RECORD_MARKER,
    ZENTRY, CaptureError, CaptureReader, capture_info,
)
from instrument.frames import encode_scan
from instrument.sources import EndOfSource, SourceConfigError, open_source

ROOT = Path(__file__).resolve().parents[2]
FRAME = encode_scan(np.arange(200, dtype=np.uint16), sequence=0, scan_number=0, device_time_ns=0)


def header_bytes(doc: bytes, flags: int = 0) -> bytes:
    head = FILE_HEADER.pack(MAGIC, 1, 0, flags, len(doc)) + doc
    return head + struct.pack("<I", zlib.crc32(head))


def record(kind: int, body: bytes, count: int = 1, t: int = 1) -> bytes:
    head = RECORD_HEADER.pack(RECORD_MARKER, kind, 0, count, len(body), t)
    return head + struct.pack("<I", zlib.crc32(head)) + body + struct.pack("<I", zlib.crc32(body))


GOOD_DOC = b'{"format":"ionstream-capture","description":{"source":{"url":"test://"}}}'


def write(path: Path, *records: bytes, doc: bytes = GOOD_DOC, flags: int = 0) -> Path:
    path.write_bytes(header_bytes(doc, flags) + b"".join(records))
    return path


def zstd_block(entries: bytes, declared: bool = True) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_content_size=declared).compress(entries)


def zero_block(n: int) -> bytes:
    """A zstd frame that expands to ``n`` zero bytes (a few hundred bytes for any n), built
    without holding n bytes in memory."""
    import zstandard

    cobj = zstandard.ZstdCompressor(level=1, write_content_size=True).compressobj(size=n)
    chunk = bytes(1 << 20)
    out = []
    left = n
    while left:
        k = min(left, len(chunk))
        out.append(cobj.compress(chunk[:k]))
        left -= k
    out.append(cobj.flush())
    return b"".join(out)


def cli(*args: str, limit_mb: int | None = None) -> subprocess.CompletedProcess:
    """Run `ionstream ARGS` in a subprocess; with ``limit_mb``, under RLIMIT_AS = the address
    space in use after start-up + limit_mb MiB, so an unbounded expansion fails."""
    code = ("import resource, sys\n"
            "from ionstream.cli import main\n"
            "import instrument.capture, instrument.frames, zstandard, numpy\n")
    if limit_mb is not None:
        code += ("vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize:')][0].split()[1]) * 1024\n"
                 f"lim = vm + {limit_mb} * 2**20\n"
                 "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n")
    code += "sys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def replay_all(path: Path) -> bytes:
    src = open_source(f"replay://{path}?speed=max")
    src.open()
    buf = memoryview(bytearray(1 << 16))
    out = bytearray()
    try:
        while True:
            try:
                out += buf[:src.readinto(buf)]
            except EndOfSource:
                return bytes(out)
    finally:
        src.close()


# ---- hostile headers: CaptureError everywhere, exit 2 -------------------------------------

def nested(depth: int) -> bytes:
    return b'{"description":{"x":' + b"[" * depth + b"]" * depth + b"}}"


HOSTILE_HEADERS = {
    "deep-600": (nested(600), "nested"),
    "deep-100000": (nested(100_000), "nested"),
    "description-list": (b'{"description":[1]}', "'description'"),
    "description-string": (b'{"description":"x"}', "'description'"),
    "lone-surrogate-host": (b'{"host":"\\ud800"}', "surrogate"),
    "lone-surrogate-key": (b'{"description":{"\\udfff":1}}', "surrogate"),
    "host-number": (b'{"host":5}', "'host'"),
    "created-list": (b'{"created":[]}', "'created'"),
    "pid-string": (b'{"pid":"12"}', "'pid'"),
    "created-ns-bool": (b'{"created_unix_ns":true}', "'created_unix_ns'"),
    "compression-string": (b'{"compression":"zstd"}', "'compression'"),
    "compression-level-string": (b'{"compression":{"codec":"zstd","level":"3"}}', "'compression.level'"),
    "part-index-negative": (b'{"part":{"index":-1}}', "'part.index'"),
    "nan": (b'{"pid":NaN}', "NaN"),
    "huge-int": (b'{"pid":' + b"9" * 5000 + b"}", "JSON"),
    "not-utf8": (b'{"host":"\xff"}', "UTF-8"),
    "array": (b"[1]", "JSON object"),
}


@pytest.mark.parametrize("name", list(HOSTILE_HEADERS))
def test_hostile_header_is_a_capture_error(tmp_path, name):
    doc, expect = HOSTILE_HEADERS[name]
    path = write(tmp_path / f"{name}.isc", record(KIND_FRAME, FRAME), doc=doc)
    with pytest.raises(CaptureError) as exc:
        CaptureReader(path)
    msg = str(exc.value)
    assert str(path) in msg and expect in msg, msg
    with pytest.raises(SourceConfigError, match="capture header"):
        open_source(f"replay://{path}?speed=max")


def test_hostile_headers_in_the_cli_exit_2_without_traceback(tmp_path):
    from ionstream.cli import main

    for name, (doc, _) in HOSTILE_HEADERS.items():
        path = write(tmp_path / f"{name}.isc", record(KIND_FRAME, FRAME), doc=doc)
        for args in (["info"], ["info", "--json"], ["verify"], ["verify", "--json"]):
            assert main(["capture", *args, str(path)]) == 2, (name, args)


def test_deep_header_in_a_subprocess_prints_one_line(tmp_path):
    """The real CLI, as a user runs it: one clear line on stderr, exit 2, no traceback."""
    path = write(tmp_path / "deep.isc", record(KIND_FRAME, FRAME), doc=nested(600))
    for args in (("capture", "info", "--json"), ("capture", "verify")):
        r = cli(*args, str(path))
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and "nested" in r.stderr and str(path) in r.stderr


def test_header_depth_limit_is_generous_for_real_headers(tmp_path):
    """Nesting up to MAX_JSON_DEPTH reads; strings holding brackets do not count."""
    depth = MAX_JSON_DEPTH - 3     # {"description": {"x": [[...]]}} adds 2 levels
    doc = b'{"description":{"x":' + b"[" * depth + b"]" * depth + b', "s": "[[[[{{{{\\"]]"}}'
    path = write(tmp_path / "ok.isc", record(KIND_FRAME, FRAME), doc=doc)
    with CaptureReader(path) as r:
        assert [bytes(f) for _, f in r] == [FRAME]
        assert r.description["s"] == '[[[[{{{{"]]'


# ---- hostile records: counted damage, bounded work, exit 1 --------------------------------

def test_zero_filled_block_is_damage_not_an_expansion(tmp_path):
    """A ZBLOCK that expands to 200 MB of zeros (under 1 kB on disk): refused from its frame
    header, before any expansion; the file's good frame before it is still read."""
    block = zero_block(200_000_000)
    assert len(block) < 10_000
    path = write(tmp_path / "zeros.isc", record(KIND_FRAME, FRAME), record(KIND_ZBLOCK, block, count=65535),
                 flags=1)
    with CaptureReader(path) as r:
        assert [bytes(f) for _, f in r] == [FRAME]
        assert r.corrupt_bytes > 0 and r.damage and "decompressed" in r.damage[0]
    r = cli("capture", "verify", str(path), limit_mb=64)
    assert r.returncode == 1, r.stderr
    assert "DAMAGED" in r.stdout and "Traceback" not in r.stderr
    r = cli("capture", "info", "--json", str(path), limit_mb=64)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["records"] == 1 and d["corrupt_bytes"] == len(block) + 28


def test_zero_entries_within_the_size_cap_stop_at_the_count(tmp_path):
    """A block of 60 MB of zeros (allowed by its size) claiming 3 entries: the reader reads 3
    empty entries (36 bytes), finds more content than 3 entries, and stops: damage, with at
    most a few bytes expanded (checked under a 32 MiB address-space limit)."""
    block = zero_block(60_000_000)
    path = write(tmp_path / "zeros60.isc", record(KIND_ZBLOCK, block, count=3), record(KIND_FRAME, FRAME),
                 flags=1)
    with CaptureReader(path) as r:
        assert [bytes(f) for _, f in r] == [FRAME]
        assert r.corrupt_regions == 1 and "more than its 3 entries" in r.damage[0]
    r = cli("capture", "verify", "--json", str(path), limit_mb=32)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "damaged" and d["frames"] == 1
    assert replay_all(path) == FRAME


def entries(*frames: bytes) -> bytes:
    return b"".join(ZENTRY.pack(i, len(f)) + f for i, f in enumerate(frames))


LYING_RECORDS = {
    "zblock-count-0": (KIND_ZBLOCK, zstd_block(entries(FRAME)), 0, "count"),
    "zblock-count-too-high": (KIND_ZBLOCK, zstd_block(entries(FRAME, FRAME)), 3, "ends after 2 of its 3"),
    "zblock-count-too-low": (KIND_ZBLOCK, zstd_block(entries(FRAME, FRAME)), 1, "more than its 1"),
    "zblock-no-content-size": (KIND_ZBLOCK, zstd_block(entries(FRAME), declared=False), 1, "content size"),
    "zblock-entry-too-long": (KIND_ZBLOCK, zstd_block(ZENTRY.pack(0, 0xFFFFFFFF) + FRAME), 1, "entry"),
    "zblock-not-zstd": (KIND_ZBLOCK, b"\x00" * 64, 1, "zstd"),
    "zblock-trailing-bytes": (KIND_ZBLOCK, zstd_block(entries(FRAME)) + b"junk", 1, "zstd"),
    "frame-count-0": (KIND_FRAME, FRAME, 0, "count"),
    "frame-count-7": (KIND_FRAME, FRAME, 7, "count"),
}


@pytest.mark.parametrize("name", list(LYING_RECORDS))
def test_records_whose_count_or_content_lies_are_damage(tmp_path, name):
    kind, body, count, expect = LYING_RECORDS[name]
    path = write(tmp_path / f"{name}.isc", record(KIND_FRAME, FRAME), record(kind, body, count=count),
                 record(KIND_FRAME, FRAME), flags=1)
    with CaptureReader(path) as r:
        assert [bytes(f) for _, f in r] == [FRAME, FRAME]
        assert r.corrupt_regions == 1 and r.corrupt_bytes == len(body) + 28
        assert expect in r.damage[0], r.damage
    info = capture_info(path)
    assert info.records == 2 and info.corrupt_bytes == len(body) + 28 and not info.ok
    assert replay_all(path) == FRAME + FRAME


def test_hostile_end_records_do_not_crash(tmp_path):
    """END bodies are the writer's counters; a deep, non-object or non-UTF-8 one is ignored."""
    for i, body in enumerate([b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b"\xff\xfe", b'{"records":NaN}']):
        path = write(tmp_path / f"end{i}.isc", record(KIND_FRAME, FRAME), record(KIND_END, body, count=0))
        with CaptureReader(path) as r:
            assert [bytes(f) for _, f in r] == [FRAME]
            assert r.end == {}
        info = capture_info(path)
        assert info.closed_cleanly and info.records == 1
        assert json.loads(json.dumps(info.as_dict()))["records"] == 1
