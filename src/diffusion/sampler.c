/* sampler.c -- diffusers' DDIMScheduler and EulerDiscreteScheduler (inference, diffusers 0.42)
 * and classifier-free guidance. See sampler.h for what is supported.
 *
 * Precision: diffusers computes the schedule in a mix of torch float32 and numpy float64,
 * and this file repeats each operation in the same type and order:
 *   betas           torch float32 (linspace as torch's AVX2/AVX-512 kernels: fused
 *                   multiply-add; squaredcos_cap_v2 in Python double, then float32);
 *   alphas_cumprod  torch cumprod of float32: double accumulator, each output rounded;
 *   zero-SNR        rescale_zero_terminal_snr in float32 tensor operations;
 *   timesteps       numpy float64 (arange / linspace / round-half-even), then int64 (DDIM)
 *                   or float32 (Euler);
 *   Euler sigmas    sqrt((1 - abar) / abar) in float32, np.interp in float64 on those
 *                   float32 values, Karras / exponential sigmas and _sigma_to_t in float64
 *                   (log_sigmas in float32, as np.log of a float32 array), cast to float32;
 *   steps           torch float32 scalar (0-dim tensor) and element-wise operations, each
 *                   rounded separately (this file is ISO C: no contraction into FMAs).
 * What remains are last-ulp differences of library functions: torch's float32 sqrt (MKL
 * vsSqrt on x86) is not correctly rounded (one ulp off sqrtf for ~17% of inputs), and
 * numpy's SIMD log / exp / pow may differ from glibc's in the last ulp. */
#include "mapo/sampler.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ddpm.h"

enum { K_DDIM = 0, K_EULER = 1 };
enum { P_EPS = 0, P_V, P_SAMPLE };
enum { SP_LEADING = 0, SP_TRAILING, SP_LINSPACE };
enum { B_LINEAR = 0, B_SCALED, B_COSINE };

struct sampler {
    int kind, pred, T, n;
    float *abar;        /* [T] alphas_cumprod (DDIM: as diffusers; Euler: zero-SNR tail 2^-24) */
    float final_abar;   /* DDIM: final_alpha_cumprod */
    int ratio;          /* DDIM: num_train_timesteps // num_inference_steps */
    int *t_int;         /* DDIM [n] */
    double *t_val;      /* [n] the timestep fed to the UNet */
    float *sigmas;      /* Euler [n + 1] */
    float init_sigma;
    int clip;
    float clip_range;
    float eta;
};

/* ------------------------------------------------------------------ configuration */
typedef struct {
    int T;
    double b0, b1;
    int sched, pred, spacing;
    long long offset;
    int zsnr;
    /* DDIM */
    int clip, alpha_one;
    double clip_range;
    /* Euler */
    int karras, expo, has_smin, has_smax, continuous, final_min;
    double smin, smax;
} cfg;

static void cfg_defaults(cfg *c, int kind) {
    memset(c, 0, sizeof *c);
    c->T = 1000;
    c->b0 = 0.0001;
    c->b1 = 0.02;
    c->sched = B_LINEAR;
    c->pred = P_EPS;
    c->spacing = kind == K_DDIM ? SP_LEADING : SP_LINSPACE;
    c->offset = 0;
    c->clip = 1;
    c->alpha_one = 1;
    c->clip_range = 1.0;
}

/* booleans: true / false, and null (diffusers treats None as false) */
static int get_bool(const char *src, const char *key, json_t *v, int *out) {
    if (json_is_true(v)) *out = 1;
    else if (json_is_false(v) || json_is_null(v)) *out = 0;
    else return mapo_error("%s: %s must be true or false", src, key);
    return 0;
}

static int get_choice(const char *src, const char *key, json_t *v, const char *const *names,
                      const char *expected, int *out) {
    const char *s = json_string_value(v);
    if (!s) return mapo_error("%s: %s must be a string (%s)", src, key, expected);
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    return mapo_error("%s: %s '%.80s' is not supported (expected %s)", src, key, s, expected);
}

