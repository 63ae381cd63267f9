/* metrics.c -- evaluation metrics (see metrics.h). Everything in double.
 *
 * Student t. pdf(u) = r(a) / sqrt(dof pi) (1 + u^2/dof)^-(dof+1)/2 with a = dof/2 and
 * r(a) = Gamma(a + 1/2) / Gamma(a), taken without lgamma differences (which lose ~|lgamma(a)|
 * ulps for large a): the exact recurrence r(a+1) = r(a) (a + 1/2) / a from r(1/2) = 1/sqrt(pi),
 * r(1) = sqrt(pi)/2 for a < 25 (at most 24 steps), and for a >= 25 the asymptotic series
 *   log r(a) = log(a)/2 - 1/(8a) + 1/(192a^3) - 1/(640a^5) + 17/(14336a^7) - 5115/(3041280a^9)
 * (the next term is below 1e-18 relative at a = 25; checked against mpmath).
 * For t > 0, the smaller of the upper tail Q(t) = P(T > t) (t >= 1) and the central mass
 * C(t) = P(0 < T <= t) = 0.5 - Q(t) (t < 1) is integrated directly, the other is 0.5 minus it:
 * double-exponential quadrature of the positive density (tanh-sinh on [0, t]; exp-sinh on
 * [t, inf) scaled by the density's decay length at t), so no cancellation anywhere and ~1e-15
 * relative accuracy for every dof. (The incomplete beta continued fraction was tried first: its
 * denominators 1 - (a+b) x / (a+1) cancel for large a near its switch point, measured 1e-14
 * relative error at dof 199 and 4e-11 at dof 1e6.) dof 1 and 2 have closed forms.
 * The quantile solves Q(t) = 1 - p (1 - p is exact for p >= 0.5) or, near the median,
 * C(t) = p - 0.5 (exact too) by Newton's method in u = log t, safeguarded by a bracket
 * (bisection whenever a step leaves it).
 *
 * Frechet distance. tr((Sa Sb)^{1/2}): with Sa = V diag(w) V^T (dsyevd) and
 * G = V diag(sqrt(max(w, 0))), A = Sa^{1/2} = G V^T and
 *   A Sb A = V (G^T Sb G) V^T,
 * so eig(A Sb A) = eig(G^T Sb G): one symmetric product instead of two, the same spectrum.
 * The trace is sum sqrt(max(0, lambda)) over the eigenvalues of the (symmetrised) G^T Sb G. */
#include "mapo/metrics.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"

/* LAPACK (exported by OpenBLAS); the trailing size_t are gfortran's hidden lengths of the
 * character arguments, passed so that no Fortran callee reads past our arguments. */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                    double *w, double *work, const int *lwork, int *iwork, const int *liwork,
                    int *info, size_t jobz_len, size_t uplo_len);

/* ------------------------------------------------------------------------------------------ */
/* paired win rate                                                                             */

int paired_win_rate(win_rate *out, const double *a, const double *b, int64_t n,
                    int higher_better, double tie_eps) {
    memset(out, 0, sizeof *out);
    if (n < 1) return mapo_error("win rate: need at least 1 paired item, got %lld", (long long)n);
    if (!(tie_eps >= 0) || !isfinite(tie_eps))
        return mapo_error("win rate: tie_eps must be finite and >= 0, got %g", tie_eps);
    int64_t w = 0, t = 0, l = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]))
            return mapo_error("win rate: score a[%lld] is %g", (long long)i, a[i]);
        if (!isfinite(b[i]))
            return mapo_error("win rate: score b[%lld] is %g", (long long)i, b[i]);
        const double diff = higher_better ? a[i] - b[i] : b[i] - a[i];
        if (fabs(diff) <= tie_eps) t++;
        else if (diff > 0) w++;
        else l++;
    }
    out->n = n;
    out->wins = w;
    out->ties = t;
    out->losses = l;
    const double r = ((double)w + 0.5 * (double)t) / (double)n;
    out->rate = r;
    if (n < 2) {
        out->lo = 0;
        out->hi = 1;
        return 0;
    }
    /* sum of squared deviations of the outcomes {1, 0.5, 0} from r, from the counts */
    const double ss = (double)w * (1 - r) * (1 - r) + (double)t * (0.5 - r) * (0.5 - r) +
                      (double)l * r * r;
    const double half = MAPO_Z975 * sqrt(ss / (double)(n - 1)) / sqrt((double)n);
    out->lo = fmax(0.0, r - half);
    out->hi = fmin(1.0, r + half);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Student t                                                                                   */

