/* test_pixel_pipeline.c -- a pixel-space pipeline (mapo init-pixel-pipeline) against
 * transformers + diffusers.
 *
 * Fixtures (tools/make_pixel_fixtures.py): tests/fixtures/pixel/pipeline/ is a tiny folder
 * written by `mapo init-pixel-pipeline` (UNet 8,8,8, 1 channel, 32 px; CLIP text width 16, one
 * layer; byte-level vocabulary without merges; DDIM with linear betas 1e-4..0.02, clip_sample,
 * set_alpha_to_one, steps_offset 0). expect.safetensors holds what transformers' CLIPTokenizer /
 * CLIPTextModel and diffusers' UNet2DConditionModel / DDIMScheduler, loaded from its
 * subfolders, give for three prompts: token ids (and those of "", the negative prompt),
 * last_hidden_state, and StableDiffusionPipeline's guided DDIM loop (5 steps, guidance 3, the
 * empty prompt as negative) from stored initial noise: the final sample x and the image
 * (x / 2 + 0.5).clamp(0, 1), one channel (mapo copies it to R, G and B). The script also checks
 * that diffusers' own StableDiffusionPipeline(vae=None, output_type="latent") gives that x bit
 * for bit, once its constructor's rewrite of the scheduler config is undone.
 *
 * Tolerances (relative L2 per tensor, ||c - ref|| / ||ref||):
 *   token ids: exact.
 *   prompt embeddings 1e-5 (measured 1.5e-7): both sides are float32 and differ only in
 *     summation order (OpenBLAS vs MKL GEMMs, attention softmax, layer-norm statistics); one
 *     layer of width 16 rounds to about one float32 ulp (torch float32 is 1.3e-7 from torch
 *     float64), 1e-5 is ~80 ulps. quick_gelu for gelu, a missing causal mask or a wrong token
 *     moves them by 1e-2 or more.
 *   images and final x 5e-5 (measured: images 6.8e-6 one at a time, 7.1e-6 batched; x 1.2e-5
 *     and 1.25e-5): sampling amplifies float32 rounding ~20x. One UNet forward rounds to 5e-7 to
 *     8e-7; guidance 3 (3 cond - 2 uncond, of two nearly equal predictions) makes the guided
 *     eps 1.4e-6 to 1.5e-5 from exact over the 5 steps, and DDIM's x0 = (x - sqrt(1 - abar)
 *     eps) / sqrt(abar) divides by sqrt(abar_800) = 0.04. Torch itself in float32 is 5.5e-6
 *     (images) and 9.6e-6 (x) from the same loop in float64, and mapo is closer (4.7e-6, 8.3e-6),
 *     so two correct float32 implementations disagree by ~1e-5: 5e-5 is 4x the measured
 *     disagreement, for other BLAS kernels and thread counts. The smallest deliberate errors
 *     tried while writing this test, each alone, move the images by 30x the bound or more:
 *     guidance 3.01 1.5e-3, clip_sample_range 1.001 1.6e-3, set_alpha_to_one false 3.1e-3,
 *     steps_offset 1 9.0e-3, beta_end 0.0201 1.3e-2, zeros as the negative conditioning 0.42,
 *     scaled_linear betas 0.60, timestep_spacing trailing 0.74, clip_sample false 0.85.
 * The batched run (gen_config.batch = 3) must meet the same bounds; it differs from the
 * one-at-a-time run by ~5e-6 (other GEMM shapes, so other rounding). */
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/pixel_pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/unet.h"
#include "testutil.h"

#define FIX "tests/fixtures/pixel"
#define PIPE FIX "/pipeline"
#define N 3
#define HW 32
#define TOL_EMB 1e-5
#define TOL_IMG 5e-5

static const char *PROMPTS[N] = {"a photo of a sneaker", "An ANKLE boot, size 42!",
                                 "a caf\xc3\xa9 t-shirt"};
static char g_tmp[64];

static float *read_f32(const st_file *f, const char *name, int64_t n) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks %s", name);
    assert_int_equal(t->numel, n);
    float *x = malloc(n * sizeof(float));
    assert_int_equal(st_to_f32(t, x), 0);
    return x;
}

static double cmp(const st_file *f, const char *name, const float *x, int64_t n, double tol) {
    float *ref = read_f32(f, name, n);
    double e = rel_err_f32(x, ref, n);
    free(ref);
    if (!(e <= tol)) fail_msg("%s relative error %.3e > %.0e", name, e, tol);
    return e;
}

static void open_fixture(pipeline *pl, st_file *f) {
    if (pipeline_load(pl, PIPE, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0))
        fail_msg("%s", mapo_last_error());
    if (st_open(f, FIX "/expect.safetensors")) fail_msg("%s", mapo_last_error());
}