static int get_finite(const char *src, const char *key, json_t *v, double *out) {
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return mapo_error("%s: %s must be a finite number", src, key);
    *out = json_number_value(v);
    return 0;
}

static int parse_cfg(cfg *c, json_t *root, const char *src, int kind) {
    cfg_defaults(c, kind);
    if (!json_is_object(root))
        return mapo_error("%s: the scheduler config must be a JSON object", src);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int b = 0;
        if (!strcmp(key, "num_train_timesteps")) {
            if (!json_is_integer(v) || json_integer_value(v) < 2 ||
                json_integer_value(v) > 1000000)
                return mapo_error("%s: num_train_timesteps must be an integer in 2..1000000",
                                  src);
            c->T = (int)json_integer_value(v);
        } else if (!strcmp(key, "beta_start") || !strcmp(key, "beta_end")) {
            double x = 0;
            if (get_finite(src, key, v, &x)) return -1;
            if (x < 0 || x >= 1)
                return mapo_error("%s: %s %g must lie in [0, 1)", src, key, x);
            if (!strcmp(key, "beta_start")) c->b0 = x;
            else c->b1 = x;
        } else if (!strcmp(key, "beta_schedule")) {
            static const char *const n[] = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                            NULL};
            if (get_choice(src, key, v, n, "linear, scaled_linear or squaredcos_cap_v2",
                           &c->sched))
                return -1;
        } else if (!strcmp(key, "trained_betas")) {
            if (!json_is_null(v))
                return mapo_error("%s: trained_betas must be null (explicit beta lists are "
                                  "not supported)", src);
        } else if (!strcmp(key, "prediction_type")) {
            /* Euler also takes "original_sample" as a synonym of "sample" */
            static const char *const n[] = {"epsilon", "v_prediction", "sample",
                                            "original_sample", NULL};
            int p = 0;
            if (get_choice(src, key, v, n,
                           kind == K_DDIM ? "epsilon, v_prediction or sample"
                                          : "epsilon, v_prediction, sample or original_sample",
                           &p))
                return -1;
            if (p == 3 && kind == K_DDIM)
                return mapo_error("%s: prediction_type 'original_sample' is not supported by "
                                  "DDIM (expected epsilon, v_prediction or sample)", src);
            c->pred = p == 3 ? P_SAMPLE : p;
        } else if (!strcmp(key, "timestep_spacing")) {
            static const char *const n[] = {"leading", "trailing", "linspace", NULL};
            if (get_choice(src, key, v, n, "leading, trailing or linspace", &c->spacing))
                return -1;
        } else if (!strcmp(key, "steps_offset")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 1000000)
                return mapo_error("%s: steps_offset must be an integer in 0..1000000", src);
            c->offset = json_integer_value(v);
        } else if (!strcmp(key, "rescale_betas_zero_snr")) {
            if (get_bool(src, key, v, &c->zsnr)) return -1;
        } else if (kind == K_DDIM) {
            if (!strcmp(key, "clip_sample")) {
                if (get_bool(src, key, v, &c->clip)) return -1;
            } else if (!strcmp(key, "set_alpha_to_one")) {
                if (get_bool(src, key, v, &c->alpha_one)) return -1;
            } else if (!strcmp(key, "clip_sample_range")) {
                if (get_finite(src, key, v, &c->clip_range)) return -1;
                if (c->clip_range < 0 || c->clip_range > 3.4e38)
                    return mapo_error("%s: clip_sample_range %g must be >= 0", src,
                                      c->clip_range);
            } else if (!strcmp(key, "thresholding")) {
                if (get_bool(src, key, v, &b)) return -1;
                if (b)
                    return mapo_error("%s: thresholding true (dynamic thresholding) is not "
                                      "supported", src);
            }
            /* dynamic_thresholding_ratio, sample_max_value: only used with thresholding;
               other keys: unknown to DDIMScheduler, ignored as diffusers ignores them */
        } else {
            if (!strcmp(key, "interpolation_type")) {
                static const char *const n[] = {"linear", "log_linear", NULL};
                int it = 0;
                if (get_choice(src, key, v, n, "linear", &it)) return -1;
                if (it != 0)
                    return mapo_error("%s: interpolation_type 'log_linear' is not supported "
                                      "(expected linear)", src);
            } else if (!strcmp(key, "use_karras_sigmas")) {
                if (get_bool(src, key, v, &c->karras)) return -1;
            } else if (!strcmp(key, "use_exponential_sigmas")) {
                if (get_bool(src, key, v, &c->expo)) return -1;
            } else if (!strcmp(key, "use_beta_sigmas")) {
                if (get_bool(src, key, v, &b)) return -1;
                if (b) return mapo_error("%s: use_beta_sigmas true is not supported", src);
            } else if (!strcmp(key, "sigma_min") || !strcmp(key, "sigma_max")) {
                double x = 0;
                if (!json_is_null(v)) {
                    if (get_finite(src, key, v, &x)) return -1;
                    if (!(x > 0)) return mapo_error("%s: %s %g must be > 0", src, key, x);
                }
                if (!strcmp(key, "sigma_min")) {
                    c->has_smin = !json_is_null(v);
                    c->smin = x;
                } else {
                    c->has_smax = !json_is_null(v);
                    c->smax = x;
                }
            } else if (!strcmp(key, "timestep_type")) {
                static const char *const n[] = {"discrete", "continuous", NULL};
                if (get_choice(src, key, v, n, "discrete or continuous", &c->continuous))
                    return -1;
            } else if (!strcmp(key, "final_sigmas_type")) {
                static const char *const n[] = {"zero", "sigma_min", NULL};
                if (get_choice(src, key, v, n, "zero or sigma_min", &c->final_min)) return -1;
            }
        }
    }
    if (kind == K_EULER && c->karras && c->expo)
        return mapo_error("%s: only one of use_karras_sigmas and use_exponential_sigmas can "
                          "be true", src);
    return 0;
}

