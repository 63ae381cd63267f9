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

/* nb images: x [nb,C,h,w] in place through the whole loop; cond / uncond [nb,S,D], pc / pu
   [nb,P]. The UNet sees one batch [uncond x nb, cond x nb] per step, as the pipelines do. */
static int denoise(pipeline *p, unet *u, const gen_config *g, sampler *s, float *x, int nb,
                   const float *cond, const float *uncond, const float *pc, const float *pu,
                   int h, int w) {
    const int C = u->cfg.in_channels, S = p->S, D = p->D, P = p->P;
    const int cfg = g->guidance_scale > 1.0;
    const int B = (cfg ? 2 : 1) * nb;
    const int64_t chw = (int64_t)C * h * w, sd = (int64_t)S * D;
    float *xin = xmalloc(B * chw * sizeof(float)), *eps = xmalloc(nb * chw * sizeof(float));
    float *ehs = xmalloc((size_t)B * sd * sizeof(float));
    float *ts = xmalloc(B * sizeof(float));
    float *te = P ? xmalloc((size_t)B * P * sizeof(float)) : NULL;
    float *tid = P ? xmalloc((size_t)B * 6 * sizeof(float)) : NULL;
    if (cfg) memcpy(ehs, uncond, (size_t)nb * sd * sizeof(float));
    memcpy(ehs + (size_t)(B - nb) * sd, cond, (size_t)nb * sd * sizeof(float));
    if (P) {
        if (cfg) memcpy(te, pu, (size_t)nb * P * sizeof(float));
        memcpy(te + (size_t)(B - nb) * P, pc, (size_t)nb * P * sizeof(float));
        for (int b = 0; b < B; b++)
            pipeline_time_ids(tid + 6 * b, g->height, g->width, 0, 0, g->height, g->width);
    }
    unet_inputs in = {B, h, w, xin, ts, ehs, S, te, P, tid};
    int rc = unet_check_inputs(u, &in);
    const int T = sampler_num_steps(s);
    for (int i = 0; i < T && !rc; i++) {
        for (int b = 0; b < B; b++) {
            sampler_scale_model_input(s, i, xin + b * chw, x + (b % nb) * chw, chw);
            ts[b] = (float)sampler_timestep(s, i);
        }
        graph gr;
        graph_init(&gr, 0);
        tensor *y = unet_forward(u, &gr, &in);
        if (cfg) cfg_combine(eps, y->data, y->data + nb * chw, g->guidance_scale, nb * chw);
        else memcpy(eps, y->data, nb * chw * sizeof(float));
        graph_free(&gr);
        rc = sampler_step(s, i, x, eps, NULL, nb * chw);
        if (!g->quiet) mapo_log(1, "\r  step %d/%d", i + 1, T);
    }
    if (!g->quiet) mapo_log(1, "\n");
    for (int64_t k = 0; k < nb * chw && !rc; k++)
        if (!isfinite(x[k])) rc = mapo_error("sampling produced a non-finite latent (step output)");
    free(xin);
    free(eps);
    free(ehs);
    free(ts);
    free(te);
    free(tid);
    return rc;
}

int generate_encode(pipeline *p, const char *const *prompts, const char *const *negative,
                    int n, double guidance_scale, gen_cond *c) {
    memset(c, 0, sizeof *c);
    if (!p->te[0]) return mapo_error("encoding prompts needs the pipeline's text encoders");
    const int S = p->S, D = p->D, P = p->P;
    c->n = n;
    c->cond = xmalloc((size_t)n * S * D * sizeof(float));
    c->uncond = xcalloc((size_t)n * S * D, sizeof(float));
    c->pc = P ? xmalloc((size_t)n * P * sizeof(float)) : NULL;
    c->pu = P ? xcalloc((size_t)n * P, sizeof(float)) : NULL;
    int rc = pipeline_encode_prompts(p, prompts, n, c->cond, c->pc);
    if (!rc && guidance_scale > 1.0) {
        /* negative conditioning per prompt: zeros (SDXL, none given) or the encoded text */
        for (int i = 0; i < n && !rc; i++) {
            if ((!negative || !negative[i]) && p->force_zeros_for_empty_prompt) continue;
            const char *t = negative && negative[i] ? negative[i] : "";
            rc = pipeline_encode_prompts(p, &t, 1, c->uncond + (size_t)i * S * D,
                                         P ? c->pu + (size_t)i * P : NULL);
        }
    }
    if (rc) gen_cond_free(c);
    return rc;
}

