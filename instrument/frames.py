"""Device frame format v1 (docs/protocol.md): header layout, encoders, streaming decoder.

Every frame on the wire is::

    header (header_size bytes, the last 4 its CRC-32) | payload (payload_size bytes) | payload CRC-32 (4 bytes)

All integers and floats are little-endian. The v1 header layout is the struct
``HEADER_STRUCT`` below (HEADER_SIZE = 80 bytes); docs/protocol.md specifies every byte,
the SCAN and STATUS payloads, the CRCs, sequence numbers and versioning.

Decoding
--------
``FrameDecoder.feed(chunk)`` takes byte chunks of any size and yields ``DecodedFrame``
objects. It never raises on bad bytes: garbage, CRC failures and impossible header
fields make it search for the next sync word, and everything is counted in
``FrameDecoder.stats`` (a ``DecoderStats``). Feeding a stream one byte at a time or in
1 MiB chunks gives the same frames and the same counters.

Lifetime of the views (read this before keeping a frame)
--------------------------------------------------------
A frame that lies wholly inside the chunk passed to ``feed()`` is parsed in place: its
``raw`` and ``payload`` memoryviews, and the NumPy arrays returned by ``samples()`` and
``mz_axis()``, are views into *the caller's chunk*. A frame that straddled chunks is
assembled in the decoder's internal buffer, which is reused. Either way:

* the views are valid only until the next item is taken from the same ``feed()``
  iterator, or the next ``feed()`` / ``reset()`` call, whichever comes first; and, for
  in-place frames, only while the caller leaves its chunk unmodified;
* copy what you keep (``bytes(frame.raw)``, ``frame.samples().copy()``, or copy into a
  ring slot as the acquisition thread does). ``list(decoder.feed(data))`` followed by
  reading the frames is therefore a bug; read each frame inside the loop;
* ``frame.header`` (an immutable ``FrameHeader``) may be kept for ever;
* the iterator returned by ``feed()`` must be exhausted before ``feed()`` is called
  again (the acquisition loop's ``for frame in decoder.feed(...)`` does that).

In steady state (valid frames, chunks of a steady size) the decoder allocates nothing
per sample: payloads are never copied except for the one frame per chunk that straddles
a chunk boundary, which is copied once into a buffer that is allocated once and reused.
Sample arrays are NumPy views (they may be unaligned when the frame sits at an odd
offset in the caller's chunk; NumPy handles that).
"""
from __future__ import annotations

import enum
import math
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

SYNC = b"\xa5\x5aIS"
"""Sync word that starts every frame (bytes A5 5A 49 53)."""

FORMAT_VERSION = 1

# sync, version, frame_type, header_size, sequence, scan_number, device_time_ns,
# ms_level, polarity, sample_dtype, axis_kind, n_samples, payload_size,
# t0_ns, dt_ns, c0, c1, c2  -- then the header CRC-32 (u32).
HEADER_STRUCT = struct.Struct("<4sBBHIIQBBBBII5d")
HEADER_CRC_STRUCT = struct.Struct("<I")
HEADER_SIZE = HEADER_STRUCT.size + HEADER_CRC_STRUCT.size  # 80 bytes
TRAILER_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + TRAILER_SIZE
MAX_PAYLOAD_SIZE = 64 * 1024 * 1024
"""Default largest payload a FrameDecoder accepts (bytes); bigger claims count as bad headers
(a decoder setting: the daemon's acquisition thread lowers it to what a ring slot holds)."""
MAX_HEADER_SIZE = 1024
"""Largest header_size a decoder accepts (later compatible versions may append fields up to it)."""
HEADER_SIZE_MULTIPLE = 4
"""header_size is a multiple of this (docs/protocol.md, Versioning): fields are appended in whole
32-bit words, so the header CRC stays 4-byte aligned with the frame start."""


def valid_header_size(header_size: int) -> bool:
    """True if ``header_size`` is one a version 1 decoder accepts: 80..1024 and a multiple of 4."""
    return HEADER_SIZE <= header_size <= MAX_HEADER_SIZE and header_size % HEADER_SIZE_MULTIPLE == 0


