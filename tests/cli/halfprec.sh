#!/usr/bin/env bash
# Half-precision files through the CLI (docs/PRECISION.md "Half-precision files"):
# 1. mapo cache --cache_precision bf16 / fp16: about half the float32 file, the precision in the
#    metadata, values within the format's rounding of the float32 cache; training from it.
# 2. a pipeline whose UNet is sharded as diffusers' save_pretrained(max_shard_size=...) writes it
#    (tests/fixtures/halfprec, tools/make_halfprec_fixtures.py), and its fp16 variant (--variant):
#    mapo train runs on both; --save_precision bf16 / fp16 writes the final UNet / LoRA in that
#    dtype, checkpoints stay float32, and the saved UNet loads back (mapo sample).
# 3. mapo train --cache_precision: the cache it builds, reused, rebuilt when another precision is
#    asked, kept (with a note) when none is asked.
# 4. bad inputs: unknown precisions, a given cache of another precision, a bad index.json, a
#    missing shard, a shard path leaving the folder: one error line each, nothing written.
source tests/cli/common.bash
P=tests/fixtures/pipeline/sd15
D=tests/fixtures/pipeline/data/manifest
H=tests/fixtures/halfprec
# the dtypes a safetensors file's header names, e.g. "BF16 F32"
dtypes() { head -c 200000 "$1" | grep -ao '"dtype":"[A-Z0-9]*"' | sed 's/"dtype":"//; s/"//' | sort -u | tr '\n' ' '; }
size() { stat -c %s "$1"; }
# bytes of a safetensors file's data (after the u64 header length and the header)
data_bytes() { echo $(( $(size "$1") - 8 - $(od -An -tu8 -N8 "$1" | tr -d ' ') )); }

# 1. the cache in three precisions
for pr in float32 bf16 fp16; do
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D --out $TMP/c_$pr.safetensors \
    --cache_precision $pr --quiet 2>$TMP/c.log || bad "cache $pr: $(cat $TMP/c.log)"
done
f32=$(size $TMP/c_float32.safetensors)
for pr in bf16 fp16; do
  s=$(size $TMP/c_$pr.safetensors)
  # 4 of every 8 bytes remain, but time_ids and the header do not halve: at most 52%
  [ $((s * 100)) -le $((f32 * 52)) ] && [ $((s * 100)) -ge $((f32 * 45)) ] \
    && ok "$pr cache: $s bytes, float32 $f32" || bad "$pr cache size $s against float32 $f32"
  head -c 4096 $TMP/c_$pr.safetensors | grep -aq "\"cache_precision\":\"$pr\"" \
    && ok "$pr cache records cache_precision" || bad "$pr cache metadata"
done
[ "$(dtypes $TMP/c_bf16.safetensors)" = "BF16 " ] && [ "$(dtypes $TMP/c_float32.safetensors)" = "F32 " ] \
  && ok "bf16 cache: every tensor BF16 (SD 1.5: latents, both flips, encoder_hidden_states)" \
  || bad "cache dtypes: $(dtypes $TMP/c_bf16.safetensors) / $(dtypes $TMP/c_float32.safetensors)"
$MAPO cache --pretrained_model_name_or_path tests/fixtures/pipeline/sdxl --dataset_name $D --out $TMP/cx.safetensors \
  --cache_precision bf16 --no_hflip --quiet 2>$TMP/c.log && [ "$(dtypes $TMP/cx.safetensors)" = "BF16 F32 " ] \
  && head -c 4096 $TMP/cx.safetensors | grep -aq '"time_ids":{"dtype":"F32"' \
  && head -c 4096 $TMP/cx.safetensors | grep -aq '"text_embeds":{"dtype":"BF16"' \
  && ok "SDXL bf16 cache: text_embeds BF16, time_ids stay F32" || bad "sdxl bf16 cache: $(cat $TMP/c.log) $(dtypes $TMP/cx.safetensors)"
# rounding to nearest even leaves a relative error of at most 2^-9 (bf16) / 2^-11 (fp16) per
# value (normal range), so per tensor ||a - b|| / ||b|| is at most that
out=$($MAPO diff $TMP/c_bf16.safetensors $TMP/c_float32.safetensors --tol 1.96e-3 --quiet 2>&1) \
  && grep -q "compared 5 tensors (0 only in B)" <<<"$out" && ok "bf16 cache == float32 cache within 2^-9: $out" \
  || bad "bf16 cache values: $out"
