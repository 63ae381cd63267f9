/* dataset.c -- Pick-a-Pic parquet and JSONL-manifest preference datasets (see dataset.h). */
#include "mapo/dataset.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "mapo/common.h"
#include "mapo/parquet.h"
#include "mapo/rng.h"

#define MAX_MANIFEST_BYTES (1LL << 30)
#define MAX_IMAGE_FILE_BYTES (1LL << 30)

enum { KIND_PARQUET = 1, KIND_MANIFEST = 2 };

typedef struct {
    char *path;
    parquet_file *pf;
    int c_caption, c_jpg0, c_jpg1, c_label0, c_label1;
    int nrg;
    int64_t *rg_first_row; /* row number (within the file) of each row group's first row */
} pq_src;

typedef struct {
    int32_t file, rg, row; /* row within the row group (< PARQUET_MAX_ROWS_PER_GROUP) */
    uint8_t swap;          /* label_0 == 0: jpg_1 is the chosen image */
} pq_pair;

typedef struct {
    char *caption, *chosen, *rejected; /* paths resolved against the manifest's folder */
    char *chosen_rel, *rejected_rel;   /* as written, for messages */
    int64_t line;
    int label; /* single images: "label" 1 (desirable) / 0 (undesirable), -1 when absent */
} mf_pair; /* an images-only manifest: chosen = the line's "image", rejected = NULL */

struct pref_dataset {
    int kind, policy;
    int keep_ties;   /* opts->keep_ties */
    int images_only; /* a manifest of single captioned images: no rejected image */
    int64_t n, n_ties, n_bad;
    int64_t n_summed; /* bad pairs beyond PREF_MAX_WARNINGS already told in a summary line */
    uint8_t *bad;
    uint64_t fp;
    /* parquet */
    pq_src *files;
    int nfiles;
    pq_pair *pairs;
    int img_file, img_rg;
    parquet_column col_jpg0, col_jpg1;
    int cap_file, cap_rg;
    parquet_column col_cap;
    /* manifest */
    char *manifest;
    mf_pair *mf;
};

/* ------------------------------------------------------------------ helpers */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
static uint64_t fnv_i64(uint64_t h, int64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)v >> (8 * i));
    return fnv(h, b, 8);
}
static uint64_t fnv_str(uint64_t h, const char *s) { return fnv(h, s, strlen(s) + 1); }

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

static char *dir_of(const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) return xstrdup(".");
    if (s == path) return xstrdup("/");
    char *d = xmalloc((size_t)(s - path) + 1);
    memcpy(d, path, (size_t)(s - path));
    d[s - path] = 0;
    return d;
}

