/* test_ops.c -- every op's backward against float64 central finite differences, the float
 * build against the double build, and forward against naive references.
 *
 * FD check: loss = sum(r * y) with random r; analytic d loss / d input from the _f64 backward
 * (with dy = r) against (loss(x + h) - loss(x - h)) / 2h, h = 1e-6, on up to 64 random
 * elements of each input. Central differences in double have truncation error O(h^2 * f''') ~
 * 1e-12 and rounding error ~ 1e-16 * |loss| / h ~ 1e-10 relative, so 1e-6 relative (per input
 * tensor, L2 over the probed elements) leaves a wide margin while a wrong term fails by O(1).
 * float vs double: same code in float32; 1e-5 relative covers float32 rounding through one op.
 * Also: backward accumulates (two calls = twice one call); every subset of NULL gradients
 * leaves the others bit-identical (multi-gradient ops); forward of every op against naive
 * loops (conv: stride 2, pad 1/2, K = 1/3/5, odd non-square, no bias; attention: Nq != Nk,
 * both sides of the 64-row tile, Dh = 2/3/5/8; saved mean/rstd/lse too); the float timestep
 * embedding against torch float32 values; same call twice gives identical bits. Each check was
 * seen to fail on a planted bug (sign flip in col2im, dropped GroupNorm term, unbiased LayerNorm
 * variance, tanh GELU, GEGLU halves swapped, '=' for '+=', double-precision timestep freqs,
 * padding offset consistent in forward and backward, ignored NULL gradient). */
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/rng.h"
#include "testutil.h"

#define MAXIN 4
typedef struct op_case op_case;
struct op_case {
    const char *name;
    int n_in;
    int64_t in_n[MAXIN];
    int64_t out_n;
    int positive[MAXIN]; /* input must stay positive (none here, kept for clarity) */
    void (*fwd)(const op_case *c, double *y, double **in);
    void (*bwd)(const op_case *c, double **din, const double *dy, double **in, const double *y);
    void (*fwd32)(const op_case *c, float *y, float **in);
    void (*bwd32)(const op_case *c, float **din, const float *dy, float **in, const float *y);
    int i[10];
    double d[2];
    int nullable; /* the adapter hands every din[k] straight to the library backward */
};

static philox g_rng;
static void fill(double *x, int64_t n, double scale) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * philox_normal(&g_rng);
}

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void check_op(const op_case *c) {
    double *in[MAXIN] = {0}, *din[MAXIN] = {0}, *din2[MAXIN] = {0};
    for (int k = 0; k < c->n_in; k++) {
        in[k] = malloc(c->in_n[k] * sizeof(double));
        fill(in[k], c->in_n[k], 1.0);
        din[k] = calloc(c->in_n[k], sizeof(double));
        din2[k] = calloc(c->in_n[k], sizeof(double));
    }
    double *y = malloc(c->out_n * sizeof(double)), *r = malloc(c->out_n * sizeof(double));
    fill(r, c->out_n, 1.0);
    c->fwd(c, y, in);
    c->bwd(c, din, r, in, y);
    /* accumulation: a second backward adds the same again */
    c->bwd(c, din2, r, in, y);
    c->bwd(c, din2, r, in, y);
    for (int k = 0; k < c->n_in; k++)
        for (int64_t i = 0; i < c->in_n[k]; i++) din2[k][i] *= 0.5;
    for (int k = 0; k < c->n_in; k++) {
        double e = rel_err_f64(din2[k], din[k], c->in_n[k]);
        if (e > 1e-12) fail_msg("%s: backward does not accumulate for input %d (%.2e)", c->name, k, e);
    }
    /* NULL gradients: every subset of the gradients left NULL (including all of them); the
       ones still requested must come out exactly as when all are requested. */
    if (c->nullable) {
        for (int mask = 0; mask < (1 << c->n_in) - 1; mask++) {
            double *dm[MAXIN] = {0};
            for (int k = 0; k < c->n_in; k++)
                if (mask >> k & 1) dm[k] = calloc(c->in_n[k], sizeof(double));
            c->bwd(c, dm, r, in, y);
            for (int k = 0; k < c->n_in; k++) {
                if (!dm[k]) continue;
                double e = rel_err_f64(dm[k], din[k], c->in_n[k]);
                if (!(e <= 1e-14))
                    fail_msg("%s: gradient %d changes when others are NULL (mask %d): %.2e", c->name, k, mask, e);
                free(dm[k]);
            }
        }
    }
    double worst = 0;
    double *yp = malloc(c->out_n * sizeof(double));
    for (int k = 0; k < c->n_in; k++) {
        int probes = c->in_n[k] < 64 ? (int)c->in_n[k] : 64;
        double num = 0, den = 0;
        for (int p = 0; p < probes; p++) {
            int64_t idx = c->in_n[k] <= 64 ? p : (int64_t)philox_below(&g_rng, (uint32_t)c->in_n[k]);
            const double h = 1e-6, x0 = in[k][idx];
            in[k][idx] = x0 + h;
            c->fwd(c, yp, in);
            double lp = dot(yp, r, c->out_n);
            in[k][idx] = x0 - h;
            c->fwd(c, yp, in);
            double lm = dot(yp, r, c->out_n);
            in[k][idx] = x0;
            double fd = (lp - lm) / (2 * h);
            num += (fd - din[k][idx]) * (fd - din[k][idx]);
            den += fd * fd;
        }
        double e = sqrt(num) / (den > 0 ? sqrt(den) : 1e-300);
        if (den == 0 && num == 0) e = 0;
        if (e > worst) worst = e;
        if (!(e <= 1e-6)) fail_msg("%s: gradient of input %d differs from finite differences: %.3e", c->name, k, e);
    }
    /* float build against double build */
    float *in32[MAXIN] = {0}, *din32[MAXIN] = {0};
    float *y32 = malloc(c->out_n * sizeof(float)), *r32 = malloc(c->out_n * sizeof(float));
    for (int64_t i = 0; i < c->out_n; i++) r32[i] = (float)r[i];
    double *y64 = malloc(c->out_n * sizeof(double));
    for (int k = 0; k < c->n_in; k++) {
        in32[k] = malloc(c->in_n[k] * sizeof(float));
        din32[k] = calloc(c->in_n[k], sizeof(float));
        for (int64_t i = 0; i < c->in_n[k]; i++) {
            in32[k][i] = (float)in[k][i];
            in[k][i] = in32[k][i]; /* same inputs for both */
        }
    }
    c->fwd(c, y64, in);
    c->fwd32(c, y32, in32);
    double *din64[MAXIN];
    for (int k = 0; k < c->n_in; k++) din64[k] = calloc(c->in_n[k], sizeof(double));
    c->bwd(c, din64, r, in, y64);
    c->bwd32(c, din32, r32, in32, y32);
    float *y64f = malloc(c->out_n * sizeof(float));
    for (int64_t i = 0; i < c->out_n; i++) y64f[i] = (float)y64[i];
    double ef = rel_err_f32(y32, y64f, c->out_n);
    if (!(ef <= 1e-5)) fail_msg("%s: float forward vs double %.3e", c->name, ef);
    for (int k = 0; k < c->n_in; k++) {
        float *t = malloc(c->in_n[k] * sizeof(float));
        for (int64_t i = 0; i < c->in_n[k]; i++) t[i] = (float)din64[k][i];
        double e = rel_err_f32(din32[k], t, c->in_n[k]);
        if (!(e <= 1e-5)) fail_msg("%s: float backward of input %d vs double %.3e", c->name, k, e);
        free(t);
    }
    printf("  %-28s FD worst %.2e, float vs double forward %.2e\n", c->name, worst, ef);
    for (int k = 0; k < c->n_in; k++) {
        free(in[k]); free(din[k]); free(din2[k]); free(in32[k]); free(din32[k]); free(din64[k]);
    }
    free(y); free(r); free(yp); free(y32); free(r32); free(y64); free(y64f);
}

