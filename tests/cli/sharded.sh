#!/usr/bin/env bash
# Sharded checkpoints through the CLI (docs/PRECISION.md "Reading"): the tiny SD 1.5 pipeline of
# tests/fixtures/pipeline with its UNet sharded (tests/fixtures/halfprec/sharded, 8 shards) and
# its VAE sharded (tests/fixtures/sharded/vae/sharded, 4 F32 shards + an fp16 variant in 2;
# tools/make_sharded_fixtures.py):
# 1. mapo cache with the sharded VAE writes the same latents, bit for bit, as with the same VAE in
#    one file; --variant fp16 reads the fp16 shards; mapo sample decodes with it.
# 2. Diffusion-DPO's reference errors are cached for a sharded reference UNet (its index and every
#    shard fingerprinted): mapo train uses them (no reference UNet in memory) and reuses the cache
#    on a second run; they equal the errors of the same UNet in one file; after one shard changes
#    mapo train ignores them and runs the reference UNet; after a VAE shard changes the data
#    cache is rebuilt.
# 3. bad inputs: a VAE shard missing, a reference with a missing shard: one error line each.
source tests/cli/common.bash
P=tests/fixtures/pipeline/sd15
D=tests/fixtures/pipeline/data/manifest
S=tests/fixtures/sharded
# the last 4 bytes of an F32 safetensors file (the last value of its last tensor) set to 1.0
last_to_one() { printf '\x00\x00\x80\x3f' | dd of="$1" bs=1 seek=$(( $(stat -c %s "$1") - 4 )) conv=notrunc 2>/dev/null; }

# the pipeline with the sharded UNet and VAE, and the same with the VAE in one file
cp -r $P $TMP/p && rm -rf $TMP/p/unet $TMP/p/vae && cp -r tests/fixtures/halfprec/sharded $TMP/p/unet \
  && cp -r $S/vae/sharded $TMP/p/vae || bad "copy the pipeline"
cp -r $TMP/p $TMP/q && rm -rf $TMP/q/vae && cp -r $S/vae/plain $TMP/q/vae || bad "copy the pipeline"

# 1. the VAE
for x in p q; do
  $MAPO cache --pretrained_model_name_or_path $TMP/$x --dataset_name $D --out $TMP/c_$x.safetensors \
    --quiet 2>$TMP/c.log || bad "cache $x: $(cat $TMP/c.log)"
done
out=$($MAPO diff $TMP/c_p.safetensors $TMP/c_q.safetensors --tol 0 --quiet 2>&1) \
  && grep -q "compared 5 tensors (0 only in B); worst relative error 0.000e+00" <<<"$out" \
  && ok "sharded VAE: the cache equals the one-file VAE's bit for bit: $out" || bad "sharded vs one-file VAE: $out"
# --variant fp16: the F16 shards, rounded at 2^-11 relative per weight, move the latents by
# 2.6e-4 (measured; test_sharded: the decoder's output by 7.9e-4): above 1e-5, within 1e-2
$MAPO cache --pretrained_model_name_or_path $TMP/p --dataset_name $D --out $TMP/c_16.safetensors --variant fp16 \
  --quiet 2>$TMP/c.log || bad "cache fp16: $(cat $TMP/c.log)"
out=$($MAPO diff $TMP/c_16.safetensors $TMP/c_p.safetensors --tol 1e-2 --quiet 2>&1) \
  && ! $MAPO diff $TMP/c_16.safetensors $TMP/c_p.safetensors --tol 1e-5 --quiet >/dev/null 2>&1 \
  && ok "--variant fp16 reads the VAE's fp16 shards: $out" || bad "fp16 VAE shards: $out"
for x in p q; do
  $MAPO sample --model $TMP/$x --prompt "a red square" --num_inference_steps 2 --seed 3 --out $TMP/s_$x.png \
    --quiet 2>$TMP/s.log || bad "sample $x: $(cat $TMP/s.log)"
done
[ -s $TMP/s_p.png ] && cmp -s $TMP/s_p.png $TMP/s_q.png && ok "mapo sample decodes with the sharded VAE (same image)" \
  || bad "sample with the sharded VAE"

