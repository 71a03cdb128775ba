"""Capture files (format 2, docs/capture.md): raw device frames with host receive times.

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
(bit rot, a failed write followed by more appends) is skipped by searching for the next
valid record and counted in ``corrupt_bytes``.

Durability: ``append()`` buffers in the process; every ``fsync_interval_s`` (checked on
each append/flush call, no thread) the writer hands its buffer to the OS and fsyncs. A
killed *process* loses only what was still in its own buffer (at most ``buffer_bytes``,
or one pending compressed block); a power cut loses at most the last fsync interval.

Writer and reader are not thread-safe: one thread owns each.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

MAGIC = b"\x89ISC\r\n\x1a\n"
"""First 8 bytes of every capture file (89 49 53 43 0D 0A 1A 0A)."""

FORMAT_MAJOR = 1
"""Readers refuse files with a larger major version (an incompatible layout)."""
FORMAT_MINOR = 0
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
MAX_ZBLOCK_DECOMPRESSED = 512 * 1024 * 1024

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
    the format version, ionstream version, start wall time, host and compression.

    ``fsync_interval_s``: seconds between fsyncs (0: after every append; None: only at
    close). ``compress``: False, True (zstd level 3) or a zstd level; frames are then
    gathered into blocks of about ``block_bytes`` that are compressed independently,
    and a block is also closed on every sync tick and every flush(), so the durability
    window stays the same as without compression.

    Counters: ``records`` (frames appended), ``bytes`` (frame bytes appended),
    ``file_bytes`` (bytes handed to the file so far, headers included), ``fsyncs``.
    """

    def __init__(self, path: str | os.PathLike, description: dict[str, Any] | None = None, *,
                 fsync_interval_s: float | None = 1.0, compress: bool | int = False,
                 exclusive: bool = False, buffer_bytes: int = 1 << 20, block_bytes: int = 4 << 20):
        self.path = Path(path)
        self.fsync_interval_s = fsync_interval_s
        self.records = 0
        self.bytes = 0
        self.file_bytes = 0
        self.fsyncs = 0
        self._closed = True
        self._failed: str | None = None
        level = 3 if compress is True else int(compress or 0)
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
        self._buffer_bytes = int(buffer_bytes)
        self._buf = bytearray()
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
        doc = json.dumps(self.header, sort_keys=False, default=str).encode("utf-8")
        head = FILE_HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, FLAG_ZSTD if level else 0, len(doc)) + doc
        head += _U32.pack(_crc32(head))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._closed = False
        try:
            self._write_all(head)
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

    def append(self, raw_frame, host_time_ns: int | None = None) -> None:
        """Append one device frame (any bytes-like object, copied) received at ``host_time_ns``.

        ``host_time_ns`` defaults to time.time_ns(). May fsync when the interval is due.
        """
        self._check_open()
        mv = memoryview(raw_frame)
        if mv.format != "B" or mv.ndim != 1 or not mv.c_contiguous:
            mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
        n = len(mv)
        if n > MAX_RECORD_BODY:
            raise ValueError(f"frame of {n} bytes is larger than a capture record may be ({MAX_RECORD_BODY})")
        t = time.time_ns() if host_time_ns is None else int(host_time_ns)
        if self._zc is not None:
            if self._block_entries == 0:
                self._block_t0 = t
            self._block += ZENTRY.pack(t, n)
            self._block += mv
            self._block_entries += 1
            if len(self._block) >= self._block_bytes or self._block_entries >= MAX_ZBLOCK_ENTRIES:
                self._emit_block()
        else:
            crc = _crc32(mv)
            self._put_record(KIND_FRAME, 1, n, t, mv, crc)
        self.records += 1
        self.bytes += n
        self._maybe_sync()

    def flush(self) -> None:
        """Hand everything appended so far to the OS (closing a pending compressed block);
        fsync too if the interval is due. A killed process then loses nothing appended."""
        self._check_open()
        if self._block_entries:
            self._emit_block()
        self._drain()
        self._maybe_sync()

    def sync(self) -> None:
        """flush() and fsync now, whatever the interval."""
        self._check_open()
        if self._block_entries:
            self._emit_block()
        self._drain()
        self._fsync()

    def close(self) -> None:
        """Write what is pending and an END record, fsync, close. Safe to call twice."""
        if self._closed:
            return
        try:
            if self._failed is None:
                if self._block_entries:
                    self._emit_block()
                end = {"records": self.records, "frame_bytes": self.bytes,
                       "closed_unix_ns": time.time_ns(), "fsyncs": self.fsyncs + 1}
                body = json.dumps(end).encode()
                self._put_record(KIND_END, 0, len(body), time.time_ns(), body, _crc32(body))
                self._drain()
                self._fsync()
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

    def _put_record(self, kind: int, count: int, length: int, t: int, body, body_crc: int) -> None:
        head = RECORD_HEADER.pack(RECORD_MARKER, kind, 0, count, length, t)
        self._buf += head
        self._buf += _U32.pack(_crc32(head))
        if length >= self._buffer_bytes:  # big frame: no copy into the buffer
            self._drain()
            self._write_all(body)
        else:
            self._buf += body
        self._buf += _U32.pack(body_crc)
        if len(self._buf) >= self._buffer_bytes:
            self._drain()

    def _emit_block(self) -> None:
        block = self._zc.compress(self._block)
        self._put_record(KIND_ZBLOCK, self._block_entries, len(block), self._block_t0, block, _crc32(block))
        self._block = bytearray()
        self._block_entries = 0

    def _drain(self) -> None:
        if self._buf:
            self._write_all(self._buf)
            self._buf = bytearray()

    def _write_all(self, data) -> None:
        mv = memoryview(data)
        try:
            while mv:
                n = os.write(self._fd, mv)
                self.file_bytes += n
                mv = mv[n:]
        except OSError as exc:
            self._failed = f"{type(exc).__name__}: {exc}"
            raise

    def _maybe_sync(self) -> None:
        interval = self.fsync_interval_s
        if interval is None:
            if len(self._buf) >= self._buffer_bytes:
                self._drain()
            return
        if time.monotonic() - self._last_sync >= interval:
            if self._block_entries:
                self._emit_block()
            self._drain()
            self._fsync()

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
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
    try:
        header = json.loads(doc.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise CaptureError(f"{name}: capture header JSON is invalid: {exc}") from None
    return header, (major, minor), flags, FILE_HEADER_SIZE + length + 4


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
        self.unknown_records = 0        # whole records of kinds this version does not know (skipped)
        self.end: dict[str, Any] | None = None
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
                    return
                self.corrupt_bytes += nxt - pos
                self.corrupt_regions += 1
                pos = nxt
                continue
            kind, count, t, body, end = rec
            start, pos = pos, end
            if kind == KIND_FRAME:
                self.records += 1
                yield CaptureRecord(t, body)
            elif kind == KIND_ZBLOCK:
                entries = self._unpack_block(body, count)
                if entries is None:
                    self.corrupt_bytes += end - start  # CRC-valid but undecodable: count it as damage
                    self.corrupt_regions += 1
                    continue
                for entry in entries:
                    self.records += 1
                    yield entry
            elif kind == KIND_END:
                try:
                    self.end = json.loads(bytes(body))
                except ValueError:
                    self.end = {}
            else:
                self.unknown_records += 1

    def _unpack_block(self, body: memoryview, count: int) -> list[CaptureRecord] | None:
        import zstandard

        if self._dctx is None:
            self._dctx = zstandard.ZstdDecompressor()
        try:
            params = zstandard.get_frame_parameters(body)
            if params.content_size > MAX_ZBLOCK_DECOMPRESSED:
                return None
            data = self._dctx.decompress(body, max_output_size=MAX_ZBLOCK_DECOMPRESSED)
        except zstandard.ZstdError:
            return None
        mv = memoryview(data)
        out = []
        pos, end = 0, len(mv)
        while pos < end:
            if end - pos < ZENTRY.size:
                return None
            t, n = ZENTRY.unpack_from(mv, pos)
            pos += ZENTRY.size
            if end - pos < n:
                return None
            out.append(CaptureRecord(t, mv[pos:pos + n]))
            pos += n
        if len(out) != count:
            return None
        return out


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
    closed_cleanly: bool = False     # the writer's END record is present
    compressed: bool = False

    @property
    def description(self) -> dict[str, Any]:
        return self.header.get("description") or {}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["description"] = self.description
        return d

    def format(self) -> str:
        """Readable multi-line summary."""
        src = self.description.get("source")
        if isinstance(src, dict):
            src_text = src.get("url") or json.dumps(src, sort_keys=True)
        else:
            src_text = str(src) if src is not None else "(not described)"
        mib = self.frame_bytes / 1e6
        lines = [
            f"capture        {self.path}",
            f"format         {self.format_version}"
            + (" (zstd blocks)" if self.compressed else "")
            + f", written by ionstream {self.header.get('ionstream_version', '?')} on {self.header.get('host', '?')}",
            f"started        {self.header.get('created', '?')}",
            f"source         {src_text}",
            f"file           {self.file_bytes:,} bytes; {self.records:,} frames, {mib:,.1f} MB of frames",
            f"scans          {self.scans:,}  (+ {self.status_frames:,} status frames)"
            + (f", {_samples_text(self.samples_per_scan_min, self.samples_per_scan_max)} samples/scan"
               if self.scans else ""),
            f"duration       {self.duration_host_s:.3f} s host time, {self.duration_device_s:.3f} s device time",
            f"rate           {self.scan_rate_hz:.2f} scans/s, {self.mb_per_s:.2f} MB/s",
            f"sequence gaps  {self.sequence_gaps:,}" + (f"  (device restarts: {self.sequence_restarts})"
                                                       if self.sequence_restarts else ""),
            f"CRC errors     {self.crc_errors:,}  (header {self.header_crc_errors}, payload "
            f"{self.payload_crc_errors}); invalid records {self.invalid_records}",
            f"torn tail      {'yes, ' + format(self.torn_tail_bytes, ',') + ' bytes ignored' if self.torn_tail else 'no'}",
        ]
        if self.corrupt_bytes:
            lines.append(f"damage         {self.corrupt_bytes:,} bytes skipped between whole records")
        lines.append(f"closed cleanly {'yes' if self.closed_cleanly else 'no (no END record: the writer was stopped abruptly)'}")
        settings = {k: v for k, v in self.description.items() if k != "source"}
        if settings:
            lines.append(f"settings       {json.dumps(settings, sort_keys=True, default=str)}")
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        """No damage of any kind: whole records only, every one a valid frame."""
        return not (self.torn_tail or self.corrupt_bytes or self.invalid_records or self.crc_errors)


def _samples_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def capture_info(path: str | os.PathLike) -> CaptureInfo:
    """Scan the whole capture, decoding every recorded frame with FrameDecoder."""
    from instrument.frames import FrameDecoder, FrameType

    with CaptureReader(path) as reader:
        info = CaptureInfo(path=str(path), format_version="%d.%d" % reader.version,
                           file_bytes=os.path.getsize(path), header=reader.header, compressed=reader.compressed)
        decoder = FrameDecoder()
        stats = decoder.stats
        first_dev = last_dev = None
        first_scan_t = last_scan_t = None
        lo = hi = None
        for t, frame in reader:
            info.records += 1
            info.frame_bytes += len(frame)
            if info.first_host_time_ns is None:
                info.first_host_time_ns = t
            info.last_host_time_ns = t
            frames_before = stats.frames
            whole = 0
            for decoded in decoder.feed(frame):
                h = decoded.header
                if len(decoded.raw) == len(frame):
                    whole += 1
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
            if whole != 1 or stats.frames - frames_before != 1:
                info.invalid_records += 1
            decoder.reset()  # a record is one frame: never join bytes across records
        info.torn_tail_bytes = reader.torn_tail_bytes
        info.torn_tail = reader.torn_tail_bytes > 0
        info.corrupt_bytes = reader.corrupt_bytes
        info.closed_cleanly = reader.end is not None
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
