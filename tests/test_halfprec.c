/* test_halfprec.c -- half-precision weight files against torch + diffusers
 * (tools/make_halfprec_fixtures.py, tests/fixtures/halfprec/):
 *  - float32 -> F16 / BF16 conversion equals torch's .half() / .bfloat16() bit for bit
 *    (ties, subnormals, overflow to inf, NaN), with the overflow count;
 *  - a UNet saved sharded by diffusers (save_pretrained(max_shard_size=...)) loads with every
 *    tensor equal to the unsharded float32 values; the fp16 variant (index named as diffusers
 *    >= 0.27 writes it, and the older <stem>.fp16.safetensors.index.json) loads as the exact
 *    float32 values of its F16 shards;
 *  - --save_precision's writer: F16 / BF16 files whose bytes are torch's conversion of the same
 *    weights, which load back; float32 stays exact; chunked conversion of a large tensor;
 *  - bad indexes (bad JSON, no weight_map, missing shard, shard names leaving the folder, a
 *    tensor not in its shard, a parameter missing) each refused naming the index file. */
#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "mapo/unet.h"
#include "testutil.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FX "tests/fixtures/halfprec"
#define INDEX "diffusion_pytorch_model.safetensors.index.json"

static char g_dir[64];

static uint16_t bits16(const st_tensor *t, int64_t i) {
    uint16_t h;
    memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
    return h;
}

static int is_nan16(uint16_t h, int bf) {
    return bf ? (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) : (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
}

static void test_conversion_matches_torch(void **state) {
    (void)state;
    st_file f;
    assert_int_equal(st_open(&f, FX "/convert.safetensors"), 0);
    const st_tensor *x = st_find(&f, "x"), *h = st_find(&f, "x_f16"), *b = st_find(&f, "x_bf16");
    const st_tensor *ni = st_find(&f, "n_inf");
    assert_non_null(x);
    assert_non_null(h);
    assert_non_null(b);
    assert_non_null(ni);
    assert_int_equal(h->dtype, ST_F16);
    assert_int_equal(b->dtype, ST_BF16);
    const int64_t n = x->numel;
    float *v = malloc((size_t)n * sizeof *v);
    assert_int_equal(st_to_f32(x, v), 0);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t a = st_float_to_half(v[i]), e = bits16(h, i);
        const uint16_t c = st_float_to_bf16(v[i]), g = bits16(b, i);
        if (a != e && !(is_nan16(a, 0) && is_nan16(e, 0))) {
            if (bad++ < 5) print_error("f16 of %a: 0x%04x, torch 0x%04x\n", (double)v[i], a, e);
        }
        if (c != g && !(is_nan16(c, 1) && is_nan16(g, 1))) {
            if (bad++ < 5) print_error("bf16 of %a: 0x%04x, torch 0x%04x\n", (double)v[i], c, g);
        }
    }
    assert_int_equal(bad, 0);
    int64_t want[2];
    memcpy(want, ni->data, sizeof want);
    uint16_t *o = malloc((size_t)n * 2);
    assert_int_equal(st_from_f32(ST_F16, v, o, n), want[0]);
    assert_true(want[0] > 0); /* the fixture does overflow */
    assert_int_equal(st_from_f32(ST_BF16, v, o, n), want[1]);
    free(o);
    free(v);
    st_close(&f);
}

/* every parameter of u equals the fixture's "<prefix><name>" (F32 bit-exact) */
static void expect_params_equal(const unet *u, const char *prefix) {
    st_file e;
    assert_int_equal(st_open(&e, FX "/expect.safetensors"), 0);
    int n_expect = 0;
    for (int i = 0; i < e.n; i++) n_expect += !strncmp(e.tensors[i].name, prefix, strlen(prefix));
    assert_int_equal(u->params.n, n_expect); /* every tensor of the model, no more */
    for (int i = 0; i < u->params.n; i++) {
        const param_info *p = &u->params.p[i];
        char nm[600];
        snprintf(nm, sizeof nm, "%s%s", prefix, p->name);
        const st_tensor *t = st_find(&e, nm);
        if (!t) fail_msg("%s not in the fixture", nm);
        assert_int_equal(t->numel, p->numel);
        float *w = malloc((size_t)p->numel * sizeof *w);
        assert_int_equal(st_to_f32(t, w), 0);
        if (memcmp(w, u->params.data + p->offset, (size_t)p->numel * sizeof *w))
            fail_msg("%s differs from the unsharded values", p->name);
        free(w);
    }
    st_close(&e);
}

