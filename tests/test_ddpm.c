/* test_ddpm.c -- DDPMScheduler (training side) against diffusers, and scheduler_config.json
 * parsing.
 *
 * Fixtures: tests/fixtures/train/ddpm.safetensors from tools/make_train_fixtures.py
 * (DDPMScheduler(...).alphas_cumprod, add_noise and get_velocity in float32 on CPU).
 * Tolerance: 1e-6 relative. alphas_cumprod: per element; ddpm.c repeats torch's float32
 * operations (fused linspace of the AVX2/AVX-512 kernels, double-accumulated cumprod), and
 * the measured difference is 0 (bit-identical); a one-ulp slip in a beta would still pass
 * (~1e-7), while a wrong schedule (linear vs scaled_linear, T-1 vs T in the step) is off by
 * 1e-3 or more. add_noise / get_velocity: per tensor, ||c - ref|| / ||ref|| (testutil.h):
 * torch takes abar ** 0.5 with its MKL float32 sqrt, which is one ulp off the correctly
 * rounded sqrtf for some inputs (here sqrt(abar[500])), so those rows differ by ~1e-7
 * relative; per element, x_t = a*x0 + b*eps can cancel to ~0, so the per-tensor norm is
 * the meaningful measure. The worst differences are printed. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/ddpm.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/train/ddpm.safetensors"
#define TOL 1e-6

static float *getf(const st_file *f, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks '%s'", name);
    float *d = malloc((size_t)t->numel * sizeof(float));
    assert_int_equal(st_to_f32(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - (double)b[i]) / fmax(fabs((double)b[i]), 1e-30);
        if (!(e <= w)) w = e;
    }
    return w;
}

static void check_abar(const st_file *f, const char *name, const ddpm_schedule *s) {
    char nm[128];
    snprintf(nm, sizeof nm, "%s.abar", name);
    int64_t n;
    float *ref = getf(f, nm, &n);
    assert_int_equal(n, s->num_train_timesteps);
    const double e = max_rel(s->alphas_cumprod, ref, n);
    int differ = 0;
    for (int64_t i = 0; i < n; i++) differ += s->alphas_cumprod[i] != ref[i];
    printf("  %-20s alphas_cumprod: max rel diff %.2e (%d of %lld not bit-identical)\n", name,
           e, differ, (long long)n);
    if (e > TOL) fail_msg("%s: alphas_cumprod differ by %.3g relative", name, e);
    free(ref);
}

static void test_alphas_cumprod(void **s_) {
    (void)s_;
    st_file f;
    if (st_open(&f, FIX)) fail_msg("%s", mapo_last_error());
    struct {
        const char *name;
        int T;
        double b0, b1;
        const char *sched;
    } cs[] = {{"scaled_linear_1000", 1000, 0.00085, 0.012, "scaled_linear"},
              {"linear_1000", 1000, 0.0001, 0.02, "linear"},
              {"linear_100", 100, 0.001, 0.03, "linear"},
              {"scaled_linear_100", 100, 0.0001, 0.02, "scaled_linear"}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        ddpm_schedule s;
        if (ddpm_init(&s, cs[i].T, cs[i].b0, cs[i].b1, cs[i].sched, "epsilon"))
            fail_msg("%s", mapo_last_error());
        check_abar(&f, cs[i].name, &s);
        ddpm_free(&s);
    }
    ddpm_schedule d;
    ddpm_default(&d);
    check_abar(&f, "scaled_linear_1000", &d);
    assert_int_equal(d.pred, PRED_EPSILON);
    ddpm_free(&d);
    st_close(&f);
}

static void check_noise(const st_file *f, const char *name, int T, double b0, double b1,
                        const char *sched) {
    char nm[128];
    int64_t n, nt;
    ddpm_schedule s;
    if (ddpm_init(&s, T, b0, b1, sched, "v_prediction")) fail_msg("%s", mapo_last_error());
#define GET(sfx, cnt) (snprintf(nm, sizeof nm, "%s." sfx, name), getf(f, nm, cnt))
    float *x0 = GET("x0", &n), *eps = GET("eps", NULL), *noisy = GET("noisy", NULL);
    float *vel = GET("velocity", NULL);
    snprintf(nm, sizeof nm, "%s.t", name);
    const st_tensor *tt = st_find(f, nm);
    assert_non_null(tt);
    assert_int_equal(tt->dtype, ST_I64);
    nt = tt->numel;
    int64_t ts[16];
    memcpy(ts, tt->data, (size_t)nt * sizeof(int64_t));
#undef GET
    const int64_t per = n / nt;
    float *xt = malloc(n * sizeof(float)), *tg = malloc(n * sizeof(float));
    for (int64_t b = 0; b < nt; b++) {
        ddpm_add_noise(&s, xt + b * per, x0 + b * per, eps + b * per, per, (int)ts[b]);
        ddpm_target(&s, tg + b * per, x0 + b * per, eps + b * per, per, (int)ts[b]);
    }
    /* norm-wise: an element of a sum of two products can cancel to ~0, where a one-ulp
       difference in a coefficient is a large relative error of that element */
    const double en = rel_err_f32(xt, noisy, n), ev = rel_err_f32(tg, vel, n);
    int differ = 0;
    for (int64_t i = 0; i < n; i++) differ += (xt[i] != noisy[i]) + (tg[i] != vel[i]);
    printf("  %-20s add_noise rel diff %.2e, get_velocity %.2e, %d of %lld values not "
           "bit-identical (t =", name, en, ev, differ, (long long)(2 * n));
    for (int64_t b = 0; b < nt; b++) printf(" %lld", (long long)ts[b]);
    printf(")\n");
    if (en > TOL || ev > TOL) fail_msg("%s: add_noise %.3g, velocity %.3g", name, en, ev);
    /* epsilon prediction: the target is the noise itself */
    s.pred = PRED_EPSILON;
    ddpm_target(&s, tg, x0, eps, n, 3);
    assert_memory_equal(tg, eps, n * sizeof(float));
    free(x0); free(eps); free(noisy); free(vel); free(xt); free(tg);
    ddpm_free(&s);
}

