/* objectives.c -- MaPO, Diffusion-DPO, SFT and Diffusion-KTO as functions of the per-sample
 * errors (see objectives.h, where the formulas are stated). All in double.
 *
 * Stability. With x = s*l, g = x/(e^x - 1):
 *   |x| < 1e-5      g = 1 - x/2 + x^2/12           (next term x^4/720 < 1e-23)
 *   otherwise       g = x / expm1(x)  for x <= 0 (no overflow: expm1 in (-1, 0)),
 *                   g = x e^-x / (-expm1(-x)) for x > 0 (e^-x underflows to 0 for huge x:
 *                   g -> x e^-x -> 0, never inf/inf).
 *   dg/dx:  |x| < 0.1   the Bernoulli series -1/2 + x/6 - x^3/180 + x^5/5040 - x^7/151200
 *                       + x^9/4790016 (next term ~6e-12 x^11 < 1e-22): the closed forms
 *                       cancel badly near 0;
 *           x > 0       e^-x (d - x) / d^2 with d = -expm1(-x)
 *           x < 0       (E - x (E + 1)) / E^2 with E = expm1(x).
 * logsigmoid(x) = min(x, 0) - log1p(exp(-|x|));  d/dx = sigmoid(-x), computed without
 * overflow on either side. */
#include "mapo/objectives.h"

#include <math.h>

#include "mapo/common.h"

double mapo_g(double s, double l) {
    const double x = s * l;
    if (fabs(x) < 1e-5) return 1.0 - x / 2.0 + x * x / 12.0;
    if (x <= 0) return x / expm1(x);
    return x * exp(-x) / -expm1(-x);
}

/* d/dx of x/(e^x - 1) */
static double g_dx(double x) {
    if (fabs(x) < 0.1) {
        const double x2 = x * x;
        return -0.5 + x * (1.0 / 6.0 +
                           x2 * (-1.0 / 180.0 +
                                 x2 * (1.0 / 5040.0 + x2 * (-1.0 / 151200.0 + x2 / 4790016.0))));
    }
    if (x > 0) {
        const double q = exp(-x), d = -expm1(-x);
        return q * (d - x) / (d * d);
    }
    const double e = expm1(x);
    return (e - x * (e + 1.0)) / (e * e);
}

double mapo_g_deriv(double s, double l) { return s * g_dx(s * l); }

double mapo_logsigmoid(double x) { return fmin(x, 0.0) - log1p(exp(-fabs(x))); }

/* sigmoid(-x) = d logsigmoid(x) / dx */
static double sigmoid_neg(double x) {
    if (x >= 0) {
        const double e = exp(-x);
        return e / (1.0 + e);
    }
    return 1.0 / (1.0 + exp(x));
}

static void stats_clear(objective_stats *st) {
    st->loss = st->err_w = st->err_l = st->margin = 0;
    st->win_score = st->lose_score = st->implicit_acc = 0;
    st->ref_err_w = st->ref_err_l = 0;
}

static int check_errors(const char *what, const double *l, int B, const char *obj) {
    for (int i = 0; i < 2 * B; i++)
        if (!isfinite(l[i]))
            return mapo_error("%s loss is not finite: %s of pair %d (%s) is %g", obj, what,
                              i % B, i < B ? "chosen" : "rejected", l[i]);
    return 0;
}

static int check_result(const double *dl, const objective_stats *st, int B, const char *obj) {
    if (!isfinite(st->loss)) return mapo_error("%s loss is not finite (%g)", obj, st->loss);
    for (int i = 0; i < 2 * B; i++)
        if (!isfinite(dl[i]))
            return mapo_error("%s loss gradient is not finite: d loss / d error of pair %d "
                              "(%s) is %g",
                              obj, i % B, i < B ? "chosen" : "rejected", dl[i]);
    return 0;
}