class FrameType(enum.IntEnum):
    SCAN = 1
    STATUS = 2


class Polarity(enum.IntEnum):
    UNKNOWN = 0
    POSITIVE = 1
    NEGATIVE = 2


class SampleType(enum.IntEnum):
    """Sample encoding codes carried in the header's sample_dtype byte.

    NONE (0) is what STATUS frames carry: they have no samples. It has no NumPy dtype.
    """

    NONE = 0
    UINT16 = 1
    INT16 = 2
    FLOAT32 = 3
    INT32 = 4
    FLOAT64 = 5

    @property
    def numpy_dtype(self) -> np.dtype:
        return SAMPLE_DTYPES[self]


SAMPLE_DTYPES: dict[SampleType, np.dtype] = {
    SampleType.UINT16: np.dtype("<u2"),
    SampleType.INT16: np.dtype("<i2"),
    SampleType.FLOAT32: np.dtype("<f4"),
    SampleType.INT32: np.dtype("<i4"),
    SampleType.FLOAT64: np.dtype("<f8"),
}


class AxisKind(enum.IntEnum):
    """How a scan's m/z axis is obtained.

    TOF: sample i has flight time t = t0_ns + i * dt_ns (ns) and
         sqrt(m/z) = c0 + c1 * t_us + c2 * t_us**2 with t_us = t / 1000.
    EXPLICIT: the payload starts with n_samples float64 m/z values, then the samples
         (used for imported profile spectra whose axis is not a TOF law).
    """

    TOF = 0
    EXPLICIT = 1


@dataclass(frozen=True, slots=True)
class Calibration:
    """TOF -> m/z calibration carried by each scan frame (see AxisKind.TOF)."""

    t0_ns: float = 0.0
    dt_ns: float = 1.0
    c0: float = 0.0
    c1: float = 1.0
    c2: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """Decoded header fields of one frame. Times in ns, sizes in bytes/samples."""

    frame_type: FrameType
    sequence: int
    scan_number: int
    device_time_ns: int
    ms_level: int
    polarity: Polarity
    sample_type: SampleType
    axis_kind: AxisKind
    n_samples: int
    payload_size: int
    calibration: Calibration
    version: int = FORMAT_VERSION
    header_size: int = HEADER_SIZE
    """Bytes of header on the wire (>= HEADER_SIZE; larger when a compatible newer
    firmware appends fields). The payload starts at this offset in the raw frame."""

    @property
    def frame_size(self) -> int:
        return self.header_size + self.payload_size + TRAILER_SIZE


def expected_payload_size(sample_type: SampleType, axis_kind: AxisKind, n_samples: int) -> int:
    """Bytes of payload a SCAN frame with these fields must carry."""
    size = n_samples * SAMPLE_DTYPES[sample_type].itemsize
    if axis_kind == AxisKind.EXPLICIT:
        size += n_samples * 8
    return size


def pack_header(
    *,
    frame_type: int,
    sequence: int,
    scan_number: int = 0,
    device_time_ns: int = 0,
    ms_level: int = 1,
    polarity: int = Polarity.POSITIVE,
    sample_type: int = SampleType.UINT16,
    axis_kind: int = AxisKind.TOF,
    n_samples: int = 0,
    payload_size: int = 0,
    calibration: Calibration = Calibration(),
    extension: bytes = b"",
) -> bytes:
    """Header bytes (HEADER_SIZE + len(extension)) with their CRC-32, for a payload described by the fields.

    ``extension`` is for tests and future compatible versions: bytes appended after the
    v1 fields (before the CRC), which a v1 decoder skips. Its length must keep the header a
    multiple of 4 bytes and at most MAX_HEADER_SIZE (ValueError otherwise).
    """
    if not valid_header_size(HEADER_SIZE + len(extension)):
        raise ValueError(f"a {len(extension)}-byte extension makes a {HEADER_SIZE + len(extension)}-byte header; "
                         f"header_size must be {HEADER_SIZE}..{MAX_HEADER_SIZE} and a multiple of "
                         f"{HEADER_SIZE_MULTIPLE} (docs/protocol.md, Versioning)")
    body = HEADER_STRUCT.pack(
        SYNC, FORMAT_VERSION, int(frame_type), HEADER_SIZE + len(extension),
        sequence & 0xFFFFFFFF, scan_number & 0xFFFFFFFF, device_time_ns & 0xFFFFFFFFFFFFFFFF,
        ms_level, int(polarity), int(sample_type), int(axis_kind), n_samples, payload_size,
        calibration.t0_ns, calibration.dt_ns, calibration.c0, calibration.c1, calibration.c2,
    ) + bytes(extension)
    return body + HEADER_CRC_STRUCT.pack(zlib.crc32(body))