/* ---- op adapters (i[] holds sizes) ---- */
#define ADAPT(T, S, name, body_f, body_b)                                                    \
    static void name##_f##S(const op_case *c, T *y, T **in) { body_f }                      \
    static void name##_b##S(const op_case *c, T **din, const T *dy, T **in, const T *y) {   \
        (void)y; (void)in; body_b }

/* conv: in0 x[B,Cin,H,W], in1 w, in2 b; i = B,Cin,H,W,Cout,K,stride,pad */
#define CONV_F(S) conv2d_forward##S(y, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->i[4], c->i[5], c->i[6], c->i[7]);
#define CONV_B(S) conv2d_backward##S(din[0], din[1], din[2], dy, in[0], in[1], c->i[0], c->i[1], c->i[2], c->i[3], c->i[4], c->i[5], c->i[6], c->i[7]);
ADAPT(double, 64, conv, CONV_F(_f64), CONV_B(_f64))
ADAPT(float, 32, conv, CONV_F(), CONV_B())
#define LIN_F(S) linear_forward##S(y, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2]);
#define LIN_B(S) linear_backward##S(din[0], din[1], din[2], dy, in[0], in[1], c->i[0], c->i[1], c->i[2]);
ADAPT(double, 64, lin, LIN_F(_f64), LIN_B(_f64))
ADAPT(float, 32, lin, LIN_F(), LIN_B())
/* group norm: i = B,C,HW,G ; d0 = eps. mean/rstd scratch recomputed in backward */
#define GN_F(T, S) T mean[64], rstd[64]; group_norm_forward##S(y, mean, rstd, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->d[0]);
#define GN_B(T, S) T *yy = malloc(sizeof(T) * c->i[0] * c->i[1] * c->i[2]); T mean[64], rstd[64]; \
    group_norm_forward##S(yy, mean, rstd, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->d[0]); \
    group_norm_backward##S(din[0], din[1], din[2], dy, in[0], mean, rstd, in[1], c->i[0], c->i[1], c->i[2], c->i[3]); free(yy);
ADAPT(double, 64, gn, GN_F(double, _f64), GN_B(double, _f64))
ADAPT(float, 32, gn, GN_F(float, ), GN_B(float, ))
#define LN_F(T, S) T mean[256], rstd[256]; layer_norm_forward##S(y, mean, rstd, in[0], in[1], in[2], c->i[0], c->i[1], c->d[0]);
#define LN_B(T, S) T *yy = malloc(sizeof(T) * c->i[0] * c->i[1]); T mean[256], rstd[256]; \
    layer_norm_forward##S(yy, mean, rstd, in[0], in[1], in[2], c->i[0], c->i[1], c->d[0]); \
    layer_norm_backward##S(din[0], din[1], din[2], dy, in[0], mean, rstd, in[1], c->i[0], c->i[1]); free(yy);
