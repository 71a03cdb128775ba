"""Offline peak picking: mzML or capture -> CSV or centroided mzML (``ionstream peaks INPUT -o OUT``).

:class:`PeakPicker` picks with :class:`ionstream.processing.ScanWork`, the per-scan code of the
live pipeline, so offline and live peaks are the same numbers.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instrument.frames import AxisKind
from ionstream.offline.files import atomic_output
from ionstream.offline.mzml_import import _count_estimated
from ionstream.offline.mzml_writer import ExportSummary, MzMLOut, processing_params
from ionstream.offline.spectra import (
    MzMLError,
    Progress,
    Spectrum,
    is_capture,
    mzml_metadata,
    read_capture_spectra,
    read_mzml_spectra,
)
from ionstream.processing import DEFAULT_SMOOTHING as _DEFAULT_SMOOTHING  # the name PeakPicker uses
from ionstream.processing import PEAK_FIELDS
from ionstream.processing import PEAK_FIELDS as _PEAK_FIELDS  # the name PeakPicker uses
from ionstream.processing import dsp_params

log = logging.getLogger("ionstream.offline.peaks")

__all__ = ["CSV_COLUMNS", "PeakPicker", "PeaksSummary", "dsp_params_from_config", "pick_peaks"]

CSV_COLUMNS = ("index", "scan", "native_id", "ms_level", "polarity", "rt_min") + tuple(
    name for name, _dtype in PEAK_FIELDS)
"""Columns of ``ionstream peaks -o peaks.csv``: one row per peak (units in docs/mzml.md)."""


def dsp_params_from_config(config=None) -> dict[str, Any]:
    """The ScanProcessor parameters the daemon uses for ``config`` (default configuration if None)."""
    if config is None:
        from ionstream.config import load

        config = load(None)
    return dsp_params(config.dsp)


class PeakPicker:
    """Peak picking for offline spectra with the live pipeline's DSP code.

    * A scan read from a capture goes through :class:`ionstream.processing.ScanWork`, the
      per-scan path of the daemon's DSP workers, with the daemon's ``[dsp]`` settings: the
      peaks are those the daemon publishes when it replays the capture.
    * A spectrum read from an mzML file goes through :func:`dsp.pick_centroids`, the DSP
      stage's entry point for one profile spectrum on its own m/z axis (same kernel; it adapts
      its sample-based widths to the spectrum's peak width and handles zero-suppressed
      profiles). It gets ``min_snr`` from the settings, and ``smoothing`` only when the
      configuration chose one other than the default (else pick_centroids chooses).

    Calling it returns the wire layout of the ``peaks`` topic: mz (<f8), intensity, area,
    fwhm, snr (<f4), sorted by m/z.
    """

    def __init__(self, dsp_params: dict[str, Any] | None = None):
        self.params = dict(dsp_params) if dsp_params is not None else dsp_params_from_config()
        self._work = None
        self._work_error: str | None = None
        self._warned = False

    def _scan_work(self):
        if self._work is None and self._work_error is None:
            try:
                from ionstream.processing import ScanWork

                self._work = ScanWork(dsp_params=dict(self.params), xic_windows=[])
            except Exception as exc:  # ScanWork refusing the settings (a wrong [dsp] value)
                self._work_error = f"{type(exc).__name__}: {exc}"
        return self._work

    def pick_params(self) -> dict[str, Any]:
        """The keyword arguments given to dsp.pick_centroids."""
        params = {}
        if "min_snr" in self.params:
            params["min_snr"] = float(self.params["min_snr"])
        if self.params.get("preset"):
            params["preset"] = self.params["preset"]
        if self.params.get("smoothing", _DEFAULT_SMOOTHING) != _DEFAULT_SMOOTHING:
            params["smoothing"] = self.params["smoothing"]
        return params

    def __call__(self, s: "Spectrum") -> dict[str, np.ndarray]:
        if len(s.mz) < 3:
            return {name: np.zeros(0, dtype) for name, dtype in _PEAK_FIELDS}
        if s.header is not None:
            work = self._scan_work()
            if work is not None:
                mz = s.mz if s.header.axis_kind == AxisKind.EXPLICIT else None
                p = work.process(s.header, s.intensity, mz).peaks
                return {name: np.asarray(p[name], dtype=dtype) for name, dtype in _PEAK_FIELDS}
            if not self._warned:
                self._warned = True
                log.warning("the pipeline's per-scan path (ScanWork) is not available (%s); capture scans are "
                            "picked with dsp.pick_centroids instead", self._work_error)
        return self._pick_centroids(s.mz, s.intensity)

    def _pick_centroids(self, mz: np.ndarray, intensity: np.ndarray) -> dict[str, np.ndarray]:
        try:
            from dsp import pick_centroids
        except ImportError as exc:
            raise MzMLError(f"peak picking needs the DSP stage (dsp.pick_centroids): {exc}") from None
        mz = np.asarray(mz, dtype=np.float64)
        if not np.all(np.diff(mz) > 0):  # pick_centroids wants a strictly increasing axis
            order = np.argsort(mz, kind="stable")
            mz, intensity = mz[order], np.asarray(intensity)[order]
            keep = np.concatenate(([True], np.diff(mz) > 0))
            mz, intensity = mz[keep], intensity[keep]
        p = pick_centroids(mz, intensity, **self.pick_params())
        return {name: np.ascontiguousarray(p[name], dtype=dtype) for name, dtype in _PEAK_FIELDS}


def _passed_through(s: Spectrum) -> dict[str, np.ndarray]:
    """A centroided spectrum's own points in the peaks layout (area, FWHM, S/N unknown: NaN)."""
    mz = np.asarray(s.mz, dtype=np.float64)
    order = np.argsort(mz, kind="stable")
    n = mz.size
    out = {name: np.full(n, np.nan, dtype) for name, dtype in _PEAK_FIELDS}
    out["mz"] = mz[order]
    out["intensity"] = np.asarray(s.intensity, dtype=np.float32)[order]
    return out


