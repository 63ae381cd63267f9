/* ops.h -- CPU compute kernels: forward / backward pairs on raw arrays.
 *
 * Conventions (after llm.c):
 *  - outputs first, then inputs, then weights, then sizes.
 *  - Layouts are PyTorch's: images NCHW, linear weights [out, in], conv weights
 *    [Cout, Cin, K, K]; token tensors [N, C] row-major (N = batch * tokens).
 *  - Every backward ACCUMULATES (+=) into each gradient it is given; any gradient
 *    pointer may be NULL, meaning "not needed".
 *  - Each op exists twice, compiled from one source (src/ops/ops_impl.inc):
 *    float (no suffix) for real work, double (_f64) for the finite-difference
 *    gradient tests. The code tested is the code that runs.
 *  - Kernels parallelise with OpenMP and use BLAS for matrix products. Results are
 *    deterministic for a fixed thread count (static schedules, no atomics).
 */
#ifndef MAPO_OPS_H
#define MAPO_OPS_H
#include <stdint.h>

#define MAPO_OPS_DECLARE(T, S)                                                              \
/* y[B,Cout,Ho,Wo] = conv(x[B,Cin,H,W], w[Cout,Cin,K,K]) + b[Cout] (b may be NULL).      \
   Ho = (H + 2*pad - K)/stride + 1. Zero padding. */                                     \
void conv2d_forward##S(T *y, const T *x, const T *w, const T *b, int B, int Cin, int H,   \
                       int W, int Cout, int K, int stride, int pad);                      \
void conv2d_backward##S(T *dx, T *dw, T *db, const T *dy, const T *x, const T *w, int B,  \
                        int Cin, int H, int W, int Cout, int K, int stride, int pad);     \
/* y[N,out] = x[N,in] @ w[out,in]^T + b[out] (b may be NULL) */                           \
void linear_forward##S(T *y, const T *x, const T *w, const T *b, int64_t N, int in,      \
                       int out);                                                          \
void linear_backward##S(T *dx, T *dw, T *db, const T *dy, const T *x, const T *w,        \
                        int64_t N, int in, int out);                                      \
/* GroupNorm over x[B,C,HW] with G groups; gamma/beta [C]; saves mean/rstd [B*G]. */     \
void group_norm_forward##S(T *y, T *mean, T *rstd, const T *x, const T *gamma,           \
                           const T *beta, int B, int C, int64_t HW, int G, double eps);  \
void group_norm_backward##S(T *dx, T *dgamma, T *dbeta, const T *dy, const T *x,         \
                            const T *mean, const T *rstd, const T *gamma, int B, int C,   \
                            int64_t HW, int G);                                           \
/* GroupNorm's output from x and the forward's saved mean / rstd: the forward's y, bit for   \
   bit (either precision's forward: they differ only in how they sum the statistics) */   \
void group_norm_apply##S(T *y, const T *x, const T *mean, const T *rstd, const T *gamma,  \
                         const T *beta, int B, int C, int64_t HW, int G);                 \
/* LayerNorm over the last dim of x[N,C]; gamma/beta [C]; saves mean/rstd [N]. */        \
void layer_norm_forward##S(T *y, T *mean, T *rstd, const T *x, const T *gamma,           \
                           const T *beta, int64_t N, int C, double eps);                  \
/* ... also writing each row's mean and rstd in double to st [N][2] (NULL: not) */         \
void layer_norm_forward_st##S(T *y, T *mean, T *rstd, double *st, const T *x,             \
                              const T *gamma, const T *beta, int64_t N, int C,             \
                              double eps);                                                 \
/* LayerNorm's output from x and the forward's st: the forward's y, bit for bit (either     \
   precision's forward) */                                                                 \
void layer_norm_apply##S(T *y, const T *x, const double *st, const T *gamma, const T *beta, \
                         int64_t N, int C);                                                \
