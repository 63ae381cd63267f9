/* vae.h -- diffusers' AutoencoderKL (Stable Diffusion's VAE), inference only.
 *
 * Loaded from a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors, or
 * a sharded diffusion_pytorch_model.safetensors.index.json + shards; --variant files as the
 * UNet's, st_weights_find; F32/F16/BF16 weights) or a pipeline folder holding one, with
 * diffusers' parameter names.
 * Supported config: DownEncoderBlock2D / UpDecoderBlock2D blocks, act_fn "silu", integer
 * sample_size, optional quant_conv / post_quant_conv, mid block with or without attention,
 * scaling_factor and shift_factor; latents_mean / latents_std must be null. Any other key or
 * value is refused by name.
 *
 * Layouts are NCHW float32. Images are in [-1, 1]. f = vae_downscale(v) = 2^(nblocks-1);
 * an image [B,C,H,W] (H, W >= f) encodes to [B,L,H/f,W/f] (integer division, as diffusers'
 * pad-(0,1,0,1)-then-stride-2 downsampling gives), a latent [B,L,h,w] decodes to
 * [B,out,h*f,w*f]. Samples of a batch are processed one after another; every activation is
 * freed as soon as it is consumed, and 3x3 convolutions use an im2col scratch of bounded size
 * (row bands), so memory grows with one sample's activations, not with the batch.
 *
 * Tiled mode follows diffusers' enable_tiling() exactly (tile_sample_min_size = sample_size,
 * tile_latent_min_size = sample_size / f, overlap factor 0.25, blend_v / blend_h linear
 * blending applied in diffusers' order, tiles cropped to row_limit). As in diffusers, tiling
 * is only used when the input is larger than one tile; the result differs from the untiled
 * one (each tile sees only its neighbourhood) but matches diffusers' tiled result. Only one
 * tile (plus the blend strips of its neighbours) is decoded at a time, so memory is bounded by
 * the tile size, not the image size. A sample_size for which diffusers' tiling would not
 * reassemble an image of the right size (row_limit != overlap * f) is refused.
 *
 * Memory (vae_peak_bytes): an SD-1.5-sized decoder measured ~100 MiB of working
 * memory for a 128x128 output; it grows linearly with the pixels (extrapolated: ~0.7 GiB at 512x512,
 * ~2.5 GiB at 1024x1024 untiled; tiled with 512-pixel tiles ~0.7 GiB whatever the size). A vae is
 * not thread-safe (the byte counters); kernels parallelise inside with OpenMP / BLAS. */
#ifndef MAPO_VAE_H
#define MAPO_VAE_H
#include <stddef.h>
#include <stdint.h>

typedef struct vae vae;

/* dir: a VAE folder (config.json) or a pipeline folder with vae/config.json. 0 or -1. */
int vae_load_dir(vae **v, const char *dir);
void vae_free(vae *v);
/* The downscale factor of the VAE in dir (folder or pipeline) from its config alone. */
int vae_config_downscale(const char *dir, int *factor);
/* What vae_load_dir reads for dir: *folder = dir when dir/config.json exists (a VAE folder), else
 * dir/vae (a pipeline folder, as diffusers' AutoencoderKL.from_pretrained(dir, subfolder="vae"));
 * weights = its weights as st_weights_find picks them (--variant, one file or a sharded
 * checkpoint's index). 0, or -1 with the loader's error (no VAE folder, no weights). The data
 * cache's vae_fingerprint hashes these (vae_dir_fingerprint), so it follows the loader. */
int vae_weights_path(const char *dir, char folder[4096], char *weights, size_t n);

double vae_scaling_factor(const vae *v);
double vae_shift_factor(const vae *v); /* 0 when the config has null / no shift_factor */
int vae_has_shift(const vae *v);
int vae_latent_channels(const vae *v);
int vae_in_channels(const vae *v);
int vae_out_channels(const vae *v);
int vae_downscale(const vae *v); /* 2^(nblocks-1) */
int vae_sample_size(const vae *v); /* config sample_size: the tile size in pixels */
size_t vae_param_count(const vae *v);

/* x [B,in,H,W] in [-1,1] -> mean, logvar (clamped to [-30, 20]), std = exp(0.5 logvar), each
   [B,L,H/f,W/f]; any output pointer may be NULL. H, W >= f. */
int vae_encode(vae *v, const float *x, int B, int H, int W, float *mean, float *logvar,
               float *std);
/* The same with diffusers' tiled encoder (_tiled_encode) when H or W > sample_size. */
int vae_encode_tiled(vae *v, const float *x, int B, int H, int W, float *mean, float *logvar,
                     float *std);
/* z [B,L,h,w] -> x [B,out,h*f,w*f]; tiled = 0/1 (diffusers' tiled_decode when h or w is
   larger than sample_size / f). */
int vae_decode(vae *v, const float *z, int B, int h, int w, float *x, int tiled);

/* sample = mean + std * noise over n values (DiagonalGaussianDistribution.sample with the
   caller's noise) */
void vae_sample(float *sample, const float *mean, const float *std, const float *noise,
                int64_t n);
/* In place: z = (z - shift_factor) * scaling_factor (encode side, for training) */
void vae_scale_latents(const vae *v, float *z, int64_t n);
/* In place: z = z / scaling_factor + shift_factor (before decoding) */
void vae_unscale_latents(const vae *v, float *z, int64_t n);
/* Training latents: (mean, or mean + std * noise when noise != NULL, - shift) * scaling.
   x [B,in,H,W] -> latents [B,L,H/f,W/f]. tiled as vae_encode_tiled. */
int vae_encode_latents(vae *v, const float *x, int B, int H, int W, const float *noise,
                       float *latents, int tiled);
/* Sampling: x = decode(latents / scaling + shift); latents are not modified. */
int vae_decode_latents(vae *v, const float *latents, int B, int h, int w, float *x, int tiled);

/* Working memory accounting (activations, tile buffers, conv scratch, attention scratch; not
   the parameters, not the caller's input / output): the high-water mark in bytes since the last
   reset. */
size_t vae_peak_bytes(const vae *v);
void vae_reset_peak(vae *v);
/* Upper bound in bytes of the im2col scratch of one 3x3 convolution (default 64 MiB; at least
   one output row is always used). Results do not depend on it beyond float rounding. */
void vae_set_conv_scratch(vae *v, size_t bytes);

#endif
