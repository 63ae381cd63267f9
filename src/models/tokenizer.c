/* tokenizer.c -- CLIP byte-level BPE tokenizer (ids of transformers 5.x CLIPTokenizer).
 * See include/mapo/tokenizer.h for the pipeline it reproduces; the Unicode tables come from
 * tools/gen_unicode_tables.py (unicode_tables.inc). Tested against transformers' ids by
 * tests/test_tokenizer.c. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "mapo/common.h"
#include "mapo/tokenizer.h"

#include "unicode_tables.inc"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_TEXT_BYTES (16u << 20)  /* longest prompt accepted */
#define MAX_FILE_BYTES (256u << 20) /* largest vocab.json / merges.txt accepted */
#define MAX_ID (1 << 30)
#define MAX_ADDED 64
/* Hostile sizes (docs/RELIABILITY.md): refused before the tables are allocated. CLIP has
 * 49408 tokens and 48894 merges; the largest BPE vocabularies in use have a few 100k. */
#define MAX_JSON_BYTES (64u << 20) /* largest vocab.json / tokenizer.json / config accepted */
#define MAX_VOCAB (1 << 20)        /* entries of the vocabulary */
#define MAX_TOKEN_BYTES 1024       /* bytes of one token */
#define MAX_MERGES (1 << 20)       /* merge rules */

/* ---------------------------------------------------------------- Unicode properties */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < r[mid][0])
            hi = mid;
        else if (c > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}
static int is_letter(uint32_t c) {
    if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    return in_ranges(uc_letter, NELEM(uc_letter), c);
}
static int is_number(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    return in_ranges(uc_number, NELEM(uc_number), c);
}
static int is_space(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 9 && c <= 13);
    for (size_t i = 0; i < NELEM(uc_space); i++)
        if (uc_space[i] == c) return 1;
    return 0;
}
static unsigned ccc(uint32_t c) {
    if (c < 0x300) return 0;
    size_t lo = 0, hi = NELEM(uc_ccc);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < uc_ccc[mid][0])
            hi = mid;
        else if (c > uc_ccc[mid][1])
            lo = mid + 1;
        else
            return uc_ccc[mid][2];
    }
    return 0;
}
/* lowercase of one code point into out[0..1]; returns how many (1 or 2) */
static int lower(uint32_t c, uint32_t out[2]) {
    if (c < 0x80) {
        out[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        return 1;
    }
    for (size_t i = 0; i < NELEM(uc_lower2); i++)
        if (uc_lower2[i][0] == c) {
            out[0] = uc_lower2[i][1];
            out[1] = uc_lower2[i][2];
            return 2;
        }
    out[0] = c;
    size_t lo = 0, hi = NELEM(uc_lower); /* last run with first <= c */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uint32_t)uc_lower[mid][0] <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        const int32_t *r = uc_lower[lo - 1];
        if (c <= (uint32_t)r[1] && (c - (uint32_t)r[0]) % (uint32_t)r[2] == 0)
            out[0] = (uint32_t)((int64_t)c + r[3]);
    }
    return 1;
}

/* full canonical decomposition (not Hangul); returns the count, pointer into the pool */
static int decomp(uint32_t c, const uint32_t **d) {
    if (c < 0xC0) return 0;
    size_t lo = 0, hi = NELEM(uc_decomp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < uc_decomp[mid][0])
            hi = mid;
        else if (c > uc_decomp[mid][0])
            lo = mid + 1;
        else {
            *d = uc_decomp_pool + uc_decomp[mid][1];
            return (int)uc_decomp[mid][2];
        }
    }
    return 0;
}

enum {
    SBASE = 0xAC00,
    LBASE = 0x1100,
    VBASE = 0x1161,
    TBASE = 0x11A7,
    LCOUNT = 19,
    VCOUNT = 21,
    TCOUNT = 28,
    NCOUNT = VCOUNT * TCOUNT,
    SCOUNT = LCOUNT * NCOUNT
};

/* primary composite of (a, b), or 0 */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = NELEM(uc_comp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint32_t *r = uc_comp[mid];
        if (a < r[0] || (a == r[0] && b < r[1]))
            hi = mid;
        else if (a > r[0] || b > r[1])
            lo = mid + 1;
        else
            return r[2];
    }
    return 0;
}

/* ---------------------------------------------------------------- growable arrays */

typedef struct {
    uint32_t *v;
    size_t n, cap;
} u32vec;
typedef struct {
    int32_t *v;
    size_t n, cap;
} i32vec;

