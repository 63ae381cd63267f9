/* test_parquet.c -- the C parquet reader against files written by pyarrow, Hugging Face
 * datasets and a small hand-made writer (tools/make_parquet_fixtures.py), plus hostile
 * files. Runs from the repository root.
 *
 * Fixtures (tests/fixtures/parquet/): the same 12-row Pick-a-Pic style table written with
 * every codec (none/snappy/gzip/zstd) x dictionary on/off x data page v1/v2, in row groups
 * of 5 with tiny pages (several pages per chunk, dictionary fallback, page index, CRCs),
 * through datasets, with LZ4 (must be refused); c_ok.parquet exercises what pyarrow does
 * not write (RLE runs, v2 pages with is_compressed=false, FIXED_LEN_BYTE_ARRAY, unknown
 * Thrift fields of every type); h_*.parquet each carry one defect. expected.json holds
 * every value of every column.
 *
 * Tolerance: none. Parquet stores values losslessly and the reader converts them exactly as
 * Python does (float32 -> double, int64 -> nearest double), so every value must be equal
 * bit for bit (doubles compared with ==, byte strings with memcmp); the relative L2 error
 * of every numeric column is printed and must be 0.
 *
 * Hostile input: each h_ file must fail with one message naming the file, the problem and,
 * for column data, the row group and the column; truncations at many offsets, cut-out
 * blocks, corrupted footer lengths and a few hundred deterministic byte mutations must
 * never crash (either the file reads or a message is set). */
#include "mapo/common.h"
#include "mapo/parquet.h"
#include "testutil.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR "tests/fixtures/parquet"

static json_t *g_exp;     /* expected.json */
static char g_tmp[64];    /* per-run temporary directory */
static double g_worst;    /* worst relative error of a numeric column */
static long g_values;     /* values compared */

