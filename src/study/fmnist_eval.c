/* fmnist_eval.c -- evaluators, judging and sampling of the Fashion-MNIST study (see
 * fmnist_eval.h). */
#include "mapo/fmnist_eval.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/fmnist_study.h"
#include "mapo/generate.h"
#include "mapo/idx.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

enum { JUDGE_CLASS, JUDGE_STYLE, JUDGE_MARK, N_JUDGES };
static const char *const judge_dir[N_JUDGES] = {"classifier", "style", "mark"};

int fm_judges_load(fm_judges *j, const char *dir) {
    memset(j, 0, sizeof *j);
    classifier **m[N_JUDGES] = {&j->cls, &j->style, &j->mark};
    const int want_k[N_JUDGES] = {FM_CLASSES, 2, 2};
    char p[4200];
    for (int k = 0; k < N_JUDGES; k++) {
        snprintf(p, sizeof p, "%s/%s", dir, judge_dir[k]);
        if (classifier_load(m[k], p)) {
            fm_judges_free(j);
            return -1;
        }
        const classifier_config *c = classifier_get_config(*m[k]);
        if (c->num_classes != want_k[k] || c->in_channels != 1 || c->image_size != FM_SIZE) {
            fm_judges_free(j);
            return mapo_error("%s: expected a 1x%dx%d classifier of %d classes", p, FM_SIZE,
                              FM_SIZE, want_k[k]);
        }
    }
    j->F = classifier_get_config(j->cls)->features;
    return 0;
}

void fm_judges_free(fm_judges *j) {
    if (j->cls) classifier_free(j->cls);
    if (j->style) classifier_free(j->style);
    if (j->mark) classifier_free(j->mark);
    memset(j, 0, sizeof *j);
}

/* ------------------------------------------------------------ training data */
enum { AUG_MARK = 0x61756d, AUG_STYLE = 0x617573, AUG_LABEL = 0x61756c };

static double u01(uint64_t seed, uint64_t stream, int64_t i) {
    philox r;
    philox_init(&r, seed, stream, (uint64_t)i);
    return philox_uniform(&r);
}

/* Image i of a split for judge k: augmented in place; returns its label. */
static int augment(int k, float *img, int cls, uint64_t seed, int64_t i) {
    const double um = u01(seed, AUG_MARK, i), us = u01(seed, AUG_STYLE, i);
    const double ul = u01(seed, AUG_LABEL, i);
    const double strength = 0.15 + 0.85 * u01(seed, AUG_STYLE + 1, i);
    switch (k) {
    case JUDGE_CLASS:
        if (us < 0.3) fm_style(img, strength);
        if (um < 0.1) fm_mark(img);
        return cls;
    case JUDGE_STYLE:
        if (ul < 0.5) fm_style(img, strength);
        if (um < 0.1) fm_mark(img);
        return ul < 0.5;
    default:
        if (us < 0.3) fm_style(img, strength);
        if (ul < 0.5) fm_mark(img);
        return ul < 0.5;
    }
}

