/* engine.c -- the mixed-precision convolutions and matrix products of ops.h, on oneDNN.
 *
 * MAPO_F32 calls the float kernels of kernels.c, unchanged (bit for bit what mapo computed
 * before mixed precision existed). MAPO_BF16 works as torch.autocast(bfloat16): operands are
 * rounded to bf16 by oneDNN reorders (round to nearest even), the primitive multiplies bf16 x
 * bf16 and accumulates in float32 (AVX512-BF16 vdpbf16ps), results are float32.
 *
 *   conv forward         y  = conv(bf16 x, bf16 w) + b          (oneDNN convolution)
 *   conv backward data   dx += conv_bwd_data(bf16 dy, bf16 w)   (reorder with a sum post-op)
 *   conv backward weights dw += conv_bwd_weights(bf16 x, bf16 dy)
 *   linear               y  = bf16 x @ bf16 w^T + b             (oneDNN matmul)
 *   linear backward      dx += bf16 dy @ bf16 w, dw += bf16 dy^T @ bf16 x (matmul, sum post-op)
 *   bias gradients       db += sum(dy): a convolution's in float32 (kernels.c, exact as in the
 *                        float path), a linear's in double over row blocks (round_bf16_colsum)
 *
 * Each distinct problem (kind, shapes) builds its primitive and the reorders between mapo's
 * plain float32 layouts (NCHW, OIHW, row-major) and the blocked bf16 layouts the primitive
 * chose once, and keeps them in a small cache: building a oneDNN primitive costs milliseconds.
 * The primitive-side copies (bf16 operands, blocked outputs) and scratchpads live in grow-only
 * workspaces mapped apart from the heap (engine_workspace). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <oneapi/dnnl/dnnl.h>

#include "mapo/bf16.h"
#include "mapo/common.h"
#include "mapo/ops.h"
#include "blocked.h"
#include "engine_internal.h"
#include "layout.h"

#define MAX_IN 2

void engine_fatal(dnnl_status_t s, const char *what) {
    fprintf(stderr, "mapo: error: oneDNN failed (%s, status %d)\n", what, (int)s);
    exit(2);
}
dnnl_engine_t g_eng;
static dnnl_stream_t g_strm;

void engine_init(void) {
    if (g_eng) return;
    DN(dnnl_engine_create(&g_eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&g_strm, g_eng, dnnl_stream_default_flags));
}

/* ------------------------------------------------------------------ primitives */
/* Every primitive uses a user-provided scratchpad, taken from one grow-only workspace: with
   oneDNN's own (library) scratchpads every execution allocated, and the heap fragmented. */
typedef struct {
    dnnl_primitive_t p;
    dnnl_memory_t scratch;
    size_t scratch_bytes;
} prim_t;

dnnl_primitive_attr_t attr_new(int sum) {
    dnnl_primitive_attr_t attr;
    DN(dnnl_primitive_attr_create(&attr));
    DN(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (sum) {
        dnnl_post_ops_t po;
        DN(dnnl_post_ops_create(&po));
        DN(dnnl_post_ops_append_sum(po, 1.0f));
        DN(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    return attr;
}

/* the primitive of pd (pd is destroyed) */
static prim_t prim_make(dnnl_primitive_desc_t pd) {
    prim_t r = {0};
    DN(dnnl_primitive_create(&r.p, pd));
    const dnnl_memory_desc_t *sm = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    r.scratch_bytes = sm ? dnnl_memory_desc_get_size(sm) : 0;
    if (r.scratch_bytes) DN(dnnl_memory_create(&r.scratch, sm, g_eng, DNNL_MEMORY_NONE));
    dnnl_primitive_desc_destroy(pd);
    return r;
}

/* args must have room for one more entry (the scratchpad) */
static void prim_exec(const prim_t *p, int na, dnnl_exec_arg_t *args) {
    if (p->scratch_bytes) {
        DN(dnnl_memory_set_data_handle(p->scratch,
                                       engine_workspace(WS_SCRATCH, p->scratch_bytes)));
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratch};
    }
    DN(dnnl_primitive_execute(p->p, g_strm, na, args));
}

/* ------------------------------------------------------------------ one cached problem */
/* How an operand goes between mapo's buffer and the primitive's (io.xpose): a oneDNN reorder
   (XP_NONE), one of layout.c's transposes between NCHW and NHWC, mapo_round_bf16, or
   blocked.c's map between a plain float32 buffer and a blocked layout (io.map). */
enum { XP_NONE, XP_IN_F32, XP_IN_U16, XP_OUT, XP_OUT_ACC, XP_IN_ROUND, XP_IN_BLOCKED,
       XP_IN_BLOCKED16, XP_OUT_BLOCKED, XP_OUT_BLOCKED_ACC };

typedef struct {
    dnnl_memory_t user, prim;  /* prim == user when no conversion is needed */
    prim_t reorder;            /* user -> prim (inputs) or prim -> user (output); .p NULL: none */
    int xpose;                 /* XP_NONE, or mapo's conversion that replaces the reorder */
    blocked_map *map;          /* XP_*_BLOCKED's */
    int64_t dims[4];           /* B, C, H, W of a converted operand (1s past its dims) */
    size_t prim_bytes;
    int arg;
} io;

typedef struct {
    int64_t key[12];
    prim_t prim;
    io in[MAX_IN], out;
    int nin;
    int bias_arg; /* 0: none */
    dnnl_memory_t bias;
} op;

static op *g_ops;
static int g_nops, g_capops;

static op *op_find(const int64_t key[12]) {
    for (int i = 0; i < g_nops; i++)
        if (!memcmp(g_ops[i].key, key, sizeof g_ops[i].key)) return &g_ops[i];
    return NULL;
}

static op *op_new(const int64_t key[12]) {
    if (g_nops == g_capops) {
        g_capops = g_capops ? 2 * g_capops : 64;
        g_ops = xrealloc(g_ops, g_capops * sizeof *g_ops);
    }
    op *o = &g_ops[g_nops++];
    memset(o, 0, sizeof *o);
    memcpy(o->key, key, sizeof o->key);
    return o;
}

static prim_t reorder_new(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                          int accumulate) {
    dnnl_primitive_attr_t attr = attr_new(accumulate);
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, from, g_eng, to, g_eng, attr));
    dnnl_primitive_attr_destroy(attr);
    return prim_make(pd);
}

