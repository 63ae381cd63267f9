/* targets.h -- one function per reader of outside bytes, shared by the libFuzzer entry points
 * (fuzz/fuzz_<target>.c) and the regression test (tests/test_fuzz_regress.c), so the harness
 * logic is written once.
 *
 * Each function feeds data[0..size) to the library's real entry points (through a file in a
 * per-process temp folder where the reader only takes a path) and returns 0 when the input was
 * accepted, -1 when it was refused (mapo_last_error() holds the one message). Either is fine;
 * anything else (a crash, a sanitizer report, a leak) is a bug.
 *
 * Targets whose input picks a sub-reader (config, tokenizer) use data[0] as the selector and
 * data[1..] as the file; see FUZZ_CFG_* / FUZZ_TOK_*. */
#ifndef MAPO_FUZZ_TARGETS_H
#define MAPO_FUZZ_TARGETS_H
#include <stddef.h>
#include <stdint.h>

/* The temp folder ($TMPDIR, else /dev/shm, else /tmp: mapo-fuzz-<pid>) and its fixed files,
 * copied from the repository's fixtures under root (the repository root). Quiets the library's
 * logging. 0 or -1 (message on stderr). Idempotent. */
int fuzz_setup(const char *root);
/* Removes the temp folder and frees what setup and the tokenizer target keep. */
void fuzz_teardown(void);

/* config target: data[0] % FUZZ_CFG_COUNT picks the reader, data[1..] is the file */
enum {
    FUZZ_CFG_UNET = 0,      /* unet/config.json: unet_config_load + unet_build (table only) */
    FUZZ_CFG_VAE,           /* vae/config.json: vae_config_downscale */
    FUZZ_CFG_CLIP,          /* text_encoder/config.json: clip_text_load_dir (1-tensor weights) */
    FUZZ_CFG_SCHEDULER,     /* scheduler_config.json: sampler_create_from_string (DDIM and
                               Euler, steps = 1 + data[0] / FUZZ_CFG_COUNT) + ddpm_from_config */
    FUZZ_CFG_MODEL_INDEX,   /* model_index.json: pipeline_is_pixel */
    FUZZ_CFG_TRAINER_STATE, /* checkpoint trainer_state.json: checkpoint_state_read */
    FUZZ_CFG_CLASSIFIER,    /* judge config.json: classifier_load (no weights file) */
    FUZZ_CFG_COUNT
};

/* tokenizer target: data[0] % FUZZ_TOK_COUNT picks the file replaced in an otherwise valid
 * tokenizer folder (the committed SD 1.5 / SDXL test tokenizers), data[1..] is its content */
enum {
    FUZZ_TOK_VOCAB = 0,     /* vocab.json */
    FUZZ_TOK_MERGES,        /* merges.txt */
    FUZZ_TOK_CONFIG,        /* tokenizer_config.json */
    FUZZ_TOK_SPECIAL,       /* special_tokens_map.json */
    FUZZ_TOK_JSON,          /* tokenizer.json */
    FUZZ_TOK_PROMPT,        /* the prompt: clip_tokenize with the valid SD 1.5 tokenizer */
    FUZZ_TOK_COUNT
};

int fuzz_safetensors(const uint8_t *data, size_t size); /* st_open, st_find/meta, st_to_f32/f64 */
int fuzz_parquet(const uint8_t *data, size_t size);     /* parquet_open, every column chunk,
                                                           pref_dataset_open + first pairs */
int fuzz_image(const uint8_t *data, size_t size);       /* image_detect + image_decode */
int fuzz_config(const uint8_t *data, size_t size);      /* see FUZZ_CFG_* */
int fuzz_tokenizer(const uint8_t *data, size_t size);   /* see FUZZ_TOK_* */
int fuzz_manifest(const uint8_t *data, size_t size);    /* JSONL manifest: pref_dataset_open,
                                                           captions, first pairs (2 real images) */
int fuzz_idx(const uint8_t *data, size_t size);         /* idx_read_u8 + idx_read_u8_head */

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} fuzz_target;
/* every target, NULL-terminated */
extern const fuzz_target FUZZ_TARGETS[];

#endif
