/* test_objectives.c -- MaPO, Diffusion-DPO, SFT and Diffusion-KTO against the official
 * formulas.
 *
 * Fixtures: tests/fixtures/train/objectives.safetensors from tools/make_train_fixtures.py.
 * Each case carries two references: torch autograd in float64 on the official formulas
 * written naively (only where that is finite and accurate: naive_ok), and the same
 * quantities from mpmath at 50 digits (every case, including l = 0, l = 1e-12 and l = 1e4
 * where the naive formula is 0/0 or its gradient inf/inf).
 *
 * Tolerances (relative, ||c - ref|| / ||ref|| per vector):
 *   vs mpmath 1e-12: the C code evaluates each g, g' and logsigmoid to a few ulps (expm1,
 *     series near 0); the loss sums B terms and multiplies by T = 1000, so a few ulps of
 *     2.2e-16 grow by at most ~1e3 in the worst term -- measured errors are printed and are
 *     far below the bound; any formula error (a missing 1/B, T or s, the wrong branch of
 *     the sigmoid) is of order 1e-3 or more.
 *   vs torch 1e-10: the naive float64 formula itself loses digits in exp(x) - 1 for small x
 *     (the fixture script reports up to ~4e-13 against mpmath for l ~ 0.01..0.5 and
 *     beta 64), so the torch reference is only good to ~1e-12; 1e-10 leaves room for that.
 *   finite differences 1e-6: the 4-point central stencil with h = 1e-5 max(1, l) has
 *     truncation error ~h^4 |f^(5)| and rounding error ~eps |loss| / h ~ 1e-10. */
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/objectives.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/train/objectives.safetensors"
#define TOL_MP 1e-12
#define TOL_TORCH 1e-10

static st_file g_f;
static double g_worst_mp = 0, g_worst_torch = 0;

static int setup(void **s) {
    (void)s;
    if (st_open(&g_f, FIX)) {
        fprintf(stderr, "%s\n", mapo_last_error());
        return -1;
    }
    return 0;
}
static int teardown(void **s) {
    (void)s;
    st_close(&g_f);
    printf("  worst relative error: vs mpmath %.3g, vs torch %.3g\n", g_worst_mp,
           g_worst_torch);
    return 0;
}

