# cython: language_level=3
"""Inline nogil cores shared by the DSP kernels (cext/peaks.pyx, smooth.pyx, baseline.pyx, scan.pyx).

Everything here is ``cdef inline ... noexcept nogil`` and trusts its arguments: the callers validate.

Peak finding follows ``scipy.signal.find_peaks`` exactly. The local-maximum scan, the distance
selection, the prominence walks and the width walks are adapted from SciPy's
``scipy/signal/_peak_finding_utils.pyx`` (BSD-3-Clause; Copyright (c) 2001-2002 Enthought, Inc.,
2003-2024 SciPy Developers; see https://github.com/scipy/scipy/blob/main/LICENSE.txt). What is ours:

* summaries (min and max of every 16-sample sub-block, 64-sample block and 4096-sample superblock)
  let a walk jump over a whole (sub)block when no sample in it can stop it, so a walk's cost is
  about O(16 + distance / 64) instead of O(distance); the result is the same sample by sample;
* a plateau start whose value is below a per-block bound cannot be a kept peak (height bound, and
  the prominence bound ``x[p] - max(min(x[:p+1]), min(x[p:]))`` >= prominence), so blocks whose
  maximum is below the bound are skipped without looking at their samples;
* the arithmetic that SciPy does in float64 (prominence, contour height, interpolated positions) is
  done in double on float32 input too, so float32 input gives the peaks and properties SciPy gives
  for ``x.astype(float64)``, bit for bit.

Inputs containing NaN disable the jumps and the bounds (``accel = 0``); the walks then are SciPy's,
sample by sample, so NaN handling is SciPy's too.
"""

from libc.math cimport ceil, sqrt, log, exp, fabs, INFINITY, NAN
from libc.string cimport memcpy

ctypedef fused real_t:
    float
    double

cdef enum:
    SUB_SHIFT = 4
    SUB = 16
    BLK_SHIFT = 6
    BLK = 64
    SUP_SHIFT = 12
    SUP = 4096

# One peak as the kernels produce it; field order and types match PEAK_RECORD_DTYPE in peaks.pyx.
cdef struct PeakRec:
    Py_ssize_t index
    Py_ssize_t left_edge
    Py_ssize_t right_edge
    Py_ssize_t left_base
    Py_ssize_t right_base
    double height
    double left_threshold
    double right_threshold
    double prominence
    double width
    double width_height
    double left_ip
    double right_ip

# The conditions of find_peaks, unpacked (has_* = 0: open border).
cdef struct Conds:
    int has_psmin, has_psmax
    double psmin, psmax
    int has_hmin, has_hmax
    double hmin, hmax
    int has_tmin, has_tmax
    double tmin, tmax
    int need_prom
    Py_ssize_t wlen
    int has_pmin, has_pmax
    double pmin, pmax
    int need_width
    double rel_height
    int has_wmin, has_wmax
    double wmin, wmax


# ---------------------------------------------------------------------------------------------
# Vector min/max (GCC/Clang vector extensions: SSE2 on x86-64, NEON on aarch64; no -ffast-math)
# ---------------------------------------------------------------------------------------------
cdef extern from "_simd.h":  # the C source: cext/_simd.h (setup.py lists it in depends=)
    unsigned ion_maxmask_f(const float *x, Py_ssize_t c, double t) noexcept nogil
    unsigned ion_maxmask_d(const double *x, Py_ssize_t c, double t) noexcept nogil
    int ion_ctz(unsigned m) noexcept nogil
    void ion_sub16_f(const float *p, Py_ssize_t nq, float *qmin, float *qmax, int *nan) noexcept nogil
    void ion_sub16_d(const double *p, Py_ssize_t nq, double *qmin, double *qmax, int *nan) noexcept nogil
    void ion_minmax_f(const float *p, Py_ssize_t n, float *mn, float *mx, int *nan) noexcept nogil
    void ion_affine_tile(float *y, Py_ssize_t n, float b0, float bs, float w0, float ws) noexcept nogil
    int ion_conv_fixed(const float *x, float *y, Py_ssize_t lo, Py_ssize_t hi, const float *c, Py_ssize_t h) noexcept nogil
    long long ion_sum_u16(const unsigned short *p, Py_ssize_t n) noexcept nogil
    long long ion_sum_i16(const short *p, Py_ssize_t n) noexcept nogil
    Py_ssize_t ion_clipped_sums(const float *v, Py_ssize_t m, float centre, float lim, double *s1, double *s2) noexcept nogil
    void ion_minmax_d(const double *p, Py_ssize_t n, double *mn, double *mx, int *nan) noexcept nogil


cdef inline void minmax(const real_t* p, Py_ssize_t n, real_t* mn, real_t* mx, int* nan) noexcept nogil:
    if real_t is float:
        ion_minmax_f(p, n, mn, mx, nan)
    else:
        ion_minmax_d(p, n, mn, mx, nan)


cdef inline Py_ssize_t n_blocks(Py_ssize_t n) noexcept nogil:
    return (n + BLK - 1) >> BLK_SHIFT


cdef inline Py_ssize_t n_supers(Py_ssize_t n) noexcept nogil:
    return (n + SUP - 1) >> SUP_SHIFT


