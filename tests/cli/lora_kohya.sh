#!/usr/bin/env bash
# kohya-ss LoRA files (what A1111 / ComfyUI users load; tests/fixtures/lora_kohya, made by
# tools/make_kohya_fixtures.py and checked there with diffusers' load_lora_weights) in
# mapo sample: the kohya file draws the same PNG bytes as the diffusers file of the same LoRA
# (SD 1.5: diffusers-layout names; SDXL: original-layout names), from the latents diffusers
# used; a folder holding only lora_kohya.safetensors loads too; a kohya file for another UNet is
# refused with one error line.
source tests/cli/common.bash
F=tests/fixtures/lora_kohya
for kind in sd15 sdxl; do
  P=tests/fixtures/pipeline/$kind; L=$F/pipe_$kind
  args=(--model $P --prompt "An astronaut riding a horse on Mars, 4k!" --num_inference_steps 4
        --guidance_scale 5 --sampler ddim --height 32 --width 32 --latents $L/expect.safetensors --quiet)
  $MAPO sample "${args[@]}" --lora $L/lora_kohya.safetensors --out $TMP/$kind.k.png 2>$TMP/k.log \
    || bad "$kind sample --lora kohya: $(cat $TMP/k.log)"
  $MAPO sample "${args[@]}" --lora $L/pytorch_lora_weights.safetensors --out $TMP/$kind.d.png 2>$TMP/d.log \
    || bad "$kind sample --lora diffusers: $(cat $TMP/d.log)"
  $MAPO sample "${args[@]}" --out $TMP/$kind.b.png 2>/dev/null || bad "$kind sample without LoRA"
  cmp -s $TMP/$kind.k.png $TMP/$kind.d.png && ! cmp -s $TMP/$kind.k.png $TMP/$kind.b.png \
    && ok "$kind: --lora kohya file == --lora diffusers file (PNG bytes), != no LoRA" \
    || bad "$kind: kohya and diffusers LoRA images differ (or equal the base image)"
  mkdir -p $TMP/only_$kind && cp $L/lora_kohya.safetensors $TMP/only_$kind/
  $MAPO sample "${args[@]}" --lora $TMP/only_$kind --out $TMP/$kind.f.png 2>$TMP/f.log \
    && cmp -s $TMP/$kind.f.png $TMP/$kind.k.png && ok "$kind: a folder with only lora_kohya.safetensors" \
    || bad "$kind: kohya folder: $(cat $TMP/f.log)"
done
expect_error "sample: the SDXL pipeline's kohya LoRA on the SD 1.5 pipeline" "do not fit" \
  $MAPO sample --model tests/fixtures/pipeline/sd15 --lora $F/pipe_sdxl/lora_kohya.safetensors \
  --prompt x --num_inference_steps 1 --out $TMP/x.png
expect_error "sample: --lora not a LoRA file" "lora_unet_*.lora_down.weight" \
  $MAPO sample --model tests/fixtures/pipeline/sdxl --lora $F/pipe_sdxl/expect.safetensors \
  --prompt x --num_inference_steps 1 --out $TMP/x.png
# mapo convert between the layouts: diffusers -> kohya equals the fixture kohya file, kohya ->
# diffusers equals the fixture diffusers file (tensor by tensor, exactly)
for kind in sd15 sdxl; do
  P=tests/fixtures/pipeline/$kind; L=$F/pipe_$kind
  $MAPO convert --in $L/pytorch_lora_weights.safetensors --out $TMP/$kind.conv_k.safetensors --to kohya --model $P --quiet 2>$TMP/c.log \
    && $MAPO diff $TMP/$kind.conv_k.safetensors $L/lora_kohya.safetensors --tol 0 --quiet >/dev/null 2>&1 \
    && ok "$kind: mapo convert --to kohya == the kohya fixture" || bad "$kind convert to kohya: $(cat $TMP/c.log)"
  $MAPO convert --in $L/lora_kohya.safetensors --out $TMP/$kind.conv_d.safetensors --to diffusers --model $P --quiet 2>$TMP/c.log \
    && $MAPO diff $TMP/$kind.conv_d.safetensors $L/pytorch_lora_weights.safetensors --tol 0 --quiet >/dev/null 2>&1 \
    && ok "$kind: mapo convert --to diffusers == the diffusers fixture" || bad "$kind convert to diffusers: $(cat $TMP/c.log)"
done
expect_error "convert: a LoRA without --to / --model" "--to kohya|diffusers" \
  $MAPO convert --in $F/pipe_sd15/lora_kohya.safetensors --out $TMP/y.safetensors
expect_error "convert: a LoRA to an unknown layout" "kohya or diffusers" \
  $MAPO convert --in $F/pipe_sd15/lora_kohya.safetensors --out $TMP/y.safetensors --to peft --model tests/fixtures/pipeline/sd15
finish
