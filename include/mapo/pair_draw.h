/* pair_draw.h -- what a run draws for each pair, from counters alone.
 * Pair number c of a run (c = step*GA*B + micro*B + j) lies in epoch e = c / N at position
 * c % N of that epoch's permutation (Philox keyed by seed and e); its noise, timestep and
 * horizontal flip come from streams keyed by (seed, e, dataset index). So the same pair gets
 * the same draws whatever the batch size or thread count, a resumed run needs only the step
 * number to continue exactly, and `mapo cache` can compute Diffusion-DPO's reference errors for
 * exactly the draws a run will make. The trainer and the cache both use this file; neither
 * depends on the other. */
#ifndef MAPO_PAIR_DRAW_H
#define MAPO_PAIR_DRAW_H
#include <stdint.h>

#include "mapo/ddpm.h"
#include "mapo/pairs.h"

/* Philox stream ids (3 is dataset.h's augmentation stream) */
enum { PAIR_STREAM_PERM = 1, PAIR_STREAM_NOISE = 2, PAIR_STREAM_FLIP = 4, PAIR_STREAM_LABEL = 5 };

/* The data order: the permutation of the current epoch, recomputed when the epoch changes. */
typedef struct {
    int64_t epoch;
    int64_t *perm;
    int64_t N;
} epoch_order;

void epoch_order_init(epoch_order *o, int64_t N);
void epoch_order_free(epoch_order *o);
/* Dataset index of pair number c of the run; *epoch its epoch. */
int64_t pair_index(epoch_order *o, uint64_t seed, int64_t c, int64_t *epoch);

/* The 2B inputs of a micro-batch: pair j in slots j (chosen) and j + Bp (rejected). */
typedef struct {
    int Bp;        /* pairs */
    int64_t chw;
    float *sample, *target, *timestep, *ehs, *text_embeds, *time_ids;
    float *eps;    /* scratch [chw]: the pair's noise */
    float *x0;     /* scratch [chw]: the clean latent, converted from a half-precision cache */
} pair_slots;

/* Pair idx of epoch `epoch` as a run with this seed sees it: noise, timestep and horizontal flip
   (p = 0.5, when the pair file holds both orientations: the scripts' per-epoch
   RandomHorizontalFlip); noisy inputs, targets and conditioning into slot j. */
void pair_fill(pair_slots *b, const pair_file *pf, const ddpm_schedule *sch, uint64_t seed,
               int64_t epoch, int64_t idx, int j);

/* --label_noise_prob: 1 when visit (epoch, idx) of a run with this seed trains the pair's
   preference the other way round (probability p; p = 0: never, without a draw). */
int pair_label_flip(uint64_t seed, int64_t epoch, int64_t idx, double p);

#endif
