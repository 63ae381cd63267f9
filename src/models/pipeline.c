/* pipeline.c -- see pipeline.h. */
#include "mapo/pipeline.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/safetensors.h"

void pipeline_free(pipeline *p) {
    for (int i = 0; i < 2; i++) {
        if (p->tok[i]) clip_tokenizer_free(p->tok[i]);
        if (p->te[i]) clip_text_free(p->te[i]);
    }
    if (p->vae) vae_free(p->vae);
    if (p->have_unet) unet_free(&p->unet);
    memset(p, 0, sizeof *p);
}

int pipeline_load(pipeline *p, const char *dir, int parts, const char *unet_dir,
                  int unet_with_grad) {
    memset(p, 0, sizeof *p);
    if (strlen(dir) >= sizeof p->dir - 32) return mapo_error("%s: path too long", dir);
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    char q[4096];
    if (mapo_is_file(dir))
        return mapo_error("%s: a file, not a pipeline folder (a single-file checkpoint: mapo "
                          "convert --in FILE --out DIR makes one)", dir);
    if (!mapo_is_dir(dir)) return mapo_error("%s: no such folder", dir);
    snprintf(q, sizeof q, "%s/text_encoder_2", dir);
    p->sdxl = mapo_is_dir(q);
    p->n_enc = p->sdxl ? 2 : 1;
    p->S = 77;
    /* model_index.json: force_zeros_for_empty_prompt (SDXL pipelines register it, default true) */
    p->force_zeros_for_empty_prompt = p->sdxl;
    snprintf(q, sizeof q, "%s/model_index.json", dir);
    json_error_t je;
    json_t *mi = json_load_file(q, 0, &je);
    if (mi) {
        json_t *f = json_object_get(mi, "force_zeros_for_empty_prompt");
        if (json_is_boolean(f)) p->force_zeros_for_empty_prompt = json_is_true(f);
        json_decref(mi);
    }
    int rc = 0;
    if (parts & PIPE_TEXT) {
        const char *tn[2] = {"tokenizer", "tokenizer_2"}, *en[2] = {"text_encoder", "text_encoder_2"};
        for (int i = 0; i < p->n_enc && !rc; i++) {
            snprintf(q, sizeof q, "%s/%s", dir, tn[i]);
            if (clip_tokenizer_load(&p->tok[i], q)) {
                rc = -1;
                break;
            }
            snprintf(q, sizeof q, "%s/%s", dir, en[i]);
            if (clip_text_load_dir(&p->te[i], q)) {
                rc = -1;
                break;
            }
            int ml = clip_tokenizer_max_length(p->tok[i]);
            const clip_text_config *tc = clip_text_get_config(p->te[i]);
            if (ml != 77 && i == 0) p->S = ml;
            if (ml != p->S)
                rc = mapo_error("%s: the two tokenizers pad to different lengths (%d, %d)", dir,
                                p->S, ml);
            else if (p->S > tc->max_positions)
                rc = mapo_error("%s/%s: model_max_length %d > max_position_embeddings %d", dir,
                                tn[i], p->S, tc->max_positions);
            p->D += clip_text_hidden_size(p->te[i]);
        }
        if (!rc && p->sdxl) {
            p->P = clip_text_projection_dim(p->te[1]);
            if (p->P <= 0)
                rc = mapo_error("%s/text_encoder_2: SDXL needs a CLIPTextModelWithProjection "
                                "(text_projection) for the pooled embedding", dir);
        }
    }
    if (!rc && (parts & PIPE_VAE)) {
        /* a pixel-space pipeline has no vae/ (model_index.json "vae": [null, null]): the UNet
           sees images in [-1, 1] directly */
        snprintf(q, sizeof q, "%s/vae", dir);
        if (pipeline_is_pixel(dir)) p->pixel = 1;
        else if (vae_load_dir(&p->vae, q)) rc = -1;
    }
    if (!rc && (parts & PIPE_UNET)) {
        if (unet_load_dir(&p->unet, unet_dir ? unet_dir : dir, unet_with_grad)) rc = -1;
        else p->have_unet = 1;
        const unet_config *c = &p->unet.cfg;
        if (!rc && (parts & PIPE_TEXT) && c->cross_dim != p->D)
            rc = mapo_error("%s: unet cross_attention_dim %d != text encoder width %d", dir,
                            c->cross_dim, p->D);
        if (!rc && (parts & PIPE_TEXT) && c->text_time != p->sdxl)
            rc = mapo_error("%s: %s", dir, p->sdxl ? "two text encoders but the UNet has no "
                                                     "text_time conditioning"
                                                   : "the UNet wants SDXL text_time "
                                                     "conditioning but there is no text_encoder_2");
        if (!rc && (parts & PIPE_TEXT) && p->sdxl && p->P + 6 * c->add_time_dim != c->proj_class_dim)
            rc = mapo_error("%s: pooled width %d + 6 x %d != the UNet's "
                            "projection_class_embeddings_input_dim %d", dir, p->P,
                            c->add_time_dim, c->proj_class_dim);
        if (!rc && p->pixel && c->in_channels != 1 && c->in_channels != 3)
            rc = mapo_error("%s: a pixel-space pipeline needs a UNet with 1 (gray) or 3 (RGB) "
                            "in_channels, not %d", dir, c->in_channels);
        if (!rc && (parts & PIPE_VAE) && p->vae && vae_latent_channels(p->vae) != c->in_channels)
            rc = mapo_error("%s: vae latent_channels %d != unet in_channels %d", dir,
                            vae_latent_channels(p->vae), c->in_channels);
    }
    if (rc) pipeline_free(p); /* keeps the message */
    return rc;
}

