/* optim.c -- AdamW as torch.optim.AdamW(foreach=False, fused=False), clip_grad_norm_ as
 * torch.nn.utils.clip_grad_norm_, LR multipliers as diffusers.optimization.get_scheduler.
 *
 * AdamW mirrors torch's _single_tensor_adam (decoupled weight decay) op by op: the Python
 * scalars (1 - lr*wd, bias corrections, step size) are doubles, rounded to float32 where
 * torch hands them to a float32 kernel, and the tensor math is float32:
 *     p   = p * f32(1 - lr*wd)                             (mul_, skipped when wd == 0)
 *     m   = lerp(m, g, f32(1 - b1))                        (lerp_)
 *     v   = fma(f32(1 - b2) * g, g, v * f32(b2))           (mul_, addcmul_)
 *     den = sqrt(v) / f32(sqrt(1 - b2^step)) + f32(eps)    (sqrt, div, add_)
 *     p   = p + (f32(-lr / (1 - b1^step)) * m) / den       (addcdiv_)
 * torch's CPU lerp is vec::fmadd(w, g - m, m) (for w >= 0.5: fmadd(w - 1, g - m, g)), and
 * its addcmul is compiled with FMA contraction in the AVX2/AVX-512 kernels that every
 * current x86 build dispatches to; the fused multiply-adds are reproduced here in double
 * (the float product is exact in double; the double sum is rounded once more to float,
 * which differs from a true fmaf only when it lands exactly on a float tie). The one step
 * not reproducible bit for bit is torch's float32 sqrt, which goes through MKL and is off
 * by one ulp from the correctly rounded value for about a fifth of the inputs; sqrtf here
 * is correctly rounded. tests/test_optim.c measures the remaining difference. */
#include "mapo/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"

#include "adamw_update.h"

