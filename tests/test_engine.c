/* test_engine.c -- the mixed-precision ops of ops.h (src/ops/engine.c, oneDNN) against the
 * float64 kernels.
 *
 * Bound, element by element. MAPO_BF16 rounds both operands of every product to bfloat16
 * (8 significant bits: relative rounding error <= u = 2^-8 each, round to nearest) and sums the
 * exact bf16 x bf16 products in float32 over a reduction of length K. So for y = sum_i a_i b_i
 *     |y_mp - y| <= ((1+u)^2 - 1 + K 2^-24) * sum_i |a_i| |b_i|   (+ the float32 bias add)
 * where the right-hand side's sum is the same op in float64 on |a| and |b| (the f64 kernels,
 * tested against naive loops in test_ops). We allow 1.25x that bound (the f64 evaluation of the
 * abs-sum and float32 rounding of the result itself). A wrong layout, a transposed weight, a
 * missing accumulation or a float16 instead of bf16 breaks it by orders of magnitude.
 * The test also proves bf16 is in effect: the result must differ from the float32 path by
 * more than float32 rounding (relative 1e-5). And MAPO_F32 must be the float kernels bit for
 * bit, and the ops reading an input already rounded to bf16 (x16) equal the ones rounding it
 * themselves, bit for bit. Backward ops accumulate: every gradient starts from non-zero values. The attention's
 * bound is in test_attention_bf16, the norms' in test_norms. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../src/ops/attention_small.h"
#include "../src/ops/layout.h"
#include "mapo/bf16.h"
#include "mapo/ops.h"
#include "testutil.h"

static const double U_BF16 = 1.0 / 256.0, U_F32 = 1.0 / 16777216.0;

static uint64_t g_rng = 88172645463325252ull;
static double urand(void) { /* xorshift64*, in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (double)((g_rng * 2685821657736338717ull) >> 11) / 4503599627370496.0 - 1.0;
}
static float *rnd(int64_t n, double scale) {
    float *p = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = (float)(scale * urand());
    return p;
}
static double *to64(const float *p, int64_t n, int absval) {
    double *q = malloc(n * sizeof(double));
    for (int64_t i = 0; i < n; i++) q[i] = absval ? fabs((double)p[i]) : (double)p[i];
    return q;
}
static float *copyf(const float *p, int64_t n) {
    float *q = malloc(n * sizeof(float));
    memcpy(q, p, n * sizeof(float));
    return q;
}
/* n NaNs: a gradient buffer nothing wrote yet, whose every element an assigning op must set */
static float *nans(int64_t n) {
    float *q = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) q[i] = NAN;
    return q;
}
/* an assigned gradient equals the one added to zeros (as numbers: 0 + -0 is +0) */
static void same_values(const char *what, const float *got, const float *want, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(got[i] == want[i]))
            fail_msg("%s[%lld]: %.9g, want %.9g", what, (long long)i, got[i], want[i]);
}

/* |got - start - ref| <= 1.25 * ((1+u)^2 - 1 + K 2^-24) * abs + 4 * 2^-24 * |ref + start|
   per element (start: the gradient's value before accumulation). Returns the worst ratio. */
static double check_bound(const char *what, const float *got, const float *start,
                          const double *ref, const double *abs, int64_t n, int64_t K) {
    const double c = (1 + U_BF16) * (1 + U_BF16) - 1 + (double)K * U_F32;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const double s = start ? (double)start[i] : 0;
        const double want = ref[i] + s;
        const double lim = 1.25 * c * abs[i] + 4 * U_F32 * (fabs(want) + fabs(s)) + 1e-30;
        const double r = fabs((double)got[i] - want) / lim;
        if (!(r <= 1.0))
            fail_msg("%s[%lld]: %.9g, want %.9g (bound %.3g)", what, (long long)i, got[i], want,
                     lim);
        if (r > worst) worst = r;
    }
    return worst;
}

/* bf16 in effect: relative difference to the float32 path well above float32 rounding */
static void check_not_f32(const char *what, const float *mp, const float *f32, int64_t n) {
    const double e = rel_err_f32(mp, f32, n);
    if (!(e > 1e-5)) fail_msg("%s: bf16 result equals float32's (rel. diff %.3g)", what, e);
}

