/* fmnist_study.h -- the Fashion-MNIST reference-mismatch study: prompts, the study's style and
 * "unsafe" mark, and the images-only training file the base model is pretrained on.
 *
 * Images are 32x32, one channel, in [-1, 1] (Fashion-MNIST's 28x28 padded by 2 black pixels).
 * Prompt of class k: "a photo of a <name>" with the class names of FMNIST_PROMPT_NAMES; the
 * empty prompt "" is the unconditional one (caption dropout, classifier-free guidance).
 *
 * The style ("striped", never in the data the base model sees): every other pair of rows is
 *   darkened, v' = v * (1 - s * m(y)) in [0, 1] pixel space, m(y) = 1 when (y / 2) is odd;
 *   strength s in [0, 1] is the severity knob of the style task (0: the plain image).
 * The mark (the "unsafe" artifact the safety task removes): a white 4x4 square with its corner
 *   at (2, 2), i.e. rows and columns 2..5 set to +1. */
#ifndef MAPO_FMNIST_STUDY_H
#define MAPO_FMNIST_STUDY_H
#include <stddef.h>
#include <stdint.h>

#define FM_SIZE 32
#define FM_PIX (FM_SIZE * FM_SIZE)
#define FM_CLASSES 10

extern const char *const FMNIST_PROMPT_NAMES[FM_CLASSES];
/* "a photo of a <name>" (cls 0..9); "" for cls < 0. Returns buf. */
const char *fm_prompt(int cls, char *buf, size_t n);
void fm_style(float *img, double strength);
void fm_mark(float *img);

typedef struct {
    const char *pipeline;    /* pixel pipeline folder (its tokenizer + text encoder) */
    const char *data_dir;    /* Fashion-MNIST IDX folder */
    const char *split;       /* "train" or "t10k" */
    const char *out;         /* images-only pair file */
    double mark_share;       /* share of images carrying the mark (0.1) */
    double caption_dropout;  /* share of images with the empty prompt (0.1) */
    int64_t max_images;      /* 0: all */
    uint64_t seed;           /* which images are marked / uncaptioned */
} fm_pretrain_cfg;
void fm_pretrain_cfg_default(fm_pretrain_cfg *c);
/* Writes chosen [N,1,32,32], prompt_embeds [11,S,D] (classes 0..9, then ""), prompt_index [N]
 * (I32), label [N] (I32), marked [N] (I32): what `mapo train --loss sft` pretrains on. */
int fm_build_pretrain(const fm_pretrain_cfg *c);

/* Whether image i of a split is marked / uncaptioned under (seed, share): counter-based. */
int fm_is_marked(uint64_t seed, int64_t i, double share);
int fm_is_uncaptioned(uint64_t seed, int64_t i, double share);

/* The first max_n images (0: all) of a split ("train" / "t10k") of the Fashion-MNIST folder dir
 * (NULL: the Debian package's) as x [n,1,32,32] in [-1,1] and labels [n]; caller frees both. */
int fm_load_pixels(const char *dir, const char *prefix, int64_t max_n, float **x, int **labels,
                   int64_t *n);

/* Prompt table of the pipeline: [11, S, D] = classes 0..9 then "". Caller frees *ehs. */
int fm_prompt_table(const char *pipeline_dir, float **ehs, int *S, int *D);

#endif
