/* test_lora.c -- LoRA adapters against peft + diffusers (tools/make_lora_fixtures.py).
 *
 * The fixture's adapters were written by diffusers' save_lora_weights exactly as the official
 * train_with_lora.py saves them; we load that file, run the MaPO and Diffusion-DPO steps with the
 * adapters on (DPO's reference: the same UNet with adapters off) and compare the model output,
 * the reference errors, the loss and the gradient of every adapter tensor.
 * Tolerance 1e-4 relative per tensor, as for the UNet parity (test_unet_parity.c): float32 on
 * both sides with different summation orders; DPO gradients 5e-4 for the reason given there
 * (beta_dpo = 5000 amplifies float32 noise in the per-sample errors). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/bf16.h"
#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/pairs.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"
#include "testutil.h"

#define TOL 1e-4
#define TOL_DPO_GRAD 5e-4

static double cmp(const st_file *f, const char *name, const float *x, int64_t n, double tol,
                  const char *ctx) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture lacks %s", ctx, name);
    assert_int_equal(t->numel, n);
    float *ref = malloc(n * sizeof(float));
    assert_int_equal(st_to_f32(t, ref), 0);
    double e = rel_err_f32(x, ref, n);
    free(ref);
    if (!(e <= tol)) fail_msg("%s: %s relative error %.3e > %.0e", ctx, name, e, tol);
    return e;
}

/* the fixture's UNet with its adapters (trainable); mode: unet_load_dir's with_grad for the
   base UNet (0, or PARAMS_FROZEN_BF16) */
static void load_model(const char *cs, int mode, unet *u) {
    char p[512];
    snprintf(p, sizeof p, "tests/fixtures/unet/%s/model", cs);
    if (unet_load_dir(u, p, mode)) fail_msg("%s", mapo_last_error());
    snprintf(p, sizeof p, "tests/fixtures/lora/%s", cs); /* a folder: finds the file in it */
    if (unet_lora_load(u, p, 1)) fail_msg("%s", mapo_last_error());
}
static void load(const char *cs, unet *u, debug_batch *b, unet_inputs *in, st_file *exp) {
    char p[512];
    load_model(cs, 0, u);
    snprintf(p, sizeof p, "tests/fixtures/unet/%s/batch.safetensors", cs);
    if (debug_batch_load(b, p, &u->cfg)) fail_msg("%s", mapo_last_error());
    debug_batch_inputs(b, in);
    snprintf(p, sizeof p, "tests/fixtures/lora/%s/expect.safetensors", cs);
    if (st_open(exp, p)) fail_msg("%s", mapo_last_error());
}

static double cmp_grads(const unet *u, const st_file *f, const char *prefix, double tol,
                        const char *ctx) {
    double worst = 0;
    int n_fix = 0;
    for (int i = 0; i < u->lora.n; i++) {
        const param_info *pi = &u->lora.p[i];
        char nm[700];
        snprintf(nm, sizeof nm, "%sgrad.%s", prefix, pi->name);
        double e = cmp(f, nm, u->lora.grad + pi->offset, pi->numel, tol, ctx);
        if (e > worst) worst = e;
    }
    size_t pl = strlen(prefix);
    for (int i = 0; i < f->n; i++)
        n_fix += !strncmp(f->tensors[i].name, prefix, pl) &&
                 !strncmp(f->tensors[i].name + pl, "grad.", 5);
    assert_int_equal(n_fix, u->lora.n); /* every adapter of the fixture, none more */
    return worst;
}

