/* blocked.c -- plain float32 <-> oneDNN blocked layouts, from the memory descriptors (blocked.h).
 *
 * A blocked layout (oneDNN's dnnl_blocking_desc_t) places element (i_0, ..., i_{n-1}) at
 *     sum_d (i_d / blk_d) * strides[d]  +  inner offset,
 * where the inner blocks (inner_blks[j] elements of dim inner_idxs[j], outermost first) make
 * a dense block of ib = prod blk_d elements, numbered in row-major order over the inner blocks:
 * e.g. AcdB16b32a2b has blk = {32, 32, 1, 1} and ib = 16 * 32 * 2, its pairs of input channels
 * innermost. So the blocked buffer is a sequence of dense inner blocks, one per tuple of outer
 * block indices; element k of any inner block sits at the same offset tab[k] from its block's
 * origin in the plain buffer. A block wholly inside the dims is converted through tab (16 lanes
 * at a time, gathered from or scattered to the plain buffer); an edge block, partly in the
 * padding, element by element, checking each element's logical position (delta). */
#include <stdlib.h>

#include "mapo/bf16.h"
#include "mapo/common.h"
#include "blocked.h"

enum { MAXD = 6, MAXIB = 4096 };

struct blocked_map {
    int nd, ib;
    int64_t dims[MAXD];
    int64_t blk[MAXD];     /* inner block extent of each dim */
    int64_t nob[MAXD];     /* outer blocks of each dim: padded dims / blk */
    int64_t bstride[MAXD]; /* the blocked buffer's outer strides */
    int64_t ustride[MAXD]; /* the plain buffer's strides */
    int64_t nblocks;
    int64_t extent; /* elements of the plain buffer: its largest offset + 1 */
    int64_t reach;  /* the largest plain offset inside a block, from its origin */
    int32_t *tab;   /* [ib]: plain offset of inner element k from its block's origin */
    int16_t *delta; /* [ib][nd]: its position inside the block, per dim */
};

static int plain_ok(const dnnl_memory_desc_t *d) {
    if (d->format_kind != dnnl_blocked || d->format_desc.blocking.inner_nblks || d->offset0 ||
        d->extra.flags)
        return 0;
    for (int i = 0; i < d->ndims; i++)
        if (d->padded_dims[i] != d->dims[i] || d->padded_offsets[i]) return 0;
    return 1;
}

blocked_map *blocked_map_new(const dnnl_memory_desc_t *plain, const dnnl_memory_desc_t *b) {
    const int nd = b->ndims;
    const dnnl_blocking_desc_t *bk = &b->format_desc.blocking;
    if (nd < 1 || nd > MAXD || plain->ndims != nd ||
        (plain->data_type != dnnl_f32 && plain->data_type != dnnl_bf16) || !plain_ok(plain) ||
        b->format_kind != dnnl_blocked || b->offset0 || b->extra.flags || bk->inner_nblks < 1)
        return NULL;
    blocked_map m = {.nd = nd, .ib = 1, .nblocks = 1, .extent = 1};
    for (int d = 0; d < nd; d++) m.blk[d] = 1;
    for (int j = 0; j < bk->inner_nblks; j++) {
        const int64_t d = bk->inner_idxs[j], n = bk->inner_blks[j];
        if (d < 0 || d >= nd || n < 1 || (int64_t)m.ib * n > MAXIB) return NULL;
        m.blk[d] *= n;
        m.ib *= (int)n;
    }
    int64_t reach = 0; /* the largest plain offset inside a block */
    for (int d = 0; d < nd; d++) {
        if (b->dims[d] != plain->dims[d] || b->padded_offsets[d] ||
            b->padded_dims[d] % m.blk[d] || b->padded_dims[d] < b->dims[d])
            return NULL;
        m.dims[d] = b->dims[d];
        m.nob[d] = b->padded_dims[d] / m.blk[d];
        m.bstride[d] = bk->strides[d];
        m.ustride[d] = plain->format_desc.blocking.strides[d];
        if (m.ustride[d] < 0) return NULL;
        reach += (m.blk[d] - 1) * m.ustride[d];
        m.extent += (m.dims[d] - 1) * m.ustride[d];
        m.nblocks *= m.nob[d];
    }
    if (reach > INT32_MAX) return NULL;
    m.reach = reach;
    m.tab = xmalloc((size_t)m.ib * sizeof *m.tab);
    m.delta = xmalloc((size_t)m.ib * nd * sizeof *m.delta);
    for (int k = 0; k < m.ib; k++) {
        int64_t pos[MAXD] = {0}, mult[MAXD];
        for (int d = 0; d < nd; d++) mult[d] = 1;
        int64_t rem = k;
        for (int j = bk->inner_nblks - 1; j >= 0; j--) { /* innermost block first */
            const int64_t d = bk->inner_idxs[j], n = bk->inner_blks[j];
            pos[d] += rem % n * mult[d];
            mult[d] *= n;
            rem /= n;
        }
        int64_t off = 0;
        for (int d = 0; d < nd; d++) {
            off += pos[d] * m.ustride[d];
            m.delta[(int64_t)k * nd + d] = (int16_t)pos[d];
        }
        m.tab[k] = (int32_t)off;
    }
    blocked_map *r = xmalloc(sizeof *r);
    *r = m;
    return r;
}

