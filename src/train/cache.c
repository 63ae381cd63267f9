/* cache.c -- see cache.h. */
#include "mapo/cache.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/lock.h"
#include "mapo/dataset.h"
#include "mapo/ddpm.h"
#include "mapo/pairs.h"
#include "mapo/pipeline.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"
#include "mapo/pair_draw.h"

enum { STREAM_VAE_NOISE = 0xcac4e, STREAM_SUBSET = 0x5b5e7 };
#define CACHE_VERSION "1"

static st_dtype g_default_precision = ST_F32;
static int g_default_any;

void cache_set_default_precision(st_dtype d, int asked) {
    g_default_precision = d == ST_F16 || d == ST_BF16 ? d : ST_F32;
    g_default_any = !asked;
}

void cache_config_default(cache_config *c) {
    memset(c, 0, sizeof *c);
    c->on_bad_image = ON_BAD_IMAGE_SKIP;
    c->precision = g_default_precision;
    c->precision_any = g_default_any;
}

/* the precision of a cache: its metadata, or (pair files of other makers) the dtype of 'chosen' */
static const char *precision_of(const st_file *f) {
    const char *m = st_meta(f, "cache_precision");
    if (m) return m;
    const st_tensor *t = st_find(f, "chosen");
    return st_precision_name(t ? t->dtype : ST_F32);
}

int cache_check_given(const char *dataset, st_dtype want) {
    const size_t dl = dataset ? strlen(dataset) : 0;
    if (dl < 12 || strcmp(dataset + dl - 12, ".safetensors")) return 0;
    st_file f;
    if (st_open(&f, dataset)) return 0; /* training says what is wrong with it */
    const char *have = precision_of(&f);
    int rc = 0;
    if (strcmp(have, st_precision_name(want)))
        rc = mapo_error("%s holds %s latents and embeddings, --cache_precision asks %s: the flag "
                        "applies when a dataset is encoded (rebuild it with mapo cache "
                        "--cache_precision %s, or leave the flag out to train from it as it is)",
                        dataset, have, st_precision_name(want), st_precision_name(want));
    st_close(&f);
    return rc;
}

