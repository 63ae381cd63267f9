#!/usr/bin/env bash
# Diffusion-KTO in mapo train (docs/METHOD.md, Diffusion-KTO; the objective's parity is in
# test_objectives): on pairs (chosen desirable, rejected undesirable) and on labelled single
# images; the reference is a frozen copy, the UNet with its adapters off (LoRA) or errors cached
# with the dataset. At step 1 the policy is its reference, so g = 0, z = 0 and the loss is
# exactly mean(w * (1 - sigmoid(0))) = 0.5 with the default weights.
source tests/cli/common.bash
M=tests/fixtures/unet/sd15/model
P=tests/fixtures/pipeline/sd15
D=tests/fixtures/pipeline/data
$MAPO make-pairs --model $M --out $TMP/p.safetensors --n 6 --res 8 --seq 7 >/dev/null || bad "make-pairs"
k=(--pretrained_model_name_or_path $M --dataset_name $TMP/p.safetensors --loss kto --train_batch_size 2
   --learning_rate 1e-3 --report_to none --quiet)
first_loss() { sed -n 1p "$1" | sed 's/.*"loss": \([-0-9.e+]*\),.*/\1/'; }
# 1. pairs, full fine-tune (frozen copy as reference), interrupted + resumed == uninterrupted
$MAPO train "${k[@]}" --output_dir $TMP/a --max_train_steps 4 --checkpointing_steps 2 2>$TMP/a.log || bad "kto: $(cat $TMP/a.log)"
[ "$(first_loss $TMP/a/train_log.jsonl)" = "0.5" ] && ok "kto on pairs: step-1 loss is exactly 0.5" || bad "kto step-1 loss $(first_loss $TMP/a/train_log.jsonl)"
$MAPO train "${k[@]}" --output_dir $TMP/b --max_train_steps 4 --checkpointing_steps 2 --stop_after_steps 2 2>/dev/null
$MAPO train "${k[@]}" --output_dir $TMP/b --max_train_steps 4 --checkpointing_steps 2 --resume_from_checkpoint latest 2>/dev/null
$MAPO diff $TMP/b/unet/diffusion_pytorch_model.safetensors $TMP/a/unet/diffusion_pytorch_model.safetensors --tol 0 --quiet >/dev/null 2>&1 \
  && ok "kto resumes bit-identically" || bad "kto resume"
! $MAPO diff $TMP/a/unet/diffusion_pytorch_model.safetensors $M/diffusion_pytorch_model.safetensors --tol 1e-7 --quiet >/dev/null 2>&1 \
  && ok "kto changed the weights" || bad "kto did not train"
# 2. LoRA: the reference is the UNet with its adapters off
$MAPO train "${k[@]}" --output_dir $TMP/l --max_train_steps 2 --checkpointing_steps 0 --lora_rank 2 2>$TMP/l.log \
  && [ "$(first_loss $TMP/l/train_log.jsonl)" = "0.5" ] && ok "kto + LoRA: step-1 loss 0.5 (adapters off as reference)" || bad "kto lora: $(cat $TMP/l.log)"
# 3. an image dataset: reference errors cached with it (no reference UNet in memory)
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/c --loss kto --resolution 32 \
  --train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 --report_to none 2>$TMP/c.log \
  && grep -q "reference errors come from" $TMP/c.log && [ "$(first_loss $TMP/c/train_log.jsonl)" = "0.5" ] \
  && ok "kto from images: cached reference errors, step-1 loss 0.5" || bad "kto cached: $(cat $TMP/c.log)"
# 4. labelled single images (unpaired data): 1 desirable / 0 undesirable
mkdir -p $TMP/lab && cp $D/manifest/img/*.jpg $TMP/lab/
i=0; for f in $(cd $TMP/lab && ls *.jpg); do
  printf '{"caption": "image %d", "image": "%s", "label": %d}\n' $i "$f" $((i % 2)) >> $TMP/lab/manifest.jsonl; i=$((i+1)); done
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/lab --output_dir $TMP/u --loss kto --resolution 32 \
  --train_batch_size 3 --max_train_steps 2 --checkpointing_steps 0 --report_to none 2>$TMP/u.log \
  && [ "$(first_loss $TMP/u/train_log.jsonl)" = "0.5" ] && ok "kto on labelled single images ($i images), step-1 loss 0.5" \
  || bad "kto unpaired: $(cat $TMP/u.log)"
sed 's/, "label": [01]//' $TMP/lab/manifest.jsonl > $TMP/nolab.jsonl && mkdir -p $TMP/nl && mv $TMP/nolab.jsonl $TMP/nl/manifest.jsonl && cp $TMP/lab/*.jpg $TMP/nl/
expect_error "kto on unlabelled single images" "label" $MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/nl \
  --output_dir $TMP/v --loss kto --resolution 32 --max_train_steps 1 --report_to none
printf '{"caption": "x", "image": "%s", "label": 2}\n' "$(cd $TMP/lab && ls *.jpg | head -1)" > $TMP/lab2.jsonl; mkdir -p $TMP/bl && mv $TMP/lab2.jsonl $TMP/bl/manifest.jsonl && cp $TMP/lab/*.jpg $TMP/bl/
expect_error "a label that is not 1 / 0" "label" $MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/bl \
  --output_dir $TMP/w --loss kto --resolution 32 --max_train_steps 1 --report_to none
finish