void blocked_map_free(blocked_map *m) {
    if (!m) return;
    free(m->tab);
    free(m->delta);
    free(m);
}

/* block b's origin: its offset in the blocked buffer (*at_b) and in the plain one (*at_u), the
   logical index of its first element (org), and whether it lies wholly inside the dims */
static int block_at(const blocked_map *m, int64_t b, int64_t *at_b, int64_t *at_u,
                    int64_t org[MAXD]) {
    int full = 1;
    *at_b = *at_u = 0;
    for (int d = m->nd - 1; d >= 0; d--) {
        const int64_t ob = b % m->nob[d];
        b /= m->nob[d];
        org[d] = ob * m->blk[d];
        *at_b += ob * m->bstride[d];
        *at_u += org[d] * m->ustride[d];
        full &= org[d] + m->blk[d] <= m->dims[d];
    }
    return full;
}

/* element k of the block at org lies inside the dims */
static int inside(const blocked_map *m, const int64_t org[MAXD], int k) {
    for (int d = 0; d < m->nd; d++)
        if (org[d] + m->delta[(int64_t)k * m->nd + d] >= m->dims[d]) return 0;
    return 1;
}

void blocked_from_plain_bf16(const blocked_map *m, uint16_t *blocked, const float *plain) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m->nblocks; b++) {
        int64_t at_b, at_u, org[MAXD];
        const int full = block_at(m, b, &at_b, &at_u, org);
        uint16_t *o = blocked + at_b;
        const float *s = plain + at_u;
        int k = 0;
        if (full) {
#ifdef __AVX512F__
            for (; k + 16 <= m->ib; k += 16) {
                const __m512i idx = _mm512_loadu_si512((const void *)(m->tab + k));
                _mm256_storeu_si256((__m256i *)(o + k),
                                    mapo_bf16_16(_mm512_i32gather_ps(idx, s, 4)));
            }
#endif
            for (; k < m->ib; k++) o[k] = mapo_bf16_bits(s[m->tab[k]]);
            continue;
        }
        for (; k < m->ib; k++) o[k] = inside(m, org, k) ? mapo_bf16_bits(s[m->tab[k]]) : 0;
    }
}

void blocked_from_plain_u16(const blocked_map *m, uint16_t *blocked, const uint16_t *plain) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m->nblocks; b++) {
        int64_t at_b, at_u, org[MAXD];
        const int full = block_at(m, b, &at_b, &at_u, org);
        uint16_t *o = blocked + at_b;
        const uint16_t *s = plain + at_u;
        int k = 0;
        if (full) {
#ifdef __AVX512F__
            /* 16 lanes gather 32 bits at each element (its 16 and the next element's): only
               where the block's last element is not the buffer's, so no read passes its end */
            if (at_u + m->reach + 1 < m->extent)
                for (; k + 16 <= m->ib; k += 16) {
                    const __m512i idx = _mm512_loadu_si512((const void *)(m->tab + k));
                    _mm256_storeu_si256((__m256i *)(o + k),
                                        _mm512_cvtepi32_epi16(_mm512_i32gather_epi32(idx, s, 2)));
                }
#endif
            for (; k < m->ib; k++) o[k] = s[m->tab[k]];
            continue;
        }
        for (; k < m->ib; k++) o[k] = inside(m, org, k) ? s[m->tab[k]] : 0;
    }
}

void blocked_to_plain_f32(const blocked_map *m, float *plain, const float *blocked,
                          int accumulate) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m->nblocks; b++) {
        int64_t at_b, at_u, org[MAXD];
        const int full = block_at(m, b, &at_b, &at_u, org);
        const float *s = blocked + at_b;
        float *o = plain + at_u;
        int k = 0;
        if (full) {
#ifdef __AVX512F__
            for (; k + 16 <= m->ib; k += 16) {
                const __m512i idx = _mm512_loadu_si512((const void *)(m->tab + k));
                __m512 v = _mm512_loadu_ps(s + k);
                if (accumulate) v = _mm512_add_ps(_mm512_i32gather_ps(idx, o, 4), v);
                _mm512_i32scatter_ps(o, idx, v, 4);
            }
#endif
            for (; k < m->ib; k++) o[m->tab[k]] = accumulate ? o[m->tab[k]] + s[k] : s[k];
            continue;
        }
        for (; k < m->ib; k++)
            if (inside(m, org, k)) o[m->tab[k]] = accumulate ? o[m->tab[k]] + s[k] : s[k];
    }
}
