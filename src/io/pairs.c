/* pairs.c -- pair files and debug batches (see pairs.h). */
#include "mapo/pairs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"

/* A half tensor kept in the mapping: every value must be finite (an all-ones exponent is inf
   or NaN in both formats), checked on the bits; nothing is kept. */
static int keep_half(const st_file *f, const char *name, const st_tensor *t,
                     const st_tensor **half) {
    const uint16_t e = t->dtype == ST_F16 ? 0x7c00u : 0x7f80u;
    const uint8_t *h = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        uint16_t v;
        memcpy(&v, h + 2 * i, 2); /* the mapping may be unaligned */
        if ((v & e) == e)
            return mapo_error("%s: tensor '%s' holds a non-finite value (index %lld)", f->path,
                              name, (long long)i);
    }
    *half = t;
    return 0;
}

/* Tensor `name` as float32: in place when F32 and aligned, else converted into *owned; with
   half != NULL an F16 / BF16 tensor is kept in the mapping instead (*out NULL, *half set).
   Checks ndim and, where want[k] >= 0, each dimension. */
static int get_f32_or_half(const st_file *f, const char *name, int ndim, const int64_t *want,
                           const float **out, float **owned, const st_tensor **half,
                           int optional) {
    const st_tensor *t = st_find(f, name);
    *out = NULL;
    if (!t) {
        if (optional) return 0;
        return mapo_error("%s: tensor '%s' is missing", f->path, name);
    }
    if (t->ndim != ndim)
        return mapo_error("%s: tensor '%s' has %d dimensions, expected %d", f->path, name,
                          t->ndim, ndim);
    for (int k = 0; k < ndim; k++)
        if (want[k] >= 0 && t->shape[k] != want[k])
            return mapo_error("%s: tensor '%s' dimension %d is %lld, expected %lld", f->path,
                              name, k, (long long)t->shape[k], (long long)want[k]);
    if (half && (t->dtype == ST_F16 || t->dtype == ST_BF16)) return keep_half(f, name, t, half);
    if (t->dtype == ST_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
        *out = t->data;
    } else {
        float *buf = xmalloc((size_t)t->numel * sizeof(float));
        if (t->dtype == ST_I64 || t->dtype == ST_I32) {
            for (int64_t i = 0; i < t->numel; i++) {
                int64_t v;
                if (t->dtype == ST_I64) memcpy(&v, (const char *)t->data + 8 * i, 8);
                else {
                    int32_t w;
                    memcpy(&w, (const char *)t->data + 4 * i, 4);
                    v = w;
                }
                buf[i] = (float)v;
            }
        } else if (st_to_f32(t, buf)) {
            free(buf);
            return mapo_error("%s: tensor '%s' has dtype %s, expected a float type", f->path,
                              name, st_dtype_name(t->dtype));
        }
        *owned = buf;
        *out = buf;
    }
    return 0;
}

static int get_f32(const st_file *f, const char *name, int ndim, const int64_t *want,
                   const float **out, float **owned, int optional) {
    return get_f32_or_half(f, name, ndim, want, out, owned, NULL, optional);
}

static int check_finite(const char *path, const char *name, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return mapo_error("%s: tensor '%s' holds a non-finite value (index %lld)", path,
                              name, (long long)i);
    return 0;
}

