/* test_lora_kohya.c -- kohya-ss (A1111 / ComfyUI) LoRA files against tools/make_kohya_fixtures.py.
 *
 * The fixtures in tests/fixtures/lora_kohya/ were written in Python from the diffusers-format
 * LoRAs with sd-scripts' names and checked there with diffusers' own kohya converter
 * (pipeline.load_lora_weights / lora_state_dict): same UNet output, same sampled image.
 * Here: mapo writes those files bit for bit (names, dtypes, shapes, alpha, values, metadata);
 * loading a kohya file gives adapters bit-identical to loading the diffusers one (alpha != r
 * folded exactly: r and alpha are powers of two; float16 files within half precision);
 * diffusers -> kohya -> diffusers through lora_convert_file is the identity; files for another
 * UNet are refused with one message naming the tensor; the original-layout names of the full-size
 * SD 1.5 and SDXL configs are the ones real kohya / A1111 files use; sampling the tiny pipelines
 * with the kohya file gives diffusers' image (1e-3 as test_pipeline.c) and exactly mapo's image
 * with the diffusers file. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/lora_formats.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FX "tests/fixtures/lora_kohya"

static char tmpdir[64];

static int setup(void **s) {
    (void)s;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mapo_kohya_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **s) {
    (void)s;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) ? -1 : 0;
}

/* case -> base model and diffusers LoRA */
typedef struct {
    const char *name, *model, *diffusers, *kohya;
} kcase;
static const kcase CASES[] = {
    {"sd15", "tests/fixtures/unet/sd15/model", "tests/fixtures/lora/sd15/pytorch_lora_weights.safetensors",
     FX "/sd15/lora_kohya.safetensors"},
    {"sdxl", "tests/fixtures/unet/sdxl/model", "tests/fixtures/lora/sdxl/pytorch_lora_weights.safetensors",
     FX "/sdxl/lora_kohya.safetensors"},
    {"pipe_sd15", "tests/fixtures/pipeline/sd15", FX "/pipe_sd15/pytorch_lora_weights.safetensors",
     FX "/pipe_sd15/lora_kohya.safetensors"},
    {"pipe_sdxl", "tests/fixtures/pipeline/sdxl", FX "/pipe_sdxl/pytorch_lora_weights.safetensors",
     FX "/pipe_sdxl/lora_kohya.safetensors"},
};
#define NCASES ((int)(sizeof CASES / sizeof *CASES))

static void load_unet(unet *u, const char *model) {
    if (unet_load_dir(u, model, 0)) fail_msg("%s", mapo_last_error());
}
static void load_lora(unet *u, const char *model, const char *lora) {
    load_unet(u, model);
    if (unet_lora_load(u, lora, 0)) fail_msg("%s", mapo_last_error());
}

/* two safetensors files hold the same tensors (names, dtypes, shapes, bytes); metadata too */
static void same_file(const char *a, const char *b, int meta) {
    st_file x, y;
    if (st_open(&x, a) || st_open(&y, b)) fail_msg("%s", mapo_last_error());
    if (x.n != y.n) fail_msg("%s has %d tensors, %s %d", a, x.n, b, y.n);
    for (int i = 0; i < x.n; i++) { /* both sorted by name */
        const st_tensor *s = &x.tensors[i], *t = &y.tensors[i];
        if (strcmp(s->name, t->name)) fail_msg("tensor %d: '%s' vs '%s'", i, s->name, t->name);
        if (s->dtype != t->dtype || s->ndim != t->ndim)
            fail_msg("'%s': dtype/ndim %d/%d vs %d/%d", s->name, s->dtype, s->ndim, t->dtype, t->ndim);
        for (int d = 0; d < s->ndim; d++) assert_int_equal(s->shape[d], t->shape[d]);
        assert_int_equal(s->nbytes, t->nbytes);
        if (memcmp(s->data, t->data, s->nbytes)) fail_msg("'%s': values differ", s->name);
    }
    if (meta) {
        assert_int_equal(x.n_meta, y.n_meta);
        for (int i = 0; i < y.n_meta; i++) {
            const char *v = st_meta(&x, y.meta_keys[i]);
            if (!v || strcmp(v, y.meta_values[i]))
                fail_msg("metadata %s: '%s' vs '%s'", y.meta_keys[i], v ? v : "(none)", y.meta_values[i]);
        }
    }
    st_close(&x);
    st_close(&y);
}

