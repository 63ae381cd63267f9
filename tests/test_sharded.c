/* test_sharded.c -- sharded VAE and CLIP text encoder checkpoints, and the fingerprints of
 * sharded weights (tools/make_sharded_fixtures.py, tests/fixtures/sharded/; the UNet's own
 * sharded loading is tests/test_halfprec.c's):
 *  - a tiny AutoencoderKL saved by diffusers in 4 F32 shards gives outputs bit-identical to the
 *    same model saved as one file, and both match diffusers' outputs (expect.safetensors);
 *    its fp16 variant in 2 shards (--variant fp16, the index name diffusers writes and the older
 *    <stem>.fp16.safetensors.index.json) gives outputs bit-identical to one F16 file holding the
 *    same tensors, matching diffusers' outputs of the upcast variant;
 *  - a tiny CLIPTextModelWithProjection saved by transformers in 3 F32 shards loads with every
 *    weight equal to the one-file model's, and its bf16 variant in 2 shards loads as the exact
 *    float32 values of its BF16 bits; outputs match transformers';
 *  - refusals: no weights at all, a missing shard, a parameter missing from the map, a tensor
 *    that is no parameter (each naming the index);
 *  - fingerprints (the data cache's model fingerprint, the DPO reference's): a sharded UNet, VAE
 *    or text encoder is fingerprinted by its index and every shard, so changing one byte of a
 *    shard changes it, and only the weights --variant picks count.
 *
 * Tolerance: relative L2 error per tensor <= 1e-4, the bound of test_vae.c and test_clip_text.c
 * (both sides compute in float32 with different summation orders: ~1e-6 measured there). The
 * half-precision variants' references were computed by diffusers / transformers from the same
 * F16 / BF16 values upcast to float32, so the same bound applies, and their outputs differ from
 * the float32 model's by far more (fp16 decoder 7.9e-4, bf16 text encoder 4.3e-3), so a test
 * that loaded the wrong weights would fail. */
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/clip_text.h"
#include "mapo/common.h"
#include "mapo/pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/vae.h"
#include "testutil.h"

#define FX "tests/fixtures/sharded"
#define TOL 1e-4
/* the index names diffusers (UNet, VAE) and transformers (text encoders) write */
#define DF_INDEX "diffusion_pytorch_model.safetensors.index.json"
#define DF_INDEX16 "diffusion_pytorch_model.safetensors.index.fp16.json"
#define TE_INDEX "model.safetensors.index.json"
#define TE_INDEX16 "model.safetensors.index.bf16.json"

static char g_dir[64];
static st_file g_expect;
static double g_worst;

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    assert_int_equal(system(cmd), 0);
}

/* dst (replaced) becomes a copy of folder src */
static void copy_dir(const char *src, const char *dst) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    assert_int_equal(system(cmd), 0);
}

static float *expect_f32(const char *name, int64_t *n) {
    const st_tensor *t = st_find(&g_expect, name);
    if (!t) fail_msg("expect.safetensors lacks %s", name);
    float *x = malloc((size_t)t->numel * sizeof *x);
    assert_int_equal(st_to_f32(t, x), 0);
    *n = t->numel;
    return x;
}

/* relative error of c against the reference `name`; <= TOL unless far (then > TOL asked) */
static double cmp(const char *name, const float *c, int64_t n, int far) {
    int64_t m;
    float *r = expect_f32(name, &m);
    assert_int_equal(m, n);
    double e = rel_err_f32(c, r, n);
    free(r);
    printf("    %-28s %.3e%s\n", name, e, far ? " (must exceed the tolerance)" : "");
    if (far) {
        if (!(e > TOL))
            fail_msg("%s: relative error %.3e: the wrong weights were not told apart", name, e);
    } else {
        if (!(e <= TOL)) fail_msg("%s: relative error %.3e > %.0e", name, e, TOL);
        if (e > g_worst) g_worst = e;
    }
    return e;
}

/* ------------------------------------------------------------------ VAE */

typedef struct {
    float mean[4 * 8 * 8], logvar[4 * 8 * 8], dec[3 * 16 * 16];
} vae_out;

static vae *vae_load(const char *dir) {
    vae *v;
    if (vae_load_dir(&v, dir)) fail_msg("%s", mapo_last_error());
    return v;
}