cdef inline Py_ssize_t n_subs(Py_ssize_t n) noexcept nogil:
    return (n + SUB - 1) >> SUB_SHIFT


cdef inline void sub_summaries(const real_t* x, Py_ssize_t n, real_t* qmin, real_t* qmax, int* nan) noexcept nogil:
    """Min and max of every 16-sample sub-block of x[0:n] (the last one partial)."""
    cdef Py_ssize_t full = n >> SUB_SHIFT
    if real_t is float:
        ion_sub16_f(x, full, qmin, qmax, nan)
    else:
        ion_sub16_d(x, full, qmin, qmax, nan)
    if n & (SUB - 1):
        minmax(x + (full << SUB_SHIFT), n & (SUB - 1), &qmin[full], &qmax[full], nan)


cdef inline void block_from_subs(const real_t* qmin, const real_t* qmax, Py_ssize_t nq, real_t* bmin,
                                 real_t* bmax) noexcept nogil:
    """Block (64) minima and maxima from the sub-block (16) ones."""
    cdef Py_ssize_t b, q, hi
    cdef real_t a, c
    for b in range((nq + 3) >> 2):
        q = b << 2
        hi = q + 4 if q + 4 < nq else nq
        a = qmin[q]
        c = qmax[q]
        q += 1
        while q < hi:
            if qmin[q] < a:
                a = qmin[q]
            if qmax[q] > c:
                c = qmax[q]
            q += 1
        bmin[b] = a
        bmax[b] = c


cdef inline int summaries(const real_t* x, Py_ssize_t n, real_t* qmin, real_t* qmax, real_t* bmin, real_t* bmax,
                          real_t* smin, real_t* smax) noexcept nogil:
    """Min and max of every 16-sample sub-block, 64-sample block and 4096-sample superblock (the
    last ones partial). Returns 1 if x has a NaN (the summaries are then not to be used)."""
    cdef int nan = 0
    sub_summaries(x, n, qmin, qmax, &nan)
    block_from_subs(qmin, qmax, n_subs(n), bmin, bmax)
    super_summaries(bmin, bmax, n_blocks(n), smin, smax)
    return nan


cdef inline void super_summaries(const real_t* bmin, const real_t* bmax, Py_ssize_t nb, real_t* smin,
                                 real_t* smax) noexcept nogil:
    """Superblock (64 blocks) minima and maxima from the block ones."""
    cdef Py_ssize_t ns = (nb + 63) >> 6, s, lo, hi, b
    cdef real_t a, c
    for s in range(ns):
        lo = s << (SUP_SHIFT - BLK_SHIFT)
        hi = lo + (SUP >> BLK_SHIFT)
        if hi > nb:
            hi = nb
        a = bmin[lo]
        c = bmax[lo]
        for b in range(lo + 1, hi):
            if bmin[b] < a:
                a = bmin[b]
            if bmax[b] > c:
                c = bmax[b]
        smin[s] = a
        smax[s] = c


# ---------------------------------------------------------------------------------------------
# Walks (SciPy's _peak_prominences and _peak_widths loops, with block jumps)
# ---------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _last_eq(const real_t* x, Py_ssize_t lo, Py_ssize_t hi, real_t v) noexcept nogil:
    while hi > lo and x[hi] != v:
        hi -= 1
    return hi


cdef inline Py_ssize_t _first_eq(const real_t* x, Py_ssize_t lo, Py_ssize_t hi, real_t v) noexcept nogil:
    while lo < hi and x[lo] != v:
        lo += 1
    return lo


cdef inline Py_ssize_t walk_left_base(const real_t* x, const real_t* qmin, const real_t* qmax,
                                      const real_t* bmin, const real_t* bmax,
                                      const real_t* smin, const real_t* smax, int accel,
                                      Py_ssize_t peak, Py_ssize_t i_min, real_t* out_min) noexcept nogil:
    """SciPy's left-base search: from ``peak`` down to ``i_min`` while ``x[i] <= x[peak]``.

    Returns the base (the rightmost position of the minimum) and stores the minimum. Whole
    sub-blocks (16), blocks (64) and superblocks (4096) whose maximum is <= x[peak] are taken from
    their summaries; a minimum taken from a summary is located once, at the end (strict ``<``: an
    equal minimum further on never replaces it, so the first summary holding it holds the base).
    """
    cdef real_t v = x[peak], lmin = v, m
    cdef Py_ssize_t i = peak, base = peak, b, s, j, where = -1
    cdef int level = 0            # where the minimum came from: 0 sample, 1 sub-block, 2 block, 3 superblock
    while i >= i_min:
        if accel and (i & (SUB - 1)) == SUB - 1 and i - (SUB - 1) >= i_min:
            if (i & (BLK - 1)) == BLK - 1 and i - (BLK - 1) >= i_min:
                b = i >> BLK_SHIFT
                if bmax[b] <= v:
                    if (b & 63) == 63 and i - (SUP - 1) >= i_min:
                        s = b >> 6
                        if smax[s] <= v:
                            m = smin[s]
                            if m < lmin:
                                lmin = m
                                level = 3
                                where = s
                            i -= SUP
                            continue
                    m = bmin[b]
                    if m < lmin:
                        lmin = m
                        level = 2
                        where = b
                    i -= BLK
                    continue
            j = i >> SUB_SHIFT
            if qmax[j] <= v:
                m = qmin[j]
                if m < lmin:
                    lmin = m
                    level = 1
                    where = j
                i -= SUB
                continue
        m = x[i]
        if not (m <= v):
            break
        if m < lmin:
            lmin = m
            base = i
            level = 0
        i -= 1
    if level == 3:
        j = (where << 6) + 63
        while bmin[j] != lmin:
            j -= 1
        where = j
        level = 2
    if level == 2:
        j = (where << 2) + 3
        while qmin[j] != lmin:
            j -= 1
        where = j
        level = 1
    if level == 1:
        base = _last_eq(x, where << SUB_SHIFT, (where << SUB_SHIFT) + SUB - 1, lmin)
    out_min[0] = lmin
    return base


