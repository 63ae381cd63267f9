/* unet.c -- UNet2DConditionModel: parameter table from the config, forward pass on the
 * autograd tape (backward comes from the ops' hand-written backwards), load and save.
 * Module structure and names follow diffusers exactly (see docs/ARCHITECTURE.md). */
#include "mapo/unet.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"

#define P1(t, a, ...) params_add(t, 1, (int64_t[]){a}, __VA_ARGS__)
#define P2(t, a, b, ...) params_add(t, 2, (int64_t[]){a, b}, __VA_ARGS__)
#define P4(t, a, b, c, d, ...) params_add(t, 4, (int64_t[]){a, b, c, d}, __VA_ARGS__)

/* ------------------------------------------------------------------ building */
static void add_conv(param_table *t, int *w, int *b, int cout, int cin, int k, const char *pre) {
    *w = P4(t, cout, cin, k, k, "%s.weight", pre);
    *b = P1(t, cout, "%s.bias", pre);
}
static void add_linear(param_table *t, int *w, int *b, int out, int in, const char *pre) {
    *w = P2(t, out, in, "%s.weight", pre);
    if (b) *b = P1(t, out, "%s.bias", pre);
}
static void add_norm(param_table *t, int *w, int *b, int c, const char *pre) {
    *w = P1(t, c, "%s.weight", pre);
    *b = P1(t, c, "%s.bias", pre);
}

static void build_resnet(param_table *t, unet_resnet *r, int cin, int cout, int temb,
                         const char *pre) {
    char s[256];
    snprintf(s, sizeof s, "%s.norm1", pre); add_norm(t, &r->n1w, &r->n1b, cin, s);
    snprintf(s, sizeof s, "%s.conv1", pre); add_conv(t, &r->c1w, &r->c1b, cout, cin, 3, s);
    snprintf(s, sizeof s, "%s.time_emb_proj", pre); add_linear(t, &r->tw, &r->tb, cout, temb, s);
    snprintf(s, sizeof s, "%s.norm2", pre); add_norm(t, &r->n2w, &r->n2b, cout, s);
    snprintf(s, sizeof s, "%s.conv2", pre); add_conv(t, &r->c2w, &r->c2b, cout, cout, 3, s);
    r->sw = r->sb = -1;
    if (cin != cout) {
        snprintf(s, sizeof s, "%s.conv_shortcut", pre);
        add_conv(t, &r->sw, &r->sb, cout, cin, 1, s);
    }
}

static void build_attn(param_table *t, int *q, int *k, int *v, int *ow, int *ob, int dim,
                       int kv_dim, const char *pre) {
    char s[300];
    snprintf(s, sizeof s, "%s.to_q", pre); add_linear(t, q, NULL, dim, dim, s);
    snprintf(s, sizeof s, "%s.to_k", pre); add_linear(t, k, NULL, dim, kv_dim, s);
    snprintf(s, sizeof s, "%s.to_v", pre); add_linear(t, v, NULL, dim, kv_dim, s);
    snprintf(s, sizeof s, "%s.to_out.0", pre); add_linear(t, ow, ob, dim, dim, s);
}

static void build_xformer(param_table *t, const unet_config *c, unet_xformer *x, int C,
                          int heads, int n_layers, const char *pre) {
    char s[300];
    x->heads = heads;
    x->n_tb = n_layers;
    x->tb = xcalloc(n_layers, sizeof *x->tb);
    for (int l = 0; l < n_layers; l++) memset(x->tb[l].lora, 0xff, sizeof x->tb[l].lora); /* -1 */
    snprintf(s, sizeof s, "%s.norm", pre); add_norm(t, &x->nw, &x->nb, C, s);
    snprintf(s, sizeof s, "%s.proj_in", pre);
    if (c->linear_proj) add_linear(t, &x->piw, &x->pib, C, C, s);
    else add_conv(t, &x->piw, &x->pib, C, C, 1, s);
    for (int l = 0; l < n_layers; l++) {
        unet_tblock *b = &x->tb[l];
        char p[280];
        snprintf(p, sizeof p, "%s.transformer_blocks.%d", pre, l);
        snprintf(s, sizeof s, "%s.norm1", p); add_norm(t, &b->n1w, &b->n1b, C, s);
        snprintf(s, sizeof s, "%s.attn1", p);
        build_attn(t, &b->q1, &b->k1, &b->v1, &b->o1w, &b->o1b, C, C, s);
        snprintf(s, sizeof s, "%s.norm2", p); add_norm(t, &b->n2w, &b->n2b, C, s);
        snprintf(s, sizeof s, "%s.attn2", p);
        build_attn(t, &b->q2, &b->k2, &b->v2, &b->o2w, &b->o2b, C, c->cross_dim, s);
        snprintf(s, sizeof s, "%s.norm3", p); add_norm(t, &b->n3w, &b->n3b, C, s);
        snprintf(s, sizeof s, "%s.ff.net.0.proj", p); add_linear(t, &b->f1w, &b->f1b, 8 * C, C, s);
        snprintf(s, sizeof s, "%s.ff.net.2", p); add_linear(t, &b->f2w, &b->f2b, C, 4 * C, s);
    }
    snprintf(s, sizeof s, "%s.proj_out", pre);
    if (c->linear_proj) add_linear(t, &x->pow_, &x->pob, C, C, s);
    else add_conv(t, &x->pow_, &x->pob, C, C, 1, s);
}

