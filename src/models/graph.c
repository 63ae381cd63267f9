/* graph.c -- tensors, the autograd tape and the differentiable wrappers of ops.h. */
#include "mapo/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"

void graph_init(graph *g, int grad_enabled) {
    memset(g, 0, sizeof *g);
    g->grad_enabled = grad_enabled;
}

static void account(graph *g, int64_t delta) {
    g->bytes_live += delta;
    if (g->bytes_live > g->bytes_peak) g->bytes_peak = g->bytes_live;
}

static void tensor_free_data(graph *g, tensor *t) {
    if (t->is_param) return;
    if (t->data) {
        free(t->data);
        t->data = NULL;
        account(g, -(int64_t)(t->numel * sizeof(float)));
    }
}
static void tensor_free_bf16(graph *g, tensor *t) { /* graph-owned even for inputs */
    if (t->bf16) {
        free(t->bf16);
        t->bf16 = NULL;
        account(g, -(int64_t)(t->numel * sizeof(uint16_t)));
    }
}
static void tensor_free_grad(graph *g, tensor *t) {
    if (t->is_param) return;
    if (t->grad) {
        free(t->grad);
        t->grad = NULL;
        account(g, -(int64_t)(t->numel * sizeof(float)));
    }
}

void graph_reset(graph *g) {
    for (int i = 0; i < g->n_tensors; i++) {
        tensor *t = g->tensors[i];
        tensor_free_data(g, t);
        tensor_free_grad(g, t);
        tensor_free_bf16(g, t);
        free(t);
    }
    g->n_tensors = 0;
    for (int i = 0; i < g->n_saved; i++) free(g->saved[i]);
    g->n_saved = 0;
    g->n_nodes = 0;
    g->bytes_live = 0;
}

void graph_free(graph *g) {
    graph_reset(g);
    free(g->tensors);
    free(g->nodes);
    free(g->saved);
    memset(g, 0, sizeof *g);
}

static tensor *track(graph *g, tensor *t) {
    if (g->n_tensors == g->cap_tensors) {
        g->cap_tensors = g->cap_tensors ? 2 * g->cap_tensors : 256;
        g->tensors = xrealloc(g->tensors, g->cap_tensors * sizeof *g->tensors);
    }
    g->tensors[g->n_tensors++] = t;
    return t;
}

static void set_shape(tensor *t, int ndim, const int64_t *shape) {
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
}

tensor *graph_new(graph *g, int ndim, const int64_t *shape) {
    tensor *t = xcalloc(1, sizeof *t);
    set_shape(t, ndim, shape);
    t->data = xmalloc(t->numel * sizeof(float));
    account(g, t->numel * sizeof(float));
    return track(g, t);
}
tensor *graph_new4(graph *g, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t s[4] = {a, b, c, d};
    return graph_new(g, 4, s);
}
tensor *graph_new2(graph *g, int64_t a, int64_t b) {
    int64_t s[2] = {a, b};
    return graph_new(g, 2, s);
}

tensor *graph_input(graph *g, float *data, int ndim, const int64_t *shape) {
    tensor *t = xcalloc(1, sizeof *t);
    set_shape(t, ndim, shape);
    t->data = data;
    t->is_param = 1; /* borrowed */
    return track(g, t);
}

void tensor_param(tensor *t, float *data, float *grad, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    set_shape(t, ndim, shape);
    t->data = data;
    t->grad = grad;
    t->is_param = 1;
    t->requires_grad = grad != NULL;
}

/* Selective recomputation (g->recompute, --recompute_norms): the output of a cheap op (a
   LayerNorm, a GroupNorm + SiLU) whose backward reads only its own input is not kept for the
   backwards of the convolutions / linears that consume it. It leaves memory at its release like
   a tensor no backward reads, and the first consumer's backward that needs it writes it again
   (node.regen: the forward's last pass from the saved statistics, the same arithmetic on the
   same values, so the same bits); the regenerated buffer is freed with the tensor when the
   backward reaches its producer. Only tensors all of whose readers regenerate (regen_readers)
   are dropped. */
static int regenerable(const tensor *t) {
    return t->regen_node && t->readers == t->regen_readers;
}

void graph_release(graph *g, tensor *t) {
    if (!t || t->is_param) return;
    if (g->grad_enabled && regenerable(t)) {
        tensor_free_data(g, t);
        tensor_free_bf16(g, t);
    } else if (!g->grad_enabled || t->readers == 0)
        tensor_free_data(g, t);
}

