/* trainer.c -- see trainer.h. A run in four parts:
 *   run_data     the dataset as a pair file (an image dataset is cached once into output_dir)
 *   run_open     schedule, UNet (+ LoRA), pair file, Diffusion-DPO's reference, batch buffers
 *   run_step     one optimizer step: micro-batches, objective, clipping, AdamW
 *   train_run    memory plan, resume, then steps; everything that reacts to a step (progress,
 *                train_log.jsonl, checkpoints, the final model, ...) is a watcher (watch.h).
 * What each pair draws (order, noise, timestep, flip) is counter-based (pair_draw.h), so a
 * resumed run needs only the step number to continue exactly; the output folder's files are
 * checkpoint.c's. */
#include "mapo/trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/cache.h"
#include "mapo/checkpoint.h"
#include "mapo/common.h"
#include "mapo/dataset.h"
#include "mapo/ops.h"
#include "mapo/ddpm.h"
#include "mapo/interrupt.h"
#include "mapo/lock.h"
#include "mapo/optim8bit.h"
#include "mapo/pair_draw.h"
#include "mapo/pairs.h"
#include "mapo/pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/watch.h"

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
    c->max_train_steps = 0; /* from num_train_epochs, as the official script */
    c->num_train_epochs = 1;
    c->warmup = 500;        /* the official script's --lr_warmup_steps (no effect on constant) */
    c->lr_num_cycles = 1;
    c->lr_power = 1.0;
    c->vae_encode_batch_size = 8;
    c->validation_steps = 200;
    c->validation_num_inference_steps = 25;
    c->validation_guidance_scale = 5.0;
    c->validation_sampler = "euler";
    c->lora_format = 1; /* LORA_FMT_DIFFUSERS */
}

typedef struct {
    pair_slots s;             /* the 2B inputs of a micro-batch */
    const double *ref_cached; /* [epochs, N, 2] reference errors from a cache, or NULL */
    double *ref_err;          /* [2B] filled from ref_cached */
    unsigned char *labels;    /* [max(B, 2)] Diffusion-KTO on single images: their labels */
} batch_buf;

/* Everything a run holds between set-up and the end. */
typedef struct {
    const train_config *c;
    train_config tcfg;        /* c with the schedule's T and the pair file's layout */
    ddpm_schedule sch;
    unet u, ref;
    int have_sch, have_u, have_pf, have_ref, ref_is_self;
    pair_file pf;
    const double *cached_ref;
    param_table *tp;          /* the trained parameters (all, or the adapters) */
    size_t P;
    optim_state opt;          /* AdamW moments, or the 8-bit state */
    adamw8_state s8;
    batch_buf b;
    unet_inputs in;
    epoch_order ord;
    double *err, *ref_err;
    int halves;               /* 2: pairs, 1: single images (sft) */
    size_t act_peak;
} run;

static void swap_rows(float *a, float *b, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float t = a[k];
        a[k] = b[k];
        b[k] = t;
    }
}

