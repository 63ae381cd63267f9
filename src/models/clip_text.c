/* clip_text.c -- CLIPTextModel / CLIPTextModelWithProjection forward (see clip_text.h).
 *
 * Config: every key of config.json is understood, checked to be harmless, or refused by name.
 * Weights: the file (or a sharded checkpoint's index and its shards, weights_open) is opened and
 * every tensor's presence and shape checked against the config BEFORE anything is allocated (so
 * a hostile config cannot ask for terabytes), then params_load converts F16/BF16/F64 to float32.
 * Forward: BLAS for every matrix product (linear_forward for the projections, sgemm per head and
 * query tile in the causal attention), OpenMP over rows / heads elsewhere. */
#include "mapo/clip_text.h"

#include <cblas.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/params.h"
#include "mapo/safetensors.h"

typedef struct {
    int ln1w, ln1b, qw, qb, kw, kb, vw, vb, ow, ob, ln2w, ln2b, f1w, f1b, f2w, f2b;
} clip_layer;

struct clip_text {
    clip_text_config cfg;
    param_table params;
    char prefix[16]; /* "text_model." or "" */
    int tok, pos, lnfw, lnfb, proj;
    clip_layer *layers;
};

/* ------------------------------------------------------------------ config */

/* Keys every transformers PretrainedConfig may carry (4.x and 5.x): metadata, generation and
 * output options. None of them changes what the text encoder computes. */
static const char *GENERIC_KEYS[] = {
    "transformers_version", "dtype", "torch_dtype", "use_bfloat16", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "tf_legacy_loss",
    "chunk_size_feed_forward", "is_encoder_decoder", "tie_encoder_decoder", "tie_word_embeddings",
    "cross_attention_hidden_size", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "finetuning_task", "id2label", "label2id", "tokenizer_class",
    "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type",
    "gradient_checkpointing", "use_cache", "num_labels",
    /* CLIP keys used only for training / initialisation */
    "dropout", "attention_dropout", "initializer_range", "initializer_factor",
};

static const char *MODEL_KEYS[] = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "max_position_embeddings", "vocab_size", "hidden_act",
    "layer_norm_eps", "projection_dim", "eos_token_id", "bos_token_id", "pad_token_id",
    "pruned_heads", "is_decoder", "add_cross_attention",
};

static int in_list(const char *k, const char **list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, list[i])) return 1;
    return 0;
}