/* t's float32 data for a backward, regenerated when the release dropped it */
static float *graph_data(graph *g, tensor *t) {
    if (!t->data && t->regen_node) {
        node *p = &g->nodes[t->regen_node - 1];
        t->data = xmalloc((size_t)t->numel * sizeof(float));
        account(g, t->numel * (int64_t)sizeof(float));
        p->regen(g, p);
    }
    return t->data;
}

/* t's bf16 copy (nhwc: in NHWC order) for a bf16 weight gradient, regenerated likewise; a
   float32 buffer regenerated only for it is freed again. Every backward reads a bf16 copy
   through here: only graph_release (for a regenerable tensor) and the producer's end in
   graph_backward free one. */
static const uint16_t *graph_data_bf16(graph *g, tensor *t, int nhwc) {
    if (t->bf16) return t->bf16;
    const int had = t->data != NULL;
    const float *x = graph_data(g, t);
    t->bf16 = xmalloc((size_t)t->numel * sizeof(uint16_t));
    if (nhwc)
        mapo_round_bf16_nhwc(t->bf16, x, t->shape[0], t->shape[1], t->shape[2] * t->shape[3]);
    else
        mapo_round_bf16(t->bf16, x, t->numel);
    t->bf16_nhwc = (uint8_t)nhwc;
    account(g, t->numel * (int64_t)sizeof(uint16_t));
    if (!had) tensor_free_data(g, t);
    return t->bf16;
}

/* after recording node n (the last one) for output y: y can be regenerated by fn */
static void mark_regen(graph *g, node *n, backward_fn fn) {
    if (!n || !g->recompute) return;
    n->regen = fn;
    n->out->regen_node = (int32_t)(n - g->nodes) + 1;
}

float *graph_grad(graph *g, tensor *t) {
    if (!t->grad) {
        t->grad = xcalloc(t->numel, sizeof(float));
        account(g, t->numel * sizeof(float));
    }
    return t->grad;
}

static float *save_buf(graph *g, int64_t n) {
    float *p = xmalloc(n * sizeof(float));
    if (g->grad_enabled) {
        if (g->n_saved == g->cap_saved) {
            g->cap_saved = g->cap_saved ? 2 * g->cap_saved : 256;
            g->saved = xrealloc(g->saved, g->cap_saved * sizeof *g->saved);
        }
        g->saved[g->n_saved++] = p;
        account(g, n * sizeof(float));
    }
    return p;
}

/* Append a node (unconditionally) whose output is out. */
static node *new_node(graph *g, backward_fn fn, tensor *out, tensor *a, tensor *b, tensor *c,
                      tensor *d) {
    if (g->n_nodes == g->cap_nodes) {
        g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 256;
        g->nodes = xrealloc(g->nodes, g->cap_nodes * sizeof *g->nodes);
    }
    node *n = &g->nodes[g->n_nodes++];
    memset(n, 0, sizeof *n);
    n->backward = fn;
    n->out = out;
    n->in[0] = a;
    n->in[1] = b;
    n->in[2] = c;
    n->in[3] = d;
    out->requires_grad = 1;
    return n;
}

/* the node's backward will read these inputs' data (bit k: input k) */
static void mark_read(node *n, unsigned reads) {
    for (int k = 0; k < 4; k++)
        if ((reads >> k & 1u) && n->in[k] && !n->in[k]->is_param) n->in[k]->readers++;
}

/* Record a node if gradients are on and any input needs a gradient; its backward reads the
   data of the inputs in `reads` (bit k: input k). */
static node *record_r(graph *g, backward_fn fn, tensor *out, tensor *a, tensor *b, tensor *c,
                      tensor *d, unsigned reads) {
    tensor *const all[4] = {a, b, c, d};
    int need = 0;
    for (int k = 0; k < 4; k++) {
        if (!all[k]) continue;
        if (all[k]->is_param && all[k]->requires_grad) g->saw_trainable = 1;
        need |= all[k]->requires_grad;
    }
    if (!g->grad_enabled || !need) return NULL;
    node *n = new_node(g, fn, out, a, b, c, d);
    mark_read(n, reads);
    return n;
}
/* ... reading every input */
static node *record(graph *g, backward_fn fn, tensor *out, tensor *a, tensor *b, tensor *c,
                    tensor *d) {
    return record_r(g, fn, out, a, b, c, d, 0xfu);
}

