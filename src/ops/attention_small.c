/* attention_small.c -- the attention of ops.h for heads of dimension <= 16 under MAPO_BF16.
 *
 * Below head dimension 32 the bf16 products are slower than float32 (engine_attention.c), and
 * the float32 kernel (kernels.inc) calls OpenBLAS with the head dimension as the products'
 * inner dimension (K = 8 at bench_unet.json's heads), where OpenBLAS took ~30% of a bf16 step.
 * Here the products are written out on 16 key lanes instead, in float32 as in the float32
 * kernel (MAPO_F32 keeps that kernel, bit for bit), with scores in base 2 (q scaled by
 * scale log2(e)) so that exp is exp2 (exp16.h's exp2_16_masked: a rounding, a polynomial and
 * vscalefps) applied as the scores come out of the products (docs/BENCHMARKS.md):
 *
 *   per (batch, head): K^T and V^T packed as [Dh][Nk] (keys padded to 16 with zeros), the
 *   query rows in blocks of 4 (q scaled, dout; head dimension padded to 16);
 *   forward, per block of keys (all keys up to FWD_KEY_FLOATS / Dh), per block of 4 rows:
 *     s_r[j]  = sum_d (scale log2(e) q_rd) K^T[d][j]   4 rows x 64 keys in registers over d
 *     online softmax: m_r = max(m_r, max_j s_r), p_r = 2^(s_r - m_r), earlier sums rescaled
 *     o_rd   += sum_j p_r[j] V^T[d][j]                  4 rows x 4 d in registers over keys
 *     at the end o_rd / l_r, lse_r = (m_r + log2 l_r) ln 2 (natural log, as the float32 kernel)
 *   backward, per block of keys (BWD_KEY_FLOATS / Dh: their slices of K^T, V^T, dK^T, dV^T
 *   stay in L1), per block of 4 rows, p_r = 2^(s_r - lse_r log2(e)) recomputed:
 *     dV^T[d][j] += sum_r dout_rd p_r[j]
 *     dp_r[j] = sum_d dout_rd V^T[d][j],  ds_r = p_r (dp_r - sum_d o_rd dout_rd)
 *     dK^T[d][j] += sum_r (scale log2(e) q_rd) ds_r[j]   (times ln 2 when written out)
 *     dq_rd += sum_j ds_r[j] K^T[d][j]                   (times scale when written out)
 *   dq, dK^T and dV^T are added (or assigned) into dq, dk and dv once per (batch, head).
 * A block's missing rows (at the end of the queries) are zero rows whose results are dropped:
 * their q and dout are 0, so they add nothing to dK and dV. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "attention_small.h"
#include "engine_internal.h"

#ifdef __AVX512F__
#include "exp16.h"

enum { RB = 4, L = 16, W = ATT_SMALL_MAX_DH };

/* keys per block: floats / Dh, a multiple of 16, at most all (padded) keys. The backward's
   blocks of 2,048 floats keep a block's slices of K^T, V^T, dK^T and dV^T (32 KiB) in L1 while
   every query row passes over them; the forward does best with all keys in one block (fewer
   rescalings of the online softmax; 16,384 floats is 1,024 keys at head dim 16). */
enum { FWD_KEY_FLOATS = 16384, BWD_KEY_FLOATS = 2048 };
static int key_block(int Dh, int nkp, int floats) {
    int kb = floats / Dh / L * L;
    if (kb < L) kb = L;
    return kb < nkp ? kb : nkp;
}

int attention_small_applies(int Dh) { return Dh >= 1 && Dh <= ATT_SMALL_MAX_DH; }

typedef float rowblk[RB][W]; /* a block of 4 query rows, head dimension padded to 16 */

/* per-thread buffers of one (batch, head) */
typedef struct {
    int nkp, kb;             /* keys padded to 16, keys per block */
    float *kt, *vt;          /* [Dh][nkp] */
    float *dkt, *dvt;        /* [Dh][nkp] */
    float *s, *ds;           /* [RB][kb]: scores / probabilities, and dS */
    rowblk *qs, *g, *acc;    /* [nqb]: scaled q, dout; forward: o sums, backward: dq sums */
    float *m, *l;            /* [nqb * RB]: forward: running max and sum; backward: lse, D */
} bufs;