/* malloc'd float64 copy of a fixture tensor; *n receives numel */
static double *getd(const char *name, int64_t *n) {
    const st_tensor *t = st_find(&g_f, name);
    if (!t) fail_msg("fixture lacks '%s'", name);
    double *d = malloc((size_t)t->numel * sizeof(double));
    assert_int_equal(st_to_f64(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

static double rel1(double a, double b) {
    if (!isfinite(a)) return INFINITY;
    return fabs(a - b) / (fabs(b) > 0 ? fabs(b) : 1e-300);
}

typedef enum { K_MAPO, K_DPO, K_SFT } kind;

static void check_case(kind k, const char *obj, const char *cs) {
    char nm[256];
#define NM(suffix) (snprintf(nm, sizeof nm, "%s.%s." suffix, obj, cs), nm)
    int64_t n;
    double *l = getd(NM("l"), &n);
    double *hp = getd(NM("hp"), NULL);
    double *loss_t = getd(NM("loss_torch"), NULL), *dl_t = getd(NM("dl_torch"), NULL);
    double *ok = getd(NM("naive_ok"), NULL);
    double *loss_m = getd(NM("loss_mp"), NULL), *dl_m = getd(NM("dl_mp"), NULL);
    double *stm = getd(NM("stats_mp"), NULL);
    double *lref = k == K_DPO ? getd(NM("lref"), NULL) : NULL;
    const int B = (int)(n / 2);
    double *dl = malloc((size_t)n * sizeof(double));
    objective_stats st;
    int rc = k == K_MAPO  ? objective_mapo(dl, &st, l, B, hp[0], hp[1], (int)hp[2])
             : k == K_DPO ? objective_dpo(dl, &st, l, lref, B, hp[0])
                          : objective_sft(dl, &st, l, B);
    if (rc) fail_msg("%s.%s: %s", obj, cs, mapo_last_error());
    const double el = rel1(st.loss, loss_m[0]), eg = rel_err_f64(dl, dl_m, n);
    printf("  %-5s %-12s loss %.17g  vs mpmath: loss %.2e grad %.2e", obj, cs, st.loss, el, eg);
    if (el > g_worst_mp) g_worst_mp = el;
    if (eg > g_worst_mp) g_worst_mp = eg;
    if (el > TOL_MP || eg > TOL_MP)
        fail_msg("%s.%s: loss %.17g (mpmath %.17g) rel %.3g, grad rel %.3g > %g", obj, cs,
                 st.loss, loss_m[0], el, eg, TOL_MP);
    if (ok[0] == 1.0) {
        const double tl = rel1(st.loss, loss_t[0]), tg = rel_err_f64(dl, dl_t, n);
        printf("  vs torch: loss %.2e grad %.2e\n", tl, tg);
        if (tl > g_worst_torch) g_worst_torch = tl;
        if (tg > g_worst_torch) g_worst_torch = tg;
        if (tl > TOL_TORCH || tg > TOL_TORCH)
            fail_msg("%s.%s: vs torch loss rel %.3g grad rel %.3g > %g", obj, cs, tl, tg,
                     TOL_TORCH);
    } else {
        printf("  (naive torch formula not usable here)\n");
    }
    /* the logged statistics */
    double ew = 0, el_ = 0;
    for (int i = 0; i < B; i++) {
        ew += l[i];
        el_ += l[B + i];
    }
    assert_true(rel1(st.err_w, ew / B) < 1e-14 || fabs(st.err_w - ew / B) < 1e-300);
    assert_true(rel1(st.err_l, el_ / B) < 1e-14 || fabs(st.err_l - el_ / B) < 1e-300);
    if (k == K_MAPO) {
        assert_true(fabs(st.win_score - stm[0]) <= 1e-13 * fabs(stm[0]) + 1e-300);
        assert_true(fabs(st.lose_score - stm[1]) <= 1e-13 * fabs(stm[1]) + 1e-300);
        assert_true(fabs(st.margin - stm[2]) <= TOL_MP * fabs(stm[2]) + 1e-300);
        assert_true(fabs(st.implicit_acc - stm[3]) < 1e-15);
        assert_true(fabs(st.loss - (st.err_w + st.margin)) <= 1e-15 * fabs(st.loss));
    } else if (k == K_DPO) {
        assert_true(fabs(st.margin - stm[0]) <= 1e-12 * fabs(stm[0]) + 1e-12);
        assert_true(fabs(st.implicit_acc - stm[1]) < 1e-15);
        double rw = 0, rl = 0;
        for (int i = 0; i < B; i++) {
            rw += lref[i];
            rl += lref[B + i];
        }
        assert_true(rel1(st.ref_err_w, rw / B) < 1e-14);
        assert_true(rel1(st.ref_err_l, rl / B) < 1e-14);
    } else {
        assert_true(fabs(st.margin - (st.err_l - st.err_w)) < 1e-15);
    }
    free(l); free(hp); free(loss_t); free(dl_t); free(ok); free(loss_m); free(dl_m);
    free(stm); free(lref); free(dl);
#undef NM
}

static void run_cases(kind k, const char *obj) {
    char key[64];
    snprintf(key, sizeof key, "cases.%s", obj);
    const char *list = st_meta(&g_f, key);
    if (!list) fail_msg("fixture lacks metadata '%s'", key);
    char *dup = strdup(list), *save = NULL;
    int count = 0;
    for (char *c = strtok_r(dup, ",", &save); c; c = strtok_r(NULL, ",", &save), count++)
        check_case(k, obj, c);
    free(dup);
    assert_true(count > 0);
}

static void test_mapo_fixture(void **s) { (void)s; run_cases(K_MAPO, "mapo"); }
static void test_dpo_fixture(void **s) { (void)s; run_cases(K_DPO, "dpo"); }
static void test_sft_fixture(void **s) { (void)s; run_cases(K_SFT, "sft"); }

/* g and g' are continuous across the branch points (|x| = 1e-5 for g, 0.1 for g', 0) and
   g(0) = 1, g'(0) = -s/2 */
static void test_g_branches(void **s) {
    (void)s;
    const double S = 0.5;
    assert_true(mapo_g(S, 0) == 1.0);
    assert_true(fabs(mapo_g_deriv(S, 0) + S / 2) < 1e-17);
    const double xs[] = {1e-5, -1e-5, 0.1, -0.1};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        const double l = xs[i] / S;
        const double lo = l * (1 - 1e-12), hi = l * (1 + 1e-12);
        const double g0 = mapo_g(S, lo), g1 = mapo_g(S, hi);
        const double d0 = mapo_g_deriv(S, lo), d1 = mapo_g_deriv(S, hi);
        /* the true change over a 2e-12 relative step is below ~3e-12 relative */
        if (fabs(g0 - g1) > 1e-11 * fabs(g1))
            fail_msg("g jumps at x=%g: %.17g vs %.17g", xs[i], g0, g1);
        if (fabs(d0 - d1) > 1e-11 * fabs(d1))
            fail_msg("g' jumps at x=%g: %.17g vs %.17g", xs[i], d0, d1);
    }
    /* g' against a central difference of g at a few points in each branch */
    const double pts[] = {3e-6, 0.01, 0.15, 1.0, 7.0, 60.0, -0.05, -3.0};
    for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        const double l = pts[i], h = 1e-5 * fmax(1e-3, fabs(l));
        const double fd = (mapo_g(S, l + h) - mapo_g(S, l - h)) / (2 * h);
        const double an = mapo_g_deriv(S, l);
        if (fabs(fd - an) > 1e-6 * fabs(an) + 1e-12)
            fail_msg("g'(l=%g): analytic %.12g, finite difference %.12g", l, an, fd);
    }
    /* logsigmoid: stable at both ends */
    assert_true(mapo_logsigmoid(-1e6) == -1e6);
    assert_true(mapo_logsigmoid(1e6) == 0.0 || fabs(mapo_logsigmoid(1e6)) < 1e-300);
    assert_true(fabs(mapo_logsigmoid(0) + log(2.0)) < 1e-16);
    assert_true(fabs(mapo_logsigmoid(40) + exp(-40.0)) < 1e-30);
}

/* finite for every l in [0, 1e4], whatever the pairing and hyper-parameters */
static void test_finite_range(void **s) {
    (void)s;
    double grid[64];
    int ng = 0;
    grid[ng++] = 0;
    for (double v = 1e-14; v <= 1e4 * 1.0000001; v *= 3.1622776601683795) grid[ng++] = v;
    grid[ng++] = 1e4;
    grid[ng++] = 1e-300;
    grid[ng++] = 709.0 / 0.5;
    grid[ng++] = 1490.0; /* s*l ~ 745: exp(-x) underflows to a subnormal */
    const double hps[][3] = {{0.1, 0.5, 1000}, {1024, 0.5, 1000}, {8, 2.0, 100}, {0.1, 1e-3, 1}};
    double l[2], dl[2];
    objective_stats st;
    for (size_t h = 0; h < sizeof hps / sizeof hps[0]; h++)
        for (int i = 0; i < ng; i++)
            for (int j = 0; j < ng; j++) {
                l[0] = grid[i];
                l[1] = grid[j];
                if (objective_mapo(dl, &st, l, 1, hps[h][0], hps[h][1], (int)hps[h][2]))
                    fail_msg("MaPO at lw=%g ll=%g: %s", l[0], l[1], mapo_last_error());
                assert_true(isfinite(st.loss) && isfinite(dl[0]) && isfinite(dl[1]));
                assert_true(st.win_score > 0 || l[0] * hps[h][1] > 700);
                assert_true(st.win_score <= 1.0 && st.lose_score <= 1.0);
                /* the loss is bounded by mean(lw) + beta*log(1 + e^T) */
                assert_true(st.loss >= l[0] - 1e-12 * l[0]);
                double lref[2] = {grid[j], grid[i]};
                if (objective_dpo(dl, &st, l, lref, 1, 5000))
                    fail_msg("DPO at lw=%g ll=%g: %s", l[0], l[1], mapo_last_error());
                assert_true(isfinite(st.loss) && isfinite(dl[0]) && isfinite(dl[1]));
            }
}

/* analytic d loss / d l against central differences of the loss */
static void check_fd(kind k, const double *l0, const double *lref, int B, double a, double b,
                     int T) {
    double l[16], dl[16], tmp[16];
    objective_stats st;
    memcpy(l, l0, 2 * B * sizeof(double));
    int rc = k == K_MAPO ? objective_mapo(dl, &st, l, B, a, b, T)
                         : objective_dpo(dl, &st, l, lref, B, a);
    assert_int_equal(rc, 0);
    double worst = 0;
    for (int i = 0; i < 2 * B; i++) {
        /* 4-point stencil: truncation error O(h^4), rounding ~eps |loss| / h */
        const double h = 1e-5 * fmax(1.0, fabs(l0[i]));
        const double off[4] = {h, -h, 2 * h, -2 * h};
        double f[4];
        for (int q = 0; q < 4; q++) {
            objective_stats sq;
            l[i] = l0[i] + off[q];
            rc = k == K_MAPO ? objective_mapo(tmp, &sq, l, B, a, b, T)
                             : objective_dpo(tmp, &sq, l, lref, B, a);
            assert_int_equal(rc, 0);
            f[q] = sq.loss;
        }
        l[i] = l0[i];
        const double fd = (8 * (f[0] - f[1]) - (f[2] - f[3])) / (12 * h);
        const double e = fabs(fd - dl[i]) / fmax(fabs(dl[i]), 1e-3);
        if (e > worst) worst = e;
        if (e > 1e-6) fail_msg("d loss / d l[%d]: analytic %.12g, finite difference %.12g", i,
                               dl[i], fd);
    }
    printf("  %s finite-difference check: worst relative error %.2e\n",
           k == K_MAPO ? "MaPO" : "DPO", worst);
}

static void test_finite_differences(void **s) {
    (void)s;
    /* errors of realistic size (the loss is smooth there; T*log_odds stays O(1..10)) */
    const double l1[8] = {0.1, 0.13, 0.2, 0.052, 0.1005, 0.128, 0.203, 0.06};
    check_fd(K_MAPO, l1, NULL, 4, 0.1, 0.5, 1000);
    check_fd(K_MAPO, l1, NULL, 4, 8.0, 2.0, 100);
    const double l2[6] = {0.5, 1.7, 0.01, 0.6, 1.6, 0.012};
    check_fd(K_MAPO, l2, NULL, 3, 0.1, 0.5, 10);
    const double r1[8] = {0.1002, 0.1301, 0.1999, 0.0521, 0.1, 0.13, 0.2, 0.052};
    check_fd(K_DPO, l1, r1, 4, 5000, 0, 0);
}

static void test_nonfinite_refused(void **s) {
    (void)s;
    double l[8] = {0.1, 0.2, 0.3, NAN, 0.1, 0.2, 0.3, 0.4}, dl[8];
    objective_stats st;
    assert_int_equal(objective_mapo(dl, &st, l, 4, 0.1, 0.5, 1000), -1);
    const char *m = mapo_last_error();
    printf("  message: %s\n", m);
    assert_non_null(strstr(m, "pair 3"));
    assert_non_null(strstr(m, "chosen"));
    assert_non_null(strstr(m, "nan"));
    l[3] = 0.4;
    l[5] = INFINITY;
    assert_int_equal(objective_mapo(dl, &st, l, 4, 0.1, 0.5, 1000), -1);
    assert_non_null(strstr(mapo_last_error(), "pair 1 (rejected)"));
    assert_non_null(strstr(mapo_last_error(), "inf"));
    assert_int_equal(objective_sft(dl, &st, l, 4), -1);
    assert_non_null(strstr(mapo_last_error(), "pair 1 (rejected)"));
    l[5] = 0.2;
    double r[8] = {0.1, 0.2, 0.3, 0.4, 0.1, 0.2, -NAN, 0.4};
    assert_int_equal(objective_dpo(dl, &st, l, r, 4, 5000), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "reference error of pair 2 (rejected)"));
    /* and the clean inputs pass */
    assert_int_equal(objective_mapo(dl, &st, l, 4, 0.1, 0.5, 1000), 0);
    r[6] = 0.3;
    assert_int_equal(objective_dpo(dl, &st, l, r, 4, 5000), 0);
    /* bad hyper-parameters and empty batches */
    assert_int_equal(objective_mapo(dl, &st, l, 4, NAN, 0.5, 1000), -1);
    assert_int_equal(objective_mapo(dl, &st, l, 0, 0.1, 0.5, 1000), -1);
    assert_int_equal(objective_dpo(dl, &st, l, r, 0, 5000), -1);
}