/* Hand the buffers saved for backward to node n. Without a node they are not needed: with
   recording off they are freed now (with recording on, save_buf tracked them for reset). */
static void keep_saved(graph *g, node *n, float *a, float *b) {
    if (n) {
        n->saved[0] = a;
        n->saved[1] = b;
    } else if (!g->grad_enabled) {
        free(a);
        free(b);
    }
}

static float *gin(graph *g, node *n, int k) {
    tensor *t = n->in[k];
    return (t && t->requires_grad) ? graph_grad(g, t) : NULL;
}
/* Input k's gradient for a backward that can write it instead of adding to it: in bf16, a
   buffer no earlier backward wrote is handed out unzeroed with *assign = 1, and the caller
   must then write every element (its first write is an assignment). Float32 always gets a
   zeroed buffer to add to, as it always did: 0 + v is not v when v is -0, and float32 keeps
   its bits. */
static float *gin_assign(graph *g, node *n, int k, int *assign) {
    tensor *t = n->in[k];
    *assign = 0;
    if (!t || !t->requires_grad) return NULL;
    if (!t->grad && g->precision != MAPO_F32) {
        t->grad = xmalloc((size_t)t->numel * sizeof(float));
        account(g, t->numel * (int64_t)sizeof(float));
        *assign = 1;
    }
    return graph_grad(g, t);
}

void graph_backward(graph *g, tensor *out) {
    (void)out;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        node *n = &g->nodes[i];
        if (n->out->grad) n->backward(g, n);
        /* Every consumer of n->out was recorded after n and is done: its gradient and
           (for our ops, whose backward reads inputs only) its data are no longer needed. */
        tensor_free_grad(g, n->out);
        tensor_free_data(g, n->out);
        tensor_free_bf16(g, n->out);
    }
}

/* ------------------------------------------------------------------ conv2d */
/* w is a frozen weight held in bf16 (params.h, PARAMS_FROZEN_BF16): its bits in w->bf16, no
   float32 data. Only the bf16 ops read it. */
static int weight_w16(const graph *g, const tensor *w) {
    if (!w->is_param || w->data || !w->bf16) return 0;
    if (g->precision == MAPO_F32) {
        fprintf(stderr, "mapo: error: internal: a weight held in bf16 reached a float32 pass\n");
        exit(2);
    }
    return 1;
}

static void conv2d_bw(graph *g, node *n) {
    tensor *x = n->in[0], *w = n->in[1];
    if (weight_w16(g, w)) { /* frozen: dx only */
        float *dx = gin(g, n, 0);
        if (dx)
            conv2d_backward_data_w16(dx, n->out->grad, w->bf16, (int)x->shape[0],
                                     (int)x->shape[1], (int)x->shape[2], (int)x->shape[3],
                                     (int)w->shape[0], (int)w->shape[2], n->i[0], n->i[1]);
    } else if (n->xb16) { /* bf16: the weight gradient reads the input's bf16 copy */
        int set;
        float *dx = gin_assign(g, n, 0, &set);
        const uint16_t *xb = graph_data_bf16(g, x, 1);
        conv2d_backward_bf16x(dx, gin(g, n, 1), gin(g, n, 2), n->out->grad, xb, w->data,
                              (int)x->shape[0], (int)x->shape[1], (int)x->shape[2],
                              (int)x->shape[3], (int)w->shape[0], (int)w->shape[2], n->i[0],
                              n->i[1], set);
    } else
        conv2d_backward_mp(g->precision, gin(g, n, 0), gin(g, n, 1), gin(g, n, 2),
                           n->out->grad, gin(g, n, 1) ? graph_data(g, x) : x->data, w->data,
                           (int)x->shape[0], (int)x->shape[1], (int)x->shape[2],
                           (int)x->shape[3], (int)w->shape[0],
                           (int)w->shape[2], n->i[0], n->i[1]);
}

/* What the backward of a conv / linear consuming x reads of x: nothing when its weight is frozen
   (dx needs only w); in float32 x itself for the weight gradient; in bf16 a bf16 copy of x
   (made once per tensor, before the forward, shared by its consumers), so x can leave memory at
   its release. */
static unsigned mm_reads(const graph *g, const tensor *w) {
    return w->requires_grad && g->precision == MAPO_F32 ? 0xfu : 0u;
}
/* x's bf16 copy for a bf16 forward (made here when the backward will read it; NULL in float32
   or when no consumer made one): the forward then reads it instead of converting x again. A
   convolution's copy is in NHWC order (nhwc), the layout its bf16 primitives read. */