int pair_file_open(pair_file *p, const char *path, const unet_config *c) {
    memset(p, 0, sizeof *p);
    if (st_open(&p->f, path)) return -1;
    const st_tensor *ch = st_find(&p->f, "chosen");
    const st_tensor *eh = st_find(&p->f, "encoder_hidden_states");
    const int table = eh == NULL; /* a prompt table: prompt_embeds + prompt_index */
    const char *eh_name = table ? "prompt_embeds" : "encoder_hidden_states";
    if (table) eh = st_find(&p->f, eh_name);
    if (!ch || ch->ndim != 4 || !eh || eh->ndim != 3) {
        st_close(&p->f);
        return mapo_error("%s: a pair file needs 'chosen' [N,C,H,W], 'rejected' [N,C,H,W] and "
                          "'encoder_hidden_states' [N,S,D] (or 'prompt_embeds' [Np,S,D] with "
                          "'prompt_index' [N])", path);
    }
    p->N = ch->shape[0];
    p->C = (int)ch->shape[1];
    p->H = (int)ch->shape[2];
    p->W = (int)ch->shape[3];
    p->S = (int)eh->shape[1];
    p->D = (int)eh->shape[2];
    int rc = 0;
    if (p->N < 1) rc = mapo_error("%s: the pair file holds no pairs", path);
    else if (p->C != c->in_channels)
        rc = mapo_error("%s: latents have %d channels, the model expects %d", path, p->C,
                        c->in_channels);
    else if (p->D != c->cross_dim)
        rc = mapo_error("%s: encoder_hidden_states width %d != the model's cross_attention_dim "
                        "%d", path, p->D, c->cross_dim);
    p->n_prompts = table ? eh->shape[0] : p->N;
    int64_t img[4] = {p->N, p->C, p->H, p->W}, e[3] = {p->n_prompts, p->S, p->D};
    if (!rc) rc = get_f32_or_half(&p->f, "chosen", 4, img, &p->chosen, &p->owned[0],
                                  &p->half[0], 0);
    if (!rc) rc = get_f32_or_half(&p->f, "rejected", 4, img, &p->rejected, &p->owned[1],
                                  &p->half[1], 1);
    if (!rc) rc = get_f32_or_half(&p->f, eh_name, 3, e, &p->ehs, &p->owned[2], &p->half[2], 0);
    if (!rc && p->n_prompts < 1) rc = mapo_error("%s: prompt_embeds holds no prompt", path);
    if (!rc && table) {
        const float *pi;
        float *own = NULL;
        int64_t ni[1] = {p->N};
        rc = get_f32(&p->f, "prompt_index", 1, ni, &pi, &own, 0);
        if (!rc) {
            p->prompt_index = xmalloc((size_t)p->N * sizeof(int32_t));
            for (int64_t i = 0; i < p->N && !rc; i++) {
                if (!(pi[i] >= 0 && pi[i] < (float)p->n_prompts) || pi[i] != floorf(pi[i]))
                    rc = mapo_error("%s: prompt_index[%lld] = %g is not a row of prompt_embeds "
                                    "(0..%lld)", path, (long long)i, (double)pi[i],
                                    (long long)p->n_prompts - 1);
                else p->prompt_index[i] = (int32_t)pi[i];
            }
        }
        if (own) free(own);
        else if (!rc) rc = mapo_error("%s: prompt_index must be an integer tensor", path);
    }
    if (!rc && c->text_time) {
        int64_t te[2] = {p->N, -1}, ti[2] = {p->N, 6};
        rc = get_f32_or_half(&p->f, "text_embeds", 2, te, &p->text_embeds, &p->owned[3],
                             &p->half[3], 0);
        if (!rc) rc = get_f32_or_half(&p->f, "time_ids", 2, ti, &p->time_ids, &p->owned[4],
                                      &p->half[4], 0);
        if (!rc) p->P = (int)st_find(&p->f, "text_embeds")->shape[1];
        if (!rc && p->P + 6 * c->add_time_dim != c->proj_class_dim)
            rc = mapo_error("%s: text_embeds width %d does not fit the model "
                            "(projection_class_embeddings_input_dim %d - 6*%d)", path, p->P,
                            c->proj_class_dim, c->add_time_dim);
    }
    if (!rc && (st_find(&p->f, "chosen_hflip") || st_find(&p->f, "rejected_hflip"))) {
        rc = get_f32_or_half(&p->f, "chosen_hflip", 4, img, &p->chosen_hflip, &p->owned[5],
                             &p->half[5], 0);
        if (!rc) rc = get_f32_or_half(&p->f, "rejected_hflip", 4, img, &p->rejected_hflip,
                                      &p->owned[6], &p->half[6], !p->rejected);
    }
    const st_tensor *re = st_find(&p->f, "ref_errors");
    if (!rc && re) {
        if (re->ndim != 3 || re->shape[1] != p->N || re->shape[2] != 2 || re->shape[0] < 1)
            rc = mapo_error("%s: ref_errors must be [epochs, %lld, 2]", path, (long long)p->N);
        else {
            p->ref_epochs = re->shape[0];
            p->ref_owned = xmalloc((size_t)re->numel * sizeof(double));
            if (st_to_f64(re, p->ref_owned))
                rc = mapo_error("%s: ref_errors must be a float tensor", path);
            for (int64_t i = 0; !rc && i < re->numel; i++)
                if (!isfinite(p->ref_owned[i]) || p->ref_owned[i] < 0)
                    rc = mapo_error("%s: ref_errors[%lld] is not a finite error", path, (long long)i);
            p->ref_errors = p->ref_owned;
        }
    }
    /* single images labelled desirable (1) / undesirable (0): Diffusion-KTO's unpaired data */
    const st_tensor *lt = st_find(&p->f, "desirable");
    if (!rc && lt) {
        double *lv = xmalloc((size_t)(lt->numel ? lt->numel : 1) * sizeof(double));
        if (p->rejected)
            rc = mapo_error("%s: 'desirable' belongs to single images; a pair's preference is "
                            "its order", path);
        else if (lt->ndim != 1 || lt->shape[0] != p->N)
            rc = mapo_error("%s: desirable must be [%lld]", path, (long long)p->N);
        else if (st_to_f64(lt, lv))
            rc = mapo_error("%s: desirable must be a float tensor", path);
        if (!rc) p->labels = xmalloc((size_t)p->N);
        for (int64_t i = 0; !rc && i < p->N; i++) {
            if (lv[i] != 0 && lv[i] != 1)
                rc = mapo_error("%s: desirable[%lld] = %g; it is 1 (desirable) or 0", path,
                                (long long)i, lv[i]);
            else
                p->labels[i] = (uint8_t)lv[i];
        }
        free(lv);
    }
    int64_t n_img = p->N * p->C * p->H * p->W;
    /* (half tensors were checked when kept) */
    if (!rc && p->chosen) rc = check_finite(path, "chosen", p->chosen, n_img);
    if (!rc && p->rejected) rc = check_finite(path, "rejected", p->rejected, n_img);
    if (!rc && p->chosen_hflip) rc = check_finite(path, "chosen_hflip", p->chosen_hflip, n_img);
    if (!rc && p->rejected_hflip)
        rc = check_finite(path, "rejected_hflip", p->rejected_hflip, n_img);
    if (!rc && p->ehs) rc = check_finite(path, eh_name, p->ehs, p->n_prompts * p->S * p->D);
    if (rc) pair_file_close(p);
    return rc;
}

