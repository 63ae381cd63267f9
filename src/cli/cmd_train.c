/* cmd_train.c -- mapo train: flags named, defaulted and meant as in the official MaPO script
 * (its args.py); the mapo-only ones are marked. docs/METHOD.md lists what differs and why. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "args.h"
#include "cmds.h"
#include "mapo/cache.h"
#include "mapo/common.h"
#include "mapo/curves.h"
#include "mapo/dataset.h"
#include "mapo/single_file.h"
#include "mapo/lora_formats.h"
#include "mapo/trainer.h"

/* --report_to / --logging_dir / --tracker_name -> the TensorBoard folder, as accelerate's
   TensorBoardTracker: output_dir/logging_dir/tracker_name (NULL: no TensorBoard) */
static int tensorboard_dir(train_config *c, const char *report_to, const char *logging_dir,
                           const char *tracker, char *buf, size_t n) {
    if (!strcmp(report_to, "none")) {
        c->tensorboard_dir = NULL;
        return 0;
    }
    if (strcmp(report_to, "tensorboard") && strcmp(report_to, "all"))
        return mapo_error("--report_to %s: mapo writes TensorBoard event files only "
                          "(tensorboard, all or none); wandb and comet_ml need their services",
                          report_to);
    if (logging_dir[0] == '/') snprintf(buf, n, "%s/%s", logging_dir, tracker);
    else snprintf(buf, n, "%s/%s/%s", c->output_dir, logging_dir, tracker);
    c->tensorboard_dir = buf;
    return 0;
}