/* r(a) = Gamma(a + 1/2) / Gamma(a) for a = dof/2 */
static double gamma_ratio_half(int dof) {
    const double a = 0.5 * dof;
    if (a >= 25) {
        const double i = 1 / a, i2 = i * i;
        const double s =
            i * (-1.0 / 8 +
                 i2 * (1.0 / 192 + i2 * (-1.0 / 640 + i2 * (17.0 / 14336 - i2 * 5115.0 / 3041280))));
        return sqrt(a) * exp(s);
    }
    double r, aa;
    if (dof % 2) {
        r = 1 / sqrt(M_PI); /* a = 1/2 */
        aa = 0.5;
    } else {
        r = sqrt(M_PI) / 2; /* a = 1 */
        aa = 1;
    }
    for (; aa < a; aa += 1) r *= (aa + 0.5) / aa;
    return r;
}

typedef struct {
    int dof;
    double nu, e, norm; /* pdf(u) = norm (1 + u^2/nu)^-e */
} tdist;

static tdist tdist_make(int dof) {
    tdist d = {dof, dof, 0.5 * dof + 0.5, 0};
    d.norm = gamma_ratio_half(dof) / sqrt(d.nu * M_PI);
    return d;
}

/* log(1 + u^2/nu) without overflow */
static double log1p_u2(const tdist *d, double u) {
    u = fabs(u);
    if (u < 1e150) return log1p(u / d->nu * u);
    return 2 * log(u) - log(d->nu) + log1p(d->nu / u / u);
}

static double tdist_pdf(const tdist *d, double u) { return d->norm * exp(-d->e * log1p_u2(d, u)); }

/* Double-exponential quadrature of the (positive, analytic) density. kind 0: tanh-sinh on
   [0, t]; kind 1: exp-sinh on [t, inf) with u = t + L exp(w). Trapezoid sums over
   s in [-S, S], w = (pi/2) sinh(s), with step h = 1/2, 1/4, ...; the error of step h is
   ~exp(-c/h), so once two successive sums agree to 1e-9 (the coarser one's error) the finer
   one's error is ~1e-18, far below rounding. At least h = 1/16 (~150 nodes). NAN if no
   agreement by h = 1/1024. */
static double t_quad(const tdist *d, double t, int kind) {
    const double S = 4.5, hp = M_PI / 2;
    const double L = (d->nu / t + t) / (d->nu + 1); /* decay length of the pdf at t */
    const double logL = log(L), lognorm = log(d->norm);
    double sum = 0, prev = 0, h = 0.5;
    for (int level = 0; level <= 11; level++) {
        /* level 0: all nodes k h; later levels: the odd multiples of the new h */
        const int kmax = (int)(S / h); /* 9, 18, 36, ...: the coarser nodes are the even k */
        for (int k = -kmax; k <= kmax; k++) {
            if (level > 0 && k % 2 == 0) continue;
            const double s = k * h, w = hp * sinh(s), dw = hp * cosh(s);
            if (kind == 0) {
                const double e = exp(-2 * fabs(w)), sech2 = 4 * e / ((1 + e) * (1 + e));
                const double u = w >= 0 ? t / (1 + e) : t * e / (1 + e);
                sum += tdist_pdf(d, u) * (0.5 * t * sech2 * dw);
            } else {
                const double ew = exp(w), u = t + L * ew;
                double term = tdist_pdf(d, u) * (L * ew * dw);
                /* far out (F ~ 1e-300) pdf(u) alone underflows or du overflows: the product
                   as one exponential (a few more roundings in its argument) */
                if (!(term > 1e-280) || !isfinite(term))
                    term = exp(lognorm - d->e * log1p_u2(d, u) + logL + w + log(dw));
                sum += term;
            }
        }
        const double val = sum * h;
        if (level >= 3 && fabs(val - prev) <= 1e-9 * val) return val;
        prev = val;
        h *= 0.5;
    }
    return NAN;
}

