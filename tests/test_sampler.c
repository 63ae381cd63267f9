/* test_sampler.c -- DDIM / Euler samplers and classifier-free guidance against diffusers.
 *
 * Fixtures: tests/fixtures/sampler/ from tools/make_sampler_fixtures.py. Each case is a
 * scheduler_config.json (<case>.json: SD 1.5's PNDM config, SDXL's Euler config, a
 * v_prediction + trailing + zero-terminal-SNR config, cosine betas with x0 prediction and
 * DDIM's default clipping, linspace spacing, Karras sigmas with final sigma_min, exponential
 * sigmas with continuous timesteps, Karras on a zero-SNR schedule) and <case>.safetensors
 * with, per run "<kind><N>[_eta]", diffusers' timesteps, init_noise_sigma, Euler sigmas and
 * the whole trajectory of a pipeline-style loop: x = x_T * init_noise_sigma; per step
 * x_in = scale_model_input(x), uncond = 0.05 x_in + E[2i % K],
 * cond = 0.08 x_in + E[(2i+1) % K], CFG with G = 5, step (DDIM eta > 0 with the fixture's
 * noise). The C side computes the same "model" with the
 * same float32 operations, so every step of scale_model_input, cfg_combine and the step is
 * compared, 5 / 7 / 10 / 25 steps.
 *
 * Each step is checked twice: teacher-forced (started from diffusers' x of the previous step,
 * so the error is that step's own) and free-running (our own x all the way).
 *
 * Tolerances (relative L2 per tensor, rel_err_f32 of testutil.h):
 *   trajectory 1e-5 per step (the bound). sampler.c repeats diffusers' float32 and
 *     float64 operations in the same order; what is left is torch's float32 sqrt, which on
 *     CPU goes through MKL's vsSqrt and is NOT correctly rounded: one ulp off sqrtf for ~17%
 *     of inputs (10^7 random floats, torch 2.15 with MKL on an AVX-512 CPU). It enters
 *     every sqrt(alphas_cumprod), the Euler sigma table and the zero-SNR rescale (with
 *     numpy's sqrt in its place, an emulation of diffusers' rescale matches sampler.c bit
 *     for bit). A coefficient one ulp
 *     (6e-8) off gives the measured 1e-7 .. 6e-7 (printed), bit-identical where no sqrt
 *     differs; a wrong formula (sigma instead of sqrt(sigma^2+1), the wrong previous
 *     timestep, default clipping, a wrong guidance scale by 1e-4, ...) gives 4e-5 .. 0.2.
 *   Euler steps from a large sigma: max(1e-5, 2^-24 * sigma_i), carried to later steps of
 *     the free-running check. The step computes x - sigma * eps with |x| ~ sigma * |x_T| and
 *     cancels it down to O(|x_T|), so a one-ulp difference of sigma or x becomes 2^-24 * sigma
 *     relative in the result: diffusers' own float32 result is no more accurate than that.
 *     This matters only for zero-terminal-SNR schedules (sigma_max = 4096; torch's sqrt
 *     gives 4096.0 where sqrtf gives 4095.9998): measured 2.9e-5 against 2.4e-4 allowed; the
 *     cosine schedule (sigma_max 20291) is bit-identical in sigma and measures 9e-8.
 *   sigmas and init_noise_sigma 1e-6 relative (one ulp is 6e-8). Integer timesteps must
 *     match exactly; fractional ones (Karras / exponential sigmas through _sigma_to_t) within
 *     1e-3 absolute: w = (low - log_sigma) / (low - high) divides an ulp-level difference of
 *     a float32 log-sigma by the gap between neighbours (~3e-3), and the result is rounded
 *     to a float32 timestep (ulp 6e-5 near 600); measured 6e-5, one ulp. A wrong rho or
 *     spacing moves them by 0.1 or more.
 *   guidance_rescale 1e-6: torch's std reduces in another order; measured 0. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "mapo/sampler.h"
#include "testutil.h"

#define DIR "tests/fixtures/sampler"
#define TOL_TRAJ 1e-5
#define TOL_SIGMA 1e-6
#define TOL_T 1e-3
#define TOL_RESCALE 1e-6
#define G 5.0

static double g_worst_strict = 0, g_worst_traj = 0, g_worst_sigma = 0, g_worst_t = 0;
static char g_worst_name[128];
static int g_runs = 0, g_bitexact = 0;

static float *getf(const st_file *f, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture lacks '%s'", f->path, name);
    float *d = malloc((size_t)t->numel * sizeof(float));
    assert_int_equal(st_to_f32(t, d), 0);
    if (n) *n = t->numel;
    return d;
}
static double *getd(const st_file *f, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture lacks '%s'", f->path, name);
    double *d = malloc((size_t)t->numel * sizeof(double));
    assert_int_equal(st_to_f64(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

typedef struct {
    float *xT, *E, *NZ;
    int64_t n, K;
} common_fx;

static void load_common(common_fx *c) {
    st_file f;
    if (st_open(&f, DIR "/common.safetensors")) fail_msg("%s", mapo_last_error());
    int64_t ne, nn;
    c->xT = getf(&f, "x_T", &c->n);
    c->E = getf(&f, "eps", &ne);
    c->NZ = getf(&f, "noise", &nn);
    c->K = ne / c->n;
    assert_int_equal(ne, c->K * c->n);
    assert_int_equal(nn, ne);
    st_close(&f);
}
static void free_common(common_fx *c) {
    free(c->xT);
    free(c->E);
    free(c->NZ);
}

/* tolerance of step i: 1e-5, or 2^-24 * sigma_i for an Euler step from a large sigma (see the
   header: the step cancels terms of size sigma * |x_T| down to O(|x_T|)) */
