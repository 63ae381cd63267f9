/* parquet.c -- Apache Parquet reader (see parquet.h for what is supported).
 *
 * Layout of a file: "PAR1", column chunks (each a run of pages: an optional dictionary page,
 * then data pages, each page a Thrift PageHeader followed by its body), FileMetaData
 * (Thrift compact protocol), its length (u32 little-endian), "PAR1".
 *
 * The Thrift compact reader below is generic: every struct is read field by field and
 * unknown fields (of any type) are skipped, so files from newer writers still open. It
 * never reads outside [p, end), nests at most TR_MAX_DEPTH structs/containers, and refuses
 * container sizes larger than the bytes left (every element takes at least one byte). */
#include "mapo/parquet.h"

#include "mapo/common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

/* ---------------------------------------------------------------- constants (parquet.thrift) */

enum { PT_BOOLEAN = 0, PT_INT32, PT_INT64, PT_INT96, PT_FLOAT, PT_DOUBLE, PT_BYTE_ARRAY, PT_FLBA };
enum { REP_REQUIRED = 0, REP_OPTIONAL = 1, REP_REPEATED = 2 };
enum { PAGE_DATA = 0, PAGE_INDEX = 1, PAGE_DICT = 2, PAGE_DATA_V2 = 3 };
enum {
    ENC_PLAIN = 0, ENC_PLAIN_DICTIONARY = 2, ENC_RLE = 3, ENC_BIT_PACKED = 4,
    ENC_DELTA_BINARY_PACKED = 5, ENC_DELTA_LENGTH_BYTE_ARRAY = 6, ENC_DELTA_BYTE_ARRAY = 7,
    ENC_RLE_DICTIONARY = 8, ENC_BYTE_STREAM_SPLIT = 9
};
enum { CODEC_NONE = 0, CODEC_SNAPPY, CODEC_GZIP, CODEC_LZO, CODEC_BROTLI, CODEC_LZ4, CODEC_ZSTD,
       CODEC_LZ4_RAW };