out=$($MAPO diff $TMP/c_fp16.safetensors $TMP/c_float32.safetensors --tol 4.9e-4 --quiet 2>&1) \
  && ok "fp16 cache == float32 cache within 2^-11: $out" || bad "fp16 cache values: $out"
out=$($MAPO diff $TMP/c_bf16.safetensors $TMP/c_float32.safetensors --tol 1e-5 --quiet 2>&1) \
  && bad "bf16 cache is not rounded at all?: $out" || ok "bf16 cache is rounded (differs from float32 beyond 1e-5)"

# 2. the pipeline with the sharded UNet (14,564 parameters in 8 shards)
cp -r $P $TMP/p && rm -rf $TMP/p/unet && cp -r $H/sharded $TMP/p/unet
common=(--train_batch_size 2 --max_train_steps 2 --learning_rate 1e-3 --seed 5 --quiet)
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/t \
  "${common[@]}" --checkpointing_steps 1 --save_precision bf16 2>$TMP/t.log \
  && grep -q "saved $TMP/t/unet as bf16" $TMP/t.log && [ "$(wc -l < $TMP/t/train_log.jsonl)" -eq 2 ] \
  && ok "2 MaPO steps: sharded UNet, bf16 cache, --save_precision bf16" || bad "train sharded: $(cat $TMP/t.log)"
[ "$(dtypes $TMP/t/unet/diffusion_pytorch_model.safetensors)" = "BF16 " ] \
  && [ "$(dtypes $TMP/t/checkpoint-1/unet/diffusion_pytorch_model.safetensors)" = "F32 " ] \
  && [ "$(dtypes $TMP/t/checkpoint-2/unet/diffusion_pytorch_model.safetensors)" = "F32 " ] \
  && ok "final unet/ is BF16, checkpoints F32" \
  || bad "dtypes: final $(dtypes $TMP/t/unet/diffusion_pytorch_model.safetensors) ckpt $(dtypes $TMP/t/checkpoint-1/unet/diffusion_pytorch_model.safetensors)"
s16=$(data_bytes $TMP/t/unet/diffusion_pytorch_model.safetensors); s32=$(data_bytes $TMP/t/checkpoint-2/unet/diffusion_pytorch_model.safetensors)
[ $((s16 * 2)) -eq $s32 ] && [ $s32 -eq $((14564 * 4)) ] && ok "bf16 unet: $s16 bytes of data, float32 $s32" \
  || bad "bf16 unet data $s16 / $s32"
# the bf16 UNet loads back (sampling with it)
$MAPO sample --model $TMP/p --unet $TMP/t/unet --prompt "a red square" --num_inference_steps 2 --height 32 --width 32 \
  --out $TMP/s.png --quiet 2>$TMP/s.log && [ -s $TMP/s.png ] && ok "the bf16 UNet loads back (mapo sample)" \
  || bad "sample bf16 unet: $(cat $TMP/s.log)"
# resume from the float32 checkpoint: exact float32 weights, and the final save is fp16 this time
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/t \
  "${common[@]}" --max_train_steps 3 --checkpointing_steps 0 --resume_from_checkpoint latest --save_precision fp16 2>$TMP/t.log \
  && [ "$(dtypes $TMP/t/unet/diffusion_pytorch_model.safetensors)" = "F16 " ] \
  && ok "resumed from the float32 checkpoint, saved fp16" || bad "resume + fp16: $(cat $TMP/t.log)"
# LoRA adapters honour it too
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $TMP/c_float32.safetensors --output_dir $TMP/l \
  "${common[@]}" --checkpointing_steps 1 --lora_rank 2 --save_precision fp16 2>$TMP/t.log \
  && [ "$(dtypes $TMP/l/pytorch_lora_weights.safetensors)" = "F16 " ] \
  && [ "$(dtypes $TMP/l/checkpoint-1/pytorch_lora_weights.safetensors)" = "F32 " ] \
  && ok "LoRA: final adapters F16, checkpoint F32" || bad "lora fp16: $(cat $TMP/t.log) $(dtypes $TMP/l/pytorch_lora_weights.safetensors)"
