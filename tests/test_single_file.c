/* test_single_file.c -- original-layout SD 1.5 / SDXL single files (single_file.h).
 *
 * Fixtures: tests/fixtures/single_file/{sd15,sdxl,sd15_fp16}.safetensors, written by
 * tools/make_single_file_fixtures.py from the tiny pipelines in tests/fixtures/pipeline/ and
 * checked there with diffusers' own from_single_file. Here:
 *   - the converted folder's tensors are the fixture folder's, byte for byte (the CLIPTextModel
 *     of the fixtures is saved by transformers 5 without "text_model.", the converted one with
 *     it), same dtype, nothing more or less; configs, tokenizers, scheduler identical files;
 *   - the pipeline loaded from it equals the fixture pipeline bit for bit (UNet parameters,
 *     prompt embeddings, a VAE decode, a sampled image);
 *   - F16 files stay F16 and load to the F32 weights rounded to half precision;
 *   - configs come from the tensors where they differ from the config folder's (block widths,
 *     layers, cross-attention width) and from the config folder where tensors cannot tell;
 *   - the config folder from the Hub cache, resolve's cache folder and its reuse;
 *   - refusals: missing tensor, wrong shape, unexpected tensor, missing parts, SD 2.x,
 *     inpainting, not a checkpoint, a pickle, an existing output, a config folder of the other
 *     kind; a refused conversion leaves nothing behind. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/single_file.h"
#include "mapo/unet.h"
#include "testutil.h"

#define SF "tests/fixtures/single_file/"
#define PF "tests/fixtures/pipeline/"

static char g_tmp[64];

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    if (system(cmd)) fail_msg("failed: %s", cmd);
}

static int setup(void **s) {
    (void)s;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_test_sf.XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    setenv("HF_HUB_CACHE", g_tmp, 1); /* an empty Hub cache unless a test fills one */
    setenv("MAPO_CACHE_DIR", g_tmp, 1);
    mapo_log_level = 0;
    return 0;
}
static int teardown(void **s) {
    (void)s;
    sh("rm -rf '%s'%s", g_tmp, "");
    return 0;
}

static void path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_tmp, name); }

/* every tensor of the fixture file b is in a (possibly with "text_model."), same dtype, shape,
   bytes; a has no other tensor */
static void same_tensors(const char *a_path, const char *b_path) {
    st_file a, b;
    if (st_open(&a, a_path) || st_open(&b, b_path)) fail_msg("%s", mapo_last_error());
    assert_int_equal(a.n, b.n);
    for (int i = 0; i < b.n; i++) {
        const st_tensor *tb = &b.tensors[i], *ta = st_find(&a, tb->name);
        char alt[600];
        snprintf(alt, sizeof alt, "text_model.%s", tb->name);
        if (!ta) ta = st_find(&a, alt);
        if (!ta) fail_msg("%s: %s missing from the conversion", b_path, tb->name);
        assert_int_equal(ta->dtype, tb->dtype);
        assert_int_equal(ta->ndim, tb->ndim);
        for (int k = 0; k < tb->ndim; k++) assert_int_equal(ta->shape[k], tb->shape[k]);
        if (memcmp(ta->data, tb->data, tb->nbytes)) fail_msg("%s: %s differs", b_path, tb->name);
    }
    st_close(&a);
    st_close(&b);
}

