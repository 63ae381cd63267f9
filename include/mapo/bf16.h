/* bf16.h -- float32 -> bfloat16 bits, round to nearest even, as torch's .bfloat16() (a NaN
 * becomes the quiet NaN 0x7fc0). Inline: the bf16 engine rounds every operand with it in
 * vectorised loops; safetensors' writer uses the same function for bf16 files. */
#ifndef MAPO_BF16_H
#define MAPO_BF16_H
#include <stdint.h>
#include <string.h>

static inline uint16_t mapo_bf16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#ifdef __AVX512F__
#include <immintrin.h>
/* mapo_bf16_bits on 16 lanes */
static inline __m256i mapo_bf16_16(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                              _mm512_set1_epi32(0x7fc0));
    return _mm512_cvtepi32_epi16(r);
}
#endif
#endif
