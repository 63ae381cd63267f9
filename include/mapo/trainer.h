/* trainer.h -- the training loop of `mapo train`: data order and noise from counters,
 * gradient accumulation, clipping, AdamW, LR schedule, logging, checkpoints, exact resume. */
#ifndef MAPO_TRAINER_H
#define MAPO_TRAINER_H
#include <stdint.h>

#include "mapo/ddpm.h"
#include "mapo/optim.h"
#include "mapo/pairs.h"
#include "mapo/step.h"

typedef struct {
    const char *model_dir;   /* --pretrained_model_name_or_path */
    const char *dataset;     /* --dataset_name: pair file */
    const char *output_dir;
    const char *ref_dir;     /* --ref_model (dpo); default = model_dir */
    const char *resume;      /* --resume_from_checkpoint: path or "latest" (NULL: none) */
    int64_t train_batch_size, grad_accum, max_train_steps, warmup, checkpointing_steps, seed;
    double learning_rate, max_grad_norm;
    lr_schedule sched;
    adamw_config adam;
    objective_cfg obj;
    int lora_rank;      /* --lora_rank: train LoRA adapters only (0 = full fine-tune) */
    /* image datasets (parquet / JSONL manifest): encoded once into output_dir/cache.safetensors */
    int resolution;     /* 0: the UNet's sample_size x the VAE factor */
    int random_crop, no_hflip, on_bad_image; /* on_bad_image: ON_BAD_IMAGE_* (dataset.h) */
    int allow_outside_paths; /* manifests may name images outside their folder (dataset.h) */
    int no_memory_check; /* run even when the memory plan exceeds MemAvailable */
    int64_t max_memory_mb; /* the memory a run may use (0: MemAvailable of /proc/meminfo) */
    int64_t checkpoints_total_limit; /* keep the newest N checkpoints; 0 = all */
    int64_t stop_after; /* stop (as if interrupted) after this many steps of this run; 0 = off */
    int quiet;
    /* the rest of the official MaPO script's flags (docs/METHOD.md) */
    int64_t num_train_epochs;   /* used when max_train_steps is 0 (default 1) */
    int64_t lr_num_cycles;      /* cosine_with_restarts (1) */
    double lr_power;            /* polynomial (1.0) */
    double label_noise_prob;    /* flip a pair's preference with this probability (0) */
    const char *vae_dir;        /* --pretrained_vae_model_name_or_path (NULL: the pipeline's) */
    const char *split;          /* --dataset_split_name (parquet folders with splits) */
    int split_soft;             /* the split was not asked for: a folder without split names
                                   is used whole (dataset.h) */
    int64_t max_train_samples;  /* image datasets: a seeded subset of this many pairs (0: all) */
    int64_t vae_encode_batch_size; /* images per VAE encode call while caching (8) */
    int keep_ties;              /* --remove_ties false */
    const char *tensorboard_dir;/* event files go here (NULL: no TensorBoard) */
    int64_t validation_steps;   /* validation images every N steps and at the end (0: off) */
    const char *validation_prompts; /* file, one prompt per line (NULL: the official four) */
    int64_t validation_num_inference_steps, validation_resolution;
    double validation_guidance_scale;
    const char *validation_sampler;
    int use_8bit_adam;
    int lora_format;            /* LORA_FMT_* of lora_formats.h for the final adapters */
    int precision;              /* --mixed_precision: mapo_precision of ops.h (0: float32) */
    int gradient_checkpointing; /* --gradient_checkpointing */
    int recompute_norms;        /* --recompute_norms */
    st_dtype save_precision;    /* --save_precision: dtype of the final unet/ or LoRA file (F32,
                                   F16, BF16; checkpoints stay F32) */
    st_dtype cache_precision;   /* --cache_precision: dtype of the cache's latents and text
                                   embeddings (set for run_data via cache_set_default_precision) */
} train_config;

void train_config_default(train_config *c);
int train_run(const train_config *c);
/* A checkpoint's trainer_state.json (path), checked against run c: global_step > 0, and the
   seed, batch size, gradient accumulation, loss and lora_rank an exact resume needs.
   0 with *global_step set, or -1 + mapo_error naming the file. */
int checkpoint_state_read(const char *path, const train_config *c, int64_t *global_step);

#endif
