/* test_safetensors.c -- reader/writer round trips, float16/bfloat16 conversion (known
 * bit patterns, exhaustive f16 against the compiler, and a fixture written by Python's
 * safetensors + torch), hostile files (each must fail with one message naming the file
 * and the problem), and atomic writing (old or new file, never a partial one or a
 * leftover temporary). Runs from the repository root. */
#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURE "tests/fixtures/io/dtypes.safetensors"

static char g_dir[64]; /* per-run temporary directory */

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* "<g_dir>/<name>" in a static buffer (one live result at a time per slot). */
static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int slot;
    slot = (slot + 1) % 4;
    snprintf(buf[slot], sizeof buf[slot], "%s/%s", g_dir, name);
    return buf[slot];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n) assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

/* A file with the given header length field, header text and data_len zero bytes. */
static void write_st_raw(const char *path, uint64_t hlen, const char *hdr, size_t data_len) {
    size_t hl = strlen(hdr), n = 8 + hl + data_len;
    uint8_t *b = calloc(1, n);
    memcpy(b, &hlen, 8);
    memcpy(b + 8, hdr, hl);
    write_bytes(path, b, n);
    free(b);
}

static void write_st(const char *path, const char *hdr, size_t data_len) {
    write_st_raw(path, strlen(hdr), hdr, data_len);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

/* Number of entries in g_dir whose name contains ".tmp." */
static int count_tmp_files(void) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/mapo_st_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        if (remove(p)) rmdir(p);
    }
    closedir(d);
    return rmdir(g_dir);
}

/* ---------------------------------------------------------------------------------- */

static void test_dtype_table(void **state) {
    (void)state;
    assert_string_equal(st_dtype_name(ST_BF16), "BF16");
    assert_string_equal(st_dtype_name(ST_BOOL), "BOOL");
    assert_int_equal(st_dtype_size(ST_F64), 8);
    assert_int_equal(st_dtype_size(ST_F16), 2);
    assert_int_equal(st_dtype_size(ST_U8), 1);
    assert_int_equal(st_dtype_size(ST_I32), 4);
}

/* Known binary16 patterns: normal, negative, max, subnormals, zero signs, inf, NaN. */
static void test_half_bits(void **state) {
    (void)state;
    assert_true(st_half_to_float(0x3c00) == 1.0f);
    assert_true(st_half_to_float(0xc100) == -2.5f);
    assert_true(st_half_to_float(0x7bff) == 65504.0f);
    assert_true(st_half_to_float(0x0400) == 0x1p-14f);         /* min normal */
    assert_true(st_half_to_float(0x0001) == 0x1p-24f);         /* min subnormal */
    assert_true(st_half_to_float(0x8001) == -0x1p-24f);
    assert_true(st_half_to_float(0x03ff) == 1023 * 0x1p-24f);  /* max subnormal */
    assert_true(st_half_to_float(0x3555) == 0x1.554p-2f);      /* ~1/3 */
    assert_int_equal(f32_bits(st_half_to_float(0x0000)), 0x00000000u);
    assert_int_equal(f32_bits(st_half_to_float(0x8000)), 0x80000000u);
    assert_int_equal(f32_bits(st_half_to_float(0x7c00)), 0x7f800000u); /* +inf */
    assert_int_equal(f32_bits(st_half_to_float(0xfc00)), 0xff800000u); /* -inf */
    assert_true(isnan(st_half_to_float(0x7e00)));
    assert_true(isnan(st_half_to_float(0x7c01))); /* signalling pattern is still NaN */
    assert_true(isnan(st_half_to_float(0xfe00)));
}

/* Known bfloat16 patterns. */
static void test_bf16_bits(void **state) {
    (void)state;
    assert_true(st_bf16_to_float(0x3f80) == 1.0f);
    assert_true(st_bf16_to_float(0xc020) == -2.5f);
    assert_true(st_bf16_to_float(0x7f7f) == 0x1.fep127f);      /* max */
    assert_true(st_bf16_to_float(0x0001) == 0x1p-133f);        /* min subnormal */
    assert_true(st_bf16_to_float(0x0080) == 0x1p-126f);        /* min normal */
    assert_int_equal(f32_bits(st_bf16_to_float(0x8000)), 0x80000000u);
    assert_int_equal(f32_bits(st_bf16_to_float(0x7f80)), 0x7f800000u);
    assert_int_equal(f32_bits(st_bf16_to_float(0xff80)), 0xff800000u);
    assert_true(isnan(st_bf16_to_float(0x7fc0)));
    assert_true(isnan(st_bf16_to_float(0xffc1)));
}

