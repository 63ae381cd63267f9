/* params.c -- the parameter table: registration, arenas, init, load and save. */
#include "mapo/params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

void params_init(param_table *t) { memset(t, 0, sizeof *t); }

void params_free(param_table *t) {
    for (int i = 0; i < t->n; i++) free(t->p[i].name);
    free(t->p);
    free(t->data);
    free(t->data16);
    free(t->grad);
    free(t->views);
    memset(t, 0, sizeof *t);
}

int params_add(param_table *t, int ndim, const int64_t *shape, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->p = xrealloc(t->p, t->cap * sizeof *t->p);
    }
    param_info *p = &t->p[t->n];
    memset(p, 0, sizeof *p);
    p->name = xstrdup(name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= shape[i];
    }
    p->offset = t->total;
    t->total += p->numel;
    return t->n++;
}

int params_check_size(const param_table *t, const char *what, const char *weights) {
    const double gib = (double)t->total * 4.0 / (double)(1 << 30);
    if ((uint64_t)t->total > (uint64_t)PARAMS_MAX)
        return mapo_error("%s: the config declares a model of %zu parameters (%.1f GiB as "
                          "float32), more than the limit of %lld", what, t->total, gib,
                          (long long)PARAMS_MAX);
    struct stat st;
    if (!weights || stat(weights, &st) || !S_ISREG(st.st_mode)) return 0;
    /* a sharded checkpoint: what its shards hold together */
    const uint64_t bytes = st_is_index(weights) ? st_index_shard_bytes(weights)
                                                : (uint64_t)st.st_size;
    if (st_is_index(weights) && !bytes) return 0; /* unreadable index: the load says why */
    if (bytes / 2 < (uint64_t)t->total)
        return mapo_error("%s: the config declares %zu parameters but %s holds only %llu bytes "
                          "(at least 2 a parameter)", what, t->total, weights,
                          (unsigned long long)bytes);
    return 0;
}

void params_alloc(param_table *t, int with_grad) {
    free(t->data);
    free(t->data16);
    free(t->grad);
    free(t->views);
    /* the offsets again: in registration order, half parameters in their own arena */
    size_t o32 = 0, o16 = 0;
    for (int i = 0; i < t->n; i++) {
        param_info *p = &t->p[i];
        p->half = with_grad == PARAMS_FROZEN_BF16 && p->ndim >= 2;
        p->offset = p->half ? o16 : o32;
        *(p->half ? &o16 : &o32) += (size_t)p->numel;
    }
    t->total16 = o16;
    t->data = xcalloc(o32 ? o32 : 1, sizeof(float));
    t->data16 = o16 ? xcalloc(o16, sizeof(uint16_t)) : NULL;
    t->grad = with_grad == 1 ? xcalloc(t->total, sizeof(float)) : NULL;
    t->views = xcalloc(t->n, sizeof(tensor));
    for (int i = 0; i < t->n; i++) {
        param_info *p = &t->p[i];
        tensor_param(&t->views[i], p->half ? NULL : t->data + p->offset,
                     t->grad ? t->grad + p->offset : NULL, p->ndim, p->shape);
        if (p->half) t->views[i].bf16 = t->data16 + p->offset;
    }
}

size_t params_bytes(const param_table *t) {
    return (t->total - t->total16) * sizeof(float) + t->total16 * sizeof(uint16_t);
}

/* parameter i's values v, built where param_stage said: a half one rounded to bf16 (a float32
   one was built in place) */
static void param_set(param_table *t, int i, const float *v) {
    const param_info *p = &t->p[i];
    if (p->half) mapo_round_bf16(t->data16 + p->offset, v, p->numel);
}

/* where parameter i's float32 values are built before param_set: its own data, or, for a half
   one, tmp (grown to fit) */
static float *param_stage(const param_table *t, int i, float **tmp, size_t *cap) {
    const param_info *p = &t->p[i];
    if (!p->half) return t->data + p->offset;
    if ((size_t)p->numel > *cap) {
        *cap = (size_t)p->numel;
        *tmp = xrealloc(*tmp, *cap * sizeof(float));
    }
    return *tmp;
}

void params_require_f32(const param_table *t, const char *what) {
    if (!t->total16) return;
    fprintf(stderr, "mapo: error: internal: %s of a model holding weights in bf16\n", what);
    exit(2);
}

int params_find(const param_table *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->p[i].name, name)) return i;
    return -1;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