/* mapo's own conversion between a user buffer umd and the primitive's pmd, when one applies:
   a float32 input the primitive reads as bf16 in the same layout (mapo_round_bf16 over the
   dense buffer), or a layout.c transpose between NCHW (float32, or bf16 bits for an input) and
   the primitive's NHWC (bf16 for an input, float32 for an output). XP_NONE otherwise. */
static int io_xpose(const dnnl_memory_desc_t *umd, const dnnl_memory_desc_t *pmd, int is_out,
                    int accumulate) {
    if (!is_out && umd->data_type == dnnl_f32 && pmd->data_type == dnnl_bf16) {
        /* the same layout in bf16 over a dense buffer: rounding in memory order */
        dnnl_memory_desc_t b = *umd;
        b.data_type = dnnl_bf16;
        int64_t n = 1;
        for (int i = 0; i < umd->ndims; i++) n *= umd->dims[i];
        if (dnnl_memory_desc_equal(&b, pmd) &&
            dnnl_memory_desc_get_size(umd) == (size_t)n * sizeof(float))
            return XP_IN_ROUND;
    }
    if (umd->ndims != 4) return XP_NONE;
    const dnnl_memory_desc_t nchw = md_tag(4, umd->dims, umd->data_type, dnnl_nchw);
    const dnnl_memory_desc_t nhwc = md_tag(4, umd->dims, pmd->data_type, dnnl_nhwc);
    if (!dnnl_memory_desc_equal(umd, &nchw) || !dnnl_memory_desc_equal(pmd, &nhwc))
        return XP_NONE;
    if (is_out)
        return umd->data_type == dnnl_f32 && pmd->data_type == dnnl_f32
                   ? (accumulate ? XP_OUT_ACC : XP_OUT)
                   : XP_NONE;
    if (pmd->data_type != dnnl_bf16) return XP_NONE;
    return umd->data_type == dnnl_f32 ? XP_IN_F32
                                      : umd->data_type == dnnl_bf16 ? XP_IN_U16 : XP_NONE;
}

/* Wire argument `arg` of the primitive (descriptor pd) to a user buffer described by umd.
   Inputs are reordered user -> primitive layout when they differ; the output always goes
   through a reorder when `accumulate` (+= into the user buffer) or the layouts differ. */
static void io_init(io *x, const_dnnl_primitive_desc_t pd, int arg,
                    const dnnl_memory_desc_t *umd, int is_out, int accumulate) {
    const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md,
                                                                 arg);
    x->arg = arg;
    DN(dnnl_memory_create(&x->user, umd, g_eng, DNNL_MEMORY_NONE));
    if (!accumulate && dnnl_memory_desc_equal(umd, pmd)) {
        x->prim = x->user;
        return;
    }
    DN(dnnl_memory_create(&x->prim, pmd, g_eng, DNNL_MEMORY_NONE));
    x->prim_bytes = dnnl_memory_desc_get_size(pmd);
    x->xpose = io_xpose(umd, pmd, is_out, accumulate);
    if (!x->xpose && pmd->data_type == (is_out ? dnnl_f32 : dnnl_bf16) &&
        (x->map = blocked_map_new(umd, pmd)))
        x->xpose = is_out ? (accumulate ? XP_OUT_BLOCKED_ACC : XP_OUT_BLOCKED)
                          : umd->data_type == dnnl_bf16 ? XP_IN_BLOCKED16 : XP_IN_BLOCKED;
    if (x->xpose) {
        for (int i = 0; i < 4; i++) x->dims[i] = i < umd->ndims ? umd->dims[i] : 1;
        return;
    }
    x->reorder = is_out ? reorder_new(pmd, umd, accumulate) : reorder_new(umd, pmd, 0);
}

static void exec2(const prim_t *p, dnnl_memory_t src, dnnl_memory_t dst) {
    dnnl_exec_arg_t a[3] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
    prim_exec(p, 2, a);
}

