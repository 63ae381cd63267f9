/* pixel_pipeline.c -- writes a pixel-space pipeline folder (see pixel_pipeline.h). */
#include "mapo/pixel_pipeline.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "mapo/clip_text.h"
#include "mapo/common.h"
#include "mapo/safetensors.h"
#include "mapo/tokenizer.h"
#include "mapo/unet.h"

void pixel_pipeline_config_default(pixel_pipeline_config *c) {
    c->channels = 1;
    c->image_size = 32;
    c->block_out[0] = 32;
    c->block_out[1] = 64;
    c->block_out[2] = 64;
    c->layers_per_block = 1;
    c->heads = 4;
    c->text_width = 32;
    c->text_layers = 2;
    c->seed = 0;
}

static int mkdir_ok(const char *d) {
    if (mkdir(d, 0755) && errno != EEXIST) return mapo_error("%s: cannot create: %s", d, strerror(errno));
    return 0;
}

/* json_t -> file (atomic); takes the reference */
static int write_json(const char *dir, const char *name, json_t *j) {
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return mapo_error("%s: cannot serialise", p);
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite; rewrite it after */
    int rc = mapo_write_file_atomic(p, s, n + 1);
    free(s);
    return rc;
}

static json_t *pair_of(const char *lib, const char *cls) {
    return lib ? json_pack("[ss]", lib, cls) : json_pack("[nn]");
}

static int write_tokenizer(const char *dir) {
    if (strlen(dir) > 4000) return mapo_error("%s: path too long", dir);
    json_t *v = json_object();
    char ch[5], key[16];
    int id = 0;
    for (int b = 0; b < 256; b++) json_object_set_new(v, clip_byte_to_unicode(b, ch), json_integer(id++));
    for (int b = 0; b < 256; b++) {
        snprintf(key, sizeof key, "%s</w>", clip_byte_to_unicode(b, ch));
        json_object_set_new(v, key, json_integer(id++));
    }
    json_object_set_new(v, "<|startoftext|>", json_integer(id++));
    json_object_set_new(v, "<|endoftext|>", json_integer(id++));
    int rc = write_json(dir, "vocab.json", v);
    char p[4300];
    snprintf(p, sizeof p, "%.4000s/merges.txt", dir);
    static const char merges[] = "#version: 0.2\n";
    if (!rc) rc = mapo_write_file_atomic(p, merges, sizeof merges - 1);
    if (!rc)
        rc = write_json(dir, "special_tokens_map.json",
                        json_pack("{ssssssss}", "bos_token", "<|startoftext|>", "eos_token",
                                  "<|endoftext|>", "pad_token", "<|endoftext|>", "unk_token",
                                  "<|endoftext|>"));
    if (!rc)
        rc = write_json(dir, "tokenizer_config.json",
                        json_pack("{sssssssssisbss}", "bos_token", "<|startoftext|>", "eos_token",
                                  "<|endoftext|>", "pad_token", "<|endoftext|>", "unk_token",
                                  "<|endoftext|>", "model_max_length", 77, "do_lower_case", 1,
                                  "tokenizer_class", "CLIPTokenizer"));
    return rc;
}

static int write_text_encoder(const char *dir, const pixel_pipeline_config *c) {
    if (strlen(dir) > 4000) return mapo_error("%s: path too long", dir);
    json_t *j = json_pack("{s[s]sisisisssisisisisisfsiss}", "architectures", "CLIPTextModel",
                          "bos_token_id", 512, "eos_token_id", 2, "pad_token_id", 1, "hidden_act",
                          "quick_gelu", "hidden_size", c->text_width, "intermediate_size",
                          4 * c->text_width, "max_position_embeddings", 77, "num_attention_heads",
                          4, "num_hidden_layers", c->text_layers, "layer_norm_eps", 1e-5,
                          "vocab_size", 514, "model_type", "clip_text_model");
    int rc = write_json(dir, "config.json", j);
    char cp[4300], wp[4300];
    snprintf(cp, sizeof cp, "%.4000s/config.json", dir);
    snprintf(wp, sizeof wp, "%.4000s/model.safetensors", dir);
    clip_text *m;
    if (!rc && !(rc = clip_text_init_random(&m, cp, c->seed ^ 0x7e47ULL))) {
        rc = clip_text_save(m, wp);
        clip_text_free(m);
    }
    return rc;
}

