# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Classifier feature vector of one spectrum in one nogil call (dsp/features.py documents the math).

``feature_vector(y, index, frac, dmz, width, lo, hi, baseline, window, scale, transform, out,
scratch)`` bins ``y`` with a ``dsp.features.BinPlan``'s arrays, normalises and writes float32 ``out``
(bins,). ``scratch`` is float64 of at least ``scratch_len(bins, window)`` values; with both buffers
reused a call allocates nothing. ``y`` is uint16, int16, int32, float32 or float64 (counts or any
linear unit), C-contiguous; other dtypes are the caller's to convert.

Against the NumPy reference (BinPlan.bin + normalise): each bin's segment areas are summed left to
right where ``np.add.reduceat`` sums pairwise, and the "sum" scale adds the bins left to right where
``ndarray.sum`` is pairwise, so float64 intermediates can differ in the last bit; every other step
(the areas themselves, the fractional edge parts, the opening, min/max, the divisions, sqrt) is the
same operation on the same doubles. The float32 results came out bit-equal in every case tried;
they differ only where the output is itself rounding noise (e.g. a tophat of a spectrum that is
flat to 1e-12). NaN samples: the opening does not follow scipy's NaN handling.
"""

from libc.math cimport fabs, NAN
from libc.stdint cimport int64_t

cdef enum:
    NONE = 0
    TOPHAT = 1
    MIN = 2
    MAX = 1
    SUM = 2
    SQRT = 1

# Codes of FeatureSpec's normalisation names (dsp/features.py maps the names).
BASELINE_NONE = NONE
BASELINE_TOPHAT = TOPHAT
BASELINE_MIN = MIN
SCALE_NONE = NONE
SCALE_MAX = MAX
SCALE_SUM = SUM
TRANSFORM_NONE = NONE
TRANSFORM_SQRT = SQRT

cdef double TINY = 1e-30    # dsp.features._TINY

cdef extern from *:
    """
    #include <math.h>
    /* out[i] = (float)(x[i] / d), or the square root of that clipped at 0 (NaN stays NaN, as with
       np.maximum); x is overwritten. Two loops because GCC will not vectorise the clip and the
       sqrt in one (trapping math); each alone runs as divpd / maxpd / sqrtpd. */
    static void ion_feat_finish(double *restrict x, Py_ssize_t n, double d, int root,
                                float *restrict out) {
        if (root) {
            for (Py_ssize_t i = 0; i < n; i++) {
                double v = x[i] / d;
                x[i] = 0.0 > v ? 0.0 : v;
            }
            for (Py_ssize_t i = 0; i < n; i++) out[i] = (float)sqrt(x[i]);
        } else {
            for (Py_ssize_t i = 0; i < n; i++) out[i] = (float)(x[i] / d);
        }
    }
    """
    void ion_feat_finish(double* x, Py_ssize_t n, double d, int root, float* out) noexcept nogil

from cext._dspcore cimport ion_minmax_d

ctypedef unsigned short ushort

ctypedef fused sample_t:
    ushort
    short
    int
    float
    double


cdef inline Py_ssize_t _reach(Py_ssize_t window, Py_ssize_t bins) noexcept nogil:
    """Extension length of the opening: bins + (window - 1), with each side capped at bins - 1
    (beyond that the clamped edge adds nothing to a min or max)."""
    cdef Py_ssize_t a = window // 2, b = window - 1 - window // 2
    if a > bins - 1:
        a = bins - 1
    if b > bins - 1:
        b = bins - 1
    return bins + a + b


def scratch_len(Py_ssize_t bins, Py_ssize_t window):
    """float64 values of scratch that :func:`feature_vector` needs for ``bins`` and ``window``."""
    if bins < 1 or window < 1:
        raise ValueError(f"bins and window must be >= 1, got {bins!r}, {window!r}")
    return bins + 3 * _reach(window, bins)


cdef enum:
    CHAINS = 8      # bins summed side by side (see _bin)
    CHUNK = 1024    # segments whose areas _bin forms in one pass (a stack buffer)


cdef inline double _area(const sample_t* y, const double* dmz, Py_ssize_t i) noexcept nogil:
    """Trapezoid area S_i of segment i, formed as NumPy forms it: (y_i+1 + y_i) * (dmz_i / 2), both
    samples converted to float64 before the add."""
    return (<double>y[i + 1] + <double>y[i]) * (0.5 * dmz[i])


cdef inline void _areas(const sample_t* y, const double* dmz, Py_ssize_t m, double* t) noexcept nogil:
    cdef Py_ssize_t i
    if sample_t is short or sample_t is ushort:
        # the 16-bit sum is exact in int, so one conversion instead of two; same value
        for i in range(m):
            t[i] = <double>(<int>y[i + 1] + <int>y[i]) * (0.5 * dmz[i])
    else:
        for i in range(m):
            t[i] = (<double>y[i + 1] + <double>y[i]) * (0.5 * dmz[i])


cdef inline double _one_bin(const sample_t* y, const double* dmz, Py_ssize_t i0, Py_ssize_t i1,
                            double f0, double f1, double w) noexcept nogil:
    """Mean over one bin whose edges lie in segments i0 <= i1 at fractions f0, f1; w its width."""
    cdef Py_ssize_t i
    cdef double acc, s0 = _area(y, dmz, i0), s1
    if i1 > i0:
        acc = s0
        for i in range(i0 + 1, i1):
            acc += _area(y, dmz, i)
        s1 = _area(y, dmz, i1)
    else:
        acc = 0.0        # both edges in one segment: only the fractional parts count
        s1 = s0
    acc += f1 * s1
    acc -= f0 * s0
    return acc / w


cdef inline void _bin(const sample_t* y, const int64_t* idx, const double* frac, const double* dmz,
                      const double* width, Py_ssize_t bins, Py_ssize_t lo, double* x) noexcept nogil:
    """Mean intensity per bin (x, bins) from the plan; y and dmz start at segment lo.

    Each bin's sum runs left to right in one accumulator; one running sum is bound by the latency
    of an add, so CHAINS neighbouring bins (about equally many segments) advance side by side.
    """
    cdef Py_ssize_t b = 0, i, k, c
    cdef Py_ssize_t j[CHAINS + 1]
    cdef double acc[CHAINS]
    cdef double first[CHAINS + 1]
    cdef double prev[CHAINS]
    cdef double cur
    cdef double t[CHUNK]
    cdef Py_ssize_t span
    while b + CHAINS <= bins:
        for k in range(CHAINS + 1):
            j[k] = idx[b + k] - lo
        c = j[1] - j[0]
        for k in range(1, CHAINS):
            if j[k + 1] - j[k] < c:
                c = j[k + 1] - j[k]
        if c < 1:
            # an empty bin (narrower than the sampling): its neighbours are short too
            for k in range(CHAINS):
                x[b + k] = _one_bin(y, dmz, j[k], j[k + 1], frac[b + k], frac[b + k + 1], width[b + k])
            b += CHAINS
            continue
        span = j[CHAINS] - j[0] + 1
        if span <= CHUNK:
            # form the group's areas in one vectorisable pass, then sum them per bin
            _areas(y + j[0], dmz + j[0], span, t)
            for k in range(CHAINS + 1):
                first[k] = t[j[k] - j[0]]
            for k in range(CHAINS):
                acc[k] = first[k]
            for i in range(1, c):
                for k in range(CHAINS):
                    acc[k] += t[j[k] - j[0] + i]
            for k in range(CHAINS):
                for i in range(j[k] + c, j[k + 1]):
                    acc[k] += t[i - j[0]]
                acc[k] += frac[b + k + 1] * first[k + 1]
                acc[k] -= frac[b + k] * first[k]
                x[b + k] = acc[k] / width[b + k]
            b += CHAINS
            continue
        for k in range(CHAINS + 1):
            first[k] = _area(y, dmz, j[k])
        for k in range(CHAINS):
            acc[k] = first[k]
            prev[k] = <double>y[j[k] + 1]
        # prev carries each chain's last sample as float64: one load and convert per segment
        for i in range(1, c):
            for k in range(CHAINS):
                cur = <double>y[j[k] + i + 1]
                acc[k] += (cur + prev[k]) * (0.5 * dmz[j[k] + i])
                prev[k] = cur
        for k in range(CHAINS):
            for i in range(j[k] + c, j[k + 1]):
                acc[k] += _area(y, dmz, i)
            acc[k] += frac[b + k + 1] * first[k + 1]
            acc[k] -= frac[b + k] * first[k]
            x[b + k] = acc[k] / width[b + k]
        b += CHAINS
    while b < bins:
        x[b] = _one_bin(y, dmz, idx[b] - lo, idx[b + 1] - lo, frac[b], frac[b + 1], width[b])
        b += 1


cdef inline void _running(const double* x, Py_ssize_t n, Py_ssize_t window, bint take_max,
                          double* out, double* e, double* g) noexcept nogil:
    """scipy.ndimage minimum_filter1d / maximum_filter1d(x, window, mode="nearest", origin=0):
    out[i] = min or max of x[i - window//2 .. i + (window - 1 - window//2)], indices clamped.

    van Herk / Gil-Werman on the edge-extended line e: g holds the running min/max from the start
    of each window-long block, e is overwritten by the one from the block's end (a block is read
    before it is overwritten), so every output is one compare whatever the window. e and g hold
    _reach(window, n) values; out may be e, not x.
    """
    cdef Py_ssize_t a = window // 2, b = window - 1 - window // 2, w, m, j, k, end
    cdef double v, first, last
    if a > n - 1:
        a = n - 1
    if b > n - 1:
        b = n - 1
    w = a + b + 1
    m = n + a + b
    first = x[0]
    last = x[n - 1]
    for j in range(a):
        e[j] = first
    for j in range(n):
        e[a + j] = x[j]
    for j in range(b):
        e[a + n + j] = last
    j = 0
    while j < m:
        end = j + w if j + w < m else m
        v = e[j]
        g[j] = v
        for k in range(j + 1, end):
            if take_max:
                v = e[k] if e[k] > v else v
            else:
                v = e[k] if e[k] < v else v
            g[k] = v
        v = e[end - 1]
        for k in range(end - 2, j - 1, -1):
            if take_max:
                v = e[k] if e[k] > v else v
            else:
                v = e[k] if e[k] < v else v
            e[k] = v
        j = end
    for j in range(n):
        if take_max:
            out[j] = e[j] if e[j] > g[j + w - 1] else g[j + w - 1]
        else:
            out[j] = e[j] if e[j] < g[j + w - 1] else g[j + w - 1]


cdef void _features(const sample_t* y, const int64_t* idx, const double* frac, const double* dmz,
                   const double* width, Py_ssize_t bins, Py_ssize_t lo, int baseline, Py_ssize_t window,
                   int scale, int transform, float* out, double* scratch) noexcept nogil:
    cdef Py_ssize_t b, r
    cdef double* x = scratch
    cdef double* eroded
    cdef double* opened
    cdef double m, s, d, lo_, hi_
    cdef int nan = 0
    _bin(y + lo, idx, frac, dmz, width, bins, lo, x)
    if baseline == TOPHAT:
        r = _reach(window, bins)
        eroded = scratch + bins
        opened = scratch + bins + r
        _running(x, bins, window, False, eroded, eroded, scratch + bins + 2 * r)
        _running(eroded, bins, window, True, opened, opened, scratch + bins + 2 * r)
        for b in range(bins):
            x[b] -= opened[b]
    elif baseline == MIN:
        ion_minmax_d(x, bins, &lo_, &hi_, &nan)
        m = NAN if nan else lo_         # NaN spreads, as from ndarray.min
        for b in range(bins):
            x[b] -= m
    d = 1.0             # x / 1.0 is x, bit for bit: one loop serves every scale
    if scale == MAX:
        nan = 0
        ion_minmax_d(x, bins, &lo_, &hi_, &nan)
        d = hi_ if hi_ > -lo_ else -lo_
        if nan:
            d = NAN
        elif d < TINY:
            d = TINY
    elif scale == SUM:
        s = 0.0
        for b in range(bins):
            s += x[b]
        if fabs(s) > TINY:
            d = s
    ion_feat_finish(x, bins, d, transform == SQRT, out)


def feature_vector(const sample_t[::1] y not None, const int64_t[::1] index not None,
                   const double[::1] frac not None, const double[::1] dmz not None,
                   const double[::1] width not None, Py_ssize_t lo, Py_ssize_t hi, int baseline,
                   Py_ssize_t window, int scale, int transform, float[::1] out not None,
                   double[::1] scratch not None):
    """Write the feature vector of spectrum ``y`` into ``out`` (float32, bins) and return None.

    ``index``/``frac`` (bins + 1): segment and fraction of each bin edge; ``dmz`` (hi - lo + 1):
    m/z widths of segments lo..hi; ``width`` (bins): bin widths (m/z) -- a BinPlan's attributes.
    ``baseline``/``scale``/``transform``: the BASELINE_*/SCALE_*/TRANSFORM_* codes; ``window``:
    baseline window (bins, any size >= 1; even sizes centre as scipy.ndimage's do).
    """
    cdef Py_ssize_t bins = width.shape[0], n = y.shape[0], b
    cdef int bad = 0
    if bins < 1 or index.shape[0] != bins + 1 or frac.shape[0] != bins + 1 or out.shape[0] != bins:
        raise ValueError(f"plan arrays disagree: width {bins}, index {index.shape[0]}, frac {frac.shape[0]}, "
                         f"out {out.shape[0]} (want bins, bins + 1, bins + 1, bins)")
    if not (0 <= lo <= hi and hi + 2 <= n and dmz.shape[0] == hi - lo + 1):
        raise ValueError(f"segments lo={lo}..hi={hi} do not fit {n} samples and {dmz.shape[0]} widths")
    if not (NONE <= baseline <= MIN and NONE <= scale <= SUM and NONE <= transform <= SQRT and window >= 1):
        raise ValueError(f"bad normalisation codes baseline={baseline} window={window} scale={scale} "
                         f"transform={transform}")
    if scratch.shape[0] < scratch_len(bins, window):
        raise ValueError(f"scratch holds {scratch.shape[0]} values, needs {scratch_len(bins, window)}")
    with nogil:
        # the plan's edges must be non-decreasing segments within lo..hi: the loops trust them
        for b in range(bins + 1):
            if index[b] < lo or index[b] > hi or (b > 0 and index[b] < index[b - 1]):
                bad = 1
                break
        if not bad:
            _features(&y[0], &index[0], &frac[0], &dmz[0], &width[0], bins, lo, baseline, window, scale,
                      transform, &out[0], &scratch[0])
    if bad:
        raise ValueError(f"index must be non-decreasing segments within lo={lo}..hi={hi}")
