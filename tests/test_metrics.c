/* test_metrics.c -- evaluation metrics against numpy / scipy / mpmath.
 *
 * Fixtures: tests/fixtures/metrics/metrics.safetensors from tools/make_metrics_fixtures.py
 * (inputs in the dtype the C code reads; every reference computed in float64 from exactly those
 * values). eps below is DBL_EPSILON = 2.2e-16. Every tolerance is a rounding-error bound for the
 * two computations together (C and the reference); the measured errors are printed beside it.
 *
 * Student t quantile, vs mpmath (40 digits, the truth): relative (64 + 4 |ln F|) eps (1 + kappa).
 * The C code solves F(t) = target with F the upper tail or the central mass, a sum of positive
 * quadrature terms (each node's density and weight from a handful of exp / log1p / sinh / cosh
 * and products: a few ulps each; a positive sum stays within the largest relative term error),
 * a normalising constant from at most 24 recurrence steps (<= 26 ulps) and, on the complement
 * branch, one subtraction from 0.5 (x2 at most): ~32 eps relative in F. The density is
 * exp(-(dof+1)/2 log1p(u^2/dof)), and exp turns the ~2 eps relative rounding of its argument
 * (~ln F in size) into 2 |ln F| eps relative: the far-tail term. kappa = |F| / (t f(t))
 * turns a relative error of F into one of t (kappa <= 1.01 at p = 0.975; stored per point);
 * the last Newton step leaves ~1e-20. Closed forms (dof 1, 2): a few ulps, inside the same bound.
 * vs scipy: scipy's t.ppf is itself off by up to 1.5e-5 relative near the median (p = 0.5 +
 * 2^-20; measured against mpmath by the fixture script), so against scipy the same bound is
 * asserted where scipy is within it of mpmath (every dof at p = 0.975 among them), and the
 * others are counted and printed.
 * CDF: relative (64 + 4 |ln F|) eps (the same quadrature sums; 0.5 + centre adds a rounding).
 *
 * mean CI: mean 2 (n + 2) eps max|x| (a sum of n terms on each side); sd relative 2 (n + 4) eps
 * (n positive squared deviations; the mean's error enters only at second order); half: that
 * plus the quantile's 64 eps (1 + 1.01).
 *
 * win rate: counts and rate exactly (rate = (W + T/2)/n: numpy's sum of outcomes in {0, .5, 1}
 * is exact, one correctly rounded division on both sides); lo / hi within 2 (n + 8) eps
 * (numpy's standard deviation sums n squared deviations <= 1; the bound is on z s / sqrt(n) <= 1).
 *
 * Gaussian stats: mu_j within 2 (n + 2) eps mean_i |x_ij|; cov_ij within 2 (n + 6) eps
 * sqrt(S_ii S_jj) (n products of centred values, |sum| <= (n-1) sqrt(S_ii S_jj) by
 * Cauchy-Schwarz; the centring error cancels to first order).
 *
 * Frechet distance: the accurate reference is fd_svd (tr((Sx Sy)^{1/2}) as a nuclear norm; no
 * square root of a matrix). FD = |dmu|^2 + tr Sx + tr Sy - 2 sum_i sqrt(lam_i),
 * lam_i = eig(Sx^{1/2} Sy Sx^{1/2}). First-order bound, both sides:
 *   - traces and |dmu|^2: K eps (tr Sx + tr Sy + |dmu|^2), K = 16 (n + m + d): sums of n, m,
 *     d terms, with headroom for a few roundings per term on each side;
 *   - each lam_i moves by at most delta = K eps ||Sx|| ||Sy|| (covariance rounding ~(n + m) eps
 *     and the backward-stable eigensolvers ~d eps, relative to the norms), and
 *     |sqrt(lam + delta) - sqrt(lam)| <= min(sqrt(delta), delta / (2 sqrt(lam))):
 *     tiny for well-separated lam_i, but sqrt(delta) ~ 1e-6 |S| for the zero eigenvalues of a
 *     rank-deficient product (n <= d), where the square root itself is ill-conditioned.
 * K is a modelling constant fixed before looking at the results, not fitted: the worst
 * measured error is printed as a fraction of the bound. The bound is checked to be tight
 * enough to catch a biased covariance (ddof 0), an error of relative size ~1/n.
 * scipy.linalg.sqrtm (pytorch-fid's formula) suffers that ill-conditioning itself (1e-6
 * relative off fd_svd on the low-rank case): it is asserted within the same bound where it
 * agrees with fd_svd to within that bound, reported otherwise.
 *
 * cosines: pair mean within 2 (d + n + 8) eps (per row, |error| <= (d + 4) eps by
 * Cauchy-Schwarz, as float products are exact in double; the mean adds n eps); mean-vector
 * cosine within 2 ((d + 8) eps + 2 (n + m) eps (|mean |x|| / |mean x| + same for y)).
 * top-1 accuracy: exactly (a count over n, one rounding on both sides). */
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/metrics.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/metrics/metrics.safetensors"
#define EPS DBL_EPSILON

