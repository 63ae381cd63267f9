/* image.h -- RGB8 images: JPEG / PNG decoding as PIL's Image.open(..).convert("RGB") does,
 * PNG encoding (atomic file write), image grids, PIL's bicubic resize, and the
 * preprocessing of preference pairs exactly as the official Diffusion-DPO / MaPO SDXL
 * training scripts do it (train_diffusion_dpo_sdxl.py / mapo train.py, preprocess_train).
 *
 * Decoding (format from the magic bytes, never from a file name):
 *   JPEG  libjpeg(-turbo) defaults, as Pillow uses them: ISLOW DCT, fancy upsampling.
 *         1 component -> gray replicated to RGB; 3 components -> libjpeg's RGB output;
 *         4 components (CMYK / YCCK) -> Adobe-inverted CMYK ("CMYK;I") then Pillow's
 *         cmyk2rgb: nk = 255 - k, r = nk - nk*c/255 (rounded as Pillow's MULDIV255).
 *         Warnings about corrupt entropy data are ignored (Pillow does too); running out
 *         of data before the last scanline is an error (Pillow: "image file is truncated").
 *   PNG   every bit depth / colour type; palette -> RGB; 1/2/4-bit gray scaled to 8 bits;
 *         16-bit samples keep their high byte (Pillow's "RGB;16B" / "RGBA;16B" / "LA;16B");
 *         16-bit gray without alpha saturates at 255 (Pillow opens it as "I;16", and its
 *         "I;16" -> "RGB" conversion clips); alpha and tRNS are dropped, gAMA is ignored.
 * Refused before anything image-sized is allocated: a side > IMAGE_MAX_SIDE, more than
 * IMAGE_MAX_PIXELS pixels, a PNG whose raw size exceeds what deflate could pack into its
 * bytes, a Huffman-coded JPEG declaring more than 512 pixels per byte of the file (one bit
 * per 8x8 block), a progressive JPEG with an absurd number of scans.
 *
 * All functions return 0 on success and -1 after mapo_error() with one line naming the
 * source ("what": a file path, "file.parquet row 17 jpg_1", ...) and the problem. */
#ifndef MAPO_IMAGE_H
#define MAPO_IMAGE_H
#include <stddef.h>
#include <stdint.h>

#include "mapo/rng.h"

#define IMAGE_MAX_SIDE 16384
#define IMAGE_MAX_PIXELS (1LL << 28)

typedef struct {
    int w, h, c;  /* c is always 3 */
    uint8_t *px;  /* [h][w][3], RGB8 interleaved, row-major */
} mapo_image;

typedef enum { IMAGE_FMT_UNKNOWN = 0, IMAGE_FMT_JPEG, IMAGE_FMT_PNG } image_format;

/* Format from the first bytes (JPEG: FF D8 FF; PNG: the 8-byte signature). */
image_format image_detect(const uint8_t *buf, size_t len);

/* Allocate a zeroed (black) w x h image after checking the limits. */
int image_alloc(mapo_image *im, int w, int h, const char *what);
void image_free(mapo_image *im);

/* Decode a JPEG or PNG held in memory. On failure *im is left empty (px NULL). */
int image_decode(mapo_image *im, const uint8_t *buf, size_t len, const char *what);
/* Read a whole file and decode it (at most 1 GiB of file). */
int image_load(mapo_image *im, const char *path);

/* Encode 8-bit RGB (rows of 3*w bytes) as PNG in memory (*out from malloc). */
int image_encode_png(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *out_len);
/* The same for 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) interleaved 8-bit channels
 * (rows of channels*w bytes); image_encode_png is channels = 3. */
int image_encode_png_channels(const uint8_t *px, int w, int h, int channels, uint8_t **out,
                              size_t *out_len);
/* Encode and write atomically (temp file in the same folder, fsync, rename). */
int image_write_png(const char *path, const uint8_t *rgb, int w, int h);

