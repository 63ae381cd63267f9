/* test_dataset.c -- preference datasets (JSONL manifest, Pick-a-Pic parquet) against the
 * official script's preprocessing run by torchvision / PIL on the same files
 * (fixtures: tools/make_dataset_fixtures.py; expectations at resolution 16, center crop,
 * no flip, in expect_dataset.safetensors).
 *
 * Tolerance: 2e-6 relative L2 per tensor, as for the preprocessing parity in test_image.c
 * (exact integer decoding and PIL resizing, then float32 antialiased bilinear resizing whose
 * only difference to PyTorch is FMA contraction, ~1e-7). Original sizes and crop offsets,
 * captions, tie removal, chosen/rejected order, indices and error rows: exact. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/image.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/dataset"
#define RES 16
#define TOL 2e-6

static st_file g_exp;
static double g_worst = 0;

static int setup(void **state) {
    (void)state;
    if (st_open(&g_exp, FIX "/expect_dataset.safetensors")) {
        fprintf(stderr, "%s\n", mapo_last_error());
        return -1;
    }
    mapo_log_level = 0; /* the skip warnings are expected */
    return 0;
}
static int teardown(void **state) {
    (void)state;
    st_close(&g_exp);
    printf("  dataset: worst relative error %.2e (bound %.0e)\n", g_worst, TOL);
    return 0;
}

/* compare one pair with the fixture's <prefix>.chosen/.rejected/.orig_hw/.crop_yx */
static void expect_pair(const char *prefix, const float *c, const float *r, const int ohw[2],
                        const int cyx[2]) {
    char key[256];
    const int64_t shape[3] = {3, RES, RES};
    float ref[3 * RES * RES];
    const float *got[2] = {c, r};
    const char *parts[2] = {"chosen", "rejected"};
    for (int k = 0; k < 2; k++) {
        snprintf(key, sizeof key, "%s.%s", prefix, parts[k]);
        if (st_read_f32_shape(&g_exp, key, ref, 3, shape)) fail_msg("%s", mapo_last_error());
        const double e = rel_err_f32(got[k], ref, 3 * RES * RES);
        if (e > g_worst) g_worst = e;
        if (!(e <= TOL)) fail_msg("%s: relative error %.3e > %.0e", key, e, TOL);
    }
    const char *ints[2] = {"orig_hw", "crop_yx"};
    const int *vals[2] = {ohw, cyx};
    for (int k = 0; k < 2; k++) {
        snprintf(key, sizeof key, "%s.%s", prefix, ints[k]);
        const st_tensor *t = st_find(&g_exp, key);
        if (!t) fail_msg("fixture lacks %s", key);
        const int32_t *v = t->data;
        if (v[0] != vals[k][0] || v[1] != vals[k][1])
            fail_msg("%s: (%d, %d), script (%d, %d)", key, vals[k][0], vals[k][1], v[0], v[1]);
    }
}

static json_t *meta_json(const char *key) {
    const char *s = st_meta(&g_exp, key);
    if (!s) fail_msg("fixture metadata lacks %s", key);
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    if (!j) fail_msg("metadata %s: %s", key, je.text);
    return j;
}

static const prep_cfg CFG = {RES, 0, 1}; /* center crop, no flip: what the fixture used */

/* ---------------------------------------------------------------- manifest */

