/* safetensors.c -- validated mmap reader, float conversion, atomic writer.
 *
 * Reader: the whole file is mapped read-only; the JSON header is parsed with jansson
 * and every entry is checked (dtype, shape, offsets, byte size, overlap) before any
 * tensor is handed out, so later code can trust t->data .. t->data + t->nbytes.
 * Tensors are kept sorted by name so st_find is a binary search.
 *
 * Writer: entries are laid out contiguously in insertion order (the layout the Python
 * safetensors library requires: no gaps, the last tensor ends at the end of the file);
 * the header is padded with spaces to a multiple of 8 bytes. The file is written to
 * "<path>.tmp.<pid>", fsynced, renamed over path, and the directory is fsynced. */
#include "mapo/safetensors.h"

#include "mapo/bf16.h"
#include "mapo/common.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024) /* refuse larger JSON headers */

static const char *const k_dtype_names[ST_NDTYPES] = {
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
static const size_t k_dtype_sizes[ST_NDTYPES] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

const char *st_dtype_name(st_dtype d) {
    return (unsigned)d < ST_NDTYPES ? k_dtype_names[d] : "?";
}

size_t st_dtype_size(st_dtype d) { return (unsigned)d < ST_NDTYPES ? k_dtype_sizes[d] : 0; }

/* dtype from its header name; -1 if unknown. */
static int dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(s, k_dtype_names[i])) return i;
    return -1;
}

/* "[2, 3]" into buf (truncated if it does not fit). */
static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* numel and byte size of a shape; -1 on overflow (of int64 or size_t). */
static int shape_sizes(int ndim, const int64_t *shape, st_dtype dt, int64_t *numel,
                       size_t *nbytes) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n)) return -1;
    size_t b;
    if ((uint64_t)n > SIZE_MAX || __builtin_mul_overflow((size_t)n, st_dtype_size(dt), &b))
        return -1;
    *numel = n;
    *nbytes = b;
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Reader                                                                               */
/* ------------------------------------------------------------------------------------ */

/* Reads a non-negative JSON integer; -1 if v is not one. */
static int json_nonneg(const json_t *v, int64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (int64_t)x;
    return 0;
}

/* Checks the "dtype" field: present, a string, one of the known names. */
static int parse_dtype(const char *path, const char *name, const json_t *e, st_tensor *t) {
    const json_t *d = json_object_get(e, "dtype");
    if (!json_is_string(d))
        return mapo_error("%s: tensor '%s' has no string \"dtype\" field", path, name);
    int dt = dtype_from_name(json_string_value(d));
    if (dt < 0)
        return mapo_error("%s: tensor '%s' has unknown dtype '%s' (supported: F32 F16 BF16 "
                          "F64 I64 I32 I16 I8 U8 BOOL)", path, name, json_string_value(d));
    t->dtype = (st_dtype)dt;
    return 0;
}

/* Checks the "shape" field: an array of at most ST_MAX_DIMS non-negative integers. */
static int parse_shape(const char *path, const char *name, const json_t *e, st_tensor *t) {
    const json_t *s = json_object_get(e, "shape");
    if (!json_is_array(s))
        return mapo_error("%s: tensor '%s' has no array \"shape\" field", path, name);
    size_t nd = json_array_size(s);
    if (nd > ST_MAX_DIMS)
        return mapo_error("%s: tensor '%s' shape has %zu dims (at most %d supported)", path,
                          name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        const json_t *v = json_array_get(s, i);
        if (json_is_integer(v) && json_integer_value(v) < 0)
            return mapo_error("%s: tensor '%s' shape entry %zu is negative (%lld)", path, name,
                              i, (long long)json_integer_value(v));
        if (json_nonneg(v, &t->shape[i]))
            return mapo_error("%s: tensor '%s' shape entry %zu is not an integer", path, name,
                              i);
    }
    return 0;
}

/* Checks "data_offsets": [begin, end] integers with begin <= end <= data_len. */
static int parse_offsets(const char *path, const char *name, const json_t *e, size_t data_len,
                         int64_t *begin, int64_t *end) {
    const json_t *o = json_object_get(e, "data_offsets");
    if (!json_is_array(o) || json_array_size(o) != 2 || json_nonneg(json_array_get(o, 0), begin) ||
        json_nonneg(json_array_get(o, 1), end))
        return mapo_error("%s: tensor '%s' has no valid \"data_offsets\" field (need "
                          "[begin, end], non-negative integers)", path, name);
    if (*begin > *end)
        return mapo_error("%s: tensor '%s' data_offsets [%lld, %lld] have begin > end", path,
                          name, (long long)*begin, (long long)*end);
    if ((uint64_t)*end > data_len)
        return mapo_error("%s: tensor '%s' data_offsets [%lld, %lld] end past data (%zu bytes)",
                          path, name, (long long)*begin, (long long)*end, data_len);
    return 0;
}