/* ------------------------------------------------------------------ schedule */
/* diffusers' betas_for_alpha_bar(T) with the cosine transform, in Python double */
static double cos_abar(double t) {
    const double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

/* torch.cumprod of a float32 tensor on CPU: double accumulator, outputs rounded */
static void cumprod_f32(float *out, const float *a, int n) {
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        acc *= (double)a[i];
        out[i] = (float)acc;
    }
}

static int build_abar(sampler *s, const cfg *c, const char *src) {
    const int T = c->T;
    float *b = xmalloc((size_t)T * sizeof(float)), *a = xmalloc((size_t)T * sizeof(float));
    if (c->sched == B_LINEAR) {
        linspace_f32(b, c->b0, c->b1, T);
    } else if (c->sched == B_SCALED) {
        linspace_f32(b, pow(c->b0, 0.5), pow(c->b1, 0.5), T);
        for (int i = 0; i < T; i++) b[i] = b[i] * b[i];
    } else {
        for (int i = 0; i < T; i++) {
            const double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            b[i] = (float)fmin(1 - cos_abar(t2) / cos_abar(t1), 0.999);
        }
    }
    s->abar = xmalloc((size_t)T * sizeof(float));
    if (c->zsnr) {
        /* rescale_zero_terminal_snr, float32 tensor ops */
        for (int i = 0; i < T; i++) a[i] = 1.0f - b[i];
        cumprod_f32(s->abar, a, T);
        float *q = s->abar; /* alphas_bar_sqrt, in place */
        for (int i = 0; i < T; i++) q[i] = sqrtf(q[i]);
        const float q0 = q[0], qT = q[T - 1];
        const float k = q0 / (q0 - qT);
        for (int i = 0; i < T; i++) {
            q[i] = q[i] - qT;
            q[i] = q[i] * k;
            q[i] = q[i] * q[i]; /* alphas_bar */
        }
        a[0] = q[0];
        for (int i = 1; i < T; i++) a[i] = q[i] / q[i - 1];
        for (int i = 0; i < T; i++) b[i] = 1.0f - a[i];
    }
    for (int i = 0; i < T; i++) a[i] = 1.0f - b[i];
    cumprod_f32(s->abar, a, T);
    free(a);
    free(b);
    if (!(s->abar[0] < 1.0f))
        return mapo_error("%s: beta_start %g is too small: alphas_cumprod[0] rounds to 1 "
                          "(sigma 0)", src, c->b0);
    for (int i = 0; i < T; i++) {
        const float v = s->abar[i];
        if (!isfinite(v) || v < 0 || v > 1)
            return mapo_error("%s: alphas_cumprod[%d] = %g is not a probability (bad "
                              "betas)", src, i, (double)v);
        if (v == 0 && !(c->zsnr && i == T - 1))
            return mapo_error("%s: alphas_cumprod underflows to 0 at t=%d (betas too large "
                              "for num_train_timesteps %d)", src, i, T);
    }
    if (c->zsnr && s->kind == K_EULER) s->abar[T - 1] = 0x1p-24f;
    return 0;
}

