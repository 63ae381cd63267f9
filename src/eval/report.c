/* report.c -- `mapo report`: study folder -> index.html, PNGs, summary.json, summary.md
 * (see report.h for the inputs, what is required and how numbers are aggregated). */
#include "mapo/report.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/metrics.h"
#include "mapo/safetensors.h"

#define MAX_PNG_BYTES (256LL << 20)
#define MAX_LOG_BYTES (1LL << 30)
#define CURVE_MAX_POINTS 400
#define PATH_MAX_REPORT 4200

/* ------------------------------------------------------------------------------------------ */
/* data                                                                                        */

enum { M_WIN, M_TASK, M_CLASS, M_FD, M_PREF, M_SPS, M_RSS, M_COUNT };
/* key in summary.json, where it sits in result.json */
static const char *const METRIC_KEY[M_COUNT] = {"win_rate",  "task_rate",    "class_acc",
                                                "fd",        "pref_acc",     "sec_per_step",
                                                "peak_rss_mb"};
static const char *const METRIC_PATH[M_COUNT] = {
    "eval.win_rate.rate", "eval.task_rate",    "eval.class_acc",   "eval.fd",
    "eval.pref_acc",      "train.sec_per_step", "train.peak_rss_mb"};
/* +1 higher is better, -1 lower is better, 0 neither (cost columns) */
static const int METRIC_DIR[M_COUNT] = {1, 0 /* per task */, 1, -1, 1, 0, 0};

enum { Q_LOSS, Q_MARGIN, Q_WIN, Q_LOSE, Q_COUNT };
static const char *const Q_TITLE[Q_COUNT] = {"loss", "margin = err_l \xe2\x88\x92 err_w",
                                             "win_score", "lose_score"};

typedef struct {
    char *name; /* folder name under runs/ */
    char *file; /* its result.json */
    int task, method;
    int64_t seed;
    int seed_i;
    int selected, is_test;
    double beta, lr;
    double m[M_COUNT];
    double wr_lo, wr_hi, n_eval, steps;
    char *log;  /* path or NULL */
    char *grid; /* path or NULL */
} run_t;

typedef struct {
    char *name, *kind, *metric, *desc;
    double strength, mismatch;
    int higher_better; /* 1, 0, -1 unknown */
    double base[3];    /* task_rate, class_acc, fd */
    char *base_grid;   /* path or NULL */
    char *base_png;    /* copied file name */
    int base_w;
} task_t;

typedef struct {
    int n;
    double mean, half;
} agg_t;

typedef struct {
    double beta, lr, mean;
    int n, runs, chosen;
} vgroup;

typedef struct {
    int n, bucket;
    double *x, *q[Q_COUNT];
} curve_t;

typedef struct {
    int nruns;        /* selected test runs */
    double *vals;     /* [M_COUNT][ns] per seed, NAN missing */
    agg_t m[M_COUNT];
    int shown;        /* run index of the grid / curves run, or -1 */
    char *png;        /* copied grid name */
    int png_w;
    curve_t curve;
    int has_chosen;
    double chosen_beta, chosen_lr;
    vgroup *vg;
    int nvg, best;    /* best: index into vg or -1 */
} cell_t;

typedef struct {
    const char *dir;
    char *file; /* study.json path */
    char *title;
    char **methods;
    int nm;
    int64_t *seeds;
    int ns;
    task_t *tasks;
    int nt;
    char **notes;
    int nn;
    run_t *runs;
    int nr;
    cell_t *cells; /* [nt][nm] */
    double *gain_vals; /* [nt][ns] */
    agg_t *gain;       /* [nt] */
    int gain_ok;       /* the study has both mapo and dpo */
    char **used_png;
    int nused;
} study_t;

static cell_t *cell(study_t *s, int t, int m) { return &s->cells[t * s->nm + m]; }

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                               */

static char *path_join(const char *a, const char *b) {
    if (b[0] == '/') return xstrdup(b);
    size_t la = strlen(a), lb = strlen(b);
    char *p = xmalloc(la + lb + 2);
    memcpy(p, a, la);
    size_t k = la;
    if (k && p[k - 1] != '/') p[k++] = '/';
    memcpy(p + k, b, lb + 1);
    return p;
}

static int same_num(double a, double b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b));
}

static int mkdir_p(const char *dir) {
    char *p = xstrdup(dir);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(p, 0777) && errno != EEXIST) {
            int e = errno;
            free(p);
            return mapo_error("cannot create folder '%s': %s", dir, strerror(e));
        }
        *q = '/';
    }
    int rc = 0;
    if (mkdir(p, 0777) && errno != EEXIST)
        rc = mapo_error("cannot create folder '%s': %s", dir, strerror(errno));
    else if (!mapo_is_dir(p))
        rc = mapo_error("'%s' exists and is not a folder", dir);
    free(p);
    return rc;
}

static int read_whole(const char *path, char **buf, size_t *n, long long max) {
    *buf = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mapo_error("%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END)) {
        fclose(f);
        return mapo_error("%s: cannot seek", path);
    }
    long len = ftell(f);
    if (len < 0 || len > max) {
        fclose(f);
        return mapo_error("%s: size %ld is out of range (at most %lld bytes)", path, len, max);
    }
    rewind(f);
    char *b = xmalloc((size_t)len + 1);
    size_t got = fread(b, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        free(b);
        return mapo_error("%s: short read", path);
    }
    b[len] = 0;
    *buf = b;
    *n = (size_t)len;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON access with errors naming the file and the key                                         */

static int load_json(const char *path, json_t **out) {
    *out = NULL;
    if (!mapo_is_file(path)) return mapo_error("%s: required file not found", path);
    json_error_t e;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!j)
        return mapo_error("%s: malformed JSON (line %d, column %d): %s", path, e.line, e.column,
                          e.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return mapo_error("%s: expected a JSON object at the top level", path);
    }
    *out = j;
    return 0;
}

/* Where a value comes from: the file, and a prefix of the key ("tasks[1].") for messages. */
typedef struct {
    const char *file, *kp;
} jctx;

/* Value at a dotted path ("eval.win_rate.rate"); *out NULL when absent or null. */
static int jpath(json_t *root, const char *path, const jctx *c, json_t **out) {
    *out = NULL;
    json_t *cur = root;
    const char *p = path;
    char key[128];
    while (1) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len >= sizeof key) len = sizeof key - 1;
        memcpy(key, p, len);
        key[len] = 0;
        if (!json_is_object(cur))
            return mapo_error("%s: key '%s%.*s' must be an object", c->file, c->kp,
                              (int)(p - path - 1), path);
        cur = json_object_get(cur, key);
        if (!cur || json_is_null(cur)) return 0;
        if (!dot) break;
        p = dot + 1;
    }
    *out = cur;
    return 0;
}

static int get_num(json_t *root, const char *path, const jctx *c, int required, double *out) {
    *out = NAN;
    json_t *v;
    if (jpath(root, path, c, &v)) return -1;
    if (!v) return required ? mapo_error("%s: missing key '%s%s'", c->file, c->kp, path) : 0;
    if (!json_is_number(v))
        return mapo_error("%s: key '%s%s' must be a number", c->file, c->kp, path);
    *out = json_number_value(v);
    return 0;
}

static int get_str(json_t *root, const char *path, const jctx *c, int required, char **out) {
    *out = NULL;
    json_t *v;
    if (jpath(root, path, c, &v)) return -1;
    if (!v) return required ? mapo_error("%s: missing key '%s%s'", c->file, c->kp, path) : 0;
    if (!json_is_string(v))
        return mapo_error("%s: key '%s%s' must be a string", c->file, c->kp, path);
    *out = xstrdup(json_string_value(v));
    return 0;
}

