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

/* mean over classes of cos(class mean of the base features fa, class mean of the features fb) */
static double class_similarity(const float *fa, const int *ca, int64_t na, const float *fb,
                               const int32_t *cb, int64_t nb, int F) {
    double sum = 0;
    int used = 0;
    float *a = xmalloc((size_t)na * F * sizeof(float)), *b = xmalloc((size_t)nb * F * sizeof(float));
    for (int k = 0; k < FM_CLASSES; k++) {
        int64_t ma = 0, mb = 0;
        for (int64_t i = 0; i < na; i++)
            if (ca[i] == k) memcpy(a + ma++ * F, fa + i * F, F * sizeof(float));
        for (int64_t i = 0; i < nb; i++)
            if (cb[i] == k) memcpy(b + mb++ * F, fb + i * F, F * sizeof(float));
        if (!ma || !mb) continue;
        double c = mean_vector_cosine(a, ma, b, mb, F);
        if (isfinite(c)) sum += c, used++;
    }
    free(a);
    free(b);
    return used ? sum / used : NAN;
}

/* Similarity of the pool to the chosen (side 0) and rejected (side 1) images: sim[side][0] in
   pixel space (images mapped to [0, 1]), sim[side][1] in the class judge's feature space, from
   the sides' features feat[side] [n,F] (the pool's are in s). */
static void side_similarities(int F, const fm_scores *s, const pairs_buf *b,
                              float *const feat[2], double sim[2][2]) {
    float *pp = xmalloc((size_t)s->n * FM_PIX * sizeof(float));
    float *ps = xmalloc((size_t)b->n * FM_PIX * sizeof(float));
    for (int64_t i = 0; i < s->n * FM_PIX; i++) pp[i] = (s->images[i] + 1.0f) * 0.5f;
    for (int side = 0; side < 2; side++) {
        const float *x = side ? b->rejected : b->chosen;
        for (int64_t i = 0; i < b->n * FM_PIX; i++) ps[i] = (x[i] + 1.0f) * 0.5f;
        sim[side][0] = class_similarity(pp, s->cls, s->n, ps, b->cls, b->n, FM_PIX);
        sim[side][1] = class_similarity(s->features, s->cls, s->n, feat[side], b->cls, b->n, F);
    }
    free(pp);
    free(ps);
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
    double sim[2][2] = {{NAN, NAN}, {NAN, NAN}}, fd_w = NAN, fd_l = NAN;
    if (!rc) rc = fm_judges_load(&j, c->evaluators);
    if (!rc) {
        fw = xmalloc((size_t)b.n * j.F * sizeof(float));
        fl = xmalloc((size_t)b.n * j.F * sizeof(float));
        rc = classifier_forward(j.cls, b.chosen, b.n, NULL, fw);
        if (!rc) rc = classifier_forward(j.cls, b.rejected, b.n, NULL, fl);
    }
    if (!rc) {
        float *const feat[2] = {fw, fl};
        side_similarities(j.F, &s, &b, feat, sim);
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
        json_t *info = json_pack(
            "{sssfsIsssfsfsfsfsfsfsfsfsIsf}", "task", fm_task_name(c->task), "strength",
            c->task == FM_TASK_STYLE ? c->strength : 0.0, "pairs", (json_int_t)b.n, "split",
            c->split ? c->split : "", "similarity", sim[0][0], "mismatch", 1.0 - sim[0][0],
            "mismatch_rejected", 1.0 - sim[1][0], "similarity_features", sim[0][1],
            "mismatch_features", 1.0 - sim[0][1], "mismatch_features_rejected", 1.0 - sim[1][1],
            "fd_chosen", fd_w, "fd_rejected", fd_l, "pool_noise_seed", (json_int_t)s.noise_seed,
            "pool_guidance", s.guidance);
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
