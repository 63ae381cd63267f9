/* engine_attention.c -- the memory-efficient attention of ops.h in bf16 (MAPO_BF16).
 *
 * The algorithm is kernels.inc's: one (batch, head) per OpenMP task, query rows in tiles (see
 * tile_rows), only the row log-sum-exp saved, probabilities recomputed in backward. What
 * changes is the products: q, k, v (and dout) are rounded to bf16 once per call, the score tile
 * S = scale Q K^T and the products P V, P^T dO, dO V^T, dS K, dS^T Q are oneDNN matmuls on bf16
 * operands with float32 accumulation (AMX / AVX512-BF16), P and dS rounded to bf16 before their
 * products. The softmax (max, exp, sum, lse), dS = P (dP - rowsum(dO o)) and every output and
 * gradient stay float32, as torch's scaled_dot_product_attention does under autocast.
 *
 * q, k, v and dout are packed per (batch, head) when rounded, so every operand is dense (K^T,
 * V^T, P^T and dS^T are read through transposed strides, which oneDNN's brgemm takes); the
 * matmuls run inside the parallel region, each thread executing the shared primitives with its
 * own memory objects, stream and scratchpad, into dense per-thread buffers that are then
 * copied or added into mapo's [B, N, H*Dh] tensors. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "attention_small.h"
#include "engine_internal.h"
#ifdef __AVX512F__
#include "exp16.h"
#endif
#include "mapo/bf16.h"
#include "mapo/common.h"
#include "mapo/ops.h"

#define MAXT ENGINE_MAXT

typedef uint16_t bf16;

/* Below this head dimension the products are too thin for the matrix engines (K = Dh in Q K^T):
   at head dim 8 the bf16 attention made a bench_unet.json step 23% slower than the float32
   kernel (0.62 s against 0.50 s), so narrower heads keep float32 products (attention_small.c
   up to head dim 16, the float32 kernel above). */
#define BF16_MIN_DH 32

/* The head dimension of the packed bf16 q, k, v, dout: rounded up to a multiple of 32 with zero
   columns, so that the products with the head dimension as their inner dimension (Q K^T,
   dO V^T) run oneDNN's AMX brgemm without a K tail, which is slow: in a SD 1.5 512 px LoRA
   bf16 step the 64 x 4,096 score tiles at head dim 40 (its first level) took 2,284 ms, padded
   to 64 1,534 ms, and the 128 x 1,024 tiles at head dim 80 157 ms, padded to 96 128 ms
   (ONEDNN_VERBOSE, docs/BENCHMARKS.md). The zeros add nothing to the sums. The products whose
   output columns are the head dimension (P V, P^T dO, dS K, dS^T Q) read their B (V, dO, K, Q)
   as a dense [rows, Dh] copy (`dense_rows`, per (batch, head) or per tile): with Dh columns in
   rows of Dp, oneDNN 2.6 leaves brgemm for gemm:jit, several times slower, and computing all
   Dp columns cost them 16% more time in that step. */
static int packed_dh(int Dh) { return (Dh + 31) / 32 * 32; }

static void round_tile(bf16 *dst, const float *src, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = mapo_bf16_bits(src[i]);
}

/* C[M,N] (+)= alpha A[M,K] B[K,N]; A, B bf16 and C float32, each a strided view. */
typedef struct {
    int64_t key[12];
    dnnl_primitive_t p;
    size_t scratch;
    int nt;
    dnnl_memory_t mem[MAXT][4]; /* per thread: A, B, C, scratchpad */
} amm;

static amm *g_amm;
static int g_namm, g_capamm;
static dnnl_stream_t g_streams[MAXT];
static int g_nstreams;

/* threads a product serves (its per-thread objects) */
static int pool_threads(void) {
    return omp_get_max_threads() < MAXT ? omp_get_max_threads() : MAXT;
}