/* thread t's buffers, in its grow-only engine buffer */
static bufs bufs_at(int t, int Dh, int Nq, int Nk, int backward) {
    bufs b = {.nkp = (Nk + L - 1) / L * L};
    b.kb = key_block(Dh, b.nkp, backward ? BWD_KEY_FLOATS : FWD_KEY_FLOATS);
    const int nqb = (Nq + RB - 1) / RB;
    const size_t m = (size_t)Dh * b.nkp, rows = (size_t)RB * b.kb, blk = (size_t)RB * W;
    const size_t nt = backward ? 4 : 2; /* K^T, V^T (and dK^T, dV^T) */
    const size_t n = nt * m + 2 * rows + 3 * nqb * blk + 2 * (size_t)nqb * RB;
    float *f = (float *)engine_thread_buffer(t, n * sizeof(float));
    b.kt = f, b.vt = f + m;
    b.dkt = backward ? f + 2 * m : NULL;
    b.dvt = backward ? f + 3 * m : NULL;
    f += nt * m;
    b.s = f, b.ds = f + rows;
    f += 2 * rows;
    b.qs = (rowblk *)f, b.g = (rowblk *)(f + nqb * blk), b.acc = (rowblk *)(f + 2 * nqb * blk);
    f += 3 * nqb * blk;
    b.m = f, b.l = f + (size_t)nqb * RB;
    return b;
}

/* threads of the kernels' parallel regions (each needs a buffer index) */
static int n_threads(void) {
    const int n = omp_get_max_threads();
    return n < ENGINE_MAXT ? n : ENGINE_MAXT;
}

/* dst[d][j] = src[j * ld + d] for the Nk keys of one head, zero past Nk */
static void pack_t(float *dst, const float *src, int Nk, int nkp, int Dh, int ld) {
    for (int d = 0; d < Dh; d++) {
        float *t = dst + (int64_t)d * nkp;
        for (int j = 0; j < Nk; j++) t[j] = src[(int64_t)j * ld + d];
        for (int j = Nk; j < nkp; j++) t[j] = 0;
    }
}

/* rows i0 .. i0 + rr of x (leading dimension ld) into a block, times mul, zero rows past rr */
static void load_rows(rowblk blk, const float *x, int64_t ld, int rr, int Dh, float mul) {
    for (int r = 0; r < RB; r++)
        for (int d = 0; d < W; d++) blk[r][d] = r < rr && d < Dh ? x[r * ld + d] * mul : 0.0f;
}

/* What rows_times_t does with each row's 16 sums x = sum_d a[r][d] t[d][j]:
   RT_STORE (forward scores) stores them and returns each row's maximum over the real keys in e;
   RT_EXP (the backward's probabilities, e = lse in base 2) stores 2^(x - e[r]), 0 past the
   real keys;
   RT_DS (dS from dP = dO V^T, e = rowsum(dO o), p the probabilities) stores p[r][j] (x - e[r]). */
enum { RT_STORE, RT_EXP, RT_DS };

/* rows_times_t on KG groups of 16 keys from key j: the 4 x KG sums stay in registers over d,
   so each broadcast of a[r][d] serves KG groups and each load of t serves 4 rows */
static inline __attribute__((always_inline)) void
rows_times_groups(float *s, int lds, const rowblk a, const float *t, int ldt, int j, int Dh,
                  int mode, const float e[RB], const float *p, int nvalid, __m512 mx[RB],
                  const int KG) {
    __m512 acc[RB][4]; /* RT_EXP, RT_DS: the sums start from -e[r] */
    for (int r = 0; r < RB; r++)
        for (int g = 0; g < KG; g++)
            acc[r][g] = mode == RT_STORE ? _mm512_setzero_ps() : _mm512_set1_ps(-e[r]);
    for (int d = 0; d < Dh; d++) {
        __m512 kv[4];
        for (int g = 0; g < KG; g++) kv[g] = _mm512_loadu_ps(t + (int64_t)d * ldt + j + g * L);
        for (int r = 0; r < RB; r++) {
            const __m512 b = _mm512_set1_ps(a[r][d]);
            for (int g = 0; g < KG; g++) acc[r][g] = _mm512_fmadd_ps(b, kv[g], acc[r][g]);
        }
    }
    for (int g = 0; g < KG; g++) {
        const int jg = j + g * L;
        const __mmask16 m = tail_mask16(jg, nvalid); /* the block's real keys */
        for (int r = 0; r < RB; r++) {
            __m512 x = acc[r][g];
            if (mode == RT_EXP)
                x = exp2_16_masked(x, m);
            else if (mode == RT_DS)
                x = _mm512_mul_ps(_mm512_loadu_ps(p + (int64_t)r * lds + jg), x);
            else
                mx[r] = _mm512_mask_max_ps(mx[r], m, mx[r], x);
            _mm512_storeu_ps(s + (int64_t)r * lds + jg, x);
        }
    }
}

