/* attention_small.c -- the attention of ops.h for heads of dimension <= 16 under MAPO_BF16.
 *
 * Below head dimension 32 the bf16 products are slower than float32 (engine_attention.c), and
 * the float32 kernel (kernels.inc) calls OpenBLAS with the head dimension as the products'
 * inner dimension (K = 8 at bench_unet.json's heads), where OpenBLAS took ~30% of a bf16 step.
 * Here the products are written out on 16 key lanes instead, in float32 as in the float32
 * kernel (MAPO_F32 keeps that kernel, bit for bit), and exp (exp16.h, mapo_vexpf's steps) is
 * applied as the scores come out of the products: a bench_unet.json bf16 step went from
 * 0.244-0.251 s to 0.191-0.205 s (bench/ab.sh, docs/BENCHMARKS.md):
 *
 *   per (batch, head): K^T and V^T packed as [Dh][Nk] (keys padded to 16 with zeros);
 *   per block of 4 query rows:
 *     s_r[j]  = sum_d (scale q_rd) K^T[d][j]          Dh FMAs per 16 keys, 4 rows at once
 *     p_r     = exp(s_r - max), lse_r = max + log(sum p_r)
 *     o_rd    = sum_j p_r[j] V^T[d][j] / sum p_r      16-lane partial sums, reduced per (r, d)
 *   backward, p_r = exp(s_r - lse_r) recomputed:
 *     dp_r[j] = sum_d dout_rd V^T[d][j],  ds_r = p_r (dp_r - sum_d o_rd dout_rd)
 *     dV^T[d][j] += sum_r dout_rd p_r[j],  dK^T[d][j] += sum_r (scale q_rd) ds_r[j]
 *     dq_rd  (+)= scale sum_j ds_r[j] K^T[d][j]
 *   dK^T and dV^T are added (or assigned) into dk and dv once per (batch, head).
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

enum { RB = 4, L = 16 };

int attention_small_applies(int Dh) { return Dh >= 1 && Dh <= ATT_SMALL_MAX_DH; }

/* per-thread buffers of one (batch, head) */
typedef struct {
    int nkp;                 /* keys padded to 16 */
    float *kt, *vt;          /* [Dh][nkp] */
    float *dkt, *dvt;        /* [Dh][nkp] */
    float *s, *ds;           /* [RB][nkp]: scores / probabilities, and dS */
} bufs;

/* thread t's buffers, in its grow-only engine buffer */
static bufs bufs_at(int t, int Dh, int Nk, int backward) {
    bufs b = {.nkp = (Nk + L - 1) / L * L};
    const size_t m = (size_t)Dh * b.nkp, rows = (size_t)RB * b.nkp;
    const size_t n = (backward ? 4 : 2) * m + 2 * rows;
    float *f = (float *)engine_thread_buffer(t, n * sizeof(float));
    b.kt = f, b.vt = f + m;
    b.dkt = backward ? f + 2 * m : NULL;
    b.dvt = backward ? f + 3 * m : NULL;
    b.s = f + (backward ? 4 : 2) * m;
    b.ds = b.s + rows;
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

/* rows i0 .. i0 + rr of x (leading dimension ld) into a [RB][16] block, times mul, zero rows
   past rr */
static void load_rows(float blk[RB][ATT_SMALL_MAX_DH], const float *x, int64_t ld, int rr, int Dh,
                      float mul) {
    for (int r = 0; r < RB; r++)
        for (int d = 0; d < ATT_SMALL_MAX_DH; d++)
            blk[r][d] = r < rr && d < Dh ? x[r * ld + d] * mul : 0.0f;
}

/* What rows_times_t does with each row's 16 sums x = sum_d a[r][d] t[d][j]:
   RT_STORE (forward scores) stores them and returns each row's maximum over the Nk keys in e;
   RT_EXP (the backward's probabilities, e = lse) stores exp(x - e[r]), 0 past the Nk keys;
   RT_DS (dS from dP = dO V^T, e = rowsum(dO o), p the probabilities) stores p[r][j] (x - e[r]). */
enum { RT_STORE, RT_EXP, RT_DS };

/* s_r[j] = f(sum_d a[r][d] t[d][j]) for all padded keys, 4 rows at once */
static void rows_times_t(float *s, int nkp, const float a[RB][ATT_SMALL_MAX_DH], const float *t,
                         int Dh, int mode, float e[RB], const float *p, int Nk) {
    __m512 mx[RB]; /* RT_STORE: each row's running maximum over the Nk keys, into e */
    for (int r = 0; r < RB; r++) mx[r] = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < nkp; j += L) {
        __m512 acc[RB];
        for (int r = 0; r < RB; r++) acc[r] = _mm512_setzero_ps();
        for (int d = 0; d < Dh; d++) {
            const __m512 kv = _mm512_loadu_ps(t + (int64_t)d * nkp + j);
            for (int r = 0; r < RB; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r][d]), kv, acc[r]);
        }
        const __mmask16 m = j + L <= Nk ? (__mmask16)0xffff : (__mmask16)((1u << (Nk - j)) - 1);
        for (int r = 0; r < RB; r++) {
            __m512 x = acc[r];
            if (mode == RT_EXP)
                x = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(x, _mm512_set1_ps(e[r]))));
            else if (mode == RT_DS)
                x = _mm512_mul_ps(_mm512_loadu_ps(p + (int64_t)r * nkp + j),
                                  _mm512_sub_ps(x, _mm512_set1_ps(e[r])));
            else
                mx[r] = _mm512_mask_max_ps(mx[r], m, mx[r], x);
            _mm512_storeu_ps(s + (int64_t)r * nkp + j, x);
        }
    }
    if (mode == RT_STORE)
        for (int r = 0; r < RB; r++) e[r] = _mm512_reduce_max_ps(mx[r]);
}