static void test_sharded_load(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    unet u;
    if (unet_load_dir(&u, FX "/sharded", 0)) fail_msg("%s", mapo_last_error());
    expect_params_equal(&u, "f32.");
    unet_free(&u);
    /* --variant fp16 where the folder has none: the plain shards (diffusers falls back) */
    mapo_set_weights_variant("fp16");
    if (unet_load_dir(&u, FX "/sharded", 0)) fail_msg("%s", mapo_last_error());
    expect_params_equal(&u, "f32.");
    unet_free(&u);
    mapo_set_weights_variant(NULL);
}

/* the fp16 variant loads as the float32 values of its F16 shards: within half's rounding of the
   float32 weights (relative 2^-11, or 2^-25 absolute below the normal range), and exactly the
   float32 value of each shard's bits */
static void check_variant(const unet *u) {
    st_index x;
    char ip[256];
    snprintf(ip, sizeof ip, "%s/variant/%s", FX, "diffusion_pytorch_model.safetensors.index.fp16.json");
    assert_int_equal(st_index_open(&x, ip), 0);
    st_file e;
    assert_int_equal(st_open(&e, FX "/expect.safetensors"), 0);
    for (int i = 0; i < u->params.n; i++) {
        const param_info *p = &u->params.p[i];
        const st_tensor *t = st_index_find(&x, p->name);
        char nm[600];
        snprintf(nm, sizeof nm, "f32.%s", p->name);
        const st_tensor *r = st_find(&e, nm);
        assert_non_null(t);
        assert_non_null(r);
        assert_int_equal(t->dtype, ST_F16);
        const float *d = u->params.data + p->offset;
        for (int64_t k = 0; k < p->numel; k++) {
            float w;
            memcpy(&w, (const uint8_t *)r->data + 4 * k, 4);
            assert_true(d[k] == st_half_to_float(bits16(t, k)));
            assert_true(fabs((double)d[k] - w) <= fabs((double)w) * 0x1p-11 + 0x1p-25);
        }
    }
    st_close(&e);
    st_index_close(&x);
}

/* dst (created) gets every file of fixture folder src; the index is renamed to `index` */
static void copy_folder(const char *src, const char *dst, const char *index_from,
                        const char *index_to) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp %s/%s/* '%s'/", dst, dst, FX,
             src, dst);
    assert_int_equal(system(cmd), 0);
    if (index_from && strcmp(index_from, index_to)) {
        char a[400], b[400];
        snprintf(a, sizeof a, "%s/%s", dst, index_from);
        snprintf(b, sizeof b, "%s/%s", dst, index_to);
        assert_int_equal(rename(a, b), 0);
    }
}

static void test_variant_load(void **state) {
    (void)state;
    unet u;
    mapo_set_weights_variant("fp16");
    if (unet_load_dir(&u, FX "/variant", 0)) fail_msg("%s", mapo_last_error());
    check_variant(&u);
    unet_free(&u);
    /* the older name of a variant's index */
    char d[128];
    snprintf(d, sizeof d, "%s/legacy", g_dir);
    copy_folder("variant", d, "diffusion_pytorch_model.safetensors.index.fp16.json",
                "diffusion_pytorch_model.fp16.safetensors.index.json");
    if (unet_load_dir(&u, d, 0)) fail_msg("%s", mapo_last_error());
    check_variant(&u);
    unet_free(&u);
    /* without --variant the fp16 files are not the weights (as diffusers) */
    mapo_set_weights_variant(NULL);
    assert_int_equal(unet_load_dir(&u, FX "/variant", 0), -1);
    assert_non_null(strstr(mapo_last_error(), "no diffusion_pytorch_model.safetensors"));
}

/* --save_precision: the saved file's tensors are `dtype` with the bytes of `ref` (the fixture
   tensors "<prefix><name>", or the variant's shards when ref_index) */
static void check_saved(const char *dir, st_dtype dtype, const char *prefix, int ref_index) {
    char p[256];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    st_file f, e;
    st_index x;
    assert_int_equal(st_open(&f, p), 0);
    if (ref_index)
        assert_int_equal(st_index_open(&x, FX "/variant/diffusion_pytorch_model.safetensors.index.fp16.json"), 0);
    else
        assert_int_equal(st_open(&e, FX "/expect.safetensors"), 0);
    assert_int_equal(f.n, ref_index ? x.n : 208);
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        char nm[600];
        snprintf(nm, sizeof nm, "%s%s", prefix, t->name);
        const st_tensor *r = ref_index ? st_index_find(&x, t->name) : st_find(&e, nm);
        if (!r) fail_msg("%s: no reference", nm);
        assert_int_equal(t->dtype, dtype);
        assert_int_equal(r->dtype, dtype);
        assert_int_equal(t->nbytes, r->nbytes);
        if (memcmp(t->data, r->data, t->nbytes)) fail_msg("%s: bytes differ from torch's", t->name);
    }
    assert_string_equal(st_meta(&f, "format"), "pt");
    st_close(&f);
    if (ref_index) st_index_close(&x);
    else st_close(&e);
}