int unet_build(unet *u, const unet_config *c) {
    memset(u, 0, sizeof *u);
    u->cfg = *c;
    param_table *t = &u->params;
    params_init(t);
    const int n = c->n_blocks, temb = c->time_embed_dim;
    char s[256];
    add_conv(t, &u->conv_in_w, &u->conv_in_b, c->block_out[0], c->in_channels, 3, "conv_in");
    add_linear(t, &u->te1w, &u->te1b, temb, c->block_out[0], "time_embedding.linear_1");
    add_linear(t, &u->te2w, &u->te2b, temb, temb, "time_embedding.linear_2");
    u->ae1w = u->ae1b = u->ae2w = u->ae2b = -1;
    if (c->text_time) {
        add_linear(t, &u->ae1w, &u->ae1b, temb, c->proj_class_dim, "add_embedding.linear_1");
        add_linear(t, &u->ae2w, &u->ae2b, temb, temb, "add_embedding.linear_2");
    }
    /* down blocks */
    int out_ch = c->block_out[0];
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->down[i];
        int in_ch = out_ch;
        out_ch = c->block_out[i];
        b->cross = c->down_cross[i];
        b->n_res = c->layers[i];
        b->res = xcalloc(b->n_res, sizeof *b->res);
        if (b->cross) b->attn = xcalloc(b->n_res, sizeof *b->attn);
        for (int j = 0; j < b->n_res; j++) {
            snprintf(s, sizeof s, "down_blocks.%d.resnets.%d", i, j);
            build_resnet(t, &b->res[j], j == 0 ? in_ch : out_ch, out_ch, temb, s);
            if (b->cross) {
                snprintf(s, sizeof s, "down_blocks.%d.attentions.%d", i, j);
                build_xformer(t, c, &b->attn[j], out_ch, c->heads[i], c->tlayers[i], s);
            }
        }
        b->sw = b->sb = -1;
        if (i < n - 1) {
            snprintf(s, sizeof s, "down_blocks.%d.downsamplers.0.conv", i);
            add_conv(t, &b->sw, &b->sb, out_ch, out_ch, 3, s);
        }
    }
    /* up blocks (registered before the mid block in diffusers; order is irrelevant here) */
    int rev_out[UNET_MAX_BLOCKS], rev_layers[UNET_MAX_BLOCKS], rev_heads[UNET_MAX_BLOCKS],
        rev_tl[UNET_MAX_BLOCKS];
    for (int i = 0; i < n; i++) {
        rev_out[i] = c->block_out[n - 1 - i];
        rev_layers[i] = c->layers[n - 1 - i];
        rev_heads[i] = c->heads[n - 1 - i];
        rev_tl[i] = c->tlayers[n - 1 - i];
    }
    out_ch = rev_out[0];
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->up[i];
        int prev_out = out_ch;
        out_ch = rev_out[i];
        int in_ch = rev_out[i + 1 < n ? i + 1 : n - 1];
        b->cross = c->up_cross[i];
        b->n_res = rev_layers[i] + 1;
        b->res = xcalloc(b->n_res, sizeof *b->res);
        if (b->cross) b->attn = xcalloc(b->n_res, sizeof *b->attn);
        for (int j = 0; j < b->n_res; j++) {
            int skip = j == b->n_res - 1 ? in_ch : out_ch;
            int rin = j == 0 ? prev_out : out_ch;
            snprintf(s, sizeof s, "up_blocks.%d.resnets.%d", i, j);
            build_resnet(t, &b->res[j], rin + skip, out_ch, temb, s);
            if (b->cross) {
                snprintf(s, sizeof s, "up_blocks.%d.attentions.%d", i, j);
                build_xformer(t, c, &b->attn[j], out_ch, rev_heads[i], rev_tl[i], s);
            }
        }
        b->sw = b->sb = -1;
        if (i < n - 1) {
            snprintf(s, sizeof s, "up_blocks.%d.upsamplers.0.conv", i);
            add_conv(t, &b->sw, &b->sb, out_ch, out_ch, 3, s);
        }
    }
    /* mid block: resnet, (attention, resnet) */
    {
        unet_block *b = &u->mid;
        int C = c->block_out[n - 1];
        b->cross = 1;
        b->n_res = 2;
        b->res = xcalloc(2, sizeof *b->res);
        b->attn = xcalloc(1, sizeof *b->attn);
        build_resnet(t, &b->res[0], C, C, temb, "mid_block.resnets.0");
        build_xformer(t, c, &b->attn[0], C, c->heads[n - 1], c->tlayers[n - 1],
                      "mid_block.attentions.0");
        build_resnet(t, &b->res[1], C, C, temb, "mid_block.resnets.1");
        b->sw = b->sb = -1;
    }
    add_norm(t, &u->norm_out_w, &u->norm_out_b, c->block_out[0], "conv_norm_out");
    add_conv(t, &u->conv_out_w, &u->conv_out_b, c->out_channels, c->block_out[0], 3, "conv_out");
    return 0;
}