static double step_tol(const sampler *s, int i) {
    if (strcmp(sampler_kind(s), "euler")) return TOL_TRAJ;
    return fmax(TOL_TRAJ, 0x1p-24 * sampler_sigma(s, i));
}

/* the fixture's "model" and one pipeline step on x (n = cf->n) */
static void one_step(sampler *s, int i, float *x, const common_fx *cf, double eta,
                     const char *cs, const char *run) {
    const int64_t n = cf->n;
    float xin[256], un[256], co[256], mo[256];
    assert_true(n <= 256);
    sampler_scale_model_input(s, i, xin, x, n);
    const float *eu = cf->E + ((2 * i) % cf->K) * n, *ec = cf->E + ((2 * i + 1) % cf->K) * n;
    for (int64_t j = 0; j < n; j++) {
        const float a = 0.05f * xin[j], b = 0.08f * xin[j];
        un[j] = a + eu[j];
        co[j] = b + ec[j];
    }
    cfg_combine(mo, un, co, G, n);
    if (sampler_step(s, i, x, mo, eta > 0 ? cf->NZ + (i % cf->K) * n : NULL, n))
        fail_msg("%s %s step %d: %s", cs, run, i, mapo_last_error());
}

static void run_one(const char *cs, const st_file *f, const char *run, const common_fx *cf) {
    char kind[16], p[256], nm[128];
    int N = 0;
    const int is_euler = !strncmp(run, "euler", 5);
    snprintf(kind, sizeof kind, "%s", is_euler ? "euler" : "ddim");
    N = atoi(run + strlen(kind));
    assert_true(N > 0);
    snprintf(p, sizeof p, DIR "/%s.json", cs);
    sampler *s;
    if (sampler_create(&s, p, kind, N)) fail_msg("%s %s: %s", cs, run, mapo_last_error());
    assert_string_equal(sampler_kind(s), kind);
    assert_int_equal(sampler_num_steps(s), N);

#define NAME(sfx) (snprintf(nm, sizeof nm, "%s.%s", run, sfx), nm)
    int64_t cnt;
    double *eta = getd(f, NAME("eta"), NULL);
    if (eta[0] > 0) assert_int_equal(sampler_set_eta(s, eta[0]), 0);
    /* timesteps */
    double *ts = getd(f, NAME("timesteps"), &cnt);
    assert_int_equal(cnt, N);
    double wt = 0;
    for (int i = 0; i < N; i++) {
        const double d = fabs(sampler_timestep(s, i) - ts[i]);
        if (!(d <= wt)) wt = d;
        if (!is_euler && d != 0)
            fail_msg("%s %s: timestep %d is %g, diffusers %g", cs, run, i,
                     sampler_timestep(s, i), ts[i]);
    }
    if (wt > g_worst_t) g_worst_t = wt;
    if (!(wt <= TOL_T)) fail_msg("%s %s: timesteps differ by %.3g", cs, run, wt);
    /* init_noise_sigma and sigmas */
    double *is = getd(f, NAME("init_sigma"), NULL);
    double ws = fabs(sampler_init_noise_sigma(s) - is[0]) / is[0];
    if (is_euler) {
        float *sg = getf(f, NAME("sigmas"), &cnt);
        assert_int_equal(cnt, N + 1);
        float *mine = malloc((size_t)(N + 1) * sizeof(float));
        for (int i = 0; i <= N; i++) mine[i] = (float)sampler_sigma(s, i);
        const double e = rel_err_f32(mine, sg, N + 1);
        if (e > ws) ws = e;
        free(sg);
        free(mine);
    } else {
        assert_true(isnan(sampler_sigma(s, N)));
    }
    if (ws > g_worst_sigma) g_worst_sigma = ws;
    if (!(ws <= TOL_SIGMA))
        fail_msg("%s %s: sigmas / init_noise_sigma differ by %.3g", cs, run, ws);

    /* the trajectory: free-running (x from our own previous step) and teacher-forced
       (each step started from diffusers' previous x), both against diffusers' x per step */
    float *traj = getf(f, NAME("traj"), &cnt);
    const int64_t n = cf->n;
    assert_int_equal(cnt, (int64_t)N * n);
    float *x = malloc(n * sizeof(float)), *xf = malloc(n * sizeof(float));
    memcpy(x, cf->xT, n * sizeof(float));
    sampler_init_noise(s, x, n);
    double worst = 0, worst_tf = 0, tol_run = 0;
    int exact = 1;
    for (int i = 0; i < N; i++) {
        const float *ref = traj + (int64_t)i * n;
        const double tol = step_tol(s, i);
        if (tol > tol_run) tol_run = tol; /* errors carry over into later steps */
        if (i == 0) memcpy(xf, x, n * sizeof(float));
        else memcpy(xf, ref - n, n * sizeof(float));
        one_step(s, i, xf, cf, eta[0], cs, run);
        const double etf = rel_err_f32(xf, ref, n);
        one_step(s, i, x, cf, eta[0], cs, run);
        const double e = rel_err_f32(x, ref, n);
        if (memcmp(x, ref, n * sizeof(float))) exact = 0;
        if (!(e <= worst)) worst = e;
        if (!(etf <= worst_tf)) worst_tf = etf;
        if (!(etf <= tol))
            fail_msg("%s %s: step %d (t=%g) from diffusers' x: relative error %.3e > %.1e", cs,
                     run, i, sampler_timestep(s, i), etf, tol);
        if (!(e <= tol_run))
            fail_msg("%s %s: trajectory at step %d (t=%g): relative error %.3e > %.1e", cs,
                     run, i, sampler_timestep(s, i), e, tol_run);
    }
    printf("  %-9s %-10s t0 %-9g init_sigma %-10.6g traj %.2e%s step %.2e (tol %.0e) "
           "sigma %.1e t %.1e\n", cs, run, sampler_timestep(s, 0), sampler_init_noise_sigma(s),
           worst, exact ? " (bit-identical)" : "", worst_tf, tol_run, ws, wt);
    g_runs++;
    g_bitexact += exact;
    if (worst > g_worst_traj) {
        g_worst_traj = worst;
        snprintf(g_worst_name, sizeof g_worst_name, "%s %s", cs, run);
    }
    if (tol_run == TOL_TRAJ && worst > g_worst_strict) g_worst_strict = worst;
#undef NAME
    free(x); free(xf); free(traj); free(ts); free(is);
    free(eta);
    sampler_free(s);
}

