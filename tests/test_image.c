/* test_image.c -- image decoding, PNG writing, grids, PIL's bicubic resize, PyTorch's
 * antialiased bilinear resize and the preprocessing of the official DPO / MaPO scripts,
 * against PIL / torchvision (fixtures: tools/make_dataset_fixtures.py).
 *
 * Tolerances:
 *  - PNG decoding and PIL's bicubic resize are integer pipelines: exact (max abs diff 0).
 *  - JPEG decoding: PIL bundles libjpeg-turbo 3.2, we link the system's 2.1; both run the same
 *    ISLOW IDCT and fancy upsampling, which libjpeg-turbo keeps bit-exact across its SIMD paths
 *    (measured: 0 levels with AVX2, with JSIMD_FORCESSE2=1 and with JSIMD_FORCENONE=1). The
 *    issue allows 1 level; we require 0 (JPEG_TOL) because a 1-level slack hides real bugs
 *    (an off-by-one in the CMYK conversion passed it). Raise JPEG_TOL to 1 only if a libjpeg
 *    build is shown to round differently.
 *  - Antialiased bilinear resize: PyTorch computes weights and sums in float32 like we do,
 *    but its kernel may contract a*b+c into FMAs (we compile ISO C11: no contraction), so a
 *    few float32 ulps (~1e-7 relative) can differ; bound 1e-6 relative L2 (the issue's) and
 *    2e-6 absolute in [0,1] units. A wrong weight, tap window or pass order gives >= 1e-3.
 *  - Preprocessed pairs: [-1,1] values, the same float pipeline after exact integer decoding;
 *    bound 2e-6 relative L2 (normalising doubles values; JPEG inputs go through our decoder,
 *    which the decode test shows to be exact). Crop offsets and original sizes: exact. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <jansson.h>

#include "mapo/common.h"
#include "mapo/image.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "testutil.h"

#define FIX "tests/fixtures/dataset"
#define JPEG_TOL 0
#define TOL_AA 1e-6
#define TOL_AA_ABS 2e-6
#define TOL_PREP 2e-6


static int max_abs_u8(const uint8_t *a, const uint8_t *b, size_t n) {
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > m) m = d;
    }
    return m;
}

/* ---------------------------------------------------------------- decoding */

static void test_decode_parity(void **state) {
    (void)state;
    st_file f;
    if (st_open(&f, FIX "/decode.safetensors")) fail_msg("%s", mapo_last_error());
    int worst_jpeg = 0, n_jpeg = 0, n_png = 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        char path[512];
        snprintf(path, sizeof path, FIX "/img/%s", t->name);
        mapo_image im;
        if (image_load(&im, path)) fail_msg("%s", mapo_last_error());
        assert_int_equal(t->dtype, ST_U8);
        assert_int_equal(t->ndim, 3);
        if (t->shape[0] != im.h || t->shape[1] != im.w || t->shape[2] != 3)
            fail_msg("%s: decoded %dx%d, PIL %lldx%lld", t->name, im.w, im.h,
                     (long long)t->shape[1], (long long)t->shape[0]);
        const int d = max_abs_u8(im.px, t->data, (size_t)im.w * im.h * 3);
        const int is_jpeg = strstr(t->name, ".jpg") != NULL;
        printf("  decode %-22s %3dx%-3d max |diff| %d\n", t->name, im.w, im.h, d);
        if (is_jpeg) {
            n_jpeg++;
            if (d > worst_jpeg) worst_jpeg = d;
            if (d > JPEG_TOL) fail_msg("%s: max abs diff %d > %d against PIL", t->name, d, JPEG_TOL);
        } else {
            n_png++;
            if (d != 0) fail_msg("%s: PNG decoding differs from PIL (max abs diff %d)", t->name, d);
        }
        /* same from memory, with the format found from the bytes only */
        size_t n;
        uint8_t *buf = read_all(path, &n);
        mapo_image im2;
        if (image_decode(&im2, buf, n, t->name)) fail_msg("%s", mapo_last_error());
        assert_memory_equal(im.px, im2.px, (size_t)im.w * im.h * 3);
        image_free(&im2);
        free(buf);
        image_free(&im);
    }
    assert_true(n_jpeg >= 6);
    assert_true(n_png >= 12);
    printf("  decode: %d JPEG (worst max |diff| %d), %d PNG (exact)\n", n_jpeg, worst_jpeg, n_png);
    st_close(&f);
}

/* ---------------------------------------------------------------- hostile input */