/* The plain denoising loss of single images (pretraining): the mean, 1/n each, and it reads
   exactly n errors (an ASan build catches a read past them: the trainer's buffer holds n). */
static void test_denoise(void **s) {
    (void)s;
    double *l = malloc(3 * sizeof(double)), dl[3];
    l[0] = 0.1, l[1] = 0.4, l[2] = 0.7;
    objective_stats st;
    assert_int_equal(objective_denoise(dl, &st, l, 3), 0);
    assert_float_equal(st.loss, 0.4, 1e-15);
    assert_float_equal(st.err_w, 0.4, 1e-15);
    assert_float_equal(st.err_l, 0.0, 0);
    for (int i = 0; i < 3; i++) assert_float_equal(dl[i], 1.0 / 3, 1e-16);
    l[2] = NAN;
    assert_int_equal(objective_denoise(dl, &st, l, 3), -1);
    assert_non_null(strstr(mapo_last_error(), "image 2"));
    assert_int_equal(objective_denoise(dl, &st, l, 0), -1);
    free(l);
}

/* ------------------------------------------------------------------ Diffusion-KTO
 * Fixture: tests/fixtures/train/kto.safetensors from make_train_fixtures.kto(): per case the
 * official train_kto_sd_v1.5.py loss lines ported to torch float64 (autograd for dl) and
 * mpmath at 50 digits on the same double inputs.
 * Tolerances: loss and dl vs mpmath and vs torch 1e-12 relative (vector norm). Everything is
 * double arithmetic on O(n) terms: g_i - kl loses the leading digits of l (~0.1) against a
 * difference of ~1e-3, so z carries an absolute error of about beta * ulp(0.1) ~ 1e-14 and
 * sigmoid and the products a few ulps more -- measured errors are printed (~1e-16); a formula
 * error (a missing 1/n, lambda, sign or beta, kl not subtracted or not clamped) is of order
 * 1e-3 or more. Torch is compared only where its naive 1 - sigmoid(z) is accurate
 * (naive_ok; in the saturated case z = 40..60 it rounds the loss to 0). The statistics kl,
 * diff_pos, diff_neg are differences of nearby numbers: absolute tolerance 1e-15 (beside
 * values ~1e-3; ulp(0.2) = 2.8e-17 times a few terms). */
