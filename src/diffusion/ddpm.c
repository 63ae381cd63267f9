/* ddpm.c -- the training side of diffusers' DDPMScheduler, in float32 as torch computes it.
 *
 *   betas  "linear":        torch.linspace(beta_start, beta_end, T, dtype=float32)
 *          "scaled_linear": torch.linspace(beta_start**0.5, beta_end**0.5, T, float32) ** 2
 *   alphas = 1 - betas;  alphas_cumprod = torch.cumprod(alphas, 0)
 * torch's CPU linspace (RangeFactoriesKernel.cpp) computes, in float32,
 *   step = (end - start) / (T - 1);  v[i] = start + step*i  for i < T/2,
 *                                    v[i] = end - step*(T-1-i) otherwise,
 * and its AVX2/AVX-512 kernels (what every current x86 build runs) contract both into a
 * fused multiply-add; fmaf reproduces that bit for bit. torch's CPU cumprod accumulates a
 * float32 tensor in double and rounds each partial product to float32; so does this.
 * add_noise / get_velocity: sqrt_alpha_prod = abar[t] ** 0.5 (float32 sqrt),
 * sqrt_one_minus_alpha_prod = (1 - abar[t]) ** 0.5, and separately rounded float32
 * products and sum (this file is compiled as ISO C, so no contraction). */
#include "mapo/ddpm.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"

/* torch.linspace(start, end, n, dtype=float32) on an AVX2 / AVX-512 CPU */
void linspace_f32(float *out, double start_d, double end_d, int n) {
    const float start = (float)start_d, end = (float)end_d;
    if (n == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(n - 1);
    const int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

int ddpm_init(ddpm_schedule *s, int T, double beta_start, double beta_end,
              const char *beta_schedule, const char *prediction) {
    s->alphas_cumprod = NULL;
    s->num_train_timesteps = 0;
    s->pred = PRED_EPSILON;
    if (T < 1 || T > 1000000)
        return mapo_error("num_train_timesteps %d is out of range (1..1000000)", T);
    if (!isfinite(beta_start) || !isfinite(beta_end) || beta_start < 0 || beta_end < 0 ||
        beta_start >= 1 || beta_end >= 1)
        return mapo_error("beta_start %g / beta_end %g: betas must lie in [0, 1)", beta_start,
                          beta_end);
    int scaled;
    if (!strcmp(beta_schedule, "linear")) scaled = 0;
    else if (!strcmp(beta_schedule, "scaled_linear")) scaled = 1;
    else
        return mapo_error("beta_schedule '%s' is not supported (expected linear or "
                          "scaled_linear)", beta_schedule);
    if (!strcmp(prediction, "epsilon")) s->pred = PRED_EPSILON;
    else if (!strcmp(prediction, "v_prediction")) s->pred = PRED_V;
    else
        return mapo_error("prediction_type '%s' is not supported (expected epsilon or "
                          "v_prediction)", prediction);

    float *b = xmalloc((size_t)T * sizeof(float));
    if (scaled) {
        /* Python's beta ** 0.5 is pow(beta, 0.5) in double; then ** 2 on float32 is x*x */
        linspace_f32(b, pow(beta_start, 0.5), pow(beta_end, 0.5), T);
        for (int i = 0; i < T; i++) b[i] = b[i] * b[i];
    } else {
        linspace_f32(b, beta_start, beta_end, T);
    }
    s->alphas_cumprod = xmalloc((size_t)T * sizeof(float));
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        const float alpha = 1.0f - b[i];
        acc *= (double)alpha;
        s->alphas_cumprod[i] = (float)acc;
    }
    free(b);
    s->num_train_timesteps = T;
    return 0;
}

void ddpm_default(ddpm_schedule *s) {
    if (ddpm_init(s, 1000, 0.00085, 0.012, "scaled_linear", "epsilon")) abort();
}

void ddpm_free(ddpm_schedule *s) {
    free(s->alphas_cumprod);
    s->alphas_cumprod = NULL;
    s->num_train_timesteps = 0;
}

/* Keys that only matter for sampling (or are bookkeeping): accepted and ignored. */
static const char *const k_ignored[] = {
    "_class_name", "_diffusers_version", "_name_or_path", "clip_sample", "clip_sample_range",
    "set_alpha_to_one", "steps_offset", "skip_prk_steps", "timestep_spacing", "variance_type",
    "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "interpolation_type",
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
    "sigma_max", "timestep_type", "final_sigmas_type", "solver_order", "solver_type",
    "algorithm_type", "lower_order_final", "euler_at_final", "use_lu_lambdas",
    "lambda_min_clipped", "predict_x0", "disable_corrector",
    "solver_p", "use_flow_sigmas", "flow_shift", "eta", "s_noise", NULL};

static int is_ignored(const char *k) {
    for (int i = 0; k_ignored[i]; i++)
        if (!strcmp(k, k_ignored[i])) return 1;
    return 0;
}

int ddpm_from_config(ddpm_schedule *s, const char *path) {
    s->alphas_cumprod = NULL;
    s->num_train_timesteps = 0;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_cannot_open_file)
            return mapo_error("%s: cannot read the scheduler config: %s", path, je.text);
        return mapo_error("%s: not valid JSON (line %d: %s)", path, je.line, je.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return mapo_error("%s: the scheduler config must be a JSON object", path);
    }
    /* DDPMScheduler's defaults for absent keys, as diffusers' from_config fills them */
    int T = 1000;
    double beta_start = 0.0001, beta_end = 0.02;
    char schedule[64] = "linear", pred[64] = "epsilon";
    int rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "num_train_timesteps")) {
            if (!json_is_integer(val) || json_integer_value(val) < 1 ||
                json_integer_value(val) > 1000000) {
                rc = mapo_error("%s: num_train_timesteps must be an integer in 1..1000000",
                                path);
                break;
            }
            T = (int)json_integer_value(val);
        } else if (!strcmp(key, "beta_start") || !strcmp(key, "beta_end")) {
            if (!json_is_number(val)) {
                rc = mapo_error("%s: %s must be a number", path, key);
                break;
            }
            if (!strcmp(key, "beta_start")) beta_start = json_number_value(val);
            else beta_end = json_number_value(val);
        } else if (!strcmp(key, "beta_schedule") || !strcmp(key, "prediction_type")) {
            const int is_sched = key[0] == 'b';
            const char *v = json_string_value(val);
            if (!v) {
                rc = mapo_error("%s: %s must be a string", path, key);
                break;
            }
            if (is_sched ? strcmp(v, "linear") && strcmp(v, "scaled_linear")
                         : strcmp(v, "epsilon") && strcmp(v, "v_prediction")) {
                rc = mapo_error("%s: %s '%s' is not supported (expected %s)", path, key, v,
                                is_sched ? "linear or scaled_linear"
                                         : "epsilon or v_prediction");
                break;
            }
            snprintf(is_sched ? schedule : pred, 64, "%s", v);
        } else if (!strcmp(key, "trained_betas")) {
            if (!json_is_null(val)) {
                rc = mapo_error("%s: trained_betas must be null (explicit beta lists are not "
                                "supported)", path);
                break;
            }
        } else if (!strcmp(key, "rescale_betas_zero_snr")) {
            if (!json_is_false(val) && !json_is_null(val)) {
                rc = mapo_error("%s: rescale_betas_zero_snr must be false (zero-terminal-SNR "
                                "rescaling is not supported)", path);
                break;
            }
        } else if (!is_ignored(key)) {
            rc = mapo_error("%s: unknown key '%s' in the scheduler config (mapo trains with "
                            "DDPM noise: num_train_timesteps, beta_start, beta_end, "
                            "beta_schedule, prediction_type)", path, key);
            break;
        }
    }
    json_decref(root);
    if (rc) return -1;
    if (ddpm_init(s, T, beta_start, beta_end, schedule, pred))
        return mapo_error_prefix("%s", path);
    return 0;
}