/* key: {M, K, N, A's strides, B's strides, C's strides, accumulate, alpha * 1e6} */
typedef struct {
    const int64_t *key;
    float alpha;
    amm *res;
} amm_req;

static void *amm_build(void *arg) {
    amm_req *r = arg;
    const int64_t *k = r->key, M = k[0], K = k[1], N = k[2];
    engine_init();
    const int64_t ad[2] = {M, K}, bd[2] = {K, N}, cd[2] = {M, N};
    dnnl_memory_desc_t a = md_strides(2, ad, dnnl_bf16, k + 3);
    dnnl_memory_desc_t b = md_strides(2, bd, dnnl_bf16, k + 5);
    dnnl_memory_desc_t c = md_strides(2, cd, dnnl_f32, k + 7);
    dnnl_matmul_desc_t md;
    DN(dnnl_matmul_desc_init(&md, &a, &b, NULL, &c));
    dnnl_primitive_attr_t attr = attr_new((int)k[9]);
    if (r->alpha != 1.0f) DN(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &r->alpha));
    dnnl_primitive_desc_t pd;
    DN(dnnl_primitive_desc_create(&pd, &md, attr, g_eng, NULL));
    dnnl_primitive_attr_destroy(attr);
    if (g_namm == g_capamm) {
        g_capamm = g_capamm ? 2 * g_capamm : 32;
        g_amm = xrealloc(g_amm, g_capamm * sizeof *g_amm);
    }
    amm *o = &g_amm[g_namm++];
    memset(o, 0, sizeof *o);
    memcpy(o->key, k, sizeof o->key);
    const dnnl_memory_desc_t *sm = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    o->scratch = sm ? dnnl_memory_desc_get_size(sm) : 0;
    o->nt = pool_threads();
    for (int t = 0; t < o->nt; t++) {
        DN(dnnl_memory_create(&o->mem[t][0], &a, g_eng, DNNL_MEMORY_NONE));
        DN(dnnl_memory_create(&o->mem[t][1], &b, g_eng, DNNL_MEMORY_NONE));
        DN(dnnl_memory_create(&o->mem[t][2], &c, g_eng, DNNL_MEMORY_NONE));
        if (o->scratch) DN(dnnl_memory_create(&o->mem[t][3], sm, g_eng, DNNL_MEMORY_NONE));
    }
    DN(dnnl_primitive_create(&o->p, pd));
    dnnl_primitive_desc_destroy(pd);
    while (g_nstreams < o->nt) DN(dnnl_stream_create(&g_streams[g_nstreams++], g_eng,
                                                     dnnl_stream_default_flags));
    r->res = o;
    return NULL;
}

/* The cached product; built (apart, see engine.c) the first time. Call outside parallel
   regions: the cache may move. Returns its index. */
static int amm_get(int64_t M, int64_t K, int64_t N, int64_t as0, int64_t as1, int64_t bs0,
                   int64_t bs1, int64_t cs0, int64_t cs1, float alpha, int acc) {
    const int64_t key[12] = {M, K, N, as0, as1, bs0, bs1, cs0, cs1, acc,
                             (int64_t)(alpha * 1e6f)};
    for (int i = 0; i < g_namm; i++)
        if (!memcmp(g_amm[i].key, key, sizeof key) && g_amm[i].nt >= pool_threads()) return i;
    amm_req r = {key, alpha, NULL};
    engine_run_apart(amm_build, &r);
    return (int)(r.res - g_amm);
}

/* run product i on thread t's objects; scratch: that thread's buffer of >= its size */
static void amm_run(int i, int t, const void *a, const void *b, float *c, void *scratch) {
    amm *o = &g_amm[i];
    DN(dnnl_memory_set_data_handle(o->mem[t][0], (void *)a));
    DN(dnnl_memory_set_data_handle(o->mem[t][1], (void *)b));
    DN(dnnl_memory_set_data_handle(o->mem[t][2], c));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, o->mem[t][0]},
                               {DNNL_ARG_WEIGHTS, o->mem[t][1]},
                               {DNNL_ARG_DST, o->mem[t][2]}};
    int na = 3;
    if (o->scratch) {
        DN(dnnl_memory_set_data_handle(o->mem[t][3], scratch));
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, o->mem[t][3]};
    }
    DN(dnnl_primitive_execute(o->p, g_streams[t], na, args));
    DN(dnnl_stream_wait(g_streams[t]));
}