int pipeline_is_pixel(const char *dir) {
    char q[4200];
    snprintf(q, sizeof q, "%s/vae", dir);
    if (mapo_is_dir(q)) return 0;
    snprintf(q, sizeof q, "%s/model_index.json", dir);
    json_error_t je;
    json_t *mi = json_load_file(q, 0, &je);
    if (!mi) return 0;
    json_t *v = json_object_get(mi, "vae");
    int pixel = json_is_array(v) && json_array_size(v) == 2 && json_is_null(json_array_get(v, 0));
    json_decref(mi);
    return pixel;
}

int pipeline_downscale(const pipeline *p) { return p->vae ? vae_downscale(p->vae) : 1; }

int pipeline_encode_prompts(pipeline *p, const char *const *prompts, int n, float *ehs,
                            float *pooled) {
    if (!p->te[0]) return mapo_error("pipeline loaded without its text encoders");
    const int S = p->S, D = p->D;
    int32_t *ids = xmalloc((size_t)n * S * sizeof(int32_t));
    int off = 0, rc = 0;
    for (int e = 0; e < p->n_enc && !rc; e++) {
        for (int i = 0; i < n; i++) {
            int cnt = clip_tokenize(p->tok[e], prompts[i], ids + (size_t)i * S, S);
            if (cnt < 0) {
                rc = mapo_error_prefix("prompt %d", i);
                break;
            }
            if (cnt > S && e == 0)
                mapo_log(1, "warning: prompt %d has %d tokens; CLIP takes %d, the rest is cut "
                            "(as diffusers does)\n", i, cnt - 2, S - 2);
        }
        if (rc) break;
        const int De = clip_text_hidden_size(p->te[e]);
        float *h = xmalloc((size_t)n * S * De * sizeof(float));
        /* SD 1.5: last_hidden_state; SDXL: hidden_states[-2] of both */
        if (p->sdxl)
            rc = clip_text_forward(p->te[e], ids, n, S, -2, h, NULL, NULL,
                                   e == 1 && pooled ? pooled : NULL);
        else
            rc = clip_text_forward(p->te[e], ids, n, S, 0, NULL, h, NULL, NULL);
        if (!rc)
            for (int64_t r = 0; r < (int64_t)n * S; r++)
                memcpy(ehs + r * D + off, h + r * De, De * sizeof(float));
        free(h);
        off += De;
    }
    free(ids);
    return rc;
}

void pipeline_time_ids(float out[6], int orig_h, int orig_w, int crop_y, int crop_x,
                       int target_h, int target_w) {
    out[0] = (float)orig_h;
    out[1] = (float)orig_w;
    out[2] = (float)crop_y;
    out[3] = (float)crop_x;
    out[4] = (float)target_h;
    out[5] = (float)target_w;
}

/* ------------------------------------------------------------------ fingerprints */
static uint64_t fnv(uint64_t h, const void *buf, size_t n) {
    const unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int file_fingerprint(const char *path, uint64_t *h) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return mapo_error("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        close(fd);
        return mapo_error("%s: cannot stat: %s", path, strerror(errno));
    }
    uint64_t x = 0xcbf29ce484222325ULL;
    int64_t size = st.st_size;
    x = fnv(x, &size, sizeof size);
    enum { BLK = 4096, NB = 64 };
    unsigned char buf[BLK];
    for (int k = 0; k < NB; k++) {
        int64_t off = size <= BLK ? 0 : (int64_t)((double)(size - BLK) * k / (NB - 1));
        ssize_t r = pread(fd, buf, BLK, off);
        if (r < 0) {
            close(fd);
            return mapo_error("%s: read error: %s", path, strerror(errno));
        }
        x = fnv(x, buf, (size_t)r);
        if (size <= BLK) break;
    }
    close(fd);
    *h = x;
    return 0;
}

/* The fingerprint of the weights at path (as st_weights_find gives it): one file's, or for a
   sharded checkpoint's index the index file's followed by each shard's name and fingerprint in
   the index's order, so that changing, adding, removing or renaming a shard changes it. The
   index is opened as the loader opens it (st_index_open: every shard present and valid). */
