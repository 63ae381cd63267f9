/* classifier.h -- a small convolutional image classifier trained with mapo's own ops (the
 * autograd tape of graph.h), used to judge generated images (a 10-class classifier, binary
 * detectors with 2 classes) and, through its penultimate layer, as the feature extractor of
 * a Frechet distance.
 *
 * Architecture (fixed; equal to the torch module of tools/make_classifier_fixtures.py):
 *
 *   x [B, in_channels, S, S]                      S = image_size, divisible by 8
 *   conv1  3x3 stride 1 pad 1, in_channels -> w   norm1 GroupNorm(8, w)   SiLU   [w,  S,   S  ]
 *   conv2  3x3 stride 2 pad 1, w  -> 2w           norm2 GroupNorm(8, 2w)  SiLU   [2w, S/2, S/2]
 *   conv3  3x3 stride 2 pad 1, 2w -> 4w           norm3 GroupNorm(8, 4w)  SiLU   [4w, S/4, S/4]
 *   conv4  3x3 stride 2 pad 1, 4w -> 4w           norm4 GroupNorm(8, 4w)  SiLU   [4w, S/8, S/8]
 *   flatten (C*H*W, row-major NCHW as torch.flatten(x, 1))
 *   fc1    linear 4w*(S/8)^2 -> F, SiLU           = features [B, F]
 *   fc2    linear F -> K                          = logits   [B, K]
 *
 * w = width (a multiple of 8, for the 8 groups), F = features, K = num_classes. GroupNorm
 * eps is 1e-5 (torch's default). Parameter names are those of the torch nn.Module:
 * conv1.weight [w, in, 3, 3], conv1.bias, norm1.weight, norm1.bias, ..., conv4.*, norm4.*,
 * fc1.weight [F, 4w*(S/8)^2], fc1.bias, fc2.weight [K, F], fc2.bias.
 *
 * On disk a model is a folder: config.json
 *   {"in_channels": 1, "image_size": 32, "width": 16, "features": 128, "num_classes": 10,
 *    "labels": ["0", ..., "9"]}
 * beside model.safetensors (F32, the names above). Every key is required except "labels"
 * (default: "0", "1", ...); unknown keys are refused by name.
 *
 * Threads: a batch is split into one contiguous slice per OpenMP thread (omp_get_max_threads),
 * each run single-threaded through the whole network; results are deterministic for a fixed
 * thread count. A model is not reentrant: one call at a time per classifier.
 *
 * Errors: functions return 0, or -1 after mapo_error() (include/mapo/common.h).
 */
#ifndef MAPO_CLASSIFIER_H
#define MAPO_CLASSIFIER_H
#include <stdint.h>

#include "mapo/params.h"

#define CLASSIFIER_MAX_CLASSES 16
#define CLASSIFIER_LABEL_LEN 32

typedef struct classifier classifier;

typedef struct {
    int in_channels, image_size, width, features, num_classes;
    char labels[CLASSIFIER_MAX_CLASSES][CLASSIFIER_LABEL_LEN]; /* NUL-terminated names */
} classifier_config;

/* in_channels 1, image_size 32, width 16, features 128, num_classes 10, labels "0".."9" */
void classifier_config_default(classifier_config *c);
/* Checks ranges: in_channels 1..64, image_size 8..1024 and divisible by 8, width 8..1024
   and divisible by 8, features 1..65536, num_classes 2..16, labels non-empty. */
int classifier_config_check(const classifier_config *c);

/* A new model with torch's default init (nn.Conv2d / nn.Linear: kaiming_uniform(a=sqrt(5)),
   i.e. weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); GroupNorm weight 1, bias 0),
   drawn from Philox streams keyed by seed (params_init_random). */
int classifier_init(classifier **m, const classifier_config *c, uint64_t seed);
/* dir/config.json + dir/model.safetensors (every parameter present with its shape, finite). */
int classifier_load(classifier **m, const char *dir);
/* Write dir/config.json + dir/model.safetensors. Atomic: when dir does not exist (or holds
   only those two files) both are written into a temporary folder beside it that is renamed
   into place; when dir holds other files, each file is written atomically (temp + rename),
   the weights first. */
int classifier_save(const classifier *m, const char *dir);
void classifier_free(classifier *m);
const classifier_config *classifier_get_config(const classifier *m);
/* The parameter table (weights, gradients arena): for tests, parity and optimisers. */
param_table *classifier_params(classifier *m);
int64_t classifier_num_params(const classifier *m);

/* 0 when images of shape [channels, height, width] fit the model, else -1 with a message
   naming both shapes (the functions below take raw [n, C, S, S] arrays and cannot check). */
int classifier_check_input(const classifier *m, int64_t channels, int64_t height,
                           int64_t width);

/* Inference in batches (no tape): x [n, C, S, S] -> logits [n, K] and/or features [n, F]
   (either output may be NULL). Deterministic for a fixed thread count. */
int classifier_forward(classifier *m, const float *x, int64_t n, float *logits,
                       float *features);
/* softmax probabilities [n, K] */
int classifier_probs(classifier *m, const float *x, int64_t n, float *probs);
/* argmax class per image, [n] (ties: lowest index) */
int classifier_predict(classifier *m, const float *x, int64_t n, int *pred);
/* fraction of images whose argmax equals labels[i] */
int classifier_accuracy(classifier *m, const float *x, const int *labels, int64_t n,
                        double *acc);

/* One forward + backward on a batch x [n, C, S, S], labels [n] in 0..K-1: *loss = mean
   cross-entropy (torch's F.cross_entropy). Gradients ACCUMULATE into the gradient arena
   (classifier_zero_grad clears it). */
int classifier_loss_backward(classifier *m, const float *x, const int *labels, int n,
                             double *loss);
void classifier_zero_grad(classifier *m);

typedef struct {
    int64_t epochs, batch_size;
    double lr, weight_decay;
    uint64_t seed;
    int quiet;
} classifier_train_cfg;

/* epochs 2, batch_size 64, lr 1e-3, weight_decay 0.01 (torch AdamW's), seed 0, quiet 0 */
void classifier_train_cfg_default(classifier_train_cfg *c);
/* Train on (x [n, C, S, S], labels [n]) with AdamW (betas 0.9/0.999, eps 1e-8; adamw_step
   of optim.h), constant lr, one optimiser step per batch (the last batch of an epoch may be
   smaller). The order of epoch e is a Philox permutation keyed by (seed, e); no
   augmentation, so a run is a deterministic function of its inputs and the thread count.
   Logs each epoch's mean loss, training accuracy (of the batches as they were trained) and
   images/s to stderr unless quiet. */
int classifier_train(classifier *m, const float *x, const int *labels, int64_t n,
                     const classifier_train_cfg *cfg);

#endif
