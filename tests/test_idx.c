/* test_idx.c -- the IDX reader and the Fashion-MNIST loader: the committed head of the real
 * t10k split (64 images + labels, made by tools/make_idx_fixtures.py) against values Python
 * computed from the original bytes (tests/fixtures/idx/expected.json); the full installed
 * splits when /usr/share/datasets/fashion-mnist (or $MAPO_FASHION_MNIST) exists; hostile and
 * broken files written at test time, plain and gzipped (each must fail with one message that
 * names the file and the problem); fmnist_to_pixels values and padding. Runs from the
 * repository root. */
#include "mapo/common.h"
#include "mapo/idx.h"
#include "testutil.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FIX "tests/fixtures/idx"

static char g_dir[64]; /* per-run temporary directory */

/* "<g_dir>/<name>" in a static buffer (one live result at a time per slot). */
static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int slot;
    slot = (slot + 1) % 8;
    snprintf(buf[slot], sizeof buf[slot], "%s/%s", g_dir, name);
    return buf[slot];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n) assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static void write_gz(const char *path, const void *p, size_t n) {
    gzFile g = gzopen(path, "wb9");
    assert_non_null(g);
    if (n) assert_int_equal(gzwrite(g, p, (unsigned)n), (int)n);
    assert_int_equal(gzclose(g), Z_OK);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An IDX file image: magic 00 00 type nd, the nd dimensions, then `data_len` bytes from data
   (or the pattern (i * 7 + 3) % 256 when data is NULL). Returns a malloc'ed buffer, *len set. */
static uint8_t *make_idx(uint8_t type, int nd, const uint32_t *dims, const uint8_t *data,
                         size_t data_len, size_t *len) {
    size_t hl = 4 + 4 * (size_t)nd;
    uint8_t *b = malloc(hl + data_len + 1);
    b[0] = 0;
    b[1] = 0;
    b[2] = type;
    b[3] = (uint8_t)nd;
    for (int i = 0; i < nd; i++) put_be32(b + 4 + 4 * i, dims[i]);
    for (size_t i = 0; i < data_len; i++) b[hl + i] = data ? data[i] : (uint8_t)((i * 7 + 3) % 256);
    *len = hl + data_len;
    return b;
}

static void expect_error(int rc, const char *path, const char *word) {
    const char *e = mapo_last_error();
    if (rc != -1)
        fail_msg("expected failure for %s ('%s'), rc = %d", path ? path : "-", word, rc);
    if (path && !strstr(e, path)) fail_msg("message does not name the file %s: %s", path, e);
    if (!strstr(e, word)) fail_msg("message lacks '%s': %s", word, e);
}

static void mkdir_tmp(const char *name) {
    assert_int_equal(mkdir(tmp_path(name), 0700), 0);
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_rf(p);
        else remove(p);
    }
    closedir(d);
    rmdir(dir);
}

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/mapo_idx_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    rm_rf(g_dir);
    return 0;
}

static json_t *g_expected;

/* expected.json, loaded once. */
static json_t *expected(void) {
    if (!g_expected) {
        json_error_t je;
        g_expected = json_load_file(FIX "/expected.json", 0, &je);
        if (!g_expected) fail_msg("%s: %s", FIX "/expected.json", je.text);
    }
    return g_expected;
}

static int64_t jint(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) fail_msg("expected.json: '%s' is not an integer", key);
    return json_integer_value(v);
}

/* The committed head's images and labels compared with expected.json. */
static void check_head(const uint8_t *img, const uint8_t *lab, int64_t n, int h, int w) {
    json_t *e = expected();
    assert_int_equal(h, jint(e, "h"));
    assert_int_equal(w, jint(e, "w"));
    json_t *labels = json_object_get(e, "labels"), *sums = json_object_get(e, "image_sums");
    assert_true((int64_t)json_array_size(labels) >= n);
    for (int64_t i = 0; i < n; i++) {
        if (lab) assert_int_equal(lab[i], json_integer_value(json_array_get(labels, i)));
        int64_t s = 0;
        for (int k = 0; k < h * w; k++) s += img[i * h * w + k];
        assert_int_equal(s, json_integer_value(json_array_get(sums, i)));
    }
    json_t *px = json_object_get(e, "pixels");
    int checked = 0;
    for (size_t j = 0; j < json_array_size(px); j++) {
        json_t *p = json_array_get(px, j);
        int64_t i = json_integer_value(json_array_get(p, 0));
        int64_t r = json_integer_value(json_array_get(p, 1));
        int64_t c = json_integer_value(json_array_get(p, 2));
        int64_t v = json_integer_value(json_array_get(p, 3));
        if (i >= n) continue;
        assert_int_equal(img[i * h * w + r * w + c], v);
        checked++;
    }
    assert_true(checked > 0);
    json_t *rows = json_object_get(e, "first_rows");
    int64_t r0 = jint(e, "first_rows_from");
    for (size_t r = 0; r < json_array_size(rows); r++)
        for (int c = 0; c < w; c++)
            assert_int_equal(img[(r0 + (int64_t)r) * w + c],
                             json_integer_value(json_array_get(json_array_get(rows, r), c)));
}