static void test_trajectories(void **st) {
    (void)st;
    static const char *cases[] = {"sd15", "sdxl", "zsnr", "misc", "linspace", "karras",
                                  "expcont", "zkarras"};
    common_fx cf;
    load_common(&cf);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char p[256];
        snprintf(p, sizeof p, DIR "/%s.safetensors", cases[c]);
        st_file f;
        if (st_open(&f, p)) fail_msg("%s", mapo_last_error());
        const char *runs = st_meta(&f, "runs");
        assert_non_null(runs);
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", runs);
        for (char *save = NULL, *r = strtok_r(buf, ",", &save); r; r = strtok_r(NULL, ",", &save))
            run_one(cases[c], &f, r, &cf);
        st_close(&f);
    }
    free_common(&cf);
    printf("  %d runs (%d bit-identical); worst trajectory error %.3e (%s), %.3e where the "
           "tolerance is 1e-5; sigmas %.3e, timesteps %.3e\n", g_runs, g_bitexact,
           g_worst_traj, g_worst_name, g_worst_strict, g_worst_sigma, g_worst_t);
    assert_true(g_runs >= 30);
}

/* SD 1.5's config: DDIM gets "leading" (+ steps_offset), Euler its own default "linspace";
   SDXL's says "leading" for both. Checked by value so a wrong default fails by name. */