static void expect_fail(const uint8_t *buf, size_t n, const char *what, const char *needle) {
    mapo_image im;
    memset(&im, 0x55, sizeof im);
    int rc = image_decode(&im, buf, n, what);
    if (rc == 0) fail_msg("%s: decoding succeeded, expected an error", what);
    assert_null(im.px);
    const char *m = mapo_last_error();
    if (!strstr(m, what)) fail_msg("%s: message does not name the source: %s", what, m);
    if (needle && !strstr(m, needle)) fail_msg("%s: message lacks '%s': %s", what, needle, m);
}

static void png_fix_crc(uint8_t *buf, size_t chunk_off) {
    /* chunk at chunk_off: length(4) type(4) data crc */
    uint32_t len = (uint32_t)buf[chunk_off] << 24 | buf[chunk_off + 1] << 16 |
                   buf[chunk_off + 2] << 8 | buf[chunk_off + 3];
    uLong c = crc32(0, buf + chunk_off + 4, 4 + len);
    uint8_t *p = buf + chunk_off + 8 + len;
    p[0] = (uint8_t)(c >> 24), p[1] = (uint8_t)(c >> 16), p[2] = (uint8_t)(c >> 8),
    p[3] = (uint8_t)c;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void test_hostile(void **state) {
    (void)state;
    size_t n;
    /* truncated JPEGs, baseline and progressive, at many cut points */
    const char *jpegs[] = {FIX "/img/jpeg_420.jpg", FIX "/img/jpeg_prog.jpg",
                           FIX "/img/jpeg_cmyk.jpg"};
    for (int k = 0; k < 3; k++) {
        uint8_t *b = read_all(jpegs[k], &n);
        for (size_t cut = 1; cut < n - 2; cut += (cut < 64 ? 7 : 97)) expect_fail(b, cut, "cutjpeg", NULL);
        expect_fail(b, n / 2, "halfjpeg", "truncated");
        /* huge dimensions in the SOF header */
        for (size_t i = 2; i + 9 < n; i++)
            if (b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2)) {
                uint8_t *c = malloc(n);
                memcpy(c, b, n);
                c[i + 5] = 0xEA, c[i + 6] = 0x60; /* height 60000 */
                c[i + 7] = 0xEA, c[i + 8] = 0x60; /* width 60000 */
                expect_fail(c, n, "hugejpeg", "exceeds the limit");
                c[i + 5] = 0, c[i + 6] = 0; /* height 0 */
                expect_fail(c, n, "zerojpeg", NULL);
                /* 16384 x 16384 is within the caps, but not in a few KB (one bit per 8x8
                   block at least): refused before the 768 MB image (and, progressive, the
                   1.5 GB of coefficients) would be allocated */
                c[i + 5] = 0x40, c[i + 6] = 0x00;
                c[i + 7] = 0x40, c[i + 8] = 0x00;
                expect_fail(c, n, "liarjpeg", "JPEG declares 16384x16384 pixels but holds only");
                free(c);
                break;
            }
        free(b);
    }
    /* truncated PNGs (plain and interlaced) */
    const char *pngs[] = {FIX "/img/src_rgb.png", FIX "/img/png_interlaced.png",
                          FIX "/img/png_pal4.png"};
    for (int k = 0; k < 3; k++) {
        uint8_t *b = read_all(pngs[k], &n);
        for (size_t cut = 1; cut + 12 < n; cut += (cut < 64 ? 5 : 61)) expect_fail(b, cut, "cutpng", NULL);
        /* corrupt the compressed data (keeping the CRC right) */
        uint8_t *c = malloc(n);
        memcpy(c, b, n);
        for (size_t i = 8; i + 8 < n;) {
            uint32_t len = (uint32_t)c[i] << 24 | c[i + 1] << 16 | c[i + 2] << 8 | c[i + 3];
            if (!memcmp(c + i + 4, "IDAT", 4)) {
                for (uint32_t j = 2; j < len; j += 3) c[i + 8 + j] ^= 0x5A;
                png_fix_crc(c, i);
                break;
            }
            i += 12 + len;
        }
        expect_fail(c, n, "corruptpng", NULL);
        free(c);
        free(b);
    }
    /* PNG header claiming huge sizes (CRC fixed so the size check itself is hit) */
    uint8_t *b = read_all(FIX "/img/src_rgb.png", &n);
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    put_be32(c + 16, 100000), put_be32(c + 20, 10);
    png_fix_crc(c, 8);
    expect_fail(c, n, "widepng", NULL);
    memcpy(c, b, n);
    put_be32(c + 16, 16384), put_be32(c + 20, 16384); /* 2^28 pixels allowed, but not in 2 KB */
    png_fix_crc(c, 8);
    expect_fail(c, n, "bombpng", "holds only");
    memcpy(c, b, n);
    put_be32(c + 16, 16384), put_be32(c + 20, 16385);
    png_fix_crc(c, 8);
    expect_fail(c, n, "tallpng", NULL);
    free(c);
    free(b);
    /* garbage behind the magic bytes, empty, unknown */
    uint8_t g[64];
    for (int i = 0; i < 64; i++) g[i] = (uint8_t)(i * 37 + 11);
    g[0] = 0xFF, g[1] = 0xD8, g[2] = 0xFF;
    expect_fail(g, sizeof g, "garbagejpeg", "JPEG");
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(g, sig, 8);
    expect_fail(g, sizeof g, "garbagepng", "PNG");
    expect_fail(g, 8, "sigonly", NULL);
    expect_fail(g, 0, "empty", "0 bytes");
    expect_fail(NULL, 0, "null", NULL);
    expect_fail((const uint8_t *)"GIF89a......", 12, "gif", "not a JPEG or PNG");
    /* files */
    mapo_image im;
    assert_int_equal(image_load(&im, FIX "/img/does-not-exist.png"), -1);
    assert_non_null(strstr(mapo_last_error(), "does-not-exist.png"));
    assert_int_equal(image_load(&im, FIX "/img"), -1);
    /* limits on allocation helpers */
    assert_int_equal(image_alloc(&im, 16385, 1, "x"), -1);
    assert_int_equal(image_alloc(&im, 16384, 16385, "x"), -1);
    assert_int_equal(image_alloc(&im, 0, 5, "x"), -1);
    assert_int_equal(image_alloc(&im, 3, 2, "x"), 0);
    image_free(&im);
}