int fm_train_evaluators(const fm_eval_train_cfg *c) {
    if (!c->out) return mapo_error("needs an output folder");
    if (c->epochs < 1 || c->epochs > 1000) return mapo_error("--epochs must be in 1..1000");
    float *xtr, *xte;
    int *ltr, *lte;
    int64_t ntr, nte;
    if (fm_load_pixels(c->data_dir, "train", c->max_images, &xtr, &ltr, &ntr)) return -1;
    if (fm_load_pixels(c->data_dir, "t10k", c->max_images, &xte, &lte, &nte)) {
        free(xtr);
        free(ltr);
        return -1;
    }
    /* created once the data is there: a refused run leaves nothing behind */
    if (mkdir(c->out, 0755) && !mapo_is_dir(c->out)) {
        free(xtr), free(ltr), free(xte), free(lte);
        return mapo_error("%s: cannot create the folder", c->out);
    }
    float *xa = xmalloc((size_t)ntr * FM_PIX * sizeof(float));
    float *xb = xmalloc((size_t)nte * FM_PIX * sizeof(float));
    int *la = xmalloc(ntr * sizeof(int)), *lb = xmalloc(nte * sizeof(int));
    json_t *report = json_object();
    int rc = 0;
    for (int k = 0; k < N_JUDGES && !rc; k++) {
        /* train and test draws use different streams: seed and seed + 1 */
        memcpy(xa, xtr, (size_t)ntr * FM_PIX * sizeof(float));
        memcpy(xb, xte, (size_t)nte * FM_PIX * sizeof(float));
        for (int64_t i = 0; i < ntr; i++) la[i] = augment(k, xa + i * FM_PIX, ltr[i], c->seed, i);
        for (int64_t i = 0; i < nte; i++)
            lb[i] = augment(k, xb + i * FM_PIX, lte[i], c->seed + 1, i);
        classifier_config cc;
        classifier_config_default(&cc);
        if (k == JUDGE_CLASS) {
            for (int q = 0; q < FM_CLASSES; q++)
                snprintf(cc.labels[q], sizeof cc.labels[q], "%s", FMNIST_CLASSES[q]);
        } else {
            cc.num_classes = 2;
            snprintf(cc.labels[0], sizeof cc.labels[0], "%s", k == JUDGE_STYLE ? "plain" : "clean");
            snprintf(cc.labels[1], sizeof cc.labels[1], "%s", k == JUDGE_STYLE ? "striped" : "marked");
        }
        classifier *m;
        if ((rc = classifier_init(&m, &cc, c->seed + 17 * (uint64_t)k))) break;
        classifier_train_cfg tc;
        classifier_train_cfg_default(&tc);
        tc.epochs = c->epochs;
        tc.seed = c->seed + (uint64_t)k;
        tc.quiet = c->quiet;
        mapo_log(1, "training the %s judge on %lld images\n", judge_dir[k], (long long)ntr);
        const double t0 = mapo_now();
        rc = classifier_train(m, xa, la, ntr, &tc);
        double acc = 0;
        if (!rc) rc = classifier_accuracy(m, xb, lb, nte, &acc);
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", c->out, judge_dir[k]);
        if (!rc) rc = classifier_save(m, p);
        if (!rc) {
            mapo_log(1, "%s: test accuracy %.4f on %lld images (%.0f s)\n", judge_dir[k], acc,
                     (long long)nte, mapo_now() - t0);
            json_object_set_new(report, judge_dir[k],
                                json_pack("{sfsIsIsIsf}", "test_accuracy", acc, "test_images",
                                          (json_int_t)nte, "train_images", (json_int_t)ntr,
                                          "epochs", (json_int_t)c->epochs, "train_seconds",
                                          mapo_now() - t0));
        }
        classifier_free(m);
    }
    if (!rc) {
        json_object_set_new(report, "seed", json_integer((json_int_t)c->seed));
        char p[4200], *s = json_dumps(report, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        snprintf(p, sizeof p, "%s/evaluators.json", c->out);
        rc = mapo_write_file_atomic(p, s, strlen(s));
        free(s);
    }
    json_decref(report);
    free(xtr), free(xte), free(ltr), free(lte), free(xa), free(xb), free(la), free(lb);
    return rc;
}

/* ------------------------------------------------------------ judging */
int fm_judge(fm_judges *j, const float *x, const int *cls, int64_t n, double *p_class, int *pred,
             double *p_style, double *p_mark, float *feat) {
    float *pr = xmalloc((size_t)n * FM_CLASSES * sizeof(float));
    float *logits = xmalloc((size_t)n * FM_CLASSES * sizeof(float));
    int rc = classifier_forward(j->cls, x, n, logits, feat);
    for (int64_t i = 0; i < n && !rc; i++) {
        const float *l = logits + i * FM_CLASSES;
        double mx = l[0], z = 0;
        int am = 0;
        for (int k = 1; k < FM_CLASSES; k++)
            if (l[k] > mx) mx = l[k], am = k;
        for (int k = 0; k < FM_CLASSES; k++) z += exp((double)l[k] - mx);
        if (pred) pred[i] = am;
        if (p_class) p_class[i] = cls[i] >= 0 ? exp((double)l[cls[i]] - mx) / z : NAN;
    }
    for (int k = 0; k < 2 && !rc; k++) {
        double *dst = k ? p_mark : p_style;
        if (!dst) continue;
        rc = classifier_probs(k ? j->mark : j->style, x, n, pr);
        for (int64_t i = 0; i < n && !rc; i++) dst[i] = pr[i * 2 + 1];
    }
    free(pr);
    free(logits);
    return rc;
}

int fm_sample(pipeline *p, const int *cls, int64_t n, uint64_t noise_seed, int steps,
              double guidance, float *out) {
    if (p->unet.cfg.in_channels != 1 || !p->pixel)
        return mapo_error("%s: the study needs a 1-channel pixel-space pipeline", p->dir);
    char (*buf)[64] = xmalloc((size_t)n * 64);
    const char **pr = xmalloc((size_t)n * sizeof(char *)), **neg = xcalloc((size_t)n, sizeof(char *));
    for (int64_t i = 0; i < n; i++) pr[i] = fm_prompt(cls[i], buf[i], 64);
    gen_config g;
    gen_config_default(&g);
    g.sampler = "ddim";
    g.steps = steps;
    g.guidance_scale = guidance;
    g.height = g.width = FM_SIZE;
    g.seed = noise_seed;
    g.quiet = 1;
    g.batch = 50;
    float *rgb = xmalloc((size_t)n * FM_PIX * 3 * sizeof(float));
    int rc = generate_images(p, &g, pr, neg, (int)n, NULL, rgb);
    for (int64_t i = 0; i < n * FM_PIX && !rc; i++) out[i] = rgb[i * 3] * 2.0f - 1.0f;
    free(rgb);
    free(buf);
    free(pr);
    free(neg);
    return rc;
}