/* Validates one header entry and fills t (name is copied; data points into the map). */
static int parse_entry(const char *path, const char *name, const json_t *e, const uint8_t *data,
                       size_t data_len, st_tensor *t) {
    if (!json_is_object(e))
        return mapo_error("%s: tensor '%s' entry is not a JSON object", path, name);
    int64_t begin = 0, end = 0;
    if (parse_dtype(path, name, e, t) || parse_shape(path, name, e, t) ||
        parse_offsets(path, name, e, data_len, &begin, &end))
        return -1;
    char sh[256];
    fmt_shape(sh, sizeof sh, t->ndim, t->shape);
    if (shape_sizes(t->ndim, t->shape, t->dtype, &t->numel, &t->nbytes))
        return mapo_error("%s: tensor '%s' shape %s is too large (byte size overflows)", path,
                          name, sh);
    if (t->nbytes != (size_t)(end - begin))
        return mapo_error("%s: tensor '%s' shape %s (%s, %zu bytes) does not match "
                          "data_offsets [%lld, %lld] (%lld bytes)", path, name, sh,
                          st_dtype_name(t->dtype), t->nbytes, (long long)begin,
                          (long long)end, (long long)(end - begin));
    t->data = data + begin;
    t->name = xstrdup(name);
    return 0;
}

/* Validates "__metadata__": null or an object of string values; copies it into f. */
static int parse_metadata(st_file *f, const json_t *m) {
    if (json_is_null(m)) return 0;
    if (!json_is_object(m))
        return mapo_error("%s: header __metadata__ is not a JSON object", f->path);
    size_t n = json_object_size(m);
    f->meta_keys = xcalloc(n, sizeof(char *));
    f->meta_values = xcalloc(n, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v))
            return mapo_error("%s: header __metadata__ value for '%s' is not a string", f->path,
                              k);
        f->meta_keys[f->n_meta] = xstrdup(k);
        f->meta_values[f->n_meta] = xstrdup(json_string_value(v));
        f->n_meta++;
    }
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Sorts by name and refuses duplicates (jansson already rejects duplicate keys). */
static int sort_by_name(st_file *f) {
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return mapo_error("%s: duplicate tensor name '%s'", f->path, f->tensors[i].name);
    return 0;
}

static int cmp_tensor_ptr_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Refuses tensors whose byte ranges overlap (empty tensors overlap nothing). */
static int check_overlap(const st_file *f) {
    const st_tensor **by = xmalloc((size_t)f->n * sizeof *by);
    int rc = 0;
    for (int i = 0; i < f->n; i++) by[i] = &f->tensors[i];
    qsort(by, (size_t)f->n, sizeof *by, cmp_tensor_ptr_begin);
    const st_tensor *prev = NULL; /* the non-empty tensor reaching furthest so far */
    for (int i = 0; i < f->n && !rc; i++) {
        const st_tensor *t = by[i];
        if (!t->nbytes) continue;
        const uint8_t *b = t->data;
        if (prev && b < (const uint8_t *)prev->data + prev->nbytes)
            rc = mapo_error("%s: tensors '%s' and '%s' overlap in the data buffer", f->path,
                            prev->name, t->name);
        if (!prev || b + t->nbytes > (const uint8_t *)prev->data + prev->nbytes) prev = t;
    }
    free(by);
    return rc;
}

/* Parses and validates the JSON header (already known to lie inside the map). */
static int parse_header(st_file *f, const char *hdr, size_t hlen, const uint8_t *data,
                        size_t data_len) {
    json_error_t err;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!root) {
        if (json_error_code(&err) == json_error_duplicate_key)
            return mapo_error("%s: header has a duplicate tensor name (%s)", f->path, err.text);
        return mapo_error("%s: header is not valid JSON (line %d, column %d: %s)", f->path,
                          err.line, err.column, err.text);
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = mapo_error("%s: header JSON is not an object", f->path);
        goto done;
    }
    f->tensors = xcalloc(json_object_size(root), sizeof(st_tensor));
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "__metadata__"))
            rc = parse_metadata(f, v);
        else if (!(rc = parse_entry(f->path, k, v, data, data_len, &f->tensors[f->n])))
            f->n++;
        if (rc) goto done;
    }
    rc = sort_by_name(f);
    if (!rc) rc = check_overlap(f);