static void u32_push(u32vec *a, uint32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}
static void i32_push(i32vec *a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Decode like Python's bytes.decode("utf-8", errors="replace"): each maximal subpart of an
 * ill-formed sequence (Unicode's "best practice", what CPython does) becomes one U+FFFD. */
static void utf8_decode(const unsigned char *s, size_t n, u32vec *out) {
    size_t i = 0;
    while (i < n) {
        unsigned b = s[i];
        if (b < 0x80) {
            u32_push(out, b);
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        uint32_t c;
        if (b >= 0xC2 && b <= 0xDF)
            need = 1, c = b & 0x1F;
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2, c = b & 0x0F;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3, c = b & 0x07;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            u32_push(out, 0xFFFD);
            i++;
            continue;
        }
        size_t j = i + 1;
        int got = 0;
        while (got < need && j < n) {
            unsigned x = s[j];
            unsigned l = got == 0 ? lo : 0x80, h = got == 0 ? hi : 0xBF;
            if (x < l || x > h) break;
            c = (c << 6) | (x & 0x3F);
            got++;
            j++;
        }
        if (got == need)
            u32_push(out, c);
        else
            u32_push(out, 0xFFFD);
        i = j;
    }
}

static size_t utf8_encode(uint32_t c, unsigned char *o) {
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- the tokenizer */

typedef struct {
    uint32_t *cp; /* code points of the content */
    size_t n;
    int32_t id;
    int normalized; /* matched after normalisation (1) or on the raw text (0) */
} added_tok;

struct clip_tokenizer {
    /* vocab: open addressing over a string pool */
    char *pool;
    size_t vcap;  /* power of two */
    size_t *voff; /* offset + 1 into pool, 0 = empty */
    uint32_t *vlen;
    int32_t *vid;
    int32_t vocab_size; /* largest id + 1 */
    /* merges: (a, b) -> (rank, new id) */
    size_t mcap;
    uint64_t *mkey; /* ((a << 32) | b) + 1, 0 = empty */
    int32_t *mrank, *mnew;
    int32_t byte_id[256], byte_end_id[256]; /* -1 when not in the vocabulary */
    added_tok added[MAX_ADDED];
    int n_added;
    int32_t bos, eos, pad, unk; /* unk -1 when none */
    int max_len;
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}
static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static int32_t vocab_get(const clip_tokenizer *t, const char *s, size_t n) {
    size_t m = t->vcap - 1;
    for (size_t i = hash_bytes(s, n) & m;; i = (i + 1) & m) {
        if (!t->voff[i]) return -1;
        if (t->vlen[i] == n && !memcmp(t->pool + t->voff[i] - 1, s, n)) return t->vid[i];
    }
}

static int merge_get(const clip_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *nid) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t m = t->mcap - 1;
    for (size_t i = hash_u64(key) & m;; i = (i + 1) & m) {
        if (!t->mkey[i]) return 0;
        if (t->mkey[i] == key) {
            *rank = t->mrank[i];
            *nid = t->mnew[i];
            return 1;
        }
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 64;
    while (c < n)
        c *= 2;
    return c;
}

static int read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return mapo_error("%s: cannot open", path);
    char *b = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            if (cap > MAX_FILE_BYTES) {
                fclose(f);
                free(b);
                return mapo_error("%s: larger than %u MiB", path, MAX_FILE_BYTES >> 20);
            }
            cap = cap ? cap * 2 : 1 << 20;
            b = xrealloc(b, cap + 1);
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(b);
        return mapo_error("%s: read error", path);
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* -1 with a message when path is larger than MAX_JSON_BYTES (checked before parsing: the
   parsed tree takes several times the file) */
static int json_too_big(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size > (off_t)MAX_JSON_BYTES)
        return mapo_error("%s: %lld bytes, more than the limit of %u MiB for a tokenizer JSON "
                          "file", path, (long long)st.st_size, MAX_JSON_BYTES >> 20);
    return 0;
}

/* json_load_file with the two messages we want: missing file, broken JSON */
static json_t *load_json(const char *path) {
    json_error_t je;
    if (json_too_big(path)) return NULL;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f)
            mapo_error("%s: cannot open", path);
        else {
            fclose(f);
            mapo_error("%s: invalid JSON at line %d: %s", path, je.line, je.text);
        }
    }
    return root;
}

/* the vocabulary from a JSON object {token: id} (vocab.json, or tokenizer.json's model.vocab) */
static int vocab_from_json(clip_tokenizer *t, json_t *obj, const char *path) {
    if (!json_is_object(obj) || json_object_size(obj) == 0)
        return mapo_error("%s: expected a non-empty JSON object {token: id}", path);
    size_t n = json_object_size(obj), total = 0;
    if (n > MAX_VOCAB)
        return mapo_error("%s: %zu tokens, more than the limit of %d", path, n, MAX_VOCAB);
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_ID)
            return mapo_error("%s: id of token '%s' is not an integer in [0, %d)", path, key,
                              MAX_ID);
        size_t kl = strlen(key);
        if (kl > MAX_TOKEN_BYTES)
            return mapo_error("%s: token '%.32s...' has %zu bytes, more than the limit of %d",
                              path, key, kl, MAX_TOKEN_BYTES);
        total += kl + 1;
    }
    t->pool = xmalloc(total);
    t->vcap = pow2_at_least(n * 2);
    t->voff = xcalloc(t->vcap, sizeof *t->voff);
    t->vlen = xcalloc(t->vcap, sizeof *t->vlen);
    t->vid = xcalloc(t->vcap, sizeof *t->vid);
    size_t off = 0;
    int32_t maxid = -1;
    json_object_foreach(obj, key, v) {
        size_t len = strlen(key);
        int32_t id = (int32_t)json_integer_value(v);
        memcpy(t->pool + off, key, len + 1);
        size_t m = t->vcap - 1, i = hash_bytes(key, len) & m;
        while (t->voff[i])
            i = (i + 1) & m; /* keys of a JSON object are unique */
        t->voff[i] = off + 1;
        t->vlen[i] = (uint32_t)len;
        t->vid[i] = id;
        off += len + 1;
        if (id > maxid) maxid = id;
    }
    t->vocab_size = maxid + 1;
    return 0;
}

static int load_vocab(clip_tokenizer *t, const char *path) {
    json_t *root = load_json(path);
    if (!root) return -1;
    int rc = vocab_from_json(t, root, path);
    json_decref(root); /* after the message: it may quote a key */
    return rc;
}

