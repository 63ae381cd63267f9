/* cmd_sample.c -- mapo sample: images from a pipeline folder (optionally a trained UNet or a
 * LoRA), one PNG per prompt and a grid. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/image.h"
#include "mapo/safetensors.h"
#include "mapo/single_file.h"

/* prompts: one per line; empty lines and lines starting with # are skipped */
static int read_prompts(const char *path, char ***out, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) return mapo_error("%s: cannot open", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int cnt = 0, alloc = 0;
    char **v = NULL;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len || line[0] == '#') continue;
        if (cnt == alloc) {
            alloc = alloc ? 2 * alloc : 16;
            v = xrealloc(v, alloc * sizeof *v);
        }
        v[cnt++] = xstrdup(line);
    }
    free(line);
    fclose(f);
    if (!cnt) return mapo_error("%s: no prompts in the file", path);
    *out = v;
    *n = cnt;
    return 0;
}

/* out.png -> out-003.png */
static void numbered(char *dst, size_t n, const char *out, int i) {
    const char *dot = strrchr(out, '.');
    int stem = dot ? (int)(dot - out) : (int)strlen(out);
    snprintf(dst, n, "%.*s-%03d%s", stem, out, i, dot ? dot : ".png");
}

int cmd_sample(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *prompts_file = NULL, *neg = NULL, *out = NULL;
    const char *grid = NULL, *unet_dir = NULL, *lora = NULL, *latents = NULL, *sampler = "euler";
    const char *config_dir = NULL;
    char model_buf[4096];
    int64_t steps = 30, seed = 0, height = 0, width = 0, rows = 0, tiled = -1, batch = 1;
    double guidance = -1;
    int quiet = 0;
    const char *mixed = NULL;
    const char *variant = NULL;
    opt_def o[] = {
        {"variant", OPT_STR, &variant,
         "read <name>.<variant>.safetensors weights (e.g. fp16) where the folders have them", 0},
        {"model", OPT_STR, &model, "diffusers pipeline folder (SD 1.5 or SDXL), or a single-file "
                                   "checkpoint (.safetensors; converted once into a cache)", 0},
        {"config_dir", OPT_STR, &config_dir, "with a single-file --model: the pipeline folder "
         "of its kind giving tokenizer(s), scheduler, configs (default: the Hub cache)", 0},
        {"prompt", OPT_STR, &prompt, "the prompt", 0},
        {"prompts_file", OPT_STR, &prompts_file, "one prompt per line (instead of --prompt)", 0},
        {"negative_prompt", OPT_STR, &neg, "negative prompt for every image (default none)", 0},
        {"num_inference_steps", OPT_INT, &steps, "sampler steps (30)", 0},
        {"guidance_scale", OPT_DOUBLE, &guidance,
         "classifier-free guidance; <= 1 turns it off (SD 1.5: 7.5, SDXL: 5.0)", 0},
        {"sampler", OPT_STR, &sampler, "euler | ddim (euler)", 0},
        {"seed", OPT_INT, &seed, "seed of the initial latents (0); image i uses stream i", 0},
        {"height", OPT_INT, &height, "image height in pixels (default: the UNet's sample_size x "
                                     "the VAE factor)", 0},
        {"width", OPT_INT, &width, "image width in pixels (default as height)", 0},
        {"unet", OPT_STR, &unet_dir, "use this UNet folder (e.g. a trained output_dir/unet)", 0},
        {"lora", OPT_STR, &lora, "apply a LoRA (pytorch_lora_weights.safetensors or its folder)", 0},
        {"latents", OPT_STR, &latents,
         "initial latents [n, C, h, w] from a safetensors tensor \"latents\" (reproduce diffusers)", 0},
        {"tiled_decode", OPT_INT, &tiled, "1 tiled VAE decode, 0 whole, -1 auto (-1)", 0},
        {"out", OPT_STR, &out, "output PNG (several prompts: OUT-000.png, OUT-001.png, ...)", 0},
        {"grid", OPT_STR, &grid, "also write all images as one grid PNG", 0},
        {"grid_rows", OPT_INT, &rows, "rows of the grid (default: about square)", 0},
        {"batch", OPT_INT, &batch, "images denoised together (1)", 0},
        {"quiet", OPT_FLAG, &quiet, "no progress", 0},
        {"mixed_precision", OPT_STR, &mixed, "no | bf16 | fp16: the UNet's convolutions and "
                                             "matrix products in bf16 (no; fp16 runs as bf16)", 0},
    };
    int r = args_parse(o, (int)(sizeof o / sizeof *o), argc, argv, 2,
                       "usage: mapo sample --model PIPELINE_DIR --prompt TEXT --out FILE.png "
                       "[options]");
    mapo_set_weights_variant(variant);
    if (r) return r > 0 ? 0 : -1;
    if (!model || !out) return mapo_error("sample needs --model and --out");
    int precision;
    if (mixed_precision_parse(mixed, &precision)) return -1;
    if (!!prompt == !!prompts_file) return mapo_error("give exactly one of --prompt and --prompts_file");
    if (height < 0 || width < 0 || height > IMAGE_MAX_SIDE || width > IMAGE_MAX_SIDE)
        return mapo_error("--height and --width must be in 1..%d", IMAGE_MAX_SIDE);
    if (steps < 1 || steps > 1000) return mapo_error("--num_inference_steps must be in 1..1000");
    if (tiled < -1 || tiled > 1) return mapo_error("--tiled_decode must be -1, 0 or 1");
    if (strcmp(sampler, "euler") && strcmp(sampler, "ddim"))
        return mapo_error("unknown --sampler '%s' (euler, ddim)", sampler);
    if (single_file_resolve_arg(&model, config_dir, model_buf, sizeof model_buf)) return -1;
    char **prompts = NULL;
    int n = 1;
    if (prompts_file) {
        if (read_prompts(prompts_file, &prompts, &n)) return -1;
    } else {
        prompts = xmalloc(sizeof *prompts);
        prompts[0] = xstrdup(prompt);
    }
    int rc = 0;
    pipeline p;
    float *init = NULL, *img = NULL;
    uint8_t *u8 = NULL;
    const char **negs = xcalloc(n, sizeof *negs);
    for (int i = 0; i < n; i++) negs[i] = neg;
    if (pipeline_load(&p, model, PIPE_TEXT | PIPE_VAE | PIPE_UNET, unet_dir,
                      unet_frozen_mode(precision))) {
        rc = -1;
        goto done;
    }
    if (lora && unet_lora_load(&p.unet, lora, 0)) {
        rc = -1;
        goto done_p;
    }
    p.unet.precision = precision;
    gen_config g;
    gen_config_default(&g);
    g.sampler = sampler;
    g.steps = (int)steps;
    g.guidance_scale = guidance >= 0 ? guidance : (p.sdxl ? 5.0 : 7.5);
    const int f = pipeline_downscale(&p);
    g.height = height ? (int)height : p.unet.cfg.sample_size * f;
    g.width = width ? (int)width : g.height;
    g.seed = (uint64_t)seed;
    if (g.height < 1 || g.width < 1 || g.height > IMAGE_MAX_SIDE || g.width > IMAGE_MAX_SIDE ||
        (int64_t)g.height * g.width > IMAGE_MAX_PIXELS) {
        rc = mapo_error("--height %d x --width %d is outside 1..%d per side (at most %lld pixels)",
                        g.height, g.width, IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
        goto done_p;
    }
    g.tiled_decode = (int)tiled;
    g.quiet = quiet;
    if (batch < 1 || batch > 4096) {
        rc = mapo_error("--batch must be in 1..4096");
        goto done_p;
    }
    g.batch = (int)batch;
    if (latents) {
        st_file sf;
        if (st_open(&sf, latents)) {
            rc = -1;
            goto done_p;
        }
        const int64_t shape[4] = {n, p.unet.cfg.in_channels, g.height / f, g.width / f};
        init = xmalloc((size_t)shape[0] * shape[1] * shape[2] * shape[3] * sizeof(float));
        rc = st_read_f32_shape(&sf, "latents", init, 4, shape);
        st_close(&sf);
        if (rc) goto done_p;
    }
    const int64_t hw3 = (int64_t)g.height * g.width * 3;
    img = xmalloc((size_t)n * hw3 * sizeof(float));
    if (generate_images(&p, &g, (const char *const *)prompts, negs, n, init, img)) {
        rc = -1;
        goto done_p;
    }
    u8 = xmalloc((size_t)n * hw3);
    images_to_u8(u8, img, n * hw3);
    for (int i = 0; i < n && !rc; i++) {
        char path[4200];
        if (n == 1) snprintf(path, sizeof path, "%s", out);
        else numbered(path, sizeof path, out, i);
        rc = image_write_png(path, u8 + (size_t)i * hw3, g.width, g.height);
        if (!rc && !quiet) mapo_log(1, "wrote %s\n", path);
    }
    if (!rc && grid) {
        int R = rows > 0 ? (int)rows : (int)floor(sqrt((double)n));
        if (R < 1) R = 1;
        int Cc = (n + R - 1) / R;
        mapo_image *ims = xcalloc(n, sizeof *ims), gi = {0};
        for (int i = 0; i < n; i++) {
            ims[i].w = g.width;
            ims[i].h = g.height;
            ims[i].c = 3;
            ims[i].px = u8 + (size_t)i * hw3;
        }
        rc = image_grid(&gi, ims, n, R, Cc);
        if (!rc) rc = image_write_png(grid, gi.px, gi.w, gi.h);
        if (!rc && !quiet) mapo_log(1, "wrote %s (%d x %d)\n", grid, R, Cc);
        image_free(&gi);
        free(ims);
    }
done_p:
    pipeline_free(&p);
done:
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts);
    free(negs);
    free(init);
    free(img);
    free(u8);
    return rc;
}