static st_file g_f;

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
    return 0;
}

static const st_tensor *need(const char *name) {
    const st_tensor *t = st_find(&g_f, name);
    if (!t) fail_msg("fixture lacks '%s'", name);
    return t;
}
/* malloc'd float64 / float32 copies; *n = numel; shape optional */
static double *getd(const char *name, int64_t *n) {
    const st_tensor *t = need(name);
    double *d = malloc((size_t)t->numel * sizeof(double));
    assert_int_equal(st_to_f64(t, d), 0);
    if (n) *n = t->numel;
    return d;
}
static float *getf(const char *name, int64_t *rows, int *cols) {
    const st_tensor *t = need(name);
    float *d = malloc((size_t)t->numel * sizeof(float));
    assert_int_equal(st_to_f32(t, d), 0);
    if (rows) *rows = t->shape[0];
    if (cols) *cols = t->ndim > 1 ? (int)t->shape[1] : 1;
    return d;
}
/* integer tensor (I32 or I64) as int64 */
static int64_t *geti(const char *name, int64_t *n) {
    const st_tensor *t = need(name);
    int64_t *d = malloc((size_t)t->numel * sizeof(int64_t));
    for (int64_t i = 0; i < t->numel; i++) {
        if (t->dtype == ST_I32) {
            int32_t v;
            memcpy(&v, (const char *)t->data + 4 * i, 4);
            d[i] = v;
        } else {
            assert_int_equal(t->dtype, ST_I64);
            memcpy(&d[i], (const char *)t->data + 8 * i, 8);
        }
    }
    if (n) *n = t->numel;
    return d;
}
static double get1(const char *name) {
    double *d = getd(name, NULL);
    const double v = d[0];
    free(d);
    return v;
}

/* iterate the comma-separated case names of metadata key */
static int next_case(const char *key, int idx, char *out, size_t cap) {
    const char *s = st_meta(&g_f, key);
    if (!s) fail_msg("fixture lacks metadata '%s'", key);
    for (int i = 0; i < idx; i++) {
        s = strchr(s, ',');
        if (!s) return 0;
        s++;
    }
    const size_t len = strcspn(s, ",");
    if (len == 0 || len >= cap) return 0;
    memcpy(out, s, len);
    out[len] = 0;
    return 1;
}

static char g_nm[256];
#define NM(...) (snprintf(g_nm, sizeof g_nm, __VA_ARGS__), g_nm)

static double relerr(double a, double b) {
    if (a == b) return 0;
    if (!isfinite(a)) return INFINITY;
    return fabs(a - b) / fabs(b);
}

/* ------------------------------------------------------------------------------------------ */
/* Student t                                                                                   */

static void test_t_quantile(void **st) {
    (void)st;
    int64_t nd, np_;
    int64_t *dof = geti("t.dof", &nd);
    double *p = getd("t.p", &np_);
    double *qmp = getd("t.q_mp", NULL), *qsp = getd("t.q_scipy", NULL);
    double *kap = getd("t.kappa", NULL);
    double worst = 0, worst_ratio = 0, worst_sp = 0, worst975 = 0, sp_off = 0;
    int n_skipped = 0, n_checked = 0;
    for (int64_t i = 0; i < nd; i++)
        for (int64_t j = 0; j < np_; j++) {
            const int64_t k = i * np_ + j;
            const double q = student_t_quantile(p[j], (int)dof[i]);
            const double tgt = p[j] < 0.5 ? p[j] : 1 - p[j]; /* the smaller side */
            const double tol = (64 + 4 * fabs(log(tgt))) * EPS * (1 + kap[k]);
            const double e = relerr(q, qmp[k]);
            if (e > worst) worst = e;
            if (e / tol > worst_ratio) worst_ratio = e / tol;
            if (e > tol)
                fail_msg("t quantile p %.17g dof %lld: %.17g, mpmath %.17g (relative %.3g > %.3g)",
                         p[j], (long long)dof[i], q, qmp[k], e, tol);
            /* scipy: where it is itself within the bound of the truth */
            const double esp_ref = relerr(qsp[k], qmp[k]);
            if (esp_ref > tol) {
                n_skipped++;
                if (esp_ref > sp_off) sp_off = esp_ref;
                assert_true(p[j] != 0.975 || dof[i] > 200);
                continue;
            }
            n_checked++;
            const double esp = relerr(q, qsp[k]);
            if (esp > worst_sp) worst_sp = esp;
            if (p[j] == 0.975 && dof[i] <= 200 && esp > worst975) worst975 = esp;
            if (esp > 2 * tol)
                fail_msg("t quantile p %.17g dof %lld: %.17g, scipy %.17g (relative %.3g)", p[j],
                         (long long)dof[i], q, qsp[k], esp);
        }
    printf("  t quantile, %lld dofs x %lld p: max relative error vs mpmath %.3g (%.2f of the "
           "bound)\n", (long long)nd, (long long)np_, worst, worst_ratio);
    printf("  vs scipy t.ppf: max %.3g over %d points (at p = 0.975, dof 1..200: %.3g); %d points "
           "skipped where scipy is off mpmath by up to %.3g\n",
           worst_sp, n_checked, worst975, n_skipped, sp_off);
    free(dof);
    free(p);
    free(qmp);
    free(qsp);
    free(kap);
}

