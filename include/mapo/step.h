/* step.h -- one forward + backward of the preference objective on 2B noisy inputs.
 * The objective sees only per-sample errors; this file turns d loss / d l_i into
 * d loss / d pred = d loss / d l_i * 2 (pred_i - target_i) / (C*H*W) and runs the tape. */
#ifndef MAPO_STEP_H
#define MAPO_STEP_H
#include "mapo/objectives.h"
#include "mapo/unet.h"

typedef struct {
    objective_kind kind;
    double beta_mapo, snr_value, beta_dpo;
    double beta_kto, lambda_d_kto, lambda_u_kto; /* Diffusion-KTO: 1000, 1, 1 */
    int num_train_timesteps;
    int unpaired; /* the batch holds single images (an images-only file): plain denoising
                     loss, or Diffusion-KTO on oc->labels */
    /* Diffusion-KTO's labels (1 desirable, 0 undesirable), one per sample of in->B. NULL:
       the batch is paired, [chosen x B, rejected x B], and the chosen half is desirable.
       Set by the trainer for an unpaired batch. */
    const unsigned char *labels;
} objective_cfg;

void objective_cfg_default(objective_cfg *c);
int objective_parse(const char *s, objective_kind *k);
const char *objective_name(objective_kind k);

/* Per-sample mean squared error over C*H*W, accumulated in double. */
void per_sample_mse(double *err, const float *pred, const float *target, int n, int64_t chw);

/* Errors of a model on the batch without recording a tape (reference passes). */
int model_errors(unet *u, const unet_inputs *in, const float *target, double *err);

/* Diffusion-DPO's (and Diffusion-KTO's) reference errors: those of `ref` when given, else
 * of u with its LoRA adapters switched off (as diffusers' Diffusion-DPO LoRA example does;
 * train_kto_sd_v1.5.py --use_lora does the same; docs/METHOD.md, Diffusion-DPO). */
int dpo_reference_errors(unet *u, unet *ref, const unet_inputs *in, const float *target,
                         double *err);

/* Forward + objective + backward; accumulates grad_scale * d loss / d params into the
 * model's gradient arena. in->B = 2 * pairs, chosen half first (or in->B single images when
 * oc->unpaired). ref_err: in->B reference errors (DPO, KTO: required), or NULL.
 * pred_out (optional): the model output. errors: in->B out.
 * Returns -1 on a non-finite loss (message names the sample). */
int preference_step(unet *u, const unet_inputs *in, const float *target,
                    const objective_cfg *oc, const double *ref_err, double grad_scale,
                    double *errors, objective_stats *st, float *pred_out,
                    size_t *activation_peak);

#endif