static const uint16_t *mm_bf16_input(graph *g, tensor *x, const tensor *w, int nhwc) {
    if (g->precision == MAPO_F32) return NULL;
    if (!x->bf16 && g->grad_enabled && w->requires_grad) {
        x->bf16 = xmalloc((size_t)x->numel * sizeof(uint16_t));
        if (nhwc)
            mapo_round_bf16_nhwc(x->bf16, x->data, x->shape[0], x->shape[1],
                                 x->shape[2] * x->shape[3]);
        else
            mapo_round_bf16(x->bf16, x->data, x->numel);
        x->bf16_nhwc = (uint8_t)nhwc;
        account(g, x->numel * (int64_t)sizeof(uint16_t));
    }
    if (x->bf16 && x->bf16_nhwc != nhwc) {
        /* no model feeds one tensor to both a convolution and a linear layer */
        fprintf(stderr, "mapo: error: internal: a tensor feeds a convolution and a linear layer "
                        "in bf16\n");
        exit(2);
    }
    return x->bf16;
}
static void mm_keep_input(graph *g, node *n, tensor *x, const tensor *w) {
    if (n && w->requires_grad && g->precision != MAPO_F32) n->xb16 = 1;
    /* its backward reads x through graph_data / graph_data_bf16 */
    if (n && !x->is_param && (mm_reads(g, w) & 1u)) x->regen_readers++;
}
tensor *t_conv2d(graph *g, tensor *x, tensor *w, tensor *b, int stride, int pad) {
    int B = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    int Cout = w->shape[0], K = w->shape[2];
    int Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    tensor *y = graph_new4(g, B, Cout, Ho, Wo);
    const uint16_t *x16 = mm_bf16_input(g, x, w, 1);
    if (weight_w16(g, w))
        conv2d_forward_w16(y->data, x->data, x16, w->bf16, b ? b->data : NULL, B, Cin, H, W,
                           Cout, K, stride, pad);
    else if (x16)
        conv2d_forward_bf16x(y->data, x16, w->data, b ? b->data : NULL, B, Cin, H, W, Cout, K,
                             stride, pad);
    else
        conv2d_forward_mp(g->precision, y->data, x->data, w->data, b ? b->data : NULL, B, Cin,
                          H, W, Cout, K, stride, pad);
    node *n = record_r(g, conv2d_bw, y, x, w, b, NULL, mm_reads(g, w));
    mm_keep_input(g, n, x, w);
    if (n) {
        n->i[0] = stride;
        n->i[1] = pad;
    }
    return y;
}

/* ------------------------------------------------------------------ linear */
static int64_t rows_of(const tensor *x) { return x->numel / x->shape[x->ndim - 1]; }

static void linear_bw(graph *g, node *n) {
    tensor *x = n->in[0], *w = n->in[1];
    if (weight_w16(g, w)) { /* frozen: dx only */
        float *dx = gin(g, n, 0);
        if (dx)
            linear_backward_data_w16(dx, n->out->grad, w->bf16, rows_of(x), (int)w->shape[1],
                                     (int)w->shape[0]);
    } else if (n->xb16) {
        int set;
        float *dx = gin_assign(g, n, 0, &set);
        linear_backward_bf16x(dx, gin(g, n, 1), gin(g, n, 2), n->out->grad,
                              graph_data_bf16(g, x, 0), w->data,
                              rows_of(x), (int)w->shape[1], (int)w->shape[0], set);
    } else
        linear_backward_mp(g->precision, gin(g, n, 0), gin(g, n, 1), gin(g, n, 2),
                           n->out->grad, gin(g, n, 1) ? graph_data(g, x) : x->data, w->data,
                           rows_of(x), (int)w->shape[1], (int)w->shape[0]);
}
tensor *t_linear(graph *g, tensor *x, tensor *w, tensor *b) {
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = w->shape[0];
    tensor *y = graph_new(g, x->ndim, shape);
    const uint16_t *x16 = mm_bf16_input(g, x, w, 0);
    if (weight_w16(g, w))
        linear_forward_w16(y->data, x->data, x16, w->bf16, b ? b->data : NULL, rows_of(x),
                           (int)w->shape[1], (int)w->shape[0]);
    else if (x16)
        linear_forward_bf16x(y->data, x16, w->data, b ? b->data : NULL, rows_of(x),
                             (int)w->shape[1], (int)w->shape[0]);
    else
        linear_forward_mp(g->precision, y->data, x->data, w->data, b ? b->data : NULL,
                          rows_of(x), (int)w->shape[1], (int)w->shape[0]);
    mm_keep_input(g, record_r(g, linear_bw, y, x, w, b, NULL, mm_reads(g, w)), x, w);
    return y;
}

