/* adamw_update.h -- AdamW's per-element update (adamw_update.c), shared by optim.c's steps. */
#ifndef MAPO_ADAMW_UPDATE_H
#define MAPO_ADAMW_UPDATE_H
/* the float32 constants of one step (optim.c's adamw_core makes them, as torch rounds them) */
typedef struct {
    float decay, w1, w1m1, b2, w2, bc2s, epsf, neg_ss, gcoef;
    int w1_small;
} adamw_k;
/* the update of elements [a, b); gz (or NULL) zeroed after each gradient is read */
void adamw_update_range(const adamw_k *k, float *p, const float *g, float *m, float *v,
                        long long a, long long b, float *gz);
#endif
