"""Smoothing along the m/z axis: Savitzky-Golay and Gaussian, matching SciPy.

``savgol_filter`` matches ``scipy.signal.savgol_filter(x, window_length, polyorder)`` (deriv=0) and
``gaussian_filter1d`` matches ``scipy.ndimage.gaussian_filter1d(x, sigma)`` for 1-D signals, in
every boundary mode those functions offer:

* ``savgol_filter``: ``mode='interp'`` (SciPy's default: the first and last ``window_length // 2``
  outputs come from a degree-``polyorder`` polynomial fitted to the first and last window),
  'mirror', 'nearest', 'constant' (``cval``), 'wrap';
* ``gaussian_filter1d``: ``mode='reflect'`` (ndimage's default, ``d c b a | a b c d | d c b a``),
  'mirror' (``d c b | a b c d | c b a``), 'nearest', 'constant', 'wrap', and the 'grid-*' aliases.

Precision: float64 input is filtered in float64 and agrees with SciPy to a few ulp; float32 input
is filtered in float32 (SciPy's ndimage accumulates float32 input in double), so it agrees to float32
rounding (relative 1e-6 of the signal's scale). Integer input is filtered as float64 and returns
float64 (ndimage would return the input's integer dtype).

The kernels (``cext.smooth``) release the GIL; pass ``out`` to reuse a buffer (it must not be ``x``).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import scipy.signal

from cext.smooth import MODES, correlate_symmetric

__all__ = ["savgol_filter", "gaussian_filter1d", "Smoother", "savgol_weights", "gaussian_weights"]

SAVGOL_MODES = ("interp", "mirror", "nearest", "constant", "wrap")
GAUSSIAN_MODES = ("reflect", "mirror", "nearest", "constant", "wrap", "grid-mirror", "grid-constant",
                  "grid-wrap")


class Smoother(NamedTuple):
    """A symmetric filter ready for the kernel: weights from the centre outwards (float64), the
    boundary mode code, and for 'interp' the (h, 2h+1) edge matrices."""

    half: np.ndarray
    mode: int
    left: np.ndarray | None = None
    right: np.ndarray | None = None

    @property
    def halfwidth(self) -> int:
        """Samples each side of the centre that the filter reads."""
        return self.half.size - 1

    @property
    def noise_gain(self) -> float:
        """Standard deviation of the output for unit white noise in (sqrt of the sum of squared weights)."""
        return float(math.sqrt(self.half[0] ** 2 + 2.0 * float(np.sum(self.half[1:] ** 2))))


@functools.lru_cache(maxsize=64)
def savgol_weights(window_length: int, polyorder: int, mode: str = "interp") -> Smoother:
    """The Savitzky-Golay smoother (deriv 0) for ``window_length`` (odd, samples) and ``polyorder``."""
    window_length = int(window_length)
    polyorder = int(polyorder)
    if window_length < 1 or window_length % 2 == 0:
        raise ValueError(f"window_length must be a positive odd integer (samples), got {window_length!r}")
    if polyorder >= window_length:
        raise ValueError(f"polyorder must be less than window_length, got polyorder={polyorder!r}, "
                         f"window_length={window_length!r}")
    if polyorder < 0:
        raise ValueError(f"polyorder must be >= 0, got {polyorder!r}")
    if mode not in SAVGOL_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, SAVGOL_MODES))}; got {mode!r}")
    c = scipy.signal.savgol_coeffs(window_length, polyorder)
    h = window_length // 2
    # convolve1d flips the weights; for deriv 0 they are symmetric up to rounding: use the mean.
    half = np.empty(h + 1)
    half[0] = c[h]
    half[1:] = 0.5 * (c[h + 1:] + c[h - 1::-1][:h])
    left = right = None
    if mode == "interp":
        # Rows of the least-squares hat matrix: the polynomial fitted to the window, evaluated there.
        t = np.arange(window_length, dtype=np.float64)
        a = np.vander(t, polyorder + 1)
        hat = a @ np.linalg.pinv(a)
        left = np.ascontiguousarray(hat[:h])
        right = np.ascontiguousarray(hat[window_length - h:])
    return Smoother(half, MODES[mode], left, right)


@functools.lru_cache(maxsize=64)
def gaussian_weights(sigma: float, truncate: float = 4.0, radius: int | None = None,
                     mode: str = "reflect") -> Smoother:
    """The Gaussian smoother of ``scipy.ndimage.gaussian_filter1d`` (order 0; sigma in samples)."""
    sd = float(sigma)
    if not sd > 0:
        raise ValueError(f"sigma must be > 0 (samples), got {sigma!r}")
    lw = int(truncate * sd + 0.5) if radius is None else radius
    if not isinstance(lw, (int, np.integer)) or lw < 0:
        raise ValueError('Radius must be a nonnegative integer.')
    if mode not in GAUSSIAN_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, GAUSSIAN_MODES))}; got {mode!r}")
    # scipy.ndimage._filters._gaussian_kernel1d, order 0
    x = np.arange(-lw, lw + 1)
    phi = np.exp(-0.5 / (sd * sd) * x ** 2)
    phi = phi / phi.sum()
    return Smoother(np.ascontiguousarray(phi[lw:]), MODES[mode])


def _prepare(x, out):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"x must be 1-D, got {a.ndim} dimensions")
    if a.dtype != np.float32:
        a = a.astype(np.float64, copy=False)
    a = np.ascontiguousarray(a)
    if out is None:
        out = np.empty_like(a)
    else:
        if out.dtype != a.dtype or out.shape != a.shape or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {a.shape}")
        if np.shares_memory(out, a):
            raise ValueError("out must not share memory with x")
    return a, out


def apply(smoother: Smoother, x, cval: float = 0.0, out=None) -> np.ndarray:
    """Run a prepared :class:`Smoother` over ``x`` (1-D; float32 stays float32)."""
    a, out = _prepare(x, out)
    half = smoother.half.astype(a.dtype)
    if smoother.mode == MODES["interp"] and a.size < 2 * smoother.halfwidth + 1:
        raise ValueError("If mode is 'interp', window_length must be less than or equal to the size of x.")
    correlate_symmetric(a, half, smoother.mode, float(cval), out, smoother.left, smoother.right)
    return out


def savgol_filter(x, window_length: int, polyorder: int, *, mode: str = "interp", cval: float = 0.0,
                  out=None) -> np.ndarray:
    """Savitzky-Golay smoothing of a 1-D signal; ``scipy.signal.savgol_filter`` with deriv=0.

    Parameters
    ----------
    x : array_like, 1-D
        The signal (counts). float32 stays float32; other dtypes become float64.
    window_length : int
        Filter window in samples (odd).
    polyorder : int
        Degree of the fitted polynomial (< window_length).
    mode : str
        Boundary handling: 'interp' (default, as SciPy), 'mirror', 'nearest', 'constant', 'wrap'.
    cval : float
        Value outside the signal for mode='constant'.
    out : ndarray, optional
        Output buffer (same dtype and shape as the converted ``x``; not ``x`` itself).
    """
    return apply(savgol_weights(window_length, polyorder, mode), x, cval, out)


def gaussian_filter1d(x, sigma: float, *, mode: str = "reflect", cval: float = 0.0, truncate: float = 4.0,
                      radius: int | None = None, out=None) -> np.ndarray:
    """Gaussian smoothing of a 1-D signal; ``scipy.ndimage.gaussian_filter1d`` with order=0.

    Parameters
    ----------
    x : array_like, 1-D
        The signal (counts). float32 stays float32; other dtypes become float64.
    sigma : float
        Standard deviation of the Gaussian, in samples.
    mode : str
        Boundary handling as in ndimage: 'reflect' (default), 'mirror', 'nearest', 'constant', 'wrap'.
    cval : float
        Value outside the signal for mode='constant'.
    truncate : float
        The kernel reaches ``int(truncate * sigma + 0.5)`` samples each side (unless ``radius``).
    radius : int, optional
        Kernel radius in samples (overrides ``truncate``).
    out : ndarray, optional
        Output buffer (same dtype and shape as the converted ``x``; not ``x`` itself).
    """
    return apply(gaussian_weights(float(sigma), float(truncate), radius, mode), x, cval, out)
