/* Vector min/max, sums and fixed-tap convolution for the DSP kernels (cext/_dspcore.pxd declares
 * them with `cdef extern from "_simd.h"`). GCC/Clang vector extensions: SSE2 on x86-64, NEON on
 * aarch64 (GCC lowers the portable vector code); no -ffast-math, and setup.py builds with
 * -ffp-contract=off, so every function gives the same bits on every architecture.
 * Py_ssize_t comes from Python.h, which the Cython-generated C includes before this header. */
#ifndef IONSTREAM_CEXT_SIMD_H
#define IONSTREAM_CEXT_SIMD_H

#include <Python.h>

typedef float ion_v4f __attribute__((vector_size(16)));
typedef int ion_v4i __attribute__((vector_size(16)));
typedef double ion_v2d __attribute__((vector_size(16)));
typedef long long ion_v2l __attribute__((vector_size(16)));

#if defined(__SSE2__)
#include <emmintrin.h>
/* x86-64 (SSE2 is its baseline): minps/maxps; NaN flagged by cmpunord. */
static inline void ion_minmax_f(const float *p, Py_ssize_t n, float *mn, float *mx, int *nan) {
    Py_ssize_t i = 0;
    float a, b;
    if (n >= 16) {
        __m128 lo0 = _mm_loadu_ps(p), lo1 = _mm_loadu_ps(p + 4), lo2 = _mm_loadu_ps(p + 8), lo3 = _mm_loadu_ps(p + 12);
        __m128 hi0 = lo0, hi1 = lo1, hi2 = lo2, hi3 = lo3;
        __m128 bad = _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(lo0, lo0), _mm_cmpunord_ps(lo1, lo1)),
                               _mm_or_ps(_mm_cmpunord_ps(lo2, lo2), _mm_cmpunord_ps(lo3, lo3)));
        for (i = 16; i + 16 <= n; i += 16) {
            __m128 v0 = _mm_loadu_ps(p + i), v1 = _mm_loadu_ps(p + i + 4);
            __m128 v2 = _mm_loadu_ps(p + i + 8), v3 = _mm_loadu_ps(p + i + 12);
            bad = _mm_or_ps(bad, _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(v0, v0), _mm_cmpunord_ps(v1, v1)),
                                           _mm_or_ps(_mm_cmpunord_ps(v2, v2), _mm_cmpunord_ps(v3, v3))));
            lo0 = _mm_min_ps(lo0, v0); lo1 = _mm_min_ps(lo1, v1); lo2 = _mm_min_ps(lo2, v2); lo3 = _mm_min_ps(lo3, v3);
            hi0 = _mm_max_ps(hi0, v0); hi1 = _mm_max_ps(hi1, v1); hi2 = _mm_max_ps(hi2, v2); hi3 = _mm_max_ps(hi3, v3);
        }
        lo0 = _mm_min_ps(_mm_min_ps(lo0, lo1), _mm_min_ps(lo2, lo3));
        hi0 = _mm_max_ps(_mm_max_ps(hi0, hi1), _mm_max_ps(hi2, hi3));
        float l[4], h[4];
        _mm_storeu_ps(l, lo0); _mm_storeu_ps(h, hi0);
        a = l[0]; b = h[0];
        for (int k = 1; k < 4; k++) { if (l[k] < a) a = l[k]; if (h[k] > b) b = h[k]; }
        if (_mm_movemask_ps(bad)) *nan = 1;
    } else {
        a = b = p[0];
        if (p[0] != p[0]) *nan = 1;
        i = 1;
    }
    for (; i < n; i++) {
        float v = p[i];
        if (v != v) *nan = 1;
        if (v < a) a = v;
        if (v > b) b = v;
    }
    *mn = a; *mx = b;
}
#else
/* min and max of p[0..n), n >= 1; *nan |= 1 if any element is NaN (then min/max are undefined). */
static inline void ion_minmax_f(const float *p, Py_ssize_t n, float *mn, float *mx, int *nan) {
    Py_ssize_t i = 0;
    float a, b;
    if (n >= 16) {
        ion_v4f lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3, v;
        ion_v4i bad = {0, 0, 0, 0}, m;
        __builtin_memcpy(&lo0, p, 16); __builtin_memcpy(&lo1, p + 4, 16);
        __builtin_memcpy(&lo2, p + 8, 16); __builtin_memcpy(&lo3, p + 12, 16);
        hi0 = lo0; hi1 = lo1; hi2 = lo2; hi3 = lo3;
        bad |= (lo0 != lo0) | (lo1 != lo1) | (lo2 != lo2) | (lo3 != lo3);
#define ION_STEP_F(K, LO, HI) \
        __builtin_memcpy(&v, p + i + K, 16); \
        bad |= (v != v); \
        m = (v < LO); LO = (ion_v4f)(((ion_v4i)v & m) | ((ion_v4i)LO & ~m)); \
        m = (v > HI); HI = (ion_v4f)(((ion_v4i)v & m) | ((ion_v4i)HI & ~m));
        for (i = 16; i + 16 <= n; i += 16) {
            ION_STEP_F(0, lo0, hi0) ION_STEP_F(4, lo1, hi1) ION_STEP_F(8, lo2, hi2) ION_STEP_F(12, lo3, hi3)
        }
#undef ION_STEP_F
        m = (lo1 < lo0); lo0 = (ion_v4f)(((ion_v4i)lo1 & m) | ((ion_v4i)lo0 & ~m));
        m = (lo3 < lo2); lo2 = (ion_v4f)(((ion_v4i)lo3 & m) | ((ion_v4i)lo2 & ~m));
        m = (lo2 < lo0); lo0 = (ion_v4f)(((ion_v4i)lo2 & m) | ((ion_v4i)lo0 & ~m));
        m = (hi1 > hi0); hi0 = (ion_v4f)(((ion_v4i)hi1 & m) | ((ion_v4i)hi0 & ~m));
        m = (hi3 > hi2); hi2 = (ion_v4f)(((ion_v4i)hi3 & m) | ((ion_v4i)hi2 & ~m));
        m = (hi2 > hi0); hi0 = (ion_v4f)(((ion_v4i)hi2 & m) | ((ion_v4i)hi0 & ~m));
        a = lo0[0]; b = hi0[0];
        for (int k = 1; k < 4; k++) { if (lo0[k] < a) a = lo0[k]; if (hi0[k] > b) b = hi0[k]; }
        if (bad[0] | bad[1] | bad[2] | bad[3]) *nan = 1;
    } else {
        a = b = p[0];
        if (p[0] != p[0]) *nan = 1;
        i = 1;
    }
    for (; i < n; i++) {
        float v = p[i];
        if (v != v) *nan = 1;
        if (v < a) a = v;
        if (v > b) b = v;
    }
    *mn = a; *mx = b;
}
#endif

