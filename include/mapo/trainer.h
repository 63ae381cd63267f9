/* trainer.h -- the training loop of `mapo train`: data order and noise from counters,
 * gradient accumulation, clipping, AdamW, LR schedule, logging, checkpoints, exact resume. */
#ifndef MAPO_TRAINER_H
#define MAPO_TRAINER_H
#include <stdint.h>

#include "mapo/optim.h"
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
    int64_t stop_after; /* stop (as if interrupted) after this many steps of this run; 0 = off */
    int quiet;
} train_config;

void train_config_default(train_config *c);
int train_run(const train_config *c);

#endif