static void test_t_cdf(void **st) {
    (void)st;
    int64_t n;
    double *t = getd("t.cdf_t", &n);
    int64_t *dof = geti("t.cdf_dof", NULL);
    double *ref = getd("t.cdf_mp", NULL), *sp = getd("t.cdf_scipy", NULL);
    double worst = 0, worst_sp = 0, worst_ratio = 0;
    for (int64_t i = 0; i < n; i++) {
        const double c = student_t_cdf(t[i], (int)dof[i]);
        const double e = relerr(c, ref[i]);
        if (e > worst) worst = e;
        if (relerr(c, sp[i]) > worst_sp) worst_sp = relerr(c, sp[i]);
        const double tol = (64 + 4 * fabs(log(fmin(ref[i], 1 - ref[i])))) * EPS;
        worst_ratio = fmax(worst_ratio, e / tol);
        if (e > tol)
            fail_msg("t CDF at %g, dof %lld: %.17g, mpmath %.17g", t[i], (long long)dof[i], c,
                     ref[i]);
    }
    printf("  t CDF, %lld points: max relative error vs mpmath %.3g (%.2f of the bound), vs scipy "
           "%.3g\n", (long long)n, worst, worst_ratio, worst_sp);
    free(t);
    free(dof);
    free(ref);
    free(sp);
}

static void test_t_edges(void **st) {
    (void)st;
    assert_true(isinf(student_t_quantile(0, 5)) && student_t_quantile(0, 5) < 0);
    assert_true(isinf(student_t_quantile(1, 5)) && student_t_quantile(1, 5) > 0);
    assert_true(student_t_quantile(0.5, 5) == 0);
    /* exact mirror: 0.975 and 0.025 are not exact complements in binary, so use 1 - 2^-10 */
    for (int dof = 1; dof <= 40; dof++) {
        const double a = student_t_quantile(1 - 0x1p-10, dof), b = student_t_quantile(0x1p-10, dof);
        assert_true(relerr(-b, a) <= 4 * EPS);
        /* the CDF at the quantile gives the probability back */
        assert_true(relerr(student_t_cdf(a, dof), 1 - 0x1p-10) <= 64 * EPS);
    }
    /* closed forms: dof 1 is Cauchy, tan(pi (p - 1/2)); dof 2: (2p - 1) / sqrt(2 p (1 - p)) */
    assert_true(relerr(student_t_quantile(0.75, 1), 1.0) <= 4 * EPS);
    assert_true(relerr(student_t_quantile(0.75, 2), sqrt(2.0 / 3)) <= 4 * EPS);
    /* huge dof tends to the normal quantile 1.959963984540054 (difference ~ (z^3+z)/(4 dof)) */
    const double big = student_t_quantile(0.975, 2000000000);
    assert_true(fabs(big - MAPO_Z975) < 1e-8);
    /* refusals */
    assert_true(isnan(student_t_quantile(1.5, 3)));
    assert_non_null(strstr(mapo_last_error(), "probability must be in [0, 1]"));
    assert_true(isnan(student_t_quantile(NAN, 3)));
    assert_true(isnan(student_t_quantile(0.9, 0)));
    assert_non_null(strstr(mapo_last_error(), "degrees of freedom must be >= 1, got 0"));
    assert_true(isnan(student_t_cdf(NAN, 3)));
    assert_true(isnan(student_t_cdf(1, -2)));
}

/* ------------------------------------------------------------------------------------------ */
/* mean CI                                                                                     */