static const char *ptype_name(int t) {
    static const char *n[] = {"BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE",
                              "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"};
    return t >= 0 && t < 8 ? n[t] : "unknown type";
}
static const char *codec_name(int c) {
    static const char *n[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD",
                              "LZ4_RAW"};
    return c >= 0 && c < 8 ? n[c] : "unknown";
}
static const char *enc_name(int e) {
    static const char *n[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED",
                              "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY",
                              "DELTA_BYTE_ARRAY", "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
    return e >= 0 && e < 10 ? n[e] : "unknown";
}

/* ---------------------------------------------------------------- Thrift compact protocol */

enum { TT_STOP = 0, TT_TRUE = 1, TT_FALSE = 2, TT_BYTE = 3, TT_I16 = 4, TT_I32 = 5, TT_I64 = 6,
       TT_DOUBLE = 7, TT_BINARY = 8, TT_LIST = 9, TT_SET = 10, TT_MAP = 11, TT_STRUCT = 12 };
#define TR_MAX_DEPTH 32

typedef struct {
    const uint8_t *p, *end;
    int depth;
    char err[160]; /* what went wrong ("" while fine) */
} tr;

static int tr_fail(tr *t, const char *fmt, ...) MAPO_PRINTF(2, 3);
static int tr_fail(tr *t, const char *fmt, ...) {
    if (!t->err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->err, sizeof t->err, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int tr_varint(tr *t, uint64_t *v) {
    uint64_t x = 0;
    *v = 0;
    for (int i = 0; i < 10; i++) {
        if (t->p >= t->end) return tr_fail(t, "truncated varint");
        uint8_t b = *t->p++;
        if (i == 9 && b > 1) return tr_fail(t, "varint overflows 64 bits");
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return tr_fail(t, "varint longer than 10 bytes");
}

static int tr_zigzag(tr *t, int64_t *v) {
    uint64_t u = 0;
    if (tr_varint(t, &u)) return -1;
    *v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return 0;
}

static int tr_i64(tr *t, int type, int64_t *v) {
    if (type != TT_I64 && type != TT_I32 && type != TT_I16)
        return tr_fail(t, "expected an integer field, found Thrift type %d", type);
    return tr_zigzag(t, v);
}

static int tr_i32(tr *t, int type, int32_t *v) {
    int64_t x;
    if (type != TT_I32 && type != TT_I16 && type != TT_I64)
        return tr_fail(t, "expected an i32 field, found Thrift type %d", type);
    if (tr_zigzag(t, &x)) return -1;
    if (x < INT32_MIN || x > INT32_MAX) return tr_fail(t, "i32 value %lld out of range", (long long)x);
    *v = (int32_t)x;
    return 0;
}

static int tr_binary(tr *t, int type, const uint8_t **s, size_t *n) {
    uint64_t len = 0;
    *s = NULL;
    *n = 0;
    if (type != TT_BINARY) return tr_fail(t, "expected a string field, found Thrift type %d", type);
    if (tr_varint(t, &len)) return -1;
    if (len > (uint64_t)(t->end - t->p))
        return tr_fail(t, "string of %llu bytes runs past the end (%zu left)",
                       (unsigned long long)len, (size_t)(t->end - t->p));
    *s = t->p;
    *n = (size_t)len;
    t->p += len;
    return 0;
}

static int tr_bool(tr *t, int type, int *v) {
    if (type == TT_TRUE) *v = 1;
    else if (type == TT_FALSE) *v = 0;
    else return tr_fail(t, "expected a bool field, found Thrift type %d", type);
    return 0;
}

/* List/set header; the field's type must be LIST or SET. */
static int tr_list(tr *t, int type, int *etype, uint32_t *n) {
    if (type != TT_LIST && type != TT_SET)
        return tr_fail(t, "expected a list field, found Thrift type %d", type);
    if (t->p >= t->end) return tr_fail(t, "truncated list header");
    uint8_t b = *t->p++;
    uint64_t size = b >> 4;
    *etype = b & 0x0f;
    if (size == 15 && tr_varint(t, &size)) return -1;
    if (*etype == TT_STOP || *etype > TT_STRUCT) return tr_fail(t, "bad list element type %d", *etype);
    if (size > (uint64_t)(t->end - t->p))
        return tr_fail(t, "list of %llu elements cannot fit in the %zu bytes left",
                       (unsigned long long)size, (size_t)(t->end - t->p));
    *n = (uint32_t)size;
    return 0;
}

/* Next field header of a struct: 1 (field), 0 (stop), -1 (error). */
static int tr_field(tr *t, int16_t *last, int16_t *id, int *type) {
    if (t->p >= t->end) return tr_fail(t, "truncated struct (no stop byte)");
    uint8_t b = *t->p++;
    if (b == 0) return 0;
    *type = b & 0x0f;
    int delta = b >> 4;
    if (*type > TT_STRUCT || *type == TT_STOP) return tr_fail(t, "bad field type %d", *type);
    if (delta) {
        *id = (int16_t)(*last + delta);
    } else {
        int64_t v;
        if (tr_zigzag(t, &v)) return -1;
        if (v < INT16_MIN || v > INT16_MAX) return tr_fail(t, "field id %lld out of range", (long long)v);
        *id = (int16_t)v;
    }
    *last = *id;
    return 1;
}

static int tr_skip(tr *t, int type, int in_container) {
    uint64_t u = 0;
    switch (type) {
    case TT_TRUE:
    case TT_FALSE:
        if (!in_container) return 0; /* the value lives in the field header */
        /* inside a list/map a bool is one byte */
        if (t->p >= t->end) return tr_fail(t, "truncated bool");
        t->p++;
        return 0;
    case TT_BYTE:
        if (t->p >= t->end) return tr_fail(t, "truncated byte");
        t->p++;
        return 0;
    case TT_I16:
    case TT_I32:
    case TT_I64:
        return tr_varint(t, &u);
    case TT_DOUBLE:
        if (t->end - t->p < 8) return tr_fail(t, "truncated double");
        t->p += 8;
        return 0;
    case TT_BINARY: {
        const uint8_t *s;
        size_t n;
        return tr_binary(t, TT_BINARY, &s, &n);
    }
    case TT_LIST:
    case TT_SET: {
        int et;
        uint32_t n;
        if (++t->depth > TR_MAX_DEPTH) return tr_fail(t, "nested deeper than %d", TR_MAX_DEPTH);
        if (tr_list(t, type, &et, &n)) return -1;
        for (uint32_t i = 0; i < n; i++)
            if (tr_skip(t, et, 1)) return -1;
        t->depth--;
        return 0;
    }
    case TT_MAP: {
        if (++t->depth > TR_MAX_DEPTH) return tr_fail(t, "nested deeper than %d", TR_MAX_DEPTH);
        if (tr_varint(t, &u)) return -1;
        if (u > (uint64_t)(t->end - t->p) / 2)
            return tr_fail(t, "map of %llu entries cannot fit", (unsigned long long)u);
        if (u) {
            if (t->p >= t->end) return tr_fail(t, "truncated map header");
            uint8_t kv = *t->p++;
            int kt = kv >> 4, vt = kv & 0x0f;
            if (kt == TT_STOP || kt > TT_STRUCT || vt == TT_STOP || vt > TT_STRUCT)
                return tr_fail(t, "bad map key/value types %d/%d", kt, vt);
            for (uint64_t i = 0; i < u; i++)
                if (tr_skip(t, kt, 1) || tr_skip(t, vt, 1)) return -1;
        }
        t->depth--;
        return 0;
    }
    case TT_STRUCT: {
        if (++t->depth > TR_MAX_DEPTH) return tr_fail(t, "nested deeper than %d", TR_MAX_DEPTH);
        int16_t last = 0, id = 0;
        int ft = 0, r;
        while ((r = tr_field(t, &last, &id, &ft)) == 1)
            if (tr_skip(t, ft, 0)) return -1;
        if (r < 0) return -1;
        t->depth--;
        return 0;
    }
    default:
        return tr_fail(t, "bad Thrift type %d", type);
    }
}

/* Reads a struct: field() handles a field (returns 1), declines it (0: skipped here) or
 * fails (-1). */
typedef int (*tr_field_fn)(tr *t, void *ctx, int16_t id, int type);
static int tr_struct(tr *t, tr_field_fn field, void *ctx) {
    if (++t->depth > TR_MAX_DEPTH) return tr_fail(t, "nested deeper than %d", TR_MAX_DEPTH);
    int16_t last = 0, id = 0;
    int type = 0, r;
    while ((r = tr_field(t, &last, &id, &type)) == 1) {
        int h = field(t, ctx, id, type);
        if (h < 0) return -1;
        if (h == 0 && tr_skip(t, type, 0)) return -1;
    }
    if (r < 0) return -1;
    t->depth--;
    return 0;
}

/* Struct field at the top of a struct field callback: expects type STRUCT. */
static int tr_sub(tr *t, int type, tr_field_fn field, void *ctx) {
    if (type != TT_STRUCT) return tr_fail(t, "expected a struct field, found Thrift type %d", type);
    return tr_struct(t, field, ctx);
}

/* ---------------------------------------------------------------- metadata structures */

typedef struct {
    char *name; /* dotted path */
    int ptype;
    int32_t type_length;
    int is_unsigned; /* INT32/INT64 annotated UINT_* (converted or logical type) */
    int max_def, max_rep, nested;
    int kind; /* PQ_BYTES / PQ_DOUBLE / 0 */
} pq_leaf;

typedef struct {
    int has_meta, ext_file;
    int32_t ptype, codec;
    int64_t num_values, total_compressed, data_off, dict_off; /* dict_off -1: absent */
    char *path;                                                /* path_in_schema joined */
} pq_chunk;

typedef struct {
    int64_t num_rows;
    int has_rows, ncols;
    pq_chunk *cols;
} pq_rg;

struct parquet_file {
    char *path;
    const uint8_t *map;
    size_t size;
    size_t meta_start; /* first byte of FileMetaData; data lies in [4, meta_start) */
    int64_t num_rows;
    int nleaves;
    pq_leaf *leaves;
    int nrg;
    pq_rg *rgs;
};

/* schema element while parsing */
typedef struct {
    char *name;
    int32_t type, type_length, rep, num_children, converted;
    int has_type, has_rep, has_children, has_name, has_converted;
    int logical_unsigned; /* LogicalType INTEGER with isSigned = false */
} pq_sel;

typedef struct {
    pq_sel *sel;
    int nsel;
    pq_rg *rgs;
    int nrg;
    int64_t num_rows;
    int has_schema, has_rows, has_rgs;
} fm_ctx;

static char *dup_n(const uint8_t *s, size_t n) {
    char *r = xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* IntType { 1: i8 bitWidth, 2: bool isSigned } */
static int int_type_field(tr *t, void *ctx, int16_t id, int type) {
    pq_sel *s = ctx;
    int v = 1;
    if (id != 2) return 0;
    if (tr_bool(t, type, &v)) return -1;
    s->logical_unsigned = !v;
    return 1;
}
/* LogicalType is a union; field 10 is INTEGER */
static int logical_field(tr *t, void *ctx, int16_t id, int type) {
    if (id != 10) return 0;
    return tr_sub(t, type, int_type_field, ctx) ? -1 : 1;
}

static int sel_field(tr *t, void *ctx, int16_t id, int type) {
    pq_sel *s = ctx;
    const uint8_t *str;
    size_t n;
    switch (id) {
    case 1: s->has_type = 1; return tr_i32(t, type, &s->type) ? -1 : 1;
    case 2: return tr_i32(t, type, &s->type_length) ? -1 : 1;
    case 3: s->has_rep = 1; return tr_i32(t, type, &s->rep) ? -1 : 1;
    case 4:
        if (tr_binary(t, type, &str, &n)) return -1;
        if (s->has_name) return tr_fail(t, "schema element with two names");
        s->name = dup_n(str, n);
        s->has_name = 1;
        return 1;
    case 5: s->has_children = 1; return tr_i32(t, type, &s->num_children) ? -1 : 1;
    case 6: s->has_converted = 1; return tr_i32(t, type, &s->converted) ? -1 : 1;
    case 10: return tr_sub(t, type, logical_field, s) ? -1 : 1;
    default: return 0;
    }
}

typedef struct {
    pq_chunk *c;
    int has_type, has_codec, has_nv, has_data_off, has_tc;
} cm_ctx;

static int cm_field(tr *t, void *ctx, int16_t id, int type) {
    cm_ctx *m = ctx;
    pq_chunk *c = m->c;
    switch (id) {
    case 1: m->has_type = 1; return tr_i32(t, type, &c->ptype) ? -1 : 1;
    case 3: { /* path_in_schema */
        int et;
        uint32_t n;
        if (tr_list(t, type, &et, &n)) return -1;
        if (et != TT_BINARY) return tr_fail(t, "path_in_schema is not a list of strings");
        if (c->path) return tr_fail(t, "two path_in_schema fields");
        size_t cap = 16, len = 0;
        char *p = xmalloc(cap);
        p[0] = 0;
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *s = NULL;
            size_t sl = 0;
            if (tr_binary(t, TT_BINARY, &s, &sl)) {
                free(p);
                return -1;
            }
            while (len + sl + 2 > cap) cap *= 2;
            p = xrealloc(p, cap);
            if (i) p[len++] = '.';
            memcpy(p + len, s, sl);
            len += sl;
            p[len] = 0;
        }
        c->path = p;
        return 1;
    }
    case 4: m->has_codec = 1; return tr_i32(t, type, &c->codec) ? -1 : 1;
    case 5: m->has_nv = 1; return tr_i64(t, type, &c->num_values) ? -1 : 1;
    case 7: m->has_tc = 1; return tr_i64(t, type, &c->total_compressed) ? -1 : 1;
    case 9: m->has_data_off = 1; return tr_i64(t, type, &c->data_off) ? -1 : 1;
    case 11: return tr_i64(t, type, &c->dict_off) ? -1 : 1;
    default: return 0;
    }
}

static int cc_field(tr *t, void *ctx, int16_t id, int type) {
    pq_chunk *c = ctx;
    if (id == 1) { /* file_path: the chunk lives in another file */
        const uint8_t *s;
        size_t n;
        if (tr_binary(t, type, &s, &n)) return -1;
        c->ext_file = 1;
        return 1;
    }
    if (id == 3) {
        cm_ctx m = {.c = c};
        if (c->has_meta) return tr_fail(t, "column chunk with two meta_data fields");
        if (tr_sub(t, type, cm_field, &m)) return -1;
        if (!m.has_type || !m.has_codec || !m.has_nv || !m.has_data_off || !m.has_tc)
            return tr_fail(t, "column metadata lacks a required field (type, codec, "
                              "num_values, total_compressed_size or data_page_offset)");
        c->has_meta = 1;
        return 1;
    }
    return 0;
}

static int rg_field(tr *t, void *ctx, int16_t id, int type) {
    pq_rg *g = ctx;
    if (id == 1) {
        int et;
        uint32_t n;
        if (g->cols) return tr_fail(t, "row group with two column lists");
        if (tr_list(t, type, &et, &n)) return -1;
        if (et != TT_STRUCT) return tr_fail(t, "row group columns are not structs");
        if (n > INT_MAX / 2) return tr_fail(t, "too many columns");
        /* grown as parsed: a hostile count costs no memory until its structs are there */
        int cap = 0;
        g->cols = xmalloc(sizeof(pq_chunk));
        for (uint32_t i = 0; i < n; i++) {
            if (g->ncols == cap) {
                cap = cap ? 2 * cap : 8;
                g->cols = xrealloc(g->cols, (size_t)cap * sizeof(pq_chunk));
            }
            pq_chunk *c = &g->cols[g->ncols++];
            memset(c, 0, sizeof *c);
            c->dict_off = -1;
            if (tr_struct(t, cc_field, c)) return -1;
        }
        return 1;
    }
    if (id == 3) {
        g->has_rows = 1;
        return tr_i64(t, type, &g->num_rows) ? -1 : 1;
    }
    return 0;
}

static int fm_field(tr *t, void *ctx, int16_t id, int type) {
    fm_ctx *f = ctx;
    int et;
    uint32_t n;
    switch (id) {
    case 2:
        if (f->has_schema) return tr_fail(t, "two schema fields");
        if (tr_list(t, type, &et, &n)) return -1;
        if (et != TT_STRUCT) return tr_fail(t, "schema is not a list of structs");
        if (n > INT_MAX / 2) return tr_fail(t, "too many schema elements");
        f->has_schema = 1;
        int cap = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (f->nsel == cap) {
                cap = cap ? 2 * cap : 16;
                f->sel = xrealloc(f->sel, (size_t)cap * sizeof(pq_sel));
            }
            pq_sel *e = &f->sel[f->nsel++];
            memset(e, 0, sizeof *e);
            if (tr_struct(t, sel_field, e)) return -1;
        }
        return 1;
    case 3:
        f->has_rows = 1;
        return tr_i64(t, type, &f->num_rows) ? -1 : 1;
    case 4: {
        if (f->has_rgs) return tr_fail(t, "two row_groups fields");
        if (tr_list(t, type, &et, &n)) return -1;
        if (et != TT_STRUCT) return tr_fail(t, "row_groups is not a list of structs");
        if (n > INT_MAX / 2) return tr_fail(t, "too many row groups");
        f->has_rgs = 1;
        /* grown as parsed: a hostile count costs no memory until its structs are there */
        int cap = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (f->nrg == cap) {
                cap = cap ? 2 * cap : 8;
                f->rgs = xrealloc(f->rgs, (size_t)cap * sizeof(pq_rg));
            }
            memset(&f->rgs[f->nrg], 0, sizeof(pq_rg));
            f->nrg++;
            if (tr_struct(t, rg_field, &f->rgs[f->nrg - 1])) return -1;
        }
        return 1;
    }
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------- schema -> leaf columns */

typedef struct {
    fm_ctx *f;
    int next; /* next schema element */
    pq_leaf *leaves;
    int nleaves, cap;
    char err[200];
} schema_walk;

/* Consumes element w->next (and its subtree); prefix is the parent's path ("" at top). */
static int walk_schema(schema_walk *w, const char *prefix, int depth, int def, int rep) {
    if (depth > 64) {
        snprintf(w->err, sizeof w->err, "schema nested deeper than 64 levels");
        return -1;
    }
    if (w->next >= w->f->nsel) {
        snprintf(w->err, sizeof w->err, "schema has fewer elements than its num_children say");
        return -1;
    }
    pq_sel *s = &w->f->sel[w->next++];
    if (!s->has_name) {
        snprintf(w->err, sizeof w->err, "schema element %d has no name", w->next - 1);
        return -1;
    }
    if (s->has_rep && (s->rep < 0 || s->rep > 2)) {
        snprintf(w->err, sizeof w->err, "schema element '%s': bad repetition %d", s->name, s->rep);
        return -1;
    }
    int r = s->has_rep ? s->rep : REP_REQUIRED;
    if (r == REP_OPTIONAL) def++;
    if (r == REP_REPEATED) def++, rep++;
    size_t pl = strlen(prefix), nl = strlen(s->name);
    char *path = xmalloc(pl + nl + 2);
    if (pl) {
        memcpy(path, prefix, pl);
        path[pl] = '.';
        memcpy(path + pl + 1, s->name, nl + 1);
    } else {
        memcpy(path, s->name, nl + 1);
    }
    int is_group = (s->has_children && s->num_children > 0) || !s->has_type;
    if (is_group) {
        if (s->has_children && s->num_children < 0) {
            snprintf(w->err, sizeof w->err, "schema element '%s': negative num_children", s->name);
            free(path);
            return -1;
        }
        int nc = s->has_children ? s->num_children : 0;
        for (int i = 0; i < nc; i++)
            if (walk_schema(w, path, depth + 1, def, rep)) {
                free(path);
                return -1;
            }
        free(path);
        return 0;
    }
    if (s->type < 0 || s->type > PT_FLBA) {
        snprintf(w->err, sizeof w->err, "column '%s': unknown physical type %d", path, s->type);
        free(path);
        return -1;
    }
    if (w->nleaves == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        w->leaves = xrealloc(w->leaves, (size_t)w->cap * sizeof(pq_leaf));
    }
    pq_leaf *l = &w->leaves[w->nleaves++];
    memset(l, 0, sizeof *l);
    l->name = path;
    l->ptype = s->type;
    l->type_length = s->type_length;
    /* ConvertedType UINT_8 = 11 .. UINT_64 = 14 */
    l->is_unsigned = (s->has_converted && s->converted >= 11 && s->converted <= 14) ||
                     s->logical_unsigned;
    l->max_def = def;
    l->max_rep = rep;
    l->nested = depth > 1;
    if (l->nested || rep > 0) l->kind = 0;
    else if (s->type == PT_BYTE_ARRAY) l->kind = PQ_BYTES;
    else if (s->type == PT_FLBA) l->kind = s->type_length > 0 ? PQ_BYTES : 0;
    else if (s->type == PT_INT96) l->kind = 0;
    else l->kind = PQ_DOUBLE;
    return 0;
}

/* ---------------------------------------------------------------- open / close */

static void free_rgs(pq_rg *rgs, int nrg) {
    for (int i = 0; i < nrg; i++) {
        for (int j = 0; j < rgs[i].ncols; j++) free(rgs[i].cols[j].path);
        free(rgs[i].cols);
    }
    free(rgs);
}

static void free_fm(fm_ctx *f) {
    for (int i = 0; i < f->nsel; i++) free(f->sel[i].name);
    free(f->sel);
    free_rgs(f->rgs, f->nrg);
    f->sel = NULL;
    f->rgs = NULL;
    f->nsel = f->nrg = 0;
}

void parquet_close(parquet_file *pf) {
    if (!pf) return;
    if (pf->map) munmap((void *)pf->map, pf->size);
    for (int i = 0; i < pf->nleaves; i++) free(pf->leaves[i].name);
    free(pf->leaves);
    free_rgs(pf->rgs, pf->nrg);
    free(pf->path);
    free(pf);
}

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int open_fail(parquet_file *pf, fm_ctx *f, const char *fmt, ...) MAPO_PRINTF(3, 4);
static int open_fail(parquet_file *pf, fm_ctx *f, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mapo_error("%s: %s", pf->path, msg);
    if (f) free_fm(f);
    parquet_close(pf);
    return -1;
}

int parquet_open(parquet_file **out, const char *path) {
    *out = NULL;
    parquet_file *pf = xcalloc(1, sizeof *pf);
    pf->path = xstrdup(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return open_fail(pf, NULL, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return open_fail(pf, NULL, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return open_fail(pf, NULL, "not a regular file");
    }
    if (st.st_size < 12) {
        close(fd);
        return open_fail(pf, NULL, "%lld bytes is too short for a parquet file (at least 12)",
                         (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return open_fail(pf, NULL, "file too large to map");
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return open_fail(pf, NULL, "cannot mmap: %s", strerror(e));
    pf->map = m;
    pf->size = (size_t)st.st_size;
    const uint8_t *b = pf->map;
    size_t n = pf->size;
    if (!memcmp(b + n - 4, "PARE", 4))
        return open_fail(pf, NULL, "encrypted parquet files (footer magic PARE) are not supported");
    if (memcmp(b, "PAR1", 4) || memcmp(b + n - 4, "PAR1", 4))
        return open_fail(pf, NULL, "not a parquet file (no PAR1 magic at the start and end; "
                                   "truncated?)");
    uint32_t flen = rd_u32(b + n - 8);
    if (flen == 0 || (uint64_t)flen > n - 12)
        return open_fail(pf, NULL, "footer length %u does not fit in a %zu-byte file", flen, n);
    pf->meta_start = n - 8 - flen;

    fm_ctx f = {0};
    tr t = {.p = b + pf->meta_start, .end = b + n - 8};
    if (tr_struct(&t, fm_field, &f))
        return open_fail(pf, &f, "footer (FileMetaData at byte %zu): %s", pf->meta_start, t.err);
    if (!f.has_schema || !f.has_rows || !f.has_rgs)
        return open_fail(pf, &f, "footer lacks a required field (schema, num_rows or row_groups)");
    if (f.nsel < 1) return open_fail(pf, &f, "footer has an empty schema");
    if (f.num_rows < 0) return open_fail(pf, &f, "negative num_rows %lld", (long long)f.num_rows);

    /* leaves: the root's children, depth first */
    schema_walk w = {.f = &f, .next = 1};
    pq_sel *root = &f.sel[0];
    int nc = root->has_children ? root->num_children : 0;
    int bad = nc < 0;
    if (bad) snprintf(w.err, sizeof w.err, "schema root has negative num_children");
    for (int i = 0; !bad && i < nc; i++) bad = walk_schema(&w, "", 1, 0, 0) != 0;
    if (!bad && w.next != f.nsel) {
        snprintf(w.err, sizeof w.err, "schema has %d elements but num_children account for %d",
                 f.nsel, w.next);
        bad = 1;
    }
    pf->leaves = w.leaves;
    pf->nleaves = w.nleaves;
    if (bad) return open_fail(pf, &f, "schema: %s", w.err);

    int64_t total = 0;
    for (int g = 0; g < f.nrg; g++) {
        pq_rg *rg = &f.rgs[g];
        if (!rg->has_rows || rg->num_rows < 0)
            return open_fail(pf, &f, "row group %d: missing or negative num_rows", g);
        if (rg->ncols != pf->nleaves)
            return open_fail(pf, &f, "row group %d has %d column chunks but the schema has %d "
                                     "columns", g, rg->ncols, pf->nleaves);
        if (rg->num_rows > INT64_MAX - total)
            return open_fail(pf, &f, "row group %d: row count overflows", g);
        total += rg->num_rows;
        for (int c = 0; c < rg->ncols; c++) {
            pq_chunk *ch = &rg->cols[c];
            if (ch->has_meta && ch->path && strcmp(ch->path, pf->leaves[c].name))
                return open_fail(pf, &f, "row group %d, column %d: path_in_schema '%s' does "
                                         "not match the schema's '%s'", g, c, ch->path,
                                 pf->leaves[c].name);
        }
    }
    if (total != f.num_rows)
        return open_fail(pf, &f, "num_rows %lld but the row groups hold %lld rows",
                         (long long)f.num_rows, (long long)total);
    pf->num_rows = f.num_rows;
    pf->rgs = f.rgs;
    pf->nrg = f.nrg;
    f.rgs = NULL;
    f.nrg = 0;
    free_fm(&f);
    *out = pf;
    return 0;
}

int64_t parquet_num_rows(const parquet_file *pf) { return pf->num_rows; }
int parquet_num_row_groups(const parquet_file *pf) { return pf->nrg; }
int64_t parquet_row_group_num_rows(const parquet_file *pf, int rg) {
    return rg >= 0 && rg < pf->nrg ? pf->rgs[rg].num_rows : -1;
}
int parquet_num_columns(const parquet_file *pf) { return pf->nleaves; }
const char *parquet_column_name(const parquet_file *pf, int col) {
    return col >= 0 && col < pf->nleaves ? pf->leaves[col].name : NULL;
}
int parquet_column_index(const parquet_file *pf, const char *name) {
    for (int i = 0; i < pf->nleaves; i++)
        if (!strcmp(pf->leaves[i].name, name)) return i;
    return -1;
}
int parquet_column_kind(const parquet_file *pf, int col) {
    return col >= 0 && col < pf->nleaves ? pf->leaves[col].kind : 0;
}

/* ---------------------------------------------------------------- page headers */

typedef struct {
    int32_t type, usize, csize, crc;
    int has_type, has_usize, has_csize, has_crc;
    int has_dp, has_dict, has_dp2;
    /* DataPageHeader */
    int32_t dp_nv, dp_enc, dp_def_enc, dp_rep_enc;
    /* DictionaryPageHeader */
    int32_t dict_nv, dict_enc;
    /* DataPageHeaderV2 */
    int32_t v2_nv, v2_nulls, v2_rows, v2_enc, v2_def_len, v2_rep_len;
    int v2_compressed;
    int req; /* required sub-fields seen (bit mask) */
} pq_page;

static int dp_field(tr *t, void *ctx, int16_t id, int type) {
    pq_page *h = ctx;
    switch (id) {
    case 1: h->req |= 1; return tr_i32(t, type, &h->dp_nv) ? -1 : 1;
    case 2: h->req |= 2; return tr_i32(t, type, &h->dp_enc) ? -1 : 1;
    case 3: h->req |= 4; return tr_i32(t, type, &h->dp_def_enc) ? -1 : 1;
    case 4: h->req |= 8; return tr_i32(t, type, &h->dp_rep_enc) ? -1 : 1;
    default: return 0;
    }
}
static int dict_field(tr *t, void *ctx, int16_t id, int type) {
    pq_page *h = ctx;
    switch (id) {
    case 1: h->req |= 16; return tr_i32(t, type, &h->dict_nv) ? -1 : 1;
    case 2: h->req |= 32; return tr_i32(t, type, &h->dict_enc) ? -1 : 1;
    default: return 0;
    }
}
static int dp2_field(tr *t, void *ctx, int16_t id, int type) {
    pq_page *h = ctx;
    switch (id) {
    case 1: h->req |= 64; return tr_i32(t, type, &h->v2_nv) ? -1 : 1;
    case 2: h->req |= 128; return tr_i32(t, type, &h->v2_nulls) ? -1 : 1;
    case 3: h->req |= 256; return tr_i32(t, type, &h->v2_rows) ? -1 : 1;
    case 4: h->req |= 512; return tr_i32(t, type, &h->v2_enc) ? -1 : 1;
    case 5: h->req |= 1024; return tr_i32(t, type, &h->v2_def_len) ? -1 : 1;
    case 6: h->req |= 2048; return tr_i32(t, type, &h->v2_rep_len) ? -1 : 1;
    case 7: return tr_bool(t, type, &h->v2_compressed) ? -1 : 1;
    default: return 0;
    }
}
static int ph_field(tr *t, void *ctx, int16_t id, int type) {
    pq_page *h = ctx;
    switch (id) {
    case 1: h->has_type = 1; return tr_i32(t, type, &h->type) ? -1 : 1;
    case 2: h->has_usize = 1; return tr_i32(t, type, &h->usize) ? -1 : 1;
    case 3: h->has_csize = 1; return tr_i32(t, type, &h->csize) ? -1 : 1;
    case 4: h->has_crc = 1; return tr_i32(t, type, &h->crc) ? -1 : 1;
    case 5: h->has_dp = 1; return tr_sub(t, type, dp_field, h) ? -1 : 1;
    case 7: h->has_dict = 1; return tr_sub(t, type, dict_field, h) ? -1 : 1;
    case 8:
        h->has_dp2 = 1;
        h->v2_compressed = 1; /* default */
        return tr_sub(t, type, dp2_field, h) ? -1 : 1;
    default: return 0;
    }
}

/* ---------------------------------------------------------------- column reading */

typedef struct {
    void **bufs;
    int n, cap;
} pq_storage;

static void storage_add(pq_storage *s, void *p) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 8;
        s->bufs = xrealloc(s->bufs, (size_t)s->cap * sizeof(void *));
    }
    s->bufs[s->n++] = p;
}

typedef struct {
    const parquet_file *pf;
    int rg, col;
    const pq_leaf *leaf;
    const pq_chunk *ch;
    parquet_column *out;
    pq_storage *st;
    int64_t row;     /* rows filled so far */
    size_t page_off; /* file offset of the current page header (for messages) */
    /* dictionary */
    int has_dict;
    int64_t dict_n;
    double *dict_num;
    const uint8_t **dict_ptr;
    int64_t *dict_len;
    /* scratch */
    uint32_t *lev;
    int64_t lev_cap;
    uint32_t *idx;
    int64_t idx_cap;
} col_reader;

static int cr_fail(col_reader *r, const char *fmt, ...) MAPO_PRINTF(2, 3);
static int cr_fail(col_reader *r, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mapo_error("%s: row group %d, column '%s': %s", r->pf->path, r->rg, r->leaf->name,
                      msg);
}
static int pg_fail(col_reader *r, const char *fmt, ...) MAPO_PRINTF(2, 3);
static int pg_fail(col_reader *r, const char *fmt, ...) {
    char msg[500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cr_fail(r, "page at byte %zu: %s", r->page_off, msg);
}

static uint32_t *grow_u32(uint32_t **p, int64_t *cap, int64_t n) {
    if (n > *cap) {
        *p = xrealloc(*p, (size_t)n * sizeof(uint32_t));
        *cap = n;
    }
    return *p;
}

/* The most a codec can expand (docs/RELIABILITY.md "Hostile sizes"): SNAPPY's densest element
 * is a 3-byte copy of 64 bytes (21.3:1); ZSTD's blocks hold at most 128 KiB behind a 3-byte
 * header (an RLE block: 4 bytes, 32768:1). A page declaring more is refused before its buffer
 * is allocated. */
#define SNAPPY_MAX_RATIO 22
#define ZSTD_MAX_RATIO 65536

/* Decompress (or copy) n bytes at in into a fresh buffer of exactly un bytes. */
static int decompress(col_reader *r, int codec, const uint8_t *in, size_t n, size_t un,
                      uint8_t **outp) {
    *outp = NULL;
    if (codec == CODEC_NONE) {
        if (n != un)
            return pg_fail(r, "uncompressed page of %zu bytes declares %zu bytes", n, un);
        uint8_t *o = xmalloc(un ? un : 1);
        if (un) memcpy(o, in, un);
        *outp = o;
        return 0;
    }
    if (codec == CODEC_SNAPPY) {
        size_t len;
        if (snappy_uncompressed_length((const char *)in, n, &len) != SNAPPY_OK)
            return pg_fail(r, "corrupt SNAPPY data (no valid length)");
        /* a snappy copy element of 3 bytes yields at most 64: refuse before allocating */
        if (len / SNAPPY_MAX_RATIO > n || un / SNAPPY_MAX_RATIO > n)
            return pg_fail(r, "SNAPPY page of %zu bytes declares %zu bytes uncompressed (page "
                              "header: %zu); snappy expands at most %d:1", n, len, un,
                           SNAPPY_MAX_RATIO);
        if (len != un)
            return pg_fail(r, "SNAPPY data decompresses to %zu bytes, page header says %zu",
                           len, un);
        uint8_t *o = xmalloc(un ? un : 1);
        size_t ol = un;
        if (snappy_uncompress((const char *)in, n, (char *)o, &ol) != SNAPPY_OK || ol != un) {
            free(o);
            return pg_fail(r, "corrupt SNAPPY data");
        }
        *outp = o;
        return 0;
    }
    if (codec == CODEC_ZSTD) {
        /* the first frame's declared size (pyarrow writes one frame per page) */
        unsigned long long cs = ZSTD_getFrameContentSize(in, n);
        if (cs == ZSTD_CONTENTSIZE_ERROR) return pg_fail(r, "corrupt ZSTD data (bad frame)");
        if (cs != ZSTD_CONTENTSIZE_UNKNOWN && cs > un)
            return pg_fail(r, "ZSTD data decompresses to %llu bytes, page header says %zu", cs, un);
        /* a block of at least 3 bytes yields at most 128 KiB: refuse before allocating */
        if (un / ZSTD_MAX_RATIO > n)
            return pg_fail(r, "ZSTD page of %zu bytes cannot decompress to %zu bytes (zstd "
                              "expands at most %d:1)", n, un, ZSTD_MAX_RATIO);
        uint8_t *o = xmalloc(un ? un : 1);
        size_t got = ZSTD_decompress(o, un, in, n);
        if (ZSTD_isError(got)) {
            free(o);
            return pg_fail(r, "corrupt ZSTD data: %s", ZSTD_getErrorName(got));
        }
        if (got != un) {
            free(o);
            return pg_fail(r, "ZSTD data decompresses to %zu bytes, page header says %zu", got, un);
        }
        *outp = o;
        return 0;
    }
    if (codec == CODEC_GZIP) {
        /* deflate cannot expand more than ~1032x: refuse absurd sizes before allocating */
        if (un / 1032 > n + 64)
            return pg_fail(r, "GZIP page of %zu bytes cannot decompress to %zu bytes", n, un);
        if (n > UINT_MAX || un > UINT_MAX) return pg_fail(r, "GZIP page too large");
        uint8_t *o = xmalloc(un ? un : 1);
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit2(&z, 15 + 32) != Z_OK) { /* gzip or zlib header */
            free(o);
            return pg_fail(r, "zlib inflateInit failed");
        }
        z.next_in = (Bytef *)in;
        z.avail_in = (uInt)n;
        z.next_out = o;
        z.avail_out = (uInt)un;
        int zr = inflate(&z, Z_FINISH);
        size_t got = z.total_out;
        inflateEnd(&z);
        if (zr != Z_STREAM_END) {
            free(o);
            if (zr == Z_BUF_ERROR && got == un)
                return pg_fail(r, "GZIP data decompresses to more than the %zu bytes the page "
                                  "header says", un);
            return pg_fail(r, "corrupt or truncated GZIP data (zlib: %s)", z.msg ? z.msg : "error");
        }
        if (got != un) {
            free(o);
            return pg_fail(r, "GZIP data decompresses to %zu bytes, page header says %zu", got, un);
        }
        *outp = o;
        return 0;
    }
    return cr_fail(r, "compression codec %s (%d) is not supported (only UNCOMPRESSED, SNAPPY, "
                      "GZIP, ZSTD)", codec_name(codec), codec);
}

static int bit_width(uint32_t v) {
    int w = 0;
    while (v) w++, v >>= 1;
    return w;
}

/* RLE / bit-packed hybrid: count values of width w (0..32) from [p, p+n) into out.
 * Writes a description into err on failure. */
static int rle_decode(const uint8_t *p, size_t n, int w, uint32_t *out, int64_t count,
                      char *err, size_t errsz) {
    size_t i = 0, vbytes = ((size_t)w + 7) / 8;
    int64_t got = 0;
    uint32_t mask = w == 32 ? 0xffffffffu : ((1u << w) - 1);
    while (got < count) {
        uint64_t h = 0;
        int k = 0;
        for (;;) {
            if (i >= n) {
                snprintf(err, errsz, "RLE data ends after %lld of %lld values", (long long)got,
                         (long long)count);
                return -1;
            }
            uint8_t b = p[i++];
            h |= (uint64_t)(b & 0x7f) << (7 * k);
            if (!(b & 0x80)) break;
            if (++k == 5) {
                snprintf(err, errsz, "RLE run header longer than 5 bytes");
                return -1;
            }
        }
        if (h > 0xffffffffu) {
            snprintf(err, errsz, "RLE run header overflows 32 bits");
            return -1;
        }
        int64_t want = count - got;
        if (h & 1) { /* bit-packed: (h >> 1) groups of 8 values, w bits each, LSB first */
            uint64_t nvals = (h >> 1) * 8, need = (h >> 1) * (uint64_t)w;
            size_t avail = n - i, bytes = need < avail ? (size_t)need : avail;
            uint64_t have = w ? (uint64_t)bytes * 8 / (unsigned)w : nvals;
            if (have > nvals) have = nvals;
            int64_t take = (int64_t)(have < (uint64_t)want ? have : (uint64_t)want);
            if (take < want && (uint64_t)take < nvals) {
                snprintf(err, errsz, "bit-packed run truncated after %lld of %lld values",
                         (long long)(got + take), (long long)count);
                return -1;
            }
            const uint8_t *q = p + i;
            uint64_t acc = 0;
            int nb = 0;
            size_t j = 0;
            for (int64_t v = 0; v < take; v++) {
                while (nb < w) {
                    acc |= (uint64_t)q[j++] << nb;
                    nb += 8;
                }
                out[got + v] = (uint32_t)(acc & mask);
                acc >>= w;
                nb -= w;
            }
            got += take;
            i += bytes;
        } else { /* RLE run: (h >> 1) copies of a value stored in ceil(w/8) bytes */
            uint64_t run = h >> 1;
            if (vbytes > n - i) {
                snprintf(err, errsz, "RLE run value truncated");
                return -1;
            }
            uint32_t v = 0;
            for (size_t b = 0; b < vbytes; b++) v |= (uint32_t)p[i + b] << (8 * b);
            i += vbytes;
            if (v & ~mask) {
                snprintf(err, errsz, "RLE run value %u does not fit in %d bits", v, w);
                return -1;
            }
            int64_t take = (int64_t)(run < (uint64_t)want ? run : (uint64_t)want);
            for (int64_t t = 0; t < take; t++) out[got + t] = v;
            got += take;
        }
    }
    return 0;
}

static double rd_f64(const uint8_t *p) {
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--) u = u << 8 | p[i];
    double d;
    memcpy(&d, &u, 8);
    return d;
}
static float rd_f32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int64_t rd_i64(const uint8_t *p) {
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--) u = u << 8 | p[i];
    return (int64_t)u;
}

/* PLAIN: nv values of the leaf's type from [p, e), into either the output rows
 * (valid-marked slots from r->row on: lev[i] == max_def) when dict == 0, or the
 * dictionary (dense) when dict == 1. */
static int plain_decode(col_reader *r, const uint8_t *p, const uint8_t *e, int64_t nrows,
                        const uint32_t *lev, int dict) {
    const pq_leaf *L = r->leaf;
    size_t avail = (size_t)(e - p), off = 0;
    int64_t vi = 0; /* value index */
    uint32_t md = (uint32_t)L->max_def;
    for (int64_t i = 0; i < nrows; i++) {
        if (!dict && lev && lev[i] != md) continue;
        int64_t slot = dict ? i : r->row + i;
        double d = 0;
        switch (L->ptype) {
        case PT_BOOLEAN:
            if ((uint64_t)vi / 8 >= avail) goto trunc;
            d = (p[vi / 8] >> (vi % 8)) & 1;
            break;
        case PT_INT32:
            if (avail - off < 4) goto trunc;
            d = L->is_unsigned ? (double)rd_u32(p + off) : (double)(int32_t)rd_u32(p + off);
            off += 4;
            break;
        case PT_FLOAT:
            if (avail - off < 4) goto trunc;
            d = (double)rd_f32(p + off);
            off += 4;
            break;
        case PT_INT64:
            if (avail - off < 8) goto trunc;
            d = L->is_unsigned ? (double)(uint64_t)rd_i64(p + off) : (double)rd_i64(p + off);
            off += 8;
            break;
        case PT_DOUBLE:
            if (avail - off < 8) goto trunc;
            d = rd_f64(p + off);
            off += 8;
            break;
        case PT_BYTE_ARRAY:
        case PT_FLBA: {
            size_t len;
            if (L->ptype == PT_BYTE_ARRAY) {
                if (avail - off < 4) goto trunc;
                len = rd_u32(p + off);
                off += 4;
            } else {
                len = (size_t)L->type_length;
            }
            if (avail - off < len) goto trunc;
            if (dict) {
                r->dict_ptr[slot] = p + off;
                r->dict_len[slot] = (int64_t)len;
            } else {
                r->out->ptr[slot] = p + off;
                r->out->len[slot] = (int64_t)len;
                r->out->valid[slot] = 1;
            }
            off += len;
            vi++;
            continue;
        }
        default:
            return pg_fail(r, "physical type %s cannot be read", ptype_name(L->ptype));
        }
        if (dict) r->dict_num[slot] = d;
        else {
            r->out->num[slot] = d;
            r->out->valid[slot] = 1;
        }
        vi++;
    }
    return 0;
trunc:
    return pg_fail(r, "PLAIN %s values truncated at value %lld (%zu bytes)", ptype_name(L->ptype),
                   (long long)vi, avail);
}

static int read_dict_page(col_reader *r, const pq_page *h, const uint8_t *body) {
    if (r->has_dict) return pg_fail(r, "second dictionary page in a column chunk");
    if (r->row > 0) return pg_fail(r, "dictionary page after data pages");
    if (!(h->req & 16) || !(h->req & 32))
        return pg_fail(r, "dictionary page header lacks num_values or encoding");
    if (h->dict_enc != ENC_PLAIN && h->dict_enc != ENC_PLAIN_DICTIONARY)
        return pg_fail(r, "dictionary page encoding %s (%d) is not supported",
                       enc_name(h->dict_enc), h->dict_enc);
    if (h->dict_nv < 0) return pg_fail(r, "negative dictionary size %d", h->dict_nv);
    uint8_t *buf;
    if (decompress(r, r->ch->codec, body, (size_t)h->csize, (size_t)h->usize, &buf)) return -1;
    int64_t nv = h->dict_nv;
    /* bound the allocation: every value takes at least this many bits */
    int pt = r->leaf->ptype;
    uint64_t minbits = pt == PT_BOOLEAN                     ? 1
                       : pt == PT_INT64 || pt == PT_DOUBLE  ? 64
                       : pt == PT_FLBA                      ? 8 * (uint64_t)r->leaf->type_length
                                                            : 32;
    if (nv > 0 && minbits > (uint64_t)h->usize * 8 / (uint64_t)nv) {
        free(buf);
        return pg_fail(r, "dictionary of %lld values cannot fit in %d bytes", (long long)nv,
                       h->usize);
    }
    r->dict_n = nv;
    if (r->leaf->kind == PQ_BYTES) {
        r->dict_ptr = xmalloc((size_t)(nv ? nv : 1) * sizeof *r->dict_ptr);
        r->dict_len = xmalloc((size_t)(nv ? nv : 1) * sizeof *r->dict_len);
    } else {
        r->dict_num = xmalloc((size_t)(nv ? nv : 1) * sizeof *r->dict_num);
    }
    r->has_dict = 1;
    int rc = plain_decode(r, buf, buf + h->usize, nv, NULL, 1);
    if (r->leaf->kind == PQ_BYTES) storage_add(r->st, buf);
    else free(buf);
    return rc;
}

/* The values of one data page: nrows rows (levels lev[i], NULL when required), nn of them
 * non-null, encoded with enc in [p, e). */
static int decode_values(col_reader *r, int enc, const uint8_t *p, const uint8_t *e,
                         int64_t nrows, const uint32_t *lev, int64_t nn) {
    parquet_column *o = r->out;
    uint32_t md = (uint32_t)r->leaf->max_def;
    char err[200];
    if (enc == ENC_PLAIN) return plain_decode(r, p, e, nrows, lev, 0);
    if (enc == ENC_PLAIN_DICTIONARY || enc == ENC_RLE_DICTIONARY) {
        if (!r->has_dict)
            return pg_fail(r, "%s page but the column chunk has no dictionary page",
                           enc_name(enc));
        if (nn == 0) return 0;
        if (p >= e) return pg_fail(r, "dictionary-encoded page has no bit width byte");
        int w = *p++;
        if (w > 32) return pg_fail(r, "dictionary index bit width %d > 32", w);
        uint32_t *idx = grow_u32(&r->idx, &r->idx_cap, nn);
        if (rle_decode(p, (size_t)(e - p), w, idx, nn, err, sizeof err))
            return pg_fail(r, "dictionary indices: %s", err);
        int64_t k = 0;
        for (int64_t i = 0; i < nrows; i++) {
            if (lev && lev[i] != md) continue;
            uint32_t x = idx[k++];
            if ((int64_t)x >= r->dict_n)
                return pg_fail(r, "dictionary index %u out of range (dictionary has %lld "
                                  "values)", x, (long long)r->dict_n);
            int64_t s = r->row + i;
            o->valid[s] = 1;
            if (o->kind == PQ_BYTES) {
                o->ptr[s] = r->dict_ptr[x];
                o->len[s] = r->dict_len[x];
            } else {
                o->num[s] = r->dict_num[x];
            }
        }
        return 0;
    }
    if (enc == ENC_RLE && r->leaf->ptype == PT_BOOLEAN) {
        /* 4-byte length, then the hybrid with bit width 1 */
        if (e - p < 4) return pg_fail(r, "RLE boolean values lack their length prefix");
        uint32_t len = rd_u32(p);
        p += 4;
        if (len > (size_t)(e - p))
            return pg_fail(r, "RLE boolean length %u runs past the page (%zu bytes left)", len,
                           (size_t)(e - p));
        uint32_t *idx = grow_u32(&r->idx, &r->idx_cap, nn > 0 ? nn : 1);
        if (rle_decode(p, len, 1, idx, nn, err, sizeof err))
            return pg_fail(r, "RLE booleans: %s", err);
        int64_t k = 0;
        for (int64_t i = 0; i < nrows; i++) {
            if (lev && lev[i] != md) continue;
            o->valid[r->row + i] = 1;
            o->num[r->row + i] = idx[k++];
        }
        return 0;
    }
    return pg_fail(r, "encoding %s (%d) is not supported for %s", enc_name(enc), enc,
                   ptype_name(r->leaf->ptype));
}

/* Definition levels of nrows rows from [p, p+n) into r->lev; counts the non-null ones. */
static int read_levels(col_reader *r, const uint8_t *p, size_t n, int64_t nrows, int64_t *nn) {
    char err[200];
    uint32_t md = (uint32_t)r->leaf->max_def;
    uint32_t *lev = grow_u32(&r->lev, &r->lev_cap, nrows > 0 ? nrows : 1);
    if (rle_decode(p, n, bit_width(md), lev, nrows, err, sizeof err))
        return pg_fail(r, "definition levels: %s", err);
    int64_t c = 0;
    for (int64_t i = 0; i < nrows; i++) {
        if (lev[i] > md)
            return pg_fail(r, "definition level %u > max %u at row %lld", lev[i], md,
                           (long long)(r->row + i));
        c += lev[i] == md;
    }
    *nn = c;
    return 0;
}

static int read_data_page_v1(col_reader *r, const pq_page *h, const uint8_t *body) {
    if ((h->req & 15) != 15)
        return pg_fail(r, "data page header lacks a required field");
    int64_t nv = h->dp_nv;
    if (nv < 0 || nv > r->out->n - r->row)
        return pg_fail(r, "page holds %lld values but only %lld of the row group's %lld rows "
                          "are left", (long long)nv, (long long)(r->out->n - r->row),
                       (long long)r->out->n);
    uint8_t *buf;
    if (decompress(r, r->ch->codec, body, (size_t)h->csize, (size_t)h->usize, &buf)) return -1;
    const uint8_t *p = buf, *e = buf + h->usize;
    int64_t nn = nv;
    const uint32_t *lev = NULL;
    int rc = 0;
    if (r->leaf->max_def > 0) {
        if (h->dp_def_enc != ENC_RLE) {
            rc = pg_fail(r, "definition level encoding %s (%d) is not supported",
                         enc_name(h->dp_def_enc), h->dp_def_enc);
            goto done;
        }
        if (e - p < 4) {
            rc = pg_fail(r, "page too short for its definition levels");
            goto done;
        }
        uint32_t len = rd_u32(p);
        p += 4;
        if (len > (size_t)(e - p)) {
            rc = pg_fail(r, "definition levels of %u bytes run past the page (%zu bytes left)",
                         len, (size_t)(e - p));
            goto done;
        }
        if ((rc = read_levels(r, p, len, nv, &nn))) goto done;
        lev = r->lev;
        p += len;
    }
    rc = decode_values(r, h->dp_enc, p, e, nv, lev, nn);
done:
    if (rc == 0 && r->leaf->kind == PQ_BYTES && h->dp_enc == ENC_PLAIN) storage_add(r->st, buf);
    else free(buf);
    if (rc == 0) r->row += nv;
    return rc;
}

static int read_data_page_v2(col_reader *r, const pq_page *h, const uint8_t *body) {
    if ((h->req & (64 | 128 | 256 | 512 | 1024 | 2048)) != (64 | 128 | 256 | 512 | 1024 | 2048))
        return pg_fail(r, "data page v2 header lacks a required field");
    int64_t nv = h->v2_nv;
    if (nv < 0 || nv > r->out->n - r->row)
        return pg_fail(r, "page holds %lld values but only %lld of the row group's %lld rows "
                          "are left", (long long)nv, (long long)(r->out->n - r->row),
                       (long long)r->out->n);
    if (h->v2_rows != h->v2_nv)
        return pg_fail(r, "num_rows %d != num_values %d in a flat column", h->v2_rows, h->v2_nv);
    if (h->v2_nulls < 0 || h->v2_nulls > h->v2_nv)
        return pg_fail(r, "num_nulls %d out of range", h->v2_nulls);
    if (h->v2_def_len < 0 || h->v2_rep_len < 0)
        return pg_fail(r, "negative level lengths");
    int64_t lv = (int64_t)h->v2_def_len + h->v2_rep_len;
    if (lv > h->csize || lv > h->usize)
        return pg_fail(r, "levels (%lld bytes) larger than the page", (long long)lv);
    if (h->v2_rep_len != 0) return pg_fail(r, "repetition levels in a flat column");
    if (r->leaf->max_def == 0 && h->v2_def_len != 0)
        return pg_fail(r, "definition levels in a required column");
    const uint8_t *levp = body + h->v2_rep_len;
    int64_t nn = nv;
    const uint32_t *lev = NULL;
    if (r->leaf->max_def > 0) {
        if (read_levels(r, levp, (size_t)h->v2_def_len, nv, &nn)) return -1;
        lev = r->lev;
    }
    if (nv - nn != h->v2_nulls)
        return pg_fail(r, "num_nulls says %d but the definition levels give %lld", h->v2_nulls,
                       (long long)(nv - nn));
    size_t clen = (size_t)(h->csize - lv), ulen = (size_t)(h->usize - lv);
    int codec = h->v2_compressed ? r->ch->codec : CODEC_NONE;
    uint8_t *buf;
    if (decompress(r, codec, body + lv, clen, ulen, &buf)) return -1;
    int rc = decode_values(r, h->v2_enc, buf, buf + ulen, nv, lev, nn);
    if (rc == 0 && r->leaf->kind == PQ_BYTES && h->v2_enc == ENC_PLAIN) storage_add(r->st, buf);
    else free(buf);
    if (rc == 0) r->row += nv;
    return rc;
}

void parquet_column_free(parquet_column *c) {
    if (!c) return;
    pq_storage *s = c->storage_;
    if (s) {
        for (int i = 0; i < s->n; i++) free(s->bufs[i]);
        free(s->bufs);
        free(s);
    }
    free(c->valid);
    free(c->num);
    free(c->ptr);
    free(c->len);
    memset(c, 0, sizeof *c);
}

int parquet_read_column(parquet_file *pf, int rgi, int col, parquet_column *out) {
    memset(out, 0, sizeof *out);
    if (rgi < 0 || rgi >= pf->nrg)
        return mapo_error("%s: row group %d out of range (the file has %d)", pf->path, rgi, pf->nrg);
    if (col < 0 || col >= pf->nleaves)
        return mapo_error("%s: column %d out of range (the file has %d)", pf->path, col,
                          pf->nleaves);
    col_reader r = {.pf = pf, .rg = rgi, .col = col, .leaf = &pf->leaves[col],
                    .ch = &pf->rgs[rgi].cols[col], .out = out};
    const pq_leaf *L = r.leaf;
    const pq_chunk *ch = r.ch;
    int64_t n = pf->rgs[rgi].num_rows;
    if (L->nested || L->max_rep > 0)
        return cr_fail(&r, "nested or repeated columns cannot be read (only flat top-level "
                           "columns)");
    if (L->ptype == PT_INT96) return cr_fail(&r, "INT96 columns are not supported");
    if (L->ptype == PT_FLBA && L->type_length <= 0)
        return cr_fail(&r, "FIXED_LEN_BYTE_ARRAY with type_length %d", L->type_length);
    if (!ch->has_meta) return cr_fail(&r, "column chunk has no metadata (encrypted?)");
    if (ch->ext_file) return cr_fail(&r, "column chunk lives in another file (file_path)");
    if (ch->ptype != L->ptype)
        return cr_fail(&r, "column chunk type %s differs from the schema's %s",
                       ptype_name(ch->ptype), ptype_name(L->ptype));
    if (ch->codec != CODEC_NONE && ch->codec != CODEC_SNAPPY && ch->codec != CODEC_GZIP &&
        ch->codec != CODEC_ZSTD)
        return cr_fail(&r, "compression codec %s (%d) is not supported (only UNCOMPRESSED, "
                           "SNAPPY, GZIP, ZSTD)", codec_name(ch->codec), ch->codec);
    if (n > PARQUET_MAX_ROWS_PER_GROUP)
        return cr_fail(&r, "%lld rows in one row group (more than %lld supported)",
                       (long long)n, (long long)PARQUET_MAX_ROWS_PER_GROUP);
    if (ch->num_values != n)
        return cr_fail(&r, "column chunk has %lld values but the row group has %lld rows",
                       (long long)ch->num_values, (long long)n);
    int64_t start = ch->data_off;
    if (ch->dict_off > 0 && ch->dict_off < start) start = ch->dict_off;
    int64_t lim = (int64_t)pf->meta_start;
    if (start < 4 || start >= lim || ch->total_compressed <= 0 ||
        ch->total_compressed > lim - start)
        return cr_fail(&r, "column chunk [%lld, +%lld) lies outside the data region [4, %lld)",
                       (long long)start, (long long)ch->total_compressed, (long long)lim);
    const uint8_t *base = pf->map;
    size_t pos = (size_t)start, end = (size_t)(start + ch->total_compressed);

    pq_storage *st = xcalloc(1, sizeof *st);
    out->storage_ = st;
    r.st = st;
    out->n = n;
    out->kind = L->kind;
    size_t nn = (size_t)(n ? n : 1);
    out->valid = xcalloc(nn, 1);
    if (L->kind == PQ_BYTES) {
        out->ptr = xcalloc(nn, sizeof *out->ptr);
        out->len = xcalloc(nn, sizeof *out->len);
    } else {
        out->num = xmalloc(nn * sizeof *out->num);
        for (int64_t i = 0; i < n; i++) out->num[i] = NAN;
    }
    int rc = 0;
    while (r.row < n) {
        if (pos >= end) {
            rc = cr_fail(&r, "column chunk ends after %lld of %lld rows", (long long)r.row,
                         (long long)n);
            break;
        }
        r.page_off = pos;
        pq_page h;
        memset(&h, 0, sizeof h);
        tr t = {.p = base + pos, .end = base + end};
        if (tr_struct(&t, ph_field, &h)) {
            rc = pg_fail(&r, "bad page header: %s", t.err);
            break;
        }
        if (!h.has_type || !h.has_usize || !h.has_csize) {
            rc = pg_fail(&r, "page header lacks type or sizes");
            break;
        }
        size_t body = (size_t)(t.p - base);
        if (h.csize < 0 || h.usize < 0 || (size_t)h.csize > end - body) {
            rc = pg_fail(&r, "page of %d bytes (uncompressed %d) does not fit in the column "
                             "chunk (%zu bytes left)", h.csize, h.usize, end - body);
            break;
        }
        if (h.usize > PARQUET_MAX_PAGE_BYTES) {
            rc = pg_fail(&r, "page declares %d bytes uncompressed, more than the %lld MiB a "
                             "page may hold", h.usize, (long long)(PARQUET_MAX_PAGE_BYTES >> 20));
            break;
        }
        if (h.has_crc && (h.type == PAGE_DATA || h.type == PAGE_DATA_V2 || h.type == PAGE_DICT)) {
            uint32_t c = (uint32_t)crc32(0L, base + body, (uInt)h.csize);
            if (c != (uint32_t)h.crc) {
                rc = pg_fail(&r, "page CRC mismatch (stored %08x, computed %08x)",
                             (uint32_t)h.crc, c);
                break;
            }
        }
        if (h.type == PAGE_DICT) {
            if (!h.has_dict) rc = pg_fail(&r, "dictionary page without its header");
            else rc = read_dict_page(&r, &h, base + body);
        } else if (h.type == PAGE_DATA) {
            if (!h.has_dp) rc = pg_fail(&r, "data page without its header");
            else rc = read_data_page_v1(&r, &h, base + body);
        } else if (h.type == PAGE_DATA_V2) {
            if (!h.has_dp2) rc = pg_fail(&r, "data page v2 without its header");
            else rc = read_data_page_v2(&r, &h, base + body);
        } /* index pages and unknown page types are skipped */
        if (rc) break;
        pos = body + (size_t)h.csize;
    }
    free(r.dict_num);
    free(r.dict_ptr);
    free(r.dict_len);
    free(r.lev);
    free(r.idx);
    /* the chunk's pages were copied or decompressed: let the kernel drop them from our RSS
       (file-backed and read-only, so they are simply read again if needed) */
    long pg = sysconf(_SC_PAGESIZE);
    if (pg > 0) {
        size_t a = (size_t)start & ~((size_t)pg - 1);
        size_t b = (end + (size_t)pg - 1) & ~((size_t)pg - 1);
        if (b > a) madvise((void *)(base + a), b - a, MADV_DONTNEED);
    }
    if (rc) {
        parquet_column_free(out);
        return -1;
    }
    return 0;
}
