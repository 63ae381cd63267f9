/* checkpoint.h -- the files of a run's output folder: checkpoints (save, prune, find, load for an
 * exact resume), the final model, what killed runs left behind, the log at a resume.
 * Every folder is written under a hidden temporary name and renamed into place, so at every
 * moment each checkpoint-N / unet/ is complete or absent; a failed write (full disk, read-only,
 * quota) removes its temporary files and leaves earlier outputs as they were. */
#ifndef MAPO_CHECKPOINT_H
#define MAPO_CHECKPOINT_H
#include <stdint.h>

#include "mapo/optim8bit.h"
#include "mapo/trainer.h"
#include "mapo/unet.h"

/* The optimizer's state: float32 AdamW moments, or bitsandbytes-style 8-bit ones. */
typedef struct {
    float *m, *v;        /* AdamW (NULL with --use_8bit_adam) */
    adamw8_state *s8;    /* --use_8bit_adam (NULL otherwise) */
} optim_state;

/* rm -r (no error when absent). */
void run_rm_rf(const char *path);
/* The trained weights: the whole UNet, or only its LoRA adapters. */
const param_table *trained_params(const unet *u);

/* output_dir/checkpoint-<step>: the trained weights (unet/ or pytorch_lora_weights.safetensors),
   optimizer.safetensors (AdamW moments exp_avg.* / exp_avg_sq.*, or the 8-bit state) and
   trainer_state.json; then old checkpoints beyond c->checkpoints_total_limit are removed (only
   now that the new one is complete). */
int ckpt_save(const train_config *c, const unet *u, const optim_state *o, int64_t step);
/* The newest checkpoint-N of out_dir (-1: none). */
int64_t ckpt_latest(const char *out_dir);
/* Resume from c->resume (a folder, or "latest" of c->output_dir): weights or adapters, moments
   and the step; the checkpoint must come from the same seed, batch, loss and LoRA rank
   (checkpoint_state_read). "latest" with no checkpoint: *step = 0. */
int ckpt_load(const train_config *c, unet *u, optim_state *o, int64_t *step);
/* Removes what a killed run of out_dir left: hidden temporary folders, checkpoints half-way
   through deletion, "<name>.tmp.<pid>" files. Only with out_dir's lock held (lock.h). */
void ckpt_remove_stale(const char *out_dir);
/* The final model: out_dir/unet/ (loadable by UNet2DConditionModel.from_pretrained) or
   out_dir/pytorch_lora_weights.safetensors (pipeline.load_lora_weights). fmt: LORA_FMT_*
   (lora_formats.h) for adapters. store: the weights' dtype (--save_precision: ST_F32, ST_F16
   or ST_BF16); checkpoints (ckpt_save) are always float32. */
int ckpt_save_final(const unet *u, const char *out_dir, int fmt, st_dtype store);
/* Keeps the lines of a train_log.jsonl whose "step" is <= step (rewritten atomically): a resumed
   run continues after its checkpoint instead of repeating lost steps. */
int run_log_truncate(const char *path, int64_t step);

#endif
