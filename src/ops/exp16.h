/* exp16.h -- mapo_vexpf's vector steps on 16 AVX-512 lanes, for kernels that fuse exp into a
 * loop of their own (kernels.c's mapo_vexpf and GELU, attention_small.c). Include only where
 * __AVX512F__ is defined. */
#ifndef MAPO_EXP16_H
#define MAPO_EXP16_H
#include <immintrin.h>
#include <stdint.h>

#include "mapo/bf16.h"

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

/* 2^x on the lanes of keep, 0 on the others and below -126: x = n + f with n an integer and
   |f| <= 1/2 (exact), 2^f by a degree-6 polynomial fitted for relative error on [-1/2, 1/2]
   (at most 1.6 float32 units after float32 Horner steps: tools/fit_exp2.py, docs/PRECISION.md),
   times 2^n by vscalefps (exact) */
static inline __m512 exp2_16_masked(__m512 x, __mmask16 keep) {
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.5346039435826242e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339993323199451e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618488140404224e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    keep &= _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_GE_OQ);
    return _mm512_maskz_scalef_ps(keep, p, n);
}

/* the lanes of elements j .. j + 15 that lie below n (n > j) */
static inline __mmask16 tail_mask16(int64_t j, int64_t n) {
    return n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
}

/* s[j] = 2^(s[j] - shift) for j < nvalid and 0 for nvalid <= j < n (the padding of a row whose
   first nvalid elements are real; nvalid <= n), and its bf16 bits into copy when copy is not
   NULL, in the same pass; returns the row's sum */
static inline float exp2_shift_row(float *s, int64_t n, int64_t nvalid, float shift,
                                   uint16_t *copy) {
    const __m512 sh = _mm512_set1_ps(shift);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = tail_mask16(j, n);
        const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), sh);
        const __m512 e = exp2_16_masked(x, j < nvalid ? tail_mask16(j, nvalid) : 0);
        _mm512_mask_storeu_ps(s + j, m, e);
        if (copy) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
            _mm256_mask_storeu_epi16(copy + j, m, mapo_bf16_16(e));
#else
            for (int64_t i = j; i < n && i < j + 16; i++) copy[i] = mapo_bf16_bits(s[i]);
#endif
        }
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}
#endif