static void merges_alloc(clip_tokenizer *t, size_t n) {
    t->mcap = pow2_at_least((n + 1) * 2);
    t->mkey = xcalloc(t->mcap, sizeof *t->mkey);
    t->mrank = xcalloc(t->mcap, sizeof *t->mrank);
    t->mnew = xcalloc(t->mcap, sizeof *t->mnew);
}

/* one merge (a, b) of the given rank; where names the line for messages */
static int add_merge(clip_tokenizer *t, const char *a, size_t la, const char *b, size_t lb,
                     int32_t rank, const char *where) {
    int32_t ia = vocab_get(t, a, la), ib = vocab_get(t, b, lb);
    if (ia < 0) return mapo_error("%s: token '%.*s' is not in the vocabulary", where, (int)la, a);
    if (ib < 0) return mapo_error("%s: token '%.*s' is not in the vocabulary", where, (int)lb, b);
    char stack[256], *ab = la + lb <= sizeof stack ? stack : xmalloc(la + lb);
    memcpy(ab, a, la);
    memcpy(ab + la, b, lb);
    int32_t iab = vocab_get(t, ab, la + lb);
    if (ab != stack) free(ab);
    if (iab < 0)
        return mapo_error("%s: merged token '%.*s%.*s' is not in the vocabulary", where, (int)la, a,
                          (int)lb, b);
    uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
    size_t m = t->mcap - 1, i = hash_u64(key) & m;
    while (t->mkey[i] && t->mkey[i] != key)
        i = (i + 1) & m;
    t->mkey[i] = key; /* a repeated pair: the later one wins, as in tokenizers */
    t->mrank[i] = rank;
    t->mnew[i] = iab;
    return 0;
}

/* a merge given as one string "a b": exactly two tokens separated by one space */
static int add_merge_str(clip_tokenizer *t, const char *line, size_t ll, int32_t rank,
                         const char *where) {
    if (memchr(line, 0, ll)) return mapo_error("%s: contains a NUL byte", where);
    const char *sp = memchr(line, ' ', ll);
    if (!sp || sp == line || sp + 1 == line + ll ||
        memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - line)))
        return mapo_error("%s: expected two tokens separated by one space", where);
    size_t la = (size_t)(sp - line);
    return add_merge(t, line, la, sp + 1, ll - la - 1, rank, where);
}

/* merges.txt as the tokenizers library reads it: lines (\n, optional \r), lines starting with
 * "#version" skipped, every other line exactly two tokens separated by one space; the rank is
 * the line's order. */
static int load_merges(clip_tokenizer *t, const char *path) {
    char *buf = NULL;
    size_t len = 0;
    if (read_file(path, &buf, &len)) return -1;
    size_t nlines = 0;
    for (size_t i = 0; i < len; i++)
        nlines += buf[i] == '\n';
    if (nlines > MAX_MERGES) {
        free(buf);
        return mapo_error("%s: %zu lines, more than the limit of %d merges", path, nlines,
                          MAX_MERGES);
    }
    merges_alloc(t, nlines);
    size_t pos = 0;
    long lineno = 0;
    int32_t rank = 0;
    int rc = 0;
    char where[4200];
    while (pos < len && !rc) {
        char *line = buf + pos, *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + (nl ? 1 : 0);
        lineno++;
        if (ll && line[ll - 1] == '\r') ll--;
        if (ll >= 8 && !memcmp(line, "#version", 8)) continue;
        snprintf(where, sizeof where, "%s: line %ld", path, lineno);
        rc = add_merge_str(t, line, ll, rank++, where);
    }
    free(buf);
    return rc;
}

/* tokenizer.json (what transformers 5.x saves): model.vocab, model.merges ("a b" strings or
 * [a, b] pairs) and added_tokens, returned (a new reference) for load_config. Like
 * transformers' CLIPTokenizer we take only these from it: the normalizer, pre-tokenizer and
 * post-processor are CLIP's, whatever the file says. */
static int load_tokenizer_json(clip_tokenizer *t, const char *path, json_t **added) {
    *added = NULL;
    json_t *root = load_json(path);
    if (!root) return -1;
    int rc = 0;
    char where[4200];
    json_t *model = json_object_get(root, "model"), *merges = json_object_get(model, "merges");
    json_t *type = json_object_get(model, "type");
    if (!json_is_object(model)) {
        rc = mapo_error("%s: no \"model\" object", path);
        goto done;
    }
    if (type && !(json_is_string(type) && !strcmp(json_string_value(type), "BPE"))) {
        rc = mapo_error("%s: model.type is not \"BPE\"", path);
        goto done;
    }
    snprintf(where, sizeof where, "%s: model.vocab", path);
    if (vocab_from_json(t, json_object_get(model, "vocab"), where)) goto fail;
    if (!json_is_array(merges)) {
        rc = mapo_error("%s: model.merges is not an array", path);
        goto done;
    }
    if (json_array_size(merges) > MAX_MERGES) {
        rc = mapo_error("%s: model.merges has %zu entries, more than the limit of %d", path,
                        json_array_size(merges), MAX_MERGES);
        goto done;
    }
    merges_alloc(t, json_array_size(merges));
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *m = json_array_get(merges, i);
        snprintf(where, sizeof where, "%s: model.merges[%zu]", path, i);
        if (json_is_string(m)) {
            if (add_merge_str(t, json_string_value(m), json_string_length(m), (int32_t)i, where))
                goto fail;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
            if (add_merge(t, json_string_value(a), json_string_length(a), json_string_value(b),
                          json_string_length(b), (int32_t)i, where))
                goto fail;
        } else {
            rc = mapo_error("%s: neither \"a b\" nor [a, b]", where);
            goto done;
        }
    }
    json_t *at = json_object_get(root, "added_tokens");
    if (at && !json_is_null(at)) {
        if (!json_is_array(at)) {
            rc = mapo_error("%s: added_tokens is not an array", path);
            goto done;
        }
        *added = json_incref(at);
    }
    goto done;