static inline void ion_minmax_d(const double *p, Py_ssize_t n, double *mn, double *mx, int *nan) {
    Py_ssize_t i = 0;
    double a, b;
    if (n >= 8) {
        ion_v2d lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3, v;
        ion_v2l bad = {0, 0}, m;
        __builtin_memcpy(&lo0, p, 16); __builtin_memcpy(&lo1, p + 2, 16);
        __builtin_memcpy(&lo2, p + 4, 16); __builtin_memcpy(&lo3, p + 6, 16);
        hi0 = lo0; hi1 = lo1; hi2 = lo2; hi3 = lo3;
        bad |= (lo0 != lo0) | (lo1 != lo1) | (lo2 != lo2) | (lo3 != lo3);
#define ION_STEP_D(K, LO, HI) \
        __builtin_memcpy(&v, p + i + K, 16); \
        bad |= (v != v); \
        m = (v < LO); LO = (ion_v2d)(((ion_v2l)v & m) | ((ion_v2l)LO & ~m)); \
        m = (v > HI); HI = (ion_v2d)(((ion_v2l)v & m) | ((ion_v2l)HI & ~m));
        for (i = 8; i + 8 <= n; i += 8) {
            ION_STEP_D(0, lo0, hi0) ION_STEP_D(2, lo1, hi1) ION_STEP_D(4, lo2, hi2) ION_STEP_D(6, lo3, hi3)
        }
#undef ION_STEP_D
        m = (lo1 < lo0); lo0 = (ion_v2d)(((ion_v2l)lo1 & m) | ((ion_v2l)lo0 & ~m));
        m = (lo3 < lo2); lo2 = (ion_v2d)(((ion_v2l)lo3 & m) | ((ion_v2l)lo2 & ~m));
        m = (lo2 < lo0); lo0 = (ion_v2d)(((ion_v2l)lo2 & m) | ((ion_v2l)lo0 & ~m));
        m = (hi1 > hi0); hi0 = (ion_v2d)(((ion_v2l)hi1 & m) | ((ion_v2l)hi0 & ~m));
        m = (hi3 > hi2); hi2 = (ion_v2d)(((ion_v2l)hi3 & m) | ((ion_v2l)hi2 & ~m));
        m = (hi2 > hi0); hi0 = (ion_v2d)(((ion_v2l)hi2 & m) | ((ion_v2l)hi0 & ~m));
        a = lo0[0] < lo0[1] ? lo0[0] : lo0[1];
        b = hi0[0] > hi0[1] ? hi0[0] : hi0[1];
        if (bad[0] | bad[1]) *nan = 1;
    } else {
        a = b = p[0];
        if (p[0] != p[0]) *nan = 1;
        i = 1;
    }
    for (; i < n; i++) {
        double v = p[i];
        if (v != v) *nan = 1;
        if (v < a) a = v;
        if (v > b) b = v;
    }
    *mn = a; *mx = b;
}

