/* rng.c -- Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy
 * as 1, 2, 3", SC 2011; the Random123 library). Checked against Random123's
 * tests/kat_vectors in tests/test_rng.c.
 *
 * Stream layout. philox_init(seed, a, b):
 *     key = { (uint32)seed, (uint32)(seed >> 32) ^ (uint32)(b >> 32) }
 *     ctr = { block, (uint32)b, (uint32)a, (uint32)(a >> 32) }
 * `block` starts at 0 and counts the 128-bit blocks drawn from the stream. So for a fixed
 * seed every a (all 64 bits) and every b < 2^32 names a disjoint stream (the counters of
 * two streams differ in words 1..3, whatever their block numbers). A stream holds 2^32
 * blocks = 2^34 32-bit words (the block number wraps after that, which no caller comes
 * near). The high half of b, when nonzero, is folded into the key; such streams are
 * distinct from each other but may coincide with a stream of another seed -- callers keep
 * b below 2^32 (a dataset index, a parameter-tensor number).
 *
 * Derived values:
 *   philox_uniform: two words u0, u1 -> ((u0 >> 5) * 2^26 + (u1 >> 6)) / 2^53, in [0, 1).
 *   philox_normal:  Box-Muller in double on two uniforms: r = sqrt(-2 log(1 - U1)),
 *                   th = 2 pi U2, returns r cos th and keeps r sin th for the next call.
 *   philox_below:   rejection of the lowest 2^32 mod n words, so exactly uniform. */
#include "mapo/rng.h"

#include <math.h>
#include <string.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void philox_round(uint32_t c[4], const uint32_t k[2]) {
    const uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
    const uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    const uint32_t n0 = hi1 ^ c[1] ^ k[0];
    const uint32_t n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

void philox_block(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int r = 0; r < 10; r++) {
        if (r) {
            k[0] += PHILOX_W0;
            k[1] += PHILOX_W1;
        }
        philox_round(c, k);
    }
    memcpy(out, c, sizeof c);
}

void philox_init(philox *r, uint64_t seed, uint64_t a, uint64_t b) {
    memset(r, 0, sizeof *r);
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32) ^ (uint32_t)(b >> 32);
    r->ctr[0] = 0;
    r->ctr[1] = (uint32_t)b;
    r->ctr[2] = (uint32_t)a;
    r->ctr[3] = (uint32_t)(a >> 32);
    r->idx = 4; /* buffer empty */
    r->has_spare = 0;
    r->spare = 0;
}

uint32_t philox_u32(philox *r) {
    if (r->idx >= 4) {
        philox_block(r->buf, r->ctr, r->key);
        r->ctr[0]++;
        r->idx = 0;
    }
    return r->buf[r->idx++];
}

double philox_uniform(philox *r) {
    const uint32_t a = philox_u32(r) >> 5, b = philox_u32(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

double philox_normal(philox *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    const double u1 = 1.0 - philox_uniform(r); /* (0, 1]: log is finite */
    const double u2 = philox_uniform(r);
    const double rad = sqrt(-2.0 * log(u1));
    const double th = 6.283185307179586476925286766559 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

uint32_t philox_below(philox *r, uint32_t n) {
    if (n <= 1) return 0;
    /* 2^32 mod n: the words below it are rejected so that the rest is a whole number of
       copies of 0..n-1 */
    const uint32_t thresh = (uint32_t)(-n) % n;
    for (;;) {
        const uint32_t x = philox_u32(r);
        if (x >= thresh) return x % n;
    }
}

static uint64_t philox_below64(philox *r, uint64_t n) {
    if (n <= 0xffffffffull) return philox_below(r, (uint32_t)n);
    const uint64_t thresh = (uint64_t)(-n) % n;
    for (;;) {
        const uint64_t hi = philox_u32(r);
        const uint64_t x = (hi << 32) | philox_u32(r);
        if (x >= thresh) return x % n;
    }
}

void philox_fill_normal(philox *r, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)philox_normal(r);
}

void philox_permutation(philox *r, int64_t *perm, int64_t n) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = (int64_t)philox_below64(r, (uint64_t)i + 1);
        const int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