/* -1 when absent (and not required) */
static int get_bool(json_t *root, const char *path, const jctx *c, int required, int *out) {
    *out = -1;
    json_t *v;
    if (jpath(root, path, c, &v)) return -1;
    if (!v) return required ? mapo_error("%s: missing key '%s%s'", c->file, c->kp, path) : 0;
    if (!json_is_boolean(v))
        return mapo_error("%s: key '%s%s' must be true or false", c->file, c->kp, path);
    *out = json_is_true(v);
    return 0;
}

/* A file named by key `path`, relative to base; NULL when absent. Must exist. */
static int get_file(json_t *root, const char *path, const jctx *c, const char *base,
                    char **out) {
    char *rel;
    *out = NULL;
    if (get_str(root, path, c, 0, &rel)) return -1;
    if (!rel) return 0;
    if (!rel[0]) {
        free(rel);
        return mapo_error("%s: key '%s%s' is an empty path", c->file, c->kp, path);
    }
    char *p = path_join(base, rel);
    free(rel);
    if (!mapo_is_file(p)) {
        mapo_error("%s: file not found (named by key '%s%s' of %s)", p, c->kp, path, c->file);
        free(p);
        return -1;
    }
    *out = p;
    return 0;
}

/* Checks the PNG signature and reads the width from IHDR. */
static int png_check(const char *path, const char *key, const char *file, int *width) {
    unsigned char h[24];
    FILE *f = fopen(path, "rb");
    if (!f) return mapo_error("%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(h, 1, sizeof h, f);
    fclose(f);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (got < sizeof h || memcmp(h, sig, 8) || memcmp(h + 12, "IHDR", 4))
        return mapo_error("%s: not a PNG file (named by key '%s' of %s)", path, key, file);
    *width = (int)((uint32_t)h[16] << 24 | (uint32_t)h[17] << 16 | (uint32_t)h[18] << 8 | h[19]);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* loading                                                                                     */

static int index_of(char **names, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], s)) return i;
    return -1;
}

static int load_study(study_t *s) {
    json_t *j;
    s->file = path_join(s->dir, "study.json");
    if (load_json(s->file, &j)) return -1;
    const char *F = s->file;
    const jctx top = {F, ""};
    int rc = -1;
    if (get_str(j, "title", &top, 0, &s->title)) goto done;
    if (!s->title) s->title = xstrdup("mapo study");

    json_t *a = json_object_get(j, "methods");
    if (!a) {
        mapo_error("%s: missing key 'methods'", F);
        goto done;
    }
    if (!json_is_array(a) || json_array_size(a) == 0) {
        mapo_error("%s: key 'methods' must be a non-empty array of strings", F);
        goto done;
    }
    s->nm = (int)json_array_size(a);
    s->methods = xcalloc((size_t)s->nm, sizeof(char *));
    for (int i = 0; i < s->nm; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_string(v) || !json_string_value(v)[0]) {
            mapo_error("%s: key 'methods[%d]' must be a non-empty string", F, i);
            goto done;
        }
        if (index_of(s->methods, i, json_string_value(v)) >= 0) {
            mapo_error("%s: key 'methods' lists '%s' twice", F, json_string_value(v));
            goto done;
        }
        s->methods[i] = xstrdup(json_string_value(v));
    }

    a = json_object_get(j, "seeds");
    if (!a) {
        mapo_error("%s: missing key 'seeds'", F);
        goto done;
    }
    if (!json_is_array(a) || json_array_size(a) == 0) {
        mapo_error("%s: key 'seeds' must be a non-empty array of integers", F);
        goto done;
    }
    s->ns = (int)json_array_size(a);
    s->seeds = xcalloc((size_t)s->ns, sizeof(int64_t));
    for (int i = 0; i < s->ns; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_integer(v)) {
            mapo_error("%s: key 'seeds[%d]' must be an integer", F, i);
            goto done;
        }
        s->seeds[i] = json_integer_value(v);
        for (int k = 0; k < i; k++)
            if (s->seeds[k] == s->seeds[i]) {
                mapo_error("%s: key 'seeds' lists %lld twice", F, (long long)s->seeds[i]);
                goto done;
            }
    }

    a = json_object_get(j, "tasks");
    if (!a) {
        mapo_error("%s: missing key 'tasks'", F);
        goto done;
    }
    if (!json_is_array(a) || json_array_size(a) == 0) {
        mapo_error("%s: key 'tasks' must be a non-empty array of objects", F);
        goto done;
    }
    s->nt = (int)json_array_size(a);
    s->tasks = xcalloc((size_t)s->nt, sizeof(task_t));
    for (int i = 0; i < s->nt; i++) {
        json_t *t = json_array_get(a, (size_t)i);
        task_t *T = &s->tasks[i];
        T->higher_better = -1;
        for (int k = 0; k < 3; k++) T->base[k] = NAN;
        if (!json_is_object(t)) {
            mapo_error("%s: key 'tasks[%d]' must be an object", F, i);
            goto done;
        }
        char kp[48];
        snprintf(kp, sizeof kp, "tasks[%d].", i);
        const jctx c = {F, kp};
        if (get_str(t, "name", &c, 1, &T->name)) goto done;
        if (!T->name[0]) {
            mapo_error("%s: key '%sname' must be a non-empty string", F, kp);
            goto done;
        }
        for (int k = 0; k < i; k++)
            if (!strcmp(s->tasks[k].name, T->name)) {
                mapo_error("%s: task name '%s' appears twice in 'tasks'", F, T->name);
                goto done;
            }
        if (get_str(t, "kind", &c, 0, &T->kind) || get_str(t, "task_metric", &c, 0, &T->metric) ||
            get_str(t, "description", &c, 0, &T->desc) ||
            get_num(t, "strength", &c, 0, &T->strength) ||
            get_num(t, "mismatch", &c, 0, &T->mismatch) ||
            get_num(t, "base.task_rate", &c, 0, &T->base[0]) ||
            get_num(t, "base.class_acc", &c, 0, &T->base[1]) ||
            get_num(t, "base.fd", &c, 0, &T->base[2]) ||
            get_bool(t, "task_higher_better", &c, 0, &T->higher_better) ||
            get_file(t, "base.grid", &c, s->dir, &T->base_grid))
            goto done;
        if (T->base_grid) {
            char key[64];
            snprintf(key, sizeof key, "%sbase.grid", kp);
            if (png_check(T->base_grid, key, F, &T->base_w)) goto done;
        }
    }

    a = json_object_get(j, "notes");
    if (a && !json_is_null(a)) {
        if (!json_is_array(a)) {
            mapo_error("%s: key 'notes' must be an array of strings", F);
            goto done;
        }
        s->nn = (int)json_array_size(a);
        s->notes = xcalloc((size_t)s->nn + 1, sizeof(char *));
        for (int i = 0; i < s->nn; i++) {
            json_t *v = json_array_get(a, (size_t)i);
            if (!json_is_string(v)) {
                mapo_error("%s: key 'notes[%d]' must be a string", F, i);
                goto done;
            }
            s->notes[i] = xstrdup(json_string_value(v));
        }
    }
    rc = 0;