/* y[j] = (y[j] - (b0 + bs j)) * (w0 + ws j), j < n <= 64 (vectorises: one pointer, an int index). */
static inline void ion_affine_tile(float *__restrict y, Py_ssize_t n, float b0, float bs, float w0, float ws) {
    int m = (int)n;
    for (int j = 0; j < m; j++) {
        float fj = (float)j;
        y[j] = (y[j] - (b0 + bs * fj)) * (w0 + ws * fj);
    }
}

/* Symmetric correlation y[i] = c0 x[i] + sum_{k=h..1} ck (x[i-k] + x[i+k]) for i in [lo, hi),
   register-blocked: the taps are unrolled for h <= 8 so each output is stored once. */
#define ION_CONV_CASE(H) case H: \
    for (Py_ssize_t i = lo; i < hi; i++) { \
        float acc = x[i] * c[0]; \
        for (int k = H; k > 0; k--) acc += (x[i - k] + x[i + k]) * c[k]; \
        y[i] = acc; } \
    return 1;
static inline int ion_conv_fixed(const float *__restrict x, float *__restrict y, Py_ssize_t lo,
                                 Py_ssize_t hi, const float *__restrict c, Py_ssize_t h) {
    switch (h) {
        ION_CONV_CASE(1) ION_CONV_CASE(2) ION_CONV_CASE(3) ION_CONV_CASE(4)
        ION_CONV_CASE(5) ION_CONV_CASE(6) ION_CONV_CASE(7) ION_CONV_CASE(8)
        default: return 0;
    }
}
#undef ION_CONV_CASE

/* Sum (exact) of n samples, with 32-bit partial sums over chunks so that it vectorises. */
static inline long long ion_sum_u16(const unsigned short *p, Py_ssize_t n) {
    long long total = 0;
    for (Py_ssize_t lo = 0; lo < n; lo += 32768) {
        Py_ssize_t hi = lo + 32768 < n ? lo + 32768 : n;
        unsigned int acc = 0;
        for (Py_ssize_t i = lo; i < hi; i++) acc += p[i];
        total += acc;
    }
    return total;
}
static inline long long ion_sum_i16(const short *p, Py_ssize_t n) {
    long long total = 0;
    for (Py_ssize_t lo = 0; lo < n; lo += 32768) {
        Py_ssize_t hi = lo + 32768 < n ? lo + 32768 : n;
        int acc = 0;
        for (Py_ssize_t i = lo; i < hi; i++) acc += p[i];
        total += acc;
    }
    return total;
}

/* Sums of d = v - centre and d*d over |d| <= lim, and their count (float accumulation: at most a
   few hundred values of a few sigmas each). */
