/* trainer.c -- see trainer.h.
 *
 * Randomness is counter-based: pair number c of the run (c = step*GA*B + micro*B + j) lies
 * in epoch e = c / N at position c % N of that epoch's permutation (Philox keyed by seed and
 * e); its noise and timestep come from a stream keyed by (seed, e, dataset index). So the
 * same pair gets the same noise whatever the batch size or thread count, and a resumed run
 * needs only the step number to continue exactly. */
#include "mapo/trainer.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/cache.h"
#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/interrupt.h"
#include "mapo/lock.h"
#include "mapo/ddpm.h"
#include "mapo/pairs.h"
#include "mapo/pipeline.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"

enum { STREAM_PERM = 1, STREAM_NOISE = 2, STREAM_FLIP = 4 }; /* 3: dataset.h augmentation */

void train_config_default(train_config *c) {
    memset(c, 0, sizeof *c);
    c->train_batch_size = 4;
    c->grad_accum = 1;
    c->max_train_steps = 100;
    c->checkpointing_steps = 500;
    c->learning_rate = 5e-4; /* the official MaPO script's default */
    c->max_grad_norm = 1.0;
    c->sched = LR_CONSTANT;
    c->adam = (adamw_config){0.9, 0.999, 1e-8, 1e-2};
    objective_cfg_default(&c->obj);
    c->on_bad_image = ON_BAD_IMAGE_SKIP;
}

typedef struct {
    int64_t epoch;
    int64_t *perm;
    int64_t N;
} epoch_order;

static int64_t pair_index(epoch_order *o, uint64_t seed, int64_t c, int64_t *epoch) {
    int64_t e = c / o->N;
    if (e != o->epoch) {
        philox r;
        philox_init(&r, seed, STREAM_PERM, (uint64_t)e);
        philox_permutation(&r, o->perm, o->N);
        o->epoch = e;
    }
    *epoch = e;
    return o->perm[c % o->N];
}

/* --------------------------------------------------------------- file helpers */
static int mkdir_p(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) && errno != EEXIST)
            return mapo_error("%s: cannot create folder: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) && errno != EEXIST)
        return mapo_error("%s: cannot create folder: %s", tmp, strerror(errno));
    return 0;
}

static void rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        rm_rf(p);
    }
    closedir(d);
    rmdir(path);
}

/* Replace folder `dst` by `tmp` (both in the same parent): the old one is moved aside
   first, so at every moment one complete version exists. */
static int replace_dir(const char *tmp, const char *dst) {
    char old[4200];
    snprintf(old, sizeof old, "%s.old", dst);
    rm_rf(old);
    struct stat st;
    int had = stat(dst, &st) == 0;
    if (had && rename(dst, old))
        return mapo_error("%s: cannot move aside: %s", dst, strerror(errno));
    if (rename(tmp, dst)) return mapo_error("%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
    if (had) rm_rf(old);
    return 0;
}

/* --------------------------------------------------------------- checkpoints */
/* the trained weights: the whole UNet, or only its LoRA adapters */
static const param_table *trained(const unet *u) { return u->lora.n ? &u->lora : &u->params; }

/* the trained model into dir (created): dir/unet/ or dir/pytorch_lora_weights.safetensors */
static int save_model(const unet *u, const char *dir) {
    char p[4300];
    if (u->lora.n) {
        snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", dir);
        return unet_lora_save(u, p);
    }
    snprintf(p, sizeof p, "%s/unet", dir);
    return unet_save_dir(u, p);
}

/* the checkpoint's files into folder tmp (created) */
static int write_checkpoint(const train_config *c, const unet *u, const float *m,
                            const float *v, int64_t step, const char *tmp) {
    char p[4300];
    if (mkdir_p(tmp)) return -1;
    if (save_model(u, tmp)) return -1;
    if (m) {
        st_writer *w = st_writer_new();
        params_write(trained(u), w, "exp_avg.", m);
        params_write(trained(u), w, "exp_avg_sq.", v);
        snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
        int rc = st_writer_write(w, p);
        st_writer_free(w);
        if (rc) return -1;
        json_t *js = json_pack("{s:I, s:I, s:I, s:I, s:s, s:s, s:f, s:I, s:i}", "global_step",
                               (json_int_t)step, "seed", (json_int_t)c->seed,
                               "train_batch_size", (json_int_t)c->train_batch_size,
                               "gradient_accumulation_steps", (json_int_t)c->grad_accum,
                               "loss", objective_name(c->obj.kind), "dataset_name", c->dataset,
                               "learning_rate", c->learning_rate, "max_train_steps",
                               (json_int_t)c->max_train_steps, "lora_rank", c->lora_rank);
        char *s = json_dumps(js, JSON_INDENT(2));
        json_decref(js);
        snprintf(p, sizeof p, "%s/trainer_state.json", tmp);
        rc = mapo_write_file_atomic(p, s, strlen(s));
        free(s);
        if (rc) return -1;
    }
    return 0;
}

/* Names of the checkpoint-N folders of out_dir, oldest first, into *steps (malloc'd). */
static int list_checkpoints(const char *out_dir, int64_t **steps) {
    DIR *d = opendir(out_dir);
    int n = 0, cap = 0;
    *steps = NULL;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long k;
        char rest;
        if (sscanf(e->d_name, "checkpoint-%lld%c", &k, &rest) != 1 || k < 0) continue;
        if (n == cap) *steps = xrealloc(*steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof **steps);
        int i = n++;
        for (; i > 0 && (*steps)[i - 1] > k; i--) (*steps)[i] = (*steps)[i - 1];
        (*steps)[i] = k;
    }
    closedir(d);
    return n;
}

