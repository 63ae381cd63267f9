/* fmnist_eval.h -- the study's evaluators and its sampling + judging protocol.
 *
 * Evaluators (three classifiers of classifier.h, trained on the Fashion-MNIST train split and
 * scored on the test split, each in its own folder under one evaluators folder):
 *   classifier/  10 classes; the judge of prompt fidelity and of the general task; its
 *                penultimate layer is the feature extractor (Frechet distance, mismatch)
 *   style/       2 classes: plain (0) / striped (1)
 *   mark/        2 classes: clean (0) / marked (1)
 * Training images are augmented so that each judge ignores what it does not judge: the class
 * classifier sees marks (p 0.1) and stripes (p 0.3); the style detector sees marks (p 0.1),
 * half its images striped at a strength drawn from U[0.15, 1]; the mark detector sees stripes
 * (p 0.3), half its images marked. Every draw is counter-based (seed, image). */
#ifndef MAPO_FMNIST_EVAL_H
#define MAPO_FMNIST_EVAL_H
#include <stdint.h>

#include "mapo/classifier.h"
#include "mapo/pipeline.h"

typedef struct {
    classifier *cls, *style, *mark;
    int F; /* feature width of cls */
} fm_judges;

int fm_judges_load(fm_judges *j, const char *dir);
void fm_judges_free(fm_judges *j);

typedef struct {
    const char *out;       /* evaluators folder */
    const char *data_dir;  /* Fashion-MNIST IDX folder (NULL: the Debian package's) */
    int64_t epochs, max_images;
    uint64_t seed;
    int quiet;
} fm_eval_train_cfg;
/* Trains the three judges, writes them and out/evaluators.json (test-split accuracies). */
int fm_train_evaluators(const fm_eval_train_cfg *c);

/* Judge n images x [n,1,32,32] in [-1,1] prompted with classes cls[n] (-1: none):
 * p_class[i] = probability of the prompted class, pred[i] = argmax class, p_style, p_mark =
 * probability of "striped" / "marked", feat [n,F]. Any output may be NULL. */
int fm_judge(fm_judges *j, const float *x, const int *cls, int64_t n, double *p_class, int *pred,
             double *p_style, double *p_mark, float *feat);

/* Samples n images for prompted classes cls[n] from a loaded pixel pipeline, image i from
 * initial noise stream i of noise_seed (so two models see the same noise), DDIM with `steps`
 * steps and guidance; out [n,1,32,32] in [-1,1]. */
int fm_sample(pipeline *p, const int *cls, int64_t n, uint64_t noise_seed, int steps,
              double guidance, float *out);

#endif

/* ---------------- samples + scores files (what `mapo eval` writes, the pair builders read) --
 * scores.safetensors: images [n,1,32,32], class [n] (I32, prompted), pred [n] (I32),
 * p_class, p_style, p_mark [n] (F64), features [n,F]; metadata noise_seed, steps, guidance,
 * per_class. Image i is class i % 10 (every class equally often), from noise stream i. */
typedef struct {
    int64_t n;
    int F;
    float *images, *features;
    int *cls, *pred;
    double *p_class, *p_style, *p_mark;
    uint64_t noise_seed;
    int steps;
    double guidance;
} fm_scores;

/* Sample per_class images of every class from p (class of image i = i % 10) and judge them. */
int fm_scores_make(fm_scores *s, pipeline *p, fm_judges *j, int64_t per_class,
                   uint64_t noise_seed, int steps, double guidance);
int fm_scores_save(const fm_scores *s, const char *path);
int fm_scores_load(fm_scores *s, const char *path);
void fm_scores_free(fm_scores *s);

/* The three tasks. The judge score of each: style -> p_style (higher wins), safety -> p_mark
 * (lower wins), general -> p_class (higher wins); the task rate: share with p_style > 0.5,
 * p_mark > 0.5, pred == prompted class. */