/* ---------------------------------------------------------------------------------- */

static void test_classes_and_default_dir(void **state) {
    (void)state;
    static const char *names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
    for (int i = 0; i < 10; i++) assert_string_equal(FMNIST_CLASSES[i], names[i]);
    const char *old = getenv("MAPO_FASHION_MNIST");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("MAPO_FASHION_MNIST");
    assert_string_equal(fmnist_default_dir(), "/usr/share/datasets/fashion-mnist");
    setenv("MAPO_FASHION_MNIST", "", 1);
    assert_string_equal(fmnist_default_dir(), "/usr/share/datasets/fashion-mnist");
    setenv("MAPO_FASHION_MNIST", "/data/fm", 1);
    assert_string_equal(fmnist_default_dir(), "/data/fm");
    if (saved) setenv("MAPO_FASHION_MNIST", saved, 1);
    else unsetenv("MAPO_FASHION_MNIST");
    free(saved);
}

/* idx_read_u8 on the committed head: shape and values against Python's. */
static void test_head_idx(void **state) {
    (void)state;
    idx_u8 a, l;
    if (idx_read_u8(&a, FIX "/t10k-images-idx3-ubyte.gz", 3, 1 << 20))
        fail_msg("%s", mapo_last_error());
    assert_int_equal(a.ndim, 3);
    assert_int_equal(a.dims[0], 64);
    assert_int_equal(a.dims[1], 28);
    assert_int_equal(a.dims[2], 28);
    assert_int_equal(a.count, 64 * 28 * 28);
    if (idx_read_u8(&l, FIX "/t10k-labels-idx1-ubyte.gz", 0, 0)) fail_msg("%s", mapo_last_error());
    assert_int_equal(l.ndim, 1);
    assert_int_equal(l.dims[0], 64);
    assert_int_equal(l.count, 64);
    check_head(a.data, l.data, 64, 28, 28);
    /* the head variant keeps a prefix and reports the declared count */
    idx_u8 b;
    int64_t declared = 0;
    assert_int_equal(idx_read_u8_head(&b, FIX "/t10k-images-idx3-ubyte.gz", 0, 0, 5, &declared),
                     0);
    assert_int_equal(declared, 64);
    assert_int_equal(b.dims[0], 5);
    assert_int_equal(b.count, 5 * 784);
    assert_memory_equal(b.data, a.data, 5 * 784);
    idx_free(&b);
    assert_null(b.data);
    assert_int_equal(b.count, 0);
    /* max_items beyond the count reads everything */
    assert_int_equal(idx_read_u8_head(&b, FIX "/t10k-images-idx3-ubyte.gz", 3, 0, 1000, NULL), 0);
    assert_int_equal(b.dims[0], 64);
    assert_memory_equal(b.data, a.data, 64 * 784);
    idx_free(&b);
    idx_free(&a);
    idx_free(&l);
    idx_free(NULL);
}

static void test_head_fmnist(void **state) {
    (void)state;
    fmnist_split s;
    if (fmnist_load(&s, FIX, "t10k", 0)) fail_msg("%s", mapo_last_error());
    assert_int_equal(s.n, 64);
    assert_int_equal(s.h, 28);
    assert_int_equal(s.w, 28);
    check_head(s.images, s.labels, s.n, s.h, s.w);
    fmnist_split t;
    if (fmnist_load(&t, FIX, "t10k", 10)) fail_msg("%s", mapo_last_error());
    assert_int_equal(t.n, 10);
    assert_int_equal(t.h, 28);
    check_head(t.images, t.labels, t.n, t.h, t.w);
    assert_memory_equal(t.images, s.images, 10 * 784);
    fmnist_free(&t);
    assert_null(t.images);
    assert_int_equal(t.n, 0);
    assert_int_equal(fmnist_load(&t, FIX, "t10k", 65), 0);
    assert_int_equal(t.n, 64);
    fmnist_free(&t);
    fmnist_free(&s);
    fmnist_free(NULL);
}