/* What a killed run of this folder may have left: hidden temporary folders of checkpoints and
   of the final UNet, checkpoints half-way through deletion, temporary files of the atomic
   writer ("<name>.tmp.<pid>"). Called with the folder's lock held, so no live run owns them. */
static void remove_stale(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        size_t l = strlen(s);
        const char *t = strstr(s, ".tmp.");
        int stale = (!strncmp(s, ".checkpoint-", 12) &&
                     ((l > 9 && !strcmp(s + l - 9, ".deleting")) || (l > 4 && !strcmp(s + l - 4, ".tmp")))) ||
                    !strcmp(s, ".unet.tmp") ||
                    (t && t > s && t[5] && strspn(t + 5, "0123456789") == strlen(t + 5));
        if (!stale) continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", out_dir, s);
        rm_rf(p);
        n++;
    }
    closedir(d);
    if (n) mapo_log(1, "removed %d temporary file(s) left in %s by an interrupted run\n", n, out_dir);
}

/* --checkpoints_total_limit: keep the newest `limit` checkpoints. Runs only after the newest
   is complete; each old one is first renamed out of the checkpoint-N namespace (atomic), so a
   crash while deleting never leaves a half-deleted folder under a checkpoint's name. */
static void prune_checkpoints(const char *out_dir, int64_t limit) {
    int64_t *steps;
    int n = list_checkpoints(out_dir, &steps);
    for (int i = 0; i + limit < n; i++) {
        char dir[4200], del[4300];
        snprintf(dir, sizeof dir, "%s/checkpoint-%lld", out_dir, (long long)steps[i]);
        snprintf(del, sizeof del, "%s/.checkpoint-%lld.deleting", out_dir, (long long)steps[i]);
        rm_rf(del);
        if (rename(dir, del)) {
            mapo_log(1, "warning: cannot remove old checkpoint %s: %s\n", dir, strerror(errno));
            continue;
        }
        rm_rf(del);
        mapo_log(1, "removed %s (--checkpoints_total_limit %lld)\n", dir, (long long)limit);
    }
    free(steps);
}

/* output_dir/<dir_name>, written into a hidden temp folder and renamed into place; nothing is
   left behind when a write fails (disk full, read-only, quota). Then old checkpoints beyond
   --checkpoints_total_limit are removed. */
