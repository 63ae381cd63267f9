/* pairs.h -- tensor pair files (training data in model space) and debug-step batches.
 *
 * Pair file (safetensors): chosen [N,C,H,W], rejected [N,C,H,W] (latents already scaled),
 *   encoder_hidden_states [N,S,D] -- or, when many pairs share a few prompts, a prompt table
 *   prompt_embeds [Np,S,D] with prompt_index [N] (integer, 0 <= index < Np) -- and for SDXL-shaped models text_embeds [N,P] and
 *   time_ids [N,6]; optional chosen_hflip / rejected_hflip [N,C,H,W] (both together) and
 *   ref_errors [E,N,2] (cached Diffusion-DPO reference errors); single images may carry
 *   desirable [N] (1 / 0: Diffusion-KTO's unpaired data).
 *   Without 'rejected' the file holds single captioned images (chosen only): what plain
 *   denoising training (pretraining, SFT) reads; preference losses refuse it. Float dtypes F32/F16/BF16/F64; F32 is used in place (mmap).
 *   F16 / BF16 (mapo cache --cache_precision) are converted to float32 once, when the file is
 *   opened: half the disk, not half the memory (the consumers index float32 rows in place).
 * Debug batch (safetensors): sample [2B,C,H,W], timestep [2B] (int or float),
 *   encoder_hidden_states [2B,S,D], target [2B,C,H,W], optional text_embeds, time_ids. */
#ifndef MAPO_PAIRS_H
#define MAPO_PAIRS_H
#include <stdint.h>

#include "mapo/safetensors.h"
#include "mapo/unet.h"

typedef struct {
    st_file f;
    int64_t N;
    int C, H, W, S, D, P;
    const float *chosen, *rejected, *ehs, *text_embeds, *time_ids;
    int64_t n_prompts;        /* rows of ehs: N, or Np with a prompt table */
    int32_t *prompt_index;    /* [N] row of ehs for each pair, or NULL (row = pair) */
    /* optional: the same pairs horizontally flipped (mapo cache with flips on); training then
       flips each (epoch, pair) with p = 0.5 */
    const float *chosen_hflip, *rejected_hflip;
    float *owned[7]; /* converted copies for non-F32 inputs */
    /* F16 / BF16 tensors (a --cache_precision fp16 / bf16 cache), in the order of owned[]:
       chosen, rejected, ehs, text_embeds, time_ids, chosen_hflip, rejected_hflip. They stay in
       the mapping (their float pointer above is NULL) and pair_file_rows converts the rows a
       batch needs, so a half cache costs half the memory as well as half the disk. */
    const st_tensor *half[7];
    const double *ref_errors; /* [ref_epochs, N, 2] cached Diffusion-DPO reference errors, or NULL */
    int64_t ref_epochs;
    double *ref_owned;
    uint8_t *labels;          /* [N] single images only: 1 desirable, 0 undesirable (optional
                                 "desirable" tensor; Diffusion-KTO), or NULL */
} pair_file;

/* Open and validate against the model (channels, cross_attention_dim, text_time). */
int pair_file_open(pair_file *p, const char *path, const unet_config *c);
void pair_file_close(pair_file *p);
/* The tensors of a pair file, in the order of owned[] / half[] */
enum { PF_CHOSEN, PF_REJECTED, PF_EHS, PF_TEXT_EMBEDS, PF_TIME_IDS, PF_CHOSEN_HFLIP,
       PF_REJECTED_HFLIP };
/* 1 when the file holds tensor k (PF_*) */
int pair_file_has(const pair_file *p, int k);
/* Row `row` of tensor k (row = one pair's latent [C,H,W], one prompt's [S,D], one pair's
   text_embeds [P] or time_ids [6]) as float32 into dst. */
void pair_file_row(const pair_file *p, int k, int64_t row, float *dst);
/* encoder_hidden_states [S,D] of pair idx into dst */
void pair_file_ehs(const pair_file *p, int64_t idx, float *dst);

typedef struct {
    int n; /* 2B */
    int C, H, W, S, D, P;
    float *sample, *timestep, *ehs, *target, *text_embeds, *time_ids;
} debug_batch;

int debug_batch_load(debug_batch *b, const char *path, const unet_config *c);
void debug_batch_free(debug_batch *b);
void debug_batch_inputs(const debug_batch *b, unet_inputs *in);

#endif