/* x's conversion (x->reorder or x->xpose) from its user buffer to its primitive buffer (an
   input), or back (the output) */
static void io_convert(const io *x, int is_out) {
    if (x->reorder.p) {
        if (is_out)
            exec2(&x->reorder, x->prim, x->user);
        else
            exec2(&x->reorder, x->user, x->prim);
        return;
    }
    void *u, *p;
    DN(dnnl_memory_get_data_handle(x->user, &u));
    DN(dnnl_memory_get_data_handle(x->prim, &p));
    const int64_t B = x->dims[0], C = x->dims[1], HW = x->dims[2] * x->dims[3];
    switch (x->xpose) {
    case XP_IN_F32: layout_nchw_to_nhwc_bf16(p, u, B, C, HW); break;
    case XP_IN_U16: layout_nchw_to_nhwc_u16(p, u, B, C, HW); break;
    case XP_OUT: layout_nhwc_to_nchw_f32(u, p, B, C, HW, 0); break;
    case XP_OUT_ACC: layout_nhwc_to_nchw_f32(u, p, B, C, HW, 1); break;
    case XP_IN_ROUND: mapo_round_bf16(p, u, B * C * HW); break;
    case XP_IN_BLOCKED: blocked_from_plain_bf16(x->map, p, u); break;
    case XP_IN_BLOCKED16: blocked_from_plain_u16(x->map, p, u); break;
    case XP_OUT_BLOCKED: blocked_to_plain_f32(x->map, u, p, 0); break;
    case XP_OUT_BLOCKED_ACC: blocked_to_plain_f32(x->map, u, p, 1); break;
    }
}

static void op_finish(op *o, dnnl_primitive_desc_t pd, int nin, const int *in_args,
                      const dnnl_memory_desc_t *in_umd, int out_arg,
                      const dnnl_memory_desc_t *out_umd, int accumulate_out, int bias_arg,
                      const dnnl_memory_desc_t *bias_md) {
    o->nin = nin;
    for (int i = 0; i < nin; i++) io_init(&o->in[i], pd, in_args[i], &in_umd[i], 0, 0);
    io_init(&o->out, pd, out_arg, out_umd, 1, accumulate_out);
    o->bias_arg = bias_arg;
    if (bias_arg) DN(dnnl_memory_create(&o->bias, bias_md, g_eng, DNNL_MEMORY_NONE));
    o->prim = prim_make(pd);
}

/* The primitive-side copies (bf16 operands, blocked outputs) live in one grow-only buffer per
   slot, reused by every call: allocating them per call fragmented the heap (the resident size
   of a bench run grew by 40% over five steps). They hold at most the largest operand seen. */
void *engine_grow(void **buf, size_t *have, size_t bytes) {
    if (bytes > *have) {
        /* mapped apart from the heap, so growing it never leaves a hole between activations */
        if (*buf) munmap(*buf, *have);
        bytes = (bytes + 65535) & ~(size_t)65535;
        *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (*buf == MAP_FAILED) {
            fprintf(stderr, "mapo: error: out of memory mapping a %zu-byte oneDNN workspace\n",
                    bytes);
            exit(2);
        }
        *have = bytes;
    }
    return *buf;
}
static void *g_ws[WS_SLOTS];
static size_t g_ws_bytes[WS_SLOTS];
void *engine_workspace(int slot, size_t bytes) {
    return engine_grow(&g_ws[slot], &g_ws_bytes[slot], bytes);
}
size_t mapo_engine_workspace_bytes(void) {
    size_t s = engine_attention_buffer_bytes();
    for (int i = 0; i < WS_SLOTS; i++) s += g_ws_bytes[i];
    return s;
}

/* Bind o's inputs to the user buffers in[] (reordered into the workspace slot of each input
   when the primitive wants another layout or type) and fill their exec args; returns their
   count. */
static int bind_inputs(op *o, const void *const *in, dnnl_exec_arg_t *args) {
    for (int i = 0; i < o->nin; i++) {
        io *x = &o->in[i];
        DN(dnnl_memory_set_data_handle(x->user, (void *)in[i]));
        if (x->prim != x->user) {
            DN(dnnl_memory_set_data_handle(x->prim, engine_workspace(i, x->prim_bytes)));
            io_convert(x, 0);
        }
        args[i] = (dnnl_exec_arg_t){x->arg, x->prim};
    }
    return o->nin;
}

/* Run o on user buffers: in[] (float32, plain), out (float32, plain), bias (or NULL). */
static void op_run(op *o, const void *const *in, void *out, const float *bias) {
    dnnl_exec_arg_t args[MAX_IN + 3];
    int na = bind_inputs(o, in, args);
    io *y = &o->out;
    DN(dnnl_memory_set_data_handle(y->user, out));
    if (y->prim != y->user)
        DN(dnnl_memory_set_data_handle(y->prim, engine_workspace(WS_OUT, y->prim_bytes)));
    args[na++] = (dnnl_exec_arg_t){y->arg, y->prim};
    if (o->bias_arg && bias) {
        DN(dnnl_memory_set_data_handle(o->bias, (void *)bias));
        args[na++] = (dnnl_exec_arg_t){o->bias_arg, o->bias};
    }
    prim_exec(&o->prim, na, args);
    if (y->prim != y->user) {
        DN(dnnl_stream_wait(g_strm));
        io_convert(y, 1);
    }
    DN(dnnl_stream_wait(g_strm));
}

