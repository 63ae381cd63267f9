/* generate.c -- see generate.h. */
#include "mapo/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/rng.h"
#include "mapo/sampler.h"

enum { STREAM_LATENTS = 0x5a3 };

void gen_config_default(gen_config *g) {
    memset(g, 0, sizeof *g);
    g->sampler = "euler";
    g->steps = 30;
    g->guidance_scale = 7.5;
    g->tiled_decode = -1;
}

void images_to_u8(uint8_t *out, const float *in, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = in[i] * 255.0f;
        v = v < 0 ? 0 : v > 255 ? 255 : v;
        out[i] = (uint8_t)nearbyintf(v); /* numpy round: half to even */
    }
}

/* one image: x [C,h,w] in place through the whole loop */
static int denoise(pipeline *p, const gen_config *g, sampler *s, float *x, const float *cond,
                   const float *uncond, const float *pc, const float *pu, int h, int w) {
    unet *u = &p->unet;
    const int C = u->cfg.in_channels, S = p->S, D = p->D, P = p->P;
    const int cfg = g->guidance_scale > 1.0;
    const int B = cfg ? 2 : 1;
    const int64_t chw = (int64_t)C * h * w;
    float *xin = xmalloc(B * chw * sizeof(float)), *eps = xmalloc(chw * sizeof(float));
    float *ehs = xmalloc((size_t)B * S * D * sizeof(float)), ts[2];
    float *te = P ? xmalloc((size_t)B * P * sizeof(float)) : NULL, tid[12];
    /* batch order as the pipelines: [uncond, cond] */
    if (cfg) memcpy(ehs, uncond, (size_t)S * D * sizeof(float));
    memcpy(ehs + (size_t)(B - 1) * S * D, cond, (size_t)S * D * sizeof(float));
    if (P) {
        if (cfg) memcpy(te, pu, P * sizeof(float));
        memcpy(te + (size_t)(B - 1) * P, pc, P * sizeof(float));
        for (int b = 0; b < B; b++)
            pipeline_time_ids(tid + 6 * b, g->height, g->width, 0, 0, g->height, g->width);
    }
    unet_inputs in = {B, h, w, xin, ts, ehs, S, te, P, P ? tid : NULL};
    int rc = unet_check_inputs(u, &in);
    const int T = sampler_num_steps(s);
    for (int i = 0; i < T && !rc; i++) {
        for (int b = 0; b < B; b++) {
            sampler_scale_model_input(s, i, xin + b * chw, x, chw);
            ts[b] = (float)sampler_timestep(s, i);
        }
        graph gr;
        graph_init(&gr, 0);
        tensor *y = unet_forward(u, &gr, &in);
        if (cfg) cfg_combine(eps, y->data, y->data + chw, g->guidance_scale, chw);
        else memcpy(eps, y->data, chw * sizeof(float));
        graph_free(&gr);
        rc = sampler_step(s, i, x, eps, NULL, chw);
        if (!g->quiet) mapo_log(1, "\r  step %d/%d", i + 1, T);
    }
    if (!g->quiet) mapo_log(1, "\n");
    for (int64_t k = 0; k < chw && !rc; k++)
        if (!isfinite(x[k])) rc = mapo_error("sampling produced a non-finite latent (step output)");
    free(xin);
    free(eps);
    free(ehs);
    free(te);
    return rc;
}

int generate_images(pipeline *p, const gen_config *g, const char *const *prompts,
                    const char *const *negative, int n, const float *init_latents, float *images) {
    if (!p->have_unet || !p->vae || !p->te[0])
        return mapo_error("sampling needs the pipeline's unet, vae and text encoders");
    const int f = vae_downscale(p->vae), ub = 1 << (p->unet.cfg.n_blocks - 1);
    if (g->height <= 0 || g->width <= 0 || g->height % (f * ub) || g->width % (f * ub))
        return mapo_error("--height and --width must be positive multiples of %d for this "
                          "pipeline (got %dx%d)", f * ub, g->height, g->width);
    if (g->steps < 1 || g->steps > 1000) return mapo_error("--num_inference_steps must be in 1..1000");
    if (!(g->guidance_scale >= 0) || !isfinite(g->guidance_scale))
        return mapo_error("--guidance_scale must be a finite number >= 0");
    char q[4200];
    snprintf(q, sizeof q, "%s/scheduler/scheduler_config.json", p->dir);
    sampler *s;
    if (sampler_create(&s, q, g->sampler, g->steps)) return -1;
    const int h = g->height / f, w = g->width / f, C = p->unet.cfg.in_channels;
    const int S = p->S, D = p->D, P = p->P;
    const int64_t chw = (int64_t)C * h * w;
    float *cond = xmalloc((size_t)n * S * D * sizeof(float));
    float *unc = xcalloc((size_t)n * S * D, sizeof(float));
    float *pc = P ? xmalloc((size_t)n * P * sizeof(float)) : NULL;
    float *pu = P ? xcalloc((size_t)n * P, sizeof(float)) : NULL;
    float *x = xmalloc(chw * sizeof(float));
    float *img = xmalloc((size_t)3 * g->height * g->width * sizeof(float));
    int rc = pipeline_encode_prompts(p, prompts, n, cond, pc);
    if (!rc && g->guidance_scale > 1.0) {
        /* negative conditioning per prompt: zeros (SDXL, none given) or the encoded text */
        for (int i = 0; i < n && !rc; i++) {
            if (!negative[i] && p->force_zeros_for_empty_prompt) continue; /* stays 0 */
            const char *t = negative[i] ? negative[i] : "";
            rc = pipeline_encode_prompts(p, &t, 1, unc + (size_t)i * S * D,
                                         P ? pu + (size_t)i * P : NULL);
        }
    }
    int tiled = g->tiled_decode;
    if (tiled < 0) tiled = g->height > vae_sample_size(p->vae) || g->width > vae_sample_size(p->vae);
    for (int i = 0; i < n && !rc; i++) {
        if (init_latents) {
            memcpy(x, init_latents + i * chw, chw * sizeof(float));
        } else {
            philox r;
            philox_init(&r, g->seed, STREAM_LATENTS, (uint64_t)i);
            philox_fill_normal(&r, x, chw);
        }
        sampler_init_noise(s, x, chw);
        if (!g->quiet) mapo_log(1, "image %d/%d: %s\n", i + 1, n, prompts[i]);
        rc = denoise(p, g, s, x, cond + (size_t)i * S * D, unc + (size_t)i * S * D,
                     P ? pc + (size_t)i * P : NULL, P ? pu + (size_t)i * P : NULL, h, w);
        if (!rc) rc = vae_decode_latents(p->vae, x, 1, h, w, img, tiled);
        if (rc) break;
        /* (x / 2 + 0.5).clamp(0, 1), CHW -> HWC */
        const int64_t hw = (int64_t)g->height * g->width;
        float *o = images + (size_t)i * hw * 3;
        for (int64_t k = 0; k < hw; k++)
            for (int c = 0; c < 3; c++) {
                float v = img[c * hw + k] / 2.0f + 0.5f;
                o[k * 3 + c] = v < 0 ? 0 : v > 1 ? 1 : v;
            }
    }
    free(cond);
    free(unc);
    free(pc);
    free(pu);
    free(x);
    free(img);
    sampler_free(s);
    return rc;
}