static void test_mean_ci(void **st) {
    (void)st;
    char c[64];
    double worst[3] = {0, 0, 0};
    for (int k = 0; next_case("ci.cases", k, c, sizeof c); k++) {
        int64_t n;
        double *x = getd(NM("ci.%s.x", c), &n);
        double *ref = getd(NM("ci.%s.ref", c), NULL);
        mean_ci r;
        assert_int_equal(mean_ci95(&r, x, (int)n), 0);
        assert_int_equal(r.n, (int)n);
        double mx = 0;
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(x[i]));
        const double em = fabs(r.mean - ref[0]);
        if (em / mx > worst[0]) worst[0] = em / mx;
        if (em > 2 * (n + 2) * EPS * mx)
            fail_msg("%s: mean %.17g, numpy %.17g", c, r.mean, ref[0]);
        if (n == 1) {
            assert_true(isnan(r.sd) && isnan(r.half) && isnan(ref[1]));
        } else {
            const double es = relerr(r.sd, ref[1]), eh = relerr(r.half, ref[2]);
            worst[1] = fmax(worst[1], es);
            worst[2] = fmax(worst[2], eh);
            if (es > 2 * (n + 4) * EPS) fail_msg("%s: sd %.17g, numpy %.17g", c, r.sd, ref[1]);
            if (eh > (2 * (n + 4) + 64 * 2.01) * EPS)
                fail_msg("%s: half %.17g, scipy %.17g", c, r.half, ref[2]);
        }
        free(x);
        free(ref);
    }
    printf("  mean CI: max error mean %.3g (of max|x|), sd %.3g, half %.3g (relative)\n",
           worst[0], worst[1], worst[2]);
    /* by hand: x = {1, 2, 3}: mean 2, sd 1, half = t(0.975, 2) / sqrt(3) = 4.302652729749464 / sqrt 3 */
    const double x3[3] = {1, 2, 3};
    mean_ci r;
    assert_int_equal(mean_ci95(&r, x3, 3), 0);
    assert_true(r.mean == 2 && r.sd == 1);
    assert_true(relerr(r.half, 4.302652729749464 / sqrt(3.0)) < 1e-14);
    /* refusals */
    assert_int_equal(mean_ci95(&r, x3, 0), -1);
    assert_non_null(strstr(mapo_last_error(), "at least 1 value"));
    const double xn[3] = {1, NAN, 3};
    assert_int_equal(mean_ci95(&r, xn, 3), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "x[1] is nan"));
    const double xi[2] = {INFINITY, 3};
    assert_int_equal(mean_ci95(&r, xi, 2), -1);
    assert_non_null(strstr(mapo_last_error(), "x[0] is inf"));
}

/* ------------------------------------------------------------------------------------------ */
/* win rate                                                                                    */

static void test_win_rate(void **st) {
    (void)st;
    char c[64];
    double worst = 0;
    for (int k = 0; next_case("wr.cases", k, c, sizeof c); k++) {
        int64_t n;
        double *a = getd(NM("wr.%s.a", c), &n), *b = getd(NM("wr.%s.b", c), NULL);
        double *hp = getd(NM("wr.%s.hp", c), NULL), *ref = getd(NM("wr.%s.ref", c), NULL);
        int64_t *cnt = geti(NM("wr.%s.counts", c), NULL);
        win_rate w;
        assert_int_equal(paired_win_rate(&w, a, b, n, (int)hp[0], hp[1]), 0);
        assert_int_equal(w.n, n);
        assert_int_equal(w.wins, cnt[0]);
        assert_int_equal(w.ties, cnt[1]);
        assert_int_equal(w.losses, cnt[2]);
        if (w.rate != ref[0]) fail_msg("%s: rate %.17g, numpy %.17g", c, w.rate, ref[0]);
        const double tol = 2 * (n + 8) * EPS;
        const double e = fmax(fabs(w.lo - ref[1]), fabs(w.hi - ref[2]));
        worst = fmax(worst, e);
        if (e > tol)
            fail_msg("%s: CI [%.17g, %.17g], numpy [%.17g, %.17g]", c, w.lo, w.hi, ref[1], ref[2]);
        printf("  %-11s n %4lld  W/T/L %lld/%lld/%lld  rate %.4f  CI [%.4f, %.4f]\n", c,
               (long long)n, (long long)w.wins, (long long)w.ties, (long long)w.losses, w.rate,
               w.lo, w.hi);
        free(a);
        free(b);
        free(hp);
        free(ref);
        free(cnt);
    }
    printf("  win rate: max CI bound error vs numpy %.3g\n", worst);
    /* by hand: outcomes 1, 0.5, 0, 1 -> rate 0.625, s = sqrt(0.6875 / 3),
       hi = 0.625 + 1.96 s / 2 > 1 is clamped */
    const double a[4] = {1, 2, 3, 4}, b[4] = {0, 2, 5, 1};
    win_rate w;
    assert_int_equal(paired_win_rate(&w, a, b, 4, 1, 0), 0);
    assert_true(w.wins == 2 && w.ties == 1 && w.losses == 1 && w.rate == 0.625);
    assert_true(fabs(w.lo - (0.625 - MAPO_Z975 * sqrt(0.6875 / 3) / 2)) < 1e-15);
    assert_true(w.hi == 1);
    /* lower is better mirrors it */
    assert_int_equal(paired_win_rate(&w, a, b, 4, 0, 0), 0);
    assert_true(w.wins == 1 && w.ties == 1 && w.losses == 2 && w.rate == 0.375 && w.lo == 0);
    /* refusals */
    assert_int_equal(paired_win_rate(&w, a, b, 0, 1, 0), -1);
    assert_non_null(strstr(mapo_last_error(), "at least 1"));
    const double bn[4] = {0, NAN, 5, 1};
    assert_int_equal(paired_win_rate(&w, a, bn, 4, 1, 0), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "b[1] is nan"));
    assert_int_equal(paired_win_rate(&w, a, b, 4, 1, -1e-3), -1);
    assert_non_null(strstr(mapo_last_error(), "tie_eps"));
    assert_int_equal(paired_win_rate(&w, a, b, 4, 1, NAN), -1);
}