static const char *base_of(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int read_file(const char *path, uint8_t **buf, size_t *n, long long max, const char *what) {
    *buf = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mapo_error("%s: cannot open %s: %s", what, path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return mapo_error("%s: %s is not a regular file", what, path);
    }
    if (st.st_size > max) {
        fclose(f);
        return mapo_error("%s: %s has %lld bytes, more than the limit of %lld", what, path,
                          (long long)st.st_size, max);
    }
    size_t sz = (size_t)st.st_size;
    uint8_t *b = xmalloc(sz + 1);
    size_t got = fread(b, 1, sz, f);
    fclose(f);
    if (got != sz) {
        free(b);
        return mapo_error("%s: short read of %s (%zu of %zu bytes)", what, path, got, sz);
    }
    b[sz] = 0;
    *buf = b;
    *n = sz;
    return 0;
}

int pref_parse_on_bad_image(const char *s) {
    if (s && !strcmp(s, "skip")) return ON_BAD_IMAGE_SKIP;
    if (s && !strcmp(s, "fail")) return ON_BAD_IMAGE_FAIL;
    return mapo_error("--on_bad_image: '%s' is not 'skip' or 'fail'", s ? s : "(null)");
}

/* ------------------------------------------------------------------ manifest */

/* path normalised lexically ("." and ".." folded; absolute, from the working directory when
   relative): for paths that do not exist, where realpath cannot help */
static char *lexical_abs(const char *path) {
    char cwd[4096];
    char *src = path[0] == '/' ? xstrdup(path)
                               : path_join(getcwd(cwd, sizeof cwd) ? cwd : "/", path);
    size_t n = strlen(src);
    char *out = xmalloc(n + 2);
    size_t k = 0;
    char *save = NULL;
    for (char *tok = strtok_r(src, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (!strcmp(tok, ".")) continue;
        if (!strcmp(tok, "..")) {
            while (k > 0 && out[k - 1] != '/') k--;
            if (k > 0) k--;
            continue;
        }
        out[k++] = '/';
        size_t l = strlen(tok);
        memcpy(out + k, tok, l);
        k += l;
    }
    if (k == 0) out[k++] = '/';
    out[k] = 0;
    free(src);
    return out;
}

/* Where path really leads (malloc'd): realpath when it exists, else realpath of its folder +
   its name, else lexically. */
static char *resolve_path(const char *path) {
    char *r = realpath(path, NULL);
    if (r) return r;
    const char *b = base_of(path);
    if (strcmp(b, ".") && strcmp(b, "..") && *b) {
        char *dir = dir_of(path), *rd = realpath(dir, NULL);
        free(dir);
        if (rd) {
            r = path_join(rd, b);
            free(rd);
            return r;
        }
    }
    return lexical_abs(path);
}

/* 0 when the image path full (as written: rel) resolves inside the folder root (a realpath);
   else -1 naming the line and the path */
static int check_inside(const char *root, const char *full, const char *rel, const char *mpath,
                        int64_t line, const char *key) {
    char *r = resolve_path(full);
    size_t n = strlen(root);
    int inside = !strcmp(root, "/") || (!strncmp(r, root, n) && (r[n] == '/' || r[n] == 0));
    int rc = 0;
    if (!inside)
        rc = mapo_error("%s line %lld: %s path '%s' leads to %s, outside the dataset folder %s "
                        "(pass --allow_outside_paths to read images from anywhere)", mpath,
                        (long long)line, key, rel, r, root);
    free(r);
    return rc;
}

static int open_manifest(pref_dataset *d, const char *mpath, int allow_outside) {
    uint8_t *buf;
    size_t n;
    if (read_file(mpath, &buf, &n, MAX_MANIFEST_BYTES, "manifest")) return -1;
    d->kind = KIND_MANIFEST;
    d->manifest = xstrdup(mpath);
    d->fp = fnv_str(0xcbf29ce484222325ULL, "manifest");
    d->fp = fnv(d->fp, buf, n);
    char *dir = dir_of(mpath);
    char *root = allow_outside ? NULL : resolve_path(dir);
    int64_t cap = 0, line = 0;
    size_t pos = 0;
    int rc = 0;
    if (n >= 3 && buf[0] == 0xEF && buf[1] == 0xBB && buf[2] == 0xBF) pos = 3; /* UTF-8 BOM */
    while (pos < n && !rc) {
        size_t end = pos;
        while (end < n && buf[end] != '\n') end++;
        line++;
        size_t len = end - pos;
        const char *s = (const char *)buf + pos;
        pos = end + 1;
        size_t k = 0;
        while (k < len && isspace((unsigned char)s[k])) k++;
        if (k == len) continue; /* blank line */
        json_error_t je;
        json_t *o = json_loadb(s, len, 0, &je);
        if (!o) {
            rc = mapo_error("%s line %lld: invalid JSON: %s (column %d)", mpath, (long long)line,
                            je.text, je.column);
            break;
        }
        /* a pair {"caption", "chosen", "rejected"} or a single image {"caption", "image"};
           the first line decides which kind the whole manifest holds */
        const char *pair_keys[3] = {"caption", "chosen", "rejected"};
        const char *image_keys[2] = {"caption", "image"};
        const char *const *keys = pair_keys;
        int nkeys = 3, is_image = 0;
        const char *vals[3] = {NULL, NULL, NULL};
        if (!json_is_object(o)) {
            rc = mapo_error("%s line %lld: not a JSON object", mpath, (long long)line);
        } else {
            is_image = json_object_get(o, "image") != NULL;
            if (is_image) {
                keys = image_keys;
                nkeys = 2;
            }
            if (is_image && (json_object_get(o, "chosen") || json_object_get(o, "rejected")))
                rc = mapo_error("%s line %lld: both \"image\" and \"chosen\" / \"rejected\": a "
                                "line is a single image or a pair, not both", mpath,
                                (long long)line);
            else if (!is_image && json_object_get(o, "label"))
                rc = mapo_error("%s line %lld: \"label\" belongs to single images {\"caption\", "
                                "\"image\", \"label\"}; a pair's preference is its order",
                                mpath, (long long)line);
            else if (d->n > 0 && is_image != d->images_only)
                rc = mapo_error(
                    "%s line %lld: %s in a manifest of %s (line %lld): a manifest holds pairs "
                    "{\"caption\", \"chosen\", \"rejected\"} or single images {\"caption\", "
                    "\"image\"}, not both", mpath, (long long)line,
                    is_image ? "a single image" : "a pair",
                    d->images_only ? "single images" : "pairs", (long long)d->mf[0].line);
            for (int j = 0; j < nkeys && !rc; j++) {
                json_t *v = json_object_get(o, keys[j]);
                if (!v)
                    rc = mapo_error("%s line %lld: missing \"%s\"", mpath, (long long)line, keys[j]);
                else if (!json_is_string(v))
                    rc = mapo_error("%s line %lld: \"%s\" is not a string", mpath, (long long)line,
                                    keys[j]);
                else if (j > 0 && json_string_length(v) == 0)
                    rc = mapo_error("%s line %lld: \"%s\" is an empty path", mpath,
                                    (long long)line, keys[j]);
                else
                    vals[j] = json_string_value(v);
            }
        }
        if (!rc) {
            if (d->n == 0) d->images_only = is_image;
            if (d->n == cap) {
                cap = cap ? 2 * cap : 64;
                d->mf = xrealloc(d->mf, sizeof(mf_pair) * (size_t)cap);
            }
            mf_pair *p = &d->mf[d->n++];
            p->caption = xstrdup(vals[0]);
            p->chosen_rel = xstrdup(vals[1]);
            p->chosen = vals[1][0] == '/' ? xstrdup(vals[1]) : path_join(dir, vals[1]);
            p->rejected_rel = is_image ? NULL : xstrdup(vals[2]);
            p->rejected = is_image ? NULL : vals[2][0] == '/' ? xstrdup(vals[2])
                                                              : path_join(dir, vals[2]);
            p->line = line;
            p->label = -1;
            json_t *lab = is_image ? json_object_get(o, "label") : NULL;
            if (lab) {
                /* 1 / 0, true / false: a desirable or an undesirable image (Diffusion-KTO) */
                if (json_is_boolean(lab)) p->label = json_is_true(lab);
                else if (json_is_integer(lab) && (json_integer_value(lab) == 0 ||
                                                  json_integer_value(lab) == 1))
                    p->label = (int)json_integer_value(lab);
                else
                    rc = mapo_error("%s line %lld: \"label\" must be 1 / 0 or true / false",
                                    mpath, (long long)line);
            }
            if (!rc && d->n > 1 && (p->label < 0) != (d->mf[0].label < 0))
                rc = mapo_error("%s line %lld: %s \"label\" while line %lld %s: label every "
                                "image or none", mpath, (long long)line,
                                p->label < 0 ? "no" : "a", (long long)d->mf[0].line,
                                d->mf[0].label < 0 ? "has none" : "has one");
            if (root && !rc)
                rc = check_inside(root, p->chosen, p->chosen_rel, mpath, line,
                                  is_image ? "image" : "chosen");
            if (root && !rc && !is_image)
                rc = check_inside(root, p->rejected, p->rejected_rel, mpath, line, "rejected");
        }
        json_decref(o);
    }
    free(dir);
    free(root);
    free(buf);
    if (rc) return -1;
    if (d->n == 0) return mapo_error("%s: no pairs (or images) in the manifest", mpath);
    return 0;
}

/* ------------------------------------------------------------------ parquet */

/* "train-00000-of-00003.parquet" or "train-00000-of-00645-b66ac786.parquet" -> "train" */
static int split_of(const char *name, char *out, size_t n) {
    for (const char *of = strstr(name, "-of-"); of; of = strstr(of + 1, "-of-")) {
        const char *p = of;
        while (p > name && isdigit((unsigned char)p[-1])) p--;
        const char *q = of + 4;
        while (isdigit((unsigned char)*q)) q++;
        if (p == of || q == of + 4 || p <= name + 1 || p[-1] != '-') continue;
        if (*q != '.' && *q != '-') continue;
        size_t len = (size_t)(p - 1 - name);
        if (len == 0 || len >= n) return 0;
        memcpy(out, name, len);
        out[len] = 0;
        return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* regular *.parquet files in dir, sorted by name; -1 if dir cannot be read */
static int list_parquet(const char *dir, char ***names, int *count) {
    *names = NULL;
    *count = 0;
    DIR *dp = opendir(dir);
    if (!dp) return mapo_error("%s: cannot list: %s", dir, strerror(errno));
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".parquet")) continue;
        char *full = path_join(dir, e->d_name);
        if (!mapo_is_file(full)) {
            free(full);
            continue;
        }
        if (*count == cap) {
            cap = cap ? 2 * cap : 16;
            *names = xrealloc(*names, sizeof(char *) * (size_t)cap);
        }
        (*names)[(*count)++] = full;
    }
    closedir(dp);
    if (*count) qsort(*names, (size_t)*count, sizeof(char *), cmp_str);
    return 0;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* keep the files of one split (see dataset.h); frees the rest */
static int select_split(char **names, int *count, const char *split, int soft,
                        const char *dir) {
    int any = 0;
    char s[256];
    for (int i = 0; i < *count; i++) any |= split_of(base_of(names[i]), s, sizeof s);
    if (!any && (!split || soft)) return 0;
    const char *want = split ? split : "train";
    int k = 0;
    char avail[512] = "";
    for (int i = 0; i < *count; i++) {
        const char *b = base_of(names[i]);
        int has = split_of(b, s, sizeof s);
        if (!has) {
            /* "train.parquet" counts as split "train" */
            size_t l = strlen(b) - strlen(".parquet");
            if (l < sizeof s) {
                memcpy(s, b, l);
                s[l] = 0;
                has = 1;
            }
        }
        if (has && !strcmp(s, want)) {
            names[k++] = names[i];
        } else {
            if (has && !strstr(avail, s) && strlen(avail) + strlen(s) + 3 < sizeof avail) {
                if (avail[0]) strcat(avail, ", ");
                strcat(avail, s);
            }
            free(names[i]);
        }
    }
    *count = k;
    if (k == 0)
        return mapo_error("%s: no parquet files of split '%s' (splits there: %s)%s", dir, want,
                          avail[0] ? avail : "none", split ? "" : "; choose one");
    return 0;
}

static int need_col(pq_src *s, const char *name, int kind, int optional) {
    int c = parquet_column_index(s->pf, name);
    if (c < 0) {
        if (optional) return -1;
        char cols[400] = "";
        const int nc = parquet_num_columns(s->pf);
        for (int i = 0; i < nc; i++) {
            const char *cn = parquet_column_name(s->pf, i);
            if (strlen(cols) + strlen(cn) + 8 >= sizeof cols) {
                strcat(cols, ", ...");
                break;
            }
            if (i) strcat(cols, ", ");
            strcat(cols, cn);
        }
        mapo_error("%s: no column '%s' (columns: %s)", s->path, name, cols);
        return -2;
    }
    if (parquet_column_kind(s->pf, c) != kind) {
        mapo_error("%s: column '%s' is not %s", s->path, name,
                   kind == PQ_BYTES ? "a string / binary column" : "a numeric column");
        return -2;
    }
    return c;
}

static int open_parquet_files(pref_dataset *d, char **names, int count) {
    d->kind = KIND_PARQUET;
    d->files = xcalloc((size_t)count, sizeof(pq_src));
    d->img_file = d->cap_file = -1;
    d->fp = fnv_str(0xcbf29ce484222325ULL, "parquet");
    int64_t cap = 0;
    for (int f = 0; f < count; f++) {
        pq_src *s = &d->files[f];
        s->path = xstrdup(names[f]);
        d->nfiles = f + 1;
        if (parquet_open(&s->pf, s->path)) return -1;
        if ((s->c_caption = need_col(s, "caption", PQ_BYTES, 0)) < 0) return -1;
        if ((s->c_jpg0 = need_col(s, "jpg_0", PQ_BYTES, 0)) < 0) return -1;
        if ((s->c_jpg1 = need_col(s, "jpg_1", PQ_BYTES, 0)) < 0) return -1;
        if ((s->c_label0 = need_col(s, "label_0", PQ_DOUBLE, 0)) < 0) return -1;
        s->c_label1 = need_col(s, "label_1", PQ_DOUBLE, 1);
        if (s->c_label1 == -2) return -1;
        s->nrg = parquet_num_row_groups(s->pf);
        s->rg_first_row = xcalloc((size_t)s->nrg + 1, sizeof(int64_t));
        struct stat st;
        d->fp = fnv_str(d->fp, base_of(s->path));
        d->fp = fnv_i64(d->fp, stat(s->path, &st) == 0 ? (int64_t)st.st_size : -1);
        int64_t row0 = 0;
        for (int rg = 0; rg < s->nrg; rg++) {
            s->rg_first_row[rg] = row0;
            const int64_t nr = parquet_row_group_num_rows(s->pf, rg);
            if (nr < 0 || nr > PARQUET_MAX_ROWS_PER_GROUP)
                return mapo_error("%s: row group %d has %lld rows", s->path, rg, (long long)nr);
            parquet_column l0 = {0}, l1 = {0};
            if (parquet_read_column(s->pf, rg, s->c_label0, &l0)) return -1;
            if (s->c_label1 >= 0 && parquet_read_column(s->pf, rg, s->c_label1, &l1)) {
                parquet_column_free(&l0);
                return -1;
            }
            int rc = 0;
            if (l0.n != nr || (s->c_label1 >= 0 && l1.n != nr))
                rc = mapo_error("%s: row group %d: label columns have %lld rows, expected %lld",
                                s->path, rg, (long long)l0.n, (long long)nr);
            for (int64_t r = 0; r < nr && !rc; r++) {
                const double a = l0.num[r];
                const double b = s->c_label1 >= 0 ? l1.num[r] : NAN;
                if (!l0.valid[r] || isnan(a))
                    rc = mapo_error("%s row %lld: label_0 is null or NaN", s->path,
                                    (long long)(row0 + r));
                else if (s->c_label1 >= 0 && (!l1.valid[r] || isnan(b)))
                    rc = mapo_error("%s row %lld: label_1 is null or NaN", s->path,
                                    (long long)(row0 + r));
                if (rc) break;
                const int tie = s->c_label1 >= 0 ? a == b : a == 0.5;
                if (tie && !d->keep_ties) {
                    d->n_ties++;
                    continue;
                }
                if (d->n == cap) {
                    cap = cap ? 2 * cap : 1024;
                    d->pairs = xrealloc(d->pairs, sizeof(pq_pair) * (size_t)cap);
                }
                pq_pair *p = &d->pairs[d->n++];
                p->file = f;
                p->rg = rg;
                p->row = (int32_t)r;
                p->swap = a == 0.0;
                d->fp = fnv_i64(d->fp, ((int64_t)f << 40) ^ ((int64_t)rg << 26) ^ r);
                d->fp = fnv(d->fp, &p->swap, 1);
            }
            parquet_column_free(&l0);
            parquet_column_free(&l1);
            if (rc) return -1;
            row0 += nr;
        }
        s->rg_first_row[s->nrg] = row0;
    }
    if (d->n == 0)
        return mapo_error("%s%s: no pairs (%lld rows, all ties)", d->files[0].path,
                          count > 1 ? " and the other files" : "", (long long)d->n_ties);
    return 0;
}

/* ------------------------------------------------------------------ open / close */

int pref_dataset_open(pref_dataset **out, const char *path, const pref_dataset_opts *opts) {
    *out = NULL;
    if (!path || !*path) return mapo_error("dataset: no path given");
    pref_dataset_opts o = {0};
    if (opts) o = *opts;
    if (o.on_bad_image != ON_BAD_IMAGE_FAIL && o.on_bad_image != ON_BAD_IMAGE_SKIP)
        return mapo_error("dataset: unknown on_bad_image policy %d", o.on_bad_image);
    struct stat st;
    if (stat(path, &st) != 0) return mapo_error("dataset %s: %s", path, strerror(errno));
    pref_dataset *d = xcalloc(1, sizeof *d);
    d->policy = o.on_bad_image;
    d->keep_ties = o.keep_ties;
    d->img_file = d->cap_file = -1;
    int rc = 0;
    if (S_ISREG(st.st_mode)) {
        if (ends_with(path, ".jsonl")) {
            rc = open_manifest(d, path, o.allow_outside_paths);
        } else {
            char *names[1] = {(char *)path};
            rc = open_parquet_files(d, names, 1);
        }
    } else if (S_ISDIR(st.st_mode)) {
        char *m = path_join(path, "manifest.jsonl");
        if (mapo_is_file(m)) {
            rc = open_manifest(d, m, o.allow_outside_paths);
        } else {
            char **names = NULL;
            int count = 0;
            char *where = xstrdup(path);
            rc = list_parquet(path, &names, &count);
            if (!rc && count == 0) {
                char *data = path_join(path, "data");
                if (mapo_is_dir(data)) {
                    free(where);
                    where = data;
                    rc = list_parquet(data, &names, &count);
                } else {
                    free(data);
                }
            }
            if (!rc && count == 0)
                rc = mapo_error("dataset %s: no manifest.jsonl and no *.parquet files (looked in "
                                "%s and %s/data)", path, path, path);
            if (!rc) rc = select_split(names, &count, o.split, o.split_soft, where);
            if (!rc) rc = open_parquet_files(d, names, count);
            free_names(names, count);
            free(where);
        }
        free(m);
    } else {
        rc = mapo_error("dataset %s: not a file or folder", path);
    }
    if (rc) {
        pref_dataset_close(d);
        return -1;
    }
    d->bad = xcalloc((size_t)d->n, 1);
    *out = d;
    return 0;
}

static void bad_summary(pref_dataset *d);

void pref_dataset_close(pref_dataset *d) {
    if (!d) return;
    bad_summary(d);
    for (int f = 0; f < d->nfiles; f++) {
        if (d->files[f].pf) parquet_close(d->files[f].pf);
        free(d->files[f].path);
        free(d->files[f].rg_first_row);
    }
    free(d->files);
    free(d->pairs);
    parquet_column_free(&d->col_jpg0);
    parquet_column_free(&d->col_jpg1);
    parquet_column_free(&d->col_cap);
    if (d->kind == KIND_MANIFEST)
        for (int64_t i = 0; i < d->n; i++) {
            free(d->mf[i].caption);
            free(d->mf[i].chosen);
            free(d->mf[i].rejected);
            free(d->mf[i].chosen_rel);
            free(d->mf[i].rejected_rel);
        }
    free(d->mf);
    free(d->manifest);
    free(d->bad);
    free(d);
}

int64_t pref_dataset_size(const pref_dataset *d) { return d ? d->n : 0; }
int pref_dataset_images_only(const pref_dataset *d) { return d && d->images_only; }

int pref_dataset_label(const pref_dataset *d, int64_t i) {
    if (!d || d->kind != KIND_MANIFEST || !d->images_only || i < 0 || i >= d->n) return -1;
    return d->mf[i].label;
}
int64_t pref_dataset_num_ties(const pref_dataset *d) { return d ? d->n_ties : 0; }
int64_t pref_dataset_num_bad(const pref_dataset *d) { return d ? d->n_bad : 0; }
int pref_dataset_is_bad(const pref_dataset *d, int64_t i) {
    return d && i >= 0 && i < d->n && d->bad[i];
}
const char *pref_dataset_kind(const pref_dataset *d) {
    return d && d->kind == KIND_MANIFEST ? "manifest" : "parquet";
}
uint64_t pref_dataset_fingerprint(const pref_dataset *d) { return d ? d->fp : 0; }

static int64_t pq_file_row(const pref_dataset *d, const pq_pair *p) {
    return d->files[p->file].rg_first_row[p->rg] + p->row;
}

void pref_dataset_describe(const pref_dataset *d, int64_t i, char *buf, size_t n) {
    if (!n) return;
    if (!d || i < 0 || i >= d->n) {
        snprintf(buf, n, "pair %lld (out of range)", (long long)i);
    } else if (d->kind == KIND_MANIFEST) {
        snprintf(buf, n, "%s line %lld", d->manifest, (long long)d->mf[i].line);
    } else {
        const pq_pair *p = &d->pairs[i];
        snprintf(buf, n, "%s row %lld", d->files[p->file].path, (long long)pq_file_row(d, p));
    }
}

/* ------------------------------------------------------------------ reading pairs */

static int check_index(const pref_dataset *d, int64_t i) {
    if (!d) return mapo_error("dataset: not open");
    if (i < 0 || i >= d->n)
        return mapo_error("dataset: pair %lld out of range (%lld pairs)", (long long)i,
                          (long long)d->n);
    return 0;
}

static int pq_load_images(pref_dataset *d, int f, int rg) {
    if (d->img_file == f && d->img_rg == rg) return 0;
    parquet_column_free(&d->col_jpg0);
    parquet_column_free(&d->col_jpg1);
    d->img_file = -1;
    pq_src *s = &d->files[f];
    if (parquet_read_column(s->pf, rg, s->c_jpg0, &d->col_jpg0)) return -1;
    if (parquet_read_column(s->pf, rg, s->c_jpg1, &d->col_jpg1)) {
        parquet_column_free(&d->col_jpg0);
        return -1;
    }
    const int64_t nr = parquet_row_group_num_rows(s->pf, rg);
    if (d->col_jpg0.n != nr || d->col_jpg1.n != nr) {
        parquet_column_free(&d->col_jpg0);
        parquet_column_free(&d->col_jpg1);
        return mapo_error("%s: row group %d: image columns do not have %lld rows", s->path, rg,
                          (long long)nr);
    }
    d->img_file = f;
    d->img_rg = rg;
    return 0;
}

static int pq_load_captions(pref_dataset *d, int f, int rg) {
    if (d->cap_file == f && d->cap_rg == rg) return 0;
    parquet_column_free(&d->col_cap);
    d->cap_file = -1;
    pq_src *s = &d->files[f];
    if (parquet_read_column(s->pf, rg, s->c_caption, &d->col_cap)) return -1;
    if (d->col_cap.n != parquet_row_group_num_rows(s->pf, rg)) {
        parquet_column_free(&d->col_cap);
        return mapo_error("%s: row group %d: caption column has the wrong row count", s->path, rg);
    }
    d->cap_file = f;
    d->cap_rg = rg;
    return 0;
}

int pref_dataset_caption(pref_dataset *d, int64_t i, char **caption) {
    *caption = NULL;
    if (check_index(d, i)) return -1;
    if (d->kind == KIND_MANIFEST) {
        *caption = xstrdup(d->mf[i].caption);
        return 0;
    }
    const pq_pair *p = &d->pairs[i];
    if (pq_load_captions(d, p->file, p->rg)) return -1;
    const parquet_column *c = &d->col_cap;
    if (!c->valid[p->row] || !c->ptr[p->row] || c->len[p->row] <= 0) {
        *caption = xstrdup(""); /* a null caption is the empty prompt */
        return 0;
    }
    const size_t len = (size_t)c->len[p->row];
    char *s = xmalloc(len + 1);
    memcpy(s, c->ptr[p->row], len);
    s[len] = 0;
    *caption = s;
    return 0;
}

static int decode_cell(mapo_image *im, const parquet_column *c, int64_t r, const char *what) {
    if (!c->valid[r] || !c->ptr[r]) return mapo_error("%s: no image (null)", what);
    if (c->len[r] < 0) return mapo_error("%s: negative length", what);
    return image_decode(im, c->ptr[r], (size_t)c->len[r], what);
}

static int decode_path(mapo_image *im, const char *path, const char *what) {
    uint8_t *buf;
    size_t n;
    memset(im, 0, sizeof *im);
    if (read_file(path, &buf, &n, MAX_IMAGE_FILE_BYTES, what)) return -1;
    int rc = image_decode(im, buf, n, what);
    free(buf);
    return rc;
}

/* 0: both decoded; 1: a bad image (message set); -1: error not about an image */
static int load_pair(pref_dataset *d, int64_t i, mapo_image *a, mapo_image *b, int *swap) {
    char what[4400];
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    if (d->kind == KIND_MANIFEST) {
        const mf_pair *p = &d->mf[i];
        *swap = 0;
        snprintf(what, sizeof what, "%s line %lld %s %s", d->manifest, (long long)p->line,
                 d->images_only ? "image" : "chosen", p->chosen_rel);
        if (decode_path(a, p->chosen, what)) return 1;
        if (d->images_only) return 0; /* b stays empty */
        snprintf(what, sizeof what, "%s line %lld rejected %s", d->manifest, (long long)p->line,
                 p->rejected_rel);
        if (decode_path(b, p->rejected, what)) {
            image_free(a);
            return 1;
        }
        return 0;
    }
    const pq_pair *p = &d->pairs[i];
    *swap = p->swap;
    if (pq_load_images(d, p->file, p->rg)) return -1;
    const char *fpath = d->files[p->file].path;
    const long long row = (long long)pq_file_row(d, p);
    snprintf(what, sizeof what, "%s row %lld jpg_0", fpath, row);
    if (decode_cell(a, &d->col_jpg0, p->row, what)) return 1;
    snprintf(what, sizeof what, "%s row %lld jpg_1", fpath, row);
    if (decode_cell(b, &d->col_jpg1, p->row, what)) {
        image_free(a);
        return 1;
    }
    return 0;
}

/* the pair's image is bad: refuse (-1) or mark, warn once and skip (1) */
static int bad_pair(pref_dataset *d, int64_t i) {
    if (d->policy != ON_BAD_IMAGE_SKIP) return -1;
    if (!d->bad[i]) {
        d->bad[i] = 1;
        d->n_bad++;
        /* a dataset of 10^5 broken rows must not flood the terminal: the first few, then one
           summary line (bad_summary) */
        if (d->n_bad <= PREF_MAX_WARNINGS)
            mapo_log(1, "mapo: warning: skipping %s %lld: %s\n",
                     d->images_only ? "image" : "pair", (long long)i, mapo_last_error());
    }
    return 1;
}

/* one line for the bad pairs not shown one by one (and not yet summed up) */
static void bad_summary(pref_dataset *d) {
    int64_t hidden = d->n_bad - PREF_MAX_WARNINGS;
    if (hidden <= d->n_summed) return;
    mapo_log(1, "mapo: warning: %lld more %s skipped for unreadable images (only the first %d "
             "are shown; --on_bad_image fail stops at the first)\n",
             (long long)(hidden - d->n_summed), d->images_only ? "images" : "pairs",
             PREF_MAX_WARNINGS);
    d->n_summed = hidden;
}

/* a random crop of image a resized to res (prep_pair's draw: y, then x) */
static int draw_crop(const mapo_image *a, int res, philox *r, int *y1, int *x1) {
    int oh = 0, ow = 0;
    if (prep_resize_size(a->h, a->w, res, &oh, &ow)) return -1;
    if (oh < res || ow < res)
        return mapo_error("preprocess: resized %dx%d image is smaller than the %d crop", ow, oh,
                          res);
    *y1 = (int)philox_below(r, (uint32_t)(oh - res + 1));
    *x1 = (int)philox_below(r, (uint32_t)(ow - res + 1));
    return 0;
}

/* Pair i decoded and preprocessed: out[0..1] chosen / rejected with the flip and crop drawn
   from PREF_STREAM_AUG(epoch) as prep_pair does; with both, also out[2..3] flipped, the two
   orientations sharing one crop (centre, or one random crop). An images-only dataset fills
   out[0] (and out[2]) only: the image goes through prep_image with the draws prep_pair makes
   for jpg_0 (flip, then crop), so it is preprocessed as the chosen image of a pair. */
static int get_impl(pref_dataset *d, int64_t i, const prep_cfg *cfg, uint64_t seed,
                    uint64_t epoch, int both, char **caption, float *const out[4],
                    int orig_hw[2], int crop_yx[2]) {
    if (caption) *caption = NULL;
    if (check_index(d, i)) return -1;
    if (!cfg || cfg->resolution < 1 || cfg->resolution > IMAGE_MAX_SIDE)
        return mapo_error("dataset: resolution %d out of range", cfg ? cfg->resolution : 0);
    for (int k = 0; k < (both ? 4 : 2); k++)
        if (!out[k] && !(k % 2 && d->images_only)) return mapo_error("dataset: no output buffers");
    if (d->bad[i]) return 1;
    mapo_image a, b;
    int swap = 0;
    int rc = load_pair(d, i, &a, &b, &swap);
    if (rc < 0) return -1;
    if (rc > 0) return bad_pair(d, i);
    philox r;
    philox_init(&r, seed, PREF_STREAM_AUG(epoch), (uint64_t)i);
    int ohw[2], cyx[2], cyx_f[2];
    const int res = cfg->resolution;
    if (d->images_only) {
        int flip = 0, y1 = -1, x1 = -1;
        if (!both && !cfg->no_hflip) flip = philox_uniform(&r) < 0.5;
        if (cfg->random_crop) rc = draw_crop(&a, res, &r, &y1, &x1);
        if (!rc) rc = prep_image(out[0], &a, res, flip, y1, x1, cyx);
        if (!rc && both) rc = prep_image(out[2], &a, res, 1, y1, x1, cyx_f);
        ohw[0] = a.h;
        ohw[1] = a.w;
    } else if (!both) {
        rc = prep_pair(out[0], out[1], ohw, cyx, &a, &b, swap, cfg, &r);
    } else {
        int y1 = -1, x1 = -1;
        if (cfg->random_crop) rc = draw_crop(&a, res, &r, &y1, &x1);
        if (!rc) rc = prep_pair_fixed(out[0], out[1], ohw, cyx, &a, &b, swap, res, 0, y1, x1);
        if (!rc)
            rc = prep_pair_fixed(out[2], out[3], ohw, cyx_f, &a, &b, swap, res, 1, y1, x1);
    }
    if (!rc && both && (cyx[0] != cyx_f[0] || cyx[1] != cyx_f[1]))
        rc = mapo_error("crop offsets differ between the two orientations");
    image_free(&a);
    image_free(&b);
    if (rc) {
        char src[4400];
        pref_dataset_describe(d, i, src, sizeof src);
        mapo_error_prefix("%s", src);
        return bad_pair(d, i);
    }
    if (caption && pref_dataset_caption(d, i, caption)) return -1;
    if (orig_hw) orig_hw[0] = ohw[0], orig_hw[1] = ohw[1];
    if (crop_yx) crop_yx[0] = cyx[0], crop_yx[1] = cyx[1];
    return 0;
}

int pref_dataset_get(pref_dataset *d, int64_t i, const prep_cfg *cfg, uint64_t seed,
                     uint64_t epoch, char **caption, float *chosen, float *rejected,
                     int orig_hw[2], int crop_yx[2]) {
    float *const out[4] = {chosen, rejected, NULL, NULL};
    return get_impl(d, i, cfg, seed, epoch, 0, caption, out, orig_hw, crop_yx);
}

int pref_dataset_get_flips(pref_dataset *d, int64_t i, const prep_cfg *cfg, uint64_t seed,
                           char **caption, float *chosen, float *rejected, float *chosen_f,
                           float *rejected_f, int orig_hw[2], int crop_yx[2]) {
    float *const out[4] = {chosen, rejected, chosen_f, rejected_f};
    return get_impl(d, i, cfg, seed, 0, 1, caption, out, orig_hw, crop_yx);
}

int pref_dataset_check(pref_dataset *d, int64_t *n_bad) {
    if (n_bad) *n_bad = 0;
    if (!d) return mapo_error("dataset: not open");
    for (int64_t i = 0; i < d->n; i++) {
        if (d->bad[i]) continue;
        mapo_image a, b;
        int swap;
        int rc = load_pair(d, i, &a, &b, &swap);
        image_free(&a);
        image_free(&b);
        if (rc < 0) return -1;
        if (rc > 0 && bad_pair(d, i) < 0) return -1;
    }
    bad_summary(d);
    if (n_bad) *n_bad = d->n_bad;
    return 0;
}