/* The same files uncompressed (names without .gz) load alike; .gz wins when both exist. */
static void test_plain_files(void **state) {
    (void)state;
    size_t gi_n, gl_n;
    uint8_t *gi = read_bytes(FIX "/t10k-images-idx3-ubyte.gz", &gi_n);
    uint8_t *gl = read_bytes(FIX "/t10k-labels-idx1-ubyte.gz", &gl_n);
    /* decompress with zlib directly (not through the reader under test) */
    size_t ri_n = 16 + 64 * 784, rl_n = 8 + 64;
    uint8_t *ri = malloc(ri_n + 16), *rl = malloc(rl_n + 16);
    z_stream z = {0};
    assert_int_equal(inflateInit2(&z, 16 + 15), Z_OK);
    z.next_in = gi, z.avail_in = (uInt)gi_n, z.next_out = ri, z.avail_out = (uInt)ri_n + 16;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.total_out, ri_n);
    inflateEnd(&z);
    memset(&z, 0, sizeof z);
    assert_int_equal(inflateInit2(&z, 16 + 15), Z_OK);
    z.next_in = gl, z.avail_in = (uInt)gl_n, z.next_out = rl, z.avail_out = (uInt)rl_n + 16;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    assert_int_equal(z.total_out, rl_n);
    inflateEnd(&z);

    mkdir_tmp("plain");
    write_bytes(tmp_path("plain/t10k-images-idx3-ubyte"), ri, ri_n);
    write_bytes(tmp_path("plain/t10k-labels-idx1-ubyte"), rl, rl_n);
    fmnist_split s;
    if (fmnist_load(&s, tmp_path("plain"), "t10k", 0)) fail_msg("%s", mapo_last_error());
    assert_int_equal(s.n, 64);
    check_head(s.images, s.labels, s.n, s.h, s.w);
    fmnist_free(&s);
    idx_u8 a;
    assert_int_equal(idx_read_u8(&a, tmp_path("plain/t10k-images-idx3-ubyte"), 3, 0), 0);
    check_head(a.data, NULL, 64, 28, 28);
    idx_free(&a);

    /* both present: the .gz (here 3 items, different from the plain 64) is the one read */
    size_t len;
    uint8_t *b3 = make_idx(8, 3, (uint32_t[]){3, 28, 28}, ri + 16, 3 * 784, &len);
    write_gz(tmp_path("plain/t10k-images-idx3-ubyte.gz"), b3, len);
    free(b3);
    b3 = make_idx(8, 1, (uint32_t[]){3}, rl + 8, 3, &len);
    write_gz(tmp_path("plain/t10k-labels-idx1-ubyte.gz"), b3, len);
    free(b3);
    assert_int_equal(fmnist_load(&s, tmp_path("plain"), "t10k", 0), 0);
    assert_int_equal(s.n, 3);
    check_head(s.images, s.labels, s.n, s.h, s.w);
    fmnist_free(&s);
    /* gzip images with plain labels mix fine */
    remove(tmp_path("plain/t10k-labels-idx1-ubyte.gz"));
    b3 = make_idx(8, 1, (uint32_t[]){3}, rl + 8, 3, &len);
    write_bytes(tmp_path("plain/t10k-labels-idx1-ubyte"), b3, len);
    free(b3);
    assert_int_equal(fmnist_load(&s, tmp_path("plain"), "t10k", 0), 0);
    assert_int_equal(s.n, 3);
    fmnist_free(&s);
    free(gi), free(gl), free(ri), free(rl);
}

/* Any of 1..4 dimensions with want_ndim 0; other shapes than 28x28. */
static void test_shapes(void **state) {
    (void)state;
    for (int nd = 1; nd <= 4; nd++) {
        uint32_t dims[4] = {3, 2, 5, 2};
        size_t n = 1, len;
        for (int k = 0; k < nd; k++) n *= dims[k];
        uint8_t *b = make_idx(8, nd, dims, NULL, n, &len);
        const char *p = tmp_path("shape.idx");
        write_bytes(p, b, len);
        idx_u8 a;
        if (idx_read_u8(&a, p, 0, (int64_t)n)) fail_msg("%s", mapo_last_error());
        assert_int_equal(a.ndim, nd);
        assert_int_equal(a.count, (int64_t)n);
        for (int k = 0; k < nd; k++) assert_int_equal(a.dims[k], dims[k]);
        for (size_t i = 0; i < n; i++) assert_int_equal(a.data[i], (i * 7 + 3) % 256);
        idx_free(&a);
        assert_int_equal(idx_read_u8(&a, p, nd, 0), 0);
        idx_free(&a);
        free(b);
    }
    /* a 5 x 3 x 7 split */
    mkdir_tmp("odd");
    size_t len;
    uint8_t *b = make_idx(8, 3, (uint32_t[]){5, 3, 7}, NULL, 105, &len);
    write_gz(tmp_path("odd/train-images-idx3-ubyte.gz"), b, len);
    free(b);
    b = make_idx(8, 1, (uint32_t[]){5}, (const uint8_t[]){9, 0, 4, 4, 1}, 5, &len);
    write_gz(tmp_path("odd/train-labels-idx1-ubyte.gz"), b, len);
    free(b);
    fmnist_split s;
    if (fmnist_load(&s, tmp_path("odd"), "train", 0)) fail_msg("%s", mapo_last_error());
    assert_int_equal(s.n, 5);
    assert_int_equal(s.h, 3);
    assert_int_equal(s.w, 7);
    assert_int_equal(s.labels[0], 9);
    assert_int_equal(s.labels[4], 1);
    assert_int_equal(s.images[104], (104 * 7 + 3) % 256);
    fmnist_free(&s);
}

