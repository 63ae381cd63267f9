/* sampler.h -- inference samplers: diffusers' DDIMScheduler and EulerDiscreteScheduler,
 * and classifier-free guidance as the StableDiffusion / SDXL pipelines combine it.
 *
 * A sampler is built from a pipeline's scheduler/scheduler_config.json, whatever its
 * _class_name (SD 1.5 ships a PNDMScheduler config, SDXL an EulerDiscreteScheduler one): the
 * kind ("ddim" or "euler") is the caller's choice, as with diffusers'
 * `DDIMScheduler.from_config(pipe.scheduler.config)`. Keys present in the JSON are used;
 * keys absent take the *chosen* scheduler's defaults (diffusers' _use_default_values), so
 * SD 1.5's config gives DDIM timestep_spacing "leading" but Euler "linspace", and DDIM
 * clip_sample defaults to true. Keys the chosen scheduler does not know are ignored, as
 * diffusers ignores them; values it knows but mapo cannot honour are refused by name
 * (trained_betas, thresholding, use_beta_sigmas, interpolation_type log_linear, ...).
 *
 * Supported: num_train_timesteps, beta_start/end, beta_schedule linear / scaled_linear /
 * squaredcos_cap_v2, rescale_betas_zero_snr, prediction_type epsilon / v_prediction / sample,
 * timestep_spacing leading / trailing / linspace, steps_offset;
 * DDIM: set_alpha_to_one, clip_sample, clip_sample_range, eta (noise from the caller);
 * Euler: interpolation_type linear, use_karras_sigmas, use_exponential_sigmas, sigma_min,
 * sigma_max, final_sigmas_type zero / sigma_min, timestep_type discrete / continuous;
 * s_churn and friends stay at their defaults (no churn).
 *
 * All arithmetic repeats diffusers' float32 (torch) and float64 (numpy) operations in the
 * same order, so trajectories agree with diffusers to float32 rounding.
 *
 * A sampling loop, as the pipelines run it (batch of 2: uncond and cond):
 *     sampler_init_noise(s, x, n);                       // x = x_T * init_noise_sigma
 *     for (int i = 0; i < sampler_num_steps(s); i++) {
 *         sampler_scale_model_input(s, i, x_in, x, n);   // both halves of the CFG batch
 *         unet(x_in, sampler_timestep(s, i)) -> eps_uncond, eps_cond
 *         cfg_combine(eps, eps_uncond, eps_cond, guidance_scale, n);
 *         sampler_step(s, i, x, eps, noise_or_NULL, n);
 *     }
 */
#ifndef MAPO_SAMPLER_H
#define MAPO_SAMPLER_H
#include <stdint.h>

typedef struct sampler sampler;

/* Build from scheduler_config.json; kind "ddim" or "euler"; 1 <= num_inference_steps <=
 * num_train_timesteps. 0 on success (*s set), -1 with mapo_last_error() otherwise.
 * Also refused, where diffusers would produce garbage: trailing spacing with a step count
 * for which numpy's arange adds a timestep -1 (e.g. 61 of 1000), DDIM timesteps past
 * num_train_timesteps - 1 (leading + steps_offset at 1000 steps), epsilon prediction at a
 * zero-SNR timestep, schedules whose alphas_cumprod reach 1 or underflow to 0. */
int sampler_create(sampler **s, const char *scheduler_config_path, const char *kind,
                   int num_inference_steps);
/* Same from the JSON text; `source` names it in error messages. */
int sampler_create_from_string(sampler **s, const char *json_text, const char *source,
                               const char *kind, int num_inference_steps);
void sampler_free(sampler *s);

/* "ddim" or "euler" */
const char *sampler_kind(const sampler *s);
/* Number of denoising steps (= len(scheduler.timesteps)). */
int sampler_num_steps(const sampler *s);
/* The timestep fed to the UNet at step i (an integer for DDIM; a float32 value for Euler,
 * fractional with linspace spacing, Karras sigmas or continuous timesteps). NAN when i is
 * out of range. */
double sampler_timestep(const sampler *s, int i);
/* Euler: scheduler.sigmas[i], 0 <= i <= num_steps (the last is the final sigma). DDIM: the
 * equivalent sqrt((1 - abar_t) / abar_t) for 0 <= i < num_steps. NAN when out of range. */
double sampler_sigma(const sampler *s, int i);
/* scheduler.init_noise_sigma (1 for DDIM). */
double sampler_init_noise_sigma(const sampler *s);
/* x <- x * init_noise_sigma, in float32 as the pipelines' prepare_latents does. */
void sampler_init_noise(const sampler *s, float *x, int64_t n);

/* DDIM's eta (0 by default: deterministic). eta > 0 makes sampler_step need noise.
 * Euler accepts only 0. -1 for negative / non-finite values. */
int sampler_set_eta(sampler *s, double eta);

/* x_in = scale_model_input(x) for step i (Euler: x / sqrt(sigma_i^2 + 1); DDIM: a copy).
 * x_in may equal x. Nothing is done when i is out of range or n < 0. */
void sampler_scale_model_input(const sampler *s, int i, float *x_in, const float *x,
                               int64_t n);

/* One step: x <- scheduler.step(model_output, timestep[i], x).prev_sample, n elements.
 * noise (standard normal, n elements) is used only by DDIM with eta > 0 and may be NULL
 * otherwise. -1 (mapo_error) for i out of range, n < 0, NULL arrays, missing noise.
 * The sampler is not modified (steps may be taken in any order; the argument is non-const
 * so that multistep samplers can keep history behind the same interface). */
int sampler_step(sampler *s, int i, float *x, const float *model_output, const float *noise,
                 int64_t n);

/* Classifier-free guidance: out = uncond + g * (cond - uncond), in float32 as the diffusers
 * pipelines compute it. out may alias uncond or cond. */
void cfg_combine(float *out, const float *uncond, const float *cond, double g, int64_t n);

/* SDXL pipeline's rescale_noise_cfg (guidance_rescale, arXiv 2305.08891 sec. 3.4), in place
 * on noise_cfg [batch][per_sample]: per sample,
 *     rescaled = noise_cfg * (std(cond) / std(noise_cfg))        (std unbiased, as torch)
 *     noise_cfg = phi * rescaled + (1 - phi) * noise_cfg.
 * -1 (noise_cfg unchanged) for per_sample < 2, batch < 0, phi not finite, or a sample whose
 * noise_cfg has zero spread. phi = 0 leaves noise_cfg as it is. */
int cfg_rescale(float *noise_cfg, const float *cond, double phi, int64_t batch,
                int64_t per_sample);

#endif
