/* single_file.c -- SD 1.5 / SDXL single-file checkpoints -> diffusers pipeline folders (see
 * single_file.h; every mapping rule is listed in docs/SINGLE_FILE.md).
 *
 * In three stages, the first of which writes nothing:
 *   plan   open the file (mmap, validated header), decide SD 1.5 / SDXL from its keys, find the
 *          config folder, derive each part's config from the tensor shapes (values the shapes
 *          cannot tell from the config folder), build the list of parameters the diffusers
 *          model has (the UNet's from unet_build itself, so it is exactly what unet_load_dir
 *          will ask for; the VAE's and the text encoders' as vae.c / clip_text.c register them)
 *          and, for each, the original key it comes from and how (copy, row slice, transpose).
 *          Every missing tensor, wrong shape or unexpected key under a part's prefix is refused
 *          here, named by its original key.
 *   write  out_dir.tmp.<pid>/: configs first (the UNet and VAE configs are parsed back with
 *          mapo's own readers and must give the derived model), then the weights, streamed
 *          tensor by tensor in their own dtype (or all in one, single_file_convert_as), then
 *          tokenizers, scheduler and model_index.json.
 *   commit rename into out_dir (fsync of the parent), or remove the temporary folder. */
#include "mapo/single_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapo/common.h"
#include "mapo/params.h"
#include "mapo/pipeline.h"
#include "mapo/safetensors.h"
#include "mapo/unet.h"
#include "mapo/vae.h"

#define PU "model.diffusion_model."
#define PV "first_stage_model."
#define PT15 "cond_stage_model.transformer."
#define PTL "conditioner.embedders.0.transformer."
#define PTG "conditioner.embedders.1.model."

/* how a diffusers tensor is made from its original one */
enum {
    OP_COPY,  /* same shape, same bytes */
    OP_CONV1, /* [C, C] from a 1x1 convolution [C, C, 1, 1] (or already [C, C]): same bytes */
    OP_ROWS,  /* rows [row0, row0 + shape[0]) of a fused [3 D, ...] tensor */
    OP_T      /* [P, D] = transpose of [D, P] */
};

typedef struct {
    char *name; /* diffusers / transformers name */
    const st_tensor *src;
    int op;
    int64_t row0;
    int ndim;
    int64_t shape[4];
} sf_out;

typedef struct {
    const char *sub;     /* unet, vae, text_encoder, text_encoder_2 */
    const char *weights; /* file name inside sub/ */
    const char *what;    /* for messages */
    json_t *config;
    json_t *orig;        /* the config folder's config (NULL: the standard one was used) */
    char src[4300];      /* its path */
    sf_out *t;
    int n, cap;
} sf_part;

typedef struct {
    const char *path;
    st_file f;
    int open;
    sf_kind kind;
    char cfg[4096]; /* the config folder */
    sf_part part[4];
    int n_part;
    unsigned char *used; /* [f.n]: consumed by a part, or deliberately ignored */
    int v_pred, ztsnr;
    unet_config uc;      /* the derived UNet (json NULL) */
    int vae_block_out[8], vae_n, vae_layers, vae_latent, vae_mid_attn;
    int proj_dim;        /* SDXL: text_encoder_2's projection width */
} sf_plan;

static const char *kind_name(sf_kind k) { return k == SF_SDXL ? "SDXL" : "SD 1.5"; }

/* ------------------------------------------------------------------ small helpers */
static const st_tensor *fnd(sf_plan *p, const char *fmt, ...) MAPO_PRINTF(2, 3);
static const st_tensor *fnd(sf_plan *p, const char *fmt, ...) {
    char k[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k, sizeof k, fmt, ap);
    va_end(ap);
    return st_find(&p->f, k);
}

static int any_prefix(const st_file *f, const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < f->n; i++)
        if (!strncmp(f->tensors[i].name, prefix, n)) return 1;
    return 0;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64; }

/* the tensor `key`, which must exist with `ndim` dimensions (anchors of the derivation) */
static const st_tensor *need(sf_plan *p, const char *key, int ndim, const char *part) {
    const st_tensor *t = st_find(&p->f, key);
    if (!t) {
        mapo_error("%s: tensor '%s' is missing (the %s needs it)", p->path, key, part);
        return NULL;
    }
    if (t->ndim != ndim) {
        char a[96];
        shape_str(a, sizeof a, t->ndim, t->shape);
        mapo_error("%s: tensor '%s' has shape %s, expected %d dimensions", p->path, key, a, ndim);
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] < 1 || t->shape[i] > (1 << 20)) {
            mapo_error("%s: tensor '%s' has an empty or absurd dimension", p->path, key);
            return NULL;
        }
    return t;
}

/* Register diffusers tensor dname [ndim, shape] made from original key lname by op. */
static int add(sf_plan *p, sf_part *pt, int op, const char *dname, const char *lname, int ndim,
               const int64_t *shape, int64_t row0) {
    const st_tensor *s = st_find(&p->f, lname);
    if (!s)
        return mapo_error("%s: tensor '%s' is missing (the %s derived from the checkpoint needs "
                          "it for %s)", p->path, lname, pt->what, dname);
    int64_t want[6];
    int wn = ndim, alt = 0;
    memcpy(want, shape, ndim * sizeof *shape);
    if (op == OP_ROWS) want[0] = 3 * shape[0];
    if (op == OP_T) {
        want[0] = shape[1];
        want[1] = shape[0];
    }
    if (op == OP_CONV1) {
        want[2] = want[3] = 1;
        wn = 4;
        alt = 1; /* [C, C] also accepted */
    }
    int ok = s->ndim == wn;
    for (int i = 0; ok && i < wn; i++) ok = s->shape[i] == want[i];
    if (!ok && alt) {
        ok = s->ndim == ndim;
        for (int i = 0; ok && i < ndim; i++) ok = s->shape[i] == shape[i];
    }
    if (!ok) {
        char a[128], b[128];
        shape_str(a, sizeof a, s->ndim, s->shape);
        shape_str(b, sizeof b, wn, want);
        return mapo_error("%s: tensor '%s' has shape %s, expected %s (the %s derived from the "
                          "checkpoint's other tensors)", p->path, lname, a, b, pt->what);
    }
    if (!is_float(s->dtype))
        return mapo_error("%s: tensor '%s' has dtype %s (F32, F16, BF16 or F64 expected)",
                          p->path, lname, st_dtype_name(s->dtype));
    if (pt->n == pt->cap) {
        pt->cap = pt->cap ? 2 * pt->cap : 256;
        pt->t = xrealloc(pt->t, pt->cap * sizeof *pt->t);
    }
    sf_out *o = &pt->t[pt->n++];
    memset(o, 0, sizeof *o);
    o->name = xstrdup(dname);
    o->src = s;
    o->op = op;
    o->row0 = row0;
    o->ndim = ndim;
    memcpy(o->shape, shape, ndim * sizeof *shape);
    p->used[s - p->f.tensors] = 1;
    return 0;
}

/* weight + bias pairs; d and l are name prefixes (without the trailing .weight) */
static int conv(sf_plan *p, sf_part *pt, const char *d, const char *l, int64_t co, int64_t ci,
                int k) {
    char a[400], b[400];
    int64_t ws[4] = {co, ci, k, k};
    snprintf(a, sizeof a, "%s.weight", d);
    snprintf(b, sizeof b, "%s.weight", l);
    if (add(p, pt, OP_COPY, a, b, 4, ws, 0)) return -1;
    snprintf(a, sizeof a, "%s.bias", d);
    snprintf(b, sizeof b, "%s.bias", l);
    return add(p, pt, OP_COPY, a, b, 1, &co, 0);
}
static int vec(sf_plan *p, sf_part *pt, const char *d, const char *l, int64_t c) {
    char a[400], b[400];
    snprintf(a, sizeof a, "%s.weight", d);
    snprintf(b, sizeof b, "%s.weight", l);
    if (add(p, pt, OP_COPY, a, b, 1, &c, 0)) return -1;
    snprintf(a, sizeof a, "%s.bias", d);
    snprintf(b, sizeof b, "%s.bias", l);
    return add(p, pt, OP_COPY, a, b, 1, &c, 0);
}
static int lin(sf_plan *p, sf_part *pt, int op, const char *d, const char *l, int64_t out,
               int64_t in) {
    char a[400], b[400];
    int64_t ws[2] = {out, in};
    snprintf(a, sizeof a, "%s.weight", d);
    snprintf(b, sizeof b, "%s.weight", l);
    if (add(p, pt, op, a, b, 2, ws, 0)) return -1;
    snprintf(a, sizeof a, "%s.bias", d);
    snprintf(b, sizeof b, "%s.bias", l);
    return add(p, pt, OP_COPY, a, b, 1, &out, 0);
}

static sf_part *new_part(sf_plan *p, const char *sub, const char *weights, const char *what) {
    sf_part *pt = &p->part[p->n_part++];
    memset(pt, 0, sizeof *pt);
    pt->sub = sub;
    pt->weights = weights;
    pt->what = what;
    return pt;
}

/* ------------------------------------------------------------------ configs */
/* Used when the config folder has no config.json for a part: the standard models' values;
   every key the tensors decide is overwritten anyway. */
