/* norms_vred.h -- the bf16 path's GroupNorm / LayerNorm backward (norms_vred.c): the _vred
 * sums of norms.inc, gamma's and beta's gradients summed in the passes that compute dx. The
 * arguments are norms.inc's backward's. */
#ifndef MAPO_NORMS_VRED_H
#define MAPO_NORMS_VRED_H
#include <stdint.h>

void group_norm_backward_fused(float *dx, float *dgamma, float *dbeta, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *gamma, int B, int C, int64_t HW, int G);
void layer_norm_backward_fused(float *dx, float *dgamma, float *dbeta, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *gamma, int64_t N, int C);
#endif
