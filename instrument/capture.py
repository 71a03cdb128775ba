"""Capture files (format 1.1, docs/capture.md): raw device frames with host receive times.

A capture is a file header (magic, format version, a JSON description of the source and
settings, CRC-32) followed by an append-only log of records. Each record has a 24-byte
header with its own CRC-32, a body and a body CRC-32, so a reader can tell a whole record
from a torn one without trusting any length field it has not checked::

    FRAME  one device frame, byte for byte as received, with its host receive time
    ZBLOCK a zstd-compressed run of (host time, frame) entries (``compress=True``)
    END    written by close(): the writer's final counters (absent after a crash)

Crash safety: the writer only appends. After SIGKILL or power loss the file holds every
record up to some point, then at most one torn record (or nothing). ``CaptureReader``
yields every whole record and reports the bytes after the last one as
``torn_tail_bytes``; it never raises on damaged records. Damage in the middle of a file
(bit rot, a failed write followed by more appends) and whole records whose content is not
what their header says are skipped (searching for the next valid record) and counted in
``corrupt_bytes``, with the reasons in ``damage``. Hostile input is bounded: the header
document's nesting is checked before parsing, and a ZBLOCK's count and declared size
before anything is expanded.

Durability: ``append()`` hands each whole record to the OS at once (one writev), so a
killed *process* loses at most the record being written (compressed: the block in
progress); every ``fsync_interval_s`` (checked on each append/flush call, no thread) the
writer fsyncs, so a power cut loses at most the last interval.

Writer and reader are not thread-safe: one thread owns each.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"\x89ISC\r\n\x1a\n"
"""First 8 bytes of every capture file (89 49 53 43 0D 0A 1A 0A)."""

FORMAT_MAJOR = 1
"""Readers refuse files with a larger major version (an incompatible layout)."""
FORMAT_MINOR = 1
"""Compatible additions (new JSON keys, new record kinds that old readers skip) bump this."""

FILE_HEADER = struct.Struct("<8sHHII")  # magic, major, minor, flags, json_length
FILE_HEADER_SIZE = FILE_HEADER.size    # 20, then the JSON, then its CRC-32 (u32)
FLAG_ZSTD = 0x1
"""File-header flag: the writer was asked to compress (records may be ZBLOCKs)."""
MAX_HEADER_JSON = 16 * 1024 * 1024

RECORD_MARKER = b"\xd3\x0fRC"
"""First 4 bytes of every record (D3 0F 52 43)."""
RECORD_HEADER = struct.Struct("<4sBBHIq")  # marker, kind, flags, count, body_length, host_time_ns
RECORD_HEADER_SIZE = RECORD_HEADER.size + 4  # 24: the 20 bytes above and their CRC-32
RECORD_TRAILER_SIZE = 4                      # CRC-32 of the body
RECORD_OVERHEAD = RECORD_HEADER_SIZE + RECORD_TRAILER_SIZE
MAX_RECORD_BODY = 256 * 1024 * 1024
"""Largest body a reader accepts; larger length fields are treated as damage."""

KIND_FRAME = 1
KIND_ZBLOCK = 2
KIND_END = 3
KIND_NAMES = {KIND_FRAME: "FRAME", KIND_ZBLOCK: "ZBLOCK", KIND_END: "END"}

ZENTRY = struct.Struct("<qI")  # host_time_ns, frame length -- then the frame bytes
MAX_ZBLOCK_ENTRIES = 0xFFFF
MAX_ZBLOCK_DECOMPRESSED = 80 * 1024 * 1024
"""Largest content a ZBLOCK may declare: the writer's largest block (MAX_BLOCK_BYTES) plus
one largest device frame (docs/protocol.md: 1 KiB header + 64 MiB payload). Larger frames
are written as FRAME records even when compressing, so a reader never expands more than
this per block, whatever a crafted file claims."""
MAX_BLOCK_BYTES = 8 * 1024 * 1024
"""Largest ``block_bytes`` a CaptureWriter accepts."""
MAX_DAMAGE_NOTES = 20

_U32 = struct.Struct("<I")
_crc32 = zlib.crc32


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

class CaptureError(ValueError):
    """A file cannot be read as a capture; the message names the file and what was found."""


class NotACaptureError(CaptureError):
    """The file does not start with the capture magic."""


class CaptureVersionError(CaptureError):
    """The capture was written in a newer, incompatible major format version."""


def _ionstream_version() -> str:
    try:
        from importlib.metadata import version

        return version("ionstream")
    except Exception:
        return "unknown"


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------

class CaptureWriter:
    """Append raw device frames to a new capture file.

    ``CaptureWriter(path, description, fsync_interval_s=1.0, compress=False)`` creates
    ``path`` (truncating an existing file unless ``exclusive=True``, which raises
    FileExistsError instead) and writes the file header at once, fsynced with its
    directory, so even an empty recording is a valid capture.

    ``description`` is the caller's JSON-able dict, stored as ``header["description"]``;
    by convention ``{"source": source.describe(), "settings": {...}}``. The writer adds
    the format version, ionstream version, start wall time, host and compression, and
    ``part`` (``{"index": i, "previous": name, "first": name}``) when given, for the parts
    of a rotated recording.

    Durability: every record is handed to the OS as soon as it is complete (one
    ``os.writev`` per record, nothing held in the process), so a killed process loses at
    most the record being written. ``fsync_interval_s``: seconds between fsyncs, the
    power-loss window (0: after every append; None: only at close). ``compress``: False,
    True (zstd level 3) or a zstd level; frames are then gathered in memory into blocks of
    about ``block_bytes`` (at most MAX_BLOCK_BYTES) that are compressed independently; the
    block in progress is what a killed process loses, so a block is also closed on every
    fsync tick and every flush(). A frame larger than MAX_BLOCK_BYTES is written as its
    own FRAME record even when compressing.

    A failed write (ENOSPC, EIO, ...) truncates the file back to its last whole record,
    raises OSError, and leaves the writer failed: later appends raise, and close() still
    tries to add the END record (and truncates it away if that fails too), so the file
    stays a valid capture without a torn tail.

    Counters: ``records`` (frames appended), ``bytes`` (frame bytes appended),
    ``file_bytes`` (bytes in the file: headers and whole records), ``fsyncs``,
    ``frames_written`` (frames handed to the OS; less than ``records`` only by the frames
    of a compressed block in progress).
    """

    def __init__(self, path: str | os.PathLike, description: dict[str, Any] | None = None, *,
                 fsync_interval_s: float | None = 1.0, compress: bool | int = False,
                 exclusive: bool = False, block_bytes: int = 4 << 20, part: dict[str, Any] | None = None):
        self.path = Path(path)
        self.fsync_interval_s = fsync_interval_s
        self.records = 0
        self.bytes = 0
        self.file_bytes = 0
        self.fsyncs = 0
        self._frames_written = 0
        self._closed = True
        self._failed: str | None = None
        level = 3 if compress is True else int(compress or 0)
        if not 0 < int(block_bytes) <= MAX_BLOCK_BYTES:
            raise ValueError(f"block_bytes must be 1..{MAX_BLOCK_BYTES}, got {block_bytes}")
        self.compress_level = level
        if level:
            import zstandard

            self._zc = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
        else:
            self._zc = None
        self._block = bytearray()
        self._block_entries = 0
        self._block_t0 = 0
        self._block_bytes = int(block_bytes)
        self.started_wall_ns = time.time_ns()
        self.header: dict[str, Any] = {
            "format": "ionstream-capture",
            "format_version": f"{FORMAT_MAJOR}.{FORMAT_MINOR}",
            "ionstream_version": _ionstream_version(),
            "created": datetime.fromtimestamp(self.started_wall_ns / 1e9, timezone.utc).isoformat(),
            "created_unix_ns": self.started_wall_ns,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "host_clock": "time.time_ns",
            "compression": {"codec": "zstd", "level": level, "block_bytes": self._block_bytes} if level else None,
            "description": description if description is not None else {},
        }
        if part is not None:
            self.header["part"] = dict(part)
        doc = json.dumps(self.header, sort_keys=False, default=str).encode("utf-8")
        head = FILE_HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, FLAG_ZSTD if level else 0, len(doc)) + doc
        head += _U32.pack(_crc32(head))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._closed = False
        try:
            self._write_whole(head)
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)
        except BaseException:
            self._abort()
            raise
        self._last_sync = time.monotonic()

    # ---- public API ----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def compressed(self) -> bool:
        return self._zc is not None

    @property
    def failed(self) -> str | None:
        """Why writing stopped (a write or fsync error), or None."""
        return self._failed

    @property
    def pending_bytes(self) -> int:
        """Uncompressed bytes of the compressed block in progress (not yet in the file)."""
        return len(self._block)

    @property
    def frames_written(self) -> int:
        """Frames handed to the OS: in the file even if this process is killed now (counted
        only after the write returned, so another thread may read it at any time)."""
        return self._frames_written

    def append(self, raw_frame, host_time_ns: int | None = None) -> None:
        """Append one device frame (any bytes-like object) received at ``host_time_ns``.

        ``host_time_ns`` defaults to time.time_ns(). Uncompressed, the record is in the OS
        when this returns. May fsync when the interval is due. OSError if the write fails.
        """
        self._check_open()
        mv = memoryview(raw_frame)
        if mv.format != "B" or mv.ndim != 1 or not mv.c_contiguous:
            mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
        n = len(mv)
        if n > MAX_RECORD_BODY:
            raise ValueError(f"frame of {n} bytes is larger than a capture record may be ({MAX_RECORD_BODY})")
        t = time.time_ns() if host_time_ns is None else int(host_time_ns)
        if self._zc is not None and n <= MAX_BLOCK_BYTES:
            if self._block_entries == 0:
                self._block_t0 = t
            self._block += ZENTRY.pack(t, n)
            self._block += mv
            self._block_entries += 1
            self.records += 1
            self.bytes += n
            if len(self._block) >= self._block_bytes or self._block_entries >= MAX_ZBLOCK_ENTRIES:
                self._emit_block()
        else:
            if self._block_entries:  # keep the frames in order
                self._emit_block()
            self._put_record(KIND_FRAME, 1, t, mv)
            self.records += 1
            self.bytes += n
            self._frames_written += 1
        self._maybe_sync()

    def flush(self) -> None:
        """Close a pending compressed block (uncompressed records are already with the OS);
        fsync too if the interval is due. A killed process then loses nothing appended."""
        self._check_open()
        if self._block_entries:
            self._emit_block()
        self._maybe_sync()

    def sync(self) -> None:
        """flush() and fsync now, whatever the interval."""
        self._check_open()
        if self._block_entries:
            self._emit_block()
        self._fsync()

    def close(self, **end_extra: Any) -> None:
        """Write the pending block and an END record (the counters and ``end_extra``), fsync,
        close. After a failed write it still tries the END record. Safe to call twice."""
        if self._closed:
            return
        try:
            if self._block_entries and self._failed is None:
                try:
                    self._emit_block()
                except OSError:
                    pass  # truncated back to the last whole record; the END record may still fit
            end = {"records": self.frames_written, "frame_bytes": self.bytes, "closed_unix_ns": time.time_ns(),
                   "fsyncs": self.fsyncs + 1, **end_extra}
            if self._failed is not None:
                end["error"] = self._failed
            body = json.dumps(end, default=str).encode()
            try:
                self._put_record(KIND_END, 0, time.time_ns(), body, force=True)
                self._fsync()
            except OSError:
                pass  # _put_record truncated it away: the file ends at its last whole record
        finally:
            self._abort()

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten writer still leaves a readable file
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # ---- internals -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"capture {self.path} is closed")
        if self._failed is not None:
            raise OSError(f"capture {self.path} failed earlier ({self._failed}); no more records are written")

    def _put_record(self, kind: int, count: int, t: int, body, *, force: bool = False) -> None:
        """Write one whole record with one writev (no copy of the body)."""
        if self._failed is not None and not force:
            raise OSError(f"capture {self.path} failed earlier ({self._failed})")
        head = RECORD_HEADER.pack(RECORD_MARKER, kind, 0, count, len(body), t)
        head += _U32.pack(_crc32(head))
        self._write_whole(head, body, _U32.pack(_crc32(body)))

    def _emit_block(self) -> None:
        block = self._zc.compress(self._block)
        entries, t0 = self._block_entries, self._block_t0
        self._block = bytearray()
        self._block_entries = 0  # gone either way: a failed write truncates the block away
        try:
            self._put_record(KIND_ZBLOCK, entries, t0, block)
        except OSError:
            self.records -= entries  # never in the file
            raise
        self._frames_written += entries

    def _write_whole(self, *parts) -> None:
        """Write ``parts`` back to back; on any failure truncate to the last whole record."""
        good = self.file_bytes
        views = [memoryview(p).cast("B") for p in parts]
        try:
            while views:
                n = os.writev(self._fd, views)
                self.file_bytes += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except OSError as exc:
            if self._failed is None:
                self._failed = f"{type(exc).__name__}: {exc}"
            try:  # a record cut part-way would be a torn tail; take it back out
                os.ftruncate(self._fd, good)
                os.lseek(self._fd, good, os.SEEK_SET)  # ftruncate leaves the offset: no hole before END
                self.file_bytes = good
            except OSError:
                pass
            raise

    def _maybe_sync(self) -> None:
        interval = self.fsync_interval_s
        if interval is None:
            return
        if time.monotonic() - self._last_sync >= interval:
            if self._block_entries:
                self._emit_block()
            self._fsync()

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if self._failed is None:
                self._failed = f"fsync: {exc}"
            raise
        self.fsyncs += 1
        self._last_sync = time.monotonic()

    def _abort(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        self._closed = True
        if fd >= 0:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (best effort: not every OS/filesystem allows it)."""
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------

