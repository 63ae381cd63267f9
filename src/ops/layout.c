/* layout.c -- NCHW <-> NHWC transposing copies (layout.h).
 *
 * The tensor is cut into tiles of 16 channels x 16 positions, spread over the threads. A full
 * tile is 16 loads of 16 lanes, a 16x16 transpose in registers (AVX-512: unpack 32-bit, unpack
 * 64-bit, then two rounds of 128-bit lane shuffles) and 16 stores; a partial tile at the edges
 * (C or HW not a multiple of 16) and machines without AVX-512 take the scalar loop. Every
 * element is copied (or added to dst once, or rounded with mapo_bf16_bits' rule), so the
 * result does not depend on the path. */
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <stdint.h>

#include "mapo/bf16.h"
#include "mapo/ops.h"
#include "layout.h"

enum { T = 16 };
typedef enum {
    TO_NHWC_BF16, TO_NHWC_U16, TO_NHWC_F32, TO_NHWC_F32_ACC, TO_NCHW_F32, TO_NCHW_F32_ACC
} xpose_kind;

typedef struct {
    xpose_kind kind;
    void *dst;
    const void *src;
    int64_t C, HW;
} xpose;

/* one tile: channels c0..c0+nc, positions p0..p0+np of image b, element by element */
static void tile_scalar(const xpose *x, int64_t b, int64_t c0, int64_t nc, int64_t p0,
                        int64_t np) {
    const int64_t C = x->C, HW = x->HW, img = b * C * HW;
    for (int64_t c = c0; c < c0 + nc; c++)
        for (int64_t p = p0; p < p0 + np; p++) {
            const int64_t nchw = img + c * HW + p, nhwc = img + p * C + c;
            switch (x->kind) {
            case TO_NHWC_BF16:
                ((uint16_t *)x->dst)[nhwc] = mapo_bf16_bits(((const float *)x->src)[nchw]);
                break;
            case TO_NHWC_U16:
                ((uint16_t *)x->dst)[nhwc] = ((const uint16_t *)x->src)[nchw];
                break;
            case TO_NHWC_F32:
                ((float *)x->dst)[nhwc] = ((const float *)x->src)[nchw];
                break;
            case TO_NHWC_F32_ACC:
                ((float *)x->dst)[nhwc] += ((const float *)x->src)[nchw];
                break;
            case TO_NCHW_F32:
                ((float *)x->dst)[nchw] = ((const float *)x->src)[nhwc];
                break;
            case TO_NCHW_F32_ACC:
                ((float *)x->dst)[nchw] += ((const float *)x->src)[nhwc];
                break;
            }
        }
}

#ifdef __AVX512F__
/* r[i] lane j -> r[j] lane i */
static inline void tr16(__m512 r[T]) {
    __m512 t[T];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4i+m], 128-bit lane L: column 4L+m of rows 4i..4i+3 */
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* column 4L+m = lane L of r[m], r[4+m], r[8+m], r[12+m] */
    for (int m = 0; m < 4; m++) {
        const __m512 u0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
        const __m512 u1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xee);
        const __m512 v0 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
        const __m512 v1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xee);
        t[m] = _mm512_shuffle_f32x4(u0, v0, 0x88);
        t[4 + m] = _mm512_shuffle_f32x4(u0, v0, 0xdd);
        t[8 + m] = _mm512_shuffle_f32x4(u1, v1, 0x88);
        t[12 + m] = _mm512_shuffle_f32x4(u1, v1, 0xdd);
    }
    for (int i = 0; i < T; i++) r[i] = t[i];
}

