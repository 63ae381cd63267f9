/* watch.h -- the things that watch a training run.
 * The trainer (trainer.c) sets a run up and steps it; everything that reacts to a step -- the
 * progress line, train_log.jsonl, checkpoints, the final model, TensorBoard, validation images
 * -- is a watcher: called after every step and once at the end, in the order registered. A
 * watcher's error stops the run (earlier outputs stay intact). Adding one touches no loop. */
#ifndef MAPO_WATCH_H
#define MAPO_WATCH_H
#include <stddef.h>
#include <stdint.h>

#include "mapo/checkpoint.h"
#include "mapo/objectives.h"
#include "mapo/trainer.h"
#include "mapo/unet.h"

/* What watchers may read of the run. */
typedef struct {
    const train_config *c;
    unet *u;               /* the model being trained (watchers may run it, not change it) */
    const optim_state *opt; /* the optimizer's state (checkpoints) */
    int64_t step0;         /* the step this process started from (a resume: the checkpoint's) */
    double t0;             /* mapo_now() when this process's first step began */
} run_view;

/* One optimizer step, as logged. */
typedef struct {
    int64_t step;          /* steps done, this one included */
    objective_stats st;    /* averaged over the micro-batches */
    double grad_norm, lr, pairs_per_s, eta_s;
    size_t rss;            /* resident bytes after the step */
} step_report;

typedef enum {
    RUN_DONE,     /* max_train_steps reached */
    RUN_STOPPED,  /* --stop_after_steps: as an interruption, without a checkpoint of its own */
    RUN_SIGNAL    /* SIGINT / SIGTERM (interrupt.h): a checkpoint of the last step is written */
} run_end;

typedef struct watcher watcher;
struct watcher {
    const char *name;
    int (*step)(watcher *w, const run_view *r, const step_report *s); /* NULL: none */
    int (*end)(watcher *w, const run_view *r, int64_t step, run_end how); /* NULL: none */
    void (*free)(watcher *w);
};

/* the progress line on stderr (nothing with c->quiet) */
watcher *watch_progress(void);
/* train_log.jsonl: one JSON line per step (appended when resuming); NULL + message when it
   cannot be opened */
watcher *watch_jsonl(const char *path, int append);
/* checkpoint-<step> every c->checkpointing_steps, at the end (when checkpointing), and at a
   signal; old ones pruned by c->checkpoints_total_limit */
watcher *watch_checkpoints(void);
/* the final model (output_dir/unet or the LoRA file) when the run is done */
watcher *watch_final_model(void);

/* TensorBoard event files in dir (created): every metric of train_log.jsonl as scalars;
   *writer (may be NULL) gets the writer for other watchers' images. NULL + message on error. */
struct tfevents_writer;
watcher *watch_tensorboard(const char *dir, struct tfevents_writer **writer);
/* Validation images: the validation prompts (c->validation_prompts or the official script's
   four) sampled from fixed noise (seed) with the model being trained, every
   c->validation_steps and at the end, as output_dir/validation/step-N.png / final.png grids and
   TensorBoard images ("validation", "test"); before a fresh run's first step also the base
   model's ("base.png", test_without_aligned_unet / test_without_lora). Holds the pipeline's
   VAE; the prompts are encoded once and the text encoders freed. tb may be NULL. */
watcher *watch_validation(const train_config *c, unet *u, int64_t step0,
                          struct tfevents_writer *tb);

/* Calls every watcher's step / end (stops at the first error); frees them all. */
int watchers_step(watcher **ws, int n, const run_view *r, const step_report *s);
int watchers_end(watcher **ws, int n, const run_view *r, int64_t step, run_end how);
void watchers_free(watcher **ws, int n);

#endif
