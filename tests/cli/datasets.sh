#!/usr/bin/env bash
# Datasets from strangers (docs/RELIABILITY.md):
# 1. a manifest whose image paths leave its folder ("..", an absolute path elsewhere, a symlink
#    out) is refused by mapo cache and mapo train with one line naming the line and the path;
#    --allow_outside_paths reads it.
# 2. a manifest with 10000 unreadable rows: the first few are named, the rest summed up in one
#    line; stderr stays under 10 lines, the good pairs are cached.
source tests/cli/common.bash
D=tests/fixtures/pipeline/data/manifest
small=(--block_out_channels 8,16,16 --text_width 16 --text_layers 1 --attention_heads 2 --image_size 16)
$MAPO init-pixel-pipeline --out $TMP/px --channels 1 "${small[@]}" >/dev/null 2>$TMP/i.log || bad "init: $(cat $TMP/i.log)"
cp -r $D $TMP/ok
# 1. paths out of the folder
mkdir -p $TMP/up/ds $TMP/abs $TMP/sym
sed 's#"img/#"../../ok/img/#g' $D/manifest.jsonl > $TMP/up/ds/manifest.jsonl
sed "s#\"img/#\"$PWD/$D/img/#g" $D/manifest.jsonl > $TMP/abs/manifest.jsonl
ln -s "$PWD/$D/img" $TMP/sym/img
cp $D/manifest.jsonl $TMP/sym/
line1=$(head -1 $D/manifest.jsonl | sed 's/.*"chosen": "\([^"]*\)".*/\1/')
expect_error "cache: .. out of the folder" "manifest.jsonl line 1: chosen path '../../ok/$line1' leads to" \
  $MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/up/ds --out $TMP/c1.safetensors --quiet
expect_error "cache: absolute path elsewhere" "line 1: chosen path '$PWD/$D/$line1' leads to" \
  $MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/abs --out $TMP/c2.safetensors --quiet
expect_error "cache: symlinked folder out" "outside the dataset folder" \
  $MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/sym/manifest.jsonl --out $TMP/c3.safetensors --quiet
expect_error "train: .. out of the folder" "line 1: chosen path '../../ok/$line1'" \
  $MAPO train --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/up/ds --output_dir $TMP/t1 \
  --max_train_steps 1 --checkpointing_steps 0 --quiet
for k in up/ds abs sym; do
  $MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/$k --out $TMP/c.safetensors \
    --allow_outside_paths --quiet 2>$TMP/c.log && [ -f $TMP/c.safetensors ] \
    && ok "$k: read with --allow_outside_paths" || bad "$k with --allow_outside_paths: $(cat $TMP/c.log)"
  rm -f $TMP/c.safetensors
done
$MAPO train --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/up/ds --output_dir $TMP/t2 \
  --max_train_steps 1 --checkpointing_steps 0 --train_batch_size 1 --allow_outside_paths --quiet 2>$TMP/t.log \
  && [ -f $TMP/t2/unet/diffusion_pytorch_model.safetensors ] \
  && ok "train reads it with --allow_outside_paths" || bad "train --allow_outside_paths: $(cat $TMP/t.log)"
# 2. 10000 unreadable rows (missing images inside the folder) after the good ones
cp -r $D $TMP/flood
seq 10000 | sed 's#.*#{"caption": "gone &", "chosen": "img/gone&.jpg", "rejected": "img/gone&.jpg"}#' \
  >> $TMP/flood/manifest.jsonl
$MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/flood --out $TMP/f.safetensors 2>$TMP/f.log
rc=$?
n=$(wc -l < $TMP/f.log)
[ $rc -eq 0 ] && [ -f $TMP/f.safetensors ] && ok "10000 bad rows skipped, the good pairs cached" \
  || bad "flood cache (exit $rc): $(head -20 $TMP/f.log)"
[ "$n" -lt 10 ] && ok "stderr of 10000 bad rows: $n lines" || bad "stderr of 10000 bad rows: $n lines: $(head -20 $TMP/f.log)"
[ "$(grep -c '^mapo: warning: skipping pair' $TMP/f.log)" -eq 5 ] && grep -q 'line 6 chosen img/gone1.jpg' $TMP/f.log \
  && grep -q '9995 more pairs skipped' $TMP/f.log && ok "first 5 named with their lines, then: $(grep 'more pairs' $TMP/f.log)" \
  || bad "flood messages: $(cat $TMP/f.log)"
expect_error "10000 bad rows, --on_bad_image fail: the first one" "line 6 chosen img/gone1.jpg" \
  $MAPO cache --pretrained_model_name_or_path $TMP/px --dataset_name $TMP/flood --out $TMP/f2.safetensors --on_bad_image fail
finish
