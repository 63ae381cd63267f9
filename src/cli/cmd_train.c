/* cmd_train.c -- mapo train: flags named as in the official MaPO script. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/curves.h"
#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/single_file.h"
#include "mapo/trainer.h"

int cmd_train(int argc, char **argv) {
    int curves = 0;
    train_config c;
    train_config_default(&c);
    const char *loss = "mapo", *sched = "constant";
    int64_t lora_rank = 0, res = 0;
    const char *bad = "skip", *config_dir = NULL;
    static char model_buf[4096], ref_buf[4096];
    opt_def o[] = {
        {"pretrained_model_name_or_path", OPT_STR, &c.model_dir,
         "diffusers UNet folder or pipeline folder (with unet/), or a single-file "
         "checkpoint (.safetensors; converted once into a cache)", 0},
        {"config_dir", OPT_STR, &config_dir, "with a single-file model: the pipeline folder of "
         "its kind giving tokenizer(s), scheduler, configs (default: the Hub cache) [mapo]", 0},
        {"dataset_name", OPT_STR, &c.dataset,
         "Pick-a-Pic-style parquet (file or folder), a JSONL manifest (file or folder), or a "
         "pair file / mapo cache (.safetensors)", 0},
        {"resolution", OPT_INT, &res, "image datasets: training resolution (default: the UNet's "
                                      "sample_size x the VAE factor)", 0},
        {"random_crop", OPT_FLAG, &c.random_crop, "image datasets: random instead of center crop", 0},
        {"no_hflip", OPT_FLAG, &c.no_hflip, "image datasets: no random horizontal flip", 0},
        {"on_bad_image", OPT_STR, &bad, "image datasets: skip | fail on undecodable images (skip)", 0},
        {"allow_outside_paths", OPT_FLAG, &c.allow_outside_paths,
         "manifests: read image paths that lead outside the manifest's folder (absolute, .., "
         "symlinks); refused by default", 0},
        {"output_dir", OPT_STR, &c.output_dir, "where unet/, checkpoints and train_log.jsonl go", 0},
        {"loss", OPT_STR, &loss, "mapo | dpo | sft (default mapo)", 0},
        {"train_batch_size", OPT_INT, &c.train_batch_size, "pairs per micro-batch (4)", 0},
        {"gradient_accumulation_steps", OPT_INT, &c.grad_accum, "micro-batches per step (1)", 0},
        {"learning_rate", OPT_DOUBLE, &c.learning_rate, "peak learning rate (5e-4)", 0},
        {"lr_scheduler", OPT_STR, &sched,
         "constant | constant_with_warmup | linear | cosine (constant)", 0},
        {"lr_warmup_steps", OPT_INT, &c.warmup, "warmup optimizer steps (0)", 0},
        {"max_train_steps", OPT_INT, &c.max_train_steps, "optimizer steps (100)", 0},
        {"beta_mapo", OPT_DOUBLE, &c.obj.beta_mapo, "MaPO margin weight (0.1)", 0},
        {"snr_value", OPT_DOUBLE, &c.obj.snr_value, "MaPO s (0.5)", 0},
        {"beta_dpo", OPT_DOUBLE, &c.obj.beta_dpo, "Diffusion-DPO beta (5000)", 0},
        {"ref_model", OPT_STR, &c.ref_dir,
         "reference UNet for dpo (default: the pretrained model itself, frozen)", 0},
        {"max_grad_norm", OPT_DOUBLE, &c.max_grad_norm, "clip gradients to this norm; 0 = off (1.0)", 0},
        {"adam_beta1", OPT_DOUBLE, &c.adam.beta1, "AdamW beta1 (0.9)", 0},
        {"adam_beta2", OPT_DOUBLE, &c.adam.beta2, "AdamW beta2 (0.999)", 0},
        {"adam_weight_decay", OPT_DOUBLE, &c.adam.weight_decay, "AdamW weight decay (1e-2)", 0},
        {"adam_epsilon", OPT_DOUBLE, &c.adam.eps, "AdamW epsilon (1e-8)", 0},
        {"seed", OPT_INT, &c.seed, "seed of data order, noise and timesteps (0)", 0},
        {"checkpointing_steps", OPT_INT, &c.checkpointing_steps,
         "save a resumable checkpoint every N steps; 0 = never (500)", 0},
        {"checkpoints_total_limit", OPT_INT, &c.checkpoints_total_limit,
         "keep only the newest N checkpoints; older ones are deleted after the new one is "
         "complete (default: keep all)", 0},
        {"resume_from_checkpoint", OPT_STR, &c.resume,
         "a checkpoint folder, or \"latest\" (in --output_dir)", 0},
        {"stop_after_steps", OPT_INT, &c.stop_after,
         "stop after N steps of this run, as an interruption would (tests, time-boxed jobs)", 0},
        {"lora_rank", OPT_INT, &lora_rank,
         "train LoRA adapters of this rank on to_q/to_k/to_v/to_out.0 (alpha = rank) instead of "
         "the whole UNet; saves output_dir/pytorch_lora_weights.safetensors (0 = off)", 0},
        {"no_memory_check", OPT_FLAG, &c.no_memory_check,
         "start even when the memory plan exceeds the memory available", 0},
        {"max_memory_mb", OPT_INT, &c.max_memory_mb,
         "memory this run may use, in MiB (default: what /proc/meminfo calls available)", 0},
        {"quiet", OPT_FLAG, &c.quiet, "no progress lines", 0},
        {"curves", OPT_FLAG, &curves,
         "at the end, plot train_log.jsonl into output_dir/curves.html (loss, errors, margin, "
         "win / lose scores, gradient norm, LR)", 0},
    };
    int n = (int)(sizeof o / sizeof *o);
    int r = args_parse(o, n, argc, argv, 2,
                       "usage: mapo train --pretrained_model_name_or_path DIR --dataset_name "
                       "DATA --output_dir DIR [options]");
    if (r) return r > 0 ? 0 : -1;
    if (objective_parse(loss, &c.obj.kind)) return -1;
    if (c.checkpoints_total_limit < 0)
        return mapo_error("--checkpoints_total_limit must be >= 1 (or 0: keep all)");
    if (lora_rank < 0 || lora_rank > 4096) return mapo_error("--lora_rank must be in 0..4096");
    c.lora_rank = (int)lora_rank;
    if (res < 0 || res > 8192) return mapo_error("--resolution must be in 1..8192");
    c.resolution = (int)res;
    if ((c.on_bad_image = pref_parse_on_bad_image(bad)) < 0) return -1;
    if (lr_schedule_parse(sched, &c.sched))
        return mapo_error("unknown --lr_scheduler '%s' (constant, constant_with_warmup, linear, "
                          "cosine)", sched);
    if (single_file_resolve_arg(&c.model_dir, config_dir, model_buf, sizeof model_buf) ||
        single_file_resolve_arg(&c.ref_dir, config_dir, ref_buf, sizeof ref_buf))
        return -1;
    if (train_run(&c)) return -1;
    if (curves) {
        char lp[4200], hp[4200];
        snprintf(lp, sizeof lp, "%s/train_log.jsonl", c.output_dir);
        snprintf(hp, sizeof hp, "%s/curves.html", c.output_dir);
        if (curves_write(lp, hp, c.output_dir)) return -1;
        mapo_log(1, "wrote %s\n", hp);
    }
    return 0;
}