def encode_scan(
    samples: np.ndarray,
    *,
    sequence: int,
    scan_number: int,
    device_time_ns: int,
    ms_level: int = 1,
    polarity: int = Polarity.POSITIVE,
    calibration: Calibration = Calibration(),
    mz_axis: np.ndarray | None = None,
    header_extension: bytes = b"",
) -> bytes:
    """One SCAN frame (bytes) holding ``samples`` (uint16, int16, int32, float32 or float64).

    With ``mz_axis`` (float64 m/z, same length) the frame carries an explicit axis
    (AxisKind.EXPLICIT) and the calibration is ignored by readers. ``header_extension``:
    extension records appended to the header (docs/protocol.md "Header extensions";
    instrument/imaging.py encodes the pixel position of imaging runs).
    """
    samples = np.ascontiguousarray(samples)
    sample_type = sample_type_of(samples.dtype)
    payload_parts = [samples.astype(SAMPLE_DTYPES[sample_type], copy=False).tobytes()]
    axis_kind = AxisKind.TOF
    if mz_axis is not None:
        if len(mz_axis) != len(samples):
            raise ValueError(f"mz_axis has {len(mz_axis)} values but samples has {len(samples)}")
        payload_parts.insert(0, np.ascontiguousarray(mz_axis, dtype="<f8").tobytes())
        axis_kind = AxisKind.EXPLICIT
    payload = b"".join(payload_parts)
    header = pack_header(
        frame_type=FrameType.SCAN, sequence=sequence, scan_number=scan_number,
        device_time_ns=device_time_ns, ms_level=ms_level, polarity=polarity,
        sample_type=sample_type, axis_kind=axis_kind, n_samples=len(samples),
        payload_size=len(payload), calibration=calibration, extension=header_extension,
    )
    return header + payload + HEADER_CRC_STRUCT.pack(zlib.crc32(payload))


def restamp(frame: bytearray, *, sequence: int, scan_number: int, device_time_ns: int) -> None:
    """Rewrite a v1 frame's sequence number, scan number and device time (ns) in place, with a new
    header CRC. The payload and its CRC are untouched: for sources that repeat stored frames.
    Header extensions (header_size > 80) are kept; the CRC is the header's last 4 bytes."""
    fields = list(HEADER_STRUCT.unpack_from(frame, 0))
    fields[4] = sequence & 0xFFFFFFFF
    fields[5] = scan_number & 0xFFFFFFFF
    fields[6] = device_time_ns & 0xFFFFFFFFFFFFFFFF
    HEADER_STRUCT.pack_into(frame, 0, *fields)
    crc_at = fields[3] - HEADER_CRC_STRUCT.size  # header_size - 4
    HEADER_CRC_STRUCT.pack_into(frame, crc_at, zlib.crc32(memoryview(frame)[:crc_at]))


def sample_type_of(dtype: np.dtype) -> SampleType:
    """The SampleType code for a NumPy dtype; ValueError names the supported ones."""
    dtype = np.dtype(dtype)
    for code, known in SAMPLE_DTYPES.items():
        if dtype.kind == known.kind and dtype.itemsize == known.itemsize:
            return code
    supported = ", ".join(str(d) for d in SAMPLE_DTYPES.values())
    raise ValueError(f"sample dtype {dtype} is not carried by device frames; use one of {supported}")


# ---------------------------------------------------------------------------------------
# STATUS (heartbeat) frames
# ---------------------------------------------------------------------------------------

