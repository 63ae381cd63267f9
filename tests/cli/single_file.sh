#!/usr/bin/env bash
# Single-file checkpoints (original SD 1.5 / SDXL layout, tests/fixtures/single_file/, made by
# tools/make_single_file_fixtures.py from the tiny pipelines of tests/fixtures/pipeline/ and
# checked there against diffusers' from_single_file):
#   1. mapo convert writes a pipeline folder equal to the fixture pipeline: every component's
#      tensors (mapo diff --tol 0; the CLIPTextModel is written with transformers' text_model.
#      names), configs, tokenizers, scheduler and model_index.json byte for byte;
#   2. mapo sample / cache / train take the file itself (converted once into $MAPO_CACHE_DIR,
#      then reused) and give what the folder gives: the same PNG bytes, the same cached
#      tensors, the same trained UNet;
#   3. bad inputs: one line each, nothing written.
source tests/cli/common.bash
S=tests/fixtures/single_file
F=tests/fixtures/pipeline
export MAPO_CACHE_DIR=$TMP/cache HF_HUB_CACHE=$TMP/no_hub
for kind in sd15 sdxl; do
  P=$F/$kind
  # 1. convert == the fixture pipeline
  $MAPO convert --in $S/$kind.safetensors --out $TMP/$kind --config_dir $P 2>$TMP/c.log \
    && grep -q "converted .*($([ $kind = sdxl ] && echo SDXL || echo 'SD 1.5') single file)" $TMP/c.log \
    && ok "$kind: convert" || bad "$kind convert: $(cat $TMP/c.log)"
  comps="unet:diffusion_pytorch_model vae:diffusion_pytorch_model text_encoder:model"
  [ $kind = sdxl ] && comps="$comps text_encoder_2:model"
  for c in $comps; do
    d=${c%%:*}; w=${c#*:}.safetensors
    pre=(); [ $d = text_encoder ] && pre=(--a_prefix text_model.)  # transformers 5 saved it flat
    out=$($MAPO diff $TMP/$kind/$d/$w $P/$d/$w --tol 0 --quiet "${pre[@]}" 2>&1) \
      && grep -q "(0 only in B)" <<<"$out" && ok "$kind $d == fixture: $out" || bad "$kind $d differs: $out"
    cmp -s $TMP/$kind/$d/config.json $P/$d/config.json && ok "$kind $d/config.json identical" \
      || bad "$kind $d/config.json differs"
  done
  same=1
  for f in model_index.json scheduler/scheduler_config.json $(cd $P && ls tokenizer*/*); do
    cmp -s $TMP/$kind/$f $P/$f || { same=0; bad "$kind $f differs"; }
  done
  [ $(find $TMP/$kind -type f | wc -l) -eq $(find $P -type f | wc -l) ] || { same=0; bad "$kind: other files"; }
  [ $same = 1 ] && ok "$kind: model_index, scheduler, tokenizers identical, no other file"
  # 2. sample from the file == sample from the folder (the first call converts, the next reuses)
  args=(--prompt "a red square" --num_inference_steps 3 --height 32 --width 32 --seed 2 --quiet)
  $MAPO sample --model $P "${args[@]}" --out $TMP/$kind.dir.png 2>/dev/null || bad "$kind sample folder"
  $MAPO sample --model $S/$kind.safetensors --config_dir $P "${args[@]}" --out $TMP/$kind.file.png 2>$TMP/s1.log \
    && grep -q "converted once into $MAPO_CACHE_DIR/single_file/$kind-" $TMP/s1.log \
    && cmp -s $TMP/$kind.dir.png $TMP/$kind.file.png && ok "$kind: sample --model FILE == --model FOLDER (PNG bytes)" \
    || bad "$kind sample from file: $(cat $TMP/s1.log)"
  $MAPO sample --model $S/$kind.safetensors --config_dir $P "${args[@]}" --out $TMP/$kind.file2.png 2>$TMP/s2.log \
    && grep -q "using its converted pipeline" $TMP/s2.log && cmp -s $TMP/$kind.dir.png $TMP/$kind.file2.png \
    && ok "$kind: the conversion is reused" || bad "$kind reuse: $(cat $TMP/s2.log)"
done
[ $(ls $MAPO_CACHE_DIR/single_file | wc -l) -eq 2 ] && ok "one cached conversion per file" \
  || bad "cache holds: $(ls $MAPO_CACHE_DIR/single_file)"
# cache and train take the file too, with the folder's results
P=$F/sd15; D=$F/data
$MAPO cache --pretrained_model_name_or_path $P --dataset_name $D/manifest --out $TMP/c.dir.safetensors \
   --resolution 32 --vae_latents mean --quiet 2>/dev/null || bad "cache folder"
$MAPO cache --pretrained_model_name_or_path $S/sd15.safetensors --config_dir $P --dataset_name $D/manifest \
   --out $TMP/c.file.safetensors --resolution 32 --vae_latents mean --quiet 2>$TMP/c.log || bad "cache file: $(cat $TMP/c.log)"
out=$($MAPO diff $TMP/c.file.safetensors $TMP/c.dir.safetensors --tol 0 --quiet 2>&1) \
  && ok "cache --pretrained_model_name_or_path FILE == FOLDER: $out" || bad "cache from file: $out"
# (each on its own cache: a cache records the fingerprint of the weight files it was made with,
# and the converted files hold the same tensors in another order)
common=(--resolution 32 --train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 --learning_rate 1e-3
        --seed 5 --quiet)
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/c.dir.safetensors --output_dir $TMP/t.dir \
   "${common[@]}" 2>$TMP/t.log || bad "train folder: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $S/sd15.safetensors --config_dir $P --dataset_name $TMP/c.file.safetensors \
   --output_dir $TMP/t.file "${common[@]}" 2>$TMP/t.log || bad "train file: $(cat $TMP/t.log)"
w=unet/diffusion_pytorch_model.safetensors
out=$($MAPO diff $TMP/t.file/$w $TMP/t.dir/$w --tol 0 --quiet 2>&1) \
  && ok "train --pretrained_model_name_or_path FILE == FOLDER: $out" || bad "train from file: $out"
# 3. bad inputs. Tiny hand-made files: st FILE NAME... writes a safetensors of [1] F32 tensors.
st() {
  local f=$1 h="{" i=0; shift
  for t in "$@"; do h+="$([ $i -gt 0 ] && echo ,)\"$t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[$((4 * i)),$((4 * i + 4))]}"; i=$((i + 1)); done
  h+="}"; local n=${#h}
  printf "$(printf '\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x00\\x00' $((n & 255)) $((n >> 8)))" > "$f"
  printf '%s' "$h" >> "$f"; head -c $((4 * i)) /dev/zero >> "$f"
}
U=model.diffusion_model.input_blocks.0.0.weight
st $TMP/no_vae.safetensors $U cond_stage_model.transformer.text_model.x
st $TMP/sd2.safetensors $U cond_stage_model.model.token_embedding.weight
st $TMP/refiner.safetensors $U conditioner.embedders.0.model.text_projection
cp $S/sd15.safetensors $TMP/shape.safetensors  # one shape changed in the header: [16,8,1,1] -> [8,16,1,1]
key='"model.diffusion_model.input_blocks.3.0.skip_connection.weight":{"dtype":"F32","shape":[16,8,1,1]'
off=$(grep -abo -F "$key" $TMP/shape.safetensors | cut -d: -f1)
printf '[8,16,1,1]' | dd of=$TMP/shape.safetensors bs=1 seek=$((off + ${#key} - 10)) conv=notrunc 2>/dev/null
mkdir -p $TMP/existing && touch $TMP/existing/x
expect_error "convert: not a checkpoint" "not a single-file checkpoint: it holds a diffusers UNet" \
   $MAPO convert --in $P/unet/diffusion_pytorch_model.safetensors --out $TMP/x --config_dir $P
expect_error "convert: not a model" "not a single-file Stable Diffusion checkpoint" \
   $MAPO convert --in $F/expect_sd15.safetensors --out $TMP/x --config_dir $P
expect_error "convert: missing VAE" "missing part: no VAE" $MAPO convert --in $TMP/no_vae.safetensors --out $TMP/x --config_dir $P
expect_error "convert: SD 2.x" "SD 2.x checkpoint" $MAPO convert --in $TMP/sd2.safetensors --out $TMP/x --config_dir $P
expect_error "convert: SDXL refiner" "SDXL refiner" $MAPO convert --in $TMP/refiner.safetensors --out $TMP/x --config_dir $P
expect_error "convert: wrong shape" "input_blocks.3.0.skip_connection.weight' has shape [8, 16, 1, 1], expected [16, 8, 1, 1]" \
   $MAPO convert --in $TMP/shape.safetensors --out $TMP/x --config_dir $P
expect_error "convert: no config folder" "give --config_dir" $MAPO convert --in $S/sd15.safetensors --out $TMP/x
expect_error "convert: config folder of the other kind" "an SDXL pipeline folder" \
   $MAPO convert --in $S/sd15.safetensors --out $TMP/x --config_dir $F/sdxl
expect_error "convert: output exists" "already exists" $MAPO convert --in $S/sd15.safetensors --out $TMP/existing --config_dir $P
expect_error "convert: a folder as --in" "a folder" $MAPO convert --in $P --out $TMP/x
expect_error "convert: no --out" "needs --in and --out" $MAPO convert --in $S/sd15.safetensors
expect_error "sample: wrong shape" "has shape [8, 16, 1, 1]" $MAPO sample --model $TMP/shape.safetensors --config_dir $P \
   --prompt x --out $TMP/x.png
expect_error "sample: no config folder" "give --config_dir" $MAPO sample --model $S/sdxl.safetensors --prompt x --out $TMP/x.png
expect_error "train: not a checkpoint" "not a single-file Stable Diffusion checkpoint" $MAPO train \
   --pretrained_model_name_or_path $F/expect_sd15.safetensors --dataset_name $TMP/c.dir.safetensors --output_dir $TMP/x
expect_error "cache: missing VAE" "missing part: no VAE" $MAPO cache --pretrained_model_name_or_path $TMP/no_vae.safetensors \
   --config_dir $P --dataset_name $D/manifest --out $TMP/x.safetensors
finish
