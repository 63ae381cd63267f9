#!/usr/bin/env bash
# The text-to-image path end to end on the tiny pipelines of tests/fixtures/pipeline (made by
# tools/make_pipeline_fixtures.py): mapo cache against diffusers' own preprocessing + encoding,
# parquet and manifest datasets giving the same cache, mapo train from images (full and LoRA,
# MaPO and DPO with cached reference errors), cache reuse and staleness, mapo sample.
source tests/cli/common.bash
F=tests/fixtures/pipeline
D=$F/data
for kind in sd15 sdxl; do
  P=$F/$kind
  nt=$([ $kind = sdxl ] && echo 7 || echo 5)
  # 1. the cache of the manifest dataset equals diffusers' encoding of the official preprocessing
  #    (center crop, latent_dist.mean), both orientations (flips on: the trainer flips per epoch).
  #    Tolerance 1e-4 relative per tensor: float32 VAE and text encoders (~1e-6); JPEG decoding
  #    is the same libjpeg-turbo ISLOW IDCT as Pillow's.
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D/manifest --out $TMP/$kind.m.safetensors \
     --resolution 32 --vae_latents mean --quiet 2>$TMP/c.log || bad "$kind cache manifest: $(cat $TMP/c.log)"
  out=$($MAPO diff $TMP/$kind.m.safetensors $F/expect_cache_manifest_$kind.safetensors --tol 1e-4 --quiet 2>&1) \
     && grep -q "compared $nt tensors" <<<"$out" \
     && ok "$kind manifest cache == diffusers: $out" || bad "$kind manifest cache differs from diffusers: $out"
  # 2. the Pick-a-Pic parquet (same images; a tie row, which must be dropped; jpg_1 of another
  #    size, resized to jpg_0's with PIL bicubic), flips off: no flipped tensors
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D/parquet --out $TMP/$kind.p.safetensors \
     --resolution 32 --no_hflip --vae_latents mean --quiet 2>$TMP/c.log || bad "$kind cache parquet: $(cat $TMP/c.log)"
  out=$($MAPO diff $TMP/$kind.p.safetensors $F/expect_cache_parquet_$kind.safetensors --tol 1e-4 --quiet 2>&1) \
     && grep -q "compared $((nt - 2)) tensors (2 only in B)" <<<"$out" \
     && ok "$kind parquet cache (--no_hflip) == diffusers: $out" || bad "$kind parquet cache differs from diffusers: $out"
done
P=$F/sd15; X=$F/sdxl
common=(--dataset_split_name train --resolution 32 --train_batch_size 2 --max_train_steps 3 --checkpointing_steps 0 --learning_rate 1e-3 --seed 5 --quiet)
# 3. train from the parquet dataset: the cache is built in output_dir, the UNet saved and reloadable
$MAPO train --pretrained_model_name_or_path $X --dataset_name $D/parquet --output_dir $TMP/tx "${common[@]}" 2>$TMP/tx.log \
  && [ -f $TMP/tx/cache.safetensors ] && [ -f $TMP/tx/unet/diffusion_pytorch_model.safetensors ] \
  && ok "sdxl: train from parquet" || bad "train sdxl parquet: $(cat $TMP/tx.log)"
# 4. a second run reuses the cache; another resolution rebuilds it
$MAPO train --pretrained_model_name_or_path $X --dataset_name $D/parquet --output_dir $TMP/tx "${common[@]}" 2>$TMP/tx2.log \
  && grep -q "using the cache" $TMP/tx2.log && ok "cache reused" || bad "cache not reused: $(cat $TMP/tx2.log)"
$MAPO train --pretrained_model_name_or_path $X --dataset_name $D/parquet --output_dir $TMP/tx "${common[@]}" --resolution 16 2>$TMP/tx3.log \
  && grep -q "rebuilding.*resolution" $TMP/tx3.log && ok "stale cache (resolution) rebuilt" || bad "stale cache: $(cat $TMP/tx3.log)"