static int weights_fingerprint(const char *path, uint64_t *h) {
    if (!st_is_index(path)) return file_fingerprint(path, h);
    uint64_t x;
    if (file_fingerprint(path, &x)) return -1;
    st_index ix;
    if (st_index_open(&ix, path)) return -1;
    int rc = 0;
    for (int j = 0; j < ix.n_shards && !rc; j++) {
        const char *sp = ix.shards[j].path, *name = strrchr(sp, '/');
        name = name ? name + 1 : sp;
        uint64_t s;
        rc = file_fingerprint(sp, &s);
        x = fnv(x, name, strlen(name));
        x = fnv(x, &s, sizeof s);
    }
    st_index_close(&ix);
    if (!rc) *h = x;
    return rc;
}

/* *x followed by name and the fingerprint of the weights or file at path */
static int fp_add(uint64_t *x, const char *name, const char *path) {
    uint64_t h;
    if (weights_fingerprint(path, &h)) return -1;
    *x = fnv(*x, name, strlen(name));
    *x = fnv(*x, &h, sizeof h);
    return 0;
}

/* files (relative to dir) hashed with their names; missing ones are skipped unless required.
   A weights name (*.safetensors) stands for what the loaders read (st_weights_find: the
   --variant file or index, else the plain file, else the plain index) */
static int files_fingerprint(const char *dir, const char *const *files, int nf, int required,
                             char *buf, size_t n) {
    uint64_t x = 0xcbf29ce484222325ULL;
    for (int i = 0; i < nf; i++) {
        char q[4200];
        const size_t fl = strlen(files[i]), ext = strlen(".safetensors");
        if (fl > ext && !strcmp(files[i] + fl - ext, ".safetensors"))
            st_weights_find(q, sizeof q, dir, files[i]); /* q = dir/files[i] when none exists */
        else
            snprintf(q, sizeof q, "%s/%s", dir, files[i]);
        if (!required && !mapo_is_file(q)) continue;
        if (fp_add(&x, files[i], q)) return -1;
    }
    snprintf(buf, n, "%016llx", (unsigned long long)x);
    return 0;
}

int pipeline_fingerprint(const char *dir, char *buf, size_t n) {
    static const char *const files[] = {
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer.json",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer_2/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/tokenizer.json",
        "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"};
    return files_fingerprint(dir, files, (int)(sizeof files / sizeof *files), 0, buf, n);
}

int unet_dir_fingerprint(const char *dir, char *buf, size_t n) {
    static const char *const plain[] = {"config.json", "diffusion_pytorch_model.safetensors"};
    static const char *const sub[] = {"unet/config.json",
                                      "unet/diffusion_pytorch_model.safetensors"};
    char p[4200];
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    return files_fingerprint(dir, mapo_is_file(p) ? sub : plain, 2, 1, buf, n);
}

int vae_dir_fingerprint(const char *dir, char *buf, size_t n) {
    char d[4096], w[4200], c[4200];
    if (vae_weights_path(dir, d, w, sizeof w)) return -1; /* the loader's folder and weights */
    snprintf(c, sizeof c, "%s/config.json", d);
    /* the names and order of files_fingerprint(d, {config.json, diffusion_pytorch_model
       .safetensors}): a VAE folder's fingerprint is what unet_dir_fingerprint gave it */
    uint64_t x = 0xcbf29ce484222325ULL;
    if (fp_add(&x, "config.json", c) || fp_add(&x, "diffusion_pytorch_model.safetensors", w))
        return -1;
    snprintf(buf, n, "%016llx", (unsigned long long)x);
    return 0;
}

int pipeline_use_vae(pipeline *p, const char *vae_dir) {
    if (p->pixel) return mapo_error("%s: a pixel-space pipeline has no VAE to replace", p->dir);
    vae *v;
    if (vae_load_dir(&v, vae_dir)) return -1;
    const int want = p->have_unet ? p->unet.cfg.in_channels
                                  : p->vae ? vae_latent_channels(p->vae) : vae_latent_channels(v);
    if (vae_latent_channels(v) != want ||
        (p->vae && vae_downscale(v) != vae_downscale(p->vae))) {
        int lc = vae_latent_channels(v), ds = vae_downscale(v);
        vae_free(v);
        return mapo_error("%s: this VAE (latent_channels %d, downscale %d) does not fit the "
                          "pipeline %s", vae_dir, lc, ds, p->dir);
    }
    if (p->vae) vae_free(p->vae);
    p->vae = v;
    return 0;
}

void pipeline_drop_text(pipeline *p) {
    for (int i = 0; i < 2; i++) {
        if (p->tok[i]) clip_tokenizer_free(p->tok[i]);
        if (p->te[i]) clip_text_free(p->te[i]);
        p->tok[i] = NULL;
        p->te[i] = NULL;
    }
}