static int save_checkpoint(const train_config *c, const unet *u, const float *m,
                           const float *v, int64_t step, const char *dir_name) {
    char tmp[4096], dst[4096];
    snprintf(dst, sizeof dst, "%s/%s", c->output_dir, dir_name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", c->output_dir, dir_name);
    rm_rf(tmp);
    if (write_checkpoint(c, u, m, v, step, tmp) || replace_dir(tmp, dst)) {
        rm_rf(tmp);
        return mapo_error_prefix("checkpoint %s not written (earlier ones are intact)", dst);
    }
    if (c->checkpoints_total_limit > 0) prune_checkpoints(c->output_dir, c->checkpoints_total_limit);
    return 0;
}

static int64_t latest_checkpoint(const char *out_dir) {
    int64_t *steps;
    int n = list_checkpoints(out_dir, &steps);
    int64_t best = n ? steps[n - 1] : -1;
    free(steps);
    return best;
}

int checkpoint_state_read(const char *p, const train_config *c, int64_t *global_step) {
    json_error_t je;
    json_t *js = json_load_file(p, 0, &je);
    if (!js) return mapo_error("%s: cannot read checkpoint state: %s", p, je.text);
    json_int_t gs = json_integer_value(json_object_get(js, "global_step"));
    json_int_t seed = json_integer_value(json_object_get(js, "seed"));
    json_int_t bs = json_integer_value(json_object_get(js, "train_batch_size"));
    json_int_t ga = json_integer_value(json_object_get(js, "gradient_accumulation_steps"));
    const char *loss = json_string_value(json_object_get(js, "loss"));
    json_int_t lr = json_integer_value(json_object_get(js, "lora_rank"));
    int rc = 0;
    if (gs <= 0) rc = mapo_error("%s: bad global_step", p);
    else if (seed != c->seed || bs != c->train_batch_size || ga != c->grad_accum)
        rc = mapo_error("%s: the checkpoint was made with seed %lld, batch %lld x %lld; this run "
                        "has seed %lld, batch %lld x %lld (an exact resume needs the same)", p,
                        (long long)seed, (long long)bs, (long long)ga, (long long)c->seed,
                        (long long)c->train_batch_size, (long long)c->grad_accum);
    else if (!loss || strcmp(loss, objective_name(c->obj.kind)))
        rc = mapo_error("%s: the checkpoint trained with loss %s, this run uses %s", p,
                        loss ? loss : "?", objective_name(c->obj.kind));
    else if (lr != c->lora_rank)
        rc = mapo_error("%s: the checkpoint has --lora_rank %lld, this run %d", p, (long long)lr,
                        c->lora_rank);
    json_decref(js);
    if (rc) return -1;
    *global_step = gs;
    return 0;
}

static int load_checkpoint(const train_config *c, unet *u, float *m, float *v, int64_t *step) {
    char dir[4096], p[4300];
    if (!strcmp(c->resume, "latest")) {
        int64_t n = latest_checkpoint(c->output_dir);
        if (n < 0) {
            mapo_log(1, "no checkpoint in %s: starting from scratch\n", c->output_dir);
            *step = 0;
            return 0;
        }
        snprintf(dir, sizeof dir, "%s/checkpoint-%lld", c->output_dir, (long long)n);
    } else {
        snprintf(dir, sizeof dir, "%s", c->resume);
    }
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    int64_t gs;
    if (checkpoint_state_read(p, c, &gs)) return -1;
    int rc = 0;
    if (u->lora.n) {
        /* the checkpoint's adapters replace the fresh ones; they must have the same layout, as
           the optimizer moments were sized for it */
        const size_t total = u->lora.total;
        snprintf(p, sizeof p, "%s/pytorch_lora_weights.safetensors", dir);
        unet_lora_drop(u);
        if (unet_lora_load(u, p, 1)) return -1;
        if (u->lora.total != total)
            return mapo_error("%s: the adapters hold %zu values, this run's %zu", p,
                              u->lora.total, total);
    } else {
        snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
        if (params_load(&u->params, p, "", 0)) return -1;
    }
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    st_file f;
    if (st_open(&f, p)) return -1;
    const param_table *tp = trained(u);
    for (int i = 0; i < tp->n && !rc; i++) {
        const param_info *pi = &tp->p[i];
        char nm[600];
        snprintf(nm, sizeof nm, "exp_avg.%s", pi->name);
        rc = st_read_f32_shape(&f, nm, m + pi->offset, pi->ndim, pi->shape);
        snprintf(nm, sizeof nm, "exp_avg_sq.%s", pi->name);
        if (!rc) rc = st_read_f32_shape(&f, nm, v + pi->offset, pi->ndim, pi->shape);
    }
    st_close(&f);
    if (rc) return -1;
    *step = gs;
    mapo_log(1, "resumed from %s at step %lld\n", dir, (long long)gs);
    return 0;
}

/* Keep the lines of train_log.jsonl whose "step" is <= step (rewritten atomically). */
static int log_truncate(const char *path, int64_t step) {
    FILE *f = fopen(path, "r");
    if (!f) return 0; /* no log yet */
    char *line = NULL, *out = NULL;
    size_t cap = 0, n = 0, ocap = 0;
    ssize_t len;
    int dropped = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        long long s;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step) {
            dropped++;
            continue;
        }
        if (n + (size_t)len > ocap) out = xrealloc(out, ocap = 2 * (n + (size_t)len));
        memcpy(out + n, line, (size_t)len);
        n += (size_t)len;
    }
    free(line);
    fclose(f);
    int rc = dropped ? mapo_write_file_atomic(path, out ? out : "", n) : 0;
    free(out);
    return rc;
}

/* SIGINT / SIGTERM at a step boundary: the state of this step as checkpoint-<step> (unless the
   run trained nothing yet or that checkpoint was just written), then a closing line. */
static int checkpoint_on_interrupt(const train_config *c, const unet *u, const float *m,
                                   const float *v, int64_t step, int64_t step0) {
    const char *sig = mapo_interrupted() == SIGINT ? "SIGINT" : "SIGTERM";
    if (step == step0) {
        mapo_log(1, "%s before the first step of this run: nothing new to save\n", sig);
        return 0;
    }
    char name[64];
    snprintf(name, sizeof name, "checkpoint-%lld", (long long)step);
    if (!(c->checkpointing_steps > 0 && step % c->checkpointing_steps == 0) &&
        save_checkpoint(c, u, m, v, step, name))
        return -1;
    mapo_log(1, "stopped by %s after step %lld: %s/%s holds it; resume with "
                "--resume_from_checkpoint latest\n", sig, (long long)step, c->output_dir, name);
    return 0;
}

/* --------------------------------------------------------------- the loop */
typedef struct {
    pair_slots s;             /* the 2B inputs of a micro-batch */
    const double *ref_cached; /* [epochs, N, 2] reference errors from a cache, or NULL */
    double *ref_err;          /* [2B] filled from ref_cached */
} batch_buf;