# the cache also notices another VAE (one weight changed) and another dataset (one more pair)
cp -r $X $TMP/x2
f=$TMP/x2/vae/diffusion_pytorch_model.safetensors
printf '\x3f' | dd of=$f bs=1 seek=$(( $(stat -c %s $f) - 2 )) conv=notrunc 2>/dev/null
$MAPO train --pretrained_model_name_or_path $TMP/x2 --dataset_name $D/parquet --output_dir $TMP/tx "${common[@]}" --resolution 16 2>$TMP/tx4.log \
  && grep -q "rebuilding.*model_fingerprint" $TMP/tx4.log && ok "stale cache (VAE weights) rebuilt" || bad "stale cache model: $(cat $TMP/tx4.log)"
cp -r $D/manifest $TMP/man2; head -1 $TMP/man2/manifest.jsonl >> $TMP/man2/manifest.jsonl
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/tm "${common[@]}" 2>/dev/null || bad "tm"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/man2 --output_dir $TMP/tm "${common[@]}" 2>$TMP/tm.log \
  && grep -q "rebuilding.*dataset_fingerprint" $TMP/tm.log && grep -q "6 pairs" $TMP/tm.log && ok "stale cache (dataset) rebuilt" || bad "stale cache dataset: $(cat $TMP/tm.log)"
# a cache given directly must fit the pipeline and the resolution
expect_error "train on a cache of another VAE" "rebuild it with mapo cache" $MAPO train --pretrained_model_name_or_path $TMP/x2 \
   --dataset_name $TMP/sdxl.m.safetensors --output_dir $TMP/tc --max_train_steps 1
expect_error "train on a cache of another resolution" "resolution 32" $MAPO train --pretrained_model_name_or_path $X \
   --dataset_name $TMP/sdxl.m.safetensors --output_dir $TMP/tc --max_train_steps 1 --resolution 64
$MAPO train --pretrained_model_name_or_path $X --dataset_name $TMP/sdxl.m.safetensors --output_dir $TMP/tc \
   --max_train_steps 1 --train_batch_size 2 --quiet 2>$TMP/tc.log && ok "train on a fitting cache" || bad "train on cache: $(cat $TMP/tc.log)"
# 5. LoRA from the manifest, then sample with the trained LoRA and the trained UNet
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/tl --lora_rank 2 "${common[@]}" 2>$TMP/tl.log \
  && [ -f $TMP/tl/pytorch_lora_weights.safetensors ] && ok "sd15: LoRA train from manifest" || bad "lora train: $(cat $TMP/tl.log)"
