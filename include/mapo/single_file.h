/* single_file.h -- Stable Diffusion 1.5 / SDXL "single-file" checkpoints (the original
 * latent-diffusion layout A1111, ComfyUI and CivitAI use: one .safetensors holding
 *   model.diffusion_model.*                 the UNet (openaimodel: input_blocks / middle_block /
 *                                           output_blocks, time_embed, SDXL label_emb)
 *   first_stage_model.*                     the VAE (encoder.down.i.block.j, mid.attn_1 as 1x1
 *                                           convolutions, decoder.up.i counted from the bottom)
 *   cond_stage_model.transformer.*          SD 1.5: CLIP ViT-L (transformers layout)
 *   conditioner.embedders.0.transformer.*   SDXL: CLIP ViT-L (transformers layout)
 *   conditioner.embedders.1.model.*         SDXL: OpenCLIP ViT-bigG (open_clip layout: fused
 *                                           attn.in_proj q/k/v, text_projection [hidden, proj])
 * ) turned into a diffusers pipeline folder that pipeline_load reads like any other.
 *
 * Why a folder and not an in-memory load: every consumer of a model (pipeline_load, the cache's
 * fingerprints, the trainer's unet_load_dir and DDPM schedule, the sampler's scheduler config,
 * the reference UNet of DPO) names its parts by a folder path. Converting once into a folder
 * keeps one loader per model, makes the conversion inspectable (`mapo diff` against any
 * diffusers folder), and costs one pass over the file: tensors are copied byte for byte in
 * their own dtype (renamed, the VAE's 1x1-conv attention weights reshaped to linear, OpenCLIP's
 * fused in_proj split into q/k/v rows, its text_projection transposed), never through float32,
 * so the converted weights are bit-identical to the checkpoint's and the memory used is one
 * tensor at most. docs/SINGLE_FILE.md lists every key-mapping rule.
 *
 * Configs. A single file holds weights only. As diffusers' from_single_file(file, config=...)
 * needs a config source (offline it reads the Hub cache of stable-diffusion-v1-5 /
 * stable-diffusion-xl-base-1.0), so does mapo: a "config folder", a diffusers pipeline folder
 * of the same kind (SD 1.5 or SDXL) of which are used
 *   tokenizer/ (+ tokenizer_2/ for SDXL)   copied as they are (required)
 *   scheduler/scheduler_config.json        copied (required); a checkpoint with a "v_pred" key
 *                                          (ComfyUI's marker) gets prediction_type
 *                                          "v_prediction", with "ztsnr" also
 *                                          rescale_betas_zero_snr true
 *   model_index.json                       copied, safety checker / feature extractor / image
 *                                          encoder set to [null, null] (optional)
 *   unet/ vae/ text_encoder(_2)/config.json  the values the tensors cannot tell (attention head
 *                                          counts, norm groups and eps, activation, scaling
 *                                          factor, sample size, token ids...); everything the
 *                                          tensors do tell is taken from the tensors (block
 *                                          widths, layers per block, which blocks have
 *                                          attention, transformer depth, cross-attention and
 *                                          context widths, linear vs 1x1-conv projections,
 *                                          channels, vocabulary, layers, MLP width,
 *                                          projection width, SDXL's add-embedding width).
 *                                          Missing configs fall back to the standard SD 1.5 /
 *                                          SDXL ones. Head counts: the config folder's when
 *                                          its block widths equal the checkpoint's, else the
 *                                          original models' rule (SD 1.5: 8 heads; SDXL and
 *                                          the text encoders: 64 channels a head).
 * The config folder is, in order: the one given (--config_dir), else the Hub cache snapshot of
 * the model diffusers would use (stable-diffusion-v1-5/stable-diffusion-v1-5 or
 * stabilityai/stable-diffusion-xl-base-1.0 under $HF_HUB_CACHE, $HF_HOME/hub or
 * ~/.cache/huggingface/hub), else an error saying so.
 *
 * Refused, one message each: a file that is not a safetensors checkpoint of this layout (no
 * model.diffusion_model.* tensors), SD 2.x (OpenCLIP-H cond_stage_model.model.*), the SDXL
 * refiner, inpainting / instruct-pix2pix UNets (in_channels != the VAE's latent channels),
 * a missing part (UNet, VAE, text encoder), a missing tensor, a tensor of the wrong shape
 * (named with its original key and the shape the derived model gives), an unexpected tensor
 * under a part's prefix. Ignored: EMA copies (model_ema.*: the non-EMA weights are used, as
 * diffusers does by default), the DDPM buffers (betas, alphas_cumprod, ...),
 * position_ids, logit_scale and any other top-level tensor. */
#ifndef MAPO_SINGLE_FILE_H
#define MAPO_SINGLE_FILE_H
#include <stddef.h>

#include "mapo/safetensors.h"

typedef enum { SF_NONE = 0, SF_SD15 = 1, SF_SDXL = 2 } sf_kind;

/* What path is: SF_SD15 / SF_SDXL for a single-file checkpoint of that kind, SF_NONE for
 * anything else (a folder, a missing path, another safetensors file: no
 * model.diffusion_model.* tensors). Reads only the header. Never records an error. */
sf_kind single_file_probe(const char *path);

/* Convert the checkpoint at path into a diffusers pipeline folder out_dir (which must not
 * exist, or be an empty folder), with tokenizers, scheduler and the configs' other values from
 * config_dir (NULL: the Hub cache, see above). Everything is checked before the first byte is
 * written; the folder is written as out_dir.tmp.<pid> and renamed into place, so out_dir is
 * either complete or absent. quiet: no progress lines. */
int single_file_convert(const char *path, const char *config_dir, const char *out_dir,
                        int quiet);
/* The same with every tensor stored as `store` (ST_F32, ST_F16 or ST_BF16; mapo convert
 * --save_precision): each value as mapo loads it in float32, then rounded to nearest even as
 * torch's .half() / .bfloat16(); a tensor already in `store` is copied byte for byte. An fp16
 * overflow (beyond 65504: inf, as torch) is counted in one warning line. */
int single_file_convert_as(const char *path, const char *config_dir, const char *out_dir,
                           int quiet, st_dtype store);

/* For commands taking a pipeline folder: when path is a regular file, it must be a single-file
 * checkpoint; it is converted once into the cache (resolved = $MAPO_CACHE_DIR, else
 * $XDG_CACHE_HOME/mapo, else ~/.cache/mapo, + /single_file/<name>-<16 hex>: the key covers the
 * file's size, mtime and sampled bytes and the config folder's files), reused while both are
 * unchanged. Otherwise resolved = path (folders are left to the loaders). 0 or -1. */
int single_file_resolve(const char *path, const char *config_dir, char *resolved, size_t n);
/* The same for a command's flag: *path (NULL: nothing to do) is replaced by the resolved path,
 * kept in buf. */
int single_file_resolve_arg(const char **path, const char *config_dir, char *buf, size_t n);

#endif