static void test_defaults(void **st) {
    (void)st;
    sampler *s;
    assert_int_equal(sampler_create(&s, DIR "/sd15.json", "ddim", 5), 0);
    const double dd[] = {801, 601, 401, 201, 1};
    for (int i = 0; i < 5; i++) assert_true(sampler_timestep(s, i) == dd[i]);
    assert_true(sampler_init_noise_sigma(s) == 1.0);
    assert_true(isnan(sampler_timestep(s, 5)) && isnan(sampler_timestep(s, -1)));
    sampler_free(s);
    assert_int_equal(sampler_create(&s, DIR "/sd15.json", "euler", 5), 0);
    const double de[] = {999, 749.25, 499.5, 249.75, 0};
    for (int i = 0; i < 5; i++) assert_true(sampler_timestep(s, i) == de[i]);
    assert_true(sampler_sigma(s, 5) == 0.0);
    /* linspace: init_noise_sigma is the largest sigma itself */
    assert_true(sampler_init_noise_sigma(s) == sampler_sigma(s, 0));
    sampler_free(s);
    assert_int_equal(sampler_create(&s, DIR "/sdxl.json", "euler", 5), 0);
    for (int i = 0; i < 5; i++) assert_true(sampler_timestep(s, i) == dd[i]);
    const double sg = sampler_sigma(s, 0);
    assert_true(fabs(sampler_init_noise_sigma(s) - sqrt(sg * sg + 1)) < 1e-6 * sg);
    sampler_free(s);
}

/* trailing spacing: numpy's float arange gives diffusers N + 1 points (the last becoming
   timestep -1) for some N; sampler.c repeats numpy's length computation and refuses exactly
   those N (the fixture lists them, from diffusers, for T = 1000) */
static void test_trailing_counts(void **st) {
    (void)st;
    st_file f;
    if (st_open(&f, DIR "/common.safetensors")) fail_msg("%s", mapo_last_error());
    const st_tensor *t = st_find(&f, "trailing_bad_n");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I64);
    assert_true(t->numel > 10 && t->numel < 1000);
    char bad[1001] = {0};
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + i * 8, 8);
        assert_true(v >= 1 && v <= 1000);
        bad[v] = 1;
    }
    int refused = 0;
    for (int n = 1; n <= 1000; n++) {
        sampler *s;
        const int rc = sampler_create_from_string(&s, "{\"timestep_spacing\": \"trailing\"}",
                                                  "trailing", n % 2 ? "ddim" : "euler", n);
        if (rc != -bad[n])
            fail_msg("trailing, %d steps: %s", n, rc ? mapo_last_error() : "accepted");
        if (rc) {
            refused++;
            continue;
        }
        assert_int_equal(sampler_num_steps(s), n);
        assert_true(sampler_timestep(s, 0) == 999.0);
        assert_true(sampler_timestep(s, n - 1) >= 0);
        for (int i = 1; i < n; i++)
            assert_true(sampler_timestep(s, i) < sampler_timestep(s, i - 1));
        sampler_free(s);
    }
    printf("  trailing spacing: %d of 1000 step counts refused, as diffusers' list says\n",
           refused);
    st_close(&f);
}