/* the adapters of two UNets: same table, bit-identical values (tol 0) or within tol */
static void same_adapters(const unet *a, const unet *b, double tol, const char *ctx) {
    assert_int_equal(a->lora.n, b->lora.n);
    for (int i = 0; i < a->lora.n; i++) {
        const param_info *p = &a->lora.p[i], *q = &b->lora.p[i];
        if (strcmp(p->name, q->name)) fail_msg("%s: adapter %d '%s' vs '%s'", ctx, i, p->name, q->name);
        assert_int_equal(p->numel, q->numel);
        const float *x = a->lora.data + p->offset, *y = b->lora.data + q->offset;
        if (tol == 0) {
            if (memcmp(x, y, p->numel * sizeof(float))) fail_msg("%s: '%s' differs", ctx, p->name);
        } else {
            double e = rel_err_f32(x, y, p->numel);
            if (!(e <= tol)) fail_msg("%s: '%s' relative error %.2e > %.0e", ctx, p->name, e, tol);
        }
    }
}

/* 1. mapo writes the fixture bit for bit */
static void test_save_equals_fixture(void **s) {
    (void)s;
    for (int k = 0; k < NCASES; k++) {
        unet u;
        load_lora(&u, CASES[k].model, CASES[k].diffusers);
        char p[256];
        snprintf(p, sizeof p, "%s/%s.safetensors", tmpdir, CASES[k].name);
        if (unet_lora_save_kohya(&u, p)) fail_msg("%s", mapo_last_error());
        same_file(p, CASES[k].kohya, 1);
        st_file f;
        assert_int_equal(st_open(&f, p), 0);
        int n_alpha = 0;
        for (int i = 0; i < f.n; i++) {
            const st_tensor *t = &f.tensors[i];
            assert_int_equal(strncmp(t->name, "lora_unet_", 10), 0);
            if (!strstr(t->name, ".alpha")) continue;
            float a;
            assert_int_equal(t->ndim, 0);
            assert_int_equal(t->dtype, ST_F32);
            assert_int_equal(st_to_f32(t, &a), 0);
            assert_true(a == 2.0f); /* rank 2 */
            n_alpha++;
        }
        assert_int_equal(3 * n_alpha, f.n);
        assert_int_equal(2 * n_alpha, u.lora.n);
        assert_string_equal(st_meta(&f, "ss_network_module"), "networks.lora");
        assert_string_equal(st_meta(&f, "ss_network_dim"), "2");
        assert_string_equal(st_meta(&f, "ss_network_alpha"), "2.0");
        printf("  %-9s %3d adapters, e.g. %s\n", CASES[k].name, n_alpha, f.tensors[0].name);
        st_close(&f);
        unet_free(&u);
    }
}

/* 2. loading the kohya files gives the diffusers file's adapters */
static void test_load_equals_diffusers(void **s) {
    (void)s;
    struct {
        int c;
        const char *file;
        double tol;
    } files[] = {
        {0, FX "/sd15/lora_kohya.safetensors", 0},
        {0, FX "/sd15/lora_kohya_original.safetensors", 0}, /* original layout, alpha 1 */
        {1, FX "/sdxl/lora_kohya.safetensors", 0},
        {1, FX "/sdxl/lora_kohya_fp16.safetensors", 1e-3},  /* float16, alpha 1 */
        {2, FX "/pipe_sd15/lora_kohya.safetensors", 0},
        {3, FX "/pipe_sdxl/lora_kohya.safetensors", 0},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        const kcase *c = &CASES[files[i].c];
        unet a, b;
        load_lora(&a, c->model, files[i].file);
        load_lora(&b, c->model, c->diffusers);
        assert_int_equal(a.lora_on, 1);
        same_adapters(&a, &b, files[i].tol, files[i].file);
        unet_free(&a);
        unet_free(&b);
    }
}