/* adamw_step on g * gcoef; gz (g itself, or NULL) zeroed after each gradient is read */
static void adamw_core(float *p, const float *g, float *m, float *v, size_t n, int64_t step,
                       double lr, const adamw_config *c, float gcoef, float *gz) {
    const double stepd = (double)step; /* torch keeps step in a float32 tensor: exact */
    const double bc1 = 1.0 - pow(c->beta1, stepd);
    const double bc2 = 1.0 - pow(c->beta2, stepd);
    const double step_size = lr / bc1;
    const double bc2_sqrt = pow(bc2, 0.5); /* Python's bias_correction2 ** 0.5 */
    adamw_k k;
    k.decay = c->weight_decay != 0 ? (float)(1.0 - lr * c->weight_decay) : 1.0f;
    k.w1 = (float)(1.0 - c->beta1);
    k.w1_small = fabsf(k.w1) < 0.5f;
    k.w1m1 = k.w1 - 1.0f;
    k.b2 = (float)c->beta2, k.w2 = (float)(1.0 - c->beta2);
    k.bc2s = (float)bc2_sqrt, k.epsf = (float)c->eps, k.neg_ss = (float)(-step_size);
    k.gcoef = gcoef;
    const long long nn = (long long)n, chunk = 16384;
    const long long nc = (nn + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (nn > 65536)
    for (long long t = 0; t < nc; t++)
        adamw_update_range(&k, p, g, m, v, t * chunk,
                           t * chunk + chunk < nn ? t * chunk + chunk : nn, gz);
}

void adamw_step(float *p, const float *g, float *m, float *v, size_t n, int64_t step,
                double lr, const adamw_config *c) {
    adamw_core(p, g, m, v, n, step, lr, c, 1.0f, NULL);
}

void adamw_step_clip_zero(float *p, float *g, float *m, float *v, size_t n, int64_t step,
                          double lr, const adamw_config *c, float gcoef) {
    adamw_core(p, g, m, v, n, step, lr, c, gcoef, g);
}

/* Sum of squares in double over fixed chunks, the chunk sums added in order: the result
   does not depend on the number of threads. */
#define SQ_CHUNK 65536
/* the chunk sums: in index order, or (lanes) in vector lanes combined at the chunk's end */
static double sq_sum(const float *g, size_t a, size_t b, int lanes) {
    double s = 0;
    if (lanes) {
#pragma omp simd reduction(+ : s)
        for (size_t i = a; i < b; i++) s += (double)g[i] * (double)g[i];
    } else {
        for (size_t i = a; i < b; i++) s += (double)g[i] * (double)g[i];
    }
    return s;
}
static double sq_norm(const float *g, size_t n, int lanes) {
    const long long nc = (long long)((n + SQ_CHUNK - 1) / SQ_CHUNK);
    if (nc <= 1) return sq_sum(g, 0, n, lanes);
    double *part = xmalloc((size_t)nc * sizeof(double));
#pragma omp parallel for schedule(static)
    for (long long k = 0; k < nc; k++) {
        const size_t a = (size_t)k * SQ_CHUNK, b = a + SQ_CHUNK < n ? a + SQ_CHUNK : n;
        part[k] = sq_sum(g, a, b, lanes);
    }
    double s = 0;
    for (long long k = 0; k < nc; k++) s += part[k];
    free(part);
    return s;
}
double grad_sq_norm(const float *g, size_t n) { return sq_norm(g, n, 0); }
double grad_sq_norm_lanes(const float *g, size_t n) { return sq_norm(g, n, 1); }

float clip_grad_coef(double total_norm, double max_norm) {
    /* torch: clip_coef = max_norm / (total_norm + 1e-6) on a float32 tensor, where
       scalar / tensor is tensor.reciprocal() * scalar; then clamp(max=1.0). */
    const float t = (float)total_norm + 1e-6f;
    const float coef = (1.0f / t) * (float)max_norm;
    return coef > 1.0f ? 1.0f : coef; /* a NaN stays NaN, as torch.clamp */
}

void grad_scale(float *g, size_t n, float coef) {
    if (coef == 1.0f) return; /* torch multiplies by 1.0 too: the same numbers */
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (nn > 65536)
    for (long long i = 0; i < nn; i++) g[i] = g[i] * coef;
}

double clip_grad_norm(float *g, size_t n, double max_norm) {
    const double total = sqrt(grad_sq_norm(g, n));
    grad_scale(g, n, clip_grad_coef(total, max_norm));
    return total;
}

int lr_schedule_parse(const char *s, lr_schedule *out) {
    if (!strcmp(s, "constant")) *out = LR_CONSTANT;
    else if (!strcmp(s, "constant_with_warmup")) *out = LR_CONSTANT_WITH_WARMUP;
    else if (!strcmp(s, "linear")) *out = LR_LINEAR;
    else if (!strcmp(s, "cosine")) *out = LR_COSINE;
    else if (!strcmp(s, "cosine_with_restarts")) *out = LR_COSINE_WITH_RESTARTS;
    else if (!strcmp(s, "polynomial")) *out = LR_POLYNOMIAL;
    else
        return mapo_error("unknown lr scheduler '%s' (expected constant, constant_with_warmup, "
                          "linear, cosine, cosine_with_restarts or polynomial)", s);
    return 0;
}

const char *lr_schedule_name(lr_schedule s) {
    switch (s) {
    case LR_CONSTANT: return "constant";
    case LR_CONSTANT_WITH_WARMUP: return "constant_with_warmup";
    case LR_LINEAR: return "linear";
    case LR_COSINE: return "cosine";
    case LR_COSINE_WITH_RESTARTS: return "cosine_with_restarts";
    case LR_POLYNOMIAL: return "polynomial";
    }
    return "?";
}

double lr_lambda(lr_schedule s, int64_t step, int64_t warmup, int64_t total) {
    return lr_lambda_ex(s, step, warmup, total, 1, 1.0, 1.0);
}

/* The lr_lambda closures of diffusers.optimization, written with the same operations. */
double lr_lambda_ex(lr_schedule s, int64_t step, int64_t warmup, int64_t total, int num_cycles,
                    double power, double lr_init) {
    const double cur = (double)step;
    switch (s) {
    case LR_CONSTANT: return 1.0;
    case LR_CONSTANT_WITH_WARMUP:
        if (step < warmup) return cur / fmax(1.0, (double)warmup);
        return 1.0;
    case LR_LINEAR: {
        if (step < warmup) return 1.0 * cur / (double)(warmup > 1 ? warmup : 1);
        const int64_t span = total - warmup > 1 ? total - warmup : 1;
        const double progress = (double)(total - step) / (double)span;
        return 0.0 + (1.0 - 0.0) * fmax(0.0, progress);
    }
    case LR_COSINE: {
        if (step < warmup) return cur / (double)(warmup > 1 ? warmup : 1);
        const int64_t span = total - warmup > 1 ? total - warmup : 1;
        const double progress = (double)(step - warmup) / (double)span;
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
    }
    case LR_COSINE_WITH_RESTARTS: {
        if (step < warmup) return cur / (double)(warmup > 1 ? warmup : 1);
        const int64_t span = total - warmup > 1 ? total - warmup : 1;
        const double progress = (double)(step - warmup) / (double)span;
        if (progress >= 1.0) return 0.0;
        /* Python's float %: the result takes the divisor's sign (here >= 0 throughout) */
        const double ph = fmod((double)num_cycles * progress, 1.0);
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * (ph < 0 ? ph + 1.0 : ph))));
    }
    case LR_POLYNOMIAL: {
        const double lr_end = LR_POLYNOMIAL_END;
        if (step < warmup) return cur / (double)(warmup > 1 ? warmup : 1);
        if (step > total) return lr_end / lr_init;
        const double range = lr_init - lr_end;
        const int64_t decay_steps = total - warmup;
        /* diffusers divides by decay_steps unguarded: 0 only when step == total == warmup,
           where Python raises; a run never gets there (its steps are 0 .. total - 1, and
           steps below warmup take the branch above) */
        const double pct = 1.0 - (double)(step - warmup) / (double)decay_steps;
        return (range * pow(pct, power) + lr_end) / lr_init;
    }
    }
    return 1.0;
}
