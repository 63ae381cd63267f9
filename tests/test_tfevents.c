/* test_tfevents.c -- TensorBoard event files against tensorboard's own writer.
 *
 * Fixtures (tests/fixtures/tfevents/, tools/make_tfevents_fixtures.py): the script runs this
 * binary with MAPO_TFEVENTS_SAMPLE_DIR=<dir>, which writes the sample streams below (fixed
 * wall_time) into <dir>/full and <dir>/scalars and exits; it reads them back with
 * tensorboard's EventAccumulator (tags, steps, values, wall times, images decoded to the
 * written pixels), then writes the same Events with tensorboard's protobuf classes and its
 * RecordWriter into expect.tfevents (scalars and images) and expect_scalars.tfevents, and
 * the PNG payloads into img_*.png.
 *
 * Byte equality: the scalar stream must equal tensorboard's bytes exactly. The full stream
 * embeds PNGs from libpng + zlib; the fixture's PNG bytes are those our encoder produced when
 * the fixture was made, and tensorboard's writer wrapped them. A different zlib (zlib-ng, a
 * new deflate strategy) may compress the same pixels to other (equally valid) bytes; then the
 * full stream cannot match byte for byte, so the test says so and checks the records instead:
 * same count, the non-image records byte-identical, the image records field by field (wall
 * time, step, tag, height, width, colorspace; a small protobuf reader below), the fixture's
 * PNGs decoding to the sample pixels and ours being what our encoder makes of them. With the
 * fixture's zlib the whole file is compared byte for byte. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/image.h"
#include "mapo/tfevents.h"
#include "testutil.h"

#define FIX "tests/fixtures/tfevents"
#define WALL 1700000000.125

static char g_dir[64];

/* ---------------------------------------------------------------- the sample streams */

/* Pixel patterns (the script computes the same). */
static uint8_t pix(int x, int y, int c, int ch) {
    return (uint8_t)((x * 37 + y * 91 + c * 101 + ch * 13) & 255);
}

typedef struct {
    const char *tag;
    int w, h, ch;
    long long step;
} sample_image;

static const sample_image g_images[] = {
    {"img/gray", 5, 3, 1, 5}, {"img/gray_alpha", 4, 2, 2, 5},
    {"img/rgb", 7, 4, 3, 6},  {"img/rgba", 3, 2, 4, 6},
};
#define N_IMAGES (int)(sizeof g_images / sizeof *g_images)

static uint8_t *image_pixels(const sample_image *s) {
    uint8_t *p = malloc((size_t)s->w * s->h * s->ch);
    for (int y = 0; y < s->h; y++)
        for (int x = 0; x < s->w; x++)
            for (int c = 0; c < s->ch; c++) p[((size_t)y * s->w + x) * s->ch + c] = pix(x, y, c, s->ch);
    return p;
}