/* np.round(np.arange(T, 0, -T/N)) as numpy computes it: length ceil((0 - T) / delta), value
   [0] = T, [1] = T + delta, then T + i * ((T + delta) - T) (DOUBLE_fill). */
static int trailing_points(double *out, int T, int N) {
    const double delta = -((double)T / (double)N);
    const double len_d = ceil((0.0 - (double)T) / delta);
    if (len_d != (double)N) return -1;
    const double d2 = ((double)T + delta) - (double)T;
    for (int i = 0; i < N; i++)
        out[i] = rint(i == 0 ? (double)T : i == 1 ? (double)T + delta : (double)T + i * d2);
    return 0;
}

/* np.linspace(0, stop, N) (float64) */
static double linspace_at(double start, double stop, int N, int i) {
    if (N == 1) return start;
    if (i == N - 1) return stop;
    const double step = (stop - start) / (double)(N - 1);
    return (double)i * step + start;
}

/* np.interp(x, arange(T), fp) with fp float32 values, in float64 */
static double interp(double x, const float *fp, int T) {
    if (isnan(x)) return x;
    if (x < 0) return fp[0];
    if (x >= (double)(T - 1)) return fp[T - 1];
    const int j = (int)floor(x);
    if ((double)j == x) return fp[j];
    const double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    double r = slope * (x - (double)j) + (double)fp[j];
    if (isnan(r)) {
        r = slope * (x - (double)(j + 1)) + (double)fp[j + 1];
        if (isnan(r) && fp[j] == fp[j + 1]) r = fp[j];
    }
    return r;
}

/* EulerDiscreteScheduler._sigma_to_t (float64, log_sigmas float32):
 *     dists = log_sigma - log_sigmas;  low = cumsum(dists >= 0).argmax().clip(max=T-2)
 * argmax of the cumulative count is the LAST k with log_sigmas[k] <= log_sigma (0 if none).
 * log_sigmas need not be monotonic (Euler's zero-SNR tail 2^-24 is larger than the
 * alphas_cumprod before it), so that k is found exactly with a binary search on the suffix
 * minima sufmin[k] = min(log_sigmas[k..T-1]), which are non-decreasing: the largest k with
 * sufmin[k] <= log_sigma has log_sigmas[k] <= log_sigma itself. O(log T) per sigma. */