static size_t scratch_max(const int *ids, int n) {
    size_t m = 64;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && g_amm[ids[i]].scratch > m) m = g_amm[ids[i]].scratch;
    return m;
}

/* Per-thread tile buffers: grow-only, mapped apart from the heap (allocated per call on the
   training thread they scattered holes between the activations), one per thread index; shared
   with attention_small.c, which runs instead of this file's kernels, never inside them. */
static void *g_tbuf[MAXT];
static size_t g_tbytes[MAXT];
char *engine_thread_buffer(int t, size_t bytes) {
    return engine_grow(&g_tbuf[t], &g_tbytes[t], bytes);
}
size_t engine_attention_buffer_bytes(void) {
    size_t s = 0;
    for (int t = 0; t < MAXT; t++) s += g_tbytes[t];
    return s;
}

/* bytes of a dense float32 [rows, cols] buffer (a score tile, an output block), rounded to a
   cache line */
static size_t f32_bytes(int rows, int cols) {
    return ((size_t)rows * cols * sizeof(float) + 63) & ~(size_t)63;
}

/* Floats of a score tile: a sixteenth of the per-core L2 (the backward holds three tiles, S,
   dP and the bf16 P / dS, plus its dQ, dK, dV blocks: about three quarters of L2), between
   2^14 and 2^18; 2^16 (256 KiB) when the C library does not report the L2. On this Xeon's
   2 MiB L2, 2^17 made a bench_unet_dh64.json bf16 step 1.5-3% faster than 2^16 (fewer, larger
   products; docs/BENCHMARKS.md); on a 1 MiB L2 (Zen 4) it stays 2^16. */
static int64_t tile_floats(void) {
    static int64_t f;
    if (!f) {
        const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
        int64_t v = l2 > 0 ? (int64_t)l2 / 16 : (int64_t)1 << 16;
        v = v < (1 << 14) ? 1 << 14 : v > (1 << 18) ? 1 << 18 : v;
        f = v;
    }
    return f;
}

/* Rows of a query tile: the whole query side when the score tile stays within tile_floats(),
   else a multiple of 16 rows (at least 64) that does. Larger tiles spill L2; smaller ones pay
   oneDNN's per-call cost more often. */
static int tile_rows(int Nq, int Nk) {
    int64_t t = tile_floats() / Nk;
    if (t >= Nq) return Nq;
    t = t < 64 ? 64 : t & ~(int64_t)15;
    return (int)(t < Nq ? t : Nq);
}

/* the products of one tile height tq, every operand dense or the transposed view of a dense
   one (packed per (batch, head) below; brgemm takes transposed A and B), the outputs into
   per-thread dense buffers, so oneDNN picks its AMX / AVX512-BF16 brgemm kernels:
   with a strided output (mapo's [B, N, H*Dh] rows, H > 1) oneDNN 2.6 falls back to its slower
   gemm:jit (a 256x256x64 product: 98 us against ~20 us). The buffers are then copied or added
   into mapo's tensors (add_rows). */
typedef struct { int qk, pv, ptdo, dovt, dsk, dstq; } tile_ops;

