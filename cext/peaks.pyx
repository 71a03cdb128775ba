# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Peak finding with exactly the peaks and properties of ``scipy.signal.find_peaks``.

``PeakFinder.find`` takes a 1-D C-contiguous float32 or float64 array and the unpacked scalar
conditions of find_peaks (the Python wrapper is ``dsp.peaks.find_peaks``) and returns one record
per kept peak (``PEAK_RECORD_DTYPE``). The algorithms are SciPy's (see cext/_dspcore.pxd for the
attribution and for what is added: block jumps and bounds that skip work without changing results).
Work buffers live in the PeakFinder and are reused; one PeakFinder per thread.

-ffp-contract=off (setup.py, every kernel): no fused multiply-add, so ``x[p] - prominence * rel_height`` rounds
as in SciPy.
"""

import numpy as np
cimport numpy as cnp
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.math cimport ceil, INFINITY

from cext._dspcore cimport (real_t, PeakRec, Conds, BLK_SHIFT, n_blocks, n_supers, n_subs, summaries,
                            pre_conditions, post_conditions, block_bounds, scan_maxima, ScanPos,
                            scan_start)

cnp.import_array()

PEAK_FIELDS = ("index", "left_edge", "right_edge", "height", "left_threshold", "right_threshold",
               "prominence", "left_base", "right_base", "width", "width_height", "left_ip", "right_ip")
"""Per-peak values :meth:`PeakFinder.find` can return (indices and bases in samples; float64 values)."""

_INT_FIELDS = {"index", "left_edge", "right_edge", "left_base", "right_base"}

cdef enum:
    F_INDEX, F_LE, F_RE, F_H, F_LT, F_RT, F_PROM, F_LB, F_RB, F_W, F_WH, F_LIP, F_RIP, N_FIELDS


cdef struct Out:
    void* f[N_FIELDS]     # NULL: not asked for
    int edges, height, thresholds, prom, width   # any field of the group asked for


cdef inline void put(Out* o, Py_ssize_t k, const PeakRec* r) noexcept nogil:
    (<Py_ssize_t*>o.f[F_INDEX])[k] = r.index
    if o.edges:
        if o.f[F_LE] != NULL: (<Py_ssize_t*>o.f[F_LE])[k] = r.left_edge
        if o.f[F_RE] != NULL: (<Py_ssize_t*>o.f[F_RE])[k] = r.right_edge
    if o.height:
        (<double*>o.f[F_H])[k] = r.height
    if o.thresholds:
        if o.f[F_LT] != NULL: (<double*>o.f[F_LT])[k] = r.left_threshold
        if o.f[F_RT] != NULL: (<double*>o.f[F_RT])[k] = r.right_threshold
    if o.prom:
        if o.f[F_PROM] != NULL: (<double*>o.f[F_PROM])[k] = r.prominence
        if o.f[F_LB] != NULL: (<Py_ssize_t*>o.f[F_LB])[k] = r.left_base
        if o.f[F_RB] != NULL: (<Py_ssize_t*>o.f[F_RB])[k] = r.right_base
    if o.width:
        if o.f[F_W] != NULL: (<double*>o.f[F_W])[k] = r.width
        if o.f[F_WH] != NULL: (<double*>o.f[F_WH])[k] = r.width_height
        if o.f[F_LIP] != NULL: (<double*>o.f[F_LIP])[k] = r.left_ip
        if o.f[F_RIP] != NULL: (<double*>o.f[F_RIP])[k] = r.right_ip


cdef struct Cand:
    Py_ssize_t index
    Py_ssize_t left_edge
    Py_ssize_t right_edge
    double height
    double left_threshold
    double right_threshold


cdef class PeakFinder:
    """Reusable work buffers for :meth:`find` (not thread-safe: one per thread)."""

    cdef Cand* recs          # distance candidates
    cdef Py_ssize_t cap
    cdef char* summ          # qmin | qmax | bmin | bmax | smin | smax, each sized for doubles
    cdef double* thr
    cdef Py_ssize_t summ_n   # samples the summary buffers can hold
    cdef public bint last_accelerated

    def __cinit__(self):
        self.recs = NULL
        self.cap = 0
        self.summ = NULL
        self.thr = NULL
        self.summ_n = 0

    def __dealloc__(self):
        free(self.recs)
        free(self.summ)
        free(self.thr)

    cdef int _reserve_summ(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t nb, ns
        cdef char* s
        cdef double* t
        if n <= self.summ_n:
            return 0
        nb = n_blocks(n)
        ns = n_supers(n)
        s = <char*>realloc(self.summ, (2 * n_subs(n) + 2 * nb + 2 * ns) * sizeof(double))
        if s == NULL:
            raise MemoryError()
        self.summ = s
        t = <double*>realloc(self.thr, 2 * nb * sizeof(double))
        if t == NULL:
            raise MemoryError()
        self.thr = t
        self.summ_n = n
        return 0

    cdef Cand* _slot(self, Py_ssize_t k) noexcept nogil:
        """Candidate k, growing the buffer (NULL when out of memory)."""
        cdef Py_ssize_t cap
        cdef Cand* r
        if k >= self.cap:
            cap = self.cap * 2 if self.cap else 256
            while cap <= k:
                cap *= 2
            r = <Cand*>realloc(self.recs, cap * sizeof(Cand))
            if r == NULL:
                return NULL
            self.recs = r
            self.cap = cap
        return &self.recs[k]

    def find(self, x not None, fields, psmin=None, psmax=None, hmin=None, hmax=None, tmin=None,
             tmax=None, bint need_prom=False, Py_ssize_t wlen=-1, pmin=None, pmax=None,
             bint need_width=False, double rel_height=0.5, wmin=None, wmax=None, distance=None):
        """Peaks of ``x`` under find_peaks' conditions: a dict ``{field: array}`` for ``fields``.

        ``x``: 1-D C-contiguous float32 or float64. ``fields``: names from PEAK_FIELDS (values of
        properties that the conditions do not compute are unspecified). The other parameters are
        the interval borders of find_peaks (None: open), already unpacked: ``psmin``/``psmax``
        plateau size (samples), ``hmin``/``hmax`` height, ``tmin``/``tmax`` threshold,
        ``pmin``/``pmax`` prominence, ``wmin``/``wmax`` width (samples). ``need_prom`` and
        ``need_width`` say whether prominence and width are computed (prominence is computed when
        either is). ``wlen`` (samples) as find_peaks passes it on: -1 for the whole signal.
        ``distance`` (samples, >= 1) or None.
        """
        cdef Conds c
        c.has_psmin = psmin is not None
        c.psmin = psmin if c.has_psmin else 0.0
        c.has_psmax = psmax is not None
        c.psmax = psmax if c.has_psmax else 0.0
        c.has_hmin = hmin is not None
        c.hmin = hmin if c.has_hmin else 0.0
        c.has_hmax = hmax is not None
        c.hmax = hmax if c.has_hmax else 0.0
        c.has_tmin = tmin is not None
        c.tmin = tmin if c.has_tmin else 0.0
        c.has_tmax = tmax is not None
        c.tmax = tmax if c.has_tmax else 0.0
        c.need_prom = need_prom or need_width
        c.wlen = wlen
        c.has_pmin = pmin is not None
        c.pmin = pmin if c.has_pmin else 0.0
        c.has_pmax = pmax is not None
        c.pmax = pmax if c.has_pmax else 0.0
        c.need_width = need_width
        c.rel_height = rel_height
        c.has_wmin = wmin is not None
        c.wmin = wmin if c.has_wmin else 0.0
        c.has_wmax = wmax is not None
        c.wmax = wmax if c.has_wmax else 0.0
        for name in fields:
            if name not in PEAK_FIELDS:
                raise ValueError(f"unknown peak field {name!r}; known: {', '.join(PEAK_FIELDS)}")
        if isinstance(x, np.ndarray) and x.dtype == np.float32:
            return _find[float](self, x, &c, distance, tuple(fields))
        return _find[double](self, x, &c, distance, tuple(fields))


cdef object _find(PeakFinder self, const real_t[::1] x, Conds* c, object distance, tuple fields):
    cdef Py_ssize_t n = x.shape[0], nb, ns, m = 0, k, j, i, s, e, p, size, distance_, cap
    cdef ScanPos pos
    cdef real_t *qmin
    cdef real_t *qmax
    cdef real_t *bmin
    cdef real_t *bmax
    cdef real_t *smin
    cdef real_t *smax
    cdef const real_t* xp
    cdef int nan = 0, accel, prune, has_distance = distance is not None, oom = 0, f
    cdef PeakRec r
    cdef Cand* rp
    cdef Cand* recs
    cdef Out o
    cdef cnp.ndarray arr
    cdef cnp.uint8_t[::1] keep
    cdef Py_ssize_t[::1] order
    cdef double[::1] priority

    arrays = {}
    cap = n // 2 + 1   # at most this many local maxima
    for f in range(N_FIELDS):
        o.f[f] = NULL
    fields = ("index",) + tuple(fields)
    for f, name in enumerate(PEAK_FIELDS):
        if name in fields:
            arr = np.empty(cap, np.intp if name in _INT_FIELDS else np.float64)
            arrays[name] = arr
            o.f[f] = cnp.PyArray_DATA(arr)
    o.edges = o.f[F_LE] != NULL or o.f[F_RE] != NULL
    o.height = o.f[F_H] != NULL
    o.thresholds = o.f[F_LT] != NULL or o.f[F_RT] != NULL
    o.prom = o.f[F_PROM] != NULL or o.f[F_LB] != NULL or o.f[F_RB] != NULL
    o.width = o.f[F_W] != NULL or o.f[F_WH] != NULL or o.f[F_LIP] != NULL or o.f[F_RIP] != NULL
    if n < 3:
        self.last_accelerated = False
        return {name: a[:0].copy() for name, a in arrays.items()}
    self._reserve_summ(n)
    nb = n_blocks(n)
    ns = n_supers(n)
    qmin = <real_t*>self.summ
    qmax = qmin + n_subs(n)
    bmin = qmax + n_subs(n)
    bmax = bmin + nb
    smin = bmax + nb
    smax = smin + ns
    xp = &x[0]
    with nogil:
        nan = summaries(xp, n, qmin, qmax, bmin, bmax, smin, smax)
        accel = not nan
        prune = accel and c.need_prom and c.has_pmin
        if has_distance:
            # scan with the height bound only (distance needs every candidate); the prominence
            # bound (thr + nb) rejects survivors of the distance selection without walking
            block_bounds(bmin, bmax, nb, c, 0, self.thr)
            block_bounds(bmin, bmax, nb, c, prune, self.thr + nb)
        else:
            block_bounds(bmin, bmax, nb, c, prune, self.thr)
        scan_start(&pos)
        while True:
            p = scan_maxima(xp, n, bmax, accel, self.thr, &pos, &s, &e)
            if p < 0:
                break
            r.index = p
            r.left_edge = s
            r.right_edge = e
            if not pre_conditions(xp, c, &r):
                continue
            if has_distance:
                # keep every candidate for the distance selection (SciPy's order of conditions)
                rp = self._slot(m)
                if rp == NULL:
                    oom = 1
                    break
                rp.index = r.index
                rp.left_edge = r.left_edge
                rp.right_edge = r.right_edge
                rp.height = r.height
                rp.left_threshold = r.left_threshold
                rp.right_threshold = r.right_threshold
            else:
                if (c.need_prom or c.need_width) and \
                        not post_conditions(xp, n, qmin, qmax, bmin, bmax, smin, smax, accel, c, &r):
                    continue
                put(&o, m, &r)
            m += 1
    if oom:
        raise MemoryError()
    self.last_accelerated = accel

    if has_distance and m > 0:
        # SciPy's _select_by_peak_distance: priority order from np.argsort (its tie order included).
        distance_ = <Py_ssize_t>ceil(<double>distance)
        priority = np.empty(m, np.float64)
        for k in range(m):
            priority[k] = self.recs[k].height
        order = np.argsort(priority)
        keep = np.ones(m, np.uint8)
        recs = self.recs
        with nogil:
            for i in range(m - 1, -1, -1):
                j = order[i]
                if keep[j] == 0:
                    continue
                k = j - 1
                while 0 <= k and recs[j].index - recs[k].index < distance_:
                    keep[k] = 0
                    k -= 1
                k = j + 1
                while k < m and recs[k].index - recs[j].index < distance_:
                    keep[k] = 0
                    k += 1
            size = 0
            for k in range(m):
                if not keep[k] or recs[k].height < self.thr[nb + (recs[k].left_edge >> BLK_SHIFT)]:
                    continue
                r.index = recs[k].index
                r.left_edge = recs[k].left_edge
                r.right_edge = recs[k].right_edge
                r.height = recs[k].height
                r.left_threshold = recs[k].left_threshold
                r.right_threshold = recs[k].right_threshold
                if not (c.need_prom or c.need_width) or \
                        post_conditions(xp, n, qmin, qmax, bmin, bmax, smin, smax, accel, c, &r):
                    put(&o, size, &r)
                    size += 1
        m = size

    for arr in arrays.values():
        arr.resize(m, refcheck=False)
    return arrays