/* ------------------------------------------------------------------ descriptors */
dnnl_memory_desc_t md_tag(int nd, const int64_t *dims, dnnl_data_type_t dt,
                                 dnnl_format_tag_t tag) {
    dnnl_memory_desc_t m;
    dnnl_dims_t d = {0}; /* the API reads a whole dnnl_dims_t */
    memcpy(d, dims, nd * sizeof *dims);
    DN(dnnl_memory_desc_init_by_tag(&m, nd, d, dt, tag));
    return m;
}
dnnl_memory_desc_t md_strides(int nd, const int64_t *dims, dnnl_data_type_t dt,
                                     const int64_t *strides) {
    dnnl_memory_desc_t m;
    dnnl_dims_t d = {0}, s = {0};
    memcpy(d, dims, nd * sizeof *dims);
    memcpy(s, strides, nd * sizeof *strides);
    DN(dnnl_memory_desc_init_by_strides(&m, nd, d, dt, s));
    return m;
}

/* ..._16: reading operands already in bf16: the forward its input x16; the backward kinds
   dy16 (and the weight gradients x16), rounded once for both gradients (*_bf16x);
   K_CONV_BWD_DATA16_SET writes dx instead of adding to it */
enum { K_CONV_FWD = 1, K_CONV_BWD_DATA, K_CONV_BWD_W, K_MM_FWD, K_MM_DX, K_MM_DW, K_PROBE,
       K_CONV_BWD_W16, K_MM_DW16, K_CONV_FWD16, K_MM_FWD16, K_CONV_BWD_DATA16, K_MM_DX16,
       K_CONV_BWD_DATA16_SET };

/* conv geometry: user descriptors and the forward descriptor every conv kind starts from */
typedef struct {
    dnnl_memory_desc_t x, w, y, b;          /* user: f32 nchw, oihw, nchw, x */
    dnnl_memory_desc_t xa, wa, ya, ya_f32;  /* primitive side: bf16 any (y f32 any) */
    dnnl_dims_t st, pl;
} conv_geo;

static void conv_geo_init(conv_geo *g, int B, int Cin, int H, int W, int Cout, int K,
                          int stride, int pad) {
    const int Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    const int64_t xd[4] = {B, Cin, H, W}, wd[4] = {Cout, Cin, K, K}, yd[4] = {B, Cout, Ho, Wo};
    const int64_t bd[1] = {Cout};
    g->x = md_tag(4, xd, dnnl_f32, dnnl_nchw);
    g->w = md_tag(4, wd, dnnl_f32, dnnl_oihw);
    g->y = md_tag(4, yd, dnnl_f32, dnnl_nchw);
    g->b = md_tag(1, bd, dnnl_f32, dnnl_x);
    g->xa = md_tag(4, xd, dnnl_bf16, dnnl_format_tag_any);
    g->wa = md_tag(4, wd, dnnl_bf16, dnnl_format_tag_any);
    g->ya = md_tag(4, yd, dnnl_bf16, dnnl_format_tag_any);
    g->ya_f32 = md_tag(4, yd, dnnl_f32, dnnl_format_tag_any);
    g->st[0] = g->st[1] = stride;
    g->pl[0] = g->pl[1] = pad;
}

static dnnl_primitive_desc_t conv_fwd_pd(const conv_geo *g, int with_bias) {
    dnnl_convolution_desc_t cd;
    DN(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct,
                                          &g->xa, &g->wa, with_bias ? &g->b : NULL,
                                          &g->ya_f32, g->st, g->pl, g->pl));
    dnnl_primitive_attr_t attr = attr_new(0);
    dnnl_primitive_desc_t pd;
    DN(dnnl_primitive_desc_create(&pd, &cd, attr, g_eng, NULL));
    dnnl_primitive_attr_destroy(attr);
    return pd;
}

/* Build the cached op of a problem not in the cache yet (conv_op / matmul_op look it up);
   the key is {kind, B, Cin, H, W, Cout, K, stride, pad, with_bias, w16}; w16: the weights
   are given as bf16 bits (OIHW) rather than float32 (a frozen weight held in bf16). The
   primitive is the same either way, so are its bf16 weights (the float32 ones are rounded
   to them), so are the results. */
