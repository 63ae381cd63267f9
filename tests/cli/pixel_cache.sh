#!/usr/bin/env bash
# Pixel-space pipelines (no vae/) and images-only manifests through mapo cache / mapo train:
# 1. the cache of a pixel pipeline holds the preprocessed images themselves (gray by ITU-R 601-2
#    luma for a 1-channel UNet), against PIL + torchvision (tools/make_pixel_cache_fixtures.py,
#    tests/fixtures/pixel_cache/); the default resolution is the UNet's sample_size (x 1);
#    staleness (channels, text encoder weights); 2 MaPO steps from the manifest.
# 2. an images-only manifest ({"caption", "image"} lines): chosen only, 2 SFT steps, other losses
#    refused, mixed manifests refused naming the line, bad images skipped or refused.
source tests/cli/common.bash
D=tests/fixtures/pipeline/data/manifest
E=tests/fixtures/pixel_cache
small=(--block_out_channels 8,16,16 --text_width 16 --text_layers 1 --attention_heads 2 --image_size 16)
$MAPO init-pixel-pipeline --out $TMP/gray --channels 1 "${small[@]}" >/dev/null 2>$TMP/i.log || bad "init gray: $(cat $TMP/i.log)"
$MAPO init-pixel-pipeline --out $TMP/rgb --channels 3 "${small[@]}" >/dev/null 2>$TMP/i.log || bad "init rgb: $(cat $TMP/i.log)"
# 1. the cache equals the official preprocessing (center crop, both orientations) [+ luma];
#    no --resolution: sample_size 16 x 1. Tolerance 2e-6 as the preprocessing parity (test_dataset).
for kind in gray rgb; do
  $MAPO cache --pretrained_model_name_or_path $TMP/$kind --dataset_name $D --out $TMP/$kind.safetensors --quiet 2>$TMP/c.log \
    || bad "$kind cache: $(cat $TMP/c.log)"
  out=$($MAPO diff $TMP/$kind.safetensors $E/expect_$kind.safetensors --tol 2e-6 --quiet 2>&1) \
    && grep -q "compared 4 tensors (0 only in B)" <<<"$out" \
    && ok "$kind pixel cache (chosen, rejected, both orientations) == PIL + torchvision: $out" || bad "$kind pixel cache: $out"
done
out=$($MAPO diff $TMP/gray.safetensors $TMP/gray.safetensors --quiet 2>&1) && grep -q "compared 5 tensors" <<<"$out" \
  && ok "pixel cache: chosen, rejected, both flips, encoder_hidden_states" || bad "pixel cache tensors: $out"
$MAPO cache --pretrained_model_name_or_path $TMP/gray --dataset_name $D --out $TMP/g24.safetensors --resolution 24 --no_hflip --quiet 2>$TMP/c.log \
  && out=$($MAPO diff $TMP/g24.safetensors $TMP/g24.safetensors --quiet 2>&1) && grep -q "compared 3 tensors" <<<"$out" \
  && ok "pixel cache at --resolution 24 (no multiple of a VAE factor needed), --no_hflip" || bad "pixel cache res 24: $(cat $TMP/c.log) $out"
# train 2 MaPO steps from the manifest; the cache is reused, and rebuilt for another channel count
# (the two pipelines share their text encoder: only pixel_channels tells the caches apart) or
# another text encoder
common=(--train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 --learning_rate 1e-3 --seed 5 --quiet)
$MAPO train --pretrained_model_name_or_path $TMP/gray --dataset_name $D --output_dir $TMP/t "${common[@]}" 2>$TMP/t.log \
  && grep -q "5 pairs of 1x16x16; loss mapo" $TMP/t.log && [ "$(wc -l < $TMP/t/train_log.jsonl)" -eq 2 ] \
  && [ -f $TMP/t/unet/diffusion_pytorch_model.safetensors ] \
  && ok "2 MaPO steps of a gray pixel pipeline from the manifest" || bad "train gray: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $TMP/gray --dataset_name $D --output_dir $TMP/t "${common[@]}" 2>$TMP/t.log \
  && grep -q "using the cache" $TMP/t.log && ok "pixel cache reused" || bad "pixel cache not reused: $(cat $TMP/t.log)"
$MAPO train --pretrained_model_name_or_path $TMP/rgb --dataset_name $D --output_dir $TMP/t "${common[@]}" 2>$TMP/t.log \
  && grep -q "rebuilding.*pixel_channels" $TMP/t.log && grep -q "5 pairs of 3x16x16" $TMP/t.log \
  && ok "stale pixel cache (channels) rebuilt" || bad "stale pixel cache channels: $(cat $TMP/t.log)"
cp -r $TMP/rgb $TMP/rgb2
f=$TMP/rgb2/text_encoder/model.safetensors
printf '\x3f' | dd of=$f bs=1 seek=$(( $(stat -c %s $f) - 2 )) conv=notrunc 2>/dev/null
$MAPO train --pretrained_model_name_or_path $TMP/rgb2 --dataset_name $D --output_dir $TMP/t "${common[@]}" 2>$TMP/t.log \
  && grep -q "rebuilding.*model_fingerprint" $TMP/t.log && ok "stale pixel cache (text encoder weights) rebuilt" \
  || bad "stale pixel cache text encoder: $(cat $TMP/t.log)"