#define FIX_KTO "tests/fixtures/train/kto.safetensors"
#define TOL_KTO 1e-12

static double *kget(st_file *f, const char *name, int64_t *n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks '%s'", name);
    double *d = malloc((size_t)t->numel * sizeof(double));
    assert_int_equal(st_to_f64(t, d), 0);
    if (n) *n = t->numel;
    return d;
}

static double g_worst_kto = 0;

static void kto_case(st_file *f, const char *cs) {
    char nm[256];
#define KN(suffix) (snprintf(nm, sizeof nm, "kto.%s." suffix, cs), nm)
    int64_t n;
    double *l = kget(f, KN("l"), &n), *lref = kget(f, KN("lref"), NULL);
    double *hp = kget(f, KN("hp"), NULL), *ok = kget(f, KN("naive_ok"), NULL);
    double *loss_t = kget(f, KN("loss_torch"), NULL), *dl_t = kget(f, KN("dl_torch"), NULL);
    double *st_t = kget(f, KN("stats_torch"), NULL);
    double *loss_m = kget(f, KN("loss_mp"), NULL), *dl_m = kget(f, KN("dl_mp"), NULL);
    double *st_m = kget(f, KN("stats_mp"), NULL);
    const st_tensor *lt = st_find(f, KN("labels"));
    assert_non_null(lt);
    assert_int_equal(lt->dtype, ST_U8);
    assert_int_equal(lt->numel, n);
    const unsigned char *y = lt->data;
    double *dl = malloc((size_t)n * sizeof(double));
    objective_stats st;
    if (objective_kto(dl, &st, l, lref, y, (int)n, hp[0], hp[1], hp[2]))
        fail_msg("kto.%s: %s", cs, mapo_last_error());
    const double el = rel1(st.loss, loss_m[0]), eg = rel_err_f64(dl, dl_m, n);
    printf("  kto %-16s loss %.17g  vs mpmath: loss %.2e grad %.2e", cs, st.loss, el, eg);
    if (el > g_worst_kto) g_worst_kto = el;
    if (eg > g_worst_kto) g_worst_kto = eg;
    if (el > TOL_KTO || eg > TOL_KTO)
        fail_msg("kto.%s: loss %.17g (mpmath %.17g) rel %.3g, grad rel %.3g > %g", cs, st.loss,
                 loss_m[0], el, eg, TOL_KTO);
    if (ok[0] == 1.0) {
        const double tl = rel1(st.loss, loss_t[0]), tg = rel_err_f64(dl, dl_t, n);
        printf("  vs torch: loss %.2e grad %.2e\n", tl, tg);
        if (tl > g_worst_kto) g_worst_kto = tl;
        if (tg > g_worst_kto) g_worst_kto = tg;
        if (tl > TOL_KTO || tg > TOL_KTO)
            fail_msg("kto.%s: vs torch loss rel %.3g grad rel %.3g > %g", cs, tl, tg, TOL_KTO);
    } else {
        printf("  (naive torch formula not usable here)\n");
    }
    /* the logged statistics: kl, diff_pos / diff_neg (mpmath: exact means; the script's
       divide by count + 1e-6), acc; the error means */
    int np = 0;
    double sw = 0, sl = 0, rw = 0, rl = 0;
    for (int i = 0; i < n; i++) {
        np += y[i] != 0;
        *(y[i] ? &sw : &sl) += l[i];
        *(y[i] ? &rw : &rl) += lref[i];
    }
    const int nn = (int)n - np;
    assert_true(fabs(st.margin - st_m[0]) <= 1e-15);
    assert_true(fabs(st.margin - st_t[0]) <= 1e-15);
    assert_true(fabs(st.win_score - st_m[1]) <= 1e-15);
    assert_true(fabs(st.lose_score - st_m[2]) <= 1e-15);
    /* the script's count + 1e-6 is an int64 tensor plus a Python float: float32 */
    const float dpos = (float)np + 1e-6f, dneg = (float)nn + 1e-6f;
    assert_true(fabs(st.win_score * np / dpos - st_t[1]) <= 1e-15);
    assert_true(fabs(st.lose_score * nn / dneg - st_t[2]) <= 1e-15);
    /* the script's acc is an integer count / len: a float32 tensor */
    assert_true(st.implicit_acc == st_m[3] && (float)st.implicit_acc == (float)st_t[3]);
    assert_true(fabs(st.err_w - (np ? sw / np : 0)) <= 1e-16);
    assert_true(fabs(st.err_l - (nn ? sl / nn : 0)) <= 1e-16);
    assert_true(fabs(st.ref_err_w - (np ? rw / np : 0)) <= 1e-16);
    assert_true(fabs(st.ref_err_l - (nn ? rl / nn : 0)) <= 1e-16);
    free(l); free(lref); free(hp); free(ok); free(loss_t); free(dl_t); free(st_t);
    free(loss_m); free(dl_m); free(st_m); free(dl);
#undef KN
}