/* ------------------------------------------------------------------------------------------ */
/* Gaussian statistics and the Frechet distance                                                */

typedef struct {
    float *x, *y;
    int64_t n, m;
    int d;
    double tr[2], norm[2], *lam, *lamxx, fd_svd, fd_sqrtm;
} fd_case;

static void fd_load(fd_case *f, const char *c) {
    int dy;
    f->x = getf(NM("fd.%s.x", c), &f->n, &f->d);
    f->y = getf(NM("fd.%s.y", c), &f->m, &dy);
    assert_int_equal(dy, f->d);
    double *t = getd(NM("fd.%s.tr", c), NULL), *nr = getd(NM("fd.%s.norm", c), NULL);
    memcpy(f->tr, t, sizeof f->tr);
    memcpy(f->norm, nr, sizeof f->norm);
    free(t);
    free(nr);
    f->lam = getd(NM("fd.%s.lam", c), NULL);
    f->lamxx = getd(NM("fd.%s.lamxx", c), NULL);
    f->fd_svd = get1(NM("fd.%s.fd_svd", c));
    f->fd_sqrtm = get1(NM("fd.%s.fd_sqrtm", c));
}
static void fd_free(fd_case *f) {
    free(f->x);
    free(f->y);
    free(f->lam);
    free(f->lamxx);
}

/* the first-order bound of the header comment */
static double fd_bound(const double *lam, int d, int64_t n, int64_t m, double nx, double ny,
                       double trx, double try_, double dmu2) {
    const double K = 16.0 * (double)(n + m + d);
    const double delta = K * EPS * nx * ny;
    double b = K * EPS * (trx + try_ + dmu2);
    for (int i = 0; i < d; i++) {
        const double l = lam[i] > 0 ? lam[i] : 0;
        b += 2 * (l > 0 ? fmin(sqrt(delta), delta / (2 * sqrt(l))) : sqrt(delta));
    }
    return b;
}

static double dmu2(const gauss_stats *a, const gauss_stats *b) {
    double s = 0;
    for (int i = 0; i < a->d; i++) s += (a->mu[i] - b->mu[i]) * (a->mu[i] - b->mu[i]);
    return s;
}

static void check_stats_vs_numpy(const char *c, const char *which, const gauss_stats *s,
                                 const float *x, double *worst_mu, double *worst_cov) {
    const int d = s->d;
    const int64_t n = s->n;
    double *mu = getd(NM("fd.%s.mu_%s", c, which), NULL);
    int64_t ncov;
    double *cov = getd(NM("fd.%s.cov_%s", c, which), &ncov);
    for (int j = 0; j < d; j++) {
        double ma = 0;
        for (int64_t i = 0; i < n; i++) ma += fabs((double)x[i * d + j]);
        ma /= (double)n;
        const double e = fabs(s->mu[j] - mu[j]);
        if (ma > 0) *worst_mu = fmax(*worst_mu, e / ((n + 2) * EPS * ma));
        if (e > 2 * (n + 2) * EPS * ma)
            fail_msg("%s: mu_%s[%d] %.17g, numpy %.17g", c, which, j, s->mu[j], mu[j]);
    }
    const int rows = (int)(ncov / d); /* d rows, or the first 4 for d = 64 */
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < d; j++) {
            const double sc = sqrt(s->cov[i * d + i] * s->cov[j * d + j]);
            const double e = fabs(s->cov[i * d + j] - cov[i * d + j]);
            if (sc > 0) *worst_cov = fmax(*worst_cov, e / ((n + 6) * EPS * sc));
            if (e > 2 * (n + 6) * EPS * sc)
                fail_msg("%s: cov_%s[%d, %d] %.17g, numpy %.17g", c, which, i, j,
                         s->cov[i * d + j], cov[i * d + j]);
        }
    free(mu);
    free(cov);
}

static void test_gauss_stats(void **st) {
    (void)st;
    char c[64];
    double wmu = 0, wcov = 0;
    for (int k = 0; next_case("fd.cases", k, c, sizeof c); k++) {
        fd_case f;
        fd_load(&f, c);
        gauss_stats a, b;
        assert_int_equal(gauss_stats_compute(&a, f.x, f.n, f.d), 0);
        assert_int_equal(gauss_stats_compute(&b, f.y, f.m, f.d), 0);
        assert_true(a.n == f.n && a.d == f.d && b.n == f.m);
        check_stats_vs_numpy(c, "x", &a, f.x, &wmu, &wcov);
        check_stats_vs_numpy(c, "y", &b, f.y, &wmu, &wcov);
        for (int i = 0; i < f.d; i++)
            for (int j = 0; j < f.d; j++)
                assert_true(a.cov[i * f.d + j] == a.cov[j * f.d + i]); /* exactly symmetric */
        gauss_stats_free(&a);
        gauss_stats_free(&b);
        fd_free(&f);
    }
    printf("  Gaussian stats vs numpy: worst mean error %.3g (n+2) eps mean|x|, worst covariance "
           "error %.3g (n+6) eps sqrt(S_ii S_jj) (bounds: 2)\n", wmu, wcov);
}

