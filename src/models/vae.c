/* vae.c -- diffusers' AutoencoderKL, inference only (see vae.h).
 *
 * Mirrors diffusers.models.autoencoders.{autoencoder_kl,vae}: Encoder (conv_in, DownEncoderBlock2D
 * x n with ResnetBlock2D and Downsample2D(pad (0,1,0,1), 3x3 stride 2), UNetMidBlock2D with one
 * single-head attention, GroupNorm + SiLU + conv_out to 2 * latent channels), quant_conv,
 * DiagonalGaussianDistribution; post_quant_conv, Decoder (conv_in, mid block, UpDecoderBlock2D
 * x n with layers_per_block + 1 resnets and nearest-2x + conv upsampling, GroupNorm + SiLU +
 * conv_out). All GroupNorms use eps 1e-6, output_scale_factor and rescale_output_factor are 1.
 *
 * Kernels: group_norm_forward, silu_forward, attention_forward, linear_forward,
 * upsample_nearest2x_forward, nchw_to_nhwc_tiled / nhwc_to_nchw_tiled and conv2d_forward
 * (1x1 convs) from ops.h. 3x3 convolutions use a local im2col + GEMM in bands of output rows
 * (conv3x3_banded):
 * ops.h's conv2d_forward builds the im2col matrix of a whole sample, Cin * 9 * H * W floats,
 * which for the decoder's last block at 1024x1024 (Cin = 128) is 4.7 GB; the banded version
 * computes the same sums with a scratch of at most conv_scratch bytes (default 64 MiB) and
 * handles the asymmetric (0,1,0,1) padding of Downsample2D directly.
 *
 * Memory: one sample at a time; every activation is freed when consumed; GroupNorm and SiLU run
 * in place. All working buffers go through mem_new / mem_del, which keep a live / peak byte
 * count (vae_peak_bytes). */
#include "mapo/vae.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/common.h"
#include "mapo/ops.h"
#include "mapo/params.h"
#include "mapo/safetensors.h"

#define VAE_MAX_BLOCKS 8
#define VAE_EPS 1e-6
/* largest side in pixels of an image / decoded latent, and of one activation plane: keeps
   every H*W product far inside int (GEMM sizes) and every buffer size inside size_t */
#define VAE_MAX_SIDE (1 << 16)
#define VAE_MAX_PLANE ((int64_t)1 << 28)

typedef struct {
    int cin, cout;
    int n1w, n1b, c1w, c1b, n2w, n2b, c2w, c2b, sw, sb; /* sw/sb -1: identity shortcut */
} vae_resnet;

typedef struct {
    int gw, gb, qw, qb, kw, kb, vw, vb, ow, ob;
} vae_attn;

typedef struct {
    vae_resnet r0, r1;
    int has_attn;
    vae_attn at;
} vae_mid;

typedef struct {
    int n_res;
    vae_resnet *res;
    int cw, cb; /* downsampler / upsampler conv; -1 when absent */
} vae_block;

struct vae {
    /* config */
    int in_ch, out_ch, n_blocks, block_out[VAE_MAX_BLOCKS], layers, latent, groups;
    int sample_size, quant, post_quant, mid_attn, has_shift;
    double scaling, shift;
    /* parameters */
    param_table params;
    int e_cin_w, e_cin_b, e_nout_w, e_nout_b, e_cout_w, e_cout_b, q_w, q_b;
    vae_block down[VAE_MAX_BLOCKS];
    vae_mid e_mid;
    int pq_w, pq_b, d_cin_w, d_cin_b, d_nout_w, d_nout_b, d_cout_w, d_cout_b;
    vae_block up[VAE_MAX_BLOCKS];
    vae_mid d_mid;
    /* working memory */
    size_t conv_scratch;
    size_t live, peak;
};

/* ------------------------------------------------------------------ memory accounting */
static float *mem_new(vae *v, int64_t n) {
    size_t bytes = (size_t)n * sizeof(float);
    v->live += bytes;
    if (v->live > v->peak) v->peak = v->live;
    return xmalloc(bytes ? bytes : 1);
}
static void mem_del(vae *v, float *p, int64_t n) {
    if (!p) return;
    v->live -= (size_t)n * sizeof(float);
    free(p);
}
/* a transient allocation made inside a kernel (e.g. attention's score tiles) */
static void mem_touch(vae *v, size_t bytes) {
    if (v->live + bytes > v->peak) v->peak = v->live + bytes;
}

size_t vae_peak_bytes(const vae *v) { return v->peak; }
void vae_reset_peak(vae *v) { v->peak = v->live; }
void vae_set_conv_scratch(vae *v, size_t bytes) { v->conv_scratch = bytes; }

/* ------------------------------------------------------------------ config */
static int str_is(json_t *x, const char *s) {
    return x && json_is_string(x) && !strcmp(json_string_value(x), s);
}

static int cfg_int(json_t *root, const char *key, int def, int lo, int hi, int *out,
                   const char *path) {
    json_t *x = json_object_get(root, key);
    if (!x || json_is_null(x)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(x)) return mapo_error("%s: '%s' must be an integer", path, key);
    json_int_t i = json_integer_value(x);
    if (i < lo || i > hi)
        return mapo_error("%s: '%s' = %lld is out of range [%d, %d]", path, key, (long long)i,
                          lo, hi);
    *out = (int)i;
    return 0;
}
static int cfg_bool(json_t *root, const char *key, int def, int *out, const char *path) {
    json_t *x = json_object_get(root, key);
    if (!x || json_is_null(x)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(x)) return mapo_error("%s: '%s' must be true or false", path, key);
    *out = json_is_true(x);
    return 0;
}

/* the keys diffusers' AutoencoderKL.__init__ takes, all understood here */
static const char *VAE_KEYS[] = {
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size",
    "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
    "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
};