/* out[r][d] = sum_j p_r[j] t[d][j] (padded keys have p = 0) */
static void rows_dot_t(float out[RB][ATT_SMALL_MAX_DH], const float *p, int nkp, const float *t,
                       int Dh) {
    for (int d = 0; d < Dh; d++) {
        __m512 acc[RB];
        for (int r = 0; r < RB; r++) acc[r] = _mm512_setzero_ps();
        const float *td = t + (int64_t)d * nkp;
        for (int j = 0; j < nkp; j += L) {
            const __m512 tv = _mm512_loadu_ps(td + j);
            for (int r = 0; r < RB; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(p + (int64_t)r * nkp + j), tv, acc[r]);
        }
        for (int r = 0; r < RB; r++) out[r][d] = _mm512_reduce_add_ps(acc[r]);
    }
}

/* t[d][j] += sum_r a[r][d] p_r[j] */
static void t_add_rows(float *t, int nkp, const float a[RB][ATT_SMALL_MAX_DH], const float *p,
                       int Dh) {
    for (int d = 0; d < Dh; d++) {
        float *td = t + (int64_t)d * nkp;
        __m512 ad[RB];
        for (int r = 0; r < RB; r++) ad[r] = _mm512_set1_ps(a[r][d]);
        for (int j = 0; j < nkp; j += L) {
            __m512 acc = _mm512_loadu_ps(td + j);
            for (int r = 0; r < RB; r++)
                acc = _mm512_fmadd_ps(ad[r], _mm512_loadu_ps(p + (int64_t)r * nkp + j), acc);
            _mm512_storeu_ps(td + j, acc);
        }
    }
}

/* a row of scores: exp(s - shift) on the Nk keys and 0 on the padding, in one pass (exp16:
   mapo_vexpf's steps); returns the row's sum */
static float exp_row(float *s, int Nk, int nkp, float shift) {
    const __m512 sh = _mm512_set1_ps(shift);
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < nkp; j += L) {
        const __mmask16 m = j + L <= Nk ? (__mmask16)0xffff : (__mmask16)((1u << (Nk - j)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), sh)));
        _mm512_storeu_ps(s + j, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
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

void attention_small_forward(float *out, float *lse, const float *q, const float *k,
                             const float *v, int B, int H, int Nq, int Nk, int Dh, double scale) {
    const int ld = H * Dh;
#pragma omp parallel num_threads(n_threads())
    {
        bufs bf = bufs_at(omp_get_thread_num(), Dh, Nk, 0);
        const int nkp = bf.nkp;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int64_t qo, ko;
            head_begin(&bf, bh, H, Nq, Nk, Dh, k, v, &qo, &ko);
            for (int i0 = 0; i0 < Nq; i0 += RB) {
                const int rr = Nq - i0 < RB ? Nq - i0 : RB;
                float qs[RB][ATT_SMALL_MAX_DH], o[RB][ATT_SMALL_MAX_DH], inv[RB];
                load_rows(qs, q + qo + (int64_t)i0 * ld, ld, rr, Dh, (float)scale);
                float mx[RB];
                rows_times_t(bf.s, nkp, qs, bf.kt, Dh, RT_STORE, mx, NULL, Nk);
                for (int r = 0; r < RB; r++) {
                    const float sum = exp_row(bf.s + (int64_t)r * nkp, Nk, nkp, mx[r]);
                    inv[r] = 1 / sum;
                    if (r < rr) lse[(int64_t)bh * Nq + i0 + r] = mx[r] + logf(sum);
                }
                rows_dot_t(o, bf.s, nkp, bf.vt, Dh);
                for (int r = 0; r < rr; r++)
                    for (int d = 0; d < Dh; d++)
                        out[qo + (int64_t)(i0 + r) * ld + d] = o[r][d] * inv[r];
            }
        }
    }
}

