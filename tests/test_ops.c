/* test_ops.c -- every op's backward against float64 central finite differences, the float
 * build against the double build, and forward against naive references.
 *
 * FD check: loss = sum(r * y) with random r; analytic d loss / d input from the _f64 backward
 * (with dy = r) against (loss(x + h) - loss(x - h)) / 2h, h = 1e-6, on up to 64 random
 * elements of each input. Central differences in double have truncation error O(h^2 * f''') ~
 * 1e-12 and rounding error ~ 1e-16 * |loss| / h ~ 1e-10 relative, so 1e-6 relative (per input
 * tensor, L2 over the probed elements) leaves a wide margin while a wrong term fails by O(1).
 * float vs double: same code in float32; 1e-5 relative covers float32 rounding through one op. */
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
                 .out_n = (int64_t)B * Cout * Ho * Wo, OPS(conv), .i = {B, Cin, H, W, Cout, K, s, p}};
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
    op_case c = {.name = "linear", .n_in = 3, .in_n = {7 * 5, 6 * 5, 6}, .out_n = 7 * 6, OPS(lin), .i = {7, 5, 6}};
    check_op(&c);
}
static void test_norms(void **st) {
    (void)st;
    op_case g = {.name = "group_norm", .n_in = 3, .in_n = {2 * 6 * 10, 6, 6}, .out_n = 2 * 6 * 10,
                 OPS(gn), .i = {2, 6, 10, 3}, .d = {1e-5}};
    check_op(&g);
    op_case l = {.name = "layer_norm", .n_in = 3, .in_n = {9 * 7, 7, 7}, .out_n = 9 * 7, OPS(ln), .i = {9, 7}, .d = {1e-5}};
    check_op(&l);
}
static void test_activations(void **st) {
    (void)st;
    op_case s = {.name = "silu", .n_in = 1, .in_n = {50}, .out_n = 50, OPS(silu)};
    check_op(&s);
    op_case g = {.name = "gelu", .n_in = 1, .in_n = {50}, .out_n = 50, OPS(gelu)};
    check_op(&g);
    op_case gg = {.name = "geglu", .n_in = 1, .in_n = {4 * 10}, .out_n = 4 * 5, OPS(geglu), .i = {4, 5}};
    check_op(&gg);
}
static void test_attention(void **st) {
    (void)st;
    /* Nq != Nk, Nq above the 64-row tile, Dh odd */
    op_case a = {.name = "attention 70x9 Dh3", .n_in = 3, .in_n = {2 * 70 * 6, 2 * 9 * 6, 2 * 9 * 6},
                 .out_n = 2 * 70 * 6, OPS(att), .i = {2, 2, 70, 9, 3}};
    check_op(&a);
    op_case b = {.name = "attention self 5x5", .n_in = 3, .in_n = {1 * 5 * 8, 5 * 8, 5 * 8}, .out_n = 5 * 8,
                 OPS(att), .i = {1, 2, 5, 5, 4}};
    check_op(&b);
}
static void test_shape_ops(void **st) {
    (void)st;
    op_case u = {.name = "upsample_nearest2x", .n_in = 1, .in_n = {3 * 4 * 5}, .out_n = 3 * 16 * 5, OPS(up), .i = {3, 4, 5}};
    check_op(&u);
    op_case t = {.name = "timestep_embedding flip", .n_in = 1, .in_n = {3}, .out_n = 3 * 9, OPS(temb), .i = {3, 9, 1}, .d = {1}};
    check_op(&t);
    op_case t2 = {.name = "timestep_embedding", .n_in = 1, .in_n = {3}, .out_n = 3 * 8, OPS(temb), .i = {3, 8, 0}, .d = {0}};
    check_op(&t2);
    op_case n = {.name = "nchw_to_nhwc", .n_in = 1, .in_n = {2 * 3 * 5}, .out_n = 2 * 3 * 5, OPS(nhwc), .i = {2, 3, 5}};
    check_op(&n);
    op_case c = {.name = "concat_channels", .n_in = 2, .in_n = {2 * 3 * 4, 2 * 2 * 4}, .out_n = 2 * 5 * 4, OPS(cat), .i = {2, 3, 2, 4}};
    check_op(&c);
    op_case b = {.name = "add_channel_bias", .n_in = 2, .in_n = {2 * 3 * 4, 2 * 3}, .out_n = 2 * 3 * 4, OPS(cb), .i = {2, 3, 4}};
    check_op(&b);
}

/* forward against naive references */
static void test_naive_references(void **st) {
    (void)st;
    const int B = 2, Cin = 3, H = 7, W = 5, Cout = 4, K = 3, s = 2, p = 1;
    const int Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1;
    double x[B * Cin * H * W], w[Cout * Cin * K * K], b[Cout], y[B * Cout * Ho * Wo], yr[B * Cout * Ho * Wo];
    fill(x, B * Cin * H * W, 1);
    fill(w, Cout * Cin * K * K, 1);
    fill(b, Cout, 1);
    conv2d_forward_f64(y, x, w, b, B, Cin, H, W, Cout, K, s, p);
    for (int n = 0; n < B; n++)
        for (int o = 0; o < Cout; o++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = b[o];
                    for (int ci = 0; ci < Cin; ci++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * s - p + ky, ix = ox * s - p + kx;
                                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                    acc += w[((o * Cin + ci) * K + ky) * K + kx] * x[((n * Cin + ci) * H + iy) * W + ix];
                            }
                    yr[((n * Cout + o) * Ho + oy) * Wo + ox] = acc;
                }
    assert_true(rel_err_f64(y, yr, B * Cout * Ho * Wo) < 1e-13);
    /* attention */
    const int Hh = 2, Nq = 67, Nk = 5, Dh = 3, C = Hh * Dh;
    double q[Nq * C], k[Nk * C], v[Nk * C], o[Nq * C], orf[Nq * C], lse[Hh * Nq];
    fill(q, Nq * C, 1);
    fill(k, Nk * C, 1);
    fill(v, Nk * C, 1);
    attention_forward_f64(o, lse, q, k, v, 1, Hh, Nq, Nk, Dh, 1 / sqrt(Dh));
    for (int h = 0; h < Hh; h++)
        for (int i = 0; i < Nq; i++) {
            double sc[Nk], mx = -1e300, sum = 0;
            for (int j = 0; j < Nk; j++) {
                sc[j] = 0;
                for (int d = 0; d < Dh; d++) sc[j] += q[i * C + h * Dh + d] * k[j * C + h * Dh + d];
                sc[j] /= sqrt(Dh);
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j < Nk; j++) sum += exp(sc[j] - mx);
            for (int d = 0; d < Dh; d++) {
                double a = 0;
                for (int j = 0; j < Nk; j++) a += exp(sc[j] - mx) / sum * v[j * C + h * Dh + d];
                orf[i * C + h * Dh + d] = a;
            }
        }
    assert_true(rel_err_f64(o, orf, Nq * C) < 1e-13);
}

int main(void) {
    philox_init(&g_rng, 1234, 0, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d),     cmocka_unit_test(test_linear),
        cmocka_unit_test(test_norms),      cmocka_unit_test(test_activations),
        cmocka_unit_test(test_attention),  cmocka_unit_test(test_shape_ops),
        cmocka_unit_test(test_naive_references),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