class InstrumentState(enum.IntEnum):
    """What the instrument reports it is doing (STATUS payload byte 0)."""

    UNKNOWN = 0
    IDLE = 1
    ACQUIRING = 2
    CALIBRATING = 3
    STANDBY = 4
    ERROR = 5


STATUS_STRUCT = struct.Struct("<BBHIQff")
"""STATUS payload v1: state u8, reserved u8 (0), error_code u16, dropped_scans u32,
uptime_ms u64, temperature_c f32, pressure_mbar f32 (24 bytes). Later compatible
versions may append fields; decoders ignore bytes past these 24."""
STATUS_PAYLOAD_SIZE = STATUS_STRUCT.size


@dataclass(frozen=True, slots=True)
class InstrumentStatus:
    """Decoded STATUS payload. NaN temperature/pressure means "not measured"."""

    state: InstrumentState | int  # an int when the firmware sends a state this version does not know
    error_code: int = 0           # 0 = no error; otherwise instrument-specific
    dropped_scans: int = 0        # scans the firmware dropped since power-on (u32, wraps)
    uptime_ms: int = 0            # ms since the firmware started
    temperature_c: float = math.nan
    pressure_mbar: float = math.nan


def decode_status(payload) -> InstrumentStatus:
    """The InstrumentStatus in a STATUS payload (bytes-like, at least STATUS_PAYLOAD_SIZE bytes)."""
    state, _reserved, error_code, dropped, uptime_ms, temp, pressure = STATUS_STRUCT.unpack_from(payload, 0)
    try:
        state = InstrumentState(state)
    except ValueError:
        pass
    return InstrumentStatus(state, error_code, dropped, uptime_ms, temp, pressure)


def encode_status(
    *,
    sequence: int,
    device_time_ns: int = 0,
    state: int = InstrumentState.ACQUIRING,
    error_code: int = 0,
    temperature_c: float = math.nan,
    pressure_mbar: float = math.nan,
    dropped_scans: int = 0,
    uptime_ms: int = 0,
    scan_number: int = 0,
) -> bytes:
    """One STATUS (heartbeat) frame. ``scan_number``: the last scan number sent (optional)."""
    payload = STATUS_STRUCT.pack(
        int(state), 0, error_code & 0xFFFF, dropped_scans & 0xFFFFFFFF, uptime_ms & 0xFFFFFFFFFFFFFFFF,
        temperature_c, pressure_mbar,
    )
    header = pack_header(
        frame_type=FrameType.STATUS, sequence=sequence, scan_number=scan_number,
        device_time_ns=device_time_ns, ms_level=0, polarity=Polarity.UNKNOWN,
        sample_type=SampleType.NONE, axis_kind=AxisKind.TOF, n_samples=0,
        payload_size=len(payload), calibration=_ZERO_CALIBRATION,
    )
    return header + payload + HEADER_CRC_STRUCT.pack(zlib.crc32(payload))