static void test_cfg(void **st) {
    (void)st;
    st_file f;
    if (st_open(&f, DIR "/common.safetensors")) fail_msg("%s", mapo_last_error());
    int64_t n;
    float *cfg = getf(&f, "rescale.cfg", &n), *cond = getf(&f, "rescale.cond", NULL);
    float *ref = getf(&f, "rescale.out", NULL);
    double *phi = getd(&f, "rescale.phi", NULL);
    float *y = malloc(n * sizeof(float));
    memcpy(y, cfg, n * sizeof(float));
    assert_int_equal(cfg_rescale(y, cond, phi[0], 2, n / 2), 0);
    const double e = rel_err_f32(y, ref, n);
    printf("  guidance_rescale %.2f: relative error %.2e\n", phi[0], e);
    if (!(e <= TOL_RESCALE)) fail_msg("cfg_rescale relative error %.3e", e);
    /* the rescale is per sample: one batch of 2 is not the same as one sample of 2n */
    memcpy(y, cfg, n * sizeof(float));
    assert_int_equal(cfg_rescale(y, cond, phi[0], 1, n), 0);
    assert_true(rel_err_f32(y, ref, n) > 1e-3);
    /* phi = 0: unchanged; bad arguments refused, noise_cfg untouched */
    memcpy(y, cfg, n * sizeof(float));
    assert_int_equal(cfg_rescale(y, cond, 0.0, 2, n / 2), 0);
    assert_memory_equal(y, cfg, n * sizeof(float));
    assert_int_equal(cfg_rescale(y, cond, 0.7, 2, 1), -1);
    assert_int_equal(cfg_rescale(y, cond, NAN, 2, n / 2), -1);
    float flat[4] = {1, 1, 1, 1}, c4[4] = {0, 1, 2, 3};
    assert_int_equal(cfg_rescale(flat, c4, 0.7, 1, 4), -1);
    assert_non_null(strstr(mapo_last_error(), "spread"));
    assert_memory_equal(y, cfg, n * sizeof(float));

    /* cfg_combine: g = 1 gives cond, g = 0 uncond; aliasing out with an input */
    float u[3] = {1, -2, 0.5f}, c[3] = {3, 4, -1}, o[3];
    cfg_combine(o, u, c, 1.0, 3);
    assert_memory_equal(o, c, sizeof c);
    cfg_combine(o, u, c, 0.0, 3);
    assert_memory_equal(o, u, sizeof u);
    cfg_combine(u, u, c, 7.5, 3);
    assert_true(u[0] == 1 + 7.5f * 2 && u[1] == -2 + 7.5f * 6 && u[2] == 0.5f + 7.5f * -1.5f);
    free(cfg); free(cond); free(ref); free(phi); free(y);
    st_close(&f);
}

/* ------------------------------------------------------------------ refusals */
static void expect_refused(const char *json, const char *kind, int N, const char *needle) {
    sampler *s = (sampler *)0x1;
    const int rc = sampler_create_from_string(&s, json, "cfg.json", kind, N);
    if (rc != -1) fail_msg("accepted (%s, %d steps): %s", kind, N, json);
    assert_null(s);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("message '%s' lacks '%s' (for %s)", mapo_last_error(), needle, json);
}

