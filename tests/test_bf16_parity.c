/* test_bf16_parity.c -- mapo's --mixed_precision bf16 against PyTorch's own bf16 (issue 8).
 *
 * The bound: on the parity fixtures, mapo bf16's error against the PyTorch float32
 * reference (model_pred, errors, loss, every gradient; MaPO objective) is at most 1.5x
 * torch.autocast("cpu", bfloat16)'s own error against that reference, per tensor.
 * Fixtures: tests/fixtures/unet/<case>/expect_mapo.safetensors (float32 reference, from
 * tools/make_unet_fixtures.py) and autocast_bf16.safetensors (tools/make_bf16_fixtures.py):
 *   relerr.<n>     ||autocast - ref|| / ||ref|| on the fixture's model and batch
 *   relerr_max.<n> the largest of that and the same error on 8 perturbed copies of the problem
 *                  (parameters and inputs x (1 + U(-1,1) 2^-8), each against its own float32 run)
 *
 * Why not relerr.<n> alone per tensor: a per-tensor error of a bf16 run is one draw of the
 * rounding errors, and for small or cancelling tensors (bias and norm gradients: a sum over
 * tokens of a gradient that nearly cancels) that draw varies several-fold between equally
 * good runs. Measured (tools/make_bf16_fixtures.py's perturbed copies): relerr_max / relerr has
 * median ~1.7 and reaches 7..13 on norm-bias gradients and the scalar loss (model_pred: 1.0..1.1).
 * An exact emulation of this engine's design in torch (operands rounded to bf16, float32
 * accumulation, float32 outputs, norms / attention float32) has median ratio ~0.55 to torch's
 * relerr, yet 4 / 33 / 4 tensors of sd15 / sdxl / mixed above 1.5x (the oneDNN engine: 6 / 31 /
 * 3, worst 2.0 / 3.9 / 2.6); on 4 other batches the tensors above 1.5x change from batch to
 * batch (their ratio elsewhere: median 0.45) -- noise, not a systematic loss.
 * So the test asserts the bound in the two forms that noise does not break:
 *   1. per tensor: mapo_err <= max(1.5 * relerr_max, FLOOR): mapo's draw within 1.5x of the
 *      worst of torch's 9 draws on that tensor (emulated and oneDNN engine: worst 0.94);
 *   2. per case: the median over all tensors of mapo_err / relerr <= 1.5 (the literal ratio;
 *      a median over 211..495 tensors barely moves between draws: emulated 0.50..0.69 on
 *      12 draws), and model_pred itself: mapo_err <= max(1.5 * relerr, FLOOR) (model_pred's
 *      ratio is stable: emulated 0.48..0.69 on 12 draws).
 * The literal per-tensor count (mapo_err > 1.5 * relerr) is printed, not asserted.
 * FLOOR = 1e-4: mapo's float32 path is held to 1e-4 against this very reference
 * (test_unet_parity.c), and torch's own float32 rerun differs from it by up to 5.5e-5 (memory
 * alignment); a bf16 bound below that would test float32 summation order, not bf16. It only
 * acts if autocast left a tensor (nearly) exactly float32 -- none in the current fixtures,
 * whose smallest autocast error is 2.2e-4 (the errors of mixed).
 *
 * And bf16 must really be in effect: model_pred of the bf16 run differs from the float32
 * run's (same model, u.precision = MAPO_F32) by >= 1e-5 relative. bf16 operands carry 8
 * significant bits (relative rounding up to 2^-9 ~ 2e-3); through the UNet that gives ~7e-3
 * (emulated); two float32 runs agree to ~1e-6. A silent fallback to float32 fails here.
 *
 * The attention: mapo's bf16 attention (src/ops/engine_attention.c) runs its bf16 kernel only
 * for head dims >= BF16_MIN_DH = 32; below, float32 products (src/ops/attention_small.c up to
 * head dim 16, the float32 kernel above). sd15, sdxl and mixed have heads of dim 1..8, so on
 * them the comparison covers convolutions and linear layers with a float32 attention. attn32 (tools/make_unet_fixtures.py: one 32-channel block, the mid
 * block's self- and cross-attention with one head of dim 32, a 16x20 latent: the
 * self-attention's 320 queries take two query tiles where a score tile holds 2^16 floats, one
 * where it holds 2^17 (engine_attention.c's tile_floats follows the L2; test_engine splits) is held to the same bounds with the bf16
 * attention in the loop. That it is: its head dim is asserted >= 32, and the attention at the
 * model's exact shapes (B, heads, Nq, Nk, Dh of its mid block) is run in bf16 and in float32
 * on random q, k, v, dout, and its output and dq must differ by >= MIN_BF16_DIFF relative
 * (measured: ~2e-3); with the float32 kernel they are bit-identical. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/pairs.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"
#include "testutil.h"
#include "unet_case.h"

#define FACTOR 1.5        /* the bound */
#define FLOOR 1e-4        /* float32-level tolerance (see above) */
#define MIN_BF16_DIFF 1e-5 /* bf16 vs float32 model_pred, at least */

