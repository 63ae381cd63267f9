/* test_halfprec.c -- half-precision weight files against torch + diffusers
 * (tools/make_halfprec_fixtures.py, tests/fixtures/halfprec/):
 *  - float32 -> F16 / BF16 conversion equals torch's .half() / .bfloat16() bit for bit
 *    (ties, subnormals, overflow to inf, NaN), with the overflow count;
 *  - a UNet saved sharded by diffusers (save_pretrained(max_shard_size=...)) loads with every
 *    tensor equal to the unsharded float32 values; the fp16 variant (index named as diffusers
 *    >= 0.27 writes it, and the older <stem>.fp16.safetensors.index.json) loads as the exact
 *    float32 values of its F16 shards;
 *  - --save_precision's writer: F16 / BF16 files whose bytes are torch's conversion of the same
 *    weights, which load back; float32 stays exact; chunked conversion of a large tensor; the
 *    precision passed to each saver (unet_save_dir_as, the LoRA savers, the trainer's final
 *    save) and to mapo convert's converters (LoRA files, single files: fp16 byte for byte the
 *    conversion of torch's .half() of the same file), the plain savers float32;
 *  - bad indexes (bad JSON, no weight_map, missing shard, shard names leaving the folder, a
 *    tensor not in its shard, a parameter missing) each refused naming the index file. */
#include "mapo/checkpoint.h"
#include "mapo/common.h"
#include "mapo/lora_formats.h"
#include "mapo/safetensors.h"
#include "mapo/single_file.h"
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
        int rc = unet_save_dir_as(&u, d, kinds[k]);
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
        /* the precision belongs to that call: a plain save right after it is float32 */
        snprintf(d, sizeof d, "%s/plain_%d", g_dir, k);
        assert_int_equal(unet_save_dir(&u, d), 0);
        check_saved(d, ST_F32, "f32.", 0);
    }
    /* the trainer's final save (--save_precision fp16): output_dir/unet, torch's .half() */
    snprintf(d, sizeof d, "%s/final", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    if (ckpt_save_final(&u, d, LORA_FMT_DIFFUSERS, ST_F16)) fail_msg("%s", mapo_last_error());
    snprintf(d, sizeof d, "%s/final/unet", g_dir);
    check_saved(d, ST_F16, "", 1);
    unet_free(&u);
    /* each tensor is stored as its own add call says */
    st_writer *w = st_writer_new();
    const float one[2] = {1.0f, 70000.0f};
    const int64_t s2[1] = {2};
    st_writer_add_f32_as(w, "a", ST_BF16, 1, s2, one);
    st_writer_add(w, "b", ST_F32, 1, s2, one);
    st_writer_add_f32_as(w, "c", ST_F16, 1, s2, one);
    st_writer_add_f32_as(w, "d", ST_F32, 1, s2, one);
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
    assert_int_equal(st_find(&f, "d")->dtype, ST_F32);
    assert_memory_equal(st_find(&f, "d")->data, one, sizeof one);
    st_close(&f);
}

/* file `got` holds the tensors of the float32 file `f32` (same names, shapes, metadata) stored
   as d: F32 the same bytes, F16 / BF16 each value's bits torch's rounding of the float32 value
   (st_float_to_half / st_float_to_bf16, checked against torch above) */