ADAPT(double, 64, ln, LN_F(double, _f64), LN_B(double, _f64))
ADAPT(float, 32, ln, LN_F(float, ), LN_B(float, ))
ADAPT(double, 64, silu, silu_forward_f64(y, in[0], c->out_n);, silu_backward_f64(din[0], dy, in[0], c->out_n);)
ADAPT(float, 32, silu, silu_forward(y, in[0], c->out_n);, silu_backward(din[0], dy, in[0], c->out_n);)
ADAPT(double, 64, gelu, gelu_forward_f64(y, in[0], c->out_n);, gelu_backward_f64(din[0], dy, in[0], c->out_n);)
ADAPT(float, 32, gelu, gelu_forward(y, in[0], c->out_n);, gelu_backward(din[0], dy, in[0], c->out_n);)
ADAPT(double, 64, geglu, geglu_forward_f64(y, in[0], c->i[0], c->i[1]);, geglu_backward_f64(din[0], dy, in[0], c->i[0], c->i[1]);)
ADAPT(float, 32, geglu, geglu_forward(y, in[0], c->i[0], c->i[1]);, geglu_backward(din[0], dy, in[0], c->i[0], c->i[1]);)
/* attention: i = B,H,Nq,Nk,Dh */
#define AT_F(T, S) T *lse = malloc(sizeof(T) * c->i[0] * c->i[1] * c->i[2]); \
    attention_forward##S(y, lse, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->i[4], 1.0 / sqrt(c->i[4])); free(lse);
#define AT_B(T, S) T *lse = malloc(sizeof(T) * c->i[0] * c->i[1] * c->i[2]); T *o = malloc(sizeof(T) * c->out_n); \
    attention_forward##S(o, lse, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->i[4], 1.0 / sqrt(c->i[4])); \
    attention_backward##S(din[0], din[1], din[2], dy, o, lse, in[0], in[1], in[2], c->i[0], c->i[1], c->i[2], c->i[3], c->i[4], 1.0 / sqrt(c->i[4])); free(lse); free(o);
ADAPT(double, 64, att, AT_F(double, _f64), AT_B(double, _f64))
ADAPT(float, 32, att, AT_F(float, ), AT_B(float, ))
ADAPT(double, 64, up, upsample_nearest2x_forward_f64(y, in[0], c->i[0], c->i[1], c->i[2]);, upsample_nearest2x_backward_f64(din[0], dy, c->i[0], c->i[1], c->i[2]);)
ADAPT(float, 32, up, upsample_nearest2x_forward(y, in[0], c->i[0], c->i[1], c->i[2]);, upsample_nearest2x_backward(din[0], dy, c->i[0], c->i[1], c->i[2]);)
/* timestep embedding: t scaled to ~[0,1000) is too steep for FD; use t ~ N(0,1)*3 */
ADAPT(double, 64, temb, timestep_embedding_forward_f64(y, in[0], c->i[0], c->i[1], c->i[2], c->d[0]);, timestep_embedding_backward_f64(din[0], dy, in[0], c->i[0], c->i[1], c->i[2], c->d[0]);)
ADAPT(float, 32, temb, timestep_embedding_forward(y, in[0], c->i[0], c->i[1], c->i[2], c->d[0]);, timestep_embedding_backward(din[0], dy, in[0], c->i[0], c->i[1], c->i[2], c->d[0]);)
/* layout ops: backward of a permutation is the inverse permutation, added */
#define NHWC_B(T, S) T *t = malloc(sizeof(T) * c->out_n); nhwc_to_nchw##S(t, dy, c->i[0], c->i[1], c->i[2]); \
    for (int64_t q = 0; q < c->out_n; q++) din[0][q] += t[q]; free(t);
ADAPT(double, 64, nhwc, nchw_to_nhwc_f64(y, in[0], c->i[0], c->i[1], c->i[2]);, NHWC_B(double, _f64))
ADAPT(float, 32, nhwc, nchw_to_nhwc(y, in[0], c->i[0], c->i[1], c->i[2]);, NHWC_B(float, ))
ADAPT(double, 64, cat, concat_channels_forward_f64(y, in[0], in[1], c->i[0], c->i[1], c->i[2], c->i[3]);, concat_channels_backward_f64(din[0], din[1], dy, c->i[0], c->i[1], c->i[2], c->i[3]);)
ADAPT(float, 32, cat, concat_channels_forward(y, in[0], in[1], c->i[0], c->i[1], c->i[2], c->i[3]);, concat_channels_backward(din[0], din[1], dy, c->i[0], c->i[1], c->i[2], c->i[3]);)
#define CB_B(T, S) for (int64_t q = 0; q < c->out_n; q++) din[0][q] += dy[q]; add_channel_bias_backward##S(din[1], dy, c->i[0], c->i[1], c->i[2]);
ADAPT(double, 64, cb, add_channel_bias_forward_f64(y, in[0], in[1], c->i[0], c->i[1], c->i[2]);, CB_B(double, _f64))
ADAPT(float, 32, cb, add_channel_bias_forward(y, in[0], in[1], c->i[0], c->i[1], c->i[2]);, CB_B(float, ))

#define OPS(nm) .fwd = nm##_f64, .bwd = nm##_b64, .fwd32 = nm##_f32, .bwd32 = nm##_b32

static void conv_case(int B, int Cin, int H, int W, int Cout, int K, int s, int p) {
    int Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
    char name[64];
    snprintf(name, sizeof name, "conv2d K%d s%d p%d %dx%d", K, s, p, H, W);
    op_case c = {.name = name, .n_in = 3, .in_n = {B * Cin * H * W, Cout * Cin * K * K, Cout},
                 .out_n = (int64_t)B * Cout * Ho * Wo, OPS(conv), .i = {B, Cin, H, W, Cout, K, s, p},
                 .nullable = 1};
    check_op(&c);
}