static double sigma_to_t(double sigma, const float *log_sigmas, const float *sufmin, int T) {
    const double ls = log(fmax(sigma, 1e-10));
    int low = 0;
    if ((double)sufmin[0] <= ls) {
        int lo = 0, hi = T - 1; /* sufmin[lo] <= ls; find the largest such index */
        while (lo < hi) {
            const int mid = lo + (hi - lo + 1) / 2;
            if ((double)sufmin[mid] <= ls) lo = mid;
            else hi = mid - 1;
        }
        low = lo;
    }
    if (low > T - 2) low = T - 2;
    const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(lo - hi);
    if (w < 0) w = 0;
    else if (w > 1) w = 1;
    return (1 - w) * low + w * (low + 1);
}

static int build_timesteps(sampler *s, const cfg *c, const char *src) {
    const int T = c->T, N = s->n;
    double *p = xmalloc((size_t)N * sizeof(double)); /* numpy float64 points, descending */
    if (c->spacing == SP_LEADING) {
        for (int k = 0; k < N; k++) p[N - 1 - k] = (double)k * s->ratio;
    } else if (c->spacing == SP_TRAILING) {
        if (trailing_points(p, T, N)) {
            free(p);
            return mapo_error("%s: timestep_spacing trailing with %d steps of %d: numpy's "
                              "arange gives diffusers an extra timestep -1 here (a float "
                              "rounding quirk); choose another num_inference_steps", src, N, T);
        }
    } else {
        for (int k = 0; k < N; k++) {
            const double y = linspace_at(0.0, (double)(T - 1), N, k);
            p[N - 1 - k] = s->kind == K_DDIM ? rint(y) : y;
        }
    }
    s->t_val = xmalloc((size_t)N * sizeof(double));
    if (s->kind == K_DDIM) {
        s->t_int = xmalloc((size_t)N * sizeof(int));
        for (int i = 0; i < N; i++) {
            double t = p[i];
            if (c->spacing == SP_LEADING) t += (double)c->offset;
            else if (c->spacing == SP_TRAILING) t -= 1;
            if (!(t >= 0 && t <= T - 1)) {
                free(p);
                return mapo_error("%s: %d DDIM steps give timestep %.0f, outside 0..%d "
                                  "(steps_offset %lld)", src, N, t, T - 1, c->offset);
            }
            s->t_int[i] = (int)t;
            s->t_val[i] = t;
            if (s->abar[s->t_int[i]] == 0 && c->pred == P_EPS) {
                free(p);
                return mapo_error("%s: prediction_type epsilon cannot step from t=%d, where "
                                  "rescale_betas_zero_snr makes alphas_cumprod 0 (use "
                                  "v_prediction)", src, s->t_int[i]);
            }
        }
    } else {
        for (int i = 0; i < N; i++) {
            float t = (float)p[i];
            if (c->spacing == SP_LEADING) t += (float)c->offset;
            else if (c->spacing == SP_TRAILING) t -= 1.0f;
            s->t_val[i] = t;
        }
    }
    free(p);
    return 0;
}