static int cfg_int(json_t *root, const char *key, long long def, long long lo, long long hi,
                   long long *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return mapo_error("%s: '%s' must be an integer", path, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return mapo_error("%s: '%s' = %lld is out of range (%lld..%lld)", path, key, x, lo, hi);
    *out = x;
    return 0;
}

/* token ids: integer, or null (-1); absent = def */
static int cfg_token(json_t *root, const char *key, long long def, int64_t *out,
                     const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return mapo_error("%s: '%s' must be a non-negative integer or null (lists are not "
                          "supported)", path, key);
    *out = json_integer_value(v);
    return 0;
}

/* *proj: 1 WithProjection, 0 CLIPTextModel, -1 not said (decided by the weights) */
static int parse_config(clip_text_config *c, int *proj, json_t *root, const char *path) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(root)) return mapo_error("%s: config is not a JSON object", path);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (key[0] == '_') continue; /* _name_or_path, _commit_hash, _attn_implementation... */
        if (in_list(key, GENERIC_KEYS, sizeof GENERIC_KEYS / sizeof *GENERIC_KEYS)) continue;
        if (!in_list(key, MODEL_KEYS, sizeof MODEL_KEYS / sizeof *MODEL_KEYS)) {
            if (!strcmp(key, "text_config") || !strcmp(key, "vision_config"))
                return mapo_error("%s: this is a full CLIPModel config; mapo needs the text "
                                  "encoder's own folder (text_encoder/ or text_encoder_2/)", path);
            return mapo_error("%s: unsupported config key '%s' for a CLIP text encoder", path,
                              key);
        }
    }
    json_t *mt = json_object_get(root, "model_type");
    if (mt && !(json_is_string(mt) && !strcmp(json_string_value(mt), "clip_text_model")))
        return mapo_error("%s: model_type is %s, expected \"clip_text_model\"", path,
                          json_is_string(mt) ? json_string_value(mt) : "(not a string)");
    json_t *ph = json_object_get(root, "pruned_heads");
    if (ph && !json_is_null(ph) && !(json_is_object(ph) && json_object_size(ph) == 0))
        return mapo_error("%s: pruned_heads is not empty (pruned attention heads are not "
                          "supported)", path);
    const char *must_false[] = {"is_decoder", "add_cross_attention"};
    for (int i = 0; i < 2; i++) {
        json_t *b = json_object_get(root, must_false[i]);
        if (b && !json_is_false(b) && !json_is_null(b))
            return mapo_error("%s: '%s' must be false for a CLIP text encoder", path,
                              must_false[i]);
    }
    *proj = -1;
    json_t *ar = json_object_get(root, "architectures");
    if (ar && !json_is_null(ar)) {
        if (!json_is_array(ar)) return mapo_error("%s: 'architectures' must be a list", path);
        size_t i;
        json_t *e;
        json_array_foreach(ar, i, e) {
            const char *s = json_is_string(e) ? json_string_value(e) : "";
            if (!strcmp(s, "CLIPTextModelWithProjection")) *proj = 1;
            else if (!strcmp(s, "CLIPTextModel")) *proj = 0;
            else
                return mapo_error("%s: architecture '%s' is not supported (CLIPTextModel or "
                                  "CLIPTextModelWithProjection)", path, json_is_string(e) ? s : "?");
        }
    }
    /* defaults: transformers' CLIPTextConfig */
    long long hs = 0, is = 0, nl = 0, nh = 0, mp = 0, vs = 0, pd = 0;
    if (cfg_int(root, "hidden_size", 512, 1, 1 << 16, &hs, path) ||
        cfg_int(root, "intermediate_size", 2048, 1, 1 << 20, &is, path) ||
        cfg_int(root, "num_hidden_layers", 12, 1, 4096, &nl, path) ||
        cfg_int(root, "num_attention_heads", 8, 1, 1 << 16, &nh, path) ||
        cfg_int(root, "max_position_embeddings", 77, 1, 1 << 20, &mp, path) ||
        cfg_int(root, "vocab_size", 49408, 1, 1 << 26, &vs, path) ||
        cfg_int(root, "projection_dim", 512, 1, 1 << 16, &pd, path))
        return -1;
    if (hs % nh)
        return mapo_error("%s: hidden_size %lld is not divisible by num_attention_heads %lld",
                          path, hs, nh);
    c->hidden_size = (int)hs;
    c->intermediate_size = (int)is;
    c->num_layers = (int)nl;
    c->num_heads = (int)nh;
    c->max_positions = (int)mp;
    c->vocab_size = (int)vs;
    c->projection_dim = (int)pd; /* zeroed later for CLIPTextModel */
    json_t *act = json_object_get(root, "hidden_act");
    const char *as = !act ? "quick_gelu" : json_is_string(act) ? json_string_value(act) : NULL;
    if (!as) return mapo_error("%s: 'hidden_act' must be a string", path);
    if (!strcmp(as, "quick_gelu")) c->act = CLIP_ACT_QUICK_GELU;
    else if (!strcmp(as, "gelu")) c->act = CLIP_ACT_GELU;
    else
        return mapo_error("%s: hidden_act '%s' is not supported (quick_gelu or gelu)", path, as);
    c->layer_norm_eps = 1e-5;
    json_t *eps = json_object_get(root, "layer_norm_eps");
    if (eps) {
        if (!json_is_number(eps)) return mapo_error("%s: 'layer_norm_eps' must be a number", path);
        c->layer_norm_eps = json_number_value(eps);
        if (!(c->layer_norm_eps > 0 && c->layer_norm_eps < 1))
            return mapo_error("%s: layer_norm_eps %g is out of range (0, 1)", path,
                              c->layer_norm_eps);
    }
    if (cfg_token(root, "eos_token_id", 49407, &c->eos_token_id, path) ||
        cfg_token(root, "bos_token_id", 49406, &c->bos_token_id, path) ||
        cfg_token(root, "pad_token_id", 1, &c->pad_token_id, path))
        return -1;
    return 0;
}

static int read_config(clip_text_config *c, int *proj, const char *path) {
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) return mapo_error("%s: cannot read config: %s (line %d)", path, err.text, err.line);
    int rc = parse_config(c, proj, root, path);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ parameters */

