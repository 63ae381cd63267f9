/* generate.h -- text-to-image sampling as diffusers' StableDiffusion(XL)Pipeline.__call__ does
 * it: prompt and negative-prompt conditioning, initial latents x init_noise_sigma, the sampler
 * loop with classifier-free guidance (one UNet call on the [uncond, cond] batch), VAE decode
 * (tiled for large images), images in [0, 1]. */
#ifndef MAPO_GENERATE_H
#define MAPO_GENERATE_H
#include <stdint.h>

#include "mapo/pipeline.h"

typedef struct {
    const char *sampler;        /* "ddim" | "euler" */
    int steps;                  /* num_inference_steps */
    double guidance_scale;      /* > 1 enables classifier-free guidance */
    int height, width;          /* pixels, multiples of the VAE factor x 2^(UNet blocks - 1) */
    uint64_t seed;              /* initial latents from the counter-based RNG (image i: stream i) */
    int tiled_decode;           /* 1 tiled, 0 whole, -1 auto (tiled above the VAE sample size) */
    int quiet;
    int batch;                  /* images denoised together (<= 1: one at a time) */
} gen_config;

void gen_config_default(gen_config *g);

/* One image per prompt. negative[i] may be NULL (no negative prompt: SDXL with
 * force_zeros_for_empty_prompt then uses zero embeddings, else the empty prompt, as diffusers).
 * init_latents [n, C, h, w] (NULL: drawn from seed). images [n, height, width, 3] floats in
 * [0, 1] (diffusers' output_type="np"). */
int generate_images(pipeline *p, const gen_config *g, const char *const *prompts,
                    const char *const *negative, int n, const float *init_latents, float *images);

/* Prompt conditioning, encoded once (the text encoders may be freed after): cond / uncond
 * [n, S, D], pooled pc / pu [n, P] (SDXL; NULL otherwise). */
typedef struct {
    int n;
    float *cond, *uncond, *pc, *pu;
} gen_cond;
/* negative may be NULL (none for every prompt); with guidance_scale <= 1 no negative is
 * encoded. */
int generate_encode(pipeline *p, const char *const *prompts, const char *const *negative,
                    int n, double guidance_scale, gen_cond *c);
void gen_cond_free(gen_cond *c);
/* generate_images from encoded prompts, with UNet u (p->unet, or one owned elsewhere: the
 * trainer's, for validation images). Needs p's VAE (or a pixel-space p) and scheduler config. */
int generate_with(pipeline *p, unet *u, const gen_config *g, const gen_cond *c,
                  const float *init_latents, float *images);

/* [0,1] floats -> 8-bit as diffusers' numpy_to_pil: round(x * 255). */
void images_to_u8(uint8_t *out, const float *in, int64_t n);

#endif
