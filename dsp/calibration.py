"""TOF -> m/z calibration: the frame's law, its inverse, and a refit from calibrant peaks.

The law (docs/protocol.md, ``instrument.frames.AxisKind.TOF``) is defined once, in
:mod:`instrument.calibration` (``mz_at``, ``mz_axis``, ``mz_to_index`` are re-exported here):
sample ``i`` has flight time ``t = t0_ns + i * dt_ns`` (ns) and
``sqrt(m/z) = c0 + c1 * t_us + c2 * t_us**2`` with ``t_us = t / 1000``. Frames may instead carry
an explicit float64 m/z axis.

The scan kernel never builds the axis: it evaluates the law only at the samples a centroid needs
(``m/z = r**2``, no square root). :func:`mz_axis` is for callers that want the whole axis
(spectrum publishing, feature binning); :class:`AxisCache` keeps the last few.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from instrument.calibration import mz_at, mz_axis, mz_to_index  # the TOF law: one definition
from instrument.frames import Calibration

__all__ = ["mz_axis", "mz_at", "mz_to_index", "fit_calibration", "refit_calibration", "CalibrationFit",
           "AxisCache"]


class CalibrationFit(NamedTuple):
    calibration: Calibration
    residuals_ppm: np.ndarray   # (fitted - known) / known * 1e6, per calibrant used
    used: np.ndarray            # indices (into the known m/z) of the calibrants used


def fit_calibration(index, mz, *, t0_ns: float = 0.0, dt_ns: float = 1.0, order: int = 2) -> CalibrationFit:
    """Least-squares TOF coefficients from calibrant peaks at known m/z.

    Parameters
    ----------
    index : array_like
        Fractional sample index where each calibrant was observed (its centroid).
    mz : array_like
        The calibrants' known m/z (same length).
    t0_ns, dt_ns : float
        The acquisition's time of sample 0 and sample period (ns); kept in the result.
    order : int
        1: ``c2 = 0`` (needs >= 2 calibrants); 2: full law (needs >= 3).

    The fit is linear in ``sqrt(m/z) = c0 + c1 t_us + c2 t_us**2``, weighted so that residuals
    are relative in m/z (weights ``sqrt(m/z)``, since d(m/z)/(m/z) = 2 d(sqrt)/sqrt).
    """
    i = np.asarray(index, dtype=np.float64).ravel()
    m = np.asarray(mz, dtype=np.float64).ravel()
    if i.shape != m.shape:
        raise ValueError(f"index and mz must have the same length, got {i.size} and {m.size}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if i.size < order + 1:
        raise ValueError(f"order {order} needs at least {order + 1} calibrants, got {i.size}")
    if np.any(m <= 0):
        raise ValueError("calibrant m/z must be > 0")
    t_us = (t0_ns + i * dt_ns) / 1000.0
    r = np.sqrt(m)
    a = np.stack([np.ones_like(t_us), t_us] + ([t_us * t_us] if order == 2 else []), axis=1)
    w = 1.0 / r
    coef, *_ = np.linalg.lstsq(a * w[:, None], r * w, rcond=None)
    c0, c1 = float(coef[0]), float(coef[1])
    c2 = float(coef[2]) if order == 2 else 0.0
    cal = Calibration(t0_ns=float(t0_ns), dt_ns=float(dt_ns), c0=c0, c1=c1, c2=c2)
    resid = (mz_at(cal, i) - m) / m * 1e6
    return CalibrationFit(cal, resid, np.arange(m.size))


def refit_calibration(calibration: Calibration, peak_mz, known_mz, *, tolerance_ppm: float = 50.0,
                      order: int = 2) -> CalibrationFit:
    """Refit ``calibration`` from observed centroids of calibrants with known m/z.

    Each known m/z is matched to the nearest observed centroid within ``tolerance_ppm``; the
    matched centroids' sample indices (from the current calibration) and the known m/z are fitted
    with :func:`fit_calibration`. ``used`` lists the known m/z that were matched.
    """
    obs = np.sort(np.asarray(peak_mz, dtype=np.float64).ravel())
    known = np.asarray(known_mz, dtype=np.float64).ravel()
    if obs.size == 0:
        raise ValueError("no observed peaks to match")
    pos = np.clip(np.searchsorted(obs, known), 1, obs.size - 1) if obs.size > 1 else np.zeros(known.size, int)
    cand = np.stack([obs[pos - 1], obs[pos]], axis=1) if obs.size > 1 else obs[pos][:, None]
    best = cand[np.arange(known.size), np.argmin(np.abs(cand - known[:, None]), axis=1)]
    ok = np.abs(best - known) / known * 1e6 <= tolerance_ppm
    if ok.sum() < order + 1:
        raise ValueError(f"only {int(ok.sum())} calibrants matched within {tolerance_ppm} ppm; "
                         f"order {order} needs {order + 1}")
    fit = fit_calibration(mz_to_index(calibration, best[ok]), known[ok], t0_ns=calibration.t0_ns,
                          dt_ns=calibration.dt_ns, order=order)
    return CalibrationFit(fit.calibration, fit.residuals_ppm, np.flatnonzero(ok))


class AxisCache:
    """The m/z axes of the last few calibrations (read-only float64 arrays); thread-safe."""

    def __init__(self, size: int = 4):
        self._size = size
        self._axes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, calibration: Calibration, n_samples: int) -> np.ndarray:
        key = (calibration, n_samples)
        with self._lock:
            axis = self._axes.get(key)
            if axis is not None:
                self._axes.move_to_end(key)
                return axis
        axis = mz_axis(calibration, n_samples)
        axis.flags.writeable = False
        with self._lock:
            self._axes[key] = axis
            while len(self._axes) > self._size:
                self._axes.popitem(last=False)
        return axis


def ppm(a, b) -> np.ndarray:
    """(a - b) / b in parts per million."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a - b) / b * 1e6