static void expect_rounded(const char *got, const char *f32, st_dtype d) {
    st_file g, r;
    if (st_open(&g, got) || st_open(&r, f32)) fail_msg("%s", mapo_last_error());
    assert_int_equal(g.n, r.n);
    assert_true(g.n > 0);
    for (int i = 0; i < g.n; i++) {
        const st_tensor *t = &g.tensors[i], *e = st_find(&r, t->name);
        if (!e) fail_msg("%s: '%s' not in %s", got, t->name, f32);
        assert_int_equal(e->dtype, ST_F32);
        if (t->dtype != d) fail_msg("%s: '%s' is %s", got, t->name, st_dtype_name(t->dtype));
        assert_int_equal(t->ndim, e->ndim);
        assert_memory_equal(t->shape, e->shape, (size_t)e->ndim * sizeof *e->shape);
        if (d == ST_F32) {
            if (memcmp(t->data, e->data, e->nbytes)) fail_msg("%s: '%s' differs", got, t->name);
            continue;
        }
        for (int64_t k = 0; k < e->numel; k++) {
            float v;
            memcpy(&v, (const uint8_t *)e->data + 4 * k, 4);
            const uint16_t want = d == ST_F16 ? st_float_to_half(v) : st_float_to_bf16(v);
            if (bits16(t, k) != want)
                fail_msg("%s: '%s'[%lld] = 0x%04x, %a rounds to 0x%04x", got, t->name,
                         (long long)k, bits16(t, k), (double)v, want);
        }
    }
    assert_int_equal(g.n_meta, r.n_meta);
    for (int i = 0; i < r.n_meta; i++) {
        const char *m = st_meta(&g, r.meta_keys[i]);
        if (!m || strcmp(m, r.meta_values[i])) fail_msg("%s: metadata %s", got, r.meta_keys[i]);
    }
    st_close(&g);
    st_close(&r);
}

#define PIPE "tests/fixtures/pipeline/sd15"
#define LORA "tests/fixtures/lora_kohya/pipe_sd15/pytorch_lora_weights.safetensors"

/* LoRA files in a save precision: mapo convert's lora_convert_file (both layouts, the kohya
   alpha included) and the trainer's final save of adapters */
static void test_lora_save_precision(void **state) {
    (void)state;
    static const char *const to[2] = {"diffusers", "kohya"};
    char ref[2][128], p[300];
    for (int l = 0; l < 2; l++) {
        snprintf(ref[l], sizeof ref[l], "%s/lora_%s_f32.safetensors", g_dir, to[l]);
        if (lora_convert_file_model(LORA, ref[l], to[l], PIPE, ST_F32))
            fail_msg("%s", mapo_last_error());
        const st_dtype kinds[3] = {ST_F32, ST_F16, ST_BF16};
        for (int k = 0; k < 3; k++) {
            snprintf(p, sizeof p, "%s/lora_%s_%d.safetensors", g_dir, to[l], k);
            if (lora_convert_file_model(LORA, p, to[l], PIPE, kinds[k]))
                fail_msg("%s", mapo_last_error());
            expect_rounded(p, ref[l], kinds[k]);
        }
    }
    /* the trainer's final save (--save_precision bf16 --lora_format both) */
    unet u;
    if (unet_load_dir(&u, PIPE, 0) || unet_lora_load(&u, LORA, 0))
        fail_msg("%s", mapo_last_error());
    char d[128];
    snprintf(d, sizeof d, "%s/final_lora", g_dir);
    assert_int_equal(mkdir(d, 0755), 0);
    if (ckpt_save_final(&u, d, LORA_FMT_BOTH, ST_BF16)) fail_msg("%s", mapo_last_error());
    snprintf(p, sizeof p, "%s/%s", d, LORA_DIFFUSERS_FILE);
    expect_rounded(p, ref[0], ST_BF16);
    snprintf(p, sizeof p, "%s/%s", d, LORA_KOHYA_FILE);
    expect_rounded(p, ref[1], ST_BF16);
    /* and the plain savers stay float32 */
    snprintf(p, sizeof p, "%s/plain_lora.safetensors", g_dir);
    assert_int_equal(unet_lora_save(&u, p), 0);
    expect_rounded(p, ref[0], ST_F32);
    snprintf(p, sizeof p, "%s/plain_kohya.safetensors", g_dir);
    assert_int_equal(unet_lora_save_kohya(&u, p), 0);
    expect_rounded(p, ref[1], ST_F32);
    unet_free(&u);
}