/* 3. diffusers -> kohya -> diffusers is the identity (lora_convert_file, both config sources) */
static void test_round_trip(void **s) {
    (void)s;
    for (int k = 0; k < NCASES; k++) {
        const kcase *c = &CASES[k];
        char kp[256], dp[256];
        snprintf(kp, sizeof kp, "%s/rt_%s_kohya.safetensors", tmpdir, c->name);
        snprintf(dp, sizeof dp, "%s/rt_%s_diffusers.safetensors", tmpdir, c->name);
        if (lora_convert_file_model(c->diffusers, kp, "kohya", c->model, ST_F32))
            fail_msg("%s", mapo_last_error());
        same_file(kp, c->kohya, 1);
        unet u;
        load_unet(&u, c->model);
        if (lora_convert_file(kp, dp, "diffusers", &u.cfg, ST_F32))
            fail_msg("%s", mapo_last_error());
        same_file(dp, c->diffusers, 0);
        unet_free(&u);
        unlink(kp);
        unlink(dp);
    }
    /* an alpha != r original-layout file converts to the very same diffusers file */
    char dp[256];
    snprintf(dp, sizeof dp, "%s/orig.safetensors", tmpdir);
    if (lora_convert_file_model(FX "/sd15/lora_kohya_original.safetensors", dp, "diffusers",
                                "tests/fixtures/unet/sd15/model", ST_F32))
        fail_msg("%s", mapo_last_error());
    same_file(dp, CASES[0].diffusers, 0);
    unlink(dp);
}

/* 4. files for another UNet, or with what mapo does not adapt: one message, no adapters left,
   no output written by a refused conversion */
static void write_kohya(const char *path, const char *const *names, int n, const int64_t (*shapes)[2],
                        const int *ndims) {
    static float zeros[4096];
    st_writer *w = st_writer_new();
    for (int i = 0; i < n; i++) st_writer_add(w, names[i], ST_F32, ndims[i], shapes[i], zeros);
    assert_int_equal(st_writer_write(w, path), 0);
    st_writer_free(w);
}

static void expect_refused(const char *model, const char *lora, const char *want1, const char *want2) {
    unet u;
    load_unet(&u, model);
    assert_int_equal(unet_lora_load(&u, lora, 0), -1);
    const char *m = mapo_last_error();
    if (!strstr(m, want1) || (want2 && !strstr(m, want2)))
        fail_msg("message '%s' lacks '%s' / '%s'", m, want1, want2 ? want2 : "");
    printf("  refused: %s\n", m);
    assert_int_equal(u.lora.n, 0);
    assert_int_equal(u.lora_on, 0);
    assert_int_equal(unet_lora_add(&u, 2, 1), 0); /* still a usable UNet */
    unet_free(&u);
}