static void vae_run(const char *dir, vae_out *o) {
    vae *v = vae_load(dir);
    int64_t n;
    float *x = expect_f32("vae.x", &n), *z = expect_f32("vae.z", &n);
    assert_int_equal(vae_latent_channels(v), 4);
    assert_int_equal(vae_downscale(v), 2);
    if (vae_encode(v, x, 1, 16, 16, o->mean, o->logvar, NULL)) fail_msg("%s", mapo_last_error());
    if (vae_decode(v, z, 1, 8, 8, o->dec, 0)) fail_msg("%s", mapo_last_error());
    free(x);
    free(z);
    vae_free(v);
}

static void vae_check(const vae_out *o, const char *tag) {
    char nm[64];
    snprintf(nm, sizeof nm, "%s.mean", tag);
    cmp(nm, o->mean, 4 * 8 * 8, 0);
    snprintf(nm, sizeof nm, "%s.logvar", tag);
    cmp(nm, o->logvar, 4 * 8 * 8, 0);
    snprintf(nm, sizeof nm, "%s.dec", tag);
    cmp(nm, o->dec, 3 * 16 * 16, 0);
}

static void test_vae_sharded(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    vae_out a, b;
    vae_run(FX "/vae/plain", &a);
    vae_run(FX "/vae/sharded", &b);
    vae_check(&a, "vae");
    /* the same weights: the same computation gives the same bits */
    assert_memory_equal(&a, &b, sizeof a);
    /* a pipeline folder with a sharded vae/ */
    char d[128];
    snprintf(d, sizeof d, "%s/pipe", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    snprintf(d, sizeof d, "%s/pipe/vae", g_dir);
    copy_dir(FX "/vae/sharded", d);
    snprintf(d, sizeof d, "%s/pipe", g_dir);
    vae_run(d, &b);
    assert_memory_equal(&a, &b, sizeof a);
    /* --variant fp16 where a folder has none: the plain weights (as diffusers falls back) */
    mapo_set_weights_variant("fp16");
    vae_run(FX "/vae/plain", &b);
    assert_memory_equal(&a, &b, sizeof a);
    mapo_set_weights_variant(NULL);
}

/* one F16 file holding the fp16 shards' tensors, dtype and bytes unchanged */
static void write_f16_single(const char *dir) {
    st_index x;
    if (st_index_open(&x, FX "/vae/sharded/" DF_INDEX16)) fail_msg("%s", mapo_last_error());
    st_writer *w = st_writer_new();
    for (int i = 0; i < x.n; i++) {
        const st_tensor *t = x.tensors[i];
        assert_int_equal(t->dtype, ST_F16);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    st_index_close(&x);
    sh("cp '%s' '%s'/", FX "/vae/plain/config.json", dir);
}

static void test_vae_variant(void **state) {
    (void)state;
    vae_out a, b, f32;
    mapo_set_weights_variant(NULL);
    vae_run(FX "/vae/plain", &f32);
    mapo_set_weights_variant("fp16");
    vae_run(FX "/vae/sharded", &a);
    vae_check(&a, "vae_fp16");
    cmp("vae.dec", a.dec, 3 * 16 * 16, 1); /* not the float32 weights */
    /* the shards convert as one F16 file does */
    char d[128];
    snprintf(d, sizeof d, "%s/vae16", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    write_f16_single(d);
    mapo_set_weights_variant(NULL);
    vae_run(d, &b);
    assert_memory_equal(&a, &b, sizeof a);
    /* the older name of a variant's index */
    snprintf(d, sizeof d, "%s/legacy", g_dir);
    copy_dir(FX "/vae/sharded", d);
    char p[256], q[256];
    snprintf(p, sizeof p, "%s/" DF_INDEX16, d);
    snprintf(q, sizeof q, "%s/diffusion_pytorch_model.fp16.safetensors.index.json", d);
    assert_int_equal(rename(p, q), 0);
    mapo_set_weights_variant("fp16");
    vae_run(d, &b);
    assert_memory_equal(&a, &b, sizeof a);
    mapo_set_weights_variant(NULL);
}

/* ------------------------------------------------------------------ CLIP text encoder */

#define TE_B 2
#define TE_S 8

typedef struct {
    float last[TE_B * TE_S * 16], embeds[TE_B * 8];
} te_out;

static clip_text *te_load(const char *dir) {
    clip_text *m;
    if (clip_text_load_dir(&m, dir)) fail_msg("%s", mapo_last_error());
    return m;
}

static void te_run(const clip_text *m, te_out *o) {
    const st_tensor *t = st_find(&g_expect, "te.input_ids");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I32);
    assert_int_equal(t->numel, TE_B * TE_S);
    int32_t ids[TE_B * TE_S];
    memcpy(ids, t->data, sizeof ids);
    assert_int_equal(clip_text_hidden_size(m), 16);
    assert_int_equal(clip_text_projection_dim(m), 8);
    if (clip_text_forward(m, ids, TE_B, TE_S, 0, NULL, o->last, NULL, o->embeds))
        fail_msg("%s", mapo_last_error());
}

/* the weights of m as float32 tensors in a file (clip_text_save: the names as loaded) */
static void te_save(const clip_text *m, const char *name, st_file *f) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s.safetensors", g_dir, name);
    if (clip_text_save(m, p)) fail_msg("%s", mapo_last_error());
    assert_int_equal(st_open(f, p), 0);
}

static void test_clip_sharded(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    clip_text *a = te_load(FX "/text_encoder/plain"), *b = te_load(FX "/text_encoder/sharded");
    st_file fa, fb;
    te_save(a, "te_plain", &fa);
    te_save(b, "te_sharded", &fb);
    /* every weight equal (5360 parameters in 37 tensors) */
    assert_int_equal(fa.n, 37);
    assert_int_equal(fb.n, fa.n);
    assert_int_equal(clip_text_num_params(b), 5360);
    for (int i = 0; i < fa.n; i++) {
        const st_tensor *s = &fa.tensors[i], *t = st_find(&fb, s->name);
        if (!t) fail_msg("%s: not loaded from the shards", s->name);
        assert_int_equal(t->nbytes, s->nbytes);
        if (memcmp(t->data, s->data, s->nbytes))
            fail_msg("%s differs from the one-file weights", s->name);
    }
    st_close(&fa);
    st_close(&fb);
    te_out oa, ob;
    te_run(a, &oa);
    te_run(b, &ob);
    cmp("te.last_hidden_state", oa.last, TE_B * TE_S * 16, 0);
    cmp("te.text_embeds", oa.embeds, TE_B * 8, 0);
    assert_memory_equal(&oa, &ob, sizeof oa);
    clip_text_free(a);
    clip_text_free(b);
}

static void test_clip_variant(void **state) {
    (void)state;
    mapo_set_weights_variant("bf16");
    clip_text *m = te_load(FX "/text_encoder/sharded");
    mapo_set_weights_variant(NULL);
    /* every weight is the float32 value of its BF16 bits in the bf16 shards */
    st_file f;
    te_save(m, "te_bf16", &f);
    st_index x;
    if (st_index_open(&x, FX "/text_encoder/sharded/" TE_INDEX16))
        fail_msg("%s", mapo_last_error());
    assert_int_equal(x.n_shards, 2);
    assert_int_equal(f.n, x.n);
    for (int i = 0; i < f.n; i++) {
        const st_tensor *s = &f.tensors[i], *t = st_index_find(&x, s->name);
        if (!t) fail_msg("%s not in the bf16 index", s->name);
        assert_int_equal(t->dtype, ST_BF16);
        assert_int_equal(s->dtype, ST_F32);
        assert_int_equal(t->numel, s->numel);
        for (int64_t k = 0; k < t->numel; k++) {
            uint16_t h;
            float v;
            memcpy(&h, (const uint8_t *)t->data + 2 * k, 2);
            memcpy(&v, (const uint8_t *)s->data + 4 * k, 4);
            if (v != st_bf16_to_float(h))
                fail_msg("%s[%lld]: %a, not the value of its bf16 bits", s->name, (long long)k,
                         (double)v);
        }
    }
    st_index_close(&x);
    st_close(&f);
    te_out o;
    te_run(m, &o);
    cmp("te_bf16.last_hidden_state", o.last, TE_B * TE_S * 16, 0);
    cmp("te_bf16.text_embeds", o.embeds, TE_B * 8, 0);
    cmp("te.last_hidden_state", o.last, TE_B * TE_S * 16, 1); /* not the float32 weights */
    clip_text_free(m);
}

/* ------------------------------------------------------------------ refusals */

static void expect_te_error(const char *dir, const char *needle) {
    clip_text *m = (clip_text *)1;
    assert_int_equal(clip_text_load_dir(&m, dir), -1);
    assert_null(m);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("error '%s' lacks '%s'", mapo_last_error(), needle);
    printf("    refused: %s\n", mapo_last_error());
}

static void expect_vae_error(const char *dir, const char *needle) {
    vae *v = (vae *)1;
    assert_int_equal(vae_load_dir(&v, dir), -1);
    assert_null(v);
    if (!strstr(mapo_last_error(), needle))
        fail_msg("error '%s' lacks '%s'", mapo_last_error(), needle);
    printf("    refused: %s\n", mapo_last_error());
}

/* the index at path rewritten: `drop` removed from its weight_map, `add` -> `shard` added */
static void edit_index(const char *path, const char *drop, const char *add, const char *shard) {
    json_error_t je;
    json_t *js = json_load_file(path, 0, &je);
    assert_non_null(js);
    json_t *m = json_object_get(js, "weight_map");
    assert_non_null(m);
    if (drop) assert_int_equal(json_object_del(m, drop), 0);
    if (add) json_object_set_new(m, add, json_string(shard));
    assert_int_equal(json_dump_file(js, path, JSON_INDENT(2)), 0);
    json_decref(js);
}

static void test_refusals(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    char d[128], p[256];
    /* no weights at all */
    snprintf(d, sizeof d, "%s/te_none", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    sh("cp '%s' '%s'/", FX "/text_encoder/plain/config.json", d);
    expect_te_error(d, "no model.safetensors (nor a sharded model.safetensors.index.json");
    snprintf(d, sizeof d, "%s/vae_none", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    sh("cp '%s' '%s'/", FX "/vae/plain/config.json", d);
    expect_vae_error(d, "no diffusion_pytorch_model.safetensors (nor a sharded");
    /* a missing shard */
    snprintf(d, sizeof d, "%s/vae_noshard", g_dir);
    copy_dir(FX "/vae/sharded", d);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model-00002-of-00004.safetensors", d);
    assert_int_equal(unlink(p), 0);
    expect_vae_error(d, DF_INDEX ": shard diffusion_pytorch_model-00002-of-00004.safetensors");
    snprintf(d, sizeof d, "%s/te_noshard", g_dir);
    copy_dir(FX "/text_encoder/sharded", d);
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", d);
    assert_int_equal(unlink(p), 0);
    expect_te_error(d, TE_INDEX ": shard model-00003-of-00003.safetensors");
    /* a parameter the map does not name (its bytes are still in a shard) */
    snprintf(d, sizeof d, "%s/te_unmapped", g_dir);
    copy_dir(FX "/text_encoder/sharded", d);
    snprintf(p, sizeof p, "%s/" TE_INDEX, d);
    edit_index(p, "text_model.final_layer_norm.bias", NULL, NULL);
    expect_te_error(d, "tensor 'text_model.final_layer_norm.bias' is missing");
    snprintf(d, sizeof d, "%s/vae_unmapped", g_dir);
    copy_dir(FX "/vae/sharded", d);
    snprintf(p, sizeof p, "%s/" DF_INDEX, d);
    edit_index(p, "decoder.conv_out.bias", NULL, NULL);
    expect_vae_error(d, "parameter 'decoder.conv_out.bias' is missing");
    /* a tensor no parameter takes, in a shard of its own */
    float z[3] = {0};
    const int64_t sh3[1] = {3};
    st_writer *w = st_writer_new();
    st_writer_add(w, "encoder.extra.bias", ST_F32, 1, sh3, z);
    snprintf(d, sizeof d, "%s/vae_extra", g_dir);
    copy_dir(FX "/vae/sharded", d);
    snprintf(p, sizeof p, "%s/extra.safetensors", d);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    snprintf(p, sizeof p, "%s/" DF_INDEX, d);
    edit_index(p, NULL, "encoder.extra.bias", "extra.safetensors");
    expect_vae_error(d, "unexpected tensor 'encoder.extra.bias'");
    w = st_writer_new();
    st_writer_add(w, "text_model.extra.bias", ST_F32, 1, sh3, z);
    snprintf(d, sizeof d, "%s/te_extra", g_dir);
    copy_dir(FX "/text_encoder/sharded", d);
    snprintf(p, sizeof p, "%s/extra.safetensors", d);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    snprintf(p, sizeof p, "%s/" TE_INDEX, d);
    edit_index(p, NULL, "text_model.extra.bias", "extra.safetensors");
    expect_te_error(d, "unexpected tensor 'text_model.extra.bias'");
}

/* ------------------------------------------------------------------ fingerprints */

/* byte `off` of a file (off < 0: from the end) XOR 0x5a */
static void flip(const char *path, long off) {
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    const off_t at = off < 0 ? st.st_size + off : off;
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void fp_unet(const char *dir, char *buf) {
    if (unet_dir_fingerprint(dir, buf, 32)) fail_msg("%s", mapo_last_error());
}

static void fp_pipe(const char *dir, char *buf) {
    if (pipeline_fingerprint(dir, buf, 32)) fail_msg("%s", mapo_last_error());
}

static void test_fingerprints(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    char d[128], p[256], f0[32], f1[32];
    /* the sharded UNet of test_halfprec: its index and every shard count */
    snprintf(d, sizeof d, "%s/unet", g_dir);
    copy_dir("tests/fixtures/halfprec/sharded", d);
    fp_unet(d, f0);
    fp_unet(d, f1);
    assert_string_equal(f0, f1);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model-00005-of-00008.safetensors", d);
    flip(p, -3); /* one byte of the last tensor's data */
    fp_unet(d, f1);
    assert_string_not_equal(f0, f1);
    flip(p, -3);
    fp_unet(d, f1);
    assert_string_equal(f0, f1);
    snprintf(p, sizeof p, "%s/" DF_INDEX, d);
    FILE *fp = fopen(p, "a");
    fputs("\n", fp);
    fclose(fp);
    fp_unet(d, f1);
    assert_string_not_equal(f0, f1);
    /* a pipeline's sharded text encoder and VAE (the data cache's model fingerprint) */
    snprintf(d, sizeof d, "%s/fp_pipe", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    snprintf(p, sizeof p, "%s/text_encoder", d);
    copy_dir(FX "/text_encoder/sharded", p);
    snprintf(p, sizeof p, "%s/vae", d);
    copy_dir(FX "/vae/sharded", p);
    fp_pipe(d, f0);
    const char *shards[] = {"text_encoder/model-00002-of-00003.safetensors",
                            "vae/diffusion_pytorch_model-00004-of-00004.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", d, shards[i]);
        flip(p, -1);
        fp_pipe(d, f1);
        if (!strcmp(f0, f1)) fail_msg("a changed byte of %s leaves the fingerprint", shards[i]);
        flip(p, -1);
        fp_pipe(d, f1);
        assert_string_equal(f0, f1);
    }
    /* only what --variant picks: the fp16 shards count with --variant fp16, not without */
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.fp16-00002-of-00002.safetensors", d);
    flip(p, -1);
    fp_pipe(d, f1);
    assert_string_equal(f0, f1);
    mapo_set_weights_variant("fp16");
    char g0[32], g1[32];
    fp_pipe(d, g0);
    assert_string_not_equal(g0, f0);
    flip(p, -1);
    fp_pipe(d, g1);
    assert_string_not_equal(g0, g1);
    mapo_set_weights_variant(NULL);
    /* a broken index is refused with the loader's message */
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model-00001-of-00004.safetensors", d);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(pipeline_fingerprint(d, f1, sizeof f1), -1);
    assert_non_null(strstr(mapo_last_error(), "00001-of-00004.safetensors"));
    /* one-file weights: the fingerprints caches made before sharding was covered hold (the
       pipeline and reference fingerprints that mapo cache wrote for tests/fixtures/pipeline/sd15
       before this change) */
    fp_pipe("tests/fixtures/pipeline/sd15", f0);
    assert_string_equal(f0, "1cac60d47c0ddfcb");
    fp_unet("tests/fixtures/pipeline/sd15", f0);
    assert_string_equal(f0, "8f503726cca8d5c7");
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/mapo_sharded_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    return st_open(&g_expect, FX "/expect.safetensors");
}

static int teardown(void **state) {
    (void)state;
    st_close(&g_expect);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    printf("  worst relative error against diffusers / transformers: %.3e (tolerance %.0e)\n",
           g_worst, TOL);
    return system(cmd);
}

int main(void) {
    mapo_log_level = 0; /* the --variant fallback notes */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vae_sharded),
        cmocka_unit_test(test_vae_variant),
        cmocka_unit_test(test_clip_sharded),
        cmocka_unit_test(test_clip_variant),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_fingerprints),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