done:
    json_decref(j);
    return rc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_run(study_t *s, run_t *r, const char *rundir) {
    json_t *j;
    if (load_json(r->file, &j)) return -1;
    const char *F = r->file;
    const jctx c = {F, ""};
    int rc = -1;
    char *task = NULL, *method = NULL, *split = NULL;
    if (get_str(j, "task", &c, 1, &task) || get_str(j, "method", &c, 1, &method) ||
        get_str(j, "split", &c, 1, &split))
        goto done;
    r->task = -1;
    for (int i = 0; i < s->nt; i++)
        if (!strcmp(s->tasks[i].name, task)) r->task = i;
    if (r->task < 0) {
        mapo_error("%s: key 'task': '%s' is not a task of %s", F, task, s->file);
        goto done;
    }
    r->method = index_of(s->methods, s->nm, method);
    if (r->method < 0) {
        mapo_error("%s: key 'method': '%s' is not a method of %s", F, method, s->file);
        goto done;
    }
    json_t *v = json_object_get(j, "seed");
    if (!v) {
        mapo_error("%s: missing key 'seed'", F);
        goto done;
    }
    if (!json_is_integer(v)) {
        mapo_error("%s: key 'seed' must be an integer", F);
        goto done;
    }
    r->seed = json_integer_value(v);
    r->seed_i = -1;
    for (int i = 0; i < s->ns; i++)
        if (s->seeds[i] == r->seed) r->seed_i = i;
    if (r->seed_i < 0) {
        mapo_error("%s: key 'seed': %lld is not listed in 'seeds' of %s", F,
                   (long long)r->seed, s->file);
        goto done;
    }
    if (!strcmp(split, "test")) r->is_test = 1;
    else if (!strcmp(split, "val")) r->is_test = 0;
    else {
        mapo_error("%s: key 'split' must be \"test\" or \"val\", got \"%s\"", F, split);
        goto done;
    }
    if (get_bool(j, "selected", &c, 1, &r->selected)) goto done;
    json_t *ev = json_object_get(j, "eval");
    if (!ev) {
        mapo_error("%s: missing key 'eval'", F);
        goto done;
    }
    if (!json_is_object(ev)) {
        mapo_error("%s: key 'eval' must be an object", F);
        goto done;
    }
    if (get_num(j, "beta", &c, 0, &r->beta) || get_num(j, "lr", &c, 0, &r->lr)) goto done;
    for (int m = 0; m < M_COUNT; m++)
        if (get_num(j, METRIC_PATH[m], &c, 0, &r->m[m])) goto done;
    if (get_num(j, "eval.win_rate.lo", &c, 0, &r->wr_lo) ||
        get_num(j, "eval.win_rate.hi", &c, 0, &r->wr_hi) ||
        get_num(j, "eval.n", &c, 0, &r->n_eval) || get_num(j, "train.steps", &c, 0, &r->steps))
        goto done;
    if (get_file(j, "train.log", &c, rundir, &r->log) ||
        get_file(j, "grid", &c, rundir, &r->grid))
        goto done;
    rc = 0;
done:
    free(task);
    free(method);
    free(split);
    json_decref(j);
    return rc;
}

static int load_runs(study_t *s) {
    char *runs = path_join(s->dir, "runs");
    DIR *d = opendir(runs);
    if (!d) {
        mapo_error("%s: required folder not found (%s)", runs, strerror(errno));
        free(runs);
        return -1;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = path_join(runs, e->d_name);
        int isdir = mapo_is_dir(p);
        free(p);
        if (!isdir) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            names = xrealloc(names, (size_t)cap * sizeof(char *));
        }
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof(char *), cmp_str);
    s->runs = xcalloc((size_t)n + 1, sizeof(run_t));
    int rc = 0;
    for (int i = 0; i < n; i++) {
        run_t *r = &s->runs[i];
        r->name = names[i];
        names[i] = NULL;
        s->nr = i + 1;
        char *rd = path_join(runs, r->name);
        r->file = path_join(rd, "result.json");
        rc = load_run(s, r, rd);
        free(rd);
        if (rc) break;
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (!rc && n == 0) rc = mapo_error("%s: no run folders", runs);
    free(runs);
    return rc;
}

/* One train_log.jsonl -> curves (bucket means when long). */
static int load_curve(const char *path, curve_t *c) {
    char *buf;
    size_t len;
    if (read_whole(path, &buf, &len, MAX_LOG_BYTES)) return -1;
    int cap = 256, n = 0;
    double *x = xmalloc((size_t)cap * sizeof(double)), *q[Q_COUNT];
    for (int k = 0; k < Q_COUNT; k++) q[k] = xmalloc((size_t)cap * sizeof(double));
    int rc = 0, line = 0;
    char *p = buf;
    while (p < buf + len) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        char *end = nl ? nl : buf + len;
        *end = 0;
        line++;
        char *t = p;
        p = end + 1;
        while (*t == ' ' || *t == '\t' || *t == '\r') t++;
        if (!*t) continue;
        json_error_t e;
        json_t *o = json_loads(t, 0, &e);
        if (!o || !json_is_object(o)) {
            rc = mapo_error("%s: line %d: malformed JSON%s%s", path, line, o ? "" : ": ",
                            o ? " (expected an object)" : e.text);
            json_decref(o);
            break;
        }
        char where[PATH_MAX_REPORT];
        snprintf(where, sizeof where, "%s: line %d", path, line);
        const jctx c = {where, ""};
        double step, lw, ll, ws, ls, loss;
        if (get_num(o, "step", &c, 1, &step) || get_num(o, "loss", &c, 0, &loss) ||
            get_num(o, "model_losses_w", &c, 0, &lw) ||
            get_num(o, "model_losses_l", &c, 0, &ll) || get_num(o, "win_score", &c, 0, &ws) ||
            get_num(o, "lose_score", &c, 0, &ls)) {
            rc = -1;
            json_decref(o);
            break;
        }
        json_decref(o);
        if (n == cap) {
            cap *= 2;
            x = xrealloc(x, (size_t)cap * sizeof(double));
            for (int k = 0; k < Q_COUNT; k++) q[k] = xrealloc(q[k], (size_t)cap * sizeof(double));
        }
        x[n] = step;
        q[Q_LOSS][n] = loss;
        q[Q_MARGIN][n] = ll - lw;
        q[Q_WIN][n] = ws;
        q[Q_LOSE][n] = ls;
        n++;
    }
    free(buf);
    if (!rc && n == 0) rc = mapo_error("%s: no log lines", path);
    if (rc) {
        free(x);
        for (int k = 0; k < Q_COUNT; k++) free(q[k]);
        return -1;
    }
    int bucket = n > CURVE_MAX_POINTS ? (n + CURVE_MAX_POINTS - 1) / CURVE_MAX_POINTS : 1;
    if (bucket > 1) {
        int m = 0;
        for (int i0 = 0; i0 < n; i0 += bucket, m++) {
            int i1 = i0 + bucket < n ? i0 + bucket : n;
            double sx = 0;
            for (int i = i0; i < i1; i++) sx += x[i];
            double nx = sx / (i1 - i0);
            for (int k = 0; k < Q_COUNT; k++) {
                double sq = 0;
                int cnt = 0;
                for (int i = i0; i < i1; i++)
                    if (isfinite(q[k][i])) sq += q[k][i], cnt++;
                q[k][m] = cnt ? sq / cnt : NAN;
            }
            x[m] = nx;
        }
        n = m;
    }
    c->n = n;
    c->bucket = bucket;
    c->x = x;
    for (int k = 0; k < Q_COUNT; k++) c->q[k] = q[k];
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* aggregation                                                                                 */

static int agg_compute(agg_t *a, const double *vals, int n) {
    double *x = xmalloc((size_t)(n + 1) * sizeof(double));
    int k = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(vals[i])) x[k++] = vals[i];
    a->n = k;
    a->mean = a->half = NAN;
    int rc = 0;
    if (k) {
        mean_ci c;
        rc = mean_ci95(&c, x, k);
        if (!rc) a->mean = c.mean, a->half = c.half;
    }
    free(x);
    return rc;
}

