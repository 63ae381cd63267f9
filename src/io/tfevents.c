/* tfevents.c -- TensorBoard event files: TFRecord framing with masked CRC32C around
 * hand-encoded tensorboard.Event protobufs. See include/mapo/tfevents.h.
 *
 * Field numbers (tensorboard/compat/proto/event.proto and summary.proto, checked against the
 * descriptors of tensorboard 2.21's event_pb2 / summary_pb2):
 *   Event          wall_time 1 double, step 2 int64, file_version 3 string, summary 5,
 *                  source_metadata 10
 *   SourceMetadata writer 1 string
 *   Summary        value 1 repeated Summary.Value
 *   Summary.Value  tag 1 string, simple_value 2 float (oneof), image 4 (oneof)
 *   Summary.Image  height 1 int32, width 2 int32, colorspace 3 int32,
 *                  encoded_image_string 4 bytes
 * Encoding as protobuf's serializer does: fields in number order; proto3 scalars with
 * implicit presence left out when zero (wall_time 0.0, step 0, an Image's zero sizes); oneof
 * members always written (simple_value 0.0 is written); negative int64 / int32 as 10-byte
 * varints. */
#include "mapo/tfevents.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/image.h"

struct tfevents_writer {
    char *path;
    int fd;
    int broken;         /* a partial record could not be removed: refuse further writes */
    double wall_time;   /* 0: real clock */
    uint64_t size;      /* bytes of whole records in the file */
};

static atomic_int writer_count; /* the ".<n>" of the file name, as tensorboard's _global_uid */

/* ------------------------------------------------------------------ CRC32C */

/* Reflected Castagnoli polynomial 0x82F63B78, four bits at a time (16-entry table). */
static const uint32_t crc_nibble[16] = {
    0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
    0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
    0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75};

uint32_t tfevents_crc32c(const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        c = (c >> 4) ^ crc_nibble[c & 15];
        c = (c >> 4) ^ crc_nibble[c & 15];
    }
    return c ^ 0xFFFFFFFFu;
}

uint32_t tfevents_masked_crc32c(const void *data, size_t n) {
    const uint32_t c = tfevents_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ------------------------------------------------------------------ protobuf encoding */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void b_varint(buf *b, uint64_t v) {
    uint8_t t[10];
    size_t k = 0;
    while (v >= 0x80) {
        t[k++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    t[k++] = (uint8_t)v;
    b_put(b, t, k);
}

static void b_le(buf *b, uint64_t v, int bytes) {
    uint8_t t[8];
    for (int i = 0; i < bytes; i++) t[i] = (uint8_t)(v >> (8 * i));
    b_put(b, t, (size_t)bytes);
}

static void pb_key(buf *b, int field, int wire) { b_varint(b, ((uint64_t)field << 3) | (uint64_t)wire); }
static void pb_bytes(buf *b, int field, const void *d, size_t n) {
    pb_key(b, field, 2);
    b_varint(b, n);
    b_put(b, d, n);
}
static void pb_double(buf *b, int field, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    pb_key(b, field, 1);
    b_le(b, u, 8);
}
static void pb_float(buf *b, int field, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    pb_key(b, field, 5);
    b_le(b, u, 4);
}
/* int32 / int64: negative values are sign-extended to 64 bits (10-byte varint). */
static void pb_int(buf *b, int field, int64_t v) {
    pb_key(b, field, 0);
    b_varint(b, (uint64_t)v);
}

/* Event{wall_time, step, <field: payload (length-delimited)>} */
static void event_encode(buf *ev, double wall_time, int64_t step, int field, const buf *payload) {
    uint64_t wt;
    memcpy(&wt, &wall_time, 8);
    if (wt != 0) pb_double(ev, 1, wall_time); /* proto3: a zero double is not written */
    if (step != 0) pb_int(ev, 2, step);
    pb_bytes(ev, field, payload->p, payload->n);
}

/* ------------------------------------------------------------------ writing */

static double now_wall(const tfevents_writer *w) {
    if (w->wall_time != 0) return w->wall_time;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Frames the Event and appends it to the file with one write; on failure the file is cut
 * back to its last whole record. what: "tag \"loss\" step 12" for the message. */
static int write_record(tfevents_writer *w, const buf *ev, const char *what) {
    if (w->broken)
        return mapo_error("%s: not writing %s: an earlier failed write could not be undone",
                          w->path, what);
    buf r = {0};
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)ev->n >> (8 * i));
    b_put(&r, len8, 8);
    b_le(&r, tfevents_masked_crc32c(len8, 8), 4);
    b_put(&r, ev->p, ev->n);
    b_le(&r, tfevents_masked_crc32c(ev->p, ev->n), 4);

    size_t done = 0;
    int err = 0;
    while (done < r.n) {
        ssize_t k = pwrite(w->fd, r.p + done, r.n - done, (off_t)(w->size + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            err = k < 0 ? errno : EIO;
            break;
        }
        done += (size_t)k;
    }
    free(r.p);
    if (!err) {
        w->size += done;
        return 0;
    }
    /* cut off whatever part of the record reached the file */
    const char *undo = "";
    while (ftruncate(w->fd, (off_t)w->size) != 0) {
        if (errno == EINTR) continue;
        w->broken = 1;
        undo = " (and the partial record could not be removed: no further writes)";
        break;
    }
    return mapo_error("%s: cannot write the event record of %s: %s%s", w->path, what,
                      strerror(err), undo);
}

static int check_tag(const tfevents_writer *w, const char *tag) {
    if (!tag || !*tag) return mapo_error("%s: an event needs a non-empty tag", w->path);
    /* protobuf refuses a string field that is not valid UTF-8 when parsing */
    const uint8_t *s = (const uint8_t *)tag;
    for (size_t i = 0; s[i];) {
        const uint8_t c = s[i];
        int n;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07, min = 0x10000;
        else goto bad;
        for (int k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) goto bad;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto bad;
        i += (size_t)n + 1;
    }
    return 0;
bad:
    return mapo_error("%s: tag is not valid UTF-8 (TensorBoard could not read it)", w->path);
}

static int mkdir_p(const char *dir) {
    char *p = xstrdup(dir);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s) continue;
        const char c = *s;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            rc = mapo_error("%s: cannot create the TensorBoard log folder: %s", p,
                            strerror(errno));
            break;
        }
        if (!c) break;
        *s = c;
        while (s[1] == '/') s++;
    }
    if (!rc && !mapo_is_dir(dir))
        rc = mapo_error("%s: cannot use as the TensorBoard log folder: not a folder", dir);
    free(p);
    return rc;
}