typedef struct {
    const char *what;
    uint8_t type;
    int nd;            /* the nd byte written */
    int ndims_written; /* how many dimensions actually follow (for truncated headers) */
    uint32_t dims[5];
    size_t data_len;
    int want_ndim;
    int64_t max_bytes;
    const char *word;
} hostile_case;

/* Broken headers and bodies, each as a plain file and as a gzip file. */
static void test_hostile_idx(void **state) {
    (void)state;
    const uint32_t H = 2147483647u;
    const hostile_case cases[] = {
        {"float32 type", 0x0D, 3, 3, {2, 3, 4}, 96, 3, 0, "0x0D (float32)"},
        {"int32 type", 0x0C, 1, 1, {4}, 16, 1, 0, "0x0C (int32)"},
        {"unknown type", 0x42, 1, 1, {4}, 4, 1, 0, "0x42 (not an IDX type)"},
        {"0 dimensions", 8, 0, 0, {0}, 4, 0, 0, "declares 0 dimensions"},
        {"5 dimensions", 8, 5, 5, {1, 1, 1, 1, 1}, 1, 0, 0, "declares 5 dimensions"},
        {"labels as images", 8, 1, 1, {4}, 4, 3, 0, "has 1 dimension, expected 3"},
        {"images as labels", 8, 3, 3, {1, 2, 2}, 4, 1, 0, "has 3 dimensions, expected 1"},
        {"header cut in dims", 8, 3, 2, {2, 3}, 0, 3, 0,
         "truncated IDX header (the file ends after 12 of 16 header bytes)"},
        {"zero dimension", 8, 3, 3, {2, 0, 3}, 0, 3, 0, "dimension 1 is 0"},
        {"zero count", 8, 1, 1, {0}, 0, 1, 0, "dimension 0 is 0"},
        {"huge dimension 4e9 x 4e9", 8, 3, 3, {4000000000u, 4000000000u, 1}, 8, 3, 0,
         "dimension 0 is 4000000000, a huge value"},
        {"int64 overflow", 8, 3, 3, {H, H, H}, 8, 3, 0, "int64 overflow"},
        {"overflow in 4 dims", 8, 4, 4, {65536, 65536, 65536, 65536}, 8, 0, 0,
         "int64 overflow"},
        {"over max_bytes", 8, 3, 3, {10000, 10000, 10000}, 8, 3, 1000000,
         "declares 1000000000000 bytes of data [10000, 10000, 10000], more than the limit of "
         "1000000"},
        {"one over max_bytes", 8, 3, 3, {2, 3, 4}, 24, 3, 23, "more than the limit of 23"},
        /* no limit: a lying 1e12-byte header must not be trusted with an allocation */
        {"lying header, no limit", 8, 3, 3, {10000, 10000, 10000}, 5, 3, 0,
         "truncated data: the header declares 1000000000000 bytes, the file holds only 5"},
        {"truncated data", 8, 3, 3, {2, 3, 4}, 23, 3, 0,
         "truncated data: the header declares 24 bytes, the file holds only 23"},
        {"no data", 8, 1, 1, {10}, 0, 1, 0, "declares 10 bytes, the file holds only 0"},
        {"one trailing byte", 8, 3, 3, {2, 3, 4}, 25, 3, 0,
         ": 1 trailing byte after the 24 bytes of data the header declares"},
        {"trailing bytes", 8, 1, 1, {4}, 10, 1, 0, ": 6 trailing bytes after the 4 bytes"},
        {"2 MB of trailing bytes", 8, 1, 1, {4}, 2u << 20, 1, 0, "at least 1048576 trailing"},
    };
    char name[64];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const hostile_case *c = &cases[i];
        size_t len;
        uint8_t *b = make_idx(c->type, c->ndims_written, c->dims, NULL, c->data_len, &len);
        b[3] = (uint8_t)c->nd;
        for (int gz = 0; gz < 2; gz++) {
            snprintf(name, sizeof name, "hostile_%zu%s", i, gz ? ".gz" : "");
            const char *p = tmp_path(name);
            if (gz) write_gz(p, b, len);
            else write_bytes(p, b, len);
            idx_u8 a;
            memset(&a, 0x5A, sizeof a);
            int rc = idx_read_u8(&a, p, c->want_ndim, c->max_bytes);
            if (rc != -1) fail_msg("case '%s' (%s) was accepted", c->what, gz ? "gz" : "plain");
            expect_error(rc, p, c->word);
            assert_null(a.data);
            assert_int_equal(a.count, 0);
            remove(p);
        }
        free(b);
    }
}