static void test_frechet(void **st) {
    (void)st;
    char c[64];
    double worst_ratio = 0, worst_rel = 0, worst_sq = 0, worst_id = 0;
    for (int k = 0; next_case("fd.cases", k, c, sizeof c); k++) {
        fd_case f;
        fd_load(&f, c);
        gauss_stats a, b;
        assert_int_equal(gauss_stats_compute(&a, f.x, f.n, f.d), 0);
        assert_int_equal(gauss_stats_compute(&b, f.y, f.m, f.d), 0);
        double fd = -1;
        assert_int_equal(frechet_distance(&fd, &a, &b), 0);
        const double dm = dmu2(&a, &b);
        const double tol = fd_bound(f.lam, f.d, f.n, f.m, f.norm[0], f.norm[1], f.tr[0], f.tr[1],
                                    dm);
        const double e = fabs(fd - f.fd_svd);
        worst_ratio = fmax(worst_ratio, e / tol);
        worst_rel = fmax(worst_rel, e / f.fd_svd);
        printf("  %-12s d %2d n %3lld m %3lld  FD %.12g  |err| vs svd %.2e (rel %.1e, %.3f of "
               "bound %.1e)",
               c, f.d, (long long)f.n, (long long)f.m, fd, e, e / f.fd_svd, e / tol, tol);
        if (e > tol) fail_msg("%s: FD %.17g, reference %.17g (bound %.3g)", c, fd, f.fd_svd, tol);
        /* scipy.linalg.sqrtm reference, where it is itself within the bound of fd_svd */
        const double esq = fabs(fd - f.fd_sqrtm), sq_off = fabs(f.fd_sqrtm - f.fd_svd);
        if (sq_off <= tol) {
            worst_sq = fmax(worst_sq, esq / f.fd_svd);
            printf("  vs sqrtm %.1e\n", esq / f.fd_svd);
            if (esq > 2 * tol) fail_msg("%s: FD %.17g, sqrtm reference %.17g", c, fd, f.fd_sqrtm);
        } else {
            printf("  (sqrtm itself %.1e off)\n", sq_off / f.fd_svd);
        }
        /* the bound must be tight enough to see a biased covariance (ddof 0) */
        gauss_stats a0 = a, b0 = b;
        const size_t dd = (size_t)f.d * f.d;
        a0.cov = malloc(dd * sizeof(double));
        b0.cov = malloc(dd * sizeof(double));
        for (size_t i = 0; i < dd; i++) {
            a0.cov[i] = a.cov[i] * (double)(f.n - 1) / (double)f.n;
            b0.cov[i] = b.cov[i] * (double)(f.m - 1) / (double)f.m;
        }
        double fd0;
        assert_int_equal(frechet_distance(&fd0, &a0, &b0), 0);
        if (!(fabs(fd0 - f.fd_svd) > tol))
            fail_msg("%s: the bound %.3g does not separate ddof 0 (%.17g) from %.17g", c, tol,
                     fd0, f.fd_svd);
        free(a0.cov);
        free(b0.cov);
        /* identical sets: exactly 0 in exact arithmetic; lam = eig(Sx^2) */
        double fdid = -1;
        assert_int_equal(frechet_distance(&fdid, &a, &a), 0);
        const double tolid =
            fd_bound(f.lamxx, f.d, f.n, f.n, f.norm[0], f.norm[0], f.tr[0], f.tr[0], 0);
        worst_id = fmax(worst_id, fdid / f.tr[0]);
        if (!(fdid >= 0 && fdid <= tolid))
            fail_msg("%s: FD(x, x) = %.3g (bound %.3g)", c, fdid, tolid);
        /* the one-call form agrees bit for bit */
        double fd2;
        assert_int_equal(frechet_distance_features(&fd2, f.x, f.n, f.y, f.m, f.d), 0);
        assert_true(fd2 == fd);
        gauss_stats_free(&a);
        gauss_stats_free(&b);
        fd_free(&f);
    }
    printf("  Frechet distance: max error vs fd_svd %.3g relative (%.3f of the bound); vs scipy "
           "sqrtm %.3g; FD(x, x) <= %.3g tr(Sx)\n",
           worst_rel, worst_ratio, worst_sq, worst_id);
}

