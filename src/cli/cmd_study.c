/* cmd_study.c -- the Fashion-MNIST study's commands: init-pixel-pipeline, fmnist-data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
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
