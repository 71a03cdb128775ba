"""Pixels of an imaging run -- (x, y, m/z axis, intensities) -- from a capture or an imzML file.

A run is read in *parts* so that Dask workers can share it: a capture by byte ranges
(:meth:`instrument.capture.CaptureReader.records_iter` with ``start``/``stop``), an imzML
file by spectrum index ranges (offsets into its .ibd file, parsed once by the driver).
Each part is a small dict that travels to a worker; :func:`iter_part` yields its pixels.

The m/z axis comes with a hashable ``axis_key``: pixels with the same key share the same
axis (one TOF calibration and sample count, or one continuous imzML axis), so callers can
cache what they derive from it.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PART_BYTES = 16 * 1024 * 1024
"""Target size of one part of a capture (bytes); at least 2 parts per worker are made."""
IMZML_SUFFIXES = (".imzml",)
ZLIB_COMPRESSION = "MS:1000574"
"""The cvParam of zlib-compressed binary data in (i)mzML."""


class ImagingInputError(ValueError):
    """An input that is not an imaging run (no pixel positions, unknown format); the message says why."""


@dataclass(frozen=True)
class RasterInfo:
    """The raster of a run: width x height pixels of pixel_size_*_um (0 = not known)."""

    width: int
    height: int
    pixel_size_x_um: float = 0.0
    pixel_size_y_um: float = 0.0


@dataclass
class Pixel:
    """One pixel: position (0-based), its m/z axis (float64, with ``axis_key``) and intensities.

    ``mz`` and ``intensity`` are views valid until the next pixel of the same iterator.
    """

    x: int
    y: int
    axis_key: Any
    mz: np.ndarray
    intensity: np.ndarray


def is_imzml(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMZML_SUFFIXES


# ---------------------------------------------------------------------------------------
# Planning (driver)
# ---------------------------------------------------------------------------------------

def plan_parts(path: str | os.PathLike, n_min: int = 1) -> tuple[RasterInfo, list[dict[str, Any]]]:
    """(raster, parts) of the run at ``path``: at least ``n_min`` parts when the run is large enough.

    ImagingInputError when the file holds no pixel positions; CaptureError/OSError as raised
    by the readers for unreadable files.
    """
    if is_imzml(path):
        return _plan_imzml(Path(path), n_min)
    return _plan_capture(Path(path), n_min)


def _plan_capture(path: Path, n_min: int) -> tuple[RasterInfo, list[dict[str, Any]]]:
    from instrument.capture import CaptureReader
    from instrument.frames import FrameDecoder, FrameType
    from instrument.imaging import frame_position

    raster = None
    with CaptureReader(path) as reader:
        start = reader.data_offset
        decoder = FrameDecoder()
        for _, raw in reader:  # the first scan tells the raster
            for f in decoder.feed(raw):
                if f.header.frame_type == FrameType.SCAN:
                    pos = frame_position(f)
                    if pos is None:
                        raise ImagingInputError(
                            f"{path}: its scans carry no pixel position, so it is not an imaging run "
                            "(record one with `ionstream record --source 'sim://?imaging=64x64'`, see docs/imaging.md)")
                    r = pos.raster
                    raster = RasterInfo(r.width, r.height, r.pixel_size_x_um, r.pixel_size_y_um)
                    break
            if raster is not None:
                break
    if raster is None:
        raise ImagingInputError(f"{path}: the capture holds no scans")
    size = path.stat().st_size
    n = max(n_min, -(-(size - start) // PART_BYTES))
    cuts = [start + (size - start) * i // n for i in range(n + 1)]
    return raster, [{"kind": "capture", "path": str(path), "start": a, "stop": b} for a, b in zip(cuts, cuts[1:])]


def imzml_index(path: Path) -> dict[str, Any]:
    """What the workers need of an imzML file: per spectrum its coordinates (0-based), .ibd offsets,
    lengths and dtypes, plus the raster. ImagingInputError for a file pyimzML cannot parse."""
    from pyimzml.ImzMLParser import ImzMLParser

    try:
        p = ImzMLParser(str(path), ibd_file=None)  # the workers read the .ibd themselves
    except Exception as exc:  # pyimzML raises many kinds (ParseError, KeyError, ...): name the file
        raise ImagingInputError(f"{path}: not a readable imzML file ({type(exc).__name__}: {exc})") from None
    with open(path, "rb") as f:  # the binary data's description sits near the top
        if ZLIB_COMPRESSION.encode() in f.read(1 << 20):
            raise ImagingInputError(f"{path}: its spectra are zlib-compressed (MS:1000574), which pyimzML "
                                    "cannot read; export it from the other software without compression")
    coords = np.asarray(p.coordinates, dtype=np.int64)
    if coords.size == 0:
        raise ImagingInputError(f"{path}: the imzML file holds no spectra")
    meta = getattr(p, "imzmldict", {}) or {}
    xy = coords[:, :2] - 1  # imzML coordinates are 1-based
    width = int(meta.get("max count of pixels x", 0)) or int(xy[:, 0].max()) + 1
    height = int(meta.get("max count of pixels y", 0)) or int(xy[:, 1].max()) + 1
    raster = RasterInfo(max(width, int(xy[:, 0].max()) + 1), max(height, int(xy[:, 1].max()) + 1),
                        float(meta.get("pixel size x", 0.0)), float(meta.get("pixel size y", 0.0)))
    index = {"ibd": str(path.with_suffix(".ibd")), "xy": xy,
             "mz_offsets": np.asarray(p.mzOffsets, np.int64), "mz_lengths": np.asarray(p.mzLengths, np.int64),
             "int_offsets": np.asarray(p.intensityOffsets, np.int64),
             "int_lengths": np.asarray(p.intensityLengths, np.int64),
             "mz_dtype": np.dtype(p.mzPrecision).str, "int_dtype": np.dtype(p.intensityPrecision).str,
             "raster": raster}
    return index


def _plan_imzml(path: Path, n_min: int) -> tuple[RasterInfo, list[dict[str, Any]]]:
    idx = imzml_index(path)
    n_spec = len(idx["xy"])
    n = max(1, min(n_spec, max(n_min, -(-int(idx["int_lengths"].sum() * np.dtype(idx["int_dtype"]).itemsize)
                                         // PART_BYTES))))
    cuts = [n_spec * i // n for i in range(n + 1)]
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        parts.append({"kind": "imzml", "ibd": idx["ibd"], "xy": idx["xy"][a:b],
                      "mz_offsets": idx["mz_offsets"][a:b], "mz_lengths": idx["mz_lengths"][a:b],
                      "int_offsets": idx["int_offsets"][a:b], "int_lengths": idx["int_lengths"][a:b],
                      "mz_dtype": idx["mz_dtype"], "int_dtype": idx["int_dtype"]})
    return idx["raster"], parts


# ---------------------------------------------------------------------------------------
# Reading a part (worker)
# ---------------------------------------------------------------------------------------

def iter_part(part: dict[str, Any], counts: dict[str, int] | None = None) -> Iterator[Pixel]:
    """The pixels of one part. ``counts`` (optional) receives ``scans`` and ``no_position``."""
    counts = counts if counts is not None else {}
    counts.setdefault("scans", 0)
    counts.setdefault("no_position", 0)
    if part["kind"] == "capture":
        yield from _iter_capture(part, counts)
    else:
        yield from _iter_imzml(part, counts)


def _iter_capture(part: dict[str, Any], counts: dict[str, int]) -> Iterator[Pixel]:
    from instrument.capture import CaptureReader
    from instrument.frames import AxisKind, FrameDecoder, FrameType
    from instrument.imaging import frame_position
    from instrument.spectrum_model import mz_axis

    axes: dict[Any, np.ndarray] = {}
    with CaptureReader(part["path"]) as reader:
        decoder = FrameDecoder()
        for _, raw in reader.records_iter(part["start"], part["stop"]):
            for f in decoder.feed(raw):
                h = f.header
                if h.frame_type != FrameType.SCAN:
                    continue
                counts["scans"] += 1
                pos = frame_position(f)
                if pos is None:
                    counts["no_position"] += 1
                    continue
                if h.axis_kind == AxisKind.EXPLICIT:
                    axis = f.mz_axis()
                    key = ("explicit", axis[:1].tobytes(), axis[-1:].tobytes(), h.n_samples)
                    if key not in axes:  # the same first/last m/z and length: check the whole axis once
                        axes[key] = np.array(axis)
                    elif not np.array_equal(axes[key], axis):
                        key = None  # an axis of its own
                    yield Pixel(pos.x, pos.y, key, axis, f.samples())
                else:
                    key = (h.calibration, h.n_samples)
                    axis = axes.get(key)
                    if axis is None:
                        axis = axes[key] = mz_axis(h.calibration, h.n_samples)
                    yield Pixel(pos.x, pos.y, key, axis, f.samples())


def _iter_imzml(part: dict[str, Any], counts: dict[str, int]) -> Iterator[Pixel]:
    mz_dtype, int_dtype = np.dtype(part["mz_dtype"]), np.dtype(part["int_dtype"])
    last_mz: tuple[int, int] | None = None
    axis = np.zeros(0)
    with open(part["ibd"], "rb") as f:
        for i in range(len(part["xy"])):
            mz_at = (int(part["mz_offsets"][i]), int(part["mz_lengths"][i]))
            if mz_at != last_mz:  # continuous mode: every spectrum points at the same m/z array
                f.seek(mz_at[0])
                axis = np.fromfile(f, mz_dtype, mz_at[1]).astype(np.float64)
                last_mz = mz_at
            f.seek(int(part["int_offsets"][i]))
            intensity = np.fromfile(f, int_dtype, int(part["int_lengths"][i]))
            counts["scans"] += 1
            x, y = (int(v) for v in part["xy"][i])
            yield Pixel(x, y, ("imzml", mz_at), axis, intensity)
