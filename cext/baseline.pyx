# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Baseline and noise kernels: robust block statistics and their piecewise-linear interpolation.

``block_statistics(x, block, stride, noise_floor)`` -> (centres, baseline, noise, raw_baseline,
raw_noise), one value per block of ``block`` samples (float64; centres in samples). ``lines(centres,
values, n, invert)`` -> the per-sample float32 interpolation the scan kernel uses. The algorithm is in
cext/_dspcore.pxd (block_stat, block_statistics, tile_lines); dsp/baseline.py documents it.
"""

import numpy as np
cimport numpy as cnp

from cext._dspcore cimport block_statistics as _block_statistics, stats_blocks, tile_lines

cnp.import_array()


def block_statistics(const float[::1] x not None, Py_ssize_t block, Py_ssize_t stride, double noise_floor):
    cdef Py_ssize_t n = x.shape[0], nb, m
    if n < 1:
        raise ValueError("x is empty")
    if block < 128:
        raise ValueError(f"block must be >= 128 samples, got {block!r}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    nb = stats_blocks(n, block)
    m = (2 * block + stride) // stride + 1
    cdef float[::1] buf = np.empty(m, np.float32), dev = np.empty(m, np.float32)
    cdef double[::1] raw_base = np.empty(nb), raw_sig = np.empty(nb), base = np.empty(nb)
    cdef double[::1] sig = np.empty(nb), centre = np.empty(nb)
    with nogil:
        _block_statistics(&x[0], n, block, stride, noise_floor, &buf[0], &dev[0], &raw_base[0],
                          &raw_sig[0], &base[0], &sig[0], &centre[0])
    return centre.base, base.base, sig.base, raw_base.base, raw_sig.base


def lines(const double[::1] centre not None, const double[::1] values not None, Py_ssize_t n, bint invert):
    cdef Py_ssize_t nb = centre.shape[0], nt = (n + 63) >> 6, i
    if values.shape[0] != nb or nb < 1 or n < 1:
        raise ValueError("need one value per centre, at least one centre, n >= 1")
    cdef float[::1] t0 = np.empty(nt, np.float32), ts = np.empty(nt, np.float32)
    cdef float[::1] out = np.empty(n, np.float32)
    with nogil:
        tile_lines(&centre[0], &values[0], nb, n, invert, &t0[0], &ts[0])
        for i in range(n):
            out[i] = t0[i >> 6] + ts[i >> 6] * <float>(i & 63)
    return out.base
