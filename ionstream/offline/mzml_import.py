"""Import: mzML -> capture (``ionstream import run.mzML -o run.isc``).

Every profile spectrum of an mzML run becomes one SCAN frame with an explicit float64 m/z axis
(``AxisKind.EXPLICIT``), so ``replay://run.isc`` plays real instrument data through the live
pipeline. docs/mzml.md describes the mapping.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instrument.frames import encode_scan
from ionstream.offline.files import atomic_output, sha1_of
from ionstream.offline.spectra import Progress, Spectrum, _parse_time, mzml_metadata, read_mzml_spectra

__all__ = ["ImportSummary", "import_mzml"]


@dataclass
class ImportSummary:
    """What :func:`import_mzml` wrote. Sizes in bytes, times in s."""

    path: str
    spectra: int = 0                 # frames written
    skipped_centroided: int = 0
    skipped_ms_level: int = 0
    skipped_empty: int = 0
    sorted_axes: int = 0             # spectra whose m/z array had to be sorted
    estimated_profile: int = 0       # spectra without a type term, found to be profile from the data
    estimated_centroided: int = 0    # ... found to be centroided (read_mzml_spectra, spectrum_type='auto')
    max_samples: int = 0
    max_frame_bytes: int = 0
    duration_s: float = 0.0          # last - first scan start time
    ms_levels: dict = field(default_factory=dict)
    run_id: str | None = None
    instrument: list = field(default_factory=list)

    @property
    def ring_slot_bytes(self) -> int:
        """The smallest ``ring.slot_bytes`` that holds every frame of this capture."""
        return self.max_frame_bytes

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["ring_slot_bytes"] = self.ring_slot_bytes
        return d


def _count_estimated(summary, s: Spectrum) -> None:
    if s.type_source == "estimated":
        if s.centroided:
            summary.estimated_centroided += 1
        else:
            summary.estimated_profile += 1


def import_mzml(mzml_path: str | os.PathLike, out_path: str | os.PathLike, *,
                ms_levels: Iterable[int] | None = None, centroided: bool = False,
                compress: bool | int = False, overwrite: bool = False,
                progress: Progress | None = None, spectrum_type: str = "auto") -> ImportSummary:
    """Write the spectra of an mzML run as SCAN frames into a new capture at ``out_path``.

    Each kept spectrum becomes one frame carrying its own m/z array as an explicit float64
    axis (``AxisKind.EXPLICIT``) and its intensities in their stored dtype (float32 or
    float64). Frame fields: ``sequence`` 0, 1, 2, ...; ``scan_number`` from the spectrum
    (see :func:`read_mzml_spectra`); ``device_time_ns`` = scan start time in ns from the
    run start; ``ms_level`` and ``polarity`` from the spectrum's cvParams. Each record's
    host time is the run's ``startTimeStamp`` (or now, if absent) + the scan start time, so
    ``replay://`` at speed 1 plays the run at its acquisition pace.

    By default only profile spectra are imported (the pipeline picks peaks from profile
    data); ``centroided=True`` imports only the centroided ones instead. ``ms_levels``
    keeps only those MS levels. Empty spectra are skipped. ``spectrum_type`` as in
    :func:`read_mzml_spectra` (the summary counts the spectra whose type was estimated).
    """
    from instrument.capture import CaptureWriter

    mzml_path, out_path = Path(mzml_path), Path(out_path)
    meta = mzml_metadata(mzml_path)
    base_ns = _parse_time(meta["start_time"])
    if base_ns is None:
        import time

        base_ns = time.time_ns()
    summary = ImportSummary(path=str(out_path), run_id=meta["run_id"],
                            instrument=[item["name"] for item in meta["instrument"]])
    levels = None if ms_levels is None else {int(x) for x in ms_levels}
    description = {
        "source": {
            "url": f"mzml://{mzml_path.resolve()}", "kind": "mzml", "file": mzml_path.name,
            "sha1": sha1_of(mzml_path), "run_id": meta["run_id"], "start_time": meta["start_time"],
            "instrument": meta["instrument"], "components": meta["components"],
            "serial_number": meta.get("serial_number"),
            "source_files": meta["source_files"], "time_origin_ns": 0,
        },
        "settings": {"import": {"ms_levels": sorted(levels) if levels else "all",
                                "spectra": "centroided" if centroided else "profile"}},
    }
    first_t = last_t = None
    seq = 0
    with atomic_output(out_path, overwrite=overwrite) as tmp, \
            CaptureWriter(tmp, description, fsync_interval_s=None, compress=compress) as writer:
        for s in read_mzml_spectra(mzml_path, spectrum_type=spectrum_type):
            if progress is not None:
                progress(1)
            _count_estimated(summary, s)
            if s.centroided != centroided:
                summary.skipped_centroided += 1 if s.centroided else 0
                continue
            if levels is not None and s.ms_level not in levels:
                summary.skipped_ms_level += 1
                continue
            if len(s.mz) == 0 or len(s.mz) != len(s.intensity):
                summary.skipped_empty += 1
                continue
            mz, intensity = s.mz, s.intensity
            if np.any(np.diff(mz) < 0):
                order = np.argsort(mz, kind="stable")
                mz, intensity = mz[order], intensity[order]
                summary.sorted_axes += 1
            frame = encode_scan(intensity, sequence=seq, scan_number=s.scan & 0xFFFFFFFF,
                                device_time_ns=max(0, s.device_time_ns), ms_level=s.ms_level,
                                polarity=s.polarity, mz_axis=mz)
            writer.append(frame, base_ns + max(0, s.device_time_ns))
            seq += 1
            summary.spectra += 1
            summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
            summary.max_samples = max(summary.max_samples, len(mz))
            summary.max_frame_bytes = max(summary.max_frame_bytes, len(frame))
            first_t = s.time_s if first_t is None else first_t
            last_t = s.time_s
    if first_t is not None:
        summary.duration_s = last_t - first_t
    return summary