void pair_file_close(pair_file *p) {
    for (int i = 0; i < 7; i++) free(p->owned[i]);
    free(p->ref_owned);
    free(p->labels);
    free(p->prompt_index);
    st_close(&p->f);
    memset(p, 0, sizeof *p);
}

static const float *pf_data(const pair_file *p, int k) {
    const float *d[7] = {p->chosen, p->rejected, p->ehs, p->text_embeds, p->time_ids,
                         p->chosen_hflip, p->rejected_hflip};
    return d[k];
}

int pair_file_has(const pair_file *p, int k) { return pf_data(p, k) || p->half[k]; }

void pair_file_row(const pair_file *p, int k, int64_t row, float *dst) {
    const int64_t n = k == PF_EHS           ? (int64_t)p->S * p->D
                      : k == PF_TEXT_EMBEDS ? p->P
                      : k == PF_TIME_IDS    ? 6
                                            : (int64_t)p->C * p->H * p->W;
    const st_tensor *t = p->half[k];
    if (t) st_half_to_f32(t->dtype, (const uint8_t *)t->data + 2 * row * n, dst, n);
    else memcpy(dst, pf_data(p, k) + row * n, (size_t)n * sizeof(float));
}

void pair_file_ehs(const pair_file *p, int64_t idx, float *dst) {
    pair_file_row(p, PF_EHS, p->prompt_index ? p->prompt_index[idx] : idx, dst);
}