class CaptureRecord(NamedTuple):
    """One recorded frame: ``for host_time_ns, frame in reader: ...``.

    ``frame`` is a read-only memoryview of an immutable buffer: it may be kept for ever.
    """

    host_time_ns: int
    frame: memoryview


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], tuple[int, int], int, int]:
    """(header dict, (major, minor), flags, offset of the first record) of the capture at ``path``.

    Raises FileNotFoundError, NotACaptureError, CaptureVersionError or CaptureError.
    """
    with open(path, "rb") as f:
        return _parse_header(f, str(path))


def _parse_header(f, name: str) -> tuple[dict[str, Any], tuple[int, int], int, int]:
    head = f.read(FILE_HEADER_SIZE)
    if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        raise NotACaptureError(f"{name} is not an ionstream capture file: {_what_is(head, name)}")
    if len(head) < FILE_HEADER_SIZE:
        raise CaptureError(f"{name}: capture header is cut short ({len(head)} of {FILE_HEADER_SIZE} bytes); "
                           "the recording stopped before it started")
    _, major, minor, flags, length = FILE_HEADER.unpack(head)
    if major > FORMAT_MAJOR:
        raise CaptureVersionError(
            f"{name} is capture format {major}.{minor}, newer than this ionstream ({_ionstream_version()}) "
            f"reads ({FORMAT_MAJOR}.x); upgrade ionstream to read it")
    if major < 1:
        raise CaptureError(f"{name}: capture format {major}.{minor} is not a released version")
    if length > MAX_HEADER_JSON:
        raise CaptureError(f"{name}: capture header claims {length} bytes of JSON; the header is corrupt")
    rest = f.read(length + 4)
    if len(rest) < length + 4:
        raise CaptureError(f"{name}: capture header is cut short ({FILE_HEADER_SIZE + len(rest)} of "
                           f"{FILE_HEADER_SIZE + length + 4} bytes); the recording stopped before it started")
    doc, (crc,) = rest[:length], _U32.unpack_from(rest, length)
    if _crc32(doc, _crc32(head)) != crc:
        raise CaptureError(f"{name}: capture header is corrupt (CRC-32 mismatch)")
    header = _load_header_document(doc, name)
    return header, (major, minor), flags, FILE_HEADER_SIZE + length + 4