typedef struct {
    char name[600];
    double mapo, torch, torch_max;
} tensor_err;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}


/* one MaPO step at precision p from zeroed gradients: pred, errors, loss, gradients in u */
static void mapo_step(unet *u, const unet_inputs *in, const debug_batch *b, mapo_precision p,
                      float *pred, double *err, double *loss) {
    objective_cfg oc;
    objective_cfg_default(&oc);
    assert_int_equal(objective_parse("mapo", &oc.kind), 0);
    u->precision = p;
    params_zero_grad(&u->params);
    objective_stats st;
    if (preference_step(u, in, b->target, &oc, NULL, 1.0, err, &st, pred, NULL))
        fail_msg("%s", mapo_last_error());
    *loss = st.loss;
}

static double fixture_scalar(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s lacks '%s' (rerun tools/make_bf16_fixtures.py)", f->path, name);
    assert_int_equal(t->numel, 1);
    double v;
    assert_int_equal(st_to_f64(t, &v), 0);
    if (!(isfinite(v) && v >= 0)) fail_msg("%s: '%s' = %g is not a relative error", f->path, name, v);
    return v;
}

/* mapo's error on one tensor against the float32 reference, and torch autocast's two numbers */
static void measure(tensor_err *e, const st_file *ref, const st_file *ac, const char *name,
                    const float *x, int64_t n) {
    const st_tensor *t = st_find(ref, name);
    if (!t) fail_msg("%s lacks '%s'", ref->path, name);
    assert_int_equal(t->numel, n);
    float *r = malloc(n * sizeof(float));
    assert_int_equal(st_to_f32(t, r), 0);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->mapo = rel_err_f32(x, r, n);
    free(r);
    char k[640];
    snprintf(k, sizeof k, "relerr.%s", name);
    e->torch = fixture_scalar(ac, k);
    snprintf(k, sizeof k, "relerr_max.%s", name);
    e->torch_max = fixture_scalar(ac, k);
    if (e->torch_max < e->torch) fail_msg("%s: relerr_max.%s < relerr.%s", ac->path, name, name);
}

/* The attentions of the mid block (the only ones in attn32): its head dim, and whether mapo's
   bf16 attention at those shapes is a bf16 kernel (differs from the float32 kernel, forward
   output and backward dq, on random operands) -- returned as the smaller relative difference. */