cdef inline Py_ssize_t walk_right_base(const real_t* x, const real_t* qmin, const real_t* qmax,
                                       const real_t* bmin, const real_t* bmax,
                                       const real_t* smin, const real_t* smax, int accel,
                                       Py_ssize_t peak, Py_ssize_t i_max, real_t* out_min) noexcept nogil:
    """SciPy's right-base search: from ``peak`` up to ``i_max`` while ``x[i] <= x[peak]``.

    Returns the base (the leftmost position of the minimum) and stores the minimum (summaries as
    in walk_left_base).
    """
    cdef real_t v = x[peak], rmin = v, m
    cdef Py_ssize_t i = peak, base = peak, b, s, j, where = -1
    cdef int level = 0
    while i <= i_max:
        if accel and (i & (SUB - 1)) == 0 and i + (SUB - 1) <= i_max:
            if (i & (BLK - 1)) == 0 and i + (BLK - 1) <= i_max:
                b = i >> BLK_SHIFT
                if bmax[b] <= v:
                    if (b & 63) == 0 and i + (SUP - 1) <= i_max:
                        s = b >> 6
                        if smax[s] <= v:
                            m = smin[s]
                            if m < rmin:
                                rmin = m
                                level = 3
                                where = s
                            i += SUP
                            continue
                    m = bmin[b]
                    if m < rmin:
                        rmin = m
                        level = 2
                        where = b
                    i += BLK
                    continue
            j = i >> SUB_SHIFT
            if qmax[j] <= v:
                m = qmin[j]
                if m < rmin:
                    rmin = m
                    level = 1
                    where = j
                i += SUB
                continue
        m = x[i]
        if not (m <= v):
            break
        if m < rmin:
            rmin = m
            base = i
            level = 0
        i += 1
    if level == 3:
        j = where << 6
        while bmin[j] != rmin:
            j += 1
        where = j
        level = 2
    if level == 2:
        j = where << 2
        while qmin[j] != rmin:
            j += 1
        where = j
        level = 1
    if level == 1:
        base = _first_eq(x, where << SUB_SHIFT, (where << SUB_SHIFT) + SUB - 1, rmin)
    out_min[0] = rmin
    return base


cdef inline void prominence(const real_t* x, Py_ssize_t n, const real_t* qmin, const real_t* qmax,
                            const real_t* bmin, const real_t* bmax, const real_t* smin, const real_t* smax,
                            int accel, Py_ssize_t wlen, PeakRec* r) noexcept nogil:
    """Prominence and bases of the peak ``r.index`` (SciPy's _peak_prominences body)."""
    cdef Py_ssize_t peak = r.index, i_min = 0, i_max = n - 1
    cdef real_t lmin, rmin
    cdef double dl, dr
    if 2 <= wlen:
        if peak - wlen // 2 > i_min:
            i_min = peak - wlen // 2
        if peak + wlen // 2 < i_max:
            i_max = peak + wlen // 2
    r.left_base = walk_left_base(x, qmin, qmax, bmin, bmax, smin, smax, accel, peak, i_min, &lmin)
    r.right_base = walk_right_base(x, qmin, qmax, bmin, bmax, smin, smax, accel, peak, i_max, &rmin)
    dl = <double>lmin
    dr = <double>rmin
    r.prominence = (<double>x[peak]) - max(dl, dr)


cdef inline double _pbound(double pmin, double m) noexcept nogil:
    """``pmin + m`` less a relative margin of 1e-9, so that rounding in ``x[p] - max(...)`` cannot
    make a rejected peak one that SciPy keeps."""
    cdef double t = pmin + m
    return t - (1e-9 * (fabs(pmin) + fabs(m)) + 1e-300)