static float *copy_out(const float *src, float *owned, int64_t n) {
    if (owned) return owned;
    float *d = xmalloc(n * sizeof(float));
    memcpy(d, src, n * sizeof(float));
    return d;
}

int debug_batch_load(debug_batch *b, const char *path, const unet_config *c) {
    memset(b, 0, sizeof *b);
    st_file f;
    if (st_open(&f, path)) return -1;
    const st_tensor *s = st_find(&f, "sample"), *e = st_find(&f, "encoder_hidden_states");
    int rc = 0;
    if (!s || s->ndim != 4 || !e || e->ndim != 3) {
        rc = mapo_error("%s: a debug batch needs 'sample' [2B,C,H,W], 'timestep' [2B], "
                        "'encoder_hidden_states' [2B,S,D] and 'target' [2B,C,H,W]", path);
        st_close(&f);
        return rc;
    }
    b->n = (int)s->shape[0];
    b->C = (int)s->shape[1];
    b->H = (int)s->shape[2];
    b->W = (int)s->shape[3];
    b->S = (int)e->shape[1];
    b->D = (int)e->shape[2];
    if (b->C != c->in_channels)
        rc = mapo_error("%s: sample has %d channels, the model expects %d", path, b->C,
                        c->in_channels);
    else if (b->D != c->cross_dim)
        rc = mapo_error("%s: encoder_hidden_states width %d != cross_attention_dim %d", path,
                        b->D, c->cross_dim);
    const float *p;
    float *own;
    int64_t img[4] = {b->n, b->C, b->H, b->W}, out_img[4] = {b->n, c->out_channels, b->H, b->W};
    int64_t ts[1] = {b->n}, eh[3] = {b->n, b->S, b->D};
#define GET(name, nd, shape, dst, opt)                                                  \
    if (!rc) {                                                                          \
        own = NULL;                                                                     \
        rc = get_f32(&f, name, nd, shape, &p, &own, opt);                               \
        if (!rc && p) dst = copy_out(p, own, st_find(&f, name)->numel);                 \
    }
    GET("sample", 4, img, b->sample, 0);
    GET("timestep", 1, ts, b->timestep, 0);
    GET("encoder_hidden_states", 3, eh, b->ehs, 0);
    GET("target", 4, out_img, b->target, 0);
    if (c->text_time) {
        int64_t te[2] = {b->n, -1}, ti[2] = {b->n, 6};
        GET("text_embeds", 2, te, b->text_embeds, 0);
        GET("time_ids", 2, ti, b->time_ids, 0);
        if (!rc) b->P = (int)st_find(&f, "text_embeds")->shape[1];
    }
#undef GET
    st_close(&f);
    if (rc) debug_batch_free(b);
    return rc;
}

void debug_batch_free(debug_batch *b) {
    free(b->sample);
    free(b->timestep);
    free(b->ehs);
    free(b->target);
    free(b->text_embeds);
    free(b->time_ids);
    memset(b, 0, sizeof *b);
}

void debug_batch_inputs(const debug_batch *b, unet_inputs *in) {
    memset(in, 0, sizeof *in);
    in->B = b->n;
    in->H = b->H;
    in->W = b->W;
    in->sample = b->sample;
    in->timesteps = b->timestep;
    in->ehs = b->ehs;
    in->S = b->S;
    in->text_embeds = b->text_embeds;
    in->P = b->P;
    in->time_ids = b->time_ids;
}
