/* exp16.h -- mapo_vexpf's vector steps on 16 AVX-512 lanes, for kernels that fuse exp into a
 * loop of their own (kernels.c's mapo_vexpf and GELU, attention_small.c). Include only where
 * __AVX512F__ is defined. */
#ifndef MAPO_EXP16_H
#define MAPO_EXP16_H
#include <immintrin.h>

/* the same operations in the same order as mapo_vexpf's AVX2 loop (kernels.c), so each lane's
   result is the same bits */
static inline __m512 exp16(__m512 x0) {
    const __m512 lo = _mm512_set1_ps(-87.0f), half = _mm512_set1_ps(0.5f);
    const __m512 v = _mm512_min_ps(_mm512_max_ps(x0, lo), _mm512_set1_ps(88.0f));
    const __m512 fn = _mm512_roundscale_ps(
        _mm512_fmadd_ps(v, _mm512_set1_ps(1.44269504088896341f), half),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(-2.12194440e-4f),
                                      _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), v));
    __m512 p = _mm512_set1_ps(1.3888889e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333333e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667e-1f));
    p = _mm512_fmadd_ps(p, r, half);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(fn), _mm512_set1_epi32(127)), 23);
    const __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x0, lo, _CMP_GE_OQ), y); /* below -87: 0 */
}
#endif