static void test_save_precision(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    unet u;
    if (unet_load_dir(&u, FX "/sharded", 0)) fail_msg("%s", mapo_last_error());
    char d[128];
    const st_dtype kinds[3] = {ST_F32, ST_F16, ST_BF16};
    for (int k = 0; k < 3; k++) {
        snprintf(d, sizeof d, "%s/save_%d", g_dir, k);
        st_f32_overflows(1);
        const st_dtype was = st_set_f32_store(kinds[k]);
        assert_int_equal(was, ST_F32);
        int rc = unet_save_dir(&u, d);
        assert_int_equal(st_set_f32_store(ST_F32), kinds[k]);
        assert_int_equal(rc, 0);
        assert_int_equal(st_f32_overflows(1), 0); /* the weights are all in range */
        if (kinds[k] == ST_F16) check_saved(d, ST_F16, "", 1);
        else check_saved(d, kinds[k], kinds[k] == ST_F32 ? "f32." : "bf16.", 0);
        /* and it loads back: float32 exactly, halves as their float32 values */
        unet v;
        if (unet_load_dir(&v, d, 0)) fail_msg("%s", mapo_last_error());
        if (kinds[k] == ST_F32) expect_params_equal(&v, "f32.");
        if (kinds[k] == ST_F16) check_variant(&v);
        unet_free(&v);
    }
    unet_free(&u);
    /* the setting only affects F32 tensors added with data while it is on */
    st_set_f32_store(ST_BF16);
    st_writer *w = st_writer_new();
    const float one[2] = {1.0f, 70000.0f};
    const int64_t s2[1] = {2};
    st_writer_add(w, "a", ST_F32, 1, s2, one);
    st_set_f32_store(ST_F32);
    st_writer_add(w, "b", ST_F32, 1, s2, one);
    st_writer_add_f32_as(w, "c", ST_F16, 1, s2, one);
    snprintf(d, sizeof d, "%s/mixed.safetensors", g_dir);
    st_f32_overflows(1);
    assert_int_equal(st_writer_write(w, d), 0);
    st_writer_free(w);
    assert_int_equal(st_f32_overflows(1), 1); /* 70000 as F16 */
    st_file f;
    assert_int_equal(st_open(&f, d), 0);
    assert_int_equal(st_find(&f, "a")->dtype, ST_BF16);
    assert_int_equal(st_find(&f, "b")->dtype, ST_F32);
    assert_int_equal(st_find(&f, "c")->dtype, ST_F16);
    assert_int_equal(bits16(st_find(&f, "c"), 0), 0x3c00);
    assert_int_equal(bits16(st_find(&f, "c"), 1), 0x7c00);
    st_close(&f);
}

/* a tensor larger than the writer's conversion chunk (2^16 values) */
static void test_chunked_conversion(void **state) {
    (void)state;
    const int64_t n = 200003;
    float *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = (float)sin((double)i) * (float)(1 + i % 977);
    st_writer *w = st_writer_new();
    st_writer_add_f32_as(w, "v", ST_BF16, 1, &n, v);
    char p[128];
    snprintf(p, sizeof p, "%s/big.safetensors", g_dir);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    st_file f;
    assert_int_equal(st_open(&f, p), 0);
    const st_tensor *t = st_find(&f, "v");
    assert_int_equal(t->numel, n);
    for (int64_t i = 0; i < n; i++)
        if (bits16(t, i) != st_float_to_bf16(v[i])) fail_msg("value %lld", (long long)i);
    st_close(&f);
    free(v);
}

/* a copy of sharded/ whose index is replaced by `index` (NULL: kept), then loaded: must fail
   naming the index file and `needle` */
static void expect_bad(const char *what, const char *index, const char *needle) {
    char d[128], p[256];
    snprintf(d, sizeof d, "%s/bad", g_dir);
    copy_folder("sharded", d, NULL, NULL);
    snprintf(p, sizeof p, "%s/%s", d, INDEX);
    if (index) {
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        fputs(index, f);
        fclose(f);
    }
    unet u;
    if (unet_load_dir(&u, d, 0) == 0) fail_msg("%s: loaded", what);
    const char *e = mapo_last_error();
    if (!strstr(e, INDEX) || !strstr(e, needle))
        fail_msg("%s: message '%s' lacks the index file or '%s'", what, e, needle);
}

