/* unet.h -- diffusers' UNet2DConditionModel, built from its config.json.
 *
 * Supported: DownBlock2D, CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
 * CrossAttnUpBlock2D; per-block or global layers_per_block, attention_head_dim (diffusers'
 * name for the number of heads), transformer_layers_per_block; use_linear_projection;
 * flip_sin_to_cos / freq_shift; SDXL's addition_embed_type "text_time". Any config key or
 * value outside this is refused by name. */
#ifndef MAPO_UNET_H
#define MAPO_UNET_H
#include "mapo/graph.h"
#include "mapo/params.h"
#include "mapo/safetensors.h"

#define UNET_MAX_BLOCKS 8

typedef struct {
    int in_channels, out_channels;
    int n_blocks;
    int block_out[UNET_MAX_BLOCKS];
    int layers[UNET_MAX_BLOCKS];      /* layers_per_block per down block */
    int heads[UNET_MAX_BLOCKS];       /* attention heads per down block */
    int tlayers[UNET_MAX_BLOCKS];     /* transformer_layers_per_block per down block */
    int down_cross[UNET_MAX_BLOCKS];  /* 1 = CrossAttnDownBlock2D */
    int up_cross[UNET_MAX_BLOCKS];    /* 1 = CrossAttnUpBlock2D */
    int cross_dim;
    int norm_groups;
    double norm_eps;
    int linear_proj;
    int flip_sin_to_cos;
    double freq_shift;
    int text_time;        /* addition_embed_type == "text_time" */
    int add_time_dim;     /* addition_time_embed_dim */
    int proj_class_dim;   /* projection_class_embeddings_input_dim */
    int time_embed_dim;   /* block_out[0] * 4 */
    int sample_size;
    void *json;           /* the original config (json_t *), written back unchanged */
} unet_config;

typedef struct { int n1w, n1b, c1w, c1b, tw, tb, n2w, n2b, c2w, c2b, sw, sb; } unet_resnet;
typedef struct {
    int n1w, n1b, q1, k1, v1, o1w, o1b, n2w, n2b, q2, k2, v2, o2w, o2b, n3w, n3b, f1w, f1b, f2w,
        f2b;
    /* LoRA adapters: lora[attn1/attn2][to_q, to_k, to_v, to_out.0] = {A, B} indices into
       unet.lora (A [r, in] "down", B [out, r] "up"); -1 where there is none */
    int lora[2][4][2];
} unet_tblock;
typedef struct {
    int nw, nb, piw, pib, pow_, pob;
    int n_tb, heads;
    unet_tblock *tb;
} unet_xformer;
typedef struct {
    int cross, n_res;
    unet_resnet *res;
    unet_xformer *attn; /* n_res entries when cross (mid block: n_res - 1) */
    int sw, sb;         /* downsampler / upsampler conv, -1 when absent */
} unet_block;

typedef struct unet {
    unet_config cfg;
    param_table params;
    int conv_in_w, conv_in_b, te1w, te1b, te2w, te2b, ae1w, ae1b, ae2w, ae2b;
    unet_block down[UNET_MAX_BLOCKS], up[UNET_MAX_BLOCKS], mid;
    int norm_out_w, norm_out_b, conv_out_w, conv_out_b;
    param_table lora; /* LoRA adapters (n == 0: none); see lora.c */
    int lora_on;      /* apply the adapters in forward (0: the base model, DPO's reference) */
    int precision;    /* mapo_precision (ops.h) of convolutions and matrix products (0: float32) */
    int grad_ckpt;    /* gradient checkpointing: with gradients on, each resnet and transformer
                         block keeps only its inputs and recomputes itself in backward */
    int recompute_norms; /* --recompute_norms: LayerNorm and GroupNorm + SiLU outputs are not kept
                            for backward but recomputed (graph.h, g->recompute; the same bits) */
} unet;

typedef struct {
    int B, H, W;               /* batch, latent height, width */
    const float *sample;       /* [B, in_channels, H, W] */
    const float *timesteps;    /* [B] */
    const float *ehs;          /* encoder_hidden_states [B, S, cross_dim] */
    int S;
    const float *text_embeds;  /* [B, P] (text_time only) */
    int P;
    const float *time_ids;     /* [B, 6] (text_time only) */
} unet_inputs;