# the fp16 variant, sharded (--variant fp16)
cp -r $P $TMP/v && rm -rf $TMP/v/unet && cp -r $H/variant $TMP/v/unet
$MAPO train --pretrained_model_name_or_path $TMP/v --dataset_name $TMP/c_float32.safetensors --output_dir $TMP/tv \
  "${common[@]}" --checkpointing_steps 0 --variant fp16 2>$TMP/t.log \
  && [ "$(dtypes $TMP/tv/unet/diffusion_pytorch_model.safetensors)" = "F32 " ] \
  && ok "sharded fp16 variant trains (--variant fp16), saved float32 by default" || bad "variant: $(cat $TMP/t.log)"

# 3. mapo train caches the image dataset itself
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D --output_dir $TMP/tc "${common[@]}" \
  --checkpointing_steps 0 --cache_precision bf16 2>$TMP/t.log \
  && [ "$(dtypes $TMP/tc/cache.safetensors)" = "BF16 " ] \
  && [ $(( $(size $TMP/tc/cache.safetensors) * 100 )) -le $((f32 * 52)) ] \
  && ok "train --cache_precision bf16 builds a bf16 cache" || bad "train cache bf16: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D --output_dir $TMP/tc "${common[@]}" \
  --checkpointing_steps 0 --cache_precision bf16 2>$TMP/t.log && grep -q "using the cache" $TMP/t.log \
  && ok "bf16 cache reused at bf16" || bad "reuse bf16: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D --output_dir $TMP/tc "${common[@]}" \
  --checkpointing_steps 0 2>$TMP/t.log && grep -q "holds bf16 latents and embeddings (no --cache_precision given" $TMP/t.log \
  && grep -q "using the cache" $TMP/t.log && ok "no --cache_precision: the bf16 cache is kept, with a note" \
  || bad "keep bf16: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D --output_dir $TMP/tc "${common[@]}" \
  --checkpointing_steps 0 --cache_precision float32 2>$TMP/t.log \
  && grep -q "rebuilding.*cache_precision = bf16, this run needs float32" $TMP/t.log \
  && [ "$(dtypes $TMP/tc/cache.safetensors)" = "F32 " ] && ok "--cache_precision float32 rebuilds it" \
  || bad "rebuild float32: $(cat $TMP/t.log)"

# 4. bad inputs
expect_error "unknown --save_precision" "--save_precision half: expected float32, fp16 or bf16" \
  $MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/x --save_precision half
expect_error "unknown --cache_precision (train)" "--cache_precision fp8" \
  $MAPO train --pretrained_model_name_or_path $P --dataset_name $D --output_dir $TMP/x --cache_precision fp8
expect_error "unknown --cache_precision (cache)" "--cache_precision float64" \
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D --out $TMP/x.safetensors --cache_precision float64
expect_error "a given cache of another precision" "holds bf16 latents and embeddings, --cache_precision asks fp16" \
  $MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/x --cache_precision fp16
I=diffusion_pytorch_model.safetensors.index.json
cp -r $TMP/p $TMP/b
printf '{"weight_map": {' > $TMP/b/unet/$I
expect_error "bad index.json" "$TMP/b/unet/$I: not a valid index JSON" \
  $MAPO train --pretrained_model_name_or_path $TMP/b --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/x
cp $H/sharded/$I $TMP/b/unet/$I && rm $TMP/b/unet/diffusion_pytorch_model-00004-of-00008.safetensors
expect_error "missing shard" "00004-of-00008.safetensors (of tensor" \
  $MAPO train --pretrained_model_name_or_path $TMP/b --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/x
cp $H/sharded/diffusion_pytorch_model-00004-of-00008.safetensors $TMP/b/unet/
sed 's|"conv_in.bias": "diffusion_pytorch_model-|"conv_in.bias": "../unet/diffusion_pytorch_model-|' $H/sharded/$I > $TMP/b/unet/$I
expect_error "shard path leaving the folder" "shards must be files of the index's folder" \
  $MAPO train --pretrained_model_name_or_path $TMP/b --dataset_name $TMP/c_bf16.safetensors --output_dir $TMP/x
expect_error "shard path leaving the folder (sample)" "'/'" \
  $MAPO sample --model $TMP/b --prompt x --num_inference_steps 1 --out $TMP/x.png
finish