/* ---------------------------------------------------------------- writing, grid, postprocess */

static void test_png_roundtrip_and_grid(void **state) {
    (void)state;
    mapo_image a, b;
    assert_int_equal(image_alloc(&a, 37, 21, "a"), 0);
    philox r;
    philox_init(&r, 7, 1, 2);
    for (size_t i = 0; i < (size_t)37 * 21 * 3; i++) a.px[i] = (uint8_t)philox_u32(&r);
    char path[256];
    snprintf(path, sizeof path, "/tmp/mapo_test_image_%d.png", (int)getpid());
    assert_int_equal(image_write_png(path, a.px, a.w, a.h), 0);
    assert_int_equal(image_load(&b, path), 0);
    assert_int_equal(b.w, 37);
    assert_int_equal(b.h, 21);
    assert_memory_equal(a.px, b.px, (size_t)37 * 21 * 3);
    image_free(&b);
    /* the temp file is gone, the target is a regular file */
    char tmpname[300];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%d", path, (int)getpid());
    assert_int_equal(access(tmpname, F_OK), -1);
    unlink(path);
    /* writing into a folder that does not exist fails cleanly */
    assert_int_equal(image_write_png("/nonexistent-dir/x.png", a.px, a.w, a.h), -1);
    assert_int_equal(image_write_png("/tmp/x.png", a.px, 0, 3), -1);

    /* grid: 5 images in 2 x 3 (last cell black) */
    mapo_image ims[5];
    for (int k = 0; k < 5; k++) {
        assert_int_equal(image_alloc(&ims[k], 4, 3, "g"), 0);
        memset(ims[k].px, 10 + k, 4 * 3 * 3);
    }
    mapo_image g;
    assert_int_equal(image_grid(&g, ims, 5, 2, 3), 0);
    assert_int_equal(g.w, 12);
    assert_int_equal(g.h, 6);
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 12; x++) {
            const int cell = (y / 3) * 3 + x / 4;
            const int want = cell < 5 ? 10 + cell : 0;
            assert_int_equal(g.px[(y * 12 + x) * 3 + 1], want);
        }
    image_free(&g);
    assert_int_equal(image_grid(&g, ims, 5, 2, 2), -1);
    ims[2].w = 5;
    assert_int_equal(image_grid(&g, ims, 5, 2, 3), -1);
    ims[2].w = 4;
    for (int k = 0; k < 5; k++) image_free(&ims[k]);

    /* VaeImageProcessor postprocess: x*0.5+0.5, clamp to [0,1], round(x*255) half to even */
    const float chw[3 * 4] = {-1.0f, 1.0f, 2.0f, -3.0f, 0.0f, NAN, 0.2f, -0.2f,
                              0.999f, -0.999f, 0.5f, -0.5f};
    mapo_image o;
    assert_int_equal(image_from_chw(&o, chw, 1, 4), 0);
    /* numpy: ((np.float32(x) * 0.5 + 0.5).clip(0, 1) * 255).round(); 0 -> 127.5 -> 128 */
    const uint8_t want[12] = {0, 128, 255, 255, 0, 0, 255, 153, 191, 0, 102, 64};
    assert_memory_equal(o.px, want, 12);
    image_free(&o);
    image_free(&a);
}