static void test_gauss_stats_io(void **st) {
    (void)st;
    fd_case f;
    fd_load(&f, "d8_n50");
    gauss_stats a, l;
    assert_int_equal(gauss_stats_compute(&a, f.x, f.n, f.d), 0);
    char path[128], bad[128];
    snprintf(path, sizeof path, "/tmp/mapo_test_metrics_%d.safetensors", (int)getpid());
    snprintf(bad, sizeof bad, "/tmp/mapo_test_metrics_bad_%d.safetensors", (int)getpid());
    assert_int_equal(gauss_stats_save(&a, path), 0);
    assert_int_equal(gauss_stats_load(&l, path), 0);
    assert_true(l.d == a.d && l.n == a.n);
    assert_memory_equal(l.mu, a.mu, (size_t)a.d * sizeof(double));
    assert_memory_equal(l.cov, a.cov, (size_t)a.d * a.d * sizeof(double));
    gauss_stats_free(&l);
    /* refusals: asymmetric sigma, a missing n, a sigma of the wrong shape */
    const int64_t sh1[1] = {8}, sh2[2] = {8, 8}, sh3[2] = {8, 7};
    a.cov[1] += 1e-9;
    st_writer *w = st_writer_new();
    st_writer_add(w, "mu", ST_F64, 1, sh1, a.mu);
    st_writer_add(w, "sigma", ST_F64, 2, sh2, a.cov);
    st_writer_meta(w, "n", "50");
    assert_int_equal(st_writer_write(w, bad), 0);
    st_writer_free(w);
    assert_int_equal(gauss_stats_load(&l, bad), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "not symmetric at [0, 1]"));
    assert_null(l.mu);
    a.cov[1] -= 1e-9;
    w = st_writer_new();
    st_writer_add(w, "mu", ST_F64, 1, sh1, a.mu);
    st_writer_add(w, "sigma", ST_F64, 2, sh2, a.cov);
    assert_int_equal(st_writer_write(w, bad), 0);
    st_writer_free(w);
    assert_int_equal(gauss_stats_load(&l, bad), -1);
    assert_non_null(strstr(mapo_last_error(), "metadata 'n'"));
    w = st_writer_new();
    st_writer_add(w, "mu", ST_F64, 1, sh1, a.mu);
    st_writer_add(w, "sigma", ST_F64, 2, sh3, a.cov);
    st_writer_meta(w, "n", "50");
    assert_int_equal(st_writer_write(w, bad), 0);
    st_writer_free(w);
    assert_int_equal(gauss_stats_load(&l, bad), -1);
    assert_non_null(strstr(mapo_last_error(), "'sigma' must be [8, 8]"));
    unlink(path);
    unlink(bad);
    gauss_stats_free(&a);
    fd_free(&f);
}

static void test_frechet_refusals(void **st) {
    (void)st;
    float x[4 * 8];
    for (int i = 0; i < 32; i++) x[i] = (float)((i * 7) % 11) - 5.0f;
    gauss_stats a, b;
    assert_int_equal(gauss_stats_compute(&a, x, 1, 8), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "at least 2 samples, got 1"));
    assert_null(a.mu);
    assert_int_equal(gauss_stats_compute(&a, x, 4, 0), -1);
    assert_non_null(strstr(mapo_last_error(), "dimension must be in [1, "));
    x[13] = NAN;
    assert_int_equal(gauss_stats_compute(&a, x, 4, 8), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "value [1, 5] is nan"));
    double fd;
    assert_int_equal(frechet_distance_features(&fd, x, 4, x, 4, 8), -1);
    assert_non_null(strstr(mapo_last_error(), "first feature set: "));
    x[13] = -INFINITY;
    assert_int_equal(gauss_stats_compute(&a, x, 4, 8), -1);
    assert_non_null(strstr(mapo_last_error(), "is -inf"));
    x[13] = 1;
    /* mismatched d */
    assert_int_equal(gauss_stats_compute(&a, x, 4, 8), 0);
    assert_int_equal(gauss_stats_compute(&b, x, 8, 4), 0);
    assert_int_equal(frechet_distance(&fd, &a, &b), -1);
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "feature dimensions differ (8 vs 4)"));
    assert_true(isnan(fd));
    gauss_stats_free(&b);
    memset(&b, 0, sizeof b);
    assert_int_equal(frechet_distance(&fd, &a, &b), -1);
    assert_non_null(strstr(mapo_last_error(), "not computed"));
    gauss_stats_free(&a);
}

/* ------------------------------------------------------------------------------------------ */
/* cosines, top-1                                                                              */

static double mean_abs_norm_ratio(const float *x, int64_t n, int d) {
    /* |mean_i |x_i|| / |mean_i x_i|: how much the mean vector cancels */
    double na = 0, nm = 0;
    for (int j = 0; j < d; j++) {
        double sa = 0, sm = 0;
        for (int64_t i = 0; i < n; i++) {
            sa += fabs((double)x[i * d + j]);
            sm += x[i * d + j];
        }
        na += (sa / n) * (sa / n);
        nm += (sm / n) * (sm / n);
    }
    return sqrt(na / nm);
}