static op *conv_op_build(const int64_t key[12]) {
    const int kind = (int)key[0], B = (int)key[1], Cin = (int)key[2], H = (int)key[3];
    const int W = (int)key[4], Cout = (int)key[5], K = (int)key[6], stride = (int)key[7];
    const int pad = (int)key[8], with_bias = (int)key[9], w16 = (int)key[10];
    engine_init();
    op *o;
    conv_geo g;
    conv_geo_init(&g, B, Cin, H, W, Cout, K, stride, pad);
    o = op_new(key);
    const dnnl_memory_desc_t wu = w16 ? md_tag(4, g.w.dims, dnnl_bf16, dnnl_oihw) : g.w;
    dnnl_primitive_desc_t fwd = conv_fwd_pd(&g, with_bias), pd;
    if (kind == K_CONV_FWD || kind == K_CONV_FWD16) {
        const int a[2] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS};
        const dnnl_memory_desc_t u[2] = {
            kind == K_CONV_FWD16 ? md_tag(4, g.x.dims, dnnl_bf16, dnnl_nhwc) : g.x, wu};
        op_finish(o, fwd, 2, a, u, DNNL_ARG_DST, &g.y, 0, with_bias ? DNNL_ARG_BIAS : 0, &g.b);
        return o;
    }
    dnnl_convolution_desc_t cd;
    dnnl_primitive_attr_t attr = attr_new(0);
    const dnnl_memory_desc_t y16 = md_tag(4, g.y.dims, dnnl_bf16, dnnl_nhwc);
    if (kind == K_CONV_BWD_DATA || kind == K_CONV_BWD_DATA16 || kind == K_CONV_BWD_DATA16_SET) {
        dnnl_memory_desc_t xa = md_tag(4, g.x.dims, dnnl_f32, dnnl_format_tag_any);
        DN(dnnl_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &xa, &g.wa,
                                                    &g.ya, g.st, g.pl, g.pl));
        DN(dnnl_primitive_desc_create(&pd, &cd, attr, g_eng, fwd));
        const int a[2] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS};
        const dnnl_memory_desc_t u[2] = {kind == K_CONV_BWD_DATA ? g.y : y16, wu};
        op_finish(o, pd, 2, a, u, DNNL_ARG_DIFF_SRC, &g.x, kind != K_CONV_BWD_DATA16_SET, 0,
                  NULL);
    } else {
        dnnl_memory_desc_t wa = md_tag(4, g.w.dims, dnnl_f32, dnnl_format_tag_any);
        DN(dnnl_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &g.xa, &wa,
                                                       NULL, &g.ya, g.st, g.pl, g.pl));
        DN(dnnl_primitive_desc_create(&pd, &cd, attr, g_eng, fwd));
        const int a[2] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_DST};
        const dnnl_memory_desc_t u[2] = {
            kind == K_CONV_BWD_W16 ? md_tag(4, g.x.dims, dnnl_bf16, dnnl_nhwc) : g.x,
            kind == K_CONV_BWD_W16 ? y16 : g.y};
        op_finish(o, pd, 2, a, u, DNNL_ARG_DIFF_WEIGHTS, &g.w, 1, 0, NULL);
    }
    dnnl_primitive_attr_destroy(attr);
    dnnl_primitive_desc_destroy(fwd);
    return o;
}

/* C[M,N] (+)= A[M,K] @ B[K,N], A and B float32 with the given strides (transposes are views),
   computed with bf16 operands (p == MAPO_BF16) or float32; C float32 row-major. The key is
   {kind, p, M, K, N, A's strides, B's strides, with_bias, accumulate, w16}; w16: B (the
   weight of a forward or a dx product) is given as bf16 bits, as conv_op_build's. */
static op *matmul_op_build(const int64_t key[12]) {
    const int kind = (int)key[0], with_bias = (int)key[9], accumulate = (int)key[10];
    const int w16 = (int)key[11];
    const mapo_precision p = (mapo_precision)key[1];
    const int64_t M = key[2], K = key[3], N = key[4], *as = key + 5, *bs = key + 7;
    engine_init();
    op *o = op_new(key);
    const dnnl_data_type_t dt = p == MAPO_BF16 ? dnnl_bf16 : dnnl_f32;
    const int64_t ad[2] = {M, K}, bd[2] = {K, N}, cd_[2] = {M, N}, biasd[2] = {1, N};
    const int a16 = kind == K_MM_FWD16 || kind == K_MM_DX16 || kind == K_MM_DW16;
    dnnl_memory_desc_t au = md_strides(2, ad, a16 ? dnnl_bf16 : dnnl_f32, as);
    dnnl_memory_desc_t bu =
        md_strides(2, bd, kind == K_MM_DW16 || w16 ? dnnl_bf16 : dnnl_f32, bs);
    /* The weight gradient's A is dy^T, a transposed view: kept transposed on the primitive's
       side (brgemm reads a transposed A), its conversion to bf16 is then a contiguous pass
       rather than a transposing one. Its B, when already bf16 (x16, row-major), is read
       as it is (no reorder into a blocked layout). */
    const int dw = kind == K_MM_DW || kind == K_MM_DW16;
    dnnl_memory_desc_t ap = dw ? md_strides(2, ad, dt, as) : md_tag(2, ad, dt, dnnl_ab);
    dnnl_memory_desc_t bp = kind == K_MM_DW16 ? bu : md_tag(2, bd, dt, dnnl_format_tag_any);
    dnnl_memory_desc_t c = md_tag(2, cd_, dnnl_f32, dnnl_ab);
    dnnl_memory_desc_t bias = md_tag(2, biasd, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t md;
    DN(dnnl_matmul_desc_init(&md, &ap, &bp, with_bias ? &bias : NULL, &c));
    dnnl_primitive_attr_t attr = attr_new(accumulate);
    dnnl_primitive_desc_t pd;
    DN(dnnl_primitive_desc_create(&pd, &md, attr, g_eng, NULL));
    dnnl_primitive_attr_destroy(attr);
    const int a[2] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS};
    const dnnl_memory_desc_t u[2] = {au, bu};
    /* accumulation is the matmul's own sum post-op: the output is bound directly */
    op_finish(o, pd, 2, a, u, DNNL_ARG_DST, &c, 0, with_bias ? DNNL_ARG_BIAS : 0, &bias);
    return o;
}