static void test_conv2d(void **st) {
    (void)st;
    conv_case(2, 3, 5, 6, 4, 3, 1, 1);
    conv_case(2, 3, 7, 6, 4, 3, 2, 1);
    conv_case(2, 5, 4, 3, 3, 1, 1, 0);
    conv_case(1, 2, 6, 5, 3, 3, 1, 0);
}
static void test_linear(void **st) {
    (void)st;
    op_case c = {.name = "linear", .n_in = 3, .in_n = {7 * 5, 6 * 5, 6}, .out_n = 7 * 6, OPS(lin), .i = {7, 5, 6}, .nullable = 1};
    check_op(&c);
}
static void test_norms(void **st) {
    (void)st;
    op_case g = {.name = "group_norm", .n_in = 3, .in_n = {2 * 6 * 10, 6, 6}, .out_n = 2 * 6 * 10,
                 OPS(gn), .i = {2, 6, 10, 3}, .d = {1e-5}, .nullable = 1};
    check_op(&g);
    op_case l = {.name = "layer_norm", .n_in = 3, .in_n = {9 * 7, 7, 7}, .out_n = 9 * 7, OPS(ln), .i = {9, 7}, .d = {1e-5}, .nullable = 1};
    check_op(&l);
}
static void test_activations(void **st) {
    (void)st;
    op_case s = {.name = "silu", .n_in = 1, .in_n = {50}, .out_n = 50, OPS(silu), .nullable = 1};
    check_op(&s);
    op_case g = {.name = "gelu", .n_in = 1, .in_n = {50}, .out_n = 50, OPS(gelu), .nullable = 1};
    check_op(&g);
    op_case gg = {.name = "geglu", .n_in = 1, .in_n = {4 * 10}, .out_n = 4 * 5, OPS(geglu), .i = {4, 5}, .nullable = 1};
    check_op(&gg);
}
static void test_attention(void **st) {
    (void)st;
    /* Nq != Nk, Nq above the 64-row tile, Dh odd */
    op_case a = {.name = "attention 70x9 Dh3", .n_in = 3, .in_n = {2 * 70 * 6, 2 * 9 * 6, 2 * 9 * 6},
                 .out_n = 2 * 70 * 6, OPS(att), .i = {2, 2, 70, 9, 3}, .nullable = 1};
    check_op(&a);
    op_case b = {.name = "attention self 5x5", .n_in = 3, .in_n = {1 * 5 * 8, 5 * 8, 5 * 8}, .out_n = 5 * 8,
                 OPS(att), .i = {1, 2, 5, 5, 4}, .nullable = 1};
    check_op(&b);
}
static void test_shape_ops(void **st) {
    (void)st;
    op_case u = {.name = "upsample_nearest2x", .n_in = 1, .in_n = {3 * 4 * 5}, .out_n = 3 * 16 * 5, OPS(up), .i = {3, 4, 5}, .nullable = 1};
    check_op(&u);
    op_case t = {.name = "timestep_embedding flip", .n_in = 1, .in_n = {3}, .out_n = 3 * 9, OPS(temb), .i = {3, 9, 1}, .d = {1}, .nullable = 1};
    check_op(&t);
    op_case t2 = {.name = "timestep_embedding", .n_in = 1, .in_n = {3}, .out_n = 3 * 8, OPS(temb), .i = {3, 8, 0}, .d = {0}, .nullable = 1};
    check_op(&t2);
    op_case n = {.name = "nchw_to_nhwc", .n_in = 1, .in_n = {2 * 3 * 5}, .out_n = 2 * 3 * 5, OPS(nhwc), .i = {2, 3, 5}};
    check_op(&n);
    op_case c = {.name = "concat_channels", .n_in = 2, .in_n = {2 * 3 * 4, 2 * 2 * 4}, .out_n = 2 * 5 * 4, OPS(cat), .i = {2, 3, 2, 4}, .nullable = 1};
    check_op(&c);
    op_case b = {.name = "add_channel_bias", .n_in = 2, .in_n = {2 * 3 * 4, 2 * 3}, .out_n = 2 * 3 * 4, OPS(cb), .i = {2, 3, 4}};
    check_op(&b);
}

/* ---- forward against naive references (double build; the float build is tied to it above) */
static double *randn(int64_t n) {
    double *x = malloc((n > 0 ? n : 1) * sizeof(double));
    fill(x, n, 1.0);
    return x;
}
#define NAIVE_TOL 1e-13 /* both sides in double, only summation order differs */

/* direct 7-loop convolution; b may be NULL */
static void naive_conv(double *y, const double *x, const double *w, const double *b, int B, int Cin,
                       int H, int W, int Cout, int K, int s, int p) {
    const int Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < Cout; o++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = b ? b[o] : 0;
                    for (int ci = 0; ci < Cin; ci++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * s - p + ky, ix = ox * s - p + kx;
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                    acc += w[((o * Cin + ci) * K + ky) * K + kx] *
                                           x[((n * Cin + ci) * H + iy) * W + ix];
                            }
                    y[((n * Cout + o) * Ho + oy) * Wo + ox] = acc;
                }
}

static void test_naive_conv(void **st) {
    (void)st;
    /* B, Cin, H, W, Cout, K, stride, pad, with bias */
    static const int cases[][9] = {
        {2, 3, 7, 5, 4, 3, 2, 1, 1}, /* stride 2, pad 1, odd non-square */
        {2, 5, 4, 3, 3, 1, 1, 0, 1}, /* 1x1: direct GEMM path */
        {1, 4, 9, 6, 5, 3, 1, 1, 0}, /* K3 s1 p1, no bias */
        {2, 3, 8, 7, 2, 1, 2, 0, 1}, /* 1x1 with stride 2: im2col path */
        {1, 2, 5, 5, 3, 5, 2, 2, 1}, /* K5 */
        {3, 2, 6, 9, 4, 3, 1, 0, 0}, /* no padding */
        {2, 6, 8, 8, 7, 3, 2, 1, 1}, /* UNet downsampler shape */
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        const int B = c[0], Cin = c[1], H = c[2], W = c[3], Cout = c[4], K = c[5], s = c[6], p = c[7];
        const int Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
        const int64_t ny = (int64_t)B * Cout * Ho * Wo;
        double *x = randn((int64_t)B * Cin * H * W), *w = randn((int64_t)Cout * Cin * K * K);
        double *b = c[8] ? randn(Cout) : NULL, *y = randn(ny), *yr = malloc(ny * sizeof(double));
        conv2d_forward_f64(y, x, w, b, B, Cin, H, W, Cout, K, s, p);
        naive_conv(yr, x, w, b, B, Cin, H, W, Cout, K, s, p);
        double e = rel_err_f64(y, yr, ny);
        if (!(e < NAIVE_TOL)) fail_msg("conv case %zu vs naive: %.2e", t, e);
        free(x); free(w); free(b); free(y); free(yr);
    }
}

