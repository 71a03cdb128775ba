"""Per-scan work done in a DSP worker thread: calibrate, process, centroid, features.

One ScanWork per worker thread (it owns reusable buffers, so it is not shared). The output,
ProcessedScan, holds only what must outlive the ring slot: the peak list, the traces'
numbers and the feature vector (small, fresh per scan), and optionally a copy of the
processed spectrum from a buffer pool for the `spectrum` topic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from instrument.frames import Calibration, FrameHeader
from instrument.ring import Slot

EMPTY_PEAKS = {
    "mz": np.zeros(0, "<f8"), "intensity": np.zeros(0, "<f4"), "area": np.zeros(0, "<f4"),
    "fwhm": np.zeros(0, "<f4"), "snr": np.zeros(0, "<f4"),
}


@dataclass(slots=True)
class ProcessedScan:
    peaks: dict[str, np.ndarray]           # wire layout: mz <f8, intensity/area/fwhm/snr <f4
    tic: float                             # total ion current (counts, baseline removed)
    xic: np.ndarray                        # one value per configured m/z window (counts)
    features: np.ndarray | None            # classifier input (float32), or None without a model
    spectrum: tuple[np.ndarray, np.ndarray, Callable[[], None]] | None = None  # (mz, intensity, release)
    ms_level: int = 1
    polarity: str = "positive"


class AxisCache:
    """m/z axes per (calibration, n_samples): frames of one instrument share a few."""

    def __init__(self, max_entries: int = 8):
        self._axes: dict[tuple[Calibration, int], np.ndarray] = {}
        self._max = max_entries

    def get(self, calibration: Calibration, n_samples: int) -> np.ndarray:
        key = (calibration, n_samples)
        axis = self._axes.get(key)
        if axis is None:
            from instrument.spectrum_model import mz_axis

            if len(self._axes) >= self._max:
                self._axes.pop(next(iter(self._axes)))
            axis = mz_axis(calibration, n_samples)
            axis.setflags(write=False)  # shared with subscribers (zero-copy) and other scans
            self._axes[key] = axis
        return axis


class ScanWork:
    """Callable turning one ring slot into a ProcessedScan (one instance per worker thread)."""

    def __init__(self, *, dsp_params: dict[str, Any], xic_windows: list[tuple[float, float]],
                 feature_spec=None, spectrum_pool=None):
        from dsp import ScanProcessor

        self._dsp = ScanProcessor(**dsp_params)
        self._axes = AxisCache()
        self._features = None
        if feature_spec is not None:
            from dsp.features import FeatureExtractor

            self._features = FeatureExtractor(feature_spec)
        self._xic = np.asarray(xic_windows, dtype=np.float64).reshape(-1, 2)
        self._spectrum_pool = spectrum_pool

    def __call__(self, slot: Slot) -> ProcessedScan:
        return self.process(slot.header, slot.samples(), slot.mz_axis())

    def process(self, h: FrameHeader, samples: np.ndarray, mz: np.ndarray | None) -> ProcessedScan:
        """One scan: ``samples`` as the frame carries them, ``mz`` its explicit axis or None (TOF)."""
        if mz is None:
            mz = self._axes.get(h.calibration, h.n_samples)
        result = self._dsp.process(mz, samples)  # views into the processor's reused buffers
        processed = result.intensity
        peaks = {name: np.ascontiguousarray(result.peaks[name], dtype=EMPTY_PEAKS[name].dtype)
                 for name in EMPTY_PEAKS}
        xic = np.zeros(len(self._xic))
        for i, (lo, hi) in enumerate(self._xic):
            a, b = np.searchsorted(mz, (lo, hi))
            xic[i] = float(processed[a:b].sum(dtype=np.float64))
        features = None
        if self._features is not None:
            features = self._features(mz, samples)
        spectrum = None
        if self._spectrum_pool is not None and len(processed) <= self._spectrum_pool.shape[0]:
            buf, release = self._spectrum_pool.acquire()
            out = buf[: len(processed)]
            out[:] = processed
            spectrum = (mz, out, release)
        return ProcessedScan(peaks, float(result.tic), xic, features, spectrum, h.ms_level,
                             h.polarity.name.lower())