static void free_block(unet_block *b, int n_attn) {
    if (b->attn)
        for (int j = 0; j < n_attn; j++) free(b->attn[j].tb);
    free(b->attn);
    free(b->res);
}

void unet_free(unet *u) {
    for (int i = 0; i < u->cfg.n_blocks; i++) {
        free_block(&u->down[i], u->down[i].n_res);
        free_block(&u->up[i], u->up[i].n_res);
    }
    free_block(&u->mid, 1);
    params_free(&u->params);
    params_free(&u->lora);
    unet_config_free(&u->cfg);
    memset(u, 0, sizeof *u);
}

/* ------------------------------------------------------------------ forward */
#define PV(i) params_view(&u->params, (i))

static tensor *resnet_forward(unet *u, graph *g, const unet_resnet *r, tensor *x,
                              tensor *temb_act) {
    const unet_config *c = &u->cfg;
    tensor *a = t_group_norm_silu(g, x, PV(r->n1w), PV(r->n1b), c->norm_groups, c->norm_eps);
    tensor *h = t_conv2d(g, a, PV(r->c1w), PV(r->c1b), 1, 1);
    graph_release(g, a);
    tensor *tp = t_linear(g, temb_act, PV(r->tw), PV(r->tb)); /* [B, Cout] */
    a = t_add_channel_bias(g, h, tp);
    graph_release(g, h);
    graph_release(g, tp);
    tensor *s = t_group_norm_silu(g, a, PV(r->n2w), PV(r->n2b), c->norm_groups, c->norm_eps);
    graph_release(g, a);
    h = t_conv2d(g, s, PV(r->c2w), PV(r->c2b), 1, 1);
    graph_release(g, s);
    tensor *sc = x;
    if (r->sw >= 0) sc = t_conv2d(g, x, PV(r->sw), PV(r->sb), 1, 0);
    tensor *y = t_add(g, sc, h);
    graph_release(g, h);
    if (sc != x) graph_release(g, sc);
    return y;
}

/* gradient checkpointing segments: one per resnet and per transformer block, as diffusers
   checkpoints them (graph.h, t_checkpoint) */
