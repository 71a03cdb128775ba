"""Pixel positions for imaging runs: the header extension of SCAN frames (docs/protocol.md).

An imaging instrument (MALDI, DESI, SIMS) rasters a sample; every scan is one pixel. The
pixel's position travels in the frame header as a compatible version-1 extension: extra
header bytes after byte 75, before the header CRC, which a decoder that does not know them
skips (docs/protocol.md, "Header extensions"). They are a list of records::

    tag u16 | length u16 | body (length bytes) | zero padding to a multiple of 4

Tag 1 (PIXEL, 28 bytes): x u32, y u32, z u16, region u16, raster width u32, raster height
u32, pixel size x f32 (um), pixel size y f32 (um). Every pixel frame carries its raster's
size, so a reader that joins mid-run can still place it.

    ext = encode_pixel(PixelPosition(3, 7, raster=Raster(64, 64, 10.0, 10.0)))
    raw = encode_scan(samples, ..., header_extension=ext)
    for frame in FrameDecoder().feed(raw):
        pos = frame_position(frame)          # PixelPosition(x=3, y=7, ...) or None
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from instrument.frames import HEADER_STRUCT, MAX_HEADER_SIZE, HEADER_SIZE

EXTENSION_OFFSET = HEADER_STRUCT.size
"""Byte offset of the first extension record in a frame (76: right after the v1 fields)."""
RECORD_HEAD = struct.Struct("<HH")  # tag, body length (bytes)
TAG_END = 0
"""A tag of 0 ends the list (what zero padding reads as)."""
TAG_PIXEL = 1
PIXEL_STRUCT = struct.Struct("<IIHHIIff")  # x, y, z, region, width, height, pixel_w_um, pixel_h_um
MAX_EXTENSION = MAX_HEADER_SIZE - HEADER_SIZE
"""Most extension bytes a header can carry (header_size <= 1024)."""


class ExtensionError(ValueError):
    """Extension bytes that cannot be encoded (a value out of range, too many bytes)."""


@dataclass(frozen=True, slots=True)
class Raster:
    """The grid an imaging run scans: ``width`` x ``height`` pixels of ``pixel_size_*_um`` um
    (0.0 = not known)."""

    width: int
    height: int
    pixel_size_x_um: float = 0.0
    pixel_size_y_um: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.width <= 0xFFFFFFFF and 0 < self.height <= 0xFFFFFFFF):
            raise ExtensionError(f"raster must be at least 1x1 pixels, got {self.width}x{self.height}")
        if self.pixel_size_x_um < 0 or self.pixel_size_y_um < 0:
            raise ExtensionError(f"pixel size must be >= 0 um, got {self.pixel_size_x_um}, {self.pixel_size_y_um}")

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def pixel_area_um2(self) -> float:
        """Area of one pixel, um^2 (0.0 when the pixel size is not known)."""
        return self.pixel_size_x_um * self.pixel_size_y_um


@dataclass(frozen=True, slots=True)
class PixelPosition:
    """Where one scan was taken: column ``x`` and row ``y`` (0-based, y down), plane ``z``,
    raster ``region`` (several regions of one slide share a run), and the raster itself."""

    x: int
    y: int
    raster: Raster
    z: int = 0
    region: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.x < self.raster.width and 0 <= self.y < self.raster.height):
            raise ExtensionError(f"pixel ({self.x}, {self.y}) lies outside the "
                                 f"{self.raster.width}x{self.raster.height} raster")
        if not (0 <= self.z <= 0xFFFF and 0 <= self.region <= 0xFFFF):
            raise ExtensionError(f"z and region must be 0..65535, got {self.z}, {self.region}")


def encode_record(tag: int, body: bytes) -> bytes:
    """One extension record: tag, length, body, zero padding to a multiple of 4 bytes."""
    if not 0 < tag <= 0xFFFF:
        raise ExtensionError(f"extension tag must be 1..65535, got {tag}")
    pad = -len(body) % 4
    return RECORD_HEAD.pack(tag, len(body)) + bytes(body) + bytes(pad)


def encode_pixel(position: PixelPosition) -> bytes:
    """The PIXEL extension record (32 bytes) for ``header_extension=`` of ``encode_scan``."""
    r = position.raster
    return encode_record(TAG_PIXEL, PIXEL_STRUCT.pack(position.x, position.y, position.z, position.region,
                                                      r.width, r.height, r.pixel_size_x_um, r.pixel_size_y_um))


def parse_records(extension) -> dict[int, memoryview]:
    """Tag -> body of each record in the extension bytes (the first record of a tag wins).

    Never raises: a record whose length runs past the end, or a tag 0, ends the list;
    unknown tags are returned too (callers ignore what they do not know).
    """
    mv = memoryview(extension).cast("B")
    out: dict[int, memoryview] = {}
    pos, end = 0, len(mv)
    while end - pos >= RECORD_HEAD.size:
        tag, length = RECORD_HEAD.unpack_from(mv, pos)
        body_end = pos + RECORD_HEAD.size + length
        if tag == TAG_END or body_end > end:
            break
        out.setdefault(tag, mv[pos + RECORD_HEAD.size:body_end])
        pos = body_end + (-length % 4)
    return out


def header_extension(raw, header_size: int) -> memoryview:
    """The extension bytes of a frame (``raw``: the frame from its first sync byte)."""
    return memoryview(raw).cast("B")[EXTENSION_OFFSET:header_size - 4]


def decode_pixel(body) -> PixelPosition | None:
    """The PixelPosition in a PIXEL record body, or None when it is short or inconsistent."""
    if len(body) < PIXEL_STRUCT.size:
        return None
    x, y, z, region, width, height, px, py = PIXEL_STRUCT.unpack_from(body, 0)
    try:
        return PixelPosition(x, y, Raster(width, height, float(px), float(py)), z, region)
    except ExtensionError:
        return None


def position_of(raw, header_size: int) -> PixelPosition | None:
    """The pixel position in a raw frame (bytes-like from its first sync byte, e.g. a ring slot's
    ``frame``) whose header is ``header_size`` bytes; None for an ordinary scan."""
    if header_size <= HEADER_SIZE:
        return None
    body = parse_records(header_extension(raw, header_size)).get(TAG_PIXEL)
    return decode_pixel(body) if body is not None else None


def frame_position(frame) -> PixelPosition | None:
    """The pixel position of a DecodedFrame (None: no PIXEL record, an ordinary scan)."""
    return position_of(frame.raw, frame.header.header_size)
