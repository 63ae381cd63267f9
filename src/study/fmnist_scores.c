/* fmnist_scores.c -- samples + scores files, tasks and grids of the Fashion-MNIST study
 * (see fmnist_eval.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/fmnist_eval.h"
#include "mapo/fmnist_study.h"
#include "mapo/image.h"
#include "mapo/safetensors.h"

static void scores_alloc(fm_scores *s, int64_t n, int F) {
    s->n = n;
    s->F = F;
    s->images = xmalloc((size_t)n * FM_PIX * sizeof(float));
    s->features = xmalloc((size_t)n * F * sizeof(float));
    s->cls = xmalloc((size_t)n * sizeof(int));
    s->pred = xmalloc((size_t)n * sizeof(int));
    s->p_class = xmalloc((size_t)n * sizeof(double));
    s->p_style = xmalloc((size_t)n * sizeof(double));
    s->p_mark = xmalloc((size_t)n * sizeof(double));
}

void fm_scores_free(fm_scores *s) {
    free(s->images), free(s->features), free(s->cls), free(s->pred);
    free(s->p_class), free(s->p_style), free(s->p_mark);
    memset(s, 0, sizeof *s);
}

int fm_scores_make(fm_scores *s, pipeline *p, fm_judges *j, int64_t per_class,
                   uint64_t noise_seed, int steps, double guidance) {
    memset(s, 0, sizeof *s);
    if (per_class < 1 || per_class > 100000) return mapo_error("per_class must be in 1..100000");
    scores_alloc(s, per_class * FM_CLASSES, j->F);
    for (int64_t i = 0; i < s->n; i++) s->cls[i] = (int)(i % FM_CLASSES);
    s->noise_seed = noise_seed;
    s->steps = steps;
    s->guidance = guidance;
    int rc = fm_sample(p, s->cls, s->n, noise_seed, steps, guidance, s->images);
    if (!rc)
        rc = fm_judge(j, s->images, s->cls, s->n, s->p_class, s->pred, s->p_style, s->p_mark,
                      s->features);
    if (rc) fm_scores_free(s);
    return rc;
}

int fm_scores_save(const fm_scores *s, const char *path) {
    const int64_t n = s->n;
    int32_t *c = xmalloc(n * sizeof(int32_t)), *pr = xmalloc(n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) c[i] = s->cls[i], pr[i] = s->pred[i];
    st_writer *w = st_writer_new();
    int64_t si[4] = {n, 1, FM_SIZE, FM_SIZE}, sf[2] = {n, s->F}, sn[1] = {n};
    st_writer_add(w, "images", ST_F32, 4, si, s->images);
    st_writer_add(w, "features", ST_F32, 2, sf, s->features);
    st_writer_add(w, "class", ST_I32, 1, sn, c);
    st_writer_add(w, "pred", ST_I32, 1, sn, pr);
    st_writer_add(w, "p_class", ST_F64, 1, sn, s->p_class);
    st_writer_add(w, "p_style", ST_F64, 1, sn, s->p_style);
    st_writer_add(w, "p_mark", ST_F64, 1, sn, s->p_mark);
    char b[64];
    snprintf(b, sizeof b, "%llu", (unsigned long long)s->noise_seed);
    st_writer_meta(w, "noise_seed", b);
    snprintf(b, sizeof b, "%d", s->steps);
    st_writer_meta(w, "steps", b);
    snprintf(b, sizeof b, "%.17g", s->guidance);
    st_writer_meta(w, "guidance", b);
    int rc = st_writer_write(w, path);
    st_writer_free(w);
    free(c);
    free(pr);
    return rc;
}

static int read_ints(const st_file *f, const char *name, int64_t n, int *out) {
    const st_tensor *t = st_find(f, name);
    if (!t || t->ndim != 1 || t->shape[0] != n || t->dtype != ST_I32)
        return mapo_error("%s: '%s' must be I32 [%lld]", f->path, name, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        if (v < 0 || v >= FM_CLASSES)
            return mapo_error("%s: %s[%lld] = %d is not a class", f->path, name, (long long)i, v);
        out[i] = v;
    }
    return 0;
}

int fm_scores_load(fm_scores *s, const char *path) {
    memset(s, 0, sizeof *s);
    st_file f;
    if (st_open(&f, path)) return -1;
    const st_tensor *im = st_find(&f, "images"), *ft = st_find(&f, "features");
    const char *ns = st_meta(&f, "noise_seed");
    if (!im || im->ndim != 4 || !ft || ft->ndim != 2 || !ns || im->shape[0] < 1 ||
        ft->shape[0] != im->shape[0] || ft->shape[1] < 1 || ft->shape[1] > 65536) {
        st_close(&f);
        return mapo_error("%s: not a scores file of `mapo eval` (images, features, noise_seed)",
                          path);
    }
    scores_alloc(s, im->shape[0], (int)ft->shape[1]);
    const int64_t n = s->n;
    int64_t si[4] = {n, 1, FM_SIZE, FM_SIZE}, sf[2] = {n, s->F}, sn[1] = {n};
    int rc = st_read_f32_shape(&f, "images", s->images, 4, si);
    if (!rc) rc = st_read_f32_shape(&f, "features", s->features, 2, sf);
    if (!rc) rc = read_ints(&f, "class", n, s->cls);
    if (!rc) rc = read_ints(&f, "pred", n, s->pred);
    const char *pn[3] = {"p_class", "p_style", "p_mark"};
    double *pd[3] = {s->p_class, s->p_style, s->p_mark};
    for (int k = 0; k < 3 && !rc; k++) {
        const st_tensor *t = st_find(&f, pn[k]);
        if (!t || t->ndim != 1 || t->shape[0] != n || st_to_f64(t, pd[k]))
            rc = mapo_error("%s: '%s' must be a float tensor [%lld]", path, pn[k], (long long)n);
        (void)sn;
    }
    if (!rc) {
        s->noise_seed = strtoull(ns, NULL, 10);
        const char *st = st_meta(&f, "steps"), *g = st_meta(&f, "guidance");
        s->steps = st ? atoi(st) : 0;
        s->guidance = g ? atof(g) : 0;
    }
    st_close(&f);
    if (rc) fm_scores_free(s);
    return rc;
}

int fm_task_parse(const char *s, fm_task *t) {
    if (!strcmp(s, "style")) *t = FM_TASK_STYLE;
    else if (!strcmp(s, "safety")) *t = FM_TASK_SAFETY;
    else if (!strcmp(s, "general")) *t = FM_TASK_GENERAL;
    else return mapo_error("unknown task '%s' (expected style, safety or general)", s);
    return 0;
}

const char *fm_task_name(fm_task t) {
    return t == FM_TASK_STYLE ? "style" : t == FM_TASK_SAFETY ? "safety" : "general";
}

const double *fm_task_score(const fm_scores *s, fm_task t, int *higher_better) {
    *higher_better = t != FM_TASK_SAFETY;
    return t == FM_TASK_STYLE ? s->p_style : t == FM_TASK_SAFETY ? s->p_mark : s->p_class;
}

double fm_task_rate(const fm_scores *s, fm_task t) {
    int64_t k = 0;
    for (int64_t i = 0; i < s->n; i++)
        k += t == FM_TASK_STYLE ? s->p_style[i] > 0.5
           : t == FM_TASK_SAFETY ? s->p_mark[i] > 0.5
                                 : s->pred[i] == s->cls[i];
    return s->n ? (double)k / (double)s->n : NAN;
}

int fm_write_grid(const char *path, const float *x, int64_t n, int cols, int scale) {
    if (n < 1 || cols < 1 || scale < 1 || scale > 16) return mapo_error("grid: bad size");
    const int64_t rows = (n + cols - 1) / cols, cell = FM_SIZE * scale + 1;
    const int W = (int)(cols * cell + 1), H = (int)(rows * cell + 1);
    if ((int64_t)W * H > 64 * 1024 * 1024) return mapo_error("grid: too large");
    uint8_t *rgb = xcalloc((size_t)W * H * 3, 1);
    for (int64_t i = 0; i < n; i++) {
        const int64_t r0 = (i / cols) * cell + 1, c0 = (i % cols) * cell + 1;
        for (int y = 0; y < FM_SIZE * scale; y++)
            for (int xx = 0; xx < FM_SIZE * scale; xx++) {
                float v = (x[i * FM_PIX + (y / scale) * FM_SIZE + xx / scale] + 1.0f) * 127.5f;
                uint8_t b = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lrintf(v));
                uint8_t *o = rgb + ((r0 + y) * W + c0 + xx) * 3;
                o[0] = o[1] = o[2] = b;
            }
    }
    int rc = image_write_png(path, rgb, W, H);
    free(rgb);
    return rc;
}

int fm_test_features(fm_judges *j, const char *data_dir, int64_t max_n, float **feat,
                     int64_t *n) {
    float *x;
    int *lab;
    *feat = NULL;
    if (fm_load_pixels(data_dir, "t10k", max_n, &x, &lab, n)) return -1;
    *feat = xmalloc((size_t)*n * j->F * sizeof(float));
    int rc = classifier_forward(j->cls, x, *n, NULL, *feat);
    free(x);
    free(lab);
    if (rc) {
        free(*feat);
        *feat = NULL;
    }
    return rc;
}
