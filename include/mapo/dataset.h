/* dataset.h -- preference-pair datasets read in C: Pick-a-Pic-style parquet and JSONL
 * manifests, behind one interface that returns preprocessed pairs (see image.h, prep_pair);
 * and images-only JSONL manifests of single captioned images (pretraining, SFT).
 *
 * Sources (pref_dataset_open picks one from the path):
 *  - a .parquet file; a folder of *.parquet files; a folder whose data/ subfolder holds them
 *    (the Hugging Face layout). Files are taken in name order. When file names carry a split,
 *    "<split>-00000-of-00003[-hash].parquet", only one split is used: opts->split, or "train"
 *    when none is given. Columns caption (string), jpg_0, jpg_1 (image bytes), label_0 and
 *    label_1 (numbers; label_1 optional); any other columns are ignored.
 *    Ties are removed as mapo train.py --remove_ties does (label_0 == label_1; without a
 *    label_1 column, label_0 == 0.5). jpg_0 is the chosen image unless label_0 == 0 (the
 *    script's `if label_0 == 0: im_tup = im_tup[::-1]`); for Pick-a-Pic (labels 0, 0.5, 1)
 *    that is "chosen = jpg_0 if label_0 == 1 else jpg_1". A null or NaN label is an error.
 *    Opening reads only the footer and the label columns (one row group at a time); image
 *    and caption columns are read lazily, one row group at a time, and the current row
 *    group's columns are cached (so read pairs in index order when you can: a random order
 *    decompresses one row group per pair).
 *  - a .jsonl file, or a folder with manifest.jsonl: one {"caption": "...", "chosen":
 *    "path", "rejected": "path"} object per line (other keys ignored, blank lines skipped),
 *    paths relative to the manifest's folder unless absolute. The chosen image plays jpg_0
 *    (label_0 = 1): original_size is its size and the rejected image is resized to it.
 *    A line that is not such an object is an error naming the file and line.
 *  - an images-only manifest (same places): one {"caption": "...", "image": "path"} object per
 *    line: single captioned images, for plain denoising training (mapo cache writes a pair
 *    file without 'rejected', which only --loss sft trains on). The first line decides the
 *    kind; a manifest mixing pair lines and image lines is an error naming the first line of
 *    the other kind, and so is a line with both "image" and "chosen" / "rejected". The image
 *    plays the chosen image of a pair: it is preprocessed exactly as a pair's chosen image
 *    (same resize, crop and flip draws), original_size is its size. Every function below
 *    works on it; "pair" then means "image", and the rejected outputs are not written (they
 *    may be NULL). pref_dataset_images_only tells the kinds apart.
 *
 * Paths that leave the dataset (docs/RELIABILITY.md "Datasets from strangers"): a manifest's
 * image path must resolve (realpath: "..", symlinks; lexically for a file that does not
 * exist) inside the manifest's folder, absolute or not; one that does not is an error at open
 * naming the line and the path, unless opts->allow_outside_paths. Parquet files hold their
 * images inline (no paths).
 *
 * Index: pairs are numbered 0..size-1 in file / row (or line) order after tie removal, and
 * that numbering never changes after open, so indices, shuffles and random streams stay
 * valid across resumes.
 *
 * Broken images: a pair whose image cannot be read or decoded (missing file, null cell,
 * corrupt or truncated data, absurd size) is reported with its source ("x.parquet row 17
 * jpg_1: ..." rows counted from 0 within the file, or "manifest.jsonl line 4 rejected ...",
 * or "manifest.jsonl line 4 image ..." for an images-only manifest, lines from 1). With
 * ON_BAD_IMAGE_FAIL pref_dataset_get returns -1 with that message; with ON_BAD_IMAGE_SKIP
 * the pair is marked bad (a warning is logged for the first PREF_MAX_WARNINGS bad pairs of
 * a dataset, the rest are counted and summed up in one line by pref_dataset_check / close),
 * and
 * pref_dataset_get returns 1 for it now and on every later call without touching its
 * outputs: the caller moves on to another pair. pref_dataset_check decodes every pair up
 * front to find them all. Errors that are not about an image (an unreadable parquet page,
 * out-of-range index) always return -1.
 *
 * Random augmentation: flip and random crop draws come from the counter-based stream
 * philox_init(&r, seed, PREF_STREAM_AUG(epoch), pair index), in the order of prep_pair.
 * (trainer.c uses a = 1 and a = (2 << 40) | epoch; this is a = (3 << 40) | epoch.)
 *
 * A pref_dataset is not thread-safe (it caches row groups); open one per thread. */
#ifndef MAPO_DATASET_H
#define MAPO_DATASET_H
#include <stdint.h>

#include "mapo/image.h"

enum { ON_BAD_IMAGE_FAIL = 0, ON_BAD_IMAGE_SKIP = 1 };
#define PREF_MAX_WARNINGS 5 /* bad pairs shown one by one; the rest in one summary line */