static void conv_case(int B, int Cin, int H, int W, int Cout, int K, int stride, int pad) {
    const int Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    const int64_t nx = (int64_t)B * Cin * H * W, nw = (int64_t)Cout * Cin * K * K;
    const int64_t ny = (int64_t)B * Cout * Ho * Wo;
    float *x = rnd(nx, 1.0), *w = rnd(nw, 0.3), *b = rnd(Cout, 0.5), *dy = rnd(ny, 1.0);
    double *x64 = to64(x, nx, 0), *w64 = to64(w, nw, 0), *b64 = to64(b, Cout, 0);
    double *dy64 = to64(dy, ny, 0), *xa = to64(x, nx, 1), *wa = to64(w, nw, 1);
    double *dya = to64(dy, ny, 1);
    /* forward */
    float *y = malloc(ny * 4), *yf = malloc(ny * 4);
    double *yr = malloc(ny * 8), *ya = malloc(ny * 8);
    conv2d_forward_mp(MAPO_BF16, y, x, w, b, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_forward(yf, x, w, b, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_forward_f64(yr, x64, w64, b64, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_forward_f64(ya, xa, wa, NULL, B, Cin, H, W, Cout, K, stride, pad);
    char what[96];
    snprintf(what, sizeof what, "conv %dx%d s%d p%d Cin %d Cout %d y", K, K, stride, pad, Cin,
             Cout);
    check_bound(what, y, NULL, yr, ya, ny, (int64_t)Cin * K * K);
    check_not_f32(what, y, yf, ny);
    /* MAPO_F32 is the float kernel, bit for bit */
    float *y32 = malloc(ny * 4);
    conv2d_forward_mp(MAPO_F32, y32, x, w, b, B, Cin, H, W, Cout, K, stride, pad);
    assert_memory_equal(y32, yf, ny * 4);
    /* backward, accumulating into non-zero gradients */
    float *dx0 = rnd(nx, 0.1), *dw0 = rnd(nw, 0.1), *db0 = rnd(Cout, 0.1);
    float *dx = copyf(dx0, nx), *dw = copyf(dw0, nw), *db = copyf(db0, Cout);
    float *dxf = copyf(dx0, nx), *dwf = copyf(dw0, nw), *dbf = copyf(db0, Cout);
    double *dxr = calloc(nx, 8), *dwr = calloc(nw, 8), *dbr = calloc(Cout, 8);
    double *dxa = calloc(nx, 8), *dwa = calloc(nw, 8);
    conv2d_backward_mp(MAPO_BF16, dx, dw, db, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_backward(dxf, dwf, dbf, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_backward_f64(dxr, dwr, dbr, dy64, x64, w64, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_backward_f64(dxa, dwa, NULL, dya, xa, wa, B, Cin, H, W, Cout, K, stride, pad);
    snprintf(what, sizeof what, "conv %dx%d s%d p%d Cin %d Cout %d dx", K, K, stride, pad, Cin,
             Cout);
    check_bound(what, dx, dx0, dxr, dxa, nx, (int64_t)Cout * K * K);
    what[strlen(what) - 2] = 0;
    strcat(what, "dw");
    check_bound(what, dw, dw0, dwr, dwa, nw, (int64_t)B * Ho * Wo);
    /* the bias gradient stays float32 (the float kernel's sum): equal bit for bit */
    assert_memory_equal(db, dbf, Cout * 4);
    /* from an input kept in bf16: the same numbers bit for bit (the same rounding) */
    uint16_t *x16 = malloc(nx * 2);
    mapo_round_bf16_nhwc(x16, x, B, Cin, (int64_t)H * W);
    float *dx3 = copyf(dx0, nx), *dw3 = copyf(dw0, nw), *db3 = copyf(db0, Cout);
    conv2d_backward_bf16x(dx3, dw3, db3, dy, x16, w, B, Cin, H, W, Cout, K, stride, pad, 0);
    assert_memory_equal(dx3, dx, nx * 4);
    { /* dx assigned: the gradient added to zeros */
        float *dxa = nans(nx), *dxz = calloc(nx, 4);
        conv2d_backward_bf16x(dxa, NULL, NULL, dy, x16, w, B, Cin, H, W, Cout, K, stride, pad, 1);
        conv2d_backward_bf16x(dxz, NULL, NULL, dy, x16, w, B, Cin, H, W, Cout, K, stride, pad, 0);
        same_values("conv dx assigned", dxa, dxz, nx);
        free(dxa), free(dxz);
    }
    assert_memory_equal(dw3, dw, nw * 4);
    assert_memory_equal(db3, db, Cout * 4);
    float *y3 = malloc(ny * 4);
    conv2d_forward_bf16x(y3, x16, w, b, B, Cin, H, W, Cout, K, stride, pad);
    assert_memory_equal(y3, y, ny * 4);
    /* dx / dw alone (the other NULL) and F32 backward = the float kernel */
    float *dx2 = copyf(dx0, nx);
    conv2d_backward_mp(MAPO_BF16, dx2, NULL, NULL, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
    assert_memory_equal(dx2, dx, nx * 4);
    { /* the weight held in bf16 (a frozen one): the same numbers, from x or from x16 */
        uint16_t *w16 = malloc(nw * 2);
        mapo_round_bf16(w16, w, nw);
        float *y4 = nans(ny), *dx4 = copyf(dx0, nx);
        conv2d_forward_w16(y4, x, NULL, w16, b, B, Cin, H, W, Cout, K, stride, pad);
        assert_memory_equal(y4, y, ny * 4);
        conv2d_forward_w16(y4, NULL, x16, w16, b, B, Cin, H, W, Cout, K, stride, pad);
        assert_memory_equal(y4, y, ny * 4);
        conv2d_backward_data_w16(dx4, dy, w16, B, Cin, H, W, Cout, K, stride, pad);
        assert_memory_equal(dx4, dx, nx * 4);
        free(w16), free(y4), free(dx4);
    }
    free(x16), free(dx3), free(dw3), free(db3), free(y3);
    float *dw32 = copyf(dw0, nw), *dwf2 = copyf(dw0, nw);
    conv2d_backward_mp(MAPO_F32, NULL, dw32, NULL, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
    conv2d_backward(NULL, dwf2, NULL, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
    assert_memory_equal(dw32, dwf2, nw * 4);
    float *bufs[] = {x, w, b, dy, y, yf, y32, dx0, dw0, db0, dx, dw, db, dxf, dwf, dbf, dx2,
                     dw32, dwf2};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    double *dbufs[] = {x64, w64, b64, dy64, xa, wa, dya, yr, ya, dxr, dwr, dbr, dxa, dwa};
    for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++) free(dbufs[i]);
}

static void test_conv_bf16(void **st) {
    (void)st;
    conv_case(2, 8, 9, 7, 16, 3, 1, 1);   /* odd sizes, channel counts not multiples of 16 */
    conv_case(2, 32, 8, 8, 32, 3, 2, 1);  /* downsampler */
    conv_case(1, 24, 6, 10, 40, 1, 1, 0); /* shortcut / proj 1x1 */
    conv_case(3, 4, 16, 16, 32, 3, 1, 1); /* conv_in: 4 channels */
    conv_case(2, 32, 5, 5, 4, 3, 1, 1);   /* conv_out */
    conv_case(2, 64, 16, 16, 64, 3, 1, 1); /* a UNet block's shape: AMX picks NHWC (layout.c) */
    conv_case(2, 8, 9, 7, 16, 3, 1, 1);   /* again: the cached primitive */
}

/* layout.c's transposes against the index formula, element by element: full 16x16 tiles and
   partial ones (C, HW not multiples of 16); bf16 rounding as mapo_bf16_bits, on values that
   include ties, NaN, infinities and subnormals; accumulation into non-zero values. */
static void layout_case(int64_t B, int64_t C, int64_t HW) {
    const int64_t n = B * C * HW;
    float *x = rnd(n, 3.0), *acc = rnd(n, 1.0), *back = malloc(n * 4);
    uint16_t *h = malloc(n * 2), *h2 = malloc(n * 2), *x16 = malloc(n * 2);
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7fc00001u, 0xff800000u,
                                0x00012345u, 0x80008000u, 0x7f7fffffu, 0};
    for (int i = 0; i < 8 && i < n; i++) memcpy(&x[i * (n / 8)], &special[i], 4);
    for (int64_t i = 0; i < n; i++) x16[i] = (uint16_t)(i * 2654435761u >> 7);
    layout_nchw_to_nhwc_bf16(h, x, B, C, HW);
    uint16_t *h3 = malloc(n * 2);
    mapo_round_bf16_nhwc(h3, x, B, C, HW); /* ops.h's name for it */
    assert_memory_equal(h3, h, n * 2);
    free(h3);
    layout_nchw_to_nhwc_u16(h2, x16, B, C, HW);
    memcpy(back, acc, n * 4);
    layout_nhwc_to_nchw_f32(back, x, B, C, HW, 1);
    float *plain = malloc(n * 4), *fwd = malloc(n * 4), *fwda = malloc(n * 4);
    layout_nhwc_to_nchw_f32(plain, x, B, C, HW, 0);
    layout_nchw_to_nhwc_f32(fwd, x, B, C, HW, 0);
    memcpy(fwda, acc, n * 4);
    layout_nchw_to_nhwc_f32(fwda, x, B, C, HW, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) {
                const int64_t nchw = (b * C + c) * HW + p, nhwc = (b * HW + p) * C + c;
                assert_int_equal(h[nhwc], mapo_bf16_bits(x[nchw]));
                assert_int_equal(h2[nhwc], x16[nchw]);
                const float want = acc[nchw] + x[nhwc], wantf = acc[nhwc] + x[nchw];
                assert_memory_equal(&back[nchw], &want, 4);
                assert_memory_equal(&plain[nchw], &x[nhwc], 4);
                assert_memory_equal(&fwd[nhwc], &x[nchw], 4);
                assert_memory_equal(&fwda[nhwc], &wantf, 4);
            }
    /* ops.h's float transposes are these */
    nchw_to_nhwc_tiled(plain, x, (int)B, (int)C, HW, 0);
    assert_memory_equal(plain, fwd, n * 4);
    nhwc_to_nchw_tiled(fwd, x, (int)B, (int)C, HW, 0);
    nhwc_to_nchw(fwda, x, (int)B, (int)C, HW);
    assert_memory_equal(fwd, fwda, n * 4);
    free(x), free(acc), free(back), free(h), free(h2), free(x16), free(plain), free(fwd), free(fwda);
}

static void test_layout(void **st) {
    (void)st;
    layout_case(2, 64, 256); /* full tiles only */
    layout_case(3, 37, 53);  /* partial tiles on both edges */
    layout_case(1, 4, 1024); /* conv_in's 4 channels */
    layout_case(2, 16, 7);
}

/* The bf16 linear's bias gradient (double sums over 128-row blocks, added in block order): the
   float32 kernel's in-order double sum rounded to float, up to one float unit (both are the
   exact column sum within ~N 2^-53 relative, then rounded to float: they differ only where a
   rounding boundary falls between them); the same bits at 1 and 2 threads; and a column that
   lost a row block misses by far more than one unit. */
static void db_case(const float *db, const float *dbf, const float *dy, const float *db0,
                    int64_t N, int out) {
    int differ = 0;
    for (int c = 0; c < out; c++) {
        if (db[c] == dbf[c]) continue;
        differ++;
        if (!(nextafterf(dbf[c], db[c]) == db[c]))
            fail_msg("linear N %lld out %d: db[%d] = %.9g, the float32 kernel %.9g (more than one "
                     "float unit apart)", (long long)N, out, c, db[c], dbf[c]);
    }
    printf("  linear N %lld out %d db: %d of %d columns one float unit from the float32 kernel\n",
           (long long)N, out, differ, out);
    float *d1 = copyf(db0, out);
    const int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    linear_backward_mp(MAPO_BF16, NULL, NULL, d1, dy, NULL, NULL, N, 0, out);
    omp_set_num_threads(nt);
    assert_memory_equal(d1, db, out * 4);
    free(d1);
}

static void linear_case(int64_t N, int in, int out, int bias) {
    float *x = rnd(N * in, 1.0), *w = rnd((int64_t)out * in, 0.3), *b = bias ? rnd(out, 0.5) : NULL;
    float *dy = rnd(N * out, 1.0);
    double *x64 = to64(x, N * in, 0), *w64 = to64(w, (int64_t)out * in, 0);
    double *b64 = b ? to64(b, out, 0) : NULL, *dy64 = to64(dy, N * out, 0);
    double *xa = to64(x, N * in, 1), *wa = to64(w, (int64_t)out * in, 1), *dya = to64(dy, N * out, 1);
    float *y = malloc(N * out * 4), *yf = malloc(N * out * 4), *y32 = malloc(N * out * 4);
    double *yr = malloc(N * out * 8), *ya = malloc(N * out * 8);
    linear_forward_mp(MAPO_BF16, y, x, w, b, N, in, out);
    linear_forward(yf, x, w, b, N, in, out);
    linear_forward_mp(MAPO_F32, y32, x, w, b, N, in, out);
    linear_forward_f64(yr, x64, w64, b64, N, in, out);
    linear_forward_f64(ya, xa, wa, NULL, N, in, out);
    char what[96];
    snprintf(what, sizeof what, "linear N %lld in %d out %d y", (long long)N, in, out);
    check_bound(what, y, NULL, yr, ya, N * out, in);
    check_not_f32(what, y, yf, N * out);
    assert_memory_equal(y32, yf, N * out * 4);
    const int64_t nw = (int64_t)out * in;
    float *dx0 = rnd(N * in, 0.1), *dw0 = rnd(nw, 0.1), *db0 = rnd(out, 0.1);
    float *dx = copyf(dx0, N * in), *dw = copyf(dw0, nw), *db = copyf(db0, out);
    float *dbf = copyf(db0, out);
    double *dxr = calloc(N * in, 8), *dwr = calloc(nw, 8), *dxa = calloc(N * in, 8);
    double *dwa = calloc(nw, 8);
    linear_backward_mp(MAPO_BF16, dx, dw, bias ? db : NULL, dy, x, w, N, in, out);
    linear_backward(NULL, NULL, bias ? dbf : NULL, dy, x, w, N, in, out);
    linear_backward_f64(dxr, dwr, NULL, dy64, x64, w64, N, in, out);
    linear_backward_f64(dxa, dwa, NULL, dya, xa, wa, N, in, out);
    what[strlen(what) - 1] = 0;
    strcat(what, "dx");
    check_bound(what, dx, dx0, dxr, dxa, N * in, out);
    what[strlen(what) - 2] = 0;
    strcat(what, "dw");
    check_bound(what, dw, dw0, dwr, dwa, nw, N);
    if (bias) db_case(db, dbf, dy, db0, N, out);
    uint16_t *x16 = malloc(N * in * 2);
    mapo_round_bf16(x16, x, N * in);
    float *dx3 = copyf(dx0, N * in), *dw3 = copyf(dw0, nw), *db3 = copyf(db0, out);
    linear_backward_bf16x(dx3, dw3, bias ? db3 : NULL, dy, x16, w, N, in, out, 0);
    assert_memory_equal(dx3, dx, N * in * 4);
    { /* dx assigned: the gradient added to zeros */
        float *dxa = nans(N * in), *dxz = calloc(N * in, 4);
        linear_backward_bf16x(dxa, NULL, NULL, dy, x16, w, N, in, out, 1);
        linear_backward_bf16x(dxz, NULL, NULL, dy, x16, w, N, in, out, 0);
        same_values("linear dx assigned", dxa, dxz, N * in);
        free(dxa), free(dxz);
    }
    assert_memory_equal(dw3, dw, nw * 4);
    assert_memory_equal(db3, db, out * 4);
    float *y3 = malloc(N * out * 4);
    linear_forward_bf16x(y3, x16, w, bias ? b : NULL, N, in, out);
    assert_memory_equal(y3, y, N * out * 4);
    { /* the weight held in bf16 (a frozen one): the same numbers, from x or from x16 */
        uint16_t *w16 = malloc(nw * 2);
        mapo_round_bf16(w16, w, nw);
        float *y4 = nans(N * out), *dx4 = copyf(dx0, N * in);
        linear_forward_w16(y4, x, NULL, w16, b, N, in, out);
        assert_memory_equal(y4, y, N * out * 4);
        linear_forward_w16(y4, NULL, x16, w16, b, N, in, out);
        assert_memory_equal(y4, y, N * out * 4);
        linear_backward_data_w16(dx4, dy, w16, N, in, out);
        assert_memory_equal(dx4, dx, N * in * 4);
        free(w16), free(y4), free(dx4);
    }
    free(x16), free(dx3), free(dw3), free(db3), free(y3);
    float *bufs[] = {x, w, b, dy, y, yf, y32, dx0, dw0, db0, dx, dw, db, dbf};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    double *dbufs[] = {x64, w64, b64, dy64, xa, wa, dya, yr, ya, dxr, dwr, dxa, dwa};
    for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++) free(dbufs[i]);
}

static void test_linear_bf16(void **st) {
    (void)st;
    linear_case(77, 40, 24, 1);   /* odd sizes */
    linear_case(256, 64, 512, 1); /* GEGLU projection shape */
    linear_case(4, 128, 64, 1);   /* time embedding: few rows */
    linear_case(130, 96, 32, 0);  /* attention projection, no bias */
    linear_case(1000, 16, 8, 1);  /* a long reduction in dw */
}

/* Attention in bf16: q, k, v, dout, P and dS rounded to bf16 (u = 2^-8 each), scores, softmax
   and outputs float32. Each output is a sum of products whose factors carry at most a few
   roundings of relative size u; the softmax turns a score error ds (<= 2u |s|, |s| <= 2 here)
   into a relative error of p of about ds, so every output and gradient should land within a
   few u of the float64 result in relative L2 (measured, printed: 0.55-0.81u). We allow 4u per
   tensor; a wrong scale, a transposed operand or a lost accumulation gives errors of order 1
   (dropping dK's product: error 1). The tile sizes of the
   engine are exercised with Nq = 200 rows against Nk = 77 and 300 keys (one whole query tile:
   a score tile holds at least 2^14 floats, engine_attention.c's tile_floats) and 4,200 keys
   (split query tiles, a partial last one: at most 2^18 / 4200 = 62 rows fit, so the tiles are
   the 64-row minimum, 64 + 64 + 64 + 8, whatever the machine's L2). */
/* Below head dimension 32 bf16 runs float32 products (attention_small.c, or the float32 kernel
   where that does not apply): each output and gradient is a sum over keys or queries of
   products of float32 roundings, within a few units of 2^-24 of the float64 result in relative
   L2 (measured, printed: up to ~15 units, and 26 for dk at 1,100 keys, where dS = P (dP - D)
   cancels: dk's error grows with the key count, ~43 units at 2,100 keys and ~83 at 4,200, for
   the kernel before the base-2 scores alike, so the cases stay at 1,100 keys or fewer); 64
   units allows for that while a bf16-sized error (2^-9 = 32768 units) or a lost term fails. */
#define SMALL_HEAD_UNITS 64
/* the narrow-head kernel asked for some gradients only, or for dq / dk / dv assigned: the same
   bits as the call asking for all three, added to the same starting values */
static void small_head_partial(int B, int H, int Nq, int Nk, int Dh, double scale,
                               const float *q, const float *k, const float *v, const float *g,
                               const float *o, const float *l, const float *dq0,
                               const float *dk0, const float *dv0) {
    const int64_t nq = (int64_t)B * Nq * H * Dh, nk = (int64_t)B * Nk * H * Dh;
    float *a[3] = {copyf(dq0, nq), copyf(dk0, nk), copyf(dv0, nk)};
    attention_backward_mp(MAPO_BF16, a[0], a[1], a[2], g, o, l, q, k, v, B, H, Nq, Nk, Dh, scale,
                          NULL, 0);
    for (int only = 0; only < 3; only++) {
        float *b[3] = {copyf(dq0, nq), copyf(dk0, nk), copyf(dv0, nk)};
        attention_backward_mp(MAPO_BF16, only == 0 ? b[0] : NULL, only == 1 ? b[1] : NULL,
                              only == 2 ? b[2] : NULL, g, o, l, q, k, v, B, H, Nq, Nk, Dh,
                              scale, NULL, 0);
        if (memcmp(a[only], b[only], (only ? nk : nq) * 4))
            fail_msg("narrow-head attention Dh %d: gradient %d alone differs", Dh, only);
        for (int i = 0; i < 3; i++) free(b[i]);
    }
    for (int i = 0; i < 3; i++) free(a[i]);
}

static void attention_case(int B, int H, int Nq, int Nk, int Dh) {
    const int ld = H * Dh;
    const int64_t nq = (int64_t)B * Nq * ld, nk = (int64_t)B * Nk * ld;
    const double scale = 1.0 / sqrt((double)Dh);
    float *q = rnd(nq, 1.0), *k = rnd(nk, 1.0), *v = rnd(nk, 1.0), *g = rnd(nq, 1.0);
    double *q64 = to64(q, nq, 0), *k64 = to64(k, nk, 0), *v64 = to64(v, nk, 0);
    double *g64 = to64(g, nq, 0);
    float *o = malloc(nq * 4), *of = malloc(nq * 4), *l = malloc((size_t)B * H * Nq * 4);
    float *lf = malloc((size_t)B * H * Nq * 4);
    double *o64 = malloc(nq * 8), *l64 = malloc((size_t)B * H * Nq * 8);
    attention_forward_mp(MAPO_BF16, o, l, q, k, v, B, H, Nq, Nk, Dh, scale, NULL);
    attention_forward(of, lf, q, k, v, B, H, Nq, Nk, Dh, scale);
    attention_forward_f64(o64, l64, q64, k64, v64, B, H, Nq, Nk, Dh, scale);
    float *dq0 = rnd(nq, 0.1), *dk0 = rnd(nk, 0.1), *dv0 = rnd(nk, 0.1);
    float *dq = copyf(dq0, nq), *dk = copyf(dk0, nk), *dv = copyf(dv0, nk);
    double *dq64 = calloc(nq, 8), *dk64 = calloc(nk, 8), *dv64 = calloc(nk, 8);
    attention_backward_mp(MAPO_BF16, dq, dk, dv, g, o, l, q, k, v, B, H, Nq, Nk, Dh, scale, NULL,
                          0);
    { /* dq, dk, dv assigned (either kernel): the gradients added to zeros */
        float *a[3] = {nans(nq), nans(nk), nans(nk)};
        float *z[3] = {calloc(nq, 4), calloc(nk, 4), calloc(nk, 4)};
        attention_backward_mp(MAPO_BF16, a[0], a[1], a[2], g, o, l, q, k, v, B, H, Nq, Nk, Dh,
                              scale, NULL, 1);
        attention_backward_mp(MAPO_BF16, z[0], z[1], z[2], g, o, l, q, k, v, B, H, Nq, Nk, Dh,
                              scale, NULL, 0);
        for (int i = 0; i < 3; i++) {
            same_values("attention gradient assigned", a[i], z[i], i ? nk : nq);
            free(a[i]), free(z[i]);
        }
    }
    /* q, k, v kept in bf16 by the forward for the backward (which then gets no q, k, v):
       the same bits; none kept where the float32 kernel runs (head dims below 32) */
    const int64_t nkeep = attention_kept_bf16(MAPO_BF16, B, H, Nq, Nk, Dh);
    const int Dp = (Dh + 31) / 32 * 32; /* rows padded with zeros to a multiple of 32 */
    assert_true(nkeep == (Dh >= 32 ? (int64_t)B * H * (Nq + 2 * Nk) * Dp : 0));
    assert_true(attention_kept_bf16(MAPO_F32, B, H, Nq, Nk, Dh) == 0);
    if (nkeep) {
        uint16_t *kept = malloc(nkeep * 2);
        float *o2 = malloc(nq * 4), *l2 = malloc((size_t)B * H * Nq * 4);
        float *dq2 = copyf(dq0, nq), *dk2 = copyf(dk0, nk), *dv2 = copyf(dv0, nk);
        attention_forward_mp(MAPO_BF16, o2, l2, q, k, v, B, H, Nq, Nk, Dh, scale, kept);
        attention_backward_mp(MAPO_BF16, dq2, dk2, dv2, g, o2, l2, NULL, NULL, NULL, B, H, Nq,
                              Nk, Dh, scale, kept, 0);
        assert_memory_equal(o2, o, nq * 4);
        assert_memory_equal(l2, l, (size_t)B * H * Nq * 4);
        assert_memory_equal(dq2, dq, nq * 4);
        assert_memory_equal(dk2, dk, nk * 4);
        assert_memory_equal(dv2, dv, nk * 4);
        free(kept), free(o2), free(l2), free(dq2), free(dk2), free(dv2);
    }
    attention_backward_f64(dq64, dk64, dv64, g64, o64, l64, q64, k64, v64, B, H, Nq, Nk, Dh,
                           scale);
    /* compare the accumulated part: got - start against the float64 gradient */
    for (int64_t i = 0; i < nq; i++) dq[i] -= dq0[i];
    for (int64_t i = 0; i < nk; i++) dk[i] -= dk0[i], dv[i] -= dv0[i];
    float *ref = malloc((nq > nk ? nq : nk) * 4);
    const struct { const char *name; const float *got; const double *want; int64_t n; } c[] = {
        {"out", o, o64, nq}, {"dq", dq, dq64, nq}, {"dk", dk, dk64, nk}, {"dv", dv, dv64, nk}};
    for (int j = 0; j < 4; j++) {
        for (int64_t i = 0; i < c[j].n; i++) ref[i] = (float)c[j].want[i];
        const double e = rel_err_f32(c[j].got, ref, c[j].n);
        if (Dh < 32) { /* float32 products: held to float32's scale (below) */
            if (!(e <= SMALL_HEAD_UNITS * U_F32))
                fail_msg("attention B%d H%d Nq %d Nk %d Dh %d %s: relative error %.3g > %d "
                         "float32 units", B, H, Nq, Nk, Dh, c[j].name, e, SMALL_HEAD_UNITS);
            printf("  attention Nq %d Nk %d Dh %d %-3s relative L2 error %.1f float32 units\n",
                   Nq, Nk, Dh, c[j].name, e / U_F32);
            continue;
        }
        if (!(e <= 4 * U_BF16))
            fail_msg("attention B%d H%d Nq %d Nk %d Dh %d %s: relative error %.3g > 4u", B, H,
                     Nq, Nk, Dh, c[j].name, e);
        printf("  attention Nq %d Nk %d Dh %d %-3s relative L2 error %.2fu\n", Nq, Nk, Dh,
               c[j].name, e / U_BF16);
    }
    char what[96];
    snprintf(what, sizeof what, "attention Nq %d Nk %d out", Nq, Nk);
    if (Dh >= 32) check_not_f32(what, o, of, nq);
    else if (!attention_small_applies(Dh)) /* no narrow-head kernel: the float32 kernel */
        assert_memory_equal(o, of, nq * 4);
    else
        small_head_partial(B, H, Nq, Nk, Dh, scale, q, k, v, g, o, l, dq0, dk0, dv0);
    float *bufs[] = {q, k, v, g, o, of, l, lf, dq0, dk0, dv0, dq, dk, dv, ref};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    double *dbufs[] = {q64, k64, v64, g64, o64, l64, dq64, dk64, dv64};
    for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++) free(dbufs[i]);
}

#ifdef __AVX512F__
#include "../src/ops/exp16.h"
/* exp2_16_masked, the bf16 attention's exp (both kernels): within 4 float32 units of 2^x in
   double on a grid of step 1/4096 from -126 to 127 (the reduction x = n + f and the scaling by
   2^n are exact; the fitted polynomial's error is at most 1.6 units on [-1/2, 1/2] with float32
   Horner steps, tools/fit_exp2.py); 0 below -126 and on the lanes outside the mask. A
   coefficient wrong in its fourth digit is off by hundreds of units. */
static void test_exp2(void **st) {
    (void)st;
    /* static: gcc raises a local float[16]'s alignment to 64 and turns the unaligned loads into
       aligned ones, which AddressSanitizer's fake stack frames (make test-sanitize:
       detect_stack_use_after_return) do not honour */
    static float x[16], y[16];
    double worst = 0;
    for (int i = 0; i < 253 * 4096; i += 16) {
        for (int l = 0; l < 16; l++) x[l] = -126.0f + (float)(i + l) / 4096.0f;
        _mm512_storeu_ps(y, exp2_16_masked(_mm512_loadu_ps(x), 0xffff));
        for (int l = 0; l < 16; l++) {
            const double want = exp2((double)x[l]), e = fabs((double)y[l] - want) / want;
            if (e > worst) worst = e;
        }
    }
    printf("  exp2_16_masked: worst relative error %.2f float32 units over [-126, 127)\n",
           worst / U_F32);
    assert_true(worst <= 4 * U_F32);
    for (int l = 0; l < 16; l++) x[l] = l < 8 ? 0.5f : (l == 8 ? -126.5f : -1e30f);
    _mm512_storeu_ps(y, exp2_16_masked(_mm512_loadu_ps(x), 0x5555));
    for (int l = 0; l < 16; l++) {
        const double want = l < 8 && l % 2 == 0 ? sqrt(2.0) : 0.0;
        assert_true(fabs(y[l] - want) <= 4 * U_F32 * want);
    }
}
#endif

static void test_attention_bf16(void **st) {
    (void)st;
    attention_case(1, 2, 200, 4200, 32); /* split query tiles and a partial last one */
    attention_case(2, 2, 200, 300, 32);  /* one whole query tile */
    attention_case(2, 3, 200, 77, 32);   /* cross-attention: 77 text tokens, whole tile */
    attention_case(2, 2, 200, 300, 40);  /* head dim 40 (SD 1.5): packed rows padded to 64 */
    attention_case(2, 3, 50, 77, 16);   /* head dim 16: the narrow-head kernel */
    attention_case(2, 4, 201, 300, 8);  /* bench_unet.json's heads; rows not a multiple of 4 */
    attention_case(1, 2, 37, 5, 1);     /* head dim 1, five keys */
    attention_case(1, 2, 37, 1100, 16); /* the narrow-head forward's online softmax over two
                                           blocks of keys (1,024 and a partial 76) */
    attention_case(1, 1, 64, 64, 24);   /* 24: above the narrow-head kernel, the float32 one */
    attention_case(1, 1, 64, 64, 64);   /* head dim 64 */
    attention_case(2, 2, 200, 300, 32);  /* again: the cached products */
}

/* ---- GroupNorm / LayerNorm: MAPO_F32 is the float kernel bit for bit; MAPO_BF16 (the sums in
   vector lanes) is held to the float64 kernels within 8 float32 units of the tensor's largest
   value: its outputs are a few float32 operations on statistics computed in double, as the
   float kernel's are (which this test also holds to that bound). A lane dropped from a sum, or
   a sum that is not a sum of every element, is off by orders of magnitude. */
static double norm_err(const float *got, const double *ref, int64_t n) {
    double mx = 0, e = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
        if (fabs((double)got[i] - ref[i]) > e) e = fabs((double)got[i] - ref[i]);
    }
    return e / (mx * U_F32);
}
static void norm_check(const char *what, const float *mp, const float *f32, const double *ref,
                       int64_t n) {
    const double e = norm_err(mp, ref, n), ef = norm_err(f32, ref, n);
    printf("  %-28s error %.2f float32 units (float kernel %.2f)\n", what, e, ef);
    if (!(e <= 8.0)) fail_msg("%s: error %.3g float32 units > 8", what, e);
    if (!(ef <= 8.0)) fail_msg("%s (float kernel): error %.3g float32 units > 8", what, ef);
}
static void same_bits(const char *what, const float *a, const float *b, int64_t n) {
    if (memcmp(a, b, n * sizeof(float))) fail_msg("%s: MAPO_F32 differs from the float kernel", what);
}

/* The bf16 norm backward (norms_vred.c) sums dgamma / dbeta in the passes that compute dx:
   asked for dx alone, or for dgamma and dbeta alone, each must come out as in the full call,
   bit for bit, and the full call must give the same bits on one thread. */
typedef void (*norm_bw_fn)(const void *ctx, float *dx, float *dg, float *db);
static void bf16_norm_variants(const char *what, norm_bw_fn run, const void *ctx, const float *dx,
                               const float *dg, const float *db, const float *dx0,
                               const float *dg0, const float *db0, int64_t n, int C) {
    float *a = copyf(dx0, n), *g = copyf(dg0, C), *b = copyf(db0, C);
    run(ctx, a, NULL, NULL);
    run(ctx, NULL, g, b);
    if (memcmp(a, dx, n * 4) || memcmp(g, dg, C * 4) || memcmp(b, db, C * 4))
        fail_msg("%s bf16: dx alone or dgamma / dbeta alone differ from the full call", what);
    memcpy(a, dx0, n * 4), memcpy(g, dg0, C * 4), memcpy(b, db0, C * 4);
    const int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    run(ctx, a, g, b);
    omp_set_num_threads(nt);
    if (memcmp(a, dx, n * 4) || memcmp(g, dg, C * 4) || memcmp(b, db, C * 4))
        fail_msg("%s bf16: one thread differs from %d", what, nt);
    free(a), free(g), free(b);
}
typedef struct {
    const float *dy, *x, *m, *r, *ga;
    int B, C, G;
    int64_t HW, N;
} norm_ctx;
static void gn_bw16(const void *c_, float *dx, float *dg, float *db) {
    const norm_ctx *c = c_;
    group_norm_backward_mp(MAPO_BF16, dx, dg, db, c->dy, c->x, c->m, c->r, c->ga, c->B, c->C,
                           c->HW, c->G);
}
static void ln_bw16(const void *c_, float *dx, float *dg, float *db) {
    const norm_ctx *c = c_;
    layer_norm_backward_mp(MAPO_BF16, dx, dg, db, c->dy, c->x, c->m, c->r, c->ga, c->N, c->C);
}

static void group_norm_case(int B, int C, int64_t HW, int G) {
    const int64_t n = (int64_t)B * C * HW, ng = (int64_t)B * G;
    float *x = rnd(n, 2.0), *ga = rnd(C, 1.0), *be = rnd(C, 0.5), *dy = rnd(n, 1.0);
    for (int64_t i = 0; i < n; i++) x[i] += 3.0f; /* a mean well away from 0 */
    float *dx0 = rnd(n, 0.1), *dg0 = rnd(C, 0.1), *db0 = rnd(C, 0.1);
    double *x64 = to64(x, n, 0), *g64 = to64(ga, C, 0), *b64 = to64(be, C, 0);
    double *dy64 = to64(dy, n, 0), *y64 = malloc(n * 8), *m64 = malloc(ng * 8), *r64 = malloc(ng * 8);
    double *dx64 = to64(dx0, n, 0), *dg64 = to64(dg0, C, 0), *db64 = to64(db0, C, 0);
    group_norm_forward_f64(y64, m64, r64, x64, g64, b64, B, C, HW, G, 1e-5);
    group_norm_backward_f64(dx64, dg64, db64, dy64, x64, m64, r64, g64, B, C, HW, G);
    float *y[3], *m[3], *r[3], *dx[3], *dg[3], *db[3]; /* float kernel, MAPO_F32, MAPO_BF16 */
    for (int k = 0; k < 3; k++) {
        y[k] = malloc(n * 4), m[k] = malloc(ng * 4), r[k] = malloc(ng * 4);
        dx[k] = copyf(dx0, n), dg[k] = copyf(dg0, C), db[k] = copyf(db0, C);
        if (k == 0) {
            group_norm_forward(y[k], m[k], r[k], x, ga, be, B, C, HW, G, 1e-5);
            group_norm_backward(dx[k], dg[k], db[k], dy, x, m[k], r[k], ga, B, C, HW, G);
        } else {
            const mapo_precision p = k == 1 ? MAPO_F32 : MAPO_BF16;
            group_norm_forward_mp(p, y[k], m[k], r[k], x, ga, be, B, C, HW, G, 1e-5);
            group_norm_backward_mp(p, dx[k], dg[k], db[k], dy, x, m[k], r[k], ga, B, C, HW, G);
        }
    }
    same_bits("group_norm y", y[1], y[0], n);
    same_bits("group_norm dx", dx[1], dx[0], n);
    same_bits("group_norm dgamma", dg[1], dg[0], C);
    norm_check("group_norm y", y[2], y[0], y64, n);
    norm_check("group_norm dx", dx[2], dx[0], dx64, n);
    norm_check("group_norm dgamma", dg[2], dg[0], dg64, C);
    norm_check("group_norm dbeta", db[2], db[0], db64, C);
    const norm_ctx gc = {dy, x, m[2], r[2], ga, B, C, G, HW, 0};
    bf16_norm_variants("group_norm", gn_bw16, &gc, dx[2], dg[2], db[2], dx0, dg0, db0, n, C);
    for (int k = 0; k < 3; k++) {
        free(y[k]), free(m[k]), free(r[k]), free(dx[k]), free(dg[k]), free(db[k]);
    }
    free(x), free(ga), free(be), free(dy), free(dx0), free(dg0), free(db0);
    free(x64), free(g64), free(b64), free(dy64), free(y64), free(m64), free(r64);
    free(dx64), free(dg64), free(db64);
}

static void layer_norm_case(int64_t N, int C) {
    const int64_t n = N * C;
    float *x = rnd(n, 2.0), *ga = rnd(C, 1.0), *be = rnd(C, 0.5), *dy = rnd(n, 1.0);
    for (int64_t i = 0; i < n; i++) x[i] -= 2.0f;
    float *dx0 = rnd(n, 0.1), *dg0 = rnd(C, 0.1), *db0 = rnd(C, 0.1);
    double *x64 = to64(x, n, 0), *g64 = to64(ga, C, 0), *b64 = to64(be, C, 0);
    double *dy64 = to64(dy, n, 0), *y64 = malloc(n * 8), *m64 = malloc(N * 8), *r64 = malloc(N * 8);
    double *dx64 = to64(dx0, n, 0), *dg64 = to64(dg0, C, 0), *db64 = to64(db0, C, 0);
    layer_norm_forward_f64(y64, m64, r64, x64, g64, b64, N, C, 1e-5);
    layer_norm_backward_f64(dx64, dg64, db64, dy64, x64, m64, r64, g64, N, C);
    float *y[3], *m[3], *r[3], *dx[3], *dg[3], *db[3];
    for (int k = 0; k < 3; k++) {
        y[k] = malloc(n * 4), m[k] = malloc(N * 4), r[k] = malloc(N * 4);
        dx[k] = copyf(dx0, n), dg[k] = copyf(dg0, C), db[k] = copyf(db0, C);
        if (k == 0) {
            layer_norm_forward(y[k], m[k], r[k], x, ga, be, N, C, 1e-5);
            layer_norm_backward(dx[k], dg[k], db[k], dy, x, m[k], r[k], ga, N, C);
        } else {
            const mapo_precision p = k == 1 ? MAPO_F32 : MAPO_BF16;
            layer_norm_forward_mp(p, y[k], m[k], r[k], x, ga, be, N, C, 1e-5);
            layer_norm_backward_mp(p, dx[k], dg[k], db[k], dy, x, m[k], r[k], ga, N, C);
        }
    }
    same_bits("layer_norm y", y[1], y[0], n);
    same_bits("layer_norm dx", dx[1], dx[0], n);
    same_bits("layer_norm dgamma", dg[1], dg[0], C);
    norm_check("layer_norm y", y[2], y[0], y64, n);
    norm_check("layer_norm dx", dx[2], dx[0], dx64, n);
    norm_check("layer_norm dgamma", dg[2], dg[0], dg64, C);
    norm_check("layer_norm dbeta", db[2], db[0], db64, C);
    const norm_ctx lc = {dy, x, m[2], r[2], ga, 0, C, 0, 0, N};
    bf16_norm_variants("layer_norm", ln_bw16, &lc, dx[2], dg[2], db[2], dx0, dg0, db0, n, C);
    for (int k = 0; k < 3; k++) {
        free(y[k]), free(m[k]), free(r[k]), free(dx[k]), free(dg[k]), free(db[k]);
    }
    free(x), free(ga), free(be), free(dy), free(dx0), free(dg0), free(db0);
    free(x64), free(g64), free(b64), free(dy64), free(y64), free(m64), free(r64);
    free(dx64), free(dg64), free(db64);
}

static void test_norms(void **st) {
    (void)st;
    group_norm_case(2, 64, 1024, 32); /* bench_unet_dh64's first block */
    group_norm_case(3, 24, 37, 6);    /* odd sizes: vector tails */
    layer_norm_case(300, 64);
    layer_norm_case(77, 37);
}

static void test_probe(void **st) {
    (void)st;
    /* the utilisation probe returns a finite positive rate for both precisions */
    const double b = mapo_gemm_ceiling_gflops(MAPO_BF16, 128, 2);
    const double f = mapo_gemm_ceiling_gflops(MAPO_F32, 128, 2);
    assert_true(b > 0 && isfinite(b));
    assert_true(f > 0 && isfinite(f));
    assert_true(mapo_precision_native(MAPO_F32));
    /* the bf16 ops run before this test grew the engine's workspaces, and they are counted */
    assert_true(mapo_engine_workspace_bytes() > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_bf16),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_linear_bf16),
#ifdef __AVX512F__
        cmocka_unit_test(test_exp2),
#endif
        cmocka_unit_test(test_attention_bf16),
        cmocka_unit_test(test_norms),
        cmocka_unit_test(test_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