static char *slurp(const char *p, long *n) {
    FILE *f = fopen(p, "rb");
    if (!f) fail_msg("%s: cannot open", p);
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void same_file(const char *a, const char *b) {
    long na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    if (na != nb || memcmp(x, y, na)) fail_msg("%s and %s differ", a, b);
    free(x);
    free(y);
}

/* two pipelines compute the same thing, bit for bit */
static void same_pipeline(const char *a_dir, const char *b_dir, int exact) {
    pipeline a, b;
    if (pipeline_load(&a, a_dir, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0) ||
        pipeline_load(&b, b_dir, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0))
        fail_msg("%s", mapo_last_error());
    assert_int_equal(a.sdxl, b.sdxl);
    assert_int_equal(a.D, b.D);
    assert_int_equal(a.P, b.P);
    const param_table *ta = &a.unet.params, *tb = &b.unet.params;
    assert_int_equal(ta->n, tb->n);
    for (int i = 0; i < tb->n; i++) {
        assert_string_equal(ta->p[i].name, tb->p[i].name);
        const float *x = ta->data + ta->p[i].offset, *y = tb->data + tb->p[i].offset;
        for (int64_t k = 0; k < tb->p[i].numel; k++) {
            /* F16 files: the F32 weights rounded to half (relative 2^-11, absolute 2^-25) */
            double tol = exact ? 0 : fabs(y[k]) * 4.9e-4 + 3e-8;
            if (!(fabs(x[k] - y[k]) <= tol))
                fail_msg("unet %s[%lld]: %.9g vs %.9g", tb->p[i].name, (long long)k, x[k], y[k]);
        }
    }
    if (exact) {
        const char *pr[2] = {"a photo of a cat", "An astronaut riding a horse on Mars, 4k!"};
        const int64_t n = 2 * (int64_t)a.S * a.D;
        float *ea = malloc(n * 4), *eb = malloc(n * 4), pa[64], pb[64];
        assert_true(a.P <= 32);
        if (pipeline_encode_prompts(&a, pr, 2, ea, a.P ? pa : NULL) ||
            pipeline_encode_prompts(&b, pr, 2, eb, b.P ? pb : NULL))
            fail_msg("%s", mapo_last_error());
        assert_memory_equal(ea, eb, n * 4);
        if (a.P) assert_memory_equal(pa, pb, 2 * a.P * 4);
        free(ea);
        free(eb);
        float z[4 * 8 * 8], xa[3 * 16 * 16], xb[3 * 16 * 16];
        for (int i = 0; i < 4 * 8 * 8; i++) z[i] = (float)((i * 37 % 19) - 9) / 5.0f;
        if (vae_decode(a.vae, z, 1, 8, 8, xa, 0) || vae_decode(b.vae, z, 1, 8, 8, xb, 0))
            fail_msg("%s", mapo_last_error());
        assert_memory_equal(xa, xb, sizeof xa);
        gen_config g;
        gen_config_default(&g);
        g.steps = 2;
        g.height = g.width = 32;
        g.quiet = 1;
        g.seed = 3;
        float ia[32 * 32 * 3], ib[32 * 32 * 3];
        const char *neg = NULL;
        if (generate_images(&a, &g, &pr[1], &neg, 1, NULL, ia) ||
            generate_images(&b, &g, &pr[1], &neg, 1, NULL, ib))
            fail_msg("%s", mapo_last_error());
        assert_memory_equal(ia, ib, sizeof ia);
    }
    pipeline_free(&a);
    pipeline_free(&b);
}

static void convert_ok(const char *file, const char *cfg, const char *out) {
    if (single_file_convert(file, cfg, out, 1)) fail_msg("%s: %s", file, mapo_last_error());
}

static void check_kind(const char *kind) {
    char file[256], cfg[256], out[128], a[512], b[512];
    snprintf(file, sizeof file, SF "%s.safetensors", kind);
    snprintf(cfg, sizeof cfg, PF "%s", kind);
    assert_int_equal(single_file_probe(file), !strcmp(kind, "sdxl") ? SF_SDXL : SF_SD15);
    path(out, sizeof out, kind);
    convert_ok(file, cfg, out);
    static const char *const w[][2] = {{"unet", "diffusion_pytorch_model.safetensors"},
                                       {"vae", "diffusion_pytorch_model.safetensors"},
                                       {"text_encoder", "model.safetensors"},
                                       {"text_encoder_2", "model.safetensors"}};
    const int parts = !strcmp(kind, "sdxl") ? 4 : 3;
    for (int i = 0; i < parts; i++) {
        snprintf(a, sizeof a, "%s/%s/%s", out, w[i][0], w[i][1]);
        snprintf(b, sizeof b, "%s/%s/%s", cfg, w[i][0], w[i][1]);
        same_tensors(a, b);
        snprintf(a, sizeof a, "%s/%s/config.json", out, w[i][0]);
        snprintf(b, sizeof b, "%s/%s/config.json", cfg, w[i][0]);
        same_file(a, b);
    }
    snprintf(a, sizeof a, "%s/text_encoder_2", out);
    if (parts == 3) assert_false(mapo_is_dir(a));
    static const char *const files[] = {
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
        "tokenizer/merges.txt", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json", "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(a, sizeof a, "%s/%s", out, files[i]);
        snprintf(b, sizeof b, "%s/%s", cfg, files[i]);
        assert_int_equal(mapo_is_file(a), mapo_is_file(b));
        if (mapo_is_file(b)) same_file(a, b);
    }
    same_pipeline(out, cfg, 1);
    /* a second conversion into the same folder is refused, the first stays */
    assert_int_equal(single_file_convert(file, cfg, out, 1), -1);
    assert_non_null(strstr(mapo_last_error(), "already exists"));
    snprintf(a, sizeof a, "%s/model_index.json", out);
    assert_true(mapo_is_file(a));
}

static void test_sd15(void **s) { (void)s; check_kind("sd15"); }
static void test_sdxl(void **s) { (void)s; check_kind("sdxl"); }

static void test_fp16(void **s) {
    (void)s;
    char out[128], w[256];
    path(out, sizeof out, "sd15h");
    convert_ok(SF "sd15_fp16.safetensors", PF "sd15", out);
    static const char *const parts[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(w, sizeof w, "%s/%s", out, parts[i]);
        st_file f;
        if (st_open(&f, w)) fail_msg("%s", mapo_last_error());
        for (int k = 0; k < f.n; k++) assert_int_equal(f.tensors[k].dtype, ST_F16);
        st_close(&f);
    }
    same_pipeline(out, PF "sd15", 0);
}

/* write a copy of src without the tensors starting with drop, with tensor `swap` of reversed
   first two dimensions, plus `extra` ([1] F32) */
static void variant(const char *src, const char *dst, const char *drop, const char *swap,
                    const char *extra) {
    st_file f;
    if (st_open(&f, src)) fail_msg("%s", mapo_last_error());
    st_writer *w = st_writer_new();
    static const float one = 1;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (drop && !strncmp(t->name, drop, strlen(drop))) continue;
        int64_t shape[8];
        memcpy(shape, t->shape, sizeof shape);
        if (swap && !strcmp(t->name, swap)) {
            shape[0] = t->shape[1];
            shape[1] = t->shape[0];
        }
        st_writer_add(w, t->name, t->dtype, t->ndim, shape, t->data);
    }
    if (extra) st_writer_add(w, extra, ST_F32, 1, (int64_t[]){1}, &one);
    if (st_writer_write(w, dst)) fail_msg("%s", mapo_last_error());
    st_writer_free(w);
    st_close(&f);
}

