/* params.h -- one descriptor per model: a table of {diffusers name, shape, offset}.
 * Built while a model is constructed from its config; it drives allocation (one arena
 * for parameters, one for gradients), loading, saving, zeroing, clipping and the
 * optimiser. Names are diffusers' state-dict names and never change on the way in or out.
 */
#ifndef MAPO_PARAMS_H
#define MAPO_PARAMS_H
#include <stddef.h>
#include <stdint.h>

#include "mapo/graph.h"
#include "mapo/safetensors.h"

typedef struct {
    char *name;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t numel;
    size_t offset; /* in floats, into data / grad; in bf16 values into data16 when half */
    int half;      /* held in bf16 (PARAMS_FROZEN_BF16): data16, no float32 copy */
} param_info;

typedef struct {
    param_info *p;
    int n, cap;
    size_t total;   /* parameters; floats of data and grad unless some are half */
    size_t total16; /* of them held in bf16 (data16); data holds total - total16 floats */
    float *data;    /* [total - total16] */
    uint16_t *data16; /* [total16] bf16 bits, or NULL */
    float *grad;    /* [total] or NULL when frozen */
    tensor *views;  /* [n] tensors into data/grad, valid after params_alloc */
} param_table;

void params_init(param_table *t);
void params_free(param_table *t);
/* Register a parameter; returns its index. printf-style name. */
int params_add(param_table *t, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The most parameters a model's config may declare: 2^34 (17.2 billion, 64 GiB as float32,
 * four times that to train; SDXL's UNet has 2.6 billion). docs/RELIABILITY.md "Hostile sizes". */
#define PARAMS_MAX ((int64_t)1 << 34)
/* Before params_alloc: 0, or -1 + mapo_error naming `what` (the config) and the declared
 * count when the table holds more than PARAMS_MAX parameters, or, when weights names an
 * existing file, more than that file (or, for a sharded checkpoint's index, its shards
 * together) can hold at 2 bytes (F16 / BF16) a parameter. */
int params_check_size(const param_table *t, const char *what, const char *weights);
/* Allocate data (zeroed) and, if with_grad is 1, gradients; build tensor views. with_grad
   PARAMS_FROZEN_BF16: no gradients, and every parameter of two or more dims (the convolutions'
   and linear layers' weights) held in bf16 only (data16; its view's data is NULL and its bf16
   field points there), as the official LoRA and DPO scripts cast the frozen UNet to the
   mixed-precision dtype: the bf16 ops read these weights rounded to bf16 anyway, so the
   results are the same, from half the memory. Norms and biases stay float32. */
#define PARAMS_FROZEN_BF16 2
void params_alloc(param_table *t, int with_grad);
/* bytes of the weights: 4 a float32 parameter, 2 a half one */
size_t params_bytes(const param_table *t);
/* What reads or writes the weights as float32 (saving, merging) calls this first: a table
   holding half parameters stops the program with an internal error naming `what` (only
   frozen models hold them, and nothing saves or merges into those). */
void params_require_f32(const param_table *t, const char *what);
int params_find(const param_table *t, const char *name);
static inline tensor *params_view(param_table *t, int idx) {
    return idx < 0 ? NULL : &t->views[idx];
}
/* Fill with a PyTorch-like default init (uniform +-1/sqrt(fan_in) for weights and
 * biases, ones/zeros for norms), from a counter-based stream keyed by seed. */
void params_init_random(param_table *t, uint64_t seed);
/* Load every parameter from a safetensors file: every name must be present with the
 * right shape (F32/F16/BF16/F64 accepted; a half parameter gets the bf16 rounding of the
 * float32 value, mapo_bf16_bits); extra tensors are an error unless
 * allow_extra. prefix is prepended to names in the file (e.g. "" or "unet."). path may be a
 * sharded checkpoint's index (st_is_index: *.safetensors.index.json and its shards). */
int params_load(param_table *t, const char *path, const char *prefix, int allow_extra);
/* The weights of one model behind one interface: a safetensors file, or a sharded checkpoint's
 * index and its shards (st_is_index(path); every shard checked and mapped by st_index_open).
 * params_load reads through it, and so do the loaders that check names before allocating (the
 * CLIP text encoders) or accept old names (the VAE). weights_open: 0, or -1 with the file's or
 * the index's own message. Tensors are numbered 0 .. weights_count - 1 in name order;
 * weights_find and weights_tensor return the same pointer for the same tensor. */
typedef struct {
    int sharded;
    st_file f;
    st_index x;
} weights_src;
int weights_open(weights_src *w, const char *path);
void weights_close(weights_src *w);
const st_tensor *weights_find(const weights_src *w, const char *name); /* NULL when absent */
int weights_count(const weights_src *w);
const st_tensor *weights_tensor(const weights_src *w, int i);
/* Save all parameters (F32) atomically. params_write and params_save take a table without
 * half parameters (only frozen models hold them, and those are never saved). */
int params_save(const param_table *t, const char *path);
/* Add one tensor per parameter to a safetensors writer, named prefix + diffusers name, with
 * data from base + offset: base is t->data (weights), t->grad, or an arena of the same layout
 * (AdamW moments). */
struct st_writer;
void params_write(const param_table *t, struct st_writer *w, const char *prefix,
                  const float *base);
void params_zero_grad(param_table *t);

#endif
