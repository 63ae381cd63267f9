/* fmnist_pairs.c -- the study's preference pairs and their mismatch (see fmnist_eval.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/fmnist_eval.h"
#include "mapo/fmnist_study.h"
#include "mapo/idx.h"
#include "mapo/metrics.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

enum { STREAM_PICK = 0x7069636b };

typedef struct {
    int64_t n, cap;
    float *chosen, *rejected;
    int32_t *cls;
} pairs_buf;

static void push(pairs_buf *b, const float *w, const float *l, int cls) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        b->chosen = xrealloc(b->chosen, (size_t)b->cap * FM_PIX * sizeof(float));
        b->rejected = xrealloc(b->rejected, (size_t)b->cap * FM_PIX * sizeof(float));
        b->cls = xrealloc(b->cls, (size_t)b->cap * sizeof(int32_t));
    }
    memcpy(b->chosen + b->n * FM_PIX, w, FM_PIX * sizeof(float));
    memcpy(b->rejected + b->n * FM_PIX, l, FM_PIX * sizeof(float));
    b->cls[b->n++] = cls;
}

static int style_pairs(pairs_buf *b, const fm_scores *s, const fm_pairs_cfg *c) {
    fmnist_split sp;
    if (fmnist_load(&sp, c->data_dir ? c->data_dir : fmnist_default_dir(), c->split, 0)) return -1;
    int64_t *idx[FM_CLASSES], cnt[FM_CLASSES] = {0};
    for (int k = 0; k < FM_CLASSES; k++) idx[k] = xmalloc((size_t)sp.n * sizeof(int64_t));
    for (int64_t i = 0; i < sp.n; i++) idx[sp.labels[i]][cnt[sp.labels[i]]++] = i;
    float img[FM_PIX];
    int rc = 0;
    for (int64_t i = 0; i < s->n && !rc; i++) {
        const int k = s->cls[i];
        if (!cnt[k]) {
            rc = mapo_error("the %s split has no image of class %d", c->split, k);
            break;
        }
        philox r;
        philox_init(&r, c->seed, STREAM_PICK, (uint64_t)i);
        const int64_t j = idx[k][philox_below(&r, (uint32_t)cnt[k])];
        rc = fmnist_to_pixels(img, sp.images + j * sp.h * sp.w, 1, sp.h, sp.w, FM_SIZE);
        fm_style(img, c->strength);
        push(b, img, s->images + i * FM_PIX, k);
    }
    for (int k = 0; k < FM_CLASSES; k++) free(idx[k]);
    fmnist_free(&sp);
    return rc;
}

static void safety_pairs(pairs_buf *b, const fm_scores *s) {
    for (int k = 0; k < FM_CLASSES; k++) {
        int64_t nclean = 0, used = 0;
        for (int64_t i = 0; i < s->n; i++) nclean += s->cls[i] == k && s->p_mark[i] <= 0.5;
        if (!nclean) continue;
        for (int64_t i = 0; i < s->n; i++) {
            if (s->cls[i] != k || s->p_mark[i] <= 0.5) continue;
            /* the (used % nclean)-th clean sample of class k */
            int64_t want = used++ % nclean, j = 0;
            for (;; j++)
                if (s->cls[j] == k && s->p_mark[j] <= 0.5 && want-- == 0) break;
            push(b, s->images + j * FM_PIX, s->images + i * FM_PIX, k);
        }
    }
}

static void general_pairs(pairs_buf *b, const fm_scores *s) {
    for (int k = 0; k < FM_CLASSES; k++) {
        int64_t prev = -1;
        for (int64_t i = 0; i < s->n; i++) {
            if (s->cls[i] != k) continue;
            if (prev < 0) {
                prev = i;
                continue;
            }
            if (s->p_class[prev] != s->p_class[i]) {
                const int64_t w = s->p_class[prev] > s->p_class[i] ? prev : i;
                const int64_t l = w == prev ? i : prev;
                push(b, s->images + w * FM_PIX, s->images + l * FM_PIX, k);
            }
            prev = -1;
        }
    }
}