# ---------------------------------------------------------------------------------------
# The header document: bounded parsing and a schema for the keys this version writes
# ---------------------------------------------------------------------------------------

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays/objects a header (or END) document may have. Checked on the
bytes before json.loads, whose recursion would otherwise raise RecursionError (or, in a
thread with a small stack, overflow it) and whose result json.dumps could not print."""

# A string, or an unterminated one up to the end: each quote starts at most one scan, so
# stripping strings stays linear even on `"\\"\\"\\"...` without a closing quote.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1

_HEADER_SCHEMA: dict[str, tuple[type, ...]] = {
    # key: allowed JSON types (int excludes bool). Readers accept unknown keys and require none.
    "format": (str,), "format_version": (str,), "ionstream_version": (str,), "created": (str,),
    "created_unix_ns": (int,), "host": (str,), "pid": (int,), "host_clock": (str,),
    "compression": (dict, type(None)), "description": (dict,), "part": (dict, type(None)),
}
_SUB_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "compression": {"codec": (str,), "level": (int,), "block_bytes": (int,)},
    "part": {"index": (int,), "previous": (str, type(None)), "first": (str, type(None))},
}
_TYPE_NAMES = {dict: "a JSON object", list: "an array", str: "a string", int: "an integer",
               float: "a number", bool: "true/false", type(None): "null"}


def json_depth(doc: bytes) -> int:
    """Deepest array/object nesting in the JSON text ``doc`` (brackets inside strings do not count).

    Linear and non-recursive (a regex and a cumulative sum), so safe on any input.
    """
    bare = _JSON_STRING.sub(b"", doc)
    if not bare:
        return 0
    steps = _OPEN[np.frombuffer(bare, dtype=np.uint8)]
    if not steps.any():
        return 0
    return int(np.cumsum(steps, dtype=np.int64).max())


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (a non-finite number)")


def load_json_object(doc: bytes, what: str) -> dict[str, Any]:
    """Parse ``doc`` as one JSON object with bounded depth, finite numbers and well-formed
    strings (no unpaired UTF-16 surrogates, which no UTF-8 output can print).

    Raises ValueError naming the problem; ``what`` says which document it is.
    """
    try:
        text = doc.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 (byte {exc.start}: {doc[exc.start:exc.start + 1].hex()})") from None
    depth = json_depth(doc)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{what} is nested {depth} levels deep (at most {MAX_JSON_DEPTH} allowed)")
    value = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(value, dict):
        raise ValueError(f"{what} is {_type_name(value)}, not a JSON object")
    _check_strings(value, what)
    return value


def _check_strings(value: Any, what: str) -> None:
    """Every key and string in ``value`` encodes to UTF-8 (iterative: depth is already bounded)."""
    stack = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                _check_string(k, what, where or "(top level)")
                stack.append((v, f"{where}.{k}" if where else k))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, what, where)


def _check_string(s: str, what: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} key {where!r} holds an unpaired UTF-16 surrogate "
                         f"(\\u{ord(s[exc.start]):04x}) that cannot be printed") from None


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def check_header_schema(header: dict[str, Any]) -> None:
    """ValueError naming the first key this version writes that holds the wrong type."""
    for key, types in _HEADER_SCHEMA.items():
        if key in header and not _is_a(header[key], types):
            raise ValueError(f"key {key!r} must be {' or '.join(_TYPE_NAMES[t] for t in types)}, "
                             f"found {_type_name(header[key])}")
    for key, schema in _SUB_SCHEMA.items():
        sub = header.get(key)
        if not isinstance(sub, dict):
            continue
        for k, types in schema.items():
            if k in sub and not _is_a(sub[k], types):
                raise ValueError(f"key '{key}.{k}' must be {' or '.join(_TYPE_NAMES[t] for t in types)}, "
                                 f"found {_type_name(sub[k])}")
    part = header.get("part")
    if isinstance(part, dict) and isinstance(part.get("index"), int) and part["index"] < 0:
        raise ValueError(f"key 'part.index' must be >= 0, found {part['index']}")


def _load_header_document(doc: bytes, name: str) -> dict[str, Any]:
    try:
        header = load_json_object(doc, "the header document")
        check_header_schema(header)
    except ValueError as exc:
        raise CaptureError(f"{name}: capture header JSON is invalid: {exc}; the file was not written by a "
                           "conforming capture writer (docs/capture.md, 'Header document')") from None
    return header


def _what_is(head: bytes, name: str) -> str:
    if not head:
        return "the file is empty"
    from instrument.frames import SYNC

    if head.startswith(SYNC):
        return ("it starts with a device-frame sync word (A5 5A 49 53): it is a raw frame stream "
                "(e.g. `ionstream simulate` output), not a capture")
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "it is a zstd-compressed file; decompress it first"
    if head[:2] == b"\x1f\x8b":
        return "it is a gzip-compressed file; decompress it first"
    shown = head[:8]
    return f"it starts with {shown.hex(' ')} ({shown!r}), expected {MAGIC.hex(' ')}"


class CaptureReader:
    """Read a capture: ``header``, then ``for host_time_ns, frame in reader``.

    Construction reads and checks the file header: NotACaptureError, CaptureVersionError
    or CaptureError (each naming the file and what was found) for files it cannot read.
    Iteration never raises on damaged records: after it, ``torn_tail_bytes`` holds the
    bytes after the last whole record (0 for a cleanly closed or cleanly cut file) and
    ``corrupt_bytes`` the bytes skipped between whole records. Each iteration starts
    again from the first record and resets those counters. ``end`` is the END record's
    dict when the writer closed the file (None after a crash).
    """

    def __init__(self, path: str | os.PathLike, *, read_size: int = 1 << 20):
        self.path = Path(path)
        self._f = open(self.path, "rb", buffering=0)
        try:
            self.header, self.version, self.flags, self.data_offset = _parse_header(self._f, str(self.path))
        except BaseException:
            self._f.close()
            raise
        self._read_size = int(read_size)
        self._dctx = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.records = 0                # frames yielded
        self.torn_tail_bytes = 0
        self.corrupt_bytes = 0          # bytes skipped between whole records
        self.corrupt_regions = 0
        self.damage: list[str] = []     # what each damaged region was (the first MAX_DAMAGE_NOTES)
        self.unknown_records = 0        # whole records of kinds this version does not know (skipped)
        self.frame_bytes = 0            # bytes of the frames yielded
        self.end: dict[str, Any] | None = None
        self.end_offset: int | None = None        # file offset just after the END record
        self.torn_tail_offset: int | None = None  # where the torn tail starts
        self.file_size = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZSTD)

    @property
    def description(self) -> dict[str, Any]:
        return self.header.get("description") or {}

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[CaptureRecord]:
        return self.records_iter()

    def records_iter(self, start: int | None = None, stop: int | None = None) -> Iterator[CaptureRecord]:
        """Every recorded frame in order (see the class docstring for damage handling).

        ``start``/``stop`` (file offsets, bytes) read one part of the file, for parallel readers:
        the records from the first whole record at or after ``start`` to the last one that begins
        before ``stop``. Parts cut at any offsets 0 < a < b < ... < file size yield every record
        exactly once between them.
        """
        self._reset_counters()
        size = os.fstat(self._f.fileno()).st_size
        self.file_size = size
        scanner = _Scanner(self._f, self.data_offset, size, self._read_size)
        pos = self.data_offset
        if start is not None and start > pos:
            found = scanner.find_record(start)
            pos = size if found is None else found
        if stop is not None:
            size = min(size, max(stop, pos))
        while pos < size:
            rec = scanner.record_at(pos)
            if rec is None:
                nxt = scanner.find_record(pos + 1)
                if nxt is None:
                    self.torn_tail_bytes = size - pos
                    self.torn_tail_offset = pos
                    return
                self._damaged(pos, nxt - pos, "bytes that are not a whole record")
                pos = nxt
                continue
            kind, count, t, body, end = rec
            start, pos = pos, end
            if kind == KIND_FRAME:
                if count != 1:  # checked like a ZBLOCK's count: a record that lies is not trusted
                    self._damaged(start, end - start, f"FRAME record with count {count} (must be 1)")
                    continue
                self.records += 1
                self.frame_bytes += len(body)
                yield CaptureRecord(t, body)
            elif kind == KIND_ZBLOCK:
                try:
                    entries = self._unpack_block(body, count)
                except _BadBlock as exc:
                    self._damaged(start, end - start, f"ZBLOCK record: {exc}")
                    continue
                for entry in entries:
                    self.records += 1
                    self.frame_bytes += len(entry.frame)
                    yield entry
            elif kind == KIND_END:
                try:
                    self.end = load_json_object(bytes(body), "END record")
                except ValueError:
                    self.end = {}  # whole (CRCs right) but not readable: the writer still closed the file
                self.end_offset = end
            else:
                self.unknown_records += 1

    def _damaged(self, offset: int, nbytes: int, what: str) -> None:
        self.corrupt_bytes += nbytes
        self.corrupt_regions += 1
        if len(self.damage) < MAX_DAMAGE_NOTES:
            self.damage.append(f"offset {offset}: {nbytes} bytes skipped: {what}")

    def _unpack_block(self, body: memoryview, count: int) -> list[CaptureRecord]:
        """The block's ``count`` entries, or _BadBlock. Work and memory are bounded before
        anything is expanded: the count and the declared content size are checked first,
        then the content is streamed entry by entry and reading stops at ``count``."""
        import zstandard

        if not 1 <= count <= MAX_ZBLOCK_ENTRIES:
            raise _BadBlock(f"count {count} (must be 1..{MAX_ZBLOCK_ENTRIES})")
        try:
            size = zstandard.get_frame_parameters(body).content_size
        except zstandard.ZstdError as exc:
            raise _BadBlock(f"body is not a zstd frame ({exc})") from None
        if size == zstandard.CONTENTSIZE_UNKNOWN:
            raise _BadBlock("zstd frame does not declare its content size")
        if size > MAX_ZBLOCK_DECOMPRESSED:
            raise _BadBlock(f"declares {size} bytes decompressed, more than a block may hold "
                            f"({MAX_ZBLOCK_DECOMPRESSED})")
        if size < count * ZENTRY.size:
            raise _BadBlock(f"declares {size} bytes decompressed, too few for its {count} entries")
        if self._dctx is None:
            self._dctx = zstandard.ZstdDecompressor()
        out: list[CaptureRecord] = []
        left = size
        try:
            stream = self._dctx.stream_reader(body, read_across_frames=False)
            while len(out) < count:
                head = _read_exact(stream, ZENTRY.size)
                if head is None:
                    raise _BadBlock(f"content ends after {len(out)} of its {count} entries")
                t, n = ZENTRY.unpack(head)
                left -= ZENTRY.size
                if n > left:
                    raise _BadBlock(f"entry {len(out)} claims {n} bytes, more than the {left} left in the block")
                frame = _read_exact(stream, n)
                if frame is None:
                    raise _BadBlock(f"content ends inside entry {len(out)}")
                left -= n
                out.append(CaptureRecord(t, memoryview(frame)))
            if left or stream.read(1):
                raise _BadBlock(f"holds more than its {count} entries")
        except zstandard.ZstdError as exc:
            raise _BadBlock(f"zstd frame does not decompress ({exc})") from None
        return out


class _BadBlock(Exception):
    """A whole ZBLOCK record (CRCs right) whose content is not what its header says."""


def _read_exact(stream, n: int) -> bytes | None:
    """n bytes from a zstd stream reader (None if the content ends first)."""
    if n == 0:
        return b""
    data = stream.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            return None
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Scanner:
    """Random access to the record area through one reusable window (few syscalls, no mmap)."""

    def __init__(self, f, start: int, size: int, read_size: int):
        self.f = f
        self.size = size
        self.read_size = read_size
        self.win = b""
        self.win_start = start

    def _get(self, pos: int, n: int) -> memoryview | bytes | None:
        """n bytes at pos (None past EOF). Small reads come from the window; big ones are read whole."""
        if pos + n > self.size:
            return None
        off = pos - self.win_start
        if 0 <= off and off + n <= len(self.win):
            return memoryview(self.win)[off:off + n]
        if n >= self.read_size // 2:
            self.f.seek(pos)
            data = self._read_exact(n)
            return data
        self.f.seek(pos)
        self.win = self._read_exact(min(max(n, self.read_size), self.size - pos))
        self.win_start = pos
        return memoryview(self.win)[:n]

    def _read_exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:  # a regular file short read (file truncated under us)
            parts = [data]
            got = len(data)
            while got < n:
                more = self.f.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        return data

    def record_at(self, pos: int):
        """(kind, count, host_time_ns, body view, end offset) if a whole valid record starts at pos."""
        head = self._get(pos, RECORD_HEADER_SIZE)
        if head is None or len(head) < RECORD_HEADER_SIZE or bytes(head[:4]) != RECORD_MARKER:
            return None
        if _crc32(head[:RECORD_HEADER.size]) != _U32.unpack_from(head, RECORD_HEADER.size)[0]:
            return None
        _, kind, _flags, count, length, t = RECORD_HEADER.unpack_from(head)
        if length > MAX_RECORD_BODY:
            return None
        end = pos + RECORD_HEADER_SIZE + length + RECORD_TRAILER_SIZE
        if end > self.size:
            return None
        rest = self._get(pos + RECORD_HEADER_SIZE, length + RECORD_TRAILER_SIZE)
        if rest is None or len(rest) < length + RECORD_TRAILER_SIZE:
            return None
        rest = memoryview(rest)
        body = rest[:length]
        if _crc32(body) != _U32.unpack_from(rest, length)[0]:
            return None
        return kind, count, t, body, end

    def find_record(self, pos: int) -> int | None:
        """Offset of the next whole valid record at or after pos, or None."""
        step = max(self.read_size, 1 << 16)
        while pos < self.size:
            self.f.seek(pos)
            chunk = self._read_exact(min(step + 3, self.size - pos))
            i = 0
            while True:
                i = chunk.find(RECORD_MARKER, i)
                if i < 0:
                    break
                if self.record_at(pos + i) is not None:
                    return pos + i
                i += 1
            if len(chunk) <= 3:
                break
            pos += len(chunk) - 3
        return None


# ---------------------------------------------------------------------------------------
# capture info
# ---------------------------------------------------------------------------------------

@dataclass
class CaptureInfo:
    """What `ionstream capture info` shows. Durations in s, rates per s, sizes in bytes."""

    path: str
    format_version: str
    file_bytes: int
    header: dict[str, Any]
    records: int = 0                 # recorded frames (records in the file)
    frame_bytes: int = 0             # device-frame bytes recorded
    scans: int = 0
    status_frames: int = 0
    invalid_records: int = 0         # records whose bytes are not exactly one valid device frame
    first_host_time_ns: int | None = None
    last_host_time_ns: int | None = None
    duration_host_s: float = 0.0     # last - first host receive time
    duration_device_s: float = 0.0   # last - first device timestamp (valid frames)
    scan_rate_hz: float = 0.0        # (scans - 1) / span of the scans' host times
    mb_per_s: float = 0.0            # frame bytes / duration_host_s / 1e6
    sequence_gaps: int = 0
    sequence_restarts: int = 0
    crc_errors: int = 0              # header + payload CRC failures inside recorded frames
    header_crc_errors: int = 0
    payload_crc_errors: int = 0
    resyncs: int = 0
    bytes_skipped: int = 0
    samples_per_scan_min: int = 0
    samples_per_scan_max: int = 0
    torn_tail: bool = False
    torn_tail_bytes: int = 0
    corrupt_bytes: int = 0           # damaged bytes skipped between whole records
    damage: list = field(default_factory=list)  # what each damaged region was (the first 20)
    closed_cleanly: bool = False     # the writer's END record is present
    after_end_bytes: int = 0         # bytes after the END record (damage: a writer never appends after END)
    compressed: bool = False
    part: dict | None = None         # rotated recordings: {"index", "previous", "first"} (header "part")

    @property
    def description(self) -> dict[str, Any]:
        return self.header.get("description") or {}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["description"] = self.description
        return d

    @property
    def ok(self) -> bool:
        """No damage of any kind and no torn tail: whole records only, every one a valid frame."""
        return not (self.torn_tail or self.damaged)

    @property
    def damaged(self) -> bool:
        """Real damage: anything but a torn tail after the last whole record (see outcome)."""
        return bool(self.corrupt_bytes or self.invalid_records or self.crc_errors or self.after_end_bytes)

    @property
    def outcome(self) -> str:
        """``ok``, ``torn_tail`` or ``damaged`` (what `capture verify` reports).

        ``torn_tail``: every record up to the last whole one is intact and only the bytes after
        it are not a whole record, the documented result of a crash or power cut while
        writing (no END record). The frames are all there; the tail is ignored by every reader.
        """
        if self.damaged:
            return "damaged"
        return "torn_tail" if self.torn_tail else "ok"


def samples_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


# ---------------------------------------------------------------------------------------
# A capture's device frames: the one definition
# ---------------------------------------------------------------------------------------

class CaptureFrames:
    """The decoded device frames of a capture: ``for host_time_ns, frame in iter_frames(reader)``.

    This is the one definition of "a capture's frames" that ionstream's readers share
    (``capture info``/``verify``, replay, mzML export, reprocess). ``per_record=True`` (the
    format's rule, docs/capture.md "Frames of a capture") decodes each record on its own
    with a reset decoder: a record holds one frame, so a record that is not exactly one
    valid frame is counted in ``invalid_records`` and can never swallow bytes of the next
    one; any valid frames inside it are still yielded. ``per_record=False`` decodes the
    records' bytes as one stream, as the acquisition thread decodes a live byte stream;
    it is for captures of raw reads by third-party writers, and counts ``invalid_records``
    as 0.

    Each ``frame`` is an ``instrument.frames.DecodedFrame`` (header, raw, payload). With
    ``per_record=True`` its views point into the reader's immutable record bytes and may
    be kept; with ``per_record=False`` a frame that straddles records lives only until the
    next item. ``decoder`` (a FrameDecoder) holds the frame counters (CRC errors, gaps, ...).

    Counters, valid during and after iteration: ``records`` (records read), ``record_bytes``,
    ``invalid_records``, ``first_host_time_ns`` / ``last_host_time_ns`` (of records, None
    before the first). The reader's own counters (torn tail, damage, END) are on ``reader``.
    """

    def __init__(self, reader: CaptureReader, *, per_record: bool = True, decoder=None):
        from instrument.frames import FrameDecoder

        self.reader = reader
        self.per_record = per_record
        self.decoder = decoder if decoder is not None else FrameDecoder()
        self.records = 0
        self.record_bytes = 0
        self.invalid_records = 0
        self.first_host_time_ns: int | None = None
        self.last_host_time_ns: int | None = None

    def __iter__(self):
        decoder, per_record = self.decoder, self.per_record
        for t, record in self.reader:
            self.records += 1
            self.record_bytes += len(record)
            if self.first_host_time_ns is None:
                self.first_host_time_ns = t
            self.last_host_time_ns = t
            if not per_record:
                for frame in decoder.feed(record):
                    yield t, frame
                continue
            whole = found = 0
            for frame in decoder.feed(record):
                found += 1
                whole += len(frame.raw) == len(record)
                yield t, frame
            if whole != 1 or found != 1 or decoder.buffered:
                self.invalid_records += 1
            decoder.reset()  # a record is one frame: never join bytes across records


def iter_frames(reader: CaptureReader, *, per_record: bool = True, decoder=None) -> CaptureFrames:
    """The decoded frames of ``reader`` as ``(host_time_ns, DecodedFrame)``; see CaptureFrames."""
    return CaptureFrames(reader, per_record=per_record, decoder=decoder)


def capture_info(path: str | os.PathLike) -> CaptureInfo:
    """Scan the whole capture, decoding every recorded frame (iter_frames, per record)."""
    from instrument.frames import FrameType

    with CaptureReader(path) as reader:
        info = CaptureInfo(path=str(path), format_version="%d.%d" % reader.version,
                           file_bytes=os.path.getsize(path), header=reader.header, compressed=reader.compressed)
        frames = iter_frames(reader, per_record=True)
        stats = frames.decoder.stats
        first_dev = last_dev = None
        first_scan_t = last_scan_t = None
        lo = hi = None
        for t, decoded in frames:
            h = decoded.header
            if first_dev is None:
                first_dev = h.device_time_ns
            last_dev = h.device_time_ns
            if h.frame_type == FrameType.SCAN:
                n = h.n_samples
                lo = n if lo is None or n < lo else lo
                hi = n if hi is None or n > hi else hi
                if first_scan_t is None:
                    first_scan_t = t
                last_scan_t = t
        info.records, info.frame_bytes = frames.records, frames.record_bytes
        info.first_host_time_ns, info.last_host_time_ns = frames.first_host_time_ns, frames.last_host_time_ns
        info.invalid_records = frames.invalid_records
        info.torn_tail_bytes = reader.torn_tail_bytes
        info.torn_tail = reader.torn_tail_bytes > 0
        info.corrupt_bytes = reader.corrupt_bytes
        info.damage = list(reader.damage)
        info.closed_cleanly = reader.end is not None
        info.after_end_bytes = _after_end(reader)
        info.part = reader.header.get("part")
    info.scans = stats.scan_frames
    info.status_frames = stats.status_frames
    info.sequence_gaps = stats.sequence_gaps
    info.sequence_restarts = stats.sequence_restarts
    info.header_crc_errors = stats.header_crc_errors
    info.payload_crc_errors = stats.payload_crc_errors
    info.crc_errors = stats.header_crc_errors + stats.payload_crc_errors
    info.resyncs = stats.resyncs
    info.bytes_skipped = stats.bytes_skipped
    info.samples_per_scan_min, info.samples_per_scan_max = lo or 0, hi or 0
    if info.first_host_time_ns is not None:
        info.duration_host_s = (info.last_host_time_ns - info.first_host_time_ns) / 1e9
    if first_dev is not None:
        info.duration_device_s = (last_dev - first_dev) / 1e9
    if info.scans >= 2 and last_scan_t > first_scan_t:
        info.scan_rate_hz = (info.scans - 1) / ((last_scan_t - first_scan_t) / 1e9)
    if info.duration_host_s > 0:
        info.mb_per_s = info.frame_bytes / info.duration_host_s / 1e6
    return info


def _after_end(reader: CaptureReader) -> int:
    """Bytes after the END record: a writer never appends after END, so they are damage,
    not the torn tail of a crash."""
    if reader.end_offset is None:
        return 0
    return max(0, reader.file_size - reader.end_offset)
