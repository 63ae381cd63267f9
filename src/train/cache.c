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
#include "mapo/dataset.h"
#include "mapo/ddpm.h"
#include "mapo/pairs.h"
#include "mapo/pipeline.h"
#include "mapo/rng.h"
#include "mapo/safetensors.h"
#include "mapo/step.h"
#include "mapo/trainer.h"

enum { STREAM_VAE_NOISE = 0xcac4e };
#define CACHE_VERSION "1"

void cache_config_default(cache_config *c) {
    memset(c, 0, sizeof *c);
    c->on_bad_image = ON_BAD_IMAGE_SKIP;
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
static json_t *meta_of(const cache_config *c, int resolution) {
    char mf[32], df[32];
    if (pipeline_fingerprint(c->model_dir, mf, sizeof mf)) return NULL;
    if (dataset_fingerprint(c->dataset, df, sizeof df)) return NULL;
    char res[32], seed[32];
    snprintf(res, sizeof res, "%d", resolution);
    snprintf(seed, sizeof seed, "%lld", (long long)c->seed);
    char mp[32];
    snprintf(mp, sizeof mp, "%lld", (long long)c->max_pairs);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "mapo_cache",
                     CACHE_VERSION, "model_fingerprint", mf, "dataset_fingerprint", df,
                     "resolution", res, "crop", c->random_crop ? "random" : "center", "hflip",
                     c->no_hflip ? "no" : "p=0.5", "latents", c->latents_mean ? "mean" : "sample",
                     "seed", seed, "max_pairs", mp, "on_bad_image",
                     c->on_bad_image == ON_BAD_IMAGE_FAIL ? "fail" : "skip");
}

/* --resolution, or the UNet's sample_size x the VAE factor (SD 1.5: 512, SDXL: 1024), from the
   configs alone; -1 on error */
static int resolution_of(const cache_config *c) {
    if (c->resolution) return c->resolution;
    unet_config uc;
    char q[4200];
    int f;
    snprintf(q, sizeof q, "%s/unet/config.json", c->model_dir);
    if (vae_config_downscale(c->model_dir, &f) || unet_config_load(&uc, q)) return -1;
    int r = uc.sample_size * f;
    unet_config_free(&uc);
    return r;
}

int cache_matches(const char *path, const cache_config *c) {
    int res = resolution_of(c);
    json_t *w = res > 0 ? meta_of(c, res) : NULL;
    if (!w) return -1;
    st_file f;
    if (st_open(&f, path)) {
        json_decref(w);
        return -1;
    }
    int rc = 0;
    const char *k;
    json_t *v;
    json_object_foreach(w, k, v) {
        const char *have = st_meta(&f, k);
        if (!have || strcmp(have, json_string_value(v))) {
            rc = mapo_error("%s: cache made with %s = %s, this run needs %s", path, k,
                            have ? have : "(none)", json_string_value(v));
            break;
        }
    }
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
                    pf->P ? xmalloc(12 * sizeof(float)) : NULL, xmalloc(chw * sizeof(float))};
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
    ddpm_free(&sch);
    unet_free(&u);
    return rc;
}

