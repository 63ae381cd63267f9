/* cmd_study.c -- the Fashion-MNIST study's commands: init-pixel-pipeline, fmnist-data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/fmnist_eval.h"
#include "mapo/fmnist_study.h"
#include "mapo/pixel_pipeline.h"

#define NOPT(o) ((int)(sizeof(o) / sizeof((o)[0])))

static int parse_triple(const char *s, int out[3]) {
    if (sscanf(s, "%d,%d,%d", &out[0], &out[1], &out[2]) != 3)
        return mapo_error("--block_out_channels '%s': expected three integers like 32,64,64", s);
    return 0;
}

int cmd_init_pixel_pipeline(int argc, char **argv) {
    pixel_pipeline_config c;
    pixel_pipeline_config_default(&c);
    const char *out = NULL, *bo = NULL;
    int64_t seed = 0, ch = c.channels, size = c.image_size, layers = c.layers_per_block,
            heads = c.heads, tw = c.text_width, tl = c.text_layers;
    opt_def o[] = {
        {"out", OPT_STR, &out, "the pipeline folder to create", 0},
        {"seed", OPT_INT, &seed, "initialisation seed of the text encoder and UNet (0)", 0},
        {"channels", OPT_INT, &ch, "1 (gray, default) or 3 (RGB)", 0},
        {"image_size", OPT_INT, &size, "pixels per side (32)", 0},
        {"block_out_channels", OPT_STR, &bo, "UNet widths of the 3 blocks (32,64,64)", 0},
        {"layers_per_block", OPT_INT, &layers, "resnets per block (1)", 0},
        {"attention_heads", OPT_INT, &heads, "heads per attention (4)", 0},
        {"text_width", OPT_INT, &tw, "text encoder width = cross_attention_dim (32)", 0},
        {"text_layers", OPT_INT, &tl, "text encoder layers (2)", 0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo init-pixel-pipeline --out DIR [options]\n"
                       "A pixel-space text-to-image pipeline in diffusers' folder layout (no VAE): "
                       "seeded random UNet and frozen random CLIP text encoder.");
    if (r) return r > 0 ? 0 : -1;
    if (!out) return mapo_error("init-pixel-pipeline needs --out");
    if (bo && parse_triple(bo, c.block_out)) return -1;
    if (ch < 1 || ch > 3 || size < 1 || size > 1024 || layers < 1 || layers > 8 || heads < 1 ||
        heads > 64 || tw < 1 || tw > 4096 || tl < 1 || tl > 48)
        return mapo_error("a size option is out of range (see --help)");
    c.seed = (uint64_t)seed;
    c.channels = (int)ch;
    c.image_size = (int)size;
    c.layers_per_block = (int)layers;
    c.heads = (int)heads;
    c.text_width = (int)tw;
    c.text_layers = (int)tl;
    if (pixel_pipeline_create(out, &c)) return -1;
    printf("%s: pixel-space pipeline (%dx%dx%d)\n", out, c.channels, c.image_size, c.image_size);
    return 0;
}

int cmd_fmnist_data(int argc, char **argv) {
    fm_pretrain_cfg c;
    fm_pretrain_cfg_default(&c);
    int64_t seed = 0, maxn = 0;
    opt_def o[] = {
        {"pipeline", OPT_STR, &c.pipeline, "pixel pipeline folder (its text encoder)", 0},
        {"data", OPT_STR, &c.data_dir, "Fashion-MNIST IDX folder (the Debian package's)", 0},
        {"split", OPT_STR, &c.split, "train (default) or t10k", 0},
        {"out", OPT_STR, &c.out, "output file (.safetensors)", 0},
        {"mark_share", OPT_DOUBLE, &c.mark_share, "share of images with the mark (0.1)", 0},
        {"caption_dropout", OPT_DOUBLE, &c.caption_dropout,
         "share of images with the empty prompt (0.1)", 0},
        {"max_images", OPT_INT, &maxn, "use the first N images only (0: all)", 0},
        {"seed", OPT_INT, &seed, "which images are marked / uncaptioned (0)", 0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo fmnist-data --pipeline DIR --out FILE [options]\n"
                       "Fashion-MNIST as captioned 32x32 images for `mapo train --loss sft`.");
    if (r) return r > 0 ? 0 : -1;
    if (!c.pipeline || !c.out) return mapo_error("fmnist-data needs --pipeline and --out");
    if (strcmp(c.split, "train") && strcmp(c.split, "t10k"))
        return mapo_error("--split must be train or t10k");
    if (maxn < 0) return mapo_error("--max_images must be >= 0");
    c.max_images = maxn;
    c.seed = (uint64_t)seed;
    return fm_build_pretrain(&c);
}

int cmd_fmnist_evaluators(int argc, char **argv) {
    fm_eval_train_cfg c = {0};
    int64_t seed = 0;
    c.epochs = 2;
    opt_def o[] = {
        {"out", OPT_STR, &c.out, "evaluators folder (classifier/, style/, mark/)", 0},
        {"data", OPT_STR, &c.data_dir, "Fashion-MNIST IDX folder (the Debian package's)", 0},
        {"epochs", OPT_INT, &c.epochs, "training epochs of each judge (2)", 0},
        {"max_images", OPT_INT, &c.max_images, "first N images of each split only (0: all)", 0},
        {"seed", OPT_INT, &seed, "initialisation, order and augmentation seed (0)", 0},
        {"quiet", OPT_FLAG, &c.quiet, "no per-epoch lines", 0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo fmnist-evaluators --out DIR [options]\n"
                       "Trains the study's judges (class classifier, style and mark detectors) on "
                       "the train split and scores them on the test split.");
    if (r) return r > 0 ? 0 : -1;
    if (!c.out) return mapo_error("fmnist-evaluators needs --out");
    if (c.max_images < 0) return mapo_error("--max_images must be >= 0");
    c.seed = (uint64_t)seed;
    return fm_train_evaluators(&c);
}

int cmd_eval(int argc, char **argv) {
    fm_eval_cfg c;
    fm_eval_cfg_default(&c);
    int64_t seed = (int64_t)c.noise_seed;
    opt_def o[] = {
        {"model", OPT_STR, &c.model, "pixel pipeline folder (the base model)", 0},
        {"unet", OPT_STR, &c.unet_dir, "a trained UNet folder to use instead of model/unet", 0},
        {"lora", OPT_STR, &c.lora, "a LoRA file or folder to apply", 0},
        {"evaluators", OPT_STR, &c.evaluators, "the judges (mapo fmnist-evaluators)", 0},
        {"out", OPT_STR, &c.out, "output folder: eval.json, scores.safetensors, grid.png", 0},
        {"task", OPT_STR, &c.task, "style | safety | general: the judge of the win rate", 0},
        {"against", OPT_STR, &c.against, "scores.safetensors of another model (same noise)", 0},
        {"pairs", OPT_STR, &c.pairs, "held-out pair file: preference accuracy", 0},
        {"per_class", OPT_INT, &c.per_class, "samples per class (20)", 0},
        {"noise_seed", OPT_INT, &seed, "seed of the initial noise (1)", 0},
        {"num_inference_steps", OPT_INT, &c.steps, "DDIM steps (20)", 0},
        {"guidance_scale", OPT_DOUBLE, &c.guidance, "classifier-free guidance (3)", 0},
        {"pref_draws", OPT_INT, &c.pref_draws, "noise / timestep draws per held-out pair (4)", 0},
        {"data", OPT_STR, &c.data_dir, "Fashion-MNIST folder (the Frechet reference)", 0},
        {"fd_images", OPT_INT, &c.fd_images, "real test images for the Frechet distance (0: all)", 0},
        {"grid_cols", OPT_INT, &c.grid_cols, "samples per class in grid.png (10)", 0},
        {"quiet", OPT_FLAG, &c.quiet, "do not print eval.json", 0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo eval --model DIR [--unet DIR | --lora F] --evaluators DIR "
                       "--out DIR [--task T --against SCORES] [--pairs HELDOUT]\n"
                       "Samples every class from fixed noise, judges the images and reports "
                       "rates, Frechet distance, a paired win rate and preference accuracy.");
    if (r) return r > 0 ? 0 : -1;
    if (seed < 0) return mapo_error("--noise_seed must be >= 0");
    c.noise_seed = (uint64_t)seed;
    return fm_eval_run(&c);
}

int cmd_fmnist_pairs(int argc, char **argv) {
    fm_pairs_cfg c = {0};
    const char *task = NULL;
    int64_t seed = 0;
    c.split = "train";
    c.strength = 1.0;
    opt_def o[] = {
        {"task", OPT_STR, &task, "style | safety | general", 0},
        {"strength", OPT_DOUBLE, &c.strength, "style strength in (0, 1] (1)", 0},
        {"pool", OPT_STR, &c.pool, "scores.safetensors of the base model (mapo eval)", 0},
        {"pipeline", OPT_STR, &c.pipeline, "the pipeline (prompt embeddings)", 0},
        {"evaluators", OPT_STR, &c.evaluators, "the judges (features for the mismatch)", 0},
        {"data", OPT_STR, &c.data_dir, "Fashion-MNIST folder", 0},
        {"split", OPT_STR, &c.split, "real images of the style task: train or t10k (train)", 0},
        {"out", OPT_STR, &c.out, "the pair file to write (+ .json with the mismatch)", 0},
        {"seed", OPT_INT, &seed, "which real image each style pair takes (0)", 0},
        {"quiet", OPT_FLAG, &c.quiet, "do not print the task line", 0},
    };
    int r = args_parse(o, NOPT(o), argc, argv, 2,
                       "usage: mapo fmnist-pairs --task T --pool SCORES --pipeline DIR "
                       "--evaluators DIR --out FILE [--strength S] [--split train|t10k]");
    if (r) return r > 0 ? 0 : -1;
    if (!task) return mapo_error("fmnist-pairs needs --task");
    if (fm_task_parse(task, &c.task)) return -1;
    if (strcmp(c.split, "train") && strcmp(c.split, "t10k"))
        return mapo_error("--split must be train or t10k");
    c.seed = (uint64_t)seed;
    return fm_build_pairs(&c);
}