static void test_manifest(void **state) {
    (void)state;
    pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 0, 0, 0};
    pref_dataset *d;
    if (pref_dataset_open(&d, FIX "/manifest", &o)) fail_msg("%s", mapo_last_error());
    assert_string_equal(pref_dataset_kind(d), "manifest");
    /* lines: 1 good, 2 corrupt chosen, 3 blank, 4 good, 5 missing rejected, 6 good */
    assert_int_equal(pref_dataset_size(d), 5);
    assert_int_equal(pref_dataset_num_ties(d), 0);
    json_t *caps = meta_json("manifest_captions");
    const int good[3] = {0, 2, 4};
    float c[3 * RES * RES], r[3 * RES * RES];
    int ohw[2], cyx[2];
    for (int k = 0; k < 3; k++) {
        char *cap = NULL;
        if (pref_dataset_get(d, good[k], &CFG, 1, 0, &cap, c, r, ohw, cyx) != 0)
            fail_msg("pair %d: %s", good[k], mapo_last_error());
        assert_string_equal(cap, json_string_value(json_array_get(caps, (size_t)k)));
        free(cap);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "manifest.%d", k);
        expect_pair(prefix, c, r, ohw, cyx);
    }
    /* bad pairs: skipped, counted once, outputs untouched */
    float sentinel = 12345.0f;
    c[0] = sentinel;
    char *cap = (char *)1;
    assert_int_equal(pref_dataset_get(d, 1, &CFG, 1, 0, &cap, c, r, ohw, cyx), 1);
    assert_null(cap);
    assert_true(c[0] == sentinel);
    assert_non_null(strstr(mapo_last_error(), "manifest.jsonl line 2 chosen img/corrupt.jpg"));
    assert_int_equal(pref_dataset_get(d, 3, &CFG, 1, 0, NULL, c, r, ohw, cyx), 1);
    assert_non_null(strstr(mapo_last_error(), "line 5 rejected img/does_not_exist.png"));
    assert_int_equal(pref_dataset_num_bad(d), 2);
    assert_int_equal(pref_dataset_get(d, 1, &CFG, 1, 5, NULL, c, r, ohw, cyx), 1);
    assert_int_equal(pref_dataset_num_bad(d), 2);
    assert_true(pref_dataset_is_bad(d, 1) && pref_dataset_is_bad(d, 3) && !pref_dataset_is_bad(d, 0));
    char desc[512];
    pref_dataset_describe(d, 4, desc, sizeof desc);
    assert_non_null(strstr(desc, "manifest.jsonl line 6"));
    char *cp;
    assert_int_equal(pref_dataset_caption(d, 2, &cp), 0);
    assert_string_equal(cp, json_string_value(json_array_get(caps, 1)));
    free(cp);
    /* out of range, bad config */
    assert_int_equal(pref_dataset_get(d, 5, &CFG, 1, 0, NULL, c, r, ohw, cyx), -1);
    assert_int_equal(pref_dataset_get(d, -1, &CFG, 1, 0, NULL, c, r, ohw, cyx), -1);
    prep_cfg bad = {0, 0, 1};
    assert_int_equal(pref_dataset_get(d, 0, &bad, 1, 0, NULL, c, r, ohw, cyx), -1);
    const uint64_t fp = pref_dataset_fingerprint(d);
    pref_dataset_close(d);
    json_decref(caps);

    /* the .jsonl path itself gives the same dataset */
    if (pref_dataset_open(&d, FIX "/manifest/manifest.jsonl", NULL)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_size(d), 5);
    assert_true(pref_dataset_fingerprint(d) == fp);
    /* policy fail: the bad pair is an error naming its line and file */
    assert_int_equal(pref_dataset_get(d, 3, &CFG, 1, 0, NULL, c, r, ohw, cyx), -1);
    assert_non_null(strstr(mapo_last_error(), "line 5 rejected img/does_not_exist.png"));
    assert_int_equal(pref_dataset_num_bad(d), 0);
    int64_t nb = -1;
    assert_int_equal(pref_dataset_check(d, &nb), -1);
    assert_non_null(strstr(mapo_last_error(), "line 2"));
    pref_dataset_close(d);

    /* check with skip finds both up front */
    if (pref_dataset_open(&d, FIX "/manifest", &o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_check(d, &nb), 0);
    assert_int_equal(nb, 2);
    assert_true(pref_dataset_is_bad(d, 1) && pref_dataset_is_bad(d, 3));
    pref_dataset_close(d);
}