int cache_build(const cache_config *c) {
    if (!c->model_dir || !c->dataset || !c->out)
        return mapo_error("cache needs --pretrained_model_name_or_path, --dataset_name and --out");
    if (c->ref_unet && c->ref_epochs < 1 && c->ref_pair_visits < 1)
        return mapo_error("reference errors need --ref_epochs >= 1");
    pipeline p;
    if (pipeline_load(&p, c->model_dir, PIPE_TEXT | PIPE_VAE, NULL, 0)) return -1;
    int rc = 0;
    int res = resolution_of(c);
    const int f = vae_downscale(p.vae), L = vae_latent_channels(p.vae);
    if (res < 0) {
        pipeline_free(&p);
        return -1;
    }
    if (res == 0 || res % f || res > 8192) {
        pipeline_free(&p);
        return mapo_error("--resolution %d must be a positive multiple of %d (the VAE factor)",
                          res, f);
    }
    json_t *meta = meta_of(c, res);
    if (!meta) {
        pipeline_free(&p);
        return -1;
    }
    pref_dataset *ds;
    pref_dataset_opts dopt = {NULL, c->on_bad_image};
    if (pref_dataset_open(&ds, c->dataset, &dopt)) {
        json_decref(meta);
        pipeline_free(&p);
        return -1;
    }
    /* pass 1 (skip policy only): find the pairs whose images decode, so the file is exactly
       as large as what it holds */
    int64_t N0 = pref_dataset_size(ds);
    if (c->max_pairs > 0 && c->max_pairs < N0) N0 = c->max_pairs;
    int64_t *keep = xmalloc((N0 ? N0 : 1) * sizeof(int64_t)), N = 0, n_bad = 0;
    prep_cfg pc = {res, c->random_crop, c->no_hflip};
    const int64_t pix = 3LL * res * res;
    /* [chosen, rejected, chosen flipped, rejected flipped]: with flips on, both orientations
       are cached and the trainer flips per (epoch, pair) with p = 0.5, as the scripts do */
    const int flips = !c->no_hflip, nimg = flips ? 4 : 2;
    float *ch = xmalloc(4 * pix * sizeof(float)), *rj = ch + pix;
    /* every image decoded up front: bad ones are marked (skip) or refused (fail) before the
       file is sized */
    rc = pref_dataset_check(ds, &n_bad);
    for (int64_t i = 0; i < N0 && !rc; i++)
        if (!pref_dataset_is_bad(ds, i)) keep[N++] = i;
    if (!rc && n_bad && !c->quiet)
        mapo_log(1, "%lld pairs skipped for undecodable images (--on_bad_image skip)\n",
                 (long long)n_bad);
    if (!rc && N == 0) rc = mapo_error("%s: no usable pairs", c->dataset);
    const int h = res / f, S = p.S, D = p.D, P = p.P;
    const int64_t lat = (int64_t)L * h * h;
    st_writer *w = st_writer_new();
    if (!rc) {
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) st_writer_meta(w, k, json_string_value(v));
        char nbuf[32];
        snprintf(nbuf, sizeof nbuf, "%lld", (long long)N);
        st_writer_meta(w, "pairs", nbuf);
        st_writer_add_empty(w, "chosen", ST_F32, 4, (int64_t[]){N, L, h, h});
        st_writer_add_empty(w, "rejected", ST_F32, 4, (int64_t[]){N, L, h, h});
        st_writer_add_empty(w, "encoder_hidden_states", ST_F32, 3, (int64_t[]){N, S, D});
        if (P) {
            st_writer_add_empty(w, "text_embeds", ST_F32, 2, (int64_t[]){N, P});
            st_writer_add_empty(w, "time_ids", ST_F32, 2, (int64_t[]){N, 6});
        }
        if (flips) {
            st_writer_add_empty(w, "chosen_hflip", ST_F32, 4, (int64_t[]){N, L, h, h});
            st_writer_add_empty(w, "rejected_hflip", ST_F32, 4, (int64_t[]){N, L, h, h});
        }
        double gib = (double)N * (nimg * lat + (int64_t)S * D + P + 6) * 4 / 1073741824.0;
        if (!c->quiet)
            mapo_log(1, "mapo cache: %lld pairs at %dx%d -> %s (%.2f GiB)\n", (long long)N, res,
                     res, c->out, gib);
        rc = st_writer_begin(w, c->out);
    }
    float *z = xmalloc(4 * lat * sizeof(float)), *noise = xmalloc(4 * lat * sizeof(float));
    float *ehs = xmalloc((size_t)S * D * sizeof(float)), *pooled = xmalloc((P ? P : 1) * sizeof(float));
    const double t0 = mapo_now();
    for (int64_t j = 0; j < N && !rc; j++) {
        char *cap = NULL;
        int orig[2], crop[2];
        if (flips)
            rc = pref_dataset_get_flips(ds, keep[j], &pc, (uint64_t)c->seed, &cap, ch, rj,
                                        ch + 2 * pix, ch + 3 * pix, orig, crop);
        else
            rc = pref_dataset_get(ds, keep[j], &pc, (uint64_t)c->seed, 0, &cap, ch, rj, orig,
                                  crop);
        if (rc > 0) rc = mapo_error("%s pair %lld became unreadable", c->dataset, (long long)keep[j]);
        if (rc) break;
        /* chosen and rejected through the VAE together */
        const float *nz = NULL;
        if (!c->latents_mean) {
            philox r;
            philox_init(&r, (uint64_t)c->seed, STREAM_VAE_NOISE, (uint64_t)keep[j]);
            philox_fill_normal(&r, noise, nimg * lat);
            nz = noise;
        }
        rc = vae_encode_latents(p.vae, ch, nimg, res, res, nz, z, 0);
        const char *cp = cap ? cap : "";
        if (!rc) rc = pipeline_encode_prompts(&p, &cp, 1, ehs, P ? pooled : NULL);
        free(cap);
        if (!rc) rc = st_writer_put(w, 0, j * lat * 4, z, lat * 4);
        if (!rc) rc = st_writer_put(w, 1, j * lat * 4, z + lat, lat * 4);
        if (!rc) rc = st_writer_put(w, 2, j * (size_t)S * D * 4, ehs, (size_t)S * D * 4);
        if (!rc && P) {
            float tid[6];
            pipeline_time_ids(tid, orig[0], orig[1], crop[0], crop[1], res, res);
            rc = st_writer_put(w, 3, j * (size_t)P * 4, pooled, (size_t)P * 4);
            if (!rc) rc = st_writer_put(w, 4, j * 24, tid, 24);
        }
        if (!rc && flips) {
            const int k = P ? 5 : 3;
            rc = st_writer_put(w, k, j * lat * 4, z + 2 * lat, lat * 4);
            if (!rc) rc = st_writer_put(w, k + 1, j * lat * 4, z + 3 * lat, lat * 4);
        }
        if (rc) rc = mapo_error_prefix("%s pair %lld", c->dataset, (long long)keep[j]);
        progress(c, "encoding pairs", j + 1, N, t0);
    }
    free(z);
    free(noise);
    free(ehs);
    free(pooled);
    free(ch);
    free(keep);
    pref_dataset_close(ds);
    pipeline_free(&p);
    if (!rc) rc = st_writer_commit(w);
    st_writer_free(w);
    if (rc || !c->ref_unet) {
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
    double *ref = xmalloc((size_t)c->ref_epochs * pf.N * 2 * sizeof(double));
    rc = reference_errors(c, &pf, ref);
    char rf[32], ep[32];
    if (!rc) rc = unet_dir_fingerprint(c->ref_unet, rf, sizeof rf);
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
