/* image.c -- JPEG / PNG decoding like PIL's convert("RGB"), PNG encoding, grids, PIL's
 * bicubic resize, and the preprocessing of the official Diffusion-DPO / MaPO scripts.
 * See include/mapo/image.h for the exact behaviour promised. */
#include "mapo/image.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"

#define MAX_JPEG_SCANS 1000  /* libjpeg-turbo's advice against progressive-scan bombs */
#define MAX_FILE_BYTES (1LL << 30)
#define JPEG_MAX_PIXELS_PER_BYTE 512 /* one bit per 8x8 block (docs/RELIABILITY.md) */
/* libjpeg's own memory beside the output image: the whole-image coefficient buffers of a
   progressive or multi-scan file (2 bytes a coefficient). An arithmetic-coded file can declare
   16384x16384 in 2 KB; without this it got up to 1.5 GB of buffers to decode garbage into.
   512 MiB is a progressive 4:2:0 file of 179 megapixels, 4:4:4 of 89. */
#define JPEG_MAX_WORK_BYTES (512L << 20)

/* ------------------------------------------------------------------ basics */

image_format image_detect(const uint8_t *buf, size_t len) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (!buf) return IMAGE_FMT_UNKNOWN;
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return IMAGE_FMT_JPEG;
    if (len >= 8 && memcmp(buf, png_sig, 8) == 0) return IMAGE_FMT_PNG;
    return IMAGE_FMT_UNKNOWN;
}

static int check_dims(long long w, long long h, const char *what) {
    if (w <= 0 || h <= 0)
        return mapo_error("%s: image size %lldx%lld is empty", what, w, h);
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE)
        return mapo_error("%s: image size %lldx%lld exceeds the limit of %d pixels per side",
                          what, w, h, IMAGE_MAX_SIDE);
    if (w * h > IMAGE_MAX_PIXELS)
        return mapo_error("%s: image size %lldx%lld exceeds the limit of %lld pixels", what, w,
                          h, (long long)IMAGE_MAX_PIXELS);
    return 0;
}

int image_alloc(mapo_image *im, int w, int h, const char *what) {
    memset(im, 0, sizeof *im);
    if (check_dims(w, h, what ? what : "image")) return -1;
    im->px = xcalloc((size_t)w * (size_t)h, 3);
    im->w = w;
    im->h = h;
    im->c = 3;
    return 0;
}

void image_free(mapo_image *im) {
    if (!im) return;
    free(im->px);
    memset(im, 0, sizeof *im);
}

/* ------------------------------------------------------------------ JPEG */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
} jerr_mgr;