$MAPO sample --model $P --lora $TMP/tl --prompt "a red square" --num_inference_steps 3 --height 32 --width 32 --out $TMP/l.png --quiet 2>$TMP/s.log \
  && [ "$(head -c 8 $TMP/l.png | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] && ok "sample with the trained LoRA writes a PNG" || bad "sample lora: $(cat $TMP/s.log)"
$MAPO sample --model $X --unet $TMP/tx/unet --prompt "two cats" --num_inference_steps 3 --sampler ddim --out $TMP/u.png --quiet 2>$TMP/s.log \
  && [ -s $TMP/u.png ] && ok "sample with the trained SDXL UNet" || bad "sample unet: $(cat $TMP/s.log)"
printf 'a red square\n# comment\n\ntwo cats\nsunset\n' > $TMP/prompts.txt
$MAPO sample --model $P --prompts_file $TMP/prompts.txt --num_inference_steps 2 --out $TMP/g.png --grid $TMP/grid.png --quiet 2>$TMP/s.log \
  && [ -s $TMP/g-000.png ] && [ -s $TMP/g-002.png ] && [ ! -e $TMP/g-003.png ] && [ -s $TMP/grid.png ] \
  && ok "prompts file: 3 images and a grid" || bad "prompts file: $(cat $TMP/s.log)"
# same seed, same image; another seed, another image
$MAPO sample --model $P --prompt "a red square" --num_inference_steps 2 --seed 3 --out $TMP/s1.png --quiet 2>/dev/null
$MAPO sample --model $P --prompt "a red square" --num_inference_steps 2 --seed 3 --out $TMP/s2.png --quiet 2>/dev/null
$MAPO sample --model $P --prompt "a red square" --num_inference_steps 2 --seed 4 --out $TMP/s3.png --quiet 2>/dev/null
cmp -s $TMP/s1.png $TMP/s2.png && ! cmp -s $TMP/s1.png $TMP/s3.png && ok "seeded sampling is reproducible" || bad "seeded sampling"
# 6. DPO from images: reference errors are computed into the cache, no reference UNet in memory;
#    the same run with the reference UNet in memory (a cache without reference errors) ends at the
#    same weights (float32 batch composition differs: 1e-5)
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/parquet --output_dir $TMP/d1 --loss dpo "${common[@]}" 2>$TMP/d1.log \
  && grep -q "no reference UNet in memory" $TMP/d1.log && ok "dpo: cached reference errors" || bad "dpo cached: $(cat $TMP/d1.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/parquet --output_dir $TMP/m1 "${common[@]}" 2>/dev/null || bad "mapo m1"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/m1/cache.safetensors --output_dir $TMP/d2 --loss dpo "${common[@]}" 2>$TMP/d2.log || bad "dpo d2: $(cat $TMP/d2.log)"
out=$($MAPO diff $TMP/d1/unet/diffusion_pytorch_model.safetensors $TMP/d2/unet/diffusion_pytorch_model.safetensors --tol 1e-5 --quiet 2>&1) \
  && ok "dpo with cached reference errors == with the reference UNet: $out" || bad "dpo cached vs live: $out"
# 7. a run that cannot fit is refused before the first step, with the plan printed
# (naming the memory switches the run does not use yet; none left with checkpointing and bf16,
# where --recompute_norms gains nothing)
expect_error "train: memory plan exceeds the limit" \
  "GiB are available: add --gradient_checkpointing, --mixed_precision bf16, --recompute_norms, lower" \
  $MAPO train --pretrained_model_name_or_path $P \
   --dataset_name $TMP/m1/cache.safetensors --output_dir $TMP/oom --max_memory_mb 1
expect_error "train: memory plan exceeds the limit (checkpointing, bf16)" \
  "GiB are available: lower --train_batch_size" \
  $MAPO train --pretrained_model_name_or_path $P --gradient_checkpointing --mixed_precision bf16 \
   --dataset_name $TMP/m1/cache.safetensors --output_dir $TMP/oom --max_memory_mb 1
[ ! -e $TMP/oom/train_log.jsonl ] && ok "nothing trained, no log written" || bad "oom run trained"
# 8. undecodable images: skipped with their row named, or refused (--on_bad_image fail)
B=tests/fixtures/dataset/pickapic.parquet
$MAPO cache --pretrained_model_name_or_path $P --dataset_name $B --out $TMP/bad.safetensors --resolution 16 2>$TMP/bad.log \
  && grep -q "row 4 jpg_1" $TMP/bad.log && grep -q "1 pairs skipped" $TMP/bad.log && grep -q "4 pairs" $TMP/bad.log \
  && ok "bad image skipped, row named, the other pairs cached" || bad "skip bad image: $(cat $TMP/bad.log)"
expect_error "cache --on_bad_image fail" "row 4 jpg_1" $MAPO cache --pretrained_model_name_or_path $P --dataset_name $B \
   --out $TMP/bad2.safetensors --resolution 16 --on_bad_image fail
[ ! -e $TMP/bad2.safetensors ] && ok "a refused cache leaves no file" || bad "partial cache left behind"
# 9. bad input: one clear line each
expect_error "sample: no model" "no such folder" $MAPO sample --model /nonexistent --prompt x --out $TMP/x.png
expect_error "sample: bad size" "multiples of" $MAPO sample --model $P --prompt x --height 30 --out $TMP/x.png
expect_error "sample: absurd size" "--height" $MAPO sample --model $P --prompt x --height 100000 --out $TMP/x.png
expect_error "sample: size past int" "--height" $MAPO sample --model $P --prompt x --height 4294967328 --out $TMP/x.png
expect_error "sample: no prompts in file" "no prompts" $MAPO sample --model $P --prompts_file /dev/null --out $TMP/x.png
expect_error "sample: bad sampler" "sampler" $MAPO sample --model $P --prompt x --sampler heun --out $TMP/x.png
expect_error "cache: missing dataset" "nonexistent" $MAPO cache --pretrained_model_name_or_path $P --dataset_name /nonexistent/d.parquet --out $TMP/x.safetensors
expect_error "cache: bad resolution" "resolution" $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D/manifest --out $TMP/x.safetensors --resolution 33
finish