static const char DEF_UNET_SD15[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"attention_head_dim\": 8,"
    " \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false,"
    " \"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
    " \"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4,"
    " \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05,"
    " \"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64, \"up_block_types\":"
    " [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}";
static const char DEF_UNET_SDXL[] =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"addition_embed_type\":"
    " \"text_time\", \"addition_embed_type_num_heads\": 64, \"addition_time_embed_dim\": 256,"
    " \"attention_head_dim\": [5, 10, 20], \"block_out_channels\": [320, 640, 1280],"
    " \"center_input_sample\": false, \"cross_attention_dim\": 2048, \"down_block_types\":"
    " [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4,"
    " \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05,"
    " \"norm_num_groups\": 32, \"out_channels\": 4, \"projection_class_embeddings_input_dim\":"
    " 2816, \"sample_size\": 128, \"transformer_layers_per_block\": [1, 2, 10],"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],"
    " \"use_linear_projection\": true}";
static const char DEF_VAE_SD15[] =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\":"
    " [128, 256, 512, 512], \"down_block_types\": [\"DownEncoderBlock2D\","
    " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"in_channels\": 3,"
    " \"latent_channels\": 4, \"layers_per_block\": 2, \"norm_num_groups\": 32,"
    " \"out_channels\": 3, \"sample_size\": 512, \"scaling_factor\": 0.18215, \"up_block_types\":"
    " [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}";
static const char DEF_VAE_SDXL[] =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\":"
    " [128, 256, 512, 512], \"down_block_types\": [\"DownEncoderBlock2D\","
    " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
    " \"force_upcast\": true, \"in_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2,"
    " \"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 1024, \"scaling_factor\":"
    " 0.13025, \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
    " \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}";
static const char DEF_CLIP_L[] =
    "{\"architectures\": [\"CLIPTextModel\"], \"bos_token_id\": 0, \"eos_token_id\": 2,"
    " \"hidden_act\": \"quick_gelu\", \"hidden_size\": 768, \"intermediate_size\": 3072,"
    " \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77, \"model_type\":"
    " \"clip_text_model\", \"num_attention_heads\": 12, \"num_hidden_layers\": 12,"
    " \"pad_token_id\": 1, \"projection_dim\": 768, \"vocab_size\": 49408}";
static const char DEF_CLIP_G[] =
    "{\"architectures\": [\"CLIPTextModelWithProjection\"], \"bos_token_id\": 0,"
    " \"eos_token_id\": 2, \"hidden_act\": \"gelu\", \"hidden_size\": 1280,"
    " \"intermediate_size\": 5120, \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77,"
    " \"model_type\": \"clip_text_model\", \"num_attention_heads\": 20, \"num_hidden_layers\": 32,"
    " \"pad_token_id\": 1, \"projection_dim\": 1280, \"vocab_size\": 49408}";

/* pt->config: sub/config.json of the config folder, or the default */
static int part_config(sf_plan *p, sf_part *pt, const char *def) {
    snprintf(pt->src, sizeof pt->src, "%s/%s/config.json", p->cfg, pt->sub);
    json_error_t e;
    if (mapo_is_file(pt->src)) {
        json_t *j = json_load_file(pt->src, JSON_REJECT_DUPLICATES, &e);
        if (!j || !json_is_object(j)) {
            json_decref(j);
            return mapo_error("%s: cannot read config: %s", pt->src,
                              j ? "not a JSON object" : e.text);
        }
        pt->config = j;
        pt->orig = json_deep_copy(j);
        return 0;
    }
    mapo_log(2, "%s: no %s/config.json; the standard %s %s config is used\n", p->cfg, pt->sub,
             kind_name(p->kind), pt->sub);
    pt->config = json_loads(def, 0, &e);
    return pt->config ? 0 : mapo_error("internal: default %s config: %s", pt->sub, e.text);
}

static long long jint(json_t *o, const char *k, long long def) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? json_integer_value(v) : def;
}
/* an int or a list of ints, expanded to n entries (0 when it does not fit) */
static int jlist(json_t *o, const char *k, int *out, int n) {
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v)) {
        for (int i = 0; i < n; i++) out[i] = (int)json_integer_value(v);
        return 1;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != n) return 0;
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e)) return 0;
        out[i] = (int)json_integer_value(e);
    }
    return 1;
}
/* Set the keys the tensors decide, leaving the config folder's value (and so its exact form)
   where it already says the same. */
static void set_int(json_t *o, const char *k, long long v) {
    json_t *old = json_object_get(o, k);
    if (json_is_integer(old) && json_integer_value(old) == v) return;
    json_object_set_new(o, k, json_integer(v));
}
static void set_list(json_t *o, const char *k, const int *v, int n, int scalar_ok) {
    int old[UNET_MAX_BLOCKS];
    if (n <= UNET_MAX_BLOCKS && jlist(o, k, old, n) && !memcmp(old, v, n * sizeof *v)) return;
    int same = 1;
    for (int i = 1; i < n; i++) same &= v[i] == v[0];
    if (same && scalar_ok) {
        json_object_set_new(o, k, json_integer(v[0]));
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    json_object_set_new(o, k, a);
}
static void set_strs(json_t *o, const char *k, const char *const *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(v[i]));
    if (!json_equal(a, json_object_get(o, k))) json_object_set(o, k, a);
    json_decref(a);
}
/* def: diffusers' default, which an absent key means */
static void set_bool(json_t *o, const char *k, int v, int def) {
    json_t *old = json_object_get(o, k);
    if (json_is_boolean(old) && json_is_true(old) == !!v) return;
    if ((!old || json_is_null(old)) && !!v == def) return;
    json_object_set_new(o, k, json_boolean(v));
}

/* ------------------------------------------------------------------ UNet */
/* transformer blocks of the attention at prefix pre (e.g. PU "input_blocks.1.1.") */
static int depth(sf_plan *p, const char *pre) {
    int t = 0;
    while (t < 4096 && fnd(p, "%stransformer_blocks.%d.norm1.weight", pre, t)) t++;
    return t;
}

