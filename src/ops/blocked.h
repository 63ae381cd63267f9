/* blocked.h -- mapo's conversions between a plain float32 buffer (a weight, a weight gradient)
 * or a plain bf16 one (a frozen weight held in bf16) and the blocked layout a oneDNN primitive
 * chose for it (blocked.c), in place of oneDNN 2.6's generic reorders (jit:uni), which moved
 * these weights at ~10 GB/s: 6% of a bf16 training step went to them (docs/BENCHMARKS.md).
 *
 * The map is read from the two memory descriptors (oneDNN's blocking description: outer
 * strides, inner blocks), so one routine serves every blocked layout oneDNN picks (the
 * convolutions' AcdB16b32a2b, ABcd16a16b2a, ABcd16b16a, the matmuls' BA16a64b2a, ...): the
 * blocked buffer is walked block by block, each inner block through a table of where its
 * elements sit in the plain buffer. Elements in the padding of an edge block are written as
 * zeros (into the blocked buffer) or skipped (into the plain one). Every element is copied,
 * added once, or rounded to bf16 as mapo_bf16_bits does. */
#ifndef MAPO_BLOCKED_H
#define MAPO_BLOCKED_H
#include <stdint.h>

#include <oneapi/dnnl/dnnl.h>

typedef struct blocked_map blocked_map;

/* The map between plain (a float32 layout without inner blocks) and blocked (a blocked layout
   of the same dims), or NULL when this file does not handle the pair (other format kinds,
   offsets, more than 6 dims, inner blocks over 4096 elements): the caller keeps a reorder. */
blocked_map *blocked_map_new(const dnnl_memory_desc_t *plain, const dnnl_memory_desc_t *blocked);
void blocked_map_free(blocked_map *m);
/* The plain buffer's type is the plain descriptor's: the float32 functions take a map made from
   a float32 one, blocked_from_plain_u16 one made from a bf16 one. */
/* blocked (bf16 bits) = plain (float32) rounded; the padding zeroed */
void blocked_from_plain_bf16(const blocked_map *m, uint16_t *blocked, const float *plain);
/* blocked = plain, both bf16 bits (a plain bf16 buffer: a weight held in bf16); the padding
   zeroed */
void blocked_from_plain_u16(const blocked_map *m, uint16_t *blocked, const uint16_t *plain);
/* plain = blocked (float32), or += when accumulate; the padding is not read */
void blocked_to_plain_f32(const blocked_map *m, float *plain, const float *blocked,
                          int accumulate);
#endif