static int pair_noise(uint64_t seed, int64_t epoch, int64_t idx, int T, float *eps,
                      int64_t chw) {
    philox r;
    philox_init(&r, seed, ((uint64_t)STREAM_NOISE << 40) | (uint64_t)epoch, (uint64_t)idx);
    int t = (int)philox_below(&r, (uint32_t)T);
    philox_fill_normal(&r, eps, chw);
    return t;
}

static int pair_flip(uint64_t seed, int64_t epoch, int64_t idx) {
    philox r;
    philox_init(&r, seed, ((uint64_t)STREAM_FLIP << 40) | (uint64_t)epoch, (uint64_t)idx);
    return philox_uniform(&r) < 0.5;
}

void pair_fill(pair_slots *b, const pair_file *pf, const ddpm_schedule *sch, uint64_t seed,
               int64_t epoch, int64_t idx, int j) {
    const int Bp = b->Bp;
    const int64_t chw = b->chw, sd = (int64_t)pf->S * pf->D;
    int t = pair_noise(seed, epoch, idx, sch->num_train_timesteps, b->eps, chw);
    const int fl = pf->chosen_hflip && pair_flip(seed, epoch, idx);
    for (int half = 0; half < (pf->rejected ? 2 : 1); half++) {
        const float *x0 = (half ? (fl ? pf->rejected_hflip : pf->rejected)
                                : (fl ? pf->chosen_hflip : pf->chosen)) + idx * chw;
        int s = j + half * Bp;
        ddpm_add_noise(sch, b->sample + s * chw, x0, b->eps, chw, t);
        ddpm_target(sch, b->target + s * chw, x0, b->eps, chw, t);
        b->timestep[s] = (float)t;
        memcpy(b->ehs + s * sd, pair_file_ehs(pf, idx), sd * sizeof(float));
        if (pf->text_embeds) {
            memcpy(b->text_embeds + (int64_t)s * pf->P, pf->text_embeds + idx * pf->P,
                   pf->P * sizeof(float));
            memcpy(b->time_ids + s * 6, pf->time_ids + idx * 6, 6 * sizeof(float));
        }
    }
}

static void fill_batch(batch_buf *b, const pair_file *pf, const ddpm_schedule *sch,
                       epoch_order *ord, uint64_t seed, int64_t first_pair) {
    const int Bp = b->s.Bp;
    for (int j = 0; j < Bp; j++) {
        int64_t e, idx = pair_index(ord, seed, first_pair + j, &e);
        pair_fill(&b->s, pf, sch, seed, e, idx, j);
        if (b->ref_cached) {
            b->ref_err[j] = b->ref_cached[(e * pf->N + idx) * 2];
            b->ref_err[j + Bp] = b->ref_cached[(e * pf->N + idx) * 2 + 1];
        }
    }
}

/* The memory this run may use, in bytes (0 when unknown): MemAvailable of /proc/meminfo plus
   what this process already holds (the model is loaded when the plan is made, and the plan
   counts it) */
static double mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    double own = 0;
    FILE *g = fopen("/proc/self/statm", "r");
    if (g) {
        long size, resident;
        if (fscanf(g, "%ld %ld", &size, &resident) == 2)
            own = (double)resident * (double)sysconf(_SC_PAGESIZE);
        fclose(g);
    }
    return kb > 0 ? kb * 1024.0 + own : 0;
}

/* Peak activation bytes of one training micro-batch, measured: one forward + backward of a
   single pair at a reduced latent size (a quarter of each side, at least 2^(blocks-1)) with
   gradient scale 0 (nothing is accumulated), scaled by the pixel ratio and the batch size.
   Activations grow linearly with pixels and samples (attention keeps only its row
   log-sum-exp), so the estimate is close; the first step's measured peak is logged after. */
static double probe_activations(unet *u, const unet_inputs *full, const batch_buf *b, int C,
                                int Bp, int n_blocks, const objective_cfg *oc, int dpo) {
    const int f = 1 << (n_blocks - 1);
    int h = full->H / 4 / f * f, w = full->W / 4 / f * f;
    if (h < f) h = f;
    if (w < f) w = f;
    if (h > full->H) h = full->H;
    if (w > full->W) w = full->W;
    const int64_t chw = (int64_t)C * h * w;
    float *x = xcalloc(2 * chw, sizeof(float)), *tgt = xcalloc(2 * chw, sizeof(float));
    float ts[2] = {500, 500};
    unet_inputs in = *full;
    in.B = 2;
    in.H = h;
    in.W = w;
    in.sample = x;
    in.timesteps = ts;
    in.ehs = b->s.ehs; /* the first rows of the batch buffers (contents irrelevant) */
    in.text_embeds = b->s.text_embeds;
    in.time_ids = b->s.time_ids;
    double err[2], ref[2] = {0, 0};
    objective_stats st;
    size_t peak = 0;
    preference_step(u, &in, tgt, oc, dpo ? ref : NULL, 0.0, err, &st, NULL, &peak);
    free(x);
    free(tgt);
    return (double)peak * ((double)full->H * full->W / ((double)h * w)) * Bp *
           (oc->unpaired ? 0.5 : 1.0);
}