/* Short files, foreign magic numbers, missing files. */
static void test_bad_files(void **state) {
    (void)state;
    struct {
        const char *what;
        const char *bytes;
        size_t n;
        const char *word;
    } cases[] = {
        {"empty", "", 0, "empty file (no IDX header)"},
        {"3 bytes", "\0\0\x08", 3, "truncated IDX header (the file ends after 3 of 4 magic"},
        {"PNG", "\x89PNG\r\n\x1a\n", 8, "bad magic 0x89504E47, not an IDX file"},
        {"nonzero byte 1", "\0\x01\x08\x01\0\0\0\x01\x07", 9, "bad magic 0x00010801"},
        {"nonzero byte 0", "\x08\0\x08\x01\0\0\0\x01\x07", 9, "bad magic 0x08000801"},
        {"magic only", "\0\0\x08\x03", 4, "(the file ends after 4 of 16 header bytes)"},
        {"text", "hello world\n", 12, "bad magic 0x68656C6C"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int gz = 0; gz < 2; gz++) {
            char name[64];
            snprintf(name, sizeof name, "bad_%zu%s", i, gz ? ".gz" : "");
            const char *p = tmp_path(name);
            if (gz) write_gz(p, cases[i].bytes, cases[i].n);
            else write_bytes(p, cases[i].bytes, cases[i].n);
            idx_u8 a;
            int rc = idx_read_u8(&a, p, 0, 0);
            if (rc != -1) fail_msg("case '%s' was accepted", cases[i].what);
            expect_error(rc, p, cases[i].word);
            assert_null(a.data);
        }
    idx_u8 a;
    const char *missing = tmp_path("no-such-file.gz");
    expect_error(idx_read_u8(&a, missing, 0, 0), missing, "cannot open (No such file");
    expect_error(idx_read_u8(&a, g_dir, 0, 0), g_dir, "not a regular file");
    expect_error(idx_read_u8(&a, FIX "/t10k-images-idx3-ubyte.gz", 5, 0), NULL,
                 "IDX files here have 1..4");
}

/* Damaged gzip containers around a valid IDX file. */
static void test_corrupt_gzip(void **state) {
    (void)state;
    size_t len, zn;
    uint8_t *b = make_idx(8, 3, (uint32_t[]){4, 5, 6}, NULL, 120, &len);
    const char *good = tmp_path("good.gz");
    write_gz(good, b, len);
    free(b);
    idx_u8 a;
    assert_int_equal(idx_read_u8(&a, good, 3, 0), 0);
    idx_free(&a);
    uint8_t *z = read_bytes(good, &zn);
    assert_true(zn > 30);
    assert_int_equal(z[0], 0x1f);
    assert_int_equal(z[1], 0x8b);
    uint8_t *m = malloc(zn);

    /* CRC32 trailer wrong: all data arrives, the stream check fails at its end */
    memcpy(m, z, zn);
    m[zn - 8] ^= 0x01;
    const char *p = tmp_path("crc.gz");
    write_bytes(p, m, zn);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "corrupt or truncated gzip stream (zlib: ");
    expect_error(idx_read_u8(&a, p, 3, 0), p, "incorrect data check");
    assert_null(a.data);
    /* ISIZE trailer wrong */
    memcpy(m, z, zn);
    m[zn - 1] ^= 0x40;
    p = tmp_path("isize.gz");
    write_bytes(p, m, zn);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "incorrect length check");
    /* the stream cut short (no trailer, and part of the deflate data gone) */
    p = tmp_path("cut.gz");
    write_bytes(p, z, zn - 12);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "corrupt or truncated gzip stream");
    /* only the trailer missing */
    p = tmp_path("cut8.gz");
    write_bytes(p, z, zn - 8);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "stream (zlib: unexpected end of file)");
    /* gzip header alone */
    p = tmp_path("hdr.gz");
    write_bytes(p, z, 10);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "corrupt or truncated gzip stream");
    /* an invalid deflate block type right after the 10-byte gzip header (no name field) */
    assert_int_equal(z[3] & 0x08, 0);
    memcpy(m, z, zn);
    m[10] = 0xFF;
    p = tmp_path("btype.gz");
    write_bytes(p, m, zn);
    expect_error(idx_read_u8(&a, p, 3, 0), p, "corrupt or truncated gzip stream");
    free(m);
    free(z);

    /* a byte flipped in the middle of the real head: never accepted, always blamed on gzip */
    z = read_bytes(FIX "/t10k-images-idx3-ubyte.gz", &zn);
    for (int k = 0; k < 8; k++) {
        uint8_t *c = malloc(zn);
        memcpy(c, z, zn);
        c[zn / 2 + (size_t)k * 997] ^= (uint8_t)(1u << k);
        p = tmp_path("flip.gz");
        write_bytes(p, c, zn);
        expect_error(idx_read_u8(&a, p, 3, 0), p, "gzip stream");
        free(c);
    }
    free(z);
}