static int cmp_vgroup(const void *pa, const void *pb) {
    const vgroup *a = pa, *b = pb;
    double x[2] = {a->beta, a->lr}, y[2] = {b->beta, b->lr};
    for (int i = 0; i < 2; i++) {
        if (isnan(x[i]) != isnan(y[i])) return isnan(x[i]) ? -1 : 1;
        if (!isnan(x[i]) && x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

static int aggregate(study_t *s) {
    const int ns = s->ns;
    s->cells = xcalloc((size_t)s->nt * s->nm, sizeof(cell_t));
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            c->vals = xmalloc((size_t)M_COUNT * ns * sizeof(double));
            for (int i = 0; i < M_COUNT * ns; i++) c->vals[i] = NAN;
            c->shown = -1;
            c->best = -1;
        }
    /* selected test runs: one per task x method x seed */
    int *slot = xmalloc((size_t)s->nt * s->nm * ns * sizeof(int));
    for (int i = 0; i < s->nt * s->nm * ns; i++) slot[i] = -1;
    for (int i = 0; i < s->nr; i++) {
        run_t *r = &s->runs[i];
        if (!r->is_test || !r->selected) continue;
        int *sl = &slot[(r->task * s->nm + r->method) * ns + r->seed_i];
        if (*sl >= 0) {
            mapo_error("%s and %s: two selected test runs for task '%s', method '%s', seed %lld",
                       s->runs[*sl].file, r->file, s->tasks[r->task].name,
                       s->methods[r->method], (long long)r->seed);
            free(slot);
            return -1;
        }
        *sl = i;
        cell_t *c = cell(s, r->task, r->method);
        c->nruns++;
        for (int m = 0; m < M_COUNT; m++) c->vals[m * ns + r->seed_i] = r->m[m];
    }
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            for (int k = 0; k < M_COUNT; k++)
                if (agg_compute(&c->m[k], c->vals + k * ns, ns)) {
                    free(slot);
                    return -1;
                }
            for (int si = 0; si < ns && c->shown < 0; si++)
                c->shown = slot[(t * s->nm + m) * ns + si];
            if (c->shown >= 0) {
                c->has_chosen = 1;
                c->chosen_beta = s->runs[c->shown].beta;
                c->chosen_lr = s->runs[c->shown].lr;
            }
        }
    free(slot);

    /* hyper-parameter search: val runs grouped by (beta, lr) */
    for (int i = 0; i < s->nr; i++) {
        run_t *r = &s->runs[i];
        if (r->is_test) continue;
        cell_t *c = cell(s, r->task, r->method);
        int g = -1;
        for (int k = 0; k < c->nvg; k++)
            if (same_num(c->vg[k].beta, r->beta) && same_num(c->vg[k].lr, r->lr)) g = k;
        if (g < 0) {
            c->vg = xrealloc(c->vg, (size_t)(c->nvg + 1) * sizeof(vgroup));
            g = c->nvg++;
            c->vg[g] = (vgroup){r->beta, r->lr, 0, 0, 0, 0};
        }
        vgroup *G = &c->vg[g];
        G->runs++;
        if (isfinite(r->m[M_WIN])) G->mean += r->m[M_WIN], G->n++;
        if (r->selected) G->chosen = 1;
    }
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            if (c->nvg) qsort(c->vg, (size_t)c->nvg, sizeof(vgroup), cmp_vgroup);
            for (int k = 0; k < c->nvg; k++) {
                vgroup *G = &c->vg[k];
                G->mean = G->n ? G->mean / G->n : NAN;
                if (c->has_chosen && same_num(G->beta, c->chosen_beta) &&
                    same_num(G->lr, c->chosen_lr))
                    G->chosen = 1;
                if (G->n && (c->best < 0 || G->mean > c->vg[c->best].mean)) c->best = k;
            }
        }

    /* gain: MaPO - Diffusion-DPO win rate per seed */
    int im = index_of(s->methods, s->nm, "mapo"), id = index_of(s->methods, s->nm, "dpo");
    s->gain_ok = im >= 0 && id >= 0;
    s->gain_vals = xmalloc((size_t)s->nt * ns * sizeof(double));
    s->gain = xcalloc((size_t)s->nt, sizeof(agg_t));
    for (int t = 0; t < s->nt; t++) {
        double *g = s->gain_vals + (size_t)t * ns;
        for (int si = 0; si < ns; si++)
            g[si] = s->gain_ok ? cell(s, t, im)->vals[M_WIN * ns + si] -
                                     cell(s, t, id)->vals[M_WIN * ns + si]
                               : NAN;
        if (agg_compute(&s->gain[t], g, ns)) return -1;
    }

    /* curves of the shown runs */
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            if (c->shown >= 0 && s->runs[c->shown].log &&
                load_curve(s->runs[c->shown].log, &c->curve))
                return -1;
        }
    /* grids of the shown runs must be PNGs */
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            if (c->shown >= 0 && s->runs[c->shown].grid &&
                png_check(s->runs[c->shown].grid, "grid", s->runs[c->shown].file, &c->png_w))
                return -1;
        }
    return 0;
}

static void study_free(study_t *s) {
    free(s->file);
    free(s->title);
    for (int i = 0; i < s->nm; i++) free(s->methods[i]);
    free(s->methods);
    free(s->seeds);
    for (int i = 0; i < s->nt; i++) {
        task_t *T = &s->tasks[i];
        free(T->name);
        free(T->kind);
        free(T->metric);
        free(T->desc);
        free(T->base_grid);
        free(T->base_png);
    }
    free(s->tasks);
    for (int i = 0; i < s->nn; i++) free(s->notes[i]);
    free(s->notes);
    for (int i = 0; i < s->nr; i++) {
        free(s->runs[i].name);
        free(s->runs[i].file);
        free(s->runs[i].log);
        free(s->runs[i].grid);
    }
    free(s->runs);
    if (s->cells)
        for (int i = 0; i < s->nt * s->nm; i++) {
            cell_t *c = &s->cells[i];
            free(c->vals);
            free(c->png);
            free(c->curve.x);
            for (int k = 0; k < Q_COUNT; k++) free(c->curve.q[k]);
            free(c->vg);
        }
    free(s->cells);
    free(s->gain_vals);
    free(s->gain);
    for (int i = 0; i < s->nused; i++) free(s->used_png[i]);
    free(s->used_png);
}

/* ------------------------------------------------------------------------------------------ */
/* copying the grids                                                                           */

static char *png_name(study_t *s, const char *a, const char *b, const char *c) {
    rbuf n = {0};
    rbuf_puts(&n, a);
    rbuf_puts(&n, "_");
    rbuf_puts(&n, b);
    if (c) {
        rbuf_puts(&n, "_");
        rbuf_puts(&n, c);
    }
    for (size_t i = 0; i < n.len; i++) {
        char ch = n.s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_'))
            n.s[i] = '_';
    }
    if (n.s[0] == '.') n.s[0] = '_';
    char *name = xmalloc(n.len + 32);
    for (int k = 1;; k++) {
        if (k == 1) snprintf(name, n.len + 32, "%s.png", n.s);
        else snprintf(name, n.len + 32, "%s-%d.png", n.s, k);
        int clash = !strcmp(name, "index.html");
        for (int i = 0; i < s->nused && !clash; i++) clash = !strcmp(s->used_png[i], name);
        if (!clash) break;
    }
    rbuf_free(&n);
    s->used_png = xrealloc(s->used_png, (size_t)(s->nused + 1) * sizeof(char *));
    s->used_png[s->nused++] = xstrdup(name);
    return name;
}

static int copy_file(const char *src, const char *out_dir, const char *name) {
    char *buf;
    size_t n;
    if (read_whole(src, &buf, &n, MAX_PNG_BYTES)) return -1;
    char *dst = path_join(out_dir, name);
    int rc = mapo_write_file_atomic(dst, buf, n);
    free(dst);
    free(buf);
    return rc;
}