/* s_r[j] = f(sum_d a[r][d] t[d][j]) for the nk keys of a block (t: leading dimension ldt;
   s, p: leading dimension lds), 4 rows at once; the block's first nvalid keys are real */
static void rows_times_t(float *s, int lds, const rowblk a, const float *t, int ldt, int nk,
                         int Dh, int mode, float e[RB], const float *p, int nvalid) {
    __m512 mx[RB]; /* RT_STORE: each row's running maximum over the real keys, into e */
    for (int r = 0; r < RB; r++) mx[r] = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 4 * L <= nk; j += 4 * L)
        rows_times_groups(s, lds, a, t, ldt, j, Dh, mode, e, p, nvalid, mx, 4);
    for (; j < nk; j += L) rows_times_groups(s, lds, a, t, ldt, j, Dh, mode, e, p, nvalid, mx, 1);
    if (mode == RT_STORE)
        for (int r = 0; r < RB; r++) e[r] = _mm512_reduce_max_ps(mx[r]);
}

/* the sums of 16 vectors' lanes: lane i of the result is the sum of x[i]'s 16 lanes (pairwise
   adds of unpacked / shuffled halves, 45 operations instead of 16 reductions' ~110) */
static inline __m512 sum16(const __m512 x[16]) {
    __m512 a[8], b[4], e[2];
    for (int k = 0; k < 8; k++) /* each 128-bit chunk: x[2k], x[2k+1] lanes 0+2, 0+2, 1+3, 1+3 */
        a[k] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * k], x[2 * k + 1]),
                             _mm512_unpackhi_ps(x[2 * k], x[2 * k + 1]));
    for (int k = 0; k < 4; k++) /* each chunk: its sums of x[4k .. 4k + 3] */
        b[k] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(a[2 * k], a[2 * k + 1], 0xee));
    for (int k = 0; k < 2; k++) /* chunks 0 + 1, 2 + 3 of b[2k], then of b[2k + 1] */
        e[k] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e[0], e[1], 0x88),
                         _mm512_shuffle_f32x4(e[0], e[1], 0xdd));
}

/* out[r][d .. d + DG) += sum_j p_r[j] t[d][j] over the nk keys of a block: each load of p
   serves DG values of d, each load of t 4 rows */
static inline __attribute__((always_inline)) void
rows_dot_groups(rowblk out, const float *p, int lds, const float *t, int ldt, int nk, int d,
                const int DG) {
    __m512 acc[RB][4];
    for (int r = 0; r < RB; r++)
        for (int g = 0; g < DG; g++) acc[r][g] = _mm512_setzero_ps();
    for (int j = 0; j < nk; j += L) {
        __m512 tv[4];
        for (int g = 0; g < DG; g++) tv[g] = _mm512_loadu_ps(t + (int64_t)(d + g) * ldt + j);
        for (int r = 0; r < RB; r++) {
            const __m512 pv = _mm512_loadu_ps(p + (int64_t)r * lds + j);
            for (int g = 0; g < DG; g++) acc[r][g] = _mm512_fmadd_ps(pv, tv[g], acc[r][g]);
        }
    }
    if (DG == 4) { /* the 16 sums at once: lane 4 r + g of sum16's result is acc[r][g]'s */
        const __m512 y = sum16((const __m512 *)acc);
        const __m128 y4[RB] = {_mm512_extractf32x4_ps(y, 0), _mm512_extractf32x4_ps(y, 1),
                               _mm512_extractf32x4_ps(y, 2), _mm512_extractf32x4_ps(y, 3)};
        for (int r = 0; r < RB; r++)
            _mm_storeu_ps(&out[r][d], _mm_add_ps(_mm_loadu_ps(&out[r][d]), y4[r]));
    } else {
        for (int r = 0; r < RB; r++)
            for (int g = 0; g < DG; g++) out[r][d + g] += _mm512_reduce_add_ps(acc[r][g]);
    }
}

