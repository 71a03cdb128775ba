# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Smoothing kernels: symmetric correlation (Savitzky-Golay, Gaussian) with ndimage boundary modes.

``correlate_symmetric(x, half, mode, cval, out, left=None, right=None)``: ``half`` holds the weights
from the centre outwards (``half[0]`` centre, ``half[k]`` for offsets +-k); ``mode`` is one of the
MODE_* codes; for MODE_INTERP the ``left``/``right`` (h x (2h+1)) matrices give the first and last h
outputs from the first and last 2h+1 samples. float32 in, float32 out (float32 arithmetic); float64
in, float64 out. The GIL is released. The callers (dsp/smoothing.py) validate everything.
"""

import numpy as np
cimport numpy as cnp

from cext._dspcore cimport (real_t, correlate_tiled, MODE_REFLECT, MODE_MIRROR, MODE_NEAREST, MODE_WRAP,
                            MODE_CONSTANT, MODE_INTERP)

cnp.import_array()

MODES = {"reflect": MODE_REFLECT, "grid-mirror": MODE_REFLECT, "mirror": MODE_MIRROR,
         "nearest": MODE_NEAREST, "wrap": MODE_WRAP, "grid-wrap": MODE_WRAP,
         "constant": MODE_CONSTANT, "grid-constant": MODE_CONSTANT, "interp": MODE_INTERP}
"""Boundary mode names (ndimage's, and savgol_filter's 'interp') -> kernel codes."""

def correlate_symmetric(const real_t[::1] x not None, const real_t[::1] half not None, int mode,
                        double cval, real_t[::1] out not None, const double[:, ::1] left=None,
                        const double[:, ::1] right=None):
    cdef Py_ssize_t n = x.shape[0], h = half.shape[0] - 1
    cdef const real_t* xp
    cdef real_t* yp
    cdef const double* lp = NULL
    cdef const double* rp = NULL
    cdef real_t cv = <real_t>cval
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} samples, x has {n}")
    if n == 0:
        return
    if mode == MODE_INTERP:
        if left is None or right is None or left.shape[0] != h or right.shape[0] != h \
                or left.shape[1] != 2 * h + 1 or right.shape[1] != 2 * h + 1 or n < 2 * h + 1:
            raise ValueError("MODE_INTERP needs h x (2h+1) left/right matrices and n >= 2h+1")
        if h:
            lp = &left[0, 0]
            rp = &right[0, 0]
    xp = &x[0]
    yp = &out[0]
    with nogil:
        correlate_tiled(xp, n, yp, &half[0], h, mode, cv, lp, rp)