/* ------------------------------------------------------------------ norms */
static void group_norm_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    group_norm_backward_mp(g->precision, gin(g, n, 0), gin(g, n, 1), gin(g, n, 2),
                           n->out->grad, x->data, n->saved[0], n->saved[1], n->in[1]->data,
                           (int)x->shape[0], (int)x->shape[1],
                           x->numel / (x->shape[0] * x->shape[1]), n->i[0]);
}
tensor *t_group_norm(graph *g, tensor *x, tensor *gamma, tensor *beta, int groups,
                     double eps) {
    int B = x->shape[0], C = x->shape[1];
    int64_t HW = x->numel / ((int64_t)B * C);
    tensor *y = graph_new(g, x->ndim, x->shape);
    float *mean = save_buf(g, (int64_t)B * groups), *rstd = save_buf(g, (int64_t)B * groups);
    group_norm_forward_mp(g->precision, y->data, mean, rstd, x->data, gamma->data, beta->data, B,
                          C, HW, groups, eps);
    node *n = record(g, group_norm_bw, y, x, gamma, beta, NULL);
    keep_saved(g, n, mean, rstd);
    if (n) n->i[0] = groups;
    return y;
}

/* The two ops' backwards in turn, the SiLU's input (the GroupNorm's output) recomputed: its
   gradient starts from zeros as a fresh activation gradient does, so the bits are the two
   ops'. */
static void group_norm_silu_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    const int B = (int)x->shape[0], C = (int)x->shape[1], G = n->i[0];
    const int64_t HW = x->numel / ((int64_t)B * C), bytes = x->numel * (int64_t)sizeof(float);
    float *h = xmalloc((size_t)bytes), *dh = xcalloc((size_t)x->numel, sizeof(float));
    account(g, 2 * bytes);
    group_norm_apply(h, x->data, n->saved[0], n->saved[1], n->in[1]->data, n->in[2]->data, B,
                     C, HW, G);
    silu_backward(dh, n->out->grad, h, x->numel);
    free(h);
    group_norm_backward_mp(g->precision, gin(g, n, 0), gin(g, n, 1), gin(g, n, 2), dh, x->data,
                           n->saved[0], n->saved[1], n->in[1]->data, B, C, HW, G);
    free(dh);
    account(g, -2 * bytes);
}
/* the forward's output again into n->out->data: group_norm_apply from the saved statistics
   gives the forward's GroupNorm bits, and the SiLU runs in place on it */
static void group_norm_silu_regen(graph *g, node *n) {
    (void)g;
    tensor *x = n->in[0];
    const int B = (int)x->shape[0], C = (int)x->shape[1];
    float *y = n->out->data;
    group_norm_apply(y, x->data, n->saved[0], n->saved[1], n->in[1]->data, n->in[2]->data, B, C,
                     x->numel / ((int64_t)B * C), n->i[0]);
    silu_forward(y, y, x->numel);
}
tensor *t_group_norm_silu(graph *g, tensor *x, tensor *gamma, tensor *beta, int groups,
                          double eps) {
    const int B = x->shape[0], C = x->shape[1];
    const int64_t HW = x->numel / ((int64_t)B * C);
    tensor *y = graph_new(g, x->ndim, x->shape);
    float *h = xmalloc((size_t)x->numel * sizeof(float));
    account(g, x->numel * (int64_t)sizeof(float));
    float *mean = save_buf(g, (int64_t)B * groups), *rstd = save_buf(g, (int64_t)B * groups);
    group_norm_forward_mp(g->precision, h, mean, rstd, x->data, gamma->data, beta->data, B, C,
                          HW, groups, eps);
    silu_forward(y->data, h, x->numel);
    free(h);
    account(g, -x->numel * (int64_t)sizeof(float));
    node *n = record(g, group_norm_silu_bw, y, x, gamma, beta, NULL);
    keep_saved(g, n, mean, rstd);
    if (n) n->i[0] = groups;
    mark_regen(g, n, group_norm_silu_regen);
    return y;
}