@dataclass
class PeaksSummary(ExportSummary):
    skipped_centroided: int = 0      # centroided input spectra passed through as they are (not re-picked)
    estimated_profile: int = 0       # spectra without a type term, found to be profile from the data
    estimated_centroided: int = 0


def pick_peaks(in_path: str | os.PathLike, out_path: str | os.PathLike, *,
               dsp_params: dict[str, Any] | None = None, ms_levels: Iterable[int] | None = None,
               progress: Progress | None = None, spectrum_type: str = "auto") -> PeaksSummary:
    """Pick peaks in every profile spectrum of ``in_path`` (mzML or capture) with the live pipeline's code.

    ``out_path`` ending in ``.csv`` gets one row per peak (:data:`CSV_COLUMNS`); ``.mzML``
    gets centroided spectra (as ``export --centroid``). Spectra already centroided in the
    input (declared, given by ``spectrum_type``, or estimated from the data when the file does not
    say: :func:`read_mzml_spectra`) are never re-picked: their points pass through as they are
    (intensity as given; area, FWHM and S/N empty in CSV) and are counted in ``skipped_centroided``.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".csv", ".mzml"):
        raise MzMLError(f"{out_path}: output must end in .csv or .mzML")
    capture = is_capture(in_path)
    if not capture:
        mzml_metadata(in_path)  # a clear error for a file that is not mzML
    picker = PeakPicker(dsp_params)
    params = picker.params
    summary = PeaksSummary(path=str(out_path), centroided=True, dsp=params)
    levels = None if ms_levels is None else {int(x) for x in ms_levels}
    spectra = read_capture_spectra(in_path) if capture else read_mzml_spectra(in_path, spectrum_type=spectrum_type)

    def picked():
        for s in spectra:
            if progress is not None:
                progress(1)
            if levels is not None and s.ms_level not in levels:
                continue
            _count_estimated(summary, s)
            if s.centroided:
                summary.skipped_centroided += 1
                yield s, _passed_through(s)
                continue
            yield s, picker(s)

    if suffix == ".csv":
        with atomic_output(out_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for s, p in picked():
                pol = s.polarity.name.lower()
                for i in range(len(p["mz"])):
                    # m/z exact (repr of the float64); the float32 columns to 9 significant digits
                    writer.writerow((s.index, s.scan, s.native_id, s.ms_level, pol, f"{s.rt_min:.9g}",
                                     *(repr(float(p[name][i])) if name == "mz" else f"{float(p[name][i]):.9g}"
                                       for name, _dtype in PEAK_FIELDS)))
                summary.spectra += 1
                summary.peaks += len(p["mz"])
                summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
        return summary

    # centroided mzML: the spectrum count must be known before the first spectrum
    count, ms_set, seen, unique = 0, set(), set(), True
    for s in (read_capture_spectra(in_path) if capture else read_mzml_spectra(in_path, spectrum_type=spectrum_type)):
        if levels is None or s.ms_level in levels:
            count += 1
            ms_set.add(s.ms_level)
            unique = unique and s.scan not in seen
            seen.add(s.scan)
    if capture:
        from instrument.capture import CaptureReader

        with CaptureReader(in_path) as reader:
            start_time = reader.header.get("created")
            source = reader.description.get("source") or {}
    else:
        meta = mzml_metadata(in_path)
        start_time = meta["start_time"]
        source = {"url": f"mzml://{in_path.resolve()}", "instrument": meta["instrument"],
                  "components": meta["components"], "serial_number": meta.get("serial_number")}
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", in_path.stem) or "run"
    if not run_id[0].isalpha():
        run_id = "_" + run_id
    with atomic_output(out_path) as tmp:
        out = MzMLOut(tmp, run_id=run_id, start_time=start_time, source=source, source_path=in_path,
                       centroided=True, ms_levels=ms_set, count=count, unique_scans=unique,
                       processing=processing_params(params))
        try:
            for s, p in picked():
                out.write(s, p["mz"], p["intensity"], snr=p["snr"])
                summary.spectra += 1
                summary.peaks += len(p["mz"])
                summary.ms_levels[s.ms_level] = summary.ms_levels.get(s.ms_level, 0) + 1
            out.close()
        except BaseException:
            out.abort()
            raise
    return summary
