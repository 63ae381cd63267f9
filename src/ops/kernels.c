/* kernels.c -- instantiates kernels.inc for float and for double (see ops.h). */
#include <cblas.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "norms_vred.h"

/* exp over a row, written so gcc vectorises it (AVX2 / AVX-512): x = n ln2 + r with
   |r| <= ln2/2, exp(r) by a degree-6 Taylor polynomial (relative error < 2e-7 on that range,
   about 1-2 ulp), times 2^n built in the exponent bits. Inputs below -87 flush to 0 (softmax
   arguments are <= 0 after the max shift). libm's expf is a scalar call per element and was 18%
   of a training step in attention. */
static inline float expf_poly(float v) {
    if (v != v) return v; /* NaN: propagate (the int conversion below is undefined for it) */
    v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
    const float fn = floorf(v * 1.44269504088896341f + 0.5f);
    const float r = (v - fn * 0.693359375f) - fn * -2.12194440e-4f;
    float p = 1.3888889e-3f;
    p = p * r + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)fn + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return p * sc;
}
#ifdef __AVX512F__
#include "exp16.h"
#endif
void mapo_vexpf(float *restrict x, int n) {
    int i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, exp16(_mm512_loadu_ps(x + i)));
#endif
#ifdef __AVX2__
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    const __m256 l2e = _mm256_set1_ps(1.44269504088896341f), half = _mm256_set1_ps(0.5f);
    const __m256 c1 = _mm256_set1_ps(0.693359375f), c2 = _mm256_set1_ps(-2.12194440e-4f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x0 = _mm256_loadu_ps(x + i);
        const __m256 v = _mm256_min_ps(_mm256_max_ps(x0, lo), hi);
        const __m256 fn = _mm256_floor_ps(_mm256_fmadd_ps(v, l2e, half));
        const __m256 r = _mm256_fnmadd_ps(fn, c2, _mm256_fnmadd_ps(fn, c1, v));
        __m256 p = _mm256_set1_ps(1.3888889e-3f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3333333e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1666667e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666667e-1f));
        p = _mm256_fmadd_ps(p, r, half);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        const __m256i e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
        __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        y = _mm256_and_ps(y, _mm256_cmp_ps(x0, lo, _CMP_GE_OQ)); /* below -87: 0 */
        _mm256_storeu_ps(x + i, y);
    }
#endif
    for (; i < n; i++) x[i] = x[i] < -87.0f ? 0.0f : expf_poly(x[i]);
}
/* Normal cdf and x*pdf over a row, for GELU / GEGLU: cdf = 0.5 (1 + erf(x / sqrt 2)),
   xpdf = x exp(-x^2/2) / sqrt(2 pi). The float build uses erf from Abramowitz & Stegun 7.1.26
   (absolute error <= 1.5e-7, below float32 resolution of cdf) with the polynomial exp above,
   vectorised with AVX2; libm's scalar erff/expf were 8% of a training step. */
static void normal_cdf_xpdf(const float *restrict x, float *restrict cdf, float *restrict xpdf,
                            int n) {
    int i = 0;
#ifdef __AVX512F__
    { /* the AVX2 loop's operations on 16 lanes (exp16: mapo_vexpf's), the same bits per lane */
        const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
        const __m512 rs2 = _mm512_set1_ps(0.70710678118654752f);
        const __m512 p = _mm512_set1_ps(0.3275911f), r2pi = _mm512_set1_ps(0.39894228040143268f);
        const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
        for (; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_loadu_ps(x + i);
            const __m512 z = _mm512_mul_ps(v, rs2);
            const __m512 az = _mm512_castsi512_ps(
                _mm512_andnot_si512(sign, _mm512_castps_si512(z)));
            const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(p, az, one));
            __m512 poly = _mm512_set1_ps(1.061405429f);
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
            poly = _mm512_mul_ps(poly, t);
            const __m512 ex = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
            __m512 erfa = _mm512_sub_ps(one, _mm512_mul_ps(poly, ex));
            erfa = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(erfa),
                _mm512_and_si512(_mm512_castps_si512(z), sign))); /* the sign of z */
            _mm512_storeu_ps(cdf + i, _mm512_mul_ps(half, _mm512_add_ps(one, erfa)));
            _mm512_storeu_ps(xpdf + i, _mm512_mul_ps(_mm512_mul_ps(v, ex), r2pi));
        }
    }
#endif
#ifdef __AVX2__
    const __m256 sign_mask = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 half = _mm256_set1_ps(0.5f), rs2 = _mm256_set1_ps(0.70710678118654752f);
    const __m256 p = _mm256_set1_ps(0.3275911f), r2pi = _mm256_set1_ps(0.39894228040143268f);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 z = _mm256_mul_ps(v, rs2);
        const __m256 az = _mm256_andnot_ps(sign_mask, z);
        const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(p, az, one));
        __m256 poly = _mm256_set1_ps(1.061405429f);
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
        poly = _mm256_mul_ps(poly, t);
        float e[8];
        _mm256_storeu_ps(e, _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
        mapo_vexpf(e, 8); /* exp(-z^2) = exp(-x^2/2), also the pdf's exponential */
        const __m256 ex = _mm256_loadu_ps(e);
        __m256 erfa = _mm256_sub_ps(one, _mm256_mul_ps(poly, ex)); /* erf(|z|) */
        erfa = _mm256_or_ps(erfa, _mm256_and_ps(z, sign_mask));     /* copy the sign of z */
        _mm256_storeu_ps(cdf + i, _mm256_mul_ps(half, _mm256_add_ps(one, erfa)));
        _mm256_storeu_ps(xpdf + i, _mm256_mul_ps(_mm256_mul_ps(v, ex), r2pi));
    }