/* Building a primitive allocates and frees a lot of small, short- and long-lived objects.
   Done on the training thread, in the middle of a step, they land between the activations and
   pin holes in the heap (a bf16 bench run's heap grew by 90 MB in its second step). So each
   primitive is built on a short-lived thread of its own, whose allocations glibc serves from
   another arena; the training heap sees none of them. */
typedef struct {
    int conv;
    const int64_t *key;
    op *res;
} build_req;
static void *build_main(void *p) {
    build_req *r = p;
    r->res = r->conv ? conv_op_build(r->key) : matmul_op_build(r->key);
    return NULL;
}
void engine_run_apart(void *(*fn)(void *), void *arg) {
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg)) {
        fn(arg); /* no thread to be had: run here */
        return;
    }
    pthread_join(t, NULL);
}
/* the cached op of key, built apart the first time */
static op *op_get(int conv, const int64_t key[12]) {
    op *o = op_find(key);
    if (o) return o;
    build_req r = {conv, key, NULL};
    engine_run_apart(build_main, &r);
    return r.res;
}
static op *conv_op_w(int kind, int B, int Cin, int H, int W, int Cout, int K, int stride,
                     int pad, int with_bias, int w16) {
    const int64_t key[12] = {kind, B, Cin, H, W, Cout, K, stride, pad, with_bias, w16};
    return op_get(1, key);
}
static op *conv_op(int kind, int B, int Cin, int H, int W, int Cout, int K, int stride, int pad,
                   int with_bias) {
    return conv_op_w(kind, B, Cin, H, W, Cout, K, stride, pad, with_bias, 0);
}
static op *matmul_op_w(int kind, mapo_precision p, int64_t M, int64_t K, int64_t N,
                       const int64_t as[2], const int64_t bs[2], int with_bias, int accumulate,
                       int w16) {
    const int64_t key[12] = {kind, p, M, K, N, as[0], as[1], bs[0], bs[1], with_bias,
                             accumulate, w16};
    return op_get(0, key);
}
static op *matmul_op(int kind, mapo_precision p, int64_t M, int64_t K, int64_t N,
                     const int64_t as[2], const int64_t bs[2], int with_bias, int accumulate) {
    return matmul_op_w(kind, p, M, K, N, as, bs, with_bias, accumulate, 0);
}

/* ------------------------------------------------------------------ ops.h entry points */
void conv2d_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int B, int Cin, int H, int W, int Cout, int K, int stride,
                       int pad) {
    if (p == MAPO_F32) {
        conv2d_forward(y, x, w, b, B, Cin, H, W, Cout, K, stride, pad);
        return;
    }
    op *o = conv_op(K_CONV_FWD, B, Cin, H, W, Cout, K, stride, pad, b != NULL);
    const void *in[2] = {x, w};
    op_run(o, in, y, b);
}