typedef struct { unet *u; const unet_resnet *r; } resnet_seg_ctx;
static tensor *resnet_seg(graph *g, const void *ctx, tensor *const *in) {
    const resnet_seg_ctx *c = ctx;
    return resnet_forward(c->u, g, c->r, in[0], in[1]);
}
static tensor *resnet_ckpt(unet *u, graph *g, const unet_resnet *r, tensor *x, tensor *temb) {
    const resnet_seg_ctx c = {u, r};
    tensor *in[2] = {x, temb};
    return t_checkpoint(g, resnet_seg, &c, sizeof c, in, 2);
}

/* W x + b, plus B (A x) when a LoRA adapter {A, B} is present and switched on */
static tensor *lora_linear(unet *u, graph *g, tensor *x, int w, int b, const int ab[2]) {
    tensor *y = t_linear(g, x, PV(w), PV(b));
    if (!u->lora_on || ab[0] < 0) return y;
    tensor *h = t_linear(g, x, params_view(&u->lora, ab[0]), NULL);
    tensor *d = t_linear(g, h, params_view(&u->lora, ab[1]), NULL);
    graph_release(g, h);
    tensor *s = t_add(g, y, d);
    graph_release(g, y);
    graph_release(g, d);
    return s;
}

static tensor *attn_forward(unet *u, graph *g, int q, int k, int v, int ow, int ob, tensor *x,
                            tensor *ctx, int heads, const int lora[4][2]) {
    tensor *Q = lora_linear(u, g, x, q, -1, lora[0]);
    tensor *K = lora_linear(u, g, ctx, k, -1, lora[1]);
    tensor *V = lora_linear(u, g, ctx, v, -1, lora[2]);
    tensor *A = t_attention(g, Q, K, V, heads);
    graph_release(g, Q);
    graph_release(g, K);
    graph_release(g, V);
    tensor *o = lora_linear(u, g, A, ow, ob, lora[3]);
    graph_release(g, A);
    return o;
}

static tensor *residual(graph *g, tensor *x, tensor *d) {
    tensor *y = t_add(g, x, d);
    graph_release(g, d);
    graph_release(g, x);
    return y;
}

static tensor *tblock_forward(unet *u, graph *g, const unet_tblock *b, tensor *x, tensor *ehs,
                              int heads) {
    tensor *n = t_layer_norm(g, x, PV(b->n1w), PV(b->n1b), 1e-5);
    tensor *a = attn_forward(u, g, b->q1, b->k1, b->v1, b->o1w, b->o1b, n, n, heads, b->lora[0]);
    graph_release(g, n);
    x = residual(g, x, a);
    n = t_layer_norm(g, x, PV(b->n2w), PV(b->n2b), 1e-5);
    a = attn_forward(u, g, b->q2, b->k2, b->v2, b->o2w, b->o2b, n, ehs, heads, b->lora[1]);
    graph_release(g, n);
    x = residual(g, x, a);
    n = t_layer_norm(g, x, PV(b->n3w), PV(b->n3b), 1e-5);
    tensor *f = t_linear(g, n, PV(b->f1w), PV(b->f1b));
    graph_release(g, n);
    tensor *gg = t_geglu(g, f);
    graph_release(g, f);
    f = t_linear(g, gg, PV(b->f2w), PV(b->f2b));
    graph_release(g, gg);
    return residual(g, x, f);
}

typedef struct { unet *u; const unet_tblock *b; int heads; } tblock_seg_ctx;
static tensor *tblock_seg(graph *g, const void *ctx, tensor *const *in) {
    const tblock_seg_ctx *c = ctx;
    return tblock_forward(c->u, g, c->b, in[0], in[1], c->heads);
}

static tensor *xformer_forward(unet *u, graph *g, const unet_xformer *x, tensor *in,
                               tensor *ehs) {
    const unet_config *c = &u->cfg;
    int64_t H = in->shape[2], W = in->shape[3];
    /* diffusers Transformer2DModel: GroupNorm eps is 1e-6 whatever norm_eps says */
    tensor *h = t_group_norm(g, in, PV(x->nw), PV(x->nb), c->norm_groups, 1e-6);
    /* proj_in as a 1x1 conv before the permute equals a linear after it; both use the same
       [C, C(,1,1)] weight memory, so one path serves both use_linear_projection values */
    tensor *tk = t_nchw_to_nhwc(g, h);
    graph_release(g, h);
    tensor *p = t_linear(g, tk, PV(x->piw), PV(x->pib));
    graph_release(g, tk);
    for (int l = 0; l < x->n_tb; l++) {
        const tblock_seg_ctx sc = {u, &x->tb[l], x->heads};
        tensor *si[2] = {p, ehs};
        tensor *q = t_checkpoint(g, tblock_seg, &sc, sizeof sc, si, 2);
        graph_release(g, p); /* tblock_forward releases its input; a checkpoint keeps it */
        p = q;
    }
    tensor *o = t_linear(g, p, PV(x->pow_), PV(x->pob));
    graph_release(g, p);
    h = t_nhwc_to_nchw(g, o, H, W);
    graph_release(g, o);
    tensor *y = t_add(g, h, in);
    graph_release(g, h);
    return y;
}