/* the folder is a pixel pipeline as mapo reads it; token ids equal transformers' */
static void test_load_and_tokens(void **s) {
    (void)s;
    pipeline pl;
    st_file f;
    open_fixture(&pl, &f);
    assert_int_equal(pl.pixel, 1);
    assert_null(pl.vae);
    assert_int_equal(pl.have_unet, 1);
    assert_int_equal(pl.sdxl, 0);
    assert_int_equal(pipeline_downscale(&pl), 1);
    assert_int_equal(pl.unet.cfg.in_channels, 1);
    assert_int_equal(pl.S, 77);
    assert_int_equal(pl.D, 16);
    assert_int_equal(pl.P, 0);
    const char *names[2] = {"ids", "negative_ids"};
    const char *empty = "";
    for (int k = 0; k < 2; k++) {
        const st_tensor *t = st_find(&f, names[k]);
        if (!t) fail_msg("fixture lacks %s", names[k]);
        assert_int_equal(t->dtype, ST_I64);
        const int n = k == 0 ? N : 1;
        assert_int_equal(t->numel, (int64_t)n * 77);
        for (int i = 0; i < n; i++) {
            int32_t ids[77];
            const char *pr = k == 0 ? PROMPTS[i] : empty;
            int cnt = clip_tokenize(pl.tok[0], pr, ids, 77);
            assert_true(cnt >= 2 && cnt <= 77);
            for (int j = 0; j < 77; j++) {
                int64_t r;
                memcpy(&r, (const char *)t->data + 8 * ((int64_t)i * 77 + j), 8);
                if (ids[j] != r)
                    fail_msg("\"%s\": token %d is %d, transformers gives %lld", pr, j, ids[j],
                             (long long)r);
            }
        }
    }
    st_close(&f);
    pipeline_free(&pl);
}

/* last_hidden_state of the prompts and of "" against CLIPTextModel */
static void test_embeddings(void **s) {
    (void)s;
    pipeline pl;
    st_file f;
    open_fixture(&pl, &f);
    const int64_t sd = (int64_t)pl.S * pl.D;
    float *ehs = malloc(N * sd * sizeof(float));
    if (pipeline_encode_prompts(&pl, PROMPTS, N, ehs, NULL)) fail_msg("%s", mapo_last_error());
    double e = cmp(&f, "prompt_embeds", ehs, N * sd, TOL_EMB);
    const char *empty = "";
    if (pipeline_encode_prompts(&pl, &empty, 1, ehs, NULL)) fail_msg("%s", mapo_last_error());
    double en = cmp(&f, "negative_prompt_embeds", ehs, sd, TOL_EMB);
    printf("  prompt embeddings %.2e, empty prompt %.2e relative (tolerance %.0e)\n", e, en,
           TOL_EMB);
    free(ehs);
    st_close(&f);
    pipeline_free(&pl);
}

/* generate_images (DDIM, 5 steps, guidance 3) from the stored noise against diffusers; one
 * prompt at a time and all three in one batch */
static void test_sampling(void **s) {
    (void)s;
    pipeline pl;
    st_file f;
    open_fixture(&pl, &f);
    const int64_t hw = HW * HW;
    float *lat = read_f32(&f, "latents", N * hw);
    float *ref_img = read_f32(&f, "image", N * hw); /* [N, H, W, 1] */
    float *ref_x = read_f32(&f, "x", N * hw);       /* [N, 1, H, W] */
    float *img = malloc(N * hw * 3 * sizeof(float)), *gray = malloc(N * hw * sizeof(float));
    float *x = malloc(N * hw * sizeof(float)), *first = malloc(N * hw * 3 * sizeof(float));
    gen_config g;
    gen_config_default(&g);
    g.sampler = "ddim";
    g.steps = 5;
    g.guidance_scale = 3.0;
    g.height = g.width = HW;
    g.quiet = 1;
    const char *neg[N] = {NULL, NULL, NULL};
    const int batches[2] = {1, 3};
    for (int b = 0; b < 2; b++) {
        g.batch = batches[b];
        if (generate_images(&pl, &g, PROMPTS, neg, N, lat, img)) fail_msg("%s", mapo_last_error());
        /* one channel copied to R, G and B */
        for (int64_t k = 0; k < N * hw; k++) {
            if (img[3 * k] != img[3 * k + 1] || img[3 * k] != img[3 * k + 2])
                fail_msg("pixel %lld: R, G, B differ (%g %g %g)", (long long)k, img[3 * k],
                         img[3 * k + 1], img[3 * k + 2]);
            assert_true(img[3 * k] >= 0.0f && img[3 * k] <= 1.0f);
            gray[k] = img[3 * k];
            /* the final step has alpha 1: x is the clipped x0, in [-1, 1], so the image is
               x / 2 + 0.5 without clamping and gives x back */
            x[k] = 2.0f * gray[k] - 1.0f;
        }
        double ei = rel_err_f32(gray, ref_img, N * hw), ex = rel_err_f32(x, ref_x, N * hw);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double e = rel_err_f32(gray + i * hw, ref_img + i * hw, hw);
            worst = e > worst ? e : worst;
        }
        printf("  batch %d: images %.2e (worst single image %.2e), final x %.2e relative "
               "(tolerance %.0e)\n", g.batch, ei, worst, ex, TOL_IMG);
        if (!(worst <= TOL_IMG)) fail_msg("batch %d: image relative error %.3e > %.0e", g.batch,
                                          worst, TOL_IMG);
        if (!(ex <= TOL_IMG)) fail_msg("batch %d: final x relative error %.3e > %.0e", g.batch,
                                       ex, TOL_IMG);
        if (b == 0) memcpy(first, img, N * hw * 3 * sizeof(float));
    }
    printf("  batch 3 vs one at a time: %.2e relative\n",
           rel_err_f32(img, first, N * hw * 3));
    free(lat);
    free(ref_img);
    free(ref_x);
    free(img);
    free(gray);
    free(x);
    free(first);
    st_close(&f);
    pipeline_free(&pl);
}