static void test_refusals(void **s) {
    (void)s;
    const char *sd15 = "tests/fixtures/unet/sd15/model", *sdxl = "tests/fixtures/unet/sdxl/model";
    /* the SDXL file on the SD 1.5 UNet: output_blocks_2_1 exists in both, with other shapes */
    expect_refused(sd15, FX "/sdxl/lora_kohya.safetensors", "do not fit", "lora_unet_output_blocks_2_1");
    /* the SD 1.5 file on the SDXL UNet: up_blocks_1_attentions_0 is there, for 24-dim text */
    expect_refused(sdxl, FX "/sd15/lora_kohya.safetensors", "do not fit", "[8, 24]");
    char p[256];
    snprintf(p, sizeof p, "%s/bad.safetensors", tmpdir);
    const char *q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    char a[200], b[200], al[200], pi[200], te[200];
    snprintf(a, sizeof a, "%s.lora_down.weight", q);
    snprintf(b, sizeof b, "%s.lora_up.weight", q);
    snprintf(al, sizeof al, "%s.alpha", q);
    snprintf(pi, sizeof pi, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight");
    snprintf(te, sizeof te, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight");
    /* a module mapo does not adapt (proj_in) beside a good adapter */
    {
        const char *nm[] = {a, b, al, pi};
        const int64_t sh[][2] = {{2, 8}, {8, 2}, {0, 0}, {2, 8}};
        const int nd[] = {2, 2, 0, 2};
        write_kohya(p, nm, 4, sh, nd);
        expect_refused(sd15, p, "proj_in", "not supported");
    }
    /* a block this UNet does not have (input_blocks_4: a LoRA for a bigger UNet) */
    {
        char c[200], d[200];
        snprintf(c, sizeof c, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight");
        snprintf(d, sizeof d, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight");
        const char *nm[] = {a, b, al, c, d};
        const int64_t sh[][2] = {{2, 8}, {8, 2}, {0, 0}, {2, 8}, {8, 2}};
        const int nd[] = {2, 2, 0, 2, 2};
        write_kohya(p, nm, 5, sh, nd);
        expect_refused(sd15, p, "input_blocks_4_1", "a LoRA for another UNet?");
    }
    /* a text-encoder LoRA only */
    {
        const char *nm[] = {te};
        const int64_t sh[][2] = {{2, 8}};
        const int nd[] = {2};
        write_kohya(p, nm, 1, sh, nd);
        expect_refused(sd15, p, "lora_te_text_model", "not supported");
    }
    /* lora_up missing; alpha not one number; rank mismatch */
    {
        const char *nm[] = {a, al};
        const int64_t sh[][2] = {{2, 8}, {0, 0}};
        const int nd[] = {2, 0};
        write_kohya(p, nm, 2, sh, nd);
        expect_refused(sd15, p, "no matching", q);
    }
    {
        const char *nm[] = {a, b, al};
        const int64_t sh[][2] = {{2, 8}, {8, 2}, {2, 0}};
        const int nd[] = {2, 2, 1};
        write_kohya(p, nm, 3, sh, nd);
        expect_refused(sd15, p, "not one finite number", al);
    }
    {
        const char *nm[] = {a, b, al};
        const int64_t sh[][2] = {{2, 8}, {8, 3}, {0, 0}};
        const int nd[] = {2, 2, 0};
        write_kohya(p, nm, 3, sh, nd);
        expect_refused(sd15, p, "do not fit", q);
    }
    /* conversion: a wrong target, a file for another UNet: nothing written */
    char out[256];
    snprintf(out, sizeof out, "%s/never.safetensors", tmpdir);
    assert_int_equal(lora_convert_file_model(CASES[0].diffusers, out, "comfy", sd15, ST_F32),
                     -1);
    assert_non_null(strstr(mapo_last_error(), "kohya, diffusers"));
    assert_int_equal(lora_convert_file_model(FX "/sdxl/lora_kohya.safetensors", out, "diffusers",
                                             sd15, ST_F32), -1);
    assert_non_null(strstr(mapo_last_error(), "do not fit"));
    assert_int_equal(lora_convert_file_model(CASES[0].diffusers, out, "kohya", "/nonexistent",
                                             ST_F32), -1);
    assert_int_equal(access(out, F_OK), -1);
    unlink(p);
}

/* 5. the original-layout names of the full-size configs are the ones real files carry */
static void test_full_size_names(void **s) {
    (void)s;
    unet_config c;
    char n[300];
    struct {
        const char *mod, *want;
    } sd15[] = {
        {"down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q",
         "lora_unet_input_blocks_2_1_transformer_blocks_0_attn1_to_q"},
        {"down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_out.0",
         "lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_out_0"},
        {"mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
         "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_k"},
        {"up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
         "lora_unet_output_blocks_3_1_transformer_blocks_0_attn1_to_v"},
        {"up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k",
         "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_k"},
    }, sdxl[] = {
        {"down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q",
         "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q"},
        {"down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0",
         "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0"},
        {"mid_block.attentions.0.transformer_blocks.9.attn1.to_v",
         "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_v"},
        {"up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_q",
         "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q"},
        {"up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_k",
         "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_k"},
    };
    assert_int_equal(unet_config_load(&c, "tests/fixtures/configs/sd15_unet.json"), 0);
    for (size_t i = 0; i < sizeof sd15 / sizeof *sd15; i++) {
        assert_int_equal(lora_kohya_name(&c, sd15[i].mod, KOHYA_LAYOUT_ORIGINAL, n, sizeof n), 0);
        assert_string_equal(n, sd15[i].want);
    }
    /* SD 1.5's own kohya form is the diffusers layout */
    assert_int_equal(lora_kohya_name(&c, sd15[0].mod, KOHYA_LAYOUT_AUTO, n, sizeof n), 0);
    assert_string_equal(n, "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q");
    /* no attentions in down_blocks.3 (DownBlock2D) nor up_blocks.0 */
    assert_int_equal(lora_kohya_name(&c, "down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q",
                                     KOHYA_LAYOUT_ORIGINAL, n, sizeof n), -1);
    assert_int_equal(lora_kohya_name(&c, "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                                     KOHYA_LAYOUT_ORIGINAL, n, sizeof n), -1);
    unet_config_free(&c);
    assert_int_equal(unet_config_load(&c, "tests/fixtures/configs/sdxl_unet.json"), 0);
    for (size_t i = 0; i < sizeof sdxl / sizeof *sdxl; i++) {
        assert_int_equal(lora_kohya_name(&c, sdxl[i].mod, KOHYA_LAYOUT_AUTO, n, sizeof n), 0);
        assert_string_equal(n, sdxl[i].want);
    }
    /* the whole SDXL UNet (structure only, no weights): rank-1 adapters on its 70 transformer
       blocks, saved as kohya and loaded back */
    unet u, v;
    unet_build(&u, &c);
    assert_int_equal(unet_lora_add(&u, 1, 7), 0);
    assert_int_equal(u.lora.n, 70 * 8 * 2);
    char p[256];
    snprintf(p, sizeof p, "%s/sdxl_full.safetensors", tmpdir);
    if (unet_lora_save_kohya(&u, p)) fail_msg("%s", mapo_last_error());
    st_file f;
    assert_int_equal(st_open(&f, p), 0);
    assert_int_equal(f.n, 70 * 8 * 3);
    assert_non_null(st_find(&f, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"));
    assert_non_null(st_find(&f, "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0.alpha"));
    assert_string_equal(st_meta(&f, "ss_base_model_version"), "sdxl_base_v1-0");
    for (int i = 0; i < f.n; i++) {
        const char *t = f.tensors[i].name;
        assert_true(!strncmp(t, "lora_unet_input_blocks_", 23) || !strncmp(t, "lora_unet_middle_block_1_", 25) ||
                    !strncmp(t, "lora_unet_output_blocks_", 24));
    }
    st_close(&f);
    unet_build(&v, &c);
    v.cfg.json = NULL; /* shared with u */
    if (unet_lora_load(&v, p, 0)) fail_msg("%s", mapo_last_error());
    same_adapters(&v, &u, 0, "sdxl full size");
    unet_free(&v);
    unet_free(&u); /* frees c's JSON */
    unlink(p);
}

/* 6. --lora_format: parse, save into a folder, a folder with only the kohya file loads */
static void test_formats_dir(void **s) {
    (void)s;
    lora_format fm;
    assert_int_equal(lora_format_parse("both", &fm), 0);
    assert_int_equal(fm, LORA_FMT_BOTH);
    assert_int_equal(lora_format_parse("kohya", &fm), 0);
    assert_int_equal(fm, LORA_FMT_KOHYA);
    assert_int_equal(lora_format_parse("diffusers", &fm), 0);
    assert_int_equal(fm, LORA_FMT_DIFFUSERS);
    assert_int_equal(lora_format_parse("a1111", &fm), -1);
    assert_non_null(strstr(mapo_last_error(), "diffusers, kohya or both"));
    unet u, v;
    load_lora(&u, CASES[1].model, CASES[1].diffusers);
    char d[256], p[300];
    for (int f = LORA_FMT_DIFFUSERS; f <= LORA_FMT_BOTH; f++) {
        snprintf(d, sizeof d, "%s/out%d", tmpdir, f);
        assert_int_equal(mkdir(d, 0755), 0);
        if (unet_lora_save_formats(&u, d, (lora_format)f, ST_F32))
            fail_msg("%s", mapo_last_error());
        snprintf(p, sizeof p, "%s/%s", d, LORA_DIFFUSERS_FILE);
        assert_int_equal(mapo_is_file(p), !!(f & LORA_FMT_DIFFUSERS));
        if (f & LORA_FMT_DIFFUSERS) same_file(p, CASES[1].diffusers, 0);
        snprintf(p, sizeof p, "%s/%s", d, LORA_KOHYA_FILE);
        assert_int_equal(mapo_is_file(p), !!(f & LORA_FMT_KOHYA));
        if (f & LORA_FMT_KOHYA) same_file(p, CASES[1].kohya, 1);
        load_lora(&v, CASES[1].model, d); /* the folder */
        same_adapters(&v, &u, 0, d);
        unet_free(&v);
    }
    assert_int_equal(unet_lora_save_formats(&u, d, (lora_format)0, ST_F32), -1);
    unet_free(&u);
}

/* 7. sampling the tiny pipelines with the kohya file: diffusers' image, and mapo's with the
   diffusers file exactly */
static void sample_case(const char *kind) {
    char dir[128], p[256];
    snprintf(dir, sizeof dir, "tests/fixtures/pipeline/%s", kind);
    st_file f;
    snprintf(p, sizeof p, FX "/pipe_%s/expect.safetensors", kind);
    if (st_open(&f, p)) fail_msg("%s", mapo_last_error());
    float lat[4 * 16 * 16];
    if (st_read_f32_shape(&f, "latents", lat, 4, (const int64_t[]){1, 4, 16, 16}))
        fail_msg("%s", mapo_last_error());
    const int64_t n = 32 * 32 * 3;
    float *img[2], *want = malloc(n * sizeof(float)), *base = malloc(n * sizeof(float));
    if (st_read_f32_shape(&f, "image", want, 3, (const int64_t[]){32, 32, 3}) ||
        st_read_f32_shape(&f, "base_image", base, 3, (const int64_t[]){32, 32, 3}))
        fail_msg("%s", mapo_last_error());
    const char *prompt = st_meta(&f, "prompt");
    assert_non_null(prompt);
    gen_config g;
    gen_config_default(&g);
    g.sampler = "ddim";
    g.steps = 4;
    g.guidance_scale = 5.0;
    g.height = g.width = 32;
    g.quiet = 1;
    const char *files[2] = {"lora_kohya.safetensors", "pytorch_lora_weights.safetensors"};
    const char *neg = NULL;
    for (int k = 0; k < 2; k++) {
        pipeline pl;
        if (pipeline_load(&pl, dir, PIPE_TEXT | PIPE_VAE | PIPE_UNET, NULL, 0))
            fail_msg("%s", mapo_last_error());
        snprintf(p, sizeof p, FX "/pipe_%s/%s", kind, files[k]);
        if (unet_lora_load(&pl.unet, p, 0)) fail_msg("%s", mapo_last_error());
        img[k] = malloc(n * sizeof(float));
        if (generate_images(&pl, &g, &prompt, &neg, 1, lat, img[k])) fail_msg("%s", mapo_last_error());
        pipeline_free(&pl);
    }
    double e = rel_err_f32(img[0], want, n), eb = rel_err_f32(base, want, n);
    printf("  pipe %-4s: kohya LoRA image vs diffusers %.2e (the base model's image is %.2e away)\n",
           kind, e, eb);
    if (!(e <= 1e-3)) fail_msg("%s: image relative error %.3e > 1e-3", kind, e);
    assert_true(eb > 1e-2); /* the LoRA changes the image */
    assert_memory_equal(img[0], img[1], n * sizeof(float));
    free(img[0]);
    free(img[1]);
    free(want);
    free(base);
    st_close(&f);
}
static void test_sample_sd15(void **s) { (void)s; sample_case("sd15"); }
static void test_sample_sdxl(void **s) { (void)s; sample_case("sdxl"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_equals_fixture), cmocka_unit_test(test_load_equals_diffusers),
        cmocka_unit_test(test_round_trip),          cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_full_size_names),     cmocka_unit_test(test_formats_dir),
        cmocka_unit_test(test_sample_sd15),         cmocka_unit_test(test_sample_sdxl),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
