/* rng.h -- counter-based random numbers (Philox4x32-10). A stream is identified by
 * (seed, a, b): the same (seed, a, b) always gives the same numbers, whatever else
 * happened before, so noise per pair depends only on (seed, epoch, pair index).
 * Layout (see rng.c): key = seed (64 bits); counter = {block number, (u32)b, a low, a high}.
 * For one seed, every 64-bit a and every b < 2^32 is a separate, non-overlapping stream of
 * up to 2^34 32-bit words (b's high half, if any, is folded into the key). */
#ifndef MAPO_RNG_H
#define MAPO_RNG_H
#include <stdint.h>

typedef struct {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t buf[4];
    int idx;
    int has_spare;
    double spare;
} philox;

void philox_block(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);
void philox_init(philox *r, uint64_t seed, uint64_t a, uint64_t b);
uint32_t philox_u32(philox *r);
double philox_uniform(philox *r);          /* in [0,1), 53 bits */
double philox_normal(philox *r);           /* standard normal (Box-Muller) */
uint32_t philox_below(philox *r, uint32_t n); /* uniform in [0,n), unbiased */
void philox_fill_normal(philox *r, float *x, int64_t n);
/* Fisher-Yates permutation of 0..n-1 */
void philox_permutation(philox *r, int64_t *perm, int64_t n);

#endif