cdef inline int prominence_at_least(const real_t* x, Py_ssize_t n, const real_t* qmin, const real_t* qmax,
                                    const real_t* bmin, const real_t* bmax, const real_t* smin,
                                    const real_t* smax, int accel, Py_ssize_t wlen, double pmin,
                                    PeakRec* r) noexcept nogil:
    """:func:`prominence`, but 0 as soon as it is clear that ``prominence < pmin``.

    Exact. First O(1) sub-block bounds: if the sub-block left of the plateau start holds a sample
    above v, the left walk stops inside those two sub-blocks (or at the plateau), so
    ``left_min >= min(qmin[sb-1], qmin[sb])`` and ``v - left_min <= v - that`` (likewise right of
    the plateau end; at the signal's ends the walk stops there). Then the left walk:
    ``fl(v - max(lmin, rmin)) <= fl(v - lmin)`` (rounding is monotone), so ``fl(v - lmin) < pmin``
    rejects the peak whatever the right walk finds; the right walk is skipped.
    """
    cdef Py_ssize_t peak = r.index, i_min = 0, i_max = n - 1, sb, se, nq
    cdef real_t lmin, rmin, lo
    cdef double dl, dr, v = <double>x[peak]
    if accel:
        sb = r.left_edge >> SUB_SHIFT
        lo = qmin[sb]
        if sb == 0 or qmax[sb - 1] > x[peak]:
            if sb > 0 and qmin[sb - 1] < lo:
                lo = qmin[sb - 1]
            if v < _pbound(pmin, <double>lo):
                return 0
        nq = n_subs(n)
        se = r.right_edge >> SUB_SHIFT
        lo = qmin[se]
        if se == nq - 1 or qmax[se + 1] > x[peak]:
            if se < nq - 1 and qmin[se + 1] < lo:
                lo = qmin[se + 1]
            if v < _pbound(pmin, <double>lo):
                return 0
    if 2 <= wlen:
        if peak - wlen // 2 > i_min:
            i_min = peak - wlen // 2
        if peak + wlen // 2 < i_max:
            i_max = peak + wlen // 2
    r.left_base = walk_left_base(x, qmin, qmax, bmin, bmax, smin, smax, accel, peak, i_min, &lmin)
    dl = <double>lmin
    if not (pmin <= v - dl):
        return 0
    r.right_base = walk_right_base(x, qmin, qmax, bmin, bmax, smin, smax, accel, peak, i_max, &rmin)
    dr = <double>rmin
    r.prominence = v - max(dl, dr)
    return 1


cdef inline void width(const real_t* x, const real_t* qmin, const real_t* bmin, int accel, double rel_height,
                       PeakRec* r) noexcept nogil:
    """Width at ``rel_height`` of the prominence (SciPy's _peak_widths body); needs the bases."""
    cdef Py_ssize_t peak = r.index, i_min = r.left_base, i_max = r.right_base, i
    cdef double height, left_ip, right_ip
    height = (<double>x[peak]) - r.prominence * rel_height
    r.width_height = height
    # left intersection (whole sub-blocks/blocks above the contour are skipped)
    i = peak
    while i_min < i:
        if accel and (i & (SUB - 1)) == SUB - 1 and i - (SUB - 1) > i_min:
            if (i & (BLK - 1)) == BLK - 1 and i - (BLK - 1) > i_min and height < bmin[i >> BLK_SHIFT]:
                i -= BLK
                continue
            if height < qmin[i >> SUB_SHIFT]:
                i -= SUB
                continue
        if not (height < x[i]):
            break
        i -= 1
    left_ip = <double>i
    if x[i] < height:
        if x[i + 1] != x[i]:
            left_ip += (height - <double>x[i]) / (<double>x[i + 1] - <double>x[i])
    # right intersection
    i = peak
    while i < i_max:
        if accel and (i & (SUB - 1)) == 0 and i + (SUB - 1) < i_max:
            if (i & (BLK - 1)) == 0 and i + (BLK - 1) < i_max and height < bmin[i >> BLK_SHIFT]:
                i += BLK
                continue
            if height < qmin[i >> SUB_SHIFT]:
                i += SUB
                continue
        if not (height < x[i]):
            break
        i += 1
    right_ip = <double>i
    if x[i] < height:
        if x[i - 1] != x[i]:
            right_ip -= (height - <double>x[i]) / (<double>x[i - 1] - <double>x[i])
    r.width = right_ip - left_ip
    r.left_ip = left_ip
    r.right_ip = right_ip


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------
cdef inline int in_interval(double v, int has_lo, double lo, int has_hi, double hi) noexcept nogil:
    """SciPy's _select_by_property for one value: (lo <= v) and (v <= hi), open borders pass."""
    if has_lo and not (lo <= v):
        return 0
    if has_hi and not (v <= hi):
        return 0
    return 1


cdef inline int pre_conditions(const real_t* x, const Conds* c, PeakRec* r) noexcept nogil:
    """plateau_size, height and threshold conditions for a fresh local maximum (fills the record)."""
    cdef Py_ssize_t p = r.index
    cdef double lt, rt, tlo, thi
    r.height = <double>x[p]
    if not in_interval(<double>(r.right_edge - r.left_edge + 1), c.has_psmin, c.psmin, c.has_psmax, c.psmax):
        return 0
    if not in_interval(r.height, c.has_hmin, c.hmin, c.has_hmax, c.hmax):
        return 0
    lt = r.height - <double>x[p - 1]
    rt = r.height - <double>x[p + 1]
    r.left_threshold = lt
    r.right_threshold = rt
    if c.has_tmin or c.has_tmax:
        if lt != lt or rt != rt:   # np.min / np.max propagate NaN
            tlo = NAN
            thi = NAN
        else:
            tlo = lt if lt < rt else rt
            thi = lt if lt > rt else rt
        if c.has_tmin and not (c.tmin <= tlo):
            return 0
        if c.has_tmax and not (thi <= c.tmax):
            return 0
    return 1