void gen_cond_free(gen_cond *c) {
    free(c->cond);
    free(c->uncond);
    free(c->pc);
    free(c->pu);
    memset(c, 0, sizeof *c);
}

int generate_images(pipeline *p, const gen_config *g, const char *const *prompts,
                    const char *const *negative, int n, const float *init_latents, float *images) {
    if (!p->have_unet || (!p->vae && !p->pixel) || !p->te[0])
        return mapo_error("sampling needs the pipeline's unet, vae and text encoders");
    gen_cond c;
    if (generate_encode(p, prompts, negative, n, g->guidance_scale, &c)) return -1;
    if (!g->quiet)
        for (int i = 0; i < n; i++) mapo_log(2, "prompt %d/%d: %s\n", i + 1, n, prompts[i]);
    int rc = generate_with(p, &p->unet, g, &c, init_latents, images);
    gen_cond_free(&c);
    return rc;
}

int generate_with(pipeline *p, unet *u, const gen_config *g, const gen_cond *c,
                  const float *init_latents, float *images) {
    if ((!p->vae && !p->pixel) || !u) return mapo_error("sampling needs a UNet and the pipeline's vae");
    const int n = c->n;
    const int f = pipeline_downscale(p), ub = 1 << (u->cfg.n_blocks - 1);
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
    const int h = g->height / f, w = g->width / f, C = u->cfg.in_channels;
    const int S = p->S, D = p->D, P = p->P;
    const int64_t chw = (int64_t)C * h * w;
    float *img = xmalloc((size_t)3 * g->height * g->width * sizeof(float));
    int rc = 0;
    int tiled = g->tiled_decode;
    if (tiled < 0 && p->vae)
        tiled = g->height > vae_sample_size(p->vae) || g->width > vae_sample_size(p->vae);
    const int nbmax = g->batch > 1 ? g->batch : 1;
    float *xb = xmalloc((size_t)nbmax * chw * sizeof(float));
    for (int i0 = 0; i0 < n && !rc; i0 += nbmax) {
        const int nb = n - i0 < nbmax ? n - i0 : nbmax;
        for (int j = 0; j < nb; j++) {
            const int i = i0 + j;
            if (init_latents) {
                memcpy(xb + j * chw, init_latents + i * chw, chw * sizeof(float));
            } else {
                philox r;
                philox_init(&r, g->seed, STREAM_LATENTS, (uint64_t)i);
                philox_fill_normal(&r, xb + j * chw, chw);
            }
            if (!g->quiet) mapo_log(1, "image %d/%d\n", i + 1, n);
        }
        sampler_init_noise(s, xb, nb * chw);
        rc = denoise(p, u, g, s, xb, nb, c->cond + (size_t)i0 * S * D,
                     c->uncond + (size_t)i0 * S * D, P ? c->pc + (size_t)i0 * P : NULL,
                     P ? c->pu + (size_t)i0 * P : NULL, h, w);
        for (int j = 0; j < nb && !rc; j++) {
            const float *xj = xb + j * chw;
            if (p->vae) rc = vae_decode_latents(p->vae, xj, 1, h, w, img, tiled);
            if (rc) break;
            if (!p->vae) /* pixel space: C = 1 is gray (copied to R, G, B), C = 3 is RGB */
                for (int ch = 0; ch < 3; ch++)
                    memcpy(img + (size_t)ch * h * w, xj + (size_t)(C == 3 ? ch : 0) * h * w,
                           (size_t)h * w * sizeof(float));
            /* (x / 2 + 0.5).clamp(0, 1), CHW -> HWC */
            const int64_t hw = (int64_t)g->height * g->width;
            float *o = images + (size_t)(i0 + j) * hw * 3;
            for (int64_t k = 0; k < hw; k++)
                for (int ch = 0; ch < 3; ch++) {
                    float v = img[ch * hw + k] / 2.0f + 0.5f;
                    o[k * 3 + ch] = v < 0 ? 0 : v > 1 ? 1 : v;
                }
        }
    }
    free(xb);
    free(img);
    sampler_free(s);
    return rc;
}