static void jerr_exit(j_common_ptr cinfo) {
    jerr_mgr *e = (jerr_mgr *)cinfo->err;
    const int code = cinfo->err->msg_code;
    if (code == JERR_NO_BACKING_STORE || code == JERR_OUT_OF_MEMORY)
        snprintf(e->msg, sizeof e->msg, "decoding it needs more than %ld MiB of JPEG working "
                 "memory (a progressive or multi-scan file this large)", JPEG_MAX_WORK_BYTES >> 20);
    else
        (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}
/* Warnings (corrupt entropy data, extraneous bytes) are ignored, as Pillow does. */
static void jerr_output(j_common_ptr cinfo) { (void)cinfo; }

static void jsrc_init(j_decompress_ptr c) { (void)c; }
/* Running out of data is an error (Pillow: "image file is truncated"), not the fake EOI
 * that jpeg_mem_src inserts. */
static boolean jsrc_fill(j_decompress_ptr c) {
    jerr_mgr *e = (jerr_mgr *)c->err;
    snprintf(e->msg, sizeof e->msg, "JPEG data is truncated (the file ends early)");
    longjmp(e->jb, 1);
    return FALSE;
}
static void jsrc_skip(j_decompress_ptr c, long n) {
    if (n <= 0) return;
    if ((unsigned long)n > c->src->bytes_in_buffer) jsrc_fill(c);
    c->src->next_input_byte += n;
    c->src->bytes_in_buffer -= (size_t)n;
}
static void jsrc_term(j_decompress_ptr c) { (void)c; }

static void jprogress(j_common_ptr c) {
    if (!c->is_decompressor) return;
    j_decompress_ptr d = (j_decompress_ptr)c;
    if (d->input_scan_number > MAX_JPEG_SCANS) {
        jerr_mgr *e = (jerr_mgr *)c->err;
        snprintf(e->msg, sizeof e->msg, "JPEG has more than %d scans", MAX_JPEG_SCANS);
        longjmp(e->jb, 1);
    }
}

/* Pillow's MULDIV255 and cmyk2rgb */
static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

typedef struct {
    struct jpeg_decompress_struct ci;
    jerr_mgr err;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr prog;
    uint8_t *row;   /* scratch row for gray / CMYK */
    uint8_t *px;    /* output being filled */
} jctx;

static int decode_jpeg(mapo_image *im, const uint8_t *buf, size_t len, const char *what) {
    jctx *x = xcalloc(1, sizeof *x);
    x->ci.err = jpeg_std_error(&x->err.pub);
    x->err.pub.error_exit = jerr_exit;
    x->err.pub.output_message = jerr_output;
    if (setjmp(x->err.jb)) {
        mapo_error("%s: cannot decode JPEG: %s", what, x->err.msg);
        jpeg_destroy_decompress(&x->ci);
        free(x->row);
        free(x->px);
        free(x);
        return -1;
    }
    jpeg_create_decompress(&x->ci);
    x->ci.mem->max_memory_to_use = JPEG_MAX_WORK_BYTES;
    x->src.init_source = jsrc_init;
    x->src.fill_input_buffer = jsrc_fill;
    x->src.skip_input_data = jsrc_skip;
    x->src.resync_to_restart = jpeg_resync_to_restart;
    x->src.term_source = jsrc_term;
    x->src.next_input_byte = buf;
    x->src.bytes_in_buffer = len;
    x->ci.src = &x->src;
    x->prog.progress_monitor = jprogress;
    x->ci.progress = &x->prog;

    if (jpeg_read_header(&x->ci, TRUE) != JPEG_HEADER_OK) {
        snprintf(x->err.msg, sizeof x->err.msg, "no image in the data (tables only)");
        longjmp(x->err.jb, 1);
    }
    const long long w = x->ci.image_width, h = x->ci.image_height;
    const int nc = x->ci.num_components;
    int bad = check_dims(w, h, what);
    /* Huffman-coded data spends at least one bit on every 8x8 block of the full-resolution
       component (its DC code; baseline spends two), so len bytes hold at most
       JPEG_MAX_PIXELS_PER_BYTE * len pixels. A header declaring more lies: refused before the
       image (and a progressive file's coefficient buffers, 6 bytes a pixel) is allocated.
       Arithmetic coding can go below a bit per block and is bounded only by the caps. */
    if (!bad && !x->ci.arith_code && (double)w * (double)h > JPEG_MAX_PIXELS_PER_BYTE * (double)len)
        bad = mapo_error("%s: JPEG declares %lldx%lld pixels but holds only %zu bytes (a JPEG "
                         "holds at most %d pixels per byte)", what, w, h, len,
                         JPEG_MAX_PIXELS_PER_BYTE);
    if (bad) {
        /* keep the dimension message; clean up without the JPEG prefix */
        jpeg_destroy_decompress(&x->ci);
        free(x);
        return -1;
    }
    if (x->ci.data_precision != 8) {
        snprintf(x->err.msg, sizeof x->err.msg, "cannot handle %d-bit samples",
                 x->ci.data_precision);
        longjmp(x->err.jb, 1);
    }
    if (nc == 1)
        x->ci.out_color_space = JCS_GRAYSCALE;
    else if (nc == 3)
        x->ci.out_color_space = JCS_RGB;
    else if (nc == 4)
        x->ci.out_color_space = JCS_CMYK;
    else {
        snprintf(x->err.msg, sizeof x->err.msg, "cannot handle %d components", nc);
        longjmp(x->err.jb, 1);
    }
    /* libjpeg defaults as Pillow uses them */
    x->ci.dct_method = JDCT_ISLOW;
    x->ci.do_fancy_upsampling = TRUE;

    jpeg_start_decompress(&x->ci);
    if ((long long)x->ci.output_width != w || (long long)x->ci.output_height != h ||
        x->ci.output_components != nc) {
        snprintf(x->err.msg, sizeof x->err.msg, "unexpected output geometry");
        longjmp(x->err.jb, 1);
    }
    x->px = xmalloc((size_t)w * (size_t)h * 3);
    if (nc != 3) x->row = xmalloc((size_t)w * (size_t)nc);
    while (x->ci.output_scanline < x->ci.output_height) {
        const size_t y = x->ci.output_scanline;
        uint8_t *dst = x->px + y * (size_t)w * 3;
        JSAMPROW rp = nc == 3 ? dst : x->row;
        if (jpeg_read_scanlines(&x->ci, &rp, 1) != 1) {
            snprintf(x->err.msg, sizeof x->err.msg, "decoder stopped at row %zu", y);
            longjmp(x->err.jb, 1);
        }
        if (nc == 1) {
            for (long long i = 0; i < w; i++) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = x->row[i];
        } else if (nc == 4) {
            /* Pillow: rawmode "CMYK;I" (Adobe polarity, inverted), then cmyk2rgb */
            for (long long i = 0; i < w; i++) {
                const uint8_t *s = x->row + 4 * i;
                const int c = 255 - s[0], m = 255 - s[1], yy = 255 - s[2], k = 255 - s[3];
                const int nk = 255 - k;
                int v;
                v = nk - muldiv255(c, nk);
                dst[3 * i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                v = nk - muldiv255(m, nk);
                dst[3 * i + 1] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                v = nk - muldiv255(yy, nk);
                dst[3 * i + 2] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    /* Like Pillow, do not require anything after the last scanline (no finish_decompress). */
    jpeg_destroy_decompress(&x->ci);
    im->w = (int)w;
    im->h = (int)h;
    im->c = 3;
    im->px = x->px;
    free(x->row);
    free(x);
    return 0;
}

/* ------------------------------------------------------------------ PNG */

typedef struct {
    const uint8_t *buf;
    size_t len, pos;
    char msg[256];
    uint8_t *rows;  /* interlaced: whole intermediate image */
    uint8_t *row;   /* non-interlaced: one row */
    png_bytep *rowp;
    uint8_t *px;
} pctx;

static void png_err_fn(png_structp p, png_const_charp msg) {
    pctx *x = png_get_error_ptr(p);
    snprintf(x->msg, sizeof x->msg, "%s", msg);
    png_longjmp(p, 1);
}
static void png_warn_fn(png_structp p, png_const_charp msg) {
    (void)p;
    (void)msg;
}
static void png_read_fn(png_structp p, png_bytep out, png_size_t n) {
    pctx *x = png_get_io_ptr(p);
    if (n > x->len - x->pos) png_error(p, "PNG data is truncated (the file ends early)");
    memcpy(out, x->buf + x->pos, n);
    x->pos += n;
}

/* one row of the transformed libpng output (ch channels, 8 bits, or 16-bit gray) to RGB */
static void png_row_to_rgb(uint8_t *dst, const uint8_t *s, int w, int ch, int gray16) {
    if (gray16) {
        for (int i = 0; i < w; i++) {
            const unsigned v = ((unsigned)s[2 * i] << 8) | s[2 * i + 1];
            dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = (uint8_t)(v > 255 ? 255 : v);
        }
        return;
    }
    switch (ch) {
    case 1:
        for (int i = 0; i < w; i++) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = s[i];
        break;
    case 2:
        for (int i = 0; i < w; i++) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = s[2 * i];
        break;
    case 3: memcpy(dst, s, (size_t)w * 3); break;
    default:
        for (int i = 0; i < w; i++) {
            dst[3 * i] = s[4 * i];
            dst[3 * i + 1] = s[4 * i + 1];
            dst[3 * i + 2] = s[4 * i + 2];
        }
    }
}

static int decode_png(mapo_image *im, const uint8_t *buf, size_t len, const char *what) {
    /* every chunk up to IEND must fit in the file: libpng allocates a chunk's declared length
       before reading it (past png_set_chunk_malloc_max it only warns), so a 300-byte file
       declaring a 1.8 GB iTXt chunk got a 1.8 GB buffer */
    for (size_t o = 8; o + 8 <= len;) {
        const size_t n = (size_t)buf[o] << 24 | (size_t)buf[o + 1] << 16 |
                         (size_t)buf[o + 2] << 8 | buf[o + 3];
        if (n > len - o - 8 || len - o - 8 - n < 4)
            return mapo_error("%s: cannot decode PNG: chunk '%.4s' declares %zu bytes but the "
                              "file has only %zu left", what, (const char *)buf + o + 4, n,
                              len - o - 8);
        if (!memcmp(buf + o + 4, "IEND", 4)) break;
        o += 12 + n;
    }
    pctx *x = xcalloc(1, sizeof *x);
    x->buf = buf;
    x->len = len;
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, x, png_err_fn, png_warn_fn);
    if (!p) {
        free(x);
        return mapo_error("%s: cannot create a PNG reader", what);
    }
    png_infop info = png_create_info_struct(p);
    if (!info) {
        png_destroy_read_struct(&p, NULL, NULL);
        free(x);
        return mapo_error("%s: cannot create a PNG reader", what);
    }
    /* volatile: examined after longjmp */
    volatile int dims_bad = 0;
    if (setjmp(png_jmpbuf(p))) {
        if (!dims_bad) mapo_error("%s: cannot decode PNG: %s", what, x->msg);
        png_destroy_read_struct(&p, &info, NULL);
        free(x->rows);
        free(x->row);
        free(x->rowp);
        free(x->px);
        free(x);
        return -1;
    }
    png_set_read_fn(p, x, png_read_fn);
    png_set_user_limits(p, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    png_set_chunk_malloc_max(p, 64u << 20);
    png_read_info(p, info);
    png_uint_32 w, h;
    int bit_depth, color_type, interlace;
    png_get_IHDR(p, info, &w, &h, &bit_depth, &color_type, &interlace, NULL, NULL);
    if (check_dims(w, h, what)) {
        dims_bad = 1;
        png_longjmp(p, 1);
    }
    /* raw (filtered) size of the image vs what deflate (at most ~1032:1) can hold */
    int src_ch = color_type == PNG_COLOR_TYPE_GRAY ? 1
                 : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                 : color_type == PNG_COLOR_TYPE_RGB ? 3
                 : color_type == PNG_COLOR_TYPE_RGB_ALPHA ? 4 : 1;
    const double raw = (double)h * (1.0 + ceil((double)w * src_ch * bit_depth / 8.0));
    if (raw > 1040.0 * (double)len + 65536.0) {
        mapo_error("%s: PNG declares %ux%u pixels (%.0f raw bytes) but holds only %zu bytes",
                   what, (unsigned)w, (unsigned)h, raw, len);
        dims_bad = 1;
        png_longjmp(p, 1);
    }
    const int gray16 = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16;
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(p);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(p);
    if (bit_depth == 16 && !gray16) png_set_strip_16(p); /* high byte, like "RGB;16B" */
    const int passes = png_set_interlace_handling(p);
    png_read_update_info(p, info);
    const int ch = png_get_channels(p, info);
    const size_t rowbytes = png_get_rowbytes(p, info);
    const size_t want = gray16 ? 2 * (size_t)w : (size_t)ch * w;
    if (ch < 1 || ch > 4 || rowbytes != want) {
        snprintf(x->msg, sizeof x->msg, "unexpected row layout (%d channels, %zu bytes)", ch,
                 rowbytes);
        png_longjmp(p, 1);
    }
    x->px = xmalloc((size_t)w * h * 3);
    if (passes > 1) {
        x->rows = xmalloc(rowbytes * h);
        x->rowp = xmalloc(sizeof(png_bytep) * h);
        for (png_uint_32 y = 0; y < h; y++) x->rowp[y] = x->rows + y * rowbytes;
        for (int pass = 0; pass < passes; pass++)
            for (png_uint_32 y = 0; y < h; y++) png_read_row(p, x->rowp[y], NULL);
        for (png_uint_32 y = 0; y < h; y++)
            png_row_to_rgb(x->px + (size_t)y * w * 3, x->rows + y * rowbytes, (int)w, ch, gray16);
    } else {
        x->row = xmalloc(rowbytes);
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(p, x->row, NULL);
            png_row_to_rgb(x->px + (size_t)y * w * 3, x->row, (int)w, ch, gray16);
        }
    }
    /* Like Pillow, nothing after the image data is required (no png_read_end). */
    png_destroy_read_struct(&p, &info, NULL);
    im->w = (int)w;
    im->h = (int)h;
    im->c = 3;
    im->px = x->px;
    free(x->rows);
    free(x->row);
    free(x->rowp);
    free(x);
    return 0;
}

int image_decode(mapo_image *im, const uint8_t *buf, size_t len, const char *what) {
    memset(im, 0, sizeof *im);
    if (!what) what = "image";
    switch (image_detect(buf, len)) {
    case IMAGE_FMT_JPEG: return decode_jpeg(im, buf, len, what);
    case IMAGE_FMT_PNG: return decode_png(im, buf, len, what);
    default:
        if (!buf || len == 0) return mapo_error("%s: no image data (0 bytes)", what);
        return mapo_error("%s: not a JPEG or PNG image (%zu bytes, starts %02x %02x %02x %02x)",
                          what, len, buf[0], len > 1 ? buf[1] : 0, len > 2 ? buf[2] : 0,
                          len > 3 ? buf[3] : 0);
    }
}

int image_load(mapo_image *im, const char *path) {
    memset(im, 0, sizeof *im);
    FILE *f = fopen(path, "rb");
    if (!f) return mapo_error("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return mapo_error("%s: not a regular file", path);
    }
    if (st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return mapo_error("%s: file of %lld bytes is larger than the 1 GiB limit for an image",
                          path, (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = xmalloc(n ? n : 1);
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return mapo_error("%s: short read (%zu of %zu bytes)", path, got, n);
    }
    int rc = image_decode(im, buf, n, path);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ PNG encoding */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    char msg[256];
} pwbuf;

static void pw_write(png_structp p, png_bytep data, png_size_t n) {
    pwbuf *b = png_get_io_ptr(p);
    if (n > SIZE_MAX / 2 - b->len) png_error(p, "output too large");
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        b->buf = xrealloc(b->buf, cap);
        b->cap = cap;
    }
    memcpy(b->buf + b->len, data, n);
    b->len += n;
}
static void pw_flush(png_structp p) { (void)p; }
static void pw_err(png_structp p, png_const_charp msg) {
    pwbuf *b = png_get_error_ptr(p);
    snprintf(b->msg, sizeof b->msg, "%s", msg);
    png_longjmp(p, 1);
}

int image_encode_png(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *out_len) {
    return image_encode_png_channels(rgb, w, h, 3, out, out_len);
}

int image_encode_png_channels(const uint8_t *px, int w, int h, int channels, uint8_t **out,
                              size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (!px) return mapo_error("PNG encode: no pixels");
    if (channels < 1 || channels > 4)
        return mapo_error("PNG encode: %d channels (1, 2, 3 or 4 expected)", channels);
    if (check_dims(w, h, "PNG encode")) return -1;
    static const int ctype[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA,
                                 PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA};
    pwbuf *b = xcalloc(1, sizeof *b);
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, b, pw_err, png_warn_fn);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    if (!p || !info) {
        png_destroy_write_struct(&p, NULL);
        free(b);
        return mapo_error("PNG encode: cannot create a PNG writer");
    }
    if (setjmp(png_jmpbuf(p))) {
        mapo_error("PNG encode: %s", b->msg);
        png_destroy_write_struct(&p, &info);
        free(b->buf);
        free(b);
        return -1;
    }
    png_set_write_fn(p, b, pw_write, pw_flush);
    png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, ctype[channels],
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(p, info);
    for (int y = 0; y < h; y++)
        png_write_row(p, (png_const_bytep)(px + (size_t)y * w * channels));
    png_write_end(p, info);
    png_destroy_write_struct(&p, &info);
    *out = b->buf;
    *out_len = b->len;
    free(b);
    return 0;
}

int image_write_png(const char *path, const uint8_t *rgb, int w, int h) {
    uint8_t *data;
    size_t n;
    if (image_encode_png(rgb, w, h, &data, &n)) return mapo_error_prefix("%s", path);
    int rc = mapo_write_file_atomic(path, data, n);
    free(data);
    return rc;
}

/* ------------------------------------------------------------------ grid, postprocess */

int image_grid(mapo_image *out, const mapo_image *ims, int n, int rows, int cols) {
    memset(out, 0, sizeof *out);
    if (n <= 0 || rows <= 0 || cols <= 0 || (long long)rows * cols < n)
        return mapo_error("image grid: %d images do not fit %d rows x %d columns", n, rows, cols);
    const int w = ims[0].w, h = ims[0].h;
    for (int i = 0; i < n; i++)
        if (ims[i].w != w || ims[i].h != h || !ims[i].px)
            return mapo_error("image grid: image %d is %dx%d, image 0 is %dx%d", i, ims[i].w,
                              ims[i].h, w, h);
    if ((long long)cols * w > IMAGE_MAX_SIDE || (long long)rows * h > IMAGE_MAX_SIDE)
        return mapo_error("image grid: %d x %d images of %dx%d exceed %d pixels per side", rows,
                          cols, w, h, IMAGE_MAX_SIDE);
    if (image_alloc(out, cols * w, rows * h, "image grid")) return -1;
    for (int i = 0; i < n; i++) {
        const int x0 = (i % cols) * w, y0 = (i / cols) * h;
        for (int y = 0; y < h; y++)
            memcpy(out->px + ((size_t)(y0 + y) * out->w + x0) * 3,
                   ims[i].px + (size_t)y * w * 3, (size_t)w * 3);
    }
    return 0;
}

int image_from_chw(mapo_image *out, const float *chw, int h, int w) {
    if (image_alloc(out, w, h, "image from tensor")) return -1;
    const size_t hw = (size_t)h * w;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < hw; i++) {
            float t = chw[c * hw + i] * 0.5f;
            t = t + 0.5f;
            if (!(t >= 0.0f)) t = 0.0f; /* NaN -> 0 as well */
            if (t > 1.0f) t = 1.0f;
            const float s = t * 255.0f;
            out->px[i * 3 + c] = (uint8_t)rintf(s); /* round half to even, like numpy */
        }
    return 0;
}

/* ------------------------------------------------------------------ PIL bicubic resize */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double pil_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc (Resample.c) */
static int pil_coeffs(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    const double scale = (double)in_size / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    if ((size_t)out_size > SIZE_MAX / sizeof(double) / (size_t)ksize) return -1;
    double *kk = xmalloc((size_t)out_size * ksize * sizeof(double));
    int *bounds = xmalloc((size_t)out_size * 2 * sizeof(int));
    for (int xx = 0; xx < out_size; xx++) {
        const double center = 0.0 + (xx + 0.5) * scale;
        double ww = 0.0;
        const double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &kk[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            const double wv = pil_bicubic((x + xmin - center + 0.5) * ss);
            k[x] = wv;
            ww += wv;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    int32_t *ki = xmalloc((size_t)out_size * ksize * sizeof(int32_t));
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        ki[i] = kk[i] < 0 ? (int32_t)(-0.5 + kk[i] * (1 << PIL_PRECISION_BITS))
                          : (int32_t)(0.5 + kk[i] * (1 << PIL_PRECISION_BITS));
    free(kk);
    *bounds_out = bounds;
    *kk_out = ki;
    return ksize;
}

static inline uint8_t pil_clip8(int64_t v) {
    v >>= PIL_PRECISION_BITS; /* arithmetic shift = floor, as Pillow's lookup does */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* one separable pass of Pillow's ImagingResample{Horizontal,Vertical}_8bpc: out is ow x oh;
 * horizontal: out(x, y) = sum_k in(bounds[x] + k, y + offset) * kk[x][k], vertical alike.
 * The vertical pass accumulates whole rows (same sums, same order: bit-identical). */
static void pil_pass(uint8_t *out, int ow, int oh, const uint8_t *in, int iw, int offset,
                     int vertical, int ksize, const int *bounds, const int32_t *kk) {
    if (vertical) {
        int64_t *acc = xmalloc(sizeof(int64_t) * (size_t)ow * 3);
        for (int yy = 0; yy < oh; yy++) {
            const int lo = bounds[2 * yy], n = bounds[2 * yy + 1];
            const int32_t *k = &kk[(size_t)yy * ksize];
            for (size_t j = 0; j < (size_t)ow * 3; j++) acc[j] = 1 << (PIL_PRECISION_BITS - 1);
            for (int t = 0; t < n; t++) {
                const uint8_t *row = in + (size_t)(lo + t) * iw * 3;
                const int64_t kt = k[t];
                for (size_t j = 0; j < (size_t)ow * 3; j++) acc[j] += (int64_t)row[j] * kt;
            }
            uint8_t *q = out + (size_t)yy * ow * 3;
            for (size_t j = 0; j < (size_t)ow * 3; j++) q[j] = pil_clip8(acc[j]);
        }
        free(acc);
        return;
    }
    for (int yy = 0; yy < oh; yy++) {
        const uint8_t *row = in + (size_t)(yy + offset) * iw * 3;
        for (int xx = 0; xx < ow; xx++) {
            const int lo = bounds[2 * xx], n = bounds[2 * xx + 1];
            const int32_t *k = &kk[(size_t)xx * ksize];
            int64_t s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int t = 0; t < n; t++) {
                const uint8_t *p = row + (size_t)(lo + t) * 3;
                s0 += (int64_t)p[0] * k[t];
                s1 += (int64_t)p[1] * k[t];
                s2 += (int64_t)p[2] * k[t];
            }
            uint8_t *q = out + ((size_t)yy * ow + xx) * 3;
            q[0] = pil_clip8(s0);
            q[1] = pil_clip8(s1);
            q[2] = pil_clip8(s2);
        }
    }
}

/* Pillow 13's ImagingResampleInner: horizontal pass first (over only the rows the vertical
 * pass reads), unless the height shrinks by more than twice as much as the width, then the
 * vertical pass first (Pillow PR #9549; older Pillow always went horizontal first). A pass
 * is skipped when that side keeps its size. Each pass rounds to uint8. */
int image_resize_bicubic(mapo_image *out, const mapo_image *in, int w, int h) {
    memset(out, 0, sizeof *out);
    if (!in || !in->px || check_dims(in->w, in->h, "resize input")) return -1;
    if (image_alloc(out, w, h, "resize output")) return -1;
    if (w == in->w && h == in->h) {
        memcpy(out->px, in->px, (size_t)w * h * 3);
        return 0;
    }
    const int need_h = w != in->w, need_v = h != in->h;
    const int dy = in->h - h, dx = in->w - w;
    const int horizontal_first = !(dy > 0 && (long long)dy > (long long)dx * 2);
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL;
    const int ksh = pil_coeffs(in->w, w, &bh, &kh);
    const int ksv = pil_coeffs(in->h, h, &bv, &kv);
    if (ksh < 0 || ksv < 0) {
        free(bh), free(kh), free(bv), free(kv);
        image_free(out);
        return mapo_error("resize %dx%d -> %dx%d: coefficient table too large", in->w, in->h,
                          w, h);
    }
    uint8_t *tmp = NULL;
    if (!need_v) {
        pil_pass(out->px, w, h, in->px, in->w, 0, 0, ksh, bh, kh);
    } else if (!need_h) {
        pil_pass(out->px, w, h, in->px, in->w, 0, 1, ksv, bv, kv);
    } else if (horizontal_first) {
        const int y_first = bv[0], y_last = bv[2 * h - 2] + bv[2 * h - 1];
        for (int i = 0; i < h; i++) bv[2 * i] -= y_first;
        tmp = xmalloc((size_t)w * (y_last - y_first) * 3);
        pil_pass(tmp, w, y_last - y_first, in->px, in->w, y_first, 0, ksh, bh, kh);
        pil_pass(out->px, w, h, tmp, w, 0, 1, ksv, bv, kv);
    } else {
        tmp = xmalloc((size_t)in->w * h * 3);
        pil_pass(tmp, in->w, h, in->px, in->w, 0, 1, ksv, bv, kv);
        pil_pass(out->px, w, h, tmp, in->w, 0, 0, ksh, bh, kh);
    }
    free(tmp);
    free(bh), free(kh), free(bv), free(kv);
    return 0;
}

/* ------------------------------------------------------------------ torch preprocessing */

void image_to_chw(const mapo_image *im, float *out) {
    const size_t hw = (size_t)im->w * im->h;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < hw; i++) out[c * hw + i] = (float)im->px[i * 3 + c] / 255.0f;
}

int prep_resize_size(int h, int w, int res, int *oh, int *ow) {
    if (res <= 0 || res > IMAGE_MAX_SIDE || h <= 0 || w <= 0)
        return mapo_error("resize: resolution %d for a %dx%d image is out of range", res, w, h);
    const int shorter = w <= h ? w : h, longer = w <= h ? h : w;
    /* Python: int(res * long / short); the product is exact in double */
    const double nl = (double)((long long)res * longer) / (double)shorter;
    if (nl > (double)IMAGE_MAX_SIDE * 16)
        return mapo_error("resize: %dx%d to shorter side %d gives a longer side of %.0f", w, h,
                          res, nl);
    const int new_long = (int)nl;
    if (w <= h) {
        *ow = res;
        *oh = new_long;
    } else {
        *ow = new_long;
        *oh = res;
    }
    return 0;
}

/* PyTorch's HelperInterpLinear::compute_index_ranges_weights(antialias=True,
 * align_corners=False) for scalar_t = float, restricted to outputs [first, first+count). */
typedef struct {
    int ksize;
    int64_t *lo;
    int *n;
    float *w;  /* [count][ksize] */
} aa_tab;

static float aa_filter(float x) {
    x = fabsf(x);
    if (x < 1.0) return (float)(1.0 - x);
    return 0.0f;
}

static void aa_tab_free(aa_tab *t) {
    free(t->lo);
    free(t->n);
    free(t->w);
    memset(t, 0, sizeof *t);
}

static int aa_tab_make(aa_tab *t, int in, int out, int first, int count) {
    memset(t, 0, sizeof *t);
    const float scale = (float)in / (float)out;
    const float support = scale >= 1.0 ? (float)((2 * 0.5) * scale) : (float)(2 * 0.5);
    const int ksize = (int)ceil(support) * 2 + 1;
    const float invscale = scale >= 1.0 ? (float)(1.0 / scale) : 1.0f;
    t->ksize = ksize;
    t->lo = xmalloc(sizeof(int64_t) * (size_t)count);
    t->n = xmalloc(sizeof(int) * (size_t)count);
    t->w = xcalloc((size_t)count * ksize, sizeof(float));
    for (int ii = 0; ii < count; ii++) {
        const int64_t i = first + ii;
        const float center = (float)(scale * (i + 0.5));
        float total = 0.0f;
        int64_t xmin = (int64_t)((center - support) + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)((center + support) + 0.5);
        if (xmax > in) xmax = in;
        int64_t xsize = xmax - xmin;
        if (xsize < 0) xsize = 0;
        if (xsize > ksize) xsize = ksize;
        float *wp = t->w + (size_t)ii * ksize;
        for (int64_t j = 0; j < xsize; j++) {
            const float d = (float)(j + xmin) - center; /* int64 - float: float */
            const float wv = aa_filter((float)(((double)d + 0.5) * (double)invscale));
            wp[j] = wv;
            total += wv;
        }
        if (total != 0.0f)
            for (int64_t j = 0; j < xsize; j++) wp[j] /= total;
        t->lo[ii] = xmin;
        t->n[ii] = (int)xsize;
    }
    return 0;
}

/* Resize with outputs restricted to rows [r0, r0+nr) and columns [c0, c0+nc); the source is
 * either a float plane (fin) or uint8 interleaved RGB channel ch (u8, through ToTensor). */
typedef struct {
    const float *fin;      /* [h][w] or NULL */
    const uint8_t *u8;     /* [h][w][3] or NULL */
    int ch;
} plane_src;

static inline float src_at(const plane_src *s, int w, int64_t y, int64_t x, const float *lut) {
    if (s->fin) return s->fin[y * w + x];
    return lut[s->u8[(y * w + x) * 3 + s->ch]];
}

/* out[nr][nc] = window of the resized plane */
static int resize_window(float *out, const plane_src *s, int h, int w, int oh, int ow, int r0,
                         int nr, int c0, int nc) {
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v / 255.0f;
    const int need_h = ow != w, need_v = oh != h;
    aa_tab th = {0}, tv = {0};
    if (need_h) aa_tab_make(&th, w, ow, c0, nc);
    if (need_v) aa_tab_make(&tv, h, oh, r0, nr);
    /* input rows needed by the vertical pass */
    int64_t ylo = r0, yhi = r0 + nr;
    if (need_v) {
        ylo = INT64_MAX;
        yhi = 0;
        for (int i = 0; i < nr; i++) {
            if (tv.n[i] == 0) continue;
            if (tv.lo[i] < ylo) ylo = tv.lo[i];
            if (tv.lo[i] + tv.n[i] > yhi) yhi = tv.lo[i] + tv.n[i];
        }
        if (ylo > yhi) ylo = yhi = 0;
    }
    const int64_t rows = yhi - ylo;
    float *tmp = xmalloc(sizeof(float) * (size_t)(rows > 0 ? rows : 1) * nc);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t y = ylo + r;
        float *o = tmp + r * nc;
        if (need_h) {
            for (int j = 0; j < nc; j++) {
                const float *wp = th.w + (size_t)j * th.ksize;
                const int64_t lo = th.lo[j];
                const int n = th.n[j];
                float acc = 0.0f;
                if (n > 0) {
                    acc = src_at(s, w, y, lo, lut) * wp[0];
                    for (int k = 1; k < n; k++) acc += src_at(s, w, y, lo + k, lut) * wp[k];
                }
                o[j] = acc;
            }
        } else {
            for (int j = 0; j < nc; j++) o[j] = src_at(s, w, y, c0 + j, lut);
        }
    }
    for (int i = 0; i < nr; i++) {
        float *o = out + (size_t)i * nc;
        if (need_v) {
            const float *wp = tv.w + (size_t)i * tv.ksize;
            const int64_t lo = tv.lo[i] - ylo;
            const int n = tv.n[i];
            for (int j = 0; j < nc; j++) {
                float acc = 0.0f;
                if (n > 0) {
                    acc = tmp[lo * nc + j] * wp[0];
                    for (int k = 1; k < n; k++) acc += tmp[(lo + k) * nc + j] * wp[k];
                }
                o[j] = acc;
            }
        } else {
            memcpy(o, tmp + (size_t)(r0 + i - ylo) * nc, sizeof(float) * nc);
        }
    }
    free(tmp);
    aa_tab_free(&th);
    aa_tab_free(&tv);
    return 0;
}

int resize_bilinear_aa(float *out, const float *in, int c, int h, int w, int oh, int ow) {
    if (c <= 0 || check_dims(w, h, "resize input") || check_dims(ow, oh, "resize output"))
        return -1;
    for (int k = 0; k < c; k++) {
        plane_src s = {in + (size_t)k * h * w, NULL, 0};
        resize_window(out + (size_t)k * oh * ow, &s, h, w, oh, ow, 0, oh, 0, ow);
    }
    return 0;
}

static int center_offset(int d) {
    /* int(round(d / 2.0)) with Python's round (half to even), d >= 0 */
    const int k = d / 2;
    if (d % 2 == 0) return k;
    return k % 2 == 0 ? k : k + 1;
}

int prep_image(float *out, const mapo_image *im, int res, int flip, int y1, int x1,
               int crop_yx[2]) {
    if (!im || !im->px || check_dims(im->w, im->h, "preprocess")) return -1;
    int oh = 0, ow = 0;
    if (prep_resize_size(im->h, im->w, res, &oh, &ow)) return -1;
    if (y1 < 0 || x1 < 0) {
        y1 = oh > res ? center_offset(oh - res) : 0;
        x1 = ow > res ? center_offset(ow - res) : 0;
    }
    if (oh < res || ow < res || y1 > oh - res || x1 > ow - res)
        return mapo_error("preprocess: crop %dx%d at (%d, %d) does not fit the resized %dx%d "
                          "image", res, res, y1, x1, ow, oh);
    const int cx0 = flip ? ow - x1 - res : x1;
    float *win = xmalloc(sizeof(float) * (size_t)res * res);
    for (int c = 0; c < 3; c++) {
        plane_src s = {NULL, im->px, c};
        resize_window(win, &s, im->h, im->w, oh, ow, y1, res, cx0, res);
        float *o = out + (size_t)c * res * res;
        for (int i = 0; i < res; i++)
            for (int j = 0; j < res; j++) {
                const float v = win[(size_t)i * res + (flip ? res - 1 - j : j)];
                o[(size_t)i * res + j] = (v - 0.5f) / 0.5f;
            }
    }
    free(win);
    if (crop_yx) {
        crop_yx[0] = y1;
        crop_yx[1] = x1;
    }
    return 0;
}

int prep_pair_fixed(float *chosen, float *rejected, int orig_hw[2], int crop_yx[2],
                    const mapo_image *jpg0, const mapo_image *jpg1, int swap, int res,
                    int flip, int y1, int x1) {
    if (!jpg0 || !jpg1 || !jpg0->px || !jpg1->px) return mapo_error("preprocess: missing image");
    mapo_image r1 = {0};
    const mapo_image *b = jpg1;
    if (jpg1->w != jpg0->w || jpg1->h != jpg0->h) {
        if (image_resize_bicubic(&r1, jpg1, jpg0->w, jpg0->h)) return -1;
        b = &r1;
    }
    const mapo_image *c = swap ? b : jpg0, *r = swap ? jpg0 : b;
    int cy[2], ry[2];
    int rc = prep_image(chosen, c, res, flip, y1, x1, cy);
    if (!rc) rc = prep_image(rejected, r, res, flip, y1, x1, ry);
    image_free(&r1);
    if (rc) return -1;
    if (orig_hw) {
        orig_hw[0] = jpg0->h;
        orig_hw[1] = jpg0->w;
    }
    if (crop_yx) {
        crop_yx[0] = cy[0];
        crop_yx[1] = cy[1];
    }
    return 0;
}

int prep_pair(float *chosen, float *rejected, int orig_hw[2], int crop_yx[2],
              const mapo_image *jpg0, const mapo_image *jpg1, int swap, const prep_cfg *cfg,
              philox *rng) {
    if (!cfg) return mapo_error("preprocess: no configuration");
    if (!jpg0 || !jpg0->px) return mapo_error("preprocess: missing image");
    const int res = cfg->resolution;
    if ((!cfg->no_hflip || cfg->random_crop) && !rng)
        return mapo_error("preprocess: random flip / crop needs a random stream");
    int flip = 0, y1 = -1, x1 = -1;
    if (!cfg->no_hflip) flip = philox_uniform(rng) < 0.5;
    if (cfg->random_crop) {
        int oh = 0, ow = 0;
        if (prep_resize_size(jpg0->h, jpg0->w, res, &oh, &ow)) return -1;
        if (oh < res || ow < res)
            return mapo_error("preprocess: resized %dx%d image is smaller than the %d crop", ow,
                              oh, res);
        y1 = (int)philox_below(rng, (uint32_t)(oh - res + 1));
        x1 = (int)philox_below(rng, (uint32_t)(ow - res + 1));
    }
    return prep_pair_fixed(chosen, rejected, orig_hw, crop_yx, jpg0, jpg1, swap, res, flip, y1,
                           x1);
}