void layer_norm_backward##S(T *dx, T *dgamma, T *dbeta, const T *dy, const T *x,         \
                            const T *mean, const T *rstd, const T *gamma, int64_t N,      \
                            int C);                                                       \
/* elementwise: y = x*sigmoid(x); y = gelu(x) (exact, erf) */                             \
void silu_forward##S(T *y, const T *x, int64_t n);                                        \
void silu_backward##S(T *dx, const T *dy, const T *x, int64_t n);                         \
void gelu_forward##S(T *y, const T *x, int64_t n);                                        \
void gelu_backward##S(T *dx, const T *dy, const T *x, int64_t n);                         \
/* GEGLU (diffusers): x[N, 2*D] -> y[N,D] = x[:, :D] * gelu(x[:, D:]) */                  \
void geglu_forward##S(T *y, const T *x, int64_t N, int D);                                \
void geglu_backward##S(T *dx, const T *dy, const T *x, int64_t N, int D);                 \
/* Scaled dot-product attention, heads packed in the channel dim as diffusers does:      \
   q[B,Nq,H*Dh], k,v[B,Nk,H*Dh] -> out[B,Nq,H*Dh]. Memory-efficient: only the row         \
   log-sum-exp lse[B,H,Nq] is saved; backward recomputes the probabilities tile by tile   \
   from q, k, lse and also reads out. scale is usually 1/sqrt(Dh). */                    \
void attention_forward##S(T *out, T *lse, const T *q, const T *k, const T *v, int B,     \
                          int H, int Nq, int Nk, int Dh, double scale);                   \
void attention_backward##S(T *dq, T *dk, T *dv, const T *dout, const T *out,             \
                           const T *lse, const T *q, const T *k, const T *v, int B, int H,  \
                           int Nq, int Nk, int Dh, double scale);                          \
/* nearest 2x upsample: x[B*C,H,W] -> y[B*C,2H,2W] */                                     \
void upsample_nearest2x_forward##S(T *y, const T *x, int64_t BC, int H, int W);            \
void upsample_nearest2x_backward##S(T *dx, const T *dy, int64_t BC, int H, int W);         \
/* diffusers get_timestep_embedding: t[N] -> y[N,dim]; backward gives dt[N] */           \
void timestep_embedding_forward##S(T *y, const T *t, int64_t N, int dim,                   \
                                   int flip_sin_to_cos, double freq_shift);               \
void timestep_embedding_backward##S(T *dt, const T *dy, const T *t, int64_t N, int dim,    \
                                    int flip_sin_to_cos, double freq_shift);              \
/* [B,C,HW] <-> [B,HW,C] */                                                                \
void nchw_to_nhwc##S(T *y, const T *x, int B, int C, int64_t HW);                          \
void nhwc_to_nchw##S(T *y, const T *x, int B, int C, int64_t HW);                          \
/* channel concat: a[B,Ca,HW], b[B,Cb,HW] -> y[B,Ca+Cb,HW]; backward splits dy */         \
void concat_channels_forward##S(T *y, const T *a, const T *b, int B, int Ca, int Cb,      \
                                int64_t HW);                                              \
void concat_channels_backward##S(T *da, T *db, const T *dy, int B, int Ca, int Cb,        \
                                 int64_t HW);                                             \
/* y[B,C,HW] = x[B,C,HW] + v[B,C] broadcast over HW; backward dv[b,c] += sum_hw dy */     \
void add_channel_bias_forward##S(T *y, const T *x, const T *v, int B, int C, int64_t HW); \
void add_channel_bias_backward##S(T *dv, const T *dy, int B, int C, int64_t HW);

MAPO_OPS_DECLARE(float, )
MAPO_OPS_DECLARE(double, _f64)
#undef MAPO_OPS_DECLARE