tfevents_writer *tfevents_open(const char *logdir, double wall_time) {
    if (!logdir || !*logdir) {
        mapo_error("tensorboard: no log folder given");
        return NULL;
    }
    if (mkdir_p(logdir)) return NULL;
    char host[256];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
    const long long t = (long long)time(NULL);
    const int uid = atomic_fetch_add(&writer_count, 1);
    const size_t n = strlen(logdir) + strlen(host) + 96;
    tfevents_writer *w = xcalloc(1, sizeof *w);
    w->path = xmalloc(n);
    snprintf(w->path, n, "%s%sevents.out.tfevents.%010lld.%s.%ld.%d", logdir,
             logdir[strlen(logdir) - 1] == '/' ? "" : "/", t, host, (long)getpid(), uid);
    w->wall_time = wall_time;
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        mapo_error("%s: cannot create the TensorBoard event file: %s", w->path,
                   strerror(errno));
        free(w->path);
        free(w);
        return NULL;
    }
    /* Event{wall_time, file_version = "brain.Event:2", source_metadata{writer = "mapo"}} */
    buf ev = {0};
    const double wt = now_wall(w);
    uint64_t wtu;
    memcpy(&wtu, &wt, 8);
    if (wtu != 0) pb_double(&ev, 1, wt);
    static const char version[] = "brain.Event:2", writer[] = "mapo";
    pb_bytes(&ev, 3, version, sizeof version - 1);
    buf meta = {0};
    pb_bytes(&meta, 1, writer, sizeof writer - 1);
    pb_bytes(&ev, 10, meta.p, meta.n);
    free(meta.p);
    const int rc = write_record(w, &ev, "the file version");
    free(ev.p);
    if (rc) {
        close(w->fd);
        unlink(w->path);
        free(w->path);
        free(w);
        return NULL;
    }
    return w;
}

const char *tfevents_path(const tfevents_writer *w) { return w ? w->path : NULL; }

/* Event{wall_time, step, summary = Summary{value = [value]}} */
static int write_summary(tfevents_writer *w, const char *tag, int64_t step, const buf *value) {
    buf summary = {0}, ev = {0};
    pb_bytes(&summary, 1, value->p, value->n);
    event_encode(&ev, now_wall(w), step, 5, &summary);
    free(summary.p);
    char what[96];
    snprintf(what, sizeof what, "tag \"%.40s%s\" step %" PRId64, tag,
             strlen(tag) > 40 ? "..." : "", step);
    const int rc = write_record(w, &ev, what);
    free(ev.p);
    return rc;
}

int tfevents_scalar(tfevents_writer *w, const char *tag, int64_t step, double value) {
    if (check_tag(w, tag)) return -1;
    buf v = {0};
    pb_bytes(&v, 1, tag, strlen(tag));
    pb_float(&v, 2, (float)value); /* a oneof member: written even when 0 */
    const int rc = write_summary(w, tag, step, &v);
    free(v.p);
    return rc;
}

int tfevents_image(tfevents_writer *w, const char *tag, int64_t step, int width, int height,
                   int channels, const uint8_t *pixels) {
    if (check_tag(w, tag)) return -1;
    if (channels < 1 || channels > 4)
        return mapo_error("%s: image \"%s\": %d channels (1, 2, 3 or 4 expected)", w->path, tag,
                          channels);
    uint8_t *png;
    size_t png_n;
    if (image_encode_png_channels(pixels, width, height, channels, &png, &png_n))
        return mapo_error_prefix("%s: image \"%s\"", w->path, tag);
    buf im = {0}, v = {0};
    pb_int(&im, 1, height);
    pb_int(&im, 2, width);
    pb_int(&im, 3, channels);
    pb_bytes(&im, 4, png, png_n);
    free(png);
    pb_bytes(&v, 1, tag, strlen(tag));
    pb_bytes(&v, 4, im.p, im.n);
    free(im.p);
    const int rc = write_summary(w, tag, step, &v);
    free(v.p);
    return rc;
}

int tfevents_flush(tfevents_writer *w) {
    while (fsync(w->fd) != 0) {
        if (errno == EINTR) continue;
        return mapo_error("%s: cannot sync the TensorBoard event file: %s", w->path,
                          strerror(errno));
    }
    return 0;
}

int tfevents_close(tfevents_writer *w) {
    if (!w) return 0;
    int rc = tfevents_flush(w);
    if (close(w->fd) != 0 && !rc)
        rc = mapo_error("%s: cannot close the TensorBoard event file: %s", w->path,
                        strerror(errno));
    free(w->path);
    free(w);
    return rc;
}