void params_init_random(param_table *t, uint64_t seed) {
    float *tmp = NULL;
    size_t cap = 0;
    for (int i = 0; i < t->n; i++) {
        param_info *p = &t->p[i];
        float *d = param_stage(t, i, &tmp, &cap);
        int is_norm = strstr(p->name, "norm") != NULL && p->ndim == 1;
        if (is_norm) {
            float v = ends_with(p->name, ".weight") ? 1.0f : 0.0f;
            for (int64_t k = 0; k < p->numel; k++) d[k] = v;
            param_set(t, i, d);
            continue;
        }
        /* fan_in of the weight this belongs to: for a bias, the matching weight */
        int64_t fan_in = 1;
        if (p->ndim >= 2) {
            for (int k = 1; k < p->ndim; k++) fan_in *= p->shape[k];
        } else {
            char wname[512];
            snprintf(wname, sizeof wname, "%.*s.weight", (int)(strlen(p->name) - 5), p->name);
            int w = params_find(t, wname);
            if (w >= 0)
                for (int k = 1; k < t->p[w].ndim; k++) fan_in *= t->p[w].shape[k];
        }
        double bound = 1.0 / sqrt((double)fan_in);
        philox r;
        philox_init(&r, seed, 0x9a7a3ULL, (uint64_t)i);
        for (int64_t k = 0; k < p->numel; k++)
            d[k] = (float)((2.0 * philox_uniform(&r) - 1.0) * bound);
        param_set(t, i, d);
    }
    free(tmp);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s) {
    size_t k = snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

int weights_open(weights_src *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->sharded = st_is_index(path);
    return w->sharded ? st_index_open(&w->x, path) : st_open(&w->f, path);
}

void weights_close(weights_src *w) {
    if (w->sharded) st_index_close(&w->x);
    else st_close(&w->f);
}

const st_tensor *weights_find(const weights_src *w, const char *name) {
    return w->sharded ? st_index_find(&w->x, name) : st_find(&w->f, name);
}

int weights_count(const weights_src *w) { return w->sharded ? w->x.n : w->f.n; }

const st_tensor *weights_tensor(const weights_src *w, int i) {
    return w->sharded ? w->x.tensors[i] : &w->f.tensors[i];
}

int params_load(param_table *t, const char *path, const char *prefix, int allow_extra) {
    weights_src f;
    if (weights_open(&f, path)) return -1;
    int rc = 0;
    char name[640];
    float *tmp = NULL;
    size_t cap = 0;
    for (int i = 0; i < t->n && !rc; i++) {
        param_info *p = &t->p[i];
        float *d = param_stage(t, i, &tmp, &cap);
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const st_tensor *s = weights_find(&f, name);
        if (!s) {
            rc = mapo_error("%s: parameter '%s' is missing (the model config expects it; "
                            "is this the right config.json for these weights?)", path, name);
            break;
        }
        int ok = s->ndim == p->ndim;
        for (int k = 0; ok && k < p->ndim; k++) ok = s->shape[k] == p->shape[k];
        if (!ok) {
            char a[128], b[128];
            shape_str(a, sizeof a, s->ndim, s->shape);
            shape_str(b, sizeof b, p->ndim, p->shape);
            rc = mapo_error("%s: parameter '%s' has shape %s, the config gives %s", path, name,
                            a, b);
            break;
        }
        if (st_to_f32(s, d)) {
            rc = mapo_error_prefix("%s: parameter '%s'", path, name);
            break;
        }
        st_tensor_release(s);
        for (int64_t k = 0; k < p->numel; k++)
            if (!isfinite(d[k])) {
                rc = mapo_error("%s: parameter '%s' holds a non-finite value at index %lld", path,
                                name, (long long)k);
                break;
            }
        if (!rc) param_set(t, i, d);
    }
    free(tmp);
    if (!rc && !allow_extra) {
        size_t pl = strlen(prefix);
        for (int i = 0; i < weights_count(&f); i++) {
            const char *nm = weights_tensor(&f, i)->name;
            if (strncmp(nm, prefix, pl)) continue;
            if (params_find(t, nm + pl) < 0) {
                rc = mapo_error("%s: tensor '%s' is not a parameter of this model "
                                "(config.json and weights disagree)", path, nm);
                break;
            }
        }
    }
    weights_close(&f);
    return rc;
}

void params_write(const param_table *t, st_writer *w, const char *prefix, const float *base) {
    params_require_f32(t, "saving the parameters");
    char name[640];
    for (int i = 0; i < t->n; i++) {
        const param_info *p = &t->p[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        st_writer_add(w, name, ST_F32, p->ndim, p->shape, base + p->offset);
    }
}

int params_save(const param_table *t, const char *path) {
    st_writer *w = st_writer_new();
    params_write(t, w, "", t->data);
    st_writer_meta(w, "format", "pt");
    int rc = st_writer_write(w, path);
    st_writer_free(w);
    return rc;
}

void params_zero_grad(param_table *t) {
    if (t->grad) mapo_zero(t->grad, t->total * sizeof(float));
}