int objective_mapo(double *dl, objective_stats *st, const double *l, int B, double beta_mapo,
                   double snr_value, int num_train_timesteps) {
    stats_clear(st);
    if (B <= 0) return mapo_error("MaPO loss needs at least one pair (got %d)", B);
    if (!isfinite(beta_mapo) || !isfinite(snr_value) || num_train_timesteps <= 0)
        return mapo_error("MaPO loss: bad hyper-parameters (beta_mapo %g, snr_value %g, "
                          "num_train_timesteps %d)",
                          beta_mapo, snr_value, num_train_timesteps);
    if (check_errors("per-sample error", l, B, "MaPO")) return -1;
    const double T = (double)num_train_timesteps, inv_b = 1.0 / B;
    double sum_w = 0, sum_l = 0, sum_gw = 0, sum_gl = 0, sum_ls = 0;
    int wins = 0;
    for (int i = 0; i < B; i++) {
        const double lw = l[i], ll = l[B + i];
        const double gw = mapo_g(snr_value, lw), gl = mapo_g(snr_value, ll);
        const double z = T * (gw - gl);
        sum_w += lw;
        sum_l += ll;
        sum_gw += gw;
        sum_gl += gl;
        sum_ls += mapo_logsigmoid(z);
        wins += gw > gl;
        /* d/dz of -beta*mean(logsigmoid(z)) = -beta/B * sigmoid(-z) */
        const double c = -beta_mapo * inv_b * sigmoid_neg(z) * T;
        dl[i] = inv_b + c * mapo_g_deriv(snr_value, lw);
        dl[B + i] = -c * mapo_g_deriv(snr_value, ll);
    }
    st->err_w = sum_w * inv_b;
    st->err_l = sum_l * inv_b;
    st->win_score = sum_gw * inv_b;
    st->lose_score = sum_gl * inv_b;
    st->margin = -beta_mapo * sum_ls * inv_b;
    st->loss = st->err_w + st->margin;
    st->implicit_acc = (double)wins * inv_b;
    return check_result(dl, st, B, "MaPO");
}

int objective_dpo(double *dl, objective_stats *st, const double *l, const double *lref, int B,
                  double beta_dpo) {
    stats_clear(st);
    if (B <= 0) return mapo_error("Diffusion-DPO loss needs at least one pair (got %d)", B);
    if (!isfinite(beta_dpo))
        return mapo_error("Diffusion-DPO loss: beta_dpo is not finite (%g)", beta_dpo);
    if (check_errors("per-sample error", l, B, "Diffusion-DPO")) return -1;
    if (check_errors("reference error", lref, B, "Diffusion-DPO")) return -1;
    const double inv_b = 1.0 / B, scale = -0.5 * beta_dpo;
    double sum_w = 0, sum_l = 0, sum_rw = 0, sum_rl = 0, sum_in = 0, sum_ls = 0;
    int acc = 0;
    for (int i = 0; i < B; i++) {
        const double lw = l[i], ll = l[B + i], rw = lref[i], rl = lref[B + i];
        const double inside = scale * ((lw - ll) - (rw - rl));
        sum_w += lw;
        sum_l += ll;
        sum_rw += rw;
        sum_rl += rl;
        sum_in += inside;
        sum_ls += mapo_logsigmoid(inside);
        acc += inside > 0;
        /* d/dinside of -mean(logsigmoid(inside)) = -sigmoid(-inside)/B */
        const double c = -inv_b * sigmoid_neg(inside) * scale;
        dl[i] = c;
        dl[B + i] = -c;
    }
    st->err_w = sum_w * inv_b;
    st->err_l = sum_l * inv_b;
    st->ref_err_w = sum_rw * inv_b;
    st->ref_err_l = sum_rl * inv_b;
    st->margin = sum_in * inv_b;
    st->implicit_acc = (double)acc * inv_b;
    st->loss = -sum_ls * inv_b;
    return check_result(dl, st, B, "Diffusion-DPO");
}

int objective_sft(double *dl, objective_stats *st, const double *l, int B) {
    stats_clear(st);
    if (B <= 0) return mapo_error("SFT loss needs at least one pair (got %d)", B);
    /* only the chosen half enters the loss; a non-finite rejected error is still a sign
       that something upstream broke, so it is refused too */
    if (check_errors("per-sample error", l, B, "SFT")) return -1;
    const double inv_b = 1.0 / B;
    double sum_w = 0, sum_l = 0;
    for (int i = 0; i < B; i++) {
        sum_w += l[i];
        sum_l += l[B + i];
        dl[i] = inv_b;
        dl[B + i] = 0;
    }
    st->err_w = sum_w * inv_b;
    st->err_l = sum_l * inv_b;
    st->loss = st->err_w;
    st->margin = st->err_l - st->err_w;
    return check_result(dl, st, B, "SFT");
}

