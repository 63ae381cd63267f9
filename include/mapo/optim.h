/* optim.h -- AdamW equal to torch.optim.AdamW (foreach=False), gradient clipping equal
 * to torch.nn.utils.clip_grad_norm_, and the LR schedules of diffusers.optimization. */
#ifndef MAPO_OPTIM_H
#define MAPO_OPTIM_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double beta1, beta2, eps, weight_decay;
} adamw_config;

/* One AdamW step on n parameters; step is 1-based (the step count after increment).
   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
   p -= (lr / (1-b1^step)) * m / (sqrt(v)/sqrt(1-b2^step) + eps)   (float32 math as torch) */
void adamw_step(float *p, const float *g, float *m, float *v, size_t n, int64_t step,
                double lr, const adamw_config *c);
/* The same step on gradients g * gcoef (as grad_scale(g, n, gcoef) then adamw_step: the same
   bits), zeroing g as it goes (params_zero_grad's job): clipping, the step and the zeroing in
   one pass over the parameters instead of three. */
void adamw_step_clip_zero(float *p, float *g, float *m, float *v, size_t n, int64_t step,
                          double lr, const adamw_config *c, float gcoef);

/* Sum of squares of a gradient vector (the squared L2 norm), accumulated in double over
   fixed chunks: the same number whatever the thread count. */
double grad_sq_norm(const float *g, size_t n);
/* The same with each chunk's sum in vector lanes: several times faster, equal up to double
   rounding, still independent of the thread count; used by bf16 runs (whose results are not
   bound to the float32 path's bits). */
double grad_sq_norm_lanes(const float *g, size_t n);
/* clip_grad_norm_: total = sqrt(sum of squares over all); coef = max_norm/(total+1e-6);
   if coef < 1 scale g by coef. Returns total norm. */
double clip_grad_norm(float *g, size_t n, double max_norm);
/* The two halves of clip_grad_norm, for gradients held in several buffers:
   coef = min(1, f32(1/(f32(total) + 1e-6)) * f32(max_norm)) as torch computes it in float32
   (NaN stays NaN), and g *= coef (nothing to do when coef == 1). */
float clip_grad_coef(double total_norm, double max_norm);
void grad_scale(float *g, size_t n, float coef);

typedef enum {
    LR_CONSTANT = 0, LR_CONSTANT_WITH_WARMUP, LR_LINEAR, LR_COSINE, LR_COSINE_WITH_RESTARTS,
    LR_POLYNOMIAL
} lr_schedule;
/* parse "constant" | "constant_with_warmup" | "linear" | "cosine" | "cosine_with_restarts" |
   "polynomial"; -1 if unknown */
int lr_schedule_parse(const char *s, lr_schedule *out);
const char *lr_schedule_name(lr_schedule s);
/* multiplier for optimizer step `step` (0-based, the step about to be taken), as the
   LambdaLR of diffusers.optimization.get_scheduler(name, num_cycles, power) builds it: cosine
   with num_cycles 0.5; cosine_with_restarts with num_cycles hard restarts; polynomial decay
   from lr_init to lr_end = 1e-7 with exponent power (needs lr_init > 1e-7). */
double lr_lambda_ex(lr_schedule s, int64_t step, int64_t warmup, int64_t total, int num_cycles,
                    double power, double lr_init);
/* lr_lambda_ex with num_cycles 1, power 1, lr_init 1 */
double lr_lambda(lr_schedule s, int64_t step, int64_t warmup, int64_t total);
/* the polynomial schedule's end learning rate (diffusers' default lr_end) */
#define LR_POLYNOMIAL_END 1e-7

#endif