#endif
    for (; i < n; i++) {
        cdf[i] = 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
        xpdf[i] = x[i] * expf(-0.5f * x[i] * x[i]) * 0.39894228040143268f;
    }
}
static void normal_cdf_xpdf_f64(const double *x, double *cdf, double *xpdf, int n) {
    for (int i = 0; i < n; i++) {
        cdf[i] = 0.5 * (1.0 + erf(x[i] * M_SQRT1_2));
        xpdf[i] = x[i] * exp(-0.5 * x[i] * x[i]) * 0.39894228040143268;
    }
}
static void vexp_inplace_f64(double *x, int n) {
    for (int i = 0; i < n; i++) x[i] = exp(x[i]);
}

#define PRAGMA_(x) _Pragma(#x)
#define RED1(a)
#define RED2(a, b)
#define REAL float
#define SFX
#define VEXP mapo_vexpf
#define CDFPDF normal_cdf_xpdf
#define GEMM cblas_sgemm
#define EXP expf
#define ERF erff
#define SIN sinf
#define COS cosf
#include "kernels.inc"
#undef REAL
#undef SFX
#undef VEXP
#undef CDFPDF
#undef GEMM
#undef EXP
#undef ERF
#undef SIN
#undef COS

#define REAL double
#define SFX _f64
#define VEXP vexp_inplace_f64
#define CDFPDF normal_cdf_xpdf_f64
#define GEMM cblas_dgemm
#define EXP exp
#define ERF erf
#define SIN sin
#define COS cos
#include "kernels.inc"
#undef REAL
#undef SFX
#undef RED1
#undef RED2

/* the norms' forward with vectorised sums (norms.inc), for MAPO_BF16; their backward is
   norms_vred.c's; ops.h declares only the _mp entry points below */
void group_norm_forward_vred(float *y, float *mean, float *rstd, const float *x,
                             const float *gamma, const float *beta, int B, int C, int64_t HW,
                             int G, double eps);
void layer_norm_forward_vred(float *y, float *mean, float *rstd, const float *x,
                             const float *gamma, const float *beta, int64_t N, int C,
                             double eps);
void layer_norm_forward_st_vred(float *y, float *mean, float *rstd, double *st, const float *x,
                                const float *gamma, const float *beta, int64_t N, int C,
                                double eps);
#define REAL float
#define SFX _vred
#define RED1(a) PRAGMA_(omp simd reduction(+ : a))
#define RED2(a, b) PRAGMA_(omp simd reduction(+ : a, b))
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)
#define NORMS_FORWARD_ONLY
#include "norms.inc"
#undef NORMS_FORWARD_ONLY
#undef FN
#undef CAT
#undef CAT_

void group_norm_forward_mp(mapo_precision p, float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int B, int C, int64_t HW,
                           int G, double eps) {
    (p == MAPO_F32 ? group_norm_forward : group_norm_forward_vred)(y, mean, rstd, x, gamma, beta,
                                                                   B, C, HW, G, eps);
}
void group_norm_backward_mp(mapo_precision p, float *dx, float *dgamma, float *dbeta,
                            const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *gamma, int B, int C, int64_t HW,
                            int G) {
    (p == MAPO_F32 ? group_norm_backward : group_norm_backward_fused)(dx, dgamma, dbeta, dy, x,
                                                                     mean, rstd, gamma, B, C, HW,
                                                                     G);
}
void layer_norm_forward_mp(mapo_precision p, float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int64_t N, int C, double eps) {
    (p == MAPO_F32 ? layer_norm_forward : layer_norm_forward_vred)(y, mean, rstd, x, gamma, beta,
                                                                   N, C, eps);
}
void layer_norm_forward_st_mp(mapo_precision p, float *y, float *mean, float *rstd, double *st,
                              const float *x, const float *gamma, const float *beta, int64_t N,
                              int C, double eps) {
    (p == MAPO_F32 ? layer_norm_forward_st : layer_norm_forward_st_vred)(y, mean, rstd, st, x,
                                                                         gamma, beta, N, C, eps);
}
void layer_norm_backward_mp(mapo_precision p, float *dx, float *dgamma, float *dbeta,
                            const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *gamma, int64_t N, int C) {
    (p == MAPO_F32 ? layer_norm_backward : layer_norm_backward_fused)(dx, dgamma, dbeta, dy, x,
                                                                     mean, rstd, gamma, N, C);
}