static void layer_norm_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    layer_norm_backward_mp(g->precision, gin(g, n, 0), gin(g, n, 1), gin(g, n, 2),
                           n->out->grad, x->data, n->saved[0], n->saved[1], n->in[1]->data,
                           rows_of(x), (int)x->shape[x->ndim - 1]);
}
/* the output again from the row statistics in double the forward kept after mean and rstd */
static void layer_norm_regen(graph *g, node *n) {
    (void)g;
    tensor *x = n->in[0];
    const int64_t N = rows_of(x);
    layer_norm_apply(n->out->data, x->data, (const double *)(n->saved[0] + 2 * N),
                     n->in[1]->data, n->in[2]->data, N, (int)x->shape[x->ndim - 1]);
}
tensor *t_layer_norm(graph *g, tensor *x, tensor *gamma, tensor *beta, double eps) {
    int64_t N = rows_of(x);
    int C = x->shape[x->ndim - 1];
    tensor *y = graph_new(g, x->ndim, x->shape);
    /* with recomputation one buffer: mean [N], rstd [N], then [N][2] doubles for regen */
    const int st = g->grad_enabled && g->recompute;
    float *mean = save_buf(g, st ? 6 * N : N), *rstd = st ? mean + N : save_buf(g, N);
    layer_norm_forward_st_mp(g->precision, y->data, mean, rstd,
                             st ? (double *)(mean + 2 * N) : NULL, x->data, gamma->data,
                             beta->data, N, C, eps);
    node *n = record(g, layer_norm_bw, y, x, gamma, beta, NULL);
    keep_saved(g, n, mean, rstd);
    mark_regen(g, n, layer_norm_regen);
    return y;
}

/* ------------------------------------------------------------------ activations */
static void silu_bw(graph *g, node *n) {
    silu_backward(gin(g, n, 0), n->out->grad, n->in[0]->data, n->out->numel);
}
tensor *t_silu(graph *g, tensor *x) {
    tensor *y = graph_new(g, x->ndim, x->shape);
    silu_forward(y->data, x->data, x->numel);
    record(g, silu_bw, y, x, NULL, NULL, NULL);
    return y;
}

static void geglu_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    geglu_backward(gin(g, n, 0), n->out->grad, x->data, rows_of(x),
                   (int)(x->shape[x->ndim - 1] / 2));
}
tensor *t_geglu(graph *g, tensor *x) {
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] /= 2;
    tensor *y = graph_new(g, x->ndim, shape);
    geglu_forward(y->data, x->data, rows_of(x), (int)shape[x->ndim - 1]);
    record(g, geglu_bw, y, x, NULL, NULL, NULL);
    return y;
}

/* ------------------------------------------------------------------ attention */
static void attention_bw(graph *g, node *n) {
    tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
    int B = q->shape[0], Nq = q->shape[1], Nk = k->shape[1], C = q->shape[2], H = n->i[0];
    /* the kernel assigns all three gradients or adds to all three: it assigns when each is
       fresh (or not wanted) and q, k, v are distinct tensors; a fresh one is zeroed otherwise */
    float *d[3];
    int set[3], all = q != k && q != v && k != v;
    for (int i = 0; i < 3; i++) {
        d[i] = gin_assign(g, n, i, &set[i]);
        all &= set[i] || !d[i];
    }
    for (int i = 0; i < 3 && !all; i++)
        if (set[i]) mapo_zero(d[i], (size_t)n->in[i]->numel * sizeof(float));
    attention_backward_mp(g->precision, d[0], d[1], d[2], n->out->grad, n->out->data,
                          n->saved[0], q->data, k->data, v->data, B, H, Nq, Nk, C / H, n->d[0],
                          (const uint16_t *)n->saved[1], all);
}
tensor *t_attention(graph *g, tensor *q, tensor *k, tensor *v, int heads) {
    int B = q->shape[0], Nq = q->shape[1], Nk = k->shape[1], C = q->shape[2];
    int Dh = C / heads;
    double scale = 1.0 / sqrt((double)Dh);
    tensor *y = graph_new(g, 3, q->shape);
    float *P = save_buf(g, (int64_t)B * heads * Nq); /* row log-sum-exp */
    /* in bf16, q, k and v as the backward's products read them, in place of the tensors */
    const int64_t nkeep =
        g->grad_enabled ? attention_kept_bf16(g->precision, B, heads, Nq, Nk, Dh) : 0;
    float *keep = nkeep ? save_buf(g, (nkeep + 1) / 2) : NULL;
    attention_forward_mp(g->precision, y->data, P, q->data, k->data, v->data, B, heads, Nq, Nk,
                         Dh, scale, (uint16_t *)keep);
    node *n = record_r(g, attention_bw, y, q, k, v, NULL, keep ? 0u : 0xfu);
    if (n) y->readers++; /* its backward reads the output as well */
    keep_saved(g, n, P, keep);
    if (n) {
        n->i[0] = heads;
        n->d[0] = scale;
    }
    return y;
}

