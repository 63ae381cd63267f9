/* unet_config.c -- read and validate a diffusers UNet2DConditionModel config.json.
 * Every key is either understood, checked to hold a value we implement, or refused by
 * name: a silently ignored key would train a different model than the user asked for. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "mapo/common.h"
#include "mapo/unet.h"

/* Read an int or a list of ints into out[n]; a scalar is broadcast. */
static int int_or_list(json_t *v, int *out, int n, const char *key, const char *path) {
    json_int_t x[UNET_MAX_BLOCKS]; /* checked before the conversion to int */
    if (n > UNET_MAX_BLOCKS) return mapo_error("%s: '%s' has too many entries", path, key);
    if (json_is_integer(v)) {
        for (int i = 0; i < n; i++) x[i] = json_integer_value(v);
    } else if (json_is_array(v)) {
        if ((int)json_array_size(v) != n)
            return mapo_error("%s: '%s' has %zu entries, expected %d (one per block)", path, key,
                              json_array_size(v), n);
        for (int i = 0; i < n; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_integer(e))
                return mapo_error("%s: '%s' entry %d is not an integer (nested lists are not "
                                  "supported)", path, key, i);
            x[i] = json_integer_value(e);
        }
    } else {
        return mapo_error("%s: '%s' must be an integer or a list of integers", path, key);
    }
    for (int i = 0; i < n; i++) {
        if (x[i] <= 0 || x[i] > 1 << 20)
            return mapo_error("%s: '%s' value %lld is out of range", path, key, (long long)x[i]);
        out[i] = (int)x[i];
    }
    return 0;
}

static int is_false_or_null(json_t *v) {
    if (!v || json_is_null(v) || json_is_false(v)) return 1;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if (!json_is_false(e)) return 0;
        return 1;
    }
    return 0;
}

static int num_eq(json_t *v, double x) {
    return v && json_is_number(v) && fabs(json_number_value(v) - x) < 1e-12;
}

static int str_eq(json_t *v, const char *s) { return v && json_is_string(v) && !strcmp(json_string_value(v), s); }

/* Keys that must hold one given "neutral" value; anything else changes the model. */
typedef enum { NEED_NULL, NEED_FALSE, NEED_FALSE_OR_NULL, NEED_NUM, NEED_STR, NEED_STR_OR_NULL, ANY } need_kind;
typedef struct {
    const char *key;
    need_kind kind;
    double num;
    const char *str;
} neutral_key;

static const neutral_key NEUTRAL[] = {
    {"center_input_sample", NEED_FALSE, 0, NULL},
    {"only_cross_attention", NEED_FALSE_OR_NULL, 0, NULL},
    {"mid_block_type", NEED_STR, 0, "UNetMidBlock2DCrossAttn"},
    {"downsample_padding", NEED_NUM, 1, NULL},
    {"mid_block_scale_factor", NEED_NUM, 1, NULL},
    {"dropout", NEED_NUM, 0, NULL},
    {"act_fn", NEED_STR, 0, "silu"},
    {"encoder_hid_dim", NEED_NULL, 0, NULL},
    {"encoder_hid_dim_type", NEED_NULL, 0, NULL},
    {"num_attention_heads", NEED_NULL, 0, NULL},
    {"dual_cross_attention", NEED_FALSE, 0, NULL},
    {"class_embed_type", NEED_NULL, 0, NULL},
    {"num_class_embeds", NEED_NULL, 0, NULL},
    {"upcast_attention", ANY, 0, NULL}, /* we compute attention in float32 anyway */
    {"resnet_time_scale_shift", NEED_STR, 0, "default"},
    {"resnet_skip_time_act", NEED_FALSE, 0, NULL},
    {"resnet_out_scale_factor", NEED_NUM, 1, NULL},
    {"time_embedding_type", NEED_STR, 0, "positional"},
    {"time_embedding_dim", NEED_NULL, 0, NULL},
    {"time_embedding_act_fn", NEED_NULL, 0, NULL},
    {"timestep_post_act", NEED_NULL, 0, NULL},
    {"time_cond_proj_dim", NEED_NULL, 0, NULL},
    {"conv_in_kernel", NEED_NUM, 3, NULL},
    {"conv_out_kernel", NEED_NUM, 3, NULL},
    {"attention_type", NEED_STR, 0, "default"},
    {"class_embeddings_concat", NEED_FALSE, 0, NULL},
    {"mid_block_only_cross_attention", NEED_FALSE_OR_NULL, 0, NULL},
    {"cross_attention_norm", NEED_NULL, 0, NULL},
    {"reverse_transformer_layers_per_block", NEED_NULL, 0, NULL},
    {"addition_embed_type_num_heads", ANY, 0, NULL}, /* only used by text/image embeddings */
    {"sample_size", ANY, 0, NULL},
};