static int build_sigmas(sampler *s, const cfg *c, const char *src) {
    const int T = c->T, N = s->n;
    float *full = xmalloc((size_t)T * sizeof(float));
    for (int t = 0; t < T; t++) full[t] = sqrtf((1.0f - s->abar[t]) / s->abar[t]);
    double *sg = xmalloc((size_t)N * sizeof(double));
    for (int i = 0; i < N; i++) sg[i] = interp(s->t_val[i], full, T);
    if (c->karras || c->expo) {
        const double smin = c->has_smin ? c->smin : sg[N - 1];
        const double smax = c->has_smax ? c->smax : sg[0];
        if (c->karras) {
            const double rho = 7.0;
            const double lo = pow(smin, 1 / rho), hi = pow(smax, 1 / rho);
            for (int i = 0; i < N; i++)
                sg[i] = pow(hi + linspace_at(0.0, 1.0, N, i) * (lo - hi), rho);
        } else {
            const double l0 = log(smax), l1 = log(smin);
            for (int i = 0; i < N; i++) sg[i] = exp(linspace_at(l0, l1, N, i));
        }
        float *ls = xmalloc((size_t)T * sizeof(float)), *sm = xmalloc((size_t)T * sizeof(float));
        for (int t = 0; t < T; t++) ls[t] = logf(full[t]);
        sm[T - 1] = ls[T - 1];
        for (int t = T - 2; t >= 0; t--) sm[t] = fminf(ls[t], sm[t + 1]);
        for (int i = 0; i < N; i++) s->t_val[i] = (float)sigma_to_t(sg[i], ls, sm, T);
        free(ls);
        free(sm);
    }
    s->sigmas = xmalloc((size_t)(N + 1) * sizeof(float));
    for (int i = 0; i < N; i++) s->sigmas[i] = (float)sg[i];
    s->sigmas[N] = c->final_min ? sqrtf((1.0f - s->abar[0]) / s->abar[0]) : 0.0f;
    free(sg);
    free(full);
    /* every step divides by its sigma; the final one may be 0 */
    float m = 0;
    for (int i = 0; i <= N; i++) {
        const float v = s->sigmas[i];
        if (!isfinite(v) || (i < N ? !(v > 0) : !(v >= 0)) || (i < N && !isfinite(s->t_val[i])))
            return mapo_error("%s: Euler sigma %d is %g (timestep %g): the schedule is "
                              "degenerate", src, i, (double)v, i < N ? s->t_val[i] : 0.0);
        if (v > m) m = v;
    }
    if (c->continuous == 1 && c->pred == P_V)
        for (int i = 0; i < N; i++) s->t_val[i] = 0.25f * logf(s->sigmas[i]);
    s->init_sigma = c->spacing == SP_LEADING ? sqrtf(m * m + 1.0f) : m;
    return 0;
}

static int create_from_json(sampler **out, json_t *root, const char *src, const char *kind,
                            int N) {
    int k;
    if (!kind) return mapo_error("sampler: no kind given (expected ddim or euler)");
    if (!strcmp(kind, "ddim")) k = K_DDIM;
    else if (!strcmp(kind, "euler")) k = K_EULER;
    else return mapo_error("sampler: unknown kind '%.80s' (expected ddim or euler)", kind);
    cfg c;
    if (parse_cfg(&c, root, src, k)) return -1;
    if (N < 1 || N > c.T)
        return mapo_error("%s: num_inference_steps %d must be in 1..num_train_timesteps (%d)",
                          src, N, c.T);
    sampler *s = xcalloc(1, sizeof *s);
    s->kind = k;
    s->pred = c.pred;
    s->T = c.T;
    s->n = N;
    s->ratio = c.T / N;
    s->clip = c.clip;
    s->clip_range = (float)c.clip_range;
    if (build_abar(s, &c, src) || build_timesteps(s, &c, src) ||
        (k == K_EULER && build_sigmas(s, &c, src))) {
        sampler_free(s);
        return -1;
    }
    if (k == K_DDIM) {
        s->final_abar = c.alpha_one ? 1.0f : s->abar[0];
        s->init_sigma = 1.0f;
    }
    *out = s;
    return 0;
}

int sampler_create(sampler **s, const char *path, const char *kind, int N) {
    *s = NULL;
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_cannot_open_file)
            return mapo_error("%s: cannot read the scheduler config: %s", path, je.text);
        return mapo_error("%s: not valid JSON (line %d: %s)", path, je.line, je.text);
    }
    const int rc = create_from_json(s, root, path, kind, N);
    json_decref(root);
    return rc;
}

int sampler_create_from_string(sampler **s, const char *text, const char *source,
                               const char *kind, int N) {
    *s = NULL;
    if (!source) source = "scheduler config";
    if (!text) return mapo_error("%s: no text", source);
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!root) return mapo_error("%s: not valid JSON (line %d: %s)", source, je.line, je.text);
    const int rc = create_from_json(s, root, source, kind, N);
    json_decref(root);
    return rc;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->abar);
    free(s->t_int);
    free(s->t_val);
    free(s->sigmas);
    free(s);
}

