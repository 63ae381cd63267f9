/* cache.h -- `mapo cache`: a preference dataset encoded once into a pair file.
 *
 * Every pair (parquet row or manifest line) is decoded, preprocessed as the official script
 * (resize, flip, crop, [-1, 1]), encoded with the pipeline's VAE (latents x scaling_factor) and
 * text encoder(s); the result is a pair file (pairs.h: chosen, rejected, encoder_hidden_states
 * [, text_embeds, time_ids]) that `mapo train` memory-maps. Its metadata records what made it
 * (model fingerprint, dataset fingerprint, resolution, crop, flip, seed, latents mode), so
 * training knows when the cache no longer matches. The file is written in streaming mode
 * (bounded memory) and atomically.
 *
 * Pixel-space pipelines (no vae/, model_index.json "vae": [null, null]; pipeline.h): the
 * cache holds the preprocessed images themselves, [N, C, res, res] in [-1, 1], C = the UNet's
 * in_channels. C = 3: the RGB images as preprocessed. C = 1: the preprocessed RGB image turned
 * gray by ITU-R 601-2 luma (PIL's "L" weights) applied to the float [-1, 1] values after the
 * preprocessing (resize, crop, flip, normalisation), y = 0.299 R + 0.587 G + 0.114 B in
 * float32 -- not PIL's convert("L") on the 8-bit image before resizing, which rounds to
 * integers. The default resolution is the UNet's sample_size (VAE factor 1); the metadata
 * records latents = "none (pixel space)" and pixel_channels ("1 (gray: ...)" or "3 (RGB)"),
 * and the model fingerprint covers the tokenizer(s) and text encoder(s) (there is no VAE), so
 * a cache made for another channel count, with a VAE, or with other text encoders is stale.
 * --vae_latents has no effect there.
 *
 * Images-only datasets (a manifest of {"caption", "image"} lines; dataset.h): the cache holds
 * chosen (the image), encoder_hidden_states [, text_embeds, time_ids] and with flips on
 * chosen_hflip; no rejected, no rejected_hflip. Only --loss sft trains on it (the trainer
 * refuses other losses); reference errors (ref_unet) are refused, they need pairs.
 *
 * Flips: with flips on (the default) both orientations are encoded (chosen_hflip,
 * rejected_hflip) and the trainer picks one per (epoch, pair) with p = 0.5, as the scripts'
 * RandomHorizontalFlip does. Differences from the official script, by design: the VAE sample
 * (latent_dist.sample()) and a random crop are drawn once per pair (counter-based, keyed by seed
 * and pair index) instead of once per epoch.
 *
 * Diffusion-DPO reference errors: with ref_unet set, the cache also stores ref_errors
 * [epochs, N, 2] (float64): the reference UNet's per-sample errors on exactly the noise and
 * timesteps `mapo train --seed S` will draw for pair i in epoch e. DPO then trains without a
 * reference model in memory.
 *
 * Precision (--cache_precision fp16 | bf16): latents (or pixel-space images), encoder_hidden_states
 * and text_embeds are stored as F16 / BF16 (round to nearest even, as torch's .half() /
 * .bfloat16()): about half the file. The reader (pairs.h) converts them to float32 once when the
 * file is opened. fp16 refuses a value beyond its range (65504) naming the tensor and the pair;
 * bf16 has float32's range. A cache is reused only at the precision asked (cache_matches; a
 * precision_any config, mapo train without the flag, reuses any with a note). */
#ifndef MAPO_CACHE_H
#define MAPO_CACHE_H
#include <stddef.h>
#include <stdint.h>

#include "mapo/safetensors.h"

typedef struct {
    const char *model_dir;  /* pipeline folder */
    const char *dataset;    /* parquet file / folder, or JSONL manifest (file or folder) */
    const char *out;        /* the cache file (.safetensors) */
    int resolution;         /* 0: the UNet's sample_size x the VAE factor (1 without a VAE) */
    int random_crop;        /* 0: center crop */
    int no_hflip;
    int on_bad_image;       /* 0 skip, 1 fail */
    int allow_outside_paths; /* manifests may name images outside their folder (dataset.h) */
    int latents_mean;       /* 1: latent_dist.mean; 0: latent_dist.sample() (the scripts);
                               ignored by pixel-space pipelines */
    int64_t seed;
    int64_t max_pairs;      /* 0: all */
    int sample_pairs;       /* max_pairs picks a seeded random subset (kept in dataset order)
                               instead of the first pairs: the official --max_train_samples */
    const char *split;      /* parquet folders with split names (NULL: "train") */
    int split_soft;         /* a folder without split names is used whole (dataset.h) */
    int keep_ties;          /* keep pairs whose labels tie (jpg_0 is then the chosen one) */
    const char *vae_dir;    /* a VAE folder instead of the pipeline's vae/ (NULL: none) */
    int vae_batch;          /* images per VAE encode call (<= 0: all of a pair's at once) */
    const char *ref_unet;   /* DPO reference UNet (folder or pipeline); NULL: none */
    int64_t ref_epochs;     /* epochs of reference errors to store (0: from ref_pair_visits) */
    int64_t ref_pair_visits;/* pairs the training run will visit (steps x batch x accumulation) */
    int ref_if_paired;      /* single images: no reference errors instead of a refusal (KTO
                               trains on them with the reference UNet in memory); they must
                               then carry labels */
    st_dtype precision;     /* --cache_precision: F32, F16 or BF16 for the latents / images,
                               encoder_hidden_states and text_embeds (time_ids, labels stay F32;
                               ref_errors F64); recorded as metadata "cache_precision" */
    int precision_any;      /* cache_matches accepts a cache of any precision (with a note):
                               mapo train without --cache_precision reuses what it built */
    int quiet;
} cache_config;

/* Zeroes c; precision and precision_any = the process default (cache_set_default_precision;
   F32, exact, unless set). */
void cache_config_default(cache_config *c);
/* mapo train --cache_precision: the precision of the caches it builds (its trainer fills a
   cache_config from cache_config_default); asked = 0 (no flag): F32 for a new cache, and an
   existing cache of another precision is reused with a note instead of rebuilt. */
void cache_set_default_precision(st_dtype d, int asked);
/* mapo train --cache_precision P with --dataset_name a ready .safetensors cache / pair file:
   0 when it holds P (metadata "cache_precision", else the dtype of 'chosen') or is not a
   .safetensors file (or unreadable: training reports that); else -1 + mapo_error (the flag
   applies when a dataset is encoded). */
int cache_check_given(const char *dataset, st_dtype want);
int cache_build(const cache_config *c);

/* 0 when the cache at path carries the metadata a cache built with c would (same models, data
 * and settings); -1 with a message naming the first difference otherwise (or when unreadable).
 * Reads configs and fingerprints only, no weights. */
int cache_matches(const char *path, const cache_config *c);

/* Fingerprint of a dataset path (a file, or every regular file below a folder). */
int dataset_fingerprint(const char *path, char *buf, size_t n);

#endif