done:
    json_decref(root);
    return rc;
}

/* Opens path, checks it is a regular file of at least 8 bytes and maps it. */
static int map_file(st_file *f, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mapo_error("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st))
        rc = mapo_error("%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = mapo_error("%s: not a regular file", path);
    else if (st.st_size == 0)
        rc = mapo_error("%s: file is empty (not a safetensors file)", path);
    else if (st.st_size < 8)
        rc = mapo_error("%s: file is too short (%lld bytes) to hold a safetensors header",
                        path, (long long)st.st_size);
    if (!rc) {
        f->map_size = (size_t)st.st_size;
        f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            rc = mapo_error("%s: cannot mmap: %s", path, strerror(errno));
        }
    }
    close(fd);
    return rc;
}

int st_open(st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    if (map_file(f, path)) goto fail;
    uint64_t hlen;
    memcpy(&hlen, f->map, 8); /* little-endian host */
    uint64_t avail = f->map_size - 8;
    if (hlen > ST_MAX_HEADER) {
        mapo_error("%s: header length %llu is absurd (over %llu bytes); not a safetensors "
                   "file?", path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > avail) {
        mapo_error("%s: header length %llu runs past the end of the file (%llu bytes after "
                   "the length field); truncated?", path, (unsigned long long)hlen,
                   (unsigned long long)avail);
        goto fail;
    }
    const uint8_t *base = f->map;
    if (parse_header(f, (const char *)base + 8, hlen, base + 8 + hlen, avail - hlen)) goto fail;
    return 0;
fail:
    st_close(f);
    return -1;
}

void st_close(st_file *f) {
    if (f->map) munmap(f->map, f->map_size);
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
}

void st_tensor_release(const st_tensor *t) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)t->data + pg - 1) & ~(pg - 1);
    const uintptr_t b = ((uintptr_t)t->data + t->nbytes) & ~(pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(name, f->tensors[mid].name);
        if (!c) return &f->tensors[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Conversion                                                                           */
/* ------------------------------------------------------------------------------------ */

static float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* IEEE binary16 -> binary32, exact (subnormals, signed zero, inf; NaN payload kept). */
float st_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp) return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    float v = (float)man * 0x1p-24f; /* subnormal or zero: man * 2^-24 is exact */
    return sign ? -v : v;
}

/* bfloat16 is the top half of a binary32. */
float st_bf16_to_float(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* Error for a non-float dtype (the caller prefixes file and tensor). */
static int not_float(const st_tensor *t) {
    return mapo_error("tensor '%s' has dtype %s, not a floating type (F32 F16 BF16 F64)",
                      t->name ? t->name : "?", st_dtype_name(t->dtype));
}

void st_half_to_f32(st_dtype d, const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = d == ST_F16 ? st_half_to_float(h) : st_bf16_to_float(h);
    }
}

int st_to_f32(const st_tensor *t, float *dst) {
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, p, (size_t)n * 4);
        return 0;
    case ST_F16:
    case ST_BF16:
        st_half_to_f32(t->dtype, p, dst, n);
        return 0;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d; /* round to nearest, like torch's .float() */
        }
        return 0;
    default:
        return not_float(t);
    }
}

int st_to_f64(const st_tensor *t, double *dst) {
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_F64:
        if (n) memcpy(dst, p, (size_t)n * 8);
        return 0;
    case ST_F32:
    case ST_F16:
    case ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            float x;
            if (t->dtype == ST_F32) {
                memcpy(&x, p + 4 * i, 4);
            } else {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                x = t->dtype == ST_F16 ? st_half_to_float(h) : st_bf16_to_float(h);
            }
            dst[i] = x;
        }
        return 0;
    default:
        return not_float(t);
    }
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* binary32 -> binary16, round to nearest even (c10's fp16_ieee_from_fp32_value, in integers) */
uint16_t st_float_to_half(float f) {
    uint32_t x = f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u;     /* NaN */
    if (x >= 0x477ff000u) return sign | 0x7c00u;    /* >= 65520 (the tie above 65504): inf */
    if (x >= 0x38800000u) {                         /* a normal half (>= 2^-14) */
        x += 0xfffu + ((x >> 13) & 1u);             /* round the 13 dropped bits to even */
        return sign | (uint16_t)((x - 0x38000000u) >> 13); /* rebias 127 -> 15 */
    }
    if (x < 0x33000000u) return sign;               /* below 2^-25: rounds to (signed) zero */
    /* a subnormal half k * 2^-24: value = m * 2^(e - 150), k = m / 2^(126 - e) rounded */
    const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u, sh = 126u - e; /* 14..24 */
    uint32_t k = m >> sh;
    const uint32_t rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (k & 1u))) k++; /* k = 0x400 is the smallest normal */
    return sign | (uint16_t)k;
}