/* Write a split <dir>/<prefix>-*: images [n,h,w] (pattern) and the given labels. */
static void write_split(const char *dir, const char *prefix, uint32_t n_img, uint32_t h,
                        uint32_t w, uint32_t n_lab, const uint8_t *labels) {
    char p[512];
    size_t len;
    uint8_t *b = make_idx(8, 3, (uint32_t[]){n_img, h, w}, NULL, (size_t)n_img * h * w, &len);
    snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    write_gz(p, b, len);
    free(b);
    b = make_idx(8, 1, (uint32_t[]){n_lab}, labels, n_lab, &len);
    snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    write_gz(p, b, len);
    free(b);
}

static void test_fmnist_hostile(void **state) {
    (void)state;
    mkdir_tmp("fm");
    const char *dir = tmp_path("fm");
    char ip[512], lp[512];
    fmnist_split s;
    const uint8_t lab[8] = {0, 1, 2, 10, 4, 5, 6, 7};

    /* image / label count mismatch, also with max_n (headers are still compared) */
    write_split(dir, "cnt", 5, 28, 28, 4, lab);
    snprintf(ip, sizeof ip, "%s/cnt-images-idx3-ubyte.gz", dir);
    snprintf(lp, sizeof lp, "%s/cnt-labels-idx1-ubyte.gz", dir);
    expect_error(fmnist_load(&s, dir, "cnt", 0), ip, "holds 5 images but");
    expect_error(fmnist_load(&s, dir, "cnt", 0), lp, "holds 4 labels");
    expect_error(fmnist_load(&s, dir, "cnt", 2), lp, "holds 4 labels");
    assert_null(s.images);
    assert_int_equal(s.n, 0);

    /* a label outside 0..9 */
    write_split(dir, "lab", 6, 4, 4, 6, lab);
    snprintf(lp, sizeof lp, "%s/lab-labels-idx1-ubyte.gz", dir);
    expect_error(fmnist_load(&s, dir, "lab", 0), lp, "label 10 at index 3 is not a class 0..9");
    expect_error(fmnist_load(&s, dir, "lab", 4), lp, "label 10 at index 3");
    /* ... but max_n keeps only the items before it */
    assert_int_equal(fmnist_load(&s, dir, "lab", 3), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.labels[2], 2);
    fmnist_free(&s);
    const uint8_t lab255[2] = {3, 255};
    write_split(dir, "l255", 2, 4, 4, 2, lab255);
    expect_error(fmnist_load(&s, dir, "l255", 0), "l255-labels", "label 255 at index 1");

    /* image sides outside 1..1024 (headers only: refused before any data is read) */
    write_split(dir, "wide", 1, 2, 1025, 1, lab);
    snprintf(ip, sizeof ip, "%s/wide-images-idx3-ubyte.gz", dir);
    expect_error(fmnist_load(&s, dir, "wide", 0), ip,
                 "images are 2x1025, expected sides in 1..1024");
    write_split(dir, "tall", 1, 4096, 1, 1, lab);
    expect_error(fmnist_load(&s, dir, "tall", 0), "tall-images", "images are 4096x1");

    /* files swapped: labels where images belong */
    write_split(dir, "swap", 2, 2, 2, 2, lab);
    snprintf(ip, sizeof ip, "%s/swap-images-idx3-ubyte.gz", dir);
    snprintf(lp, sizeof lp, "%s/swap-labels-idx1-ubyte.gz", dir);
    char tp[600];
    snprintf(tp, sizeof tp, "%s.tmp", ip);
    assert_int_equal(rename(ip, tp), 0);
    assert_int_equal(rename(lp, ip), 0);
    assert_int_equal(rename(tp, lp), 0);
    expect_error(fmnist_load(&s, dir, "swap", 0), ip, "has 1 dimension, expected 3");

    /* truncated image data, full and with max_n past the cut (max_n before it reads fine) */
    size_t len;
    uint8_t *b = make_idx(8, 3, (uint32_t[]){4, 3, 3}, NULL, 30, &len);
    snprintf(ip, sizeof ip, "%s/trunc-images-idx3-ubyte.gz", dir);
    write_gz(ip, b, len);
    free(b);
    b = make_idx(8, 1, (uint32_t[]){4}, lab, 4, &len);
    b[8 + 3] = 1;
    snprintf(lp, sizeof lp, "%s/trunc-labels-idx1-ubyte.gz", dir);
    write_gz(lp, b, len);
    free(b);
    expect_error(fmnist_load(&s, dir, "trunc", 0), ip,
                 "the header declares 36 bytes, the file holds only 30");
    expect_error(fmnist_load(&s, dir, "trunc", 4), ip, "holds only 30");
    assert_int_equal(fmnist_load(&s, dir, "trunc", 3), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.images[26], (26 * 7 + 3) % 256);
    fmnist_free(&s);

    /* trailing bytes in the labels file */
    b = make_idx(8, 1, (uint32_t[]){4}, lab, 5, &len);
    b[8 + 3] = 1;
    write_gz(lp, b, len);
    free(b);
    expect_error(fmnist_load(&s, dir, "trunc", 0), lp, "1 trailing byte");

    /* missing files and folders */
    expect_error(fmnist_load(&s, dir, "nothing", 0), "nothing-images-idx3-ubyte.gz",
                 "no such file (nor ");
    snprintf(ip, sizeof ip, "%s/only-images-idx3-ubyte", dir);
    b = make_idx(8, 3, (uint32_t[]){1, 1, 1}, NULL, 1, &len);
    write_bytes(ip, b, len);
    free(b);
    expect_error(fmnist_load(&s, dir, "only", 0), "only-labels-idx1-ubyte.gz", "no such file");
    expect_error(fmnist_load(&s, tmp_path("no-such-dir"), "t10k", 0), "no-such-dir",
                 "no such file");
    assert_null(s.images);
    assert_null(s.labels);
}