/* refused with a message containing needle, leaving nothing in g_tmp but what was there */
static void refused(const char *file, const char *cfg, const char *needle) {
    char out[128];
    path(out, sizeof out, "refused");
    if (single_file_convert(file, cfg, out, 1) != -1) fail_msg("%s: accepted", file);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("%s: '%s' not in: %s", file, needle, mapo_last_error());
    printf("  refused: %s\n", mapo_last_error());
    DIR *d = opendir(g_tmp);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "refused", 7)) fail_msg("%s left %s", file, e->d_name);
    closedir(d);
}

static void test_bad(void **s) {
    (void)s;
    char v[128];
    path(v, sizeof v, "v.safetensors");
#define U "model.diffusion_model."
    variant(SF "sd15.safetensors", v, U "input_blocks.3.0.out_layers.3.bias", NULL, NULL);
    refused(v, PF "sd15", "'" U "input_blocks.3.0.out_layers.3.bias' is missing");
    variant(SF "sd15.safetensors", v, NULL, U "input_blocks.3.0.skip_connection.weight", NULL);
    refused(v, PF "sd15", "'" U "input_blocks.3.0.skip_connection.weight' has shape [8, 16, 1, 1], "
                          "expected [16, 8, 1, 1]");
    variant(SF "sdxl.safetensors", v, NULL, "conditioner.embedders.1.model.text_projection", NULL);
    refused(v, PF "sdxl", "label_emb input width 64 is not text_encoder_2's projection width 32");
    variant(SF "sd15.safetensors", v, NULL, NULL, U "input_blocks.1.1.extra.weight");
    refused(v, PF "sd15", "unexpected tensor '" U "input_blocks.1.1.extra.weight'");
    variant(SF "sd15.safetensors", v, NULL, NULL, "cond_stage_model.transformer.text_model.x");
    refused(v, PF "sd15", "unexpected tensor 'cond_stage_model.transformer.text_model.x'");
    variant(SF "sd15.safetensors", v, "first_stage_model.", NULL, NULL);
    refused(v, PF "sd15", "missing part: no VAE");
    variant(SF "sd15.safetensors", v, "cond_stage_model.", NULL, NULL);
    refused(v, PF "sd15", "missing part: no text encoder");
    variant(SF "sd15.safetensors", v, "model.diffusion_model.", NULL, NULL);
    refused(v, PF "sd15", "missing part: no UNet");
    variant(SF "sdxl.safetensors", v, "conditioner.embedders.1.", NULL, NULL);
    refused(v, PF "sdxl", "without its OpenCLIP ViT-bigG");
    variant(SF "sd15.safetensors", v, NULL, NULL, "cond_stage_model.model.token_embedding.weight");
    refused(v, PF "sd15", "SD 2.x");
    variant(SF "sd15.safetensors", v, NULL, U "input_blocks.0.0.weight", NULL); /* [4, 8, 3, 3] */
    refused(v, PF "sd15", "UNet in_channels 8 != VAE latent channels 4");
    refused(PF "sd15/unet/diffusion_pytorch_model.safetensors", PF "sd15", "diffusers UNet");
    refused(PF "expect_sd15.safetensors", PF "sd15", "not a single-file Stable Diffusion");
    refused(PF "sd15", PF "sd15", "a folder");
    refused(SF "nope.safetensors", PF "sd15", "no such file");
    char ck[128];
    path(ck, sizeof ck, "model.ckpt");
    sh("cp %s %s", SF "sd15.safetensors", ck);
    refused(ck, PF "sd15", "pickles");
    /* config folders of the other kind, or none */
    refused(SF "sd15.safetensors", PF "sdxl", "an SDXL pipeline folder");
    refused(SF "sdxl.safetensors", PF "sd15", "no tokenizer_2/");
    refused(SF "sd15.safetensors", NULL, "give --config_dir");
    refused(SF "sd15.safetensors", "/nonexistent", "no such folder");
    assert_int_equal(single_file_probe(PF "sd15"), SF_NONE);
    assert_int_equal(single_file_probe(PF "sd15/unet/diffusion_pytorch_model.safetensors"),
                     SF_NONE);
}