/* out[r][d] += sum_j p_r[j] t[d][j] over the nk keys of a block (padded keys have p = 0) */
static void rows_dot_t(rowblk out, const float *p, int lds, const float *t, int ldt, int nk,
                       int Dh) {
    int d = 0;
    for (; d + 4 <= Dh; d += 4) rows_dot_groups(out, p, lds, t, ldt, nk, d, 4);
    for (; d < Dh; d++) rows_dot_groups(out, p, lds, t, ldt, nk, d, 1);
}

/* t[d .. d + DG)[j] += sum_r a[r][d] p_r[j] over the nk keys of a block: the 4 x DG values of
   a stay in registers, each load of p serves DG rows of t */
static inline __attribute__((always_inline)) void
t_add_groups(float *t, int ldt, int nk, const rowblk a, const float *p, int lds, int d,
             const int DG) {
    __m512 ad[4][RB];
    for (int g = 0; g < DG; g++)
        for (int r = 0; r < RB; r++) ad[g][r] = _mm512_set1_ps(a[r][d + g]);
    for (int j = 0; j < nk; j += L) {
        __m512 pv[RB];
        for (int r = 0; r < RB; r++) pv[r] = _mm512_loadu_ps(p + (int64_t)r * lds + j);
        for (int g = 0; g < DG; g++) {
            float *td = t + (int64_t)(d + g) * ldt + j;
            __m512 acc = _mm512_loadu_ps(td);
            for (int r = 0; r < RB; r++) acc = _mm512_fmadd_ps(ad[g][r], pv[r], acc);
            _mm512_storeu_ps(td, acc);
        }
    }
}

/* t[d][j] += sum_r a[r][d] p_r[j] over the nk keys of a block */
static void t_add_rows(float *t, int ldt, int nk, const rowblk a, const float *p, int lds,
                       int Dh) {
    int d = 0;
    for (; d + 4 <= Dh; d += 4) t_add_groups(t, ldt, nk, a, p, lds, d, 4);
    for (; d < Dh; d++) t_add_groups(t, ldt, nk, a, p, lds, d, 1);
}


/* the start of (batch, head) bh: its offsets in q / out (*qo) and in k / v (*ko), and its K^T,
   V^T packed into bf */
static void head_begin(const bufs *bf, int bh, int H, int Nq, int Nk, int Dh, const float *k,
                       const float *v, int64_t *qo, int64_t *ko) {
    const int b = bh / H, h = bh % H, ld = H * Dh;
    *qo = (int64_t)b * Nq * ld + h * Dh;
    *ko = (int64_t)b * Nk * ld + h * Dh;
    pack_t(bf->kt, k + *ko, Nk, bf->nkp, Dh, ld);
    pack_t(bf->vt, v + *ko, Nk, bf->nkp, Dh, ld);
}

/* one block of keys (from j0, nk of them) against query row block ib: the online softmax's
   running max m and sum l of each row, and its o sums rescaled and added to */
static void forward_block(const bufs *bf, int ib, int j0, int nk, int Nk, int Dh) {
    float bm[RB];
    float *m = bf->m + (int64_t)ib * RB, *l = bf->l + (int64_t)ib * RB;
    rows_times_t(bf->s, bf->kb, (const float(*)[W])bf->qs[ib], bf->kt + j0, bf->nkp, nk, Dh,
                 RT_STORE, bm, NULL, Nk - j0);
    for (int r = 0; r < RB; r++) {
        const float mn = bm[r] > m[r] ? bm[r] : m[r];
        const float sum = exp2_shift_row(bf->s + (int64_t)r * bf->kb, nk, Nk - j0, mn, NULL);
        if (mn != m[r]) { /* a new maximum: rescale what the earlier blocks summed */
            const float a = j0 ? exp2f(m[r] - mn) : 0.0f;
            l[r] *= a;
            for (int d = 0; d < Dh; d++) bf->acc[ib][r][d] *= a;
            m[r] = mn;
        }
        l[r] += sum;
    }
    rows_dot_t(bf->acc[ib], bf->s, bf->kb, bf->vt + j0, bf->nkp, nk, Dh);
}