/* binary32 -> bfloat16, round to nearest even (c10's round_to_nearest_even) */
uint16_t st_float_to_bf16(float f) { return mapo_bf16_bits(f); }

int64_t st_from_f32(st_dtype d, const float *src, void *dst, int64_t n) {
    uint16_t *o = dst;
    int64_t inf = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t h = d == ST_BF16 ? st_float_to_bf16(src[i]) : st_float_to_half(src[i]);
        const uint16_t mag = h & 0x7fffu;
        if ((d == ST_BF16 ? mag == 0x7f80u : mag == 0x7c00u) && isfinite(src[i])) inf++;
        o[i] = h;
    }
    return inf;
}

int st_precision_parse(const char *s, const char *flag, st_dtype *d) {
    if (s && !strcmp(s, "float32")) *d = ST_F32;
    else if (s && !strcmp(s, "fp16")) *d = ST_F16;
    else if (s && !strcmp(s, "bf16")) *d = ST_BF16;
    else
        return mapo_error("%s %s: expected float32, fp16 or bf16", flag, s ? s : "(none)");
    return 0;
}

const char *st_precision_name(st_dtype d) {
    return d == ST_F16 ? "fp16" : d == ST_BF16 ? "bf16" : d == ST_F32 ? "float32" : "?";
}

/* ------------------------------------------------------------------------------------ */
/* Sharded checkpoints                                                                  */
/* ------------------------------------------------------------------------------------ */

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int st_is_index(const char *path) {
    if (ends_with(path, ".index.json")) return 1;
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *k = strstr(b, ".index.");
    return k && ends_with(k, ".json") && !strchr(k + 7, '/'); /* <file>.index.<variant>.json */
}

/* the folder of an index path (with its trailing '/'), into buf */
static void folder_of(const char *path, char *buf, size_t n) {
    const char *b = strrchr(path, '/');
    snprintf(buf, n, "%.*s", b ? (int)(b - path + 1) : 0, path);
}

/* a shard name as the index gives it: a plain file name of the index's folder */
static const char *bad_shard_name(const char *s) {
    if (!*s) return "is empty";
    if (strchr(s, '/') || strchr(s, '\\')) return "is not a plain file name (it has a '/')";
    if (strstr(s, "..")) return "contains '..'";
    if (!ends_with(s, ".safetensors")) return "does not end in .safetensors";
    return NULL;
}

/* the weight_map of an index, validated; NULL + mapo_error naming the file */
static json_t *index_load(const char *path) {
    json_error_t je;
    json_t *js = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!js) {
        mapo_error("%s: not a valid index JSON (line %d: %s)", path, je.line, je.text);
        return NULL;
    }
    json_t *m = json_object_get(js, "weight_map");
    if (!json_is_object(js) || !json_is_object(m) || !json_object_size(m)) {
        json_decref(js);
        mapo_error("%s: a sharded checkpoint's index needs a non-empty \"weight_map\" object "
                   "{tensor name: shard file}", path);
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        const char *bad = json_is_string(v) ? bad_shard_name(json_string_value(v))
                                            : "is not a string";
        if (bad) {
            mapo_error("%s: the shard of '%s' (%s) %s: shards must be files of the index's "
                       "folder", path, k, json_is_string(v) ? json_string_value(v) : "?", bad);
            json_decref(js);
            return NULL;
        }
    }
    json_incref(m);
    json_decref(js);
    return m;
}