/* a v-prediction marker sets the scheduler's prediction_type */
static void test_v_pred(void **s) {
    (void)s;
    char v[128], out[128], q[256];
    path(v, sizeof v, "vp.safetensors");
    path(out, sizeof out, "vp");
    variant(SF "sd15.safetensors", v, NULL, NULL, "v_pred");
    convert_ok(v, PF "sd15", out);
    snprintf(q, sizeof q, "%s/scheduler/scheduler_config.json", out);
    FILE *f = fopen(q, "r");
    char buf[4096] = {0};
    assert_true(fread(buf, 1, sizeof buf - 1, f) > 0);
    fclose(f);
    assert_non_null(strstr(buf, "\"prediction_type\": \"v_prediction\""));
    assert_null(strstr(buf, "rescale_betas_zero_snr\": true"));
}

/* an SDXL file whose OpenCLIP projection is stored as a linear weight [P, D] */
static void test_linear_projection(void **s) {
    (void)s;
    char v[128], out[128], a[256];
    path(v, sizeof v, "linproj.safetensors");
    st_file f;
    if (st_open(&f, SF "sdxl.safetensors")) fail_msg("%s", mapo_last_error());
    st_writer *w = st_writer_new();
    float *t = NULL;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *x = &f.tensors[i];
        if (strcmp(x->name, "conditioner.embedders.1.model.text_projection")) {
            st_writer_add(w, x->name, x->dtype, x->ndim, x->shape, x->data);
            continue;
        }
        const int64_t D = x->shape[0], P = x->shape[1];
        float *src = malloc(D * P * 4);
        t = malloc(D * P * 4);
        assert_int_equal(st_to_f32(x, src), 0);
        for (int64_t r = 0; r < P; r++)
            for (int64_t c = 0; c < D; c++) t[r * D + c] = src[c * P + r];
        free(src);
        st_writer_add(w, "conditioner.embedders.1.model.text_projection.weight", ST_F32, 2,
                      (int64_t[]){P, D}, t);
    }
    if (st_writer_write(w, v)) fail_msg("%s", mapo_last_error());
    st_writer_free(w);
    st_close(&f);
    free(t);
    path(out, sizeof out, "linproj");
    convert_ok(v, PF "sdxl", out);
    snprintf(a, sizeof a, "%s/text_encoder_2/model.safetensors", out);
    same_tensors(a, PF "sdxl/text_encoder_2/model.safetensors");
}