/* views with 2-D shapes of the 4-D conv weights used as linear maps */
static void fix_proj_views(unet *u, const unet_xformer *x) {
    if (u->cfg.linear_proj) return;
    int ids[2] = {x->piw, x->pow_};
    for (int k = 0; k < 2; k++) {
        tensor *t = PV(ids[k]);
        t->ndim = 2; /* [C, C, 1, 1] -> [C, C]: same memory */
    }
}

static void fix_all_proj_views(unet *u) {
    for (int i = 0; i < u->cfg.n_blocks; i++) {
        for (int j = 0; u->down[i].attn && j < u->down[i].n_res; j++)
            fix_proj_views(u, &u->down[i].attn[j]);
        for (int j = 0; u->up[i].attn && j < u->up[i].n_res; j++)
            fix_proj_views(u, &u->up[i].attn[j]);
    }
    fix_proj_views(u, &u->mid.attn[0]);
}

int unet_check_inputs(const unet *u, const unet_inputs *in) {
    const unet_config *c = &u->cfg;
    int f = 1 << (c->n_blocks - 1);
    if (in->B <= 0 || in->H <= 0 || in->W <= 0)
        return mapo_error("empty batch or latent size");
    if (in->H % f || in->W % f)
        return mapo_error("latent size %dx%d is not divisible by %d (2^(number of blocks-1))",
                          in->H, in->W, f);
    if (in->S <= 0) return mapo_error("encoder_hidden_states has no tokens");
    if (c->text_time) {
        if (!in->text_embeds || !in->time_ids)
            return mapo_error("this UNet (addition_embed_type text_time, SDXL) needs "
                              "text_embeds and time_ids");
        if (in->P + 6 * c->add_time_dim != c->proj_class_dim)
            return mapo_error("text_embeds width %d + 6*%d != "
                              "projection_class_embeddings_input_dim %d",
                              in->P, c->add_time_dim, c->proj_class_dim);
    }
    return 0;
}

/* diffusers TimestepEmbedding: linear_2(silu(linear_1(x))); consumes x */
static tensor *embedding_mlp(unet *u, graph *g, tensor *x, int w1, int b1, int w2, int b2) {
    tensor *h = t_linear(g, x, PV(w1), PV(b1));
    graph_release(g, x);
    tensor *a = t_silu(g, h);
    graph_release(g, h);
    tensor *y = t_linear(g, a, PV(w2), PV(b2));
    graph_release(g, a);
    return y;
}