static void test_naive_attention(void **st) {
    (void)st;
    /* B, H, Nq, Nk, Dh: Nq != Nk, Nq and Nk above the 64-row tile, Dh not a multiple of 4 */
    static const int cases[][5] = {{1, 2, 67, 5, 3}, {2, 3, 5, 130, 5}, {2, 1, 70, 70, 8}, {1, 4, 1, 1, 2}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int B = cases[t][0], Hh = cases[t][1], Nq = cases[t][2], Nk = cases[t][3], Dh = cases[t][4];
        const int C = Hh * Dh;
        const double sc = 1 / sqrt(Dh);
        double *q = randn((int64_t)B * Nq * C), *k = randn((int64_t)B * Nk * C), *v = randn((int64_t)B * Nk * C);
        double *o = malloc(sizeof(double) * B * Nq * C), *orf = malloc(sizeof(double) * B * Nq * C);
        double *lse = malloc(sizeof(double) * B * Hh * Nq), *lser = malloc(sizeof(double) * B * Hh * Nq);
        double *srow = malloc(sizeof(double) * Nk);
        for (int i = 0; i < B * Nq * C; i++) q[i] *= 2; /* peakier softmax */
        attention_forward_f64(o, lse, q, k, v, B, Hh, Nq, Nk, Dh, sc);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < Hh; h++)
                for (int i = 0; i < Nq; i++) {
                    double mx = -INFINITY, sum = 0;
                    for (int j = 0; j < Nk; j++) {
                        double a = 0;
                        for (int d = 0; d < Dh; d++)
                            a += q[((int64_t)b * Nq + i) * C + h * Dh + d] * k[((int64_t)b * Nk + j) * C + h * Dh + d];
                        srow[j] = a * sc;
                        mx = fmax(mx, srow[j]);
                    }
                    for (int j = 0; j < Nk; j++) sum += exp(srow[j] - mx);
                    lser[((int64_t)b * Hh + h) * Nq + i] = mx + log(sum);
                    for (int d = 0; d < Dh; d++) {
                        double a = 0;
                        for (int j = 0; j < Nk; j++)
                            a += exp(srow[j] - mx) / sum * v[((int64_t)b * Nk + j) * C + h * Dh + d];
                        orf[((int64_t)b * Nq + i) * C + h * Dh + d] = a;
                    }
                }
        double e = rel_err_f64(o, orf, (int64_t)B * Nq * C), el = rel_err_f64(lse, lser, (int64_t)B * Hh * Nq);
        if (!(e < NAIVE_TOL && el < NAIVE_TOL)) fail_msg("attention case %zu vs naive: out %.2e lse %.2e", t, e, el);
        free(q); free(k); free(v); free(o); free(orf); free(lse); free(lser); free(srow);
    }
}