/* ------------------------------------------------------------------ queries */
const char *sampler_kind(const sampler *s) { return s->kind == K_DDIM ? "ddim" : "euler"; }
int sampler_num_steps(const sampler *s) { return s->n; }

double sampler_timestep(const sampler *s, int i) {
    return i >= 0 && i < s->n ? s->t_val[i] : NAN;
}

double sampler_sigma(const sampler *s, int i) {
    if (s->kind == K_EULER) return i >= 0 && i <= s->n ? (double)s->sigmas[i] : NAN;
    if (i < 0 || i >= s->n) return NAN;
    const double a = s->abar[s->t_int[i]];
    return a > 0 ? sqrt((1 - a) / a) : INFINITY;
}

double sampler_init_noise_sigma(const sampler *s) { return s->init_sigma; }

void sampler_init_noise(const sampler *s, float *x, int64_t n) {
    const float g = s->init_sigma;
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * g;
}

int sampler_set_eta(sampler *s, double eta) {
    if (!isfinite(eta) || eta < 0 || eta > 1e6)
        return mapo_error("sampler: eta %g must be a finite number >= 0", eta);
    if (s->kind == K_EULER && eta != 0)
        return mapo_error("sampler: eta %g: the Euler sampler has no eta (use ddim)", eta);
    s->eta = (float)eta;
    return 0;
}

/* ------------------------------------------------------------------ stepping */
#define PAR_MIN 262144

void sampler_scale_model_input(const sampler *s, int i, float *x_in, const float *x,
                               int64_t n) {
    if (i < 0 || i >= s->n || n < 0) return;
    if (s->kind == K_DDIM) {
        if (x_in != x) memmove(x_in, x, (size_t)n * sizeof(float));
        return;
    }
    const float sg = s->sigmas[i];
    const float d = sqrtf(sg * sg + 1.0f);
    const long long nn = n;
#pragma omp parallel for schedule(static) if (nn > PAR_MIN)
    for (long long j = 0; j < nn; j++) x_in[j] = x[j] / d;
}

static void step_ddim(const sampler *s, int i, float *x, const float *mo, const float *noise,
                      long long n) {
    const int t = s->t_int[i], prev = t - s->ratio;
    const float at = s->abar[t];
    const float ap = prev >= 0 ? s->abar[prev] : s->final_abar;
    const float bt = 1.0f - at;
    const float sa = sqrtf(at), sb = sqrtf(bt), sap = sqrtf(ap);
    const float bp = 1.0f - ap;
    const float var = (bp / bt) * (1.0f - at / ap);
    const float std = s->eta * sqrtf(var);
    const float cdir = sqrtf((1.0f - ap) - std * std);
    const int pred = s->pred, clip = s->clip, add_noise = s->eta > 0;
    const float r = s->clip_range;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (long long j = 0; j < n; j++) {
        float x0, e;
        const float xs = x[j], m = mo[j];
        if (pred == P_EPS) {
            const float u = sb * m, w = xs - u;
            x0 = w / sa;
            e = m;
        } else if (pred == P_SAMPLE) {
            x0 = m;
            const float u = sa * x0, w = xs - u;
            e = w / sb;
        } else {
            const float u1 = sa * xs, w1 = sb * m;
            x0 = u1 - w1;
            const float u2 = sa * m, w2 = sb * xs;
            e = u2 + w2;
        }
        if (clip) x0 = fminf(fmaxf(x0, -r), r);
        const float dir = cdir * e;
        const float u = sap * x0;
        float y = u + dir;
        if (add_noise) {
            const float z = std * noise[j];
            y = y + z;
        }
        x[j] = y;
    }
}