static int copy_grids(study_t *s, const char *out) {
    for (int t = 0; t < s->nt; t++) {
        task_t *T = &s->tasks[t];
        if (T->base_grid) {
            T->base_png = png_name(s, T->name, "base_grid", NULL);
            if (copy_file(T->base_grid, out, T->base_png)) return -1;
        }
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            if (c->shown < 0 || !s->runs[c->shown].grid) continue;
            char sd[48];
            snprintf(sd, sizeof sd, "seed%lld_grid", (long long)s->runs[c->shown].seed);
            c->png = png_name(s, T->name, s->methods[m], sd);
            if (copy_file(s->runs[c->shown].grid, out, c->png)) return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* formatting                                                                                  */

static const char *method_label(const char *m) {
    if (!strcmp(m, "mapo")) return "MaPO";
    if (!strcmp(m, "dpo")) return "Diffusion-DPO";
    if (!strcmp(m, "sft")) return "SFT";
    return m;
}

static const char *const PALETTE[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd",
                                      "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
static const char *method_color(int m) { return PALETTE[m % 8]; }

static int decimals(int metric, double v) {
    if (metric == M_WIN || metric == M_TASK || metric == M_CLASS || metric == M_PREF) return 3;
    if (!isfinite(v) || v == 0) return 2;
    int d = 2 - (int)floor(log10(fabs(v)));
    return d < 0 ? 0 : d > 4 ? 4 : d;
}

static void fmt_value(char *buf, size_t n, int metric, double v) {
    if (!isfinite(v)) snprintf(buf, n, "n/a");
    else snprintf(buf, n, "%.*f", decimals(metric, v), v);
}

/* "mean ± half", "mean" (one value), "n/a"; " (n=k)" when fewer values than runs */
static void fmt_agg(char *buf, size_t n, int metric, const agg_t *a, int nruns) {
    if (!a->n) {
        snprintf(buf, n, "n/a");
        return;
    }
    int d = decimals(metric, a->mean);
    int k = snprintf(buf, n, "%.*f", d, a->mean);
    if (isfinite(a->half) && k < (int)n)
        k += snprintf(buf + k, n - k, " \xc2\xb1 %.*f", d, a->half);
    if (a->n < nruns && k < (int)n) snprintf(buf + k, n - k, " (n=%d)", a->n);
}

static void fmt_num(char *buf, size_t n, double v) {
    if (!isfinite(v)) snprintf(buf, n, "n/a");
    else snprintf(buf, n, "%g", v);
}

static const char *task_metric_label(const task_t *T) {
    return T->metric ? T->metric : "task rate";
}

static int task_metric_dir(const task_t *T) {
    return T->higher_better == 1 ? 1 : T->higher_better == 0 ? -1 : 0;
}

static const char *arrow(int dir) {
    return dir > 0 ? " \xe2\x86\x91" : dir < 0 ? " \xe2\x86\x93" : "";
}

static int metric_dir(const task_t *T, int m) {
    return m == M_TASK ? task_metric_dir(T) : METRIC_DIR[m];
}

/* Column headers of the headline table (plain text; escaped by the writers). */
static void metric_header(char *buf, size_t n, const task_t *T, int m) {
    static const char *const H[M_COUNT] = {"win rate vs base", NULL, "class accuracy",
                                           "Fr\xc3\xa9" "chet distance", "preference accuracy",
                                           "s / step", "peak memory MB"};
    snprintf(buf, n, "%s%s", m == M_TASK ? task_metric_label(T) : H[m], arrow(metric_dir(T, m)));
}

/* the method with the strictly best mean of a metric (-1: none, a tie, or no direction) */
static int best_method(study_t *s, int t, int metric) {
    int dir = metric_dir(&s->tasks[t], metric), best = -1, tie = 0;
    if (!dir || s->nm < 2) return -1;
    for (int m = 0; m < s->nm; m++) {
        const agg_t *a = &cell(s, t, m)->m[metric];
        if (!a->n) continue;
        double bm = best >= 0 ? cell(s, t, best)->m[metric].mean : 0;
        if (best < 0 || dir * a->mean > dir * bm) best = m, tie = 0;
        else if (same_num(a->mean, bm)) tie = 1;
    }
    return tie ? -1 : best;
}

static void task_caption(rbuf *b, const task_t *T, int html) {
    char x[64];
    int first = 1;
    if (T->kind) {
        if (html) rbuf_html(b, T->kind);
        else rbuf_puts(b, T->kind);
        first = 0;
    }
    if (isfinite(T->strength)) {
        fmt_num(x, sizeof x, T->strength);
        rbuf_printf(b, "%sstrength %s", first ? "" : ", ", x);
        first = 0;
    }
    fmt_num(x, sizeof x, T->mismatch);
    rbuf_printf(b, "%smismatch %s", first ? "" : ", ", x);
}

/* ------------------------------------------------------------------------------------------ */
/* HTML                                                                                        */

static const char *CSS =
    "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222;"
    "line-height:1.4}\n"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\n"
    "table{border-collapse:collapse;margin:.6em 0 1.2em}\n"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-size:.92em}\n"
    "th{background:#f2f2f2}td.l,th.l{text-align:left}\n"
    "tr.base td{background:#fafafa;color:#555}tr.chosen td{background:#eaf4ea}\n"
    ".meta,.how{color:#555;font-size:.92em}\n"
    "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top;text-align:center}\n"
    "figure img{image-rendering:pixelated;border:1px solid #ccc}\n"
    "figcaption{font-size:.88em;color:#444}\n"
    "svg.plot{margin:0 .6em .6em 0;border:1px solid #eee}\n"
    ".na{color:#999}\n";

static void html_cell(rbuf *b, const char *text, int bold) {
    rbuf_puts(b, !strcmp(text, "n/a") ? "<td class=\"na\">" : "<td>");
    if (bold) rbuf_puts(b, "<b>");
    rbuf_html(b, text);
    if (bold) rbuf_puts(b, "</b>");
    rbuf_puts(b, "</td>");
}

static void html_img(rbuf *b, const char *name, int w, const char *caption) {
    int scale = w > 0 && w < 256 ? 256 / w : 1;
    if (scale > 8) scale = 8;
    int dw = w > 0 ? w * scale : 256;
    if (dw > 480) dw = 480;
    rbuf_puts(b, "<figure>");
    if (name) {
        rbuf_puts(b, "<img src=\"");
        rbuf_html(b, name);
        rbuf_printf(b, "\" width=\"%d\" alt=\"", dw);
        rbuf_html(b, caption);
        rbuf_puts(b, "\">");
    } else {
        rbuf_puts(b, "<div class=\"na\" style=\"width:160px;padding:3em 0;border:1px dashed "
                     "#ccc\">n/a</div>");
    }
    rbuf_puts(b, "<figcaption>");
    rbuf_html(b, caption);
    rbuf_puts(b, "</figcaption></figure>\n");
}

static void html_headline(rbuf *b, study_t *s, int t) {
    const task_t *T = &s->tasks[t];
    char h[128], v[128];
    rbuf_puts(b, "<table>\n<tr><th class=\"l\">method</th><th>seeds</th>");
    for (int m = 0; m < M_COUNT; m++) {
        metric_header(h, sizeof h, T, m);
        rbuf_puts(b, "<th>");
        rbuf_html(b, h);
        rbuf_puts(b, "</th>");
    }
    rbuf_puts(b, "</tr>\n<tr class=\"base\"><td class=\"l\">base</td><td></td>"
                 "<td>(reference)</td>");
    for (int k = 0; k < 3; k++) {
        fmt_value(v, sizeof v, M_TASK + k, T->base[k]);
        html_cell(b, v, 0);
    }
    rbuf_puts(b, "<td></td><td></td><td></td></tr>\n");
    int best[M_COUNT];
    for (int k = 0; k < M_COUNT; k++) best[k] = best_method(s, t, k);
    for (int m = 0; m < s->nm; m++) {
        cell_t *c = cell(s, t, m);
        rbuf_puts(b, "<tr><td class=\"l\">");
        rbuf_html(b, method_label(s->methods[m]));
        rbuf_printf(b, "</td><td>%d</td>", c->nruns);
        for (int k = 0; k < M_COUNT; k++) {
            fmt_agg(v, sizeof v, k, &c->m[k], c->nruns);
            html_cell(b, v, best[k] == m);
        }
        rbuf_puts(b, "</tr>\n");
    }
    rbuf_puts(b, "</table>\n");
}

static void html_curves(rbuf *b, study_t *s, int t) {
    svg_series *ser = xcalloc((size_t)s->nm, sizeof(svg_series));
    char **labels = xcalloc((size_t)s->nm, sizeof(char *));
    int any = 0, bucket = 1;
    for (int m = 0; m < s->nm; m++) {
        cell_t *c = cell(s, t, m);
        if (c->curve.n) any = 1;
        if (c->curve.bucket > bucket) bucket = c->curve.bucket;
    }
    if (!any) {
        rbuf_puts(b, "<p class=\"na\">n/a (no training log among the shown runs)</p>\n");
        free(ser);
        free(labels);
        return;
    }
    for (int m = 0; m < s->nm; m++) {
        cell_t *c = cell(s, t, m);
        rbuf lab = {0};
        rbuf_puts(&lab, method_label(s->methods[m]));
        if (!c->curve.n) rbuf_puts(&lab, " (n/a)");
        labels[m] = lab.s;
    }
    for (int q = 0; q < Q_COUNT; q++) {
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            ser[m] = (svg_series){labels[m], method_color(m), c->curve.x, c->curve.q[q],
                                  c->curve.n};
        }
        svg_line_plot(b, Q_TITLE[q], "step", ser, s->nm, 300, 230);
    }
    if (bucket > 1)
        rbuf_printf(b, "<p class=\"how\">Long logs are shown as means of up to %d consecutive "
                       "steps.</p>\n", bucket);
    for (int m = 0; m < s->nm; m++) free(labels[m]);
    free(labels);
    free(ser);
}

static void html_hparams(rbuf *b, study_t *s, int t) {
    char v[64];
    int any = 0;
    for (int m = 0; m < s->nm; m++) any |= cell(s, t, m)->nvg > 0;
    rbuf_puts(b, "<table>\n<tr><th class=\"l\">method</th><th>beta</th><th>lr</th>"
                 "<th>val runs</th><th>val win rate (mean)</th><th class=\"l\"></th></tr>\n");
    for (int m = 0; m < s->nm; m++) {
        cell_t *c = cell(s, t, m);
        for (int k = 0; k < c->nvg; k++) {
            vgroup *G = &c->vg[k];
            rbuf_puts(b, G->chosen ? "<tr class=\"chosen\">" : "<tr>");
            rbuf_puts(b, "<td class=\"l\">");
            rbuf_html(b, method_label(s->methods[m]));
            rbuf_puts(b, "</td>");
            fmt_num(v, sizeof v, G->beta);
            html_cell(b, v, 0);
            fmt_num(v, sizeof v, G->lr);
            html_cell(b, v, 0);
            rbuf_printf(b, "<td>%d</td>", G->runs);
            fmt_value(v, sizeof v, M_WIN, G->mean);
            html_cell(b, v, k == c->best);
            rbuf_printf(b, "<td class=\"l\">%s%s%s</td></tr>\n", G->chosen ? "chosen" : "",
                        G->chosen && k == c->best ? ", " : "", k == c->best ? "best on val" : "");
        }
        if (!c->nvg) {
            rbuf_puts(b, "<tr><td class=\"l\">");
            rbuf_html(b, method_label(s->methods[m]));
            rbuf_puts(b, "</td><td class=\"na\" colspan=\"5\">n/a (no val runs)</td></tr>\n");
        }
    }
    rbuf_puts(b, "</table>\n");
    if (!any) return;
    rbuf_puts(b, "<p class=\"meta\">Best beta on val: ");
    for (int m = 0; m < s->nm; m++) {
        cell_t *c = cell(s, t, m);
        rbuf_puts(b, m ? ", " : "");
        rbuf_html(b, method_label(s->methods[m]));
        fmt_num(v, sizeof v, c->best >= 0 ? c->vg[c->best].beta : NAN);
        rbuf_printf(b, " %s", v);
    }
    rbuf_puts(b, ".</p>\n");
}

static void html_gain(rbuf *b, study_t *s) {
    if (!s->gain_ok) {
        rbuf_puts(b, "<p class=\"na\">n/a: the study does not list both methods \"mapo\" and "
                     "\"dpo\".</p>\n");
        return;
    }
    svg_point *p = xcalloc((size_t)s->nt, sizeof(svg_point));
    for (int t = 0; t < s->nt; t++)
        p[t] = (svg_point){s->tasks[t].mismatch, s->gain[t].mean, s->gain[t].half,
                           s->tasks[t].name};
    svg_errbar_plot(b, "MaPO \xe2\x88\x92 Diffusion-DPO win rate vs reference mismatch",
                    "reference mismatch", "win-rate gain", p, s->nt, 1, 640, 380);
    free(p);
    rbuf_puts(b, "<table>\n<tr><th class=\"l\">task</th><th>mismatch</th><th>gain "
                 "(MaPO \xe2\x88\x92 Diffusion-DPO win rate)</th><th>seeds</th></tr>\n");
    char v[128];
    for (int t = 0; t < s->nt; t++) {
        rbuf_puts(b, "<tr><td class=\"l\">");
        rbuf_html(b, s->tasks[t].name);
        rbuf_puts(b, "</td>");
        fmt_num(v, sizeof v, s->tasks[t].mismatch);
        html_cell(b, v, 0);
        fmt_agg(v, sizeof v, M_WIN, &s->gain[t], s->gain[t].n);
        html_cell(b, v, 0);
        rbuf_printf(b, "<td>%d</td></tr>\n", s->gain[t].n);
    }
    rbuf_puts(b, "</table>\n");
}

static void build_html(rbuf *b, study_t *s) {
    rbuf_puts(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                 "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                 "<title>");
    rbuf_html(b, s->title);
    rbuf_puts(b, "</title>\n<style>\n");
    rbuf_puts(b, CSS);
    rbuf_puts(b, "</style>\n</head>\n<body>\n<h1>");
    rbuf_html(b, s->title);
    rbuf_puts(b, "</h1>\n<p class=\"meta\">Methods: ");
    for (int m = 0; m < s->nm; m++) {
        if (m) rbuf_puts(b, ", ");
        rbuf_html(b, method_label(s->methods[m]));
    }
    rbuf_puts(b, ". Seeds: ");
    for (int i = 0; i < s->ns; i++) rbuf_printf(b, "%s%lld", i ? ", " : "", (long long)s->seeds[i]);
    rbuf_printf(b, ". %d runs. Also as <a href=\"summary.json\">summary.json</a> and "
                   "<a href=\"summary.md\">summary.md</a>. Written by <code>mapo report</code>."
                   "</p>\n", s->nr);
    rbuf_puts(b, "<nav><ol><li><a href=\"#results\">Results</a></li>"
                 "<li><a href=\"#grids\">Image grids</a></li>"
                 "<li><a href=\"#curves\">Training curves</a></li>"
                 "<li><a href=\"#gain\">Gain vs mismatch</a></li>"
                 "<li><a href=\"#hparams\">Hyper-parameter search</a></li>"
                 "<li><a href=\"#notes\">Notes</a></li></ol></nav>\n");

    rbuf_puts(b, "<h2 id=\"results\">1. Results</h2>\n<p class=\"how\">Selected runs on the "
                 "test prompts. Each value is the mean over seeds \xc2\xb1 the half-width of "
                 "its 95% confidence interval (Student t across seeds); (n=k) when fewer seeds "
                 "report it. Win rate: share of prompts where the aligned model beats the base "
                 "model (ties count half). \xe2\x86\x91 / \xe2\x86\x93: higher / lower is "
                 "better; the best method per column is in bold.</p>\n");
    for (int t = 0; t < s->nt; t++) {
        const task_t *T = &s->tasks[t];
        rbuf_printf(b, "<h3 id=\"task-%d\">", t);
        rbuf_html(b, T->name);
        rbuf_puts(b, "</h3>\n<p class=\"meta\">");
        task_caption(b, T, 1);
        if (T->desc) {
            rbuf_puts(b, ". ");
            rbuf_html(b, T->desc);
        }
        rbuf_puts(b, "</p>\n");
        html_headline(b, s, t);
    }

    rbuf_puts(b, "<h2 id=\"grids\">2. Image grids</h2>\n<p class=\"how\">The base model beside "
                 "each method's selected run (first seed), same prompts and noise.</p>\n");
    for (int t = 0; t < s->nt; t++) {
        const task_t *T = &s->tasks[t];
        rbuf_puts(b, "<h3>");
        rbuf_html(b, T->name);
        rbuf_puts(b, "</h3>\n<div>\n");
        html_img(b, T->base_png, T->base_w, "base");
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            rbuf cap = {0};
            rbuf_puts(&cap, method_label(s->methods[m]));
            if (c->shown >= 0) rbuf_printf(&cap, ", seed %lld", (long long)s->runs[c->shown].seed);
            html_img(b, c->png, c->png_w, cap.s);
            rbuf_free(&cap);
        }
        rbuf_puts(b, "</div>\n");
    }

    rbuf_puts(b, "<h2 id=\"curves\">3. Training curves</h2>\n<p class=\"how\">From each "
                 "method's train_log.jsonl (selected run, first seed). err_w / err_l: the "
                 "model's denoising errors (model_losses_w / _l) on the chosen / rejected "
                 "image.</p>\n");
    for (int t = 0; t < s->nt; t++) {
        rbuf_puts(b, "<h3>");
        rbuf_html(b, s->tasks[t].name);
        rbuf_puts(b, "</h3>\n<div>\n");
        html_curves(b, s, t);
        rbuf_puts(b, "</div>\n");
    }

    rbuf_puts(b, "<h2 id=\"gain\">4. Gain vs mismatch</h2>\n<p class=\"how\">Per seed, MaPO's "
                 "win rate minus Diffusion-DPO's; points are the mean over seeds, bars the 95% "
                 "t confidence interval. Mismatch: how far the preferred data lie from the "
                 "reference model.</p>\n");
    html_gain(b, s);

    rbuf_puts(b, "<h2 id=\"hparams\">5. Hyper-parameter search</h2>\n<p class=\"how\">Runs on "
                 "the validation prompts, grouped by (beta, lr); chosen: the setting of the "
                 "final runs; bold: the best mean val win rate.</p>\n");
    for (int t = 0; t < s->nt; t++) {
        rbuf_puts(b, "<h3>");
        rbuf_html(b, s->tasks[t].name);
        rbuf_puts(b, "</h3>\n");
        html_hparams(b, s, t);
    }

    rbuf_puts(b, "<h2 id=\"notes\">6. Notes</h2>\n");
    if (!s->nn) rbuf_puts(b, "<p class=\"na\">n/a</p>\n");
    else {
        rbuf_puts(b, "<ul>\n");
        for (int i = 0; i < s->nn; i++) {
            rbuf_puts(b, "<li>");
            rbuf_html(b, s->notes[i]);
            rbuf_puts(b, "</li>\n");
        }
        rbuf_puts(b, "</ul>\n");
    }
    rbuf_puts(b, "</body>\n</html>\n");
}

/* ------------------------------------------------------------------------------------------ */
/* summary.json                                                                                */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *jstr(const char *v) { return v ? json_string(v) : json_null(); }

static json_t *jagg(const agg_t *a, const double *vals, int ns) {
    json_t *o = json_object();
    json_object_set_new(o, "mean", jnum(a->mean));
    json_object_set_new(o, "half", jnum(a->half));
    json_object_set_new(o, "n", json_integer(a->n));
    json_t *v = json_array();
    for (int i = 0; i < ns; i++) json_array_append_new(v, jnum(vals[i]));
    json_object_set_new(o, "values", v);
    return o;
}

static char *build_json(study_t *s) {
    json_t *root = json_object();
    json_object_set_new(root, "title", json_string(s->title));
    json_t *a = json_array();
    for (int m = 0; m < s->nm; m++) json_array_append_new(a, json_string(s->methods[m]));
    json_object_set_new(root, "methods", a);
    a = json_array();
    for (int i = 0; i < s->ns; i++) json_array_append_new(a, json_integer(s->seeds[i]));
    json_object_set_new(root, "seeds", a);
    json_object_set_new(root, "ci", json_string("95% Student t across seeds: half = "
                                                "t(0.975, n-1) * sd / sqrt(n); values per "
                                                "seed in the order of 'seeds'"));
    json_t *tasks = json_array();
    for (int t = 0; t < s->nt; t++) {
        const task_t *T = &s->tasks[t];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(T->name));
        json_object_set_new(o, "kind", jstr(T->kind));
        json_object_set_new(o, "strength", jnum(T->strength));
        json_object_set_new(o, "mismatch", jnum(T->mismatch));
        json_object_set_new(o, "task_metric", jstr(T->metric));
        json_object_set_new(o, "task_higher_better",
                            T->higher_better < 0 ? json_null() : json_boolean(T->higher_better));
        json_t *base = json_object();
        json_object_set_new(base, "task_rate", jnum(T->base[0]));
        json_object_set_new(base, "class_acc", jnum(T->base[1]));
        json_object_set_new(base, "fd", jnum(T->base[2]));
        json_object_set_new(base, "grid", jstr(T->base_png));
        json_object_set_new(o, "base", base);
        json_t *ms = json_object();
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            json_t *mo = json_object();
            json_object_set_new(mo, "runs", json_integer(c->nruns));
            for (int k = 0; k < M_COUNT; k++)
                json_object_set_new(mo, METRIC_KEY[k], jagg(&c->m[k], c->vals + k * s->ns, s->ns));
            json_t *ch = json_object();
            json_object_set_new(ch, "beta", c->has_chosen ? jnum(c->chosen_beta) : json_null());
            json_object_set_new(ch, "lr", c->has_chosen ? jnum(c->chosen_lr) : json_null());
            json_object_set_new(mo, "chosen", ch);
            json_object_set_new(mo, "best_beta", c->best >= 0 ? jnum(c->vg[c->best].beta)
                                                               : json_null());
            json_object_set_new(mo, "best_lr", c->best >= 0 ? jnum(c->vg[c->best].lr)
                                                             : json_null());
            json_object_set_new(mo, "best_val_win_rate",
                                c->best >= 0 ? jnum(c->vg[c->best].mean) : json_null());
            json_t *vg = json_array();
            for (int k = 0; k < c->nvg; k++) {
                json_t *g = json_object();
                json_object_set_new(g, "beta", jnum(c->vg[k].beta));
                json_object_set_new(g, "lr", jnum(c->vg[k].lr));
                json_object_set_new(g, "runs", json_integer(c->vg[k].runs));
                json_object_set_new(g, "val_win_rate", jnum(c->vg[k].mean));
                json_object_set_new(g, "chosen", json_boolean(c->vg[k].chosen));
                json_array_append_new(vg, g);
            }
            json_object_set_new(mo, "val", vg);
            json_object_set_new(mo, "grid", jstr(c->png));
            json_object_set_new(ms, s->methods[m], mo);
        }
        json_object_set_new(o, "methods", ms);
        json_object_set_new(o, "gain", s->gain_ok ? jagg(&s->gain[t], s->gain_vals + t * s->ns,
                                                         s->ns)
                                                  : json_null());
        json_array_append_new(tasks, o);
    }
    json_object_set_new(root, "tasks", tasks);
    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(root);
    return txt;
}