void attention_small_forward(float *out, float *lse, const float *q, const float *k,
                             const float *v, int B, int H, int Nq, int Nk, int Dh, double scale) {
    const int ld = H * Dh, nqb = (Nq + RB - 1) / RB;
    const float s2 = (float)(scale * M_LOG2E); /* scores in base 2 */
#pragma omp parallel num_threads(n_threads())
    {
        bufs bf = bufs_at(omp_get_thread_num(), Dh, Nq, Nk, 0);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int64_t qo, ko;
            head_begin(&bf, bh, H, Nq, Nk, Dh, k, v, &qo, &ko);
            for (int ib = 0; ib < nqb; ib++) {
                const int rr = Nq - ib * RB < RB ? Nq - ib * RB : RB;
                load_rows(bf.qs[ib], q + qo + (int64_t)ib * RB * ld, ld, rr, Dh, s2);
                memset(bf.acc[ib], 0, sizeof(rowblk));
                for (int r = 0; r < RB; r++) bf.m[ib * RB + r] = -INFINITY, bf.l[ib * RB + r] = 0;
            }
            for (int j0 = 0; j0 < bf.nkp; j0 += bf.kb) {
                const int nk = bf.nkp - j0 < bf.kb ? bf.nkp - j0 : bf.kb;
                for (int ib = 0; ib < nqb; ib++) forward_block(&bf, ib, j0, nk, Nk, Dh);
            }
            for (int i = 0; i < Nq; i++) {
                const int ib = i / RB, r = i % RB;
                const float inv = 1 / bf.l[i];
                const double l2 = (double)bf.m[i] + log2((double)bf.l[i]);
                lse[(int64_t)bh * Nq + i] = (float)(l2 * M_LN2);
                for (int d = 0; d < Dh; d++)
                    out[qo + (int64_t)i * ld + d] = bf.acc[ib][r][d] * inv;
            }
        }
    }
}

/* dst (leading dimension ld) [Nk][Dh] (+)= t^T, t [Dh][nkp] */
static void scatter_t(float *dst, int ld, const float *t, int Nk, int nkp, int Dh, int assign,
                      float mul) {
    for (int j = 0; j < Nk; j++)
        for (int d = 0; d < Dh; d++) {
            const float x = t[(int64_t)d * nkp + j] * mul;
            dst[(int64_t)j * ld + d] = assign ? x : dst[(int64_t)j * ld + d] + x;
        }
}

/* the backward's rows of (batch, head) bh into bf: scaled q, dout, lse and D = rowsum(dout o) */
static void backward_rows(const bufs *bf, int64_t qo, int bh, int Nq, int ld, int Dh,
                          const float *q, const float *dout, const float *out, const float *lse,
                          float scale) {
    for (int ib = 0; ib < (Nq + RB - 1) / RB; ib++) {
        const int rr = Nq - ib * RB < RB ? Nq - ib * RB : RB;
        const int64_t at = qo + (int64_t)ib * RB * ld;
        rowblk o;
        load_rows(bf->qs[ib], q + at, ld, rr, Dh, scale);
        load_rows(bf->g[ib], dout + at, ld, rr, Dh, 1.0f);
        load_rows(o, out + at, ld, rr, Dh, 1.0f);
        memset(bf->acc[ib], 0, sizeof(rowblk));
        for (int r = 0; r < RB; r++) { /* a missing row's P is 2^0 = 1, times dout 0 */
            const int64_t i = (int64_t)bh * Nq + ib * RB + r;
            bf->m[ib * RB + r] = r < rr ? (float)(lse[i] * M_LOG2E) : 0.0f; /* in base 2 */
            double di = 0;
            for (int d = 0; d < Dh; d++) di += (double)o[r][d] * bf->g[ib][r][d];
            bf->l[ib * RB + r] = (float)di;
        }
    }
}