/* mean over classes of cos(class mean of base features, class mean of the side's features) */
static double class_similarity(const fm_scores *s, const float *feat, const int32_t *cls,
                               int64_t n) {
    const int F = s->F;
    double sum = 0;
    int used = 0;
    float *a = xmalloc((size_t)s->n * F * sizeof(float)), *b = xmalloc((size_t)n * F * sizeof(float));
    for (int k = 0; k < FM_CLASSES; k++) {
        int64_t na = 0, nb = 0;
        for (int64_t i = 0; i < s->n; i++)
            if (s->cls[i] == k) memcpy(a + na++ * F, s->features + i * F, F * sizeof(float));
        for (int64_t i = 0; i < n; i++)
            if (cls[i] == k) memcpy(b + nb++ * F, feat + i * F, F * sizeof(float));
        if (!na || !nb) continue;
        double c = mean_vector_cosine(a, na, b, nb, F);
        if (isfinite(c)) sum += c, used++;
    }
    free(a);
    free(b);
    return used ? sum / used : NAN;
}

int fm_build_pairs(const fm_pairs_cfg *c) {
    if (!c->pool || !c->pipeline || !c->evaluators || !c->out)
        return mapo_error("fmnist-pairs needs --pool, --pipeline, --evaluators and --out");
    if (c->task == FM_TASK_STYLE && !(c->strength > 0 && c->strength <= 1))
        return mapo_error("--strength must be in (0, 1]");
    fm_scores s;
    if (fm_scores_load(&s, c->pool)) return -1;
    pairs_buf b = {0};
    int rc = 0;
    if (c->task == FM_TASK_STYLE) rc = style_pairs(&b, &s, c);
    else if (c->task == FM_TASK_SAFETY) safety_pairs(&b, &s);
    else general_pairs(&b, &s);
    if (!rc && b.n < 2)
        rc = mapo_error("%s: only %lld %s pairs can be built from this pool (sample more)",
                        c->pool, (long long)b.n, fm_task_name(c->task));
    fm_judges j = {0};
    float *fw = NULL, *fl = NULL, *ehs = NULL;
    int S = 0, D = 0;
    double sim_w = NAN, sim_l = NAN, fd_w = NAN, fd_l = NAN;
    if (!rc) rc = fm_judges_load(&j, c->evaluators);
    if (!rc) {
        fw = xmalloc((size_t)b.n * j.F * sizeof(float));
        fl = xmalloc((size_t)b.n * j.F * sizeof(float));
        rc = classifier_forward(j.cls, b.chosen, b.n, NULL, fw);
        if (!rc) rc = classifier_forward(j.cls, b.rejected, b.n, NULL, fl);
    }
    if (!rc) {
        sim_w = class_similarity(&s, fw, b.cls, b.n);
        sim_l = class_similarity(&s, fl, b.cls, b.n);
        if (frechet_distance_features(&fd_w, s.features, s.n, fw, b.n, j.F) ||
            frechet_distance_features(&fd_l, s.features, s.n, fl, b.n, j.F))
            rc = -1;
    }
    if (!rc) rc = fm_prompt_table(c->pipeline, &ehs, &S, &D);
    if (!rc) {
        st_writer *w = st_writer_new();
        int64_t si[4] = {b.n, 1, FM_SIZE, FM_SIZE}, se[3] = {FM_CLASSES + 1, S, D}, sn[1] = {b.n};
        st_writer_add(w, "chosen", ST_F32, 4, si, b.chosen);
        st_writer_add(w, "rejected", ST_F32, 4, si, b.rejected);
        st_writer_add(w, "prompt_embeds", ST_F32, 3, se, ehs);
        st_writer_add(w, "prompt_index", ST_I32, 1, sn, b.cls);
        json_t *info = json_pack("{sssfsIsssfsfsfsfsfsIsf}", "task", fm_task_name(c->task),
                                 "strength", c->task == FM_TASK_STYLE ? c->strength : 0.0,
                                 "pairs", (json_int_t)b.n, "split", c->split ? c->split : "",
                                 "similarity", sim_w, "mismatch", 1.0 - sim_w,
                                 "similarity_rejected", sim_l, "fd_chosen", fd_w,
                                 "fd_rejected", fd_l, "pool_noise_seed",
                                 (json_int_t)s.noise_seed, "pool_guidance", s.guidance);
        char *js = json_dumps(info, JSON_COMPACT | JSON_PRESERVE_ORDER);
        st_writer_meta(w, "fmnist_task", js);
        rc = st_writer_write(w, c->out);
        st_writer_free(w);
        char jp[4200];
        snprintf(jp, sizeof jp, "%s.json", c->out);
        if (!rc) rc = mapo_write_file_atomic(jp, js, strlen(js));
        if (!rc && !c->quiet) printf("%s\n", js);
        free(js);
        json_decref(info);
    }
    free(fw), free(fl), free(ehs);
    free(b.chosen), free(b.rejected), free(b.cls);
    fm_judges_free(&j);
    fm_scores_free(&s);
    return rc;
}