uint64_t st_index_shard_bytes(const char *index_path) {
    json_t *m = index_load(index_path);
    if (!m) return 0; /* the message recorded is only printed if the load fails, as it will */
    char dir[4096], p[4400];
    folder_of(index_path, dir, sizeof dir);
    json_t *seen = json_object();
    uint64_t total = 0;
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        const char *s = json_string_value(v);
        if (json_object_get(seen, s)) continue;
        json_object_set_new(seen, s, json_true());
        snprintf(p, sizeof p, "%s%s", dir, s);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) total += (uint64_t)st.st_size;
    }
    json_decref(seen);
    json_decref(m);
    return total;
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int st_index_open(st_index *x, const char *path) {
    memset(x, 0, sizeof *x);
    x->path = xstrdup(path);
    json_t *m = index_load(path);
    if (!m) {
        st_index_close(x);
        return -1;
    }
    char dir[4096], p[4400];
    folder_of(path, dir, sizeof dir);
    /* the distinct shards, in order of first appearance; each tensor's shard index */
    const size_t nt = json_object_size(m);
    char **shard_names = xcalloc(nt, sizeof *shard_names);
    x->shards = xcalloc(nt, sizeof *x->shards);
    x->names = xcalloc(nt, sizeof *x->names);
    x->tensors = xcalloc(nt, sizeof *x->tensors);
    int rc = 0;
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) x->names[x->n++] = xstrdup(k);
    qsort(x->names, (size_t)x->n, sizeof *x->names, cmp_cstr);
    for (int i = 0; i < x->n && !rc; i++) {
        const char *s = json_string_value(json_object_get(m, x->names[i]));
        int j = 0;
        while (j < x->n_shards && strcmp(shard_names[j], s)) j++;
        if (j == x->n_shards) {
            snprintf(p, sizeof p, "%s%s", dir, s);
            if (!mapo_is_file(p)) {
                rc = mapo_error("%s: shard %s (of tensor '%s') is missing", path, s, x->names[i]);
                break;
            }
            if (st_open(&x->shards[j], p)) {
                rc = mapo_error_prefix("%s: shard %s", path, s);
                break;
            }
            shard_names[x->n_shards++] = xstrdup(s);
        }
        x->tensors[i] = st_find(&x->shards[j], x->names[i]);
        if (!x->tensors[i])
            rc = mapo_error("%s: tensor '%s' is not in its shard %s", path, x->names[i], s);
    }
    for (int j = 0; j < x->n_shards; j++) free(shard_names[j]);
    free(shard_names);
    json_decref(m);
    if (rc) st_index_close(x);
    return rc;
}

void st_index_close(st_index *x) {
    for (int j = 0; j < x->n_shards; j++) st_close(&x->shards[j]);
    for (int i = 0; i < x->n; i++) free(x->names[i]);
    free(x->shards);
    free(x->names);
    free(x->tensors);
    free(x->path);
    memset(x, 0, sizeof *x);
}