static int add1(param_table *t, int64_t a, const char *pfx, const char *fmt, int l) {
    char nm[256];
    snprintf(nm, sizeof nm, fmt, l);
    return params_add(t, 1, &a, "%s%s", pfx, nm);
}
static int add2(param_table *t, int64_t a, int64_t b, const char *pfx, const char *fmt, int l) {
    char nm[256];
    const int64_t s[2] = {a, b};
    snprintf(nm, sizeof nm, fmt, l);
    return params_add(t, 2, s, "%s%s", pfx, nm);
}

static void build(clip_text *m) {
    const clip_text_config *c = &m->cfg;
    param_table *t = &m->params;
    const char *p = m->prefix;
    const int64_t D = c->hidden_size, FF = c->intermediate_size;
    params_init(t);
    m->tok = add2(t, c->vocab_size, D, p, "embeddings.token_embedding.weight", 0);
    m->pos = add2(t, c->max_positions, D, p, "embeddings.position_embedding.weight", 0);
    m->layers = xcalloc(c->num_layers, sizeof *m->layers);
    for (int l = 0; l < c->num_layers; l++) {
        clip_layer *y = &m->layers[l];
        y->ln1w = add1(t, D, p, "encoder.layers.%d.layer_norm1.weight", l);
        y->ln1b = add1(t, D, p, "encoder.layers.%d.layer_norm1.bias", l);
        y->qw = add2(t, D, D, p, "encoder.layers.%d.self_attn.q_proj.weight", l);
        y->qb = add1(t, D, p, "encoder.layers.%d.self_attn.q_proj.bias", l);
        y->kw = add2(t, D, D, p, "encoder.layers.%d.self_attn.k_proj.weight", l);
        y->kb = add1(t, D, p, "encoder.layers.%d.self_attn.k_proj.bias", l);
        y->vw = add2(t, D, D, p, "encoder.layers.%d.self_attn.v_proj.weight", l);
        y->vb = add1(t, D, p, "encoder.layers.%d.self_attn.v_proj.bias", l);
        y->ow = add2(t, D, D, p, "encoder.layers.%d.self_attn.out_proj.weight", l);
        y->ob = add1(t, D, p, "encoder.layers.%d.self_attn.out_proj.bias", l);
        y->ln2w = add1(t, D, p, "encoder.layers.%d.layer_norm2.weight", l);
        y->ln2b = add1(t, D, p, "encoder.layers.%d.layer_norm2.bias", l);
        y->f1w = add2(t, FF, D, p, "encoder.layers.%d.mlp.fc1.weight", l);
        y->f1b = add1(t, FF, p, "encoder.layers.%d.mlp.fc1.bias", l);
        y->f2w = add2(t, D, FF, p, "encoder.layers.%d.mlp.fc2.weight", l);
        y->f2b = add1(t, D, p, "encoder.layers.%d.mlp.fc2.bias", l);
    }
    m->lnfw = add1(t, D, p, "final_layer_norm.weight", 0);
    m->lnfb = add1(t, D, p, "final_layer_norm.bias", 0);
    m->proj = c->projection_dim > 0 ? add2(t, c->projection_dim, D, "", "text_projection.weight", 0)
                                    : -1;
}

static const float *P(const clip_text *m, int idx) {
    return m->params.data + m->params.p[idx].offset;
}