/* ------------------------------------------------------------------ fingerprints */
static uint64_t fnv_str(uint64_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* every regular file below dir, sorted, hashed with its relative name */
static int fp_tree(const char *dir, const char *rel, uint64_t *h, int depth) {
    if (depth > 8) return 0;
    DIR *d = opendir(dir);
    if (!d) return mapo_error("%s: cannot list: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char p[4200], r[4200];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        snprintf(r, sizeof r, "%s/%s", rel, names[i]);
        struct stat st;
        if (!rc && stat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) rc = fp_tree(p, r, h, depth + 1);
            else if (S_ISREG(st.st_mode)) {
                uint64_t f;
                rc = file_fingerprint(p, &f);
                *h = fnv_str(*h, r);
                *h ^= f;
                *h *= 0x100000001b3ULL;
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int dataset_fingerprint(const char *path, char *buf, size_t n) {
    struct stat st;
    if (stat(path, &st)) return mapo_error("%s: %s", path, strerror(errno));
    uint64_t h = 0xcbf29ce484222325ULL;
    if (S_ISDIR(st.st_mode)) {
        if (fp_tree(path, "", &h, 0)) return -1;
    } else if (file_fingerprint(path, &h)) {
        return -1;
    }
    snprintf(buf, n, "%016llx", (unsigned long long)h);
    return 0;
}

/* ------------------------------------------------------------------ metadata */
#define PIXEL_GRAY "1 (gray: 0.299 R + 0.587 G + 0.114 B of the [-1, 1] RGB image)"
#define PIXEL_RGB "3 (RGB)"

/* What a cache of this pipeline holds, from the configs alone (no weights): *res = --resolution,
   or the UNet's sample_size x the VAE factor (SD 1.5: 512, SDXL: 1024; a pixel-space pipeline:
   x 1); *pixel_ch = the UNet's in_channels (1 or 3) for a pixel-space pipeline (no vae/,
   model_index.json "vae": [null, null], as pipeline_load decides), 0 with a VAE. */
static int space_of(const cache_config *c, int *res, int *pixel_ch) {
    char q[4200];
    const int pixel = pipeline_is_pixel(c->model_dir);
    *res = c->resolution;
    *pixel_ch = 0;
    if (*res && !pixel) return 0;
    int f = 1;
    if (!pixel && vae_config_downscale(c->vae_dir ? c->vae_dir : c->model_dir, &f)) return -1;
    unet_config uc;
    snprintf(q, sizeof q, "%s/unet/config.json", c->model_dir);
    if (unet_config_load(&uc, q)) return -1;
    if (!*res) *res = uc.sample_size * f;
    const int C = uc.in_channels;
    unet_config_free(&uc);
    if (!pixel) return 0;
    if (C != 1 && C != 3)
        return mapo_error("%s: a pixel-space pipeline needs a UNet with 1 (gray) or 3 (RGB) "
                          "in_channels, not %d", c->model_dir, C);
    *pixel_ch = C;
    return 0;
}

/* pixel_ch: 0 with a VAE; 1 or 3 for a pixel-space pipeline (the cache holds images: no VAE
   sample or mean, and the channel count says whether they were turned gray) */
static json_t *meta_of(const cache_config *c, int resolution, int pixel_ch) {
    char mf[32], df[32];
    if (pipeline_fingerprint(c->model_dir, mf, sizeof mf)) return NULL;
    if (dataset_fingerprint(c->dataset, df, sizeof df)) return NULL;
    char res[32], seed[32];
    snprintf(res, sizeof res, "%d", resolution);
    snprintf(seed, sizeof seed, "%lld", (long long)c->seed);
    char mp[48];
    snprintf(mp, sizeof mp, "%lld%s", (long long)c->max_pairs,
             c->max_pairs > 0 && c->sample_pairs ? " (seeded subset)" : "");
    const char *latents = pixel_ch ? "none (pixel space)" : c->latents_mean ? "mean" : "sample";
    json_t *m = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "mapo_cache",
                          CACHE_VERSION, "model_fingerprint", mf, "dataset_fingerprint", df,
                          "resolution", res, "crop", c->random_crop ? "random" : "center",
                          "hflip", c->no_hflip ? "no" : "p=0.5", "latents", latents, "seed",
                          seed, "max_pairs", mp, "on_bad_image",
                          c->on_bad_image == ON_BAD_IMAGE_FAIL ? "fail" : "skip",
                          "cache_precision", st_precision_name(c->precision));
    if (m && pixel_ch)
        json_object_set_new(m, "pixel_channels",
                            json_string(pixel_ch == 1 ? PIXEL_GRAY : PIXEL_RGB));
    /* what picks the pairs, and a separate VAE: recorded only when used, so caches made
       without them still match */
    if (m && c->split) json_object_set_new(m, "split", json_string(c->split));
    if (m && c->keep_ties) json_object_set_new(m, "ties", json_string("kept"));
    if (m && c->vae_dir) {
        char vf[32];
        if (vae_dir_fingerprint(c->vae_dir, vf, sizeof vf)) {
            json_decref(m);
            return NULL;
        }
        json_object_set_new(m, "vae_fingerprint", json_string(vf));
    }
    return m;
}

int cache_matches(const char *path, const cache_config *c) {
    int res = 0, pixel_ch = 0;
    if (space_of(c, &res, &pixel_ch)) return -1;
    json_t *w = res > 0 ? meta_of(c, res, pixel_ch) : NULL;
    if (!w) return -1;
    st_file f;
    if (st_open(&f, path)) {
        json_decref(w);
        return -1;
    }
    int rc = 0;
    const char *k, *kept = NULL;
    json_t *v;
    json_object_foreach(w, k, v) {
        const char *have = st_meta(&f, k);
        /* caches made before the key existed are float32 */
        if (!have && !strcmp(k, "cache_precision")) have = "float32";
        if (c->precision_any && !strcmp(k, "cache_precision")) {
            if (strcmp(have, json_string_value(v))) kept = have;
            continue;
        }
        if (!have || strcmp(have, json_string_value(v))) {
            rc = mapo_error("%s: cache made with %s = %s, this run needs %s", path, k,
                            have ? have : "(none)", json_string_value(v));
            break;
        }
    }
    if (!rc && kept)
        mapo_log(1, "note: %s holds %s latents and embeddings (no --cache_precision given: "
                    "kept as it is)\n", path, kept);
    st_close(&f);
    json_decref(w);
    return rc;
}

/* ------------------------------------------------------------------ build */
static void progress(const cache_config *c, const char *what, int64_t i, int64_t n, double t0) {
    if (c->quiet) return;
    double el = mapo_now() - t0;
    mapo_log(1, "\r%s %lld/%lld  %.2f pairs/s", what, (long long)i, (long long)n,
             i / (el > 0 ? el : 1e-9));
    if (i == n) mapo_log(1, "\n");
}

/* reference errors of pairs [0, N) for epochs [0, E) into ref [E, N, 2] */
static int reference_errors(const cache_config *c, const pair_file *pf, double *ref) {
    unet u;
    if (unet_load_dir(&u, c->ref_unet, 0)) return -1;
    ddpm_schedule sch;
    if (ddpm_from_model_dir(&sch, c->model_dir)) {
        unet_free(&u);
        return -1;
    }
    const int64_t chw = (int64_t)pf->C * pf->H * pf->W, sd = (int64_t)pf->S * pf->D;
    pair_slots b = {1, chw, xmalloc(2 * chw * sizeof(float)), xmalloc(2 * chw * sizeof(float)),
                    xmalloc(2 * sizeof(float)), xmalloc(2 * sd * sizeof(float)),
                    pf->P ? xmalloc(2 * (size_t)pf->P * sizeof(float)) : NULL,
                    pf->P ? xmalloc(12 * sizeof(float)) : NULL, xmalloc(chw * sizeof(float)),
                    xmalloc(chw * sizeof(float))};
    unet_inputs in = {2, pf->H, pf->W, b.sample, b.timestep, b.ehs, pf->S, b.text_embeds, pf->P,
                      b.time_ids};
    int rc = unet_check_inputs(&u, &in);
    const double t0 = mapo_now();
    for (int64_t e = 0; e < c->ref_epochs && !rc; e++)
        for (int64_t i = 0; i < pf->N && !rc; i++) {
            pair_fill(&b, pf, &sch, (uint64_t)c->seed, e, i, 0);
            rc = model_errors(&u, &in, b.target, ref + (e * pf->N + i) * 2);
            progress(c, "reference errors", e * pf->N + i + 1, c->ref_epochs * pf->N, t0);
        }
    free(b.sample);
    free(b.target);
    free(b.timestep);
    free(b.ehs);
    free(b.text_embeds);
    free(b.time_ids);
    free(b.eps);
    free(b.x0);
    ddpm_free(&sch);
    unet_free(&u);
    return rc;
}

/* Images into model space: n images [3, res, res] in [-1, 1] -> out [n, C, res, res]. C = 3:
   the images as they are; C = 1: gray by ITU-R 601-2 luma (PIL's "L" weights) applied to the
   float values after preprocessing, y = 0.299 R + 0.587 G + 0.114 B in float32. */
static void to_pixel_space(float *out, const float *img, int n, int C, int64_t hw) {
    for (int k = 0; k < n; k++) {
        const float *x = img + (int64_t)k * 3 * hw;
        float *y = out + (int64_t)k * C * hw;
        if (C == 3) {
            memcpy(y, x, (size_t)(3 * hw) * sizeof(float));
            continue;
        }
        for (int64_t i = 0; i < hw; i++) {
            const float r = x[i], g = x[hw + i], b = x[2 * hw + i];
            y[i] = 0.299f * r + 0.587f * g + 0.114f * b;
        }
    }
}

/* max_pairs of n pairs chosen by a seeded permutation (marked 1), kept in dataset order */
static uint8_t *subset_mask(int64_t n, int64_t k, uint64_t seed) {
    int64_t *perm = xmalloc((size_t)n * sizeof(int64_t));
    philox r;
    philox_init(&r, seed, STREAM_SUBSET, 0);
    philox_permutation(&r, perm, n);
    uint8_t *m = xcalloc((size_t)n, 1);
    for (int64_t i = 0; i < k; i++) m[perm[i]] = 1;
    free(perm);
    return m;
}

/* row j (n values) of tensor t, stored as dt: float32 as it is, F16 / BF16 converted through
   conv (n entries); an fp16 overflow is refused (the reader refuses non-finite values) */
static int put_rows(st_writer *w, int t, const char *name, st_dtype dt, int64_t j,
                    const float *x, int64_t n, uint16_t *conv) {
    if (dt == ST_F32) return st_writer_put(w, t, (size_t)(j * n) * 4, x, (size_t)n * 4);
    if (st_from_f32(dt, x, conv, n)) {
        float mx = 0;
        for (int64_t i = 0; i < n; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
        return mapo_error("%s holds a value of magnitude %g, beyond fp16's range (65504): use "
                          "--cache_precision bf16 (float32's range) or float32", name, (double)mx);
    }
    return st_writer_put(w, t, (size_t)(j * n) * 2, conv, (size_t)n * 2);
}

int cache_build(const cache_config *c) {
    if (!c->model_dir || !c->dataset || !c->out)
        return mapo_error("cache needs --pretrained_model_name_or_path, --dataset_name and --out");
    if (c->ref_unet && c->ref_epochs < 1 && c->ref_pair_visits < 1)
        return mapo_error("reference errors need --ref_epochs >= 1");
    int res = 0, pixel_ch = 0;
    if (space_of(c, &res, &pixel_ch)) return -1;
    pipeline p;
    if (pipeline_load(&p, c->model_dir, PIPE_TEXT | PIPE_VAE, NULL, 0)) return -1;
    if (c->vae_dir && pipeline_use_vae(&p, c->vae_dir)) {
        pipeline_free(&p);
        return -1;
    }
    int rc = 0;
    if (p.pixel != (pixel_ch > 0)) {
        pipeline_free(&p);
        return mapo_error("%s: changed while reading it (VAE or not)", c->model_dir);
    }
    /* model space: VAE latents [L, res/f, res/f], or the images themselves [C, res, res] */
    const int f = pipeline_downscale(&p), L = p.pixel ? pixel_ch : vae_latent_channels(p.vae);
    if (res <= 0 || res % f || res > 8192) {
        pipeline_free(&p);
        if (pixel_ch) return mapo_error("--resolution %d must be in 1..8192", res);
        return mapo_error("--resolution %d must be a positive multiple of %d (the VAE factor)",
                          res, f);
    }
    json_t *meta = meta_of(c, res, pixel_ch);
    if (!meta) {
        pipeline_free(&p);
        return -1;
    }
    pref_dataset *ds;
    pref_dataset_opts dopt = {c->split, c->on_bad_image, c->allow_outside_paths, c->keep_ties,
                              c->split_soft};
    if (pref_dataset_open(&ds, c->dataset, &dopt)) {
        json_decref(meta);
        pipeline_free(&p);
        return -1;
    }
    /* an images-only manifest: single captioned images, cached without 'rejected' */
    const int paired = !pref_dataset_images_only(ds);
    const char *unit = paired ? "pairs" : "images";
    if (!paired && c->ref_unet && !c->ref_if_paired) {
        pref_dataset_close(ds);
        json_decref(meta);
        pipeline_free(&p);
        return mapo_error("%s holds single images (no 'rejected'): Diffusion-DPO needs pairs; "
                          "only --loss sft (plain denoising) trains on it", c->dataset);
    }
    /* pass 1 (skip policy only): find the pairs whose images decode, so the file is exactly
       as large as what it holds */
    int64_t N0 = pref_dataset_size(ds);
    /* --max_train_samples: a seeded subset (the official script shuffles with the seed and
       selects); max_pairs alone: the first pairs */
    uint8_t *pick = c->max_pairs > 0 && c->max_pairs < N0 && c->sample_pairs
                        ? subset_mask(N0, c->max_pairs, (uint64_t)c->seed) : NULL;
    if (c->max_pairs > 0 && c->max_pairs < N0 && !pick) N0 = c->max_pairs;
    int64_t *keep = xmalloc((N0 ? N0 : 1) * sizeof(int64_t)), N = 0, n_bad = 0;
    prep_cfg pc = {res, c->random_crop, c->no_hflip};
    const int64_t pix = 3LL * res * res;
    /* images in the order of their tensors: chosen [, rejected] [, chosen_hflip
       [, rejected_hflip]]. With flips on, both orientations are cached and the trainer flips
       per (epoch, pair) with p = 0.5, as the scripts do. */
    const int flips = !c->no_hflip, per = paired ? 2 : 1, nimg = per * (flips ? 2 : 1);
    float *img = xmalloc(nimg * pix * sizeof(float));
    float *ch = img, *rj = paired ? img + pix : NULL, *chf = flips ? img + per * pix : NULL;
    float *rjf = paired && flips ? img + 3 * pix : NULL;
    /* every image decoded up front: bad ones are marked (skip) or refused (fail) before the
       file is sized */
    rc = pref_dataset_check(ds, &n_bad);
    for (int64_t i = 0; i < N0 && !rc; i++)
        if (!pref_dataset_is_bad(ds, i) && (!pick || pick[i])) keep[N++] = i;
    free(pick);
    if (!rc && n_bad && !c->quiet)
        mapo_log(1, "%lld %s skipped for undecodable images (--on_bad_image skip)\n",
                 (long long)n_bad, unit);
    if (!rc && N == 0) rc = mapo_error("%s: no usable %s", c->dataset, unit);
    const int h = res / f, S = p.S, D = p.D, P = p.P;
    const int64_t lat = (int64_t)L * h * h;
    /* tensor indices (st_writer add order) of the images, then of the conditioning */
    int t_img[4] = {-1, -1, -1, -1}, t_ehs = -1, t_te = -1, t_tid = -1, t_lab = -1, nt = 0;
    /* an images-only manifest with "label"s: Diffusion-KTO's unpaired data, desirable [N] (1 / 0)
       (the study's class labels are "label": another tensor) */
    const int labelled = !paired && N > 0 && pref_dataset_label(ds, keep[0]) >= 0;
    if (!rc && !paired && c->ref_if_paired && !labelled)
        rc = mapo_error("%s holds single images without labels: --loss kto needs each image "
                        "labelled desirable or not (a manifest's \"label\": 1 / 0)", c->dataset);
    /* --cache_precision: the images / latents and the prompt embeddings as F16 / BF16 */
    const st_dtype dt = c->precision == ST_F16 || c->precision == ST_BF16 ? c->precision : ST_F32;
    const size_t es = st_dtype_size(dt);
    st_writer *w = st_writer_new();
    if (!rc) {
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) st_writer_meta(w, k, json_string_value(v));
        char nbuf[32];
        snprintf(nbuf, sizeof nbuf, "%lld", (long long)N);
        st_writer_meta(w, "pairs", nbuf);
        const int64_t ishape[4] = {N, L, h, h};
        t_img[0] = nt++;
        st_writer_add_empty(w, "chosen", dt, 4, ishape);
        if (paired) {
            t_img[1] = nt++;
            st_writer_add_empty(w, "rejected", dt, 4, ishape);
        }
        t_ehs = nt++;
        st_writer_add_empty(w, "encoder_hidden_states", dt, 3, (int64_t[]){N, S, D});
        if (P) {
            t_te = nt++;
            st_writer_add_empty(w, "text_embeds", dt, 2, (int64_t[]){N, P});
            t_tid = nt++;
            st_writer_add_empty(w, "time_ids", ST_F32, 2, (int64_t[]){N, 6});
        }
        if (labelled) {
            t_lab = nt++;
            st_writer_add_empty(w, "desirable", ST_F32, 1, (int64_t[]){N});
        }
        if (flips) {
            t_img[per] = nt++;
            st_writer_add_empty(w, "chosen_hflip", dt, 4, ishape);
            if (paired) {
                t_img[3] = nt++;
                st_writer_add_empty(w, "rejected_hflip", dt, 4, ishape);
            }
        }
        double gib = (double)N * ((nimg * lat + (int64_t)S * D + P) * (double)es + 6 * 4) /
                     1073741824.0;
        if (!c->quiet)
            mapo_log(1, "mapo cache: %lld %s at %dx%d%s -> %s (%.2f GiB%s%s)\n", (long long)N,
                     unit, res, res,
                     !p.pixel ? "" : pixel_ch == 1 ? " (pixel space, gray)" : " (pixel space, RGB)",
                     c->out, gib, dt != ST_F32 ? ", " : "",
                     dt != ST_F32 ? st_precision_name(dt) : "");
        /* one live writer per folder (a no-op when mapo train already holds it) */
        rc = mapo_lock_parent(c->out);
        if (!rc) rc = st_writer_begin(w, c->out);
    }
    float *z = xmalloc(nimg * lat * sizeof(float));
    float *noise = p.pixel ? NULL : xmalloc(nimg * lat * sizeof(float));
    float *ehs = xmalloc((size_t)S * D * sizeof(float)), *pooled = xmalloc((P ? P : 1) * sizeof(float));
    int64_t cmax = (int64_t)S * D > nimg * lat ? (int64_t)S * D : nimg * lat;
    if (P > cmax) cmax = P;
    uint16_t *conv = dt != ST_F32 ? xmalloc((size_t)cmax * sizeof(uint16_t)) : NULL;
    const char *img_names[4] = {"chosen", paired ? "rejected" : "chosen_hflip", "chosen_hflip",
                                "rejected_hflip"};
    const double t0 = mapo_now();
    for (int64_t j = 0; j < N && !rc; j++) {
        char *cap = NULL;
        int orig[2], crop[2];
        if (flips)
            rc = pref_dataset_get_flips(ds, keep[j], &pc, (uint64_t)c->seed, &cap, ch, rj, chf,
                                        rjf, orig, crop);
        else
            rc = pref_dataset_get(ds, keep[j], &pc, (uint64_t)c->seed, 0, &cap, ch, rj, orig,
                                  crop);
        if (rc > 0)
            rc = mapo_error("%s %s %lld became unreadable", c->dataset, paired ? "pair" : "image",
                            (long long)keep[j]);
        if (rc) break;
        if (p.pixel) {
            to_pixel_space(z, img, nimg, L, (int64_t)res * res);
        } else {
            /* every image of the pair through the VAE together */
            const float *nz = NULL;
            if (!c->latents_mean) {
                philox r;
                philox_init(&r, (uint64_t)c->seed, STREAM_VAE_NOISE, (uint64_t)keep[j]);
                philox_fill_normal(&r, noise, nimg * lat);
                nz = noise;
            }
            /* --vae_encode_batch_size: at most that many images per VAE call (the encoder works
               per image, so the latents do not depend on it) */
            const int vb = c->vae_batch > 0 && c->vae_batch < nimg ? c->vae_batch : nimg;
            for (int k = 0; k < nimg && !rc; k += vb)
                rc = vae_encode_latents(p.vae, img + k * pix, k + vb <= nimg ? vb : nimg - k, res,
                                        res, nz ? nz + k * lat : NULL, z + k * lat, 0);
        }
        const char *cp = cap ? cap : "";
        if (!rc) rc = pipeline_encode_prompts(&p, &cp, 1, ehs, P ? pooled : NULL);
        free(cap);
        for (int k = 0; k < nimg && !rc; k++)
            rc = put_rows(w, t_img[k], img_names[k], dt, j, z + k * lat, lat, conv);
        if (!rc) rc = put_rows(w, t_ehs, "encoder_hidden_states", dt, j, ehs, (int64_t)S * D, conv);
        if (!rc && labelled) {
            const float lab = (float)pref_dataset_label(ds, keep[j]);
            rc = st_writer_put(w, t_lab, j * sizeof(float), &lab, sizeof(float));
        }
        if (!rc && P) {
            float tid[6];
            pipeline_time_ids(tid, orig[0], orig[1], crop[0], crop[1], res, res);
            rc = put_rows(w, t_te, "text_embeds", dt, j, pooled, P, conv);
            if (!rc) rc = st_writer_put(w, t_tid, j * 24, tid, 24);
        }
        if (rc)
            rc = mapo_error_prefix("%s %s %lld", c->dataset, paired ? "pair" : "image",
                                   (long long)keep[j]);
        progress(c, paired ? "encoding pairs" : "encoding images", j + 1, N, t0);
    }
    free(conv);
    free(z);
    free(noise);
    free(ehs);
    free(pooled);
    free(img);
    free(keep);
    pref_dataset_close(ds);
    pipeline_free(&p);
    if (!rc) rc = st_writer_commit(w);
    st_writer_free(w);
    if (rc || !c->ref_unet || !paired) {
        json_decref(meta);
        return rc;
    }
    /* Diffusion-DPO reference errors: a second file written next to the first, then renamed
       over it (the pair tensors are copied from the mapping) */
    pair_file pf;
    unet_config uc;
    char q[4200];
    snprintf(q, sizeof q, "%s/unet/config.json", c->model_dir);
    struct stat st;
    if (stat(q, &st)) snprintf(q, sizeof q, "%s/config.json", c->ref_unet);
    if (unet_config_load(&uc, q)) {
        json_decref(meta);
        return -1;
    }
    rc = pair_file_open(&pf, c->out, &uc);
    unet_config_free(&uc);
    if (rc) {
        json_decref(meta);
        return -1;
    }
    cache_config cr = *c;
    if (cr.ref_epochs < 1) cr.ref_epochs = (c->ref_pair_visits + pf.N - 1) / pf.N;
    c = &cr;
    /* the reference's fingerprint (its config and weights: one file, or an index and every
       shard), recorded so that training uses the errors only with this very reference; a
       reference it cannot read is refused here, as loading it would be */
    char rf[32], ep[32];
    if (unet_dir_fingerprint(c->ref_unet, rf, sizeof rf)) {
        pair_file_close(&pf);
        json_decref(meta);
        return mapo_error_prefix("reference UNet %s", c->ref_unet);
    }
    double *ref = xmalloc((size_t)c->ref_epochs * pf.N * 2 * sizeof(double));
    rc = reference_errors(c, &pf, ref);
    if (!rc) {
        w = st_writer_new();
        for (int i = 0; i < pf.f.n_meta; i++) st_writer_meta(w, pf.f.meta_keys[i], pf.f.meta_values[i]);
        snprintf(ep, sizeof ep, "%lld", (long long)c->ref_epochs);
        st_writer_meta(w, "ref_fingerprint", rf);
        st_writer_meta(w, "ref_epochs", ep);
        const char *names[] = {"chosen", "rejected", "encoder_hidden_states", "text_embeds",
                               "time_ids", "chosen_hflip", "rejected_hflip"};
        for (int i = 0; i < 7; i++) {
            const st_tensor *t = st_find(&pf.f, names[i]);
            if (t) st_writer_add(w, names[i], t->dtype, t->ndim, t->shape, t->data);
        }
        st_writer_add(w, "ref_errors", ST_F64, 3, (int64_t[]){c->ref_epochs, pf.N, 2}, ref);
        rc = st_writer_write(w, c->out);
        st_writer_free(w);
    }
    free(ref);
    pair_file_close(&pf);
    json_decref(meta);
    return rc;
}
