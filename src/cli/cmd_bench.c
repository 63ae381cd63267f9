/* cmd_bench.c -- mapo bench (time the training step) and mapo make-pairs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/ddpm.h"
#include "mapo/ops.h"
#include "mapo/optim.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"

#include <omp.h>

/* Fill a synthetic batch: noisy samples, eps targets, timesteps shared within pairs. */
static void synth_batch(const unet_config *c, int pairs, int H, int W, int S, int P,
                        uint64_t seed, float *sample, float *target, float *ts, float *ehs,
                        float *te, float *tid) {
    philox r;
    philox_init(&r, seed, 7, 0);
    int64_t chw = (int64_t)c->in_channels * H * W;
    philox_fill_normal(&r, sample, 2 * pairs * chw);
    philox_fill_normal(&r, target, 2 * pairs * chw);
    for (int j = 0; j < pairs; j++) {
        ts[j] = ts[j + pairs] = (float)philox_below(&r, 1000);
        philox_fill_normal(&r, ehs + (int64_t)j * S * c->cross_dim, (int64_t)S * c->cross_dim);
        memcpy(ehs + (int64_t)(j + pairs) * S * c->cross_dim, ehs + (int64_t)j * S * c->cross_dim,
               (size_t)S * c->cross_dim * sizeof(float));
        if (te) {
            philox_fill_normal(&r, te + (int64_t)j * P, P);
            memcpy(te + (int64_t)(j + pairs) * P, te + (int64_t)j * P, P * sizeof(float));
            float ids[6] = {(float)(8 * H), (float)(8 * W), 0, 0, (float)(8 * H), (float)(8 * W)};
            memcpy(tid + j * 6, ids, sizeof ids);
            memcpy(tid + (j + pairs) * 6, ids, sizeof ids);
        }
    }
}