/* configs from the tensors where they differ from the config folder's; the rest from it */
static void test_shapes_over_config(void **s) {
    (void)s;
    char cfg[128], out[128], q[600];
    path(cfg, sizeof cfg, "cfg_big");
    sh("cp -r %s %s", PF "sd15", cfg);
    snprintf(q, sizeof q, "%s/unet/config.json", cfg);
    FILE *f = fopen(q, "w");
    fputs("{\"_class_name\": \"UNet2DConditionModel\", \"attention_head_dim\": 8,"
          " \"block_out_channels\": [320, 640, 1280, 1280], \"cross_attention_dim\": 768,"
          " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
          " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"layers_per_block\": 2,"
          " \"norm_num_groups\": 4, \"sample_size\": 16, \"up_block_types\": [\"UpBlock2D\","
          " \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}\n", f);
    fclose(f);
    snprintf(q, sizeof q, "%s/vae/config.json", cfg);
    f = fopen(q, "w");
    fputs("{\"_class_name\": \"AutoencoderKL\", \"block_out_channels\": [128, 256, 512, 512],"
          " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\","
          " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"layers_per_block\": 2,"
          " \"norm_num_groups\": 4, \"sample_size\": 32, \"scaling_factor\": 0.13025,"
          " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
          " \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}\n", f);
    fclose(f);
    path(out, sizeof out, "from_shapes");
    convert_ok(SF "sd15.safetensors", cfg, out);
    snprintf(q, sizeof q, "%s/unet/config.json", out);
    unet_config c;
    if (unet_config_load(&c, q)) fail_msg("%s", mapo_last_error());
    assert_int_equal(c.n_blocks, 2);
    assert_int_equal(c.block_out[0], 8);
    assert_int_equal(c.block_out[1], 16);
    assert_int_equal(c.layers[0], 1);
    assert_int_equal(c.cross_dim, 32);
    assert_int_equal(c.down_cross[0], 1);
    assert_int_equal(c.down_cross[1], 0);
    assert_int_equal(c.up_cross[1], 1);
    assert_int_equal(c.norm_groups, 4); /* from the config folder */
    /* other widths than the folder's: SD 1.5's 8 heads */
    assert_int_equal(c.heads[0], 8);
    unet_config_free(&c);
    same_pipeline(out, PF "sd15", 0); /* same UNet weights (heads do not change them) */
    /* a config folder with only tokenizer + scheduler: the standard configs, whose values the
       tensors cannot tell do not fit this tiny model (CLIP heads of 64 channels in a 32-wide
       encoder, 32 norm groups): refused, naming the reason */
    path(cfg, sizeof cfg, "cfg_min");
    sh("mkdir -p %s/scheduler%s", cfg, "");
    snprintf(q, sizeof q, "cp -r %s %s/ && cp %s %s/scheduler/", PF "sd15/tokenizer", cfg,
             PF "sd15/scheduler/scheduler_config.json", cfg);
    if (system(q)) fail_msg("%s", q);
    refused(SF "sd15.safetensors", cfg, "cannot tell the attention heads of the CLIP text encoder");
}

