#!/usr/bin/env bash
# mapo train end to end on the tiny fixture UNets: every objective runs and writes a
# loadable folder; an interrupted + resumed run ends bit-identical to an uninterrupted one.
source tests/cli/common.bash
M=tests/fixtures/unet/sd15/model
X=tests/fixtures/unet/sdxl/model
$MAPO make-pairs --model $M --out $TMP/p.safetensors --n 6 --res 8 --seq 7 >/dev/null || bad "make-pairs"
$MAPO make-pairs --model $X --out $TMP/px.safetensors --n 5 --res 8 --seq 7 >/dev/null || bad "make-pairs sdxl"
common=(--dataset_name $TMP/p.safetensors --train_batch_size 2 --gradient_accumulation_steps 2
        --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 1 --max_train_steps 4
        --checkpointing_steps 2 --seed 7 --quiet)
# uninterrupted
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/a "${common[@]}" 2>$TMP/a.log || bad "train a: $(cat $TMP/a.log)"
# interrupted after 2 steps (checkpoint-2 written), then resumed from latest
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/b "${common[@]}" --stop_after_steps 2 2>$TMP/b.log || bad "train b: $(cat $TMP/b.log)"
[ -d $TMP/b/checkpoint-2 ] && [ ! -d $TMP/b/unet ] && ok "interrupted run left checkpoint-2 only" || bad "interrupted run state"
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/b "${common[@]}" --resume_from_checkpoint latest 2>$TMP/b2.log || bad "resume: $(cat $TMP/b2.log)"
grep -q "resumed from" $TMP/b2.log && ok "resume announced" || bad "no resume message"
out=$($MAPO diff $TMP/b/unet/diffusion_pytorch_model.safetensors $TMP/a/unet/diffusion_pytorch_model.safetensors --tol 0 --quiet 2>&1) \
  && ok "resumed weights bit-identical: ${out}" || bad "resume not exact: $out"
out=$($MAPO diff $TMP/b/checkpoint-4/optimizer.safetensors $TMP/a/checkpoint-4/optimizer.safetensors --tol 0 --quiet 2>&1) \
  && ok "optimizer state bit-identical" || bad "optimizer state differs: $out"
# the weights moved, and the saved folder is a loadable UNet folder (debug-step runs on it)
! $MAPO diff $TMP/a/unet/diffusion_pytorch_model.safetensors $M/diffusion_pytorch_model.safetensors --tol 1e-7 --quiet >/dev/null 2>&1 \
  && ok "training changed the weights" || bad "weights unchanged"
$MAPO debug-step --model $TMP/a/unet --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/d.safetensors >/dev/null \
  && ok "trained folder reloads" || bad "trained folder does not reload"
[ "$(wc -l < $TMP/a/train_log.jsonl)" -eq 4 ] && ok "train_log.jsonl has 4 steps" || bad "train_log lines"
grep -q '"margin"' $TMP/a/train_log.jsonl && grep -q '"win_score"' $TMP/a/train_log.jsonl && ok "log fields" || bad "log fields"
# every objective, and the SDXL-shaped path
for loss in dpo sft; do
  $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/$loss --dataset_name $TMP/p.safetensors \
     --loss $loss --train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 --quiet 2>$TMP/$loss.log \
     && [ -f $TMP/$loss/unet/diffusion_pytorch_model.safetensors ] && ok "train --loss $loss" || bad "train $loss: $(cat $TMP/$loss.log)"
done
grep -q '"implicit_acc"' $TMP/dpo/train_log.jsonl && ok "dpo logs implicit accuracy" || bad "dpo log"
$MAPO train --pretrained_model_name_or_path $X --output_dir $TMP/x --dataset_name $TMP/px.safetensors \
   --train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 2>$TMP/x.log \
   && ok "train sdxl-shaped (text_time)" || bad "train sdxl: $(cat $TMP/x.log)"
grep -q "pairs/s" $TMP/x.log && grep -q "ETA" $TMP/x.log && ok "progress line" || bad "progress line: $(cat $TMP/x.log)"
# a pipeline folder: unet/ plus scheduler/scheduler_config.json (v_prediction, T=500) is read
mkdir -p $TMP/pipe/scheduler; cp -r $M $TMP/pipe/unet
cat > $TMP/pipe/scheduler/scheduler_config.json <<'JSON'
{"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "beta_start": 0.00085, "beta_end": 0.012,
 "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": false}
