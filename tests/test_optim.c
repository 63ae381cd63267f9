/* test_optim.c -- AdamW, gradient clipping and LR schedules against torch / diffusers.
 *
 * Fixtures: tests/fixtures/train/{adamw,schedules}.safetensors from
 * tools/make_train_fixtures.py.
 *
 * AdamW tolerance: |p_c - p_torch| <= 1e-6 * max(1, |p_torch|) for every element after each
 * of 5 steps. adamw_step repeats torch's float32 operations one by one (see optim.c); the
 * only operation that is not reproducible bit for bit is torch's float32 sqrt (MKL, off by
 * one ulp for about a fifth of the inputs). One ulp in the denominator moves an update of
 * size <= lr ~ 1e-2 by ~1e-9, which can flip the rounding of p (|p| ~ 1, ulp 1.2e-7) by one
 * ulp; five steps give at most a few ulps, i.e. a few 1e-7. The measured difference is
 * printed in ulps. A wrong formula (bias correction, decoupled decay, eps placement) moves
 * p by ~lr * 1e-3 or more, far above 1e-6 for these lr.
 * clip_grad_norm_: torch accumulates the norm in float32, this code in double: the norms
 * agree to 1e-6 relative; the clipped gradient then feeds the same AdamW check.
 * Schedules: the same double formulas as diffusers' lambdas: 1e-12 absolute. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/optim.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define ADAMW_FIX "tests/fixtures/train/adamw.safetensors"
#define SCHED_FIX "tests/fixtures/train/schedules.safetensors"

static void *get(const st_file *f, const char *name, int64_t *n, int dbl) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture lacks '%s'", f->path, name);
    void *d = malloc((size_t)t->numel * (dbl ? sizeof(double) : sizeof(float)));
    assert_int_equal(dbl ? st_to_f64(t, d) : st_to_f32(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

static int32_t ord(float x) { /* monotone integer image of a float, for ulp distances */
    int32_t i;
    memcpy(&i, &x, 4);
    return i < 0 ? INT32_MIN - i : i;
}

static void run_adamw(const st_file *f, const char *run) {
    char nm[128];
    int64_t N, n2;
    float *p = get(f, "p0", &N, 0);
    float *grads = get(f, "grads", &n2, 0);
    double *lrs = get(f, "lrs", NULL, 1);
    snprintf(nm, sizeof nm, "%s.hp", run);
    double *hp = get(f, nm, NULL, 1);
    snprintf(nm, sizeof nm, "%s.params", run);
    float *ref = get(f, nm, NULL, 0);
    const int steps = (int)(n2 / N);
    const double max_norm = hp[4];
    float *norms = NULL;
    if (max_norm > 0) {
        snprintf(nm, sizeof nm, "%s.norms", run);
        norms = get(f, nm, NULL, 0);
    }
    adamw_config c = {hp[0], hp[1], hp[2], hp[3]};
    float *m = calloc(N, sizeof(float)), *v = calloc(N, sizeof(float));
    float *g = malloc(N * sizeof(float));
    double worst = 0;
    int64_t worst_ulp = 0, differ = 0;
    for (int k = 0; k < steps; k++) {
        memcpy(g, grads + (size_t)k * N, N * sizeof(float));
        if (max_norm > 0) {
            const double tn = clip_grad_norm(g, N, max_norm);
            const double e = fabs(tn - norms[k]) / norms[k];
            printf("  %s step %d: total norm %.9g (torch %.9g, rel %.1e)%s\n", run, k + 1, tn,
                   (double)norms[k], e, tn > max_norm ? " clipped" : "");
            assert_true(e < 1e-6);
        }
        adamw_step(p, g, m, v, N, k + 1, lrs[k], &c);
        const float *r = ref + (size_t)k * N;
        for (int64_t i = 0; i < N; i++) {
            const double d = fabs((double)p[i] - (double)r[i]);
            const double e = d / fmax(1.0, fabs((double)r[i]));
            if (e > worst) worst = e;
            int64_t u = llabs((int64_t)ord(p[i]) - (int64_t)ord(r[i]));
            if (u > worst_ulp) worst_ulp = u;
            differ += u != 0;
            if (e > 1e-6)
                fail_msg("%s step %d p[%lld] = %.9g, torch %.9g", run, k + 1, (long long)i,
                         (double)p[i], (double)r[i]);
        }
    }
    printf("  AdamW %-5s: %d steps x %lld params: worst |diff|/max(1,|p|) %.2e, worst %lld ulp, "
           "%lld of %lld values not bit-identical\n",
           run, steps, (long long)N, worst, (long long)worst_ulp, (long long)differ,
           (long long)(steps * N));
    free(p); free(grads); free(lrs); free(hp); free(ref); free(norms); free(m); free(v); free(g);
}

