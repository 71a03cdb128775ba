"""The TOF law of the frames: sample index <-> m/z, the one definition (docs/protocol.md).

A TOF frame (``instrument.frames.AxisKind.TOF``) carries a :class:`instrument.frames.Calibration`:
sample ``i`` has flight time ``t = t0_ns + i * dt_ns`` (ns) and
``sqrt(m/z) = c0 + c1 * t_us + c2 * t_us**2`` with ``t_us = t / 1000``. The simulator
(``instrument.spectrum_model``) renders spectra with it, the DSP (``dsp.calibration``) reads them
with it, and ``cext/scan.pyx`` evaluates the same expression inline in its kernel (pinned to this
module by tests/dsp_tests/test_dsp_calibration.py).
"""
from __future__ import annotations

import math

import numpy as np

from instrument.frames import Calibration

__all__ = ["Calibration", "mz_at", "mz_axis", "mz_to_index", "mz_per_sample", "time_us_for_mz"]


def mz_at(calibration: Calibration, index) -> np.ndarray:
    """m/z at (fractional) sample indices (float64)."""
    i = np.asarray(index, dtype=np.float64)
    t_us = (calibration.t0_ns + i * calibration.dt_ns) / 1000.0
    r = calibration.c0 + calibration.c1 * t_us + calibration.c2 * t_us * t_us
    return r * r


def mz_axis(calibration: Calibration, n_samples: int, out: np.ndarray | None = None) -> np.ndarray:
    """m/z of every sample, float64, computed in place in ``out`` if given (length ``n_samples``).

    The same operations in the same order as :func:`mz_at` (and the kernel), so every value is
    bit-identical to ``mz_at(calibration, i)``.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples!r}")
    if out is None:
        out = np.empty(n_samples, np.float64)
    elif out.shape != (n_samples,) or out.dtype != np.float64:
        raise ValueError(f"out must be a float64 array of shape ({n_samples},)")
    np.multiply(np.arange(n_samples, dtype=np.float64), calibration.dt_ns, out=out)
    out += calibration.t0_ns
    out /= 1000.0
    t = out.copy() if calibration.c2 else None
    out *= calibration.c1
    out += calibration.c0
    if t is not None:
        out += calibration.c2 * t * t
    np.square(out, out=out)
    return out


def mz_to_index(calibration: Calibration, mz) -> np.ndarray:
    """Fractional sample index of each m/z (the inverse of the law on its increasing branch; float64)."""
    r = np.sqrt(np.asarray(mz, dtype=np.float64))
    c0, c1, c2 = calibration.c0, calibration.c1, calibration.c2
    if c2 == 0.0:
        t_us = (r - c0) / c1
    else:
        disc = c1 * c1 - 4.0 * c2 * (c0 - r)
        t_us = (-c1 + np.sqrt(disc)) / (2.0 * c2)
    return (t_us * 1000.0 - calibration.t0_ns) / calibration.dt_ns


def time_us_for_mz(mz: float, c0: float, c1: float, c2: float) -> float:
    """Flight time (us) where sqrt(mz) = c0 + c1 t + c2 t^2 (the positive root); one scalar."""
    r = math.sqrt(mz)
    if c2 == 0.0:
        return (r - c0) / c1
    return (-c1 + math.sqrt(c1 * c1 - 4.0 * c2 * (c0 - r))) / (2.0 * c2)


def mz_per_sample(calibration: Calibration, mz) -> np.ndarray:
    """Local axis spacing d(m/z)/d(index) at each m/z (float64)."""
    r = np.sqrt(np.asarray(mz, dtype=np.float64))
    t_us = (mz_to_index(calibration, mz) * calibration.dt_ns + calibration.t0_ns) / 1000.0
    return 2.0 * r * (calibration.c1 + 2.0 * calibration.c2 * t_us) * calibration.dt_ns / 1000.0