/* For t >= 0: *tail = P(T > t), *centre = P(0 < T <= t); the smaller one is computed
   directly, the other is 0.5 minus it. NAN if the quadrature did not converge. */
static void t_parts(const tdist *d, double t, double *tail, double *centre) {
    if (t == 0 || isinf(t)) {
        *tail = t == 0 ? 0.5 : 0;
        *centre = 0.5 - *tail;
        return;
    }
    if (d->dof == 1) {
        *centre = atan(t) / M_PI;
        *tail = atan(1 / t) / M_PI;
        return;
    }
    if (d->dof == 2) {
        /* r = sqrt(2 + t^2) without overflow; tail = 0.5 (1 - t/r) without cancellation */
        const double r = t > 1 ? t * sqrt(1 + 2 / (t * t)) : sqrt(2 + t * t);
        *centre = 0.5 * t / r;
        *tail = 1 / (r * (r + t));
        return;
    }
    if (t < 1) {
        *centre = t_quad(d, t, 0);
        *tail = 0.5 - *centre;
    } else {
        *tail = t_quad(d, t, 1);
        *centre = 0.5 - *tail;
    }
}

double student_t_cdf(double t, int dof) {
    if (dof < 1) {
        mapo_error("Student t: degrees of freedom must be >= 1, got %d", dof);
        return NAN;
    }
    if (isnan(t)) {
        mapo_error("Student t: CDF of NaN");
        return NAN;
    }
    const tdist d = tdist_make(dof);
    double tail, centre;
    t_parts(&d, fabs(t), &tail, &centre);
    if (isnan(tail)) {
        mapo_error("Student t: CDF quadrature did not converge (t %g, dof %d)", t, dof);
        return NAN;
    }
    return t >= 0 ? 0.5 + centre : tail;
}

/* Solve for t > 0 with P(T > t) = target (use_tail) or P(0 < T <= t) = target, by Newton's
   method on g(u) = +-(log F(e^u) - log target), increasing in u = log t, g' = t pdf / F;
   a step that leaves the bracket known so far is replaced by bisection (or by a doubling
   step while one side is still open). */
static double t_solve(const tdist *d, double target, int use_tail, double t0) {
    double lo = -INFINITY, hi = INFINITY, u = log(t0), expand = 1;
    const double ltarget = log(target);
    for (int it = 0; it < 400; it++) {
        const double t = exp(u);
        double tail, centre;
        t_parts(d, t, &tail, &centre);
        if (isnan(tail)) return NAN;
        const double f = use_tail ? tail : centre;
        const double g = use_tail ? ltarget - log(f) : log(f) - ltarget;
        if (g == 0) return t;
        if (g < 0) lo = u;
        else hi = u;
        double un = u - g / (t * tdist_pdf(d, t) / f);
        if (isfinite(un) && un > lo && un < hi) {
            /* a Newton step this small leaves an error ~step^2: below rounding */
            if (fabs(un - u) <= 1e-10) return exp(un);
        } else {
            if (isinf(lo)) un = hi - expand;
            else if (isinf(hi)) un = lo + expand;
            else un = 0.5 * (lo + hi);
            expand *= 2;
            if (hi - lo <= 4 * DBL_EPSILON * fmax(1.0, fabs(u))) return exp(un);
        }
        u = un;
    }
    return NAN;
}