static void test_manifest_errors(void **state) {
    (void)state;
    pref_dataset *d = (pref_dataset *)1;
    assert_int_equal(pref_dataset_open(&d, FIX "/manifest/bad.jsonl", NULL), -1);
    assert_null(d);
    assert_non_null(strstr(mapo_last_error(), "bad.jsonl line 2: missing \"rejected\""));
    assert_int_equal(pref_dataset_open(&d, FIX "/manifest/bad_json.jsonl", NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "bad_json.jsonl line 2: invalid JSON"));
    assert_int_equal(pref_dataset_open(&d, FIX "/does/not/exist", NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "/does/not/exist"));
    /* hostile manifests written on the fly */
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "/tmp/mapo_test_dataset_%d", (int)getpid());
    mkdir(dir, 0700);
    const char *cases[][2] = {
        {"[1, 2]\n", "line 1: not a JSON object"},
        {"{\"caption\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}\n", "line 1: \"caption\" is not a string"},
        {"\n\n{\"caption\": \"c\", \"chosen\": \"\", \"rejected\": \"b\"}\n", "line 3: \"chosen\" is an empty path"},
        {"{\"caption\": \"c\", \"chosen\": \"a\", \"rejected\": \"b\"} trailing\n", "line 1: invalid JSON"},
        {"{\"caption\": \"c\\u0000\", \"chosen\": \"a\", \"rejected\": \"b\"}\n", "line 1: invalid JSON"},
        {"\n  \n", "no pairs"},
        {"\xff\xfe{\n", "line 1: invalid JSON"},
        {"\xef\xbb\xbf{\"caption\": \"c\", \"chosen\": \"a\"}\n", "line 1: missing \"rejected\""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        snprintf(path, sizeof path, "%s/m%zu.jsonl", dir, k);
        FILE *f = fopen(path, "wb");
        fputs(cases[k][0], f);
        fclose(f);
        if (pref_dataset_open(&d, path, NULL) == 0) fail_msg("case %zu opened", k);
        if (!strstr(mapo_last_error(), cases[k][1]))
            fail_msg("case %zu: '%s' lacks '%s'", k, mapo_last_error(), cases[k][1]);
        unlink(path);
    }
    /* an empty folder */
    assert_int_equal(pref_dataset_open(&d, dir, NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "no manifest.jsonl and no *.parquet"));
    /* a truncated parquet file */
    FILE *in = fopen(FIX "/pickapic.parquet", "rb");
    assert_non_null(in);
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    const size_t cuts[] = {0, 4, 100, n / 2, n - 9, n - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        snprintf(path, sizeof path, "%s/t.parquet", dir);
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, cuts[k], f);
        fclose(f);
        if (pref_dataset_open(&d, path, NULL) == 0) {
            /* the footer may survive a cut; then reading must fail cleanly */
            float c[3 * RES * RES], r[3 * RES * RES];
            int bad = 0;
            for (int64_t i = 0; i < pref_dataset_size(d); i++)
                bad |= pref_dataset_get(d, i, &CFG, 1, 0, NULL, c, r, NULL, NULL) != 0;
            assert_true(bad);
            pref_dataset_close(d);
        }
        unlink(path);
    }
    rmdir(dir);
}

/* ---------------------------------------------------------------- parquet */

/* row 4 has a truncated jpg_1; bad_where: how the error names it */
static void check_pickapic(pref_dataset *d, json_t *kept, int expect_fail_row4,
                           const char *bad_where) {
    assert_int_equal(pref_dataset_size(d), (int64_t)json_array_size(kept));
    float c[3 * RES * RES], r[3 * RES * RES];
    int ohw[2], cyx[2];
    for (size_t k = 0; k < json_array_size(kept); k++) {
        const int row = (int)json_integer_value(json_array_get(kept, k));
        char *cap = NULL;
        const int rc = pref_dataset_get(d, (int64_t)k, &CFG, 3, 1, &cap, c, r, ohw, cyx);
        if (row == 4) { /* truncated jpg_1 */
            assert_int_equal(rc, expect_fail_row4 ? -1 : 1);
            if (!strstr(mapo_last_error(), bad_where))
                fail_msg("'%s' lacks '%s'", mapo_last_error(), bad_where);
            assert_null(cap);
            continue;
        }
        if (rc != 0) fail_msg("pair %zu (row %d): %s", k, row, mapo_last_error());
        char want[64];
        snprintf(want, sizeof want, "pick-a-pic prompt %d", row);
        assert_string_equal(cap, want);
        free(cap);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "pickapic.row%d", row);
        expect_pair(prefix, c, r, ohw, cyx);
    }
}