/* ---------------------------------------------------------------- resizes */

static void test_pil_bicubic(void **state) {
    (void)state;
    st_file f;
    if (st_open(&f, FIX "/resize.safetensors")) fail_msg("%s", mapo_last_error());
    mapo_image src;
    if (image_load(&src, FIX "/img/src_rgb.png")) fail_msg("%s", mapo_last_error());
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        const int h = (int)t->shape[0], w = (int)t->shape[1];
        mapo_image o;
        assert_int_equal(image_resize_bicubic(&o, &src, w, h), 0);
        const int d = max_abs_u8(o.px, t->data, (size_t)w * h * 3);
        printf("  PIL bicubic 53x37 -> %-7s max |diff| %d\n", t->name, d);
        if (d) fail_msg("bicubic %s differs from PIL: max abs diff %d", t->name, d);
        image_free(&o);
    }
    assert_true(f.n >= 6);
    mapo_image o;
    assert_int_equal(image_resize_bicubic(&o, &src, 53, 37), 0); /* same size: copy */
    assert_memory_equal(o.px, src.px, (size_t)53 * 37 * 3);
    image_free(&o);
    assert_int_equal(image_resize_bicubic(&o, &src, 0, 37), -1);
    image_free(&src);
    st_close(&f);
}

static void test_bilinear_aa(void **state) {
    (void)state;
    st_file f;
    if (st_open(&f, FIX "/aa.safetensors")) fail_msg("%s", mapo_last_error());
    const st_tensor *in = st_find(&f, "input");
    assert_non_null(in);
    const int C = (int)in->shape[0], H = (int)in->shape[1], W = (int)in->shape[2];
    float *x = malloc(sizeof(float) * in->numel);
    assert_int_equal(st_to_f32(in, x), 0);
    double worst = 0, worst_abs = 0;
    int cases = 0;
    for (int i = 0; i < f.n; i++) {
        const st_tensor *t = &f.tensors[i];
        if (!strcmp(t->name, "input")) continue;
        const int oh = (int)t->shape[1], ow = (int)t->shape[2];
        float *ref = malloc(sizeof(float) * t->numel), *y = malloc(sizeof(float) * t->numel);
        assert_int_equal(st_to_f32(t, ref), 0);
        assert_int_equal(resize_bilinear_aa(y, x, C, H, W, oh, ow), 0);
        const double e = rel_err_f32(y, ref, t->numel);
        double ma = 0;
        for (int64_t k = 0; k < t->numel; k++) ma = fmax(ma, fabs((double)y[k] - ref[k]));
        printf("  bilinear aa %dx%d -> %-6s rel %.2e  max |diff| %.2e\n", H, W, t->name, e, ma);
        if (!(e <= TOL_AA) || !(ma <= TOL_AA_ABS))
            fail_msg("aa resize to %s: rel %.3e (bound %.0e), abs %.3e", t->name, e, TOL_AA, ma);
        worst = fmax(worst, e);
        worst_abs = fmax(worst_abs, ma);
        cases++;
        free(ref);
        free(y);
    }
    assert_true(cases >= 6);
    printf("  bilinear aa: worst rel %.2e, worst abs %.2e over %d sizes\n", worst, worst_abs, cases);
    free(x);
    st_close(&f);
}

/* ---------------------------------------------------------------- preprocessing */

