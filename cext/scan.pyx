# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Per-scan DSP kernel: one call, GIL released, buffers reused.

``ScanKernel.run(samples, ...)`` for one scan (uint16, int16, int32, float32 or float64 samples):

1. samples -> float32 work copy ``xf`` and their sum;
2. baseline and noise per block (cext/_dspcore.pxd block_statistics), as per-64-sample-tile lines;
3. smoothing (symmetric weights, boundary mode or savgol 'interp' edges) -> ``y``;
4. ``y = (y - baseline) / noise`` in place: the S/N trace, with its 64-sample block minima/maxima
   (the summaries the peak scan and walks use) computed in the same pass;
5. peaks of the S/N trace under find_peaks conditions (height = min_snr, prominence, wlen, width at
   half prominence): exactly ``scipy.signal.find_peaks(trace, height=..., prominence=..., wlen=...,
   width=...)``;
6. for each peak a centroid from the baseline-subtracted samples ``xf - baseline`` (not the
   smoothed ones), in m/z coordinates: a Gaussian fitted over +-k samples of the apex (k =
   ``fit_window`` FWHMs from the trace's width at half height, inside the valleys next to the apex),
   started by a weighted log-parabola (Guo 2011) and finished by Gauss-Newton steps of weighted
   least squares (weights 1 / (noise**2 + shot_gain * model)); this reaches the Cramer-Rao bound on
   simulated TOF peaks where the log-parabola alone has 15-70 % of its efficiency. Then a two-sided
   Gaussian (left and right sigma) over the same samples: when its asymmetry is significant
   (``asymmetry_z`` standard errors) the peak is tailed and its apex is reported (FLAG_ASYM), else
   the Gaussian's centre, height and FWHM; the area is model-free (trapezoids down to ``area_floor`` S/N or a valley);
   m/z comes from the TOF law (``r**2``) or an explicit axis, evaluated only at those samples;
7. extracted-ion sums over given sample ranges.

Per peak allocations: none (records go into a caller-owned structured array).
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport log, exp, sqrt, fabs, INFINITY
from libc.string cimport memcpy

from cext._dspcore cimport (Conds, PeakRec, BLK_SHIFT, n_blocks, n_supers, n_subs, sub_summaries,
                            block_from_subs, super_summaries, ion_affine_tile,
                            ion_sum_u16, ion_sum_i16,
                            pre_conditions, post_conditions, block_bounds, scan_maxima, ScanPos,
                            scan_start, correlate_tiled, MODE_INTERP, block_statistics, stats_blocks,
                            tile_lines, select_k)

cnp.import_array()

ctypedef fused sample_t:
    cnp.uint16_t
    cnp.int16_t
    cnp.int32_t
    float
    double


cdef struct Centroid:
    double mz
    double index
    float intensity
    float area
    float fwhm
    float snr
    float noise
    int apex
    unsigned int flags
    unsigned int reserved


CENTROID_DTYPE = np.dtype({
    "names": ["mz", "intensity", "area", "fwhm", "snr", "noise", "index", "apex", "flags"],
    "formats": ["<f8", "<f4", "<f4", "<f4", "<f4", "<f4", "<f8", "<i4", "<u4"],
    "offsets": [0, 16, 20, 24, 28, 32, 8, 36, 40],
    "itemsize": 48,
})
"""One centroided peak: mz (m/z), intensity (apex height above baseline, counts), area
(counts x m/z), fwhm (m/z), snr (intensity / noise), noise (baseline noise sigma at the peak,
counts), index (fractional sample index of the centre, approximate), apex (sample index where the
peak was detected: its maximum on the S/N trace), flags (FLAG_*)."""

FLAG_FIT = 1     # centre/height/FWHM from the Gaussian fit (else: intensity-weighted centroid)
FLAG_EDGE = 2    # the peak's extent reaches the first or last sample
FLAG_ASYM = 4    # centre/height/FWHM from the two-sided (tailed) fit: its apex (with FLAG_FIT)

assert CENTROID_DTYPE.itemsize == sizeof(Centroid)

cdef enum:
    K_FLAG_FIT = 1
    K_FLAG_EDGE = 2
    K_FLAG_ASYM = 4


cdef inline double mz_at(const double* axis, double t0, double dt, double c0, double c1, double c2,
                         Py_ssize_t i) noexcept nogil:
    cdef double t, r
    if axis != NULL:
        return axis[i]
    t = (t0 + <double>i * dt) / 1000.0
    r = c0 + c1 * t + c2 * t * t
    return r * r


cdef inline int _solve3(double a00, double a01, double a02, double a11, double a12, double a22,
                        double b0, double b1, double b2, double* x) noexcept nogil:
    """Solve the symmetric 3x3 system by Cramer's rule; 0 if singular."""
    cdef double c00 = a11 * a22 - a12 * a12
    cdef double c01 = a02 * a12 - a01 * a22
    cdef double c02 = a01 * a12 - a02 * a11
    cdef double det = a00 * c00 + a01 * c01 + a02 * c02
    if det == 0.0 or det != det:
        return 0
    x[0] = (b0 * c00 + b1 * c01 + b2 * c02) / det
    x[1] = (b0 * c01 + b1 * (a00 * a22 - a02 * a02) + b2 * (a01 * a02 - a00 * a12)) / det
    x[2] = (b0 * c02 + b1 * (a01 * a02 - a00 * a12) + b2 * (a00 * a11 - a01 * a01)) / det
    return 1


cdef inline int _logfit(const double* lu, const double* lv, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t kp,
                        double step, int refit, double* g) noexcept nogil:
    """Weighted least squares of ln v = A + B u + C u^2 (u = (m/z - m/z[kp]) / step) over samples
    lo..hi with v > 0. Weights v^2 (Guo 2011), or with ``refit`` the squared values of the
    Gaussian ``g`` = (height, centre, sigma) (u units) fitted before. Writes g; 0 on failure."""
    cdef Py_ssize_t j
    cdef int npts = 0
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, t0 = 0, t1 = 0, t2 = 0, u, u2, w, l, v, z
    cdef double x[3]
    for j in range(lo, hi + 1):
        v = lv[j]
        if not (v > 0):
            continue
        u = (lu[j] - lu[kp]) / step
        if refit:
            z = (u - g[1]) / g[2]
            w = g[0] * exp(-0.5 * z * z)
            w *= w
        else:
            w = v * v
        l = log(v)
        u2 = u * u
        s0 += w
        s1 += w * u
        s2 += w * u2
        s3 += w * u2 * u
        s4 += w * u2 * u2
        t0 += w * l
        t1 += w * l * u
        t2 += w * l * u2
        npts += 1
    if npts < 3 or not _solve3(s0, s1, s2, s2, s3, s4, t0, t1, t2, x):
        return 0
    if not (x[2] < 0.0):
        return 0
    g[1] = -x[1] / (2.0 * x[2])
    g[2] = sqrt(-1.0 / (2.0 * x[2]))
    g[0] = exp(x[0] - x[1] * x[1] / (4.0 * x[2]))
    return 1


cdef inline int _chol_solve4(const double* A, const double* b, double* x, double* l33) noexcept nogil:
    """Solve A x = b for a symmetric positive definite 4x4 ``A`` (row-major) by Cholesky; 0 if
    ``A`` is not positive definite. ``l33``: the last diagonal element of the Cholesky factor
    (1 / l33**2 is the last diagonal element of A^-1)."""
    cdef double L[16]
    cdef double y[4]
    cdef double s
    cdef int i, j, q
    for i in range(4):
        for j in range(i + 1):
            s = A[4 * i + j]
            for q in range(j):
                s -= L[4 * i + q] * L[4 * j + q]
            if i == j:
                if not (s > 0.0):
                    return 0
                L[4 * i + i] = sqrt(s)
            else:
                L[4 * i + j] = s / L[4 * j + j]
    for i in range(4):
        s = b[i]
        for q in range(i):
            s -= L[4 * i + q] * y[q]
        y[i] = s / L[4 * i + i]
    for i in range(3, -1, -1):
        s = y[i]
        for q in range(i + 1, 4):
            s -= L[4 * q + i] * x[q]
        x[i] = s / L[4 * i + i]
    l33[0] = L[15]
    return 1


cdef inline int _fit_gaussian(const double* lu, const double* lv, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t kp,
                              Py_ssize_t k, double step, double sb2, double gain, double* g,
                              double* asym2) noexcept nogil:
    """Gaussian (height, centre, sigma; centre and sigma in units of ``step`` m/z from lu[kp]) fitted
    to the baseline-subtracted samples lo..hi: a log-parabola over +-k of the apex (Guo weights),
    then two Gauss-Newton steps of weighted least squares over lo..hi with weights
    1 / (sb2 + gain * model) (additive + shot noise). Returns 0 when no credible Gaussian results
    (the caller falls back to a weighted centroid).

    ``asym2``: the squared z-score of a one-step estimate of the asymmetry ln(sigma_r / sigma_l)
    from the last pass (its Jacobian column rides along at five more products per sample): the
    cheap screen before the two-sided fit (0 when it cannot be computed)."""
    cdef Py_ssize_t j, a = kp - k, b = kp + k, it
    cdef double h, mu, s, u, d, z, e, f, w, res, j0, j1, j2, j3
    cdef double a00, a01, a02, a11, a12, a22, b0, b1, b2
    cdef double a03, a13, a23, a33, b3, chi
    cdef double x[3]
    cdef double A[16]
    cdef double r[4]
    cdef double x4[4]
    cdef double l33
    cdef double lim = <double>(hi - lo) * 0.5 + 1.0
    if a < lo:
        a = lo
    if b > hi:
        b = hi
    if not _logfit(lu, lv, a, b, kp, step, 0, g):
        return 0
    if not (fabs(g[1]) <= lim):
        return 0
    h = g[0]
    mu = g[1]
    s = g[2]
    if not (fabs(mu) <= lim and s > 0 and h > 0):
        return 0
    asym2[0] = 0.0
    for it in range(2):
        a00 = a01 = a02 = a11 = a12 = a22 = b0 = b1 = b2 = 0.0
        a03 = a13 = a23 = a33 = b3 = chi = 0.0
        for j in range(lo, hi + 1):
            u = (lu[j] - lu[kp]) / step
            d = u - mu
            z = d / s
            e = exp(-0.5 * z * z)
            f = h * e
            w = 1.0 / (sb2 + gain * (f if f > 0 else 0.0))
            res = lv[j] - f
            j0 = e
            j1 = f * d / (s * s)
            j2 = j1 * z
            a00 += w * j0 * j0
            a01 += w * j0 * j1
            a02 += w * j0 * j2
            a11 += w * j1 * j1
            a12 += w * j1 * j2
            a22 += w * j2 * j2
            b0 += w * j0 * res
            b1 += w * j1 * res
            b2 += w * j2 * res
            j3 = 0.5 * s * (j2 if d >= 0 else -j2)     # d model / d ln(sigma_r / sigma_l) at 0
            a03 += w * j0 * j3
            a13 += w * j1 * j3
            a23 += w * j2 * j3
            a33 += w * j3 * j3
            b3 += w * j3 * res
            chi += w * res * res
        if not _solve3(a00, a01, a02, a11, a12, a22, b0, b1, b2, x):
            break
        if not (h + x[0] > 0 and s + x[2] > 0 and fabs(mu + x[1]) <= lim):
            break
        h += x[0]
        mu += x[1]
        s += x[2]
        if fabs(x[1]) < 1e-5 * s:
            break
    g[0] = h
    g[1] = mu
    g[2] = s
    if hi - lo + 1 > 4:
        A[0] = a00; A[1] = a01; A[2] = a02; A[3] = a03
        A[5] = a11; A[6] = a12; A[7] = a13
        A[10] = a22; A[11] = a23
        A[15] = a33
        A[4] = a01; A[8] = a02; A[9] = a12; A[12] = a03; A[13] = a13; A[14] = a23
        r[0] = b0; r[1] = b1; r[2] = b2; r[3] = b3
        if _chol_solve4(A, r, x4, &l33):
            # var(x4[3]) = (A^-1)[3, 3] = 1 / l33**2, times the reduced chi-square when above 1
            z = chi / <double>(hi - lo + 1 - 3)
            asym2[0] = x4[3] * x4[3] * l33 * l33 / (z if z > 1.0 else 1.0)
    return 1


cdef inline int _fit_two_sided(const double* lu, const double* lv, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t kp,
                               double step, double sb2, double gain, double zmin, const double* g,
                               double* b) noexcept nogil:
    """Two-sided Gaussian (height, apex, sigma left, sigma right; ``step`` units from lu[kp]) fitted
    to samples lo..hi by Gauss-Newton from the Gaussian ``g``, with the weights of _fit_gaussian.
    Returns 1 (and writes ``b``) only when the asymmetry ln(sigma_r / sigma_l) differs from 0 by
    more than ``zmin`` standard errors (covariance of the fit, scaled by the reduced chi-square when
    that exceeds 1): the apex of a tailed peak, where a Gaussian's centre sits on the tail side.
    A symmetric peak keeps the Gaussian (the extra parameter would cost it 2.6x in centre error)."""
    cdef Py_ssize_t j, n = hi - lo + 1
    cdef int it, q, c
    cdef double h = g[0], mu = g[1], sl = g[2], sr = g[2], u, d, sd, z, e, f, w, res, chi = 0.0, var, lim
    cdef double jv[4]
    cdef double A[16]
    cdef double r[4]
    cdef double x[4]
    if n < 7 or not (zmin > 0):
        return 0
    lim = <double>(hi - lo) * 0.5 + 1.0
    for it in range(5):     # 4 Gauss-Newton steps; the 5th pass gives chi-square and covariance
        for q in range(16):
            A[q] = 0.0
        r[0] = r[1] = r[2] = r[3] = 0.0
        chi = 0.0
        for j in range(lo, hi + 1):
            u = (lu[j] - lu[kp]) / step
            d = u - mu
            sd = sl if d < 0 else sr
            z = d / sd
            e = exp(-0.5 * z * z)
            f = h * e
            w = 1.0 / (sb2 + gain * (f if f > 0 else 0.0))
            res = lv[j] - f
            jv[0] = e
            jv[1] = f * d / (sd * sd)
            jv[2] = jv[1] * z if d < 0 else 0.0
            jv[3] = 0.0 if d < 0 else jv[1] * z
            for q in range(4):
                r[q] += w * jv[q] * res
                for c in range(q + 1):
                    A[4 * q + c] += w * jv[q] * jv[c]
            chi += w * res * res
        for q in range(4):
            for c in range(q + 1, 4):
                A[4 * q + c] = A[4 * c + q]
        if it == 4:
            break
        if not _chol_solve4(A, r, x, &var):
            return 0
        if not (h + x[0] > 0 and sl + x[2] > 0 and sr + x[3] > 0 and fabs(mu + x[1]) <= lim):
            return 0
        h += x[0]
        mu += x[1]
        sl += x[2]
        sr += x[3]
    if not (0.25 < sr / sl < 4.0):
        return 0
    r[0] = r[1] = 0.0
    r[2] = -1.0 / sl
    r[3] = 1.0 / sr
    if not _chol_solve4(A, r, x, &var):
        return 0
    var = r[2] * x[2] + r[3] * x[3]
    z = chi / <double>(n - 4)
    if z > 1.0:
        var *= z
    d = log(sr / sl)
    if not (var > 0 and d * d > zmin * zmin * var):
        return 0
    b[0] = h
    b[1] = mu
    b[2] = sl
    b[3] = sr
    return 1


cdef inline Py_ssize_t _valley(const float* y, Py_ssize_t p, int step, Py_ssize_t lim) noexcept nogil:
    """The valley next to the apex ``p`` of the S/N trace ``y``, walking by ``step`` (-1 or +1) no
    further than ``lim``: the lowest sample before the trace rises again by more than a tolerance
    (2 S/N units or 5 % of the apex, so that noise on a flank does not end the walk)."""
    cdef Py_ssize_t j = p, best = p
    cdef double lo = y[p], tol = 0.05 * y[p]
    if tol < 2.0:
        tol = 2.0
    while j != lim:
        j += step
        if y[j] < lo:
            lo = y[j]
            best = j
        elif y[j] > lo + tol:
            break
    return best


cdef inline double _half_height_width(const float* y, Py_ssize_t p, Py_ssize_t vl, Py_ssize_t vr,
                                      double fallback) noexcept nogil:
    """FWHM (samples) of the peak at ``p`` on the trace: the half-height crossings inside the valleys
    ``vl``..``vr`` (linear interpolation); twice the half width of the side that crosses when the
    other meets its valley first; ``fallback`` when neither crosses."""
    cdef double half = 0.5 * y[p], xl = -1.0, xr = -1.0
    cdef Py_ssize_t j = p
    while j > vl and y[j - 1] > half:
        j -= 1
    if j > vl:      # y[j - 1] <= half < y[j]
        xl = <double>(p - j) + (y[j] - half) / (y[j] - y[j - 1])
    j = p
    while j < vr and y[j + 1] > half:
        j += 1
    if j < vr:      # y[j + 1] <= half < y[j]
        xr = <double>(j - p) + (y[j] - half) / (y[j] - y[j + 1])
    if xl > 0 and xr > 0:
        return xl + xr
    if xl > 0:
        return 2.0 * xl
    if xr > 0:
        return 2.0 * xr
    return fallback


cdef inline void _sort_by_mz(Centroid* a, Py_ssize_t n) noexcept nogil:
    """Stable insertion sort of ``a[0:n]`` by m/z."""
    cdef Py_ssize_t i, j
    cdef Centroid t
    for i in range(1, n):
        if a[i].mz < a[i - 1].mz:
            t = a[i]
            j = i
            while j > 0 and a[j - 1].mz > t.mz:
                a[j] = a[j - 1]
                j -= 1
            a[j] = t


cdef class ScanKernel:
    """Configured once (``configure``), then ``run`` per scan. Not thread-safe: one per worker."""

    # configuration
    cdef object _half, _left, _right
    cdef float* half
    cdef Py_ssize_t h
    cdef int mode
    cdef const double* eleft
    cdef const double* eright
    cdef Py_ssize_t block, stride
    cdef double noise_floor
    cdef Conds conds
    cdef double min_snr, area_floor, shot_gain, fit_window, asymmetry_z
    cdef Py_ssize_t max_half
    # buffers (numpy arrays keep them alive; views handed out stay valid)
    cdef Py_ssize_t cap
    cdef object _xf, _y, _bs, _f32, _f64
    cdef float* xf
    cdef float* y
    cdef float* qmin
    cdef float* qmax
    cdef float* bmin
    cdef float* bmax
    cdef float* smin
    cdef float* smax
    cdef float* tb0
    cdef float* tbs
    cdef float* tw0
    cdef float* tws
    cdef float* sbuf
    cdef float* sdev
    cdef double* thr
    cdef double* rb
    cdef double* rs
    cdef double* bb
    cdef double* bs
    cdef double* bc
    cdef double* lv
    cdef double* lu
    # results of the last run
    cdef public double raw_sum, tic, noise_median, baseline_median
    cdef public Py_ssize_t n, n_candidates, n_detected, n_found, n_written
    cdef public bint had_nan

    def __cinit__(self):
        self.cap = 0
        self.h = 0
        self.half = NULL
        self.eleft = NULL
        self.eright = NULL

    def configure(self, half, int mode, left, right, Py_ssize_t block, Py_ssize_t stride, double noise_floor,
                  double min_snr, double detect_height, double min_prominence, Py_ssize_t wlen, double min_width,
                  double area_floor, Py_ssize_t max_half, double shot_gain=0.0, double fit_window=0.75,
                  double asymmetry_z=3.0):
        """Set the parameters (validated by dsp.processor.ScanParams).

        half: smoothing weights from the centre outwards, or None for no smoothing; mode: boundary
        code (cext.smooth.MODES); left/right: savgol 'interp' edge matrices. block/stride: baseline
        statistics. min_snr (reported peaks), detect_height (on the trace), min_prominence: S/N units;
        wlen, min_width, max_half: samples.
        shot_gain: counts per ion (the fit's noise variance is noise**2 + shot_gain * signal).
        fit_window: half-width of the centroid fit in FWHMs (measured on the trace).
        asymmetry_z: standard errors of asymmetry a peak needs for its two-sided fit (its apex) to
        be reported instead of the Gaussian's centre; 0 = Gaussian only.
        """
        cdef double[:, ::1] lm
        cdef double[:, ::1] rm
        if half is None:
            self._half = np.ones(1, np.float32)
        else:
            self._half = np.ascontiguousarray(half, dtype=np.float32)
        self.half = <float*>cnp.PyArray_DATA(self._half)
        self.h = self._half.shape[0] - 1
        self.mode = mode
        self._left = self._right = None
        self.eleft = self.eright = NULL
        if mode == MODE_INTERP and self.h > 0:
            self._left = np.ascontiguousarray(left, dtype=np.float64)
            self._right = np.ascontiguousarray(right, dtype=np.float64)
            if self._left.shape != (self.h, 2 * self.h + 1) or self._right.shape != (self.h, 2 * self.h + 1):
                raise ValueError("interp edge matrices must be h x (2h+1)")
            lm = self._left
            rm = self._right
            self.eleft = &lm[0, 0]
            self.eright = &rm[0, 0]
        self.block = block
        self.stride = stride
        self.noise_floor = noise_floor
        self.min_snr = min_snr
        self.conds.has_psmin = self.conds.has_psmax = 0
        self.conds.has_hmin = 1
        self.conds.hmin = detect_height
        self.conds.has_hmax = 0
        self.conds.has_tmin = self.conds.has_tmax = 0
        self.conds.need_prom = 1
        self.conds.wlen = wlen
        self.conds.has_pmin = 1
        self.conds.pmin = min_prominence
        self.conds.has_pmax = 0
        self.conds.need_width = 1
        self.conds.rel_height = 0.5
        self.conds.has_wmin = 1
        self.conds.wmin = min_width
        self.conds.has_wmax = 0
        self.area_floor = area_floor
        self.max_half = max_half
        self.shot_gain = shot_gain
        self.fit_window = fit_window
        self.asymmetry_z = asymmetry_z
        self.cap = 0   # local buffers depend on max_half: reallocate on the next run

    cdef _reserve(self, Py_ssize_t n):
        cdef Py_ssize_t nb, ns, nt, nbs, m, f32, f64, o
        if n <= self.cap:
            return
        n = max(n, 1024)
        nb = n_blocks(n)
        ns = n_supers(n)
        nt = nb
        nbs = stats_blocks(n, self.block)
        m = (2 * self.block + self.stride) // self.stride + 1
        if m < nbs:
            m = nbs     # sbuf also holds one value per statistics block (the summary medians)
        self._xf = np.empty(n, np.float32)
        self._y = np.empty(n, np.float32)
        self._bs = np.empty(n, np.float32)
        f32 = 2 * n_subs(n) + 2 * nb + 2 * ns + 4 * nt + 2 * m
        f64 = nb + 5 * nbs + 2 * (4 * self.max_half + 8)
        self._f32 = np.empty(f32, np.float32)
        self._f64 = np.empty(f64, np.float64)
        self.xf = <float*>cnp.PyArray_DATA(self._xf)
        self.y = <float*>cnp.PyArray_DATA(self._y)
        cdef float* p = <float*>cnp.PyArray_DATA(self._f32)
        self.qmin = p
        self.qmax = p + n_subs(n)
        p += 2 * n_subs(n)
        self.bmin = p
        self.bmax = p + nb
        self.smin = p + 2 * nb
        self.smax = p + 2 * nb + ns
        o = 2 * nb + 2 * ns
        self.tb0 = p + o
        self.tbs = p + o + nt
        self.tw0 = p + o + 2 * nt
        self.tws = p + o + 3 * nt
        o += 4 * nt
        self.sbuf = p + o
        self.sdev = p + o + m
        cdef double* q = <double*>cnp.PyArray_DATA(self._f64)
        self.thr = q
        self.rb = q + nb
        self.rs = q + nb + nbs
        self.bb = q + nb + 2 * nbs
        self.bs = q + nb + 3 * nbs
        self.bc = q + nb + 4 * nbs
        self.lv = q + nb + 5 * nbs
        self.lu = self.lv + 4 * self.max_half + 8
        self.cap = n

    @property
    def trace(self):
        """The S/N trace of the last scan (float32 view of n samples; overwritten by the next run)."""
        return self._y[:self.n]

    @property
    def samples_f32(self):
        """The float32 samples of the last scan (view; overwritten by the next run)."""
        return self._xf[:self.n]

    def subtract_baseline(self):
        """The last scan's samples minus its baseline (float32 view of n samples, counts; overwritten
        by the next call or run). Computed on request: one pass, GIL released."""
        cdef Py_ssize_t n = self.n, t, lo, hi, j
        cdef float* out = <float*>cnp.PyArray_DATA(self._bs)
        cdef const float* xf = self.xf
        cdef float b0, bsl
        with nogil:
            for t in range((n + 63) >> 6):
                lo = t << BLK_SHIFT
                hi = lo + 64 if lo + 64 < n else n
                b0 = self.tb0[t]
                bsl = self.tbs[t]
                for j in range(hi - lo):
                    out[lo + j] = xf[lo + j] - (b0 + bsl * <float><int>j)
        return self._bs[:n]

    def baseline_blocks(self):
        """(centres, baseline, noise) per statistics block of the last scan (copies, float64)."""
        cdef Py_ssize_t nbs = stats_blocks(self.n, self.block)
        c = np.empty(nbs)
        b = np.empty(nbs)
        s = np.empty(nbs)
        memcpy(cnp.PyArray_DATA(c), self.bc, nbs * sizeof(double))
        memcpy(cnp.PyArray_DATA(b), self.bb, nbs * sizeof(double))
        memcpy(cnp.PyArray_DATA(s), self.bs, nbs * sizeof(double))
        return c, b, s

    def run(self, const sample_t[::1] samples, const double[::1] axis, double t0_ns, double dt_ns,
            double c0, double c1, double c2, const Py_ssize_t[::1] xic_lo, const Py_ssize_t[::1] xic_hi,
            double[::1] xic_out, out):
        """Process one scan; returns the number of peaks written into ``out``.

        ``axis``: explicit m/z per sample (float64, increasing) or None for the TOF law
        (t0_ns, dt_ns, c0, c1, c2). ``xic_lo``/``xic_hi``: sample ranges [lo, hi) summed into
        ``xic_out`` (baseline-subtracted counts). ``out``: a CENTROID_DTYPE array; peaks beyond its
        length are counted (``n_found``) but not written.
        """
        cdef Py_ssize_t n = samples.shape[0], nx = xic_lo.shape[0], cap_out, i
        if n < 3:
            raise ValueError(f"a scan needs at least 3 samples, got {n}")
        if axis is not None and axis.shape[0] != n:
            raise ValueError(f"axis has {axis.shape[0]} values, samples {n}")
        if xic_hi.shape[0] != nx or xic_out.shape[0] != nx:
            raise ValueError("xic_lo, xic_hi and xic_out must have the same length")
        for i in range(nx):
            if not (0 <= xic_lo[i] <= xic_hi[i] <= n):
                raise ValueError(f"xic range {i} [{xic_lo[i]}, {xic_hi[i]}) is outside 0..{n}")
        if not isinstance(out, np.ndarray) or out.dtype != CENTROID_DTYPE or not out.flags.c_contiguous \
                or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous CENTROID_DTYPE array")
        self._reserve(n)
        self.n = n
        cap_out = out.shape[0]
        cdef Centroid* outp = <Centroid*>cnp.PyArray_DATA(out)
        cdef const double* ap = &axis[0] if axis is not None else NULL
        cdef const sample_t* sp = &samples[0]
        cdef const Py_ssize_t* xlo = &xic_lo[0] if nx else NULL
        cdef const Py_ssize_t* xhi = &xic_hi[0] if nx else NULL
        cdef double* xo = &xic_out[0] if nx else NULL
        with nogil:
            self._convert(sp, n)
            self._process(n, ap, t0_ns, dt_ns, c0, c1, c2, outp, cap_out)
            self._xic(n, nx, xlo, xhi, xo)
        return self.n_written

    cdef void _convert(self, const sample_t* sp, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i, n4 = n & ~(<Py_ssize_t>3)
        cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
        cdef long long isum = 0
        cdef float* xf = self.xf
        for i in range(n):
            xf[i] = <float>sp[i]
        if sample_t is cnp.uint16_t:
            self.raw_sum = <double>ion_sum_u16(<const unsigned short*>sp, n)
            return
        if sample_t is cnp.int16_t:
            self.raw_sum = <double>ion_sum_i16(<const short*>sp, n)
            return
        if sample_t is cnp.int32_t:
            for i in range(n):
                isum += sp[i]
            self.raw_sum = <double>isum
            return
        for i in range(0, n4, 4):
            s0 += xf[i]
            s1 += xf[i + 1]
            s2 += xf[i + 2]
            s3 += xf[i + 3]
        for i in range(n4, n):
            s0 += xf[i]
        self.raw_sum = (s0 + s1) + (s2 + s3)

    cdef void _process(self, Py_ssize_t n, const double* ap, double t0, double dt, double c0, double c1,
                       double c2, Centroid* outp, Py_ssize_t cap_out) noexcept nogil:
        cdef float* xf = self.xf
        cdef float* y = self.y
        cdef Py_ssize_t nb = n_blocks(n), nbs = stats_blocks(n, self.block), h = self.h
        cdef Py_ssize_t i, lo, hi, a, b, t, j, s, e, p, found = 0, written = 0, cands = 0, detected = 0
        cdef ScanPos pos
        cdef float b0, bsl, w0, wsl
        cdef double basesum = 0.0
        cdef int nan = 0, accel
        cdef PeakRec r
        cdef Centroid c

        # 2. baseline and noise
        block_statistics(xf, n, self.block, self.stride, self.noise_floor, self.sbuf, self.sdev,
                         self.rb, self.rs, self.bb, self.bs, self.bc)
        tile_lines(self.bc, self.bb, nbs, n, 0, self.tb0, self.tbs)
        tile_lines(self.bc, self.bs, nbs, n, 1, self.tw0, self.tws)

        # 3. smoothing into y
        if h == 0:
            for i in range(n):
                y[i] = xf[i] * self.half[0]
        else:
            correlate_tiled(xf, n, y, self.half, h, self.mode, 0.0, self.eleft, self.eright)

        # 4. S/N trace and its block summaries
        for t in range(nb):
            lo = t << BLK_SHIFT
            hi = lo + 64
            if hi > n:
                hi = n
            b0 = self.tb0[t]
            bsl = self.tbs[t]
            w0 = self.tw0[t]
            wsl = self.tws[t]
            ion_affine_tile(y + lo, hi - lo, b0, bsl, w0, wsl)
            basesum += <double>(hi - lo) * b0 + <double>bsl * <double>((hi - lo - 1) * (hi - lo) // 2)
            sub_summaries(y + lo, hi - lo, self.qmin + 4 * t, self.qmax + 4 * t, &nan)
        block_from_subs(self.qmin, self.qmax, n_subs(n), self.bmin, self.bmax)
        super_summaries(self.bmin, self.bmax, nb, self.smin, self.smax)
        self.tic = self.raw_sum - basesum
        self.had_nan = nan
        accel = not nan

        # 5./6. peaks and centroids
        block_bounds(self.bmin, self.bmax, nb, &self.conds, accel, self.thr)
        scan_start(&pos)
        while True:
            p = scan_maxima(y, n, self.bmax, accel, self.thr, &pos, &s, &e)
            if p < 0:
                break
            cands += 1
            r.index = p
            r.left_edge = s
            r.right_edge = e
            if not pre_conditions(y, &self.conds, &r):
                continue
            if not post_conditions(y, n, self.qmin, self.qmax, self.bmin, self.bmax, self.smin, self.smax, accel,
                                   &self.conds, &r):
                continue
            detected += 1
            self._centroid(n, &r, ap, t0, dt, c0, c1, c2, &c)
            if not (c.snr >= self.min_snr):
                continue
            if written < cap_out:
                outp[written] = c
                written += 1
            found += 1
        # fitted centres of close peaks can cross (a centre may move past its neighbour's): the
        # output promises ascending m/z, and is nearly sorted, so an insertion sort is O(n) here
        _sort_by_mz(outp, written)
        self.n_candidates = cands
        self.n_detected = detected
        self.n_found = found
        self.n_written = written

        # summary figures: medians of the block values
        for i in range(nbs):
            self.sbuf[i] = <float>self.bb[i]
        self.baseline_median = select_k(self.sbuf, nbs, nbs // 2)
        for i in range(nbs):
            self.sbuf[i] = <float>self.bs[i]
        self.noise_median = select_k(self.sbuf, nbs, nbs // 2)

    cdef inline double _base_at(self, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t t = i >> BLK_SHIFT
        return <double>(self.tb0[t] + self.tbs[t] * <float>(i & 63))

    cdef inline double _noise_at(self, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t t = i >> BLK_SHIFT
        return 1.0 / <double>(self.tw0[t] + self.tws[t] * <float>(i & 63))

    cdef void _centroid(self, Py_ssize_t n, const PeakRec* r, const double* ap, double t0, double dt,
                        double c0, double c1, double c2, Centroid* out) noexcept nogil:
        cdef const float* y = self.y
        cdef Py_ssize_t p = r.index, k, wl, wr, la, ra, L, R, j, m, kp, vl, vr, mh = self.max_half
        cdef double* lv = self.lv
        cdef double* lu = self.lu
        cdef double af = self.area_floor, step, hw, area, sb2, sv, su, vmax, half, xl, xr, v
        cdef double fit[3]
        cdef double two[4]
        cdef double asym2
        cdef unsigned int flags = 0
        cdef int ok
        # fit window: +-k samples, k ~ 0.75 FWHM, one more sample each side for the nonlinear fit,
        # inside the prominence bases and the valleys next to the apex. The FWHM is measured at half
        # the apex height, not from find_peaks' width at half prominence: for the higher peak of a
        # doublet whose valley lies above half its height, that width spans both peaks, and a fit
        # over both placed the centre between them (docs/dsp.md, "Recall on independent data").
        vl = _valley(y, p, -1, r.left_base if p - r.left_base < 4 * mh else p - 4 * mh)
        vr = _valley(y, p, 1, r.right_base if r.right_base - p < 4 * mh else p + 4 * mh)
        hw = _half_height_width(y, p, vl, vr, r.right_ip - r.left_ip)
        k = <Py_ssize_t>(self.fit_window * hw + 0.5)
        if k < 2:
            k = 2
        if k > mh:
            k = mh
        wl = p - k - 1
        if wl < vl:
            wl = vl
        wr = p + k + 1
        if wr > vr:
            wr = vr
        if wl > p - 1 and p > 0:
            wl = p - 1
        if wr < p + 1 and p < n - 1:
            wr = p + 1
        # area region: down to area_floor (S/N) or a valley, at most 2 * max_half from the apex
        la = p
        while la > 0 and p - la < 2 * mh and y[la - 1] > af and y[la - 1] <= y[la]:
            la -= 1
        ra = p
        while ra < n - 1 and ra - p < 2 * mh and y[ra + 1] > af and y[ra + 1] <= y[ra]:
            ra += 1
        if la == 0 or ra == n - 1:
            flags |= K_FLAG_EDGE
        L = la if la < wl else wl
        R = ra if ra > wr else wr
        m = R - L + 1
        for j in range(m):
            lv[j] = <double>self.xf[L + j] - self._base_at(L + j)
            lu[j] = mz_at(ap, t0, dt, c0, c1, c2, L + j)
        kp = p - L
        step = (lu[wr - L] - lu[wl - L]) / <double>(wr - wl)
        sb2 = self._noise_at(p)
        sb2 *= sb2
        ok = _fit_gaussian(lu, lv, wl - L, wr - L, kp, k, step, sb2, self.shot_gain, fit, &asym2)
        # the two-sided fit only for peaks whose one-step asymmetry reaches half the bound: most
        # peaks are symmetric or too weak to show a tail, and skip its five passes
        if ok and self.asymmetry_z > 0 and asym2 >= 0.25 * self.asymmetry_z * self.asymmetry_z \
                and _fit_two_sided(lu, lv, wl - L, wr - L, kp, step, sb2, self.shot_gain, self.asymmetry_z, fit, two):
            # a tailed peak: report its apex (a Gaussian's centre lies on the tail side, 7 % of the
            # FWHM for a right half 1.35x wider; docs/dsp.md, "Tailed peaks")
            flags |= K_FLAG_FIT | K_FLAG_ASYM
            out.mz = lu[kp] + two[1] * step
            out.index = <double>p + two[1]
            out.fwhm = <float>(1.1774100225154747 * (two[2] + two[3]) * fabs(step))
            out.intensity = <float>two[0]
        elif ok:
            flags |= K_FLAG_FIT
            out.mz = lu[kp] + fit[1] * step
            out.index = <double>p + fit[1]
            out.fwhm = <float>(2.3548200450309493 * fit[2] * fabs(step))
            out.intensity = <float>fit[0]
        else:
            # intensity-weighted centroid over the window; FWHM from the half-height crossings
            sv = 0.0
            su = 0.0
            vmax = 0.0
            for j in range(wl - L, wr - L + 1):
                v = lv[j]
                if v > 0:
                    sv += v
                    su += v * (lu[j] - lu[kp])
                if v > vmax:
                    vmax = v
            v = su / sv if sv > 0 else 0.0
            out.mz = lu[kp] + v
            out.index = <double>p + (v / step if step != 0 else 0.0)
            out.intensity = <float>vmax
            half = 0.5 * vmax
            j = kp
            while j > 0 and lv[j - 1] > half:
                j -= 1
            xl = lu[j]
            if j > 0 and lv[j] != lv[j - 1]:
                xl = lu[j - 1] + (half - lv[j - 1]) / (lv[j] - lv[j - 1]) * (lu[j] - lu[j - 1])
            j = kp
            while j < m - 1 and lv[j + 1] > half:
                j += 1
            xr = lu[j]
            if j < m - 1 and lv[j] != lv[j + 1]:
                xr = lu[j + 1] + (half - lv[j + 1]) / (lv[j] - lv[j + 1]) * (lu[j] - lu[j + 1])
            out.fwhm = <float>(xr - xl)
        area = 0.0
        for j in range(la - L, ra - L):
            area += 0.5 * (lv[j] + lv[j + 1]) * (lu[j + 1] - lu[j])
        out.area = <float>area
        out.noise = <float>self._noise_at(p)
        out.snr = <float>(<double>out.intensity / <double>out.noise)
        out.apex = <int>p
        out.flags = flags
        out.reserved = 0

    cdef void _xic(self, Py_ssize_t n, Py_ssize_t nx, const Py_ssize_t* lo, const Py_ssize_t* hi,
                   double* out) noexcept nogil:
        cdef Py_ssize_t k, i
        cdef double acc
        for k in range(nx):
            acc = 0.0
            for i in range(lo[k], hi[k]):
                acc += <double>self.xf[i] - self._base_at(i)
            out[k] = acc