fail:
    rc = -1;
done:
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------- special tokens */

enum { SP_BOS, SP_EOS, SP_UNK, SP_PAD, SP_N };
static const char *const sp_key[SP_N] = {"bos_token", "eos_token", "unk_token", "pad_token"};
static const char *const sp_default[SP_N] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
                                             "<|endoftext|>"};

typedef struct {
    char *content; /* NULL: none (null in the config) */
    int normalized;
    int given; /* named in tokenizer_config.json (not a default) */
} spec_tok;

static int json_flag(json_t *o, const char *k, int def, int *out, const char *file,
                     const char *what) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return mapo_error("%s: %s: '%s' is not a boolean", file, what, k);
    *out = json_is_true(v);
    return 0;
}

/* A token as transformers 5.x makes it: a plain string is AddedToken(normalized=False); an
 * object is AddedToken(**obj) with special forced on (special_tokens_map.json) or taken from
 * the object (tokenizer_config.json), and normalized defaulting to `not special`. */
static int parse_tok(json_t *v, int force_special, spec_tok *out, const char *file,
                     const char *what) {
    out->given = 0;
    if (json_is_null(v)) {
        out->content = NULL;
        out->normalized = 0;
        return 0;
    }
    if (json_is_string(v)) {
        if (!json_string_length(v)) return mapo_error("%s: %s is an empty string", file, what);
        out->content = xstrdup(json_string_value(v));
        out->normalized = 0;
        return 0;
    }
    if (!json_is_object(v))
        return mapo_error("%s: %s is neither a string nor an object", file, what);
    json_t *c = json_object_get(v, "content");
    if (!json_is_string(c) || !json_string_length(c))
        return mapo_error("%s: %s has no non-empty string 'content'", file, what);
    int special = 0, normalized = 0, lstrip = 0, rstrip = 0, single = 0;
    if (json_flag(v, "special", 0, &special, file, what)) return -1;
    if (force_special) special = 1;
    if (json_flag(v, "normalized", !special, &normalized, file, what) ||
        json_flag(v, "lstrip", 0, &lstrip, file, what) ||
        json_flag(v, "rstrip", 0, &rstrip, file, what) ||
        json_flag(v, "single_word", 0, &single, file, what))
        return -1;
    if (lstrip || rstrip || single)
        return mapo_error("%s: %s '%s': lstrip/rstrip/single_word are not supported", file, what,
                          json_string_value(c));
    out->content = xstrdup(json_string_value(c));
    out->normalized = normalized;
    return 0;
}

static void spec_set(spec_tok *s, spec_tok v) {
    free(s->content);
    *s = v;
}

/* returns 1 and loads *root if the file exists, 0 if it does not, -1 if broken */
static int load_json_opt(const char *dir, const char *name, json_t **root, char *path,
                         size_t pathsz) {
    snprintf(path, pathsz, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    if (json_too_big(path)) return -1;
    json_error_t je;
    *root = json_load_file(path, 0, &je);
    if (!*root) return mapo_error("%s: invalid JSON at line %d: %s", path, je.line, je.text);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return mapo_error("%s: not a JSON object", path);
    }
    return 1;
}

static int add_token(clip_tokenizer *t, const char *ctx, const char *content, int normalized,
                     int32_t want_id, const char *why) {
    int32_t id = vocab_get(t, content, strlen(content));
    if (id < 0) return mapo_error("%s: %s '%s' is not in the vocabulary", ctx, why, content);
    if (want_id >= 0 && id != want_id)
        return mapo_error("%s: %s '%s' has id %d, but the vocabulary gives it %d", ctx, why,
                          content, (int)want_id, (int)id);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) {
            /* the same token added again: its flags are replaced (last one wins) */
            t->added[i].normalized = normalized;
            return 0;
        }
    if (t->n_added == MAX_ADDED) return mapo_error("%s: more than %d added tokens", ctx, MAX_ADDED);
    u32vec cp = {0}; /* jansson strings are valid UTF-8 */
    utf8_decode((const unsigned char *)content, strlen(content), &cp);
    added_tok *a = &t->added[t->n_added++];
    a->cp = cp.v;
    a->n = cp.n;
    a->id = id;
    a->normalized = normalized;
    return 0;
}

/* special tokens and model_max_length from dir (NULL: defaults); json_added/json_path:
 * tokenizer.json's added_tokens when the vocabulary came from there */
