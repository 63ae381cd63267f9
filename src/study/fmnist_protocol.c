/* fmnist_protocol.c -- `mapo eval` on the Fashion-MNIST study (see fmnist_eval.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/ddpm.h"
#include "mapo/fmnist_eval.h"
#include "mapo/fmnist_study.h"
#include "mapo/metrics.h"
#include "mapo/pairs.h"
#include "mapo/rng.h"
#include "mapo/step.h"

enum { STREAM_PREF = 0x70726566 };

void fm_eval_cfg_default(fm_eval_cfg *c) {
    memset(c, 0, sizeof *c);
    c->per_class = 20;
    c->steps = 20;
    c->pref_draws = 4;
    c->grid_cols = 10;
    c->noise_seed = 1;
    c->guidance = 3.0;
}

int fm_preference_accuracy(unet *u, const char *model_dir, const char *pairs_path,
                           int64_t draws, uint64_t seed, double *acc, int64_t *n_pairs) {
    if (draws < 1 || draws > 1024) return mapo_error("--pref_draws must be in 1..1024");
    ddpm_schedule sch;
    if (ddpm_from_model_dir(&sch, model_dir)) return -1;
    pair_file pf;
    if (pair_file_open(&pf, pairs_path, &u->cfg)) {
        ddpm_free(&sch);
        return -1;
    }
    int rc = 0;
    if (!pair_file_has(&pf, PF_REJECTED)) rc = mapo_error("%s holds no rejected images", pairs_path);
    const int64_t chw = (int64_t)pf.C * pf.H * pf.W, sd = (int64_t)pf.S * pf.D, NB = 32;
    float *x = xmalloc((size_t)2 * NB * chw * sizeof(float));
    float *tg = xmalloc((size_t)2 * NB * chw * sizeof(float));
    float *eps = xmalloc((size_t)chw * sizeof(float)), *ts = xmalloc(2 * NB * sizeof(float));
    float *x0 = xmalloc((size_t)chw * sizeof(float));
    float *ehs = xmalloc((size_t)2 * NB * sd * sizeof(float));
    double *err = xmalloc(2 * NB * sizeof(double));
    int64_t wins = 0, total = pf.N * draws;
    for (int64_t q0 = 0; q0 < total && !rc; q0 += NB) {
        const int nb = (int)(total - q0 < NB ? total - q0 : NB);
        for (int j = 0; j < nb; j++) {
            const int64_t q = q0 + j, idx = q / draws;
            philox r;
            philox_init(&r, seed, STREAM_PREF, (uint64_t)q);
            const int t = (int)philox_below(&r, (uint32_t)sch.num_train_timesteps);
            philox_fill_normal(&r, eps, chw);
            for (int h = 0; h < 2; h++) {
                const int s = j + h * nb;
                pair_file_row(&pf, h ? PF_REJECTED : PF_CHOSEN, idx, x0);
                ddpm_add_noise(&sch, x + s * chw, x0, eps, chw, t);
                ddpm_target(&sch, tg + s * chw, x0, eps, chw, t);
                ts[s] = (float)t;
                pair_file_ehs(&pf, idx, ehs + s * sd);
            }
        }
        unet_inputs in = {2 * nb, pf.H, pf.W, x, ts, ehs, pf.S, NULL, 0, NULL};
        rc = model_errors(u, &in, tg, err);
        for (int j = 0; j < nb && !rc; j++) wins += err[j] < err[j + nb];
    }
    if (!rc) {
        *acc = (double)wins / (double)total;
        *n_pairs = pf.N;
    }
    free(x), free(x0), free(tg), free(eps), free(ts), free(ehs), free(err);
    pair_file_close(&pf);
    ddpm_free(&sch);
    return rc;
}

static json_t *win_json(const win_rate *w) {
    return json_pack("{sfsfsfsIsIsIsI}", "rate", w->rate, "lo", w->lo, "hi", w->hi, "wins",
                     (json_int_t)w->wins, "ties", (json_int_t)w->ties, "losses",
                     (json_int_t)w->losses, "n", (json_int_t)w->n);
}

/* the same paired check compare() makes, from the settings alone: a mismatched --against is
   refused before anything is sampled or written */
static int against_fits(const fm_eval_cfg *c) {
    fm_scores b;
    if (fm_scores_load(&b, c->against)) return -1;
    int rc = 0;
    if (b.n != c->per_class * FM_CLASSES || b.noise_seed != c->noise_seed || b.steps != c->steps ||
        b.guidance != c->guidance)
        rc = mapo_error("%s: sampled with other noise, steps, guidance or counts than this "
                        "evaluation: the comparison must be paired", c->against);
    fm_scores_free(&b);
    return rc;
}

/* the comparison against another model's scores: same classes and noise required */
static int compare(json_t *o, const fm_scores *s, const char *against, fm_task task) {
    fm_scores b;
    if (fm_scores_load(&b, against)) return -1;
    int rc = 0;
    if (b.n != s->n || b.noise_seed != s->noise_seed || b.steps != s->steps ||
        b.guidance != s->guidance)
        rc = mapo_error("%s: sampled with other noise, steps, guidance or counts than this "
                        "evaluation: the comparison must be paired", against);
    for (int64_t i = 0; i < s->n && !rc; i++)
        if (b.cls[i] != s->cls[i]) rc = mapo_error("%s: prompts differ (item %lld)", against, (long long)i);
    if (!rc) {
        int hb;
        const double *a = fm_task_score(s, task, &hb), *bb = fm_task_score(&b, task, &hb);
        win_rate w;
        rc = paired_win_rate(&w, a, bb, s->n, hb, 1e-4);
        if (!rc) json_object_set_new(o, "win_rate", win_json(&w));
        /* the general judge too, whatever the task: prompt fidelity against the other model */
        win_rate wg;
        if (!rc) rc = paired_win_rate(&wg, s->p_class, b.p_class, s->n, 1, 1e-4);
        if (!rc) json_object_set_new(o, "win_rate_class", win_json(&wg));
        json_object_set_new(o, "against", json_string(against));
    }
    fm_scores_free(&b);
    return rc;
}

