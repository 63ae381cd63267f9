/* report.h -- `mapo report`: a finished study folder -> a self-contained HTML report.
 *
 * Input, a study folder STUDY:
 *   STUDY/study.json   {"title", "methods": [..], "seeds": [..], "tasks": [{"name", "kind",
 *                       "strength", "mismatch", "task_metric", "task_higher_better",
 *                       "description", "base": {"task_rate", "class_acc", "fd", "grid"}}],
 *                       "notes": [..]}   (paths relative to STUDY)
 *   STUDY/runs/<run>/result.json   one per training run: {"task", "method", "seed", "beta",
 *                       "lr", "selected", "split", "eval": {"n", "win_rate": {"rate", "lo",
 *                       "hi", "wins", "ties", "losses"}, "task_rate", "class_acc", "fd",
 *                       "pref_acc"}, "train": {"steps", "sec_per_step", "peak_rss_mb", "log"},
 *                       "grid"}   (paths relative to the run folder)
 *   the train_log.jsonl a result names: one JSON object per line (step, loss, model_losses_w,
 *                       model_losses_l, win_score, lose_score, ...).
 * Required: study.json with "methods" (non-empty strings), "seeds" (integers), "tasks" (each
 * with a "name"); every folder under runs/ with a result.json holding "task", "method" (both
 * listed in study.json), "seed" (listed), "split" ("test" or "val"), "selected" (boolean) and
 * an "eval" object; every file a JSON names (grids, logs) must exist, logs must be valid JSON
 * lines with a numeric "step". Everything else is optional and shown as "n/a" when absent
 * (or null). A present value of the wrong type is refused. Errors name the file and the key
 * (one mapo_error() message, -1).
 * The final runs are split "test" with "selected": true (one per task x method x seed; a
 * duplicate is refused); split "val" runs are the hyper-parameter search.
 *
 * Output in OUT (created with its parents; files replaced atomically):
 *   index.html   opens offline: no URL outside OUT, no JavaScript; inline CSS and SVG plots;
 *                every string from the inputs HTML-escaped.
 *   *.png        the grids, copied as <task>_base_grid.png / <task>_<method>_seed<S>_grid.png
 *                (characters outside [A-Za-z0-9._-] become '_', a clash gets a numeric suffix).
 *   summary.json per task x method: mean, 95% CI half-width (Student t across seeds,
 *                mean_ci95 of metrics.h), n and per-seed values of every metric; the MaPO -
 *                Diffusion-DPO win-rate gain (per-seed differences); chosen and best beta.
 *   summary.md   the headline and gain tables in GitHub markdown, image links md_prefix + name.
 *
 * Aggregation: for each task x method, over the study's seeds that have a selected test run
 * with the value present. Gain: per seed with both a "mapo" and a "dpo" selected test win rate,
 * d = win(mapo) - win(dpo); mean and t-CI of the d. One seed: half-width n/a.
 * Grids and curves use the first seed of study.json's "seeds" that has a selected test run
 * (seed 0 in the usual layout). Curves plot loss, margin = model_losses_l - model_losses_w,
 * win_score and lose_score against step; over 400 log lines are averaged in equal buckets.
 * Hyper-parameter search: val runs grouped by (beta, lr), the mean val win rate per group;
 * "chosen" = the (beta, lr) of the selected test runs (or a val run marked selected), "best" =
 * the group with the highest mean val win rate. */
#ifndef MAPO_REPORT_H
#define MAPO_REPORT_H
#include <stddef.h>

typedef struct {
    const char *study_dir;  /* required */
    const char *out_dir;    /* required */
    const char *md_prefix;  /* image link prefix in summary.md; NULL: "report/" */
} report_opts;

int report_build(const report_opts *o);

/* ---- growable text buffer (used by the HTML / SVG / markdown writers) ---- */
typedef struct {
    char *s;
    size_t len, cap;
} rbuf;
void rbuf_puts(rbuf *b, const char *s);
void rbuf_printf(rbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Append s with & < > " ' replaced by entities (safe in HTML text, attributes, inline SVG);
 * NULL appends "n/a". */
void rbuf_html(rbuf *b, const char *s);
void rbuf_free(rbuf *b);

/* ---- inline SVG plots (report_svg.c) ----
 * Axis ranges come from the finite data with "nice" ticks (1, 2, 5 x 10^k); non-finite points
 * are skipped (a line is broken there). All text is HTML-escaped. */
typedef struct {
    const char *label;  /* legend entry */
    const char *color;  /* CSS colour, e.g. "#1f77b4" (not from inputs) */
    const double *x, *y;
    int n;
} svg_series;
/* Line plot: title above, x label below, legend above the axes, tick labels on both axes. */
void svg_line_plot(rbuf *b, const char *title, const char *xlabel, const svg_series *s, int ns,
                   int width, int height);

typedef struct {
    double x, y, half;  /* error bar y -/+ half; half not finite: no bar */
    const char *label;  /* written next to the point */
} svg_point;
/* Scatter plot with vertical error bars, a dashed zero line when 0 is within the y range
 * (the range always includes 0 when zero_line is set). */
void svg_errbar_plot(rbuf *b, const char *title, const char *xlabel, const char *ylabel,
                     const svg_point *p, int n, int zero_line, int width, int height);

/* Nice ticks covering [lo, hi] with about `target` intervals: first tick *t0 <= lo, spacing
 * *step, *count ticks (last >= hi). lo == hi is widened. Exposed for tests. */
void svg_nice_ticks(double lo, double hi, int target, double *t0, double *step, int *count);

#endif