static void test_kto_fixture(void **s) {
    (void)s;
    st_file f;
    if (st_open(&f, FIX_KTO)) fail_msg("%s", mapo_last_error());
    const char *list = st_meta(&f, "cases");
    assert_non_null(list);
    char *dup = strdup(list), *save = NULL;
    int count = 0;
    for (char *c = strtok_r(dup, ",", &save); c; c = strtok_r(NULL, ",", &save), count++)
        kto_case(&f, c);
    free(dup);
    assert_true(count >= 8);
    printf("  Diffusion-KTO worst relative error %.3g\n", g_worst_kto);
    st_close(&f);
}

/* dl against a 4-point central difference of the loss. dl holds kl fixed (the detach); the
   loss as a function of l moves kl = mean(lref - l) too while kl > 0, so there the
   difference quotient is d loss/d l_i - mean_j d loss/d l_j (dkl/dl_i = -1/n, and
   d loss/d kl = sum_j dl_j); where the clamp is active (mean g < 0) kl stays 0 and the
   quotient is dl_i itself. h = 1e-3 / beta moves z by 1e-3: truncation ~h^4 beta^5 / n and
   rounding ~eps |loss| / h, both below 1e-9 relative to dl ~ beta / n. */
static void kto_fd(const double *l0, const double *lref, const unsigned char *y, int n,
                   double beta, double ld, double lu, int expect_clamp) {
    double l[16], dl[16], tmp[16];
    objective_stats st;
    memcpy(l, l0, n * sizeof(double));
    assert_int_equal(objective_kto(dl, &st, l, lref, y, n, beta, ld, lu), 0);
    assert_int_equal(st.margin == 0, expect_clamp);
    double mean = 0;
    for (int i = 0; i < n; i++) mean += dl[i];
    mean /= n;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const double h = 1e-3 / beta, off[4] = {h, -h, 2 * h, -2 * h};
        double fv[4];
        for (int q = 0; q < 4; q++) {
            objective_stats sq;
            l[i] = l0[i] + off[q];
            assert_int_equal(objective_kto(tmp, &sq, l, lref, y, n, beta, ld, lu), 0);
            assert_int_equal(sq.margin == 0, expect_clamp);
            fv[q] = sq.loss;
        }
        l[i] = l0[i];
        const double fd = (8 * (fv[0] - fv[1]) - (fv[2] - fv[3])) / (12 * h);
        const double an = expect_clamp ? dl[i] : dl[i] - mean;
        const double e = fabs(fd - an) / fmax(fabs(an), 1e-3);
        if (e > worst) worst = e;
        if (e > 1e-6)
            fail_msg("KTO d loss / d l[%d]: analytic %.12g, finite difference %.12g", i, an, fd);
    }
    printf("  KTO finite-difference check (%s): worst relative error %.2e\n",
           expect_clamp ? "kl clamped to 0" : "kl > 0, its share removed", worst);
}