void ddpm_add_noise(const ddpm_schedule *s, float *xt, const float *x0, const float *eps,
                    size_t n, int t) {
    const float abar = s->alphas_cumprod[t];
    const float sa = sqrtf(abar), sb = sqrtf(1.0f - abar);
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (nn > 262144)
    for (long long i = 0; i < nn; i++) {
        const float u = sa * x0[i], w = sb * eps[i];
        xt[i] = u + w;
    }
}

void ddpm_target(const ddpm_schedule *s, float *target, const float *x0, const float *eps,
                 size_t n, int t) {
    if (s->pred == PRED_EPSILON) {
        if (target != eps) memcpy(target, eps, n * sizeof(float));
        return;
    }
    const float abar = s->alphas_cumprod[t];
    const float sa = sqrtf(abar), sb = sqrtf(1.0f - abar);
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (nn > 262144)
    for (long long i = 0; i < nn; i++) {
        const float u = sa * eps[i], w = sb * x0[i];
        target[i] = u - w;
    }
}

int ddpm_from_model_dir(ddpm_schedule *s, const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    if (mapo_is_file(p)) return ddpm_from_config(s, p);
    snprintf(p, sizeof p, "%s/../scheduler/scheduler_config.json", dir);
    if (mapo_is_file(p)) return ddpm_from_config(s, p);
    ddpm_default(s);
    return 0;
}
