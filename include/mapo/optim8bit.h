/* optim8bit.h -- 8-bit AdamW as bitsandbytes' bnb.optim.AdamW8bit (the official MaPO
 * script's --use_8bit_adam), over the same flat parameter / gradient arenas as adamw_step.
 *
 * Tensors with >= min_8bit_size (4096) elements keep both moments as uint8 codes into two
 * 256-entry dynamic maps (first moment: signed map; second: unsigned map) with one float
 * absmax per block of 256 elements per moment; smaller tensors keep float32 moments. The
 * arithmetic is that of bitsandbytes' CUDA kernels (kOptimizerStatic8bit2StateBlockwise and
 * kOptimizer32bit2State, bitsandbytes 0.50): dequantise, update the moments, new absmax,
 *     p = p + (-lr sqrt(1-b2^t) / (1-b1^t)) * m / (sqrt(v) + sqrt(1-b2^t) eps)
 *     p = p * (1 - lr wd)   (after the update; only when wd > 0)
 * then requantise (binary search over the sorted map, midpoint rule, sign kept for m).
 * docs/METHOD.md "## 8-bit AdamW" has the formulas and what differs from adamw_step.
 * Every block is independent: the result is the same at any thread count. */
#ifndef MAPO_OPTIM8BIT_H
#define MAPO_OPTIM8BIT_H
#include <stddef.h>
#include <stdint.h>

#include "mapo/optim.h"
#include "mapo/params.h"
#include "mapo/safetensors.h"

#define ADAMW8_BLOCK 256          /* elements per absmax (bitsandbytes' BLOCKSIZE_2STATE) */
#define ADAMW8_MIN_8BIT_SIZE 4096 /* AdamW8bit(min_8bit_size=4096): smaller -> float32 state */

typedef struct {
    char *name;          /* parameter name (tensor names when saving) */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    size_t offset;       /* in floats, into the parameter / gradient arenas */
    int64_t numel;
    int q8;              /* 1: 8-bit blockwise state, 0: float32 state */
    size_t soff;         /* q8: into code1 / code2; else into m32 / v32 */
    size_t boff;         /* q8: first block, into absmax1 / absmax2 */
} adamw8_tensor;

typedef struct {
    int n;
    adamw8_tensor *t;
    int64_t min_8bit_size;
    size_t n8, nblocks, n32;   /* elements with 8-bit state, their blocks, float32 elements */
    uint8_t *code1, *code2;    /* [n8]: first moment (signed map), second moment (unsigned) */
    float *absmax1, *absmax2;  /* [nblocks] */
    float *m32, *v32;          /* [n32] */
    float qmap1[256], qmap2[256];
    size_t nitems;             /* work items: one block (or float32 chunk) of 256 each */
    int32_t *item_t;
    int64_t *item_start;
} adamw8_state;

/* bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8),
   recomputed as torch 2.x builds it (float32 linspace with fused multiply-adds, float32 means,
   double scale, sorted, rounded to float32). Signed: 127 negative codes, 0, 127 positive
   codes, 1.0 (code 0 = -0.99296875, code 127 = 0, code 255 = 1). Unsigned: 0 ... 1. */
void adamw8_dynamic_map(int is_signed, float map[256]);
/* kernels.cu quantize_2D: the code of x (x normalised by the block's absmax) in a sorted map;
   the 7-step binary search from code 127, then x is compared with the float32 midpoint
   (lower + val) / 2 or (val + upper) / 2; at equality the searched code is kept. */
uint8_t adamw8_quantize(const float map[256], int is_signed, float x);

/* A zeroed state (codes 0, absmax 0: bitsandbytes' fresh state) for the tensors of a
   parameter table (names, shapes and offsets from it; min_8bit_size 4096). */
void adamw8_init(adamw8_state *s, const param_table *t);
/* The same for n tensors given as (offset, numel) into the arenas, named "0", "1", ... and
   shaped [numel]; min_8bit_size as bitsandbytes' argument (4096 by default). 0, or -1 and
   mapo_error for a negative numel or min_8bit_size. */
int adamw8_init_ranges(adamw8_state *s, int n, const size_t *offset, const int64_t *numel,
                       int64_t min_8bit_size);
void adamw8_free(adamw8_state *s);

/* One AdamW8bit step on every tensor: p and g are the arenas (the tensors' offsets index
   them); step is 1-based (the count after increment), lr this step's learning rate, c the
   betas, eps and weight decay (all rounded to float32, as bitsandbytes passes them). */
void adamw8_step(adamw8_state *s, float *p, const float *g, int64_t step, double lr,
                 const adamw_config *c);

/* Bytes of optimizer state: 2 per 8-bit element + 8 per block (two absmax) + 8 per float32
   element (float32 AdamW: 8 per element). */
size_t adamw8_bytes(const adamw8_state *s);

/* Saving: adds to w, for every tensor, bitsandbytes' state names prefixed and suffixed with
   the parameter name: "<prefix>state1.<name>", "<prefix>state2.<name>" (U8 codes in the
   parameter's shape, or F32 moments for float32-state tensors) and, for 8-bit tensors,
   "<prefix>absmax1.<name>", "<prefix>absmax2.<name>" (F32 [blocks]); once
   "<prefix>qmap1" / "<prefix>qmap2" (F32 [256]). The data is the state's own memory: keep s
   alive and unchanged until st_writer_write. Loading back gives bit-identical state. */
void adamw8_write(const adamw8_state *s, st_writer *w, const char *prefix);
/* Loading into a state initialised for the same tensors: every name present with the dtype
   and shape this layout expects (U8 / F32 exactly: no conversion), the maps bit-identical to
   this build's. 0, or -1 and mapo_error naming the file and the tensor (the state is then
   partly overwritten: initialise it again). Any byte values are safe (codes index a
   256-entry map). */
int adamw8_read(adamw8_state *s, const st_file *f, const char *prefix);
/* Whole-file forms (atomic write; prefix ""). */
int adamw8_save(const adamw8_state *s, const char *path);
int adamw8_load(adamw8_state *s, const char *path);

#endif
