/* pair_draw.c -- see pair_draw.h. */
#include "mapo/pair_draw.h"

#include <stdlib.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/rng.h"

void epoch_order_init(epoch_order *o, int64_t N) {
    o->epoch = -1;
    o->N = N;
    o->perm = xmalloc((size_t)(N > 0 ? N : 1) * sizeof(int64_t));
}

void epoch_order_free(epoch_order *o) {
    free(o->perm);
    o->perm = NULL;
}

int64_t pair_index(epoch_order *o, uint64_t seed, int64_t c, int64_t *epoch) {
    int64_t e = c / o->N;
    if (e != o->epoch) {
        philox r;
        philox_init(&r, seed, PAIR_STREAM_PERM, (uint64_t)e);
        philox_permutation(&r, o->perm, o->N);
        o->epoch = e;
    }
    *epoch = e;
    return o->perm[c % o->N];
}

static int pair_noise(uint64_t seed, int64_t epoch, int64_t idx, int T, float *eps,
                      int64_t chw) {
    philox r;
    philox_init(&r, seed, ((uint64_t)PAIR_STREAM_NOISE << 40) | (uint64_t)epoch, (uint64_t)idx);
    int t = (int)philox_below(&r, (uint32_t)T);
    philox_fill_normal(&r, eps, chw);
    return t;
}

static int pair_flip(uint64_t seed, int64_t epoch, int64_t idx) {
    philox r;
    philox_init(&r, seed, ((uint64_t)PAIR_STREAM_FLIP << 40) | (uint64_t)epoch, (uint64_t)idx);
    return philox_uniform(&r) < 0.5;
}

int pair_label_flip(uint64_t seed, int64_t epoch, int64_t idx, double p) {
    if (!(p > 0)) return 0;
    philox r;
    philox_init(&r, seed, ((uint64_t)PAIR_STREAM_LABEL << 40) | (uint64_t)epoch, (uint64_t)idx);
    return philox_uniform(&r) < p;
}

void pair_fill(pair_slots *b, const pair_file *pf, const ddpm_schedule *sch, uint64_t seed,
               int64_t epoch, int64_t idx, int j) {
    const int Bp = b->Bp;
    const int64_t chw = b->chw, sd = (int64_t)pf->S * pf->D;
    int t = pair_noise(seed, epoch, idx, sch->num_train_timesteps, b->eps, chw);
    const int fl = pair_file_has(pf, PF_CHOSEN_HFLIP) && pair_flip(seed, epoch, idx);
    float *x0 = b->x0;
    for (int half = 0; half < (pair_file_has(pf, PF_REJECTED) ? 2 : 1); half++) {
        pair_file_row(pf, half ? (fl ? PF_REJECTED_HFLIP : PF_REJECTED)
                               : (fl ? PF_CHOSEN_HFLIP : PF_CHOSEN), idx, x0);
        int s = j + half * Bp;
        ddpm_add_noise(sch, b->sample + s * chw, x0, b->eps, chw, t);
        ddpm_target(sch, b->target + s * chw, x0, b->eps, chw, t);
        b->timestep[s] = (float)t;
        pair_file_ehs(pf, idx, b->ehs + s * sd);
        if (pair_file_has(pf, PF_TEXT_EMBEDS)) {
            pair_file_row(pf, PF_TEXT_EMBEDS, idx, b->text_embeds + (int64_t)s * pf->P);
            pair_file_row(pf, PF_TIME_IDS, idx, b->time_ids + s * 6);
        }
    }
}