static void fill_batch(batch_buf *b, const pair_file *pf, const ddpm_schedule *sch,
                       epoch_order *ord, uint64_t seed, int64_t first_pair, double label_noise) {
    const int Bp = b->s.Bp;
    const int64_t chw = b->s.chw;
    for (int j = 0; j < Bp; j++) {
        int64_t e, idx = pair_index(ord, seed, first_pair + j, &e);
        pair_fill(&b->s, pf, sch, seed, e, idx, j);
        if (b->labels && pf->labels) b->labels[j] = pf->labels[idx];
        if (b->ref_cached) {
            b->ref_err[j] = b->ref_cached[(e * pf->N + idx) * 2];
            b->ref_err[j + Bp] = b->ref_cached[(e * pf->N + idx) * 2 + 1];
        }
        /* --label_noise_prob: this visit of the pair trains the other preference (the two
           halves share noise, timestep and conditioning, so swapping the rows is enough) */
        if (pair_file_has(pf, PF_REJECTED) && pair_label_flip(seed, e, idx, label_noise)) {
            swap_rows(b->s.sample + j * chw, b->s.sample + (j + Bp) * chw, chw);
            swap_rows(b->s.target + j * chw, b->s.target + (j + Bp) * chw, chw);
            if (b->ref_cached) {
                double t = b->ref_err[j];
                b->ref_err[j] = b->ref_err[j + Bp];
                b->ref_err[j + Bp] = t;
            }
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
    return kb > 0 ? kb * 1024.0 + (double)mapo_rss() : 0;
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

static int check_config(const train_config *c) {
    if (!c->model_dir || !c->dataset || !c->output_dir)
        return mapo_error("train needs --pretrained_model_name_or_path and --dataset_name (and "
                          "an --output_dir, mapo by default)");
    if (c->train_batch_size < 1 || c->grad_accum < 1 || c->max_train_steps < 0 ||
        (c->max_train_steps == 0 && c->num_train_epochs < 1))
        return mapo_error("--train_batch_size, --gradient_accumulation_steps, --max_train_steps "
                          "and --num_train_epochs must be >= 1");
    if (c->num_train_epochs > 1000000 || c->max_train_samples < 0 || c->vae_encode_batch_size < 1 ||
        c->lr_num_cycles < 1 || c->lr_num_cycles > 1000000 || !(c->lr_power > 0) ||
        !(c->label_noise_prob >= 0 && c->label_noise_prob <= 1))
        return mapo_error("--num_train_epochs must be <= 10^6, --max_train_samples >= 0, "
                          "--vae_encode_batch_size >= 1, --lr_num_cycles in 1..10^6, --lr_power > 0, "
                          "--label_noise_prob in [0, 1]");
    if (c->sched == LR_POLYNOMIAL && !(c->learning_rate > LR_POLYNOMIAL_END))
        return mapo_error("--lr_scheduler polynomial decays to 1e-7: --learning_rate must be "
                          "larger (got %g)", c->learning_rate);
    if (c->train_batch_size > 65536 || c->grad_accum > 65536 || c->max_train_steps > ((int64_t)1 << 40))
        return mapo_error("--train_batch_size and --gradient_accumulation_steps must be <= 65536, "
                          "--max_train_steps <= 2^40");
    if (!(c->learning_rate >= 0) || c->warmup < 0 || c->checkpointing_steps < 0)
        return mapo_error("--learning_rate, --lr_warmup_steps and --checkpointing_steps must "
                          "be >= 0");
    if (c->obj.kind == OBJ_MAPO && !(c->obj.snr_value > 0))
        return mapo_error("--snr_value must be > 0");
    if (c->lora_rank < 0) return mapo_error("--lora_rank must be >= 0");
    if (c->validation_steps > 0 && c->validation_prompts && !mapo_is_file(c->validation_prompts))
        return mapo_error("%s: no such file (--validation_prompts)", c->validation_prompts);
    if (c->validation_steps > 0 &&
        (c->validation_num_inference_steps < 1 || c->validation_num_inference_steps > 1000 ||
         c->validation_resolution < 0 || c->validation_resolution > 8192 ||
         !(c->validation_guidance_scale >= 0)))
        return mapo_error("--validation_num_inference_steps must be in 1..1000, "
                          "--validation_resolution in 0..8192, --validation_guidance_scale >= 0");
    return 0;
}

/* The dataset as a pair file: an image dataset is encoded once into output_dir/cache.safetensors
   (reused while it matches the models, data and settings); a .safetensors is a pair file or a
   cache already (checked against the pipeline). *pairs_path: c->dataset or cache_path. */
static int run_data(const train_config *c, char *cache_path, size_t n, const char **pairs_path) {
    *pairs_path = c->dataset;
    size_t dl = strlen(c->dataset);
    if (dl >= 12 && !strcmp(c->dataset + dl - 12, ".safetensors")) {
        if (c->max_train_samples > 0 || c->keep_ties || c->vae_dir)
            return mapo_error("%s is a pair file or cache: --max_train_samples, --remove_ties "
                              "false and --pretrained_vae_model_name_or_path apply when the "
                              "dataset is encoded (give the parquet / manifest dataset, or pass "
                              "them to mapo cache)", c->dataset);
        return check_given_cache(c);
    }
    snprintf(cache_path, n, "%s/cache.safetensors", c->output_dir);
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
    cc.split = c->split;
    cc.split_soft = c->split_soft;
    cc.keep_ties = c->keep_ties;
    cc.vae_dir = c->vae_dir;
    cc.vae_batch = (int)c->vae_encode_batch_size;
    cc.max_pairs = c->max_train_samples;
    cc.sample_pairs = 1;
    if ((c->obj.kind == OBJ_DPO || c->obj.kind == OBJ_KTO) && !c->lora_rank) {
        /* reference errors computed once, before the policy is loaded: for every pair the run
           visits (steps known), or one more epoch than asked (steps from epochs round up) */
        cc.ref_unet = c->ref_dir ? c->ref_dir : c->model_dir;
        if (c->max_train_steps > 0)
            cc.ref_pair_visits = c->max_train_steps * c->train_batch_size * c->grad_accum;
        else
            cc.ref_epochs = c->num_train_epochs + 1;
    }
    /* KTO also trains on labelled single images (they keep the reference UNet in memory) */
    cc.ref_if_paired = c->obj.kind == OBJ_KTO;
    struct stat st;
    if (stat(cache_path, &st) == 0 && cache_matches(cache_path, &cc) == 0) {
        mapo_log(1, "using the cache %s (it matches the models, data and settings)\n", cache_path);
    } else {
        if (stat(cache_path, &st) == 0)
            mapo_log(1, "rebuilding %s: %s\n", cache_path, mapo_last_error());
        if (cache_build(&cc)) return -1;
    }
    *pairs_path = cache_path;
    return 0;
}

/* Diffusion-DPO's / -KTO's reference: with LoRA the same UNet with adapters off (as diffusers'
   Diffusion-DPO LoRA example); else cached reference errors when they fit this run (seed, reference,
   enough epochs), else a second, frozen UNet. */
static int run_reference(run *r, const char *pairs_path) {
    const train_config *c = r->c;
    const int refd = c->obj.kind == OBJ_DPO || c->obj.kind == OBJ_KTO; /* with a reference */
    r->ref_is_self = refd && c->lora_rank > 0;
    if (r->ref_is_self && c->ref_dir)
        return mapo_error("--ref_model cannot be used with --lora_rank: the reference is the "
                          "UNet with its adapters switched off");
    if (!refd || r->ref_is_self) return 0;
    const char *rd = c->ref_dir ? c->ref_dir : c->model_dir;
    if (r->pf.ref_errors) {
        char want[32], seed[32];
        const char *have = st_meta(&r->pf.f, "ref_fingerprint"), *hs = st_meta(&r->pf.f, "seed");
        snprintf(seed, sizeof seed, "%lld", (long long)c->seed);
        int64_t need = (c->max_train_steps * c->train_batch_size * c->grad_accum + r->pf.N - 1) /
                       r->pf.N;
        if (unet_dir_fingerprint(rd, want, sizeof want) == 0 && have && !strcmp(have, want) &&
            hs && !strcmp(hs, seed) && r->pf.ref_epochs >= need) {
            r->cached_ref = r->pf.ref_errors;
            mapo_log(1, "Diffusion-DPO reference errors come from %s (%lld epochs): no "
                        "reference UNet in memory\n", pairs_path, (long long)r->pf.ref_epochs);
            return 0;
        }
        mapo_log(1, "the cached reference errors do not fit this run (reference, seed or "
                    "epochs differ): using the reference UNet\n");
    }
    if (unet_load_dir(&r->ref, rd, unet_frozen_mode(c->precision))) return -1;
    r->have_ref = 1;
    r->ref.precision = c->precision; /* autocast covers the reference pass too */
    if (r->ref.params.total != r->u.params.total)
        return mapo_error("%s: the reference UNet differs in shape from the trained one", rd);
    return 0;
}

/* The batch buffers and the optimizer moments. */
static void run_buffers(run *r) {
    const int Bp = (int)r->c->train_batch_size, n = r->halves * Bp;
    const pair_file *pf = &r->pf;
    r->tp = (param_table *)trained_params(&r->u);
    r->P = r->tp->total;
    if (r->c->use_8bit_adam) { /* bitsandbytes' AdamW8bit: tensors below 4096 stay float32 */
        adamw8_init(&r->s8, r->tp);
        r->opt.s8 = &r->s8;
    } else {
        r->opt.m = xcalloc(r->P, sizeof(float));
        r->opt.v = xcalloc(r->P, sizeof(float));
    }
    batch_buf *b = &r->b;
    b->s.Bp = Bp;
    b->ref_cached = r->cached_ref;
    b->ref_err = xmalloc(2 * Bp * sizeof(double));
    if (r->tcfg.obj.unpaired && r->c->obj.kind == OBJ_KTO) {
        /* zeroed, at least 2: the memory-plan probe runs a batch of 2 before the first fill */
        b->labels = xcalloc((size_t)(Bp > 2 ? Bp : 2), 1);
        r->tcfg.obj.labels = b->labels;
    }
    b->s.chw = (int64_t)pf->C * pf->H * pf->W;
    b->s.sample = xmalloc(n * b->s.chw * sizeof(float));
    b->s.target = xmalloc(n * b->s.chw * sizeof(float));
    b->s.eps = xmalloc(b->s.chw * sizeof(float));
    b->s.x0 = xmalloc(b->s.chw * sizeof(float));
    b->s.timestep = xmalloc(n * sizeof(float));
    /* zeroed: the memory-plan probe runs the model on these rows before the first batch */
    b->s.ehs = xcalloc((size_t)n * pf->S * pf->D, sizeof(float));
    if (pair_file_has(pf, PF_TEXT_EMBEDS)) {
        b->s.text_embeds = xcalloc((size_t)n * pf->P, sizeof(float));
        b->s.time_ids = xcalloc((size_t)n * 6, sizeof(float));
    }
    r->in.sample = b->s.sample;
    r->in.timesteps = b->s.timestep;
    r->in.ehs = b->s.ehs;
    r->in.text_embeds = b->s.text_embeds;
    r->in.time_ids = b->s.time_ids;
    epoch_order_init(&r->ord, pf->N);
    r->err = xmalloc(n * sizeof(double));
    r->ref_err = xmalloc(n * sizeof(double));
}

/* Schedule, UNet (+ LoRA), pair file (checked against the UNet), reference, buffers. */
static int run_open(run *r, const char *pairs_path) {
    const train_config *c = r->c;
    if (ddpm_from_model_dir(&r->sch, c->model_dir)) return -1;
    r->have_sch = 1;
    /* trained whole, or frozen under LoRA adapters */
    const int mode = c->lora_rank == 0 ? 1 : unet_frozen_mode(c->precision);
    if (unet_load_dir(&r->u, c->model_dir, mode)) return -1;
    r->have_u = 1;
    r->u.precision = c->precision;
    r->u.grad_ckpt = c->gradient_checkpointing;
    r->u.recompute_norms = c->recompute_norms;
    if (c->lora_rank && unet_lora_add(&r->u, c->lora_rank, (uint64_t)c->seed)) return -1;
    if (pair_file_open(&r->pf, pairs_path, &r->u.cfg)) return -1;
    r->have_pf = 1;
    r->tcfg = *c;
    r->tcfg.obj.num_train_timesteps = r->sch.num_train_timesteps;
    r->tcfg.obj.unpaired = !pair_file_has(&r->pf, PF_REJECTED);
    if (r->tcfg.obj.unpaired && c->obj.kind == OBJ_KTO && !r->pf.labels)
        return mapo_error("%s holds single images without labels: --loss kto needs each image "
                          "labelled desirable or not (a manifest's \"label\": 1 / 0)", pairs_path);
    if (r->tcfg.obj.unpaired && c->obj.kind != OBJ_SFT && c->obj.kind != OBJ_KTO)
        return mapo_error("%s holds single images (no 'rejected'): only --loss sft (plain "
                          "denoising) or --loss kto (with labels) trains on it", pairs_path);
    r->halves = r->tcfg.obj.unpaired ? 1 : 2;
    unet_inputs *in = &r->in;
    in->B = r->halves * (int)c->train_batch_size;
    in->H = r->pf.H;
    in->W = r->pf.W;
    in->S = r->pf.S;
    in->P = r->pf.P;
    /* for the shape check, which asks only whether they are given; the batch buffers follow */
    static const float given = 0;
    in->text_embeds = pair_file_has(&r->pf, PF_TEXT_EMBEDS) ? &given : NULL;
    in->time_ids = pair_file_has(&r->pf, PF_TIME_IDS) ? &given : NULL;
    if (unet_check_inputs(&r->u, in)) return mapo_error_prefix("%s", c->dataset);
    if (run_reference(r, pairs_path)) return -1;
    run_buffers(r);
    return 0;
}

static void run_close(run *r) {
    batch_buf *b = &r->b;
    free(r->err);
    free(r->ref_err);
    epoch_order_free(&r->ord);
    free(b->s.sample);
    free(b->s.target);
    free(b->s.eps);
    free(b->s.x0);
    free(b->s.timestep);
    free(b->s.ehs);
    free(b->s.text_embeds);
    free(b->s.time_ids);
    free(b->ref_err);
    free(b->labels);
    free(r->opt.m);
    free(r->opt.v);
    if (r->opt.s8) adamw8_free(&r->s8);
    if (r->have_ref) unet_free(&r->ref);
    if (r->have_pf) pair_file_close(&r->pf);
    if (r->have_u) unet_free(&r->u);
    if (r->have_sch) ddpm_free(&r->sch);
}

/* The memory plan, printed; -1 when it exceeds what is available (unless --no_memory_check). */
static int run_memory_plan(run *r) {
    const train_config *c = r->c;
    const double MiB = 1048576.0;
    const int n = r->halves * (int)c->train_batch_size;
    double w = (double)params_bytes(&r->u.params);
    double rf = r->have_ref ? (double)params_bytes(&r->ref.params) : 0;
    /* gradients + AdamW moments (8-bit: about a quarter) */
    double opt = (double)r->P * 4 + (r->opt.s8 ? (double)adamw8_bytes(r->opt.s8)
                                                : (double)r->P * 4 * 2);
    double act = probe_activations(&r->u, &r->in, &r->b, r->pf.C, (int)c->train_batch_size,
                                   (int)r->u.cfg.n_blocks, &r->tcfg.obj,
                                   r->have_ref || r->ref_is_self || r->cached_ref);
    double bufs = (double)n * r->b.s.chw * 4 * 2 + (double)n * r->pf.S * r->pf.D * 4;
    double total = w + rf + opt + act + bufs, avail = mem_available();
    if (c->max_memory_mb > 0) avail = (double)c->max_memory_mb * 1048576.0;
    char refs[64] = "";
    if (r->have_ref) snprintf(refs, sizeof refs, ", reference UNet %.0f MiB", rf / MiB);
    mapo_log(1, "memory plan: weights %.0f MiB, gradients + AdamW%s %.0f MiB%s, activations "
                "%.0f MiB (measured on a reduced batch, scaled), batch %.0f MiB: %.0f MiB of "
                "%.0f MiB available\n",
             w / MiB, r->opt.s8 ? " 8-bit" : "", opt / MiB, refs, act / MiB, bufs / MiB,
             total / MiB, avail / MiB);
    if (avail > 0 && total > avail && !c->no_memory_check) {
        /* the memory switches this run does not use yet, the largest saving first
           (--recompute_norms gains nothing beside checkpointing: docs/BENCHMARKS.md) */
        const int ck = c->gradient_checkpointing;
        const char *sw[3] = {ck ? NULL : "--gradient_checkpointing",
                             c->precision ? NULL : "--mixed_precision bf16",
                             ck || c->recompute_norms ? NULL : "--recompute_norms"};
        char more[160] = "";
        size_t k = 0;
        for (int i = 0; i < 3 && k < sizeof more; i++)
            if (sw[i])
                k += (size_t)snprintf(more + k, sizeof more - k, "%s%s, ", k ? "" : "add ", sw[i]);
        return mapo_error("this run needs about %.2f GiB but %.2f GiB are available: %slower "
                          "--train_batch_size (use --gradient_accumulation_steps), train with "
                          "--lora_rank, or pass --no_memory_check to try anyway",
                          total / 1073741824.0, avail / 1073741824.0, more);
    }
    return 0;
}

/* One optimizer step (step -> step + 1): grad_accum micro-batches of the objective, gradient
   clipping, AdamW; the report's loss statistics are averaged over the micro-batches. */
static int run_step(run *r, int64_t step, step_report *rep) {
    const train_config *c = r->c;
    const int Bp = (int)c->train_batch_size;
    const double w = 1.0 / (double)c->grad_accum;
    objective_stats acc = {0};
    for (int64_t micro = 0; micro < c->grad_accum; micro++) {
        int64_t first = (step * c->grad_accum + micro) * Bp;
        fill_batch(&r->b, &r->pf, &r->sch, &r->ord, (uint64_t)c->seed, first,
                   c->label_noise_prob);
        if (r->have_ref || r->ref_is_self)
            dpo_reference_errors(&r->u, r->have_ref ? &r->ref : NULL, &r->in, r->b.s.target,
                                 r->ref_err);
        const double *ref = r->cached_ref ? r->b.ref_err
                            : r->have_ref || r->ref_is_self ? r->ref_err : NULL;
        objective_stats st;
        size_t ap = 0;
        if (preference_step(&r->u, &r->in, r->b.s.target, &r->tcfg.obj, ref, w, r->err, &st,
                            NULL, &ap))
            return mapo_error_prefix("step %lld", (long long)step + 1);
        if (ap > r->act_peak) r->act_peak = ap;
        acc.loss += w * st.loss;
        acc.err_w += w * st.err_w;
        acc.err_l += w * st.err_l;
        acc.margin += w * st.margin;
        acc.win_score += w * st.win_score;
        acc.lose_score += w * st.lose_score;
        acc.implicit_acc += w * st.implicit_acc;
    }
    const double gnorm = sqrt(c->precision == MAPO_F32 ? grad_sq_norm(r->tp->grad, r->P)
                                                       : grad_sq_norm_lanes(r->tp->grad, r->P));
    const float gcoef = c->max_grad_norm > 0 ? clip_grad_coef(gnorm, c->max_grad_norm) : 1.0f;
    if (!isfinite(gnorm))
        return mapo_error("step %lld: gradient norm is not finite; nothing of this step was "
                          "applied (try a lower --learning_rate)", (long long)step + 1);
    double lr = c->learning_rate * lr_lambda_ex(c->sched, step, c->warmup, c->max_train_steps,
                                                (int)c->lr_num_cycles, c->lr_power,
                                                c->learning_rate);
    if (r->opt.s8) {
        grad_scale(r->tp->grad, r->P, gcoef);
        adamw8_step(r->opt.s8, r->tp->data, r->tp->grad, step + 1, lr, &c->adam);
        params_zero_grad(r->tp);
    } else {
        adamw_step_clip_zero(r->tp->data, r->tp->grad, r->opt.m, r->opt.v, r->P, step + 1, lr,
                             &c->adam, gcoef);
    }
    rep->step = step + 1;
    rep->st = acc;
    rep->grad_norm = gnorm;
    rep->lr = lr;
    return 0;
}

/* The steps from *step to max_train_steps (or a stop), each reported to the watchers. */
static int run_loop(run *r, watcher **ws, int nw, run_view *view, int64_t *step, run_end *how) {
    const train_config *c = r->c;
    *how = RUN_DONE;
    view->t0 = mapo_now();
    while (*step < c->max_train_steps) {
        if (mapo_interrupted()) {
            *how = RUN_SIGNAL;
            return 0;
        }
        if (c->stop_after > 0 && *step - view->step0 >= c->stop_after) {
            mapo_log(1, "stopping after %lld steps as asked (--stop_after_steps); resume with "
                        "--resume_from_checkpoint latest\n", (long long)(*step - view->step0));
            *how = RUN_STOPPED;
            return 0;
        }
        step_report rep;
        if (run_step(r, *step, &rep)) return -1;
        *step = rep.step;
        const double el = mapo_now() - view->t0, done = (double)(*step - view->step0);
        rep.pairs_per_s = done * c->train_batch_size * c->grad_accum / (el > 0 ? el : 1e-9);
        rep.eta_s = (double)(c->max_train_steps - *step) * el / done;
        rep.rss = mapo_rss();
        if (watchers_step(ws, nw, view, &rep)) return -1;
    }
    return 0;
}

/* --num_train_epochs without --max_train_steps: as the official script, epochs x
   ceil(ceil(N / batch) / accumulation) optimizer steps */
static int64_t steps_from_epochs(const train_config *c, int64_t N) {
    const int64_t batches = (N + c->train_batch_size - 1) / c->train_batch_size;
    return c->num_train_epochs * ((batches + c->grad_accum - 1) / c->grad_accum);
}

int train_run(const train_config *given) {
    train_config cfg = *given; /* max_train_steps may come from the epochs once N is known */
    const train_config *c = &cfg;
    if (check_config(c)) return -1;
    char cache_path[4200];
    const char *pairs_path;
    if (run_data(c, cache_path, sizeof cache_path, &pairs_path)) return -1;
    run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    int rc = run_open(&r, pairs_path);
    if (!rc && cfg.max_train_steps == 0) {
        cfg.max_train_steps = steps_from_epochs(c, r.pf.N);
        mapo_log(1, "%lld epochs of %lld pairs: %lld optimizer steps\n",
                 (long long)c->num_train_epochs, (long long)r.pf.N,
                 (long long)cfg.max_train_steps);
    }
    int64_t step = 0;
    if (!rc && c->resume) rc = ckpt_load(c, &r.u, &r.opt, &step);
    if (!rc) {
        mapo_log(1, "mapo train: %s, %zu trained parameters%s; %lld pairs of %dx%dx%d; loss %s; "
                    "batch %d x %lld accumulation\n",
                 c->model_dir, r.P, c->lora_rank ? " (LoRA adapters)" : "", (long long)r.pf.N,
                 r.pf.C, r.pf.H, r.pf.W, objective_name(c->obj.kind), (int)c->train_batch_size,
                 (long long)c->grad_accum);
        rc = run_memory_plan(&r);
    }
    /* the first write of the run: everything a bad input can be refused for was checked above,
       so a refused run leaves the disk as it found it. One live run per folder (lock.h); the
       checkpoint read above is complete whatever another run does (renamed into place) */
    if (!rc) rc = mapo_lock_dir(c->output_dir); /* creates it */
    watcher *ws[8];
    int nw = 0;
    char logp[4200];
    snprintf(logp, sizeof logp, "%s/train_log.jsonl", c->output_dir);
    if (!rc) {
        ckpt_remove_stale(c->output_dir);
        /* a resumed run continues the log after the checkpoint's step */
        rc = step > 0 ? run_log_truncate(logp, step) : 0;
    }
    if (!rc && !(ws[nw++] = watch_jsonl(logp, step > 0))) {
        nw--;
        rc = -1;
    }
    struct tfevents_writer *tb = NULL;
    if (!rc && c->tensorboard_dir && !(ws[nw++] = watch_tensorboard(c->tensorboard_dir, &tb))) {
        nw--;
        rc = -1;
    }
    if (!rc) {
        ws[nw++] = watch_progress();
        ws[nw++] = watch_checkpoints();
        ws[nw++] = watch_final_model();
        /* after the saves: the final model is on disk before validation looks at it, as in
           the official script */
        if (c->validation_steps > 0 && !(ws[nw++] = watch_validation(c, &r.u, step, tb))) {
            nw--;
            rc = -1;
        }
    }
    if (!rc) {
        mapo_log(1, "noise schedule: T=%d, %s target\n", r.sch.num_train_timesteps,
                 r.sch.pred == PRED_V ? "v_prediction" : "epsilon");
        run_view view = {c, &r.u, &r.opt, step, 0};
        run_end how;
        mapo_interrupt_arm(); /* SIGINT / SIGTERM: stop at the next step boundary */
        rc = run_loop(&r, ws, nw, &view, &step, &how);
        if (!rc) rc = watchers_end(ws, nw, &view, step, how);
        mapo_interrupt_disarm();
        if (!rc && how == RUN_DONE)
            mapo_log(1, "peak activations %.1f MiB per micro-batch; the engine's workspaces "
                        "%.1f MiB\n",
                     r.act_peak / 1048576.0, mapo_engine_workspace_bytes() / 1048576.0);
    }
    watchers_free(ws, nw);
    run_close(&r);
    return rc;
}
