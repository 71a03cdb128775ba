"""Device frame format v1 (docs/protocol.md): header layout and encoder.

Every frame on the wire is::

    header (HEADER_SIZE bytes, the last 4 its CRC-32) | payload (payload_size bytes) | payload CRC-32 (4 bytes)

All integers and floats are little-endian. The header layout is the struct
``HEADER_STRUCT`` below; docs/protocol.md specifies every byte.
"""
from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

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
"""Largest payload a decoder accepts (bytes); bigger claims are treated as corruption."""


class FrameType(enum.IntEnum):
    SCAN = 1
    STATUS = 2


class Polarity(enum.IntEnum):
    UNKNOWN = 0
    POSITIVE = 1
    NEGATIVE = 2


class SampleType(enum.IntEnum):
    """Sample encoding codes carried in the header's sample_dtype byte."""

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

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + self.payload_size + TRAILER_SIZE


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
) -> bytes:
    """Header bytes (HEADER_SIZE) with their CRC-32, for a payload described by the fields."""
    body = HEADER_STRUCT.pack(
        SYNC, FORMAT_VERSION, int(frame_type), HEADER_SIZE,
        sequence & 0xFFFFFFFF, scan_number & 0xFFFFFFFF, device_time_ns & 0xFFFFFFFFFFFFFFFF,
        ms_level, int(polarity), int(sample_type), int(axis_kind), n_samples, payload_size,
        calibration.t0_ns, calibration.dt_ns, calibration.c0, calibration.c1, calibration.c2,
    )
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
) -> bytes:
    """One SCAN frame (bytes) holding ``samples`` (uint16, int16, int32, float32 or float64).

    With ``mz_axis`` (float64 m/z, same length) the frame carries an explicit axis
    (AxisKind.EXPLICIT) and the calibration is ignored by readers.
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
        payload_size=len(payload), calibration=calibration,
    )
    return header + payload + HEADER_CRC_STRUCT.pack(zlib.crc32(payload))


def sample_type_of(dtype: np.dtype) -> SampleType:
    """The SampleType code for a NumPy dtype; ValueError names the supported ones."""
    dtype = np.dtype(dtype)
    for code, known in SAMPLE_DTYPES.items():
        if dtype.kind == known.kind and dtype.itemsize == known.itemsize:
            return code
    supported = ", ".join(str(d) for d in SAMPLE_DTYPES.values())
    raise ValueError(f"sample dtype {dtype} is not carried by device frames; use one of {supported}")