static inline Py_ssize_t ion_clipped_sums(const float *v, Py_ssize_t m, float centre, float lim,
                                          double *s1, double *s2) {
    Py_ssize_t j = 0, k = 0;
    float a1 = 0.0f, a2 = 0.0f;
#if defined(__SSE2__)
    __m128 c = _mm_set1_ps(centre), l = _mm_set1_ps(lim), absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 t1 = _mm_setzero_ps(), t2 = _mm_setzero_ps();
    __m128i cnt = _mm_setzero_si128();
    for (; j + 4 <= m; j += 4) {
        __m128 d = _mm_sub_ps(_mm_loadu_ps(v + j), c);
        __m128 keep = _mm_cmple_ps(_mm_and_ps(d, absmask), l);
        d = _mm_and_ps(d, keep);
        t1 = _mm_add_ps(t1, d);
        t2 = _mm_add_ps(t2, _mm_mul_ps(d, d));
        cnt = _mm_sub_epi32(cnt, _mm_castps_si128(keep));
    }
    float f1[4], f2[4]; int ci[4];
    _mm_storeu_ps(f1, t1); _mm_storeu_ps(f2, t2); _mm_storeu_si128((__m128i *)ci, cnt);
    a1 = (f1[0] + f1[1]) + (f1[2] + f1[3]);
    a2 = (f2[0] + f2[1]) + (f2[2] + f2[3]);
    k = (Py_ssize_t)ci[0] + ci[1] + ci[2] + ci[3];
#else
    /* The same 4 lanes and the same rounding order as the SSE2 path, so every architecture
       (aarch64 included: GCC turns this into NEON) gives the same bits for the same input. */
    float f1[4] = {0.0f, 0.0f, 0.0f, 0.0f}, f2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    Py_ssize_t ci[4] = {0, 0, 0, 0};
    for (; j + 4 <= m; j += 4) {
        for (int i = 0; i < 4; i++) {
            float d = v[j + i] - centre;
            int keep = fabsf(d) <= lim;
            d = keep ? d : 0.0f;
            f1[i] += d;
            f2[i] += d * d;
            ci[i] += keep;
        }
    }
    a1 = (f1[0] + f1[1]) + (f1[2] + f1[3]);
    a2 = (f2[0] + f2[1]) + (f2[2] + f2[3]);
    k = ci[0] + ci[1] + ci[2] + ci[3];
#endif
    for (; j < m; j++) {
        float d = v[j] - centre;
        if (fabsf(d) <= lim) { a1 += d; a2 += d * d; k++; }
    }
    *s1 = a1; *s2 = a2;
    return k;
}

/* min/max of each of the nq full 16-sample sub-blocks of p (NaN flagged). */
static inline void ion_sub16_f(const float *p, Py_ssize_t nq, float *qmin, float *qmax, int *nan) {
    Py_ssize_t q = 0;
#if defined(__SSE2__)
    __m128 bad = _mm_setzero_ps();
    for (; q < nq; q++) {
        const float *b = p + 16 * q;
        __m128 a0 = _mm_loadu_ps(b), a1 = _mm_loadu_ps(b + 4), a2 = _mm_loadu_ps(b + 8), a3 = _mm_loadu_ps(b + 12);
        bad = _mm_or_ps(bad, _mm_or_ps(_mm_cmpunord_ps(a0, a1), _mm_cmpunord_ps(a2, a3)));
        __m128 lo = _mm_min_ps(_mm_min_ps(a0, a1), _mm_min_ps(a2, a3));
        __m128 hi = _mm_max_ps(_mm_max_ps(a0, a1), _mm_max_ps(a2, a3));
        lo = _mm_min_ps(lo, _mm_shuffle_ps(lo, lo, _MM_SHUFFLE(1, 0, 3, 2)));
        hi = _mm_max_ps(hi, _mm_shuffle_ps(hi, hi, _MM_SHUFFLE(1, 0, 3, 2)));
        lo = _mm_min_ss(lo, _mm_shuffle_ps(lo, lo, _MM_SHUFFLE(2, 3, 0, 1)));
        hi = _mm_max_ss(hi, _mm_shuffle_ps(hi, hi, _MM_SHUFFLE(2, 3, 0, 1)));
        _mm_store_ss(qmin + q, lo);
        _mm_store_ss(qmax + q, hi);
    }
    if (_mm_movemask_ps(bad)) *nan = 1;
#endif
    for (; q < nq; q++) ion_minmax_f(p + 16 * q, 16, qmin + q, qmax + q, nan);
}
static inline void ion_sub16_d(const double *p, Py_ssize_t nq, double *qmin, double *qmax, int *nan) {
    Py_ssize_t q = 0;
#if defined(__SSE2__)
    __m128d bad = _mm_setzero_pd();
    for (; q < nq; q++) {
        const double *b = p + 16 * q;
        __m128d a0 = _mm_loadu_pd(b), a1 = _mm_loadu_pd(b + 2), a2 = _mm_loadu_pd(b + 4), a3 = _mm_loadu_pd(b + 6);
        __m128d a4 = _mm_loadu_pd(b + 8), a5 = _mm_loadu_pd(b + 10), a6 = _mm_loadu_pd(b + 12), a7 = _mm_loadu_pd(b + 14);
        bad = _mm_or_pd(bad, _mm_or_pd(_mm_or_pd(_mm_cmpunord_pd(a0, a1), _mm_cmpunord_pd(a2, a3)),
                                       _mm_or_pd(_mm_cmpunord_pd(a4, a5), _mm_cmpunord_pd(a6, a7))));
        __m128d lo = _mm_min_pd(_mm_min_pd(_mm_min_pd(a0, a1), _mm_min_pd(a2, a3)),
                                _mm_min_pd(_mm_min_pd(a4, a5), _mm_min_pd(a6, a7)));
        __m128d hi = _mm_max_pd(_mm_max_pd(_mm_max_pd(a0, a1), _mm_max_pd(a2, a3)),
                                _mm_max_pd(_mm_max_pd(a4, a5), _mm_max_pd(a6, a7)));
        lo = _mm_min_sd(lo, _mm_unpackhi_pd(lo, lo));
        hi = _mm_max_sd(hi, _mm_unpackhi_pd(hi, hi));
        _mm_store_sd(qmin + q, lo);
        _mm_store_sd(qmax + q, hi);
    }
    if (_mm_movemask_pd(bad)) *nan = 1;
#endif
    for (; q < nq; q++) ion_minmax_d(p + 16 * q, 16, qmin + q, qmax + q, nan);
}