/* All 65536 binary16 patterns against the compiler's _Float16 (where it has one). */
static void test_half_exhaustive(void **state) {
    (void)state;
#ifdef __FLT16_MAX__
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        _Float16 x;
        memcpy(&x, &h, 2);
        float ref = (float)x, got = st_half_to_float(h);
        if (isnan(ref)) assert_true(isnan(got));
        else assert_int_equal(f32_bits(got), f32_bits(ref));
    }
#else
    skip();
#endif
}

/* a == b bitwise, or both NaN. */
static void assert_same_f32(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++) {
        if (isnan(b[i]) && isnan(a[i])) continue;
        if (f32_bits(a[i]) != f32_bits(b[i]))
            fail_msg("%s[%lld]: got %a (0x%08x), torch gives %a (0x%08x)", what, (long long)i,
                     (double)a[i], f32_bits(a[i]), (double)b[i], f32_bits(b[i]));
    }
}

/* The Python-written fixture: our conversion must match torch's .float() bit for bit. */
static void test_fixture_vs_torch(void **state) {
    (void)state;
    st_file f;
    if (st_open(&f, FIXTURE)) fail_msg("%s", mapo_last_error());
    assert_string_equal(st_meta(&f, "source"), "tools/make_io_fixtures.py");
    const char *names[] = {"f16", "bf16", "f32", "f64"};
    const st_dtype dts[] = {ST_F16, ST_BF16, ST_F32, ST_F64};
    for (int k = 0; k < 4; k++) {
        char en[32];
        snprintf(en, sizeof en, "expect.%s", names[k]);
        const st_tensor *t = st_find(&f, names[k]), *e = st_find(&f, en);
        assert_non_null(t);
        assert_non_null(e);
        assert_int_equal(t->dtype, dts[k]);
        assert_int_equal(e->dtype, ST_F32);
        assert_int_equal(t->numel, e->numel);
        float *got = malloc((size_t)t->numel * 4), *want = malloc((size_t)t->numel * 4);
        assert_int_equal(st_to_f32(t, got), 0);
        int64_t shape[1] = {e->numel};
        assert_int_equal(st_read_f32_shape(&f, en, want, 1, shape), 0);
        assert_same_f32(got, want, t->numel, names[k]);
        /* f64 path: f16/bf16/f32 widen exactly, so (float) of it must match too */
        double *d = malloc((size_t)t->numel * 8);
        assert_int_equal(st_to_f64(t, d), 0);
        for (int64_t i = 0; i < t->numel; i++) got[i] = (float)d[i];
        assert_same_f32(got, want, t->numel, names[k]);
        free(d);
        free(got);
        free(want);
    }
    st_close(&f);
}

/* ---------------------------------------------------------------------------------- */

/* Writes several dtypes/shapes (scalar, zero-element, odd byte sizes) and metadata, reads
 * them back and compares everything. */