static void tile_avx512(const xpose *x, int64_t b, int64_t c0, int64_t p0) {
    const int64_t C = x->C, HW = x->HW, img = b * C * HW;
    __m512 r[T];
    if (x->kind == TO_NHWC_U16) {
        for (int i = 0; i < T; i++)
            r[i] = _mm512_castsi512_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                (const __m256i *)((const uint16_t *)x->src + img + (c0 + i) * HW + p0))));
        tr16(r);
        for (int j = 0; j < T; j++)
            _mm256_storeu_si256((__m256i *)((uint16_t *)x->dst + img + (p0 + j) * C + c0),
                                _mm512_cvtepi32_epi16(_mm512_castps_si512(r[j])));
        return;
    }
    if (x->kind == TO_NHWC_BF16 || x->kind == TO_NHWC_F32 || x->kind == TO_NHWC_F32_ACC) {
        for (int i = 0; i < T; i++)
            r[i] = _mm512_loadu_ps((const float *)x->src + img + (c0 + i) * HW + p0);
        tr16(r);
        for (int j = 0; j < T; j++) {
            const int64_t at = img + (p0 + j) * C + c0;
            if (x->kind == TO_NHWC_BF16) {
                _mm256_storeu_si256((__m256i *)((uint16_t *)x->dst + at), mapo_bf16_16(r[j]));
                continue;
            }
            float *d = (float *)x->dst + at;
            _mm512_storeu_ps(d, x->kind == TO_NHWC_F32_ACC ? _mm512_add_ps(_mm512_loadu_ps(d), r[j])
                                                           : r[j]);
        }
        return;
    }
    for (int j = 0; j < T; j++) r[j] = _mm512_loadu_ps((const float *)x->src + img + (p0 + j) * C + c0);
    tr16(r);
    for (int i = 0; i < T; i++) {
        float *d = (float *)x->dst + img + (c0 + i) * HW + p0;
        _mm512_storeu_ps(d, x->kind == TO_NCHW_F32_ACC ? _mm512_add_ps(_mm512_loadu_ps(d), r[i])
                                                       : r[i]);
    }
}
#endif

static void run(const xpose *x, int64_t B) {
    const int64_t ct = (x->C + T - 1) / T, pt = (x->HW + T - 1) / T;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < B * ct * pt; t++) {
        const int64_t b = t / (ct * pt), c0 = (t / pt) % ct * T, p0 = t % pt * T;
        const int64_t nc = x->C - c0 < T ? x->C - c0 : T, np = x->HW - p0 < T ? x->HW - p0 : T;
#ifdef __AVX512F__
        if (nc == T && np == T) {
            tile_avx512(x, b, c0, p0);
            continue;
        }
#endif
        tile_scalar(x, b, c0, nc, p0, np);
    }
}

void layout_nchw_to_nhwc_bf16(uint16_t *dst, const float *src, int64_t B, int64_t C,
                              int64_t HW) {
    run(&(xpose){TO_NHWC_BF16, dst, src, C, HW}, B);
}
void layout_nchw_to_nhwc_u16(uint16_t *dst, const uint16_t *src, int64_t B, int64_t C,
                             int64_t HW) {
    run(&(xpose){TO_NHWC_U16, dst, src, C, HW}, B);
}
void layout_nchw_to_nhwc_f32(float *dst, const float *src, int64_t B, int64_t C, int64_t HW,
                             int accumulate) {
    run(&(xpose){accumulate ? TO_NHWC_F32_ACC : TO_NHWC_F32, dst, src, C, HW}, B);
}
void layout_nhwc_to_nchw_f32(float *dst, const float *src, int64_t B, int64_t C, int64_t HW,
                             int accumulate) {
    run(&(xpose){accumulate ? TO_NCHW_F32_ACC : TO_NCHW_F32, dst, src, C, HW}, B);
}

void nchw_to_nhwc_tiled(float *y, const float *x, int B, int C, int64_t HW, int accumulate) {
    layout_nchw_to_nhwc_f32(y, x, B, C, HW, accumulate);
}
void nhwc_to_nchw_tiled(float *y, const float *x, int B, int C, int64_t HW, int accumulate) {
    layout_nhwc_to_nchw_f32(y, x, B, C, HW, accumulate);
}