static void test_add_noise_velocity(void **s_) {
    (void)s_;
    st_file f;
    if (st_open(&f, FIX)) fail_msg("%s", mapo_last_error());
    check_noise(&f, "scaled_linear_1000", 1000, 0.00085, 0.012, "scaled_linear");
    check_noise(&f, "linear_100", 100, 0.001, 0.03, "linear");
    st_close(&f);
}

/* ---------------------------------------------------------------- config parsing */
static char g_dir[64];

static int setup_dir(void **s) {
    (void)s;
    snprintf(g_dir, sizeof g_dir, "/tmp/mapo_ddpm_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}
static int teardown_dir(void **s) {
    (void)s;
    char p[128];
    snprintf(p, sizeof p, "%s/scheduler_config.json", g_dir);
    unlink(p);
    rmdir(g_dir);
    return 0;
}

static const char *write_cfg(const char *text) {
    static char p[128];
    snprintf(p, sizeof p, "%s/scheduler_config.json", g_dir);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return p;
}

/* the SDXL base scheduler_config.json (EulerDiscreteScheduler), verbatim */
static const char *k_sdxl =
    "{\n  \"_class_name\": \"EulerDiscreteScheduler\",\n  \"_diffusers_version\": \"0.19.0.dev0\",\n"
    "  \"beta_end\": 0.012,\n  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
    "  \"clip_sample\": false,\n  \"interpolation_type\": \"linear\",\n"
    "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n"
    "  \"sample_max_value\": 1.0,\n  \"set_alpha_to_one\": false,\n  \"skip_prk_steps\": true,\n"
    "  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n  \"trained_betas\": null,\n"
    "  \"use_karras_sigmas\": false\n}\n";

static void expect_same(const ddpm_schedule *a, const ddpm_schedule *b) {
    assert_int_equal(a->num_train_timesteps, b->num_train_timesteps);
    assert_int_equal(a->pred, b->pred);
    assert_memory_equal(a->alphas_cumprod, b->alphas_cumprod,
                        a->num_train_timesteps * sizeof(float));
}

static void test_config_good(void **s_) {
    (void)s_;
    ddpm_schedule s, ref;
    if (ddpm_from_config(&s, write_cfg(k_sdxl))) fail_msg("%s", mapo_last_error());
    ddpm_default(&ref);
    expect_same(&s, &ref);
    ddpm_free(&s);
    ddpm_free(&ref);
    /* SD 2.x style: DDIM, v_prediction, rescale_betas_zero_snr false */
    const char *sd2 =
        "{\"_class_name\": \"DDIMScheduler\", \"_diffusers_version\": \"0.8.0\","
        " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
        " \"clip_sample\": false, \"num_train_timesteps\": 1000,"
        " \"prediction_type\": \"v_prediction\", \"set_alpha_to_one\": false,"
        " \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null,"
        " \"rescale_betas_zero_snr\": false, \"thresholding\": false,"
        " \"dynamic_thresholding_ratio\": 0.995, \"clip_sample_range\": 1.0,"
        " \"timestep_spacing\": \"leading\", \"variance_type\": \"fixed_small\"}";
    if (ddpm_from_config(&s, write_cfg(sd2))) fail_msg("%s", mapo_last_error());
    assert_int_equal(s.pred, PRED_V);
    ddpm_init(&ref, 1000, 0.00085, 0.012, "scaled_linear", "v_prediction");
    expect_same(&s, &ref);
    ddpm_free(&s);
    ddpm_free(&ref);
    /* absent keys take DDPMScheduler's defaults: linear 1e-4..0.02, T 1000, epsilon */
    if (ddpm_from_config(&s, write_cfg("{\"num_train_timesteps\": 100, \"beta_start\": 0.001,"
                                       " \"beta_end\": 0.03}")))
        fail_msg("%s", mapo_last_error());
    ddpm_init(&ref, 100, 0.001, 0.03, "linear", "epsilon");
    expect_same(&s, &ref);
    ddpm_free(&s);
    ddpm_free(&ref);
    if (ddpm_from_config(&s, write_cfg("{}"))) fail_msg("%s", mapo_last_error());
    ddpm_init(&ref, 1000, 0.0001, 0.02, "linear", "epsilon");
    expect_same(&s, &ref);
    ddpm_free(&s);
    ddpm_free(&ref);
}

/* the config is refused, the message names every needle */
static void expect_refused(const char *text, const char *n1, const char *n2) {
    ddpm_schedule s;
    const char *p = write_cfg(text);
    assert_int_equal(ddpm_from_config(&s, p), -1);
    const char *m = mapo_last_error();
    printf("  refused: %s\n", m);
    if (n1 && !strstr(m, n1)) fail_msg("message lacks '%s': %s", n1, m);
    if (n2 && !strstr(m, n2)) fail_msg("message lacks '%s': %s", n2, m);
    assert_non_null(strstr(m, p)); /* and the file */
    assert_null(s.alphas_cumprod);
    ddpm_free(&s); /* safe after a failure */
}

static void test_config_refused(void **s_) {
    (void)s_;
    expect_refused("{\"beta_schedule\": \"scaled_linear\", \"shift\": 3.0}", "shift", NULL);
    expect_refused("{\"beta_schedule\": \"squaredcos_cap_v2\"}", "beta_schedule",
                   "squaredcos_cap_v2");
    expect_refused("{\"beta_schedule\": 3}", "beta_schedule", NULL);
    expect_refused("{\"prediction_type\": \"sample\"}", "prediction_type", "sample");
    expect_refused("{\"trained_betas\": [0.1, 0.2]}", "trained_betas", NULL);
    expect_refused("{\"rescale_betas_zero_snr\": true}", "rescale_betas_zero_snr", NULL);
    expect_refused("{\"num_train_timesteps\": \"1000\"}", "num_train_timesteps", NULL);
    expect_refused("{\"num_train_timesteps\": 0}", "num_train_timesteps", NULL);
    expect_refused("{\"beta_start\": \"0.1\"}", "beta_start", NULL);
    expect_refused("{\"beta_end\": 1.5}", "beta_end", NULL);
    expect_refused("{\"beta_start\": 0.001,", "JSON", NULL);
    expect_refused("[1, 2]", "object", NULL);
}

static void test_config_missing(void **s_) {
    (void)s_;
    char p[128];
    snprintf(p, sizeof p, "%s/no_such_scheduler_config.json", g_dir);
    ddpm_schedule s;
    assert_int_equal(ddpm_from_config(&s, p), -1);
    printf("  missing: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), p));
    assert_non_null(strstr(mapo_last_error(), "cannot read"));
}

static void test_init_refused(void **s_) {
    (void)s_;
    ddpm_schedule s;
    assert_int_equal(ddpm_init(&s, 1000, 0.00085, 0.012, "cosine", "epsilon"), -1);
    assert_non_null(strstr(mapo_last_error(), "cosine"));
    assert_int_equal(ddpm_init(&s, 1000, 0.00085, 0.012, "linear", "x0"), -1);
    assert_non_null(strstr(mapo_last_error(), "x0"));
    assert_int_equal(ddpm_init(&s, 0, 0.00085, 0.012, "linear", "epsilon"), -1);
    assert_int_equal(ddpm_init(&s, 1000, NAN, 0.012, "linear", "epsilon"), -1);
    /* T = 1: linspace of one point is beta_start */
    assert_int_equal(ddpm_init(&s, 1, 0.25, 0.5, "linear", "epsilon"), 0);
    assert_true(s.alphas_cumprod[0] == 0.75f);
    ddpm_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alphas_cumprod),
        cmocka_unit_test(test_add_noise_velocity),
        cmocka_unit_test(test_config_good),
        cmocka_unit_test(test_config_refused),
        cmocka_unit_test(test_config_missing),
        cmocka_unit_test(test_init_refused),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
