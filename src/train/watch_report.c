/* watch_report.c -- the watchers that show a run from outside: TensorBoard event files and
 * validation images (watch.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/checkpoint.h"
#include "mapo/common.h"
#include "mapo/generate.h"
#include "mapo/image.h"
#include "mapo/pipeline.h"
#include "mapo/tfevents.h"
#include "mapo/watch.h"

/* ------------------------------------------------------------------ TensorBoard */
typedef struct {
    watcher base;
    tfevents_writer *tb;
} tb_watcher;

static int tb_step(watcher *w, const run_view *r, const step_report *s) {
    (void)r;
    tfevents_writer *tb = ((tb_watcher *)w)->tb;
    /* every metric of train_log.jsonl, under the same names */
    const struct { const char *tag; double v; } m[] = {
        {"loss", s->st.loss}, {"model_losses_w", s->st.err_w}, {"model_losses_l", s->st.err_l},
        {"margin", s->st.margin}, {"win_score", s->st.win_score},
        {"lose_score", s->st.lose_score}, {"implicit_acc", s->st.implicit_acc},
        {"grad_norm", s->grad_norm}, {"lr", s->lr}, {"pairs_per_s", s->pairs_per_s},
        {"rss_mib", s->rss / 1048576.0}};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if (tfevents_scalar(tb, m[i].tag, s->step, m[i].v)) return -1;
    return 0;
}

static int tb_end(watcher *w, const run_view *r, int64_t step, run_end how) {
    (void)r, (void)step, (void)how;
    return tfevents_flush(((tb_watcher *)w)->tb);
}

static void tb_free(watcher *w) {
    tb_watcher *t = (tb_watcher *)w;
    if (tfevents_close(t->tb)) mapo_log(1, "warning: %s\n", mapo_last_error());
    free(t);
}

watcher *watch_tensorboard(const char *dir, tfevents_writer **writer) {
    tfevents_writer *tb = tfevents_open(dir, 0);
    if (!tb) return NULL;
    tb_watcher *t = xcalloc(1, sizeof *t);
    t->base = (watcher){"tensorboard", tb_step, tb_end, tb_free};
    t->tb = tb;
    if (writer) *writer = tb;
    mapo_log(1, "TensorBoard: %s\n", tfevents_path(tb));
    return &t->base;
}

/* ------------------------------------------------------------------ validation images */
/* the official script's validation prompts (its validation_prompts.json) */
static const char *const default_prompts[] = {
    ("portrait photo of a girl, photograph, highly detailed face, depth of field, moody light, "
     "golden hour, style by Dan Winters, Russell James, Steve McCurry, centered, extremely "
     "detailed, Nikon D850, award winning photography"),
    "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
    "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
    ("A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, "
     "masterpiece")};

typedef struct {
    watcher base;
    pipeline p;       /* the VAE and the scheduler config; text encoders dropped once encoded */
    gen_cond cond;
    gen_config g;
    tfevents_writer *tb; /* NULL: no TensorBoard */
    char dir[4200];      /* output_dir/validation */
} val_watcher;

/* Samples the prompts with u from the fixed noise; writes dir/<name>.png (a grid) and the
   TensorBoard image `tag` at step. */
