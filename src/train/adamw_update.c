/* adamw_update.c -- the element loop of AdamW (the formulas and torch's rounding: optim.c).
 *
 * Its own file because it is compiled with -fno-math-errno (Makefile): sqrtf's errno path
 * (never taken, v >= 0) kept gcc from vectorising the loop, which then ran scalar at a third
 * of the memory bandwidth. Vector sqrt, division and FMA round as the scalar instructions do
 * (IEEE), so the results are the scalar loop's bit for bit. Nothing here reads errno. */
#include <math.h>

#include "adamw_update.h"

/* a*b + c rounded once to float: the FMA instruction where the target has one, otherwise
   through double (the float product is exact in double; optim.c says when it differs) */
static inline float fma_f32(float a, float b, float c) {
#ifdef __FMA__
    return fmaf(a, b, c);
#else
    return (float)((double)a * (double)b + (double)c);
#endif
}

/* one element; the step's invariant choices are made by the caller (decay 1 when off: x * 1
   is x) or outside the loops (zeroing is a loop variant), so the loops vectorise */
static inline void adamw_elem(const adamw_k *k, float *p, const float *g, float *m, float *v,
                              long long i) {
    const float pi = p[i] * k->decay;
    const float gi = g[i] * k->gcoef, mo = m[i]; /* grad_scale's product; x * 1 == x */
    const float diff = gi - mo;
    const float mi = k->w1_small ? fma_f32(k->w1, diff, mo) : fma_f32(k->w1m1, diff, gi);
    const float vb = v[i] * k->b2;
    const float wg = k->w2 * gi;
    const float vi = fma_f32(wg, gi, vb);
    const float den = sqrtf(vi) / k->bc2s + k->epsf;
    const float upd = (k->neg_ss * mi) / den;
    p[i] = pi + upd;
    m[i] = mi;
    v[i] = vi;
}
void adamw_update_range(const adamw_k *kp, float *p, const float *g, float *m, float *v,
                        long long a, long long b, float *gz) {
    const adamw_k k = *kp;
    if (gz) {
#pragma omp simd
        for (long long i = a; i < b; i++) {
            adamw_elem(&k, p, g, m, v, i);
            gz[i] = 0.0f;
        }
    } else {
#pragma omp simd
        for (long long i = a; i < b; i++) adamw_elem(&k, p, g, m, v, i);
    }
}