static void test_resize_size(void **state) {
    (void)state;
    int oh, ow;
    assert_int_equal(prep_resize_size(40, 61, 24, &oh, &ow), 0); /* int(24*61/40) = 36 */
    assert_int_equal(oh, 24);
    assert_int_equal(ow, 36);
    assert_int_equal(prep_resize_size(47, 33, 16, &oh, &ow), 0); /* int(16*47/33)=22 */
    assert_int_equal(ow, 16);
    assert_int_equal(oh, 22);
    assert_int_equal(prep_resize_size(1024, 1024, 512, &oh, &ow), 0);
    assert_int_equal(oh, 512);
    assert_int_equal(ow, 512);
    /* int(1024 * 683 / 512) = 1366 */
    assert_int_equal(prep_resize_size(512, 683, 1024, &oh, &ow), 0);
    assert_int_equal(ow, 1366);
    assert_int_equal(prep_resize_size(10, 10, 0, &oh, &ow), -1);
}

static void test_prep_parity(void **state) {
    (void)state;
    json_error_t je;
    json_t *cases = json_load_file(FIX "/prep.json", 0, &je);
    if (!cases) fail_msg("prep.json: %s", je.text);
    st_file f;
    if (st_open(&f, FIX "/prep.safetensors")) fail_msg("%s", mapo_last_error());
    double worst = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        char p0[512], p1[512], key[256];
        snprintf(p0, sizeof p0, FIX "/%s", json_string_value(json_object_get(c, "jpg_0")));
        snprintf(p1, sizeof p1, FIX "/%s", json_string_value(json_object_get(c, "jpg_1")));
        const double label = json_number_value(json_object_get(c, "label_0"));
        const int res = (int)json_integer_value(json_object_get(c, "resolution"));
        const int flip = (int)json_integer_value(json_object_get(c, "flip"));
        json_t *cr = json_object_get(c, "crop");
        int y1 = -1, x1 = -1;
        if (json_is_array(cr)) {
            y1 = (int)json_integer_value(json_array_get(cr, 0));
            x1 = (int)json_integer_value(json_array_get(cr, 1));
        }
        mapo_image a, b;
        if (image_load(&a, p0) || image_load(&b, p1)) fail_msg("%s", mapo_last_error());
        const size_t n = (size_t)3 * res * res;
        float *ch = malloc(n * sizeof(float)), *rj = malloc(n * sizeof(float));
        int ohw[2], cyx[2];
        if (prep_pair_fixed(ch, rj, ohw, cyx, &a, &b, label == 0.0, res, flip, y1, x1))
            fail_msg("%s: %s", name, mapo_last_error());
        float *ref = malloc(n * sizeof(float));
        const char *parts[2] = {"chosen", "rejected"};
        float *got[2] = {ch, rj};
        for (int k = 0; k < 2; k++) {
            snprintf(key, sizeof key, "%s.%s", name, parts[k]);
            const int64_t shape[3] = {3, res, res};
            if (st_read_f32_shape(&f, key, ref, 3, shape)) fail_msg("%s", mapo_last_error());
            const double e = rel_err_f32(got[k], ref, (int64_t)n);
            printf("  prep %-20s %-8s rel %.2e\n", name, parts[k], e);
            if (!(e <= TOL_PREP)) fail_msg("%s %s: rel err %.3e > %.0e", name, parts[k], e, TOL_PREP);
            worst = fmax(worst, e);
        }
        const char *ints[2] = {"orig_hw", "crop_yx"};
        int *vals[2] = {ohw, cyx};
        for (int k = 0; k < 2; k++) {
            snprintf(key, sizeof key, "%s.%s", name, ints[k]);
            const st_tensor *t = st_find(&f, key);
            assert_non_null(t);
            const int32_t *v = t->data;
            if (v[0] != vals[k][0] || v[1] != vals[k][1])
                fail_msg("%s %s: (%d, %d), torchvision (%d, %d)", name, ints[k], vals[k][0],
                         vals[k][1], v[0], v[1]);
        }
        free(ch), free(rj), free(ref);
        image_free(&a), image_free(&b);
    }
    printf("  prep: worst rel %.2e over %zu pairs\n", worst, json_array_size(cases));
    assert_true(json_array_size(cases) >= 6);
    json_decref(cases);
    st_close(&f);
}