const st_tensor *st_index_find(const st_index *x, const char *name) {
    int lo = 0, hi = x->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(name, x->names[mid]);
        if (!c) return x->tensors[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

int st_weights_find(char *buf, size_t n, const char *dir, const char *file) {
    const char *v = mapo_weights_variant();
    const size_t fl = strlen(file), ext = strlen(".safetensors");
    const int st = fl > ext && ends_with(file, ".safetensors");
    if (v && st) {
        const int stem = (int)(fl - ext);
        snprintf(buf, n, "%s/%.*s.%s.safetensors", dir, stem, file, v);
        if (mapo_is_file(buf)) return 0;
        snprintf(buf, n, "%s/%s.index.%s.json", dir, file, v); /* diffusers >= 0.27 */
        if (mapo_is_file(buf)) return 0;
        snprintf(buf, n, "%s/%.*s.%s.safetensors.index.json", dir, stem, file, v); /* older */
        if (mapo_is_file(buf)) return 0;
    }
    mapo_weights_path(buf, n, dir, file); /* the plain file (one note when a variant was asked) */
    if (mapo_is_file(buf)) return 0;
    snprintf(buf, n, "%s/%s.index.json", dir, file);
    if (mapo_is_file(buf)) {
        if (v && st)
            mapo_log(1, "note: no %s variant of %s/%s: using the plain sharded weights (as "
                        "diffusers falls back)\n", v, dir, file);
        return 0;
    }
    snprintf(buf, n, "%s/%s", dir, file);
    return -1;
}

int st_read_f32_shape(const st_file *f, const char *name, float *dst, int ndim,
                      const int64_t *shape) {
    const st_tensor *t = st_find(f, name);
    if (!t) return mapo_error("%s: tensor '%s' missing", f->path, name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char a[256], b[256];
        fmt_shape(a, sizeof a, t->ndim, t->shape);
        fmt_shape(b, sizeof b, ndim, shape);
        return mapo_error("%s: tensor '%s' has shape %s, expected %s", f->path, name, a, b);
    }
    if (st_to_f32(t, dst)) return mapo_error_prefix("%s", f->path);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Atomic file writing                                                                  */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    const char *path;
    char *tmp;
    int fd;
} atomic_file;

/* Fault injection for the tests of full and read-only disks: MAPO_FAULT_WRITE="ERR:N" (ERR one
   of ENOSPC, EROFS, EDQUOT, EIO) makes this process's atomic writes fail with that errno once
   N bytes have been written through them (N = 0: creating the first file fails). Unset, it
   costs one getenv per process. */
static int fault_errno = -1; /* -1: not read yet, 0: off */
static unsigned long long fault_budget, fault_written;

static int fault_hit(size_t n) {
    if (fault_errno < 0) {
        const char *s = getenv("MAPO_FAULT_WRITE");
        static const struct { const char *name; int e; } errs[] = {
            {"ENOSPC", ENOSPC}, {"EROFS", EROFS}, {"EDQUOT", EDQUOT}, {"EIO", EIO}};
        fault_errno = 0;
        for (size_t i = 0; s && i < sizeof errs / sizeof *errs; i++) {
            size_t l = strlen(errs[i].name);
            if (!strncmp(s, errs[i].name, l) && s[l] == ':') {
                fault_errno = errs[i].e;
                fault_budget = strtoull(s + l + 1, NULL, 10);
            }
        }
    }
    if (!fault_errno) return 0;
    if (n == 0 ? fault_written >= fault_budget : fault_written + n > fault_budget) {
        errno = fault_errno;
        return 1;
    }
    fault_written += n;
    return 0;
}

/* Creates "<path>.tmp.<pid>" next to path. */
static int atomic_open(atomic_file *a, const char *path) {
    size_t n = strlen(path) + 32;
    a->path = path;
    a->tmp = xmalloc(n);
    snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    a->fd = fault_hit(0) ? -1 : open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        int e = errno;
        free(a->tmp);
        a->tmp = NULL;
        return mapo_error("%s: cannot create temporary file for writing: %s", path,
                          strerror(e));
    }
    return 0;
}

/* Writes all n bytes (retrying short writes and EINTR). */
static int atomic_write(atomic_file *a, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t w = fault_hit(chunk) ? -1 : write(a->fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return mapo_error("%s: write failed: %s", a->path,
                              w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Closes and removes the temporary file (after an error). */
static void atomic_abort(atomic_file *a) {
    if (a->fd >= 0) close(a->fd);
    if (a->tmp) unlink(a->tmp);
    free(a->tmp);
    a->tmp = NULL;
    a->fd = -1;
}

/* fsyncs the directory holding path so the rename is durable (EINVAL: unsupported). */
static int fsync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrdup(path) : xstrdup(".");
    if (slash) dir[slash == path ? 1 : slash - path] = 0;
    int rc = 0, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) && errno != EINVAL))
        rc = mapo_error("%s: cannot sync directory '%s': %s", path, dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

/* fsync + close + rename over path + fsync(dir). Removes the temp file on failure. */
static int atomic_commit(atomic_file *a) {
    if (fsync(a->fd)) {
        int e = errno;
        atomic_abort(a);
        return mapo_error("%s: fsync failed: %s", a->path, strerror(e));
    }
    int fd = a->fd;
    a->fd = -1;
    if (close(fd)) {
        int e = errno;
        atomic_abort(a);
        return mapo_error("%s: close failed: %s", a->path, strerror(e));
    }
    if (rename(a->tmp, a->path)) {
        int e = errno;
        atomic_abort(a);
        return mapo_error("%s: cannot rename temporary file into place: %s", a->path,
                          strerror(e));
    }
    free(a->tmp);
    a->tmp = NULL;
    return fsync_dir(a->path);
}

int mapo_write_file_atomic(const char *path, const void *data, size_t n) {
    atomic_file a;
    if (atomic_open(&a, path)) return -1;
    if (atomic_write(&a, data, n)) {
        atomic_abort(&a);
        return -1;
    }
    return atomic_commit(&a);
}

/* ------------------------------------------------------------------------------------ */
/* Writer                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
    int from_f32; /* data is float32, stored as dtype (F16 / BF16) */
} w_entry;

struct st_writer {
    w_entry *e;
    int n, cap;
    char **mk, **mv;
    int nm, mcap;
    char *err; /* first invalid add/meta call, reported by st_writer_write */
    /* streaming (st_writer_begin / put / commit) */
    int streaming;
    atomic_file a;
    size_t data_start;
    size_t *offs;
};

st_writer *st_writer_new(void) { return xcalloc(1, sizeof(st_writer)); }

/* Remembers the first misuse; st_writer_write fails with it. */
static void writer_fail(st_writer *w, const char *msg, const char *name) {
    if (w->err) return;
    size_t n = strlen(msg) + strlen(name) + 16;
    w->err = xmalloc(n);
    snprintf(w->err, n, "tensor '%s' %s", name, msg);
}

/* Checks an add call: name, dtype, ndim, shape, size, data pointer, duplicates. */
static const char *check_add(const st_writer *w, const char *name, st_dtype dtype, int ndim,
                             const int64_t *shape, const void *data, size_t *nbytes) {
    if (!strcmp(name, "__metadata__")) return "uses the reserved name __metadata__";
    if ((unsigned)dtype >= ST_NDTYPES) return "has an invalid dtype";
    if (ndim < 0 || ndim > ST_MAX_DIMS) return "has an invalid number of dims";
    if (ndim && !shape) return "has no shape";
    int64_t numel;
    if (shape_sizes(ndim, shape, dtype, &numel, nbytes))
        return "has a negative or too large shape";
    if (*nbytes && !data && !w->streaming) return "has no data";
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) return "was added twice";
    return NULL;
}