static void test_roundtrip(void **state) {
    (void)state;
    const char *path = tmp_path("rt.safetensors");
    float a[6] = {1, -2, 3.5f, 0, -0.0f, 1e-40f};
    uint16_t h[5] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00};
    uint16_t bf = 0xc020;
    double d[1] = {-1.25};
    int64_t i64[3] = {-1, 0, INT64_MAX};
    uint8_t u8[7] = {1, 2, 3, 4, 5, 6, 7};
    int32_t i32[1] = {42};
    int64_t s_a[2] = {2, 3}, s_h[1] = {5}, s_d[3] = {1, 1, 1}, s_i64[1] = {3}, s_u8[1] = {7},
            s_z[1] = {0}, s_z3[3] = {2, 0, 4}, s_i32[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    st_writer *w = st_writer_new();
    st_writer_add(w, "b.u8", ST_U8, 1, s_u8, u8); /* odd size: following data unaligned */
    st_writer_add(w, "a.f32", ST_F32, 2, s_a, a);
    st_writer_add(w, "h", ST_F16, 1, s_h, h);
    st_writer_add(w, "scalar.bf16", ST_BF16, 0, NULL, &bf);
    st_writer_add(w, "d", ST_F64, 3, s_d, d);
    st_writer_add(w, "empty.bool", ST_BOOL, 1, s_z, NULL);
    st_writer_add(w, "empty3", ST_F32, 3, s_z3, NULL);
    st_writer_add(w, "i64", ST_I64, 1, s_i64, i64);
    st_writer_add(w, "i32.8d", ST_I32, 8, s_i32, i32);
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "note", "will be replaced");
    st_writer_meta(w, "note", "ünïcode ok");
    if (st_writer_write(w, path)) fail_msg("%s", mapo_last_error());
    st_writer_free(w);
    assert_int_equal(count_tmp_files(), 0);

    st_file f;
    if (st_open(&f, path)) fail_msg("%s", mapo_last_error());
    assert_int_equal(f.n, 9);
    assert_int_equal(f.n_meta, 2);
    assert_string_equal(st_meta(&f, "format"), "pt");
    assert_string_equal(st_meta(&f, "note"), "ünïcode ok");
    assert_null(st_meta(&f, "absent"));
    assert_null(st_find(&f, "absent"));
    assert_null(st_find(&f, ""));
    uint64_t hlen;
    memcpy(&hlen, f.map, 8);
    assert_int_equal(hlen % 8, 0);

    const st_tensor *t = st_find(&f, "a.f32");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_memory_equal(t->data, a, sizeof a);
    float fa[6];
    assert_int_equal(st_read_f32_shape(&f, "a.f32", fa, 2, s_a), 0);
    assert_memory_equal(fa, a, sizeof a);

    t = st_find(&f, "h");
    float fh[5];
    assert_int_equal(st_to_f32(t, fh), 0);
    assert_true(fh[0] == 1.0f && fh[1] == -2.5f && fh[2] == 65504.0f && fh[3] == 0x1p-24f);
    assert_true(isinf(fh[4]));

    t = st_find(&f, "scalar.bf16");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    float fs;
    assert_int_equal(st_to_f32(t, &fs), 0);
    assert_true(fs == -2.5f);
    assert_int_equal(st_read_f32_shape(&f, "scalar.bf16", &fs, 0, NULL), 0);

    t = st_find(&f, "d");
    double dd;
    assert_int_equal(st_to_f64(t, &dd), 0);
    assert_true(dd == -1.25);

    t = st_find(&f, "empty.bool");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    t = st_find(&f, "empty3");
    assert_int_equal(t->numel, 0);
    assert_int_equal(st_to_f32(t, fa), 0);

    t = st_find(&f, "b.u8");
    assert_memory_equal(t->data, u8, 7);
    t = st_find(&f, "i64");
    assert_memory_equal(t->data, i64, sizeof i64);
    assert_int_equal(st_to_f32(t, fa), -1);
    assert_non_null(strstr(mapo_last_error(), "not a floating type"));
    assert_int_equal(st_to_f64(t, &dd), -1);
    t = st_find(&f, "i32.8d");
    assert_int_equal(t->ndim, 8);
    assert_memory_equal(t->data, i32, 4);
    st_close(&f);
}

/* st_read_f32_shape errors: missing tensor, wrong shape, non-float dtype. */
static void test_read_shape_errors(void **state) {
    (void)state;
    const char *path = tmp_path("shape.safetensors");
    float a[6] = {0};
    int64_t ia[1] = {0};
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s1[1] = {1};
    st_writer *w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 2, s23, a);
    st_writer_add(w, "idx", ST_I64, 1, s1, ia);
    assert_int_equal(st_writer_write(w, path), 0);
    st_writer_free(w);
    st_file f;
    assert_int_equal(st_open(&f, path), 0);
    float out[6];
    assert_int_equal(st_read_f32_shape(&f, "y", out, 2, s23), -1);
    assert_non_null(strstr(mapo_last_error(), path));
    assert_non_null(strstr(mapo_last_error(), "tensor 'y' missing"));
    assert_int_equal(st_read_f32_shape(&f, "x", out, 2, s32), -1);
    assert_non_null(strstr(mapo_last_error(), path));
    assert_non_null(strstr(mapo_last_error(), "tensor 'x' has shape [2, 3], expected [3, 2]"));
    assert_int_equal(st_read_f32_shape(&f, "x", out, 1, s1), -1);
    assert_non_null(strstr(mapo_last_error(), "expected [1]"));
    assert_int_equal(st_read_f32_shape(&f, "idx", out, 1, s1), -1);
    assert_non_null(strstr(mapo_last_error(), path));
    assert_non_null(strstr(mapo_last_error(), "I64"));
    st_close(&f);
}

