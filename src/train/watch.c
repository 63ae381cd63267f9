/* watch.c -- see watch.h: the progress line, train_log.jsonl, checkpoints, the final model. */
#include "mapo/watch.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/checkpoint.h"
#include "mapo/common.h"
#include "mapo/interrupt.h"
#include "mapo/safetensors.h"

int watchers_step(watcher **ws, int n, const run_view *r, const step_report *s) {
    for (int i = 0; i < n; i++)
        if (ws[i]->step && ws[i]->step(ws[i], r, s)) return -1;
    return 0;
}

int watchers_end(watcher **ws, int n, const run_view *r, int64_t step, run_end how) {
    for (int i = 0; i < n; i++)
        if (ws[i]->end && ws[i]->end(ws[i], r, step, how)) return -1;
    return 0;
}

void watchers_free(watcher **ws, int n) {
    for (int i = 0; i < n; i++)
        if (ws[i]) ws[i]->free(ws[i]);
}

static void free_plain(watcher *w) { free(w); }

/* ------------------------------------------------------------------ progress line */
static void fmt_time(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

static int progress_step(watcher *w, const run_view *r, const step_report *s) {
    (void)w;
    if (r->c->quiet) return 0;
    char eta[32];
    fmt_time(eta, sizeof eta, s->eta_s);
    fprintf(stderr, "step %lld/%lld  loss %.5f  err_w %.5f  err_l %.5f  margin %.5f  "
                    "grad %.3g  lr %.3g  %.2f pairs/s  ETA %s\n",
            (long long)s->step, (long long)r->c->max_train_steps, s->st.loss, s->st.err_w,
            s->st.err_l, s->st.margin, s->grad_norm, s->lr, s->pairs_per_s, eta);
    return 0;
}

watcher *watch_progress(void) {
    watcher *w = xcalloc(1, sizeof *w);
    *w = (watcher){"progress", progress_step, NULL, free_plain};
    return w;
}

/* ------------------------------------------------------------------ train_log.jsonl */
typedef struct {
    watcher base;
    FILE *f;
    char *path;
} jsonl_watcher;

static int jsonl_step(watcher *w, const run_view *r, const step_report *s) {
    (void)r;
    jsonl_watcher *j = (jsonl_watcher *)w;
    const objective_stats *t = &s->st;
    fprintf(j->f, "{\"step\": %lld, \"loss\": %.9g, \"model_losses_w\": %.9g, "
                  "\"model_losses_l\": %.9g, \"margin\": %.9g, \"win_score\": %.9g, "
                  "\"lose_score\": %.9g, \"implicit_acc\": %.6g, \"grad_norm\": %.9g, "
                  "\"lr\": %.9g, \"pairs_per_s\": %.4g, \"rss_mib\": %.2f}\n",
            (long long)s->step, t->loss, t->err_w, t->err_l, t->margin, t->win_score,
            t->lose_score, t->implicit_acc, s->grad_norm, s->lr, s->pairs_per_s,
            s->rss / 1048576.0);
    if (fflush(j->f) || ferror(j->f))
        return mapo_error("%s: cannot write: %s (the last checkpoint is intact)", j->path,
                          strerror(errno));
    return 0;
}

static void jsonl_free(watcher *w) {
    jsonl_watcher *j = (jsonl_watcher *)w;
    if (j->f) fclose(j->f);
    free(j->path);
    free(j);
}

watcher *watch_jsonl(const char *path, int append) {
    FILE *f = fopen(path, append ? "a" : "w");
    if (!f) {
        mapo_error("%s: cannot open for writing: %s", path, strerror(errno));
        return NULL;
    }
    jsonl_watcher *j = xcalloc(1, sizeof *j);
    j->base = (watcher){"train_log.jsonl", jsonl_step, NULL, jsonl_free};
    j->f = f;
    j->path = xstrdup(path);
    return &j->base;
}

/* ------------------------------------------------------------------ checkpoints */
static int ckpt_step(watcher *w, const run_view *r, const step_report *s) {
    (void)w;
    const train_config *c = r->c;
    if (c->checkpointing_steps > 0 && s->step % c->checkpointing_steps == 0 &&
        s->step < c->max_train_steps)
        return ckpt_save(c, r->u, r->opt, s->step);
    return 0;
}

static int ckpt_end(watcher *w, const run_view *r, int64_t step, run_end how) {
    (void)w;
    const train_config *c = r->c;
    const int periodic = c->checkpointing_steps > 0;
    if (how == RUN_DONE) return periodic ? ckpt_save(c, r->u, r->opt, step) : 0;
    if (how != RUN_SIGNAL) return 0;
    /* SIGINT / SIGTERM: this step as checkpoint-<step>, unless the run trained nothing yet or
       that checkpoint was just written */
    const char *sig = mapo_interrupted() == SIGINT ? "SIGINT" : "SIGTERM";
    if (step == r->step0) {
        mapo_log(1, "%s before the first step of this run: nothing new to save\n", sig);
        return 0;
    }
    if (!(periodic && step % c->checkpointing_steps == 0) && ckpt_save(c, r->u, r->opt, step))
        return -1;
    mapo_log(1, "stopped by %s after step %lld: %s/checkpoint-%lld holds it; resume with "
                "--resume_from_checkpoint latest\n",
             sig, (long long)step, c->output_dir, (long long)step);
    return 0;
}

watcher *watch_checkpoints(void) {
    watcher *w = xcalloc(1, sizeof *w);
    *w = (watcher){"checkpoints", ckpt_step, ckpt_end, free_plain};
    return w;
}

/* ------------------------------------------------------------------ the final model */
static int final_end(watcher *w, const run_view *r, int64_t step, run_end how) {
    (void)w;
    if (how != RUN_DONE) return 0;
    /* --save_precision: the final weights stored as F32, F16 or BF16 (round to nearest even as
       torch's .half() / .bfloat16()); checkpoints stay float32 */
    const st_dtype sp = r->c->save_precision;
    st_f32_overflows(1);
    const int rc = ckpt_save_final(r->u, r->c->output_dir, r->c->lora_format, sp);
    const int64_t n_inf = st_f32_overflows(1);
    if (rc) return -1;
    const char *what = !r->u->lora.n ? "unet" : r->c->lora_format == 2 ? "lora_kohya.safetensors"
                       : "pytorch_lora_weights.safetensors";
    mapo_log(1, "saved %s/%s%s%s (%lld steps; peak RSS %.1f MiB)\n", r->c->output_dir, what,
             sp != ST_F32 ? " as " : "", sp != ST_F32 ? st_precision_name(sp) : "",
             (long long)step, mapo_peak_rss() / 1048576.0);
    if (n_inf)
        mapo_log(1, "warning: %lld weight value(s) of %s/%s are beyond fp16's range (65504) and "
                    "became inf, as torch's .half() does (mapo refuses to load non-finite weights; "
                    "bf16 or float32 keeps them)\n", (long long)n_inf, r->c->output_dir, what);
    return 0;
}

watcher *watch_final_model(void) {
    watcher *w = xcalloc(1, sizeof *w);
    *w = (watcher){"final model", NULL, final_end, free_plain};
    return w;
}