static double gelu_ref(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static void test_naive_dense(void **st) {
    (void)st;
    /* linear */
    {
        const int N = 11, in = 7, out = 5;
        double *x = randn(N * in), *w = randn(out * in), *b = randn(out), y[N * out], yr[N * out];
        for (int pass = 0; pass < 2; pass++) { /* with and without bias */
            const double *bb = pass ? NULL : b;
            linear_forward_f64(y, x, w, bb, N, in, out);
            for (int r = 0; r < N; r++)
                for (int o = 0; o < out; o++) {
                    double a = bb ? bb[o] : 0;
                    for (int i = 0; i < in; i++) a += x[r * in + i] * w[o * in + i];
                    yr[r * out + o] = a;
                }
            assert_true(rel_err_f64(y, yr, N * out) < NAIVE_TOL);
        }
        free(x); free(w); free(b);
    }
    /* group norm: two-pass statistics per (b, group), biased variance; x offset by 3 */
    {
        const int B = 2, C = 6, G = 2, HW = 13, cg = C / G;
        const double eps = 1e-5;
        double *x = randn(B * C * HW), *g = randn(C), *be = randn(C), y[B * C * HW], yr[B * C * HW];
        double mean[B * G], rstd[B * G], mr[B * G], rr[B * G];
        for (int i = 0; i < B * C * HW; i++) x[i] += 3;
        group_norm_forward_f64(y, mean, rstd, x, g, be, B, C, HW, G, eps);
        for (int b = 0; b < B; b++)
            for (int gr = 0; gr < G; gr++) {
                const double *xs = x + (b * C + gr * cg) * HW;
                double mu = 0, var = 0;
                for (int i = 0; i < cg * HW; i++) mu += xs[i];
                mu /= cg * HW;
                for (int i = 0; i < cg * HW; i++) var += (xs[i] - mu) * (xs[i] - mu);
                var /= cg * HW;
                mr[b * G + gr] = mu;
                rr[b * G + gr] = 1 / sqrt(var + eps);
                for (int c = gr * cg; c < (gr + 1) * cg; c++)
                    for (int i = 0; i < HW; i++)
                        yr[(b * C + c) * HW + i] = (x[(b * C + c) * HW + i] - mu) / sqrt(var + eps) * g[c] + be[c];
            }
        assert_true(rel_err_f64(y, yr, B * C * HW) < NAIVE_TOL);
        assert_true(rel_err_f64(mean, mr, B * G) < NAIVE_TOL);
        assert_true(rel_err_f64(rstd, rr, B * G) < NAIVE_TOL);
        free(x); free(g); free(be);
    }
    /* layer norm over the last dim */
    {
        const int N = 5, C = 9;
        const double eps = 1e-6;
        double *x = randn(N * C), *g = randn(C), *be = randn(C), y[N * C], yr[N * C], mean[N], rstd[N], mr[N], rr[N];
        layer_norm_forward_f64(y, mean, rstd, x, g, be, N, C, eps);
        for (int r = 0; r < N; r++) {
            double mu = 0, var = 0;
            for (int c = 0; c < C; c++) mu += x[r * C + c];
            mu /= C;
            for (int c = 0; c < C; c++) var += (x[r * C + c] - mu) * (x[r * C + c] - mu);
            var /= C;
            mr[r] = mu;
            rr[r] = 1 / sqrt(var + eps);
            for (int c = 0; c < C; c++) yr[r * C + c] = (x[r * C + c] - mu) / sqrt(var + eps) * g[c] + be[c];
        }
        assert_true(rel_err_f64(y, yr, N * C) < NAIVE_TOL);
        assert_true(rel_err_f64(mean, mr, N) < NAIVE_TOL);
        assert_true(rel_err_f64(rstd, rr, N) < NAIVE_TOL);
        free(x); free(g); free(be);
    }
    /* activations; x spread over [-12, 12] plus values from torch (float64):
       silu(1) = 0.7310585786300049, gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707 */
    {
        enum { n = 49 };
        double x[n], y[n], yr[n];
        for (int i = 0; i < n; i++) x[i] = -12 + 0.5 * i;
        silu_forward_f64(y, x, n);
        for (int i = 0; i < n; i++) yr[i] = x[i] / (1 + exp(-x[i]));
        assert_true(rel_err_f64(y, yr, n) < NAIVE_TOL);
        gelu_forward_f64(y, x, n);
        for (int i = 0; i < n; i++) yr[i] = gelu_ref(x[i]);
        assert_true(rel_err_f64(y, yr, n) < NAIVE_TOL);
        double one[3] = {1, 1, -1}, o3[3];
        silu_forward_f64(o3, one, 1);
        assert_true(fabs(o3[0] - 0.7310585786300049) < 1e-15);
        gelu_forward_f64(o3, one + 1, 2);
        assert_true(fabs(o3[0] - 0.8413447460685429) < 1e-15);
        assert_true(fabs(o3[1] + 0.15865525393145707) < 1e-15);
        /* GEGLU: hidden, gate = chunk(2, dim=-1); out = hidden * gelu(gate) */
        const int N = 3, D = 5;
        double *xg = randn(N * 2 * D), yg[N * D], ygr[N * D];
        geglu_forward_f64(yg, xg, N, D);
        for (int r = 0; r < N; r++)
            for (int d = 0; d < D; d++) ygr[r * D + d] = xg[r * 2 * D + d] * gelu_ref(xg[r * 2 * D + D + d]);
        assert_true(rel_err_f64(yg, ygr, N * D) < NAIVE_TOL);
        free(xg);
    }
}

static void test_naive_shape_ops(void **st) {
    (void)st;
    const int B = 2, C = 3, H = 3, W = 5, HW = H * W;
    double *x = randn(B * C * HW), y[4 * B * C * HW], yr[4 * B * C * HW];
    /* nearest 2x: y[i][j] = x[i/2][j/2] */
    upsample_nearest2x_forward_f64(y, x, B * C, H, W);
    for (int p = 0; p < B * C; p++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++) yr[(p * 2 * H + i) * 2 * W + j] = x[(p * H + i / 2) * W + j / 2];
    assert_memory_equal(y, yr, sizeof(double) * 4 * B * C * HW);
    /* layouts, and that the two transposes are inverse */
    double z[B * C * HW];
    nchw_to_nhwc_f64(y, x, B, C, HW);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) yr[(b * HW + p) * C + c] = x[(b * C + c) * HW + p];
    assert_memory_equal(y, yr, sizeof(double) * B * C * HW);
    nhwc_to_nchw_f64(z, y, B, C, HW);
    assert_memory_equal(z, x, sizeof(double) * B * C * HW);
    /* channel concat */
    const int Cb = 2;
    double *a2 = randn(B * Cb * HW);
    concat_channels_forward_f64(y, x, a2, B, C, Cb, HW);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C + Cb; c++)
            for (int p = 0; p < HW; p++)
                yr[(b * (C + Cb) + c) * HW + p] = c < C ? x[(b * C + c) * HW + p] : a2[(b * Cb + c - C) * HW + p];
    assert_memory_equal(y, yr, sizeof(double) * B * (C + Cb) * HW);
    /* channel bias */
    double *v = randn(B * C);
    add_channel_bias_forward_f64(y, x, v, B, C, HW);
    for (int i = 0; i < B * C * HW; i++) yr[i] = x[i] + v[i / HW];
    assert_memory_equal(y, yr, sizeof(double) * B * C * HW);
    free(x); free(a2); free(v);
}

/* get_timestep_embedding: double build against the formula in double; float build against
   diffusers 0.42.1 / torch float32 output (hex below, from diffusers.models.embeddings.
   get_timestep_embedding(torch.tensor([1., 17., 999., 1024.]), dim, flip, shift)), sampled at
   columns idx. torch computes exp(exponent) and t * freq in float32; doing either in double
   moves sin/cos of arguments ~1000 by ~6e-5, so 4e-7 (a few float32 ulp of sin/cos; torch's
   vectorised sin/cos are 1-ulp accurate) tells the two apart. */