/* ------------------------------------------------------------------ shape ops */
static void upsample_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    upsample_nearest2x_backward(gin(g, n, 0), n->out->grad, x->shape[0] * x->shape[1],
                                (int)x->shape[2], (int)x->shape[3]);
}
tensor *t_upsample2x(graph *g, tensor *x) {
    tensor *y = graph_new4(g, x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]);
    upsample_nearest2x_forward(y->data, x->data, x->shape[0] * x->shape[1], (int)x->shape[2],
                               (int)x->shape[3]);
    record_r(g, upsample_bw, y, x, NULL, NULL, NULL, 0);
    return y;
}

/* dst[n] += src[n] (gradient of an identity path) */
static void accumulate(float *dst, const float *src, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* The gradient dy of an identity path from n's output (same shape) into input k. In bf16 the
   first input whose gradient nothing wrote yet takes the output's gradient buffer itself
   (released after this backward anyway; *taken then says so, and dy stays readable), a
   second such input gets a copy; otherwise dy is added. */
static void identity_grad(graph *g, node *n, int k, const float *dy, int *taken) {
    tensor *t = n->in[k];
    if (!t || !t->requires_grad) return;
    if (!t->grad && g->precision != MAPO_F32 && !*taken) {
        t->grad = n->out->grad;
        n->out->grad = NULL;
        *taken = 1;
        return;
    }
    int set;
    float *d = gin_assign(g, n, k, &set);
    const int64_t m = t->numel;
    if (!set) {
        accumulate(d, dy, m);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++) d[i] = dy[i];
}

static void add_bw(graph *g, node *n) {
    const float *dy = n->out->grad;
    int taken = 0;
    for (int k = 0; k < 2; k++) identity_grad(g, n, k, dy, &taken);
}
tensor *t_add(graph *g, tensor *a, tensor *b) {
    tensor *y = graph_new(g, a->ndim, a->shape);
    int64_t m = a->numel;
    const float *pa = a->data, *pb = b->data;
    float *py = y->data;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++) py[i] = pa[i] + pb[i];
    record_r(g, add_bw, y, a, b, NULL, NULL, 0);
    return y;
}

static void add_channel_bias_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    int B = x->shape[0], C = x->shape[1];
    int64_t HW = x->numel / ((int64_t)B * C);
    const float *dy = n->out->grad;
    float *dv = gin(g, n, 1);
    if (dv) add_channel_bias_backward(dv, dy, B, C, HW);
    int taken = 0;
    identity_grad(g, n, 0, dy, &taken);
}
tensor *t_add_channel_bias(graph *g, tensor *x, tensor *v) {
    int B = x->shape[0], C = x->shape[1];
    tensor *y = graph_new(g, x->ndim, x->shape);
    add_channel_bias_forward(y->data, x->data, v->data, B, C, x->numel / ((int64_t)B * C));
    record_r(g, add_channel_bias_bw, y, x, v, NULL, NULL, 0);
    return y;
}

static void concat_bw(graph *g, node *n) {
    tensor *a = n->in[0], *b = n->in[1];
    concat_channels_backward(gin(g, n, 0), gin(g, n, 1), n->out->grad, (int)a->shape[0],
                             (int)a->shape[1], (int)b->shape[1], a->shape[2] * a->shape[3]);
}
tensor *t_concat_channels(graph *g, tensor *a, tensor *b) {
    tensor *y = graph_new4(g, a->shape[0], a->shape[1] + b->shape[1], a->shape[2], a->shape[3]);
    concat_channels_forward(y->data, a->data, b->data, (int)a->shape[0], (int)a->shape[1],
                            (int)b->shape[1], a->shape[2] * a->shape[3]);
    record_r(g, concat_bw, y, a, b, NULL, NULL, 0);
    return y;
}