/* dst (leading dimension ld) [Nk][Dh] (+)= t^T, t [Dh][nkp] */
static void scatter_t(float *dst, int ld, const float *t, int Nk, int nkp, int Dh, int assign) {
    for (int j = 0; j < Nk; j++)
        for (int d = 0; d < Dh; d++) {
            const float x = t[(int64_t)d * nkp + j];
            dst[(int64_t)j * ld + d] = assign ? x : dst[(int64_t)j * ld + d] + x;
        }
}

void attention_small_backward(float *dq, float *dk, float *dv, const float *dout,
                              const float *out, const float *lse, const float *q, const float *k,
                              const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                              int assign) {
    const int ld = H * Dh;
#pragma omp parallel num_threads(n_threads())
    {
        bufs bf = bufs_at(omp_get_thread_num(), Dh, Nk, 1);
        const int nkp = bf.nkp;
        const size_t tb = (size_t)Dh * nkp * sizeof(float);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int64_t qo, ko;
            head_begin(&bf, bh, H, Nq, Nk, Dh, k, v, &qo, &ko);
            memset(bf.dkt, 0, tb);
            memset(bf.dvt, 0, tb);
            for (int i0 = 0; i0 < Nq; i0 += RB) {
                const int rr = Nq - i0 < RB ? Nq - i0 : RB;
                const int64_t at = qo + (int64_t)i0 * ld;
                float qs[RB][ATT_SMALL_MAX_DH], g[RB][ATT_SMALL_MAX_DH], o[RB][ATT_SMALL_MAX_DH];
                float dqr[RB][ATT_SMALL_MAX_DH];
                load_rows(qs, q + at, ld, rr, Dh, (float)scale);
                load_rows(g, dout + at, ld, rr, Dh, 1.0f);
                load_rows(o, out + at, ld, rr, Dh, 1.0f);
                float l[RB], dr[RB];
                for (int r = 0; r < RB; r++) { /* a missing row's P is exp(0) = 1, times dout 0 */
                    l[r] = r < rr ? lse[(int64_t)bh * Nq + i0 + r] : 0.0f;
                    double di = 0;
                    for (int d = 0; d < Dh; d++) di += (double)o[r][d] * g[r][d];
                    dr[r] = (float)di;
                }
                rows_times_t(bf.s, nkp, qs, bf.kt, Dh, RT_EXP, l, NULL, Nk); /* P */
                if (dv) t_add_rows(bf.dvt, nkp, g, bf.s, Dh);
                if (!dq && !dk) continue;
                rows_times_t(bf.ds, nkp, g, bf.vt, Dh, RT_DS, dr, bf.s, Nk); /* dS */
                if (dk) t_add_rows(bf.dkt, nkp, qs, bf.ds, Dh);
                if (!dq) continue;
                rows_dot_t(dqr, bf.ds, nkp, bf.kt, Dh);
                for (int r = 0; r < rr; r++)
                    for (int d = 0; d < Dh; d++) {
                        float *x = dq + at + (int64_t)r * ld + d;
                        const float val = (float)scale * dqr[r][d];
                        *x = assign ? val : *x + val;
                    }
            }
            if (dk) scatter_t(dk + ko, ld, bf.dkt, Nk, nkp, Dh, assign);
            if (dv) scatter_t(dv + ko, ld, bf.dvt, Nk, nkp, Dh, assign);
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