static void run_case(const char *cs) {
    unet u;
    debug_batch b;
    unet_inputs in;
    st_file f;
    load(cs, &u, &b, &in, &f);
    assert_null(u.params.grad); /* the base weights are frozen */
    objective_cfg oc;
    objective_cfg_default(&oc);
    int64_t np = (int64_t)b.n * u.cfg.out_channels * b.H * b.W;
    float *pred = malloc(np * sizeof(float)), lossf;
    double *err = calloc(b.n, sizeof(double)), *ref = calloc(b.n, sizeof(double));
    float *ef = malloc(b.n * sizeof(float));
    objective_stats st;
    char ctx[64];
    /* MaPO */
    snprintf(ctx, sizeof ctx, "%s/lora/mapo", cs);
    if (preference_step(&u, &in, b.target, &oc, NULL, 1.0, err, &st, pred, NULL))
        fail_msg("%s", mapo_last_error());
    double e_pred = cmp(&f, "model_pred", pred, np, TOL, ctx);
    for (int i = 0; i < b.n; i++) ef[i] = (float)err[i];
    cmp(&f, "errors", ef, b.n, TOL, ctx);
    lossf = (float)st.loss;
    cmp(&f, "loss", &lossf, 1, TOL, ctx);
    double wm = cmp_grads(&u, &f, "", TOL, ctx);
    /* adapters off = the base model (DPO's reference) */
    u.lora_on = 0;
    model_errors(&u, &in, b.target, ref);
    u.lora_on = 1;
    for (int i = 0; i < b.n; i++) ef[i] = (float)ref[i];
    snprintf(ctx, sizeof ctx, "%s/lora/dpo", cs);
    cmp(&f, "dpo.ref_errors", ef, b.n, TOL, ctx);
    /* DPO */
    params_zero_grad(&u.lora);
    oc.kind = OBJ_DPO;
    if (preference_step(&u, &in, b.target, &oc, ref, 1.0, err, &st, NULL, NULL))
        fail_msg("%s", mapo_last_error());
    lossf = (float)st.loss;
    cmp(&f, "dpo.loss", &lossf, 1, TOL, ctx);
    double wd = cmp_grads(&u, &f, "dpo.", TOL_DPO_GRAD, ctx);
    /* Diffusion-KTO's wiring: a paired batch is the chosen half desirable, the rejected half
       undesirable; an unpaired one takes oc.labels; the reference errors are required
       (objective_kto itself is checked in test_objectives) */
    {
        unsigned char *lab = malloc(b.n);
        double *dlk = malloc(b.n * sizeof(double));
        objective_stats sk;
        for (int i = 0; i < b.n; i++) lab[i] = i < b.n / 2;
        oc.kind = OBJ_KTO;
        assert_int_equal(preference_step(&u, &in, b.target, &oc, NULL, 1.0, err, &st, NULL,
                                         NULL), -1);
        assert_non_null(strstr(mapo_last_error(), "reference"));
        params_zero_grad(&u.lora);
        if (preference_step(&u, &in, b.target, &oc, ref, 1.0, err, &st, NULL, NULL))
            fail_msg("%s", mapo_last_error());
        assert_int_equal(objective_kto(dlk, &sk, err, ref, lab, b.n, 1000, 1, 1), 0);
        assert_true(st.loss == sk.loss && st.margin == sk.margin);
        oc.unpaired = 1;
        lab[0] = !lab[0];
        oc.labels = lab;
        params_zero_grad(&u.lora);
        if (preference_step(&u, &in, b.target, &oc, ref, 1.0, err, &st, NULL, NULL))
            fail_msg("%s", mapo_last_error());
        assert_int_equal(objective_kto(dlk, &sk, err, ref, lab, b.n, 1000, 1, 1), 0);
        assert_true(st.loss == sk.loss && st.implicit_acc == sk.implicit_acc);
        oc.labels = NULL;
        assert_int_equal(preference_step(&u, &in, b.target, &oc, ref, 1.0, err, &st, NULL,
                                         NULL), -1);
        assert_non_null(strstr(mapo_last_error(), "labels"));
        params_zero_grad(&u.lora);
        free(lab);
        free(dlk);
    }
    printf("  %-5s %d adapter tensors: model_pred %.2e, MaPO grads worst %.2e, DPO grads worst "
           "%.2e\n", cs, u.lora.n, e_pred, wm, wd);
    free(pred);
    free(err);
    free(ref);
    free(ef);
    st_close(&f);
    debug_batch_free(&b);
    unet_free(&u);
}

static void test_parity_sd15(void **s) { (void)s; run_case("sd15"); }
static void test_parity_sdxl(void **s) { (void)s; run_case("sdxl"); }

static void forward_pred(unet *u, const unet_inputs *in, float *out, int64_t n) {
    graph g;
    graph_init(&g, 0);
    tensor *y = unet_forward(u, &g, in);
    memcpy(out, y->data, n * sizeof(float));
    graph_free(&g);
}

/* base_pred with adapters off; merged weights give the adapted output; save + reload exact
   and with the very names diffusers wrote */