/* one block of keys (from j0, nk of them) against query row block ib: P, then dV^T, dS, dK^T
   and the row block's dq sums */
static void backward_block(const bufs *bf, int ib, int j0, int nk, int Nk, int Dh, int want_dq,
                           int want_dk, int want_dv) {
    const rowblk *qs = (const rowblk *)&bf->qs[ib], *g = (const rowblk *)&bf->g[ib];
    const int kb = bf->kb, ldt = bf->nkp;
    rows_times_t(bf->s, kb, *qs, bf->kt + j0, ldt, nk, Dh, RT_EXP, bf->m + (int64_t)ib * RB, NULL,
                 Nk - j0); /* P */
    if (want_dv) t_add_rows(bf->dvt + j0, ldt, nk, *g, bf->s, kb, Dh);
    if (!want_dq && !want_dk) return;
    rows_times_t(bf->ds, kb, *g, bf->vt + j0, ldt, nk, Dh, RT_DS, bf->l + (int64_t)ib * RB, bf->s,
                 Nk - j0); /* dS */
    if (want_dk) t_add_rows(bf->dkt + j0, ldt, nk, *qs, bf->ds, kb, Dh);
    if (want_dq) rows_dot_t(bf->acc[ib], bf->ds, kb, bf->kt + j0, ldt, nk, Dh);
}

void attention_small_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *out, const float *lse, const float *q, const float *k,
                              const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                              int assign) {
    const int ld = H * Dh;
#pragma omp parallel num_threads(n_threads())
    {
        bufs bf = bufs_at(omp_get_thread_num(), Dh, Nq, Nk, 1);
        const size_t tb = (size_t)Dh * bf.nkp * sizeof(float);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int64_t qo, ko;
            head_begin(&bf, bh, H, Nq, Nk, Dh, k, v, &qo, &ko);
            memset(bf.dkt, 0, tb);
            memset(bf.dvt, 0, tb);
            backward_rows(&bf, qo, bh, Nq, ld, Dh, q, dout, out, lse, (float)(scale * M_LOG2E));
            for (int j0 = 0; j0 < bf.nkp; j0 += bf.kb) {
                const int nk = bf.nkp - j0 < bf.kb ? bf.nkp - j0 : bf.kb;
                for (int ib = 0; ib < (Nq + RB - 1) / RB; ib++)
                    backward_block(&bf, ib, j0, nk, Nk, Dh, dq != NULL, dk != NULL, dv != NULL);
            }
            if (dq)
                for (int i = 0; i < Nq; i++)
                    for (int d = 0; d < Dh; d++) {
                        float *x = dq + qo + (int64_t)i * ld + d;
                        const float val = (float)scale * bf.acc[i / RB][i % RB][d];
                        *x = assign ? val : *x + val;
                    }
            if (dk) scatter_t(dk + ko, ld, bf.dkt, Nk, bf.nkp, Dh, assign, (float)M_LN2);
            if (dv) scatter_t(dv + ko, ld, bf.dvt, Nk, bf.nkp, Dh, assign, 1.0f);
        }
    }
}
#else
/* without AVX-512 the bf16 path keeps the float32 kernel for narrow heads */
int attention_small_applies(int Dh) {
    (void)Dh;
    return 0;
}
void attention_small_forward(float *out, float *lse, const float *q, const float *k,
                             const float *v, int B, int H, int Nq, int Nk, int Dh, double scale) {
    attention_forward(out, lse, q, k, v, B, H, Nq, Nk, Dh, scale);
}
void attention_small_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *out, const float *lse, const float *q, const float *k,
                              const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                              int assign) {
    if (assign) { /* the float32 kernel adds */
        if (dq) memset(dq, 0, (size_t)B * Nq * H * Dh * sizeof(float));
        if (dk) memset(dk, 0, (size_t)B * Nk * H * Dh * sizeof(float));
        if (dv) memset(dv, 0, (size_t)B * Nk * H * Dh * sizeof(float));
    }
    attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, H, Nq, Nk, Dh, scale);
}
#endif
