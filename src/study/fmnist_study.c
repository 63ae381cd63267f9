/* fmnist_study.c -- prompts, style, mark and the pretraining file (see fmnist_study.h). */
#include "mapo/fmnist_study.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/idx.h"
#include "mapo/pipeline.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

const char *const FMNIST_PROMPT_NAMES[FM_CLASSES] = {
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot"};

enum { FM_STREAM_MARK = 0x6d61726bULL, FM_STREAM_DROP = 0x64726f70ULL };

const char *fm_prompt(int cls, char *buf, size_t n) {
    if (cls < 0 || cls >= FM_CLASSES) snprintf(buf, n, "%s", "");
    else snprintf(buf, n, "a photo of a %s", FMNIST_PROMPT_NAMES[cls]);
    return buf;
}

void fm_style(float *img, double s) {
    for (int y = 0; y < FM_SIZE; y++) {
        if (!((y / 2) % 2)) continue;
        for (int x = 0; x < FM_SIZE; x++) {
            double v = (img[y * FM_SIZE + x] + 1.0) * 0.5;
            img[y * FM_SIZE + x] = (float)(v * (1.0 - s) * 2.0 - 1.0);
        }
    }
}

void fm_mark(float *img) {
    for (int y = 2; y < 6; y++)
        for (int x = 2; x < 6; x++) img[y * FM_SIZE + x] = 1.0f;
}

static int draw(uint64_t seed, uint64_t stream, int64_t i, double share) {
    philox r;
    philox_init(&r, seed, stream, (uint64_t)i);
    return philox_uniform(&r) < share;
}
int fm_is_marked(uint64_t seed, int64_t i, double share) {
    return draw(seed, FM_STREAM_MARK, i, share);
}
int fm_is_uncaptioned(uint64_t seed, int64_t i, double share) {
    return draw(seed, FM_STREAM_DROP, i, share);
}

void fm_pretrain_cfg_default(fm_pretrain_cfg *c) {
    memset(c, 0, sizeof *c);
    c->split = "train";
    c->mark_share = 0.1;
    c->caption_dropout = 0.1;
}

int fm_prompt_table(const char *pipeline_dir, float **ehs, int *S, int *D) {
    pipeline p;
    *ehs = NULL;
    if (pipeline_load(&p, pipeline_dir, PIPE_TEXT, NULL, 0)) return -1;
    char buf[FM_CLASSES + 1][64];
    const char *pr[FM_CLASSES + 1];
    for (int k = 0; k <= FM_CLASSES; k++) pr[k] = fm_prompt(k < FM_CLASSES ? k : -1, buf[k], 64);
    *S = p.S;
    *D = p.D;
    *ehs = xmalloc((size_t)(FM_CLASSES + 1) * p.S * p.D * sizeof(float));
    int rc = pipeline_encode_prompts(&p, pr, FM_CLASSES + 1, *ehs, NULL);
    pipeline_free(&p);
    if (rc) {
        free(*ehs);
        *ehs = NULL;
    }
    return rc;
}

int fm_build_pretrain(const fm_pretrain_cfg *c) {
    if (!c->pipeline || !c->out) return mapo_error("needs a pipeline and an output file");
    if (!(c->mark_share >= 0 && c->mark_share <= 1) ||
        !(c->caption_dropout >= 0 && c->caption_dropout <= 1))
        return mapo_error("--mark_share and --caption_dropout must be in [0, 1]");
    fmnist_split sp;
    if (fmnist_load(&sp, c->data_dir ? c->data_dir : fmnist_default_dir(), c->split,
                    c->max_images))
        return -1;
    float *ehs;
    int S, D;
    if (fm_prompt_table(c->pipeline, &ehs, &S, &D)) {
        fmnist_free(&sp);
        return -1;
    }
    const int64_t N = sp.n;
    float *img = xmalloc((size_t)N * FM_PIX * sizeof(float));
    int32_t *pidx = xmalloc(N * sizeof(int32_t)), *lab = xmalloc(N * sizeof(int32_t)),
            *mk = xmalloc(N * sizeof(int32_t));
    int rc = fmnist_to_pixels(img, sp.images, N, sp.h, sp.w, FM_SIZE);
    int64_t n_marked = 0, n_drop = 0;
    for (int64_t i = 0; i < N && !rc; i++) {
        lab[i] = sp.labels[i];
        mk[i] = fm_is_marked(c->seed, i, c->mark_share);
        if (mk[i]) {
            fm_mark(img + i * FM_PIX);
            n_marked++;
        }
        int drop = fm_is_uncaptioned(c->seed, i, c->caption_dropout);
        n_drop += drop;
        pidx[i] = drop ? FM_CLASSES : lab[i];
    }
    if (!rc) {
        st_writer *w = st_writer_new();
        int64_t si[4] = {N, 1, FM_SIZE, FM_SIZE}, se[3] = {FM_CLASSES + 1, S, D}, sn[1] = {N};
        st_writer_add(w, "chosen", ST_F32, 4, si, img);
        st_writer_add(w, "prompt_embeds", ST_F32, 3, se, ehs);
        st_writer_add(w, "prompt_index", ST_I32, 1, sn, pidx);
        st_writer_add(w, "label", ST_I32, 1, sn, lab);
        st_writer_add(w, "marked", ST_I32, 1, sn, mk);
        char meta[64];
        snprintf(meta, sizeof meta, "%g", c->mark_share);
        st_writer_meta(w, "mark_share", meta);
        snprintf(meta, sizeof meta, "%g", c->caption_dropout);
        st_writer_meta(w, "caption_dropout", meta);
        snprintf(meta, sizeof meta, "%llu", (unsigned long long)c->seed);
        st_writer_meta(w, "seed", meta);
        st_writer_meta(w, "split", c->split);
        rc = st_writer_write(w, c->out);
        st_writer_free(w);
        if (!rc)
            mapo_log(1, "%s: %lld images of %s (%lld marked, %lld without caption)\n", c->out,
                     (long long)N, c->split, (long long)n_marked, (long long)n_drop);
    }
    free(img);
    free(pidx);
    free(lab);
    free(mk);
    free(ehs);
    fmnist_free(&sp);
    return rc;
}

int fm_load_pixels(const char *dir, const char *prefix, int64_t max_n, float **x, int **labels,
                   int64_t *n) {
    fmnist_split sp;
    *x = NULL;
    *labels = NULL;
    if (fmnist_load(&sp, dir ? dir : fmnist_default_dir(), prefix, max_n)) return -1;
    *n = sp.n;
    *x = xmalloc((size_t)sp.n * FM_PIX * sizeof(float));
    *labels = xmalloc((size_t)sp.n * sizeof(int));
    int rc = fmnist_to_pixels(*x, sp.images, sp.n, sp.h, sp.w, FM_SIZE);
    for (int64_t i = 0; i < sp.n; i++) (*labels)[i] = sp.labels[i];
    fmnist_free(&sp);
    if (rc) {
        free(*x);
        free(*labels);
        *x = NULL;
        *labels = NULL;
    }
    return rc;
}
