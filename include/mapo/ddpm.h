/* ddpm.h -- diffusers' DDPMScheduler for training: betas, alphas_cumprod, add_noise,
 * targets (epsilon / v_prediction). Computed in float32 as torch does. */
#ifndef MAPO_DDPM_H
#define MAPO_DDPM_H
#include <stddef.h>

typedef enum { PRED_EPSILON = 0, PRED_V } prediction_type;

typedef struct {
    int num_train_timesteps;
    prediction_type pred;
    float *alphas_cumprod; /* [T] */
} ddpm_schedule;

/* beta_schedule: "linear" | "scaled_linear". prediction: "epsilon" | "v_prediction". */
int ddpm_init(ddpm_schedule *s, int T, double beta_start, double beta_end,
              const char *beta_schedule, const char *prediction);
/* Read scheduler_config.json (keys num_train_timesteps, beta_start, beta_end,
   beta_schedule, prediction_type; others that would change training are refused). */
int ddpm_from_config(ddpm_schedule *s, const char *path);
/* SD defaults: T=1000, scaled_linear 0.00085..0.012, epsilon */
void ddpm_default(ddpm_schedule *s);
/* The training schedule of a model folder: <dir>/scheduler/scheduler_config.json (a pipeline
   folder), else <dir>/../scheduler/scheduler_config.json (its unet/ folder), else the SD
   default (ddpm_default). */
int ddpm_from_model_dir(ddpm_schedule *s, const char *dir);
void ddpm_free(ddpm_schedule *s);
/* torch.linspace(start, end, n, dtype=float32) bit for bit (first half start + i*step, second
   half end - (n-1-i)*step, fused multiply-adds): shared by the training and sampling schedules */
void linspace_f32(float *out, double start, double end, int n);
/* xt = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, n elements */
void ddpm_add_noise(const ddpm_schedule *s, float *xt, const float *x0, const float *eps,
                    size_t n, int t);
/* target = eps (epsilon) or sqrt(abar)*eps - sqrt(1-abar)*x0 (v) */
void ddpm_target(const ddpm_schedule *s, float *target, const float *x0, const float *eps,
                 size_t n, int t);

#endif