/* ------------------------------------------------------------------------------------------ */
/* summary.md                                                                                  */

static void md_text(rbuf *b, const char *s) {
    if (!s) {
        rbuf_puts(b, "n/a");
        return;
    }
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (c == '\n' || c == '\r') c = ' ';
        if (c == '<') rbuf_puts(b, "&lt;");
        else if (c == '>') rbuf_puts(b, "&gt;");
        else if (c == '&') rbuf_puts(b, "&amp;");
        else {
            if (strchr("\\|*_[]`#", c)) rbuf_puts(b, "\\");
            char t[2] = {c, 0};
            rbuf_puts(b, t);
        }
    }
}

static void build_md(rbuf *b, study_t *s, const char *prefix) {
    char h[128], v[128];
    rbuf_puts(b, "# ");
    md_text(b, s->title);
    rbuf_puts(b, "\n\nSelected runs on the test prompts: mean over seeds \xc2\xb1 half-width of "
                 "the 95% confidence interval (Student t across seeds); (n=k) when fewer "
                 "seeds report a value. Win rate: share of prompts where the aligned model "
                 "beats the base model (ties count half).\n");
    for (int t = 0; t < s->nt; t++) {
        const task_t *T = &s->tasks[t];
        rbuf_puts(b, "\n## ");
        md_text(b, T->name);
        rbuf_puts(b, "\n\n");
        rbuf cap = {0};
        task_caption(&cap, T, 0);
        md_text(b, cap.s);
        rbuf_free(&cap);
        if (T->desc) {
            rbuf_puts(b, ". ");
            md_text(b, T->desc);
        }
        rbuf_puts(b, "\n\n| method | seeds |");
        for (int m = 0; m < M_COUNT; m++) {
            metric_header(h, sizeof h, T, m);
            rbuf_puts(b, " ");
            md_text(b, h);
            rbuf_puts(b, " |");
        }
        rbuf_puts(b, "\n|---|");
        for (int m = 0; m <= M_COUNT; m++) rbuf_puts(b, "---:|");
        rbuf_puts(b, "\n| base | | (reference) |");
        for (int k = 0; k < 3; k++) {
            fmt_value(v, sizeof v, M_TASK + k, T->base[k]);
            rbuf_printf(b, " %s |", v);
        }
        rbuf_puts(b, " | | |\n");
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            rbuf_puts(b, "| ");
            md_text(b, method_label(s->methods[m]));
            rbuf_printf(b, " | %d |", c->nruns);
            for (int k = 0; k < M_COUNT; k++) {
                fmt_agg(v, sizeof v, k, &c->m[k], c->nruns);
                rbuf_printf(b, " %s |", v);
            }
            rbuf_puts(b, "\n");
        }
        int any = T->base_png != NULL;
        for (int m = 0; m < s->nm; m++) any |= cell(s, t, m)->png != NULL;
        if (any) {
            rbuf_puts(b, "\n| base |");
            for (int m = 0; m < s->nm; m++) {
                rbuf_puts(b, " ");
                md_text(b, method_label(s->methods[m]));
                rbuf_puts(b, " |");
            }
            rbuf_puts(b, "\n|---|");
            for (int m = 0; m < s->nm; m++) rbuf_puts(b, "---|");
            rbuf_puts(b, "\n|");
            for (int m = -1; m < s->nm; m++) {
                const char *png = m < 0 ? T->base_png : cell(s, t, m)->png;
                if (png) {
                    rbuf_puts(b, " ![");
                    md_text(b, m < 0 ? "base" : method_label(s->methods[m]));
                    rbuf_printf(b, "](%s%s) |", prefix, png);
                } else {
                    rbuf_puts(b, " n/a |");
                }
            }
            rbuf_puts(b, "\n");
        }
    }
    rbuf_puts(b, "\n## Gain: MaPO \xe2\x88\x92 Diffusion-DPO win rate\n\n");
    if (!s->gain_ok) {
        rbuf_puts(b, "n/a: the study does not list both methods \"mapo\" and \"dpo\".\n");
    } else {
        rbuf_puts(b, "Per seed difference of the win rates over base; mean \xc2\xb1 95% t "
                     "confidence half-width across seeds.\n\n| task | mismatch | gain | seeds |"
                     "\n|---|---:|---:|---:|\n");
        for (int t = 0; t < s->nt; t++) {
            rbuf_puts(b, "| ");
            md_text(b, s->tasks[t].name);
            fmt_num(v, sizeof v, s->tasks[t].mismatch);
            rbuf_printf(b, " | %s |", v);
            fmt_agg(v, sizeof v, M_WIN, &s->gain[t], s->gain[t].n);
            rbuf_printf(b, " %s | %d |\n", v, s->gain[t].n);
        }
    }
    rbuf_puts(b, "\n## Chosen hyper-parameters\n\n| task | method | chosen beta | chosen lr | "
                 "best beta on val | best val win rate |\n|---|---|---:|---:|---:|---:|\n");
    for (int t = 0; t < s->nt; t++)
        for (int m = 0; m < s->nm; m++) {
            cell_t *c = cell(s, t, m);
            rbuf_puts(b, "| ");
            md_text(b, s->tasks[t].name);
            rbuf_puts(b, " | ");
            md_text(b, method_label(s->methods[m]));
            fmt_num(v, sizeof v, c->has_chosen ? c->chosen_beta : NAN);
            rbuf_printf(b, " | %s", v);
            fmt_num(v, sizeof v, c->has_chosen ? c->chosen_lr : NAN);
            rbuf_printf(b, " | %s", v);
            fmt_num(v, sizeof v, c->best >= 0 ? c->vg[c->best].beta : NAN);
            rbuf_printf(b, " | %s", v);
            fmt_value(v, sizeof v, M_WIN, c->best >= 0 ? c->vg[c->best].mean : NAN);
            rbuf_printf(b, " | %s |\n", v);
        }
    if (s->nn) {
        rbuf_puts(b, "\n## Notes\n\n");
        for (int i = 0; i < s->nn; i++) {
            rbuf_puts(b, "- ");
            md_text(b, s->notes[i]);
            rbuf_puts(b, "\n");
        }
    }
}