static int parse_config(vae *v, json_t *root, const char *path) {
    if (!json_is_object(root)) return mapo_error("%s: config is not a JSON object", path);
    const char *key;
    json_t *x;
    json_object_foreach(root, key, x) {
        if (key[0] == '_') {
            if (!strcmp(key, "_class_name") && !str_is(x, "AutoencoderKL"))
                return mapo_error("%s: _class_name is %s, only AutoencoderKL is supported", path,
                                  json_is_string(x) ? json_string_value(x) : "(not a string)");
            continue; /* _diffusers_version, _name_or_path, _use_default_values */
        }
        int known = 0;
        for (size_t i = 0; i < sizeof VAE_KEYS / sizeof *VAE_KEYS; i++)
            if (!strcmp(key, VAE_KEYS[i])) known = 1;
        if (!known) return mapo_error("%s: unsupported config key '%s'", path, key);
    }
    /* act_fn */
    x = json_object_get(root, "act_fn");
    if (x && !json_is_null(x) && !str_is(x, "silu"))
        return mapo_error("%s: unsupported act_fn %s (only \"silu\")", path,
                          json_is_string(x) ? json_string_value(x) : "(not a string)");
    /* per-channel latent statistics (Playground-style) are not implemented */
    if ((x = json_object_get(root, "latents_mean")) && !json_is_null(x))
        return mapo_error("%s: unsupported value for 'latents_mean' (only null: per-channel "
                          "latent normalisation is not implemented)", path);
    if ((x = json_object_get(root, "latents_std")) && !json_is_null(x))
        return mapo_error("%s: unsupported value for 'latents_std' (only null: per-channel "
                          "latent normalisation is not implemented)", path);
    /* blocks */
    json_t *boc = json_object_get(root, "block_out_channels");
    json_t *down = json_object_get(root, "down_block_types");
    json_t *up = json_object_get(root, "up_block_types");
    int n = 1;
    if (boc && !json_is_null(boc)) {
        if (!json_is_array(boc)) return mapo_error("%s: 'block_out_channels' must be a list", path);
        n = (int)json_array_size(boc);
        if (n < 1 || n > VAE_MAX_BLOCKS)
            return mapo_error("%s: 'block_out_channels' has %d entries (1..%d supported)", path,
                              n, VAE_MAX_BLOCKS);
        for (int i = 0; i < n; i++) {
            json_t *e = json_array_get(boc, i);
            if (!json_is_integer(e) || json_integer_value(e) < 1 ||
                json_integer_value(e) > 16384)
                return mapo_error("%s: 'block_out_channels' entry %d must be an integer in "
                                  "[1, 16384]", path, i);
            v->block_out[i] = (int)json_integer_value(e);
        }
    } else {
        v->block_out[0] = 64;
    }
    v->n_blocks = n;
    const char *names[2] = {"down_block_types", "up_block_types"};
    const char *want[2] = {"DownEncoderBlock2D", "UpDecoderBlock2D"};
    json_t *lists[2] = {down, up};
    for (int k = 0; k < 2; k++) {
        json_t *l = lists[k];
        if (!l || json_is_null(l)) {
            if (n != 1)
                return mapo_error("%s: '%s' is missing (needed for %d blocks)", path, names[k], n);
            continue;
        }
        if (!json_is_array(l)) return mapo_error("%s: '%s' must be a list", path, names[k]);
        if ((int)json_array_size(l) != n)
            return mapo_error("%s: '%s' has %zu entries, block_out_channels has %d", path,
                              names[k], json_array_size(l), n);
        for (int i = 0; i < n; i++) {
            json_t *e = json_array_get(l, i);
            if (!str_is(e, want[k]))
                return mapo_error("%s: unsupported %s entry %d: %s (only %s)", path, names[k], i,
                                  json_is_string(e) ? json_string_value(e) : "(not a string)",
                                  want[k]);
        }
    }
    if (cfg_int(root, "in_channels", 3, 1, 4096, &v->in_ch, path) ||
        cfg_int(root, "out_channels", 3, 1, 4096, &v->out_ch, path) ||
        cfg_int(root, "layers_per_block", 1, 1, 64, &v->layers, path) ||
        cfg_int(root, "latent_channels", 4, 1, 4096, &v->latent, path) ||
        cfg_int(root, "norm_num_groups", 32, 1, 16384, &v->groups, path) ||
        cfg_bool(root, "use_quant_conv", 1, &v->quant, path) ||
        cfg_bool(root, "use_post_quant_conv", 1, &v->post_quant, path) ||
        cfg_bool(root, "mid_block_add_attention", 1, &v->mid_attn, path))
        return -1;
    int fu;
    if (cfg_bool(root, "force_upcast", 1, &fu, path)) return -1; /* we always run float32 */
    x = json_object_get(root, "sample_size");
    if (x && json_is_array(x))
        return mapo_error("%s: unsupported value for 'sample_size' (a list; only an integer)",
                          path);
    if (cfg_int(root, "sample_size", 32, 1, VAE_MAX_SIDE, &v->sample_size, path)) return -1;
    x = json_object_get(root, "scaling_factor");
    if (!x || json_is_null(x)) {
        v->scaling = 0.18215;
    } else if (!json_is_number(x)) {
        return mapo_error("%s: 'scaling_factor' must be a number", path);
    } else {
        v->scaling = json_number_value(x);
        if (!isfinite(v->scaling) || v->scaling == 0)
            return mapo_error("%s: 'scaling_factor' must be finite and non-zero", path);
    }
    x = json_object_get(root, "shift_factor");
    v->has_shift = 0;
    v->shift = 0;
    if (x && !json_is_null(x)) {
        if (!json_is_number(x)) return mapo_error("%s: 'shift_factor' must be null or a number", path);
        v->shift = json_number_value(x);
        if (!isfinite(v->shift)) return mapo_error("%s: 'shift_factor' must be finite", path);
        v->has_shift = 1;
    }
    for (int i = 0; i < n; i++)
        if (v->block_out[i] % v->groups)
            return mapo_error("%s: block_out_channels[%d] = %d is not divisible by "
                              "norm_num_groups = %d", path, i, v->block_out[i], v->groups);
    return 0;
}