static void test_cosines(void **st) {
    (void)st;
    char c[64];
    double wp = 0, wv = 0;
    for (int k = 0; next_case("cos.cases", k, c, sizeof c); k++) {
        const char *from = st_meta(&g_f, NM("cos.%s.from", c));
        char src[96];
        snprintf(src, sizeof src, from ? "fd.%s" : "cos.%s", from ? from : c);
        int64_t n, m;
        int d, dy;
        float *x = getf(NM("%s.x", src), &n, &d), *y = getf(NM("%s.y", src), &m, &dy);
        assert_int_equal(d, dy);
        double *ref = getd(NM("cos.%s.ref", c), NULL);
        const int64_t np_ = n < m ? n : m;
        const double pc = mean_pair_cosine(x, y, np_, d);
        const double vc = mean_vector_cosine(x, n, y, m, d);
        const double ep = fabs(pc - ref[0]), ev = fabs(vc - ref[1]);
        const double tolp = 2 * (d + np_ + 8) * EPS;
        const double tolv = 2 * ((d + 8) * EPS + 2 * (n + m) * EPS *
                                                     (mean_abs_norm_ratio(x, n, d) +
                                                      mean_abs_norm_ratio(y, m, d)));
        wp = fmax(wp, ep / tolp);
        wv = fmax(wv, ev / tolv);
        printf("  %-4s d %2d  pair cosine %.15f (err %.1e)  mean-vector cosine %.15f (err %.1e)\n",
               c, d, pc, ep, vc, ev);
        if (ep > tolp) fail_msg("%s: pair cosine %.17g, numpy %.17g", c, pc, ref[0]);
        if (ev > tolv) fail_msg("%s: mean-vector cosine %.17g, numpy %.17g", c, vc, ref[1]);
        free(x);
        free(y);
        free(ref);
    }
    printf("  cosines: worst error %.3f (pair) and %.3f (mean vector) of the bound\n", wp, wv);
    /* by hand and refusals */
    const float a[4] = {1, 0, 0, 2}, b[4] = {2, 0, 0, -3};
    assert_true(fabs(mean_pair_cosine(a, b, 2, 2) - 0) < 1e-15); /* (1 + -1) / 2 */
    /* means (0.5, 1) and (1, -1.5) */
    assert_true(fabs(mean_vector_cosine(a, 2, b, 2, 2) + 1 / sqrt(1.25 * 3.25)) < 1e-15);
    const float z[4] = {1, 2, 0, 0};
    assert_true(isnan(mean_pair_cosine(a, z, 2, 2)));
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "row 1 of y has norm 0"));
    const float zz[4] = {1, 2, -1, -2};
    assert_true(isnan(mean_vector_cosine(a, 2, zz, 2, 2)));
    assert_non_null(strstr(mapo_last_error(), "mean of y is the zero vector"));
    const float an[4] = {1, 0, NAN, 2};
    assert_true(isnan(mean_pair_cosine(an, b, 2, 2)));
    assert_non_null(strstr(mapo_last_error(), "[1, 0] is nan"));
    assert_true(isnan(mean_vector_cosine(a, 2, b, 0, 2)));
    assert_true(isnan(mean_pair_cosine(a, b, 2, 0)));
}

static void test_top1(void **st) {
    (void)st;
    char c[64];
    for (int k = 0; next_case("top1.cases", k, c, sizeof c); k++) {
        int64_t n, nl;
        int kk;
        float *lg = getf(NM("top1.%s.logits", c), &n, &kk);
        int64_t *lab64 = geti(NM("top1.%s.labels", c), &nl);
        assert_int_equal(nl, n);
        int *lab = malloc((size_t)n * sizeof(int));
        for (int64_t i = 0; i < n; i++) lab[i] = (int)lab64[i];
        const double acc = top1_accuracy(lg, lab, n, kk), ref = get1(NM("top1.%s.ref", c));
        printf("  %-9s n %lld k %d  accuracy %.6f (numpy %.6f)\n", c, (long long)n, kk, acc, ref);
        assert_true(acc == ref);
        free(lg);
        free(lab64);
        free(lab);
    }
    const float lg[6] = {0, 3, 3, 1, 0, -1};
    const int lab[2] = {2, 0};
    assert_true(top1_accuracy(lg, lab, 2, 3) == 0.5); /* the tie goes to index 1: wrong */
    const int bad[2] = {2, 3};
    assert_true(isnan(top1_accuracy(lg, bad, 2, 3)));
    printf("  message: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "label 1 is 3, outside [0, 3)"));
    const float ln[6] = {0, 3, 3, 1, NAN, -1};
    assert_true(isnan(top1_accuracy(ln, lab, 2, 3)));
    assert_non_null(strstr(mapo_last_error(), "[1, 1] is nan"));
    assert_true(isnan(top1_accuracy(lg, lab, 2, 0)));
    assert_true(isnan(top1_accuracy(lg, lab, 0, 3)));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_t_quantile),  cmocka_unit_test(test_t_cdf),
        cmocka_unit_test(test_t_edges),     cmocka_unit_test(test_mean_ci),
        cmocka_unit_test(test_win_rate),    cmocka_unit_test(test_gauss_stats),
        cmocka_unit_test(test_frechet),     cmocka_unit_test(test_gauss_stats_io),
        cmocka_unit_test(test_frechet_refusals), cmocka_unit_test(test_cosines),
        cmocka_unit_test(test_top1),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
