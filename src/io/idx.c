/* idx.c -- IDX files (gzip or plain, uint8) and the Fashion-MNIST loader (see idx.h). */
#include "mapo/idx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "mapo/common.h"

const char *const FMNIST_CLASSES[10] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot",
};

#define IDX_MAX_DIM 2147483647LL     /* a larger dimension is refused as huge */
#define IDX_TRAILING_PROBE (1 << 20) /* how far past the data to read for the verdict */
#define IDX_FIRST_CHUNK (1 << 20)    /* the buffer starts here, doubles as data arrives */
#define FMNIST_MAX_SIDE 1024
#define FMNIST_MAX_BYTES (1LL << 32)

/* An open IDX file whose header has been read and validated. */
typedef struct {
    gzFile gz;
    const char *path;
    int ndim;
    int64_t dims[IDX_MAX_DIMS];
    int64_t count;
} idx_reader;

static const char *idx_type_name(int code) {
    switch (code) {
    case 0x08: return "uint8";
    case 0x09: return "int8";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return "not an IDX type";
    }
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int stream_error(const idx_reader *r) {
    int errnum = Z_OK;
    const char *msg = gzerror(r->gz, &errnum);
    if (errnum == Z_ERRNO) msg = strerror(errno);
    size_t pl = strlen(r->path); /* zlib's message starts with "<path>: " */
    if (msg && !strncmp(msg, r->path, pl) && !strncmp(msg + pl, ": ", 2)) msg += pl + 2;
    return mapo_error("%s: corrupt or truncated gzip stream (zlib: %s)", r->path,
                      msg && *msg ? msg : "read error");
}

/* Reads up to n bytes; returns the count (less than n only at the end of the data), or -1 with
   a message when zlib reports an error (a corrupt deflate stream, a bad CRC, a gzip stream cut
   short, an I/O error). */
static int64_t read_full(const idx_reader *r, void *buf, int64_t n) {
    int64_t got = 0;
    while (got < n) {
        int64_t want = n - got;
        if (want > (1 << 30)) want = 1 << 30;
        int k = gzread(r->gz, (char *)buf + got, (unsigned)want);
        if (k < 0) return stream_error(r);
        if (k == 0) {
            int errnum = Z_OK;
            gzerror(r->gz, &errnum);
            if (errnum != Z_OK) return stream_error(r); /* Z_BUF_ERROR: gzip cut short */
            break;
        }
        got += k;
    }
    return got;
}

static void dims_str(char *buf, size_t sz, int ndim, const uint32_t *d) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sz - o, "[");
    for (int k = 0; k < ndim && o < sz; k++)
        o += (size_t)snprintf(buf + o, sz - o, "%s%u", k ? ", " : "", d[k]);
    if (o < sz) snprintf(buf + o, sz - o, "]");
}

static void reader_close(idx_reader *r) {
    if (r->gz) gzclose(r->gz);
    r->gz = NULL;
}