/* 0 or -1; the same events in the same order as make_tfevents_fixtures.py's SCALARS / IMAGES */
static int write_sample(const char *dir, int with_images, char *path_out, size_t path_cap) {
    tfevents_writer *w = tfevents_open(dir, WALL);
    if (!w) return -1;
    int rc = 0;
    rc |= tfevents_scalar(w, "loss", 0, 0.5);
    rc |= tfevents_scalar(w, "loss", 1, 0.25);
    rc |= tfevents_scalar(w, "train/lr", 1, 1e-5);
    rc |= tfevents_scalar(w, "zero", 2, 0.0);
    rc |= tfevents_scalar(w, "negzero", 2, -0.0);
    rc |= tfevents_scalar(w, "big_step", 1LL << 40, 3.0);
    rc |= tfevents_scalar(w, "neg_step", -3, -1.5);
    rc |= tfevents_scalar(w, "inf", 3, INFINITY);
    rc |= tfevents_scalar(w, "nan", 3, NAN);
    rc |= tfevents_scalar(w, "unicode/\xce\xbb\xe2\x9c\x93", 4, 2.0);
    rc |= tfevents_scalar(w, "rounding", 4, 0.1); /* float32 0.1 */
    for (int i = 0; with_images && i < N_IMAGES; i++) {
        uint8_t *p = image_pixels(&g_images[i]);
        rc |= tfevents_image(w, g_images[i].tag, g_images[i].step, g_images[i].w, g_images[i].h,
                             g_images[i].ch, p);
        free(p);
    }
    rc |= tfevents_scalar(w, "loss", 7, 0.125);
    if (path_out) snprintf(path_out, path_cap, "%s", tfevents_path(w));
    rc |= tfevents_close(w);
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------- helpers */


static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

typedef struct {
    size_t off, len; /* payload */
} rec;

/* Splits a TFRecord file, checking both CRCs of every record; returns the record count or
 * fails. recs may be NULL. */
static int parse_records(const uint8_t *b, size_t n, rec *recs, int cap) {
    size_t p = 0;
    int k = 0;
    while (p < n) {
        if (n - p < 12) fail_msg("truncated record header at %zu", p);
        const uint64_t len = le(b + p, 8);
        if ((uint32_t)le(b + p + 8, 4) != tfevents_masked_crc32c(b + p, 8))
            fail_msg("bad length CRC at %zu", p);
        if (len > n - p - 12 || n - p - 12 - len < 4) fail_msg("truncated record at %zu", p);
        if ((uint32_t)le(b + p + 12 + len, 4) != tfevents_masked_crc32c(b + p + 12, len))
            fail_msg("bad data CRC at %zu", p);
        if (recs && k < cap) recs[k] = (rec){p + 12, (size_t)len};
        k++;
        p += 16 + len;
    }
    return k;
}

/* ---- a minimal protobuf reader for image Events (the fallback comparison) */

typedef struct {
    double wall_time;
    int64_t step, height, width, colorspace;
    const uint8_t *tag, *png;
    size_t tag_n, png_n;
} image_event;

static uint64_t pb_varint(const uint8_t *b, size_t n, size_t *p) {
    uint64_t v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (*p >= n) fail_msg("truncated varint");
        const uint8_t c = b[(*p)++];
        v |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) return v;
    }
    fail_msg("bad varint");
    return 0;
}

/* Calls f(field, wire, value or length, pointer to the bytes) for each field of a message. */
static void pb_walk(const uint8_t *b, size_t n, void (*f)(image_event *, int, int, uint64_t,
                                                         const uint8_t *), image_event *e) {
    size_t p = 0;
    while (p < n) {
        const uint64_t key = pb_varint(b, n, &p);
        const int field = (int)(key >> 3), wire = (int)(key & 7);
        uint64_t v = 0;
        const uint8_t *d = NULL;
        if (wire == 0) v = pb_varint(b, n, &p);
        else if (wire == 1 || wire == 5) {
            const size_t k = wire == 1 ? 8 : 4;
            if (n - p < k) fail_msg("truncated fixed field");
            d = b + p;
            p += k;
        } else if (wire == 2) {
            v = pb_varint(b, n, &p);
            if (v > n - p) fail_msg("truncated bytes field");
            d = b + p;
            p += v;
        } else fail_msg("wire type %d", wire);
        f(e, field, wire, v, d);
    }
}

static void on_image(image_event *e, int field, int wire, uint64_t v, const uint8_t *d) {
    (void)wire;
    if (field == 1) e->height = (int64_t)v;
    if (field == 2) e->width = (int64_t)v;
    if (field == 3) e->colorspace = (int64_t)v;
    if (field == 4) e->png = d, e->png_n = v;
}
static void on_value(image_event *e, int field, int wire, uint64_t v, const uint8_t *d) {
    (void)wire;
    if (field == 1) e->tag = d, e->tag_n = v;
    if (field == 4) pb_walk(d, v, on_image, e);
}
static void on_summary(image_event *e, int field, int wire, uint64_t v, const uint8_t *d) {
    (void)wire;
    if (field == 1) pb_walk(d, v, on_value, e);
}
static void on_event(image_event *e, int field, int wire, uint64_t v, const uint8_t *d) {
    if (field == 1 && wire == 1) memcpy(&e->wall_time, d, 8);
    if (field == 2) e->step = (int64_t)v;
    if (field == 5) pb_walk(d, v, on_summary, e);
}

static image_event parse_image_event(const uint8_t *b, size_t n) {
    image_event e;
    memset(&e, 0, sizeof e);
    pb_walk(b, n, on_event, &e);
    if (!e.png || !e.tag) fail_msg("not an image event");
    return e;
}