/* Bit k set when position c+k can start a kept local maximum: x[c+k-1] < x[c+k], x[c+k] >= t
   and x[c+k+1] <= x[c+k] (a peak, or a plateau to check). Needs 1 <= c and c + 16 <= n - 1. */
static inline unsigned ion_maxmask_f(const float *x, Py_ssize_t c, double t) {
    unsigned m = 0;
#if defined(__SSE2__)
    /* x >= t with t a double: compare in double (exact), as SciPy does on float64 */
    for (int k = 0; k < 16; k += 4) {
        __m128 prev = _mm_loadu_ps(x + c + k - 1), cur = _mm_loadu_ps(x + c + k), next = _mm_loadu_ps(x + c + k + 1);
        __m128 ok = _mm_and_ps(_mm_cmplt_ps(prev, cur), _mm_cmple_ps(next, cur));
        int bits = _mm_movemask_ps(ok);
        if (bits) {
            __m128d lo = _mm_cvtps_pd(cur), hi = _mm_cvtps_pd(_mm_movehl_ps(cur, cur)), tt = _mm_set1_pd(t);
            bits &= _mm_movemask_pd(_mm_cmpge_pd(lo, tt)) | (_mm_movemask_pd(_mm_cmpge_pd(hi, tt)) << 2);
            m |= (unsigned)bits << k;
        }
    }
#else
    for (int k = 0; k < 16; k++) {
        float v = x[c + k];
        if (x[c + k - 1] < v && (double)v >= t && x[c + k + 1] <= v) m |= 1u << k;
    }
#endif
    return m;
}
static inline unsigned ion_maxmask_d(const double *x, Py_ssize_t c, double t) {
    unsigned m = 0;
#if defined(__SSE2__)
    __m128d tt = _mm_set1_pd(t);
    for (int k = 0; k < 16; k += 2) {
        __m128d prev = _mm_loadu_pd(x + c + k - 1), cur = _mm_loadu_pd(x + c + k), next = _mm_loadu_pd(x + c + k + 1);
        __m128d ok = _mm_and_pd(_mm_and_pd(_mm_cmplt_pd(prev, cur), _mm_cmple_pd(next, cur)), _mm_cmpge_pd(cur, tt));
        m |= (unsigned)_mm_movemask_pd(ok) << k;
    }
#else
    for (int k = 0; k < 16; k++) {
        double v = x[c + k];
        if (x[c + k - 1] < v && v >= t && x[c + k + 1] <= v) m |= 1u << k;
    }
#endif
    return m;
}
static inline int ion_ctz(unsigned m) { return __builtin_ctz(m); }

#endif /* IONSTREAM_CEXT_SIMD_H */