void conv2d_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int B, int Cin, int H, int W, int Cout,
                        int K, int stride, int pad) {
    if (p == MAPO_F32) {
        conv2d_backward(dx, dw, db, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
        return;
    }
    if (dx) {
        op *o = conv_op(K_CONV_BWD_DATA, B, Cin, H, W, Cout, K, stride, pad, 0);
        const void *in[2] = {dy, w};
        op_run(o, in, dx, NULL);
    }
    if (dw) {
        op *o = conv_op(K_CONV_BWD_W, B, Cin, H, W, Cout, K, stride, pad, 0);
        const void *in[2] = {x, dy};
        op_run(o, in, dw, NULL);
    }
    if (db) conv2d_backward(NULL, NULL, db, dy, x, w, B, Cin, H, W, Cout, K, stride, pad);
}

void linear_forward_mp(mapo_precision p, float *y, const float *x, const float *w,
                       const float *b, int64_t N, int in, int out) {
    if (p == MAPO_F32) {
        linear_forward(y, x, w, b, N, in, out);
        return;
    }
    /* y[N,out] = x[N,in] @ (w[out,in])^T: w^T is the strided view {in,out} : {1,in} */
    const int64_t xs[2] = {in, 1}, ws[2] = {1, in};
    op *o = matmul_op(K_MM_FWD, p, N, in, out, xs, ws, b != NULL, 0);
    const void *a[2] = {x, w};
    op_run(o, a, y, b);
}

/* dy16 = dy [N, out] rounded to bf16 (dy16 NULL: not) and, when db, db += dy's column sums, in
   one pass over dy (a separate float32 column sum read dy again, and with 64-column blocks ran
   out = 64 on one thread). The sums run in double over fixed blocks of COLSUM_ROWS rows and
   the blocks' sums are added in block order, so db does not depend on the thread count; the
   float32 kernel's in-order double sum can differ from it in the last bit of the float
   result. */
#define COLSUM_ROWS 128
static void round_bf16_colsum(uint16_t *dy16, float *db, const float *dy, int64_t N, int out) {
    if (!db) {
        mapo_round_bf16(dy16, dy, N * out);
        return;
    }
    const int64_t nb = (N + COLSUM_ROWS - 1) / COLSUM_ROWS;
    double *part = engine_workspace(WS_COLSUM, (size_t)nb * out * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        double *acc = part + b * out;
        const int64_t r1 = (b + 1) * COLSUM_ROWS < N ? (b + 1) * COLSUM_ROWS : N;
        for (int c = 0; c < out; c++) acc[c] = 0;
        for (int64_t r = b * COLSUM_ROWS; r < r1; r++) {
            const float *row = dy + r * out;
            uint16_t *o = dy16 ? dy16 + r * out : NULL;
#pragma omp simd
            for (int c = 0; c < out; c++) {
                acc[c] += row[c];
                if (o) o[c] = mapo_bf16_bits(row[c]);
            }
        }
    }
    const int ncb = (out + 63) / 64;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < ncb; cb++) {
        const int c0 = cb * 64, c1 = c0 + 64 < out ? c0 + 64 : out;
        double s[64] = {0};
        for (int64_t b = 0; b < nb; b++)
            for (int c = c0; c < c1; c++) s[c - c0] += part[b * out + c];
        for (int c = c0; c < c1; c++) db[c] += (float)s[c - c0];
    }
}

void linear_backward_mp(mapo_precision p, float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, int64_t N, int in, int out) {
    if (p == MAPO_F32) {
        linear_backward(dx, dw, db, dy, x, w, N, in, out);
        return;
    }
    if (dx) { /* dx[N,in] += dy[N,out] @ w[out,in] */
        const int64_t ds[2] = {out, 1}, ws[2] = {in, 1};
        op *o = matmul_op(K_MM_DX, p, N, out, in, ds, ws, 0, 1);
        const void *a[2] = {dy, w};
        op_run(o, a, dx, NULL);
    }
    if (dw) { /* dw[out,in] += dy^T[out,N] @ x[N,in] */
        const int64_t ds[2] = {1, out}, xs[2] = {in, 1};
        op *o = matmul_op(K_MM_DW, p, out, N, in, ds, xs, 0, 1);
        const void *a[2] = {dy, x};
        op_run(o, a, dw, NULL);
    }
    if (db) round_bf16_colsum(NULL, db, dy, N, out);
}

void conv2d_forward_bf16x(float *y, const uint16_t *x16, const float *w, const float *b, int B,
                          int Cin, int H, int W, int Cout, int K, int stride, int pad) {
    op *o = conv_op(K_CONV_FWD16, B, Cin, H, W, Cout, K, stride, pad, b != NULL);
    const void *in[2] = {x16, w};
    op_run(o, in, y, b);
}

void linear_forward_bf16x(float *y, const uint16_t *x16, const float *w, const float *b,
                          int64_t N, int in, int out) {
    const int64_t xs[2] = {in, 1}, ws[2] = {1, in};
    op *o = matmul_op(K_MM_FWD16, MAPO_BF16, N, in, out, xs, ws, b != NULL, 0);
    const void *a[2] = {x16, w};
    op_run(o, a, y, b);
}

void conv2d_backward_bf16x(float *dx, float *dw, float *db, const float *dy, const uint16_t *x16,
                           const float *w, int B, int Cin, int H, int W, int Cout, int K,
                           int stride, int pad, int dx_assign) {
    /* dy rounded once, in NHWC, for both gradients */
    const int Ho = (H + 2 * pad - K) / stride + 1, Wo = (W + 2 * pad - K) / stride + 1;
    const int64_t ny = (int64_t)B * Cout * Ho * Wo;
    uint16_t *dy16 = engine_workspace(WS_DY16, (size_t)ny * sizeof(uint16_t));
    mapo_round_bf16_nhwc(dy16, dy, B, Cout, (int64_t)Ho * Wo);
    if (dx) {
        op *o = conv_op(dx_assign ? K_CONV_BWD_DATA16_SET : K_CONV_BWD_DATA16, B, Cin, H, W,
                        Cout, K, stride, pad, 0);
        const void *in[2] = {dy16, w};
        op_run(o, in, dx, NULL);
    }
    if (dw) {
        op *o = conv_op(K_CONV_BWD_W16, B, Cin, H, W, Cout, K, stride, pad, 0);
        const void *in[2] = {x16, dy16};
        op_run(o, in, dw, NULL);
    }
    if (db) conv2d_backward(NULL, NULL, db, dy, NULL, w, B, Cin, H, W, Cout, K, stride, pad);
}