int cmd_bench(int argc, char **argv) {
    const char *config = "bench/bench_unet.json", *loss = "mapo";
    int64_t pairs = 2, res = 32, seq = 77, steps = 5, warm = 2, lora = 0, probe = 1;
    const char *mixed = NULL;
    int grad_ckpt = 0, recompute_norms = 0;
    const double rss_base = mapo_rss(); /* before the model: what the loaded binary holds */
    opt_def o[] = {
        {"config", OPT_STR, &config, "UNet config.json (bench/bench_unet.json)", 0},
        {"pairs", OPT_INT, &pairs, "pairs per step (2)", 0},
        {"res", OPT_INT, &res, "latent resolution (32)", 0},
        {"seq", OPT_INT, &seq, "text tokens (77)", 0},
        {"steps", OPT_INT, &steps, "timed steps (5)", 0},
        {"warmup", OPT_INT, &warm, "untimed steps first (2)", 0},
        {"loss", OPT_STR, &loss, "mapo | dpo | sft (mapo)", 0},
        {"lora_rank", OPT_INT, &lora, "train LoRA adapters of this rank only (0: full)", 0},
        {"mixed_precision", OPT_STR, &mixed, "no | bf16 | fp16 (no; fp16 runs as bf16)", 0},
        {"gradient_checkpointing", OPT_FLAG, &grad_ckpt, "recompute blocks in backward", 0},
        {"recompute_norms", OPT_FLAG, &recompute_norms,
         "recompute LayerNorm and GroupNorm + SiLU outputs in backward", 0},
        {"gemm_probe", OPT_INT, &probe, "1: time the engine's GEMM ceiling (n = 1024) after the "
                                        "steps, 0: skip (1)", 0},
    };
    int r = args_parse(o, 12, argc, argv, 2,
                       "usage: mapo bench [--config F] [--pairs N] [--res N] [--seq N] "
                       "[--steps N] [--warmup N] [--loss mapo|dpo|sft] [--lora_rank R] "
                       "[--mixed_precision no|bf16|fp16] [--gradient_checkpointing] "
                       "[--recompute_norms]\n"
                       "Times full training steps (forward, objective, backward, clip, AdamW) "
                       "of a random-initialised UNet and prints one JSON line.");
    if (r) return r > 0 ? 0 : -1;
    if (pairs < 1 || res < 1 || seq < 1 || steps < 1 || warm < 0)
        return mapo_error("bench: --pairs, --res, --seq and --steps must be >= 1, --warmup >= 0");
    int precision;
    if (mixed_precision_parse(mixed, &precision)) return -1;
    objective_cfg oc;
    objective_cfg_default(&oc);
    if (objective_parse(loss, &oc.kind)) return -1;
    unet u, ref;
    if (lora < 0 || lora > 4096) return mapo_error("--lora_rank must be in 0..4096");
    /* as mapo train: the UNet under LoRA, DPO's reference */
    const int frozen = unet_frozen_mode(precision);
    if (unet_init_dir(&u, config, 1, lora == 0 ? 1 : frozen)) return -1;
    if (lora && unet_lora_add(&u, (int)lora, 1)) return -1;
    u.precision = precision;
    u.grad_ckpt = grad_ckpt;
    u.recompute_norms = recompute_norms;
    param_table *tp = lora ? &u.lora : &u.params;
    /* DPO's reference: a second UNet, or with LoRA the same one with adapters off */
    const int refd = oc.kind == OBJ_DPO || oc.kind == OBJ_KTO; /* objectives with a reference */
    int have_ref = refd && !lora, self_ref = refd && lora;
    if (have_ref && unet_init_dir(&ref, config, 1, frozen)) return -1;
    ref.precision = precision;
    const int n = 2 * (int)pairs, H = (int)res, W = (int)res, S = (int)seq;
    const int P = u.cfg.text_time ? u.cfg.proj_class_dim - 6 * u.cfg.add_time_dim : 0;
    int64_t chw = (int64_t)u.cfg.in_channels * H * W;
    float *sample = xmalloc(n * chw * 4), *target = xmalloc(n * chw * 4), *ts = xmalloc(n * 4);
    float *ehs = xmalloc((size_t)n * S * u.cfg.cross_dim * 4);
    float *te = P ? xmalloc((size_t)n * P * 4) : NULL, *tid = P ? xmalloc(n * 6 * 4) : NULL;
    synth_batch(&u.cfg, (int)pairs, H, W, S, P, 1, sample, target, ts, ehs, te, tid);
    unet_inputs in = {n, H, W, sample, ts, ehs, S, te, P, tid};
    if (unet_check_inputs(&u, &in)) return -1;
    float *m = xcalloc(tp->total, 4), *v = xcalloc(tp->total, 4);
    adamw_config ac = {0.9, 0.999, 1e-8, 1e-2};
    double *err = xmalloc(n * sizeof(double)), *rerr = xmalloc(n * sizeof(double));
    objective_stats st = {0};
    size_t act = 0;
    double t0 = 0;
    for (int64_t s = 0; s < warm + steps; s++) {
        if (s == warm) t0 = mapo_now();
        if (have_ref || self_ref)
            dpo_reference_errors(&u, have_ref ? &ref : NULL, &in, target, rerr);
        if (preference_step(&u, &in, target, &oc, have_ref || self_ref ? rerr : NULL, 1.0, err,
                            &st, NULL, &act))
            return -1;
        const double sq = precision == MAPO_F32 ? grad_sq_norm(tp->grad, tp->total)
                                                : grad_sq_norm_lanes(tp->grad, tp->total);
        const float gcoef = clip_grad_coef(sqrt(sq), 1.0);
        adamw_step_clip_zero(tp->data, tp->grad, m, v, tp->total, s + 1, 1e-5, &ac, gcoef);
    }
    double dt = (mapo_now() - t0) / (double)steps;
    double fwd = unet_forward_flops(&u, &in);
    double step_flop = 3 * fwd + (have_ref || self_ref ? fwd : 0);
    /* after the timed steps, so its buffers do not count in the training peak */
    const double peak = (double)mapo_peak_rss();
    const double ceiling = probe ? mapo_gemm_ceiling_gflops(precision, 1024, 5) : 0;
    printf("{\"impl\":\"mapo\",\"loss_type\":\"%s\",\"loss\":%.6g,\"pairs\":%lld,\"res\":%lld,"
           "\"precision\":\"%s\",\"gradient_checkpointing\":%d,\"recompute_norms\":%d,"
           "\"pairs_per_s\":%.4g,\"step_s\":%.4g,\"fwd_gflop\":%.4g,\"step_gflop\":%.4g,"
           "\"gflop_per_s\":%.4g,\"gemm_ceiling_gflops\":%.4g,\"peak_rss_mb\":%.1f,"
           "\"rss_base_mb\":%.1f,\"train_mem_mb\":%.1f,\"activation_peak_mb\":%.1f,"
           "\"params\":%zu,\"trained_params\":%zu,\"weight_bytes\":%zu,\"threads\":%d}\n",
           loss, st.loss, (long long)pairs, (long long)res, precision ? "bf16" : "f32", grad_ckpt,
           recompute_norms,
           pairs / dt, dt, fwd / 1e9, step_flop / 1e9, step_flop / dt / 1e9, ceiling,
           peak / 1048576.0, rss_base / 1048576.0, (peak - rss_base) / 1048576.0,
           act / 1048576.0, u.params.total, tp->total, params_bytes(&u.params),
           omp_get_max_threads());
    free(sample); free(target); free(ts); free(ehs); free(te); free(tid);
    free(m); free(v); free(err); free(rerr);
    if (have_ref) unet_free(&ref);
    unet_free(&u);
    return 0;
}