static void rm_tree(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* ---------------------------------------------------------------- CRC32C */

static void test_crc32c_vectors(void **state) {
    (void)state;
    /* the check value of CRC-32C and RFC 3720 (iSCSI) B.4 */
    assert_int_equal(tfevents_crc32c("123456789", 9), 0xE3069283u);
    assert_int_equal(tfevents_crc32c("", 0), 0);
    uint8_t b[32];
    memset(b, 0, 32);
    assert_int_equal(tfevents_crc32c(b, 32), 0x8A9136AAu);
    memset(b, 0xFF, 32);
    assert_int_equal(tfevents_crc32c(b, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++) b[i] = (uint8_t)i;
    assert_int_equal(tfevents_crc32c(b, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++) b[i] = (uint8_t)(31 - i);
    assert_int_equal(tfevents_crc32c(b, 32), 0x113FDB5Cu);
    /* masked, as tensorboard's pywrap_tensorflow.masked_crc32c computes them */
    assert_int_equal(tfevents_masked_crc32c("123456789", 9), 0xC78AB0E5u);
    memset(b, 0, 8);
    assert_int_equal(tfevents_masked_crc32c(b, 8), 0x07980329u);
}

/* ---------------------------------------------------------------- the file */

static void test_file_name_and_version(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/name/a/b", g_dir); /* parents are created */
    tfevents_writer *w = tfevents_open(dir, 0);
    if (!w) fail_msg("%s", mapo_last_error());
    char path[512];
    snprintf(path, sizeof path, "%s", tfevents_path(w));
    const char *base = strrchr(path, '/') + 1;
    assert_int_equal(strncmp(path, dir, strlen(dir)), 0);
    /* events.out.tfevents.<10 digits>.<hostname>.<pid>.<n> */
    assert_int_equal(strncmp(base, "events.out.tfevents.", 20), 0);
    const char *t = base + 20;
    for (int i = 0; i < 10; i++) assert_true(t[i] >= '0' && t[i] <= '9');
    assert_int_equal(t[10], '.');
    char host[256], tail[300];
    assert_int_equal(gethostname(host, sizeof host), 0);
    snprintf(tail, sizeof tail, ".%s.%ld.", host, (long)getpid());
    assert_int_equal(strncmp(t + 10, tail, strlen(tail)), 0);
    const long long now = (long long)time(NULL), ft = atoll(t);
    assert_true(ft <= now && ft >= now - 60);
    /* a second writer in the same folder gets its own file (the last number counts up) */
    tfevents_writer *w2 = tfevents_open(dir, 0);
    if (!w2) fail_msg("%s", mapo_last_error());
    assert_string_not_equal(tfevents_path(w), tfevents_path(w2));
    assert_int_equal(tfevents_close(w2), 0);

    /* the file version record is in the file before anything else is logged */
    size_t n;
    uint8_t *b = read_all(path, &n);
    rec r[2];
    assert_int_equal(parse_records(b, n, r, 2), 1);
    /* Event: 09 <wall_time 8 bytes> 1a 0d "brain.Event:2" 52 06 0a 04 "mapo" */
    assert_int_equal(r[0].len, 9 + 15 + 8);
    assert_int_equal(b[r[0].off], 0x09);
    double wt;
    memcpy(&wt, b + r[0].off + 1, 8);
    assert_true(wt >= (double)now - 60 && wt <= (double)now + 60);
    assert_memory_equal(b + r[0].off + 9, "\x1a\x0d" "brain.Event:2" "\x52\x06\x0a\x04" "mapo", 23);
    free(b);
    assert_int_equal(tfevents_scalar(w, "x", 1, 1.0), 0);
    assert_int_equal(tfevents_flush(w), 0);
    b = read_all(path, &n); /* written without waiting for the close */
    assert_int_equal(parse_records(b, n, NULL, 0), 2);
    free(b);
    assert_int_equal(tfevents_close(w), 0);
}

/* The scalar stream equals tensorboard's RecordWriter bytes exactly. */
static void test_scalars_match_tensorboard(void **state) {
    (void)state;
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/scalars", g_dir);
    if (write_sample(dir, 0, path, sizeof path)) fail_msg("%s", mapo_last_error());
    size_t n, m;
    uint8_t *got = read_all(path, &n), *want = read_all(FIX "/expect_scalars.tfevents", &m);
    assert_int_equal(parse_records(want, m, NULL, 0), 13);
    assert_int_equal(n, m);
    assert_memory_equal(got, want, n);
    free(got);
    free(want);
}

/* The stream with images: byte for byte when our PNG encoder reproduces the fixture's PNGs
 * (same zlib); otherwise record by record (see the top of the file). */
static void test_images_match_tensorboard(void **state) {
    (void)state;
    int png_same = 1;
    uint8_t *fix_png[N_IMAGES];
    size_t fix_n[N_IMAGES];
    for (int i = 0; i < N_IMAGES; i++) {
        char p[256];
        snprintf(p, sizeof p, FIX "/img_%d.png", i);
        fix_png[i] = read_all(p, &fix_n[i]);
        uint8_t *px = image_pixels(&g_images[i]), *png;
        size_t png_n;
        if (image_encode_png_channels(px, g_images[i].w, g_images[i].h, g_images[i].ch, &png,
                                      &png_n))
            fail_msg("%s", mapo_last_error());
        if (png_n != fix_n[i] || memcmp(png, fix_png[i], png_n)) png_same = 0;
        /* the fixture's PNG holds our pixels (RGB view: gray replicated, alpha dropped) */
        mapo_image im;
        if (image_decode(&im, fix_png[i], fix_n[i], "fixture png")) fail_msg("%s", mapo_last_error());
        assert_int_equal(im.w, g_images[i].w);
        assert_int_equal(im.h, g_images[i].h);
        for (int k = 0; k < im.w * im.h; k++)
            for (int c = 0; c < 3; c++) {
                const int src = g_images[i].ch >= 3 ? c : 0;
                assert_int_equal(im.px[3 * k + c], px[k * g_images[i].ch + src]);
            }
        image_free(&im);
        free(png);
        free(px);
    }
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/full", g_dir);
    if (write_sample(dir, 1, path, sizeof path)) fail_msg("%s", mapo_last_error());
    size_t n, m;
    uint8_t *got = read_all(path, &n), *want = read_all(FIX "/expect.tfevents", &m);
    rec rg[32], rw[32];
    const int kg = parse_records(got, n, rg, 32), kw = parse_records(want, m, rw, 32);
    assert_int_equal(kw, 13 + N_IMAGES);
    assert_int_equal(kg, kw);
    if (png_same) {
        assert_int_equal(n, m);
        assert_memory_equal(got, want, n);
    } else {
        print_message("note: this zlib compresses the sample PNGs differently from the fixture's; "
                      "comparing the image records field by field and their PNGs by pixels\n");
        for (int k = 0; k < kg; k++) {
            const int img = k - 12; /* image records follow the 12 first records */
            if (img < 0 || img >= N_IMAGES) {
                assert_int_equal(rg[k].len, rw[k].len);
                assert_memory_equal(got + rg[k].off, want + rw[k].off, rg[k].len);
                continue;
            }
            const image_event a = parse_image_event(got + rg[k].off, rg[k].len),
                              b = parse_image_event(want + rw[k].off, rw[k].len);
            assert_true(a.wall_time == b.wall_time && a.wall_time == WALL);
            assert_int_equal(a.step, b.step);
            assert_int_equal(a.height, b.height);
            assert_int_equal(a.width, b.width);
            assert_int_equal(a.colorspace, b.colorspace);
            assert_int_equal(a.tag_n, b.tag_n);
            assert_memory_equal(a.tag, b.tag, a.tag_n);
            assert_int_equal(b.png_n, fix_n[img]);
            assert_memory_equal(b.png, fix_png[img], b.png_n);
            /* our PNG holds the pixels in the declared layout */
            uint8_t *px = image_pixels(&g_images[img]), *png;
            size_t png_n;
            assert_int_equal(image_encode_png_channels(px, g_images[img].w, g_images[img].h,
                                                       g_images[img].ch, &png, &png_n), 0);
            assert_int_equal(a.png_n, png_n);
            assert_memory_equal(a.png, png, png_n);
            free(png);
            free(px);
        }
    }
    for (int i = 0; i < N_IMAGES; i++) free(fix_png[i]);
    free(got);
    free(want);
}

/* ---------------------------------------------------------------- errors */

static void test_unwritable_folder(void **state) {
    (void)state;
    char file[256], dir[300];
    snprintf(file, sizeof file, "%s/plain_file", g_dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    /* a folder below a regular file cannot exist (refused even for root) */
    snprintf(dir, sizeof dir, "%s/sub/logs", file);
    mapo_error("none");
    assert_null(tfevents_open(dir, 0));
    const char *e = mapo_last_error();
    assert_non_null(strstr(e, "cannot create the TensorBoard log folder"));
    assert_non_null(strstr(e, "plain_file/sub"));
    assert_null(strchr(e, '\n'));
    /* the log folder is a regular file */
    assert_null(tfevents_open(file, 0));
    assert_non_null(strstr(mapo_last_error(), "not a folder"));
    assert_null(tfevents_open("", 0));
}

static void test_bad_arguments(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/bad", g_dir);
    tfevents_writer *w = tfevents_open(dir, WALL);
    if (!w) fail_msg("%s", mapo_last_error());
    struct stat st0, st1;
    assert_int_equal(stat(tfevents_path(w), &st0), 0);
    uint8_t px[12] = {0};
    assert_int_equal(tfevents_scalar(w, "", 1, 1.0), -1);
    assert_non_null(strstr(mapo_last_error(), "non-empty tag"));
    assert_int_equal(tfevents_scalar(w, "bad\xff", 1, 1.0), -1);
    assert_non_null(strstr(mapo_last_error(), "UTF-8"));
    assert_int_equal(tfevents_scalar(w, "surrogate\xed\xa0\x80", 1, 1.0), -1);
    assert_int_equal(tfevents_scalar(w, "overlong\xc0\xaf", 1, 1.0), -1);
    assert_int_equal(tfevents_scalar(w, "cut\xe2\x9c", 1, 1.0), -1);
    assert_int_equal(tfevents_image(w, "img", 1, 2, 2, 5, px), -1);
    assert_non_null(strstr(mapo_last_error(), "5 channels"));
    assert_int_equal(tfevents_image(w, "img", 1, 0, 2, 3, px), -1);
    assert_non_null(strstr(mapo_last_error(), "empty"));
    assert_int_equal(tfevents_image(w, "img", 1, 2, 2, 3, NULL), -1);
    assert_int_equal(stat(tfevents_path(w), &st1), 0);
    assert_int_equal(st0.st_size, st1.st_size); /* nothing written */
    assert_int_equal(tfevents_close(w), 0);
    assert_int_equal(tfevents_close(NULL), 0);
}

/* A write that fails half-way (file size limit: EFBIG, the way a full disk fails) returns -1
 * with one line naming the file, tag and step; the partial record is cut off, so the file
 * still reads as whole records, and writing works again once there is room. */
static void test_write_error(void **state) {
    (void)state;
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/full_disk", g_dir);
    tfevents_writer *w = tfevents_open(dir, WALL);
    if (!w) fail_msg("%s", mapo_last_error());
    snprintf(path, sizeof path, "%s", tfevents_path(w));
    assert_int_equal(tfevents_scalar(w, "loss", 1, 1.0), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    const off_t good = st.st_size;

    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)good + 100; /* room for part of the image record */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    uint8_t px[64 * 64 * 3];
    for (size_t i = 0; i < sizeof px; i++) px[i] = (uint8_t)(i * 2654435761u >> 13);
    const int rc = tfevents_image(w, "samples", 12, 64, 64, 3, px);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mapo_last_error());
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_sig);

    assert_int_equal(rc, -1);
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, "tag \"samples\" step 12"));
    assert_non_null(strstr(msg, strerror(EFBIG)));
    assert_null(strchr(msg, '\n'));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, good); /* the partial record is gone */
    /* room again: logging goes on and the file holds whole records */
    assert_int_equal(tfevents_scalar(w, "loss", 13, 0.5), 0);
    assert_int_equal(tfevents_image(w, "samples", 13, 64, 64, 3, px), 0);
    assert_int_equal(tfevents_close(w), 0);
    size_t n;
    uint8_t *b = read_all(path, &n);
    assert_int_equal(parse_records(b, n, NULL, 0), 4);
    free(b);
}

/* ---------------------------------------------------------------- main */

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/mapo_tfevents_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    rm_tree(g_dir);
    return 0;
}

int main(void) {
    /* tools/make_tfevents_fixtures.py: write the sample streams and stop */
    const char *sample = getenv("MAPO_TFEVENTS_SAMPLE_DIR");
    if (sample && *sample) {
        char d[1024];
        snprintf(d, sizeof d, "%s/full", sample);
        if (write_sample(d, 1, NULL, 0)) return fprintf(stderr, "%s\n", mapo_last_error()), 1;
        snprintf(d, sizeof d, "%s/scalars", sample);
        if (write_sample(d, 0, NULL, 0)) return fprintf(stderr, "%s\n", mapo_last_error()), 1;
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vectors),
        cmocka_unit_test(test_file_name_and_version),
        cmocka_unit_test(test_scalars_match_tensorboard),
        cmocka_unit_test(test_images_match_tensorboard),
        cmocka_unit_test(test_unwritable_folder),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_write_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