static int validate(val_watcher *v, unet *u, const char *name, const char *tag, int64_t step) {
    const int n = v->cond.n, W = v->g.width, H = v->g.height;
    const size_t hw3 = (size_t)W * H * 3;
    float *img = xmalloc((size_t)n * hw3 * sizeof(float));
    const int lora_on = u->lora_on;
    u->lora_on = 1;
    int rc = generate_with(&v->p, u, &v->g, &v->cond, NULL, img);
    u->lora_on = lora_on;
    uint8_t *u8 = xmalloc((size_t)n * hw3);
    mapo_image *ims = xcalloc((size_t)n, sizeof *ims), gi = {0};
    if (!rc) {
        images_to_u8(u8, img, (int64_t)(n * hw3));
        for (int i = 0; i < n; i++) ims[i] = (mapo_image){W, H, 3, u8 + (size_t)i * hw3};
        int R = (int)floor(sqrt((double)n));
        if (R < 1) R = 1;
        rc = image_grid(&gi, ims, n, R, (n + R - 1) / R);
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/%s.png", v->dir, name);
    if (!rc) rc = image_write_png(path, gi.px, gi.w, gi.h);
    if (!rc && v->tb) rc = tfevents_image(v->tb, tag, step, gi.w, gi.h, 3, gi.px);
    if (!rc) mapo_log(1, "validation: %s (%d prompts)\n", path, n);
    image_free(&gi);
    free(ims);
    free(u8);
    free(img);
    return rc ? mapo_error_prefix("validation at step %lld", (long long)step) : 0;
}

static int val_step(watcher *w, const run_view *r, const step_report *s) {
    if (s->step % r->c->validation_steps) return 0;
    char name[64];
    snprintf(name, sizeof name, "step-%06lld", (long long)s->step);
    return validate((val_watcher *)w, r->u, name, "validation", s->step);
}

static int val_end(watcher *w, const run_view *r, int64_t step, run_end how) {
    if (how != RUN_DONE) return 0;
    return validate((val_watcher *)w, r->u, "final", "test", step);
}

static void val_free(watcher *w) {
    val_watcher *v = (val_watcher *)w;
    gen_cond_free(&v->cond);
    pipeline_free(&v->p);
    free(v);
}

/* prompts of a file, one per non-empty line */
static char **read_prompts(const char *path, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        mapo_error("%s: cannot read the validation prompts: %s", path, strerror(errno));
        return NULL;
    }
    char **v = NULL, *line = NULL;
    size_t cap = 0;
    ssize_t len;
    *n = 0;
    while ((len = getline(&line, &cap, f)) >= 0 && *n < 1000) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        v = xrealloc(v, (size_t)(*n + 1) * sizeof *v);
        v[(*n)++] = xstrdup(line);
    }
    free(line);
    fclose(f);
    if (!*n) {
        free(v);
        mapo_error("%s: no validation prompts in it", path);
        return NULL;
    }
    return v;
}

watcher *watch_validation(const train_config *c, unet *u, int64_t step0, tfevents_writer *tb) {
    val_watcher *v = xcalloc(1, sizeof *v);
    v->base = (watcher){"validation", val_step, val_end, val_free};
    v->tb = tb;
    snprintf(v->dir, sizeof v->dir, "%s/validation", c->output_dir);
    int n = 4, rc = 0;
    char **own = NULL;
    const char *const *prompts = default_prompts;
    if (c->validation_prompts) {
        if (!(own = read_prompts(c->validation_prompts, &n))) rc = -1;
        prompts = (const char *const *)own;
    }
    gen_config_default(&v->g);
    v->g.sampler = c->validation_sampler;
    v->g.steps = (int)c->validation_num_inference_steps;
    v->g.guidance_scale = c->validation_guidance_scale;
    v->g.seed = (uint64_t)c->seed;
    v->g.quiet = 1;
    if (!rc) rc = pipeline_load(&v->p, c->model_dir, PIPE_TEXT | PIPE_VAE, NULL, 0);
    if (!rc && c->vae_dir) rc = pipeline_use_vae(&v->p, c->vae_dir);
    if (!rc) {
        int side = (int)c->validation_resolution;
        if (side <= 0) side = u->cfg.sample_size * pipeline_downscale(&v->p);
        v->g.height = v->g.width = side;
        rc = generate_encode(&v->p, prompts, NULL, n, v->g.guidance_scale, &v->cond);
    }
    pipeline_drop_text(&v->p); /* only the VAE stays in memory */
    for (int i = 0; own && i < n; i++) free(own[i]);
    free(own);
    if (!rc && mkdir(v->dir, 0755) && errno != EEXIST)
        rc = mapo_error("%s: cannot create: %s", v->dir, strerror(errno));
    /* what the model drew before training, on the same prompts and noise (the official script's
       test_without_aligned_unet / test_without_lora, logged here at step 0) */
    if (!rc && step0 == 0)
        rc = validate(v, u, "base", u->lora.n ? "test_without_lora" : "test_without_aligned_unet", 0);
    if (rc) {
        val_free(&v->base);
        return NULL;
    }
    return &v->base;
}