/* ---- mixed precision (docs/PRECISION.md) ------------------------------------------------
 * The precision of the matrix products and convolutions. MAPO_F32 is the float path above,
 * bit for bit. MAPO_BF16 works as torch.autocast(dtype=bfloat16): the operands (activations,
 * weights, output gradients) are rounded to bfloat16, products accumulate in float32, results
 * and gradients are float32 and, as above, accumulate (+=) into the gradients given.
 * The engine behind them is the backend's business (oneDNN on the CPU, see src/ops/engine.c);
 * callers see float32 arrays only. */
typedef enum { MAPO_F32 = 0, MAPO_BF16 = 1 } mapo_precision;

void conv2d_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int B, int Cin, int H, int W, int Cout, int K, int stride,
                       int pad);
void conv2d_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int B, int Cin, int H, int W, int Cout,
                        int K, int stride, int pad);
void linear_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int64_t N, int in, int out);
void linear_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int64_t N, int in, int out);
/* GroupNorm / LayerNorm: MAPO_F32 the kernels above (their sums in index order, bit for bit
   what mapo always computed); MAPO_BF16 the same formulas with the double sums added in
   vector lanes (norms.inc), several times faster and equal up to double rounding. */
void group_norm_forward_mp(mapo_precision p, float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int B, int C, int64_t HW,
                           int G, double eps);
void group_norm_backward_mp(mapo_precision p, float *dx, float *dgamma, float *dbeta,
                            const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *gamma, int B, int C, int64_t HW,
                            int G);
void layer_norm_forward_mp(mapo_precision p, float *y, float *mean, float *rstd, const float *x,
                           const float *gamma, const float *beta, int64_t N, int C, double eps);
void layer_norm_forward_st_mp(mapo_precision p, float *y, float *mean, float *rstd, double *st,
                              const float *x, const float *gamma, const float *beta, int64_t N,
                              int C, double eps);
void layer_norm_backward_mp(mapo_precision p, float *dx, float *dgamma, float *dbeta,
                            const float *dy, const float *x, const float *mean,
                            const float *rstd, const float *gamma, int64_t N, int C);
/* The memory-efficient attention above with bf16 operands for its products (the softmax and
   every output / gradient float32); heads narrower than 32 keep float32 products (a kernel of
   their own up to head dim 16 in bf16 runs, the float32 kernel above). Its backward reads q,
   k and v only as those bf16 operands, so the forward can keep them for it (keep:
   attention_kept_bf16 elements, or NULL) and the backward take them (kept: the forward's keep;
   q, k, v are then not read and may be NULL) instead of the float32 tensors: the same bits, at
   half their bytes where the head dim is a multiple of 32 (the kept rows are padded to one).
   assign: dq, dk and dv = instead of += (the float32 kernel, which adds, gets them zeroed
   first). */
int64_t attention_kept_bf16(mapo_precision p, int B, int H, int Nq, int Nk, int Dh);
void attention_forward_mp(mapo_precision p, float *out, float *lse, const float *q,
                          const float *k, const float *v, int B, int H, int Nq, int Nk, int Dh,
                          double scale, uint16_t *keep);
void attention_backward_mp(mapo_precision p, float *dq, float *dk, float *dv, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                           const uint16_t *kept, int assign);
/* The bf16 convolution / linear forward from an input already rounded to bf16 (x16 as below):
   the same numbers as conv2d_forward_mp / linear_forward_mp with MAPO_BF16 and the float32 x,
   without converting x again for every consumer. */
void conv2d_forward_bf16x(float *y, const uint16_t *x16, const float *w, const float *b, int B,
                          int Cin, int H, int W, int Cout, int K, int stride, int pad);
void linear_forward_bf16x(float *y, const uint16_t *x16, const float *w, const float *b,
                          int64_t N, int in, int out);