JSON
$MAPO train --pretrained_model_name_or_path $TMP/pipe --output_dir $TMP/pipeout --dataset_name $TMP/p.safetensors \
   --train_batch_size 2 --max_train_steps 1 --checkpointing_steps 0 2>$TMP/pipe.log \
   && grep -q "T=500, v_prediction" $TMP/pipe.log && ok "pipeline folder: unet/ and scheduler config used" || bad "pipeline folder: $(cat $TMP/pipe.log)"
# gradient accumulation: 1 pair x 2 micro-batches equals 2 pairs x 1 (same pairs, noise and
# timesteps by construction; only float summation order differs)
for cfg in "1 2" "2 1"; do set -- $cfg
  $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/ga$1 --dataset_name $TMP/p.safetensors \
     --train_batch_size $1 --gradient_accumulation_steps $2 --max_train_steps 2 --learning_rate 1e-3 \
     --max_grad_norm 0 --checkpointing_steps 0 --quiet 2>/dev/null || bad "ga run $cfg"
done
out=$($MAPO diff $TMP/ga1/unet/diffusion_pytorch_model.safetensors $TMP/ga2/unet/diffusion_pytorch_model.safetensors --tol 1e-5 --quiet 2>&1) \
  && ok "accumulation 1x2 == batch 2x1: ${out}" || bad "accumulation differs: $out"
# LoRA: only the adapters train and are saved (diffusers names); interrupted + resumed is exact;
# DPO with LoRA uses the adapters switched off as its reference (no second UNet)
lcommon=(--dataset_name $TMP/p.safetensors --lora_rank 2 --train_batch_size 2 --learning_rate 1e-2
         --max_train_steps 4 --checkpointing_steps 2 --seed 3 --quiet)
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/la "${lcommon[@]}" 2>$TMP/la.log || bad "lora train: $(cat $TMP/la.log)"
[ -f $TMP/la/pytorch_lora_weights.safetensors ] && [ ! -d $TMP/la/unet ] && ok "lora run saves pytorch_lora_weights.safetensors only" || bad "lora output"
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/lb "${lcommon[@]}" --stop_after_steps 2 2>/dev/null || bad "lora b"
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/lb "${lcommon[@]}" --resume_from_checkpoint latest 2>/dev/null || bad "lora resume"
out=$($MAPO diff $TMP/lb/pytorch_lora_weights.safetensors $TMP/la/pytorch_lora_weights.safetensors --tol 0 --quiet 2>&1) \
  && ok "lora resume bit-identical" || bad "lora resume differs: $out"
grep -q '"lora.up.weight\|lora.up.weight' <(strings $TMP/la/pytorch_lora_weights.safetensors | head -c 100000) \
  && ok "diffusers lora names" || bad "lora names"
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/ldpo --dataset_name $TMP/p.safetensors --loss dpo \
   --lora_rank 2 --train_batch_size 2 --max_train_steps 2 --checkpointing_steps 0 --quiet 2>$TMP/ldpo.log \
   && grep -q '"implicit_acc": 0\.\?[0-9]' $TMP/ldpo/train_log.jsonl && ok "dpo + lora runs" || bad "dpo lora: $(cat $TMP/ldpo.log)"
# first DPO step with fresh adapters (B = 0): policy == reference, so the loss is log 2
l1=$(head -1 $TMP/ldpo/train_log.jsonl | sed 's/.*"loss": \([^,]*\),.*/\1/')
awk -v l="$l1" 'BEGIN{exit !(l > 0.693146 && l < 0.693148)}' && ok "dpo+lora step 1 loss = log 2 ($l1)" || bad "dpo+lora first loss $l1"
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/lx --dataset_name $TMP/p.safetensors --loss dpo \
   --lora_rank 2 --ref_model $M --quiet 2>$TMP/lx.log; [ $? -ne 0 ] && grep -q "adapters switched off" $TMP/lx.log \
   && ok "--ref_model with --lora_rank refused" || bad "ref_model + lora accepted"
finish