int cmd_train(int argc, char **argv) {
    int curves = 0, run_validation = 0, scale_lr = 0, remove_ties = 1, grad_ckpt = 0;
    train_config c;
    train_config_default(&c);
    c.output_dir = "mapo";
    const char *loss = "mapo", *sched = "constant", *report_to = "tensorboard";
    const char *variant = NULL;
    const char *logging_dir = "logs", *tracker = "mapo", *mixed = NULL, *lora_fmt = "diffusers";
    const char *save_prec = "float32", *cache_prec = NULL;
    int64_t lora_rank = 0, res = 0;
    double label_noise = -1;
    const char *bad = "skip", *config_dir = NULL;
    static char model_buf[4096], ref_buf[4096];
    static const char gpu[] = "it only concerns CUDA / multi-GPU runs (mapo runs on this CPU)";
    static const char hub[] = "mapo reads local folders only (the Hugging Face Hub is not reached)";
    opt_def o[] = {
        {"pretrained_model_name_or_path", OPT_STR, &c.model_dir,
         "diffusers pipeline folder (or a UNet folder with a pair file), or a single-file "
         "checkpoint (.safetensors; converted once into a cache)", 0},
        {"config_dir", OPT_STR, &config_dir, "with a single-file model: the pipeline folder of "
         "its kind giving tokenizer(s), scheduler, configs (default: the Hub cache) [mapo]", 0},
        {"pretrained_vae_model_name_or_path", OPT_STR, &c.vae_dir,
         "a VAE folder used instead of the pipeline's vae/ (e.g. sdxl-vae-fp16-fix)", 0},
        {"variant", OPT_STR, &variant,
         "read <name>.<variant>.safetensors weights (e.g. fp16; converted to float32) where "
         "the folders have them", 0},
        {"dataset_name", OPT_STR, &c.dataset,
         "Pick-a-Pic-style parquet (file or folder), a JSONL manifest (file or folder), or a "
         "pair file / mapo cache (.safetensors)", 0},
        {"dataset_split_name", OPT_STR, &c.split,
         "parquet folders with splits: which one (validation, as the official script)", 0},
        {"max_train_samples", OPT_INT, &c.max_train_samples,
         "image datasets: train on a seeded random subset of N pairs (0: all)", 0},
        {"remove_ties", OPT_BOOL, &remove_ties,
         "drop pairs whose labels tie (true); false keeps them with jpg_0 as the chosen", 0},
        {"label_noise_prob", OPT_DOUBLE, &label_noise,
         "flip each pair's preference with this probability, per epoch (off)", 0},
        {"resolution", OPT_INT, &res, "image datasets: training resolution (default: the UNet's "
                                      "sample_size x the VAE factor)", 0},
        {"vae_encode_batch_size", OPT_INT, &c.vae_encode_batch_size,
         "images per VAE encode call while caching the dataset (8)", 0},
        {"random_crop", OPT_FLAG, &c.random_crop, "image datasets: random instead of center crop", 0},
        {"no_hflip", OPT_FLAG, &c.no_hflip, "image datasets: no random horizontal flip", 0},
        {"on_bad_image", OPT_STR, &bad, "image datasets: skip | fail on undecodable images (skip) [mapo]", 0},
        {"allow_outside_paths", OPT_FLAG, &c.allow_outside_paths,
         "manifests may name images outside their folder [mapo]", 0},
        {"output_dir", OPT_STR, &c.output_dir, "where unet/, checkpoints and logs go (mapo)", 0},
        {"loss", OPT_STR, &loss,
         "mapo | dpo | kto | sft (mapo); kto also trains on labelled single images [mapo]", 0},
        {"train_batch_size", OPT_INT, &c.train_batch_size, "pairs per micro-batch (4)", 0},
        {"num_train_epochs", OPT_INT, &c.num_train_epochs,
         "epochs, when --max_train_steps is not given (1)", 0},
        {"max_train_steps", OPT_INT, &c.max_train_steps,
         "optimizer steps; overrides --num_train_epochs", 0},
        {"gradient_accumulation_steps", OPT_INT, &c.grad_accum, "micro-batches per step (1)", 0},
        {"learning_rate", OPT_DOUBLE, &c.learning_rate, "peak learning rate (5e-4)", 0},
        {"scale_lr", OPT_FLAG, &scale_lr,
         "multiply the learning rate by train_batch_size x gradient_accumulation_steps", 0},
        {"lr_scheduler", OPT_STR, &sched,
         "constant | constant_with_warmup | linear | cosine | cosine_with_restarts | "
         "polynomial (constant)", 0},
        {"lr_warmup_steps", OPT_INT, &c.warmup, "warmup optimizer steps (500)", 0},
        {"lr_num_cycles", OPT_INT, &c.lr_num_cycles, "hard restarts of cosine_with_restarts (1)", 0},
        {"lr_power", OPT_DOUBLE, &c.lr_power, "power of the polynomial scheduler (1.0)", 0},
        {"beta_mapo", OPT_DOUBLE, &c.obj.beta_mapo, "MaPO margin weight (0.1)", 0},
        {"snr_value", OPT_DOUBLE, &c.obj.snr_value, "MaPO s (0.5)", 0},
        {"beta_dpo", OPT_DOUBLE, &c.obj.beta_dpo, "Diffusion-DPO beta (5000) [mapo]", 0},
        {"beta_kto", OPT_DOUBLE, &c.obj.beta_kto,
         "Diffusion-KTO beta (1000; its script's --beta_dpo) [mapo]", 0},
        {"lambda_d_kto", OPT_DOUBLE, &c.obj.lambda_d_kto, "Diffusion-KTO weight of desirable "
                                                          "examples (1.0)", 0},
        {"lambda_u_kto", OPT_DOUBLE, &c.obj.lambda_u_kto, "Diffusion-KTO weight of undesirable "
                                                          "examples (1.0)", 0},
        {"ref_model", OPT_STR, &c.ref_dir,
         "reference UNet for dpo (default: the pretrained model itself, frozen) [mapo]", 0},
        {"use_8bit_adam", OPT_FLAG, &c.use_8bit_adam,
         "AdamW with block-wise 8-bit moments, as bitsandbytes' AdamW8bit", 0},
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
        {"lora_rank", OPT_INT, &lora_rank,
         "train LoRA adapters of this rank on to_q/to_k/to_v/to_out.0 (alpha = rank) instead of "
         "the whole UNet (0 = off)", 0},
        {"lora_format", OPT_STR, &lora_fmt,
         "the final adapters as diffusers (pytorch_lora_weights.safetensors), kohya "
         "(lora_kohya.safetensors, for A1111 / ComfyUI) or both (diffusers) [mapo]", 0},
        {"report_to", OPT_STR, &report_to, "tensorboard | all | none (tensorboard)", 0},
        {"logging_dir", OPT_STR, &logging_dir,
         "TensorBoard folder, under output_dir unless absolute (logs)", 0},
        {"tracker_name", OPT_STR, &tracker, "TensorBoard run name: logging_dir/NAME (mapo)", 0},
        {"run_validation", OPT_FLAG, &run_validation,
         "sample the validation prompts every --validation_steps and at the end", 0},
        {"validation_steps", OPT_INT, &c.validation_steps, "validate every N steps (200)", 0},
        {"validation_prompts", OPT_STR, &c.validation_prompts,
         "validation prompts, one per line (default: the official script's four) [mapo]", 0},
        {"validation_num_inference_steps", OPT_INT, &c.validation_num_inference_steps,
         "sampler steps of validation images (25) [mapo]", 0},
        {"validation_guidance_scale", OPT_DOUBLE, &c.validation_guidance_scale,
         "guidance of validation images (5.0) [mapo]", 0},
        {"validation_resolution", OPT_INT, &c.validation_resolution,
         "validation image size (default: the pipeline's) [mapo]", 0},
        {"validation_sampler", OPT_STR, &c.validation_sampler, "euler | ddim (euler) [mapo]", 0},
        {"mixed_precision", OPT_STR, &mixed,
         "no | bf16 | fp16: bf16 runs convolutions and matrix products in bfloat16 with "
         "float32 accumulation and float32 master weights; fp16 runs as bf16 on a CPU (no)", 0},
        {"save_precision", OPT_STR, &save_prec,
         "float32 | fp16 | bf16: dtype of the final unet/ or LoRA weights (round to nearest "
         "even; checkpoints stay float32) (float32) [mapo]", 0},
        {"cache_precision", OPT_STR, &cache_prec,
         "float32 | fp16 | bf16: dtype of the latents and text embeddings when the image "
         "dataset is cached (half the disk; read back as float32); without it a new cache is "
         "float32 and an existing one is kept as it is [mapo]", 0},
        {"gradient_checkpointing", OPT_FLAG, &grad_ckpt,
         "recompute each block's activations in backward instead of keeping them", 0},
        {"recompute_norms", OPT_FLAG, &c.recompute_norms,
         "keep no LayerNorm or GroupNorm + SiLU output for backward but recompute it there (the "
         "same gradients; less memory, about 2-2.5% slower) [mapo]", 0},
        {"no_memory_check", OPT_FLAG, &c.no_memory_check,
         "start even when the memory plan exceeds the memory available [mapo]", 0},
        {"max_memory_mb", OPT_INT, &c.max_memory_mb,
         "memory this run may use, in MiB (default: what /proc/meminfo calls available) [mapo]", 0},
        {"stop_after_steps", OPT_INT, &c.stop_after,
         "stop after N steps of this run, as an interruption would [mapo]", 0},
        {"quiet", OPT_FLAG, &c.quiet, "no progress lines [mapo]", 0},
        {"curves", OPT_FLAG, &curves,
         "at the end, plot train_log.jsonl into output_dir/curves.html [mapo]", 0},
        {"push_to_hub", OPT_IGNORED_FLAG, NULL, hub, 0},
        {"hub_model_id", OPT_IGNORED_VALUE, NULL, hub, 0},
        {"cache_dir", OPT_IGNORED_VALUE, NULL, hub, 0},
        {"revision", OPT_IGNORED_VALUE, NULL, hub, 0},
        {"enable_xformers_memory_efficient_attention", OPT_IGNORED_FLAG, NULL,
         "mapo's attention is always memory-efficient (tiled, row log-sum-exp saved)", 0},
        {"allow_tf32", OPT_IGNORED_FLAG, NULL, gpu, 0},
        {"local_rank", OPT_IGNORED_VALUE, NULL, gpu, 0},
        {"dataloader_num_workers", OPT_IGNORED_VALUE, NULL,
         "the dataset is encoded once into a cache; training reads it from memory", 0},
    };
    int n = (int)(sizeof o / sizeof *o);
    int r = args_parse(o, n, argc, argv, 2,
                       "usage: mapo train --pretrained_model_name_or_path DIR --dataset_name "
                       "DATA [--output_dir DIR] [options]\n"
                       "Flags without [mapo] are the official MaPO script's, with its defaults.");
    if (r) return r > 0 ? 0 : -1;
    if (objective_parse(loss, &c.obj.kind)) return -1;
    mapo_set_weights_variant(variant);
    if (c.checkpoints_total_limit < 0)
        return mapo_error("--checkpoints_total_limit must be >= 1 (or 0: keep all)");
    if (lora_rank < 0 || lora_rank > 4096) return mapo_error("--lora_rank must be in 0..4096");
    c.lora_rank = (int)lora_rank;
    if (res < 0 || res > 8192) return mapo_error("--resolution must be in 1..8192");
    c.resolution = (int)res;
    if ((c.on_bad_image = pref_parse_on_bad_image(bad)) < 0) return -1;
    if (lr_schedule_parse(sched, &c.sched)) return -1;
    lora_format lf;
    if (lora_format_parse(lora_fmt, &lf)) return -1;
    c.lora_format = (int)lf;
    if (!c.split) { /* the official default, used when the folder names splits at all */
        c.split = "validation";
        c.split_soft = 1;
    }
    c.keep_ties = !remove_ties;
    if (label_noise != -1) {
        if (!(label_noise >= 0 && label_noise <= 1))
            return mapo_error("--label_noise_prob must be in [0, 1], got %g", label_noise);
        c.label_noise_prob = label_noise;
    }
    if (mixed_precision_parse(mixed, &c.precision)) return -1;
    c.gradient_checkpointing = grad_ckpt;
    if (st_precision_parse(save_prec, "--save_precision", &c.save_precision) ||
        st_precision_parse(cache_prec ? cache_prec : "float32", "--cache_precision",
                           &c.cache_precision) ||
        (cache_prec && cache_check_given(c.dataset, c.cache_precision)))
        return -1;
    cache_set_default_precision(c.cache_precision, cache_prec != NULL); /* for run_data */
    if (scale_lr) c.learning_rate *= (double)c.train_batch_size * (double)c.grad_accum;
    if (!run_validation) c.validation_steps = 0;
    else if (c.validation_steps < 1) return mapo_error("--validation_steps must be >= 1");
    char tb[4300];
    if (tensorboard_dir(&c, report_to, logging_dir, tracker, tb, sizeof tb)) return -1;
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
