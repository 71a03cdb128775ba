"""Scoring picked peaks against known true peaks (simulated spectra), for tests and benchmarks.

Rules (the thresholds of the DSP's goals, docs/dsp.md "Performance"):

* a true peak counts for recall if its S/N is >= ``recall_snr`` (10) and it is not ``blended``
  (another true peak at least 10 % as high within one FWHM); it is found if a picked peak lies
  within half its FWHM;
* a picked peak is false if no true peak of any S/N (the truth lists those down to S/N 0.3) lies
  within one FWHM of it;
* the m/z error is that of the nearest picked peak, in ppm, for found true peaks with S/N >=
  ``error_snr`` (20).

``truth`` is a structured array with at least ``mz``, ``fwhm``, ``snr`` and ``blended`` (as
``instrument.spectrum_model.PEAK_DTYPE``); ``picked`` has at least ``mz``. Both sorted by m/z.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TruthScore", "score_scan"]


@dataclass
class TruthScore:
    n_true: int = 0          # true peaks counted for recall
    n_found: int = 0         # of those, found
    n_picked: int = 0
    n_false: int = 0
    errors_ppm: list = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.n_found / self.n_true if self.n_true else float("nan")

    @property
    def false_peak_rate(self) -> float:
        return self.n_false / self.n_picked if self.n_picked else 0.0

    @property
    def median_ppm_error(self) -> float:
        return float(np.median(np.abs(self.errors_ppm))) if self.errors_ppm else float("nan")

    @property
    def n_error(self) -> int:
        return len(self.errors_ppm)

    def __iadd__(self, other: "TruthScore") -> "TruthScore":
        self.n_true += other.n_true
        self.n_found += other.n_found
        self.n_picked += other.n_picked
        self.n_false += other.n_false
        self.errors_ppm.extend(other.errors_ppm)
        return self

    def as_dict(self) -> dict:
        return {"recall": self.recall, "false_peak_rate": self.false_peak_rate,
                "median_ppm_error": self.median_ppm_error, "n_true": self.n_true, "n_found": self.n_found,
                "n_picked": self.n_picked, "n_false": self.n_false, "n_error": self.n_error}

    def __repr__(self) -> str:
        return (f"TruthScore(recall={self.recall:.4f} ({self.n_found}/{self.n_true}), "
                f"false_peak_rate={self.false_peak_rate:.4f} ({self.n_false}/{self.n_picked}), "
                f"median_ppm_error={self.median_ppm_error:.3f} (n={self.n_error}))")


def _nearest(sorted_mz: np.ndarray, mz: np.ndarray) -> np.ndarray:
    """Index of the nearest value of ``sorted_mz`` for each ``mz`` (sorted_mz non-empty)."""
    j = np.clip(np.searchsorted(sorted_mz, mz), 1, max(sorted_mz.size - 1, 1))
    if sorted_mz.size == 1:
        return np.zeros(mz.size, np.intp)
    left = sorted_mz[j - 1]
    right = sorted_mz[np.minimum(j, sorted_mz.size - 1)]
    return np.where(np.abs(right - mz) < np.abs(left - mz), j, j - 1)


def score_scan(picked: np.ndarray, truth: np.ndarray, *, recall_snr: float = 10.0,
               error_snr: float = 20.0) -> TruthScore:
    """Score one scan's picked peaks against its true peaks (see the module docstring)."""
    s = TruthScore()
    pm = np.asarray(picked["mz"], np.float64)
    tm = np.asarray(truth["mz"], np.float64)
    counted = truth[(truth["snr"] >= recall_snr) & ~truth["blended"]]
    s.n_true = int(counted.size)
    s.n_picked = int(pm.size)
    if pm.size and counted.size:
        k = _nearest(pm, counted["mz"])
        d = np.abs(pm[k] - counted["mz"])
        found = d <= 0.5 * counted["fwhm"]
        s.n_found = int(found.sum())
        sel = found & (counted["snr"] >= error_snr)
        s.errors_ppm = list((pm[k][sel] - counted["mz"][sel]) / counted["mz"][sel] * 1e6)
    if pm.size:
        if tm.size:
            q = _nearest(tm, pm)
            s.n_false = int(np.sum(np.abs(tm[q] - pm) > truth["fwhm"][q]))
        else:
            s.n_false = int(pm.size)
    return s
