/* clip_text.h -- transformers' CLIPTextModel and CLIPTextModelWithProjection, forward only.
 *
 * Loaded from a pipeline's text_encoder/ or text_encoder_2/ folder: config.json +
 * model.safetensors, or a sharded model.safetensors.index.json + shards (--variant files as the
 * UNet's, st_weights_find; F32, F16, BF16 or F64 weights; computed in float32). Parameter names are
 * transformers' own, in either layout found in the wild:
 *   - "text_model.embeddings.token_embedding.weight", ... (CLIPTextModelWithProjection, and
 *     CLIPTextModel as transformers 4.x saved it: every real SD 1.5 / SDXL text encoder);
 *   - "embeddings.token_embedding.weight", ... (CLIPTextModel saved by transformers 5.x);
 * plus "text_projection.weight" [projection_dim, hidden] for WithProjection. The persistent
 * buffer "[text_model.]embeddings.position_ids" that old checkpoints carry is ignored; any
 * other unknown tensor, a missing tensor or a wrong shape is refused.
 *
 * The model class comes from config.json's "architectures" (CLIPTextModel or
 * CLIPTextModelWithProjection); without it, from whether the file holds text_projection.weight.
 * hidden_act must be "quick_gelu" (CLIP ViT-L, SD 1.5 / SDXL text_encoder) or "gelu" (exact erf;
 * OpenCLIP bigG, SDXL text_encoder_2); anything else is refused by name, as is any config key that
 * would change the model.
 *
 * Forward (as transformers 5 with its default sdpa attention): x = token_embedding[ids] +
 * position_embedding[0..S-1]; per layer x += out_proj(causal_attention(layer_norm1(x))),
 * x += fc2(act(fc1(layer_norm2(x)))); last = final_layer_norm(x). No attention mask besides the
 * causal one (padding tokens are attended to, as diffusers' pipelines call the encoder).
 * Pooled output: the row of `last` at the end-of-text position of each prompt:
 *   eos_token_id == 2 (legacy configs, including SD 1.5's and SDXL's): argmax(ids) (the first
 *   maximal id, i.e. the first end-of-text token 49407 in real CLIP vocabularies);
 *   otherwise the first position whose id == eos_token_id, or position 0 when there is none
 *   (what transformers does). */
#ifndef MAPO_CLIP_TEXT_H
#define MAPO_CLIP_TEXT_H
#include <stddef.h>
#include <stdint.h>

typedef struct clip_text clip_text;

typedef enum { CLIP_ACT_QUICK_GELU = 0, CLIP_ACT_GELU = 1 } clip_act;

typedef struct {
    int hidden_size;             /* D */
    int intermediate_size;       /* MLP width */
    int num_layers;              /* L */
    int num_heads;               /* D / num_heads = head dim */
    int max_positions;           /* max_position_embeddings: the longest S forward accepts */
    int vocab_size;
    int projection_dim;          /* P of text_projection; 0 for CLIPTextModel */
    clip_act act;
    double layer_norm_eps;
    int64_t eos_token_id, bos_token_id, pad_token_id; /* -1 when absent from config.json */
} clip_text_config;

/* Load dir/config.json and the weights st_weights_find picks for dir/model.safetensors: the
 * --variant file or index, else model.safetensors, else model.safetensors.index.json (a
 * text_encoder/ or text_encoder_2/ folder). */
int clip_text_load_dir(clip_text **m, const char *dir);
/* The same with explicit paths (e.g. a model.fp16.safetensors variant, or an index). */
int clip_text_load(clip_text **m, const char *config_path, const char *weights_path);
/* From a config.json alone, weights random (params_init_random, seed): for benchmarks. */
int clip_text_init_random(clip_text **m, const char *config_path, uint64_t seed);
void clip_text_free(clip_text *m);
/* Write the weights (transformers' names, as loaded or "text_model." for random init) to a
 * model.safetensors file, atomically. */
int clip_text_save(const clip_text *m, const char *weights_path);

const clip_text_config *clip_text_get_config(const clip_text *m);
int clip_text_hidden_size(const clip_text *m);
int clip_text_projection_dim(const clip_text *m); /* 0 without text_projection */
int clip_text_num_layers(const clip_text *m);
int64_t clip_text_num_params(const clip_text *m); /* float32 values held (x4 bytes) */

/* Forward of B prompts of S tokens (1 <= S <= max_positions); ids [B,S], 0 <= id < vocab_size.
 * Every output is optional (NULL = not wanted); only the layers needed are run:
 *   hidden      [B,S,D]  hidden_states[layer] as transformers returns with
 *                        output_hidden_states=True: layer 0 = embedding output, layer i in 1..L =
 *                        output of encoder layer i (before final_layer_norm). Negative values
 *                        count from the end like Python: -1 = L (last layer, before the final
 *                        norm), -2 = L-1 (SDXL's "penultimate"), ..., -(L+1) = 0. Ignored when
 *                        hidden is NULL.
 *   last        [B,S,D]  last_hidden_state (after final_layer_norm)
 *   pooled      [B,D]    pooler_output (see above)
 *   text_embeds [B,P]    pooled @ text_projection^T (WithProjection only; an error otherwise)
 * With every output NULL nothing is computed (0). Returns 0, or -1 with mapo_error (bad ids,
 * sizes, layer index, text_embeds without projection, pooling without eos_token_id). Does not
 * modify m; parallel inside (OpenMP + BLAS). Scratch memory: about B*S*(6*D + intermediate)
 * floats. */
int clip_text_forward(const clip_text *m, const int32_t *ids, int B, int S, int layer,
                      float *hidden, float *last, float *pooled, float *text_embeds);

#endif