static tile_ops tile_ops_get(int tq, int Nk, int Dh, float scale, int backward) {
    tile_ops o = {-1, -1, -1, -1, -1, -1};
    const float s2 = (float)(scale * M_LOG2E); /* scores in base 2, for exp2 */
    const int Dp = packed_dh(Dh);                /* the packed operands' row length */
    o.qk = amm_get(tq, Dp, Nk, Dp, 1, 1, Dp, Nk, 1, s2, 0);        /* S = s log2(e) Q Kt */
    if (!backward) {
        o.pv = amm_get(tq, Nk, Dh, Nk, 1, Dh, 1, Dh, 1, 1.0f, 0);  /* O = P V */
        return o;
    }
    o.ptdo = amm_get(Nk, tq, Dh, 1, Nk, Dh, 1, Dh, 1, 1.0f, 1);    /* dV_bh += Pt dO */
    o.dovt = amm_get(tq, Dp, Nk, Dp, 1, 1, Dp, Nk, 1, 1.0f, 0);    /* dP = dO Vt */
    o.dsk = amm_get(tq, Nk, Dh, Nk, 1, Dh, 1, Dh, 1, scale, 0);    /* dQ_tile = s dS K */
    o.dstq = amm_get(Nk, tq, Dh, 1, Nk, Dh, 1, Dh, 1, scale, 1);   /* dK_bh += s dSt Q */
    return o;
}

/* dst rows (leading dimension ld) = src [rows, Dh] dense, or += when add */
static void add_rows(float *dst, int64_t ld, const float *src, int rows, int Dh, int add) {
    for (int i = 0; i < rows; i++) {
        float *d = dst + (int64_t)i * ld;
        const float *s = src + (int64_t)i * Dh;
        if (!add) {
            memcpy(d, s, (size_t)Dh * sizeof(float));
            continue;
        }
#pragma omp simd
        for (int j = 0; j < Dh; j++) d[j] += s[j];
    }
}

/* x [B, N, H*Dh] float32 -> bf16 packed per (b, h): [B*H, N, Dp], Dp = packed_dh(Dh), zeros
   past Dh (the products read K and V transposed through their strides) */
static bf16 *pack_into(bf16 *p, const float *x, int B, int H, int N, int Dh) {
    const int ld = H * Dh, Dp = packed_dh(Dh);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        const float *src = x + (int64_t)(bh / H) * N * ld + (bh % H) * Dh;
        bf16 *dst = p + (int64_t)bh * N * Dp;
        for (int n = 0; n < N; n++) {
            bf16 *row = dst + (int64_t)n * Dp;
            round_tile(row, src + (int64_t)n * ld, Dh);
            if (Dp > Dh) memset(row + Dh, 0, (size_t)(Dp - Dh) * sizeof *row);
        }
    }
    return p;
}
/* rows of packed operand src [rows, Dp] as a dense [rows, Dh] copy in buf, or src itself when
   there is no padding */
static const bf16 *dense_rows(bf16 *buf, const bf16 *src, int rows, int Dh, int Dp) {
    if (Dp == Dh) return src;
    for (int i = 0; i < rows; i++)
        memcpy(buf + (int64_t)i * Dh, src + (int64_t)i * Dp, (size_t)Dh * sizeof *buf);
    return buf;
}

static bf16 *pack(int slot, const float *x, int B, int H, int N, int Dh) {
    return pack_into(engine_workspace(slot, (size_t)B * H * N * packed_dh(Dh) * sizeof(bf16)),
                     x, B, H, N, Dh);
}

int64_t attention_kept_bf16(mapo_precision p, int B, int H, int Nq, int Nk, int Dh) {
    if (p == MAPO_F32 || Dh < BF16_MIN_DH) return 0;
    return (int64_t)B * H * (Nq + 2 * (int64_t)Nk) * packed_dh(Dh);
}

/* s[j] = 2^(s[j] - shift) over a row of n base-2 scores (exp16.h's exp2_16_masked), its bf16
   copy into p when p is not NULL; returns the row's sum */
static float exp2_row(float *s, int64_t n, float shift, bf16 *p) {
#ifdef __AVX512F__
    return exp2_shift_row(s, n, n, shift, p);
#else
    float sum = 0;
    for (int64_t j = 0; j < n; j++) {
        s[j] = exp2f(s[j] - shift);
        if (p) p[j] = mapo_bf16_bits(s[j]);
        sum += s[j];
    }
    return sum;
#endif
}