/* mapo make-pairs: a synthetic pair file shaped for a model. Chosen latents are smooth
   (low-frequency) patterns, rejected ones the same plus high-frequency noise, so a model can
   learn the preference. For demos, benchmarks and tests, not for real alignment. */
int cmd_make_pairs(int argc, char **argv) {
    const char *model = NULL, *out = NULL;
    int64_t N = 16, res = 16, seq = 8, seed = 0;
    opt_def o[] = {
        {"model", OPT_STR, &model, "UNet folder (to read channels, cross_attention_dim)", 0},
        {"out", OPT_STR, &out, "output pair file (.safetensors)", 0},
        {"n", OPT_INT, &N, "pairs (16)", 0},
        {"res", OPT_INT, &res, "latent resolution (16)", 0},
        {"seq", OPT_INT, &seq, "text tokens (8)", 0},
        {"seed", OPT_INT, &seed, "seed (0)", 0},
    };
    int r = args_parse(o, 6, argc, argv, 2,
                       "usage: mapo make-pairs --model DIR --out FILE [--n N] [--res N] "
                       "[--seq N] [--seed N]");
    if (r) return r > 0 ? 0 : -1;
    if (!model || !out) return mapo_error("make-pairs needs --model and --out");
    if (N < 1 || res < 1 || seq < 1) return mapo_error("make-pairs: --n, --res and --seq must be >= 1");
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", model);
    unet_config c;
    if (unet_config_load(&c, p)) {
        snprintf(p, sizeof p, "%s/unet/config.json", model);
        if (unet_config_load(&c, p)) return -1;
    }
    const int C = c.in_channels, H = (int)res, W = (int)res, D = c.cross_dim;
    const int P = c.text_time ? c.proj_class_dim - 6 * c.add_time_dim : 0;
    int64_t chw = (int64_t)C * H * W;
    float *ch = xmalloc(N * chw * 4), *rj = xmalloc(N * chw * 4);
    float *eh = xmalloc(N * seq * D * 4), *te = P ? xmalloc(N * P * 4) : NULL;
    float *tid = P ? xmalloc(N * 6 * 4) : NULL;
    philox rng;
    philox_init(&rng, (uint64_t)seed, 11, 0);
    for (int64_t i = 0; i < N; i++) {
        for (int k = 0; k < C; k++) {
            double fx = 1 + philox_uniform(&rng) * 2, fy = 1 + philox_uniform(&rng) * 2;
            double ph = philox_uniform(&rng) * 6.283;
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int64_t q = i * chw + (int64_t)k * H * W + y * W + x;
                    double sm = sin(fx * 6.283 * x / W + ph) * cos(fy * 6.283 * y / H);
                    ch[q] = (float)sm;
                    rj[q] = (float)(sm + 0.7 * philox_normal(&rng));
                }
        }
        philox_fill_normal(&rng, eh + i * seq * D, seq * D);
        if (P) {
            philox_fill_normal(&rng, te + i * P, P);
            float ids[6] = {(float)(8 * H), (float)(8 * W), 0, 0, (float)(8 * H), (float)(8 * W)};
            memcpy(tid + i * 6, ids, sizeof ids);
        }
    }
    st_writer *w = st_writer_new();
    st_writer_add(w, "chosen", ST_F32, 4, (int64_t[]){N, C, H, W}, ch);
    st_writer_add(w, "rejected", ST_F32, 4, (int64_t[]){N, C, H, W}, rj);
    st_writer_add(w, "encoder_hidden_states", ST_F32, 3, (int64_t[]){N, seq, D}, eh);
    if (P) {
        st_writer_add(w, "text_embeds", ST_F32, 2, (int64_t[]){N, P}, te);
        st_writer_add(w, "time_ids", ST_F32, 2, (int64_t[]){N, 6}, tid);
    }
    int rc = st_writer_write(w, out);
    st_writer_free(w);
    if (!rc) printf("%s: %lld synthetic pairs of %dx%dx%d\n", out, (long long)N, C, H, W);
    free(ch); free(rj); free(eh); free(te); free(tid);
    unet_config_free(&c);
    return rc;
}