/* the Hub cache as diffusers would use it offline, and resolve's cache */
static void test_hub_cache_and_resolve(void **s) {
    (void)s;
    char hub[128], snap[512], out[128], q[8400];
    path(hub, sizeof hub, "hub");
    snprintf(snap, sizeof snap, "%s/models--stable-diffusion-v1-5--stable-diffusion-v1-5", hub);
    snprintf(q, sizeof q, "mkdir -p %s/refs %s/snapshots/abc123 && printf abc123 > %s/refs/main"
             " && cd %s && find . \\( -name '*.json' -o -name '*.txt' \\) -exec cp --parents {} "
             "%s/snapshots/abc123 \\;", snap, snap, snap, PF "sd15", snap);
    if (system(q)) fail_msg("%s", q);
    setenv("HF_HUB_CACHE", hub, 1);
    path(out, sizeof out, "from_hub");
    convert_ok(SF "sd15.safetensors", NULL, out);
    same_pipeline(out, PF "sd15", 1);
    setenv("HF_HUB_CACHE", g_tmp, 1);
    /* resolve: folders pass through; a file is converted once, then reused */
    char r1[4096], r2[4096], r3[4096];
    assert_int_equal(single_file_resolve(PF "sd15", NULL, r1, sizeof r1), 0);
    assert_string_equal(r1, PF "sd15");
    const char *arg = NULL;
    assert_int_equal(single_file_resolve_arg(&arg, NULL, r1, sizeof r1), 0);
    assert_null(arg);
    assert_int_equal(single_file_resolve(SF "sd15.safetensors", PF "sd15", r1, sizeof r1), 0);
    assert_non_null(strstr(r1, "/single_file/sd15-"));
    struct stat a, b;
    snprintf(q, sizeof q, "%s/unet/diffusion_pytorch_model.safetensors", r1);
    assert_int_equal(stat(q, &a), 0);
    assert_int_equal(single_file_resolve(SF "sd15.safetensors", PF "sd15", r2, sizeof r2), 0);
    assert_string_equal(r1, r2);
    assert_int_equal(stat(q, &b), 0);
    assert_int_equal(a.st_ino, b.st_ino); /* reused, not rewritten */
    same_pipeline(r1, PF "sd15", 1);
    /* another file (a copy has another mtime) or another config folder: another folder */
    char cp[128], cfg[128];
    path(cp, sizeof cp, "copy.safetensors");
    sh("cp %s %s", SF "sd15.safetensors", cp);
    assert_int_equal(single_file_resolve(cp, PF "sd15", r3, sizeof r3), 0);
    assert_string_not_equal(r1, r3);
    path(cfg, sizeof cfg, "cfg2");
    sh("cp -r %s %s", PF "sd15", cfg);
    snprintf(q, sizeof q, "%s/scheduler/scheduler_config.json", cfg);
    FILE *f = fopen(q, "a");
    fputs("\n", f);
    fclose(f);
    assert_int_equal(single_file_resolve(SF "sd15.safetensors", cfg, r3, sizeof r3), 0);
    assert_string_not_equal(r1, r3);
    /* a refused file converts nothing */
    assert_int_equal(single_file_resolve(PF "expect_sd15.safetensors", PF "sd15", r3, sizeof r3),
                     -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15),
        cmocka_unit_test(test_sdxl),
        cmocka_unit_test(test_fp16),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_v_pred),
        cmocka_unit_test(test_linear_projection),
        cmocka_unit_test(test_shapes_over_config),
        cmocka_unit_test(test_hub_cache_and_resolve),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