tensor *unet_forward(unet *u, graph *g, const unet_inputs *in) {
    const unet_config *c = &u->cfg;
    const int B = in->B, n = c->n_blocks;
    g->precision = u->precision;
    g->checkpointing = u->grad_ckpt;
    g->recompute = u->recompute_norms;
    /* time embedding */
    tensor *tp = t_timestep_embedding(g, in->timesteps, B, c->block_out[0], c->flip_sin_to_cos,
                                      c->freq_shift);
    tensor *emb = embedding_mlp(u, g, tp, u->te1w, u->te1b, u->te2w, u->te2b);
    if (c->text_time) {
        const int D = c->add_time_dim, P = in->P;
        tensor *te = t_timestep_embedding(g, in->time_ids, (int64_t)B * 6, D,
                                          c->flip_sin_to_cos, c->freq_shift);
        tensor *cat = graph_new2(g, B, P + 6 * D); /* [text_embeds, time_embeds] */
        for (int b = 0; b < B; b++) {
            memcpy(cat->data + (size_t)b * (P + 6 * D), in->text_embeds + (size_t)b * P,
                   P * sizeof(float));
            memcpy(cat->data + (size_t)b * (P + 6 * D) + P, te->data + (size_t)b * 6 * D,
                   6 * D * sizeof(float));
        }
        graph_release(g, te);
        tensor *aug = embedding_mlp(u, g, cat, u->ae1w, u->ae1b, u->ae2w, u->ae2b);
        tensor *sum = t_add(g, emb, aug);
        graph_release(g, emb);
        graph_release(g, aug);
        emb = sum;
    }
    /* every resnet applies silu to the embedding first: compute it once */
    tensor *temb = t_silu(g, emb);
    graph_release(g, emb);
    tensor *ehs = graph_input(g, (float *)in->ehs, 3, (int64_t[]){B, in->S, c->cross_dim});
    tensor *x = graph_input(g, (float *)in->sample, 4,
                            (int64_t[]){B, c->in_channels, in->H, in->W});
    /* down */
    tensor *skips[UNET_MAX_BLOCKS * 16];
    int n_skips = 0;
    tensor *h = t_conv2d(g, x, PV(u->conv_in_w), PV(u->conv_in_b), 1, 1);
    skips[n_skips++] = h;
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->down[i];
        for (int j = 0; j < b->n_res; j++) {
            h = resnet_ckpt(u, g, &b->res[j], h, temb);
            if (b->cross) {
                tensor *t2 = xformer_forward(u, g, &b->attn[j], h, ehs);
                graph_release(g, h);
                h = t2;
            }
            skips[n_skips++] = h;
        }
        if (b->sw >= 0) {
            h = t_conv2d(g, h, PV(b->sw), PV(b->sb), 2, 1);
            skips[n_skips++] = h;
        }
    }
    /* mid */
    {
        unet_block *b = &u->mid;
        tensor *m = resnet_ckpt(u, g, &b->res[0], h, temb);
        tensor *t2 = xformer_forward(u, g, &b->attn[0], m, ehs);
        graph_release(g, m);
        h = resnet_ckpt(u, g, &b->res[1], t2, temb);
        graph_release(g, t2);
    }
    /* up */
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->up[i];
        for (int j = 0; j < b->n_res; j++) {
            tensor *skip = skips[--n_skips];
            tensor *cat = t_concat_channels(g, h, skip);
            graph_release(g, h);
            graph_release(g, skip);
            h = resnet_ckpt(u, g, &b->res[j], cat, temb);
            graph_release(g, cat);
            if (b->cross) {
                tensor *t2 = xformer_forward(u, g, &b->attn[j], h, ehs);
                graph_release(g, h);
                h = t2;
            }
        }
        if (b->sw >= 0) {
            tensor *up = t_upsample2x(g, h);
            graph_release(g, h);
            h = t_conv2d(g, up, PV(b->sw), PV(b->sb), 1, 1);
            graph_release(g, up);
        }
    }
    graph_release(g, temb);
    tensor *a = t_group_norm_silu(g, h, PV(u->norm_out_w), PV(u->norm_out_b), c->norm_groups,
                                  c->norm_eps);
    graph_release(g, h);
    tensor *out = t_conv2d(g, a, PV(u->conv_out_w), PV(u->conv_out_b), 1, 1);
    graph_release(g, a);
    return out;
}

/* ------------------------------------------------------------------ flops */
double unet_forward_flops(const unet *u, const unet_inputs *in) {
    /* 2 * MACs of the convolutions, linears and attention products; norms etc. ignored */
    double fl = 0;
    const param_table *t = &u->params;
    const unet_config *c = &u->cfg;
    /* walk parameters: a conv weight at resolution level L sees (H/2^L)*(W/2^L) pixels */
    for (int i = 0; i < t->n; i++) {
        const param_info *p = &t->p[i];
        if (p->ndim < 2) continue;
        int level = 0;
        const char *nm = p->name;
        int blk = -1;
        if (sscanf(nm, "down_blocks.%d.", &blk) == 1) {
            level = blk;
            if (strstr(nm, "downsamplers")) level = blk + 1;
        } else if (sscanf(nm, "up_blocks.%d.", &blk) == 1) {
            level = c->n_blocks - 1 - blk;
            if (strstr(nm, "upsamplers")) level = level - 1;
        } else if (!strncmp(nm, "mid_block", 9)) {
            level = c->n_blocks - 1;
        } else if (!strncmp(nm, "time_embedding", 14) || !strncmp(nm, "add_embedding", 13)) {
            fl += 2.0 * in->B * p->numel;
            continue;
        }
        double pix = (double)(in->H >> level) * (in->W >> level);
        if (strstr(nm, "time_emb_proj")) pix = 1;
        if (strstr(nm, "attn2.to_k") || strstr(nm, "attn2.to_v")) pix = in->S;
        fl += 2.0 * in->B * pix * p->numel;
        if (strstr(nm, "attn1.to_q") || strstr(nm, "attn2.to_q")) {
            int64_t C = p->shape[0];
            double nk = strstr(nm, "attn1") ? pix : in->S;
            fl += 2.0 * 2.0 * in->B * pix * nk * C; /* QK^T and PV */
        }
    }
    return fl;
}