/* dst[j] = bf16 of a[j] (b[j] - c) over a row of n (c = 0, b = NULL: of a[j] m), on 16 lanes
   where the build has AVX-512 (the compiler's own vectorisation of the scalar loop used
   256-bit lanes and word permutes) */
static void round_row(bf16 *dst, const float *a, const float *b, float c, float m, int64_t n) {
    int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    const __m512 vc = _mm512_set1_ps(c), vm = _mm512_set1_ps(m);
    for (; j < n; j += 16) {
        const __mmask16 k = tail_mask16(j, n);
        const __m512 x = _mm512_maskz_loadu_ps(k, a + j);
        const __m512 y = b ? _mm512_mul_ps(x, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, b + j), vc))
                           : _mm512_mul_ps(x, vm);
        _mm256_mask_storeu_epi16(dst + j, k, mapo_bf16_16(y));
    }
#endif
    for (; j < n; j++) dst[j] = mapo_bf16_bits(b ? a[j] * (b[j] - c) : a[j] * m);
}

/* softmax rows of the base-2 scores S [tq, Nk] (S = scale log2(e) Q K^T), written to P as
   bf16 (each row rounded while it is in L1); their log-sum-exp (natural, as the float32
   kernel's) into lse */
static void softmax_rows(bf16 *P, float *S, float *lse, int tq, int Nk) {
    for (int i = 0; i < tq; i++) {
        float *s = S + (int64_t)i * Nk, mx = s[0];
        bf16 *p = P + (int64_t)i * Nk;
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < Nk; j++) mx = s[j] > mx ? s[j] : mx;
        const float sum = exp2_row(s, Nk, mx, NULL);
        round_row(p, s, NULL, 0, 1 / sum, Nk);
        lse[i] = (float)(((double)mx + log2((double)sum)) * M_LN2);
    }
}

static int min_threads(const int *ids, int n) {
    int nt = MAXT;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && g_amm[ids[i]].nt < nt) nt = g_amm[ids[i]].nt;
    return nt;
}

void attention_forward_mp(mapo_precision p, float *out, float *lse, const float *q,
                          const float *k, const float *v, int B, int H, int Nq, int Nk, int Dh,
                          double scale, uint16_t *keep) {
    if (p != MAPO_F32 && Dh < BF16_MIN_DH && attention_small_applies(Dh)) {
        attention_small_forward(out, lse, q, k, v, B, H, Nq, Nk, Dh, scale);
        return;
    }
    if (p == MAPO_F32 || Dh < BF16_MIN_DH) {
        attention_forward(out, lse, q, k, v, B, H, Nq, Nk, Dh, scale);
        return;
    }
    const int ld = H * Dh, T = tile_rows(Nq, Nk);
    tile_ops full = tile_ops_get(T, Nk, Dh, (float)scale, 0);
    tile_ops last = Nq % T ? tile_ops_get(Nq % T, Nk, Dh, (float)scale, 0) : full;
    const int ids[4] = {full.qk, full.pv, last.qk, last.pv};
    const size_t scr = scratch_max(ids, 4);
    const int nt = min_threads(ids, 4);
    const int Dp = packed_dh(Dh);
    const int64_t nq = (int64_t)B * H * Nq * Dp, nk = (int64_t)B * H * Nk * Dp;
    const bf16 *Qp = keep ? pack_into(keep, q, B, H, Nq, Dh) : pack(WS_ATT_Q, q, B, H, Nq, Dh);
    const bf16 *Kp = keep ? pack_into(keep + nq, k, B, H, Nk, Dh) : pack(WS_ATT_K, k, B, H, Nk, Dh);
    const bf16 *Vp =
        keep ? pack_into(keep + nq + nk, v, B, H, Nk, Dh) : pack(WS_ATT_V, v, B, H, Nk, Dh);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        const size_t tile = f32_bytes(T, Nk);
        const size_t ob = f32_bytes(T, Dh), vb = Dp > Dh ? f32_bytes(Nk, Dh) / 2 : 0;
        char *buf = engine_thread_buffer(t, 2 * tile + ob + vb + scr);
        float *S = (float *)buf, *O = (float *)(buf + 2 * tile);
        bf16 *P = (bf16 *)(buf + tile), *Vd = (bf16 *)(buf + 2 * tile + ob); /* V dense */
        void *scratch = buf + 2 * tile + ob + vb;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int64_t qo = (int64_t)(bh / H) * Nq * ld + (bh % H) * Dh;
            const int64_t pq = (int64_t)bh * Nq * Dp, pk = (int64_t)bh * Nk * Dp;
            const bf16 *V = dense_rows(Vd, Vp + pk, Nk, Dh, Dp);
            for (int r0 = 0; r0 < Nq; r0 += T) {
                const int tq = Nq - r0 < T ? Nq - r0 : T;
                const tile_ops *op = tq == T ? &full : &last;
                amm_run(op->qk, t, Qp + pq + (int64_t)r0 * Dp, Kp + pk, S, scratch);
                softmax_rows(P, S, lse + (int64_t)bh * Nq + r0, tq, Nk);
                amm_run(op->pv, t, P, V, O, scratch);
                add_rows(out + qo + (int64_t)r0 * ld, ld, O, tq, Dh, 0);
            }
        }
    }
}