/* Opens path and validates its header; on failure nothing stays open. */
static int idx_open(idx_reader *r, const char *path, int want_ndim, int64_t max_bytes) {
    memset(r, 0, sizeof *r);
    r->path = path;
    struct stat st;
    if (stat(path, &st)) return mapo_error("%s: cannot open (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return mapo_error("%s: not a regular file", path);
    r->gz = gzopen(path, "rb");
    if (!r->gz)
        return mapo_error("%s: cannot open (%s)", path, errno ? strerror(errno) : "zlib");
    gzbuffer(r->gz, 1 << 17);

    uint8_t h[4 + 4 * IDX_MAX_DIMS];
    int64_t k = read_full(r, h, 4);
    if (k < 0) goto fail;
    if (k == 0) {
        mapo_error("%s: empty file (no IDX header)", path);
        goto fail;
    }
    if (k < 4) {
        mapo_error("%s: truncated IDX header (the file ends after %lld of 4 magic bytes)", path,
                   (long long)k);
        goto fail;
    }
    if (h[0] || h[1]) {
        mapo_error("%s: bad magic 0x%08X, not an IDX file (expected 0x000008nn: two zero bytes, "
                   "type 0x08 = uint8, nn dimensions)", path, be32(h));
        goto fail;
    }
    if (h[2] != 0x08) {
        mapo_error("%s: IDX element type 0x%02X (%s) is not supported, only 0x08 (uint8)", path,
                   h[2], idx_type_name(h[2]));
        goto fail;
    }
    int nd = h[3];
    if (nd < 1 || nd > IDX_MAX_DIMS) {
        mapo_error("%s: the IDX header declares %d dimensions, supported are 1..%d", path, nd,
                   IDX_MAX_DIMS);
        goto fail;
    }
    if (want_ndim && nd != want_ndim) {
        mapo_error("%s: has %d dimension%s, expected %d", path, nd, nd == 1 ? "" : "s",
                   want_ndim);
        goto fail;
    }
    k = read_full(r, h + 4, 4 * nd);
    if (k < 0) goto fail;
    if (k < 4 * nd) {
        mapo_error("%s: truncated IDX header (the file ends after %lld of %d header bytes)",
                   path, (long long)(4 + k), 4 + 4 * nd);
        goto fail;
    }
    uint32_t d[IDX_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        d[i] = be32(h + 4 + 4 * i);
        if (d[i] == 0) {
            mapo_error("%s: dimension %d is 0", path, i);
            goto fail;
        }
        if (d[i] > IDX_MAX_DIM) {
            mapo_error("%s: dimension %d is %u, a huge value (more than 2^31-1)", path, i, d[i]);
            goto fail;
        }
    }
    int64_t count = 1;
    for (int i = 0; i < nd; i++) {
        if (__builtin_mul_overflow(count, (int64_t)d[i], &count)) {
            char ds[96];
            dims_str(ds, sizeof ds, nd, d);
            mapo_error("%s: dimensions %s multiply past 2^63 (int64 overflow)", path, ds);
            goto fail;
        }
    }
    if (max_bytes > 0 && count > max_bytes) {
        char ds[96];
        dims_str(ds, sizeof ds, nd, d);
        mapo_error("%s: the header declares %lld bytes of data %s, more than the limit of %lld",
                   path, (long long)count, ds, (long long)max_bytes);
        goto fail;
    }
    r->ndim = nd;
    for (int i = 0; i < nd; i++) r->dims[i] = d[i];
    r->count = count;
    return 0;
fail:
    reader_close(r);
    return -1;
}

/* Reads the first n0 entries along dimension 0 into out. When n0 is the whole file, also
   insists that the data ends exactly where the header says (no trailing bytes, an intact
   gzip stream to its end). */
static int idx_read_data(idx_reader *r, int64_t n0, idx_u8 *out) {
    const int64_t row = r->count / r->dims[0];
    const int64_t nbytes = n0 * row;
    int64_t cap = nbytes < IDX_FIRST_CHUNK ? nbytes : IDX_FIRST_CHUNK, got = 0;
    uint8_t *buf = xmalloc((size_t)cap);
    while (got < nbytes) {
        if (got == cap) {
            cap = cap > nbytes / 2 ? nbytes : 2 * cap;
            buf = xrealloc(buf, (size_t)cap);
        }
        int64_t k = read_full(r, buf + got, cap - got);
        if (k < 0) goto fail;
        got += k;
        if (got < cap) break; /* end of data */
    }
    if (got < nbytes) {
        mapo_error("%s: truncated data: the header declares %lld bytes, the file holds only %lld",
                   r->path, (long long)r->count, (long long)got);
        goto fail;
    }
    if (n0 == r->dims[0]) {
        uint8_t *probe = xmalloc(1 << 16);
        int64_t extra = 0, k;
        do {
            k = read_full(r, probe, 1 << 16);
            if (k > 0) extra += k;
        } while (k == (1 << 16) && extra < IDX_TRAILING_PROBE);
        free(probe);
        if (k < 0) goto fail;
        if (extra) {
            mapo_error("%s: %s%lld trailing byte%s after the %lld bytes of data the header "
                       "declares", r->path, k == (1 << 16) ? "at least " : "", (long long)extra,
                       extra == 1 ? "" : "s", (long long)r->count);
            goto fail;
        }
    }
    out->ndim = r->ndim;
    for (int i = 0; i < IDX_MAX_DIMS; i++) out->dims[i] = i < r->ndim ? r->dims[i] : 0;
    out->dims[0] = n0;
    out->count = nbytes;
    out->data = buf;
    return 0;
fail:
    free(buf);
    return -1;
}

int idx_read_u8_head(idx_u8 *out, const char *path, int want_ndim, int64_t max_bytes,
                     int64_t max_items, int64_t *declared_dim0) {
    memset(out, 0, sizeof *out);
    if (want_ndim < 0 || want_ndim > IDX_MAX_DIMS)
        return mapo_error("%s: asked for %d dimensions, IDX files here have 1..%d", path,
                          want_ndim, IDX_MAX_DIMS);
    idx_reader r;
    if (idx_open(&r, path, want_ndim, max_bytes)) return -1;
    if (declared_dim0) *declared_dim0 = r.dims[0];
    int64_t n0 = max_items > 0 && max_items < r.dims[0] ? max_items : r.dims[0];
    int rc = idx_read_data(&r, n0, out);
    reader_close(&r);
    return rc;
}

int idx_read_u8(idx_u8 *out, const char *path, int want_ndim, int64_t max_bytes) {
    return idx_read_u8_head(out, path, want_ndim, max_bytes, 0, NULL);
}

void idx_free(idx_u8 *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------------------------------ */

/* <dir>/<prefix>-<kind>-ubyte.gz when it exists, else the same name without .gz. */
static char *fmnist_path(const char *dir, const char *prefix, const char *kind) {
    size_t n = strlen(dir) + strlen(prefix) + strlen(kind) + 16;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s-%s-ubyte.gz", dir, prefix, kind);
    struct stat st;
    if (stat(p, &st) == 0) return p;
    p[strlen(p) - 3] = '\0';
    if (stat(p, &st) == 0) return p;
    mapo_error("%s.gz: no such file (nor %s)", p, p);
    free(p);
    return NULL;
}

int fmnist_load(fmnist_split *s, const char *dir, const char *prefix, int64_t max_n) {
    memset(s, 0, sizeof *s);
    char *ipath = fmnist_path(dir, prefix, "images-idx3");
    if (!ipath) return -1;
    char *lpath = fmnist_path(dir, prefix, "labels-idx1");
    if (!lpath) {
        free(ipath);
        return -1;
    }
    idx_reader ri = {0}, rl = {0};
    idx_u8 im = {0}, lb = {0};
    int rc = -1;
    if (idx_open(&ri, ipath, 3, FMNIST_MAX_BYTES)) goto done;
    if (ri.dims[1] > FMNIST_MAX_SIDE || ri.dims[2] > FMNIST_MAX_SIDE) {
        mapo_error("%s: images are %lldx%lld, expected sides in 1..%d", ipath,
                   (long long)ri.dims[1], (long long)ri.dims[2], FMNIST_MAX_SIDE);
        goto done;
    }
    if (idx_open(&rl, lpath, 1, FMNIST_MAX_BYTES)) goto done;
    if (ri.dims[0] != rl.dims[0]) {
        mapo_error("%s holds %lld images but %s holds %lld labels (counts must match)", ipath,
                   (long long)ri.dims[0], lpath, (long long)rl.dims[0]);
        goto done;
    }
    int64_t n = max_n > 0 && max_n < ri.dims[0] ? max_n : ri.dims[0];
    if (idx_read_data(&rl, n, &lb)) goto done;
    for (int64_t i = 0; i < n; i++)
        if (lb.data[i] >= 10) {
            mapo_error("%s: label %d at index %lld is not a class 0..9", lpath, lb.data[i],
                       (long long)i);
            goto done;
        }
    if (idx_read_data(&ri, n, &im)) goto done;
    s->n = n;
    s->h = (int)ri.dims[1];
    s->w = (int)ri.dims[2];
    s->images = im.data;
    s->labels = lb.data;
    im.data = lb.data = NULL;
    rc = 0;
done:
    reader_close(&ri);
    reader_close(&rl);
    idx_free(&im);
    idx_free(&lb);
    free(ipath);
    free(lpath);
    return rc;
}

void fmnist_free(fmnist_split *s) {
    if (!s) return;
    free(s->images);
    free(s->labels);
    memset(s, 0, sizeof *s);
}

const char *fmnist_default_dir(void) {
    const char *e = getenv("MAPO_FASHION_MNIST");
    return e && *e ? e : "/usr/share/datasets/fashion-mnist";
}

int fmnist_to_pixels(float *out, const uint8_t *img, int64_t n, int h, int w, int size) {
    if (n < 0 || h < 1 || w < 1 || size < 1)
        return mapo_error("fmnist_to_pixels: bad arguments (n = %lld, %dx%d images, size %d)",
                          (long long)n, h, w, size);
    if (size < h || size < w)
        return mapo_error("fmnist_to_pixels: %dx%d images do not fit in %dx%d (size must be at "
                          "least both sides; cropping is not done)", h, w, size, size);
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v / 127.5f - 1.0f;
    const int top = (size - h) / 2, left = (size - w) / 2;
    const int64_t plane = (int64_t)size * size;
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * plane;
        const uint8_t *src = img + i * (int64_t)h * w;
        for (int64_t j = 0; j < plane; j++) o[j] = -1.0f;
        for (int y = 0; y < h; y++) {
            float *orow = o + (int64_t)(top + y) * size + left;
            const uint8_t *srow = src + (int64_t)y * w;
            for (int x = 0; x < w; x++) orow[x] = lut[srow[x]];
        }
    }
    return 0;
}