static const float temb_t[4] = {1, 17, 999, 1024};
static const int temb320_idx[15] = {0, 23, 46, 69, 92, 115, 138, 161, 184, 207, 230, 253, 276, 299, 319};
static const float temb320_flip_shift0[4][15] = {
    {0x1.14a282p-1, 0x1.edfbb6p-1, 0x1.feb7aep-1, 0x1.ffe8c0p-1, 0x1.fffe5ap-1, 0x1.ffffe2p-1, 0x1.fffffep-1, 0x1.9eb14ep-1, 0x1.fd0aa6p-3, 0x1.118cc6p-4, 0x1.235684p-6, 0x1.361550p-8, 0x1.4a0504p-10, 0x1.5f3ca0p-12, 0x1.bc4880p-14},
    {-0x1.19c46cp-2, -0x1.811626p-3, 0x1.6fb440p-2, 0x1.e5f91ap-1, 0x1.fe248ap-1, 0x1.ffde52p-1, 0x1.fffd9ep-1, -0x1.56863cp-2, -0x1.cec182p-1, 0x1.d066b6p-1, 0x1.30de86p-2, 0x1.491c0ap-4, 0x1.5e9e80p-6, 0x1.752fe6p-8, 0x1.d80cf8p-10},
    {0x1.ffd21ap-1, -0x1.574626p-2, -0x1.36d146p-5, 0x1.ffbd4cp-1, 0x1.293352p-2, 0x1.e40c36p-3, 0x1.e02bdap-1, 0x1.315d16p-1, -0x1.8545f2p-2, -0x1.6d2dc2p-1, -0x1.c4a790p-1, -0x1.fff26ep-1, 0x1.e71a80p-1, 0x1.504d66p-2, 0x1.b0a0c2p-4},
    {0x1.f9866ap-1, -0x1.4ded98p-1, -0x1.f1af74p-1, 0x1.cf72e4p-1, 0x1.a1549ep-2, 0x1.a172f6p-3, 0x1.de937cp-1, -0x1.8e92ccp-1, -0x1.889040p-2, -0x1.409880p-1, -0x1.31c0ecp-1, -0x1.fb8000p-1, 0x1.ebd344p-1, 0x1.5863d2p-2, 0x1.bb699cp-4},
};
static const int temb33_idx[12] = {0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 32};
static const float temb33_noflip_shift1[4][12] = {
    {0x1.aed548p-1, 0x1.433a9cp-3, 0x1.9b8114p-6, 0x1.04e718p-8, 0x1.4acda8p-11, 0x1.a36e2cp-14, 0x1.ea3310p-1, 0x1.ff72d4p-1, 0x1.fffc74p-1, 0x1.ffffeap-1, 0x1.000000p+0, 0},
    {-0x1.ec3c4ap-1, 0x1.bae3cep-2, 0x1.a819cap-2, 0x1.14ff90p-4, 0x1.5f78cap-7, 0x1.bda500p-10, 0x1.0d7c84p-2, 0x1.68b4f8p-1, 0x1.fc005ep-1, 0x1.ffe642p-1, 0x1.ffff5ap-1, 0},
    {-0x1.b18870p-6, 0x1.e6128ap-1, -0x1.3f5dd0p-5, -0x1.7bb6e2p-1, 0x1.2dc6f2p-1, 0x1.988296p-4, -0x1.d6e314p-1, -0x1.7513a6p-1, 0x1.ef577ap-2, 0x1.94760cp-2, 0x1.f74d0cp-1, 0},
    {-0x1.44ad26p-3, -0x1.c1112cp-1, 0x1.1c6bdap-1, -0x1.9bf636p-1, 0x1.34437cp-1, 0x1.a2b29ep-4, -0x1.07370ap-3, -0x1.d6625ap-1, 0x1.43176cp-2, 0x1.78df6ap-2, 0x1.f6dc88p-1, 0},
};

static void temb_formula(double *y, const double *t, int N, int dim, int flip, double shift) {
    const int half = dim / 2;
    for (int n = 0; n < N; n++) {
        double e[1024];
        for (int i = 0; i < half; i++) {
            double a = t[n] * exp(-log(10000.0) * i / (half - shift));
            e[i] = sin(a);
            e[half + i] = cos(a);
        }
        for (int j = 0; j < 2 * half; j++) y[n * dim + j] = flip ? e[(j + half) % (2 * half)] : e[j];
        if (dim % 2) y[n * dim + dim - 1] = 0;
    }
}

static void test_timestep_embedding_reference(void **st) {
    (void)st;
    /* float build vs torch */
    float yf[4 * 320];
    double worst = 0;
    timestep_embedding_forward(yf, temb_t, 4, 320, 1, 0);
    for (int n = 0; n < 4; n++)
        for (int j = 0; j < 15; j++) worst = fmax(worst, fabs(yf[n * 320 + temb320_idx[j]] - temb320_flip_shift0[n][j]));
    timestep_embedding_forward(yf, temb_t, 4, 33, 0, 1);
    for (int n = 0; n < 4; n++)
        for (int j = 0; j < 12; j++) worst = fmax(worst, fabs(yf[n * 33 + temb33_idx[j]] - temb33_noflip_shift1[n][j]));
    printf("  timestep_embedding float vs torch float32: max abs diff %.2e\n", worst);
    if (!(worst <= 4e-7)) fail_msg("timestep_embedding float vs torch: %.2e", worst);
    /* double build vs the formula (small t: in double the argument rounding is negligible) */
    const double t[3] = {0.3, 2.5, 7};
    double y[3 * 33], yr[3 * 33];
    for (int flip = 0; flip < 2; flip++)
        for (int dim = 32; dim <= 33; dim++) {
            timestep_embedding_forward_f64(y, t, 3, dim, flip, flip ? 0 : 1);
            temb_formula(yr, t, 3, dim, flip, flip ? 0 : 1);
            assert_true(rel_err_f64(y, yr, 3 * dim) < NAIVE_TOL);
        }
}

