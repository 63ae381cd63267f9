/* test_clip_text.c -- the C CLIP text encoders against transformers 5.x.
 *
 * Fixtures: tests/fixtures/clip_text/<case>/ from tools/make_clip_fixtures.py (random-initialised,
 * perturbed tiny CLIPTextModel / CLIPTextModelWithProjection): every hidden state (asked for
 * one at a time, by positive and by negative index), last_hidden_state, pooler_output and
 * text_embeds. Cases cover quick_gelu + legacy argmax pooling (eos_token_id 2) + S = 77 + the
 * flat transformers-5 layout; gelu + first-eos pooling + text_projection + a row without eos; an
 * F16 file in the transformers-4 layout ("text_model." prefix, position_ids buffer).
 *
 * Tolerance: relative L2 error ||c - ref|| / ||ref|| <= 1e-4 per tensor (the bound).
 * Both sides compute in float32 and differ only in summation order (OpenBLAS vs MKL/oneDNN GEMMs,
 * sdpa's fused softmax vs ours, our double-accumulated layer-norm statistics); each op adds
 * ~1e-7 relative rounding and the few layers here give ~1e-6 at most, so 1e-4 leaves a wide
 * margin for rounding while any wrong formula (gelu for quick_gelu, a missing causal mask, a
 * wrong pooled row, a transposed weight, a missing bias) gives errors of 1e-2 or more. The F16
 * fixture's reference was computed by transformers in float32 from the same F16 values, so the
 * same bound applies there. */
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/clip_text.h"
#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define TOL 1e-4
#define FIX "tests/fixtures/clip_text"

static double g_worst = 0;
static char g_worst_name[256];

static double cmp(const st_file *f, const char *name, const float *x, int64_t n,
                  const char *ctx) {
    const st_tensor *t = st_find(f, name);
    if (!t) fail_msg("%s: fixture lacks '%s'", ctx, name);
    assert_int_equal(t->numel, n);
    float *ref = malloc(n * sizeof(float));
    assert_int_equal(st_to_f32(t, ref), 0);
    double e = rel_err_f32(x, ref, n);
    free(ref);
    if (e > g_worst) {
        g_worst = e;
        snprintf(g_worst_name, sizeof g_worst_name, "%s %s", ctx, name);
    }
    if (!(e <= TOL)) fail_msg("%s: %s relative error %.3e > %.0e", ctx, name, e, TOL);
    return e;
}

static int32_t *read_ids(const st_file *f, int *B, int *S) {
    const st_tensor *t = st_find(f, "input_ids");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I32);
    assert_int_equal(t->ndim, 2);
    *B = (int)t->shape[0];
    *S = (int)t->shape[1];
    int32_t *ids = malloc(t->nbytes);
    memcpy(ids, t->data, t->nbytes);
    return ids;
}

