/* norms_vred.c -- GroupNorm and LayerNorm backward for MAPO_BF16 (ops.h's *_backward_mp with
 * p != MAPO_F32). The formulas are norms.inc's, with its _vred kernels' double sums in vector
 * lanes; what changes is that gamma's and beta's gradients are summed in the passes that
 * compute dx, instead of a third pass over x and dy (which was ~2% of a bench_unet_dh64 bf16
 * step, docs/BENCHMARKS.md). The float32 path keeps norms.inc's kernels, bit for bit.
 *
 * GroupNorm: the first pass over a (sample, group) sums, per channel c, sg_c = sum dy xhat
 * and sb_c = sum dy; dx's two statistics follow as sum_c gamma_c sb_c and sum_c gamma_c sg_c
 * (norms.inc sums dy gamma_c element by element: the same numbers up to double rounding), and
 * dgamma_c / dbeta_c are sg_c / sb_c summed over the samples in order.
 * LayerNorm: rows are taken in fixed blocks of LN_ROWS; each block sums dy xhat and dy per
 * column over its rows in order, and the blocks' sums are added in block order. Both results
 * are therefore the same at any thread count. */
#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "norms_vred.h"

void group_norm_backward_fused(float *dx, float *dgamma, float *dbeta, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *gamma, int B, int C, int64_t HW, int G) {
    const int cg = C / G;
    const int64_t m = (int64_t)cg * HW;
    double *part = dgamma || dbeta ? xmalloc((size_t)B * C * 2 * sizeof(double)) : NULL;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < B * G; bg++) {
        const int g = bg % G, b = bg / G;
        const float *xs = x + (int64_t)bg * m, *dys = dy + (int64_t)bg * m;
        const double mu = mean[bg], rs = rstd[bg];
        double sd = 0, sdx = 0; /* sum dxhat, sum dxhat * xhat */
        for (int c = 0; c < cg; c++) {
            const float *xc = xs + c * HW, *dc = dys + c * HW;
            double sg = 0, sb = 0;
#pragma omp simd reduction(+ : sg, sb)
            for (int64_t i = 0; i < HW; i++) {
                sg += dc[i] * ((xc[i] - mu) * rs);
                sb += dc[i];
            }
            const double gm = gamma[g * cg + c];
            sd += gm * sb;
            sdx += gm * sg;
            if (part) {
                part[((int64_t)b * C + g * cg + c) * 2] = sg;
                part[((int64_t)b * C + g * cg + c) * 2 + 1] = sb;
            }
        }
        if (!dx) continue;
        sd /= m;
        sdx /= m;
        float *dxs = dx + (int64_t)bg * m;
        for (int c = 0; c < cg; c++) {
            const double gm = gamma[g * cg + c];
#pragma omp simd
            for (int64_t i = 0; i < HW; i++) {
                const double xh = (xs[c * HW + i] - mu) * rs;
                dxs[c * HW + i] += (float)(rs * (dys[c * HW + i] * gm - sd - xh * sdx));
            }
        }
    }
    if (!part) return;
    for (int c = 0; c < C; c++) {
        double sg = 0, sb = 0;
        for (int b = 0; b < B; b++) {
            sg += part[((int64_t)b * C + c) * 2];
            sb += part[((int64_t)b * C + c) * 2 + 1];
        }
        if (dgamma) dgamma[c] += (float)sg;
        if (dbeta) dbeta[c] += (float)sb;
    }
    free(part);
}

#define LN_ROWS 64

void layer_norm_backward_fused(float *dx, float *dgamma, float *dbeta, const float *dy,
                               const float *x, const float *mean, const float *rstd,
                               const float *gamma, int64_t N, int C) {
    if (!dx && !dgamma && !dbeta) return;
    const int64_t nb = (N + LN_ROWS - 1) / LN_ROWS;
    double *part = dgamma || dbeta ? xmalloc((size_t)nb * 2 * C * sizeof(double)) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < nb; blk++) {
        double *pg = part ? part + blk * 2 * C : NULL, *pb = pg ? pg + C : NULL;
        if (pg) memset(pg, 0, 2 * (size_t)C * sizeof(double));
        const int64_t r1 = (blk + 1) * LN_ROWS < N ? (blk + 1) * LN_ROWS : N;
        for (int64_t r = blk * LN_ROWS; r < r1; r++) {
            const float *xs = x + r * C, *dys = dy + r * C;
            const double mu = mean[r], rs = rstd[r];
            if (!dx) {
#pragma omp simd
                for (int c = 0; c < C; c++) {
                    pg[c] += dys[c] * ((xs[c] - mu) * rs);
                    pb[c] += dys[c];
                }
                continue;
            }
            double sd = 0, sdx = 0;
#pragma omp simd reduction(+ : sd, sdx)
            for (int c = 0; c < C; c++) {
                const double dh = dys[c] * gamma[c];
                sd += dh;
                sdx += dh * (xs[c] - mu) * rs;
            }
            sd /= C;
            sdx /= C;
            float *dxs = dx + r * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const double xh = (xs[c] - mu) * rs;
                dxs[c] += (float)(rs * (dys[c] * gamma[c] - sd - xh * sdx));
                if (pg) {
                    pg[c] += dys[c] * xh;
                    pb[c] += dys[c];
                }
            }
        }
    }
    if (!part) return;
    double *sg = xcalloc(2 * (size_t)C, sizeof(double)), *sb = sg + C;
    for (int64_t blk = 0; blk < nb; blk++)
        for (int c = 0; c < C; c++) {
            sg[c] += part[blk * 2 * C + c];
            sb[c] += part[blk * 2 * C + C + c];
        }
    for (int c = 0; c < C; c++) {
        if (dgamma) dgamma[c] += (float)sg[c];
        if (dbeta) dbeta[c] += (float)sb[c];
    }
    free(sg);
    free(part);
}
