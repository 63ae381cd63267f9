/* checkpoint.c -- see checkpoint.h. */
#include "mapo/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/lora_formats.h"
#include "mapo/safetensors.h"

/* --------------------------------------------------------------- file helpers */

void run_rm_rf(const char *path) {
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
        run_rm_rf(p);
    }
    closedir(d);
    rmdir(path);
}

/* Replace folder `dst` by `tmp` (both in the same parent): the old one is moved aside
   first, so at every moment one complete version exists. */
static int replace_dir(const char *tmp, const char *dst) {
    char old[4200];
    snprintf(old, sizeof old, "%s.old", dst);
    run_rm_rf(old);
    struct stat st;
    int had = stat(dst, &st) == 0;
    if (had && rename(dst, old))
        return mapo_error("%s: cannot move aside: %s", dst, strerror(errno));
    if (rename(tmp, dst)) return mapo_error("%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
    if (had) run_rm_rf(old);
    return 0;
}

/* --------------------------------------------------------------- checkpoints */
/* the trained weights: the whole UNet, or only its LoRA adapters */
const param_table *trained_params(const unet *u) { return u->lora.n ? &u->lora : &u->params; }

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
static int write_checkpoint(const train_config *c, const unet *u, const optim_state *o,
                            int64_t step, const char *tmp) {
    char p[4300];
    if (mapo_mkdir_p(tmp)) return -1;
    if (save_model(u, tmp)) return -1;
    if (o) {
        st_writer *w = st_writer_new();
        if (o->s8) {
            adamw8_write(o->s8, w, "");
        } else {
            params_write(trained_params(u), w, "exp_avg.", o->m);
            params_write(trained_params(u), w, "exp_avg_sq.", o->v);
        }
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
        /* what else an exact resume needs to be the same */
        json_object_set_new(js, "optimizer", json_string(o->s8 ? "adamw8bit" : "adamw"));
        json_object_set_new(js, "label_noise_prob", json_real(c->label_noise_prob));
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
void ckpt_remove_stale(const char *out_dir) {
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
        run_rm_rf(p);
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
        run_rm_rf(del);
        if (rename(dir, del)) {
            mapo_log(1, "warning: cannot remove old checkpoint %s: %s\n", dir, strerror(errno));
            continue;
        }
        run_rm_rf(del);
        mapo_log(1, "removed %s (--checkpoints_total_limit %lld)\n", dir, (long long)limit);
    }
    free(steps);
}

int ckpt_save(const train_config *c, const unet *u, const optim_state *o, int64_t step) {
    char tmp[4096], dst[4096];
    snprintf(dst, sizeof dst, "%s/checkpoint-%lld", c->output_dir, (long long)step);
    snprintf(tmp, sizeof tmp, "%s/.checkpoint-%lld.tmp", c->output_dir, (long long)step);
    run_rm_rf(tmp);
    if (write_checkpoint(c, u, o, step, tmp) || replace_dir(tmp, dst)) {
        run_rm_rf(tmp);
        return mapo_error_prefix("checkpoint %s not written (earlier ones are intact)", dst);
    }
    if (c->checkpoints_total_limit > 0) prune_checkpoints(c->output_dir, c->checkpoints_total_limit);
    return 0;
}

int64_t ckpt_latest(const char *out_dir) {
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
    /* absent in checkpoints of earlier versions: float32 AdamW, no label noise */
    const char *opt = json_string_value(json_object_get(js, "optimizer"));
    const char *want_opt = c->use_8bit_adam ? "adamw8bit" : "adamw";
    json_t *ln = json_object_get(js, "label_noise_prob");
    const double noise = json_is_number(ln) ? json_number_value(ln) : 0.0;
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
    else if (strcmp(opt ? opt : "adamw", want_opt))
        rc = mapo_error("%s: the checkpoint's optimizer is %s, this run uses %s (--use_8bit_adam "
                        "must be the same)", p, opt, want_opt);
    else if (noise != c->label_noise_prob)
        rc = mapo_error("%s: the checkpoint trained with --label_noise_prob %g, this run %g", p,
                        noise, c->label_noise_prob);
    json_decref(js);
    if (rc) return -1;
    *global_step = gs;
    return 0;
}

int ckpt_load(const train_config *c, unet *u, optim_state *o, int64_t *step) {
    char dir[4096], p[4300];
    if (!strcmp(c->resume, "latest")) {
        int64_t n = ckpt_latest(c->output_dir);
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
    const param_table *tp = trained_params(u);
    if (o->s8) rc = adamw8_read(o->s8, &f, "");
    for (int i = 0; i < tp->n && !rc && !o->s8; i++) {
        const param_info *pi = &tp->p[i];
        char nm[600];
        snprintf(nm, sizeof nm, "exp_avg.%s", pi->name);
        rc = st_read_f32_shape(&f, nm, o->m + pi->offset, pi->ndim, pi->shape);
        snprintf(nm, sizeof nm, "exp_avg_sq.%s", pi->name);
        if (!rc) rc = st_read_f32_shape(&f, nm, o->v + pi->offset, pi->ndim, pi->shape);
    }
    st_close(&f);
    if (rc) return -1;
    *step = gs;
    mapo_log(1, "resumed from %s at step %lld\n", dir, (long long)gs);
    return 0;
}

/* Keep the lines of train_log.jsonl whose "step" is <= step (rewritten atomically). */
int run_log_truncate(const char *path, int64_t step) {
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

int ckpt_save_final(const unet *u, const char *out_dir, int fmt, st_dtype store) {
    char tmp[4200], dst[4200];
    int rc;
    if (u->lora.n) {
        /* atomic files: pytorch_lora_weights.safetensors and / or lora_kohya.safetensors */
        snprintf(dst, sizeof dst, "%s/%s", out_dir,
                 fmt == LORA_FMT_KOHYA ? LORA_KOHYA_FILE : LORA_DIFFUSERS_FILE);
        rc = unet_lora_save_formats(u, out_dir, (lora_format)fmt, store);
    } else {
        snprintf(tmp, sizeof tmp, "%s/.unet.tmp", out_dir);
        snprintf(dst, sizeof dst, "%s/unet", out_dir);
        run_rm_rf(tmp);
        rc = unet_save_dir_as(u, tmp, store);
        if (!rc) rc = replace_dir(tmp, dst);
        if (rc) run_rm_rf(tmp);
    }
    if (rc) return mapo_error_prefix("%s not written (earlier outputs are intact)", dst);
    return 0;
}