/* ------------------------------------------------------------------ parameters */
static void add_conv(param_table *t, int *w, int *b, int cout, int cin, int k, const char *pre) {
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    *w = params_add(t, 4, ws, "%s.weight", pre);
    *b = params_add(t, 1, bs, "%s.bias", pre);
}
static void add_vec(param_table *t, int *w, int *b, int c, const char *pre) {
    int64_t s[1] = {c};
    *w = params_add(t, 1, s, "%s.weight", pre);
    *b = params_add(t, 1, s, "%s.bias", pre);
}
static void add_linear(param_table *t, int *w, int *b, int out, int in, const char *pre) {
    int64_t ws[2] = {out, in}, bs[1] = {out};
    *w = params_add(t, 2, ws, "%s.weight", pre);
    *b = params_add(t, 1, bs, "%s.bias", pre);
}
static void build_resnet(param_table *t, vae_resnet *r, int cin, int cout, const char *pre) {
    char s[256];
    r->cin = cin;
    r->cout = cout;
    snprintf(s, sizeof s, "%s.norm1", pre);
    add_vec(t, &r->n1w, &r->n1b, cin, s);
    snprintf(s, sizeof s, "%s.conv1", pre);
    add_conv(t, &r->c1w, &r->c1b, cout, cin, 3, s);
    snprintf(s, sizeof s, "%s.norm2", pre);
    add_vec(t, &r->n2w, &r->n2b, cout, s);
    snprintf(s, sizeof s, "%s.conv2", pre);
    add_conv(t, &r->c2w, &r->c2b, cout, cout, 3, s);
    r->sw = r->sb = -1;
    if (cin != cout) {
        snprintf(s, sizeof s, "%s.conv_shortcut", pre);
        add_conv(t, &r->sw, &r->sb, cout, cin, 1, s);
    }
}
static void build_mid(param_table *t, vae_mid *m, int c, int attn, const char *pre) {
    char s[256];
    snprintf(s, sizeof s, "%s.resnets.0", pre);
    build_resnet(t, &m->r0, c, c, s);
    m->has_attn = attn;
    if (attn) {
        vae_attn *a = &m->at;
        snprintf(s, sizeof s, "%s.attentions.0.group_norm", pre);
        add_vec(t, &a->gw, &a->gb, c, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_q", pre);
        add_linear(t, &a->qw, &a->qb, c, c, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_k", pre);
        add_linear(t, &a->kw, &a->kb, c, c, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_v", pre);
        add_linear(t, &a->vw, &a->vb, c, c, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_out.0", pre);
        add_linear(t, &a->ow, &a->ob, c, c, s);
    }
    snprintf(s, sizeof s, "%s.resnets.1", pre);
    build_resnet(t, &m->r1, c, c, s);
}

/* The parameter table; allocated unless it is absurd for the config `what` or larger than
   the weights file (params_check_size): then -1. */
static int build(vae *v, const char *what, const char *weights) {
    param_table *t = &v->params;
    params_init(t);
    const int n = v->n_blocks, L = v->latent, top = v->block_out[n - 1];
    char s[256];
    /* encoder */
    add_conv(t, &v->e_cin_w, &v->e_cin_b, v->block_out[0], v->in_ch, 3, "encoder.conv_in");
    int out = v->block_out[0];
    for (int i = 0; i < n; i++) {
        vae_block *b = &v->down[i];
        int in = out;
        out = v->block_out[i];
        b->n_res = v->layers;
        b->res = xcalloc(b->n_res, sizeof *b->res);
        for (int j = 0; j < b->n_res; j++) {
            snprintf(s, sizeof s, "encoder.down_blocks.%d.resnets.%d", i, j);
            build_resnet(t, &b->res[j], j == 0 ? in : out, out, s);
        }
        b->cw = b->cb = -1;
        if (i < n - 1) {
            snprintf(s, sizeof s, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            add_conv(t, &b->cw, &b->cb, out, out, 3, s);
        }
    }
    build_mid(t, &v->e_mid, top, v->mid_attn, "encoder.mid_block");
    add_vec(t, &v->e_nout_w, &v->e_nout_b, top, "encoder.conv_norm_out");
    add_conv(t, &v->e_cout_w, &v->e_cout_b, 2 * L, top, 3, "encoder.conv_out");
    v->q_w = v->q_b = -1;
    if (v->quant) add_conv(t, &v->q_w, &v->q_b, 2 * L, 2 * L, 1, "quant_conv");
    /* decoder */
    v->pq_w = v->pq_b = -1;
    if (v->post_quant) add_conv(t, &v->pq_w, &v->pq_b, L, L, 1, "post_quant_conv");
    add_conv(t, &v->d_cin_w, &v->d_cin_b, top, L, 3, "decoder.conv_in");
    build_mid(t, &v->d_mid, top, v->mid_attn, "decoder.mid_block");
    out = top;
    for (int i = 0; i < n; i++) {
        vae_block *b = &v->up[i];
        int prev = out;
        out = v->block_out[n - 1 - i];
        b->n_res = v->layers + 1;
        b->res = xcalloc(b->n_res, sizeof *b->res);
        for (int j = 0; j < b->n_res; j++) {
            snprintf(s, sizeof s, "decoder.up_blocks.%d.resnets.%d", i, j);
            build_resnet(t, &b->res[j], j == 0 ? prev : out, out, s);
        }
        b->cw = b->cb = -1;
        if (i < n - 1) {
            snprintf(s, sizeof s, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(t, &b->cw, &b->cb, out, out, 3, s);
        }
    }
    add_vec(t, &v->d_nout_w, &v->d_nout_b, v->block_out[0], "decoder.conv_norm_out");
    add_conv(t, &v->d_cout_w, &v->d_cout_b, v->out_ch, v->block_out[0], 3, "decoder.conv_out");
    if (params_check_size(t, what, weights)) return -1;
    params_alloc(t, 0);
    return 0;
}

/* Old diffusers checkpoints (e.g. SD 1.x's vae/) name the mid-block attention
   query / key / value / proj_attn; diffusers renames them on load
   (ModelMixin._fix_state_dict_keys_on_load). Returns the deprecated name of a new one, or 0. */
static int deprecated_name(const char *name, char *out, size_t n) {
    static const char *from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    if (!strstr(name, "mid_block.attentions.0.")) return 0;
    for (int i = 0; i < 4; i++) {
        const char *p = strstr(name, from[i]);
        if (!p) continue;
        snprintf(out, n, "%.*s%s%s", (int)(p - name), name, to[i], p + strlen(from[i]));
        return 1;
    }
    return 0;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* path: one file or a sharded checkpoint's index (weights_open) */
static int load_weights(vae *v, const char *path) {
    weights_src f;
    if (weights_open(&f, path)) return -1;
    param_table *t = &v->params;
    const st_tensor **took = xcalloc(t->n ? t->n : 1, sizeof *took); /* each parameter's tensor */
    int rc = 0;
    for (int i = 0; i < t->n && !rc; i++) {
        param_info *p = &t->p[i];
        const st_tensor *s = weights_find(&f, p->name);
        char old[600];
        if (!s && deprecated_name(p->name, old, sizeof old)) s = weights_find(&f, old);
        if (!s) {
            rc = mapo_error("%s: parameter '%s' is missing (the VAE config expects it; is this "
                            "the right config.json for these weights?)", path, p->name);
            break;
        }
        took[i] = s;
        int ok = s->ndim == p->ndim;
        for (int k = 0; ok && k < p->ndim; k++) ok = s->shape[k] == p->shape[k];
        if (!ok) {
            char a[160], b[160];
            shape_str(a, sizeof a, s->ndim, s->shape);
            shape_str(b, sizeof b, p->ndim, p->shape);
            rc = mapo_error("%s: parameter '%s' has shape %s, the config gives %s", path,
                            s->name, a, b);
            break;
        }
        float *d = t->data + p->offset;
        if (st_to_f32(s, d)) {
            rc = mapo_error("%s: parameter '%s' has dtype %s, not a float type", path, s->name,
                            st_dtype_name(s->dtype));
            break;
        }
        for (int64_t k = 0; k < p->numel; k++)
            if (!isfinite(d[k])) {
                rc = mapo_error("%s: parameter '%s' holds a non-finite value at index %lld",
                                path, s->name, (long long)k);
                break;
            }
    }
    /* a tensor no parameter took, first in name order (a few hundred tensors: a plain scan) */
    for (int j = 0; j < weights_count(&f) && !rc; j++) {
        const st_tensor *s = weights_tensor(&f, j);
        int k = 0;
        while (k < t->n && took[k] != s) k++;
        if (k == t->n)
            rc = mapo_error("%s: unexpected tensor '%s' (not a parameter of this AutoencoderKL "
                            "config)", path, s->name);
    }
    free(took);
    weights_close(&f);
    return rc;
}

void vae_free(vae *v) {
    if (!v) return;
    for (int i = 0; i < VAE_MAX_BLOCKS; i++) {
        free(v->down[i].res);
        free(v->up[i].res);
    }
    params_free(&v->params);
    free(v);
}

/* The folder of the VAE of dir: dir when dir/config.json exists (a VAE folder), else dir/vae when
   dir/vae/config.json does (a pipeline folder, as diffusers' AutoencoderKL.from_pretrained(dir,
   subfolder="vae")). */
static int vae_folder(const char *dir, char d[4096]) {
    char p[4200];
    if (strlen(dir) > 4000) return mapo_error("VAE folder path is too long");
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (mapo_is_file(p)) {
        snprintf(d, 4096, "%s", dir);
        return 0;
    }
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    if (!mapo_is_file(p)) {
        if (!mapo_is_dir(dir)) return mapo_error("%s: no such folder", dir);
        return mapo_error("%s: no config.json (nor vae/config.json): not a diffusers "
                          "AutoencoderKL or pipeline folder", dir);
    }
    snprintf(d, 4096, "%s/vae", dir);
    return 0;
}

/* d = vae_folder(dir), w = its weights (--variant, one file or a sharded checkpoint's index, as
   the UNet's: st_weights_find). 0 found, 1 no weights in d (w = d/diffusion_pytorch_model
   .safetensors), -1 no VAE folder (error set). The one resolution of the loader and
   vae_weights_path (the data cache's vae_fingerprint). */
static int locate(const char *dir, char d[4096], char *w, size_t n) {
    if (vae_folder(dir, d)) return -1;
    return st_weights_find(w, n, d, "diffusion_pytorch_model.safetensors") ? 1 : 0;
}

static int no_weights(const char *d) {
    return mapo_error("%s: no diffusion_pytorch_model.safetensors (nor a sharded "
                      "diffusion_pytorch_model.safetensors.index.json; .bin checkpoints are "
                      "not supported: re-save with safe_serialization)", d);
}

int vae_weights_path(const char *dir, char folder[4096], char *weights, size_t n) {
    const int r = locate(dir, folder, weights, n);
    return r > 0 ? no_weights(folder) : r;
}

/* the config of the VAE folder d (vae_folder's) */
static int read_config(vae *v, const char *d) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", d);
    json_error_t err;
    json_t *root = json_load_file(p, JSON_REJECT_DUPLICATES, &err);
    if (!root) return mapo_error("%s: cannot read config: %s (line %d)", p, err.text, err.line);
    int rc = parse_config(v, root, p);
    json_decref(root);
    return rc;
}

int vae_config_downscale(const char *dir, int *factor) {
    char d[4096];
    if (vae_folder(dir, d)) return -1;
    vae *v = xcalloc(1, sizeof *v);
    int rc = read_config(v, d);
    if (!rc) *factor = 1 << (v->n_blocks - 1);
    free(v);
    return rc;
}

int vae_load_dir(vae **out, const char *dir) {
    *out = NULL;
    char d[4096], p[4200];
    /* the folder and weights vae_weights_path names: --variant, one file or sharded (an index
       and its shards), as the UNet */
    const int where = locate(dir, d, p, sizeof p);
    if (where < 0) return -1;
    vae *v = xcalloc(1, sizeof *v);
    if (read_config(v, d)) {
        free(v);
        return -1;
    }
    char cp[4200];
    snprintf(cp, sizeof cp, "%s/config.json", d);
    if (build(v, cp, p)) {
        vae_free(v);
        return -1;
    }
    v->conv_scratch = (size_t)64 << 20;
    if (where) {
        vae_free(v);
        return no_weights(d);
    }
    if (load_weights(v, p)) {
        vae_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

double vae_scaling_factor(const vae *v) { return v->scaling; }
double vae_shift_factor(const vae *v) { return v->has_shift ? v->shift : 0.0; }
int vae_has_shift(const vae *v) { return v->has_shift; }
int vae_latent_channels(const vae *v) { return v->latent; }
int vae_in_channels(const vae *v) { return v->in_ch; }
int vae_out_channels(const vae *v) { return v->out_ch; }
int vae_downscale(const vae *v) { return 1 << (v->n_blocks - 1); }
int vae_sample_size(const vae *v) { return v->sample_size; }
size_t vae_param_count(const vae *v) { return v->params.total; }

static const float *P(const vae *v, int idx) { return v->params.data + v->params.p[idx].offset; }

/* ------------------------------------------------------------------ layers (one sample) */
/* y[Cout, Ho, Wo] = conv3x3(x[Cin, H, W]) + b, input index iy = oy * stride - pad + ky, zero
   outside [0, H) x [0, W): pad 1 / stride 1 is nn.Conv2d(padding=1); pad 0 / stride 2 with
   Ho = (H - 2) / 2 + 1 is Downsample2D's F.pad(0, 1, 0, 1) then a stride-2 unpadded conv.
   im2col + GEMM in bands of output rows so the scratch stays <= conv_scratch bytes. */
static void conv3x3_banded(vae *v, float *y, const float *x, int Cin, int H, int W,
                           const float *w, const float *b, int Cout, int stride, int pad,
                           int Ho, int Wo) {
    const int64_t ckk = (int64_t)Cin * 9, HWo = (int64_t)Ho * Wo;
    const int64_t row = ckk * Wo;
    int64_t R = (int64_t)(v->conv_scratch / sizeof(float)) / (row > 0 ? row : 1);
    if (R < 1) R = 1;
    if (R > Ho) R = Ho;
    float *col = mem_new(v, row * R);
    for (int r0 = 0; r0 < Ho; r0 += (int)R) {
        const int nr = (int)(Ho - r0 < R ? Ho - r0 : R);
        const int64_t nc = (int64_t)nr * Wo;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < ckk; r++) {
            const int c = (int)(r / 9), ky = (int)(r / 3) % 3, kx = (int)(r % 3);
            float *dst = col + r * nc;
            const float *src = x + (int64_t)c * H * W;
            for (int oy = 0; oy < nr; oy++) {
                const int iy = (r0 + oy) * stride - pad + ky;
                float *d = dst + (int64_t)oy * Wo;
                if (iy < 0 || iy >= H) {
                    for (int ox = 0; ox < Wo; ox++) d[ox] = 0;
                    continue;
                }
                const float *s = src + (int64_t)iy * W;
                for (int ox = 0; ox < Wo; ox++) {
                    const int ix = ox * stride - pad + kx;
                    d[ox] = ix >= 0 && ix < W ? s[ix] : 0.0f;
                }
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, (int)nc, (int)ckk, 1.0f, w,
                    (int)ckk, col, (int)nc, 0.0f, y + (int64_t)r0 * Wo, (int)HWo);
        if (b) {
#pragma omp parallel for schedule(static)
            for (int c = 0; c < Cout; c++) {
                float *yc = y + (int64_t)c * HWo + (int64_t)r0 * Wo;
                for (int64_t i = 0; i < nc; i++) yc[i] += b[c];
            }
        }
    }
    mem_del(v, col, row * R);
}

/* x [C, H, W] -> new [Cout, H, W] (3x3, pad 1) */
static float *conv3(vae *v, const float *x, int C, int H, int W, int wi, int bi, int Cout) {
    float *y = mem_new(v, (int64_t)Cout * H * W);
    conv3x3_banded(v, y, x, C, H, W, P(v, wi), P(v, bi), Cout, 1, 1, H, W);
    return y;
}
/* x [C, HW] -> new [Cout, HW] (1x1) */
static float *conv1(vae *v, const float *x, int C, int H, int W, int wi, int bi, int Cout) {
    float *y = mem_new(v, (int64_t)Cout * H * W);
    conv2d_forward(y, x, P(v, wi), P(v, bi), 1, C, H, W, Cout, 1, 1, 0);
    return y;
}

/* y = GroupNorm(x) (eps 1e-6), then SiLU if act; y may be x (both kernels are elementwise
   after the statistics) */
static void gn(vae *v, float *y, const float *x, int C, int64_t HW, int wi, int bi, int act) {
    float *mean = xmalloc((size_t)v->groups * sizeof(float));
    float *rstd = xmalloc((size_t)v->groups * sizeof(float));
    group_norm_forward(y, mean, rstd, x, P(v, wi), P(v, bi), 1, C, HW, v->groups, VAE_EPS);
    free(mean);
    free(rstd);
    if (act) silu_forward(y, y, (int64_t)C * HW);
}

/* ResnetBlock2D (temb None, output_scale_factor 1); consumes x [cin, H, W] */
static float *resnet(vae *v, const vae_resnet *r, float *x, int H, int W) {
    const int64_t HW = (int64_t)H * W;
    float *h = mem_new(v, (int64_t)r->cin * HW);
    gn(v, h, x, r->cin, HW, r->n1w, r->n1b, 1);
    float *h2 = conv3(v, h, r->cin, H, W, r->c1w, r->c1b, r->cout);
    mem_del(v, h, (int64_t)r->cin * HW);
    gn(v, h2, h2, r->cout, HW, r->n2w, r->n2b, 1);
    float *y = conv3(v, h2, r->cout, H, W, r->c2w, r->c2b, r->cout);
    mem_del(v, h2, (int64_t)r->cout * HW);
    const int64_t n = (int64_t)r->cout * HW;
    if (r->sw >= 0) {
        float *s = conv1(v, x, r->cin, H, W, r->sw, r->sb, r->cout);
        mem_del(v, x, (int64_t)r->cin * HW);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = s[i] + y[i];
        mem_del(v, s, n);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] + y[i];
        mem_del(v, x, n);
    }
    return y;
}

/* diffusers Attention (_from_deprecated_attn_block, one head of dim C, group_norm, residual,
   rescale 1); consumes x [C, H, W] */
static float *attention(vae *v, const vae_attn *a, float *x, int C, int H, int W) {
    const int64_t HW = (int64_t)H * W, n = (int64_t)C * HW;
    float *xn = mem_new(v, n);
    gn(v, xn, x, C, HW, a->gw, a->gb, 0);
    float *t = mem_new(v, n);
    nchw_to_nhwc_tiled(t, xn, 1, C, HW, 0);
    mem_del(v, xn, n);
    float *q = mem_new(v, n), *k = mem_new(v, n), *val = mem_new(v, n);
    linear_forward(q, t, P(v, a->qw), P(v, a->qb), HW, C, C);
    linear_forward(k, t, P(v, a->kw), P(v, a->kb), HW, C, C);
    linear_forward(val, t, P(v, a->vw), P(v, a->vb), HW, C, C);
    mem_del(v, t, n);
    float *o = mem_new(v, n), *lse = mem_new(v, HW);
    /* attention_forward allocates a 64 x HW score tile per thread */
    mem_touch(v, (size_t)omp_get_max_threads() * 64 * (size_t)HW * sizeof(float));
    attention_forward(o, lse, q, k, val, 1, 1, (int)HW, (int)HW, C, 1.0 / sqrt((double)C));
    mem_del(v, lse, HW);
    mem_del(v, q, n);
    mem_del(v, k, n);
    mem_del(v, val, n);
    float *p = mem_new(v, n);
    linear_forward(p, o, P(v, a->ow), P(v, a->ob), HW, C, C);
    mem_del(v, o, n);
    float *y = mem_new(v, n);
    nhwc_to_nchw_tiled(y, p, 1, C, HW, 0);
    mem_del(v, p, n);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = y[i] + x[i];
    mem_del(v, x, n);
    return y;
}

static float *mid_block(vae *v, const vae_mid *m, float *x, int C, int H, int W) {
    x = resnet(v, &m->r0, x, H, W);
    if (m->has_attn) x = attention(v, &m->at, x, C, H, W);
    return resnet(v, &m->r1, x, H, W);
}

/* Encoder + quant_conv for one sample: x [in, H, W] -> new moments [2L, H/f, W/f]. H, W >= f
   (checked by callers). */
static float *encode_one(vae *v, const float *x, int H, int W, int *ho, int *wo) {
    const int n = v->n_blocks;
    int C = v->block_out[0];
    float *a = conv3(v, x, v->in_ch, H, W, v->e_cin_w, v->e_cin_b, C);
    for (int i = 0; i < n; i++) {
        const vae_block *b = &v->down[i];
        for (int j = 0; j < b->n_res; j++) {
            a = resnet(v, &b->res[j], a, H, W);
            C = b->res[j].cout;
        }
        if (b->cw >= 0) {
            const int H2 = (H - 2) / 2 + 1, W2 = (W - 2) / 2 + 1;
            float *d = mem_new(v, (int64_t)C * H2 * W2);
            conv3x3_banded(v, d, a, C, H, W, P(v, b->cw), P(v, b->cb), C, 2, 0, H2, W2);
            mem_del(v, a, (int64_t)C * H * W);
            a = d;
            H = H2;
            W = W2;
        }
    }
    a = mid_block(v, &v->e_mid, a, C, H, W);
    gn(v, a, a, C, (int64_t)H * W, v->e_nout_w, v->e_nout_b, 1);
    const int L2 = 2 * v->latent;
    float *m = conv3(v, a, C, H, W, v->e_cout_w, v->e_cout_b, L2);
    mem_del(v, a, (int64_t)C * H * W);
    if (v->quant) {
        float *q = conv1(v, m, L2, H, W, v->q_w, v->q_b, L2);
        mem_del(v, m, (int64_t)L2 * H * W);
        m = q;
    }
    *ho = H;
    *wo = W;
    return m;
}

/* post_quant_conv + Decoder for one sample: z [L, h, w] -> new [out, h*f, w*f] */
static float *decode_one(vae *v, const float *z, int h, int w) {
    const int n = v->n_blocks, L = v->latent;
    int C = v->block_out[n - 1], H = h, W = w;
    float *a;
    if (v->post_quant) {
        float *pq = conv1(v, z, L, H, W, v->pq_w, v->pq_b, L);
        a = conv3(v, pq, L, H, W, v->d_cin_w, v->d_cin_b, C);
        mem_del(v, pq, (int64_t)L * H * W);
    } else {
        a = conv3(v, z, L, H, W, v->d_cin_w, v->d_cin_b, C);
    }
    a = mid_block(v, &v->d_mid, a, C, H, W);
    for (int i = 0; i < n; i++) {
        const vae_block *b = &v->up[i];
        for (int j = 0; j < b->n_res; j++) {
            a = resnet(v, &b->res[j], a, H, W);
            C = b->res[j].cout;
        }
        if (b->cw >= 0) {
            float *u = mem_new(v, (int64_t)C * 4 * H * W);
            upsample_nearest2x_forward(u, a, C, H, W);
            mem_del(v, a, (int64_t)C * H * W);
            H *= 2;
            W *= 2;
            a = conv3(v, u, C, H, W, b->cw, b->cb, C);
            mem_del(v, u, (int64_t)C * H * W);
        }
    }
    gn(v, a, a, C, (int64_t)H * W, v->d_nout_w, v->d_nout_b, 1);
    float *y = conv3(v, a, C, H, W, v->d_cout_w, v->d_cout_b, v->out_ch);
    mem_del(v, a, (int64_t)C * H * W);
    return y;
}

/* ------------------------------------------------------------------ tiling */
typedef float *(*tile_fn)(vae *v, const float *in, int h, int w, int *ho, int *wo);

static float *enc_tile(vae *v, const float *in, int h, int w, int *ho, int *wo) {
    return encode_one(v, in, h, w, ho, wo);
}
static float *dec_tile(vae *v, const float *in, int h, int w, int *ho, int *wo) {
    *ho = h * vae_downscale(v);
    *wo = w * vae_downscale(v);
    return decode_one(v, in, h, w);
}

typedef struct {
    int tile_in, overlap_in, blend, row_limit; /* diffusers' tile geometry */
    int up;                                    /* 1: decode (x f), 0: encode (/ f) */
} tiling;

/* output size of a tile of input size s */
static int tile_out(const vae *v, const tiling *t, int s) {
    const int f = vae_downscale(v);
    return t->up ? s * f : s / f;
}

/* the size diffusers' tiled loop assembles along one axis of input size n */
static int64_t tiled_size(const vae *v, const tiling *t, int n) {
    int64_t total = 0;
    for (int i = 0; i < n; i += t->overlap_in) {
        int s = n - i < t->tile_in ? n - i : t->tile_in;
        int o = tile_out(v, t, s);
        total += o < t->row_limit ? o : t->row_limit;
    }
    return total;
}

static int tiling_for(const vae *v, int up, tiling *t) {
    const int f = vae_downscale(v);
    const int tsm = v->sample_size, tlm = (int)(v->sample_size / f);
    t->up = up;
    if (up) {
        t->tile_in = tlm;
        t->overlap_in = (int)(tlm * (1 - 0.25));
        t->blend = (int)(tsm * 0.25);
        t->row_limit = tsm - t->blend;
    } else {
        t->tile_in = tsm;
        t->overlap_in = (int)(tsm * (1 - 0.25));
        t->blend = (int)(tlm * 0.25);
        t->row_limit = tlm - t->blend;
    }
    if (tlm < 1 || t->overlap_in < 1)
        return mapo_error("VAE tiling: sample_size %d with downscale %d gives a latent tile of "
                          "%d and an overlap step of %d (diffusers' tiling cannot run)",
                          tsm, f, tlm, t->overlap_in);
    return 0;
}

/* diffusers' tiled loop for one sample: in [Cin, Hin, Win] -> out [Cout, Hout, Wout] (the
   caller's buffer, Hout / Wout checked against tiled_size by the caller). Tiles are processed in
   diffusers' order; each is blended in place with the (already blended) tile above (blend_v)
   and then the one to its left (blend_h), and its top-left row_limit x row_limit corner is
   copied out. Only the bottom `blend` rows of the previous tile row and the right `blend`
   columns of the left tile are kept. */
static void tiled_run(vae *v, const tiling *t, tile_fn fn, const float *in, int Cin, int Hin,
                      int Win, float *out, int Cout, int Hout, int Wout) {
    const int be_max = t->blend, rl = t->row_limit;
    const int ncol = (Win + t->overlap_in - 1) / t->overlap_in;
    /* bottom strips of the previous tile row, per column: [Cout, sh[j], sw[j]] */
    float **strip = xcalloc(ncol, sizeof *strip);
    int *sh = xcalloc(ncol, sizeof *sh), *sw = xcalloc(ncol, sizeof *sw);
    int64_t *sn = xcalloc(ncol, sizeof *sn);
    int oy = 0;
    for (int i = 0; i < Hin; i += t->overlap_in) {
        const int th = Hin - i < t->tile_in ? Hin - i : t->tile_in;
        float *left = NULL; /* right columns of the left tile: [Cout, lh, lw] */
        int lh = 0, lw = 0;
        int ox = 0, piece_h = 0;
        for (int j = 0, jc = 0; j < Win; j += t->overlap_in, jc++) {
            const int tw = Win - j < t->tile_in ? Win - j : t->tile_in;
            float *tin = mem_new(v, (int64_t)Cin * th * tw);
            for (int c = 0; c < Cin; c++)
                for (int y = 0; y < th; y++)
                    memcpy(tin + ((int64_t)c * th + y) * tw,
                           in + ((int64_t)c * Hin + i + y) * Win + j, (size_t)tw * sizeof(float));
            int oh, ow;
            float *T = fn(v, tin, th, tw, &oh, &ow);
            mem_del(v, tin, (int64_t)Cin * th * tw);
            /* blend_v(above, T): be = min(above.h, T.h, blend) */
            if (strip[jc]) {
                const int ah = sh[jc];
                int be = ah < oh ? ah : oh;
                if (be > be_max) be = be_max;
                /* the strip holds the last sh rows of the tile above; same width as T */
                for (int y = 0; y < be; y++) {
                    const float wa = (float)(1.0 - (double)y / be), wb = (float)((double)y / be);
                    for (int c = 0; c < Cout; c++) {
                        const float *A = strip[jc] + ((int64_t)c * ah + (ah - be + y)) * sw[jc];
                        float *Bp = T + ((int64_t)c * oh + y) * ow;
                        for (int x = 0; x < ow; x++) Bp[x] = A[x] * wa + Bp[x] * wb;
                    }
                }
            }
            /* blend_h(left, T): be = min(left.w, T.w, blend); the left tile's full width is at
               least lw, and the strip holds its last lw columns */
            if (left) {
                int be = lw < ow ? lw : ow;
                if (be > be_max) be = be_max;
                for (int c = 0; c < Cout; c++)
                    for (int y = 0; y < oh; y++) {
                        const float *A = left + ((int64_t)c * lh + y) * lw;
                        float *Bp = T + ((int64_t)c * oh + y) * ow;
                        for (int x = 0; x < be; x++) {
                            const float wa = (float)(1.0 - (double)x / be),
                                        wb = (float)((double)x / be);
                            Bp[x] = A[lw - be + x] * wa + Bp[x] * wb;
                        }
                    }
            }
            /* copy the corner out */
            const int ph = oh < rl ? oh : rl, pw = ow < rl ? ow : rl;
            for (int c = 0; c < Cout; c++)
                for (int y = 0; y < ph; y++)
                    memcpy(out + ((int64_t)c * Hout + oy + y) * Wout + ox,
                           T + ((int64_t)c * oh + y) * ow, (size_t)pw * sizeof(float));
            ox += pw;
            piece_h = ph;
            /* keep this tile's right columns for the next tile of the row */
            mem_del(v, left, (int64_t)Cout * lh * lw);
            lh = oh;
            lw = ow < be_max ? ow : be_max;
            left = mem_new(v, (int64_t)Cout * lh * lw);
            for (int c = 0; c < Cout; c++)
                for (int y = 0; y < oh; y++)
                    memcpy(left + ((int64_t)c * lh + y) * lw, T + ((int64_t)c * oh + y) * ow + ow - lw,
                           (size_t)lw * sizeof(float));
            /* and its bottom rows for the tile below */
            mem_del(v, strip[jc], sn[jc]);
            sh[jc] = oh < be_max ? oh : be_max;
            sw[jc] = ow;
            sn[jc] = (int64_t)Cout * sh[jc] * ow;
            strip[jc] = mem_new(v, sn[jc]);
            for (int c = 0; c < Cout; c++)
                memcpy(strip[jc] + (int64_t)c * sh[jc] * ow,
                       T + ((int64_t)c * oh + (oh - sh[jc])) * ow, (size_t)sh[jc] * ow * sizeof(float));
            mem_del(v, T, (int64_t)Cout * oh * ow);
        }
        mem_del(v, left, (int64_t)Cout * lh * lw);
        oy += piece_h;
    }
    for (int j = 0; j < ncol; j++) mem_del(v, strip[j], sn[j]);
    free(strip);
    free(sh);
    free(sw);
    free(sn);
}

/* ------------------------------------------------------------------ public entry points */
static int check_sizes(const vae *v, const char *what, int B, int H, int W, int min_side) {
    if (B < 1 || H < min_side || W < min_side || H > VAE_MAX_SIDE || W > VAE_MAX_SIDE)
        return mapo_error("vae_%s: bad size B=%d H=%d W=%d (need B >= 1 and %d <= H, W <= %d)",
                          what, B, H, W, min_side, VAE_MAX_SIDE);
    /* the largest activation plane: the full-resolution side */
    int64_t side = !strcmp(what, "decode") ? (int64_t)vae_downscale(v) : 1;
    if ((int64_t)H * side * W * side > VAE_MAX_PLANE)
        return mapo_error("vae_%s: %dx%d is too large (more than %lld pixels per image)", what,
                          H, W, (long long)VAE_MAX_PLANE);
    return 0;
}

static void finish_moments(const vae *v, const float *m, int64_t hw, int64_t b, float *mean,
                           float *logvar, float *std) {
    const int L = v->latent;
    const int64_t n = (int64_t)L * hw, o = b * n;
    if (mean) memcpy(mean + o, m, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        float lv = m[n + i];
        lv = lv < -30.0f ? -30.0f : (lv > 20.0f ? 20.0f : lv);
        if (logvar) logvar[o + i] = lv;
        if (std) std[o + i] = expf(0.5f * lv);
    }
}

static int encode_impl(vae *v, const float *x, int B, int H, int W, float *mean, float *logvar,
                       float *std, int tiled) {
    const int f = vae_downscale(v);
    if (check_sizes(v, "encode", B, H, W, f)) return -1;
    const int h = H / f, w = W / f, L = v->latent;
    const int64_t in_n = (int64_t)v->in_ch * H * W, hw = (int64_t)h * w;
    tiling t;
    int use_tiles = tiled && (H > v->sample_size || W > v->sample_size);
    if (use_tiles) {
        if (tiling_for(v, 0, &t)) return -1;
        int64_t th = tiled_size(v, &t, H), tw = tiled_size(v, &t, W);
        if (th != h || tw != w)
            return mapo_error("vae_encode_tiled: with sample_size %d, diffusers' tiled encode "
                              "of a %dx%d image assembles %lldx%lld latents instead of %dx%d",
                              v->sample_size, H, W, (long long)th, (long long)tw, h, w);
        /* every tile, the last ones included, must survive the downsampling */
        int lastH = H - ((H - 1) / t.overlap_in) * t.overlap_in;
        int lastW = W - ((W - 1) / t.overlap_in) * t.overlap_in;
        if (lastH < f || lastW < f)
            return mapo_error("vae_encode_tiled: a %dx%d image leaves an edge tile of %dx%d "
                              "pixels, smaller than the downscale factor %d (diffusers fails "
                              "on it too)", H, W, lastH, lastW, f);
    }
    for (int b = 0; b < B; b++) {
        float *m;
        if (use_tiles) {
            m = mem_new(v, 2 * L * hw);
            tiled_run(v, &t, enc_tile, x + b * in_n, v->in_ch, H, W, m, 2 * L, h, w);
        } else {
            int ho, wo;
            m = encode_one(v, x + b * in_n, H, W, &ho, &wo);
        }
        finish_moments(v, m, hw, b, mean, logvar, std);
        mem_del(v, m, 2 * L * hw);
    }
    return 0;
}

int vae_encode(vae *v, const float *x, int B, int H, int W, float *mean, float *logvar,
               float *std) {
    return encode_impl(v, x, B, H, W, mean, logvar, std, 0);
}
int vae_encode_tiled(vae *v, const float *x, int B, int H, int W, float *mean, float *logvar,
                     float *std) {
    return encode_impl(v, x, B, H, W, mean, logvar, std, 1);
}

int vae_decode(vae *v, const float *z, int B, int h, int w, float *x, int tiled) {
    if (check_sizes(v, "decode", B, h, w, 1)) return -1;
    const int f = vae_downscale(v), H = h * f, W = w * f, L = v->latent;
    const int64_t zn = (int64_t)L * h * w, xn = (int64_t)v->out_ch * H * W;
    const int tlm = v->sample_size / f;
    tiling t;
    int use_tiles = tiled && (h > tlm || w > tlm);
    if (use_tiles) {
        if (tiling_for(v, 1, &t)) return -1;
        int64_t th = tiled_size(v, &t, h), tw = tiled_size(v, &t, w);
        if (th != H || tw != W)
            return mapo_error("vae_decode: with sample_size %d, diffusers' tiled decode of a "
                              "%dx%d latent assembles a %lldx%lld image instead of %dx%d",
                              v->sample_size, h, w, (long long)th, (long long)tw, H, W);
    }
    for (int b = 0; b < B; b++) {
        if (use_tiles) {
            tiled_run(v, &t, dec_tile, z + b * zn, L, h, w, x + b * xn, v->out_ch, H, W);
        } else {
            float *y = decode_one(v, z + b * zn, h, w);
            memcpy(x + b * xn, y, (size_t)xn * sizeof(float));
            mem_del(v, y, xn);
        }
    }
    return 0;
}

void vae_sample(float *sample, const float *mean, const float *std, const float *noise,
                int64_t n) {
    for (int64_t i = 0; i < n; i++) sample[i] = mean[i] + std[i] * noise[i];
}

/* float32 arithmetic with the factors rounded to float, as torch does for
   `(latents - shift) * scaling` on a float32 tensor */
void vae_scale_latents(const vae *v, float *z, int64_t n) {
    const float sc = (float)v->scaling, sh = (float)v->shift;
    if (v->has_shift)
        for (int64_t i = 0; i < n; i++) z[i] = (z[i] - sh) * sc;
    else
        for (int64_t i = 0; i < n; i++) z[i] = z[i] * sc;
}
void vae_unscale_latents(const vae *v, float *z, int64_t n) {
    const float sc = (float)v->scaling, sh = (float)v->shift;
    if (v->has_shift)
        for (int64_t i = 0; i < n; i++) z[i] = z[i] / sc + sh;
    else
        for (int64_t i = 0; i < n; i++) z[i] = z[i] / sc;
}

int vae_encode_latents(vae *v, const float *x, int B, int H, int W, const float *noise,
                       float *latents, int tiled) {
    const int f = vae_downscale(v);
    if (check_sizes(v, "encode", B, H, W, f)) return -1;
    const int64_t n = (int64_t)B * v->latent * (H / f) * (W / f);
    float *std = noise ? xmalloc((size_t)n * sizeof(float)) : NULL;
    int rc = encode_impl(v, x, B, H, W, latents, NULL, std, tiled);
    if (!rc && noise) vae_sample(latents, latents, std, noise, n);
    free(std);
    if (!rc) vae_scale_latents(v, latents, n);
    return rc;
}

int vae_decode_latents(vae *v, const float *latents, int B, int h, int w, float *x, int tiled) {
    if (check_sizes(v, "decode", B, h, w, 1)) return -1;
    const int64_t n = (int64_t)B * v->latent * h * w;
    float *z = xmalloc((size_t)n * sizeof(float));
    memcpy(z, latents, (size_t)n * sizeof(float));
    vae_unscale_latents(v, z, n);
    int rc = vae_decode(v, z, B, h, w, x, tiled);
    free(z);
    return rc;
}
