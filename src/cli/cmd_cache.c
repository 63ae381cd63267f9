/* cmd_cache.c -- mapo cache: encode a preference dataset (or an images-only manifest) once
 * (see cache.h). */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/cache.h"
#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/single_file.h"

int cmd_cache(int argc, char **argv) {
    cache_config c;
    cache_config_default(&c);
    int64_t res = 0, vbatch = 8;
    const char *bad = "skip", *latents = "sample", *config_dir = NULL;
    static char model_buf[4096], ref_buf[4096];
    const char *variant = NULL, *prec = "float32";
    opt_def o[] = {
        {"variant", OPT_STR, &variant,
         "read <name>.<variant>.safetensors weights (e.g. fp16) where the folders have them", 0},
        {"pretrained_model_name_or_path", OPT_STR, &c.model_dir,
         "pipeline folder (tokenizer(s), text encoder(s), vae, unet config); without vae/ "
         "(pixel space) the images themselves are cached; or a single-file checkpoint "
         "(.safetensors; converted once into a cache)", 0},
        {"config_dir", OPT_STR, &config_dir, "with a single-file model: the pipeline folder of "
         "its kind giving tokenizer(s), scheduler, configs (default: the Hub cache)", 0},
        {"dataset_name", OPT_STR, &c.dataset,
         "Pick-a-Pic-style parquet file or folder, or a JSONL manifest (file or folder) of "
         "pairs {caption, chosen, rejected} or of single images {caption, image}", 0},
        {"out", OPT_STR, &c.out, "the cache file to write (.safetensors)", 0},
        {"resolution", OPT_INT, &res, "training resolution (default: UNet sample_size x VAE factor, x 1 without a VAE)", 0},
        {"random_crop", OPT_FLAG, &c.random_crop, "random instead of center crop", 0},
        {"no_hflip", OPT_FLAG, &c.no_hflip, "no random horizontal flip", 0},
        {"on_bad_image", OPT_STR, &bad, "skip | fail: what to do with undecodable images (skip)", 0},
        {"allow_outside_paths", OPT_FLAG, &c.allow_outside_paths,
         "manifests: read image paths that lead outside the manifest's folder (absolute, .., "
         "symlinks); refused by default", 0},
        {"vae_latents", OPT_STR, &latents,
         "sample | mean: latent_dist.sample() as the scripts, or its mean (sample); "
         "no effect without a VAE", 0},
        {"seed", OPT_INT, &c.seed, "seed of flips, crops and VAE samples (0); use the training seed", 0},
        {"max_pairs", OPT_INT, &c.max_pairs, "encode only the first N pairs (0 = all)", 0},
        {"dataset_split_name", OPT_STR, &c.split,
         "parquet folders with splits: which one (train)", 0},
        {"keep_ties", OPT_FLAG, &c.keep_ties,
         "keep pairs whose labels tie, jpg_0 chosen (mapo train --remove_ties false)", 0},
        {"pretrained_vae_model_name_or_path", OPT_STR, &c.vae_dir,
         "a VAE folder used instead of the pipeline's vae/", 0},
        {"vae_encode_batch_size", OPT_INT, &vbatch, "images per VAE encode call (8)", 0},
        {"ref_model", OPT_STR, &c.ref_unet,
         "also store Diffusion-DPO reference errors of this UNet (folder or pipeline)", 0},
        {"ref_epochs", OPT_INT, &c.ref_epochs, "epochs of reference errors to store (1)", 0},
        {"cache_precision", OPT_STR, &prec,
         "float32 | fp16 | bf16: dtype of the latents (or images) and text embeddings; fp16 / "
         "bf16 halve the file and are read back as float32 (float32)", 0},
        {"quiet", OPT_FLAG, &c.quiet, "no progress", 0},
    };
    int r = args_parse(o, (int)(sizeof o / sizeof *o), argc, argv, 2,
                       "usage: mapo cache --pretrained_model_name_or_path PIPELINE_DIR "
                       "--dataset_name DATA --out CACHE.safetensors [options]");
    mapo_set_weights_variant(variant);
    if (vbatch < 1) return mapo_error("--vae_encode_batch_size must be >= 1");
    c.vae_batch = (int)vbatch;
    if (r) return r > 0 ? 0 : -1;
    if ((c.on_bad_image = pref_parse_on_bad_image(bad)) < 0) return -1;
    if (st_precision_parse(prec, "--cache_precision", &c.precision)) return -1;
    if (!strcmp(latents, "mean")) c.latents_mean = 1;
    else if (strcmp(latents, "sample")) return mapo_error("--vae_latents must be sample or mean");
    if (res < 0 || res > 8192) return mapo_error("--resolution must be in 1..8192");
    c.resolution = (int)res;
    if (c.ref_unet && c.ref_epochs == 0) c.ref_epochs = 1;
    if (single_file_resolve_arg(&c.model_dir, config_dir, model_buf, sizeof model_buf) ||
        single_file_resolve_arg(&c.ref_unet, config_dir, ref_buf, sizeof ref_buf))
        return -1;
    return cache_build(&c);
}