static void run_case(const char *cs, int want_proj, int want_layers, int want_D) {
    char p[512];
    snprintf(p, sizeof p, FIX "/%s/model", cs);
    clip_text *m;
    if (clip_text_load_dir(&m, p)) fail_msg("%s", mapo_last_error());
    assert_int_equal(clip_text_projection_dim(m) > 0, want_proj);
    assert_int_equal(clip_text_num_layers(m), want_layers);
    assert_int_equal(clip_text_hidden_size(m), want_D);
    snprintf(p, sizeof p, FIX "/%s/expect.safetensors", cs);
    st_file f;
    if (st_open(&f, p)) fail_msg("%s", mapo_last_error());
    int B, S;
    int32_t *ids = read_ids(&f, &B, &S);
    const int L = clip_text_num_layers(m), D = clip_text_hidden_size(m);
    const int Pd = clip_text_projection_dim(m);
    const int64_t n = (int64_t)B * S * D;
    float *hid = malloc(n * sizeof(float)), *hid2 = malloc(n * sizeof(float));
    float *last = malloc(n * sizeof(float)), *pooled = malloc((size_t)B * D * sizeof(float));
    float *te = Pd ? malloc((size_t)B * Pd * sizeof(float)) : NULL;
    double worst = 0, e;
    char nm[64];
    /* every hidden state alone (only the layers needed run), by index and by -index */
    for (int l = 0; l <= L; l++) {
        snprintf(nm, sizeof nm, "hidden_states.%d", l);
        assert_int_equal(clip_text_forward(m, ids, B, S, l, hid, NULL, NULL, NULL), 0);
        e = cmp(&f, nm, hid, n, cs);
        worst = e > worst ? e : worst;
        assert_int_equal(clip_text_forward(m, ids, B, S, l - L - 1, hid2, NULL, NULL, NULL), 0);
        assert_memory_equal(hid, hid2, n * sizeof(float));
    }
    /* the final outputs */
    assert_int_equal(clip_text_forward(m, ids, B, S, 0, NULL, last, NULL, NULL), 0);
    worst = fmax(worst, cmp(&f, "last_hidden_state", last, n, cs));
    assert_int_equal(clip_text_forward(m, ids, B, S, 0, NULL, NULL, pooled, NULL), 0);
    worst = fmax(worst, cmp(&f, "pooler_output", pooled, (int64_t)B * D, cs));
    if (Pd) {
        memset(te, 0, (size_t)B * Pd * sizeof(float));
        assert_int_equal(clip_text_forward(m, ids, B, S, 0, NULL, NULL, NULL, te), 0);
        worst = fmax(worst, cmp(&f, "text_embeds", te, (int64_t)B * Pd, cs));
    }
    /* everything at once (SDXL's use: penultimate + pooled + text_embeds) equals the above */
    float *last2 = malloc(n * sizeof(float)), *pooled2 = malloc((size_t)B * D * sizeof(float));
    float *te2 = Pd ? malloc((size_t)B * Pd * sizeof(float)) : NULL;
    assert_int_equal(clip_text_forward(m, ids, B, S, -2, hid2, last2, pooled2, te2), 0);
    snprintf(nm, sizeof nm, "hidden_states.%d", L - 1);
    cmp(&f, nm, hid2, n, cs);
    assert_memory_equal(last, last2, n * sizeof(float));
    assert_memory_equal(pooled, pooled2, (size_t)B * D * sizeof(float));
    if (Pd) assert_memory_equal(te, te2, (size_t)B * Pd * sizeof(float));
    /* pooled rows are rows of last_hidden_state */
    printf("  %-14s B=%d S=%d D=%d L=%d P=%d: %d hidden states, last, pooled%s; worst relative "
           "error %.2e\n", cs, B, S, D, L, Pd, L + 1, Pd ? ", text_embeds" : "", worst);
    free(last2), free(pooled2), free(te2);
    free(hid), free(hid2), free(last), free(pooled), free(te), free(ids);
    st_close(&f);
    clip_text_free(m);
}

static void test_quickgelu_legacy_pool(void **s) {
    (void)s;
    run_case("te_quickgelu", 0, 3, 32);
}
static void test_gelu_projection_first_eos(void **s) {
    (void)s;
    run_case("te2_gelu_proj", 1, 2, 40);
}
static void test_f16_legacy_layout(void **s) {
    (void)s;
    run_case("te_f16_legacy", 0, 2, 32);
}

/* The two pooling rules pick different rows on te2's ids: pooling with the legacy rule must
 * not match (proves the fixture and the test can tell them apart). */
static void test_pool_rules_differ(void **s) {
    (void)s;
    st_file f;
    if (st_open(&f, FIX "/te2_gelu_proj/expect.safetensors")) fail_msg("%s", mapo_last_error());
    int B, S;
    int32_t *ids = read_ids(&f, &B, &S);
    int differ = 0;
    for (int b = 0; b < B; b++) {
        const int32_t *r = ids + b * S;
        int am = 0, fe = 0;
        for (int i = 1; i < S; i++)
            if (r[i] > r[am]) am = i;
        for (int i = 0; i < S; i++)
            if (r[i] == 777) {
                fe = i;
                break;
            }
        differ += am != fe;
    }
    assert_true(differ >= 2);
    free(ids);
    st_close(&f);
}

/* ------------------------------------------------------------------ hostile input */

static char g_tmp[64];

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, k, b), k);
    fclose(a);
    fclose(b);
}

/* tmp/<name>/ with the te2 fixture's config (edited by `edit`: key -> JSON value, NULL value
 * deletes) and weights (or `weights` if given) */