static void test_adamw_vs_torch(void **s) {
    (void)s;
    st_file f;
    if (st_open(&f, ADAMW_FIX)) fail_msg("%s", mapo_last_error());
    const char *runs = st_meta(&f, "runs");
    assert_non_null(runs);
    char *dup = strdup(runs), *save = NULL;
    int count = 0;
    for (char *r = strtok_r(dup, ",", &save); r; r = strtok_r(NULL, ",", &save), count++)
        run_adamw(&f, r);
    assert_int_equal(count, 3);
    free(dup);
    st_close(&f);
}

/* AdamW and the norm give the same bits whatever the thread count */
static void test_threads_invariant(void **s) {
    (void)s;
    const size_t n = 3000001; /* several OpenMP chunks and a ragged end */
    float *g = malloc(n * sizeof(float)), *p[2], *m[2], *v[2];
    for (size_t i = 0; i < n; i++) g[i] = (float)sin(0.001 * (double)i) * 1e-2f;
    double sq[2];
    const int threads[2] = {1, 4};
    adamw_config c = {0.9, 0.999, 1e-8, 1e-2};
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(threads[t]);
        sq[t] = grad_sq_norm(g, n);
        p[t] = malloc(n * sizeof(float));
        m[t] = calloc(n, sizeof(float));
        v[t] = calloc(n, sizeof(float));
        for (size_t i = 0; i < n; i++) p[t][i] = (float)cos(0.0007 * (double)i);
        for (int k = 1; k <= 3; k++) adamw_step(p[t], g, m[t], v[t], n, k, 1e-3, &c);
    }
    assert_true(sq[0] == sq[1]);
    assert_memory_equal(p[0], p[1], n * sizeof(float));
    assert_memory_equal(m[0], m[1], n * sizeof(float));
    assert_memory_equal(v[0], v[1], n * sizeof(float));
    /* the norm against a long-double sum */
    long double ref = 0;
    for (size_t i = 0; i < n; i++) ref += (long double)g[i] * g[i];
    assert_true(fabs(sq[0] - (double)ref) <= 1e-13 * (double)ref);
    /* the lanes variant: the same sum up to double rounding, whatever the thread count */
    double sl[2];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(threads[t]);
        sl[t] = grad_sq_norm_lanes(g, n);
    }
    assert_true(sl[0] == sl[1]);
    assert_true(fabs(sl[0] - (double)ref) <= 1e-13 * (double)ref);
    for (int t = 0; t < 2; t++) {
        free(p[t]);
        free(m[t]);
        free(v[t]);
    }
    free(g);
    omp_set_num_threads(omp_get_num_procs());
}

static void test_clip_semantics(void **s) {
    (void)s;
    float g[4] = {0.3f, -0.4f, 0.0f, 0.0f}; /* norm 0.5 */
    float g0[4];
    memcpy(g0, g, sizeof g);
    double tn = clip_grad_norm(g, 4, 1.0);
    assert_true(fabs(tn - 0.5) < 1e-7);
    assert_memory_equal(g, g0, sizeof g); /* coef clamps to 1: untouched */
    tn = clip_grad_norm(g, 4, 0.25);
    assert_true(fabs(tn - 0.5) < 1e-7);
    assert_true(fabs(sqrt(grad_sq_norm(g, 4)) - 0.25) < 1e-6);
    /* torch's float32 formula: (1 / (total + 1e-6)) * max_norm */
    const float coef = clip_grad_coef(0.5, 0.25);
    assert_true(coef == (1.0f / (0.5f + 1e-6f)) * 0.25f);
    assert_true(clip_grad_coef(0.0, 1.0) == 1.0f);
    assert_true(isnan(clip_grad_coef(NAN, 1.0))); /* as torch.clamp: NaN stays */
    float h[2] = {1.0f, 2.0f};
    grad_scale(h, 2, 0.5f);
    assert_true(h[0] == 0.5f && h[1] == 1.0f);
}