/* Results depend only on the thread count: the same float call twice gives identical bits
   (sizes large enough for every parallel loop to split across threads). */
static void test_determinism(void **st) {
    (void)st;
    const int B = 3, Cin = 8, H = 12, W = 10, Cout = 12, K = 3;
    const int64_t nx = (int64_t)B * Cin * H * W, nw = (int64_t)Cout * Cin * K * K, ny = (int64_t)B * Cout * H * W;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4);
    philox_fill_normal(&g_rng, x, nx);
    philox_fill_normal(&g_rng, w, nw);
    philox_fill_normal(&g_rng, dy, ny);
    float *g[2][3];
    for (int r = 0; r < 2; r++) {
        g[r][0] = calloc(nx, 4); g[r][1] = calloc(nw, 4); g[r][2] = calloc(Cout, 4);
        conv2d_backward(g[r][0], g[r][1], g[r][2], dy, x, w, B, Cin, H, W, Cout, K, 1, 1);
    }
    assert_memory_equal(g[0][0], g[1][0], nx * 4);
    assert_memory_equal(g[0][1], g[1][1], nw * 4);
    assert_memory_equal(g[0][2], g[1][2], Cout * 4);
    /* group norm backward (dgamma/dbeta reduce over the batch) on y viewed as [B, Cout, HW] */
    const int G = 4;
    float mean[3 * 4], rstd[3 * 4], *gm = w, *bt = w + Cout, *yy = malloc(ny * 4);
    group_norm_forward(yy, mean, rstd, dy, gm, bt, B, Cout, H * W, G, 1e-5);
    float *h[2][3];
    for (int r = 0; r < 2; r++) {
        h[r][0] = calloc(ny, 4); h[r][1] = calloc(Cout, 4); h[r][2] = calloc(Cout, 4);
        group_norm_backward(h[r][0], h[r][1], h[r][2], yy, dy, mean, rstd, gm, B, Cout, H * W, G);
    }
    for (int k = 0; k < 3; k++) assert_memory_equal(h[0][k], h[1][k], (k ? Cout : ny) * 4);
    /* attention backward: q = k = v = x viewed as [B, N=Cin*H*W/(Hh*Dh), Hh*Dh] */
    const int Hh = 2, Dh = 5, N = (int)(nx / B / (Hh * Dh));
    float *o = malloc(nx * 4), *lse = malloc((size_t)B * Hh * N * 4), *a[2][3];
    attention_forward(o, lse, x, x + 1, x + 2, B, Hh, N, N - 1, Dh, 0.4);
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k < 3; k++) a[r][k] = calloc(nx, 4);
        attention_backward(a[r][0], a[r][1], a[r][2], dy, o, lse, x, x + 1, x + 2, B, Hh, N, N - 1, Dh, 0.4);
    }
    for (int k = 0; k < 3; k++) assert_memory_equal(a[0][k], a[1][k], nx * 4);
    for (int r = 0; r < 2; r++)
        for (int k = 0; k < 3; k++) { free(g[r][k]); free(h[r][k]); free(a[r][k]); }
    free(x); free(w); free(dy); free(yy); free(o); free(lse);
}

/* The float build's polynomial exp (kernels.c: AVX2 rows of 8, scalar tail) on NaN, infinities
 * and values far outside its clamp, in both the vector part (0..7) and the tail (8..10): NaN
 * stays NaN and nothing is converted to int out of range (make test-sanitize runs this under
 * UBSan's float-cast-overflow; the scalar path once converted NaN). SiLU's sigmoid and GELU's
 * normal pdf both go through it. */
static void test_exp_extremes(void **st) {
    (void)st;
    const float x[11] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 100.0f, -100.0f, 88.5f,
                         NAN, -1e30f, 1e30f};
    float y[11];
    silu_forward(y, x, 11);
    assert_true(isnan(y[0]) && isnan(y[8]));
    assert_true(y[1] == INFINITY && y[3] == 1e30f && y[10] == 1e30f && y[5] == 100.0f);
    assert_true(fabsf(y[4]) < 1e-6f && fabsf(y[9]) < 1e-6f && fabsf(y[6]) < 1e-6f);
    float ag[22], dy[11], dx[22] = {0};
    for (int i = 0; i < 11; i++) ag[i] = 1.0f, ag[11 + i] = x[i], dy[i] = 1.0f;
    geglu_forward(y, ag, 1, 11); /* 1 * GELU(x) through the vectorised normal cdf */
    assert_true(isnan(y[0]) && isnan(y[8]));
    assert_true(y[1] == INFINITY && y[3] == 1e30f && y[10] == 1e30f && y[5] == 100.0f);
    assert_true(y[4] == 0.0f && y[9] == 0.0f && y[6] == 0.0f);
    geglu_backward(dx, dy, ag, 1, 11);
    assert_true(isnan(dx[11]) && isnan(dx[19]) && dx[16] == 1.0f && dx[17] == 0.0f);
}

int main(void) {
    philox_init(&g_rng, 1234, 0, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d),          cmocka_unit_test(test_linear),
        cmocka_unit_test(test_norms),           cmocka_unit_test(test_activations),
        cmocka_unit_test(test_attention),       cmocka_unit_test(test_shape_ops),
        cmocka_unit_test(test_naive_conv),      cmocka_unit_test(test_naive_attention),
        cmocka_unit_test(test_naive_dense),     cmocka_unit_test(test_naive_shape_ops),
        cmocka_unit_test(test_timestep_embedding_reference),
        cmocka_unit_test(test_determinism),     cmocka_unit_test(test_exp_extremes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