/* ------------------------------------------------------------------ load / save */

/* dir may be a UNet folder or a pipeline folder with unet/ */
static int resolve_dir(const char *dir, char *out, size_t n) {
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (mapo_is_file(p)) {
        snprintf(out, n, "%s", dir);
        return 0;
    }
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    if (mapo_is_file(p)) {
        snprintf(out, n, "%s/unet", dir);
        return 0;
    }
    if (!mapo_is_dir(dir)) return mapo_error("%s: no such folder", dir);
    return mapo_error("%s: no config.json (nor unet/config.json): not a diffusers UNet or "
                      "pipeline folder", dir);
}

/* weights: the file the parameters will be loaded from (its size bounds the model), or NULL */
static int load_config(unet *u, const char *config_path, const char *weights, int with_grad) {
    unet_config c;
    if (unet_config_load(&c, config_path)) return -1;
    unet_build(u, &c);
    if (params_check_size(&u->params, config_path, weights)) {
        unet_free(u);
        return -1;
    }
    params_alloc(&u->params, with_grad);
    fix_all_proj_views(u);
    return 0;
}

int unet_load_dir(unet *u, const char *dir, int with_grad) {
    char d[4096], p[4200];
    memset(u, 0, sizeof *u);
    if (resolve_dir(dir, d, sizeof d)) return -1;
    char w[4200];
    /* --variant, one file or sharded (an index and its shards) */
    const int found = !st_weights_find(w, sizeof w, d, "diffusion_pytorch_model.safetensors");
    snprintf(p, sizeof p, "%s/config.json", d);
    if (load_config(u, p, w, with_grad)) return -1;
    snprintf(p, sizeof p, "%s", w);
    if (!found) {
        unet_free(u);
        return mapo_error("%s: no diffusion_pytorch_model.safetensors (nor a sharded "
                          "diffusion_pytorch_model.safetensors.index.json; .bin checkpoints are "
                          "not supported: re-save with safe_serialization)", d);
    }
    if (params_load(&u->params, p, "", 0)) {
        unet_free(u);
        return -1;
    }
    return 0;
}

int unet_init_dir(unet *u, const char *config_path, uint64_t seed, int with_grad) {
    memset(u, 0, sizeof *u);
    if (load_config(u, config_path, NULL, with_grad)) return -1;
    params_init_random(&u->params, seed);
    return 0;
}

int unet_save_dir_as(const unet *u, const char *dir, st_dtype store) {
    params_require_f32(&u->params, "saving the UNet");
    if (mkdir(dir, 0755) && errno != EEXIST)
        return mapo_error("%s: cannot create folder: %s", dir, strerror(errno));
    char p[4200];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    /* as params_save, each float32 parameter stored as `store` */
    st_writer *w = st_writer_new();
    for (int i = 0; i < u->params.n; i++) {
        const param_info *q = &u->params.p[i];
        st_writer_add_f32_as(w, q->name, store, q->ndim, q->shape, u->params.data + q->offset);
    }
    st_writer_meta(w, "format", "pt");
    const int wrc = st_writer_write(w, p);
    st_writer_free(w);
    if (wrc) return -1;
    char *js = json_dumps((json_t *)u->cfg.json, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!js) return mapo_error("%s: cannot serialise config", dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    int rc = mapo_write_file_atomic(p, js, strlen(js));
    free(js);
    return rc;
}

int unet_save_dir(const unet *u, const char *dir) { return unet_save_dir_as(u, dir, ST_F32); }