static int64_t g_f32_overflows;

int64_t st_f32_overflows(int reset) {
    int64_t n = g_f32_overflows;
    if (reset) g_f32_overflows = 0;
    return n;
}

void st_writer_add_f32_as(st_writer *w, const char *name, st_dtype store, int ndim,
                          const int64_t *shape, const float *data) {
    if (store != ST_F16 && store != ST_BF16) {
        st_writer_add(w, name, ST_F32, ndim, shape, data);
        return;
    }
    const int n0 = w->n;
    st_writer_add(w, name, store, ndim, shape, data);
    if (w->n > n0) w->e[w->n - 1].from_f32 = 1;
}

void st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                   const int64_t *shape, const void *data) {
    size_t nbytes = 0;
    const char *bad = check_add(w, name, dtype, ndim, shape, data, &nbytes);
    if (bad) {
        writer_fail(w, bad, name);
        return;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = xrealloc(w->e, (size_t)w->cap * sizeof *w->e);
    }
    w_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    if (ndim) memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->nbytes = nbytes;
    e->data = data;
}

void st_writer_meta(st_writer *w, const char *key, const char *value) {
    for (int i = 0; i < w->nm; i++)
        if (!strcmp(w->mk[i], key)) { /* later value wins */
            free(w->mv[i]);
            w->mv[i] = xstrdup(value);
            return;
        }
    if (w->nm == w->mcap) {
        w->mcap = w->mcap ? 2 * w->mcap : 8;
        w->mk = xrealloc(w->mk, (size_t)w->mcap * sizeof *w->mk);
        w->mv = xrealloc(w->mv, (size_t)w->mcap * sizeof *w->mv);
    }
    w->mk[w->nm] = xstrdup(key);
    w->mv[w->nm] = xstrdup(value);
    w->nm++;
}

/* Builds {"__metadata__": {...}, name: {dtype, shape, data_offsets}, ...} with contiguous
 * offsets in insertion order. NULL (with an error) if a string is not valid UTF-8. */
static json_t *build_header(const st_writer *w, const char *path) {
    json_t *root = json_object();
    if (w->nm) {
        json_t *m = json_object();
        json_object_set_new(root, "__metadata__", m);
        for (int i = 0; i < w->nm; i++)
            if (json_object_set_new(m, w->mk[i], json_string(w->mv[i]))) {
                mapo_error("%s: metadata '%s' is not valid UTF-8", path, w->mk[i]);
                goto fail;
            }
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const w_entry *e = &w->e[i];
        json_t *shape = json_array();
        for (int k = 0; k < e->ndim; k++) json_array_append_new(shape, json_integer(e->shape[k]));
        json_t *ent = json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype_name(e->dtype),
                                "shape", shape, "data_offsets", (json_int_t)off,
                                (json_int_t)(off + e->nbytes));
        if (!ent || json_object_set_new(root, e->name, ent)) {
            mapo_error("%s: tensor name '%s' is not valid UTF-8", path, e->name);
            goto fail;
        }
        off += e->nbytes;
    }
    return root;
fail:
    json_decref(root);
    return NULL;
}

/* the header bytes: u64 length + JSON padded with spaces to 8 bytes */
static char *header_bytes(st_writer *w, const char *path, size_t *total) {
    json_t *root = build_header(w, path);
    if (!root) return NULL;
    char *js = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!js) {
        mapo_error("%s: cannot serialise the safetensors header", path);
        return NULL;
    }
    size_t jl = strlen(js), hl = (jl + 7) & ~(size_t)7;
    char *hdr = xmalloc(hl + 8);
    uint64_t hl64 = hl;
    memcpy(hdr, &hl64, 8); /* little-endian host */
    memcpy(hdr + 8, js, jl);
    memset(hdr + 8 + jl, ' ', hl - jl);
    free(js);
    *total = hl + 8;
    return hdr;
}