static void test_off_merge_save(void **s) {
    (void)s;
    unet u;
    debug_batch b;
    unet_inputs in;
    st_file f;
    load("sd15", &u, &b, &in, &f);
    int64_t np = (int64_t)b.n * u.cfg.out_channels * b.H * b.W;
    float *a = malloc(np * 4), *c = malloc(np * 4);
    u.lora_on = 0;
    forward_pred(&u, &in, a, np);
    cmp(&f, "base_pred", a, np, TOL, "sd15/lora/off");
    u.lora_on = 1;
    forward_pred(&u, &in, a, np);
    /* save, compare names with the diffusers-written file, reload, same output bit for bit */
    char tmp[] = "/tmp/mapo_lora_XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char p[600];
    snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", tmp);
    if (unet_lora_save(&u, p)) fail_msg("%s", mapo_last_error());
    st_file mine, theirs;
    assert_int_equal(st_open(&mine, p), 0);
    assert_int_equal(st_open(&theirs, "tests/fixtures/lora/sd15/pytorch_lora_weights.safetensors"), 0);
    assert_int_equal(mine.n, theirs.n);
    for (int i = 0; i < mine.n; i++) {
        assert_string_equal(mine.tensors[i].name, theirs.tensors[i].name);
        assert_int_equal(mine.tensors[i].numel, theirs.tensors[i].numel);
        assert_memory_equal(mine.tensors[i].data, theirs.tensors[i].data, mine.tensors[i].nbytes);
    }
    st_close(&mine);
    st_close(&theirs);
    unet u2;
    assert_int_equal(unet_load_dir(&u2, "tests/fixtures/unet/sd15/model", 0), 0);
    if (unet_lora_load(&u2, p, 0)) fail_msg("%s", mapo_last_error());
    forward_pred(&u2, &in, c, np);
    assert_memory_equal(a, c, np * 4);
    /* merged into the base weights: same output up to float32 rounding */
    unet_lora_merge(&u2);
    assert_int_equal(u2.lora.n, 0);
    forward_pred(&u2, &in, c, np);
    double e = rel_err_f32(c, a, np);
    printf("  merged vs adapters: %.2e\n", e);
    assert_true(e < 1e-5);
    unet_free(&u2);
    unlink(p);
    rmdir(tmp);
    free(a);
    free(c);
    st_close(&f);
    debug_batch_free(&b);
    unet_free(&u);
}

/* The frozen base UNet held in bf16 (PARAMS_FROZEN_BF16, what mapo train / bench / sample use
   in a bf16 run): every weight of two or more dims in bf16 only, the rounding of the float32
   one; norms and biases float32. A bf16 LoRA step, the adapters-off reference errors and a
   step with gradient checkpointing give the same bits as with the float32-held base. */
static void frozen_case(const char *cs) {
    unet u, h;
    debug_batch b;
    unet_inputs in;
    st_file f;
    load(cs, &u, &b, &in, &f);
    load_model(cs, PARAMS_FROZEN_BF16, &h);
    assert_int_equal(h.params.total, u.params.total);
    size_t n16 = 0;
    for (int i = 0; i < u.params.n; i++) {
        const param_info *p = &h.params.p[i];
        const tensor *v = params_view(&h.params, i);
        if (p->ndim < 2) {
            assert_false(p->half);
            assert_memory_equal(v->data, params_view(&u.params, i)->data, p->numel * 4);
            continue;
        }
        assert_true(p->half && !v->data && v->bf16);
        const float *w = params_view(&u.params, i)->data;
        for (int64_t k = 0; k < p->numel; k++)
            if (v->bf16[k] != mapo_bf16_bits(w[k])) fail_msg("%s[%lld]", p->name, (long long)k);
        n16 += (size_t)p->numel;
    }
    assert_int_equal(h.params.total16, n16);
    assert_true(n16 > u.params.total / 2);
    assert_int_equal(params_bytes(&h.params), params_bytes(&u.params) - 2 * n16);
    objective_cfg oc;
    objective_cfg_default(&oc);
    const int64_t np = (int64_t)b.n * u.cfg.out_channels * b.H * b.W;
    float *pa = malloc(np * 4), *pb = malloc(np * 4);
    double ea[8], eb[8];
    objective_stats st;
    assert_true(b.n <= 8);
    for (int ck = 0; ck < 2; ck++) {
        unet *m[2] = {&u, &h};
        float *pred[2] = {pa, pb};
        double *err[2] = {ea, eb};
        for (int k = 0; k < 2; k++) {
            m[k]->precision = MAPO_BF16;
            m[k]->grad_ckpt = ck;
            params_zero_grad(&m[k]->lora);
            if (preference_step(m[k], &in, b.target, &oc, NULL, 1.0, err[k], &st, pred[k], NULL))
                fail_msg("%s", mapo_last_error());
        }
        assert_memory_equal(pa, pb, np * 4);
        assert_memory_equal(ea, eb, b.n * sizeof(double));
        assert_memory_equal(u.lora.grad, h.lora.grad, u.lora.total * 4);
    }
    u.lora_on = h.lora_on = 0; /* DPO's reference: the adapters off */
    model_errors(&u, &in, b.target, ea);
    model_errors(&h, &in, b.target, eb);
    assert_memory_equal(ea, eb, b.n * sizeof(double));
    printf("  %-5s %zu of %zu parameters held in bf16: weights %zu -> %zu bytes, the same bits\n",
           cs, n16, u.params.total, params_bytes(&u.params), params_bytes(&h.params));
    free(pa), free(pb);
    st_close(&f);
    debug_batch_free(&b);
    unet_free(&u), unet_free(&h);
}
static void test_frozen_bf16(void **s) {
    (void)s;
    frozen_case("sd15");
    frozen_case("sdxl");
}