static void test_kto_finite_differences(void **s) {
    (void)s;
    const double l[6] = {0.1, 0.13, 0.2, 0.052, 0.1005, 0.128};
    const unsigned char y[6] = {1, 0, 1, 1, 0, 0};
    /* mean(lref - l) = -1e-3: kl clamped */
    const double r1[6] = {0.1002, 0.1285, 0.2011, 0.0511, 0.1001, 0.1267};
    kto_fd(l, r1, y, 6, 1000, 1.0, 1.0, 1);
    kto_fd(l, r1, y, 6, 1000, 1.5, 0.7, 1);
    /* mean(lref - l) > 0 */
    const double r2[6] = {0.1012, 0.1305, 0.2021, 0.0531, 0.1001, 0.1287};
    kto_fd(l, r2, y, 6, 1000, 1.0, 1.0, 0);
    kto_fd(l, r2, y, 4, 3000, 2.0, 1.0, 0);
    /* the paired labelling: chosen half desirable */
    const unsigned char yp[6] = {1, 1, 1, 0, 0, 0};
    kto_fd(l, r2, yp, 6, 1000, 1.0, 1.0, 0);
}

/* non-finite input refused with the example named; finite for any finite input; bad
   hyper-parameters and empty batches refused */
static void test_kto_refusals(void **s) {
    (void)s;
    double l[4] = {0.1, 0.2, NAN, 0.4}, r[4] = {0.1, 0.2, 0.3, 0.4}, dl[4];
    const unsigned char y[4] = {1, 0, 1, 0};
    objective_stats st;
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, 1000, 1, 1), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "per-sample error of example 2 (desirable)"));
    assert_non_null(strstr(mapo_last_error(), "nan"));
    l[2] = 0.3;
    r[1] = -INFINITY;
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, 1000, 1, 1), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "reference error of example 1 (undesirable)"));
    assert_non_null(strstr(mapo_last_error(), "inf"));
    r[1] = 0.2;
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, 1000, 1, 1), 0);
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, NAN, 1, 1), -1);
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, 1000, INFINITY, 1), -1);
    assert_int_equal(objective_kto(dl, &st, l, r, y, 4, 1000, 1, NAN), -1);
    assert_int_equal(objective_kto(dl, &st, l, r, y, 0, 1000, 1, 1), -1);
    /* every combination of errors in [0, 1e4] and beta up to 1e8: finite, loss within
       [0, max(lambda)], no NaN from exp overflow or inf * 0 */
    const double grid[] = {0, 1e-300, 1e-12, 1e-6, 0.01, 0.1, 0.5, 1, 10, 1e3, 1e4};
    const int ng = (int)(sizeof grid / sizeof grid[0]);
    const double betas[] = {1, 1000, 1e5, 1e8};
    for (size_t b = 0; b < sizeof betas / sizeof betas[0]; b++)
        for (int i = 0; i < ng; i++)
            for (int j = 0; j < ng; j++) {
                const double ll[4] = {grid[i], grid[j], grid[j], grid[i]};
                const double rr[4] = {grid[j], grid[i], grid[i], grid[(i + j) % ng]};
                if (objective_kto(dl, &st, ll, rr, y, 4, betas[b], 1.0, 2.0))
                    fail_msg("KTO at %g/%g beta %g: %s", grid[i], grid[j], betas[b],
                             mapo_last_error());
                assert_true(st.loss >= 0 && st.loss <= 2.0);
                for (int k = 0; k < 4; k++) assert_true(isfinite(dl[k]));
            }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mapo_fixture),
        cmocka_unit_test(test_dpo_fixture),
        cmocka_unit_test(test_sft_fixture),
        cmocka_unit_test(test_g_branches),
        cmocka_unit_test(test_finite_range),
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_nonfinite_refused),
        cmocka_unit_test(test_denoise),
        cmocka_unit_test(test_kto_fixture),
        cmocka_unit_test(test_kto_finite_differences),
        cmocka_unit_test(test_kto_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