void st_writer_add_empty(st_writer *w, const char *name, st_dtype dtype, int ndim,
                         const int64_t *shape) {
    int was = w->streaming;
    w->streaming = 1;
    st_writer_add(w, name, dtype, ndim, shape, NULL);
    w->streaming = was;
    if (!w->err) w->e[w->n - 1].data = NULL;
}

int st_writer_begin(st_writer *w, const char *path) {
    if (w->err) return mapo_error("%s: cannot write: %s", path, w->err);
    size_t hl;
    char *hdr = header_bytes(w, path, &hl);
    if (!hdr) return -1;
    size_t total = hl;
    w->offs = xcalloc(w->n ? w->n : 1, sizeof(size_t));
    for (int i = 0; i < w->n; i++) {
        w->offs[i] = total - hl;
        total += w->e[i].nbytes;
    }
    int rc = atomic_open(&w->a, path);
    if (!rc) rc = atomic_write(&w->a, hdr, hl);
    free(hdr);
    if (!rc && ftruncate(w->a.fd, (off_t)total))
        rc = mapo_error("%s: cannot size the file to %zu bytes: %s", path, total, strerror(errno));
    if (rc) {
        if (w->a.tmp) atomic_abort(&w->a);
        return -1;
    }
    w->streaming = 2; /* open */
    w->data_start = hl;
    return 0;
}

int st_writer_put(st_writer *w, int tensor, size_t offset, const void *data, size_t n) {
    if (w->streaming != 2) return mapo_error("st_writer_put: no stream open");
    if (tensor < 0 || tensor >= w->n || offset > w->e[tensor].nbytes ||
        n > w->e[tensor].nbytes - offset)
        return mapo_error("%s: write outside tensor %d", w->a.path, tensor);
    const uint8_t *p = data;
    off_t at = (off_t)(w->data_start + w->offs[tensor] + offset);
    while (n) {
        ssize_t r = fault_hit(n) ? -1 : pwrite(w->a.fd, p, n, at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return mapo_error("%s: write failed: %s", w->a.path, r < 0 ? strerror(errno) : "no progress");
        p += r;
        at += r;
        n -= (size_t)r;
    }
    return 0;
}

int st_writer_commit(st_writer *w) {
    if (w->streaming != 2) return mapo_error("st_writer_commit: no stream open");
    w->streaming = 0;
    return atomic_commit(&w->a);
}

int st_writer_write(st_writer *w, const char *path) {
    if (w->err) return mapo_error("%s: cannot write: %s", path, w->err);
    for (int i = 0; i < w->n; i++)
        if (w->e[i].nbytes && !w->e[i].data)
            return mapo_error("%s: tensor '%s' was declared for streaming (st_writer_begin)",
                              path, w->e[i].name);
    size_t hl;
    char *hdr = header_bytes(w, path, &hl);
    if (!hdr) return -1;
    atomic_file a;
    int rc = atomic_open(&a, path);
    if (!rc) rc = atomic_write(&a, hdr, hl);
    enum { CHUNK = 1 << 16 };
    uint16_t *conv = NULL;
    for (int i = 0; !rc && i < w->n; i++) {
        const w_entry *e = &w->e[i];
        if (!e->nbytes) continue;
        if (!e->from_f32) {
            rc = atomic_write(&a, e->data, e->nbytes);
            continue;
        }
        /* float32 -> F16 / BF16 in chunks: no second copy of a large model */
        if (!conv) conv = xmalloc(CHUNK * sizeof *conv);
        const int64_t n = (int64_t)(e->nbytes / 2);
        for (int64_t k = 0; k < n && !rc; k += CHUNK) {
            const int64_t m = n - k < CHUNK ? n - k : CHUNK;
            g_f32_overflows += st_from_f32(e->dtype, (const float *)e->data + k, conv, m);
            rc = atomic_write(&a, conv, (size_t)m * 2);
        }
    }
    free(conv);
    free(hdr);
    if (rc) {
        if (a.tmp) atomic_abort(&a);
        return -1;
    }
    return atomic_commit(&a);
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    if (w->streaming == 2) atomic_abort(&w->a); /* never committed: the target is untouched */
    free(w->offs);
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    for (int i = 0; i < w->nm; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->e);
    free(w->mk);
    free(w->mv);
    free(w->err);
    free(w);
}