double student_t_quantile(double p, int dof) {
    if (dof < 1) {
        mapo_error("Student t: degrees of freedom must be >= 1, got %d", dof);
        return NAN;
    }
    if (!(p >= 0 && p <= 1)) {
        mapo_error("Student t: probability must be in [0, 1], got %g", p);
        return NAN;
    }
    if (p == 0) return -INFINITY;
    if (p == 1) return INFINITY;
    if (p == 0.5) return 0;
    const double sign = p > 0.5 ? 1 : -1;
    /* upper tail q and centre c, both exact: for p > 0.5, 1 - p and p - 0.5 are exact
       (Sterbenz); for p < 0.5 the mirror image q = p, and c = 0.5 - p is exact where it is
       used (q > 0.25) */
    const double q = p > 0.5 ? 1 - p : p;
    const double c = p > 0.5 ? p - 0.5 : 0.5 - p;
    const int use_tail = q <= 0.25;
    double t;
    if (dof == 1) {
        t = use_tail ? 1 / tan(M_PI * q) : tan(M_PI * c);
    } else if (dof == 2) {
        t = use_tail ? (1 - 2 * q) / sqrt(2 * q * (1 - q)) : 2 * c / sqrt(2 * (0.5 + c) * q);
    } else {
        const tdist d = tdist_make(dof);
        double t0;
        if (!use_tail && c < 0.1) {
            t0 = c / d.norm; /* P(0 < T <= t) ~ t pdf(0) near 0 */
        } else {
            /* normal quantile (Abramowitz-Stegun 26.2.23, |error| < 4.5e-4), then the first
               two Cornish-Fisher terms: only a starting point */
            const double w = sqrt(-2 * log(q));
            const double z = w - (2.515517 + w * (0.802853 + w * 0.010328)) /
                                     (1 + w * (1.432788 + w * (0.189269 + w * 0.001308)));
            const double nu = dof, z2 = z * z;
            t0 = z + z * (z2 + 1) / (4 * nu) + z * ((5 * z2 + 16) * z2 + 3) / (96 * nu * nu);
            if (!(t0 > 0)) t0 = 1e-3;
        }
        t = t_solve(&d, use_tail ? q : c, use_tail, t0);
        if (isnan(t)) {
            mapo_error("Student t: quantile iteration failed (p %.17g, dof %d)", p, dof);
            return NAN;
        }
    }
    return sign * t;
}

/* ------------------------------------------------------------------------------------------ */
/* mean and confidence interval                                                                */

int mean_ci95(mean_ci *out, const double *x, int n) {
    memset(out, 0, sizeof *out);
    if (n < 1) return mapo_error("mean CI: need at least 1 value, got %d", n);
    double s = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i])) return mapo_error("mean CI: value x[%d] is %g", i, x[i]);
        s += x[i];
    }
    double m = s / n;
    /* one correction pass (the mean of the residuals) makes the mean accurate to ~1 ulp */
    double r = 0;
    for (int i = 0; i < n; i++) r += x[i] - m;
    m += r / n;
    out->n = n;
    out->mean = m;
    if (n == 1) {
        out->sd = out->half = NAN;
        return 0;
    }
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    out->sd = sqrt(ss / (n - 1));
    const double tq = student_t_quantile(0.975, n - 1);
    if (isnan(tq)) return -1;
    out->half = tq * out->sd / sqrt((double)n);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Gaussian statistics and the Frechet distance                                                */

void gauss_stats_free(gauss_stats *s) {
    if (!s) return;
    free(s->mu);
    free(s->cov);
    memset(s, 0, sizeof *s);
}

static int check_features(const char *what, const float *x, int64_t n, int d, int64_t min_n,
                          int max_d) {
    if (d < 1 || d > max_d)
        return mapo_error("%s: dimension must be in [1, %d], got %d", what, max_d, d);
    if (n < min_n)
        return mapo_error("%s: need at least %lld samples, got %lld", what, (long long)min_n,
                          (long long)n);
    if (!x) return mapo_error("%s: no data", what);
    const int64_t total = n * (int64_t)d;
    for (int64_t i = 0; i < total; i++)
        if (!isfinite(x[i]))
            return mapo_error("%s: value [%lld, %lld] is %g", what, (long long)(i / d),
                              (long long)(i % d), (double)x[i]);
    return 0;
}

#define STATS_BLOCK 256

