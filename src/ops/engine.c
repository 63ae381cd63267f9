/* engine.c -- the mixed-precision convolutions and matrix products of ops.h (MAPO_F32 / MAPO_BF16).
 * MAPO_F32 calls the float kernels of kernels.c, unchanged. MAPO_BF16 is being built. */
#include "mapo/ops.h"

void conv2d_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int B, int Cin, int H, int W, int Cout, int K, int stride,
                       int pad) {
    (void)p;
    conv2d_forward(y, x, w, b, B, Cin, H, W, Cout, K, stride, pad);
}
void conv2d_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int B, int Cin, int H, int W, int Cout,
                        int K, int stride, int pad) {
    (void)p;
    conv2d_backward(dx, dw, db, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
}
void linear_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int64_t N, int in, int out) {
    (void)p;
    linear_forward(y, x, w, b, N, in, out);
}
void linear_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int64_t N, int in, int out) {
    (void)p;
    linear_backward(dx, dw, db, dy, x, w, N, in, out);
}
int mapo_precision_native(mapo_precision p) { return p == MAPO_F32; }
double mapo_gemm_ceiling_gflops(mapo_precision p, int n, int reps) {
    (void)p; (void)n; (void)reps;
    return 0;
}