/* Parse a config.json (path used in messages). */
int unet_config_load(unet_config *c, const char *path);
void unet_config_free(unet_config *c);
/* Build the parameter table from the config (no memory for values yet). */
int unet_build(unet *u, const unet_config *c);
/* Load a diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors), or a
 * pipeline folder with a unet/ subfolder. with_grad allocates gradients (params_alloc's
 * argument: 0, 1 or PARAMS_FROZEN_BF16). */
int unet_load_dir(unet *u, const char *dir, int with_grad);
/* with_grad for a UNet that is not trained, in a run of this precision (mapo_precision, 0:
 * float32): its weights held in bf16 in a bf16 run (PARAMS_FROZEN_BF16: the same numbers), as
 * the official LoRA / DPO scripts cast the frozen UNet to the mixed-precision dtype. */
static inline int unet_frozen_mode(int precision) {
    return precision ? PARAMS_FROZEN_BF16 : 0;
}
/* Create from config.json with random init. */
int unet_init_dir(unet *u, const char *config_path, uint64_t seed, int with_grad);
/* Write config.json + diffusion_pytorch_model.safetensors into dir (created), the weights
 * stored as `store` (ST_F32, ST_F16 or ST_BF16, rounded as torch's .half() / .bfloat16());
 * unet_save_dir stores F32. */
int unet_save_dir_as(const unet *u, const char *dir, st_dtype store);
int unet_save_dir(const unet *u, const char *dir);
void unet_free(unet *u);
/* Check input shapes against the config; -1 with a message naming what is wrong. */
int unet_check_inputs(const unet *u, const unet_inputs *in);
/* Forward; returns model output [B, out_channels, H, W] owned by g. */
tensor *unet_forward(unet *u, graph *g, const unet_inputs *in);
/* --- LoRA (lora.c) on to_q, to_k, to_v, to_out.0 of every attention, as the official
   train_with_lora.py sets it up with peft: y = W x + (alpha/r) B A x, alpha = r.
   Add fresh adapters of rank r: A ~ N(0, 1/r) (peft's "gaussian" init) from a counter-based
   stream keyed by seed, B = 0; allocated with gradients; the base weights stay as loaded. */
int unet_lora_add(unet *u, int rank, uint64_t seed);
/* Load adapters from a LoRA safetensors file (or a folder holding
   pytorch_lora_weights.safetensors): diffusers names ("unet.<module>.lora.down.weight" /
   ".lora.up.weight", as the official script saves) or peft names ("<module>.lora_A.weight" /
   ".lora_B.weight"), with or without the "unet." prefix, optional "<module>.alpha", or kohya-ss
   names ("lora_unet_<module>.lora_down.weight" / ".lora_up.weight" / ".alpha", diffusers or
   original SD layout; lora_formats.h); a folder without the diffusers file may hold
   lora_kohya.safetensors. The scale
   alpha/r is folded into B, so the result is for inference or continued training at scale 1.
   with_grad allocates gradients. Keys for anything but the UNet's attention projections are
   refused by name. */
int unet_lora_load(unet *u, const char *path, int with_grad);
/* Save as the official script does: pytorch_lora_weights.safetensors with diffusers names
   ("unet." prefix, lora.down / lora.up), loadable by pipeline.load_lora_weights(). _as stores
   the factors as `store` (ST_F32, ST_F16 or ST_BF16); unet_lora_save stores F32. */
int unet_lora_save_as(const unet *u, const char *path, st_dtype store);
int unet_lora_save(const unet *u, const char *path);
/* Fold the adapters into the base weights (W += B A) and drop them. */
void unet_lora_merge(unet *u);
/* Remove the adapters (the UNet is the base model again). */
void unet_lora_drop(unet *u);

/* Multiply-accumulates of one forward (for GFLOP/s reports). */
double unet_forward_flops(const unet *u, const unet_inputs *in);

#endif
