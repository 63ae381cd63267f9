/* test_pipeline.c -- SD 1.5 / SDXL conditioning and sampling against diffusers.
 *
 * Fixtures: tests/fixtures/pipeline/{sd15,sdxl}/ are tiny random-initialised pipelines saved by
 * diffusers (tools/make_pipeline_fixtures.py); expect_<pipe>.safetensors holds
 * pipe.encode_prompt(...) for two prompts and pipe(...) images (output_type "np") from given
 * initial latents with DDIM and Euler, with and without a negative prompt.
 *
 * Tolerances: conditioning 1e-4 relative (float32 text encoders, as test_clip_text.c). Images:
 * the 1e-3 relative: 4 sampler steps x 2 UNet passes x VAE decode, each good to ~1e-6,
 * then a clamp to [0, 1]; a wrong guidance formula, timestep, sigma or time_ids moves the
 * image by 1e-2 or more (checked while writing this test by breaking each). */
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/safetensors.h"
#include "testutil.h"

static const char *PROMPTS[2] = {"a photo of a cat", "An astronaut riding a horse on Mars, 4k!"};
static const char *NEG = "blurry, low quality";

static double cmp(const st_file *f, const char *name, const float *x, int64_t n, double tol) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("fixture lacks %s", name);
    assert_int_equal(t->numel, n);
    float *ref = malloc(n * sizeof(float));
    assert_int_equal(st_to_f32(t, ref), 0);
    double e = rel_err_f32(x, ref, n);
    free(ref);
    if (!(e <= tol)) fail_msg("%s relative error %.3e > %.0e", name, e, tol);
    return e;
}

static void run(const char *kind) {
    char dir[256], p[300];
    snprintf(dir, sizeof dir, "tests/fixtures/pipeline/%s", kind);
    pipeline pl;
    if (pipeline_load(&pl, dir, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0))
        fail_msg("%s", mapo_last_error());
    assert_int_equal(pl.sdxl, !strcmp(kind, "sdxl"));
    st_file f;
    snprintf(p, sizeof p, "tests/fixtures/pipeline/expect_%s.safetensors", kind);
    if (st_open(&f, p)) fail_msg("%s", mapo_last_error());
    /* conditioning */
    const int64_t sd = (int64_t)pl.S * pl.D;
    float *ehs = malloc(2 * sd * sizeof(float)), *pooled = pl.P ? malloc(2 * pl.P * 4) : NULL;
    if (pipeline_encode_prompts(&pl, PROMPTS, 2, ehs, pooled)) fail_msg("%s", mapo_last_error());
    double wc = 0;
    for (int i = 0; i < 2; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "cond.%d.prompt_embeds", i);
        double e = cmp(&f, nm, ehs + i * sd, sd, 1e-4);
        wc = e > wc ? e : wc;
        if (pl.P) {
            snprintf(nm, sizeof nm, "cond.%d.pooled", i);
            e = cmp(&f, nm, pooled + i * pl.P, pl.P, 1e-4);
            wc = e > wc ? e : wc;
        }
    }
    /* sampling */
    gen_config g;
    gen_config_default(&g);
    g.steps = 4;
    g.guidance_scale = 5.0;
    g.height = g.width = 32;
    g.quiet = 1;
    const char *samplers[2] = {"ddim", "euler"}, *negs[2] = {"neg", "none"};
    double wi = 0;
    float *img = malloc(32 * 32 * 3 * sizeof(float));
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 2; k++) {
            char nm[96];
            snprintf(nm, sizeof nm, "sample.%s.%s.latents", samplers[s], negs[k]);
            const st_tensor *lt = st_find(&f, nm);
            assert_non_null(lt);
            float lat[4 * 16 * 16];
            assert_int_equal(lt->numel, 4 * 16 * 16);
            assert_int_equal(st_to_f32(lt, lat), 0);
            g.sampler = samplers[s];
            const char *neg = k == 0 ? NEG : NULL;
            if (generate_images(&pl, &g, &PROMPTS[1], &neg, 1, lat, img))
                fail_msg("%s", mapo_last_error());
            snprintf(nm, sizeof nm, "sample.%s.%s.image", samplers[s], negs[k]);
            double e = cmp(&f, nm, img, 32 * 32 * 3, 1e-3);
            printf("  %s %-5s %-4s image relative error %.2e\n", kind, samplers[s], negs[k], e);
            wi = e > wi ? e : wi;
        }
    printf("  %s: conditioning worst %.2e, images worst %.2e\n", kind, wc, wi);
    free(img);
    free(ehs);
    free(pooled);
    st_close(&f);
    pipeline_free(&pl);
}

static void test_sd15(void **s) { (void)s; run("sd15"); }
static void test_sdxl(void **s) { (void)s; run("sdxl"); }

static void test_bad(void **s) {
    (void)s;
    pipeline pl;
    assert_int_equal(pipeline_load(&pl, "/nonexistent", PIPE_TEXT, NULL, 0), -1);
    /* a UNet folder is not a pipeline: no tokenizer */
    assert_int_equal(pipeline_load(&pl, "tests/fixtures/unet/sd15", PIPE_TEXT, NULL, 0), -1);
    /* the SD 1.5 text encoder does not fit the SDXL UNet */
    assert_int_equal(pipeline_load(&pl, "tests/fixtures/pipeline/sd15", PIPE_TEXT | PIPE_UNET,
                                   "tests/fixtures/pipeline/sdxl/unet", 0), -1);
    assert_non_null(strstr(mapo_last_error(), "cross_attention_dim"));
    /* sizes the pipeline cannot make */
    assert_int_equal(pipeline_load(&pl, "tests/fixtures/pipeline/sd15",
                                   PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0), 0);
    gen_config g;
    gen_config_default(&g);
    g.height = 30;
    g.width = 32;
    g.steps = 2;
    g.quiet = 1;
    float img[32 * 32 * 3];
    const char *pr = "x", *ng = NULL;
    assert_int_equal(generate_images(&pl, &g, &pr, &ng, 1, NULL, img), -1);
    g.height = 32;
    g.sampler = "heun";
    assert_int_equal(generate_images(&pl, &g, &pr, &ng, 1, NULL, img), -1);
    pipeline_free(&pl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15),
        cmocka_unit_test(test_sdxl),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