static int load_config(clip_tokenizer *t, const char *dir, json_t *json_added,
                       const char *json_path) {
    spec_tok sp[SP_N];
    for (int k = 0; k < SP_N; k++) {
        sp[k].content = xstrdup(sp_default[k]);
        sp[k].normalized = 0;
        sp[k].given = 0;
    }
    json_t *cfg = NULL, *map = NULL;
    char pcfg[4096] = "", pmap[4096] = "";
    int rc = 0, have_cfg = 0, have_map = 0;
    t->max_len = 77;
    struct stat st;
    if (dir && (stat(dir, &st) || !S_ISDIR(st.st_mode))) {
        rc = mapo_error("%s: not a directory", dir);
        goto fail;
    }
    if (dir) {
        have_cfg = load_json_opt(dir, "tokenizer_config.json", &cfg, pcfg, sizeof pcfg);
        if (have_cfg < 0) goto fail;
        have_map = load_json_opt(dir, "special_tokens_map.json", &map, pmap, sizeof pmap);
        if (have_map < 0) goto fail;
    }
    json_t *atd = have_cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    if (have_cfg) {
        json_t *ml = json_object_get(cfg, "model_max_length");
        if (ml && !json_is_null(ml)) {
            if (!json_is_integer(ml) || json_integer_value(ml) < 2 ||
                json_integer_value(ml) > 1 << 20) {
                rc = mapo_error("%s: model_max_length is not an integer in [2, %d]", pcfg, 1 << 20);
                goto fail;
            }
            t->max_len = (int)json_integer_value(ml);
        }
        for (int k = 0; k < SP_N; k++) {
            json_t *v = json_object_get(cfg, sp_key[k]);
            if (!v) continue;
            spec_tok s;
            if (parse_tok(v, 0, &s, pcfg, sp_key[k])) goto fail;
            s.given = 1;
            spec_set(&sp[k], s);
        }
    }
    /* transformers 5.x reads special_tokens_map.json only when tokenizer_config.json has no
     * added_tokens_decoder; its entries then override the config's */
    if (have_map && !atd) {
        for (int k = 0; k < SP_N; k++) {
            json_t *v = json_object_get(map, sp_key[k]);
            if (!v) continue;
            spec_tok s;
            if (parse_tok(v, 1, &s, pmap, sp_key[k])) goto fail;
            s.given = 1;
            spec_set(&sp[k], s);
        }
    }
    /* the added tokens with ids and flags: tokenizer_config.json's added_tokens_decoder, or
     * else tokenizer.json's added_tokens (transformers 5.x's order of preference) */
    struct {
        long long id;
        json_t *obj;
    } ent[MAX_ADDED];
    int nent = 0;
    const char *src = atd ? pcfg : json_path;
    if (atd) {
        if (!json_is_object(atd)) {
            rc = mapo_error("%s: added_tokens_decoder is not an object", pcfg);
            goto fail;
        }
        const char *key;
        json_t *v;
        json_object_foreach(atd, key, v) {
            char *end;
            long long id = strtoll(key, &end, 10);
            if (!*key || *end || id < 0 || id >= MAX_ID) {
                rc = mapo_error("%s: added_tokens_decoder key '%s' is not an id", pcfg, key);
                goto fail;
            }
            if (nent == MAX_ADDED) {
                rc = mapo_error("%s: more than %d added tokens", pcfg, MAX_ADDED);
                goto fail;
            }
            ent[nent].id = id;
            ent[nent++].obj = v;
        }
    } else if (json_added) {
        for (size_t i = 0; i < json_array_size(json_added); i++) {
            json_t *v = json_array_get(json_added, i), *id = json_object_get(v, "id");
            if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                json_integer_value(id) >= MAX_ID) {
                rc = mapo_error("%s: added_tokens[%zu] has no valid id", json_path, i);
                goto fail;
            }
            if (nent == MAX_ADDED) {
                rc = mapo_error("%s: more than %d added tokens", json_path, MAX_ADDED);
                goto fail;
            }
            ent[nent].id = json_integer_value(id);
            ent[nent++].obj = v;
        }
    }
    for (int i = 1; i < nent; i++) /* by id, ascending (stable) */
        for (int j = i; j > 0 && ent[j - 1].id > ent[j].id; j--) {
            long long id = ent[j].id;
            json_t *o = ent[j].obj;
            ent[j] = ent[j - 1];
            ent[j - 1].id = id;
            ent[j - 1].obj = o;
        }
    for (int i = 0; i < nent; i++) {
        spec_tok s;
        char what[96];
        snprintf(what, sizeof what, "%s[%lld]", atd ? "added_tokens_decoder" : "added_tokens",
                 ent[i].id);
        if (!json_is_object(ent[i].obj)) {
            rc = mapo_error("%s: %s is not an object", src, what);
            goto fail;
        }
        if (parse_tok(ent[i].obj, 0, &s, src, what)) goto fail;
        /* a special token named in the config by the same content takes this token's
         * flags (a default one does not: transformers adds it as a plain string) */
        for (int k = 0; k < SP_N; k++)
            if (sp[k].given && sp[k].content && !strcmp(sp[k].content, s.content))
                sp[k].normalized = s.normalized;
        rc = add_token(t, src, s.content, s.normalized, (int32_t)ent[i].id, what);
        free(s.content);
        if (rc) goto fail;
    }
    for (int k = 0; k < SP_N; k++) {
        if (!sp[k].content) {
            if (k == SP_UNK) continue;
            rc = mapo_error("%s: %s is null in the config; CLIP needs one", dir, sp_key[k]);
            goto fail;
        }
        if (add_token(t, dir ? dir : "tokenizer defaults", sp[k].content, sp[k].normalized, -1,
                      sp_key[k]))
            goto fail;
    }
    t->bos = vocab_get(t, sp[SP_BOS].content, strlen(sp[SP_BOS].content));
    t->eos = vocab_get(t, sp[SP_EOS].content, strlen(sp[SP_EOS].content));
    t->pad = vocab_get(t, sp[SP_PAD].content, strlen(sp[SP_PAD].content));
    t->unk = sp[SP_UNK].content ? vocab_get(t, sp[SP_UNK].content, strlen(sp[SP_UNK].content)) : -1;
    goto done;