/* Many tensors: every one is found (binary search over the sorted table). */
static void test_many_tensors(void **state) {
    (void)state;
    const char *path = tmp_path("many.safetensors");
    enum { N = 500 };
    static float vals[N];
    int64_t s1[1] = {1};
    char name[32];
    st_writer *w = st_writer_new();
    for (int i = 0; i < N; i++) {
        vals[i] = (float)i;
        snprintf(name, sizeof name, "layer.%d.w", (i * 7919) % N);
        st_writer_add(w, name, ST_F32, 1, s1, &vals[i]);
    }
    assert_int_equal(st_writer_write(w, path), 0);
    st_writer_free(w);
    st_file f;
    assert_int_equal(st_open(&f, path), 0);
    assert_int_equal(f.n, N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "layer.%d.w", (i * 7919) % N);
        const st_tensor *t = st_find(&f, name);
        assert_non_null(t);
        float v;
        memcpy(&v, t->data, 4);
        assert_true(v == (float)i);
    }
    st_close(&f);
}

/* ---------------------------------------------------------------------------------- */

typedef struct {
    const char *file;
    const char *header;
    size_t data_len;
    const char *word;
} hostile_case;

/* Headers that must be refused, each with the word the message must contain. */
static const hostile_case k_hostile[] = {
    {"notjson.st", "{not json", 0, "not valid JSON"},
    {"zerohdr.st", "", 0, "not valid JSON"},
    {"array.st", "[1, 2]", 0, "not an object"},
    {"string.st", "\"x\"", 0, "not an object"},
    {"entry_num.st", "{\"a\": 3}", 0, "not a JSON object"},
    {"dtype.st", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "unknown dtype 'F8_E4M3'"},
    {"nodtype.st", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype"},
    {"dtype_num.st", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype"},
    {"noshape.st", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape"},
    {"mismatch.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
     "does not match"},
    {"mismatch16.st", "{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
     "does not match"},
    {"past.st", "{\"conv_in.weight\":{\"dtype\":\"F32\",\"shape\":[25],\"data_offsets\":[0,100]}}",
     64, "data_offsets [0, 100] end past data (64 bytes)"},
    {"begin_gt_end.st", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16,
     "begin > end"},
    {"overlap.st",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlap"},
    {"same_range.st",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlap"},
    {"inside.st",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 16, "overlap"},
    {"negative.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,16]}}", 16,
     "negative"},
    {"float_dim.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
     "not an integer"},
    {"dims9.st",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     "9 dims"},
    {"huge_shape.st",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
     "too large"},
    /* declares 4 TB in an 8-byte data buffer: refused from the header, nothing allocated */
    {"gigabytes.st",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000000,1000],\"data_offsets\":[0,8]}}", 8,
     "(F32, 4000000000000 bytes) does not match data_offsets [0, 8]"},
    {"gigabytes_end.st",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4000000000],\"data_offsets\":[0,4000000000]}}",
     8, "end past data (8 bytes)"},
    {"neg_offset.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
     "data_offsets"},
    {"offsets3.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
     "data_offsets"},
    {"meta_num.st", "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value for 'k'"},
    {"meta_arr.st", "{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not"},
    {"dup.st",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "duplicate"},
};

/* st_open must fail with one message naming the file and containing the expected word;
 * the struct must be left closed (st_close again is harmless). */
static void expect_refused(const char *path, const char *word) {
    st_file f;
    memset(&f, 0x5a, sizeof f);
    if (st_open(&f, path) != -1) fail_msg("%s: st_open accepted it", path);
    const char *e = mapo_last_error();
    if (!strstr(e, path)) fail_msg("message does not name the file: %s", e);
    if (!strstr(e, word)) fail_msg("message lacks '%s': %s", word, e);
    assert_null(f.map);
    assert_null(f.tensors);
    st_close(&f);
}

static void test_hostile_headers(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof k_hostile / sizeof *k_hostile; i++) {
        const hostile_case *c = &k_hostile[i];
        const char *path = tmp_path(c->file);
        write_st(path, c->header, c->data_len);
        expect_refused(path, c->word);
    }
}

/* Problems before the JSON: missing, empty, short, bad header lengths, a directory. */
static void test_hostile_files(void **state) {
    (void)state;
    expect_refused(tmp_path("does_not_exist.safetensors"), "cannot open");
    const char *p = tmp_path("empty.st");
    write_bytes(p, "", 0);
    expect_refused(p, "empty");
    p = tmp_path("four.st");
    write_bytes(p, "\x10\0\0\0", 4);
    expect_refused(p, "too short");
    p = tmp_path("past_end.st");
    write_st_raw(p, 1000, "{}", 10);
    expect_refused(p, "past the end");
    p = tmp_path("huge_len.st");
    write_st_raw(p, (uint64_t)1 << 40, "{}", 0);
    expect_refused(p, "absurd");
    p = tmp_path("max_len.st");
    write_st_raw(p, UINT64_MAX, "{}", 0);
    expect_refused(p, "absurd");
    p = tmp_path("a_dir");
    assert_int_equal(mkdir(p, 0755), 0);
    expect_refused(p, "not a regular file");
}

/* Edge cases that are legal: empty header object, only metadata, gaps between tensors,
 * zero-size tensors sharing an offset (also inside another tensor), padding spaces. */
static void test_legal_edge_cases(void **state) {
    (void)state;
    const char *ok[] = {
        "{}",
        "{\"__metadata__\":{}}   ",
        "{\"__metadata__\":null}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
        "\"f\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
        "\"g\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[7,7]},"
        "\"b\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[0,1]}}        ",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        const char *path = tmp_path("legal.st");
        write_st(path, ok[i], 8);
        st_file f;
        if (st_open(&f, path)) fail_msg("case %zu: %s", i, mapo_last_error());
        st_close(&f);
    }
}

/* ---------------------------------------------------------------------------------- */

/* Misuse of the writer is reported by st_writer_write, and nothing is written. */
static void test_writer_misuse(void **state) {
    (void)state;
    float x = 1;
    int64_t s1[1] = {1}, sneg[1] = {-2}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct {
        const char *name;
        int ndim;
        const int64_t *shape;
        const char *word;
    } cases[] = {
        {"dup", 1, s1, "added twice"},
        {"neg", 1, sneg, "negative"},
        {"nine", 9, s9, "dims"},
        {"__metadata__", 1, s1, "reserved"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = tmp_path("misuse.safetensors");
        st_writer *w = st_writer_new();
        st_writer_add(w, "dup", ST_F32, 1, s1, &x);
        st_writer_add(w, cases[i].name, ST_F32, cases[i].ndim, cases[i].shape, &x);
        assert_int_equal(st_writer_write(w, path), -1);
        assert_non_null(strstr(mapo_last_error(), path));
        assert_non_null(strstr(mapo_last_error(), cases[i].word));
        st_writer_free(w);
        assert_int_equal(file_size(path), -1);
    }
    st_writer *w = st_writer_new();
    st_writer_add(w, "nodata", ST_F32, 1, s1, NULL);
    assert_int_equal(st_writer_write(w, tmp_path("misuse.safetensors")), -1);
    assert_non_null(strstr(mapo_last_error(), "no data"));
    st_writer_free(w);
    st_writer_free(NULL);
    assert_int_equal(count_tmp_files(), 0);
}

/* Reads a whole small file into buf; returns its length. */
static size_t slurp(const char *path, char *buf, size_t cap) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap, fp);
    fclose(fp);
    return n;
}

/* Atomic writes: a missing directory fails cleanly; a second write replaces the first. */
static void test_atomic_write(void **state) {
    (void)state;
    const char *bad = tmp_path("no_such_dir/out.bin");
    assert_int_equal(mapo_write_file_atomic(bad, "x", 1), -1);
    assert_non_null(strstr(mapo_last_error(), bad));
    assert_non_null(strstr(mapo_last_error(), "cannot create"));
    assert_int_equal(file_size(tmp_path("no_such_dir")), -1);
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_write(w, bad), -1); /* empty file set, same failure */
    assert_non_null(strstr(mapo_last_error(), bad));
    st_writer_free(w);

    const char *p = tmp_path("atomic.bin");
    char buf[64];
    assert_int_equal(mapo_write_file_atomic(p, "first version", 13), 0);
    assert_int_equal(slurp(p, buf, sizeof buf), 13);
    assert_memory_equal(buf, "first version", 13);
    assert_int_equal(mapo_write_file_atomic(p, "v2", 2), 0);
    assert_int_equal(slurp(p, buf, sizeof buf), 2);
    assert_memory_equal(buf, "v2", 2);
    assert_int_equal(mapo_write_file_atomic(p, "", 0), 0);
    assert_int_equal(file_size(p), 0);
    assert_int_equal(count_tmp_files(), 0);

    /* relative path (directory "."): write in the cwd of g_dir */
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(g_dir), 0);
    assert_int_equal(mapo_write_file_atomic("rel.bin", "abc", 3), 0);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(file_size(tmp_path("rel.bin")), 3);
}