/* mapo convert --save_precision on a single file: fp16 gives the bytes the conversion of
   torch's .half() of the same file gives (tests/fixtures/single_file/sd15_fp16.safetensors),
   bf16 torch's rounding of the float32 conversion; a half file widened to float32 is exact */
static void test_single_file_save_precision(void **state) {
    (void)state;
    static const char *const parts[3] = {"unet/diffusion_pytorch_model.safetensors",
                                         "vae/diffusion_pytorch_model.safetensors",
                                         "text_encoder/model.safetensors"};
    const char *f32_in = "tests/fixtures/single_file/sd15.safetensors";
    const char *f16_in = "tests/fixtures/single_file/sd15_fp16.safetensors";
    char f32[128], torch16[128], f16[128], b16[128], wide[128], a[300], b[300];
    snprintf(f32, sizeof f32, "%s/sf_f32", g_dir);
    snprintf(torch16, sizeof torch16, "%s/sf_torch16", g_dir);
    snprintf(f16, sizeof f16, "%s/sf_f16", g_dir);
    snprintf(b16, sizeof b16, "%s/sf_b16", g_dir);
    snprintf(wide, sizeof wide, "%s/sf_wide", g_dir);
    if (single_file_convert(f32_in, PIPE, f32, 1) ||
        single_file_convert(f16_in, PIPE, torch16, 1) ||
        single_file_convert_as(f32_in, PIPE, f16, 1, ST_F16) ||
        single_file_convert_as(f32_in, PIPE, b16, 1, ST_BF16) ||
        single_file_convert_as(f16_in, PIPE, wide, 1, ST_F32))
        fail_msg("%s", mapo_last_error());
    for (int i = 0; i < 3; i++) {
        size_t na, nb;
        snprintf(a, sizeof a, "%s/%s", f16, parts[i]);
        snprintf(b, sizeof b, "%s/%s", torch16, parts[i]);
        uint8_t *x = read_all(a, &na), *y = read_all(b, &nb);
        assert_int_equal(na, nb);
        if (memcmp(x, y, na)) fail_msg("%s differs from the conversion of torch's .half()", a);
        free(x);
        free(y);
        snprintf(b, sizeof b, "%s/%s", f32, parts[i]);
        expect_rounded(a, b, ST_F16);
        snprintf(a, sizeof a, "%s/%s", b16, parts[i]);
        expect_rounded(a, b, ST_BF16);
        /* F16 -> float32: every value the exact float32 value of the F16 bits */
        snprintf(a, sizeof a, "%s/%s", wide, parts[i]);
        snprintf(b, sizeof b, "%s/%s", torch16, parts[i]);
        st_file w, h;
        if (st_open(&w, a) || st_open(&h, b)) fail_msg("%s", mapo_last_error());
        assert_int_equal(w.n, h.n);
        for (int t = 0; t < w.n; t++) {
            const st_tensor *x32 = &w.tensors[t], *x16 = st_find(&h, x32->name);
            assert_non_null(x16);
            assert_int_equal(x32->dtype, ST_F32);
            assert_int_equal(x16->dtype, ST_F16);
            assert_int_equal(x32->numel, x16->numel);
            for (int64_t k = 0; k < x32->numel; k++) {
                float v;
                memcpy(&v, (const uint8_t *)x32->data + 4 * k, 4);
                if (v != st_half_to_float(bits16(x16, k))) fail_msg("%s: %s", a, x32->name);
            }
        }
        st_close(&w);
        st_close(&h);
    }
    /* a dtype that is no save precision: refused, nothing written */
    snprintf(a, sizeof a, "%s/sf_i8", g_dir);
    assert_int_equal(single_file_convert_as(f32_in, PIPE, a, 1, ST_I8), -1);
    assert_non_null(strstr(mapo_last_error(), "F32, F16 or BF16, not I8"));
    assert_int_equal(access(a, F_OK), -1);
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
        cmocka_unit_test(test_lora_save_precision),
        cmocka_unit_test(test_single_file_save_precision),
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