static const char *KNOWN[] = {
    "in_channels", "out_channels", "flip_sin_to_cos", "freq_shift", "down_block_types",
    "up_block_types", "block_out_channels", "layers_per_block", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
    "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
};

static int check_neutral(json_t *root, const char *path) {
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (key[0] == '_') {
            if (!strcmp(key, "_class_name") && !str_eq(v, "UNet2DConditionModel"))
                return mapo_error("%s: _class_name is '%s', only UNet2DConditionModel is "
                                  "supported", path, json_is_string(v) ? json_string_value(v) : "?");
            continue;
        }
        int found = 0;
        for (size_t i = 0; i < sizeof KNOWN / sizeof *KNOWN; i++)
            if (!strcmp(key, KNOWN[i])) found = 1;
        for (size_t i = 0; !found && i < sizeof NEUTRAL / sizeof *NEUTRAL; i++) {
            const neutral_key *n = &NEUTRAL[i];
            if (strcmp(key, n->key)) continue;
            found = 1;
            int ok = 1;
            switch (n->kind) {
            case NEED_NULL: ok = json_is_null(v); break;
            case NEED_FALSE: ok = json_is_false(v); break;
            case NEED_FALSE_OR_NULL: ok = is_false_or_null(v); break;
            case NEED_NUM: ok = num_eq(v, n->num); break;
            case NEED_STR: ok = str_eq(v, n->str); break;
            case NEED_STR_OR_NULL: ok = json_is_null(v) || str_eq(v, n->str); break;
            case ANY: break;
            }
            if (!ok) {
                char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
                mapo_error("%s: unsupported value %s for '%s' (mapo implements only the "
                           "standard SD/SDXL setting)", path, s ? s : "?", key);
                free(s);
                return -1;
            }
        }
        if (!found) return mapo_error("%s: unsupported config key '%s'", path, key);
    }
    return 0;
}

static int get_int(json_t *root, const char *key, int def, int *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return mapo_error("%s: '%s' must be an integer", path, key);
    const json_int_t x = json_integer_value(v);
    if (x < INT_MIN || x > INT_MAX)
        return mapo_error("%s: '%s' value %lld is out of range", path, key, (long long)x);
    *out = (int)x;
    return 0;
}
static int get_bool(json_t *root, const char *key, int def, int *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return mapo_error("%s: '%s' must be true or false", path, key);
    *out = json_is_true(v);
    return 0;
}
static int get_num(json_t *root, const char *key, double def, double *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return mapo_error("%s: '%s' must be a number", path, key);
    *out = json_number_value(v);
    return 0;
}

/* int_or_list of root[key], with diffusers' default when absent or null */
static int list_default(json_t *root, const char *key, int def, int *out, int n,
                        const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        for (int i = 0; i < n; i++) out[i] = def;
        return 0;
    }
    return int_or_list(v, out, n, key, path);
}