int fm_eval_run(const fm_eval_cfg *c) {
    if (!c->model || !c->evaluators || !c->out)
        return mapo_error("eval needs --model, --evaluators and --out");
    fm_task task = FM_TASK_GENERAL;
    if (c->task && fm_task_parse(c->task, &task)) return -1;
    if (c->against && !c->task) return mapo_error("--against needs --task (which judge decides)");
    if (c->steps < 1 || c->steps > 1000 || c->grid_cols < 1 || c->grid_cols > 1000 ||
        !(c->guidance >= 0 && c->guidance < 100) || c->fd_images < 0)
        return mapo_error("--num_inference_steps, --guidance_scale, --grid_cols or --fd_images "
                          "out of range");
    if (c->against && against_fits(c)) return -1;
    if (mkdir(c->out, 0755) && !mapo_is_dir(c->out))
        return mapo_error("%s: cannot create the folder", c->out);
    const double t0 = mapo_now();
    pipeline p;
    if (pipeline_load(&p, c->model, PIPE_TEXT | PIPE_VAE | PIPE_UNET, c->unet_dir, 0)) return -1;
    int rc = 0;
    if (c->lora && unet_lora_load(&p.unet, c->lora, 0)) rc = -1;
    fm_judges j = {0};
    if (!rc) rc = fm_judges_load(&j, c->evaluators);
    fm_scores s = {0};
    if (!rc) rc = fm_scores_make(&s, &p, &j, c->per_class, c->noise_seed, (int)c->steps, c->guidance);
    char path[4200];
    json_t *o = json_object();
    if (!rc) {
        snprintf(path, sizeof path, "%s/scores.safetensors", c->out);
        rc = fm_scores_save(&s, path);
    }
    if (!rc) {
        /* grid: row k = class k, the first grid_cols samples of that class */
        const int64_t cols = c->grid_cols < c->per_class ? c->grid_cols : c->per_class;
        float *g = xmalloc((size_t)FM_CLASSES * cols * FM_PIX * sizeof(float));
        for (int k = 0; k < FM_CLASSES; k++)
            for (int64_t q = 0; q < cols; q++)
                memcpy(g + (k * cols + q) * FM_PIX, s.images + (q * FM_CLASSES + k) * FM_PIX,
                       FM_PIX * sizeof(float));
        snprintf(path, sizeof path, "%s/grid.png", c->out);
        rc = fm_write_grid(path, g, FM_CLASSES * cols, (int)cols, 2);
        free(g);
    }
    if (!rc) {
        int64_t nt;
        float *ft;
        double fd = NAN;
        rc = fm_test_features(&j, c->data_dir, c->fd_images, &ft, &nt);
        if (!rc) rc = frechet_distance_features(&fd, s.features, s.n, ft, nt, j.F);
        free(ft);
        double mp = 0;
        for (int64_t i = 0; i < s.n; i++) mp += s.p_class[i] / (double)s.n;
        json_object_set_new(o, "model", json_string(c->model));
        json_object_set_new(o, "unet", c->unet_dir ? json_string(c->unet_dir) : json_null());
        json_object_set_new(o, "lora", c->lora ? json_string(c->lora) : json_null());
        json_object_set_new(o, "n", json_integer((json_int_t)s.n));
        json_object_set_new(o, "noise_seed", json_integer((json_int_t)c->noise_seed));
        json_object_set_new(o, "steps", json_integer((json_int_t)c->steps));
        json_object_set_new(o, "guidance", json_real(c->guidance));
        json_object_set_new(o, "class_acc", json_real(fm_task_rate(&s, FM_TASK_GENERAL)));
        json_object_set_new(o, "style_rate", json_real(fm_task_rate(&s, FM_TASK_STYLE)));
        json_object_set_new(o, "mark_rate", json_real(fm_task_rate(&s, FM_TASK_SAFETY)));
        json_object_set_new(o, "mean_p_class", json_real(mp));
        json_object_set_new(o, "fd", isfinite(fd) ? json_real(fd) : json_null());
        json_object_set_new(o, "fd_reference_images", json_integer((json_int_t)nt));
        if (c->task) {
            json_object_set_new(o, "task", json_string(fm_task_name(task)));
            json_object_set_new(o, "task_rate", json_real(fm_task_rate(&s, task)));
        }
    }
    if (!rc && c->against) rc = compare(o, &s, c->against, task);
    if (!rc && c->pairs) {
        double acc;
        int64_t np;
        rc = fm_preference_accuracy(&p.unet, c->model, c->pairs, c->pref_draws, c->noise_seed,
                                    &acc, &np);
        if (!rc) {
            json_object_set_new(o, "pref_acc", json_real(acc));
            json_object_set_new(o, "pref_pairs", json_integer((json_int_t)np));
        }
    }
    if (!rc) {
        json_object_set_new(o, "seconds", json_real(mapo_now() - t0));
        char *js = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        snprintf(path, sizeof path, "%s/eval.json", c->out);
        rc = mapo_write_file_atomic(path, js, strlen(js));
        if (!rc && !c->quiet) printf("%s\n", js);
        free(js);
    }
    json_decref(o);
    fm_scores_free(&s);
    fm_judges_free(&j);
    pipeline_free(&p);
    return rc;
}