/* prep_pair draws flip then crop from the stream; check against the fixed-draw version */
static void test_prep_rng(void **state) {
    (void)state;
    mapo_image a, b;
    if (image_load(&a, FIX "/prep/big_reduction_0.jpg") ||
        image_load(&b, FIX "/prep/big_reduction_1.jpg"))
        fail_msg("%s", mapo_last_error());
    const int res = 12, n = 3 * res * res;
    float c1[3 * 12 * 12], r1[3 * 12 * 12], c2[3 * 12 * 12], r2[3 * 12 * 12];
    int ohw[2], cyx[2], ohw2[2], cyx2[2];
    int flips = 0, ys = 0, xs = 0;
    for (int idx = 0; idx < 24; idx++) {
        prep_cfg cfg = {res, 1, 0};
        philox r;
        philox_init(&r, 1234, 99, (uint64_t)idx);
        assert_int_equal(prep_pair(c1, r1, ohw, cyx, &a, &b, idx & 1, &cfg, &r), 0);
        /* replay the draws */
        philox_init(&r, 1234, 99, (uint64_t)idx);
        const int flip = philox_uniform(&r) < 0.5;
        int oh, ow;
        assert_int_equal(prep_resize_size(a.h, a.w, res, &oh, &ow), 0);
        const int y1 = (int)philox_below(&r, (uint32_t)(oh - res + 1));
        const int x1 = (int)philox_below(&r, (uint32_t)(ow - res + 1));
        assert_int_equal(prep_pair_fixed(c2, r2, ohw2, cyx2, &a, &b, idx & 1, res, flip, y1, x1), 0);
        assert_memory_equal(c1, c2, sizeof(float) * n);
        assert_memory_equal(r1, r2, sizeof(float) * n);
        assert_int_equal(cyx[0], y1);
        assert_int_equal(cyx[1], x1);
        assert_int_equal(ohw[0], a.h);
        assert_int_equal(ohw[1], a.w);
        flips += flip;
        ys += y1 > 0;
        xs += x1 > 0;
        /* chosen/rejected swap with the label */
        assert_int_equal(prep_pair_fixed(c2, r2, NULL, NULL, &a, &b, !(idx & 1), res, flip, y1, x1), 0);
        assert_memory_equal(c1, r2, sizeof(float) * n);
        assert_memory_equal(r1, c2, sizeof(float) * n);
    }
    assert_true(flips > 0 && flips < 24);
    assert_true(xs > 0);
    (void)ys;
    /* no randomness: NULL stream allowed; randomness without a stream: error */
    prep_cfg fixed = {res, 0, 1};
    assert_int_equal(prep_pair(c1, r1, ohw, cyx, &a, &b, 0, &fixed, NULL), 0);
    prep_cfg rnd = {res, 0, 0};
    assert_int_equal(prep_pair(c1, r1, ohw, cyx, &a, &b, 0, &rnd, NULL), -1);
    /* flipping mirrors the crop window: flip with crop x1 = mirror of no flip at ow-res-x1 */
    int oh, ow;
    assert_int_equal(prep_resize_size(a.h, a.w, res, &oh, &ow), 0);
    assert_int_equal(prep_image(c1, &a, res, 1, 0, 2, NULL), 0);
    assert_int_equal(prep_image(c2, &a, res, 0, 0, ow - res - 2, NULL), 0);
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < res; y++)
            for (int x = 0; x < res; x++)
                assert_true(c1[(ch * res + y) * res + x] == c2[(ch * res + y) * res + res - 1 - x]);
    /* computing only the crop window is bit-identical to ToTensor + full resize + flip + crop */
    {
        float *chw = malloc(sizeof(float) * 3 * a.w * a.h), *full = malloc(sizeof(float) * 3 * oh * ow);
        image_to_chw(&a, chw);
        assert_int_equal(resize_bilinear_aa(full, chw, 3, a.h, a.w, oh, ow), 0);
        for (int fl = 0; fl < 2; fl++) {
            const int y1 = oh - res, x1 = (ow - res) / 3;
            assert_int_equal(prep_image(c1, &a, res, fl, y1, x1, NULL), 0);
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < res; y++)
                    for (int x = 0; x < res; x++) {
                        const int fx = fl ? ow - 1 - (x1 + x) : x1 + x;
                        const float v = full[((size_t)ch * oh + y1 + y) * ow + fx];
                        assert_true(c1[(ch * res + y) * res + x] == (v - 0.5f) / 0.5f);
                    }
        }
        free(chw);
        free(full);
    }
    /* a crop outside the resized image is refused */
    assert_int_equal(prep_image(c1, &a, res, 0, 0, ow - res + 1, NULL), -1);
    assert_int_equal(prep_image(c1, &a, res, 0, oh - res + 1, 0, NULL), -1);
    image_free(&a), image_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_parity),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_png_roundtrip_and_grid),
        cmocka_unit_test(test_pil_bicubic),
        cmocka_unit_test(test_bilinear_aa),
        cmocka_unit_test(test_resize_size),
        cmocka_unit_test(test_prep_parity),
        cmocka_unit_test(test_prep_rng),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