cdef inline int post_conditions(const real_t* x, Py_ssize_t n, const real_t* qmin, const real_t* qmax,
                                const real_t* bmin, const real_t* bmax, const real_t* smin, const real_t* smax,
                                int accel, const Conds* c, PeakRec* r) noexcept nogil:
    """prominence and width conditions (after the distance selection, as in find_peaks)."""
    if c.need_prom:
        if c.has_pmin:
            if not prominence_at_least(x, n, qmin, qmax, bmin, bmax, smin, smax, accel, c.wlen, c.pmin, r):
                return 0
        else:
            prominence(x, n, qmin, qmax, bmin, bmax, smin, smax, accel, c.wlen, r)
        if not in_interval(r.prominence, c.has_pmin, c.pmin, c.has_pmax, c.pmax):
            return 0
    if c.need_width:
        width(x, qmin, bmin, accel, c.rel_height, r)
        if not in_interval(r.width, c.has_wmin, c.wmin, c.has_wmax, c.wmax):
            return 0
    return 1


cdef inline void block_bounds(const real_t* bmin, const real_t* bmax, Py_ssize_t nb, const Conds* c,
                              int prune_prom, double* thr) noexcept nogil:
    """Per-block lower bound on the value ``v`` of a plateau start that can still be a kept peak.

    ``hmin`` if given. With ``prune_prom`` a peak is also rejected when ``v - (a lower bound of
    max(left_min, right_min)) < pmin``; the bounds on block ``b`` (``bmin``/``bmax`` of 64-sample
    blocks; the walks of SciPy's _peak_prominences stop at the first sample > v):

    * ``min(x[:end of b])`` and ``min(x[start of b:])`` (a walk stays inside the signal);
    * if ``bmax[b-k] > v`` (k = 1, 2) the left walk stops inside blocks ``b-k .. b`` (or at the
      plateau), so ``left_min >= min(bmin[b-k .. b])``; at the signal's start it stops there.
      Likewise on the right with ``bmax[b+k]``.

    Each bound is a clause "v < T"; the block threshold is the largest T (a plateau whose value is
    below it fails at least one clause).
    """
    cdef Py_ssize_t b
    cdef double run, t, m, base = -INFINITY, pmin = c.pmin
    if c.has_hmin:
        base = c.hmin
    for b in range(nb):
        thr[b] = base
    if not prune_prom:
        return
    # prefix minima forward (stashed in thr), then suffix minima backward
    run = INFINITY
    for b in range(nb):
        if bmin[b] < run:
            run = bmin[b]
        thr[b] = run
    run = INFINITY
    for b in range(nb - 1, -1, -1):
        if bmin[b] < run:
            run = bmin[b]
        m = thr[b] if thr[b] > run else run
        t = _pbound(pmin, m)
        thr[b] = t if t > base else base
    # neighbouring blocks
    for b in range(nb):
        t = thr[b]
        # left, k = 1
        if b == 0:
            m = _pbound(pmin, bmin[0])
        else:
            m = _pbound(pmin, bmin[b - 1] if bmin[b - 1] < bmin[b] else bmin[b])
            if bmax[b - 1] < m:
                m = bmax[b - 1]
        if m > t:
            t = m
        # left, k = 2
        if b >= 1:
            run = bmin[b - 1] if bmin[b - 1] < bmin[b] else bmin[b]
            if b == 1:
                m = _pbound(pmin, run)
            else:
                if bmin[b - 2] < run:
                    run = bmin[b - 2]
                m = _pbound(pmin, run)
                if bmax[b - 2] < m:
                    m = bmax[b - 2]
            if m > t:
                t = m
        # right, k = 1
        if b == nb - 1:
            m = _pbound(pmin, bmin[b])
        else:
            m = _pbound(pmin, bmin[b + 1] if bmin[b + 1] < bmin[b] else bmin[b])
            if bmax[b + 1] < m:
                m = bmax[b + 1]
        if m > t:
            t = m
        # right, k = 2
        if b <= nb - 2:
            run = bmin[b + 1] if bmin[b + 1] < bmin[b] else bmin[b]
            if b == nb - 2:
                m = _pbound(pmin, run)
            else:
                if bmin[b + 2] < run:
                    run = bmin[b + 2]
                m = _pbound(pmin, run)
                if bmax[b + 2] < m:
                    m = bmax[b + 2]
            if m > t:
                t = m
        thr[b] = t


cdef struct ScanPos:
    Py_ssize_t i            # next position to look at
    Py_ssize_t c            # 16-aligned chunk whose candidate mask is cached (-1: none)
    unsigned int mask       # candidates of chunk c not yet looked at


cdef inline void scan_start(ScanPos* st) noexcept nogil:
    st.i = 1
    st.c = -1
    st.mask = 0


cdef inline Py_ssize_t _plateau(const real_t* x, Py_ssize_t i, Py_ssize_t i_max, Py_ssize_t* out_s,
                                Py_ssize_t* out_e, ScanPos* st) noexcept nogil:
    """SciPy's plateau rule at a start i (x[i-1] < x[i]): the midpoint, or -1 (st.i advanced)."""
    cdef real_t xi = x[i]
    cdef Py_ssize_t j = i + 1
    while j < i_max and x[j] == xi:
        j += 1
    if x[j] < xi:
        out_s[0] = i
        out_e[0] = j - 1
        st.i = j + 1
        return (i + j - 1) // 2
    st.i = i + 1
    return -1