static const char *fx(const char *name) {
    static char buf[4][512];
    static int slot;
    slot = (slot + 1) % 4;
    snprintf(buf[slot], sizeof buf[slot], "%s/%s", DIR, name);
    return buf[slot];
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) fail_msg("cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (n) assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* ------------------------------------------------------------ reading valid files */

/* Reads column `name` of every row group of pf and compares every value with expected.json. */
static void check_column(parquet_file *pf, const char *file, int col, const char *name) {
    json_t *cols = json_object_get(g_exp, "columns");
    json_t *ce = json_object_get(cols, name);
    if (!ce) fail_msg("%s: column '%s' not in expected.json", file, name);
    const char *kind = json_string_value(json_object_get(ce, "kind"));
    if (!strcmp(kind, "nested")) {
        assert_int_equal(parquet_column_kind(pf, col), 0);
        parquet_column c;
        mapo_error("%s", "");
        if (parquet_read_column(pf, 0, col, &c) == 0)
            fail_msg("%s: nested column '%s' was read", file, name);
        const char *m = mapo_last_error();
        if (!strstr(m, "nested") || !strstr(m, name) || !strstr(m, "row group 0"))
            fail_msg("%s: unexpected message for nested column: %s", file, m);
        return;
    }
    int want_kind = !strcmp(kind, "bytes") ? PQ_BYTES : PQ_DOUBLE;
    assert_int_equal(parquet_column_kind(pf, col), want_kind);
    json_t *vals = json_object_get(ce, "values");
    int64_t n = (int64_t)json_array_size(vals), row = 0;
    double *got = calloc((size_t)n + 1, sizeof(double)), *ref = calloc((size_t)n + 1, sizeof(double));
    for (int g = 0; g < parquet_num_row_groups(pf); g++) {
        parquet_column c;
        if (parquet_read_column(pf, g, col, &c))
            fail_msg("%s: column '%s' row group %d: %s", file, name, g, mapo_last_error());
        assert_int_equal(c.n, parquet_row_group_num_rows(pf, g));
        assert_int_equal(c.kind, want_kind);
        for (int64_t i = 0; i < c.n; i++, row++) {
            if (row >= n) fail_msg("%s: column '%s' has more rows than expected", file, name);
            json_t *v = json_array_get(vals, (size_t)row);
            if (json_is_null(v)) {
                if (c.valid[i]) fail_msg("%s: '%s' row %lld should be null", file, name, (long long)row);
                if (want_kind == PQ_BYTES && (c.ptr[i] || c.len[i]))
                    fail_msg("%s: '%s' row %lld null with data", file, name, (long long)row);
                continue;
            }
            if (!c.valid[i]) fail_msg("%s: '%s' row %lld is null", file, name, (long long)row);
            g_values++;
            if (want_kind == PQ_DOUBLE) {
                double e = json_real_value(v);
                got[row] = c.num[i];
                ref[row] = e;
                if (!(c.num[i] == e))
                    fail_msg("%s: '%s' row %lld: %.17g, expected %.17g", file, name,
                             (long long)row, c.num[i], e);
            } else {
                const char *hx = json_string_value(v);
                size_t hl = strlen(hx);
                if ((int64_t)hl != 2 * c.len[i])
                    fail_msg("%s: '%s' row %lld: %lld bytes, expected %zu", file, name,
                             (long long)row, (long long)c.len[i], hl / 2);
                if (!c.ptr[i]) fail_msg("%s: '%s' row %lld: NULL ptr", file, name, (long long)row);
                for (size_t k = 0; k < hl / 2; k++) {
                    int b = hexval(hx[2 * k]) * 16 + hexval(hx[2 * k + 1]);
                    if (c.ptr[i][k] != b)
                        fail_msg("%s: '%s' row %lld byte %zu: %d, expected %d", file, name,
                                 (long long)row, k, c.ptr[i][k], b);
                }
            }
        }
        parquet_column_free(&c);
        parquet_column_free(&c); /* safe on a zeroed column */
    }
    if (row != n) fail_msg("%s: column '%s' has %lld rows, expected %lld", file, name,
                           (long long)row, (long long)n);
    if (want_kind == PQ_DOUBLE) {
        double e = rel_err_f64(got, ref, n);
        if (e > g_worst) g_worst = e;
        if (!(e == 0)) fail_msg("%s: '%s' relative error %.3e", file, name, e);
    }
    free(got);
    free(ref);
}

static void check_file(json_t *fe) {
    const char *file = json_string_value(json_object_get(fe, "file"));
    const char *err = json_string_value(json_object_get(fe, "error"));
    parquet_file *pf;
    if (parquet_open(&pf, fx(file))) fail_msg("%s", mapo_last_error());
    assert_int_equal(parquet_num_rows(pf), json_integer_value(json_object_get(fe, "num_rows")));
    json_t *rgs = json_object_get(fe, "row_groups");
    assert_int_equal(parquet_num_row_groups(pf), (int)json_array_size(rgs));
    for (int g = 0; g < parquet_num_row_groups(pf); g++)
        assert_int_equal(parquet_row_group_num_rows(pf, g),
                         json_integer_value(json_array_get(rgs, (size_t)g)));
    json_t *cols = json_object_get(fe, "columns");
    assert_int_equal(parquet_num_columns(pf), (int)json_array_size(cols));
    for (int c = 0; c < parquet_num_columns(pf); c++) {
        const char *name = json_string_value(json_array_get(cols, (size_t)c));
        assert_string_equal(parquet_column_name(pf, c), name);
        assert_int_equal(parquet_column_index(pf, name), c);
        if (err) { /* every read must be refused, naming the problem, file, column */
            parquet_column col;
            mapo_error("%s", "");
            assert_int_equal(parquet_read_column(pf, 0, c, &col), -1);
            const char *m = mapo_last_error();
            if (!strstr(m, err) || !strstr(m, name) || !strstr(m, file))
                fail_msg("%s: message lacks '%s', the column or the file: %s", file, err, m);
            printf("  %s refused: %s\n", file, m);
        } else {
            check_column(pf, file, c, name);
        }
    }
    parquet_close(pf);
}

static void test_valid_files(void **state) {
    (void)state;
    json_t *files = json_object_get(g_exp, "files");
    assert_true(json_array_size(files) >= 22);
    for (size_t i = 0; i < json_array_size(files); i++) check_file(json_array_get(files, i));
    printf("  %zu files, %ld values equal; worst relative error of a numeric column %.1e "
           "(bound: exact)\n", json_array_size(files), g_values, g_worst);
}

static void test_api_edges(void **state) {
    (void)state;
    parquet_file *pf;
    assert_int_equal(parquet_open(&pf, fx("no_such_file.parquet")), -1);
    assert_non_null(strstr(mapo_last_error(), "no_such_file.parquet"));
    assert_null(pf);
    assert_int_equal(parquet_open(&pf, DIR), -1);
    assert_non_null(strstr(mapo_last_error(), "regular file"));

    assert_int_equal(parquet_open(&pf, fx("t_rg5_pages_zstd_dict_v2.parquet")), 0);
    assert_int_equal(parquet_column_index(pf, "nope"), -1);
    assert_int_equal(parquet_column_index(pf, "tags"), -1); /* a group, not a leaf */
    assert_null(parquet_column_name(pf, -1));
    assert_null(parquet_column_name(pf, 99));
    assert_int_equal(parquet_column_kind(pf, 99), 0);
    assert_int_equal(parquet_row_group_num_rows(pf, 3), -1);
    parquet_column c;
    assert_int_equal(parquet_read_column(pf, 3, 0, &c), -1);
    assert_non_null(strstr(mapo_last_error(), "row group 3"));
    assert_int_equal(parquet_read_column(pf, 0, 15, &c), -1);
    assert_int_equal(parquet_read_column(pf, -1, 0, &c), -1);
    /* a column stays valid after the file is closed */
    int jc = parquet_column_index(pf, "jpg_1");
    assert_int_equal(parquet_read_column(pf, 1, jc, &c), 0);
    parquet_close(pf);
    json_t *v = json_array_get(json_object_get(json_object_get(json_object_get(g_exp, "columns"),
                                                               "jpg_1"), "values"), 5);
    const char *hx = json_string_value(v);
    assert_int_equal(c.len[0] * 2, (int64_t)strlen(hx));
    for (int64_t k = 0; k < c.len[0]; k++)
        assert_int_equal(c.ptr[0][k], hexval(hx[2 * k]) * 16 + hexval(hx[2 * k + 1]));
    parquet_column_free(&c);
}

/* ------------------------------------------------------------ hostile files */

static void test_crafted_hostile(void **state) {
    (void)state;
    json_t *hs = json_object_get(g_exp, "hostile");
    assert_true(json_array_size(hs) >= 20);
    for (size_t i = 0; i < json_array_size(hs); i++) {
        json_t *h = json_array_get(hs, i);
        const char *file = json_string_value(json_object_get(h, "file"));
        const char *stage = json_string_value(json_object_get(h, "stage"));
        const char *col = json_string_value(json_object_get(h, "column"));
        const char *want = json_string_value(json_object_get(h, "error"));
        parquet_file *pf;
        mapo_error("%s", "");
        int rc = parquet_open(&pf, fx(file));
        if (!strcmp(stage, "open")) {
            if (rc == 0) fail_msg("%s: opened but should fail with '%s'", file, want);
        } else {
            if (rc) fail_msg("%s: %s", file, mapo_last_error());
            int ci = parquet_column_index(pf, col);
            assert_true(ci >= 0);
            parquet_column c;
            rc = parquet_read_column(pf, 0, ci, &c);
            parquet_close(pf);
            if (rc == 0) fail_msg("%s: column '%s' read but should fail with '%s'", file, col, want);
            if (!strstr(mapo_last_error(), col) || !strstr(mapo_last_error(), "row group 0"))
                fail_msg("%s: message does not name the column and row group: %s", file,
                         mapo_last_error());
        }
        const char *m = mapo_last_error();
        if (!strstr(m, want) || !strstr(m, file))
            fail_msg("%s: expected a message with '%s' and the file name, got: %s", file, want, m);
        printf("  %-24s %s\n", file, strchr(m, ':') ? strchr(m, ':') + 2 : m);
    }
}

/* Open path and read every column of every row group; 0 when everything read, 1 when an
 * error was reported (with a message). Never both silently failing. */
static int try_file(const char *path) {
    parquet_file *pf;
    mapo_error("%s", "");
    if (parquet_open(&pf, path)) {
        if (!mapo_last_error()[0]) fail_msg("open failed without a message");
        return 1;
    }
    int bad = 0;
    for (int g = 0; g < parquet_num_row_groups(pf); g++)
        for (int c = 0; c < parquet_num_columns(pf); c++) {
            parquet_column col;
            mapo_error("%s", "");
            if (parquet_read_column(pf, g, c, &col)) {
                if (!mapo_last_error()[0]) fail_msg("read failed without a message");
                if (parquet_column_kind(pf, c)) bad = 1; /* nested columns always fail */
                continue;
            }
            /* touch every value: pointers must stay inside readable memory */
            unsigned sum = 0;
            for (int64_t i = 0; i < col.n; i++) {
                sum += col.valid[i];
                if (col.kind == PQ_BYTES && col.valid[i])
                    for (int64_t k = 0; k < col.len[i]; k++) sum += col.ptr[i][k];
            }
            (void)sum;
            parquet_column_free(&col);
        }
    parquet_close(pf);
    return bad;
}

static void test_truncations(void **state) {
    (void)state;
    const char *bases[] = {"t_snappy_dict_v1.parquet", "c_ok.parquet"};
    char path[128];
    snprintf(path, sizeof path, "%s/trunc.parquet", g_tmp);
    int fails = 0, total = 0;
    for (int b = 0; b < 2; b++) {
        size_t n;
        uint8_t *d = slurp(fx(bases[b]), &n);
        for (size_t cut = 0; cut < n; cut += (cut < 64 || cut + 64 > n) ? 1 : 13) {
            write_bytes(path, d, cut);
            fails += try_file(path);
            total++;
        }
        /* cut a block out of the data, keep the footer: offsets now point wrongly */
        uint32_t flen;
        memcpy(&flen, d + n - 8, 4);
        size_t meta = n - 8 - flen;
        for (size_t at = 4; at < meta; at += 97)
            for (size_t k = 1; k < 200 && at + k <= meta; k *= 3) {
                uint8_t *e = malloc(n);
                memcpy(e, d, at);
                memcpy(e + at, d + at + k, n - at - k);
                write_bytes(path, e, n - k);
                free(e);
                fails += try_file(path);
                total++;
            }
        free(d);
    }
    printf("  %d truncated/cut files, %d refused, the rest read\n", total, fails);
    assert_true(fails > total / 2);
}

static void test_footer_length(void **state) {
    (void)state;
    size_t n;
    uint8_t *d = slurp(fx("t_zstd_dict_v2.parquet"), &n);
    uint32_t flen;
    memcpy(&flen, d + n - 8, 4);
    char path[128];
    snprintf(path, sizeof path, "%s/footer.parquet", g_tmp);
    uint32_t bad[] = {0, (uint32_t)n - 11, (uint32_t)n, 0xffffffffu, 0x80000000u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(d + n - 8, &bad[i], 4);
        write_bytes(path, d, n);
        parquet_file *pf;
        assert_int_equal(parquet_open(&pf, path), -1);
        assert_non_null(strstr(mapo_last_error(), "footer length"));
    }
    /* lengths near the truth: must not crash; whatever opens must read or fail cleanly */
    for (int delta = -9; delta <= 9; delta++) {
        uint32_t l = flen + (uint32_t)delta;
        memcpy(d + n - 8, &l, 4);
        write_bytes(path, d, n);
        int r = try_file(path);
        if (delta == 0) assert_int_equal(r, 0);
    }
    /* bad magic at either end, encrypted footer */
    memcpy(d + n - 8, &flen, 4);
    d[0] = 'X';
    write_bytes(path, d, n);
    parquet_file *pf;
    assert_int_equal(parquet_open(&pf, path), -1);
    assert_non_null(strstr(mapo_last_error(), "PAR1"));
    d[0] = 'P';
    memcpy(d + n - 4, "PARE", 4);
    write_bytes(path, d, n);
    assert_int_equal(parquet_open(&pf, path), -1);
    assert_non_null(strstr(mapo_last_error(), "encrypted"));
    free(d);
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t xorshift(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* deterministic byte mutations: anywhere, and concentrated on the footer and on page
 * headers (the first bytes of every column chunk region are headers) */
static void test_fuzz(void **state) {
    (void)state;
    const char *bases[] = {"t_none_dict_v1.parquet", "t_snappy_plain_v2.parquet",
                           "t_gzip_dict_v2.parquet", "t_rg5_pages_zstd_dict_v2.parquet",
                           "t_rg5_pages_snappy_dict_v1.parquet", "c_ok.parquet"};
    const int per_base = 120;
    char path[128];
    snprintf(path, sizeof path, "%s/fuzz.parquet", g_tmp);
    int fails = 0, total = 0;
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++) {
        size_t n;
        uint8_t *d = slurp(fx(bases[b]), &n);
        uint32_t flen;
        memcpy(&flen, d + n - 8, 4);
        size_t meta = n - 8 - flen;
        uint8_t *e = malloc(n);
        for (int m = 0; m < per_base; m++) {
            memcpy(e, d, n);
            int flips = 1 + (int)(xorshift() % 3);
            for (int f = 0; f < flips; f++) {
                uint64_t r = xorshift();
                size_t pos;
                switch (r % 3) {
                case 0: pos = (size_t)(xorshift() % n); break;
                case 1: pos = meta + (size_t)(xorshift() % flen); break;
                default: pos = 4 + (size_t)(xorshift() % 48); break; /* first page header */
                }
                static const uint8_t special[] = {0x00, 0xff, 0x7f, 0x80, 0x15, 0x1c, 0x19};
                e[pos] = (r >> 8) % 2 ? (uint8_t)(e[pos] ^ (1u << ((r >> 16) % 8)))
                                      : special[(r >> 24) % sizeof special];
            }
            write_bytes(path, e, n);
            fails += try_file(path);
            total++;
        }
        free(e);
        free(d);
    }
    printf("  %d mutated files: %d refused with a message, %d read\n", total, fails,
           total - fails);
}

/* ------------------------------------------------------------ hostile sizes (built here) */

/* A minimal parquet file written byte by byte: one required BYTE_ARRAY column "x", one row
 * group of `rows` rows, one v1 data page whose header declares `usize` uncompressed bytes and
 * whose body is `body`. The header lies; the file stays a few dozen bytes. */
typedef struct {
    uint8_t b[512];
    size_t n;
} wbuf;
static void wb_put(wbuf *w, const void *p, size_t n) {
    assert_true(w->n + n <= sizeof w->b);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void wb_byte(wbuf *w, uint8_t c) { wb_put(w, &c, 1); }
static void wb_varint(wbuf *w, uint64_t v) {
    while (v >= 0x80) {
        wb_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    wb_byte(w, (uint8_t)v);
}
static void wb_zz(wbuf *w, int64_t v) { wb_varint(w, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); }
/* Thrift compact: field header (delta form), then an integer / a string */
enum { W_I32 = 5, W_I64 = 6, W_BIN = 8, W_LIST = 9, W_STRUCT = 12 };
static void wb_field(wbuf *w, int16_t *last, int16_t id, int type) {
    assert_true(id > *last && id - *last <= 15);
    wb_byte(w, (uint8_t)((id - *last) << 4 | type));
    *last = id;
}
static void wb_int(wbuf *w, int16_t *last, int16_t id, int type, int64_t v) {
    wb_field(w, last, id, type);
    wb_zz(w, v);
}
static void wb_str(wbuf *w, int16_t *last, int16_t id, const char *s) {
    wb_field(w, last, id, W_BIN);
    wb_varint(w, strlen(s));
    wb_put(w, s, strlen(s));
}

static void write_lying_parquet(const char *path, int codec, int64_t rows, int32_t usize,
                                const uint8_t *body, size_t blen) {
    wbuf pg = {0}, m = {0};
    int16_t l = 0, d = 0;
    wb_int(&pg, &l, 1, W_I32, 0); /* DATA_PAGE */
    wb_int(&pg, &l, 2, W_I32, usize);
    wb_int(&pg, &l, 3, W_I32, (int64_t)blen);
    wb_field(&pg, &l, 5, W_STRUCT);
    wb_int(&pg, &d, 1, W_I32, rows > INT32_MAX ? INT32_MAX : rows);
    wb_int(&pg, &d, 2, W_I32, 0); /* PLAIN */
    wb_int(&pg, &d, 3, W_I32, 3); /* RLE */
    wb_int(&pg, &d, 4, W_I32, 3);
    wb_byte(&pg, 0);
    wb_byte(&pg, 0);
    wb_put(&pg, body, blen);
    const int64_t chunk = (int64_t)pg.n;
    l = 0;
    wb_int(&m, &l, 1, W_I32, 1);
    wb_field(&m, &l, 2, W_LIST); /* schema: root + "x" */
    wb_byte(&m, 2 << 4 | W_STRUCT);
    int16_t s = 0;
    wb_str(&m, &s, 4, "schema");
    wb_int(&m, &s, 5, W_I32, 1);
    wb_byte(&m, 0);
    s = 0;
    wb_int(&m, &s, 1, W_I32, 6); /* BYTE_ARRAY */
    wb_int(&m, &s, 3, W_I32, 0); /* REQUIRED */
    wb_str(&m, &s, 4, "x");
    wb_byte(&m, 0);
    wb_int(&m, &l, 3, W_I64, rows);
    wb_field(&m, &l, 4, W_LIST); /* one row group */
    wb_byte(&m, 1 << 4 | W_STRUCT);
    int16_t g = 0, c = 0, k = 0;
    wb_field(&m, &g, 1, W_LIST); /* one column chunk */
    wb_byte(&m, 1 << 4 | W_STRUCT);
    wb_int(&m, &c, 2, W_I64, 4);
    wb_field(&m, &c, 3, W_STRUCT);
    wb_int(&m, &k, 1, W_I32, 6);
    wb_field(&m, &k, 2, W_LIST);
    wb_byte(&m, 1 << 4 | W_I32);
    wb_zz(&m, 0);
    wb_field(&m, &k, 3, W_LIST);
    wb_byte(&m, 1 << 4 | W_BIN);
    wb_varint(&m, 1);
    wb_put(&m, "x", 1);
    wb_int(&m, &k, 4, W_I32, codec);
    wb_int(&m, &k, 5, W_I64, rows);
    wb_int(&m, &k, 6, W_I64, chunk);
    wb_int(&m, &k, 7, W_I64, chunk);
    wb_int(&m, &k, 9, W_I64, 4);
    wb_byte(&m, 0); /* ColumnMetaData */
    wb_byte(&m, 0); /* ColumnChunk */
    wb_int(&m, &g, 2, W_I64, chunk);
    wb_int(&m, &g, 3, W_I64, rows);
    wb_byte(&m, 0); /* RowGroup */
    wb_byte(&m, 0); /* FileMetaData */
    wbuf f = {0};
    wb_put(&f, "PAR1", 4);
    wb_put(&f, pg.b, pg.n);
    wb_put(&f, m.b, m.n);
    uint8_t len[4] = {(uint8_t)m.n, (uint8_t)(m.n >> 8), 0, 0};
    wb_put(&f, len, 4);
    wb_put(&f, "PAR1", 4);
    write_bytes(path, f.b, f.n);
}

/* opens, reads column 0 of row group 0: must fail with every needle in the message */
static void expect_size_refused(const char *path, const char *need1, const char *need2) {
    parquet_file *pf;
    if (parquet_open(&pf, path)) fail_msg("%s: %s", path, mapo_last_error());
    parquet_column col;
    mapo_error("%s", "");
    int rc = parquet_read_column(pf, 0, 0, &col);
    parquet_close(pf);
    if (rc == 0) fail_msg("%s: read a page that lies about its size", path);
    const char *e = mapo_last_error();
    if (!strstr(e, path) || !strstr(e, need1) || (need2 && !strstr(e, need2)))
        fail_msg("%s: expected '%s' / '%s' in: %s", path, need1, need2 ? need2 : "", e);
    printf("  %s\n", strstr(e, "page at") ? strstr(e, "page at") : e);
}

/* Headers declaring gigabytes in a few bytes: each refused before the page buffer is
 * allocated, with the declared size in the message (docs/RELIABILITY.md "Hostile sizes").
 * Without the checks the reader would allocate what the header says and fail later (or
 * never: a 2^26-row group is 1.1 GB of output arrays). */
static void test_hostile_sizes(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/hostile_size.parquet", g_tmp);
    uint8_t body[16];
    memset(body, 0x11, sizeof body);
    /* SNAPPY: the stream's own length varint says 100 MB, from 16 bytes */
    wbuf sn = {0};
    wb_varint(&sn, 100000000);
    memcpy(body, sn.b, sn.n);
    write_lying_parquet(path, 1, 1, 100000000, body, sizeof body);
    expect_size_refused(path, "declares 100000000 bytes", "snappy expands at most 22:1");
    /* ZSTD: a valid frame without a content size (one RLE block of 100 bytes), page header
       says 200 MB */
    static const uint8_t zf[10] = {0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x00, 0x23, 0x03, 0x00, 'A'};
    write_lying_parquet(path, 6, 1, 200000000, zf, sizeof zf);
    expect_size_refused(path, "cannot decompress to 200000000 bytes", "65536:1");
    /* any codec: over the 1 GiB a page may declare (GZIP's own ratio check would come later) */
    write_lying_parquet(path, 2, 1, 1610612736, body, sizeof body);
    expect_size_refused(path, "declares 1610612736 bytes uncompressed", "1024 MiB");
    /* a row group of 2^27 rows in a 100-byte file */
    write_lying_parquet(path, 0, (int64_t)1 << 27, 16, body, sizeof body);
    expect_size_refused(path, "134217728 rows in one row group", NULL);
    unlink(path);
}

static int setup(void **state) {
    (void)state;
    size_t n;
    uint8_t *t = slurp(fx("expected.json"), &n);
    json_error_t je;
    g_exp = json_loadb((const char *)t, n, 0, &je);
    free(t);
    if (!g_exp) {
        fprintf(stderr, "expected.json: %s\n", je.text);
        return -1;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mapo_parquet_XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    json_decref(g_exp);
    const char *names[] = {"trunc.parquet", "footer.parquet", "fuzz.parquet"};
    for (int i = 0; i < 3; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s/%s", g_tmp, names[i]);
        unlink(p);
    }
    rmdir(g_tmp);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_files),    cmocka_unit_test(test_api_edges),
        cmocka_unit_test(test_crafted_hostile), cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_footer_length),  cmocka_unit_test(test_fuzz),
        cmocka_unit_test(test_hostile_sizes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
