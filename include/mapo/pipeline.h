/* pipeline.h -- a diffusers Stable Diffusion 1.5 or SDXL pipeline folder, as mapo uses it:
 * tokenizer(s), CLIP text encoder(s), AutoencoderKL, UNet and scheduler config, and the
 * conditioning the official MaPO / Diffusion-DPO scripts build from them.
 *
 * SD 1.5 (text_encoder/ only): encoder_hidden_states = last_hidden_state of CLIPTextModel
 *   (text_encoder(input_ids)[0] in the scripts).
 * SDXL (text_encoder/ and text_encoder_2/): encoder_hidden_states = concat(hidden_states[-2] of
 *   both encoders) along the width; pooled text embedding = text_embeds of the second
 *   (CLIPTextModelWithProjection); time_ids = original (h, w) + crop top-left (y, x) + target
 *   (h, w). Prompts are tokenized to the tokenizer's model_max_length (77) with its own padding
 *   token, truncated as diffusers does (a warning names truncated prompts). */
#ifndef MAPO_PIPELINE_H
#define MAPO_PIPELINE_H
#include <stdint.h>

#include "mapo/clip_text.h"
#include "mapo/tokenizer.h"
#include "mapo/unet.h"
#include "mapo/vae.h"

enum { PIPE_TEXT = 1, PIPE_VAE = 2, PIPE_UNET = 4 };

typedef struct {
    char dir[3800];
    int sdxl;                         /* two text encoders, text_time conditioning */
    int force_zeros_for_empty_prompt; /* model_index.json (SDXL: true) */
    int n_enc;                        /* 1 or 2 */
    clip_tokenizer *tok[2];
    clip_text *te[2];
    vae *vae;                         /* NULL for a pixel-space pipeline */
    int pixel;                        /* no vae/: the UNet works on pixels in [-1, 1] */
    unet unet;
    int have_unet;
    int S;         /* tokens per prompt (77) */
    int D;         /* encoder_hidden_states width (SD 1.5 768, SDXL 2048) */
    int P;         /* pooled width (SDXL 1280; 0 for SD 1.5) */
} pipeline;

/* Load the parts asked for (PIPE_* bits) from a pipeline folder. unet_dir (NULL: dir/unet)
 * takes the UNet from elsewhere, e.g. a trained output_dir/unet. unet_with_grad allocates UNet
 * gradients (full fine-tuning). Missing folders, or a UNet whose cross_attention_dim /
 * projection_class_embeddings_input_dim do not fit the text encoders, are one clear error. */
int pipeline_load(pipeline *p, const char *dir, int parts, const char *unet_dir,
                  int unet_with_grad);
void pipeline_free(pipeline *p);
/* Replace the pipeline's VAE by the one in vae_dir (a VAE folder: config.json + weights, or a
 * pipeline folder's vae/: vae_weights_path), as the official scripts'
 * --pretrained_vae_model_name_or_path; it must fit (latent channels, downscale). */
int pipeline_use_vae(pipeline *p, const char *vae_dir);
/* Free the tokenizers and text encoders (after the prompts are encoded). */
void pipeline_drop_text(pipeline *p);

/* 1 when dir has no vae/ folder and its model_index.json declares no VAE ("vae": [null, null]):
 * a pixel-space pipeline
 * (tokenizer, text_encoder, unet, scheduler), whose UNet denoises images in [-1, 1]. */
int pipeline_is_pixel(const char *dir);
/* Pixels per latent cell: the VAE's downscale factor, 1 for a pixel-space pipeline. */
int pipeline_downscale(const pipeline *p);

/* Conditioning of n prompts: ehs [n, S, D], pooled [n, P] (SDXL; may be NULL for SD 1.5). */
int pipeline_encode_prompts(pipeline *p, const char *const *prompts, int n, float *ehs,
                            float *pooled);

/* SDXL time_ids of one sample: original (h, w), crop top-left (y, x), target (h, w). */
void pipeline_time_ids(float out[6], int orig_h, int orig_w, int crop_y, int crop_x, int target_h,
                       int target_w);

/* A fingerprint of the parts that turn data into training inputs (tokenizers, text encoders,
 * VAE: config bytes, weight file sizes and sampled weight bytes; for sharded weights the index
 * and every shard); "" parts are skipped. Written into caches so a cache made with other models
 * is detected. buf >= 17 chars. */
int pipeline_fingerprint(const char *dir, char *buf, size_t n);

/* Fingerprint of a UNet folder or a pipeline folder's unet/ (config + weights: the file
 * unet_load_dir reads, or a sharded checkpoint's index and every shard): which reference UNet
 * cached Diffusion-DPO errors belong to. */
int unet_dir_fingerprint(const char *dir, char *buf, size_t n);

/* Fingerprint of the VAE vae_load_dir reads for dir (--pretrained_vae_model_name_or_path): a VAE
 * folder, or a pipeline folder's vae/ (vae_weights_path; config + the weights --variant picks,
 * one file or a sharded checkpoint's index and every shard). A VAE folder's value is the one
 * unet_dir_fingerprint gave it, so caches made with one stay valid. */
int vae_dir_fingerprint(const char *dir, char *buf, size_t n);

/* The fingerprint of one file (size + FNV-1a of up to 64 sampled 4 KiB blocks). */
int file_fingerprint(const char *path, uint64_t *h);

#endif