cdef inline Py_ssize_t scan_maxima(const real_t* x, Py_ssize_t n, const real_t* bmax, int use_skip,
                                   const double* thr, ScanPos* st, Py_ssize_t* out_s,
                                   Py_ssize_t* out_e) noexcept nogil:
    """Next local maximum (SciPy's _local_maxima_1d) whose plateau starts at or after ``st.i`` with
    a value >= the start's block bound ``thr``; blocks whose max is below it are skipped. Inside a
    block, 16-sample chunks are tested with vector compares (a candidate mask), then SciPy's rule
    decides each candidate.

    Returns the midpoint (-1 when none is left); stores the plateau edges and advances ``st``.
    """
    cdef Py_ssize_t i, i_max = n - 1, b, end, c, p, k
    cdef double t
    cdef unsigned int m
    while True:
        i = st.i
        if i < 1:
            i = st.i = 1
        if i >= i_max:
            return -1
        b = i >> BLK_SHIFT
        t = thr[b]
        if use_skip and bmax[b] < t:
            st.i = (b + 1) << BLK_SHIFT
            continue
        c = i & ~(<Py_ssize_t>(SUB - 1))
        if c >= 1 and c + SUB <= i_max:
            if st.c != c:
                st.c = c
                if real_t is float:
                    st.mask = ion_maxmask_f(x, c, t)
                else:
                    st.mask = ion_maxmask_d(x, c, t)
            m = st.mask & ~((1u << (i - c)) - 1u)     # positions >= i
            if m == 0:
                st.i = c + SUB
                continue
            k = ion_ctz(m)
            st.mask = m & (m - 1u)
            i = c + k
            if x[i + 1] < x[i]:
                out_s[0] = i
                out_e[0] = i
                st.i = i + 1
                return i
            p = _plateau(x, i, i_max, out_s, out_e, st)
            if p >= 0:
                return p
            continue
        # chunk at the signal's edges: sample by sample
        end = c + SUB
        if end > i_max:
            end = i_max
        while i < end:
            if x[i] >= t and x[i - 1] < x[i]:
                p = _plateau(x, i, i_max, out_s, out_e, st)
                if p >= 0:
                    return p
                i = st.i
            else:
                i += 1
        st.i = end