# 2. images-only: the chosen images of the manifest as single captioned images
mkdir -p $TMP/imgs/img
i=0
while IFS= read -r line; do
  cap=$(sed 's/.*"caption": \("[^"]*"\).*/\1/' <<<"$line"); ch=$(sed 's/.*"chosen": "\([^"]*\)".*/\1/' <<<"$line")
  cp $D/$ch $TMP/imgs/img/$i.jpg
  echo "{\"caption\": $cap, \"image\": \"img/$i.jpg\"}" >> $TMP/imgs/manifest.jsonl
  i=$((i+1))
done < $D/manifest.jsonl
$MAPO cache --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/imgs --out $TMP/im.safetensors 2>$TMP/c.log \
  && grep -q "5 images at 16x16 (pixel space, gray)" $TMP/c.log || bad "images-only cache: $(cat $TMP/c.log)"
out=$($MAPO diff $TMP/im.safetensors $E/expect_gray.safetensors --tol 2e-6 --quiet 2>&1) \
  && grep -q "compared 2 tensors (2 only in B)" <<<"$out" \
  && ok "images-only cache: chosen and chosen_hflip == PIL + torchvision, no rejected: $out" || bad "images-only cache: $out"
out=$($MAPO diff $TMP/im.safetensors $TMP/gray.safetensors --tol 0 --quiet 2>&1) && grep -q "compared 3 tensors (2 only in B)" <<<"$out" \
  && ok "images-only cache == the pairs' chosen images and captions, bit for bit" || bad "images-only vs pairs: $out"
$MAPO train --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/imgs --output_dir $TMP/ts --loss sft "${common[@]}" 2>$TMP/t.log \
  && grep -q "5 pairs of 1x16x16; loss sft" $TMP/t.log && [ "$(wc -l < $TMP/ts/train_log.jsonl)" -eq 2 ] \
  && ok "2 SFT steps on the images-only manifest" || bad "sft images-only: $(cat $TMP/t.log)"
expect_error "images-only: --loss mapo refused" "only --loss sft" $MAPO train --pretrained_model_name_or_path $TMP/gray \
  --dataset_name $TMP/imgs --output_dir $TMP/ts --loss mapo "${common[@]}"
expect_error "images-only: --loss dpo refused before reference errors" "only --loss sft" $MAPO train \
  --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/imgs --output_dir $TMP/td --loss dpo "${common[@]}"
expect_error "images-only: cache --ref_model refused" "Diffusion-DPO needs pairs" $MAPO cache \
  --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/imgs --out $TMP/x.safetensors --ref_model $TMP/gray
# the same with a VAE pipeline: latents of the image alone
$MAPO cache --pretrained_model_name_or_path tests/fixtures/pipeline/sd15 --dataset_name $TMP/imgs --out $TMP/iv.safetensors \
  --resolution 32 --vae_latents mean --quiet 2>$TMP/c.log || bad "images-only VAE cache: $(cat $TMP/c.log)"
out=$($MAPO diff $TMP/iv.safetensors tests/fixtures/pipeline/expect_cache_manifest_sd15.safetensors --tol 1e-4 --quiet 2>&1) \
  && grep -q "compared 3 tensors (2 only in B)" <<<"$out" \
  && ok "images-only cache with a VAE == diffusers' chosen latents: $out" || bad "images-only VAE cache: $out"
# mixed manifests: refused naming the first line of the other kind
cp -r $TMP/imgs $TMP/mixed
sed -n 1p $D/manifest.jsonl | sed "s#img/#$PWD/$D/img/#g" >> $TMP/mixed/manifest.jsonl
expect_error "manifest of images with a pair line" "manifest.jsonl line 6: a pair in a manifest of single images" \
  $MAPO cache --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/mixed --out $TMP/x.safetensors
mkdir -p $TMP/mixed2
{ sed -n 1,2p $D/manifest.jsonl; echo; sed -n 3p $TMP/imgs/manifest.jsonl; sed -n 4p $TMP/imgs/manifest.jsonl; } > $TMP/mixed2/m.jsonl
expect_error "manifest of pairs with an image line" "m.jsonl line 4: a single image in a manifest of pairs" \
  $MAPO train --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/mixed2/m.jsonl --output_dir $TMP/tm --loss sft "${common[@]}"
# bad images: skipped with their line named, or refused
cp -r $TMP/imgs $TMP/badimgs
echo '{"caption": "gone", "image": "img/does_not_exist.png"}' >> $TMP/badimgs/manifest.jsonl
head -c 300 $TMP/imgs/img/0.jpg > $TMP/badimgs/img/cut.jpg
echo '{"caption": "cut", "image": "img/cut.jpg"}' >> $TMP/badimgs/manifest.jsonl
$MAPO cache --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/badimgs --out $TMP/b.safetensors 2>$TMP/b.log \
  && grep -q "line 6 image img/does_not_exist.png" $TMP/b.log && grep -q "line 7 image img/cut.jpg" $TMP/b.log \
  && grep -q "2 images skipped" $TMP/b.log && grep -q "5 images" $TMP/b.log \
  && ok "images-only: bad images skipped, lines named, the others cached" || bad "images-only skip: $(cat $TMP/b.log)"
expect_error "images-only: --on_bad_image fail" "line 6 image img/does_not_exist.png" $MAPO cache \
  --pretrained_model_name_or_path $TMP/gray --dataset_name $TMP/badimgs --out $TMP/b2.safetensors --on_bad_image fail
[ ! -e $TMP/b2.safetensors ] && ok "a refused images-only cache leaves no file" || bad "partial cache left behind"
finish