static void test_bad_configs(void **st) {
    (void)st;
    struct {
        const char *json, *kind;
        int N;
        const char *needle;
    } bad[] = {
        {"{\"trained_betas\": [0.1, 0.2]}", "ddim", 2, "trained_betas"},
        {"{\"thresholding\": true}", "ddim", 10, "thresholding"},
        {"{\"thresholding\": 1}", "ddim", 10, "thresholding"},
        {"{\"use_beta_sigmas\": true}", "euler", 10, "use_beta_sigmas"},
        {"{\"interpolation_type\": \"log_linear\"}", "euler", 10, "log_linear"},
        {"{\"use_karras_sigmas\": true, \"use_exponential_sigmas\": true}", "euler", 10,
         "only one"},
        {"{\"beta_schedule\": \"sigmoid\"}", "ddim", 10, "beta_schedule"},
        {"{\"beta_schedule\": 3}", "euler", 10, "beta_schedule"},
        {"{\"prediction_type\": \"flow\"}", "ddim", 10, "prediction_type"},
        {"{\"prediction_type\": \"original_sample\"}", "ddim", 10, "original_sample"},
        {"{\"timestep_spacing\": \"middle\"}", "euler", 10, "timestep_spacing"},
        {"{\"timestep_spacing\": null}", "ddim", 10, "timestep_spacing"},
        {"{\"timestep_type\": \"discreet\"}", "euler", 10, "timestep_type"},
        {"{\"final_sigmas_type\": \"one\"}", "euler", 10, "final_sigmas_type"},
        {"{\"num_train_timesteps\": 0}", "ddim", 1, "num_train_timesteps"},
        {"{\"num_train_timesteps\": 1000.5}", "ddim", 1, "num_train_timesteps"},
        {"{\"num_train_timesteps\": 99999999999999}", "euler", 1, "num_train_timesteps"},
        {"{\"beta_start\": -0.1}", "ddim", 10, "beta_start"},
        {"{\"beta_end\": 1.5}", "ddim", 10, "beta_end"},
        {"{\"beta_end\": \"0.012\"}", "euler", 10, "beta_end"},
        {"{\"beta_start\": 0, \"beta_end\": 0}", "euler", 10, "beta_start"},
        {"{\"beta_start\": 0.5, \"beta_end\": 0.9}", "euler", 10, "underflows"},
        {"{\"steps_offset\": -1}", "ddim", 10, "steps_offset"},
        {"{\"steps_offset\": 5}", "ddim", 1000, "steps_offset"},
        {"{\"clip_sample_range\": -1}", "ddim", 10, "clip_sample_range"},
        {"{\"clip_sample\": \"yes\"}", "ddim", 10, "clip_sample"},
        {"{\"sigma_min\": 0}", "euler", 10, "sigma_min"},
        {"{\"sigma_max\": \"big\"}", "euler", 10, "sigma_max"},
        {"{\"rescale_betas_zero_snr\": true, \"timestep_spacing\": \"trailing\"}", "ddim", 10,
         "epsilon"},
        {"{\"timestep_spacing\": \"trailing\"}", "ddim", 61, "extra timestep"},
        {"{\"use_karras_sigmas\": true, \"sigma_max\": 1e300}", "euler", 10, "degenerate"},
        {"{\"use_exponential_sigmas\": true, \"sigma_min\": 1e-300}", "euler", 10,
         "degenerate"},
        {"{\"timestep_spacing\": \"trailing\"}", "euler", 103, "extra timestep"},
        {"{}", "ddim", 0, "num_inference_steps"},
        {"{}", "euler", 1001, "num_inference_steps"},
        {"{}", "dpm", 10, "unknown kind"},
        {"[1, 2]", "ddim", 10, "JSON object"},
        {"{\"a\": 1, \"a\": 2}", "ddim", 10, "JSON"},
        {"{\"num_train_timesteps\": 1000", "ddim", 10, "JSON"},
        {"", "ddim", 10, "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(bad[i].json, bad[i].kind, bad[i].N, bad[i].needle);
    sampler *s;
    assert_int_equal(sampler_create(&s, "/nonexistent/scheduler_config.json", "ddim", 10), -1);
    assert_null(s);
    assert_non_null(strstr(mapo_last_error(), "cannot read"));
    assert_int_equal(sampler_create_from_string(&s, NULL, NULL, "ddim", 10), -1);
    assert_int_equal(sampler_create_from_string(&s, "{}", "x", NULL, 10), -1);

    /* accepted: keys of other schedulers are ignored as diffusers ignores them; Euler-only
       values do not bother DDIM and the other way round; null booleans are false */
    const char *ok[][2] = {
        {"{\"use_beta_sigmas\": true, \"interpolation_type\": \"log_linear\"}", "ddim"},
        {"{\"thresholding\": true, \"clip_sample\": 5}", "euler"},
        {"{\"skip_prk_steps\": true, \"foo\": [1, {}], \"solver_order\": 2}", "ddim"},
        {"{\"use_karras_sigmas\": null, \"sigma_min\": null, \"trained_betas\": null}",
         "euler"},
        {"{\"rescale_betas_zero_snr\": true, \"timestep_spacing\": \"trailing\"}", "euler"},
        {"{\"rescale_betas_zero_snr\": true, \"prediction_type\": \"v_prediction\"}", "ddim"},
        {"{\"steps_offset\": 5}", "euler"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (sampler_create_from_string(&s, ok[i][0], "ok.json", ok[i][1], 10))
            fail_msg("refused %s for %s: %s", ok[i][0], ok[i][1], mapo_last_error());
        sampler_free(s);
    }
    /* 1000 steps with leading + steps_offset 1 run past t = 999: refused for DDIM (diffusers
       would index alphas_cumprod[1000]); Euler clamps the sigma like np.interp */
    assert_int_equal(sampler_create(&s, DIR "/sd15.json", "ddim", 1000), -1);
    assert_int_equal(sampler_create(&s, DIR "/sdxl.json", "euler", 1000), 0);
    assert_true(sampler_timestep(s, 0) == 1000.0);
    sampler_free(s);
}

static void test_api_errors(void **st) {
    (void)st;
    sampler *s;
    assert_int_equal(sampler_create(&s, DIR "/sd15.json", "ddim", 4), 0);
    float x[4] = {1, 2, 3, 4}, m[4] = {0.1f, 0.2f, 0.3f, 0.4f}, x0[4];
    memcpy(x0, x, sizeof x);
    assert_int_equal(sampler_step(s, 4, x, m, NULL, 4), -1);
    assert_non_null(strstr(mapo_last_error(), "step 4"));
    assert_int_equal(sampler_step(s, -1, x, m, NULL, 4), -1);
    assert_int_equal(sampler_step(s, 0, x, m, NULL, -1), -1);
    assert_int_equal(sampler_step(s, 0, NULL, m, NULL, 4), -1);
    assert_memory_equal(x, x0, sizeof x);
    assert_int_equal(sampler_set_eta(s, -0.5), -1);
    assert_int_equal(sampler_set_eta(s, INFINITY), -1);
    assert_int_equal(sampler_set_eta(s, 0.5), 0);
    assert_int_equal(sampler_step(s, 0, x, m, NULL, 4), -1);
    assert_non_null(strstr(mapo_last_error(), "noise"));
    assert_memory_equal(x, x0, sizeof x);
    assert_int_equal(sampler_set_eta(s, 0), 0);
    assert_int_equal(sampler_step(s, 0, x, m, NULL, 4), 0);
    /* DDIM's scale_model_input is the identity; out-of-range i leaves x_in alone */
    float y[4] = {9, 9, 9, 9};
    sampler_scale_model_input(s, 0, y, x, 4);
    assert_memory_equal(y, x, sizeof x);
    sampler_free(s);
    assert_int_equal(sampler_create(&s, DIR "/sdxl.json", "euler", 4), 0);
    assert_int_equal(sampler_set_eta(s, 0.3), -1);
    assert_int_equal(sampler_set_eta(s, 0), 0);
    float z[4] = {7, 7, 7, 7};
    sampler_scale_model_input(s, 9, z, x, 4);
    assert_true(z[0] == 7);
    sampler_scale_model_input(s, 0, x, x, 4); /* in place */
    assert_true(x[0] != x0[0]);
    assert_true(isnan(sampler_sigma(s, 5)) && !isnan(sampler_sigma(s, 4)));
    sampler_free(s);
    sampler_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trajectories), cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_trailing_counts), cmocka_unit_test(test_cfg),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_api_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