static void fmt_time(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

/* A cache given as --dataset_name must have been made with this pipeline's tokenizers, text
   encoders and VAE (and --resolution, when given) */
static int check_given_cache(const train_config *c) {
    st_file f;
    if (st_open(&f, c->dataset)) return -1;
    const char *mf = st_meta(&f, "model_fingerprint"), *res = st_meta(&f, "resolution");
    int rc = 0;
    char vae_cfg[4200];
    snprintf(vae_cfg, sizeof vae_cfg, "%s/vae/config.json", c->model_dir);
    struct stat st;
    if (mf && (stat(vae_cfg, &st) == 0 || pipeline_is_pixel(c->model_dir))) {
        char want[32];
        if (pipeline_fingerprint(c->model_dir, want, sizeof want)) rc = -1;
        else if (strcmp(want, mf))
            rc = mapo_error("%s: this cache was made with other tokenizers / text encoders / VAE (if any) "
                            "than %s has (model_fingerprint %s, the pipeline's %s): rebuild it "
                            "with mapo cache", c->dataset, c->model_dir, mf, want);
    }
    if (!rc && res && c->resolution && atoi(res) != c->resolution)
        rc = mapo_error("%s: this cache holds resolution %s, the run asks --resolution %d: "
                        "rebuild it with mapo cache", c->dataset, res, c->resolution);
    st_close(&f);
    return rc;
}

int train_run(const train_config *c) {
    if (!c->model_dir || !c->dataset || !c->output_dir)
        return mapo_error("train needs --pretrained_model_name_or_path, --dataset_name and "
                          "--output_dir");
    if (c->train_batch_size < 1 || c->grad_accum < 1 || c->max_train_steps < 1)
        return mapo_error("--train_batch_size, --gradient_accumulation_steps and "
                          "--max_train_steps must be >= 1");
    if (c->train_batch_size > 65536 || c->grad_accum > 65536 || c->max_train_steps > ((int64_t)1 << 40))
        return mapo_error("--train_batch_size and --gradient_accumulation_steps must be <= 65536, "
                          "--max_train_steps <= 2^40");
    if (!(c->learning_rate >= 0) || c->warmup < 0 || c->checkpointing_steps < 0)
        return mapo_error("--learning_rate, --lr_warmup_steps and --checkpointing_steps must "
                          "be >= 0");
    if (c->obj.kind == OBJ_MAPO && !(c->obj.snr_value > 0))
        return mapo_error("--snr_value must be > 0");
    int rc = 0;
    unet u, ref;
    int have_ref = 0;
    ddpm_schedule sch;
    /* an image dataset is encoded once into output_dir/cache.safetensors (reused while it
       matches the models, data and settings); a .safetensors is a pair file or cache already */
    char cache_path[4200];
    const char *pairs_path = c->dataset;
    size_t dl = strlen(c->dataset);
    if (dl < 12 || strcmp(c->dataset + dl - 12, ".safetensors")) {
        snprintf(cache_path, sizeof cache_path, "%s/cache.safetensors", c->output_dir);
        cache_config cc;
        cache_config_default(&cc);
        cc.model_dir = c->model_dir;
        cc.dataset = c->dataset;
        cc.out = cache_path;
        cc.resolution = c->resolution;
        cc.random_crop = c->random_crop;
        cc.no_hflip = c->no_hflip;
        cc.on_bad_image = c->on_bad_image;
        cc.allow_outside_paths = c->allow_outside_paths;
        cc.seed = c->seed;
        cc.quiet = c->quiet;
        if (c->obj.kind == OBJ_DPO && !c->lora_rank) {
            /* reference errors computed once, before the policy is loaded */
            cc.ref_unet = c->ref_dir ? c->ref_dir : c->model_dir;
            cc.ref_pair_visits = c->max_train_steps * c->train_batch_size * c->grad_accum;
        }
        struct stat st;
        if (stat(cache_path, &st) == 0 && cache_matches(cache_path, &cc) == 0) {
            mapo_log(1, "using the cache %s (it matches the models, data and settings)\n",
                     cache_path);
        } else {
            if (stat(cache_path, &st) == 0)
                mapo_log(1, "rebuilding %s: %s\n", cache_path, mapo_last_error());
            if (cache_build(&cc)) return -1;
        }
        pairs_path = cache_path;
    } else if (check_given_cache(c)) {
        return -1;
    }
    if (ddpm_from_model_dir(&sch, c->model_dir)) return -1;
    if (c->lora_rank < 0) return mapo_error("--lora_rank must be >= 0");
    if (unet_load_dir(&u, c->model_dir, c->lora_rank == 0)) {
        ddpm_free(&sch);
        return -1;
    }
    if (c->lora_rank && unet_lora_add(&u, c->lora_rank, (uint64_t)c->seed)) {
        unet_free(&u);
        ddpm_free(&sch);
        return -1;
    }
    pair_file pf;
    if (pair_file_open(&pf, pairs_path, &u.cfg)) {
        unet_free(&u);
        ddpm_free(&sch);
        return -1;
    }
    train_config tcfg = *c;
    tcfg.obj.num_train_timesteps = sch.num_train_timesteps;
    tcfg.obj.unpaired = pf.rejected == NULL;
    if (tcfg.obj.unpaired && c->obj.kind != OBJ_SFT) {
        pair_file_close(&pf);
        unet_free(&u);
        ddpm_free(&sch);
        return mapo_error("%s holds single images (no 'rejected'): only --loss sft (plain "
                          "denoising) trains on it", pairs_path);
    }
    const int Bp = (int)c->train_batch_size, halves = tcfg.obj.unpaired ? 1 : 2;
    unet_inputs in = {0};
    in.B = halves * Bp;
    in.H = pf.H;
    in.W = pf.W;
    in.S = pf.S;
    in.P = pf.P;
    in.text_embeds = pf.text_embeds; /* for the shape check only; the batch buffers follow */
    in.time_ids = pf.time_ids;
    if (unet_check_inputs(&u, &in)) {
        rc = mapo_error_prefix("%s", c->dataset);
        goto done_data;
    }
    /* Diffusion-DPO's reference: with LoRA the same UNet with adapters off (as the official
       train_with_lora.py), else a second, frozen UNet */
    const int ref_is_self = c->obj.kind == OBJ_DPO && c->lora_rank > 0;
    if (ref_is_self && c->ref_dir) {
        rc = mapo_error("--ref_model cannot be used with --lora_rank: the reference is the "
                        "UNet with its adapters switched off");
        goto done_data;
    }
    /* cached reference errors: valid for this seed, this reference and enough epochs */
    const double *cached_ref = NULL;
    if (c->obj.kind == OBJ_DPO && !ref_is_self && pf.ref_errors) {
        const char *rd = c->ref_dir ? c->ref_dir : c->model_dir;
        char want[32], seed[32];
        const char *have = st_meta(&pf.f, "ref_fingerprint"), *hs = st_meta(&pf.f, "seed");
        snprintf(seed, sizeof seed, "%lld", (long long)c->seed);
        int64_t need = (c->max_train_steps * c->train_batch_size * c->grad_accum + pf.N - 1) / pf.N;
        if (unet_dir_fingerprint(rd, want, sizeof want) == 0 && have && !strcmp(have, want) &&
            hs && !strcmp(hs, seed) && pf.ref_epochs >= need) {
            cached_ref = pf.ref_errors;
            mapo_log(1, "Diffusion-DPO reference errors come from %s (%lld epochs): no "
                        "reference UNet in memory\n", pairs_path, (long long)pf.ref_epochs);
        } else {
            mapo_log(1, "the cached reference errors do not fit this run (reference, seed or "
                        "epochs differ): using the reference UNet\n");
        }
    }
    if (c->obj.kind == OBJ_DPO && !ref_is_self && !cached_ref) {
        const char *rd = c->ref_dir ? c->ref_dir : c->model_dir;
        if (unet_load_dir(&ref, rd, 0)) {
            rc = -1;
            goto done_data;
        }
        have_ref = 1;
        if (ref.params.total != u.params.total) {
            rc = mapo_error("%s: the reference UNet differs in shape from the trained one", rd);
            goto done_ref;
        }
    }
    param_table *tp = (param_table *)trained(&u);
    const size_t P = tp->total;
    float *m = xcalloc(P, sizeof(float)), *v = xcalloc(P, sizeof(float));
    int64_t step = 0;
    if (c->resume && load_checkpoint(c, &u, m, v, &step)) {
        rc = -1;
        goto done_opt;
    }
    batch_buf b = {0};
    b.s.Bp = Bp;
    b.ref_cached = cached_ref;
    b.ref_err = xmalloc(2 * Bp * sizeof(double));
    b.s.chw = (int64_t)pf.C * pf.H * pf.W;
    const int n = halves * Bp;
    b.s.sample = xmalloc(n * b.s.chw * sizeof(float));
    b.s.target = xmalloc(n * b.s.chw * sizeof(float));
    b.s.eps = xmalloc(b.s.chw * sizeof(float));
    b.s.timestep = xmalloc(n * sizeof(float));
    /* zeroed: the memory-plan probe runs the model on these rows before the first batch */
    b.s.ehs = xcalloc((size_t)n * pf.S * pf.D, sizeof(float));
    if (pf.text_embeds) {
        b.s.text_embeds = xcalloc((size_t)n * pf.P, sizeof(float));
        b.s.time_ids = xcalloc((size_t)n * 6, sizeof(float));
    }
    in.sample = b.s.sample;
    in.timesteps = b.s.timestep;
    in.ehs = b.s.ehs;
    in.text_embeds = b.s.text_embeds;
    in.time_ids = b.s.time_ids;
    epoch_order ord = {-1, xmalloc(pf.N * sizeof(int64_t)), pf.N};
    double *err = xmalloc(n * sizeof(double)), *ref_err = xmalloc(n * sizeof(double));
    mapo_log(1, "mapo train: %s, %zu trained parameters%s; %lld pairs of %dx%dx%d; loss %s; batch "
                "%d x %lld accumulation\n",
             c->model_dir, P, c->lora_rank ? " (LoRA adapters)" : "", (long long)pf.N, pf.C,
             pf.H, pf.W, objective_name(c->obj.kind), Bp, (long long)c->grad_accum);
    /* the memory plan, printed and checked before the first step */
    {
        const double MiB = 1048576.0;
        double w = (double)u.params.total * 4, r = have_ref ? (double)ref.params.total * 4 : 0;
        double opt = (double)P * 4 * 3; /* gradients + AdamW moments */
        double act = probe_activations(&u, &in, &b, pf.C, Bp, (int)u.cfg.n_blocks, &tcfg.obj,
                                       have_ref || ref_is_self || cached_ref);
        double bufs = (double)n * b.s.chw * 4 * 2 + (double)n * pf.S * pf.D * 4;
        double total = w + r + opt + act + bufs, avail = mem_available();
        if (c->max_memory_mb > 0) avail = (double)c->max_memory_mb * 1048576.0;
        char refs[64] = "";
        if (have_ref) snprintf(refs, sizeof refs, ", reference UNet %.0f MiB", r / MiB);
        mapo_log(1, "memory plan: weights %.0f MiB, gradients + AdamW %.0f MiB%s, activations "
                    "%.0f MiB (measured on a reduced batch, scaled), batch %.0f MiB: %.0f MiB of "
                    "%.0f MiB available\n",
                 w / MiB, opt / MiB, refs, act / MiB, bufs / MiB, total / MiB, avail / MiB);
        if (avail > 0 && total > avail && !c->no_memory_check) {
            rc = mapo_error("this run needs about %.2f GiB but %.2f GiB are available: lower "
                            "--train_batch_size (use --gradient_accumulation_steps), train with "
                            "--lora_rank, or pass --no_memory_check to try anyway",
                            total / 1073741824.0, avail / 1073741824.0);
            goto done_buf;
        }
    }
    /* the first write of the run: everything a bad input can be refused for was checked above,
       so a refused run leaves the disk as it found it. One live run per folder (lock.h); the
       checkpoint read above is complete whatever another run does (renamed into place) */
    if (mapo_lock_dir(c->output_dir)) { /* creates it */
        rc = -1;
        goto done_buf;
    }
    remove_stale(c->output_dir);
    char logp[4200];
    snprintf(logp, sizeof logp, "%s/train_log.jsonl", c->output_dir);
    /* a resumed run continues the log after the checkpoint's step: lines of steps that were
       trained after it but lost (a crash, a failed checkpoint) are dropped, not repeated */
    if (step > 0 && log_truncate(logp, step)) {
        rc = -1;
        goto done_buf;
    }
    FILE *log = fopen(logp, step > 0 ? "a" : "w");
    if (!log) {
        rc = mapo_error("%s: cannot open for writing: %s", logp, strerror(errno));
        goto done_buf;
    }
    mapo_log(1, "noise schedule: T=%d, %s target\n", sch.num_train_timesteps,
             sch.pred == PRED_V ? "v_prediction" : "epsilon");
    const double t0 = mapo_now();
    const int64_t step0 = step;
    size_t act_peak = 0;
    int interrupted = 0;
    mapo_interrupt_arm(); /* SIGINT / SIGTERM: stop at the next step boundary */
    while (step < c->max_train_steps && !rc) {
        if (mapo_interrupted()) {
            interrupted = 1;
            rc = checkpoint_on_interrupt(c, &u, m, v, step, step0);
            break;
        }
        if (c->stop_after > 0 && step - step0 >= c->stop_after) {
            interrupted = 1;
            mapo_log(1, "stopping after %lld steps as asked (--stop_after_steps); resume with "
                        "--resume_from_checkpoint latest\n", (long long)(step - step0));
            break;
        }
        objective_stats acc = {0};
        for (int64_t micro = 0; micro < c->grad_accum && !rc; micro++) {
            int64_t first = (step * c->grad_accum + micro) * Bp;
            fill_batch(&b, &pf, &sch, &ord, (uint64_t)c->seed, first);
            if (have_ref || ref_is_self)
                dpo_reference_errors(&u, have_ref ? &ref : NULL, &in, b.s.target, ref_err);
            objective_stats st;
            size_t ap = 0;
            rc = preference_step(&u, &in, b.s.target, &tcfg.obj,
                                 cached_ref ? b.ref_err : have_ref || ref_is_self ? ref_err : NULL,
                                 1.0 / (double)c->grad_accum, err, &st, NULL, &ap);
            if (rc) {
                rc = mapo_error_prefix("step %lld", (long long)step + 1);
                break;
            }
            if (ap > act_peak) act_peak = ap;
            double w = 1.0 / (double)c->grad_accum;
            acc.loss += w * st.loss;
            acc.err_w += w * st.err_w;
            acc.err_l += w * st.err_l;
            acc.margin += w * st.margin;
            acc.win_score += w * st.win_score;
            acc.lose_score += w * st.lose_score;
            acc.implicit_acc += w * st.implicit_acc;
        }
        if (rc) break;
        double gnorm = c->max_grad_norm > 0 ? clip_grad_norm(tp->grad, P, c->max_grad_norm)
                                            : sqrt(grad_sq_norm(tp->grad, P));
        if (!isfinite(gnorm)) {
            rc = mapo_error("step %lld: gradient norm is not finite; nothing of this step was "
                            "applied (try a lower --learning_rate)", (long long)step + 1);
            break;
        }
        double lr = c->learning_rate * lr_lambda(c->sched, step, c->warmup, c->max_train_steps);
        adamw_step(tp->data, tp->grad, m, v, P, step + 1, lr, &c->adam);
        params_zero_grad(tp);
        step++;
        double el = mapo_now() - t0;
        double pps = (double)(step - step0) * Bp * c->grad_accum / (el > 0 ? el : 1e-9);
        char eta[32];
        fmt_time(eta, sizeof eta, (c->max_train_steps - step) * el / (double)(step - step0));
        fprintf(log, "{\"step\": %lld, \"loss\": %.9g, \"model_losses_w\": %.9g, "
                     "\"model_losses_l\": %.9g, \"margin\": %.9g, \"win_score\": %.9g, "
                     "\"lose_score\": %.9g, \"implicit_acc\": %.6g, \"grad_norm\": %.9g, "
                     "\"lr\": %.9g, \"pairs_per_s\": %.4g, \"rss_mib\": %.2f}\n",
                (long long)step, acc.loss, acc.err_w, acc.err_l, acc.margin, acc.win_score,
                acc.lose_score, acc.implicit_acc, gnorm, lr, pps, mapo_rss() / 1048576.0);
        if (fflush(log) || ferror(log)) {
            rc = mapo_error("%s: cannot write: %s (the last checkpoint is intact)", logp,
                            strerror(errno));
            break;
        }
        if (!c->quiet)
            fprintf(stderr, "step %lld/%lld  loss %.5f  err_w %.5f  err_l %.5f  margin %.5f  "
                            "grad %.3g  lr %.3g  %.2f pairs/s  ETA %s\n",
                    (long long)step, (long long)c->max_train_steps, acc.loss, acc.err_w,
                    acc.err_l, acc.margin, gnorm, lr, pps, eta);
        if (c->checkpointing_steps > 0 && step % c->checkpointing_steps == 0 &&
            step < c->max_train_steps) {
            char name[64];
            snprintf(name, sizeof name, "checkpoint-%lld", (long long)step);
            if (save_checkpoint(c, &u, m, v, step, name)) rc = -1;
        }
    }
    if (!rc && !interrupted) {
        char name[64];
        snprintf(name, sizeof name, "checkpoint-%lld", (long long)step);
        if (c->checkpointing_steps > 0) rc = save_checkpoint(c, &u, m, v, step, name);
        /* the final model: output_dir/unet, loadable by UNet2DConditionModel.from_pretrained,
           or output_dir/pytorch_lora_weights.safetensors for pipeline.load_lora_weights */
        char tmp[4200], dst[4200];
        if (u.lora.n) {
            snprintf(dst, sizeof dst, "%s/pytorch_lora_weights.safetensors", c->output_dir);
            if (!rc) rc = unet_lora_save(&u, dst); /* atomic: temp file + rename */
        } else {
            snprintf(tmp, sizeof tmp, "%s/.unet.tmp", c->output_dir);
            snprintf(dst, sizeof dst, "%s/unet", c->output_dir);
            rm_rf(tmp);
            if (!rc) rc = unet_save_dir(&u, tmp);
            if (!rc) rc = replace_dir(tmp, dst);
            if (rc) rm_rf(tmp);
        }
        if (rc) mapo_error_prefix("%s not written (earlier outputs are intact)", dst);
        if (!rc)
            mapo_log(1, "saved %s (%lld steps; peak activations %.1f MiB per micro-batch, "
                        "peak RSS %.1f MiB)\n",
                     dst, (long long)step, act_peak / 1048576.0, mapo_peak_rss() / 1048576.0);
    }
    mapo_interrupt_disarm();
    fclose(log);
done_buf:
    free(err);
    free(ref_err);
    free(ord.perm);
    free(b.s.sample);
    free(b.s.target);
    free(b.s.eps);
    free(b.s.timestep);
    free(b.s.ehs);
    free(b.s.text_embeds);
    free(b.s.time_ids);
    free(b.ref_err);
done_opt:
    free(m);
    free(v);
done_ref:
    if (have_ref) unet_free(&ref);
done_data:
    pair_file_close(&pf);
    unet_free(&u);
    ddpm_free(&sch);
    return rc;
}