static int parse(unet_config *c, json_t *root, const char *path) {
    if (!json_is_object(root)) return mapo_error("%s: config is not a JSON object", path);
    if (check_neutral(root, path)) return -1;
    json_t *down = json_object_get(root, "down_block_types");
    json_t *up = json_object_get(root, "up_block_types");
    json_t *boc = json_object_get(root, "block_out_channels");
    if (!json_is_array(down) || !json_is_array(up) || !json_is_array(boc))
        return mapo_error("%s: down_block_types, up_block_types and block_out_channels must be "
                          "lists", path);
    int n = (int)json_array_size(boc);
    if (n < 1 || n > UNET_MAX_BLOCKS)
        return mapo_error("%s: %d blocks (1..%d supported)", path, n, UNET_MAX_BLOCKS);
    if ((int)json_array_size(down) != n || (int)json_array_size(up) != n)
        return mapo_error("%s: down_block_types, up_block_types and block_out_channels must "
                          "have the same length", path);
    c->n_blocks = n;
    if (int_or_list(boc, c->block_out, n, "block_out_channels", path)) return -1;
    for (int i = 0; i < n; i++) {
        json_t *d = json_array_get(down, i), *u = json_array_get(up, i);
        if (str_eq(d, "CrossAttnDownBlock2D")) c->down_cross[i] = 1;
        else if (str_eq(d, "DownBlock2D")) c->down_cross[i] = 0;
        else
            return mapo_error("%s: unsupported down block type %s (supported: DownBlock2D, "
                              "CrossAttnDownBlock2D)", path,
                              json_is_string(d) ? json_string_value(d) : "(not a string)");
        if (str_eq(u, "CrossAttnUpBlock2D")) c->up_cross[i] = 1;
        else if (str_eq(u, "UpBlock2D")) c->up_cross[i] = 0;
        else
            return mapo_error("%s: unsupported up block type %s (supported: UpBlock2D, "
                              "CrossAttnUpBlock2D)", path,
                              json_is_string(u) ? json_string_value(u) : "(not a string)");
    }
    int cd[UNET_MAX_BLOCKS];
    if (list_default(root, "layers_per_block", 2, c->layers, n, path) ||
        list_default(root, "attention_head_dim", 8, c->heads, n, path) ||
        list_default(root, "transformer_layers_per_block", 1, c->tlayers, n, path) ||
        list_default(root, "cross_attention_dim", 1280, cd, n, path))
        return -1;
    for (int i = 1; i < n; i++)
        if (cd[i] != cd[0])
            return mapo_error("%s: per-block cross_attention_dim with different values is not "
                              "supported", path);
    c->cross_dim = cd[0];
    if (get_int(root, "in_channels", 4, &c->in_channels, path) ||
        get_int(root, "out_channels", 4, &c->out_channels, path) ||
        get_int(root, "norm_num_groups", 32, &c->norm_groups, path) ||
        get_num(root, "norm_eps", 1e-5, &c->norm_eps, path) ||
        get_bool(root, "use_linear_projection", 0, &c->linear_proj, path) ||
        get_bool(root, "flip_sin_to_cos", 1, &c->flip_sin_to_cos, path) ||
        get_num(root, "freq_shift", 0, &c->freq_shift, path))
        return -1;
    json_t *ss = json_object_get(root, "sample_size");
    c->sample_size = json_is_integer(ss) ? (int)json_integer_value(ss) : 0;
    if (c->in_channels <= 0 || c->out_channels <= 0)
        return mapo_error("%s: in_channels/out_channels must be positive", path);
    if (c->norm_groups <= 0 || !(c->norm_eps > 0))
        return mapo_error("%s: norm_num_groups and norm_eps must be positive", path);
    for (int i = 0; i < n; i++) {
        if (c->block_out[i] % c->norm_groups)
            return mapo_error("%s: block_out_channels[%d] = %d is not divisible by "
                              "norm_num_groups = %d", path, i, c->block_out[i], c->norm_groups);
        if (c->block_out[i] % c->heads[i])
            return mapo_error("%s: block_out_channels[%d] = %d is not divisible by its %d "
                              "attention heads (attention_head_dim)", path, i, c->block_out[i], c->heads[i]);
    }
    json_t *aet = json_object_get(root, "addition_embed_type");
    if (!aet || json_is_null(aet)) {
        c->text_time = 0;
    } else if (str_eq(aet, "text_time")) {
        c->text_time = 1;
        if (get_int(root, "addition_time_embed_dim", 0, &c->add_time_dim, path) ||
            get_int(root, "projection_class_embeddings_input_dim", 0, &c->proj_class_dim, path))
            return -1;
        if (c->add_time_dim <= 0 || c->proj_class_dim <= 6LL * c->add_time_dim)
            return mapo_error("%s: text_time needs addition_time_embed_dim > 0 and "
                              "projection_class_embeddings_input_dim > 6 * it", path);
    } else {
        return mapo_error("%s: unsupported addition_embed_type %s (supported: null, "
                          "\"text_time\")", path,
                          json_is_string(aet) ? json_string_value(aet) : "(not a string)");
    }
    for (int i = 0; i < n; i++)
        if (c->layers[i] > 15 || c->tlayers[i] > 256)
            return mapo_error("%s: layers_per_block (%d) or transformer_layers_per_block (%d) "
                              "of block %d is larger than mapo supports (15 / 256)", path,
                              c->layers[i], c->tlayers[i], i);
    c->time_embed_dim = c->block_out[0] * 4;
    return 0;
}

int unet_config_load(unet_config *c, const char *path) {
    memset(c, 0, sizeof *c);
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        return mapo_error("%s: cannot read config: %s (line %d)", path, err.text, err.line);
    }
    if (parse(c, root, path)) {
        json_decref(root);
        return -1;
    }
    c->json = root;
    return 0;
}

void unet_config_free(unet_config *c) {
    if (c->json) json_decref((json_t *)c->json);
    c->json = NULL;
}