void linear_backward_bf16x(float *dx, float *dw, float *db, const float *dy, const uint16_t *x16,
                           const float *w, int64_t N, int in, int out, int dx_assign) {
    /* dy rounded once for both gradients, the bias gradient summed in the same pass */
    uint16_t *dy16 = engine_workspace(WS_DY16, (size_t)N * out * sizeof(uint16_t));
    round_bf16_colsum(dy16, db, dy, N, out);
    if (dx) { /* dx[N,in] += dy[N,out] @ w[out,in] */
        const int64_t ds[2] = {out, 1}, ws[2] = {in, 1};
        op *o = matmul_op(K_MM_DX16, MAPO_BF16, N, out, in, ds, ws, 0, !dx_assign);
        const void *a[2] = {dy16, w};
        op_run(o, a, dx, NULL);
    }
    if (dw) { /* dw[out,in] += dy^T[out,N] @ x[N,in] */
        const int64_t ds[2] = {1, out}, xs[2] = {in, 1};
        op *o = matmul_op(K_MM_DW16, MAPO_BF16, out, N, in, ds, xs, 0, 1);
        const void *a[2] = {dy16, x16};
        op_run(o, a, dw, NULL);
    }
}

/* ------------------------------------------------------------------ weights held in bf16 */
void conv2d_forward_w16(float *y, const float *x, const uint16_t *x16, const uint16_t *w16,
                        const float *b, int B, int Cin, int H, int W, int Cout, int K, int stride,
                        int pad) {
    op *o = conv_op_w(x16 ? K_CONV_FWD16 : K_CONV_FWD, B, Cin, H, W, Cout, K, stride, pad,
                      b != NULL, 1);
    const void *in[2] = {x16 ? (const void *)x16 : x, w16};
    op_run(o, in, y, b);
}

void conv2d_backward_data_w16(float *dx, const float *dy, const uint16_t *w16, int B, int Cin,
                              int H, int W, int Cout, int K, int stride, int pad) {
    op *o = conv_op_w(K_CONV_BWD_DATA, B, Cin, H, W, Cout, K, stride, pad, 0, 1);
    const void *in[2] = {dy, w16};
    op_run(o, in, dx, NULL);
}

void linear_forward_w16(float *y, const float *x, const uint16_t *x16, const uint16_t *w16,
                        const float *b, int64_t N, int in, int out) {
    const int64_t xs[2] = {in, 1}, ws[2] = {1, in};
    op *o = matmul_op_w(x16 ? K_MM_FWD16 : K_MM_FWD, MAPO_BF16, N, in, out, xs, ws, b != NULL,
                        0, 1);
    const void *a[2] = {x16 ? (const void *)x16 : x, w16};
    op_run(o, a, y, b);
}

void linear_backward_data_w16(float *dx, const float *dy, const uint16_t *w16, int64_t N, int in,
                              int out) {
    const int64_t ds[2] = {out, 1}, ws[2] = {in, 1};
    op *o = matmul_op_w(K_MM_DX, MAPO_BF16, N, out, in, ds, ws, 0, 1, 1);
    const void *a[2] = {dy, w16};
    op_run(o, a, dx, NULL);
}

void mapo_round_bf16(uint16_t *dst, const float *src, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] = mapo_bf16_bits(src[i]);
}
void mapo_round_bf16_nhwc(uint16_t *dst, const float *src, int64_t B, int64_t C, int64_t HW) {
    layout_nchw_to_nhwc_bf16(dst, src, B, C, HW);
}

/* 1 when oneDNN's effective ISA includes every feature of `need` */
static int isa_has(dnnl_cpu_isa_t need) {
    return ((unsigned)dnnl_get_effective_cpu_isa() & (unsigned)need) == (unsigned)need;
}
int mapo_precision_available(mapo_precision p) {
    return p == MAPO_F32 || isa_has(dnnl_cpu_isa_avx512_core);
}
int mapo_precision_native(mapo_precision p) {
    return p == MAPO_F32 || isa_has(dnnl_cpu_isa_avx512_core_bf16);
}

/* Timed: the primitive alone, its operands already bf16 (or float32) in the layouts it chose,
   so the figure is the engine's matrix-product ceiling, not that of mapo's conversions. */
double mapo_gemm_ceiling_gflops(mapo_precision p, int n, int reps) {
    const int64_t s[2] = {n, 1};
    op *o = matmul_op(K_PROBE, p, n, n, n, s, s, 0, 0);
    const size_t bytes = (size_t)n * n * sizeof(float);
    float *a = xmalloc(bytes), *b = xmalloc(bytes), *c = xmalloc(bytes);
    for (int64_t i = 0; i < (int64_t)n * n; i++) {
        a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        b[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    }
    dnnl_exec_arg_t args[4];
    const void *in[2] = {a, b};
    bind_inputs(o, in, args); /* the conversions happen here, before the timing */
    DN(dnnl_memory_set_data_handle(o->out.user, c));
    args[2] = (dnnl_exec_arg_t){o->out.arg, o->out.prim};
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms up */
        double t0 = mapo_now();
        prim_exec(&o->prim, 3, args);
        DN(dnnl_stream_wait(g_strm));
        double dt = mapo_now() - t0;
        if (r && dt < best) best = dt;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * (double)n * n / best / 1e9;
}
