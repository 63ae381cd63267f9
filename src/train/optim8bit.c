/* optim8bit.c -- 8-bit AdamW as bitsandbytes' AdamW8bit (0.50), statement by statement from
 * its CUDA kernels (csrc/kernels.cu):
 *   tensors with numel >= min_8bit_size: kOptimizerStatic8bit2StateBlockwise<float, ADAM,
 *     256, 1>, one CUDA block of 256 threads per block of 256 elements;
 *   smaller tensors: kOptimizer32bit2State<float, ADAM> (max_unorm 0, skip_zeros false).
 * All arithmetic is float32 in the kernels' order. Two departures, shared with the numpy port
 * in tools/make_optim8bit_fixtures.py that the tests compare against bit for bit: CUDA's
 * __powf and __fdividef (fast approximations) are the correctly rounded pow (double, rounded
 * to float) and IEEE division, and no multiply-add is fused (nvcc contracts some into FMAs;
 * the statements below are split so that no compiler can, and FP_CONTRACT is off). On a GPU
 * the same step therefore differs at the last bit of p, and a value lying within that of a
 * midpoint between two codes can take the neighbouring code.
 * docs/METHOD.md "## 8-bit AdamW" has the formulas. */
#include "mapo/optim8bit.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"

/* no fused multiply-adds: ISO C mode (-std=c11, the Makefile's) already has GCC's
   -ffp-contract=off; clang and GCC's GNU modes would contract, so say it */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && !defined(__STRICT_ANSI__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---------------------------------------------------------------------------------------- */
/* The maps                                                                                 */

/* torch.linspace(0.1, 1, n, dtype=float32) on CPU as torch 2.x computes it: step in float32,
   element i = start + step*i for i < n/2, end - step*(n-1-i) after, each one fused
   multiply-add (checked against torch 2.15's values in the fixture). */
static void linspace_01_1(int n, float *out) {
    const float start = 0.1f, end = 1.0f;
    const float step = (end - start) / (float)(n - 1);
    const int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
   fraction_items = 2^i + 1 (signed) or 2^(i+1) + 1 (unsigned); boundaries = linspace(0.1, 1,
   fraction_items); means of neighbours (float32); value = float32(10^(i-6)) * mean in float32
   (the Python scalar times a float32 tensor), and its negation when signed; then 0 and 1.0;
   sorted. No additional items (2^(7-7) - 1 = 0) and no gap: exactly 256 values. */
void adamw8_dynamic_map(int is_signed, float map[256]) {
    static const double pow10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    float b[129];
    int n = 0;
    for (int i = 0; i < 7; i++) {
        const int items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
        linspace_01_1(items, b);
        const float sc = (float)pow10[i];
        for (int k = 0; k + 1 < items; k++) {
            const float mean = (b[k] + b[k + 1]) / 2.0f;
            map[n++] = sc * mean;
            if (is_signed) map[n++] = -sc * mean;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    qsort(map, (size_t)n, sizeof(float), cmp_float); /* n == 256 */
}

/* kernels.cu quantize_2D<SIGNED>. The kernel starts from quadrants[1] = code[127] and reads
   quadrants[0 / 2] = code[63 / 191] after the first step: the same values as code[pivot]. */
uint8_t adamw8_quantize(const float map[256], int is_signed, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float val = map[127];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
    }
    if (x > val) {
        const float sum = upper + val, mid = sum * 0.5f;
        return (uint8_t)(x > mid ? upper_pivot : pivot);
    }
    const float sum = lower + val, mid = sum * 0.5f;
    return (uint8_t)(x < mid ? lower_pivot : pivot);
}

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */

static void build(adamw8_state *s) {
    s->n8 = s->nblocks = s->n32 = 0;
    s->nitems = 0;
    for (int i = 0; i < s->n; i++) {
        adamw8_tensor *t = &s->t[i];
        t->q8 = t->numel >= s->min_8bit_size;
        const size_t nb = (size_t)((t->numel + ADAMW8_BLOCK - 1) / ADAMW8_BLOCK);
        if (t->q8) {
            t->soff = s->n8;
            t->boff = s->nblocks;
            s->n8 += (size_t)t->numel;
            s->nblocks += nb;
        } else {
            t->soff = s->n32;
            t->boff = 0;
            s->n32 += (size_t)t->numel;
        }
        s->nitems += nb;
    }
    s->code1 = xcalloc(s->n8 ? s->n8 : 1, 1);
    s->code2 = xcalloc(s->n8 ? s->n8 : 1, 1);
    s->absmax1 = xcalloc(s->nblocks ? s->nblocks : 1, sizeof(float));
    s->absmax2 = xcalloc(s->nblocks ? s->nblocks : 1, sizeof(float));
    s->m32 = xcalloc(s->n32 ? s->n32 : 1, sizeof(float));
    s->v32 = xcalloc(s->n32 ? s->n32 : 1, sizeof(float));
    s->item_t = xmalloc((s->nitems ? s->nitems : 1) * sizeof(int32_t));
    s->item_start = xmalloc((s->nitems ? s->nitems : 1) * sizeof(int64_t));
    size_t k = 0;
    for (int i = 0; i < s->n; i++)
        for (int64_t a = 0; a < s->t[i].numel; a += ADAMW8_BLOCK) {
            s->item_t[k] = i;
            s->item_start[k++] = a;
        }
    adamw8_dynamic_map(1, s->qmap1);
    adamw8_dynamic_map(0, s->qmap2);
}

void adamw8_init(adamw8_state *s, const param_table *pt) {
    memset(s, 0, sizeof *s);
    s->n = pt->n;
    s->min_8bit_size = ADAMW8_MIN_8BIT_SIZE;
    s->t = xcalloc(pt->n ? (size_t)pt->n : 1, sizeof *s->t);
    for (int i = 0; i < pt->n; i++) {
        const param_info *p = &pt->p[i];
        adamw8_tensor *t = &s->t[i];
        t->name = xstrdup(p->name);
        t->ndim = p->ndim;
        memcpy(t->shape, p->shape, sizeof t->shape);
        t->offset = p->offset;
        t->numel = p->numel;
    }
    build(s);
}

int adamw8_init_ranges(adamw8_state *s, int n, const size_t *offset, const int64_t *numel,
                       int64_t min_8bit_size) {
    memset(s, 0, sizeof *s);
    if (n < 0 || min_8bit_size < 0)
        return mapo_error("adamw8: %d tensors, min_8bit_size %lld", n, (long long)min_8bit_size);
    for (int i = 0; i < n; i++)
        if (numel[i] < 0)
            return mapo_error("adamw8: tensor %d has %lld elements", i, (long long)numel[i]);
    s->n = n;
    s->min_8bit_size = min_8bit_size;
    s->t = xcalloc(n ? (size_t)n : 1, sizeof *s->t);
    for (int i = 0; i < n; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "%d", i);
        adamw8_tensor *t = &s->t[i];
        t->name = xstrdup(nm);
        t->ndim = 1;
        t->shape[0] = numel[i];
        t->offset = offset[i];
        t->numel = numel[i];
    }
    build(s);
    return 0;
}

void adamw8_free(adamw8_state *s) {
    if (s->t)
        for (int i = 0; i < s->n; i++) free(s->t[i].name);
    free(s->t);
    free(s->code1);
    free(s->code2);
    free(s->absmax1);
    free(s->absmax2);
    free(s->m32);
    free(s->v32);
    free(s->item_t);
    free(s->item_start);
    memset(s, 0, sizeof *s);
}

size_t adamw8_bytes(const adamw8_state *s) {
    return 2 * s->n8 + 2 * sizeof(float) * s->nblocks + 2 * sizeof(float) * s->n32;
}

/* ---------------------------------------------------------------------------------------- */
/* The step                                                                                 */

typedef struct {
    float b1, b2, w1, w2, lr, step_size, c2eps, decay;
    int decay_on;
} k_args;

/* kOptimizerStatic8bit2StateBlockwise for one block: elements [a, a + len) of tensor t. */
static void block8(adamw8_state *s, const adamw8_tensor *t, int64_t a, float *p,
                   const float *g, const k_args *k) {
    const int len = (int)(t->numel - a < ADAMW8_BLOCK ? t->numel - a : ADAMW8_BLOCK);
    const size_t blk = t->boff + (size_t)(a / ADAMW8_BLOCK);
    uint8_t *c1 = s->code1 + t->soff + a, *c2 = s->code2 + t->soff + a;
    float *pp = p + t->offset + a;
    const float *gg = g + t->offset + a;
    const float *q1 = s->qmap1, *q2 = s->qmap2;
    const float am1 = s->absmax1[blk], am2 = s->absmax2[blk];
    float s1[ADAMW8_BLOCK], s2[ADAMW8_BLOCK];
    float mx1 = -FLT_MAX, mx2 = -FLT_MAX;
    for (int j = 0; j < len; j++) {
        const float gv = gg[j];
        float m = 0.0f, v = 0.0f;
        if (isfinite(gv)) { /* !isnan && !isinf; otherwise both moments are 0 */
            v = q2[c2[j]] * am2;
            const float vb = v * k->b2, wg = k->w2 * gv, wgg = wg * gv;
            v = vb + wgg;
            m = q1[c1[j]] * am1;
            const float mb = m * k->b1, wg1 = k->w1 * gv;
            m = mb + wg1;
        }
        s1[j] = m;
        s2[j] = v;
        mx1 = fmaxf(mx1, fabsf(m));
        mx2 = fmaxf(mx2, fabsf(v));
    }
    if (len < ADAMW8_BLOCK) {
        /* the kernel's padding lanes of a partial block load g = 0 and codes 128 / 0 and take
           part in the block's absmax: |q1[128] * absmax1 * b1| (q2[0] = 0 adds nothing) */
        const float m0 = q1[128] * am1, mb = m0 * k->b1, wg1 = k->w1 * 0.0f, m = mb + wg1;
        const float v0 = q2[0] * am2, vb = v0 * k->b2, wg = k->w2 * 0.0f, wgg = wg * 0.0f;
        const float v = vb + wgg;
        mx1 = fmaxf(mx1, fabsf(m));
        mx2 = fmaxf(mx2, fabsf(v));
    }
    s->absmax1[blk] = mx1;
    s->absmax2[blk] = mx2;
    for (int j = 0; j < len; j++) {
        if (!isfinite(gg[j])) continue;
        const float den = sqrtf(s2[j]) + k->c2eps, r = s1[j] / den, u = k->step_size * r;
        float pv = pp[j] + u;
        if (k->decay_on) pv = pv * k->decay;
        pp[j] = pv;
    }
    for (int j = 0; j < len; j++) {
        /* x / absmax: 0 / 0 = NaN for an all-zero block, as on the GPU; the search then lands
           on code 0 and the sign rule below moves a +0 first moment to code 255 */
        uint8_t k1 = adamw8_quantize(q1, 1, s1[j] / mx1);
        const uint8_t k2 = adamw8_quantize(q2, 0, s2[j] / mx2);
        if (signbit(q1[k1]) != signbit(s1[j])) k1 = (uint8_t)(s1[j] > 0.0f ? k1 + 1 : k1 - 1);
        c1[j] = k1;
        c2[j] = k2;
    }
}

/* kOptimizer32bit2State<float, ADAM> on elements [a, a + len) of tensor t (no finite check:
   a NaN gradient makes p and the moments NaN, as there). */
static void chunk32(adamw8_state *s, const adamw8_tensor *t, int64_t a, float *p,
                    const float *g, const k_args *k) {
    const int len = (int)(t->numel - a < ADAMW8_BLOCK ? t->numel - a : ADAMW8_BLOCK);
    float *m = s->m32 + t->soff + a, *v = s->v32 + t->soff + a, *pp = p + t->offset + a;
    const float *gg = g + t->offset + a;
    const float ss = 1.0f * k->step_size; /* update_scale * step_size, update_scale = 1 */
    for (int j = 0; j < len; j++) {
        const float gv = gg[j];
        const float mb = m[j] * k->b1, wg1 = k->w1 * gv, mi = mb + wg1;
        const float vb = v[j] * k->b2, gg2 = gv * gv, wgg = k->w2 * gg2, vi = vb + wgg;
        const float den = sqrtf(vi) + k->c2eps, r = mi / den, u = ss * r;
        float pv = pp[j] + u;
        if (k->decay_on) pv = pv * k->decay;
        pp[j] = pv;
        m[j] = mi;
        v[j] = vi;
    }
}

void adamw8_step(adamw8_state *s, float *p, const float *g, int64_t step, double lr,
                 const adamw_config *c) {
    k_args k;
    k.b1 = (float)c->beta1;
    k.b2 = (float)c->beta2;
    const float eps = (float)c->eps, wd = (float)c->weight_decay;
    k.lr = (float)lr;
    /* correction1 = 1 - beta1^step, correction2 = sqrt(1 - beta2^step) (float32; the power
       correctly rounded where the kernels use __powf / powf) */
    const float pw1 = (float)pow((double)k.b1, (double)step);
    const float pw2 = (float)pow((double)k.b2, (double)step);
    const float c1 = 1.0f - pw1, c2 = sqrtf(1.0f - pw2);
    const float nlc2 = -k.lr * c2;
    k.step_size = nlc2 / c1;
    k.w1 = 1.0f - k.b1;
    k.w2 = 1.0f - k.b2;
    k.c2eps = c2 * eps;
    const float lrwd = k.lr * wd;
    k.decay = 1.0f - lrwd;
    k.decay_on = wd > 0.0f;
    const long long ni = (long long)s->nitems;
#pragma omp parallel for schedule(static) if (ni > 256)
    for (long long it = 0; it < ni; it++) {
        const adamw8_tensor *t = &s->t[s->item_t[it]];
        if (t->q8) block8(s, t, s->item_start[it], p, g, &k);
        else chunk32(s, t, s->item_start[it], p, g, &k);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Saving and loading                                                                       */

void adamw8_write(const adamw8_state *s, st_writer *w, const char *prefix) {
    char nm[700];
    const int64_t qshape[1] = {256};
    snprintf(nm, sizeof nm, "%sqmap1", prefix);
    st_writer_add(w, nm, ST_F32, 1, qshape, s->qmap1);
    snprintf(nm, sizeof nm, "%sqmap2", prefix);
    st_writer_add(w, nm, ST_F32, 1, qshape, s->qmap2);
    for (int i = 0; i < s->n; i++) {
        const adamw8_tensor *t = &s->t[i];
        if (t->q8) {
            const int64_t nb[1] = {(t->numel + ADAMW8_BLOCK - 1) / ADAMW8_BLOCK};
            snprintf(nm, sizeof nm, "%sstate1.%s", prefix, t->name);
            st_writer_add(w, nm, ST_U8, t->ndim, t->shape, s->code1 + t->soff);
            snprintf(nm, sizeof nm, "%sstate2.%s", prefix, t->name);
            st_writer_add(w, nm, ST_U8, t->ndim, t->shape, s->code2 + t->soff);
            snprintf(nm, sizeof nm, "%sabsmax1.%s", prefix, t->name);
            st_writer_add(w, nm, ST_F32, 1, nb, s->absmax1 + t->boff);
            snprintf(nm, sizeof nm, "%sabsmax2.%s", prefix, t->name);
            st_writer_add(w, nm, ST_F32, 1, nb, s->absmax2 + t->boff);
        } else {
            snprintf(nm, sizeof nm, "%sstate1.%s", prefix, t->name);
            st_writer_add(w, nm, ST_F32, t->ndim, t->shape, s->m32 + t->soff);
            snprintf(nm, sizeof nm, "%sstate2.%s", prefix, t->name);
            st_writer_add(w, nm, ST_F32, t->ndim, t->shape, s->v32 + t->soff);
        }
    }
}

static const char *dims(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

/* find name, check dtype and shape exactly, copy the raw bytes into dst */
static int take(const st_file *f, const char *name, st_dtype dt, int ndim,
                const int64_t *shape, void *dst) {
    const st_tensor *t = st_find(f, name);
    if (!t) return mapo_error("%s: optimizer state '%s' missing", f->path, name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (t->dtype != dt || !ok) {
        char a[200], b[200];
        return mapo_error("%s: optimizer state '%s' is %s %s, this run's layout needs %s %s "
                          "(8-bit state for tensors of >= min_8bit_size elements)",
                          f->path, name, st_dtype_name(t->dtype), dims(a, sizeof a, t->ndim, t->shape),
                          st_dtype_name(dt), dims(b, sizeof b, ndim, shape));
    }
    memcpy(dst, t->data, t->nbytes);
    return 0;
}

int adamw8_read(adamw8_state *s, const st_file *f, const char *prefix) {
    char nm[700];
    const int64_t qshape[1] = {256};
    float q[256];
    for (int k = 0; k < 2; k++) {
        snprintf(nm, sizeof nm, "%sqmap%d", prefix, k + 1);
        if (take(f, nm, ST_F32, 1, qshape, q)) return -1;
        if (memcmp(q, k ? s->qmap2 : s->qmap1, sizeof q))
            return mapo_error("%s: '%s' is not this build's %s dynamic map (a state quantised "
                              "with another map cannot resume exactly)", f->path, nm,
                              k ? "unsigned" : "signed");
    }
    for (int i = 0; i < s->n; i++) {
        adamw8_tensor *t = &s->t[i];
        if (t->q8) {
            const int64_t nb[1] = {(t->numel + ADAMW8_BLOCK - 1) / ADAMW8_BLOCK};
            snprintf(nm, sizeof nm, "%sstate1.%s", prefix, t->name);
            if (take(f, nm, ST_U8, t->ndim, t->shape, s->code1 + t->soff)) return -1;
            snprintf(nm, sizeof nm, "%sstate2.%s", prefix, t->name);
            if (take(f, nm, ST_U8, t->ndim, t->shape, s->code2 + t->soff)) return -1;
            snprintf(nm, sizeof nm, "%sabsmax1.%s", prefix, t->name);
            if (take(f, nm, ST_F32, 1, nb, s->absmax1 + t->boff)) return -1;
            snprintf(nm, sizeof nm, "%sabsmax2.%s", prefix, t->name);
            if (take(f, nm, ST_F32, 1, nb, s->absmax2 + t->boff)) return -1;
        } else {
            snprintf(nm, sizeof nm, "%sstate1.%s", prefix, t->name);
            if (take(f, nm, ST_F32, t->ndim, t->shape, s->m32 + t->soff)) return -1;
            snprintf(nm, sizeof nm, "%sstate2.%s", prefix, t->name);
            if (take(f, nm, ST_F32, t->ndim, t->shape, s->v32 + t->soff)) return -1;
        }
    }
    return 0;
}

int adamw8_save(const adamw8_state *s, const char *path) {
    st_writer *w = st_writer_new();
    adamw8_write(s, w, "");
    st_writer_meta(w, "optimizer", "AdamW8bit");
    int rc = st_writer_write(w, path);
    st_writer_free(w);
    return rc;
}

int adamw8_load(adamw8_state *s, const char *path) {
    st_file f;
    if (st_open(&f, path)) return -1;
    int rc = adamw8_read(s, &f, "");
    st_close(&f);
    return rc;
}