static void test_parquet_file(void **state) {
    (void)state;
    json_t *kept = meta_json("pickapic_kept_rows");
    assert_int_equal(json_array_size(kept), 5); /* 6 rows, one tie */
    pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 0, 0, 0};
    pref_dataset *d;
    if (pref_dataset_open(&d, FIX "/pickapic.parquet", &o)) fail_msg("%s", mapo_last_error());
    assert_string_equal(pref_dataset_kind(d), "parquet");
    assert_int_equal(pref_dataset_num_ties(d), 1);
    check_pickapic(d, kept, 0, "pickapic.parquet row 4 jpg_1: cannot decode JPEG");
    assert_int_equal(pref_dataset_num_bad(d), 1);
    char desc[512];
    pref_dataset_describe(d, 4, desc, sizeof desc); /* pair 4 = row 5 (row 2 was a tie) */
    assert_non_null(strstr(desc, "pickapic.parquet row 5"));
    /* captions alone, in reverse order (row groups reloaded) */
    for (int64_t i = 4; i >= 0; i--) {
        char *cap;
        assert_int_equal(pref_dataset_caption(d, i, &cap), 0);
        char want[64];
        snprintf(want, sizeof want, "pick-a-pic prompt %d",
                 (int)json_integer_value(json_array_get(kept, (size_t)i)));
        assert_string_equal(cap, want);
        free(cap);
    }
    const uint64_t fp = pref_dataset_fingerprint(d);
    pref_dataset_close(d);
    /* policy fail */
    if (pref_dataset_open(&d, FIX "/pickapic.parquet", NULL)) fail_msg("%s", mapo_last_error());
    assert_true(pref_dataset_fingerprint(d) == fp);
    check_pickapic(d, kept, 1, "pickapic.parquet row 4 jpg_1: cannot decode JPEG");
    pref_dataset_close(d);
    json_decref(kept);
}