fail:
    rc = -1;
done:
    for (int k = 0; k < SP_N; k++)
        free(sp[k].content);
    if (cfg) json_decref(cfg);
    if (map) json_decref(map);
    return rc;
}

const char *clip_byte_to_unicode(int b, char out[5]) {
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to
     * U+0100.. in byte order */
    uint32_t c;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        c = (uint32_t)b;
    else {
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
                n++;
        c = 256 + (uint32_t)n;
    }
    size_t k = utf8_encode(c, (unsigned char *)out);
    out[k] = 0;
    return out;
}

/* vocab_json + merges_txt, or tokenizer_json (the other two NULL); then config_dir */
static int load_common(clip_tokenizer **out, const char *vocab_json, const char *merges_txt,
                       const char *tokenizer_json, const char *config_dir) {
    *out = NULL;
    clip_tokenizer *t = xcalloc(1, sizeof *t);
    json_t *added = NULL;
    if (tokenizer_json) {
        if (load_tokenizer_json(t, tokenizer_json, &added)) goto fail;
    } else if (load_vocab(t, vocab_json) || load_merges(t, merges_txt))
        goto fail;
    for (int b = 0; b < 256; b++) {
        char s[12];
        clip_byte_to_unicode(b, s);
        size_t n = strlen(s);
        t->byte_id[b] = vocab_get(t, s, n);
        memcpy(s + n, "</w>", 5);
        t->byte_end_id[b] = vocab_get(t, s, n + 4);
    }
    if (load_config(t, config_dir, added, tokenizer_json)) goto fail;
    if (added) json_decref(added);
    *out = t;
    return 0;
fail:
    if (added) json_decref(added);
    clip_tokenizer_free(t);
    return -1;
}

int clip_tokenizer_load_files(clip_tokenizer **out, const char *vocab_json, const char *merges_txt,
                              const char *config_dir) {
    if (!out || !vocab_json || !merges_txt)
        return mapo_error("clip_tokenizer_load_files: NULL argument");
    return load_common(out, vocab_json, merges_txt, NULL, config_dir);
}

int clip_tokenizer_load(clip_tokenizer **t, const char *dir) {
    if (!t || !dir) return mapo_error("clip_tokenizer_load: NULL argument");
    size_t n = strlen(dir) + 32;
    char *v = xmalloc(n), *m = xmalloc(n), *j = xmalloc(n);
    snprintf(v, n, "%s/vocab.json", dir);
    snprintf(m, n, "%s/merges.txt", dir);
    snprintf(j, n, "%s/tokenizer.json", dir);
    struct stat st;
    int rc = !stat(j, &st) ? load_common(t, NULL, NULL, j, dir) : load_common(t, v, m, NULL, dir);
    free(v);
    free(m);
    free(j);
    return rc;
}

void clip_tokenizer_free(clip_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->voff);
    free(t->vlen);
    free(t->vid);
    free(t->mkey);
    free(t->mrank);
    free(t->mnew);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].cp);
    free(t);
}

int clip_tokenizer_max_length(const clip_tokenizer *t) { return t ? t->max_len : -1; }
int clip_tokenizer_bos_id(const clip_tokenizer *t) { return t ? t->bos : -1; }
int clip_tokenizer_eos_id(const clip_tokenizer *t) { return t ? t->eos : -1; }
int clip_tokenizer_pad_id(const clip_tokenizer *t) { return t ? t->pad : -1; }
int clip_tokenizer_vocab_size(const clip_tokenizer *t) { return t ? t->vocab_size : -1; }

/* ---------------------------------------------------------------- normalisation */

/* NFC (UAX #15: full canonical decomposition, canonical ordering, canonical composition) */
static void nfc(const uint32_t *s, size_t n, u32vec *out) {
    u32vec d = {0};
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        const uint32_t *dp;
        int k;
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t si = c - SBASE;
            u32_push(&d, LBASE + si / NCOUNT);
            u32_push(&d, VBASE + (si % NCOUNT) / TCOUNT);
            if (si % TCOUNT) u32_push(&d, TBASE + si % TCOUNT);
        } else if ((k = decomp(c, &dp)) > 0) {
            for (int j = 0; j < k; j++)
                u32_push(&d, dp[j]);
        } else
            u32_push(&d, c);
    }
    /* canonical ordering: stable sort of each run of non-starters by combining class
     * (insertion sort for short runs, counting sort for long ones: a hostile prompt of
     * millions of marks stays linear) */
    uint32_t *tmp = NULL;
    size_t tmpcap = 0;
    for (size_t i = 0; i < d.n;) {
        if (!ccc(d.v[i])) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < d.n && ccc(d.v[j]))
            j++;
        size_t len = j - i;
        uint32_t *r = d.v + i;
        if (len <= 32) {
            for (size_t a = 1; a < len; a++) {
                uint32_t c = r[a];
                unsigned ca = ccc(c);
                size_t b = a;
                for (; b > 0 && ccc(r[b - 1]) > ca; b--)
                    r[b] = r[b - 1];
                r[b] = c;
            }
        } else {
            size_t count[257] = {0};
            if (tmpcap < len) {
                tmpcap = len;
                tmp = xrealloc(tmp, tmpcap * sizeof *tmp);
            }
            for (size_t a = 0; a < len; a++)
                count[ccc(r[a]) + 1]++;
            for (int k = 1; k < 257; k++)
                count[k] += count[k - 1];
            for (size_t a = 0; a < len; a++)
                tmp[count[ccc(r[a])]++] = r[a];
            memcpy(r, tmp, len * sizeof *r);
        }
        i = j;
    }
    free(tmp);
    /* composition: a character combines with the last starter unless blocked */
    long st = -1;  /* index (in out) of the last starter */
    int last = -1; /* ccc of the last character after the starter, -1 if none */
    for (size_t i = 0; i < d.n; i++) {
        uint32_t c = d.v[i];
        int k = (int)ccc(c);
        if (st >= 0 && (last == -1 || last < k)) {
            uint32_t x = compose(out->v[st], c);
            if (x) {
                out->v[st] = x;
                continue;
            }
        }
        if (k == 0) {
            st = (long)(out->n);
            last = -1;
        } else
            last = k;
        u32_push(out, c);
    }
    free(d.v);
}