/* the fixture's index with `from` replaced by `to` (first occurrence), as a string */
static char *index_edit(const char *from, const char *to) {
    size_t n;
    char *s = (char *)read_all(FX "/sharded/" INDEX, &n);
    s = realloc(s, n + 1);
    s[n] = 0;
    char *k = strstr(s, from);
    assert_non_null(k);
    char *o = malloc(n + strlen(to) + 1);
    snprintf(o, n + strlen(to) + 1, "%.*s%s%s", (int)(k - s), s, to, k + strlen(from));
    free(s);
    return o;
}

static void test_bad_index(void **state) {
    (void)state;
    mapo_set_weights_variant(NULL);
    expect_bad("bad JSON", "{\"weight_map\": {", "not a valid index JSON");
    expect_bad("no weight_map", "{\"metadata\": {}}", "weight_map");
    expect_bad("weight_map not an object", "{\"weight_map\": [1]}", "weight_map");
    /* conv_in.bias's entry of the index, edited */
#define CB "\"conv_in.bias\": \"diffusion_pytorch_model-00001-of-00008.safetensors\""
    static const struct { const char *what, *from, *to, *needle; } edits[] = {
        {"shard path with ..", CB,
         "\"conv_in.bias\": \"../sharded/diffusion_pytorch_model-00001-of-00008.safetensors\"",
         "'/'"},
        {"shard name with ..", CB,
         "\"conv_in.bias\": \"..diffusion_pytorch_model-00001-of-00008.safetensors\"", "'..'"},
        {"absolute shard path", CB, "\"conv_in.bias\": \"/etc/passwd\"", "conv_in.bias"},
        {"shard not a string", CB, "\"conv_in.bias\": 7", "not a string"},
        {"missing shard", CB,
         "\"conv_in.bias\": \"diffusion_pytorch_model-00009-of-00008.safetensors\"",
         "00009-of-00008.safetensors (of tensor 'conv_in.bias') is missing"},
        {"tensor not in its shard", CB,
         "\"conv_in.bias\": \"diffusion_pytorch_model-00008-of-00008.safetensors\"",
         "'conv_in.bias' is not in its shard"},
        {"parameter missing from the map", CB ",", "", "'conv_in.bias' is missing"},
    };
#undef CB
    for (size_t k = 0; k < sizeof edits / sizeof *edits; k++) {
        char *s = index_edit(edits[k].from, edits[k].to);
        expect_bad(edits[k].what, s, edits[k].needle);
        free(s);
    }
    /* a shard file removed (the index intact) */
    char bd[128], p[256];
    snprintf(bd, sizeof bd, "%s/bad", g_dir);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model-00003-of-00008.safetensors", bd);
    assert_int_equal(unlink(p), 0);
    unet u;
    assert_int_equal(unet_load_dir(&u, bd, 0), -1);
    assert_non_null(strstr(mapo_last_error(), "00003-of-00008.safetensors"));
    assert_non_null(strstr(mapo_last_error(), "is missing"));
    /* a truncated shard: the shard's own validation, prefixed with the index */
    copy_folder("sharded", bd, NULL, NULL);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model-00002-of-00008.safetensors", bd);
    assert_int_equal(truncate(p, 100), 0);
    assert_int_equal(unet_load_dir(&u, bd, 0), -1);
    assert_non_null(strstr(mapo_last_error(), INDEX));
    assert_non_null(strstr(mapo_last_error(), "00002-of-00008"));
}

static void test_precision_parse(void **state) {
    (void)state;
    st_dtype d;
    assert_int_equal(st_precision_parse("float32", "--x", &d), 0);
    assert_int_equal(d, ST_F32);
    assert_int_equal(st_precision_parse("fp16", "--x", &d), 0);
    assert_int_equal(d, ST_F16);
    assert_int_equal(st_precision_parse("bf16", "--x", &d), 0);
    assert_int_equal(d, ST_BF16);
    assert_int_equal(st_precision_parse("half", "--save_precision", &d), -1);
    assert_non_null(strstr(mapo_last_error(), "--save_precision half"));
    assert_string_equal(st_precision_name(ST_BF16), "bf16");
    assert_true(st_is_index("a/b.safetensors.index.json"));
    assert_true(st_is_index("a/b.safetensors.index.fp16.json"));
    assert_false(st_is_index("a/b.safetensors"));
    assert_false(st_is_index("a.index.x/b.json"));
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/mapo_halfprec.%d", (int)getpid());
    mkdir(g_dir, 0755);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conversion_matches_torch),
        cmocka_unit_test(test_sharded_load),
        cmocka_unit_test(test_variant_load),
        cmocka_unit_test(test_save_precision),
        cmocka_unit_test(test_chunked_conversion),
        cmocka_unit_test(test_bad_index),
        cmocka_unit_test(test_precision_parse),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) rc = rc ? rc : 1;
    return rc;
}