/* diffusers.utils.make_image_grid(images, rows, cols): all n images have the same size;
 * image i goes to row i / cols, column i % cols. n may be less than rows*cols (the rest
 * stays black; diffusers asserts n == rows*cols). */
int image_grid(mapo_image *out, const mapo_image *ims, int n, int rows, int cols);

/* diffusers' VaeImageProcessor.postprocess(output_type="pil") of one image:
 * chw [3,h,w] floats in [-1,1] -> x*0.5+0.5, clamp to [0,1], round(x*255) half to even. */
int image_from_chw(mapo_image *out, const float *chw, int h, int w);

/* PIL Image.resize((w, h)) with its default filter for RGB images (BICUBIC, a = -0.5):
 * separable convolution, support scaled by the reduction factor, coefficients in 22-bit
 * fixed point, each pass rounded and clipped to uint8. Pass order as Pillow 13: horizontal
 * first, unless the height shrinks by more than twice as much as the width (then vertical
 * first; Pillow < 13 always went horizontal first, which can differ by a few levels in that
 * case). A side that keeps its size is not resampled; same size -> plain copy. */
int image_resize_bicubic(mapo_image *out, const mapo_image *in, int w, int h);

/* ---- preprocessing (torchvision tensor path) ---- */

/* transforms.ToTensor(): [3,h,w] floats = value / 255. */
void image_to_chw(const mapo_image *im, float *out);

/* Output size of torchvision transforms.Resize(res) (an int: the shorter side becomes res,
 * the longer int(res * long / short)); -1 when res or the result is out of range. */
int prep_resize_size(int h, int w, int res, int *oh, int *ow);

/* F.interpolate(x[c,h,w], size=(oh,ow), mode="bilinear", align_corners=False,
 * antialias=True) in float32, as PyTorch's CPU kernel computes it (float weights,
 * horizontal pass first, a pass skipped when that side keeps its size). */
int resize_bilinear_aa(float *out, const float *in, int c, int h, int w, int oh, int ow);

typedef struct {
    int resolution;   /* --resolution */
    int random_crop;  /* --random_crop: 0 = CenterCrop (default), 1 = RandomCrop */
    int no_hflip;     /* --no_hflip */
} prep_cfg;

/* One image through ToTensor -> Resize(res, BILINEAR, antialias) -> [hflip] -> crop of
 * res x res at (y1, x1) of the resized (and flipped) image -> Normalize(0.5, 0.5).
 * y1 < 0 or x1 < 0 means the centre crop, y1 = max(0, round((h - res) / 2)) with Python's
 * round (half to even); the offsets used are returned in crop_yx (may be NULL).
 * Only the pixels inside the crop are computed (bit-identical to resizing everything).
 * out: [3,res,res] in [-1,1]. */
int prep_image(float *out, const mapo_image *im, int res, int flip, int y1, int x1,
               int crop_yx[2]);

/* The pair of preprocess_train: jpg_0 / jpg_1 decoded; original_size = (h, w) of jpg_0;
 * jpg_1 resized to jpg_0's size with PIL bicubic when the sizes differ; jpg_0 is the chosen
 * image unless swap (label_0 == 0); then both go through prep_image with one flip and one
 * crop. The random draws come from rng in this order: flip = philox_uniform() < 0.5 (only
 * when !no_hflip), then for random_crop y1 = philox_below(h' - res + 1) and
 * x1 = philox_below(w' - res + 1) (h', w' = resized size). rng may be NULL when nothing is
 * random (no_hflip and center crop). chosen / rejected: [3,res,res]. */
int prep_pair(float *chosen, float *rejected, int orig_hw[2], int crop_yx[2],
              const mapo_image *jpg0, const mapo_image *jpg1, int swap, const prep_cfg *cfg,
              philox *rng);
/* The same with the draws given: flip 0/1, (y1, x1) of the crop or negative for the centre. */
int prep_pair_fixed(float *chosen, float *rejected, int orig_hw[2], int crop_yx[2],
                    const mapo_image *jpg0, const mapo_image *jpg1, int swap, int res,
                    int flip, int y1, int x1);

#endif