int gauss_stats_compute(gauss_stats *s, const float *x, int64_t n, int d) {
    memset(s, 0, sizeof *s);
    if (check_features("Gaussian statistics", x, n, d, 2, MAPO_FD_MAX_DIM)) return -1;
    const size_t dd = (size_t)d;
    double *mu0 = xcalloc(dd, sizeof(double));
    double *delta = xcalloc(dd, sizeof(double));
    double *cov = xcalloc(dd * dd, sizeof(double));
    double *blk = xmalloc((size_t)STATS_BLOCK * dd * sizeof(double));
    /* first pass: mean to a few ulps of the sum's rounding */
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) mu0[j] += x[i * d + j];
    for (int j = 0; j < d; j++) mu0[j] /= (double)n;
    /* second pass: centred by mu0 in blocks; C = sum c c^T (dsyrk), delta = sum c.
       With m = mu0 + delta/n, sum (x-m)(x-m)^T = C - n (delta/n)(delta/n)^T exactly. */
    for (int64_t r0 = 0; r0 < n; r0 += STATS_BLOCK) {
        const int rows = (int)(n - r0 < STATS_BLOCK ? n - r0 : STATS_BLOCK);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < d; j++) {
                const double c = (double)x[(r0 + r) * d + j] - mu0[j];
                blk[(size_t)r * dd + j] = c;
                delta[j] += c;
            }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, blk, d, 1.0, cov, d);
    }
    free(blk);
    for (int j = 0; j < d; j++) delta[j] /= (double)n;
    const double inv = 1.0 / (double)(n - 1);
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            const double v = (cov[i * dd + j] - (double)n * delta[i] * delta[j]) * inv;
            cov[i * dd + j] = cov[j * dd + i] = v;
        }
    for (int j = 0; j < d; j++) mu0[j] += delta[j];
    free(delta);
    s->d = d;
    s->n = n;
    s->mu = mu0;
    s->cov = cov;
    return 0;
}

static int check_stats(const char *which, const gauss_stats *s) {
    if (!s || !s->mu || !s->cov || s->d < 1 || s->d > MAPO_FD_MAX_DIM)
        return mapo_error("Frechet distance: statistics %s are not computed", which);
    if (s->n < 2)
        return mapo_error("Frechet distance: statistics %s summarise %lld samples (need >= 2)",
                          which, (long long)s->n);
    return 0;
}

/* eigen-decomposition of the symmetric a [d, d] in place (jobz 'V': eigenvectors in the
   columns of the column-major result, i.e. a[k * d + i] = v_k[i]); w ascending */