static void step_euler(const sampler *s, int i, float *x, const float *mo, long long n) {
    const float sg = s->sigmas[i], sh = sg * 1.0f; /* sigma_hat = sigma * (gamma + 1) */
    const float dt = s->sigmas[i + 1] - sh;
    const float c2 = sg * sg + 1.0f;
    const float c1 = -sg / sqrtf(c2);
    const int pred = s->pred;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (long long j = 0; j < n; j++) {
        const float xs = x[j], m = mo[j];
        float x0;
        if (pred == P_EPS) {
            const float u = sh * m;
            x0 = xs - u;
        } else if (pred == P_V) {
            const float u = m * c1, w = xs / c2;
            x0 = u + w;
        } else {
            x0 = m;
        }
        const float dv = xs - x0;
        const float der = dv / sh;
        const float z = der * dt;
        x[j] = xs + z;
    }
}

int sampler_step(sampler *s, int i, float *x, const float *mo, const float *noise, int64_t n) {
    if (!s) return mapo_error("sampler_step: no sampler");
    if (i < 0 || i >= s->n)
        return mapo_error("sampler_step: step %d is outside 0..%d", i, s->n - 1);
    if (n < 0) return mapo_error("sampler_step: negative element count %lld", (long long)n);
    if (n == 0) return 0;
    if (!x || !mo) return mapo_error("sampler_step: NULL sample or model output");
    if (s->kind == K_DDIM) {
        if (s->eta > 0 && !noise)
            return mapo_error("sampler_step: DDIM with eta %g needs noise", (double)s->eta);
        step_ddim(s, i, x, mo, noise, (long long)n);
    } else {
        step_euler(s, i, x, mo, (long long)n);
    }
    return 0;
}

/* ------------------------------------------------------------------ guidance */
void cfg_combine(float *out, const float *uncond, const float *cond, double g, int64_t n) {
    const float gf = (float)g;
    const long long nn = n;
#pragma omp parallel for schedule(static) if (nn > PAR_MIN)
    for (long long j = 0; j < nn; j++) {
        const float u = uncond[j];
        const float d = cond[j] - u;
        const float m = gf * d;
        out[j] = u + m;
    }
}

/* torch.std (correction 1) of float32 values: accumulated in double, rounded */
static float std_f32(const float *x, int64_t n) {
    double mean = 0;
    for (int64_t j = 0; j < n; j++) mean += x[j];
    mean /= (double)n;
    double ss = 0;
    for (int64_t j = 0; j < n; j++) {
        const double d = x[j] - mean;
        ss += d * d;
    }
    return (float)sqrt(ss / (double)(n - 1));
}

int cfg_rescale(float *noise_cfg, const float *cond, double phi, int64_t batch, int64_t per) {
    if (batch < 0 || per < 2)
        return mapo_error("cfg_rescale: need batch >= 0 and at least 2 values per sample "
                          "(got %lld x %lld)", (long long)batch, (long long)per);
    if (!isfinite(phi)) return mapo_error("cfg_rescale: guidance_rescale %g is not finite", phi);
    if (batch > INT64_MAX / per) return mapo_error("cfg_rescale: size overflow");
    if (phi == 0) return 0;
    float *ratio = xmalloc((size_t)(batch > 0 ? batch : 1) * sizeof(float));
    for (int64_t b = 0; b < batch; b++) {
        const float st = std_f32(cond + b * per, per), sc = std_f32(noise_cfg + b * per, per);
        if (!(sc > 0) || !isfinite(st)) {
            free(ratio);
            return mapo_error("cfg_rescale: sample %lld has a guided prediction with no "
                              "spread (std %g) or a non-finite one", (long long)b, (double)sc);
        }
        ratio[b] = st / sc;
    }
    const float pf = (float)phi, qf = (float)(1 - phi);
    for (int64_t b = 0; b < batch; b++) {
        float *y = noise_cfg + b * per;
        const float r = ratio[b];
        for (int64_t j = 0; j < per; j++) {
            const float rs = y[j] * r;
            const float u = pf * rs, w = qf * y[j];
            y[j] = u + w;
        }
    }
    free(ratio);
    return 0;
}
