/* graph.h -- tensors and the autograd tape that composes the hand-written ops.
 *
 * Every op in ops.h has a forward and a backward; this layer records, for each op call
 * made while gradients are enabled, a node {backward function, output, inputs, saved
 * buffers}. graph_backward walks the nodes in reverse and calls each backward, which
 * accumulates into the gradients of its inputs. Activation gradients are allocated
 * lazily (zeroed) and freed as soon as the producer of a tensor has been processed, so
 * the backward pass never holds more than the activations plus a frontier of gradients.
 *
 * Parameters are tensors whose data / grad point into a model's parameter and gradient
 * arenas (see params.h); they are never freed by the graph. With gradients disabled
 * (reference passes, sampling) no nodes are recorded and graph_release() frees an
 * intermediate as soon as the caller is done with it.
 */
#ifndef MAPO_GRAPH_H
#define MAPO_GRAPH_H
#include <stddef.h>
#include <stdint.h>

#define TENSOR_MAX_DIMS 4

typedef struct tensor {
    float *data;
    float *grad;           /* NULL until needed (activations) or NULL if frozen (params) */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t numel;
    int32_t readers;       /* recorded backwards that read this tensor's data */
    uint16_t *bf16;        /* its bf16 copy, kept for the weight gradients of the bf16
                              convolutions / linears that consume it (graph-owned), or NULL;
                              in NHWC order for a convolution's input (bf16_nhwc) */
    uint8_t bf16_nhwc;
    uint8_t requires_grad; /* gradient flows into this tensor */
    uint8_t is_param;      /* data/grad are borrowed, never freed here */
} tensor;

typedef struct node node;
struct graph;
typedef void (*backward_fn)(struct graph *g, node *n);
typedef tensor *(*segment_fn)(struct graph *g, const void *ctx, tensor *const *in);
struct node {
    backward_fn backward;
    tensor *out;
    tensor *in[4];
    float *saved[2];
    int i[8];
    double d[2];
    segment_fn seg;  /* t_checkpoint: the segment function and its context (graph-owned) */
    void *ctx;
    const uint16_t *xb; /* bf16 conv / linear: the input's bf16 copy its weight gradient reads */
};

typedef struct graph {
    int grad_enabled;
    int precision;     /* mapo_precision (ops.h) of t_conv2d and t_linear (0: float32) */
    int checkpointing; /* t_checkpoint recomputes segments in backward (else it just calls) */
    int saw_trainable; /* set when an op takes a parameter that needs a gradient */
    tensor **tensors; /* activations owned by the graph */
    int n_tensors, cap_tensors;
    node *nodes;
    int n_nodes, cap_nodes;
    float **saved; /* saved buffers owned by the graph */
    int n_saved, cap_saved;
    size_t bytes_live, bytes_peak; /* activation + saved + activation-grad bytes */
} graph;

void graph_init(graph *g, int grad_enabled);
/* Free every activation, saved buffer and node; keeps capacity. */
void graph_reset(graph *g);
void graph_free(graph *g);

/* A new activation tensor (uninitialised data) of the given shape. */
tensor *graph_new(graph *g, int ndim, const int64_t *shape);
tensor *graph_new4(graph *g, int64_t a, int64_t b, int64_t c, int64_t d);
tensor *graph_new2(graph *g, int64_t a, int64_t b);
/* A tensor wrapping caller-owned data (an input, not differentiated). */
tensor *graph_input(graph *g, float *data, int ndim, const int64_t *shape);
/* The caller's forward is done with t: its data is freed now unless a recorded backward will
   read it (always, with gradients disabled). Backwards that only need shapes (adds, concat,
   upsample, permutes) do not keep their inputs, so e.g. a block's last conv output feeding a
   residual add is freed during the forward pass. */
void graph_release(graph *g, tensor *t);
/* The gradient buffer of t, allocated and zeroed on first use. */
float *graph_grad(graph *g, tensor *t);
/* Run backward from `out`, whose grad the caller has already set via graph_grad. */
void graph_backward(graph *g, tensor *out);

/* A parameter view (not owned). grad NULL = frozen. */
void tensor_param(tensor *t, float *data, float *grad, int ndim, const int64_t *shape);

/* --- differentiable ops (record a node when g->grad_enabled and an input needs grad) ---
   Shapes: images [B,C,H,W]; token tensors [B,N,C] or [N,C] (rows = all but last dim). */
tensor *t_conv2d(graph *g, tensor *x, tensor *w, tensor *b, int stride, int pad);
tensor *t_linear(graph *g, tensor *x, tensor *w, tensor *b);
tensor *t_group_norm(graph *g, tensor *x, tensor *gamma, tensor *beta, int groups, double eps);
tensor *t_layer_norm(graph *g, tensor *x, tensor *gamma, tensor *beta, double eps);
tensor *t_silu(graph *g, tensor *x);
/* silu(group_norm(x)) as one op: the GroupNorm's output is not kept for the SiLU's backward but
   recomputed from x (group_norm_apply), so gradients are bit-identical to the two ops and one
   activation less is held per pair */
tensor *t_group_norm_silu(graph *g, tensor *x, tensor *gamma, tensor *beta, int groups,
                          double eps);
tensor *t_geglu(graph *g, tensor *x);
/* q [B,Nq,C], k,v [B,Nk,C], C = heads*Dh */
tensor *t_attention(graph *g, tensor *q, tensor *k, tensor *v, int heads);
tensor *t_upsample2x(graph *g, tensor *x);
tensor *t_add(graph *g, tensor *a, tensor *b);
/* x [B,C,H,W] + v [B,C] */
tensor *t_add_channel_bias(graph *g, tensor *x, tensor *v);
tensor *t_concat_channels(graph *g, tensor *a, tensor *b);
tensor *t_nchw_to_nhwc(graph *g, tensor *x);                   /* -> [B,HW,C] */
tensor *t_nhwc_to_nchw(graph *g, tensor *x, int64_t H, int64_t W); /* [B,HW,C] -> [B,C,H,W] */
/* Gradient checkpointing. A segment computes one output from n_in <= 4 input tensors on the
   graph it is given. With g->checkpointing and gradients on, t_checkpoint runs fn without
   recording (its intermediates are freed as it goes), keeps only the inputs and the output, and
   records one node whose backward runs fn again with recording on and backpropagates through
   it; parameter gradients and the inputs' gradients accumulate in the same order as without
   checkpointing, so the gradients are bit-identical. ctx (ctx_size bytes) is copied. Otherwise
   it is fn(g, ctx, in). */
tensor *t_checkpoint(graph *g, segment_fn fn, const void *ctx, size_t ctx_size, tensor *const *in,
                     int n_in);
/* not differentiated: t [N] -> [N,dim] */
tensor *t_timestep_embedding(graph *g, const float *t, int64_t N, int dim, int flip,
                             double shift);

#endif