static int sym_eig(double *a, double *w, int d, char jobz) {
    int lwork = -1, liwork = -1, info = 0, iwq = 0;
    double wq = 0;
    dsyevd_(&jobz, "U", &d, a, &d, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
    if (info) return mapo_error("Frechet distance: LAPACK dsyevd workspace query failed (%d)", info);
    lwork = (int)wq + 1;
    liwork = iwq;
    double *work = xmalloc((size_t)lwork * sizeof(double));
    int *iwork = xmalloc((size_t)(liwork > 1 ? liwork : 1) * sizeof(int));
    dsyevd_(&jobz, "U", &d, a, &d, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    free(work);
    free(iwork);
    if (info)
        return mapo_error("Frechet distance: LAPACK dsyevd failed (info %d) on a %dx%d matrix",
                          info, d, d);
    return 0;
}

int frechet_distance(double *out, const gauss_stats *a, const gauss_stats *b) {
    *out = NAN;
    if (check_stats("a", a) || check_stats("b", b)) return -1;
    if (a->d != b->d)
        return mapo_error("Frechet distance: feature dimensions differ (%d vs %d)", a->d, b->d);
    const int d = a->d;
    const size_t dd = (size_t)d;
    for (size_t i = 0; i < dd; i++)
        if (!isfinite(a->mu[i]) || !isfinite(b->mu[i]))
            return mapo_error("Frechet distance: mean vector is not finite at %zu", i);
    for (size_t i = 0; i < dd * dd; i++)
        if (!isfinite(a->cov[i]) || !isfinite(b->cov[i]))
            return mapo_error("Frechet distance: covariance is not finite at [%zu, %zu]",
                              i / dd, i % dd);
    double diff2 = 0, tra = 0, trb = 0;
    for (size_t i = 0; i < dd; i++) {
        const double df = a->mu[i] - b->mu[i];
        diff2 += df * df;
        tra += a->cov[i * dd + i];
        trb += b->cov[i * dd + i];
    }
    /* Sa = V diag(w) V^T; G = V diag(sqrt(max(w, 0))) (only columns with w > 0) */
    double *v = xmalloc(dd * dd * sizeof(double));
    double *w = xmalloc(dd * sizeof(double));
    memcpy(v, a->cov, dd * dd * sizeof(double));
    if (sym_eig(v, w, d, 'V')) {
        free(v);
        free(w);
        return -1;
    }
    /* column-major eigenvectors = row-major rows: v[k*d + i] = v_k[i]. Gt [r, d] row-major
       holds sqrt(w_k) v_k^T for the r positive eigenvalues, so G = Gt^T. */
    int r = 0;
    for (int k = 0; k < d; k++) {
        if (!(w[k] > 0)) continue;
        const double sw = sqrt(w[k]);
        for (int i = 0; i < d; i++) v[(size_t)r * dd + i] = sw * v[(size_t)k * dd + i];
        r++;
    }
    free(w);
    double trsqrt = 0;
    if (r > 0) {
        /* T = Gt Sb  [r, d];  M = T Gt^T = G^T Sb G  [r, r] */
        double *t = xmalloc((size_t)r * dd * sizeof(double));
        double *m = xmalloc((size_t)r * (size_t)r * sizeof(double));
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, r, d, 1.0, b->cov, d, v, d, 0.0, t, d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, r, d, 1.0, t, d, v, d, 0.0, m,
                    r);
        free(t);
        for (int i = 0; i < r; i++)
            for (int j = i + 1; j < r; j++) {
                const double s = 0.5 * (m[(size_t)i * r + j] + m[(size_t)j * r + i]);
                m[(size_t)i * r + j] = m[(size_t)j * r + i] = s;
            }
        double *lam = xmalloc((size_t)r * sizeof(double));
        if (sym_eig(m, lam, r, 'N')) {
            free(m);
            free(lam);
            free(v);
            return -1;
        }
        for (int i = 0; i < r; i++)
            if (lam[i] > 0) trsqrt += sqrt(lam[i]);
        free(m);
        free(lam);
    }
    free(v);
    const double fd = diff2 + tra + trb - 2 * trsqrt;
    if (!isfinite(fd)) return mapo_error("Frechet distance: result is not finite (%g)", fd);
    *out = fd > 0 ? fd : 0;
    return 0;
}

int frechet_distance_features(double *out, const float *x, int64_t n, const float *y,
                              int64_t m, int d) {
    *out = NAN;
    gauss_stats a, b;
    if (gauss_stats_compute(&a, x, n, d)) return mapo_error_prefix("first feature set");
    if (gauss_stats_compute(&b, y, m, d)) {
        gauss_stats_free(&a);
        return mapo_error_prefix("second feature set");
    }
    const int rc = frechet_distance(out, &a, &b);
    gauss_stats_free(&a);
    gauss_stats_free(&b);
    return rc;
}

int gauss_stats_save(const gauss_stats *s, const char *path) {
    if (check_stats("to save", s)) return -1;
    st_writer *w = st_writer_new();
    const int64_t shmu[1] = {s->d}, shcov[2] = {s->d, s->d};
    char nbuf[32];
    snprintf(nbuf, sizeof nbuf, "%lld", (long long)s->n);
    st_writer_add(w, "mu", ST_F64, 1, shmu, s->mu);
    st_writer_add(w, "sigma", ST_F64, 2, shcov, s->cov);
    st_writer_meta(w, "n", nbuf);
    st_writer_meta(w, "format", "mapo gauss_stats");
    const int rc = st_writer_write(w, path);
    st_writer_free(w);
    return rc;
}

int gauss_stats_load(gauss_stats *s, const char *path) {
    memset(s, 0, sizeof *s);
    st_file f;
    if (st_open(&f, path)) return -1;
    const st_tensor *mu = st_find(&f, "mu"), *sg = st_find(&f, "sigma");
    const char *ns = st_meta(&f, "n");
    int rc = 0;
    char *end = NULL;
    long long n = ns ? strtoll(ns, &end, 10) : 0;
    if (!mu || !sg) rc = mapo_error("%s: Gaussian statistics need tensors 'mu' and 'sigma'", path);
    else if (mu->ndim != 1 || mu->shape[0] < 1 || mu->shape[0] > MAPO_FD_MAX_DIM)
        rc = mapo_error("%s: 'mu' must be a vector of 1..%d values", path, MAPO_FD_MAX_DIM);
    else if (sg->ndim != 2 || sg->shape[0] != mu->shape[0] || sg->shape[1] != mu->shape[0])
        rc = mapo_error("%s: 'sigma' must be [%lld, %lld] to match 'mu'", path,
                        (long long)mu->shape[0], (long long)mu->shape[0]);
    else if (!ns || !end || *end || n < 2)
        rc = mapo_error("%s: metadata 'n' (number of samples, >= 2) is missing or bad", path);
    if (rc) {
        st_close(&f);
        return rc;
    }
    const int d = (int)mu->shape[0];
    const size_t dd = (size_t)d;
    s->mu = xmalloc(dd * sizeof(double));
    s->cov = xmalloc(dd * dd * sizeof(double));
    if (st_to_f64(mu, s->mu) || st_to_f64(sg, s->cov)) {
        rc = mapo_error("%s: 'mu' and 'sigma' must be floating point", path);
    } else {
        for (size_t i = 0; i < dd && !rc; i++)
            if (!isfinite(s->mu[i])) rc = mapo_error("%s: mu[%zu] is %g", path, i, s->mu[i]);
        for (size_t i = 0; i < dd && !rc; i++)
            for (size_t j = 0; j < dd && !rc; j++) {
                const double v = s->cov[i * dd + j];
                if (!isfinite(v)) rc = mapo_error("%s: sigma[%zu, %zu] is %g", path, i, j, v);
                else if (v != s->cov[j * dd + i])
                    rc = mapo_error("%s: sigma is not symmetric at [%zu, %zu]", path, i, j);
            }
    }
    st_close(&f);
    if (rc) {
        gauss_stats_free(s);
        return rc;
    }
    s->d = d;
    s->n = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* similarities, accuracy                                                                      */

double mean_pair_cosine(const float *x, const float *y, int64_t n, int d) {
    if (check_features("pair cosine (x)", x, n, d, 1, INT_MAX) ||
        check_features("pair cosine (y)", y, n, d, 1, INT_MAX))
        return NAN;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *a = x + i * d, *b = y + i * d;
        double ab = 0, aa = 0, bb = 0;
        for (int j = 0; j < d; j++) { /* float products are exact in double */
            ab += (double)a[j] * b[j];
            aa += (double)a[j] * a[j];
            bb += (double)b[j] * b[j];
        }
        if (aa == 0 || bb == 0) {
            mapo_error("pair cosine: row %lld of %s has norm 0 (cosine undefined)", (long long)i,
                       aa == 0 ? "x" : "y");
            return NAN;
        }
        sum += ab / (sqrt(aa) * sqrt(bb));
    }
    return sum / (double)n;
}

static double *col_mean(const float *x, int64_t n, int d) {
    double *m = xcalloc((size_t)d, sizeof(double));
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) m[j] += x[i * d + j];
    for (int j = 0; j < d; j++) m[j] /= (double)n;
    return m;
}