_ZERO_CALIBRATION = Calibration(0.0, 0.0, 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------
# Streaming decoder
# ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class DecodedFrame:
    """One valid frame. ``raw`` and ``payload`` are views: see the module docstring for how long they live."""

    header: FrameHeader
    raw: memoryview       # the whole frame: header + payload + payload CRC
    payload: memoryview   # the payload, a view into raw

    def samples(self) -> np.ndarray:
        """Zero-copy view of the scan's samples in their wire dtype (after the explicit axis, if any)."""
        h = self.header
        dtype = SAMPLE_DTYPES.get(h.sample_type)
        if dtype is None:
            raise ValueError(f"a {h.frame_type.name} frame has no samples")
        offset = 8 * h.n_samples if h.axis_kind == AxisKind.EXPLICIT else 0
        return np.frombuffer(self.payload, dtype=dtype, count=h.n_samples, offset=offset)

    def mz_axis(self) -> np.ndarray | None:
        """Zero-copy view of the explicit float64 m/z axis, or None for TOF-calibrated frames."""
        h = self.header
        if h.axis_kind != AxisKind.EXPLICIT:
            return None
        return np.frombuffer(self.payload, dtype="<f8", count=h.n_samples)

    def status(self) -> InstrumentStatus:
        """The decoded STATUS payload (ValueError for a SCAN frame)."""
        if self.header.frame_type != FrameType.STATUS:
            raise ValueError("not a STATUS frame")
        return decode_status(self.payload)


@dataclass
class DecoderStats:
    """Cumulative decoder counters (never reset by FrameDecoder.reset()).

    bytes_in = bytes of valid frames + bytes_skipped + bytes still buffered (FrameDecoder.buffered).
    """

    frames: int = 0              # valid frames yielded (all types)
    scan_frames: int = 0
    status_frames: int = 0
    bytes_in: int = 0            # bytes fed
    bytes_skipped: int = 0       # bytes that were not part of any valid frame
    resyncs: int = 0             # times the decoder lost alignment and had to search for a sync word
    header_crc_errors: int = 0   # sync word found but the header CRC failed
    payload_crc_errors: int = 0  # header valid but the payload CRC failed
    bad_headers: int = 0         # header impossible (size, version, type, enum, payload size, too large)
    sequence_gaps: int = 0       # missing sequence numbers (mod 2**32) between consecutive valid frames
    sequence_restarts: int = 0   # sequence went back to 0 or backwards (device restarted)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_SYNC_SEARCH = re.compile(re.escape(SYNC)).search
_ENVELOPE = struct.Struct("<4sBBH")  # the first 8 bytes, fixed in every version
_U32 = struct.Struct("<I").unpack_from
_HEADER_BODY = HEADER_STRUCT.size    # 76: bytes before the CRC in a v1-sized header
_FRAME_TYPES = {int(t): t for t in FrameType}
_POLARITIES = {int(p): p for p in Polarity}
_SAMPLE_TYPES = {int(t): t for t in SampleType if t != SampleType.NONE}
_ITEMSIZE = {int(t): SAMPLE_DTYPES[t].itemsize for t in _SAMPLE_TYPES.values()}
_AXIS_KINDS = {int(a): a for a in AxisKind}
_SYNC_PREFIXES = (SYNC[:3], SYNC[:2], SYNC[:1])


class FrameDecoder:
    """Streaming decoder: ``for frame in decoder.feed(chunk): ...`` over chunks of any size.

    Decision rule at a candidate position p (the same whatever the chunking):

    1. the 4 bytes at p must be SYNC, else search forward for SYNC;
    2. header_size (bytes 6-7) must be HEADER_SIZE..MAX_HEADER_SIZE and a multiple of 4,
       else bad header;
    3. the CRC-32 of bytes [p, p+header_size-4) must equal the u32 at p+header_size-4,
       else header CRC error;
    4. version must be 1, frame type SCAN or STATUS, the enums known, payload_size
       consistent (SCAN: n_samples x itemsize [+ 8 x n_samples for an explicit axis];
       STATUS: >= 24) and <= max_payload_size, else bad header;
    5. the CRC-32 of the payload must equal the u32 after it, else payload CRC error;
    6. the frame is valid: yield it, continue at its end.

    On any failure the decoder searches for SYNC from p+1 (so a frame that starts inside
    a truncated or corrupt one is still found). Bytes passed over are counted in
    bytes_skipped; each run of them is one resync, counted when its first byte is passed
    over (so a run at the very start or end of a stream counts too). A run ends at the next
    valid frame or at reset(). Bytes still waiting for the rest of a frame when the stream
    stops are neither skipped nor a resync: they stay in ``buffered`` until reset().

    STATUS frames: every SCAN-only header field (ms_level, polarity, sample_dtype,
    axis_kind, n_samples, the calibration) decodes as 0 / UNKNOWN / NONE / TOF, whatever
    the bytes say, so no reader can come to depend on a value emitters need not write.

    One decoder per byte stream, used by one thread (the acquisition thread); other
    threads may read ``stats`` (plain ints) at any time.
    """

    def __init__(self, max_payload_size: int = MAX_PAYLOAD_SIZE):
        self.max_payload_size = int(max_payload_size)
        self.stats = DecoderStats()
        self._buf = bytearray(0)     # holds an incomplete frame (or sync prefix) between feeds
        self._buffered = 0           # bytes of it in use
        self._need = 4               # bytes (from the buffer start) needed for the next decision
        self._pos = 0                # parser output: where it stopped
        self._skipping = False       # inside a run of skipped bytes (one resync per run)
        self._last_sequence: int | None = None
        self._last_cal: tuple | None = None
        self._last_cal_obj: Calibration | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame (not yet counted as frames or skipped)."""
        return self._buffered

    def reset(self) -> None:
        """Drop any partial frame (after a reconnect: it can never complete).

        The dropped bytes are counted in bytes_skipped but not as a resync: no sync word was
        searched for (the acquisition counts the reconnect itself). An open run of skipped
        bytes ends here, so bytes skipped after reset() are a new resync. The counters and
        the last sequence number are kept, so frames lost while the device was away count as
        sequence gaps.
        """
        if self._buffered:
            self.stats.bytes_skipped += self._buffered
        self._buffered = 0
        self._need = 4
        self._skipping = False

    def feed(self, data) -> Iterator[DecodedFrame]:
        """Decode ``data`` (bytes, bytearray, memoryview, ...) appended to what came before.

        Yields each valid frame completed by this chunk. Exhaust the iterator before the
        next feed(). The frames' views live only until the next item (module docstring).
        """
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        end = len(mv)
        self.stats.bytes_in += end
        start = 0
        # 1. Complete what the buffer holds, appending only what the next decision needs.
        while self._buffered and start < end:
            want = self._need - self._buffered
            take = want if want <= end - start else end - start
            self._append(mv[start:start + take])
            start += take
            if take < want:
                return
            yield from self._decide_buffer()
        if start >= end:
            return
        # 2. Parse whole frames in place from the caller's chunk.
        yield from self._parse(mv, start, end)
        # 3. Keep the incomplete tail.
        pos = self._pos
        if pos < end:
            self._buffered = 0
            self._append(mv[pos:end])

    # ---- internals -----------------------------------------------------------------

    def _append(self, src: memoryview) -> None:
        n = len(src)
        need = self._buffered + n
        if need > len(self._buf):
            # Never resize in place: a consumer may still hold a view of the old buffer.
            new = bytearray(max(need, 2 * len(self._buf), 4096))
            new[:self._buffered] = self._buf[:self._buffered]
            self._buf = new
        self._buf[self._buffered:need] = src
        self._buffered = need

    def _decide_buffer(self) -> Iterator[DecodedFrame]:
        """Run the parser over the buffer (which holds exactly ``_need`` bytes, or more after a skip)."""
        buffered = self._buffered
        yield from self._parse(memoryview(self._buf)[:buffered], 0, buffered)
        pos = self._pos
        rest = buffered - pos
        if pos and rest:
            self._buf[:rest] = bytes(self._buf[pos:buffered])  # rare: only after a failure inside the buffer
        self._buffered = rest

    def _skip_to(self, mv: memoryview, pos: int, new: int) -> int:
        stats = self.stats
        stats.bytes_skipped += new - pos
        if not self._skipping:
            self._skipping = True
            stats.resyncs += 1
        return new

    def _resync(self, mv: memoryview, pos: int, end: int) -> int:
        """Skip from ``pos`` to the next SYNC at or after pos+1 (or to a trailing sync prefix, or end)."""
        m = _SYNC_SEARCH(mv, pos + 1, end)
        if m is not None:
            return self._skip_to(mv, pos, m.start())
        for prefix in _SYNC_PREFIXES:
            k = len(prefix)
            if end - k > pos and mv[end - k:end] == prefix:
                return self._skip_to(mv, pos, end - k)
        return self._skip_to(mv, pos, end)

    def _calibration(self, t0, dt, c0, c1, c2) -> Calibration:
        key = (t0, dt, c0, c1, c2)
        if key != self._last_cal:  # calibration rarely changes: reuse the object
            self._last_cal = key
            self._last_cal_obj = Calibration(t0, dt, c0, c1, c2)
        return self._last_cal_obj

    def _parse(self, mv: memoryview, pos: int, end: int) -> Iterator[DecodedFrame]:
        """Yield the valid frames in mv[pos:end]; set self._pos/_need where it stopped."""
        stats = self.stats
        crc32 = zlib.crc32
        unpack_header = HEADER_STRUCT.unpack_from
        max_payload = self.max_payload_size
        while True:
            avail = end - pos
            if avail < 8:
                if avail == 0:
                    self._need = 4
                    break
                k = 4 if avail >= 4 else avail
                if mv[pos:pos + k] != SYNC[:k]:
                    pos = self._resync(mv, pos, end)
                    continue
                # A sync prefix is decided byte by byte (so the state after any prefix of
                # the stream is the same however it was split); the envelope needs 8 bytes.
                self._need = avail + 1 if avail < 4 else 8
                break
            sync, version, ftype, hsize = _ENVELOPE.unpack_from(mv, pos)
            if sync != SYNC:
                pos = self._resync(mv, pos, end)
                continue
            if hsize < HEADER_SIZE or hsize > MAX_HEADER_SIZE or hsize & 3:  # valid_header_size()
                stats.bad_headers += 1
                pos = self._resync(mv, pos, end)
                continue
            if avail < hsize:
                self._need = hsize
                break
            if crc32(mv[pos:pos + hsize - 4]) != _U32(mv, pos + hsize - 4)[0]:
                stats.header_crc_errors += 1
                pos = self._resync(mv, pos, end)
                continue
            (_, version, ftype, _, seq, scan, dev_t, ms_level, pol, stype, akind, n_samples,
             psize, t0, dt, c0, c1, c2) = unpack_header(mv, pos)
            frame_type = _FRAME_TYPES.get(ftype)
            polarity = _POLARITIES.get(pol)
            axis = _AXIS_KINDS.get(akind)
            if version != FORMAT_VERSION or frame_type is None or psize > max_payload:
                stats.bad_headers += 1
                pos = self._resync(mv, pos, end)
                continue
            if frame_type is FrameType.SCAN:
                sample_type = _SAMPLE_TYPES.get(stype)
                if (sample_type is None or polarity is None or axis is None
                        or psize != n_samples * (_ITEMSIZE[stype] + (8 if akind else 0))):
                    stats.bad_headers += 1
                    pos = self._resync(mv, pos, end)
                    continue
            else:  # STATUS: the scan-only fields are ignored, and read as zero
                if psize < STATUS_PAYLOAD_SIZE:
                    stats.bad_headers += 1
                    pos = self._resync(mv, pos, end)
                    continue
                sample_type, axis, n_samples, ms_level, polarity = (SampleType.NONE, AxisKind.TOF, 0, 0,
                                                                    Polarity.UNKNOWN)
                t0 = dt = c0 = c1 = c2 = 0.0
            fsize = hsize + psize + TRAILER_SIZE
            if avail < fsize:
                self._need = fsize
                break
            pend = pos + hsize + psize
            if crc32(mv[pos + hsize:pend]) != _U32(mv, pend)[0]:
                stats.payload_crc_errors += 1
                pos = self._resync(mv, pos, end)
                continue
            # A valid frame.
            self._skipping = False
            stats.frames += 1
            if frame_type is FrameType.SCAN:
                stats.scan_frames += 1
            else:
                stats.status_frames += 1
            last = self._last_sequence
            if last is not None:
                gap = (seq - last - 1) & 0xFFFFFFFF
                if gap:
                    if seq == 0 or gap >= 0x80000000:
                        stats.sequence_restarts += 1
                    else:
                        stats.sequence_gaps += gap
            self._last_sequence = seq
            header = FrameHeader(frame_type, seq, scan, dev_t, ms_level, polarity, sample_type, axis,
                                 n_samples, psize, self._calibration(t0, dt, c0, c1, c2), version, hsize)
            raw = mv[pos:pos + fsize]
            yield DecodedFrame(header, raw, raw[hsize:hsize + psize])
            pos += fsize
        self._pos = pos