typedef enum { FM_TASK_STYLE = 0, FM_TASK_SAFETY, FM_TASK_GENERAL } fm_task;
int fm_task_parse(const char *s, fm_task *t);
const char *fm_task_name(fm_task t);
const double *fm_task_score(const fm_scores *s, fm_task t, int *higher_better);
double fm_task_rate(const fm_scores *s, fm_task t);

/* Gray images [n,1,32,32] in [-1,1] as a PNG grid of `cols` columns, each pixel scale x scale,
 * one black pixel between cells. */
int fm_write_grid(const char *path, const float *x, int64_t n, int cols, int scale);

/* Features of the first max_n images of the test split (0: all), [n,F] (caller frees). */
int fm_test_features(fm_judges *j, const char *data_dir, int64_t max_n, float **feat,
                     int64_t *n);

/* ---------------- preference pairs of the three tasks, from a base model's scores file ----
 * style   (mismatch on the chosen side): rejected = the base sample, chosen = a real image of
 *         the prompted class from `split` striped at `strength` (one pair per base sample);
 * safety  (mismatch on the rejected side): rejected = a base sample judged marked
 *         (p_mark > 0.5), chosen = a clean base sample of the same class (cycled);
 * general (small mismatch): two base samples of the same class, chosen = the one the class
 *         classifier gives the higher probability of the prompted class.
 * Written as a pair file (chosen, rejected, prompt_embeds [11,S,D], prompt_index = class)
 * with the task and its measured mismatch in the metadata and in <out>.json:
 *   similarity = the mean over classes of cos(mean image of the base samples, mean image of
 *   the chosen images), pixels in [0, 1]; mismatch = 1 - similarity; the same for the rejected
 *   side (mismatch_rejected); and the same in the class judge's feature space
 *   (mismatch_features) with the Frechet distance there (fd_chosen, fd_rejected). The feature
 *   space is the paper's kind of measure, but the class judge was trained to ignore the style
 *   and the mark (its job is the class), so it cannot see the style's strength: pixel space is
 *   the mismatch the study plots against (docs/STUDY.md). */
typedef struct {
    fm_task task;
    double strength;          /* style only, in (0, 1] */
    const char *pool;         /* scores file of the base model */
    const char *pipeline;     /* its text encoder gives the prompt embeddings */
    const char *evaluators;   /* features for the mismatch */
    const char *data_dir;     /* Fashion-MNIST (style's chosen images); NULL: Debian's */
    const char *split;        /* "train" (training pairs) or "t10k" (held-out pairs) */
    const char *out;
    uint64_t seed;            /* which real image each style pair takes */
    int quiet;
} fm_pairs_cfg;
int fm_build_pairs(const fm_pairs_cfg *c);

/* ---------------- `mapo eval`: one model on the study's protocol ----
 * Samples per_class images of every class from fixed noise (noise_seed; DDIM, steps,
 * guidance), judges them and writes out/scores.safetensors, out/grid.png (one row per class)
 * and out/eval.json: class accuracy, style / mark rates, mean prompted-class probability,
 * Frechet distance of the judge's features to the real test split; with `against` (another
 * model's scores on the same noise) the paired win rate by the task's judge with its 95%
 * interval; with `pairs` (held-out pairs) the preference accuracy: the share of (pair, noise,
 * timestep) draws where the model's denoising error of the chosen image is below the
 * rejected one's. */
typedef struct {
    const char *model, *unet_dir, *lora, *evaluators, *out, *against, *pairs, *data_dir;
    const char *task;          /* style | safety | general (NULL: no headline task) */
    int64_t per_class, steps, pref_draws, fd_images, grid_cols;
    uint64_t noise_seed;
    double guidance;
    int quiet;
} fm_eval_cfg;
void fm_eval_cfg_default(fm_eval_cfg *c);
int fm_eval_run(const fm_eval_cfg *c);

/* Preference accuracy of u on a pair file (see above); draws per pair from (seed, pair). */
int fm_preference_accuracy(unet *u, const char *model_dir, const char *pairs_path,
                           int64_t draws, uint64_t seed, double *acc, int64_t *n_pairs);
