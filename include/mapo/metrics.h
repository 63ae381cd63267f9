/* metrics.h -- evaluation metrics: paired win rates, confidence intervals across seeds,
 * the Frechet distance between feature sets (FID when the features are Inception pool3),
 * cosine similarities of embeddings (CLIP-score style), top-1 accuracy.
 *
 * Everything is accumulated in double. Functions returning int give 0, or -1 after one
 * mapo_error() message; functions returning double give NAN after one mapo_error() message
 * when the input is refused. Refused everywhere: counts below the minimum, dimensions < 1,
 * NaN / infinite values (the message names the first offending element).
 * Checked against numpy / scipy by tests/test_metrics.c (fixtures from
 * tools/make_metrics_fixtures.py). */
#ifndef MAPO_METRICS_H
#define MAPO_METRICS_H
#include <stdint.h>

/* ---- paired comparison ----
 * Two models on the same prompts and noise: a[i], b[i] scores of sample i. higher_better:
 * nonzero if a larger score wins. Per item the outcome o_i is 1 (a wins), 0.5 (tie:
 * |a - b| <= tie_eps) or 0 (b wins); rate = mean(o) = (wins + 0.5 ties) / n.
 * 95% CI (normal approximation): rate -/+ z * s / sqrt(n), s = sample standard deviation
 * (ddof 1) of o, z = 1.959963984540054, clamped to [0, 1]; n == 1: [0, 1].
 * Refused: n < 1, a NaN / infinite score, tie_eps < 0 or not finite. */
typedef struct {
    int64_t n, wins, ties, losses;
    double rate, lo, hi;
} win_rate;
#define MAPO_Z975 1.959963984540054
int paired_win_rate(win_rate *out, const double *a, const double *b, int64_t n,
                    int higher_better, double tie_eps);

/* ---- mean and 95% confidence interval of a few values (e.g. one metric across seeds) ----
 * mean, sd (ddof 1), half = t_{0.975, n-1} * sd / sqrt(n) (Student t);
 * n == 1: sd = half = NAN (no spread can be estimated). Refused: n < 1, non-finite x. */
typedef struct {
    int n;
    double mean, sd, half;
} mean_ci;
int mean_ci95(mean_ci *out, const double *x, int n);

/* Quantile of Student's t distribution with dof >= 1 degrees of freedom
 * (scipy.stats.t.ppf(p, dof)): p = 0 -> -INFINITY, p = 1 -> +INFINITY, p = 0.5 -> 0.
 * Safeguarded Newton iteration on the CDF, whose upper tail (|t| >= 1) or central mass
 * (|t| < 1) is a double-exponential quadrature of the density: no cancellation, relative error
 * ~1e-15 for any dof (closed forms for dof 1, 2).
 * Refused (NAN + message): p outside [0, 1] or NaN, dof < 1. */
double student_t_quantile(double p, int dof);
/* Its CDF, exposed for tests: P(T <= t). dof < 1 or NaN t: NAN + message. */
double student_t_cdf(double t, int dof);

/* ---- Gaussian statistics of a feature set and the Frechet distance ----
 * mu [d], cov [d, d] row-major (symmetric), unbiased (ddof 1, numpy.cov(x, rowvar=False)),
 * n = number of samples they summarise. */
typedef struct {
    int d;
    int64_t n;
    double *mu;
    double *cov;
} gauss_stats;
/* x [n, d] float32, rows = samples; n >= 2, 1 <= d <= MAPO_FD_MAX_DIM, all finite.
 * Memory beyond the result: a block of 256 rows in double. On failure *s is left zeroed. */
#define MAPO_FD_MAX_DIM 16384
int gauss_stats_compute(gauss_stats *s, const float *x, int64_t n, int d);
void gauss_stats_free(gauss_stats *s);
/* Save / load (safetensors: "mu" F64 [d], "sigma" F64 [d, d], metadata "n"), so a reference
 * set is summarised once. Loading refuses missing tensors, wrong shapes, non-finite values, an
 * asymmetric sigma and a missing or bad n. */
int gauss_stats_save(const gauss_stats *s, const char *path);
int gauss_stats_load(gauss_stats *s, const char *path);

/* Frechet distance between N(mu_a, Sa) and N(mu_b, Sb):
 *   |mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa Sb)^{1/2}),
 * with tr((Sa Sb)^{1/2}) = sum_i sqrt(max(0, eig_i(A Sb A))), A = Sa^{1/2} from the symmetric
 * eigendecomposition of Sa (LAPACK dsyevd; eigenvalues below 0 from rounding taken as 0).
 * Stable for singular covariances (n <= d). The result is clamped at 0 (it can only go
 * below through rounding). Refused: different d, stats not computed, non-finite result. */
int frechet_distance(double *out, const gauss_stats *a, const gauss_stats *b);
/* Both steps from features: x [n, d], y [m, d]. */
int frechet_distance_features(double *out, const float *x, int64_t n, const float *y,
                              int64_t m, int d);

/* ---- similarities and accuracy (NAN + message when refused) ----
 * Mean over i of cos(x_i, y_i) for paired rows x, y [n, d]. Refused: n < 1, d < 1,
 * non-finite values, a row of norm 0 (its cosine is undefined). */
double mean_pair_cosine(const float *x, const float *y, int64_t n, int d);
/* cos(mean of x's rows, mean of y's rows); x [n, d], y [m, d]. Refused as above, and a mean
 * vector of norm 0. */
double mean_vector_cosine(const float *x, int64_t n, const float *y, int64_t m, int d);
/* Fraction of rows with argmax(logits[i]) == labels[i]; logits [n, k]; ties between maxima go
 * to the lowest index (numpy.argmax). Refused: n < 1, k < 1, non-finite logits, a label
 * outside [0, k). */
double top1_accuracy(const float *logits, const int *labels, int64_t n, int k);

#endif