int objective_denoise(double *dl, objective_stats *st, const double *l, int n) {
    stats_clear(st);
    if (n <= 0) return mapo_error("denoising loss needs at least one image (got %d)", n);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(l[i]))
            return mapo_error("denoising loss is not finite: per-sample error of image %d is %g",
                              i, l[i]);
        sum += l[i];
        dl[i] = 1.0 / n;
    }
    st->err_w = st->loss = sum / n;
    return isfinite(st->loss) ? 0 : mapo_error("denoising loss is not finite (%g)", st->loss);
}

/* Diffusion-KTO (see objectives.h). 1 - sigmoid(z) = sigmoid(-z) and
   sigmoid(z) sigmoid(-z) = e / (1 + e)^2 with e = exp(-|z|) <= 1: no overflow, and no
   cancellation in 1 - h when z is large. */
int objective_kto(double *dl, objective_stats *st, const double *l, const double *lref,
                  const unsigned char *labels, int n, double beta, double lambda_d,
                  double lambda_u) {
    stats_clear(st);
    if (n <= 0) return mapo_error("Diffusion-KTO loss needs at least one example (got %d)", n);
    if (!isfinite(beta) || !isfinite(lambda_d) || !isfinite(lambda_u))
        return mapo_error("Diffusion-KTO loss: bad hyper-parameters (beta %g, lambda_d %g, "
                          "lambda_u %g)",
                          beta, lambda_d, lambda_u);
    for (int i = 0; i < n; i++) {
        const char *kind = labels[i] ? "desirable" : "undesirable";
        if (!isfinite(l[i]))
            return mapo_error("Diffusion-KTO loss is not finite: per-sample error of example %d "
                              "(%s) is %g",
                              i, kind, l[i]);
        if (!isfinite(lref[i]))
            return mapo_error("Diffusion-KTO loss is not finite: reference error of example %d "
                              "(%s) is %g",
                              i, kind, lref[i]);
    }
    const double inv_n = 1.0 / n;
    double sum_g = 0;
    for (int i = 0; i < n; i++) sum_g += lref[i] - l[i];
    const double kl = fmax(sum_g * inv_n, 0.0);
    double sum_loss = 0, sum_w = 0, sum_l = 0, sum_rw = 0, sum_rl = 0, sum_dp = 0, sum_dn = 0;
    int n_pos = 0, acc = 0;
    for (int i = 0; i < n; i++) {
        const int pos = labels[i] != 0;
        const double sgn = pos ? 1.0 : -1.0, w = pos ? lambda_d : lambda_u;
        const double d = (lref[i] - l[i]) - kl;
        const double z = sgn * beta * d;
        const double e = exp(-fabs(z));
        sum_loss += w * sigmoid_neg(z);
        acc += z > 0;
        /* d/dl_i of w sigmoid(-z_i)/n = w/n * sigmoid(z) sigmoid(-z) * sgn * beta */
        dl[i] = w * inv_n * (e / ((1.0 + e) * (1.0 + e))) * sgn * beta;
        if (pos) {
            n_pos++;
            sum_w += l[i];
            sum_rw += lref[i];
            sum_dp += d;
        } else {
            sum_l += l[i];
            sum_rl += lref[i];
            sum_dn += d;
        }
    }
    const int n_neg = n - n_pos;
    st->loss = sum_loss * inv_n;
    st->margin = kl;
    st->implicit_acc = (double)acc / n;
    if (n_pos) {
        st->err_w = sum_w / n_pos;
        st->ref_err_w = sum_rw / n_pos;
        st->win_score = sum_dp / n_pos;
    }
    if (n_neg) {
        st->err_l = sum_l / n_neg;
        st->ref_err_l = sum_rl / n_neg;
        st->lose_score = sum_dn / n_neg;
    }
    if (!isfinite(st->loss) || !isfinite(st->err_w) || !isfinite(st->err_l) ||
        !isfinite(st->ref_err_w) || !isfinite(st->ref_err_l) || !isfinite(kl))
        return mapo_error("Diffusion-KTO loss is not finite (loss %g, kl %g)", st->loss, kl);
    for (int i = 0; i < n; i++)
        if (!isfinite(dl[i]))
            return mapo_error("Diffusion-KTO loss gradient is not finite: d loss / d error of "
                              "example %d (%s) is %g",
                              i, labels[i] ? "desirable" : "undesirable", dl[i]);
    return 0;
}