/* The weight gradients of the bf16 convolution / linear from an input already rounded to bf16
   (x16: bf16 bit patterns, round to nearest even; a linear's in x's layout, a convolution's in
   NHWC order as mapo_round_bf16_nhwc writes it); dx and db as above. The same
   numbers as conv2d_backward_mp / linear_backward_mp with MAPO_BF16 and the float32 x, while
   a caller keeps half the bytes for backward. dx_assign: dx = instead of dx += (a gradient
   buffer nothing wrote yet need not be zeroed first). */
void conv2d_backward_bf16x(float *dx, float *dw, float *db, const float *dy, const uint16_t *x16,
                           const float *w, int B, int Cin, int H, int W, int Cout, int K,
                           int stride, int pad, int dx_assign);
void linear_backward_bf16x(float *dx, float *dw, float *db, const float *dy, const uint16_t *x16,
                           const float *w, int64_t N, int in, int out, int dx_assign);
/* A frozen weight held in bf16 (w16: bf16 bits, OIHW / [out, in], round to nearest even of the
   float32 weight): the bf16 convolution / linear forward, from x (float32) or, when x16 is not
   NULL, its bf16 copy as above, and the backward's dx += (no weight gradient: the weight is
   frozen). The same primitives and bf16 operands as conv2d_forward_mp / conv2d_backward_mp /
   linear_forward_mp / linear_backward_mp with MAPO_BF16 and the float32 weight (and as
   the *_bf16x forwards when x16 is given), so the same numbers, while the weight takes half
   the memory and converts into the primitives' layouts from half the bytes. */
void conv2d_forward_w16(float *y, const float *x, const uint16_t *x16, const uint16_t *w16,
                        const float *b, int B, int Cin, int H, int W, int Cout, int K, int stride,
                        int pad);
void conv2d_backward_data_w16(float *dx, const float *dy, const uint16_t *w16, int B, int Cin,
                              int H, int W, int Cout, int K, int stride, int pad);
void linear_forward_w16(float *y, const float *x, const uint16_t *x16, const uint16_t *w16,
                        const float *b, int64_t N, int in, int out);
void linear_backward_data_w16(float *dx, const float *dy, const uint16_t *w16, int64_t N, int in,
                              int out);
/* nchw_to_nhwc / nhwc_to_nchw in float (x[B,C,HW] <-> y[B,HW,C]) by 16x16 register tiles,
   y = or, when accumulate, y += the transpose: the same values (copies, one add). What mapo's
   models call; the plain kernels above stay as the float twin of the float64 reference. */
void nchw_to_nhwc_tiled(float *y, const float *x, int B, int C, int64_t HW, int accumulate);
void nhwc_to_nchw_tiled(float *y, const float *x, int B, int C, int64_t HW, int accumulate);
/* dst = bf16(src), round to nearest even (NaN stays NaN) */
void mapo_round_bf16(uint16_t *dst, const float *src, int64_t n);
/* the same rounding of an NCHW tensor, written in NHWC order (dst[b][p][c] = bf16(src[b][c][p])):
   the x16 of the bf16 convolutions */
void mapo_round_bf16_nhwc(uint16_t *dst, const float *src, int64_t B, int64_t C, int64_t HW);
/* exp in place over a row (the vectorised exp of the float kernels; inputs <= 88) */
void mapo_vexpf(float *x, int n);
/* 1 when the machine does p natively and fast (bf16: AVX512-BF16 or AMX on the CPU). */
int mapo_precision_native(mapo_precision p);
/* 1 when the machine can run p at all (bf16: oneDNN emulates it from AVX-512 up). */
int mapo_precision_available(mapo_precision p);
/* The engine's matrix-product ceiling: GFLOP/s of an n x n x n product in precision p, best of
   reps runs (the utilisation probe of mapo bench). */
double mapo_gemm_ceiling_gflops(mapo_precision p, int n, int reps);
/* Bytes the bf16 engine's grow-only workspaces hold now (operand copies, outputs,
   scratchpads, the attention's packs and per-thread tiles): memory outside the tape. */
size_t mapo_engine_workspace_bytes(void);

#endif