static int write_unet(const char *dir, const pixel_pipeline_config *c) {
    if (strlen(dir) > 4000) return mapo_error("%s: path too long", dir);
    json_t *bo = json_pack("[iii]", c->block_out[0], c->block_out[1], c->block_out[2]);
    json_t *j = json_pack(
        "{sssisisis[sss]s[sss]sosisisisisfsssissss}", "_class_name", "UNet2DConditionModel",
        "sample_size", c->image_size, "in_channels", c->channels, "out_channels", c->channels,
        "down_block_types", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
        "up_block_types", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D",
        "block_out_channels", bo, "layers_per_block", c->layers_per_block,
        "attention_head_dim", c->heads, "cross_attention_dim", c->text_width, "norm_num_groups",
        8, "norm_eps", 1e-5, "act_fn", "silu", "transformer_layers_per_block", 1,
        "mid_block_type", "UNetMidBlock2DCrossAttn", "time_embedding_type", "positional");
    int rc = write_json(dir, "config.json", j);
    char cp[4300];
    snprintf(cp, sizeof cp, "%.4000s/config.json", dir);
    unet u;
    if (!rc && !(rc = unet_init_dir(&u, cp, c->seed, 0))) {
        rc = unet_save_dir(&u, dir);
        unet_free(&u);
    }
    return rc;
}

int pixel_pipeline_create(const char *dir, const pixel_pipeline_config *c) {
    if (strlen(dir) > 4000) return mapo_error("%s: path too long", dir);
    if (c->channels != 1 && c->channels != 3) return mapo_error("channels must be 1 or 3");
    if (c->image_size < 8 || c->image_size % 4 || c->image_size > 1024)
        return mapo_error("image size %d: must be a multiple of 4 in 8..1024", c->image_size);
    for (int i = 0; i < 3; i++)
        if (c->block_out[i] < 8 || c->block_out[i] % 8 || c->block_out[i] % c->heads)
            return mapo_error("block_out_channels must be multiples of 8 and of the heads");
    if (c->text_width < 4 || c->text_width % 4 || c->text_layers < 1 || c->layers_per_block < 1)
        return mapo_error("text width must be a multiple of 4; layers >= 1");
    char p[4300];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    if (mapo_is_file(p)) return mapo_error("%s already exists: not overwriting a pipeline", p);
    if (mkdir_ok(dir)) return -1;
    const char *sub[4] = {"scheduler", "tokenizer", "text_encoder", "unet"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
        if (mkdir_ok(p)) return -1;
    }
    snprintf(p, sizeof p, "%s/scheduler", dir);
    int rc = write_json(p, "scheduler_config.json",
                        json_pack("{sssisfsfsssssbsfsbsisssb}", "_class_name", "DDIMScheduler",
                                  "num_train_timesteps", 1000, "beta_start", 1e-4, "beta_end",
                                  0.02, "beta_schedule", "linear", "prediction_type", "epsilon",
                                  "clip_sample", 1, "clip_sample_range", 1.0, "set_alpha_to_one",
                                  1, "steps_offset", 0, "timestep_spacing", "leading",
                                  "thresholding", 0));
    snprintf(p, sizeof p, "%s/tokenizer", dir);
    if (!rc) rc = write_tokenizer(p);
    snprintf(p, sizeof p, "%s/text_encoder", dir);
    if (!rc) rc = write_text_encoder(p, c);
    snprintf(p, sizeof p, "%s/unet", dir);
    if (!rc) rc = write_unet(p, c);
    /* model_index.json last: a folder without it is not taken for a finished pipeline */
    if (!rc)
        rc = write_json(dir, "model_index.json",
                        json_pack("{sssososososo}", "_class_name", "MapoPixelPipeline",
                                  "scheduler", pair_of("diffusers", "DDIMScheduler"), "tokenizer",
                                  pair_of("transformers", "CLIPTokenizer"), "text_encoder",
                                  pair_of("transformers", "CLIPTextModel"), "unet",
                                  pair_of("diffusers", "UNet2DConditionModel"), "vae",
                                  pair_of(NULL, NULL)));
    return rc;
}