double mean_vector_cosine(const float *x, int64_t n, const float *y, int64_t m, int d) {
    if (check_features("mean-vector cosine (x)", x, n, d, 1, INT_MAX) ||
        check_features("mean-vector cosine (y)", y, m, d, 1, INT_MAX))
        return NAN;
    double *mx = col_mean(x, n, d), *my = col_mean(y, m, d);
    double ab = 0, aa = 0, bb = 0;
    for (int j = 0; j < d; j++) {
        ab += mx[j] * my[j];
        aa += mx[j] * mx[j];
        bb += my[j] * my[j];
    }
    free(mx);
    free(my);
    if (aa == 0 || bb == 0) {
        mapo_error("mean-vector cosine: the mean of %s is the zero vector (cosine undefined)",
                   aa == 0 ? "x" : "y");
        return NAN;
    }
    return ab / (sqrt(aa) * sqrt(bb));
}

double top1_accuracy(const float *logits, const int *labels, int64_t n, int k) {
    if (k < 1) {
        mapo_error("top-1 accuracy: number of classes must be >= 1, got %d", k);
        return NAN;
    }
    if (check_features("top-1 accuracy (logits)", logits, n, k, 1, INT_MAX)) return NAN;
    int64_t hit = 0;
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0 || labels[i] >= k) {
            mapo_error("top-1 accuracy: label %lld is %d, outside [0, %d)", (long long)i,
                       labels[i], k);
            return NAN;
        }
        const float *row = logits + i * k;
        int best = 0;
        for (int j = 1; j < k; j++)
            if (row[j] > row[best]) best = j;
        hit += best == labels[i];
    }
    return (double)hit / (double)n;
}
