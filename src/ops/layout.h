/* layout.h -- transposing copies between mapo's NCHW activations and the NHWC layout oneDNN's
 * bf16 convolutions choose, in 16x16 register tiles (layout.c). They stand in for oneDNN 2.6's
 * generic reorders of these layouts (jit:uni), which moved only ~15-25 GB/s on data that sits
 * in L2. The float ones also serve the transformer's NCHW <-> token layout in both precisions
 * (ops.h's nchw_to_nhwc_tiled / nhwc_to_nchw_tiled). Each is exact (a copy, or one add), or
 * rounds to bf16 as mapo_bf16_bits does. */
#ifndef MAPO_LAYOUT_H
#define MAPO_LAYOUT_H
#include <stdint.h>

/* dst[b][p][c] = bf16(src[b][c][p]), p over the HW positions */
void layout_nchw_to_nhwc_bf16(uint16_t *dst, const float *src, int64_t B, int64_t C,
                              int64_t HW);
/* dst[b][p][c] = src[b][c][p], bf16 bit patterns */
void layout_nchw_to_nhwc_u16(uint16_t *dst, const uint16_t *src, int64_t B, int64_t C,
                             int64_t HW);
/* dst[b][p][c] = src[b][c][p], or += when accumulate */
void layout_nchw_to_nhwc_f32(float *dst, const float *src, int64_t B, int64_t C, int64_t HW,
                             int accumulate);
/* dst[b][c][p] = src[b][p][c], or += when accumulate */
void layout_nhwc_to_nchw_f32(float *dst, const float *src, int64_t B, int64_t C, int64_t HW,
                             int accumulate);
#endif