# 2. DPO reference errors of the sharded reference UNet
common=(--train_batch_size 2 --max_train_steps 3 --checkpointing_steps 0 --learning_rate 1e-3 --seed 5 --quiet)
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $D --output_dir $TMP/d --loss dpo "${common[@]}" 2>$TMP/d.log \
  && grep -q "no reference UNet in memory" $TMP/d.log && ! grep -q "not cached" $TMP/d.log \
  && head -c 4096 $TMP/d/cache.safetensors | grep -aq '"ref_fingerprint":"[0-9a-f]\{16\}"' \
  && ok "dpo: reference errors of the sharded UNet cached and used" || bad "dpo sharded ref: $(cat $TMP/d.log)"
cp $TMP/d/unet/diffusion_pytorch_model.safetensors $TMP/d_first.safetensors
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $D --output_dir $TMP/d --loss dpo "${common[@]}" 2>$TMP/d.log \
  && grep -q "using the cache" $TMP/d.log && grep -q "no reference UNet in memory" $TMP/d.log \
  && cmp -s $TMP/d/unet/diffusion_pytorch_model.safetensors $TMP/d_first.safetensors \
  && ok "second run: the cache and its reference errors reused, same weights" || bad "dpo reuse: $(cat $TMP/d.log)"
# the errors cached for the sharded reference are those of the same UNet in one file, bit for bit
# (the one-file copy: one SFT step at learning rate 0 leaves every weight as it was, AdamW
# subtracting 0 x its update, and saves unet/ as one file)
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $TMP/c_p.safetensors --output_dir $TMP/z --loss sft \
  --train_batch_size 1 --max_train_steps 1 --checkpointing_steps 0 --learning_rate 0 --quiet 2>$TMP/z.log \
  && cp -r $TMP/p $TMP/one && rm -rf $TMP/one/unet && cp -r $TMP/z/unet $TMP/one/unet || bad "one-file copy: $(cat $TMP/z.log)"
for r in p one; do
  $MAPO cache --pretrained_model_name_or_path $TMP/p --dataset_name $D --out $TMP/r_$r.safetensors --ref_model $TMP/$r \
    --ref_epochs 2 --quiet 2>$TMP/c.log || bad "cache --ref_model $r: $(cat $TMP/c.log)"
done
out=$($MAPO diff $TMP/r_p.safetensors $TMP/r_one.safetensors --tol 0 --quiet 2>&1) \
  && grep -q "compared 6 tensors (0 only in B); worst relative error 0.000e+00" <<<"$out" \
  && ok "mapo cache --ref_model: the sharded UNet's reference errors == the one-file UNet's: $out" \
  || bad "reference errors sharded vs one file: $out"
# one shard of the reference changes (its last value set to 1.0): the errors are stale
last_to_one $TMP/p/unet/diffusion_pytorch_model-00005-of-00008.safetensors
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $D --output_dir $TMP/d --loss dpo "${common[@]}" 2>$TMP/d.log \
  && grep -q "do not fit this run" $TMP/d.log && ! grep -q "no reference UNet in memory" $TMP/d.log \
  && ok "a changed shard invalidates the cached reference errors (the reference UNet runs)" \
  || bad "changed shard: $(cat $TMP/d.log)"
# a changed VAE shard (its last value set to 1.0) makes the data cache stale: rebuilt
last_to_one $TMP/p/vae/diffusion_pytorch_model-00004-of-00004.safetensors
$MAPO train --pretrained_model_name_or_path $TMP/p --dataset_name $D --output_dir $TMP/d "${common[@]}" 2>$TMP/d.log \
  && grep -q "rebuilding $TMP/d/cache.safetensors: .*model_fingerprint" $TMP/d.log \
  && ok "a changed VAE shard makes the cache stale (rebuilt)" || bad "changed VAE shard: $(cat $TMP/d.log)"

# 3. bad inputs
cp -r $TMP/q $TMP/b && rm -rf $TMP/b/vae && cp -r $S/vae/sharded $TMP/b/vae \
  && rm $TMP/b/vae/diffusion_pytorch_model-00003-of-00004.safetensors
expect_error "a VAE shard missing" "vae/diffusion_pytorch_model.safetensors.index.json: shard diffusion_pytorch_model-00003-of-00004.safetensors" \
  $MAPO cache --pretrained_model_name_or_path $TMP/b --dataset_name $D --out $TMP/x.safetensors
cp -r $TMP/q $TMP/r && rm $TMP/r/unet/diffusion_pytorch_model-00002-of-00008.safetensors
expect_error_w "a reference UNet shard missing" "reference UNet $TMP/r: $TMP/r/unet/diffusion_pytorch_model.safetensors.index.json: shard" \
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D --out $TMP/x.safetensors --ref_model $TMP/r
finish