/* NFC, then \s+ -> " ", then lowercase, into out */
static void normalize(const uint32_t *s, size_t n, u32vec *out) {
    u32vec a = {0};
    nfc(s, n, &a);
    for (size_t i = 0; i < a.n;) {
        if (is_space(a.v[i])) {
            while (i < a.n && is_space(a.v[i]))
                i++;
            u32_push(out, ' ');
            continue;
        }
        uint32_t l[2];
        int k = lower(a.v[i++], l);
        for (int j = 0; j < k; j++)
            u32_push(out, l[j]);
    }
    free(a.v);
}

/* ---------------------------------------------------------------- BPE */

typedef struct {
    int32_t rank;
    int32_t pos;
    int32_t nid;
} merge_ent;

static int ent_less(const merge_ent *a, const merge_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}
static void heap_push(merge_ent *h, size_t *n, merge_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}
static merge_ent heap_pop(merge_ent *h, size_t *n) {
    merge_ent top = h[0], e = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const merge_ent *best = &e;
        if (l < *n && ent_less(&h[l], best)) m = l, best = &h[l];
        if (r < *n && ent_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = e;
    return top;
}

typedef struct {
    int32_t id, prev, next, alive;
} sym;

/* BPE of one pre-token (UTF-8 bytes), appending ids; the merge loop of the tokenizers
 * library (word.rs merge_all): a heap of (rank, position), lowest rank first and leftmost on
 * ties; stale entries are skipped when the pair at their position no longer yields their
 * token. */
static int bpe(const clip_tokenizer *t, const unsigned char *b, size_t n, i32vec *ids, sym *sy,
               merge_ent *heap) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = i + 1 == n ? t->byte_end_id[b[i]] : t->byte_id[b[i]];
        if (id < 0) id = t->unk;
        if (id < 0)
            return mapo_error("tokenizer: byte 0x%02X has no token in vocab.json and there is no "
                              "unk token",
                              b[i]);
        sy[i].id = id;
        sy[i].prev = (int32_t)i - 1;
        sy[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
        sy[i].alive = 1;
    }
    size_t hn = 0;
    int32_t rank, nid;
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_get(t, sy[i].id, sy[i + 1].id, &rank, &nid))
            heap_push(heap, &hn, (merge_ent){rank, (int32_t)i, nid});
    while (hn) {
        merge_ent e = heap_pop(heap, &hn);
        sym *s = &sy[e.pos];
        if (!s->alive || s->next < 0) continue;
        sym *r = &sy[s->next];
        if (!merge_get(t, s->id, r->id, &rank, &nid) || nid != e.nid) continue;
        s->id = e.nid;
        r->alive = 0;
        s->next = r->next;
        if (r->next >= 0) sy[r->next].prev = e.pos;
        if (s->prev >= 0 && merge_get(t, sy[s->prev].id, s->id, &rank, &nid))
            heap_push(heap, &hn, (merge_ent){rank, s->prev, nid});
        if (s->next >= 0 && merge_get(t, s->id, sy[s->next].id, &rank, &nid))
            heap_push(heap, &hn, (merge_ent){rank, e.pos, nid});
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next)
        i32_push(ids, sy[i].id);
    return 0;
}

/* scratch for one tokenize call */
typedef struct {
    unsigned char *bytes;
    sym *sy;
    merge_ent *heap;
    size_t cap; /* in bytes of the longest pre-token */
} scratch;

static int bpe_piece(const clip_tokenizer *t, const uint32_t *cp, size_t n, i32vec *ids,
                     scratch *sc) {
    if (n == 0) return 0;
    size_t nb = 0;
    if (n > sc->cap / 4) {
        sc->cap = n * 4;
        sc->bytes = xrealloc(sc->bytes, sc->cap);
        sc->sy = xrealloc(sc->sy, sc->cap * sizeof *sc->sy);
        /* each merge pushes at most two entries and removes a symbol: 3n bounds the heap */
        sc->heap = xrealloc(sc->heap, sc->cap * 3 * sizeof *sc->heap);
    }
    for (size_t i = 0; i < n; i++)
        nb += utf8_encode(cp[i], sc->bytes + nb);
    return bpe(t, sc->bytes, nb, ids, sc->sy, sc->heap);
}

static int starts_with_ascii(const uint32_t *s, size_t n, const char *lit) {
    size_t k = strlen(lit);
    if (k > n) return 0;
    for (size_t i = 0; i < k; i++)
        if (s[i] != (unsigned char)lit[i]) return 0;
    return 1;
}