/* A write that fails half-way (file size limit -> EFBIG) leaves the old file intact and
 * no temporary behind. */
static void test_atomic_failure_keeps_old(void **state) {
    (void)state;
    const char *p = tmp_path("keep.safetensors");
    float small[2] = {1, 2};
    int64_t s2[1] = {2};
    st_writer *w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 1, s2, small);
    assert_int_equal(st_writer_write(w, p), 0);
    st_writer_free(w);
    long old_size = file_size(p);

    enum { BIG = 1 << 20 };
    float *big = calloc(BIG, sizeof(float));
    int64_t sb[1] = {BIG};
    w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 1, sb, big);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 65536;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = st_writer_write(w, p);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    st_writer_free(w);
    free(big);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(mapo_last_error(), p));
    assert_non_null(strstr(mapo_last_error(), "write failed"));
    assert_int_equal(file_size(p), old_size);
    assert_int_equal(count_tmp_files(), 0);
    st_file f;
    assert_int_equal(st_open(&f, p), 0);
    assert_int_equal(st_find(&f, "x")->numel, 2);
    st_close(&f);
}

/* streaming: header first, rows written at offsets in any order, then commit; an aborted stream
   leaves the earlier file untouched and no temporary file */
static void test_streaming_writer(void **state) {
    (void)state;
    char dir[] = "/tmp/mapo_st_stream_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/s.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    double d[2] = {0.25, -8};
    st_writer *w = st_writer_new();
    st_writer_meta(w, "k", "v");
    st_writer_add_empty(w, "a", ST_F32, 2, (int64_t[]){3, 2});
    st_writer_add_empty(w, "d", ST_F64, 1, (int64_t[]){2});
    assert_int_equal(st_writer_write(w, path), -1); /* no data: must be streamed */
    assert_int_equal(st_writer_begin(w, path), 0);
    assert_int_equal(st_writer_put(w, 0, 4 * 4, a + 4, 8), 0); /* last row first */
    assert_int_equal(st_writer_put(w, 0, 0, a, 16), 0);
    assert_int_equal(st_writer_put(w, 1, 0, d, 16), 0);
    assert_int_equal(st_writer_put(w, 0, 20, a, 8), -1); /* past the tensor */
    assert_int_equal(st_writer_put(w, 2, 0, a, 4), -1);  /* no such tensor */
    assert_int_equal(st_writer_commit(w), 0);
    st_writer_free(w);
    st_file f;
    assert_int_equal(st_open(&f, path), 0);
    float got[6];
    assert_int_equal(st_read_f32_shape(&f, "a", got, 2, (int64_t[]){3, 2}), 0);
    assert_memory_equal(got, a, sizeof a);
    const st_tensor *t = st_find(&f, "d");
    assert_non_null(t);
    assert_memory_equal(t->data, d, sizeof d);
    assert_string_equal(st_meta(&f, "k"), "v");
    st_close(&f);
    /* an abandoned stream: the committed file stays, no temporary is left */
    w = st_writer_new();
    st_writer_add_empty(w, "a", ST_F32, 1, (int64_t[]){1});
    assert_int_equal(st_writer_begin(w, path), 0);
    st_writer_free(w);
    assert_int_equal(st_open(&f, path), 0);
    assert_non_null(st_find(&f, "d"));
    st_close(&f);
    DIR *dd = opendir(dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.') n++;
    closedir(dd);
    assert_int_equal(n, 1);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_table),
        cmocka_unit_test(test_half_bits),
        cmocka_unit_test(test_bf16_bits),
        cmocka_unit_test(test_half_exhaustive),
        cmocka_unit_test(test_fixture_vs_torch),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_read_shape_errors),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_hostile_files),
        cmocka_unit_test(test_legal_edge_cases),
        cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_atomic_write),
        cmocka_unit_test(test_atomic_failure_keeps_old),
        cmocka_unit_test(test_streaming_writer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