void attention_backward_mp(mapo_precision p, float *dq, float *dk, float *dv, const float *dout,
                           const float *out, const float *lse, const float *q, const float *k,
                           const float *v, int B, int H, int Nq, int Nk, int Dh, double scale,
                           const uint16_t *kept, int assign) {
    if (p != MAPO_F32 && Dh < BF16_MIN_DH && attention_small_applies(Dh)) {
        attention_small_backward(dq, dk, dv, dout, out, lse, q, k, v, B, H, Nq, Nk, Dh, scale,
                                 assign);
        return;
    }
    if (p == MAPO_F32 || Dh < BF16_MIN_DH) {
        if (assign) { /* the float32 kernel adds */
            if (dq) mapo_zero(dq, (size_t)B * Nq * H * Dh * sizeof(float));
            if (dk) mapo_zero(dk, (size_t)B * Nk * H * Dh * sizeof(float));
            if (dv) mapo_zero(dv, (size_t)B * Nk * H * Dh * sizeof(float));
        }
        attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, H, Nq, Nk, Dh, scale);
        return;
    }
    const int ld = H * Dh, T = tile_rows(Nq, Nk);
    tile_ops full = tile_ops_get(T, Nk, Dh, (float)scale, 1);
    tile_ops last = Nq % T ? tile_ops_get(Nq % T, Nk, Dh, (float)scale, 1) : full;
    const int ids[10] = {full.qk, full.ptdo, full.dovt, full.dsk, full.dstq,
                         last.qk, last.ptdo, last.dovt, last.dsk, last.dstq};
    const size_t scr = scratch_max(ids, 10);
    const int nt = min_threads(ids, 10);
    const int Dp = packed_dh(Dh);
    const int64_t nq = (int64_t)B * H * Nq * Dp, nk = (int64_t)B * H * Nk * Dp;
    const bf16 *Qp = kept ? kept : pack(WS_ATT_Q, q, B, H, Nq, Dh);
    const bf16 *Kp = kept ? kept + nq : pack(WS_ATT_K, k, B, H, Nk, Dh);
    const bf16 *Vp = kept ? kept + nq + nk : pack(WS_ATT_V, v, B, H, Nk, Dh);
    const bf16 *Gp = pack(WS_ATT_DO, dout, B, H, Nq, Dh);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        const size_t tile = f32_bytes(T, Nk);
        const size_t qb = f32_bytes(T, Dh), kb = f32_bytes(Nk, Dh);
        const size_t db = Dp > Dh ? qb + kb : 0; /* room for the dense copies below */
        char *buf = engine_thread_buffer(t, 3 * tile + qb + 2 * kb + db + scr);
        float *S = (float *)buf, *dP = (float *)(buf + tile);
        bf16 *Pb = (bf16 *)(buf + 2 * tile); /* P, then dS; read transposed by dV, dK */
        char *at = buf + 3 * tile;
        float *dQt = (float *)at, *dKb = (float *)(at + qb), *dVb = (float *)(at + qb + kb);
        /* dense [rows, Dh] copies of the products' B: K per (batch, head), dO and Q per tile */
        bf16 *Kd = (bf16 *)(at + qb + 2 * kb), *Gd = (bf16 *)(at + qb + 3 * kb);
        bf16 *Qd = (bf16 *)(at + qb + 3 * kb + qb / 2);
        void *scratch = at + qb + 2 * kb + db;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int64_t qo = (int64_t)(bh / H) * Nq * ld + (bh % H) * Dh;
            const int64_t ko = (int64_t)(bh / H) * Nk * ld + (bh % H) * Dh;
            const int64_t pq = (int64_t)bh * Nq * Dp, pk = (int64_t)bh * Nk * Dp;
            if (dk) memset(dKb, 0, (size_t)Nk * Dh * sizeof(float));
            if (dv) memset(dVb, 0, (size_t)Nk * Dh * sizeof(float));
            const bf16 *Kn = dq ? dense_rows(Kd, Kp + pk, Nk, Dh, Dp) : NULL;
            for (int r0 = 0; r0 < Nq; r0 += T) {
                const int tq = Nq - r0 < T ? Nq - r0 : T;
                const tile_ops *op = tq == T ? &full : &last;
                const int64_t qt = qo + (int64_t)r0 * ld, pt = pq + (int64_t)r0 * Dp;
                amm_run(op->qk, t, Qp + pt, Kp + pk, S, scratch);
                for (int i = 0; i < tq; i++) { /* P = 2^(S - lse log2(e)), its bf16 copy */
                    const float l2 = (float)(lse[(int64_t)bh * Nq + r0 + i] * M_LOG2E);
                    exp2_row(S + (int64_t)i * Nk, Nk, l2, dv ? Pb + (int64_t)i * Nk : NULL);
                }
                if (dv) amm_run(op->ptdo, t, Pb, dense_rows(Gd, Gp + pt, tq, Dh, Dp), dVb, scratch);
                if (!dq && !dk) continue;
                amm_run(op->dovt, t, Gp + pt, Vp + pk, dP, scratch);
                for (int i = 0; i < tq; i++) {
                    const float *o = out + qt + (int64_t)i * ld, *g = dout + qt + (int64_t)i * ld;
                    double di = 0;
#pragma omp simd reduction(+ : di)
                    for (int d = 0; d < Dh; d++) di += (double)o[d] * g[d];
                    const float *pr = S + (int64_t)i * Nk, *dp = dP + (int64_t)i * Nk;
                    bf16 *ds = Pb + (int64_t)i * Nk; /* Pb now holds dS */
                    const float dr = (float)di;
                    round_row(ds, pr, dp, dr, 1, Nk);
                }
                if (dq) {
                    amm_run(op->dsk, t, Pb, Kn, dQt, scratch);
                    add_rows(dq + qt, ld, dQt, tq, Dh, !assign);
                }
                if (dk) amm_run(op->dstq, t, Pb, dense_rows(Qd, Qp + pt, tq, Dh, Dp), dKb, scratch);
            }
            if (dk) add_rows(dk + ko, ld, dKb, Nk, Dh, !assign);
            if (dv) add_rows(dv + ko, ld, dVb, Nk, Dh, !assign);
        }
    }
}