static const char *const RESNET[][2] = {
    {"norm1.", "in_layers.0."}, {"conv1.", "in_layers.2."}, {"time_emb_proj.", "emb_layers.1."},
    {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
};

/* dst = pre + resnet suffix renamed (norm1.weight -> in_layers.0.weight, ...) */
static int resnet_name(char *dst, size_t n, const char *pre, const char *rest) {
    for (size_t i = 0; i < sizeof RESNET / sizeof *RESNET; i++) {
        size_t l = strlen(RESNET[i][0]);
        if (!strncmp(rest, RESNET[i][0], l)) {
            snprintf(dst, n, "%s%s%s", pre, RESNET[i][1], rest + l);
            return 0;
        }
    }
    return -1;
}

/* the original key of a diffusers UNet parameter name d (docs/SINGLE_FILE.md, UNet) */
static int unet_ldm_name(const unet_config *c, const char *d, char *o, size_t n) {
    static const char *const simple[][2] = {
        {"conv_in.", "input_blocks.0.0."}, {"time_embedding.linear_1.", "time_embed.0."},
        {"time_embedding.linear_2.", "time_embed.2."}, {"add_embedding.linear_1.", "label_emb.0.0."},
        {"add_embedding.linear_2.", "label_emb.0.2."}, {"conv_norm_out.", "out.0."},
        {"conv_out.", "out.2."}, {"mid_block.attentions.0.", "middle_block.1."},
        {"mid_block.resnets.0.", NULL}, {"mid_block.resnets.1.", NULL},
    };
    char pre[64];
    for (size_t s = 0; s < sizeof simple / sizeof *simple; s++) {
        size_t l = strlen(simple[s][0]);
        if (strncmp(d, simple[s][0], l)) continue;
        if (simple[s][1]) {
            snprintf(o, n, PU "%s%s", simple[s][1], d + l);
            return 0;
        }
        snprintf(pre, sizeof pre, PU "middle_block.%d.", d[l - 2] == '0' ? 0 : 2);
        return resnet_name(o, n, pre, d + l);
    }
    const int nb = c->n_blocks;
    int i = -1, j = -1, len = 0;
    if (sscanf(d, "down_blocks.%d.%n", &i, &len) == 1 && len && i >= 0 && i < nb) {
        int k = 1;
        for (int b = 0; b < i; b++) k += c->layers[b] + 1;
        const char *r = d + len;
        len = 0;
        if (sscanf(r, "resnets.%d.%n", &j, &len) == 1 && len) {
            snprintf(pre, sizeof pre, PU "input_blocks.%d.0.", k + j);
            return resnet_name(o, n, pre, r + len);
        }
        len = 0;
        if (sscanf(r, "attentions.%d.%n", &j, &len) == 1 && len) {
            snprintf(o, n, PU "input_blocks.%d.1.%s", k + j, r + len);
            return 0;
        }
        if (!strncmp(r, "downsamplers.0.conv.", 20)) {
            snprintf(o, n, PU "input_blocks.%d.0.op.%s", k + c->layers[i], r + 20);
            return 0;
        }
        return -1;
    }
    len = 0;
    if (sscanf(d, "up_blocks.%d.%n", &i, &len) == 1 && len && i >= 0 && i < nb) {
        int m = 0;
        for (int b = 0; b < i; b++) m += c->layers[nb - 1 - b] + 1;
        const int nl = c->layers[nb - 1 - i] + 1;
        const char *r = d + len;
        len = 0;
        if (sscanf(r, "resnets.%d.%n", &j, &len) == 1 && len) {
            snprintf(pre, sizeof pre, PU "output_blocks.%d.0.", m + j);
            return resnet_name(o, n, pre, r + len);
        }
        len = 0;
        if (sscanf(r, "attentions.%d.%n", &j, &len) == 1 && len) {
            snprintf(o, n, PU "output_blocks.%d.1.%s", m + j, r + len);
            return 0;
        }
        if (!strncmp(r, "upsamplers.0.conv.", 18)) {
            snprintf(o, n, PU "output_blocks.%d.%d.conv.%s", m + nl - 1, c->up_cross[i] ? 2 : 1,
                     r + 18);
            return 0;
        }
    }
    return -1;
}

/* Attention heads of down block i of width w: the config folder's when its block widths are the
   checkpoint's, else the original models' rule. */
static int unet_heads(sf_plan *p, json_t *src, int i, int n, int w, int *heads) {
    int sw[UNET_MAX_BLOCKS], sh[UNET_MAX_BLOCKS];
    json_t *b = json_object_get(src, "block_out_channels");
    int same = json_is_array(b) && (int)json_array_size(b) == n &&
               jlist(src, "block_out_channels", sw, n) && jlist(src, "attention_head_dim", sh, n);
    for (int k = 0; same && k < n; k++) same = sw[k] == p->uc.block_out[k];
    if (same && sh[i] > 0 && w % sh[i] == 0) {
        *heads = sh[i];
        return 0;
    }
    /* SD 1.5: num_heads 8; SDXL: num_head_channels 64 (the original configs) */
    int h = p->kind == SF_SD15 ? 8 : w / 64;
    if (h < 1 || w % h)
        return mapo_error("%s: cannot tell the attention heads of UNet block %d (width %d): give "
                          "--config_dir with a unet/config.json of these block widths", p->path,
                          i, w);
    *heads = h;
    return 0;
}

static int plan_unet(sf_plan *p) {
    sf_part *pt = new_part(p, "unet", "diffusion_pytorch_model.safetensors", "UNet");
    unet_config *c = &p->uc;
    memset(c, 0, sizeof *c);
    const st_tensor *ci = need(p, PU "input_blocks.0.0.weight", 4, "UNet");
    const st_tensor *co = ci ? need(p, PU "out.2.weight", 4, "UNet") : NULL;
    if (!co) return -1;
    const st_tensor *mp = st_find(&p->f, PU "middle_block.1.proj_in.weight");
    if (!mp)
        return mapo_error("%s: tensor '" PU "middle_block.1.proj_in.weight' is missing (mapo's "
                          "UNet has a cross-attention mid block)", p->path);
    const st_tensor *ck = need(p, PU "middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2,
                               "UNet");
    if (!ck) return -1;
    c->in_channels = (int)ci->shape[1];
    c->out_channels = (int)co->shape[0];
    c->block_out[0] = (int)ci->shape[0];
    c->cross_dim = (int)ck->shape[1];
    c->linear_proj = mp->ndim == 2;
    /* input_blocks.1..: resnets (with an attention at .1) of one level, then a downsampler */
    int level = 0, k = 1;
    for (;; k++) {
        const st_tensor *r;
        if (fnd(p, PU "input_blocks.%d.0.op.weight", k)) {
            if (!c->layers[level])
                return mapo_error("%s: " PU "input_blocks.%d is a downsampler after a level "
                                  "without resnets", p->path, k);
            if (++level >= UNET_MAX_BLOCKS)
                return mapo_error("%s: more than %d UNet levels", p->path, UNET_MAX_BLOCKS);
        } else if ((r = fnd(p, PU "input_blocks.%d.0.in_layers.2.weight", k))) {
            char pre[96];
            snprintf(pre, sizeof pre, PU "input_blocks.%d.1.", k);
            int att = fnd(p, "%snorm.weight", pre) != NULL;
            if (!c->layers[level]) {
                c->block_out[level] = (int)r->shape[0];
                c->down_cross[level] = att;
                c->tlayers[level] = att ? depth(p, pre) : 0;
            } else if (att != c->down_cross[level] ||
                       (att && depth(p, pre) != c->tlayers[level])) {
                return mapo_error("%s: the resnets of UNet level %d differ in their attention "
                                  "(" PU "input_blocks.%d); mixed blocks are not supported",
                                  p->path, level, k);
            }
            if (++c->layers[level] > 15)
                return mapo_error("%s: more than 15 resnets in UNet level %d", p->path, level);
        } else {
            break;
        }
    }
    const int n = c->n_blocks = level + 1;
    if (!c->layers[n - 1])
        return mapo_error("%s: the UNet's last level has no resnets (" PU "input_blocks.%d)",
                          p->path, k);
    int mid = depth(p, PU "middle_block.1.");
    for (int i = 0; i < n; i++)
        if (!c->down_cross[i]) c->tlayers[i] = i == n - 1 ? mid : 1;
    if (c->tlayers[n - 1] != mid)
        return mapo_error("%s: the mid block has %d transformer layers, the last level %d; "
                          "mapo's UNet needs them equal", p->path, mid, c->tlayers[n - 1]);
    int m = 0;
    for (int i = 0; i < n; i++) {
        c->up_cross[i] = fnd(p, PU "output_blocks.%d.1.norm.weight", m) != NULL;
        m += c->layers[n - 1 - i] + 1;
    }
    c->time_embed_dim = 4 * c->block_out[0];
    const st_tensor *le = st_find(&p->f, PU "label_emb.0.0.weight");
    if (part_config(p, pt, p->kind == SF_SDXL ? DEF_UNET_SDXL : DEF_UNET_SD15)) return -1;
    json_t *cf = pt->config;
    if (le) {
        if (p->kind != SF_SDXL)
            return mapo_error("%s: the UNet has label_emb (SDXL's add_embedding) but the text "
                              "encoder is SD 1.5's", p->path);
        if (le->ndim != 2) return mapo_error("%s: label_emb.0.0.weight is not a matrix", p->path);
        c->text_time = 1;
        c->proj_class_dim = (int)le->shape[1];
        int64_t rest = le->shape[1] - p->proj_dim;
        if (p->proj_dim <= 0 || rest <= 0 || rest % 6)
            return mapo_error("%s: label_emb input width %lld is not text_encoder_2's projection "
                              "width %d + 6 x the time-id embedding width", p->path,
                              (long long)le->shape[1], p->proj_dim);
        c->add_time_dim = (int)(rest / 6);
    } else if (p->kind == SF_SDXL) {
        return mapo_error("%s: an SDXL checkpoint without " PU "label_emb.0.0.weight (the "
                          "UNet's add_embedding)", p->path);
    }
    for (int i = 0; i < n; i++)
        if (unet_heads(p, cf, i, n, c->block_out[i], &c->heads[i])) return -1;
    /* the config: the folder's, with every value the tensors decide */
    const char *dt[UNET_MAX_BLOCKS], *ut[UNET_MAX_BLOCKS];
    for (int i = 0; i < n; i++) {
        dt[i] = c->down_cross[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        ut[i] = c->up_cross[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    set_int(cf, "in_channels", c->in_channels);
    set_int(cf, "out_channels", c->out_channels);
    set_list(cf, "block_out_channels", c->block_out, n, 0);
    set_strs(cf, "down_block_types", dt, n);
    set_strs(cf, "up_block_types", ut, n);
    set_list(cf, "layers_per_block", c->layers, n, 1);
    set_list(cf, "transformer_layers_per_block", c->tlayers, n, 1);
    set_list(cf, "attention_head_dim", c->heads, n, 1);
    set_int(cf, "cross_attention_dim", c->cross_dim);
    set_bool(cf, "use_linear_projection", c->linear_proj, 0);
    if (c->text_time) {
        json_t *a = json_object_get(cf, "addition_embed_type");
        if (!json_is_string(a) || strcmp(json_string_value(a), "text_time"))
            json_object_set_new(cf, "addition_embed_type", json_string("text_time"));
        set_int(cf, "addition_time_embed_dim", c->add_time_dim);
        set_int(cf, "projection_class_embeddings_input_dim", c->proj_class_dim);
    }
    /* the parameters: exactly the table unet_load_dir will fill */
    unet u;
    c->json = NULL;
    unet_build(&u, c);
    int rc = 0;
    for (int i = 0; i < u.params.n && !rc; i++) {
        const param_info *q = &u.params.p[i];
        char l[600];
        if (unet_ldm_name(c, q->name, l, sizeof l))
            rc = mapo_error("internal: no original name for UNet parameter %s", q->name);
        else
            rc = add(p, pt, OP_COPY, q->name, l, q->ndim, q->shape, 0);
    }
    u.cfg.json = NULL;
    unet_free(&u);
    return rc;
}

/* ------------------------------------------------------------------ VAE */
static int vae_resnet(sf_plan *p, sf_part *pt, const char *d, const char *l, int ci, int co) {
    static const char *const nm[][2] = {{"norm1", "norm1"}, {"conv1", "conv1"},
                                        {"norm2", "norm2"}, {"conv2", "conv2"},
                                        {"conv_shortcut", "nin_shortcut"}};
    char a[300], b[300];
    for (int i = 0; i < 5; i++) {
        snprintf(a, sizeof a, "%s.%s", d, nm[i][0]);
        snprintf(b, sizeof b, "%s.%s", l, nm[i][1]);
        int rc = i == 0 ? vec(p, pt, a, b, ci)
                 : i == 1 ? conv(p, pt, a, b, co, ci, 3)
                 : i == 2 ? vec(p, pt, a, b, co)
                 : i == 3 ? conv(p, pt, a, b, co, co, 3)
                 : ci != co ? conv(p, pt, a, b, co, ci, 1)
                            : 0;
        if (rc) return -1;
    }
    return 0;
}

static int vae_mid(sf_plan *p, sf_part *pt, const char *part, int C) {
    char a[200], b[200];
    snprintf(a, sizeof a, "%s.mid_block.resnets.0", part);
    snprintf(b, sizeof b, PV "%s.mid.block_1", part);
    if (vae_resnet(p, pt, a, b, C, C)) return -1;
    if (p->vae_mid_attn) {
        static const char *const nm[][2] = {
            {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};
        snprintf(a, sizeof a, "%s.mid_block.attentions.0.group_norm", part);
        snprintf(b, sizeof b, PV "%s.mid.attn_1.norm", part);
        if (vec(p, pt, a, b, C)) return -1;
        for (int i = 0; i < 4; i++) {
            snprintf(a, sizeof a, "%s.mid_block.attentions.0.%s", part, nm[i][0]);
            snprintf(b, sizeof b, PV "%s.mid.attn_1.%s", part, nm[i][1]);
            if (lin(p, pt, OP_CONV1, a, b, C, C)) return -1;
        }
    }
    snprintf(a, sizeof a, "%s.mid_block.resnets.1", part);
    snprintf(b, sizeof b, PV "%s.mid.block_2", part);
    return vae_resnet(p, pt, a, b, C, C);
}

static int plan_vae(sf_plan *p) {
    sf_part *pt = new_part(p, "vae", "diffusion_pytorch_model.safetensors", "VAE");
    const st_tensor *ci = need(p, PV "encoder.conv_in.weight", 4, "VAE");
    const st_tensor *dci = ci ? need(p, PV "decoder.conv_in.weight", 4, "VAE") : NULL;
    const st_tensor *dco = dci ? need(p, PV "decoder.conv_out.weight", 4, "VAE") : NULL;
    if (!dco) return -1;
    int n = 0, L = 0;
    const st_tensor *r;
    while (n < 8 && (r = fnd(p, PV "encoder.down.%d.block.0.conv1.weight", n)))
        p->vae_block_out[n++] = (int)r->shape[0];
    while (L < 64 && fnd(p, PV "encoder.down.0.block.%d.conv1.weight", L)) L++;
    if (!n || !L)
        return mapo_error("%s: tensor '" PV "encoder.down.0.block.0.conv1.weight' is missing "
                          "(the VAE needs it)", p->path);
    p->vae_n = n;
    p->vae_layers = L;
    const int in = (int)ci->shape[1], lat = (int)dci->shape[1], out = (int)dco->shape[0];
    const int top = p->vae_block_out[n - 1];
    p->vae_latent = lat;
    p->vae_mid_attn = fnd(p, PV "encoder.mid.attn_1.q.weight") != NULL;
    int quant = fnd(p, PV "quant_conv.weight") != NULL;
    int post = fnd(p, PV "post_quant_conv.weight") != NULL;
    if (part_config(p, pt, p->kind == SF_SDXL ? DEF_VAE_SDXL : DEF_VAE_SD15)) return -1;
    json_t *cf = pt->config;
    const char *dt[8], *ut[8];
    for (int i = 0; i < n; i++) {
        dt[i] = "DownEncoderBlock2D";
        ut[i] = "UpDecoderBlock2D";
    }
    set_int(cf, "in_channels", in);
    set_int(cf, "out_channels", out);
    set_list(cf, "block_out_channels", p->vae_block_out, n, 0);
    set_strs(cf, "down_block_types", dt, n);
    set_strs(cf, "up_block_types", ut, n);
    set_int(cf, "layers_per_block", L);
    set_int(cf, "latent_channels", lat);
    set_bool(cf, "use_quant_conv", quant, 1);
    set_bool(cf, "use_post_quant_conv", post, 1);
    set_bool(cf, "mid_block_add_attention", p->vae_mid_attn, 1);
    /* the parameters, as vae.c registers them */
    char a[200], b[200];
    if (conv(p, pt, "encoder.conv_in", PV "encoder.conv_in", p->vae_block_out[0], in, 3))
        return -1;
    int o = p->vae_block_out[0];
    for (int i = 0; i < n; i++) {
        int prev = o;
        o = p->vae_block_out[i];
        for (int j = 0; j < L; j++) {
            snprintf(a, sizeof a, "encoder.down_blocks.%d.resnets.%d", i, j);
            snprintf(b, sizeof b, PV "encoder.down.%d.block.%d", i, j);
            if (vae_resnet(p, pt, a, b, j ? o : prev, o)) return -1;
        }
        if (i < n - 1) {
            snprintf(a, sizeof a, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            snprintf(b, sizeof b, PV "encoder.down.%d.downsample.conv", i);
            if (conv(p, pt, a, b, o, o, 3)) return -1;
        }
    }
    if (vae_mid(p, pt, "encoder", top) ||
        vec(p, pt, "encoder.conv_norm_out", PV "encoder.norm_out", top) ||
        conv(p, pt, "encoder.conv_out", PV "encoder.conv_out", 2 * lat, top, 3) ||
        (quant && conv(p, pt, "quant_conv", PV "quant_conv", 2 * lat, 2 * lat, 1)) ||
        (post && conv(p, pt, "post_quant_conv", PV "post_quant_conv", lat, lat, 1)) ||
        conv(p, pt, "decoder.conv_in", PV "decoder.conv_in", top, lat, 3) ||
        vae_mid(p, pt, "decoder", top))
        return -1;
    o = top;
    for (int i = 0; i < n; i++) {
        int prev = o, lvl = n - 1 - i; /* decoder.up_blocks.i is the original decoder.up.(n-1-i) */
        o = p->vae_block_out[lvl];
        for (int j = 0; j < L + 1; j++) {
            snprintf(a, sizeof a, "decoder.up_blocks.%d.resnets.%d", i, j);
            snprintf(b, sizeof b, PV "decoder.up.%d.block.%d", lvl, j);
            if (vae_resnet(p, pt, a, b, j ? o : prev, o)) return -1;
        }
        if (i < n - 1) {
            snprintf(a, sizeof a, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            snprintf(b, sizeof b, PV "decoder.up.%d.upsample.conv", lvl);
            if (conv(p, pt, a, b, o, o, 3)) return -1;
        }
    }
    return vec(p, pt, "decoder.conv_norm_out", PV "decoder.norm_out", p->vae_block_out[0]) ||
                   conv(p, pt, "decoder.conv_out", PV "decoder.conv_out", out,
                        p->vae_block_out[0], 3)
               ? -1
               : 0;
}

/* ------------------------------------------------------------------ text encoders */
/* the config of a text encoder from its shapes; heads from the folder when the width agrees */
static int clip_config(sf_plan *p, json_t *cf, int V, int D, int P, int L, int FF, int proj,
                       const char *what) {
    int heads = (int)jint(cf, "num_attention_heads", 0);
    if (jint(cf, "hidden_size", -1) != D || heads < 1 || D % heads) heads = D % 64 ? 0 : D / 64;
    if (heads < 1)
        return mapo_error("%s: cannot tell the attention heads of %s (width %d): give "
                          "--config_dir with its config.json", p->path, what, D);
    const char *arch = proj ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    set_strs(cf, "architectures", &arch, 1);
    set_int(cf, "vocab_size", V);
    set_int(cf, "hidden_size", D);
    set_int(cf, "intermediate_size", FF);
    set_int(cf, "num_hidden_layers", L);
    set_int(cf, "num_attention_heads", heads);
    set_int(cf, "max_position_embeddings", P);
    if (proj) set_int(cf, "projection_dim", proj);
    return 0;
}

/* CLIP ViT-L in the transformers layout under pre (text_model. or, in old files, without) */
static int plan_clip_l(sf_plan *p, const char *pre, const char *sub) {
    sf_part *pt = new_part(p, sub, "model.safetensors", "CLIP text encoder");
    char tm[128], a[300], b[300];
    snprintf(tm, sizeof tm, "%stext_model.", pre);
    if (!fnd(p, "%sembeddings.token_embedding.weight", tm)) snprintf(tm, sizeof tm, "%s", pre);
    snprintf(a, sizeof a, "%sembeddings.token_embedding.weight", tm);
    const st_tensor *tok = need(p, a, 2, "CLIP text encoder");
    snprintf(a, sizeof a, "%sembeddings.position_embedding.weight", tm);
    const st_tensor *pos = tok ? need(p, a, 2, "CLIP text encoder") : NULL;
    snprintf(a, sizeof a, "%sencoder.layers.0.mlp.fc1.weight", tm);
    const st_tensor *fc = pos ? need(p, a, 2, "CLIP text encoder") : NULL;
    if (!fc) return -1;
    const int V = (int)tok->shape[0], D = (int)tok->shape[1], P = (int)pos->shape[0];
    const int FF = (int)fc->shape[0];
    int L = 0;
    while (L < 4096 && fnd(p, "%sencoder.layers.%d.layer_norm1.weight", tm, L)) L++;
    if (part_config(p, pt, DEF_CLIP_L) ||
        clip_config(p, pt->config, V, D, P, L, FF, 0, "the CLIP text encoder"))
        return -1;
    const int64_t ts[2] = {V, D}, ps[2] = {P, D};
    snprintf(b, sizeof b, "%sembeddings.token_embedding.weight", tm);
    if (add(p, pt, OP_COPY, "text_model.embeddings.token_embedding.weight", b, 2, ts, 0))
        return -1;
    snprintf(b, sizeof b, "%sembeddings.position_embedding.weight", tm);
    if (add(p, pt, OP_COPY, "text_model.embeddings.position_embedding.weight", b, 2, ps, 0))
        return -1;
    for (int l = 0; l < L; l++) {
        static const char *const nm[] = {"self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.out_proj"};
        char d2[200], l2[300];
        for (int k = 0; k < 2; k++) {
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.layer_norm%d", l, k + 1);
            snprintf(l2, sizeof l2, "%sencoder.layers.%d.layer_norm%d", tm, l, k + 1);
            if (vec(p, pt, d2, l2, D)) return -1;
        }
        for (int k = 0; k < 4; k++) {
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.%s", l, nm[k]);
            snprintf(l2, sizeof l2, "%sencoder.layers.%d.%s", tm, l, nm[k]);
            if (lin(p, pt, OP_COPY, d2, l2, D, D)) return -1;
        }
        snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.mlp.fc1", l);
        snprintf(l2, sizeof l2, "%sencoder.layers.%d.mlp.fc1", tm, l);
        if (lin(p, pt, OP_COPY, d2, l2, FF, D)) return -1;
        snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.mlp.fc2", l);
        snprintf(l2, sizeof l2, "%sencoder.layers.%d.mlp.fc2", tm, l);
        if (lin(p, pt, OP_COPY, d2, l2, D, FF)) return -1;
    }
    snprintf(b, sizeof b, "%sfinal_layer_norm", tm);
    if (vec(p, pt, "text_model.final_layer_norm", b, D)) return -1;
    const st_tensor *pid = fnd(p, "%sembeddings.position_ids", tm);
    if (pid) p->used[pid - p->f.tensors] = 1; /* a buffer, not a parameter */
    return 0;
}

/* OpenCLIP ViT-bigG (open_clip's TextTransformer layout) under PTG */
static int plan_open_clip(sf_plan *p) {
    sf_part *pt = new_part(p, "text_encoder_2", "model.safetensors", "OpenCLIP text encoder");
    const char *w = "OpenCLIP text encoder";
    const st_tensor *tok = need(p, PTG "token_embedding.weight", 2, w);
    const st_tensor *pos = tok ? need(p, PTG "positional_embedding", 2, w) : NULL;
    const st_tensor *fc = pos ? need(p, PTG "transformer.resblocks.0.mlp.c_fc.weight", 2, w) : NULL;
    /* open_clip's [D, P] parameter, or (some re-saved files) a linear layer's [P, D] weight */
    const int lin_proj = !st_find(&p->f, PTG "text_projection") &&
                         st_find(&p->f, PTG "text_projection.weight");
    const char *pjn = lin_proj ? PTG "text_projection.weight" : PTG "text_projection";
    const st_tensor *pj = fc ? need(p, pjn, 2, w) : NULL;
    if (!pj) return -1;
    const int V = (int)tok->shape[0], D = (int)tok->shape[1], P = (int)pos->shape[0];
    const int FF = (int)fc->shape[0], PJ = (int)pj->shape[lin_proj ? 0 : 1];
    int L = 0;
    while (L < 4096 && fnd(p, PTG "transformer.resblocks.%d.ln_1.weight", L)) L++;
    if (part_config(p, pt, DEF_CLIP_G) ||
        clip_config(p, pt->config, V, D, P, L, FF, PJ, "the OpenCLIP text encoder"))
        return -1;
    const int64_t ts[2] = {V, D}, ps[2] = {P, D}, js[2] = {PJ, D}, dd[2] = {D, D};
    const int64_t d1 = D;
    if (add(p, pt, OP_COPY, "text_model.embeddings.token_embedding.weight",
            PTG "token_embedding.weight", 2, ts, 0) ||
        add(p, pt, OP_COPY, "text_model.embeddings.position_embedding.weight",
            PTG "positional_embedding", 2, ps, 0))
        return -1;
    for (int l = 0; l < L; l++) {
        char d2[200], l2[200];
        static const char *const qkv[] = {"q_proj", "k_proj", "v_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.self_attn.%s.weight", l, qkv[k]);
            snprintf(l2, sizeof l2, PTG "transformer.resblocks.%d.attn.in_proj_weight", l);
            if (add(p, pt, OP_ROWS, d2, l2, 2, dd, (int64_t)k * D)) return -1;
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.self_attn.%s.bias", l, qkv[k]);
            snprintf(l2, sizeof l2, PTG "transformer.resblocks.%d.attn.in_proj_bias", l);
            if (add(p, pt, OP_ROWS, d2, l2, 1, &d1, (int64_t)k * D)) return -1;
        }
        static const char *const nm[][2] = {{"self_attn.out_proj", "attn.out_proj"},
                                            {"mlp.fc1", "mlp.c_fc"}, {"mlp.fc2", "mlp.c_proj"}};
        for (int k = 0; k < 3; k++) {
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.%s", l, nm[k][0]);
            snprintf(l2, sizeof l2, PTG "transformer.resblocks.%d.%s", l, nm[k][1]);
            if (lin(p, pt, OP_COPY, d2, l2, k == 1 ? FF : D, k == 2 ? FF : D)) return -1;
        }
        for (int k = 0; k < 2; k++) {
            snprintf(d2, sizeof d2, "text_model.encoder.layers.%d.layer_norm%d", l, k + 1);
            snprintf(l2, sizeof l2, PTG "transformer.resblocks.%d.ln_%d", l, k + 1);
            if (vec(p, pt, d2, l2, D)) return -1;
        }
    }
    if (vec(p, pt, "text_model.final_layer_norm", PTG "ln_final", D) ||
        add(p, pt, lin_proj ? OP_COPY : OP_T, "text_projection.weight", pjn, 2, js, 0))
        return -1;
    static const char *const ignore[] = {PTG "logit_scale", PTG "attn_mask"};
    for (int i = 0; i < 2; i++) {
        const st_tensor *t = st_find(&p->f, ignore[i]);
        if (t) p->used[t - p->f.tensors] = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the config folder */
/* the Hub cache snapshot of repo ("org/name") as huggingface_hub lays it out, or "" */
static void hub_snapshot(const char *repo, char *out, size_t n) {
    out[0] = 0;
    char root[2048];
    const char *e;
    if ((e = getenv("HF_HUB_CACHE")) && *e) snprintf(root, sizeof root, "%s", e);
    else if ((e = getenv("HF_HOME")) && *e) snprintf(root, sizeof root, "%s/hub", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && *e)
        snprintf(root, sizeof root, "%s/huggingface/hub", e);
    else if ((e = getenv("HOME")) && *e) snprintf(root, sizeof root, "%s/.cache/huggingface/hub", e);
    else return;
    char d[2400], q[2600], rev[128] = "";
    size_t k = (size_t)snprintf(d, sizeof d, "%s/models--", root);
    for (const char *s = repo; *s && k + 3 < sizeof d; s++) { /* org/name -> org--name */
        if (*s == '/') d[k++] = '-';
        d[k++] = *s == '/' ? '-' : *s;
    }
    d[k] = 0;
    snprintf(q, sizeof q, "%s/refs/main", d);
    FILE *f = fopen(q, "r");
    if (f) {
        if (!fgets(rev, sizeof rev, f)) rev[0] = 0;
        fclose(f);
        rev[strcspn(rev, " \r\n")] = 0;
    }
    if (!rev[0] || strchr(rev, '/')) return;
    snprintf(q, sizeof q, "%s/snapshots/%s", d, rev);
    char s[2800];
    snprintf(s, sizeof s, "%s/scheduler/scheduler_config.json", q);
    if (mapo_is_file(s)) snprintf(out, n, "%s", q);
}

static int find_config(sf_plan *p, const char *given) {
    const char *repo = p->kind == SF_SDXL ? "stabilityai/stable-diffusion-xl-base-1.0"
                                          : "stable-diffusion-v1-5/stable-diffusion-v1-5";
    if (given) {
        if (strlen(given) > 3000) return mapo_error("--config_dir: path too long");
        if (!mapo_is_dir(given)) return mapo_error("%s: no such folder (--config_dir)", given);
        snprintf(p->cfg, sizeof p->cfg, "%s", given);
    } else {
        hub_snapshot(repo, p->cfg, sizeof p->cfg);
        if (!p->cfg[0])
            return mapo_error("%s: a single-file checkpoint holds no tokenizer or scheduler: give "
                              "--config_dir with a diffusers %s pipeline folder (weights not "
                              "needed; e.g. a download of %s), as diffusers' from_single_file "
                              "needs config=... offline", p->path, kind_name(p->kind), repo);
        mapo_log(1, "%s: tokenizers, scheduler and configs from the Hub cache of %s (%s)\n",
                 p->path, repo, p->cfg);
    }
    char q[4300];
    snprintf(q, sizeof q, "%s/tokenizer_2", p->cfg);
    int has2 = mapo_is_dir(q);
    snprintf(q, sizeof q, "%s/text_encoder_2", p->cfg);
    has2 |= mapo_is_dir(q);
    if (p->kind == SF_SD15 && has2)
        return mapo_error("%s: an SDXL pipeline folder (tokenizer_2/ or text_encoder_2/), but "
                          "%s is an SD 1.5 checkpoint", p->cfg, p->path);
    snprintf(q, sizeof q, "%s/tokenizer_2", p->cfg);
    if (p->kind == SF_SDXL && !mapo_is_dir(q))
        return mapo_error("%s: no tokenizer_2/ (an SD 1.5 pipeline folder?), but %s is an SDXL "
                          "checkpoint", p->cfg, p->path);
    snprintf(q, sizeof q, "%s/tokenizer", p->cfg);
    if (!mapo_is_dir(q))
        return mapo_error("%s: no tokenizer/ folder: the config folder must be a diffusers "
                          "pipeline folder (a single file holds no tokenizer)", p->cfg);
    snprintf(q, sizeof q, "%s/scheduler/scheduler_config.json", p->cfg);
    if (!mapo_is_file(q))
        return mapo_error("%s: no scheduler/scheduler_config.json: the config folder must be a "
                          "diffusers pipeline folder", p->cfg);
    return 0;
}

/* ------------------------------------------------------------------ plan */
static void plan_free(sf_plan *p) {
    for (int i = 0; i < p->n_part; i++) {
        sf_part *pt = &p->part[i];
        for (int k = 0; k < pt->n; k++) free(pt->t[k].name);
        free(pt->t);
        json_decref(pt->config);
        json_decref(pt->orig);
    }
    if (p->open) st_close(&p->f);
    free(p->used);
    memset(p, 0, sizeof *p);
}

/* the kind from the keys, or SF_NONE; *why explains a refusal (static text) */
static sf_kind detect(const st_file *f, const char **why) {
    *why = NULL;
    int u = st_find(f, PU "input_blocks.0.0.weight") != NULL;
    int v = any_prefix(f, PV), t15 = any_prefix(f, PT15), tl = any_prefix(f, PTL);
    int tg = any_prefix(f, PTG), sd2 = any_prefix(f, "cond_stage_model.model.");
    int ref = any_prefix(f, "conditioner.embedders.0.model.");
    if (!u && !v && !t15 && !tl && !tg && !sd2 && !ref) {
        *why = st_find(f, "conv_in.weight")
                   ? "not a single-file checkpoint: it holds a diffusers UNet (conv_in.weight); "
                     "give its pipeline folder instead"
                   : "not a single-file Stable Diffusion checkpoint: no model.diffusion_model.* "
                     "(UNet), first_stage_model.* (VAE) or text-encoder tensors";
        return SF_NONE;
    }
    if (sd2) {
        *why = "an SD 2.x checkpoint (OpenCLIP-H text encoder, cond_stage_model.model.*): only "
               "SD 1.5 and SDXL single files are supported";
        return SF_NONE;
    }
    if (ref && !tl) {
        *why = "an SDXL refiner checkpoint (conditioner.embedders.0.model.*): only SDXL base "
               "and SD 1.5 single files are supported";
        return SF_NONE;
    }
    sf_kind k = (tl || tg || st_find(f, PU "label_emb.0.0.weight")) ? SF_SDXL : SF_SD15;
    if (!u) *why = "missing part: no UNet (" PU "input_blocks.0.0.weight)";
    else if (!v) *why = "missing part: no VAE (first_stage_model.*); mapo needs the UNet, the VAE "
                        "and the text encoder(s) in the file";
    else if (k == SF_SD15 && !t15)
        *why = "missing part: no text encoder (cond_stage_model.transformer.* for SD 1.5, "
               "conditioner.embedders.* for SDXL)";
    else if (k == SF_SDXL && !tl)
        *why = "missing part: an SDXL checkpoint without its CLIP ViT-L text encoder "
               "(conditioner.embedders.0.transformer.*)";
    else if (k == SF_SDXL && !tg)
        *why = "missing part: an SDXL checkpoint without its OpenCLIP ViT-bigG text encoder "
               "(conditioner.embedders.1.model.*)";
    else if (k == SF_SDXL && t15)
        *why = "both SD 1.5 (cond_stage_model.*) and SDXL (conditioner.*) text encoders";
    return *why ? SF_NONE : k;
}

static int is_safetensors_name(const char *path) {
    size_t n = strlen(path);
    return n > 12 && !strcmp(path + n - 12, ".safetensors");
}

sf_kind single_file_probe(const char *path) {
    if (!mapo_is_file(path)) return SF_NONE;
    st_file f;
    if (st_open(&f, path)) return SF_NONE;
    const char *why;
    sf_kind k = detect(&f, &why);
    if (k == SF_NONE && why && st_find(&f, PU "input_blocks.0.0.weight"))
        k = any_prefix(&f, "conditioner.") ? SF_SDXL : SF_SD15; /* refused later, with a reason */
    st_close(&f);
    return k;
}

static int plan(sf_plan *p, const char *path, const char *config_dir) {
    memset(p, 0, sizeof *p);
    p->path = path;
    if (!mapo_is_file(path))
        return mapo_error("%s: %s", path, mapo_is_dir(path) ? "a folder, not a single-file "
                                                              "checkpoint"
                                                            : "no such file");
    if (!is_safetensors_name(path))
        return mapo_error("%s: a file where a model folder is expected; the only model files "
                          "read are .safetensors single-file checkpoints (.ckpt / .pt are Python "
                          "pickles, which can run code when loaded)", path);
    if (st_open(&p->f, path)) return -1;
    p->open = 1;
    p->used = xcalloc(p->f.n ? p->f.n : 1, 1);
    const char *why;
    p->kind = detect(&p->f, &why);
    if (p->kind == SF_NONE) return mapo_error("%s: %s", path, why);
    const st_tensor *ci = st_find(&p->f, PU "input_blocks.0.0.weight");
    const st_tensor *dci = st_find(&p->f, PV "decoder.conv_in.weight");
    if (ci->ndim == 4 && dci && dci->ndim == 4 && ci->shape[1] != dci->shape[1])
        return mapo_error("%s: UNet in_channels %lld != VAE latent channels %lld: an %s "
                          "checkpoint, not supported", path, (long long)ci->shape[1],
                          (long long)dci->shape[1],
                          ci->shape[1] == 9 ? "inpainting" : ci->shape[1] == 8
                                                                 ? "instruct-pix2pix"
                                                                 : "unusual");
    p->v_pred = st_find(&p->f, "v_pred") != NULL;
    p->ztsnr = st_find(&p->f, "ztsnr") != NULL;
    if (find_config(p, config_dir)) return -1;
    if (p->kind == SF_SDXL) {
        const st_tensor *pj = st_find(&p->f, PTG "text_projection");
        const st_tensor *pw = st_find(&p->f, PTG "text_projection.weight");
        p->proj_dim = pj && pj->ndim == 2 ? (int)pj->shape[1]
                      : pw && pw->ndim == 2 ? (int)pw->shape[0] : 0;
    }
    if (plan_unet(p) || plan_vae(p)) return -1;
    if (p->kind == SF_SD15 ? plan_clip_l(p, PT15, "text_encoder")
                           : plan_clip_l(p, PTL, "text_encoder") || plan_open_clip(p))
        return -1;
    /* nothing under a part's prefix may be left over */
    static const char *const parts[] = {PU, PV, PT15, PTL, PTG};
    int other = 0, ema = 0;
    for (int i = 0; i < p->f.n; i++) {
        if (p->used[i]) continue;
        const char *nm = p->f.tensors[i].name;
        int mine = 0;
        for (size_t k = 0; k < sizeof parts / sizeof *parts; k++)
            mine |= !strncmp(nm, parts[k], strlen(parts[k]));
        if (mine && !strncmp(nm, PV "loss.", strlen(PV "loss."))) mine = 0; /* training loss */
        if (mine)
            return mapo_error("%s: unexpected tensor '%s' (not a parameter of the %s model its "
                              "other tensors describe)", path, nm, kind_name(p->kind));
        if (!strncmp(nm, "model_ema.", 10)) ema++;
        else other++;
    }
    if (ema)
        mapo_log(1, "%s: ignoring %d EMA tensors (model_ema.*): the non-EMA weights are used, as "
                    "diffusers does by default\n", path, ema);
    if (other) mapo_log(2, "%s: ignoring %d other tensors (buffers, markers)\n", path, other);
    return 0;
}

/* ------------------------------------------------------------------ writing */
static void rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char q[4600];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(q, sizeof q, "%s/%s", path, e->d_name);
            rm_rf(q);
        }
        closedir(d);
    }
    rmdir(path);
}

/* out.tmp.<pid> left by killed conversions (their process is gone) */
static void remove_stale(const char *out) {
    char parent[4200];
    const char *slash = strrchr(out, '/'), *base = slash ? slash + 1 : out;
    if (!slash) snprintf(parent, sizeof parent, ".");
    else if (slash == out) snprintf(parent, sizeof parent, "/");
    else snprintf(parent, sizeof parent, "%.*s", (int)(slash - out), out);
    size_t bl = strlen(base);
    DIR *d = opendir(parent);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        if (strncmp(s, base, bl) || strncmp(s + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(s + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* still running */
        char q[4600];
        snprintf(q, sizeof q, "%s/%s", parent, s);
        rm_rf(q);
    }
    closedir(d);
}

static int write_json(json_t *j, const char *path) {
    char *s = json_dumps(j, JSON_INDENT(2));
    if (!s) return mapo_error("%s: cannot serialise", path);
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    s[n] = '\n';
    int rc = mapo_write_file_atomic(path, s, n + 1);
    free(s);
    return rc;
}

static int copy_file(const char *src, const char *dst) {
    FILE *f = fopen(src, "rb");
    if (!f) return mapo_error("%s: cannot open: %s", src, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || st.st_size > ((off_t)256 << 20)) {
        fclose(f);
        return mapo_error("%s: cannot stat, or larger than 256 MiB", src);
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    int rc = got != (size_t)st.st_size ? mapo_error("%s: short read", src)
                                       : mapo_write_file_atomic(dst, buf, got);
    free(buf);
    return rc;
}

/* the regular files of src (links followed: Hub snapshots are links into blobs/) into dst */
static int copy_dir(const char *src, const char *dst) {
    if (mkdir(dst, 0755)) return mapo_error("%s: cannot create folder: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return mapo_error("%s: cannot open folder: %s", src, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char a[4800], b[4800];
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        if (mapo_is_file(a)) rc = copy_file(a, b);
    }
    closedir(d);
    return rc;
}

/* the dtype tensor o is written in: its own (store < 0), else store */
static st_dtype out_dtype(const sf_out *o, int store) {
    return store < 0 ? o->src->dtype : (st_dtype)store;
}

/* n values of dtype `from` at src (contiguous, maybe unaligned) into tensor i as `to`, through
   float32 in chunks: the loader's conversion (st_to_f32), then torch's rounding (st_from_f32).
   *n_inf counts finite values that became inf. */
static int put_converted(st_writer *w, int i, const unsigned char *src, st_dtype from,
                         st_dtype to, int64_t n, int64_t *n_inf) {
    enum { CHUNK = 1 << 16 };
    float *f = xmalloc(CHUNK * sizeof *f);
    uint16_t *h = to == ST_F32 ? NULL : xmalloc(CHUNK * sizeof *h);
    const size_t es = st_dtype_size(from), eo = st_dtype_size(to);
    int rc = 0;
    for (int64_t k = 0; k < n && !rc; k += CHUNK) {
        const int64_t m = n - k < CHUNK ? n - k : CHUNK;
        st_tensor t = {.dtype = from, .ndim = 1, .shape = {m}, .numel = m,
                       .nbytes = (size_t)m * es, .data = src + (size_t)k * es};
        st_to_f32(&t, f);
        if (from == ST_F64) /* the only source whose values can overflow float32 */
            for (int64_t j = 0; j < m; j++) {
                double d;
                memcpy(&d, src + (size_t)(k + j) * 8, 8);
                *n_inf += isinf(f[j]) && isfinite(d);
            }
        if (h) *n_inf += st_from_f32(to, f, h, m);
        rc = st_writer_put(w, i, (size_t)k * eo, h ? (const void *)h : (const void *)f,
                           (size_t)m * eo);
    }
    free(f);
    free(h);
    return rc;
}

/* store < 0: every tensor in its own dtype, byte for byte; else every tensor as store */
static int write_weights(const sf_part *pt, const char *path, int store, int64_t *n_inf) {
    st_writer *w = st_writer_new();
    for (int i = 0; i < pt->n; i++)
        st_writer_add_empty(w, pt->t[i].name, out_dtype(&pt->t[i], store), pt->t[i].ndim,
                            pt->t[i].shape);
    st_writer_meta(w, "format", "pt");
    int rc = st_writer_begin(w, path);
    for (int i = 0; i < pt->n && !rc; i++) {
        const sf_out *o = &pt->t[i];
        const st_tensor *s = o->src;
        const size_t es = st_dtype_size(s->dtype);
        size_t nb = es;
        for (int k = 0; k < o->ndim; k++) nb *= (size_t)o->shape[k];
        const unsigned char *data = s->data;
        unsigned char *buf = NULL;
        if (o->op == OP_ROWS) {
            data += (size_t)o->row0 * (nb / (size_t)o->shape[0]);
        } else if (o->op == OP_T) { /* out [P, D] from [D, P] */
            const int64_t P = o->shape[0], D = o->shape[1];
            buf = xmalloc(nb);
            for (int64_t r = 0; r < P; r++)
                for (int64_t c = 0; c < D; c++)
                    memcpy(buf + (size_t)(r * D + c) * es, data + (size_t)(c * P + r) * es, es);
            data = buf;
        } /* OP_COPY, OP_CONV1: the bytes as they are */
        const st_dtype to = out_dtype(o, store);
        rc = to == s->dtype ? st_writer_put(w, i, 0, data, nb)
                            : put_converted(w, i, data, s->dtype, to, (int64_t)(nb / es), n_inf);
        free(buf);
    }
    if (!rc) rc = st_writer_commit(w);
    st_writer_free(w);
    return rc;
}

/* model_index.json: the config folder's (optional parts set to none), or the standard one */
static int write_model_index(const sf_plan *p, const char *tmp) {
    char src[4300], dst[4300];
    snprintf(src, sizeof src, "%s/model_index.json", p->cfg);
    snprintf(dst, sizeof dst, "%s/model_index.json", tmp);
    json_error_t e;
    json_t *mi = mapo_is_file(src) ? json_load_file(src, JSON_REJECT_DUPLICATES, &e) : NULL;
    if (mapo_is_file(src) && !json_is_object(mi)) {
        json_decref(mi);
        return mapo_error("%s: cannot read: %s", src, mi ? "not a JSON object" : e.text);
    }
    int changed = 0;
    if (!mi) {
        changed = 1;
        mi = json_object();
        json_object_set_new(mi, "_class_name", json_string(p->kind == SF_SDXL
                                                               ? "StableDiffusionXLPipeline"
                                                               : "StableDiffusionPipeline"));
        char sp[4300];
        snprintf(sp, sizeof sp, "%s/scheduler/scheduler_config.json", p->cfg);
        json_t *sc = json_load_file(sp, 0, &e);
        json_t *cn = json_object_get(sc, "_class_name");
        json_object_set_new(mi, "scheduler",
                            json_pack("[s,s]", "diffusers",
                                      json_is_string(cn) ? json_string_value(cn) : "DDIMScheduler"));
        json_decref(sc);
        json_object_set_new(mi, "text_encoder", json_pack("[s,s]", "transformers", "CLIPTextModel"));
        json_object_set_new(mi, "tokenizer", json_pack("[s,s]", "transformers", "CLIPTokenizer"));
        if (p->kind == SF_SDXL) {
            json_object_set_new(mi, "text_encoder_2", json_pack("[s,s]", "transformers",
                                                                "CLIPTextModelWithProjection"));
            json_object_set_new(mi, "tokenizer_2",
                                json_pack("[s,s]", "transformers", "CLIPTokenizer"));
            json_object_set_new(mi, "force_zeros_for_empty_prompt", json_true());
        } else {
            json_object_set_new(mi, "requires_safety_checker", json_false());
        }
        json_object_set_new(mi, "unet", json_pack("[s,s]", "diffusers", "UNet2DConditionModel"));
        json_object_set_new(mi, "vae", json_pack("[s,s]", "diffusers", "AutoencoderKL"));
        json_object_set_new(mi, "feature_extractor", json_pack("[nn]"));
        json_object_set_new(mi, "image_encoder", json_pack("[nn]"));
        if (p->kind == SF_SD15) json_object_set_new(mi, "safety_checker", json_pack("[nn]"));
    }
    static const char *const none[] = {"safety_checker", "feature_extractor", "image_encoder"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(mi, none[i]);
        if (!v || (json_is_array(v) && json_array_size(v) == 2 &&
                   json_is_null(json_array_get(v, 0))))
            continue;
        json_object_set_new(mi, none[i], json_pack("[nn]"));
        changed = 1;
    }
    json_t *rs = json_object_get(mi, "requires_safety_checker");
    if (json_is_true(rs)) {
        json_object_set_new(mi, "requires_safety_checker", json_false());
        changed = 1;
    }
    int rc = changed ? write_json(mi, dst) : copy_file(src, dst);
    json_decref(mi);
    return rc;
}

static int write_scheduler(const sf_plan *p, const char *tmp) {
    char src[4300], dst[4300];
    snprintf(src, sizeof src, "%s/scheduler/scheduler_config.json", p->cfg);
    snprintf(dst, sizeof dst, "%s/scheduler", tmp);
    if (mkdir(dst, 0755)) return mapo_error("%s: cannot create folder: %s", dst, strerror(errno));
    strcat(dst, "/scheduler_config.json");
    if (!p->v_pred) return copy_file(src, dst);
    json_error_t e;
    json_t *j = json_load_file(src, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(j)) {
        json_decref(j);
        return mapo_error("%s: cannot read: %s", src, e.text);
    }
    json_object_set_new(j, "prediction_type", json_string("v_prediction"));
    if (p->ztsnr) json_object_set_new(j, "rescale_betas_zero_snr", json_true());
    mapo_log(1, "%s: a v-prediction checkpoint (its \"v_pred\" key%s): the scheduler gets "
                "prediction_type v_prediction%s\n", p->path, p->ztsnr ? " and \"ztsnr\"" : "",
             p->ztsnr ? " and rescale_betas_zero_snr" : "");
    int rc = write_json(j, dst);
    json_decref(j);
    return rc;
}

/* the written UNet config, read back by unet_config_load, must be the derived UNet */
static int verify_unet_config(const sf_plan *p, const char *path) {
    unet_config c;
    if (unet_config_load(&c, path))
        return mapo_error_prefix("%s: the UNet config (values from %s/unet/config.json) is not "
                                 "usable", p->path, p->cfg);
    const unet_config *d = &p->uc;
    int ok = c.n_blocks == d->n_blocks && c.in_channels == d->in_channels &&
             c.out_channels == d->out_channels && c.cross_dim == d->cross_dim &&
             c.linear_proj == d->linear_proj && c.text_time == d->text_time &&
             (!d->text_time ||
              (c.add_time_dim == d->add_time_dim && c.proj_class_dim == d->proj_class_dim));
    for (int i = 0; ok && i < d->n_blocks; i++)
        ok = c.block_out[i] == d->block_out[i] && c.layers[i] == d->layers[i] &&
             c.heads[i] == d->heads[i] && c.tlayers[i] == d->tlayers[i] &&
             c.down_cross[i] == d->down_cross[i] && c.up_cross[i] == d->up_cross[i];
    unet_config_free(&c);
    return ok ? 0 : mapo_error("internal: the written UNet config does not describe the UNet "
                               "derived from %s", p->path);
}

static int write_folder(const sf_plan *p, const char *tmp, int store, int64_t *n_inf) {
    if (mkdir(tmp, 0755)) return mapo_error("%s: cannot create folder: %s", tmp, strerror(errno));
    char q[4400], r[4400];
    for (int i = 0; i < p->n_part; i++) { /* configs first: checked before the weights */
        snprintf(q, sizeof q, "%s/%s", tmp, p->part[i].sub);
        if (mkdir(q, 0755)) return mapo_error("%s: cannot create folder: %s", q, strerror(errno));
        strcat(q, "/config.json");
        /* unchanged: the folder's file as it is (its number formatting included) */
        const sf_part *pt = &p->part[i];
        if (pt->orig && json_equal(pt->orig, pt->config) ? copy_file(pt->src, q)
                                                        : write_json(pt->config, q))
            return -1;
    }
    snprintf(q, sizeof q, "%s/unet/config.json", tmp);
    if (verify_unet_config(p, q)) return -1;
    int f;
    if (vae_config_downscale(tmp, &f))
        return mapo_error_prefix("%s: the VAE config (values from %s/vae/config.json) is not "
                                 "usable", p->path, p->cfg);
    for (int i = 0; i < p->n_part; i++) {
        snprintf(q, sizeof q, "%s/%s/%s", tmp, p->part[i].sub, p->part[i].weights);
        if (write_weights(&p->part[i], q, store, n_inf)) return -1;
    }
    for (int i = 0; i < (p->kind == SF_SDXL ? 2 : 1); i++) {
        const char *t = i ? "tokenizer_2" : "tokenizer";
        snprintf(q, sizeof q, "%s/%s", p->cfg, t);
        snprintf(r, sizeof r, "%s/%s", tmp, t);
        if (copy_dir(q, r)) return -1;
    }
    return write_scheduler(p, tmp) || write_model_index(p, tmp) ? -1 : 0;
}

static void fsync_parent(const char *path) {
    char d[4200];
    snprintf(d, sizeof d, "%s", path);
    char *s = strrchr(d, '/');
    if (s == d) s[1] = 0;
    else if (s) *s = 0;
    else snprintf(d, sizeof d, ".");
    int fd = open(d, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* an empty folder counts as absent (rename replaces it) */
static int absent_or_empty(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return errno == ENOENT;
    if (!S_ISDIR(st.st_mode)) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d))) empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

static int64_t plan_bytes(const sf_plan *p, int store, int *n) {
    int64_t b = 0;
    *n = 0;
    for (int i = 0; i < p->n_part; i++) {
        *n += p->part[i].n;
        for (int k = 0; k < p->part[i].n; k++) {
            int64_t e = (int64_t)st_dtype_size(out_dtype(&p->part[i].t[k], store));
            for (int d = 0; d < p->part[i].t[k].ndim; d++) e *= p->part[i].t[k].shape[d];
            b += e;
        }
    }
    return b;
}

/* convert a planned file into out (atomic), every tensor as store (< 0: its own dtype).
   1 = out appeared meanwhile (another process) */
static int convert_planned(sf_plan *p, const char *out, int quiet, int store) {
    if (strlen(out) > 3800) return mapo_error("%s: path too long", out);
    remove_stale(out);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    rm_rf(tmp);
    double t0 = mapo_now();
    int64_t n_inf = 0;
    int rc = write_folder(p, tmp, store, &n_inf);
    if (!rc && rename(tmp, out)) {
        if ((errno == ENOTEMPTY || errno == EEXIST) && mapo_is_dir(out)) rc = 1;
        else rc = mapo_error("%s: cannot rename to %s: %s", tmp, out, strerror(errno));
    }
    if (rc) {
        rm_rf(tmp);
        return rc;
    }
    fsync_parent(out);
    int n;
    int64_t b = plan_bytes(p, store, &n);
    if (!quiet)
        mapo_log(1, "converted %s (%s single file) -> %s%s%s: %d tensors, %.1f MiB, %.1f s\n",
                 p->path, kind_name(p->kind), out, store < 0 ? "" : " as ",
                 store < 0 ? "" : st_precision_name((st_dtype)store), n, (double)b / (1 << 20),
                 mapo_now() - t0);
    if (n_inf)
        mapo_log(1, "warning: %lld weight value(s) of %s are beyond %s's range and became inf, as "
                    "torch's conversion does (mapo refuses to load non-finite weights; bf16 or "
                    "float32 keeps them)\n", (long long)n_inf, out,
                 st_precision_name((st_dtype)store));
    return 0;
}

/* store < 0: every tensor in its own dtype */
static int convert_file(const char *path, const char *config_dir, const char *out_dir, int quiet,
                        int store) {
    if (!absent_or_empty(out_dir))
        return mapo_error("%s: already exists (mapo convert writes a new folder)", out_dir);
    sf_plan p;
    int rc = plan(&p, path, config_dir);
    if (!rc) {
        rc = convert_planned(&p, out_dir, quiet, store);
        if (rc == 1) rc = mapo_error("%s: appeared while converting", out_dir);
    }
    plan_free(&p);
    return rc;
}

int single_file_convert(const char *path, const char *config_dir, const char *out_dir,
                        int quiet) {
    return convert_file(path, config_dir, out_dir, quiet, -1);
}

int single_file_convert_as(const char *path, const char *config_dir, const char *out_dir,
                           int quiet, st_dtype store) {
    if (store != ST_F32 && store != ST_F16 && store != ST_BF16)
        return mapo_error("single-file conversion: the stored dtype must be F32, F16 or BF16, "
                          "not %s", st_dtype_name(store));
    return convert_file(path, config_dir, out_dir, quiet, (int)store);
}

/* ------------------------------------------------------------------ the cache */
static uint64_t fnv(uint64_t h, const void *buf, size_t n) {
    const unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t fnv_file(uint64_t h, const char *path, const char *name) {
    uint64_t x;
    if (file_fingerprint(path, &x)) return fnv(h, "-", 1);
    h = fnv(h, name, strlen(name));
    return fnv(h, &x, sizeof x);
}

/* every file the conversion reads from the config folder */
static uint64_t config_key(const sf_plan *p, uint64_t h) {
    static const char *const files[] = {"model_index.json", "scheduler/scheduler_config.json",
                                        "unet/config.json", "vae/config.json",
                                        "text_encoder/config.json", "text_encoder_2/config.json"};
    char q[4400];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(q, sizeof q, "%s/%s", p->cfg, files[i]);
        if (mapo_is_file(q)) h = fnv_file(h, q, files[i]);
    }
    for (int t = 0; t < 2; t++) {
        const char *sub = t ? "tokenizer_2" : "tokenizer";
        snprintf(q, sizeof q, "%s/%s", p->cfg, sub);
        DIR *d = opendir(q);
        if (!d) continue;
        char *names[64];
        int n = 0;
        struct dirent *e;
        while (n < 64 && (e = readdir(d)))
            if (e->d_name[0] != '.') names[n++] = xstrdup(e->d_name);
        closedir(d);
        for (int i = 1; i < n; i++) /* readdir order is not stable: sort */
            for (int k = i; k > 0 && strcmp(names[k - 1], names[k]) > 0; k--) {
                char *s = names[k];
                names[k] = names[k - 1];
                names[k - 1] = s;
            }
        for (int i = 0; i < n; i++) {
            char f[4700];
            snprintf(f, sizeof f, "%s/%s", q, names[i]);
            if (mapo_is_file(f)) h = fnv_file(h, f, names[i]);
            free(names[i]);
        }
    }
    return h;
}

static int cache_root(char *out, size_t n) {
    const char *e;
    if ((e = getenv("MAPO_CACHE_DIR")) && *e) snprintf(out, n, "%s", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && *e) snprintf(out, n, "%s/mapo", e);
    else if ((e = getenv("HOME")) && *e) snprintf(out, n, "%s/.cache/mapo", e);
    else return mapo_error("no cache folder for converted checkpoints: set MAPO_CACHE_DIR");
    return 0;
}

int single_file_resolve(const char *path, const char *config_dir, char *resolved, size_t n) {
    if (!path || !mapo_is_file(path)) {
        snprintf(resolved, n, "%s", path ? path : "");
        return 0;
    }
    sf_plan p;
    int rc = plan(&p, path, config_dir);
    if (rc) {
        plan_free(&p);
        return -1;
    }
    struct stat st;
    uint64_t h = fnv(0xcbf29ce484222325ULL, "mapo-single-file-1", 18), fp = 0;
    if (stat(path, &st) || file_fingerprint(path, &fp)) {
        plan_free(&p);
        return mapo_error("%s: cannot stat", path);
    }
    int64_t meta[3] = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec,
                       (int64_t)st.st_mtim.tv_nsec};
    h = fnv(h, meta, sizeof meta);
    h = fnv(h, &fp, sizeof fp);
    h = config_key(&p, h);
    char root[2048], dir[4096];
    if (cache_root(root, sizeof root)) {
        plan_free(&p);
        return -1;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int stem = (int)strlen(base) - 12;
    if (stem > 100) stem = 100;
    snprintf(dir, sizeof dir, "%s/single_file/%.*s-%016llx", root, stem, base,
             (unsigned long long)h);
    char mi[4200];
    snprintf(mi, sizeof mi, "%s/model_index.json", dir);
    if (mapo_is_file(mi)) {
        mapo_log(1, "%s: using its converted pipeline %s\n", path, dir);
    } else {
        char parent[2200];
        snprintf(parent, sizeof parent, "%s/single_file", root);
        rc = mapo_mkdir_p(parent);
        if (!rc) rc = convert_planned(&p, dir, 0, -1);
        if (rc == 1) rc = 0; /* another process converted it meanwhile */
        if (!rc) mapo_log(1, "%s: converted once into %s (reused while the file and the config "
                             "folder are unchanged)\n", path, dir);
    }
    plan_free(&p);
    if (!rc) snprintf(resolved, n, "%s", dir);
    return rc;
}

int single_file_resolve_arg(const char **path, const char *config_dir, char *buf, size_t n) {
    if (!*path) return 0;
    if (single_file_resolve(*path, config_dir, buf, n)) return -1;
    *path = buf;
    return 0;
}