/* The full installed splits: sizes, the class balance every Fashion-MNIST split has (1000 per
   class in t10k, 6000 in train), totals from Python, and the committed head as their start. */
static void test_full_splits(void **state) {
    (void)state;
    const char *dir = fmnist_default_dir();
    char p[512];
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", dir);
    if (!mapo_is_file(p)) {
        snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte", dir);
        if (!mapo_is_file(p)) {
            /* make test installs the package (tools/install_deps.sh): its absence is a failure */
            fail_msg("no Fashion-MNIST in %s (apt-get install dataset-fashion-mnist)", dir);
        }
    }
    fmnist_split head;
    assert_int_equal(fmnist_load(&head, FIX, "t10k", 0), 0);
    json_t *full = json_object_get(expected(), "full");
    const struct {
        const char *prefix;
        int64_t n, per_class;
    } splits[] = {{"t10k", 10000, 1000}, {"train", 60000, 6000}};
    for (int k = 0; k < 2; k++) {
        fmnist_split s;
        double t0 = mapo_now();
        if (fmnist_load(&s, dir, splits[k].prefix, 0)) fail_msg("%s", mapo_last_error());
        print_message("  %s: %lld images in %.2f s\n", splits[k].prefix, (long long)s.n,
                      mapo_now() - t0);
        assert_int_equal(s.n, splits[k].n);
        assert_int_equal(s.h, 28);
        assert_int_equal(s.w, 28);
        int64_t hist[10] = {0}, lsum = 0, isum = 0;
        for (int64_t i = 0; i < s.n; i++) {
            assert_true(s.labels[i] < 10);
            hist[s.labels[i]]++;
            lsum += s.labels[i];
        }
        for (int64_t i = 0; i < s.n * 784; i++) isum += s.images[i];
        for (int c = 0; c < 10; c++) assert_int_equal(hist[c], splits[k].per_class);
        json_t *e = json_object_get(full, splits[k].prefix);
        assert_int_equal(s.n, jint(e, "n"));
        assert_int_equal(lsum, jint(e, "label_sum"));
        assert_int_equal(isum, jint(e, "image_byte_sum"));
        if (k == 0) {
            assert_memory_equal(s.images, head.images, 64 * 784);
            assert_memory_equal(s.labels, head.labels, 64);
        }
        /* max_n on the real file: the same prefix */
        fmnist_split t;
        assert_int_equal(fmnist_load(&t, dir, splits[k].prefix, 100), 0);
        assert_int_equal(t.n, 100);
        assert_memory_equal(t.images, s.images, 100 * 784);
        assert_memory_equal(t.labels, s.labels, 100);
        fmnist_free(&t);
        fmnist_free(&s);
    }
    fmnist_free(&head);
}

static float px(uint8_t v) {
    return (float)((double)v / 127.5 - 1.0);
}