#define PREF_STREAM_AUG(epoch) (((uint64_t)3 << 40) | (uint64_t)(epoch))

typedef struct pref_dataset pref_dataset;

typedef struct {
    const char *split;  /* parquet folders with split names: NULL = "train" */
    int on_bad_image;   /* ON_BAD_IMAGE_FAIL (0, default) or ON_BAD_IMAGE_SKIP */
    int allow_outside_paths; /* manifests: image paths may leave the manifest's folder */
    int keep_ties;      /* parquet: keep rows whose labels tie, jpg_0 as the chosen (the
                           official train_with_lora.py with --remove_ties false; its train.py
                           picks a tie's chosen at random each visit; docs/METHOD.md) */
    int split_soft;     /* split applies only when some file carries a split name (a folder
                           without split names is used whole): the CLI's default split */
} pref_dataset_opts;

/* Parse an --on_bad_image value ("skip" or "fail"); -1 with mapo_error otherwise. */
int pref_parse_on_bad_image(const char *s);

/* opts may be NULL (defaults). 0, or -1 + mapo_error naming the file (and row / line). */
int pref_dataset_open(pref_dataset **d, const char *path, const pref_dataset_opts *opts);
void pref_dataset_close(pref_dataset *d);

/* Pairs after tie removal (bad-image pairs included: they keep their index). */
int64_t pref_dataset_size(const pref_dataset *d);
/* Ties removed at open; pairs marked bad so far. */
int64_t pref_dataset_num_ties(const pref_dataset *d);
int64_t pref_dataset_num_bad(const pref_dataset *d);
int pref_dataset_is_bad(const pref_dataset *d, int64_t i);
/* "parquet" or "manifest" (pairs or single images) */
const char *pref_dataset_kind(const pref_dataset *d);
/* 1 for an images-only manifest (single captioned images, no rejected image), else 0. */
int pref_dataset_images_only(const pref_dataset *d);
/* An images-only manifest's "label" of image i: 1 desirable, 0 undesirable (Diffusion-KTO's
 * unpaired data; every line has one or none), -1 when unlabelled. */
int pref_dataset_label(const pref_dataset *d, int64_t i);
/* Where pair i comes from, for messages: "path/x.parquet row 17" or "path/manifest.jsonl
 * line 4". */
void pref_dataset_describe(const pref_dataset *d, int64_t i, char *buf, size_t n);
/* 64-bit identity of the dataset as opened: source kind, file names and sizes, the manifest
 * bytes, the kept rows and their order (not the image bytes of parquet files). For caches
 * that must notice a different dataset. */
uint64_t pref_dataset_fingerprint(const pref_dataset *d);

/* Caption of pair i (malloc'd; caller frees) without decoding images; a null parquet
 * caption reads as "" (the empty prompt). 0 / -1. */
int pref_dataset_caption(pref_dataset *d, int64_t i, char **caption);

/* Pair i: caption (malloc'd, caller frees; may be NULL if not wanted), chosen and rejected
 * [3, res, res] in [-1, 1], orig_hw = (h, w) of jpg_0 (chosen image for manifests),
 * crop_yx = crop top-left (for SDXL time_ids). 0 = done; 1 = bad image, skipped (policy
 * skip); -1 = error. Images-only: chosen is the image, rejected is not written (may be
 * NULL). */
int pref_dataset_get(pref_dataset *d, int64_t i, const prep_cfg *cfg, uint64_t seed,
                     uint64_t epoch, char **caption, float *chosen, float *rejected,
                     int orig_hw[2], int crop_yx[2]);

/* Pair i in both orientations, for caches that flip per epoch as the scripts do: one decode,
 * the same crop (centre, or one random crop drawn from PREF_STREAM_AUG(0) for pair i), then
 * chosen / rejected unflipped and chosen_f / rejected_f horizontally flipped (flip after the
 * resize, before the crop, as the scripts). cfg->no_hflip is ignored. Returns as
 * pref_dataset_get. Images-only: chosen / chosen_f are the image in both orientations,
 * rejected / rejected_f are not written (may be NULL). */
int pref_dataset_get_flips(pref_dataset *d, int64_t i, const prep_cfg *cfg, uint64_t seed,
                           char **caption, float *chosen, float *rejected, float *chosen_f,
                           float *rejected_f, int orig_hw[2], int crop_yx[2]);
/* Decode both images of every pair (the image of every line of an images-only manifest), in
 * storage order, to find the bad ones up front: with
 * ON_BAD_IMAGE_SKIP they are marked (and *n_bad, if given, counts all marked pairs);
 * with ON_BAD_IMAGE_FAIL the first one is an error. */
int pref_dataset_check(pref_dataset *d, int64_t *n_bad);

#endif
