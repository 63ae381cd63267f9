/* lora_formats.h -- LoRA files in the layouts other tools load (docs/LORA_FORMATS.md).
 *
 * mapo's own format is the diffusers one (unet_lora_save in unet.h: "unet.<module>.lora.down.weight",
 * what the official train_with_lora.py writes and pipeline.load_lora_weights reads). This adds the
 * kohya-ss sd-scripts format that AUTOMATIC1111 / Forge / ComfyUI users load:
 *     lora_unet_<module, '.' -> '_'>.lora_down.weight   [r, in]   (A)
 *     lora_unet_<module, '.' -> '_'>.lora_up.weight     [out, r]  (B)
 *     lora_unet_<module, '.' -> '_'>.alpha              []        scale = alpha / r
 * where <module> is written the way sd-scripts names it:
 *   - SD 1.x / 2.x (no text_time embedding): the diffusers module path, as sd-scripts trains those
 *     on a diffusers-layout UNet: lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
 *   - SDXL (addition_embed_type "text_time"): the original (sgm / LDM) layout, as sd-scripts
 *     trains SDXL on its own sgm UNet: lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q,
 *     lora_unet_middle_block_1_..., lora_unet_output_blocks_0_1_...
 * Reading (unet_lora_load) accepts either layout for any UNet; the original-layout indices come
 * from the UNet config (layers per block, which blocks have attentions). */
#ifndef MAPO_LORA_FORMATS_H
#define MAPO_LORA_FORMATS_H
#include <stddef.h>

#include "mapo/unet.h"

/* file names inside a LoRA output folder */
#define LORA_DIFFUSERS_FILE "pytorch_lora_weights.safetensors"
#define LORA_KOHYA_FILE "lora_kohya.safetensors"

typedef enum { LORA_FMT_DIFFUSERS = 1, LORA_FMT_KOHYA = 2, LORA_FMT_BOTH = 3 } lora_format;

typedef enum {
    KOHYA_LAYOUT_AUTO = 0,  /* what sd-scripts writes: original for SDXL (text_time), else diffusers */
    KOHYA_LAYOUT_DIFFUSERS, /* lora_unet_down_blocks_0_attentions_0_... */
    KOHYA_LAYOUT_ORIGINAL,  /* lora_unet_input_blocks_1_1_... */
} kohya_layout;

/* "diffusers" | "kohya" | "both" -> *fmt; -1 with a message naming the choices otherwise
 * (for the trainer's --lora_format). */
int lora_format_parse(const char *s, lora_format *fmt);

/* The kohya base name ("lora_unet_...", without ".lora_down.weight") of a diffusers module path
 * of one of the UNet's attention blocks ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
 * "mid_block.attentions.0....", "up_blocks.2.attentions.1...."). AUTO picks by the config as the
 * saver does. -1 (no message) when the path is not inside an attention block the config has. */
int lora_kohya_name(const unet_config *c, const char *module, kohya_layout layout, char *out,
                    size_t n);

/* Write the UNet's adapters as a kohya file, atomically (st_writer): float32 lora_down / lora_up,
 * float32 scalar alpha = r (mapo's adapters are at scale 1: alpha/r folded into B at load), and
 * sd-scripts' metadata ss_network_module "networks.lora", ss_network_dim, ss_network_alpha
 * (when every adapter has the same rank), ss_base_model_version, ss_v2. _layout picks the
 * layout and stores every tensor, alpha included (as sd-scripts' --save_precision), as `store`
 * (ST_F32, ST_F16 or ST_BF16, rounded as torch's .half() / .bfloat16()). */
int unet_lora_save_kohya(const unet *u, const char *path);
int unet_lora_save_kohya_layout(const unet *u, const char *path, kohya_layout layout,
                                st_dtype store);

/* The trainer's final save: into the folder dir, LORA_DIFFUSERS_FILE and/or LORA_KOHYA_FILE,
 * stored as `store` (ST_F32, ST_F16 or ST_BF16). */
int unet_lora_save_formats(const unet *u, const char *dir, lora_format fmt, st_dtype store);

/* Convert a LoRA file (either format, or a folder holding one; see unet_lora_load) into
 * to = "kohya" or "diffusers" at out (a file path; written atomically). The UNet config the LoRA
 * is for is needed: the original-layout names depend on it, and every tensor is checked against
 * its shapes. A kohya alpha != r is folded into lora_up, so the output is at scale 1 (the same
 * weights W + B A). The output's tensors are stored as `store` (ST_F32, ST_F16 or ST_BF16; the
 * values loaded as float32, then rounded as torch's .half() / .bfloat16()). For a config from a
 * folder, see lora_convert_file_model. */
int lora_convert_file(const char *in, const char *out, const char *to, const unet_config *cfg,
                      st_dtype store);
/* The same with the config read from model: a UNet folder (config.json) or a pipeline folder
 * (unet/config.json). */
int lora_convert_file_model(const char *in, const char *out, const char *to, const char *model,
                            st_dtype store);

#endif
