/* attention_small.h -- the bf16 path's attention for narrow heads (attention_small.c): float32
 * products written on 16 key lanes, for head dimensions 1..ATT_SMALL_MAX_DH, where oneDNN's
 * bf16 products and the float32 kernel's OpenBLAS calls (K = the head dimension) are slow.
 * The arguments are ops.h's attention_forward / attention_backward's; assign: dq, dk, dv =
 * instead of +=. */
#ifndef MAPO_ATTENTION_SMALL_H
#define MAPO_ATTENTION_SMALL_H

#define ATT_SMALL_MAX_DH 16

/* 1 when this build runs the kernels below for head dimension Dh (AVX-512, Dh <= 16) */
int attention_small_applies(int Dh);
void attention_small_forward(float *out, float *lse, const float *q, const float *k,
                             const float *v, int B, int H, int Nq, int Nk, int Dh, double scale);
void attention_small_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *out, const float *lse, const float *q, const float *k,
                              const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                              int assign);
#endif
