"""imzML export and import (pyimzML), so imaging data goes to and comes from other software.

    export_imzml("run.isc", "run.imzML")          # writes run.imzML + run.ibd
    import_imzml("other.imzML", "other.isc")      # a capture: replay it, or run `ionstream images`

Export: every pixel scan of a capture becomes one spectrum at its position (imzML coordinates
are 1-based: x + 1, y + 1, z + 1). m/z values are written as 64-bit floats (the TOF axis
computed from each frame's calibration, or its explicit axis); intensities as 32-bit floats
for uint16, int16 and float32 samples and as 64-bit floats for int32 and float64, so every
value is exact. ``mode``: ``continuous`` (one m/z array shared by all spectra: needs one axis
for the whole run), ``processed`` (an m/z array per spectrum) or ``auto`` (continuous when
the run has one axis). The pixel size goes into the scan settings (IMS:1000046/47, um).
A scan without a position is skipped and counted.

Import: each spectrum becomes a SCAN frame with an explicit m/z axis (float64) and the
intensities in their imzML type (32/64-bit float, 32-bit integer; 64-bit integers become
64-bit floats), carrying its pixel position (0-based) and the raster (max count of pixels,
pixel size) in the header extension. Sequence and scan numbers count the spectra from 0;
device and host times are the spectrum index in ms (imzML has no acquisition times).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ionstream.offline.imaging.pixels import ImagingInputError, RasterInfo, iter_part, plan_parts

MODES = ("auto", "continuous", "processed")


@dataclass
class ExportReport:
    spectra: int
    skipped_no_position: int
    mode: str
    imzml: str
    ibd: str


def _intensity_dtype(dtype: np.dtype) -> type:
    """The imzML intensity type that holds every value of ``dtype`` exactly."""
    return np.float64 if dtype in (np.dtype("<i4"), np.dtype("<f8")) else np.float32


def export_imzml(capture: str | os.PathLike, out: str | os.PathLike, mode: str = "auto") -> ExportReport:
    """Write the pixel scans of ``capture`` as ``out`` (.imzML; the .ibd beside it)."""
    from pyimzml.ImzMLWriter import ImzMLWriter

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    raster, parts = plan_parts(capture)
    keys, dtypes = set(), set()
    counts: dict[str, int] = {}
    for part in parts:  # first pass: how many axes, which sample types
        for px in iter_part(part, counts):
            keys.add(px.axis_key)
            dtypes.add(px.intensity.dtype)
    if mode == "continuous" and (len(keys) != 1 or None in keys):
        raise ValueError(f"{capture}: its scans have {len(keys)} different m/z axes; continuous imzML needs one "
                         "(use --mode processed)")
    if mode == "auto":
        mode = "continuous" if len(keys) == 1 and None not in keys else "processed"
    inten_type = np.float64 if any(_intensity_dtype(d) is np.float64 for d in dtypes) else np.float32
    out = Path(out)
    if out.suffix.lower() != ".imzml":
        out = out.with_suffix(".imzML")
    n = 0
    counts = {}
    with ImzMLWriter(str(out), mz_dtype=np.float64, intensity_dtype=inten_type, mode=mode,
                     spec_type="profile") as writer:
        for part in parts:
            for px in iter_part(part, counts):
                writer.addSpectrum(px.mz, px.intensity.astype(inten_type), (px.x + 1, px.y + 1, 1))
                n += 1
    path = Path(writer.filename)
    _add_pixel_size(path, raster)
    return ExportReport(n, counts.get("no_position", 0), mode, str(path), str(Path(writer.ibd_filename)))


def _add_pixel_size(path: Path, raster: RasterInfo) -> None:
    """pyimzML writes no pixel size: add IMS:1000046/47 (um) after the max count of pixels."""
    if not (raster.pixel_size_x_um > 0 and raster.pixel_size_y_um > 0):
        return
    text = path.read_text(encoding="utf-8")
    anchor = re.search(r'[ \t]*<cvParam[^>]*accession="IMS:1000043"[^>]*/>\n', text)
    if anchor is None:
        return
    indent = re.match(r"[ \t]*", anchor.group(0)).group(0)
    # the names as the imzML ontology spells them (pyimzML warns about any other spelling)
    extra = "".join(
        f'{indent}<cvParam cvRef="IMS" accession="IMS:{acc}" name="{name}" value="{value!r}" '
        f'unitCvRef="UO" unitAccession="UO:0000017" unitName="micrometer"/>\n'
        for acc, name, value in (("1000046", "pixel size (x)", float(raster.pixel_size_x_um)),
                                 ("1000047", "pixel size y", float(raster.pixel_size_y_um))))
    path.write_text(text[:anchor.end()] + extra + text[anchor.end():], encoding="utf-8")


@dataclass
class ImportReport:
    spectra: int
    raster: RasterInfo
    capture: str


_FRAME_TYPES = {np.dtype("<f4"): np.float32, np.dtype("<f8"): np.float64, np.dtype("<i4"): np.int32}


def import_imzml(path: str | os.PathLike, out: str | os.PathLike, *, compress: bool = False) -> ImportReport:
    """Write the spectra of the imzML file ``path`` as a capture ``out`` (see the module docstring)."""
    from instrument.capture import CaptureWriter
    from instrument.frames import encode_scan
    from instrument.imaging import PixelPosition, Raster, encode_pixel

    path = Path(path)
    if not path.is_file():
        raise ImagingInputError(f"{path}: no such file")
    raster, parts = plan_parts(path)
    r = Raster(raster.width, raster.height, raster.pixel_size_x_um, raster.pixel_size_y_um)
    desc: dict[str, Any] = {"source": {"kind": "imzml", "path": str(path)}, "mode": "import-imzml",
                            "raster": vars(raster)}
    n = 0
    with CaptureWriter(out, desc, compress=compress) as writer:
        for part in parts:
            for px in iter_part(part):
                samples = px.intensity.astype(_FRAME_TYPES.get(px.intensity.dtype, np.float64), copy=False)
                frame = encode_scan(samples, sequence=n, scan_number=n, device_time_ns=n * 1_000_000,
                                    mz_axis=px.mz, header_extension=encode_pixel(PixelPosition(px.x, px.y, r)))
                writer.append(frame, n * 1_000_000)
                n += 1
    return ImportReport(n, raster, str(out))
