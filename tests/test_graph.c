/* test_graph.c -- the tape's own rules (src/models/graph.c), at the level of ops:
 *  - in bf16 the first write of an activation gradient assigns (gin_assign) and identity paths
 *    hand over or copy the output's gradient (identity_grad): on a chain of adds (one tensor
 *    added to itself, a channel bias, a residual back to an input) the gradients equal the
 *    float32 tape's, which zeroes and adds, bit for bit (adds do not depend on the precision;
 *    the values are non-zero, so 0 + v is v);
 *  - t_group_norm_silu equals t_group_norm then t_silu bit for bit (output, input, gamma and
 *    beta gradients) in float32 and in bf16, and holds one activation less after the forward;
 *  - selective recomputation (g->recompute): a GroupNorm + SiLU feeding two convolutions and a
 *    LayerNorm feeding two linears are dropped at their release and regenerated in backward,
 *    giving every gradient of the graph without it bit for bit, holding exactly those two
 *    tensors (float32) or their bf16 copies (bf16) less after the forward, plus the LayerNorms'
 *    row statistics in double; a LayerNorm output that a SiLU also reads stays. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/graph.h"
#include "mapo/ops.h"
#include "testutil.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* xorshift64*, in [-1, 1), never 0 */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    const float v = (float)((double)((g_rng * 2685821657736338717ull) >> 11) /
                                4503599627370496.0 - 1.0);
    return v == 0 ? 0.5f : v;
}
static float *rnd(int64_t n) {
    float *p = malloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

enum { B = 2, C = 32, H = 4, W = 5, N = B * C * H * W };

/* y1 = (a + b) + (b + b) (two fresh activations: the first takes y1's gradient buffer, the
   second gets a copy), z = (y1 + y1) + v[b, c] + a (one tensor twice; a channel bias; a
   residual); returns da, db, dv (params' gradients, zeroed first) after backward from dz */
static void add_chain(int precision, const float *a, const float *b, const float *v,
                      const float *dz, float *da, float *db, float *dv) {
    const int64_t s4[4] = {B, C, H, W}, s2[2] = {B, C};
    tensor ta, tb, tv;
    memset(da, 0, N * 4), memset(db, 0, N * 4), memset(dv, 0, B * C * 4);
    tensor_param(&ta, (float *)a, da, 4, s4);
    tensor_param(&tb, (float *)b, db, 4, s4);
    tensor_param(&tv, (float *)v, dv, 2, s2);
    graph g;
    graph_init(&g, 1);
    g.precision = precision;
    tensor *p = t_add(&g, &ta, &tb), *q = t_add(&g, &tb, &tb);
    tensor *y1 = t_add(&g, p, q);
    tensor *y2 = t_add(&g, y1, y1);
    tensor *y3 = t_add_channel_bias(&g, y2, &tv);
    tensor *z = t_add(&g, y3, &ta);
    memcpy(graph_grad(&g, z), dz, N * 4);
    graph_backward(&g, z);
    graph_free(&g);
}

static void test_identity_paths(void **st) {
    (void)st;
    float *a = rnd(N), *b = rnd(N), *v = rnd(B * C), *dz = rnd(N);
    float *g32[3] = {malloc(N * 4), malloc(N * 4), malloc(B * C * 4)};
    float *g16[3] = {malloc(N * 4), malloc(N * 4), malloc(B * C * 4)};
    add_chain(MAPO_F32, a, b, v, dz, g32[0], g32[1], g32[2]);
    add_chain(MAPO_BF16, a, b, v, dz, g16[0], g16[1], g16[2]);
    assert_memory_equal(g16[0], g32[0], N * 4);
    assert_memory_equal(g16[1], g32[1], N * 4);
    assert_memory_equal(g16[2], g32[2], B * C * 4);
    /* and the values: da = dz (residual) + 2 dz (y1 twice), db = 2 dz (via p) + 4 dz (b + b) */
    for (int i = 0; i < N; i++) {
        assert_true(fabsf(g32[0][i] - 3 * dz[i]) <= 1e-6f * fabsf(dz[i]));
        assert_true(fabsf(g32[1][i] - 6 * dz[i]) <= 1e-6f * fabsf(dz[i]));
    }
    for (int k = 0; k < 3; k++) free(g32[k]), free(g16[k]);
    free(a), free(b), free(v), free(dz);
}

/* GroupNorm + SiLU: fused (1) or as two ops (0); y, dx, dgamma, dbeta, and the bytes the tape
   holds after the forward */
static size_t gn_silu(int precision, int fused, const float *x, const float *gamma,
                      const float *beta, const float *dy, float *y, float *dx, float *dg,
                      float *db) {
    const int64_t s4[4] = {B, C, H, W}, s1[1] = {C};
    tensor tx, tg, tb;
    memset(dx, 0, N * 4), memset(dg, 0, C * 4), memset(db, 0, C * 4);
    tensor_param(&tx, (float *)x, dx, 4, s4);
    tensor_param(&tg, (float *)gamma, dg, 1, s1);
    tensor_param(&tb, (float *)beta, db, 1, s1);
    graph g;
    graph_init(&g, 1);
    g.precision = precision;
    tensor *out;
    if (fused) {
        out = t_group_norm_silu(&g, &tx, &tg, &tb, 8, 1e-5);
    } else {
        tensor *h = t_group_norm(&g, &tx, &tg, &tb, 8, 1e-5);
        out = t_silu(&g, h);
        graph_release(&g, h);
    }
    memcpy(y, out->data, N * 4);
    const size_t held = g.bytes_live;
    memcpy(graph_grad(&g, out), dy, N * 4);
    graph_backward(&g, out);
    graph_free(&g);
    return held;
}

static void test_group_norm_silu(void **st) {
    (void)st;
    float *x = rnd(N), *gamma = rnd(C), *beta = rnd(C), *dy = rnd(N);
    for (int p = 0; p < 2; p++) {
        const int precision = p ? MAPO_BF16 : MAPO_F32;
        float *r[2][4];
        size_t held[2];
        for (int f = 0; f < 2; f++) {
            r[f][0] = malloc(N * 4), r[f][1] = malloc(N * 4);
            r[f][2] = malloc(C * 4), r[f][3] = malloc(C * 4);
            held[f] = gn_silu(precision, f, x, gamma, beta, dy, r[f][0], r[f][1], r[f][2],
                              r[f][3]);
        }
        assert_memory_equal(r[1][0], r[0][0], N * 4);
        assert_memory_equal(r[1][1], r[0][1], N * 4);
        assert_memory_equal(r[1][2], r[0][2], C * 4);
        assert_memory_equal(r[1][3], r[0][3], C * 4);
        /* after the forward the two ops hold the GroupNorm's output as well */
        assert_true(held[1] + N * sizeof(float) == held[0]);
        for (int f = 0; f < 2; f++)
            for (int k = 0; k < 4; k++) free(r[f][k]);
    }
    free(x), free(gamma), free(beta), free(dy);
}

/* x -> GroupNorm + SiLU -> two 3x3 convs (c1 + bias, c2); c1 -> tokens -> LayerNorm -> two
   linears (q, k); the tokens -> a second LayerNorm -> a SiLU and a linear (v); out = q + k +
   silu + v + tokens of c2. Every parameter's gradient goes into grads (zeroed here); returns
   the activation bytes held after the forward. */
enum { NP = 10 };
static size_t recompute_graph(int precision, int recompute, float *const prm[NP],
                              const float *dy, float *const grads[NP]) {
    static const int64_t sizes[NP] = {N, C, C, C * C * 9, C, C * C * 9, C, C, C * C, C * C};
    const int64_t s4[4] = {B, C, H, W}, s1[1] = {C}, sw[4] = {C, C, 3, 3}, s2[2] = {C, C};
    const int64_t *shp[NP] = {s4, s1, s1, sw, s1, sw, s1, s1, s2, s2};
    const int nd[NP] = {4, 1, 1, 4, 1, 4, 1, 1, 2, 2};
    tensor t[NP + 1];
    for (int k = 0; k < NP; k++) {
        memset(grads[k], 0, sizes[k] * 4);
        tensor_param(&t[k], prm[k], grads[k], nd[k], shp[k]);
    }
    tensor_param(&t[NP], prm[9], grads[9], 2, s2); /* the third linear shares wk's memory */
    graph g;
    graph_init(&g, 1);
    g.precision = precision;
    g.recompute = recompute;
    tensor *s = t_group_norm_silu(&g, &t[0], &t[1], &t[2], 8, 1e-5);
    tensor *c1 = t_conv2d(&g, s, &t[3], &t[4], 1, 1), *c2 = t_conv2d(&g, s, &t[5], NULL, 1, 1);
    graph_release(&g, s);
    tensor *tk = t_nchw_to_nhwc(&g, c1), *tk2 = t_nchw_to_nhwc(&g, c2);
    graph_release(&g, c1), graph_release(&g, c2);
    tensor *n = t_layer_norm(&g, tk, &t[6], &t[7], 1e-5);
    tensor *q = t_linear(&g, n, &t[8], NULL), *k = t_linear(&g, n, &t[9], NULL);
    graph_release(&g, n);
    tensor *n2 = t_layer_norm(&g, tk, &t[7], &t[6], 1e-5);
    /* the SiLU recorded last, so its backward runs before the linear's could regenerate n2 */
    tensor *v = t_linear(&g, n2, &t[NP], NULL), *sl = t_silu(&g, n2);
    graph_release(&g, n2);
    tensor *a = t_add(&g, q, k), *b = t_add(&g, sl, v);
    tensor *c = t_add(&g, a, b), *out = t_add(&g, c, tk2);
    const size_t held = g.bytes_live;
    memcpy(graph_grad(&g, out), dy, N * 4);
    graph_backward(&g, out);
    graph_free(&g);
    return held;
}

static void test_recompute(void **st) {
    (void)st;
    static const int64_t sizes[NP] = {N, C, C, C * C * 9, C, C * C * 9, C, C, C * C, C * C};
    float *prm[NP], *gr[2][NP], *dy = rnd(N);
    for (int k = 0; k < NP; k++) {
        prm[k] = rnd(sizes[k]);
        gr[0][k] = malloc(sizes[k] * 4), gr[1][k] = malloc(sizes[k] * 4);
    }
    for (int p = 0; p < 2; p++) {
        const int precision = p ? MAPO_BF16 : MAPO_F32;
        const size_t kept = recompute_graph(precision, 0, prm, dy, gr[0]);
        const size_t dropped = recompute_graph(precision, 1, prm, dy, gr[1]);
        for (int k = 0; k < NP; k++) assert_memory_equal(gr[1][k], gr[0][k], sizes[k] * 4);
        /* s and n: float32 data (their consumers' weight gradients read it) or bf16 copies,
           less each LayerNorm's rows' statistics in double (mean and rstd) kept for them */
        const size_t st = 2 * (B * H * W) * 2 * sizeof(double);
        assert_int_equal(kept + st, dropped + 2 * N * (p ? sizeof(uint16_t) : sizeof(float)));
    }
    for (int k = 0; k < NP; k++) free(prm[k]), free(gr[0][k]), free(gr[1][k]);
    free(dy);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_paths),
        cmocka_unit_test(test_group_norm_silu),
        cmocka_unit_test(test_recompute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