static void to_nhwc_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    float *dx = gin(g, n, 0);
    int B = x->shape[0], C = x->shape[1];
    int64_t HW = x->shape[2] * x->shape[3];
    nhwc_to_nchw_tiled(dx, n->out->grad, B, C, HW, 1); /* dx += transpose(dy) */
}
tensor *t_nchw_to_nhwc(graph *g, tensor *x) {
    int B = x->shape[0], C = x->shape[1];
    int64_t HW = x->shape[2] * x->shape[3];
    tensor *y = graph_new(g, 3, (int64_t[]){B, HW, C});
    nchw_to_nhwc_tiled(y->data, x->data, B, C, HW, 0);
    record_r(g, to_nhwc_bw, y, x, NULL, NULL, NULL, 0);
    return y;
}

static void to_nchw_bw(graph *g, node *n) {
    tensor *x = n->in[0];
    float *dx = gin(g, n, 0);
    int B = x->shape[0], C = x->shape[2];
    int64_t HW = x->shape[1];
    nchw_to_nhwc_tiled(dx, n->out->grad, B, C, HW, 1); /* dx += transpose(dy) */
}
tensor *t_nhwc_to_nchw(graph *g, tensor *x, int64_t H, int64_t W) {
    int B = x->shape[0], C = x->shape[2];
    tensor *y = graph_new4(g, B, C, H, W);
    nhwc_to_nchw_tiled(y->data, x->data, B, C, H * W, 0);
    record_r(g, to_nchw_bw, y, x, NULL, NULL, NULL, 0);
    return y;
}

tensor *t_timestep_embedding(graph *g, const float *t, int64_t N, int dim, int flip,
                             double shift) {
    tensor *y = graph_new2(g, N, dim);
    timestep_embedding_forward(y->data, t, N, dim, flip, shift);
    return y;
}

/* ------------------------------------------------------------------ checkpointing */
static void sub_graph(graph *sg, const graph *g, int grad_enabled) {
    graph_init(sg, grad_enabled);
    sg->precision = g->precision;
    sg->recompute = g->recompute;
}

/* the segment's transient memory counts in the outer graph's peak */
static void fold_peak(graph *g, const graph *sg) {
    const size_t peak = g->bytes_live + sg->bytes_peak;
    if (peak > g->bytes_peak) g->bytes_peak = peak;
}

static void checkpoint_bw(graph *g, node *n) {
    graph sg;
    sub_graph(&sg, g, 1);
    tensor *in[4] = {0};
    for (int k = 0; k < n->i[0]; k++) {
        tensor *t = n->in[k];
        /* borrowed data; the gradient is the outer graph's, so it accumulates there in order */
        in[k] = graph_input(&sg, t->data, t->ndim, t->shape);
        if (t->requires_grad) {
            in[k]->grad = graph_grad(g, t);
            in[k]->requires_grad = 1;
        }
    }
    tensor *y = n->seg(&sg, n->ctx, in);
    memcpy(graph_grad(&sg, y), n->out->grad, y->numel * sizeof(float));
    graph_backward(&sg, y);
    fold_peak(g, &sg);
    graph_free(&sg);
}

tensor *t_checkpoint(graph *g, segment_fn fn, const void *ctx, size_t ctx_size, tensor *const *in,
                     int n_in) {
    if (!g->grad_enabled || !g->checkpointing) return fn(g, ctx, in);
    graph sg;
    sub_graph(&sg, g, 0);
    tensor *vin[4] = {0};
    int need = 0;
    for (int k = 0; k < n_in; k++) {
        vin[k] = graph_input(&sg, in[k]->data, in[k]->ndim, in[k]->shape);
        need |= in[k]->requires_grad;
    }
    tensor *r = fn(&sg, ctx, vin);
    need |= sg.saw_trainable;
    /* the output moves into g; everything else the segment made is already freed */
    tensor *y = xcalloc(1, sizeof *y);
    set_shape(y, r->ndim, r->shape);
    y->data = r->data;
    r->data = NULL;
    account(&sg, -(int64_t)(y->numel * sizeof(float)));
    account(g, y->numel * sizeof(float));
    track(g, y);
    fold_peak(g, &sg);
    graph_free(&sg);
    if (!need) return y;
    node *n = new_node(g, checkpoint_bw, y, n_in > 0 ? in[0] : NULL, n_in > 1 ? in[1] : NULL,
                       n_in > 2 ? in[2] : NULL, n_in > 3 ? in[3] : NULL);
    mark_read(n, 0xfu); /* the recomputation reads them */
    n->i[0] = n_in;
    n->seg = fn;
    n->ctx = save_buf(g, (int64_t)((ctx_size + sizeof(float) - 1) / sizeof(float)));
    memcpy(n->ctx, ctx, ctx_size);
    return y;
}