static void test_parquet_hf_folder(void **state) {
    (void)state;
    json_t *kept = meta_json("pickapic_kept_rows");
    pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 0, 0, 0};
    pref_dataset *d;
    /* folder -> data/ -> split "train" (two files: rows 0-2 zstd, rows 3-5 gzip) */
    if (pref_dataset_open(&d, FIX "/pickapic_hf", &o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_num_ties(d), 1);
    check_pickapic(d, kept, 0, "train-00001-of-00002.parquet row 1 jpg_1: cannot decode JPEG");
    char desc[512];
    pref_dataset_describe(d, 2, desc, sizeof desc); /* row 3 = row 0 of the second file */
    assert_non_null(strstr(desc, "train-00001-of-00002.parquet row 0"));
    int64_t nb;
    assert_int_equal(pref_dataset_check(d, &nb), 0);
    assert_int_equal(nb, 1);
    pref_dataset_close(d);
    /* the data/ folder directly, same result */
    if (pref_dataset_open(&d, FIX "/pickapic_hf/data", &o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_size(d), 5);
    pref_dataset_close(d);
    /* another split */
    o.split = "test";
    if (pref_dataset_open(&d, FIX "/pickapic_hf", &o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_size(d), 2);
    char *cap;
    assert_int_equal(pref_dataset_caption(d, 1, &cap), 0);
    assert_string_equal(cap, "pick-a-pic prompt 1");
    free(cap);
    pref_dataset_close(d);
    o.split = "validation";
    assert_int_equal(pref_dataset_open(&d, FIX "/pickapic_hf", &o), -1);
    assert_non_null(strstr(mapo_last_error(), "no parquet files of split 'validation'"));
    assert_non_null(strstr(mapo_last_error(), "test"));
    json_decref(kept);
}

static void test_parquet_schema_errors(void **state) {
    (void)state;
    pref_dataset *d;
    assert_int_equal(pref_dataset_open(&d, FIX "/pickapic_nojpg1.parquet", NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "pickapic_nojpg1.parquet: no column 'jpg_1'"));
    assert_int_equal(pref_dataset_open(&d, FIX "/pickapic_nulllabel.parquet", NULL), -1);
    assert_non_null(strstr(mapo_last_error(), "pickapic_nulllabel.parquet row 1: label_0 is null"));
    assert_int_equal(pref_parse_on_bad_image("skip"), ON_BAD_IMAGE_SKIP);
    assert_int_equal(pref_parse_on_bad_image("fail"), ON_BAD_IMAGE_FAIL);
    assert_int_equal(pref_parse_on_bad_image("ignore"), -1);
}

/* ---------------------------------------------------------------- random augmentation */

static void test_augmentation_stream(void **state) {
    (void)state;
    pref_dataset *d;
    if (pref_dataset_open(&d, FIX "/manifest/manifest.jsonl", NULL)) fail_msg("%s", mapo_last_error());
    mapo_image a, b;
    if (image_load(&a, FIX "/manifest/img/c1.jpg") || image_load(&b, FIX "/manifest/img/r1.png"))
        fail_msg("%s", mapo_last_error());
    const prep_cfg cfg = {RES, 1, 0}; /* random crop, random flip */
    float c1[3 * RES * RES], r1[3 * RES * RES], c2[3 * RES * RES], r2[3 * RES * RES];
    int ohw[2], cyx[2], ohw2[2], cyx2[2];
    int flips = 0, distinct = 0, prev_y = -1, prev_x = -1;
    for (uint64_t epoch = 0; epoch < 16; epoch++) {
        /* pair 2 = line 4 = c1/r1 */
        assert_int_equal(pref_dataset_get(d, 2, &cfg, 42, epoch, NULL, c1, r1, ohw, cyx), 0);
        /* same (seed, epoch, index): same result */
        assert_int_equal(pref_dataset_get(d, 2, &cfg, 42, epoch, NULL, c2, r2, ohw2, cyx2), 0);
        assert_memory_equal(c1, c2, sizeof c1);
        assert_int_equal(cyx[0], cyx2[0]);
        assert_int_equal(cyx[1], cyx2[1]);
        /* the documented stream: flip draw, then crop y, then crop x */
        philox rr;
        philox_init(&rr, 42, PREF_STREAM_AUG(epoch), 2);
        const int flip = philox_uniform(&rr) < 0.5;
        int oh, ow;
        assert_int_equal(prep_resize_size(a.h, a.w, RES, &oh, &ow), 0);
        const int y1 = (int)philox_below(&rr, (uint32_t)(oh - RES + 1));
        const int x1 = (int)philox_below(&rr, (uint32_t)(ow - RES + 1));
        assert_int_equal(prep_pair_fixed(c2, r2, ohw2, cyx2, &a, &b, 0, RES, flip, y1, x1), 0);
        assert_memory_equal(c1, c2, sizeof c1);
        assert_memory_equal(r1, r2, sizeof r1);
        assert_int_equal(cyx[0], y1);
        assert_int_equal(cyx[1], x1);
        assert_int_equal(ohw[0], a.h);
        assert_int_equal(ohw[1], a.w);
        flips += flip;
        distinct += (y1 != prev_y || x1 != prev_x);
        prev_y = y1, prev_x = x1;
    }
    assert_true(flips > 0 && flips < 16);
    assert_true(distinct > 1);
    image_free(&a);
    image_free(&b);
    pref_dataset_close(d);
}

/* ---------------------------------------------------------------- images-only manifests */

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* The images-only twin of manifest/manifest.jsonl: the chosen image of every line as a single
   captioned image (same bad lines), in a folder of its own (absolute paths and one relative). */
static void test_images_only(void **state) {
    (void)state;
    static char text[6 * PATH_MAX];
    char dir[256], path[300], img[PATH_MAX];
    snprintf(dir, sizeof dir, "/tmp/mapo_test_images_%d", (int)getpid());
    mkdir(dir, 0700);
    if (!realpath(FIX "/manifest/img", img)) fail_msg("realpath");
    json_t *caps = meta_json("manifest_captions");
    char *cj[3];
    for (int k = 0; k < 3; k++) cj[k] = json_dumps(json_array_get(caps, (size_t)k), JSON_ENCODE_ANY);
    snprintf(text, sizeof text,
             "{\"caption\": %s, \"image\": \"%s/c0.jpg\"}\n"
             "{\"caption\": \"corrupt\", \"image\": \"%s/corrupt.jpg\"}\n"
             "\n"
             "{\"caption\": %s, \"image\": \"%s/c1.jpg\", \"other\": [1, 2]}\n"
             "{\"caption\": \"missing\", \"image\": \"img/does_not_exist.png\"}\n"
             "{\"caption\": %s, \"image\": \"%s/c2.jpg\"}\n",
             cj[0], img, img, cj[1], img, cj[2], img);
    for (int k = 0; k < 3; k++) free(cj[k]);
    snprintf(path, sizeof path, "%s/manifest.jsonl", dir);
    write_file(path, text);

    /* the images live in the fixtures, outside this folder: allowed explicitly */
    pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 1, 0, 0};
    pref_dataset *d, *pairs;
    if (pref_dataset_open(&d, dir, &o)) fail_msg("%s", mapo_last_error());
    if (pref_dataset_open(&pairs, FIX "/manifest", &o)) fail_msg("%s", mapo_last_error());
    assert_string_equal(pref_dataset_kind(d), "manifest");
    assert_int_equal(pref_dataset_images_only(d), 1);
    assert_int_equal(pref_dataset_images_only(pairs), 0);
    assert_int_equal(pref_dataset_size(d), 5);
    const int good[3] = {0, 2, 4};
    float c[3 * RES * RES], r[3 * RES * RES], cf[3 * RES * RES];
    float pc[3 * RES * RES], pr[3 * RES * RES], pcf[3 * RES * RES], prf[3 * RES * RES];
    int ohw[2], cyx[2], pohw[2], pcyx[2];
    const float sentinel = 12345.0f;
    for (int k = 0; k < 3; k++) {
        const int i = good[k];
        /* the image is preprocessed as the chosen image of the script's pair */
        char *cap = NULL;
        r[0] = sentinel;
        if (pref_dataset_get(d, i, &CFG, 1, 0, &cap, c, r, ohw, cyx) != 0)
            fail_msg("image %d: %s", i, mapo_last_error());
        assert_true(r[0] == sentinel); /* rejected is not written */
        assert_string_equal(cap, json_string_value(json_array_get(caps, (size_t)k)));
        free(cap);
        const int64_t shape[3] = {3, RES, RES};
        char key[64];
        float ref[3 * RES * RES];
        snprintf(key, sizeof key, "manifest.%d.chosen", k);
        if (st_read_f32_shape(&g_exp, key, ref, 3, shape)) fail_msg("%s", mapo_last_error());
        const double e = rel_err_f32(c, ref, 3 * RES * RES);
        if (e > g_worst) g_worst = e;
        if (!(e <= TOL)) fail_msg("%s (images-only): relative error %.3e > %.0e", key, e, TOL);
        /* NULL rejected, random flip and crop: the same draws as the pair's chosen image */
        const prep_cfg rnd = {RES, 1, 0};
        for (uint64_t epoch = 0; epoch < 4; epoch++) {
            assert_int_equal(pref_dataset_get(d, i, &rnd, 7, epoch, NULL, c, NULL, ohw, cyx), 0);
            assert_int_equal(pref_dataset_get(pairs, i, &rnd, 7, epoch, NULL, pc, pr, pohw, pcyx), 0);
            assert_memory_equal(c, pc, sizeof c);
            assert_memory_equal(ohw, pohw, sizeof ohw);
            assert_memory_equal(cyx, pcyx, sizeof cyx);
        }
        /* both orientations (centre and random crop) */
        for (int rc_ = 0; rc_ < 2; rc_++) {
            const prep_cfg fc = {RES, rc_, 0};
            assert_int_equal(pref_dataset_get_flips(d, i, &fc, 9, NULL, c, NULL, cf, NULL, ohw, cyx), 0);
            assert_int_equal(pref_dataset_get_flips(pairs, i, &fc, 9, NULL, pc, pr, pcf, prf, pohw, pcyx), 0);
            assert_memory_equal(c, pc, sizeof c);
            assert_memory_equal(cf, pcf, sizeof cf);
            assert_memory_equal(ohw, pohw, sizeof ohw);
            assert_memory_equal(cyx, pcyx, sizeof cyx);
        }
    }
    /* bad images: skipped with the line named, outputs untouched */
    c[0] = sentinel;
    assert_int_equal(pref_dataset_get(d, 1, &CFG, 1, 0, NULL, c, NULL, ohw, cyx), 1);
    assert_true(c[0] == sentinel);
    assert_non_null(strstr(mapo_last_error(), "manifest.jsonl line 2 image "));
    assert_non_null(strstr(mapo_last_error(), "corrupt.jpg"));
    assert_int_equal(pref_dataset_get_flips(d, 3, &CFG, 1, NULL, c, NULL, cf, NULL, ohw, cyx), 1);
    assert_non_null(strstr(mapo_last_error(), "line 5 image img/does_not_exist.png"));
    assert_int_equal(pref_dataset_num_bad(d), 2);
    /* the chosen buffer is still required */
    assert_int_equal(pref_dataset_get(d, 0, &CFG, 1, 0, NULL, NULL, r, ohw, cyx), -1);
    /* a pair dataset still needs its rejected buffer */
    assert_int_equal(pref_dataset_get(pairs, 0, &CFG, 1, 0, NULL, pc, NULL, ohw, cyx), -1);
    char desc[512];
    pref_dataset_describe(d, 4, desc, sizeof desc);
    assert_non_null(strstr(desc, "manifest.jsonl line 6"));
    pref_dataset_close(d);
    pref_dataset_close(pairs);

    /* check: with skip both bad lines are found up front; with fail the first is an error */
    int64_t nb = -1;
    if (pref_dataset_open(&d, path, &o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_check(d, &nb), 0);
    assert_int_equal(nb, 2);
    assert_true(pref_dataset_is_bad(d, 1) && pref_dataset_is_bad(d, 3) && !pref_dataset_is_bad(d, 2));
    const uint64_t fp = pref_dataset_fingerprint(d);
    pref_dataset_close(d);
    pref_dataset_opts fail_o = {NULL, ON_BAD_IMAGE_FAIL, 1, 0, 0};
    if (pref_dataset_open(&d, path, &fail_o)) fail_msg("%s", mapo_last_error());
    assert_int_equal(pref_dataset_check(d, &nb), -1);
    assert_non_null(strstr(mapo_last_error(), "line 2 image "));
    assert_int_equal(pref_dataset_get(d, 3, &CFG, 1, 0, NULL, c, NULL, ohw, cyx), -1);
    assert_non_null(strstr(mapo_last_error(), "line 5 image img/does_not_exist.png"));
    assert_true(pref_dataset_fingerprint(d) == fp);
    pref_dataset_close(d);
    json_decref(caps);
    unlink(path);
    rmdir(dir);
}

static void test_images_only_errors(void **state) {
    (void)state;
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "/tmp/mapo_test_images_err_%d", (int)getpid());
    mkdir(dir, 0700);
    const char *P = "{\"caption\": \"c\", \"chosen\": \"a\", \"rejected\": \"b\"}\n";
    const char *I = "{\"caption\": \"c\", \"image\": \"a\"}\n";
    char mixed1[512], mixed2[512];
    /* the first line of the other kind is named, blank lines counted */
    snprintf(mixed1, sizeof mixed1, "%s%s\n%s", P, P, I);
    snprintf(mixed2, sizeof mixed2, "\n%s%s%s", I, I, P);
    const char *cases[][2] = {
        {mixed1, "line 4: a single image in a manifest of pairs (line 1)"},
        {mixed2, "line 4: a pair in a manifest of single images (line 2)"},
        {"{\"caption\": \"c\", \"image\": \"a\", \"chosen\": \"b\"}\n",
         "line 1: both \"image\" and \"chosen\" / \"rejected\""},
        {"{\"image\": \"a\"}\n", "line 1: missing \"caption\""},
        {"{\"caption\": \"c\", \"image\": \"\"}\n", "line 1: \"image\" is an empty path"},
        {"{\"caption\": \"c\", \"image\": null}\n", "line 1: \"image\" is not a string"},
        {"{\"caption\": [], \"image\": \"a\"}\n", "line 1: \"caption\" is not a string"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        snprintf(path, sizeof path, "%s/m%zu.jsonl", dir, k);
        write_file(path, cases[k][0]);
        pref_dataset *d = (pref_dataset *)1;
        if (pref_dataset_open(&d, path, NULL) == 0) fail_msg("case %zu opened", k);
        assert_null(d);
        if (!strstr(mapo_last_error(), cases[k][1]))
            fail_msg("case %zu: '%s' lacks '%s'", k, mapo_last_error(), cases[k][1]);
        unlink(path);
    }
    rmdir(dir);
}

/* Paths that leave the dataset (docs/RELIABILITY.md "Datasets from strangers"): "..", an
 * absolute path elsewhere, a symlink out of the folder are refused at open naming the line and
 * the path; an absolute path inside the folder and a missing file inside are fine; with
 * allow_outside_paths all of them open. */
static void test_outside_paths(void **state) {
    (void)state;
    char dir[256], sub[300], path[400], link[400];
    snprintf(dir, sizeof dir, "/tmp/mapo_test_outside_%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(sub, sizeof sub, "%s/ds", dir);
    mkdir(sub, 0700);
    snprintf(path, sizeof path, "%s/secret.png", dir);
    write_file(path, "x");
    snprintf(link, sizeof link, "%s/link.png", sub);
    unlink(link);
    assert_int_equal(symlink(path, link), 0);
    char inside_abs[400];
    snprintf(inside_abs, sizeof inside_abs, "%s/./a.png", sub);
    struct {
        const char *chosen, *needle; /* needle NULL: opens */
    } cases[] = {
        {"../secret.png", "line 1: chosen path '../secret.png' leads to"},
        {"img/../../secret.png", "outside the dataset folder"},
        {"/etc/passwd", "line 1: chosen path '/etc/passwd' leads to /etc/passwd, outside"},
        {"link.png", "chosen path 'link.png' leads to"},
        {"nothere/../../x.png", "outside the dataset folder"},
        {"img/a.png", NULL},
        {inside_abs, NULL},
    };
    char text[1200], mpath[400];
    snprintf(mpath, sizeof mpath, "%s/manifest.jsonl", sub);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        snprintf(text, sizeof text, "{\"caption\": \"c\", \"chosen\": \"%s\", \"rejected\": "
                 "\"b.png\"}\n", cases[k].chosen);
        write_file(mpath, text);
        pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 0, 0, 0};
        pref_dataset *d = NULL;
        int rc = pref_dataset_open(&d, sub, &o);
        if (cases[k].needle) {
            if (rc == 0) fail_msg("%s: opened", cases[k].chosen);
            printf("  %s\n", mapo_last_error());
            if (!strstr(mapo_last_error(), cases[k].needle) ||
                !strstr(mapo_last_error(), "manifest.jsonl"))
                fail_msg("%s: message lacks '%s': %s", cases[k].chosen, cases[k].needle,
                         mapo_last_error());
        } else if (rc) {
            fail_msg("%s: %s", cases[k].chosen, mapo_last_error());
        }
        pref_dataset_close(d);
        o.allow_outside_paths = 1;
        if (pref_dataset_open(&d, sub, &o)) fail_msg("%s allowed: %s", cases[k].chosen, mapo_last_error());
        pref_dataset_close(d);
    }
    /* the rejected path is checked too */
    write_file(mpath, "{\"caption\": \"c\", \"chosen\": \"a.png\", \"rejected\": \"../secret.png\"}\n");
    pref_dataset_opts o = {NULL, ON_BAD_IMAGE_SKIP, 0, 0, 0};
    pref_dataset *d = NULL;
    assert_int_equal(pref_dataset_open(&d, mpath, &o), -1);
    assert_non_null(strstr(mapo_last_error(), "line 1: rejected path '../secret.png'"));
    unlink(mpath);
    unlink(link);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manifest),
        cmocka_unit_test(test_manifest_errors),
        cmocka_unit_test(test_parquet_file),
        cmocka_unit_test(test_parquet_hf_folder),
        cmocka_unit_test(test_parquet_schema_errors),
        cmocka_unit_test(test_augmentation_stream),
        cmocka_unit_test(test_images_only),
        cmocka_unit_test(test_images_only_errors),
        cmocka_unit_test(test_outside_paths),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