/* fresh adapters: B = 0 so the output is the base model's; A ~ N(0, 1/r) */
static void test_fresh_init(void **s) {
    (void)s;
    unet u;
    assert_int_equal(unet_load_dir(&u, "tests/fixtures/unet/sdxl/model", 0), 0);
    assert_int_equal(unet_lora_add(&u, 4, 123), 0);
    assert_int_equal(u.lora.n, 2 * 88);
    double sum = 0, sq = 0;
    int64_t n = 0;
    for (int i = 0; i < u.lora.n; i++) {
        const param_info *p = &u.lora.p[i];
        const float *d = u.lora.data + p->offset;
        if (strstr(p->name, ".lora_B.")) {
            for (int64_t k = 0; k < p->numel; k++) assert_true(d[k] == 0.0f);
            continue;
        }
        assert_int_equal(p->shape[0], 4);
        for (int64_t k = 0; k < p->numel; k++) {
            sum += d[k];
            sq += (double)d[k] * d[k];
            n++;
        }
    }
    double mean = sum / n, sd = sqrt(sq / n - mean * mean);
    printf("  fresh A: n=%lld mean %.4f std %.4f (want 0, 0.25)\n", (long long)n, mean, sd);
    assert_true(fabs(mean) < 5.0 * 0.25 / sqrt((double)n));
    assert_true(fabs(sd - 0.25) < 0.02);
    assert_int_equal(unet_lora_add(&u, 4, 1), -1); /* twice */
    unet_free(&u);
    assert_int_equal(unet_load_dir(&u, "tests/fixtures/unet/sdxl/model", 0), 0);
    assert_int_equal(unet_lora_add(&u, 0, 1), -1);
    unet_free(&u);
}

/* broken LoRA files: one clear error, the UNet stays usable without adapters */
static void write_bad(const char *path, const char *const *names, const int64_t (*shapes)[2],
                      int n) {
    st_writer *w = st_writer_new();
    static float zeros[4096];
    for (int i = 0; i < n; i++) st_writer_add(w, names[i], ST_F32, 2, shapes[i], zeros);
    assert_int_equal(st_writer_write(w, path), 0);
    st_writer_free(w);
}

static void test_bad_files(void **s) {
    (void)s;
    const char *path = "/tmp/mapo_bad_lora.safetensors";
    const char *pre = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    char a[300], b[300], c[300];
    snprintf(a, sizeof a, "%s.lora.down.weight", pre);
    snprintf(b, sizeof b, "%s.lora.up.weight", pre);
    snprintf(c, sizeof c, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight");
    struct {
        const char *names[3];
        int64_t shapes[3][2];
        int n;
        const char *want;
    } cases[] = {
        {{a}, {{2, 8}}, 1, "no matching"},
        {{a, b}, {{2, 8}, {8, 3}}, 2, "do not fit"},
        {{a, b}, {{2, 9}, {8, 2}}, 2, "do not fit"},
        {{a, b, c}, {{2, 8}, {8, 2}, {2, 8}}, 3, "not supported"},
        {{c}, {{2, 8}}, 1, "not supported"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        write_bad(path, cases[k].names, (const int64_t(*)[2])cases[k].shapes, cases[k].n);
        unet u;
        assert_int_equal(unet_load_dir(&u, "tests/fixtures/unet/sd15/model", 0), 0);
        assert_int_equal(unet_lora_load(&u, path, 0), -1);
        if (!strstr(mapo_last_error(), cases[k].want))
            fail_msg("case %zu: message '%s' lacks '%s'", k, mapo_last_error(), cases[k].want);
        assert_int_equal(u.lora.n, 0);
        /* still a working UNet */
        assert_int_equal(unet_lora_add(&u, 2, 1), 0);
        unet_free(&u);
    }
    unet u;
    assert_int_equal(unet_load_dir(&u, "tests/fixtures/unet/sd15/model", 0), 0);
    assert_int_equal(unet_lora_load(&u, "tests/fixtures/unet/sd15/batch.safetensors", 0), -1);
    assert_int_equal(unet_lora_load(&u, "/nonexistent/lora", 0), -1);
    unet_free(&u);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_sd15),    cmocka_unit_test(test_parity_sdxl),
        cmocka_unit_test(test_off_merge_save), cmocka_unit_test(test_fresh_init),
        cmocka_unit_test(test_bad_files),      cmocka_unit_test(test_frozen_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