# ---------------------------------------------------------------------------------------------
# Selection (quickselect; Hoare partition, median-of-three pivot)
# ---------------------------------------------------------------------------------------------
cdef inline float select_k(float* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th smallest of a[0..n) (0-based); reorders a."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid
    cdef float pivot, t
    while hi > lo:
        mid = lo + (hi - lo) // 2
        # median of three into a[mid]
        if a[mid] < a[lo]:
            t = a[mid]; a[mid] = a[lo]; a[lo] = t
        if a[hi] < a[lo]:
            t = a[hi]; a[hi] = a[lo]; a[lo] = t
        if a[hi] < a[mid]:
            t = a[hi]; a[hi] = a[mid]; a[mid] = t
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while pivot < a[j]:
                j -= 1
            if i <= j:
                t = a[i]; a[i] = a[j]; a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return a[k]
    return a[k]


# ---------------------------------------------------------------------------------------------
# Symmetric correlation (smoothing): y[i] = c[0] x[i] + sum_{k=h..1} c[k] (x[i-k] + x[i+k])
# (ndimage's symmetric-weights loop, outermost pair first)
# ---------------------------------------------------------------------------------------------
cdef enum:
    MODE_REFLECT = 0     # d c b a | a b c d | d c b a   (ndimage 'reflect', 'grid-mirror')
    MODE_MIRROR = 1      # d c b | a b c d | c b a       (ndimage 'mirror')
    MODE_NEAREST = 2     # a a a | a b c d | d d d
    MODE_WRAP = 3        # a b c d | a b c d | a b c d
    MODE_CONSTANT = 4    # k k k | a b c d | k k k
    MODE_INTERP = 5      # savgol_filter's polynomial fit over the first/last window


cdef inline Py_ssize_t _pmod(Py_ssize_t a, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t r = a % m
    return r + m if r < 0 else r


cdef inline real_t ext_at(const real_t* x, Py_ssize_t n, Py_ssize_t j, int mode, real_t cval) noexcept nogil:
    """x extended beyond [0, n) by ``mode``."""
    if 0 <= j < n:
        return x[j]
    if mode == MODE_REFLECT:
        j = _pmod(j, 2 * n)
        if j >= n:
            j = 2 * n - 1 - j
    elif mode == MODE_MIRROR:
        if n == 1:
            return x[0]
        j = _pmod(j, 2 * n - 2)
        if j >= n:
            j = 2 * n - 2 - j
    elif mode == MODE_NEAREST:
        j = 0 if j < 0 else n - 1
    elif mode == MODE_WRAP:
        j = _pmod(j, n)
    else:
        return cval
    return x[j]


cdef inline void conv_interior(const real_t* x, real_t* y, Py_ssize_t lo, Py_ssize_t hi,
                               const real_t* c, Py_ssize_t h) noexcept nogil:
    """y[lo:hi] for lo >= h and hi <= n - h (no boundary); x and y must not overlap."""
    cdef Py_ssize_t i, k
    cdef real_t ck
    if real_t is float:
        if ion_conv_fixed(x, y, lo, hi, c, h):
            return
    if h == 0:
        for i in range(lo, hi):
            y[i] = x[i] * c[0]
        return
    ck = c[0]
    for i in range(lo, hi):
        y[i] = x[i] * ck
    for k in range(h, 0, -1):
        ck = c[k]
        for i in range(lo, hi):
            y[i] += (x[i - k] + x[i + k]) * ck


cdef inline real_t conv_at(const real_t* x, Py_ssize_t n, Py_ssize_t i, const real_t* c, Py_ssize_t h,
                           int mode, real_t cval) noexcept nogil:
    """One output near the boundary, with x extended by ``mode``."""
    cdef Py_ssize_t k
    cdef real_t acc = x[i] * c[0]
    for k in range(h, 0, -1):
        acc += (ext_at(x, n, i - k, mode, cval) + ext_at(x, n, i + k, mode, cval)) * c[k]
    return acc


cdef inline void conv_edges_interp(const real_t* x, Py_ssize_t n, real_t* y, Py_ssize_t h,
                                   const double* left, const double* right) noexcept nogil:
    """savgol 'interp' edges: y[:h] = left @ x[:w], y[n-h:] = right @ x[n-w:], w = 2h+1 (n >= w)."""
    cdef Py_ssize_t w = 2 * h + 1, r, j
    cdef double acc
    for r in range(h):
        acc = 0.0
        for j in range(w):
            acc += left[r * w + j] * <double>x[j]
        y[r] = <real_t>acc
        acc = 0.0
        for j in range(w):
            acc += right[r * w + j] * <double>x[n - w + j]
        y[n - h + r] = <real_t>acc


cdef enum:
    TILE = 2048   # interior tile (samples): the taps loop runs over a tile that stays in L1


cdef inline void correlate_tiled(const real_t* x, Py_ssize_t n, real_t* y, const real_t* c, Py_ssize_t h,
                                 int mode, real_t cval, const double* left, const double* right) noexcept nogil:
    """y[0:n] = x correlated with the symmetric weights c[0..h] (c[0] centre, c[k] for offsets +-k).

    The interior goes tile by tile (:func:`conv_interior`); the first and last h outputs see the
    boundary: MODE_INTERP uses the ``left``/``right`` (h x (2h+1)) savgol matrices when n >= 2h+1
    (MODE_MIRROR when the scan is shorter), any other mode extends x by ``mode`` (and ``cval``).
    Shared by cext/smooth.pyx (correlate_symmetric) and cext/scan.pyx (the scan kernel's smoothing).
    """
    cdef Py_ssize_t a = h if h < n else n          # outputs [0, a) and [b, n) see the boundary
    cdef Py_ssize_t b = n - h if n - h > a else a
    cdef Py_ssize_t lo = a, hi, i
    cdef int edge_mode = mode if mode != MODE_INTERP else MODE_MIRROR
    while lo < b:
        hi = lo + TILE
        if hi > b:
            hi = b
        conv_interior(x, y, lo, hi, c, h)
        lo = hi
    if mode == MODE_INTERP and n >= 2 * h + 1:
        if h:
            conv_edges_interp(x, n, y, h, left, right)
        return
    for i in range(a):
        y[i] = conv_at(x, n, i, c, h, edge_mode, cval)
    for i in range(b, n):
        y[i] = conv_at(x, n, i, c, h, edge_mode, cval)


# ---------------------------------------------------------------------------------------------
# Block statistics: baseline (median) and noise (MAD) per block, robust to peaks
# ---------------------------------------------------------------------------------------------
cdef inline int _clipped_moments(const float* v, Py_ssize_t m, double centre, double lim,
                                 double* mean, double* sd) noexcept nogil:
    """Mean and standard deviation of the values within ``centre +- lim``; 0 if none."""
    cdef Py_ssize_t k
    cdef double s1, s2, mu, var
    k = ion_clipped_sums(v, m, <float>centre, <float>lim, &s1, &s2)
    if k == 0:
        return 0
    mu = s1 / <double>k
    var = s2 / <double>k - mu * mu
    mean[0] = centre + mu
    sd[0] = sqrt(var) if var > 0 else 0.0
    return 1


cdef inline void block_stat(const float* x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t stride,
                            float* buf, float* dev, double* base, double* sig) noexcept nogil:
    """Baseline and noise of x[lo:hi:stride] (m samples), robust to peaks:

    1. median and 1.4826 * MAD of up to 32 evenly spaced ones of the m samples (a clip range only);
    2. mean and standard deviation of the samples within 3.5 of those sigmas;
    3. mean and standard deviation of the samples within 3 of the new sigmas of the new mean,
       the standard deviation divided by 0.98658 (a normal truncated at +-3 sigma).

    Means of clipped samples, unlike medians, are continuous for integer samples and cost no
    selection; a selection over 32 values replaces four over m (the kernel's time was all there).
    With no spread in step 1 (mostly identical values, e.g. zeros of noise-suppressed data) the
    block reports the median of all m samples and noise 0.

    ``buf`` and ``dev`` hold at least ``(hi - lo + stride - 1) // stride`` floats.
    """
    cdef Py_ssize_t m = 0, i, j, q, step
    cdef float med, mad
    cdef double mean, sd
    i = lo
    while i < hi:
        buf[m] = x[i]
        m += 1
        i += stride
    q = m if m < 32 else 32
    step = m // q
    for j in range(q):
        dev[j] = buf[j * step]
    med = select_k(dev, q, q // 2)
    for j in range(q):
        dev[j] = fabs(dev[j] - med)
    mad = select_k(dev, q, q // 2)
    if not (mad > 0):
        for j in range(m):
            dev[j] = buf[j]
        base[0] = select_k(dev, m, m // 2)
        sig[0] = 0.0
        return
    if not _clipped_moments(buf, m, med, 3.5 * 1.4826 * mad, &mean, &sd) or not (sd > 0):
        base[0] = med
        sig[0] = 1.4826 * mad
        return
    sd /= 0.99694                       # truncation at +-3.5 sigma
    if _clipped_moments(buf, m, mean, 3.0 * sd, base, sig):
        sig[0] /= 0.98658
    else:
        base[0] = mean
        sig[0] = sd


cdef inline double _median_small(double* v, int m) noexcept nogil:
    """Median of m <= 5 values (the mean of the two middle ones for even m); reorders v."""
    cdef int i, j
    cdef double t
    for i in range(1, m):
        t = v[i]
        j = i - 1
        while j >= 0 and v[j] > t:
            v[j + 1] = v[j]
            j -= 1
        v[j + 1] = t
    if m % 2:
        return v[m // 2]
    return 0.5 * (v[m // 2 - 1] + v[m // 2])


cdef inline Py_ssize_t stats_blocks(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    """Number of statistics blocks: n // block, at least 1 (the last block takes the remainder)."""
    cdef Py_ssize_t nb = n // block
    return nb if nb > 0 else 1


cdef inline void block_statistics(const float* x, Py_ssize_t n, Py_ssize_t block, Py_ssize_t stride,
                                  double noise_floor, float* buf, float* dev, double* raw_base,
                                  double* raw_sig, double* base, double* sig, double* centre) noexcept nogil:
    """Baseline and noise per block, smoothed across blocks (running median of 5), and the block
    centres (rounded down to a multiple of 64 samples) where they apply.

    ``noise_floor``: lowest noise returned (a block of identical values has MAD 0); where it is 0,
    blocks with no measurable noise take the smallest positive block noise.
    """
    cdef Py_ssize_t nb = stats_blocks(n, block), b, lo, hi, k, a, z
    cdef double v[5]
    cdef double floor_ = noise_floor, minpos = INFINITY
    cdef int m
    for b in range(nb):
        lo = b * block
        hi = lo + block if b < nb - 1 else n
        block_stat(x, lo, hi, stride, buf, dev, &raw_base[b], &raw_sig[b])
        centre[b] = <double>(((lo + hi) // 2) & ~(<Py_ssize_t>63))
    for b in range(nb):
        a = b - 2 if b >= 2 else 0
        z = b + 2 if b + 2 < nb else nb - 1
        m = 0
        for k in range(a, z + 1):
            v[m] = raw_base[k]
            m += 1
        base[b] = _median_small(v, m)
        m = 0
        for k in range(a, z + 1):
            v[m] = raw_sig[k]
            m += 1
        sig[b] = _median_small(v, m)
        if sig[b] > 0 and sig[b] < minpos:
            minpos = sig[b]
    if floor_ <= 0 and minpos < INFINITY:
        floor_ = minpos
    for b in range(nb):
        if sig[b] < floor_:
            sig[b] = floor_
        if not (sig[b] > 0):
            sig[b] = 1.0      # nothing measurable anywhere (a constant signal): unit noise


cdef inline void tile_lines(const double* centre, const double* val, Py_ssize_t nb, Py_ssize_t n,
                            int invert, float* t0, float* ts) noexcept nogil:
    """Piecewise-linear interpolation of ``val`` (or 1/val) between block centres, as a start value
    and a slope for every 64-sample tile: value(i) = t0[i >> 6] + ts[i >> 6] * (i & 63). Flat before
    the first and after the last centre. Centres are multiples of 64, so no tile spans a corner.
    """
    cdef Py_ssize_t nt = (n + 63) >> 6, t, b = 0
    cdef double i0, v0, v1, c0, c1
    for t in range(nt):
        i0 = <double>(t << 6)
        while b + 1 < nb and centre[b + 1] <= i0:
            b += 1
        if nb == 1 or i0 < centre[0] or (b == nb - 1):
            v0 = val[0] if i0 < centre[0] else val[b]
            if invert:
                v0 = 1.0 / v0
            t0[t] = <float>v0
            ts[t] = 0.0
        else:
            c0 = centre[b]
            c1 = centre[b + 1]
            v0 = val[b]
            v1 = val[b + 1]
            if invert:
                v0 = 1.0 / v0
                v1 = 1.0 / v1
            ts[t] = <float>((v1 - v0) / (c1 - c0))
            t0[t] = <float>(v0 + (v1 - v0) * (i0 - c0) / (c1 - c0))