void clip_text_free(clip_text *m) {
    if (!m) return;
    params_free(&m->params);
    free(m->layers);
    free(m);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s) {
    size_t k = snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Every parameter present with its shape, and nothing unexpected, before allocating. */
static int check_file(const clip_text *m, const weights_src *f, const char *path) {
    const param_table *t = &m->params;
    for (int i = 0; i < t->n; i++) {
        const param_info *p = &t->p[i];
        const st_tensor *s = weights_find(f, p->name);
        if (!s)
            return mapo_error("%s: tensor '%s' is missing (config.json expects it; is this the "
                              "right config for these weights?)", path, p->name);
        int ok = s->ndim == p->ndim;
        for (int k = 0; ok && k < p->ndim; k++) ok = s->shape[k] == p->shape[k];
        if (!ok) {
            char a[128], b[128];
            shape_str(a, sizeof a, s->ndim, s->shape);
            shape_str(b, sizeof b, p->ndim, p->shape);
            return mapo_error("%s: tensor '%s' has shape %s, config.json gives %s", path, p->name,
                              a, b);
        }
        if (s->dtype != ST_F32 && s->dtype != ST_F16 && s->dtype != ST_BF16 && s->dtype != ST_F64)
            return mapo_error("%s: tensor '%s' has dtype %s (F32, F16, BF16 or F64 expected)",
                              path, p->name, st_dtype_name(s->dtype));
    }
    char posids[64];
    snprintf(posids, sizeof posids, "%sembeddings.position_ids", m->prefix);
    for (int i = 0; i < weights_count(f); i++) {
        const char *nm = weights_tensor(f, i)->name;
        if (params_find(t, nm) >= 0 || !strcmp(nm, posids)) continue;
        if (m->proj < 0 && !strcmp(nm, "text_projection.weight")) {
            mapo_log(2, "%s: ignoring text_projection.weight (config says CLIPTextModel)\n",
                     path);
            continue;
        }
        return mapo_error("%s: unexpected tensor '%s' (not part of a CLIP text model with this "
                          "config)", path, nm);
    }
    return 0;
}

static clip_text *new_model(const clip_text_config *c, int proj, const char *prefix) {
    clip_text *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    if (!proj) m->cfg.projection_dim = 0;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    build(m);
    return m;
}

int clip_text_load(clip_text **out, const char *config_path, const char *weights_path) {
    *out = NULL;
    clip_text_config c;
    int proj;
    if (read_config(&c, &proj, config_path)) return -1;
    weights_src f; /* one file or a sharded checkpoint's index */
    if (weights_open(&f, weights_path)) return -1;
    const char *prefix;
    if (weights_find(&f, "text_model.embeddings.token_embedding.weight")) prefix = "text_model.";
    else if (weights_find(&f, "embeddings.token_embedding.weight")) prefix = "";
    else {
        weights_close(&f);
        return mapo_error("%s: no text_model.embeddings.token_embedding.weight (nor "
                          "embeddings.token_embedding.weight): not a CLIP text encoder",
                          weights_path);
    }
    if (proj < 0) proj = weights_find(&f, "text_projection.weight") != NULL;
    clip_text *m = new_model(&c, proj, prefix);
    int rc = check_file(m, &f, weights_path); /* names and shapes against the file */
    weights_close(&f);
    if (!rc) rc = params_check_size(&m->params, config_path, weights_path);
    if (!rc) {
        params_alloc(&m->params, 0);
        rc = params_load(&m->params, weights_path, "", 1);
    }
    if (rc) {
        clip_text_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int clip_text_load_dir(clip_text **out, const char *dir) {
    *out = NULL;
    char cp[4200], wp[4200];
    snprintf(cp, sizeof cp, "%s/config.json", dir);
    if (!mapo_is_file(cp)) return mapo_error("%s: no config.json: not a text_encoder folder", dir);
    /* --variant, one file or sharded (an index and its shards), as the UNet */
    if (st_weights_find(wp, sizeof wp, dir, "model.safetensors"))
        return mapo_error("%s: no model.safetensors (nor a sharded model.safetensors.index.json; "
                          "pytorch_model.bin is not supported; model.<variant>.safetensors files "
                          "are read with --variant)", dir);
    return clip_text_load(out, cp, wp);
}

int clip_text_init_random(clip_text **out, const char *config_path, uint64_t seed) {
    *out = NULL;
    clip_text_config c;
    int proj;
    if (read_config(&c, &proj, config_path)) return -1;
    clip_text *m = new_model(&c, proj > 0, "text_model.");
    if (params_check_size(&m->params, config_path, NULL)) {
        clip_text_free(m);
        return -1;
    }
    params_alloc(&m->params, 0);
    params_init_random(&m->params, seed);
    *out = m;
    return 0;
}

int clip_text_save(const clip_text *m, const char *weights_path) {
    return params_save(&m->params, weights_path);
}

const clip_text_config *clip_text_get_config(const clip_text *m) { return &m->cfg; }
int clip_text_hidden_size(const clip_text *m) { return m->cfg.hidden_size; }
int clip_text_projection_dim(const clip_text *m) { return m->cfg.projection_dim; }
int clip_text_num_layers(const clip_text *m) { return m->cfg.num_layers; }
int64_t clip_text_num_params(const clip_text *m) { return (int64_t)m->params.total; }

/* ------------------------------------------------------------------ forward */

/* y = x * sigmoid(1.702 x), in place allowed (transformers' QuickGELUActivation) */
static void quick_gelu(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
}

#define ATT_TILE 64
/* Causal self-attention, heads packed in the channel dim: q,k,v,out [B,S,H*Dh]. Query row i
 * attends to keys 0..i: a tile of query rows r0..r0+tq-1 needs only the first r0+tq keys. */
static void causal_attention(float *out, const float *q, const float *k, const float *v, int B,
                             int S, int H, int Dh) {
    const int ld = H * Dh;
    const float scale = (float)(1.0 / sqrt((double)Dh));
    const int tile = S < ATT_TILE ? S : ATT_TILE;
#pragma omp parallel
    {
        float *sc = xmalloc((size_t)tile * S * sizeof(float));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            const int64_t base = (int64_t)b * S * ld + (int64_t)h * Dh;
            for (int r0 = 0; r0 < S; r0 += tile) {
                const int tq = S - r0 < tile ? S - r0 : tile, nk = r0 + tq;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tq, nk, Dh, scale,
                            q + base + (int64_t)r0 * ld, ld, k + base, ld, 0.0f, sc, nk);
                for (int i = 0; i < tq; i++) {
                    float *s = sc + (int64_t)i * nk;
                    const int n = r0 + i + 1; /* keys 0..r0+i */
                    float mx = s[0];
                    for (int j = 1; j < n; j++) mx = s[j] > mx ? s[j] : mx;
                    double sum = 0;
                    for (int j = 0; j < n; j++) {
                        s[j] = expf(s[j] - mx);
                        sum += s[j];
                    }
                    const float inv = (float)(1.0 / sum);
                    for (int j = 0; j < n; j++) s[j] *= inv;
                    for (int j = n; j < nk; j++) s[j] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tq, Dh, nk, 1.0f, sc, nk,
                            v + base, ld, 0.0f, out + base + (int64_t)r0 * ld, ld);
            }
        }
        free(sc);
    }
}

static void add_inplace(float *x, const float *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

int clip_text_forward(const clip_text *m, const int32_t *ids, int B, int S, int layer,
                      float *hidden, float *last, float *pooled, float *text_embeds) {
    if (!m || !ids) return mapo_error("clip_text_forward: no model or no ids");
    const clip_text_config *c = &m->cfg;
    const int L = c->num_layers, D = c->hidden_size, FF = c->intermediate_size;
    if (B < 1 || S < 1)
        return mapo_error("clip_text_forward: batch %d x %d tokens: both must be positive", B, S);
    if (S > c->max_positions)
        return mapo_error("clip_text_forward: %d tokens, the model takes at most %d "
                          "(max_position_embeddings)", S, c->max_positions);
    const int64_t N = (int64_t)B * S;
    const int64_t W = FF > D ? FF : D;
    if (N > INT_MAX / 4 || N * W > (int64_t)(SIZE_MAX / sizeof(float) / 8))
        return mapo_error("clip_text_forward: batch %d x %d tokens is too large", B, S);
    if (text_embeds && c->projection_dim <= 0)
        return mapo_error("clip_text_forward: text_embeds asked of a model without "
                          "text_projection (CLIPTextModel)");
    int hl = -1;
    if (hidden) {
        if (layer < -(L + 1) || layer > L)
            return mapo_error("clip_text_forward: hidden state %d does not exist (the model has "
                              "%d layers: 0..%d or -%d..-1)", layer, L, L, L + 1);
        hl = layer < 0 ? layer + L + 1 : layer;
    }
    const int need_final = last || pooled || text_embeds;
    if ((pooled || text_embeds) && c->eos_token_id < 0)
        return mapo_error("clip_text_forward: config.json has no eos_token_id: cannot pool");
    for (int64_t i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return mapo_error("clip_text_forward: token id %d at prompt %lld position %lld is "
                              "outside the vocabulary (0..%d)", ids[i], (long long)(i / S),
                              (long long)(i % S), c->vocab_size - 1);
    const int run = need_final ? L : hl; /* layers to run */
    if (run < 0) return 0;                /* nothing asked for */

    const size_t nd = (size_t)N * D;
    float *x = xmalloc(nd * sizeof(float));
    /* embeddings */
    const float *tok = P(m, m->tok), *pos = P(m, m->pos);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {
        const float *te = tok + (int64_t)ids[r] * D, *pe = pos + (r % S) * D;
        float *xr = x + r * D;
        for (int d = 0; d < D; d++) xr[d] = te[d] + pe[d];
    }
    if (hl == 0) memcpy(hidden, x, nd * sizeof(float));
    if (run > 0) {
        float *h = xmalloc(nd * sizeof(float)), *q = xmalloc(nd * sizeof(float));
        float *k = xmalloc(nd * sizeof(float)), *v = xmalloc(nd * sizeof(float));
        float *a = xmalloc(nd * sizeof(float)), *f = xmalloc((size_t)N * FF * sizeof(float));
        float *mean = xmalloc((size_t)N * sizeof(float)), *rstd = xmalloc((size_t)N * sizeof(float));
        const int H = c->num_heads, Dh = D / H;
        for (int l = 0; l < run; l++) {
            const clip_layer *y = &m->layers[l];
            layer_norm_forward(h, mean, rstd, x, P(m, y->ln1w), P(m, y->ln1b), N, D,
                               c->layer_norm_eps);
            linear_forward(q, h, P(m, y->qw), P(m, y->qb), N, D, D);
            linear_forward(k, h, P(m, y->kw), P(m, y->kb), N, D, D);
            linear_forward(v, h, P(m, y->vw), P(m, y->vb), N, D, D);
            causal_attention(a, q, k, v, B, S, H, Dh);
            linear_forward(h, a, P(m, y->ow), P(m, y->ob), N, D, D);
            add_inplace(x, h, (int64_t)nd);
            layer_norm_forward(h, mean, rstd, x, P(m, y->ln2w), P(m, y->ln2b), N, D,
                               c->layer_norm_eps);
            linear_forward(f, h, P(m, y->f1w), P(m, y->f1b), N, D, FF);
            if (c->act == CLIP_ACT_QUICK_GELU) quick_gelu(f, f, N * FF);
            else gelu_forward(f, f, N * FF);
            linear_forward(h, f, P(m, y->f2w), P(m, y->f2b), N, FF, D);
            add_inplace(x, h, (int64_t)nd);
            if (hl == l + 1) memcpy(hidden, x, nd * sizeof(float));
        }
        free(h), free(q), free(k), free(v), free(a), free(f), free(mean), free(rstd);
    }
    if (need_final) {
        float *mean = xmalloc((size_t)N * sizeof(float)), *rstd = xmalloc((size_t)N * sizeof(float));
        const float *gw = P(m, m->lnfw), *gb = P(m, m->lnfb);
        if (last) layer_norm_forward(last, mean, rstd, x, gw, gb, N, D, c->layer_norm_eps);
        if (pooled || text_embeds) {
            /* the end-of-text row of each prompt, then the final norm of just those rows (the
               norm is per row, so this equals selecting rows of last_hidden_state) */
            float *sel = xmalloc((size_t)B * D * sizeof(float));
            float *pl = pooled ? pooled : xmalloc((size_t)B * D * sizeof(float));
            for (int b = 0; b < B; b++) {
                const int32_t *r = ids + (int64_t)b * S;
                int p = 0;
                if (c->eos_token_id == 2) { /* legacy: first maximal id */
                    for (int s = 1; s < S; s++)
                        if (r[s] > r[p]) p = s;
                } else { /* first eos; position 0 when there is none, as transformers */
                    for (int s = 0; s < S; s++)
                        if (r[s] == c->eos_token_id) {
                            p = s;
                            break;
                        }
                }
                memcpy(sel + (int64_t)b * D, x + ((int64_t)b * S + p) * D, D * sizeof(float));
            }
            layer_norm_forward(pl, mean, rstd, sel, gw, gb, B, D, c->layer_norm_eps);
            if (text_embeds)
                linear_forward(text_embeds, pl, P(m, m->proj), NULL, B, D, c->projection_dim);
            if (pl != pooled) free(pl);
            free(sel);
        }
        free(mean), free(rstd);
    }
    free(x);
    return 0;
}