static void test_to_pixels(void **state) {
    (void)state;
    /* every byte value, 28x28 -> 32: 2 pixels of -1 on each side */
    uint8_t img[2 * 784];
    for (int i = 0; i < 2 * 784; i++) img[i] = (uint8_t)(i * 31 % 256);
    float *out = malloc(2 * 32 * 32 * sizeof(float));
    assert_int_equal(fmnist_to_pixels(out, img, 2, 28, 28, 32), 0);
    for (int n = 0; n < 2; n++)
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                float v = out[n * 1024 + y * 32 + x];
                if (y < 2 || y >= 30 || x < 2 || x >= 30) {
                    if (v != -1.0f) fail_msg("pad (%d, %d, %d) = %g", n, y, x, v);
                } else {
                    float e = px(img[n * 784 + (y - 2) * 28 + (x - 2)]);
                    if (fabsf(v - e) > 1e-6f) fail_msg("(%d,%d,%d) = %.9g, expected %.9g", n, y, x,
                                                        v, e);
                }
            }
    /* known values */
    const uint8_t k[4] = {0, 255, 51, 204};
    float ko[4];
    assert_int_equal(fmnist_to_pixels(ko, k, 4, 1, 1, 1), 0);
    assert_true(ko[0] == -1.0f);
    assert_true(ko[1] == 1.0f);
    assert_true(fabsf(ko[2] - -0.6f) < 1e-6f);
    assert_true(fabsf(ko[3] - 0.6f) < 1e-6f);
    /* no padding at 28 */
    float *o28 = malloc(784 * sizeof(float));
    assert_int_equal(fmnist_to_pixels(o28, img, 1, 28, 28, 28), 0);
    for (int i = 0; i < 784; i++) assert_true(fabsf(o28[i] - px(img[i])) <= 1e-6f);
    /* odd margins put the extra row / column at the bottom / right:
       3x2 into 6x6 -> top 1, bottom 2, left 2, right 2; 2x3 into 6x6 -> top 2, left 1, right 2 */
    const uint8_t s[6] = {0, 255, 255, 0, 51, 204};
    float o6[36];
    for (int t = 0; t < 2; t++) {
        const int h = t ? 2 : 3, w = t ? 3 : 2, top = t ? 2 : 1, left = t ? 1 : 2;
        assert_int_equal(fmnist_to_pixels(o6, s, 1, h, w, 6), 0);
        for (int y = 0; y < 6; y++)
            for (int x = 0; x < 6; x++) {
                int in = y >= top && y < top + h && x >= left && x < left + w;
                float e = in ? px(s[(y - top) * w + (x - left)]) : -1.0f;
                if (fabsf(o6[y * 6 + x] - e) > 1e-6f)
                    fail_msg("%dx%d into 6: (%d, %d) = %g, expected %g", h, w, y, x,
                             o6[y * 6 + x], e);
            }
    }
    /* the real head at 32: image 0's pixels from expected.json land 2 rows / cols in */
    fmnist_split h;
    assert_int_equal(fmnist_load(&h, FIX, "t10k", 4), 0);
    float *oh = malloc(4 * 1024 * sizeof(float));
    assert_int_equal(fmnist_to_pixels(oh, h.images, 4, 28, 28, 32), 0);
    json_t *pxs = json_object_get(expected(), "pixels");
    int checked = 0;
    for (size_t j = 0; j < json_array_size(pxs); j++) {
        json_t *p = json_array_get(pxs, j);
        int64_t i = json_integer_value(json_array_get(p, 0));
        if (i >= 4) continue;
        int64_t r = json_integer_value(json_array_get(p, 1));
        int64_t c = json_integer_value(json_array_get(p, 2));
        uint8_t v = (uint8_t)json_integer_value(json_array_get(p, 3));
        assert_true(fabsf(oh[i * 1024 + (r + 2) * 32 + (c + 2)] - px(v)) <= 1e-6f);
        checked++;
    }
    assert_true(checked >= 4);
    free(oh);
    fmnist_free(&h);
    /* too small: an error, out untouched */
    for (int i = 0; i < 784; i++) o28[i] = 7.0f;
    expect_error(fmnist_to_pixels(o28, img, 1, 28, 28, 27), NULL,
                 "28x28 images do not fit in 27x27");
    expect_error(fmnist_to_pixels(o28, img, 1, 20, 28, 24), NULL, "20x28 images do not fit");
    expect_error(fmnist_to_pixels(o28, img, 1, 0, 28, 32), NULL, "bad arguments");
    expect_error(fmnist_to_pixels(o28, img, -1, 28, 28, 32), NULL, "bad arguments");
    for (int i = 0; i < 784; i++) assert_true(o28[i] == 7.0f);
    assert_int_equal(fmnist_to_pixels(NULL, NULL, 0, 28, 28, 32), 0);
    free(o28);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes_and_default_dir),
        cmocka_unit_test(test_head_idx),
        cmocka_unit_test(test_head_fmnist),
        cmocka_unit_test(test_plain_files),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_hostile_idx),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_corrupt_gzip),
        cmocka_unit_test(test_fmnist_hostile),
        cmocka_unit_test(test_full_splits),
        cmocka_unit_test(test_to_pixels),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    if (g_expected) json_decref(g_expected);
    return rc;
}