/* ------------------------------------------------------------------------------------------ */

static int write_text(const char *dir, const char *name, const char *text) {
    char *p = path_join(dir, name);
    int rc = mapo_write_file_atomic(p, text, strlen(text));
    free(p);
    return rc;
}

int report_build(const report_opts *o) {
    if (!o || !o->study_dir || !o->out_dir)
        return mapo_error("report: need a study folder and an output folder");
    if (!mapo_is_dir(o->study_dir))
        return mapo_error("%s: study folder not found", o->study_dir);
    study_t s;
    memset(&s, 0, sizeof s);
    s.dir = o->study_dir;
    const char *prefix = o->md_prefix ? o->md_prefix : "report/";
    int rc = -1;
    rbuf html = {0}, md = {0};
    char *js = NULL;
    if (load_study(&s) || load_runs(&s) || aggregate(&s)) goto done;
    if (mkdir_p(o->out_dir) || copy_grids(&s, o->out_dir)) goto done;
    build_html(&html, &s);
    build_md(&md, &s, prefix);
    js = build_json(&s);
    if (!js) {
        mapo_error("report: cannot serialise summary.json");
        goto done;
    }
    size_t jl = strlen(js);
    js = realloc(js, jl + 2);
    js[jl] = '\n';
    js[jl + 1] = 0;
    if (write_text(o->out_dir, "summary.json", js) || write_text(o->out_dir, "summary.md", md.s) ||
        write_text(o->out_dir, "index.html", html.s))
        goto done;
    rc = 0;
done:
    free(js);
    rbuf_free(&html);
    rbuf_free(&md);
    study_free(&s);
    return rc;
}