static double mid_attention_bf16_diff(const unet_config *c, const debug_batch *b, int *dh) {
    const int n = c->n_blocks, C = c->block_out[n - 1], H = c->heads[n - 1];
    int h = b->H, w = b->W;
    for (int i = 0; i < n - 1; i++) h = (h + 1) / 2, w = (w + 1) / 2; /* stride-2 downsamplers */
    *dh = C / H;
    const int Dh = C / H, Nq = h * w, nk_of[2] = {Nq, b->S}; /* self-, cross-attention */
    const double scale = 1.0 / sqrt((double)Dh);
    double diff = INFINITY;
    uint32_t st = 12345;
    for (int a = 0; a < 2; a++) {
        const int Nk = nk_of[a];
        const int64_t nq = (int64_t)b->n * Nq * C, nk = (int64_t)b->n * Nk * C;
        const int64_t nl = (int64_t)b->n * H * Nq;
        float *q = malloc(nq * 4), *g = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
        for (int64_t i = 0; i < nq; i++) {
            q[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f * 2 - 1;
            g[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f * 2 - 1;
        }
        for (int64_t i = 0; i < nk; i++) {
            k[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f * 2 - 1;
            v[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f * 2 - 1;
        }
        float *o[2], *l[2], *dq[2], *dk = malloc(nk * 4), *dv = malloc(nk * 4);
        for (int p = 0; p < 2; p++) {
            const mapo_precision pr = p ? MAPO_F32 : MAPO_BF16;
            o[p] = malloc(nq * 4), l[p] = malloc(nl * 4), dq[p] = calloc(nq, 4);
            memset(dk, 0, nk * 4), memset(dv, 0, nk * 4);
            attention_forward_mp(pr, o[p], l[p], q, k, v, b->n, H, Nq, Nk, Dh, scale, NULL);
            attention_backward_mp(pr, dq[p], dk, dv, g, o[p], l[p], q, k, v, b->n, H, Nq, Nk, Dh,
                                  scale, NULL, 0);
        }
        diff = fmin(diff, fmin(rel_err_f32(o[0], o[1], nq), rel_err_f32(dq[0], dq[1], nq)));
        for (int p = 0; p < 2; p++) free(o[p]), free(l[p]), free(dq[p]);
        free(q), free(g), free(k), free(v), free(dk), free(dv);
    }
    return diff;
}

static double ratio(double mapo, double torch) { return mapo / fmax(torch, FLOOR / FACTOR); }

static void run_case(const char *cs, int bf16_attention) {
    char dir[256], p[512];
    unet u;
    debug_batch b;
    unet_inputs in;
    load_case(cs, dir, &u, &b, &in);
    assert_int_equal(unet_check_inputs(&u, &in), 0);
    int dh;
    const double att_diff = mid_attention_bf16_diff(&u.cfg, &b, &dh);
    printf("  %-6s mid-block attention head dim %d: bf16 vs float32 kernel %.2e%s\n", cs, dh,
           att_diff, dh >= 32 ? "" : " (float32 products: head dim < BF16_MIN_DH)");
    if (bf16_attention) {
        /* BF16_MIN_DH (src/ops/engine_attention.c) = 32: narrower heads keep float32 */
        if (dh < 32) fail_msg("%s: head dim %d < 32 does not take the bf16 attention", cs, dh);
        if (!(att_diff >= MIN_BF16_DIFF))
            fail_msg("%s: the bf16 attention at this model's shapes differs from the float32 "
                     "kernel by only %.3e (< %.0e): it is not the bf16 kernel", cs, att_diff,
                     MIN_BF16_DIFF);
    }
    const int64_t np = (int64_t)b.n * u.cfg.out_channels * b.H * b.W;
    float *pred32 = malloc(np * sizeof(float)), *pred = malloc(np * sizeof(float));
    double *err = calloc(b.n, sizeof(double)), loss;

    mapo_step(&u, &in, &b, MAPO_F32, pred32, err, &loss);
    mapo_step(&u, &in, &b, MAPO_BF16, pred, err, &loss);
    const double bf16_vs_f32 = rel_err_f32(pred, pred32, np);

    st_file ref, ac;
    snprintf(p, sizeof p, "%s/expect_mapo.safetensors", dir);
    if (st_open(&ref, p)) fail_msg("%s", mapo_last_error());
    snprintf(p, sizeof p, "%s/autocast_bf16.safetensors", dir);
    if (st_open(&ac, p)) fail_msg("%s", mapo_last_error());

    const int nt = 3 + u.params.n;
    tensor_err *te = calloc(nt, sizeof *te);
    float *ef = malloc(b.n * sizeof(float)), lossf = (float)loss;
    for (int i = 0; i < b.n; i++) ef[i] = (float)err[i];
    measure(&te[0], &ref, &ac, "model_pred", pred, np);
    measure(&te[1], &ref, &ac, "errors", ef, b.n);
    measure(&te[2], &ref, &ac, "loss", &lossf, 1);
    for (int i = 0; i < u.params.n; i++) {
        const param_info *pi = &u.params.p[i];
        char nm[600];
        snprintf(nm, sizeof nm, "grad.%s", pi->name);
        measure(&te[3 + i], &ref, &ac, nm, u.params.grad + pi->offset, pi->numel);
    }
    /* the fixture holds exactly these tensors: 2 numbers each */
    assert_int_equal(ac.n, 2 * nt);

    double *lit = malloc(nt * sizeof(double));
    int worst_lit = 0, worst_max = 0, n_over_lit = 0, n_fail = 0;
    for (int i = 0; i < nt; i++) {
        lit[i] = ratio(te[i].mapo, te[i].torch);
        if (lit[i] > lit[worst_lit]) worst_lit = i;
        if (ratio(te[i].mapo, te[i].torch_max) > ratio(te[worst_max].mapo, te[worst_max].torch_max))
            worst_max = i;
        n_over_lit += lit[i] > FACTOR;
        const double bound = fmax(FACTOR * te[i].torch_max, FLOOR);
        if (!(te[i].mapo <= bound)) {
            printf("  %s: %s mapo bf16 error %.3e > %.1f x torch autocast's worst %.3e (this "
                   "draw %.3e)\n", cs, te[i].name, te[i].mapo, FACTOR, te[i].torch_max,
                   te[i].torch);
            n_fail++;
        }
    }
    const double pred_ratio = lit[0];
    qsort(lit, nt, sizeof(double), cmp_double);
    const double median = nt % 2 ? lit[nt / 2] : 0.5 * (lit[nt / 2 - 1] + lit[nt / 2]);

    printf("  %-6s bf16 vs f32 pred %.2e | model_pred mapo %.2e torch %.2e ratio %.2f | "
           "median ratio %.2f | worst ratio %.2f %s | worst vs torch max %.2f %s | "
           "%d of %d tensors > %.1fx torch's single draw\n",
           cs, bf16_vs_f32, te[0].mapo, te[0].torch, pred_ratio, median, ratio(te[worst_lit].mapo,
           te[worst_lit].torch), te[worst_lit].name, ratio(te[worst_max].mapo,
           te[worst_max].torch_max), te[worst_max].name, n_over_lit, nt, FACTOR);

    if (!(bf16_vs_f32 >= MIN_BF16_DIFF))
        fail_msg("%s: bf16 model_pred differs from float32's by only %.3e (< %.0e): bf16 is not "
                 "in effect", cs, bf16_vs_f32, MIN_BF16_DIFF);
    if (!(te[0].mapo <= fmax(FACTOR * te[0].torch, FLOOR)))
        fail_msg("%s: model_pred mapo bf16 error %.3e > %.1f x torch autocast's %.3e", cs,
                 te[0].mapo, FACTOR, te[0].torch);
    if (!(median <= FACTOR))
        fail_msg("%s: median over %d tensors of mapo / torch error %.3f > %.1f", cs, nt, median,
                 FACTOR);
    if (n_fail) fail_msg("%s: %d tensors above %.1f x torch autocast's error (listed above)", cs,
                         n_fail, FACTOR);

    free(lit);
    free(te);
    free(ef);
    st_close(&ac);
    st_close(&ref);
    free(pred);
    free(pred32);
    free(err);
    debug_batch_free(&b);
    unet_free(&u);
}

static void test_sd15(void **s) { (void)s; run_case("sd15", 0); }
static void test_sdxl(void **s) { (void)s; run_case("sdxl", 0); }
static void test_mixed(void **s) { (void)s; run_case("mixed", 0); }
/* the bf16 attention in the loop (head dim 32; see the header) */
static void test_attn32(void **s) { (void)s; run_case("attn32", 1); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15),
        cmocka_unit_test(test_sdxl),
        cmocka_unit_test(test_mixed),
        cmocka_unit_test(test_attn32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