static void make_dir(const char *name, const char *key, const char *val, const char *weights,
                     char dir[256]) {
    snprintf(dir, 256, "%s/%s", g_tmp, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    json_error_t err;
    json_t *root = json_load_file(FIX "/te2_gelu_proj/model/config.json", 0, &err);
    assert_non_null(root);
    if (key) {
        if (val) json_object_set_new(root, key, json_loads(val, JSON_DECODE_ANY, &err));
        else json_object_del(root, key);
    }
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    assert_int_equal(json_dump_file(root, p, 0), 0);
    json_decref(root);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    copy_file(weights ? weights : FIX "/te2_gelu_proj/model/model.safetensors", p);
}

static void expect_load_error(const char *dir, const char *needle) {
    clip_text *m = (clip_text *)1;
    assert_int_equal(clip_text_load_dir(&m, dir), -1);
    assert_null(m);
    const char *e = mapo_last_error();
    if (!strstr(e, needle)) fail_msg("error '%s' does not mention '%s'", e, needle);
}

/* the te2 weights minus `drop`, plus `extra` (a small F32 tensor) */
static void write_weights(const char *path, const char *drop, const char *extra) {
    st_file f;
    assert_int_equal(st_open(&f, FIX "/te2_gelu_proj/model/model.safetensors"), 0);
    st_writer *w = st_writer_new();
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    float z[3] = {0};
    int64_t sh[1] = {3};
    if (extra) st_writer_add(w, extra, ST_F32, 1, sh, z);
    assert_int_equal(st_writer_write(w, path), 0);
    st_writer_free(w);
    st_close(&f);
}

static void test_bad_files(void **s) {
    (void)s;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_clip_XXXXXX");
    assert_non_null(mkdtemp(g_tmp));
    char d[256], p[512];
    make_dir("ok", NULL, NULL, NULL, d);
    clip_text *m;
    assert_int_equal(clip_text_load_dir(&m, d), 0);
    clip_text_free(m);

    make_dir("relu", "hidden_act", "\"relu\"", NULL, d);
    expect_load_error(d, "hidden_act 'relu'");
    make_dir("tanh", "hidden_act", "\"gelu_pytorch_tanh\"", NULL, d);
    expect_load_error(d, "gelu_pytorch_tanh");
    make_dir("unknown", "rope_theta", "10000", NULL, d);
    expect_load_error(d, "'rope_theta'");
    make_dir("heads", "num_attention_heads", "3", NULL, d);
    expect_load_error(d, "not divisible");
    make_dir("neg", "hidden_size", "-5", NULL, d);
    expect_load_error(d, "out of range");
    make_dir("huge", "vocab_size", "60000000", NULL, d); /* shape check before any allocation */
    expect_load_error(d, "has shape [1000, 40], config.json gives [60000000, 40]");
    make_dir("inter", "intermediate_size", "54", NULL, d);
    expect_load_error(d, "mlp.fc1.weight' has shape [53, 40], config.json gives [54, 40]");
    make_dir("eps", "layer_norm_eps", "\"x\"", NULL, d);
    expect_load_error(d, "layer_norm_eps");
    make_dir("arch", "architectures", "[\"CLIPVisionModel\"]", NULL, d);
    expect_load_error(d, "CLIPVisionModel");
    make_dir("mtype", "model_type", "\"clip\"", NULL, d);
    expect_load_error(d, "model_type");

    /* CLIPTextModel config on WithProjection weights: the projection is ignored */
    make_dir("asplain", "architectures", "[\"CLIPTextModel\"]", NULL, d);
    assert_int_equal(clip_text_load_dir(&m, d), 0);
    assert_int_equal(clip_text_projection_dim(m), 0);
    int32_t ids[2] = {998, 777};
    float te[48], pooled[80];
    assert_int_equal(clip_text_forward(m, ids, 1, 2, 0, NULL, NULL, NULL, te), -1);
    assert_non_null(strstr(mapo_last_error(), "without text_projection"));
    assert_int_equal(clip_text_forward(m, ids, 1, 2, 0, NULL, NULL, pooled, NULL), 0);
    clip_text_free(m);

    /* missing tensor, unexpected tensor, WithProjection without its projection */
    snprintf(p, sizeof p, "%s/w_missing.safetensors", g_tmp);
    write_weights(p, "text_model.encoder.layers.1.self_attn.v_proj.bias", NULL);
    make_dir("missing", NULL, NULL, p, d);
    expect_load_error(d, "'text_model.encoder.layers.1.self_attn.v_proj.bias' is missing");
    snprintf(p, sizeof p, "%s/w_noproj.safetensors", g_tmp);
    write_weights(p, "text_projection.weight", NULL);
    make_dir("noproj", NULL, NULL, p, d);
    expect_load_error(d, "'text_projection.weight' is missing");
    snprintf(p, sizeof p, "%s/w_extra.safetensors", g_tmp);
    write_weights(p, NULL, "text_model.encoder.layers.2.mlp.fc1.bias");
    make_dir("extra", NULL, NULL, p, d);
    expect_load_error(d, "unexpected tensor 'text_model.encoder.layers.2.mlp.fc1.bias'");
    snprintf(p, sizeof p, "%s/w_notclip.safetensors", g_tmp);
    write_weights(p, "text_model.embeddings.token_embedding.weight", NULL);
    make_dir("notclip", NULL, NULL, p, d);
    expect_load_error(d, "not a CLIP text encoder");

    /* truncated weights */
    make_dir("trunc", NULL, NULL, NULL, d);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    assert_int_equal(truncate(p, 100000), 0);
    expect_load_error(d, "model.safetensors");
    /* no weights, no folder, bad JSON */
    make_dir("noweights", NULL, NULL, NULL, d);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    assert_int_equal(unlink(p), 0);
    expect_load_error(d, "no model.safetensors");
    snprintf(p, sizeof p, "%s/nonexistent", g_tmp);
    expect_load_error(p, "no config.json");
    make_dir("badjson", NULL, NULL, NULL, d);
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *fp = fopen(p, "w");
    fputs("{\"hidden_size\": 40,", fp);
    fclose(fp);
    expect_load_error(d, "cannot read config");

    /* BF16 weights (each F32 value rounded to nearest even bf16) load, and give outputs close
       to the F32 model's: bf16 keeps 8 bits, so ~4e-3 relative per weight */
    snprintf(p, sizeof p, "%s/w_bf16.safetensors", g_tmp);
    st_file f;
    assert_int_equal(st_open(&f, FIX "/te2_gelu_proj/model/model.safetensors"), 0);
    st_writer *w = st_writer_new();
    uint16_t **bufs = calloc(f.n, sizeof *bufs);
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        assert_int_equal(t->dtype, ST_F32);
        bufs[i] = malloc(t->numel * 2);
        for (int64_t k = 0; k < t->numel; k++) {
            uint32_t u;
            memcpy(&u, (const char *)t->data + 4 * k, 4);
            bufs[i][k] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
        }
        st_writer_add(w, t->name, ST_BF16, t->ndim, t->shape, bufs[i]);
    }
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    for (int i = 0; i < f.n; i++) free(bufs[i]);
    free(bufs);
    st_close(&f);
    make_dir("bf16", NULL, NULL, p, d);
    clip_text *m16, *m32;
    if (clip_text_load_dir(&m16, d)) fail_msg("%s", mapo_last_error());
    assert_int_equal(clip_text_load_dir(&m32, FIX "/te2_gelu_proj/model"), 0);
    int32_t ids8[8] = {998, 5, 900, 17, 777, 0, 0, 0};
    float a[8 * 40], b[8 * 40], ta[24], tb[24];
    assert_int_equal(clip_text_forward(m16, ids8, 1, 8, 0, NULL, a, NULL, ta), 0);
    assert_int_equal(clip_text_forward(m32, ids8, 1, 8, 0, NULL, b, NULL, tb), 0);
    double e1 = rel_err_f32(a, b, 8 * 40), e2 = rel_err_f32(ta, tb, 24);
    printf("  bf16 weights vs f32: last_hidden_state %.2e, text_embeds %.2e relative\n", e1, e2);
    assert_true(e1 > 0 && e1 < 3e-2 && e2 > 0 && e2 < 3e-2);
    clip_text_free(m16);
    clip_text_free(m32);
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

static void test_bad_forward(void **s) {
    (void)s;
    clip_text *m;
    if (clip_text_load_dir(&m, FIX "/te2_gelu_proj/model")) fail_msg("%s", mapo_last_error());
    enum { S = 25 };
    int32_t ids[S];
    for (int i = 0; i < S; i++) ids[i] = 5 + i;
    float *buf = calloc(S * 40, sizeof(float));
    assert_int_equal(clip_text_forward(m, ids, 1, 4, 0, buf, NULL, NULL, NULL), 0);
    ids[2] = 1000;
    assert_int_equal(clip_text_forward(m, ids, 1, 4, 0, buf, NULL, NULL, NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "token id 1000 at prompt 0 position 2"));
    ids[2] = -1;
    assert_int_equal(clip_text_forward(m, ids, 1, 4, 0, buf, NULL, NULL, NULL), -1);
    ids[2] = 7;
    assert_int_equal(clip_text_forward(m, ids, 1, 25, 0, buf, NULL, NULL, NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "at most 24"));
    assert_int_equal(clip_text_forward(m, ids, 0, 4, 0, buf, NULL, NULL, NULL), -1);
    assert_int_equal(clip_text_forward(m, ids, 1, 0, 0, buf, NULL, NULL, NULL), -1);
    assert_int_equal(clip_text_forward(m, ids, 1, 4, 3, buf, NULL, NULL, NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "hidden state 3 does not exist"));
    assert_int_equal(clip_text_forward(m, ids, 1, 4, -4, buf, NULL, NULL, NULL), -1);
    assert_int_equal(clip_text_forward(m, ids, 1, 4, -3, buf, NULL, NULL, NULL), 0);
    assert_int_equal(clip_text_forward(m, ids, 1 << 30, 24, 0, buf, NULL, NULL, NULL), -1);
    assert_int_equal(clip_text_forward(m, NULL, 1, 4, 0, buf, NULL, NULL, NULL), -1);
    /* nothing asked: nothing done, and the layer index is not looked at */
    assert_int_equal(clip_text_forward(m, ids, 1, 4, 99, NULL, NULL, NULL, NULL), 0);
    free(buf);
    clip_text_free(m);
}

/* Causality: changing a token changes no hidden state before it. */
static void test_causal(void **s) {
    (void)s;
    clip_text *m;
    if (clip_text_load_dir(&m, FIX "/te_quickgelu/model")) fail_msg("%s", mapo_last_error());
    enum { S = 70, D = 32 };
    int32_t a[S], b[S];
    for (int i = 0; i < S; i++) a[i] = b[i] = (i * 37 + 11) % 1000;
    b[66] = 123;
    float *ha = malloc(S * D * sizeof(float)), *hb = malloc(S * D * sizeof(float));
    assert_int_equal(clip_text_forward(m, a, 1, S, -1, ha, NULL, NULL, NULL), 0);
    assert_int_equal(clip_text_forward(m, b, 1, S, -1, hb, NULL, NULL, NULL), 0);
    /* rows 0..65 do not see token 66; rows 66.. do. (Bitwise: the query tile of 64 rows has the
       same keys in both runs; row 64-65 are in the second tile, whose keys include 66, but it
       gets probability exactly 0 there.) */
    assert_memory_equal(ha, hb, 66 * D * sizeof(float));
    assert_true(rel_err_f32(ha + 66 * D, hb + 66 * D, (S - 66) * D) > 1e-3);
    free(ha), free(hb);
    clip_text_free(m);
}

static int report(void **s) {
    (void)s;
    printf("  worst relative error over all CLIP parity checks: %.2e (%s)\n", g_worst,
           g_worst_name);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quickgelu_legacy_pool),
        cmocka_unit_test(test_gelu_projection_first_eos),
        cmocka_unit_test(test_f16_legacy_layout),
        cmocka_unit_test(test_pool_rules_differ),
        cmocka_unit_test(test_causal),
        cmocka_unit_test(test_bad_forward),
        cmocka_unit_test_teardown(test_bad_files, cleanup),
    };
    return cmocka_run_group_tests(tests, NULL, report);
}
