/* cmd_convert.c -- mapo convert: a model file in another layout -> a diffusers folder.
 *
 * A dispatcher on the kind of --in: each kind has a probe (cheap, header only: is this input
 * mine?) and a converter. The first kind whose probe says yes converts; an input no probe
 * claims is refused naming the kinds tried. Kinds:
 *   single-file checkpoint   an original-layout SD 1.5 / SDXL .safetensors (A1111 / ComfyUI /
 *                            CivitAI) -> a pipeline folder (single_file.h; --config_dir gives
 *                            the tokenizers, scheduler and configs)
 *   LoRA                     a LoRA file in the diffusers / peft or kohya (A1111 / ComfyUI)
 *                            layout -> the other one (--to kohya | diffusers; --model gives the
 *                            UNet config the kohya names depend on; lora_formats.h)
 * --save_precision float32|fp16|bf16 gives the dtype every written tensor is stored in (rounded
 * to nearest even as torch's .half() / .bfloat16()); without it a LoRA is written in float32 and
 * a single file's tensors keep their own dtypes.
 * New kinds add one probe + one converter to KINDS. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "mapo/common.h"
#include "mapo/lora_formats.h"
#include "mapo/safetensors.h"
#include "mapo/single_file.h"

typedef struct {
    const char *in, *out, *config_dir, *to, *model, *save_precision;
    int quiet;
    st_dtype store; /* --save_precision, parsed (ST_F32 when not given) */
} convert_args;

static int probe_single_file(const char *in) { return single_file_probe(in) != SF_NONE; }
static int run_single_file(const convert_args *a) {
    if (!a->save_precision) return single_file_convert(a->in, a->config_dir, a->out, a->quiet);
    return single_file_convert_as(a->in, a->config_dir, a->out, a->quiet, a->store);
}

/* a safetensors file whose tensors are LoRA factors (".lora_down." / ".lora.down." /
   ".lora_A." ...) */
static int probe_lora(const char *in) {
    st_file f;
    if (st_open(&f, in)) return 0;
    int yes = 0;
    for (int i = 0; i < f.n && !yes; i++)
        yes = strstr(f.tensors[i].name, ".lora_down.") || strstr(f.tensors[i].name, ".lora.down.") ||
              strstr(f.tensors[i].name, ".lora_A.");
    st_close(&f);
    return yes;
}

static int run_lora(const convert_args *a) {
    if (!a->to || !a->model)
        return mapo_error("%s is a LoRA: converting it needs --to kohya|diffusers and --model "
                          "(the UNet or pipeline folder it belongs to)", a->in);
    if (strcmp(a->to, "kohya") && strcmp(a->to, "diffusers"))
        return mapo_error("--to %s: a LoRA converts to kohya or diffusers", a->to);
    st_f32_overflows(1);
    if (lora_convert_file_model(a->in, a->out, a->to, a->model, a->store)) return -1;
    const int64_t n_inf = st_f32_overflows(1);
    if (!a->quiet)
        mapo_log(1, "wrote %s (%s layout, %s)\n", a->out, a->to, st_precision_name(a->store));
    if (n_inf)
        mapo_log(1, "warning: %lld value(s) of %s are beyond fp16's range (65504) and became inf, "
                    "as torch's .half() does (mapo refuses to load non-finite weights; bf16 or "
                    "float32 keeps them)\n", (long long)n_inf, a->out);
    return 0;
}

static const struct {
    const char *kind;
    int (*probe)(const char *in);
    int (*run)(const convert_args *a);
} KINDS[] = {
    {"a single-file SD 1.5 / SDXL checkpoint (model.diffusion_model.*, first_stage_model.*, "
     "text encoders)", probe_single_file, run_single_file},
    {"a LoRA (diffusers / peft or kohya names)", probe_lora, run_lora},
};

int cmd_convert(int argc, char **argv) {
    convert_args a = {0};
    opt_def o[] = {
        {"in", OPT_STR, &a.in, "the file to convert (a single-file SD 1.5 / SDXL .safetensors)", 0},
        {"out", OPT_STR, &a.out, "the diffusers folder to write (must not exist; written "
                                 "atomically)", 0},
        {"config_dir", OPT_STR, &a.config_dir,
         "single files: a diffusers pipeline folder of the same kind giving tokenizer(s), "
         "scheduler and the config values tensors cannot tell (weights not needed; default: the "
         "Hub cache of stable-diffusion-v1-5 / stable-diffusion-xl-base-1.0)", 0},
        {"to", OPT_STR, &a.to, "LoRA files: kohya | diffusers, the layout to write", 0},
        {"model", OPT_STR, &a.model, "LoRA files: the UNet or pipeline folder it is for", 0},
        {"save_precision", OPT_STR, &a.save_precision,
         "float32 | fp16 | bf16: the dtype of every written tensor, rounded to nearest even as "
         "torch's .half() / .bfloat16() (default: float32 for a LoRA; a single file's tensors "
         "keep their own dtypes)", 0},
        {"quiet", OPT_FLAG, &a.quiet, "no progress", 0},
    };
    int r = args_parse(o, (int)(sizeof o / sizeof *o), argc, argv, 2,
                       "usage: mapo convert --in MODEL.safetensors --out DIR "
                       "[--config_dir PIPELINE_DIR] [--save_precision float32|fp16|bf16]\n"
                       "       mapo convert --in LORA.safetensors --out FILE --to kohya|diffusers "
                       "--model UNET_OR_PIPELINE_DIR [--save_precision float32|fp16|bf16]");
    if (r) return r > 0 ? 0 : -1;
    if (!a.in || !a.out) return mapo_error("convert needs --in and --out");
    a.store = ST_F32;
    if (a.save_precision && st_precision_parse(a.save_precision, "--save_precision", &a.store))
        return -1;
    if (!mapo_is_file(a.in))
        return mapo_error("%s: %s", a.in, mapo_is_dir(a.in) ? "a folder; --in takes a file"
                                                            : "no such file");
    for (size_t k = 0; k < sizeof KINDS / sizeof *KINDS; k++)
        if (KINDS[k].probe(a.in)) return KINDS[k].run(&a);
    /* no kind claims it: the single-file converter says best what is wrong with it */
    return run_single_file(&a);
}