/* weight decay 0 and a first step by hand */
static void test_adamw_by_hand(void **s) {
    (void)s;
    float p = 1.0f, g = 0.5f, m = 0, v = 0;
    adamw_config c = {0.9, 0.999, 1e-8, 0.0};
    adamw_step(&p, &g, &m, &v, 1, 1, 0.1, &c);
    /* step 1: m = 0.05, v = 0.00025, mhat = 0.5, vhat = 0.25: p = 1 - 0.1 * 0.5/(0.5+1e-8) */
    assert_true(fabs(m - 0.05f) < 1e-8);
    assert_true(fabs(v - 0.00025f) < 1e-10);
    assert_true(fabs(p - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))) < 1e-7);
    c.weight_decay = 0.5;
    p = 2.0f;
    g = 0;
    m = v = 0;
    adamw_step(&p, &g, &m, &v, 1, 1, 0.1, &c);
    assert_true(p == 2.0f * (float)(1.0 - 0.1 * 0.5)); /* decay only */
}

static void test_schedules_vs_diffusers(void **s) {
    (void)s;
    st_file f;
    if (st_open(&f, SCHED_FIX)) fail_msg("%s", mapo_last_error());
    const char *names[] = {"constant", "constant_with_warmup", "linear", "cosine"};
    const int wt[2][2] = {{3, 10}, {0, 7}};
    int checked = 0;
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 4; k++) {
            char nm[128];
            snprintf(nm, sizeof nm, "sched.%s.w%d.t%d", names[k], wt[a][0], wt[a][1]);
            int64_t n;
            double *ref = get(&f, nm, &n, 1);
            lr_schedule sc;
            assert_int_equal(lr_schedule_parse(names[k], &sc), 0);
            assert_string_equal(lr_schedule_name(sc), names[k]);
            double worst = 0;
            for (int64_t st = 0; st < n; st++) {
                const double x = lr_lambda(sc, st, wt[a][0], wt[a][1]);
                const double e = fabs(x - ref[st]);
                if (e > worst) worst = e;
                if (e > 1e-12)
                    fail_msg("%s step %lld: %.17g, diffusers %.17g", nm, (long long)st, x,
                             ref[st]);
                checked++;
            }
            printf("  %-36s max |diff| %.1e\n", nm, worst);
            free(ref);
        }
    /* --lr_num_cycles / --lr_power; polynomial's multiplier depends on the initial lr (its
       end is lr_end = 1e-7); the fixture divides get_last_lr() by lr, one more rounding */
    const struct { const char *name, *key; double val, lr; } ex[] = {
        {"cosine_with_restarts", "num_cycles", 1, 1}, {"cosine_with_restarts", "num_cycles", 3, 1},
        {"polynomial", "power", 1, 1e-3}, {"polynomial", "power", 2, 1e-3},
        {"polynomial", "power", 0.5, 1e-3}, {"polynomial", "power", 1, 5e-4},
        {"polynomial", "power", 2, 5e-4}, {"polynomial", "power", 0.5, 5e-4}};
    for (int a = 0; a < 2; a++)
        for (size_t k = 0; k < sizeof ex / sizeof *ex; k++) {
            char nm[160];
            snprintf(nm, sizeof nm, "sched.%s.%s%g.lr%g.w%d.t%d", ex[k].name, ex[k].key, ex[k].val,
                     ex[k].lr, wt[a][0], wt[a][1]);
            int64_t n;
            double *ref = get(&f, nm, &n, 1);
            lr_schedule sc;
            assert_int_equal(lr_schedule_parse(ex[k].name, &sc), 0);
            assert_string_equal(lr_schedule_name(sc), ex[k].name);
            double worst = 0;
            for (int64_t st = 0; st < n; st++) {
                const double x = lr_lambda_ex(sc, st, wt[a][0], wt[a][1], (int)ex[k].val,
                                              ex[k].val, ex[k].lr);
                const double e = fabs(x - ref[st]);
                if (e > worst) worst = e;
                if (e > 1e-12 * fmax(1.0, fabs(ref[st])))
                    fail_msg("%s step %lld: %.17g, diffusers %.17g", nm, (long long)st, x,
                             ref[st]);
                checked++;
            }
            printf("  %-48s max |diff| %.1e\n", nm, worst);
            free(ref);
        }
    assert_true(checked > 250);
    lr_schedule sc;
    assert_int_equal(lr_schedule_parse("step", &sc), -1);
    assert_non_null(strstr(mapo_last_error(), "step"));
    st_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_vs_torch),
        cmocka_unit_test(test_threads_invariant),
        cmocka_unit_test(test_clip_semantics),
        cmocka_unit_test(test_adamw_by_hand),
        cmocka_unit_test(test_schedules_vs_diffusers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