/* the CLIP pre-tokenizer regex over normalised text, each piece through BPE */
static int pretokenize(const clip_tokenizer *t, const uint32_t *s, size_t n, i32vec *ids,
                       scratch *sc) {
    static const char *const specials[2] = {"<|startoftext|>", "<|endoftext|>"};
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i];
        size_t j;
        int sp = -1;
        for (int k = 0; k < 2; k++)
            if (starts_with_ascii(s + i, n - i, specials[k])) sp = k;
        if (sp >= 0) {
            /* a literal special token: ByteLevel's GPT-2 regex splits it as "<|", word, "|>" */
            size_t k = strlen(specials[sp]);
            if (bpe_piece(t, s + i, 2, ids, sc) || bpe_piece(t, s + i + 2, k - 4, ids, sc) ||
                bpe_piece(t, s + i + k - 2, 2, ids, sc))
                return -1;
            i += k;
            continue;
        }
        if (c == '\'' && i + 1 < n) {
            uint32_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
            size_t k = 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd')
                k = 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                k = 3;
            if (k) {
                if (bpe_piece(t, s + i, k, ids, sc)) return -1;
                i += k;
                continue;
            }
        }
        if (is_letter(c)) {
            for (j = i + 1; j < n && is_letter(s[j]); j++) {
            }
        } else if (is_number(c)) {
            j = i + 1;
        } else if (!is_space(c)) {
            for (j = i + 1; j < n && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j]); j++) {
            }
        } else {
            i++;
            continue;
        }
        if (bpe_piece(t, s + i, j - i, ids, sc)) return -1;
        i = j;
    }
    return 0;
}

/* leftmost-longest match of the added tokens with the given normalized flag at s[i] */
static const added_tok *match_added(const clip_tokenizer *t, const uint32_t *s, size_t n,
                                    int normalized) {
    const added_tok *best = NULL;
    for (int k = 0; k < t->n_added; k++) {
        const added_tok *a = &t->added[k];
        if (a->normalized != normalized || a->n > n || (best && a->n <= best->n)) continue;
        if (!memcmp(a->cp, s, a->n * sizeof *s)) best = a;
    }
    return best;
}

/* normalised text: cut out the normalized added tokens, pre-tokenize the rest */
static int encode_normalized(const clip_tokenizer *t, const uint32_t *s, size_t n, i32vec *ids,
                             scratch *sc) {
    if (n == 0) return 0; /* an empty piece (s may be NULL: no pointer arithmetic on it) */
    size_t from = 0;
    for (size_t i = 0; i < n;) {
        const added_tok *a = match_added(t, s + i, n - i, 1);
        if (!a) {
            i++;
            continue;
        }
        if (pretokenize(t, s + from, i - from, ids, sc)) return -1;
        i32_push(ids, a->id);
        i += a->n;
        from = i;
    }
    return pretokenize(t, s + from, n - from, ids, sc);
}

static int encode_raw(const clip_tokenizer *t, const uint32_t *s, size_t n, i32vec *ids,
                      scratch *sc) {
    u32vec norm = {0};
    normalize(s, n, &norm);
    int rc = encode_normalized(t, norm.v, norm.n, ids, sc);
    free(norm.v);
    return rc;
}

int clip_tokenize(const clip_tokenizer *t, const char *text, int32_t *ids, int max_len) {
    if (!t || !text || !ids) return mapo_error("clip_tokenize: NULL argument");
    if (max_len < 2) return mapo_error("clip_tokenize: max_len %d < 2 (bos and eos)", max_len);
    size_t len = strlen(text);
    if (len > MAX_TEXT_BYTES)
        return mapo_error("clip_tokenize: prompt of %zu bytes is longer than %u MiB", len,
                          MAX_TEXT_BYTES >> 20);
    u32vec cp = {0};
    i32vec out = {0};
    scratch sc = {0};
    utf8_decode((const unsigned char *)text, len, &cp);
    /* raw text: cut out the non-normalized added tokens; the pieces between are normalised
     * separately */
    int rc = 0;
    size_t from = 0;
    for (size_t i = 0; i < cp.n && !rc;) {
        const added_tok *a = match_added(t, cp.v + i, cp.n - i, 0);
        if (!a) {
            i++;
            continue;
        }
        rc = encode_raw(t, cp.v + from, i - from, &out, &sc);
        i32_push(&out, a->id);
        i += a->n;
        from = i;
    }
    /* the rest (none for an empty prompt, where cp.v is NULL) */
    if (!rc && from < cp.n) rc = encode_raw(t, cp.v + from, cp.n - from, &out, &sc);
    int total = -1;
    if (!rc && out.n > (size_t)INT_MAX - 2)
        rc = mapo_error("clip_tokenize: prompt gives more than INT_MAX tokens");
    if (!rc) {
        size_t keep = out.n < (size_t)(max_len - 2) ? out.n : (size_t)(max_len - 2);
        ids[0] = t->bos;
        if (keep) memcpy(ids + 1, out.v, keep * sizeof *ids);
        ids[keep + 1] = t->eos;
        for (size_t i = keep + 2; i < (size_t)max_len; i++)
            ids[i] = t->pad;
        total = (int)out.n + 2;
    }
    free(cp.v);
    free(out.v);
    free(sc.bytes);
    free(sc.sy);
    free(sc.heap);
    return total;
}