/* ------------------------------------------------------------------ refusals */
static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) fail_msg("cannot copy %s to %s", from, to);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    assert_int_equal(fclose(b), 0);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    char *s = calloc(1, 1 << 16);
    size_t n = fread(s, 1, (1 << 16) - 1, f);
    (void)n;
    fclose(f);
    return s;
}

static void test_refusals(void **s) {
    (void)s;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_pixel_XXXXXX");
    assert_non_null(mkdtemp(g_tmp));
    /* the fixture pipeline, copied, with a UNet of 4 in / out channels (a latent-space UNet,
       config and weights consistent, so only the pixel check can refuse it) */
    static const char *files[] = {"model_index.json", "scheduler/scheduler_config.json",
                                  "tokenizer/vocab.json", "tokenizer/merges.txt",
                                  "tokenizer/special_tokens_map.json",
                                  "tokenizer/tokenizer_config.json", "text_encoder/config.json",
                                  "text_encoder/model.safetensors"};
    static const char *dirs[] = {"scheduler", "tokenizer", "text_encoder", "unet"};
    char a[512], b[512];
    for (int i = 0; i < 4; i++) {
        snprintf(b, sizeof b, "%s/%s", g_tmp, dirs[i]);
        assert_int_equal(mkdir(b, 0755), 0);
    }
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(a, sizeof a, "%s/%s", PIPE, files[i]);
        snprintf(b, sizeof b, "%s/%s", g_tmp, files[i]);
        copy_file(a, b);
    }
    json_error_t je;
    json_t *cfg = json_load_file(PIPE "/unet/config.json", 0, &je);
    assert_non_null(cfg);
    assert_int_equal(json_object_set_new(cfg, "in_channels", json_integer(4)), 0);
    assert_int_equal(json_object_set_new(cfg, "out_channels", json_integer(4)), 0);
    snprintf(b, sizeof b, "%s/unet/config.json", g_tmp);
    assert_int_equal(json_dump_file(cfg, b, JSON_INDENT(2) | JSON_PRESERVE_ORDER), 0);
    json_decref(cfg);
    unet u;
    if (unet_init_dir(&u, b, 1, 0)) fail_msg("%s", mapo_last_error());
    snprintf(b, sizeof b, "%s/unet", g_tmp);
    if (unet_save_dir(&u, b)) fail_msg("%s", mapo_last_error());
    unet_free(&u);
    pipeline pl;
    assert_int_equal(pipeline_load(&pl, g_tmp, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0), -1);
    printf("  4-channel UNet: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "in_channels"));
    /* the same with the UNet alone (no text encoder asked for) */
    assert_int_equal(pipeline_load(&pl, g_tmp, PIPE_VAE | PIPE_UNET, NULL, 0), -1);
    assert_non_null(strstr(mapo_last_error(), "in_channels"));

    /* pixel_pipeline_create never writes into a folder that holds a pipeline */
    snprintf(a, sizeof a, "%s/unet/config.json", g_tmp);
    snprintf(b, sizeof b, "%s/model_index.json", g_tmp);
    char *cfg_before = slurp(a), *mi_before = slurp(b);
    pixel_pipeline_config c;
    pixel_pipeline_config_default(&c);
    assert_int_equal(pixel_pipeline_create(g_tmp, &c), -1);
    printf("  create over a pipeline: %s\n", mapo_last_error());
    assert_non_null(strstr(mapo_last_error(), "model_index.json"));
    char *cfg_after = slurp(a), *mi_after = slurp(b);
    assert_string_equal(cfg_before, cfg_after);
    assert_string_equal(mi_before, mi_after);
    free(cfg_before);
    free(cfg_after);
    free(mi_before);
    free(mi_after);
    /* nor into the committed fixture */
    assert_int_equal(pixel_pipeline_create(PIPE, &c), -1);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static int cleanup(void **s) {
    (void)s;
    if (g_tmp[0]) nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_and_tokens),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
