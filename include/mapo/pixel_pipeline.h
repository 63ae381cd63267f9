/* pixel_pipeline.h -- a small pixel-space text-to-image pipeline folder in diffusers' layout:
 *     model_index.json     ("vae": [null, null]: no VAE, the UNet denoises pixels in [-1, 1])
 *     scheduler/           DDIMScheduler config (DDPM "linear" betas 1e-4..0.02, T = 1000,
 *                          epsilon prediction, clip_sample as pixel-space DDPMs do)
 *     tokenizer/           a byte-level CLIP vocabulary (the 512 byte symbols, with and without
 *                          "</w>", and the two special tokens) and no merges: every word is
 *                          spelt out byte by byte, which a random text encoder still tells apart
 *     text_encoder/        CLIPTextModel with seeded random weights, frozen (never trained)
 *     unet/                UNet2DConditionModel, seeded random init, the model that is trained
 * mapo sample / train / cache accept the folder like any other pipeline. */
#ifndef MAPO_PIXEL_PIPELINE_H
#define MAPO_PIXEL_PIPELINE_H
#include <stdint.h>

typedef struct {
    int channels;        /* 1 gray, 3 RGB */
    int image_size;      /* sample_size (pixels) */
    int block_out[3];    /* UNet block_out_channels (3 blocks: 32 -> 16 -> 8 at 32 px) */
    int layers_per_block;
    int heads;           /* attention heads per transformer (diffusers' attention_head_dim) */
    int text_width;      /* text encoder hidden size = cross_attention_dim */
    int text_layers;
    uint64_t seed;       /* text encoder and UNet initialisation */
} pixel_pipeline_config;

void pixel_pipeline_config_default(pixel_pipeline_config *c);
/* Write a complete pipeline folder into dir (created; refused when dir already holds a
 * model_index.json). Every file is written atomically. */
int pixel_pipeline_create(const char *dir, const pixel_pipeline_config *c);

#endif
