#!/usr/bin/env bash
# The official MaPO script's flags under mapo train (docs/METHOD.md): its README command line
# (local paths, tiny sizes) runs unchanged; epochs, label noise, subsets, ties, LR scaling,
# 8-bit AdamW (exact resume), TensorBoard event files, validation images (equal to mapo sample's),
# kohya LoRA output, a separate VAE, VAE batch size; Hub / GPU flags noted and ignored.
source tests/cli/common.bash
P=tests/fixtures/pipeline/sd15
D=tests/fixtures/pipeline/data
M=tests/fixtures/unet/sd15/model
$MAPO make-pairs --model $M --out $TMP/p.safetensors --n 6 --res 8 --seq 7 >/dev/null || bad "make-pairs"
small=(--resolution 32 --dataset_split_name train --checkpointing_steps 0 --quiet)
num() { sed -n "$2p" "$1" | sed "s/.*\"$3\": \([-0-9.e+]*\).*/\1/"; }

# 1. the official README's command line, with local paths and tiny sizes
$MAPO train --pretrained_model_name_or_path=$P --pretrained_vae_model_name_or_path=$P/vae \
  --output_dir=$TMP/official --mixed_precision="fp16" --dataset_name=$D/parquet --dataset_split_name=train \
  --train_batch_size=2 --gradient_accumulation_steps=2 --gradient_checkpointing --use_8bit_adam \
  --learning_rate=1e-5 --lr_scheduler="constant" --lr_warmup_steps=0 --max_train_steps=3 \
  --checkpointing_steps=2 --seed="0" --resolution=32 --allow_tf32 --push_to_hub --hub_model_id=me/mapo \
  --cache_dir=/nowhere --revision=main --enable_xformers_memory_efficient_attention \
  --dataloader_num_workers=4 --report_to=tensorboard 2>$TMP/official.log \
  && [ -f $TMP/official/unet/diffusion_pytorch_model.safetensors ] && [ -d $TMP/official/checkpoint-2 ] \
  && ok "the official command line runs (local paths)" || bad "official command: $(cat $TMP/official.log)"
for f in mixed_precision allow_tf32 push_to_hub hub_model_id cache_dir revision \
         enable_xformers_memory_efficient_attention dataloader_num_workers; do
  grep -q -- "note: --$f" $TMP/official.log || bad "no note for --$f"
done && ok "fp16 (runs as bf16) and the Hub / GPU flags noted once each"
grep -q "gradients + AdamW 8-bit" $TMP/official.log && ok "8-bit AdamW in the memory plan" || bad "8-bit not in plan"
ls $TMP/official/logs/mapo/events.out.tfevents.* >/dev/null 2>&1 && grep -q model_losses_w $TMP/official/logs/mapo/events.out.tfevents.* \
  && ok "TensorBoard event file in output_dir/logs/mapo" || bad "no TensorBoard file"

# 2. --num_train_epochs without --max_train_steps: 6 pairs, batch 2, accumulation 2 -> 2 steps an epoch
$MAPO train --pretrained_model_name_or_path $M --dataset_name $TMP/p.safetensors --output_dir $TMP/ep \
  --train_batch_size 2 --gradient_accumulation_steps 2 --num_train_epochs 3 --checkpointing_steps 0 \
  --report_to none 2>$TMP/ep.log
[ "$(grep -c '"step"' $TMP/ep/train_log.jsonl)" -eq 6 ] && grep -q "3 epochs of 6 pairs: 6 optimizer steps" $TMP/ep.log \
  && [ ! -d $TMP/ep/logs ] && ok "--num_train_epochs 3 -> 6 steps; --report_to none writes no logs" || bad "epochs: $(cat $TMP/ep.log)"

# 3. --label_noise_prob 1 trains every pair the other way round: at step 1 (same weights, noise
#    and timesteps) its chosen error is the rejected error of the run without noise
lab=(--pretrained_model_name_or_path $M --dataset_name $TMP/p.safetensors --train_batch_size 2 --max_train_steps 1
     --checkpointing_steps 0 --report_to none --quiet)
$MAPO train "${lab[@]}" --output_dir $TMP/l0 2>/dev/null && $MAPO train "${lab[@]}" --output_dir $TMP/l1 --label_noise_prob 1 2>/dev/null
[ "$(num $TMP/l1/train_log.jsonl 1 model_losses_w)" = "$(num $TMP/l0/train_log.jsonl 1 model_losses_l)" ] \
  && [ "$(num $TMP/l1/train_log.jsonl 1 model_losses_l)" = "$(num $TMP/l0/train_log.jsonl 1 model_losses_w)" ] \
  && ok "--label_noise_prob 1 swaps chosen and rejected" || bad "label noise: $(head -1 $TMP/l0/train_log.jsonl) / $(head -1 $TMP/l1/train_log.jsonl)"
expect_error "label noise out of range" "label_noise_prob" $MAPO train "${lab[@]}" --output_dir $TMP/l2 --label_noise_prob 1.5
$MAPO train "${lab[@]}" --output_dir $TMP/ln --checkpointing_steps 1 2>/dev/null
expect_error "resume with other label noise" "label_noise_prob" $MAPO train "${lab[@]}" --output_dir $TMP/ln \
  --checkpointing_steps 1 --max_train_steps 2 --label_noise_prob 0.5 --resume_from_checkpoint latest

# 4. --scale_lr: lr x batch x accumulation
$MAPO train "${lab[@]}" --output_dir $TMP/sl --learning_rate 1e-4 --gradient_accumulation_steps 3 --scale_lr 2>/dev/null
awk -v x="$(num $TMP/sl/train_log.jsonl 1 lr)" 'BEGIN { exit !(x > 5.99e-4 && x < 6.01e-4) }' \
  && ok "--scale_lr: 1e-4 x 2 x 3 = 6e-4" || bad "scale_lr: $(head -1 $TMP/sl/train_log.jsonl)"

# 5. image datasets: --max_train_samples, --remove_ties, --vae_encode_batch_size, a separate VAE
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/parquet --output_dir $TMP/all "${small[@]}" \
  --train_batch_size 1 --max_train_steps 1 2>$TMP/all.log || bad "all: $(cat $TMP/all.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/parquet --output_dir $TMP/sub "${small[@]}" \
  --train_batch_size 1 --max_train_steps 1 --max_train_samples 2 2>$TMP/sub.log || bad "sub: $(cat $TMP/sub.log)"
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/parquet --output_dir $TMP/ties "${small[@]}" \
  --train_batch_size 1 --max_train_steps 1 --remove_ties false 2>$TMP/ties.log || bad "ties: $(cat $TMP/ties.log)"
na=$(grep -o '[0-9]* pairs of' $TMP/all.log | cut -d' ' -f1); ns=$(grep -o '[0-9]* pairs of' $TMP/sub.log | cut -d' ' -f1)
nt=$(grep -o '[0-9]* pairs of' $TMP/ties.log | cut -d' ' -f1)
[ "$ns" = 2 ] && [ "$nt" = $((na + 1)) ] && ok "--max_train_samples 2 -> 2 pairs; --remove_ties false keeps the tie ($na -> $nt)" \
  || bad "subset / ties: all $na sub $ns ties $nt"
$MAPO cache --pretrained_model_name_or_path $P --dataset_name $D/manifest --out $TMP/c8.safetensors --resolution 32 --quiet 2>/dev/null
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/vb "${small[@]}" \
  --train_batch_size 1 --max_train_steps 1 --vae_encode_batch_size 1 2>/dev/null || bad "vae batch 1"
$MAPO diff $TMP/vb/cache.safetensors $TMP/c8.safetensors --tol 0 --quiet >/dev/null 2>&1 \
  && ok "--vae_encode_batch_size 1 caches bit-identical latents" || bad "vae batch changes latents"
X=tests/fixtures/pipeline/sdxl
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/vx "${small[@]}" \
  --train_batch_size 1 --max_train_steps 1 --pretrained_vae_model_name_or_path $X/vae 2>$TMP/vx.log || bad "other vae: $(cat $TMP/vx.log)"
! $MAPO diff $TMP/vx/cache.safetensors $TMP/c8.safetensors --tol 1e-6 --quiet >/dev/null 2>&1 \
  && ok "--pretrained_vae_model_name_or_path: the cache holds the other VAE's latents" || bad "other VAE not used"
expect_error "a separate VAE with a pair file" "pretrained_vae_model_name_or_path" $MAPO train "${lab[@]}" --output_dir $TMP/pv \
  --pretrained_vae_model_name_or_path $X/vae
expect_error "report_to wandb" "wandb" $MAPO train "${lab[@]}" --output_dir $TMP/wb --report_to wandb
expect_error "bad --remove_ties" "true or false" $MAPO train "${lab[@]}" --output_dir $TMP/rt --remove_ties maybe
expect_error "default split missing" "split 'validation'" $MAPO train --pretrained_model_name_or_path $P --dataset_name tests/fixtures/dataset/pickapic_hf \
  --output_dir $TMP/sp --resolution 32 --max_train_steps 1

# 6. 8-bit AdamW: interrupted and resumed == uninterrupted, bit for bit
b8=(--pretrained_model_name_or_path $M --dataset_name $TMP/p.safetensors --train_batch_size 2 --max_train_steps 4
    --checkpointing_steps 2 --use_8bit_adam --learning_rate 1e-3 --report_to none --quiet)
$MAPO train "${b8[@]}" --output_dir $TMP/a8 2>/dev/null
$MAPO train "${b8[@]}" --output_dir $TMP/r8 --stop_after_steps 2 2>/dev/null
$MAPO train "${b8[@]}" --output_dir $TMP/r8 --resume_from_checkpoint latest 2>/dev/null
$MAPO diff $TMP/r8/unet/diffusion_pytorch_model.safetensors $TMP/a8/unet/diffusion_pytorch_model.safetensors --tol 0 --quiet >/dev/null 2>&1 \
  && $MAPO diff $TMP/r8/checkpoint-4/optimizer.safetensors $TMP/a8/checkpoint-4/optimizer.safetensors --tol 0 --quiet >/dev/null 2>&1 \
  && ok "--use_8bit_adam resumes bit-identically (weights and 8-bit state)" || bad "8-bit resume"
b32=(); for a in "${b8[@]}"; do [ "$a" != --use_8bit_adam ] && b32+=("$a"); done
expect_error "resume 8-bit state with float32 AdamW" "optimizer" $MAPO train "${b32[@]}" --output_dir $TMP/r8 \
  --max_train_steps 6 --resume_from_checkpoint latest

# 8-bit AdamW trains the tiny UNet to the loss float32 AdamW reaches: mean loss of the last 30 of
# 100 steps within 2% (quantised moments perturb each update by under a percent of its size;
# measured here: equal to 6 digits, as most of this tiny UNet's tensors are under bitsandbytes'
# 4096-element threshold and keep float32 moments -- test_optim8bit checks the 8-bit path itself)
$MAPO make-pairs --model $M --out $TMP/p16.safetensors --n 16 --res 8 --seq 7 >/dev/null
cv=(--pretrained_model_name_or_path $M --dataset_name $TMP/p16.safetensors --train_batch_size 4 --max_train_steps 100
    --checkpointing_steps 0 --learning_rate 1e-3 --report_to none --quiet)
$MAPO train "${cv[@]}" --output_dir $TMP/cv32 2>/dev/null; $MAPO train "${cv[@]}" --output_dir $TMP/cv8 --use_8bit_adam 2>/dev/null
tail30() { tail -30 "$1" | sed 's/.*"loss": \([-0-9.e+]*\),.*/\1/' | awk '{ s += $1 } END { printf "%.6f", s / NR }'; }
a32=$(tail30 $TMP/cv32/train_log.jsonl); a8=$(tail30 $TMP/cv8/train_log.jsonl)
awk -v a="$a32" -v b="$a8" 'BEGIN { d = (b - a) / a; if (d < 0) d = -d; exit !(a > 0 && d < 0.02) }' \
  && ok "8-bit AdamW reaches float32 AdamW's loss: $a8 vs $a32 (last 30 of 100 steps)" || bad "8-bit loss $a8 vs $a32"

# 7. validation images are what mapo sample draws from the same model, prompts and noise
printf 'a red square\na blue circle\n' > $TMP/vp.txt
$MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest --output_dir $TMP/val "${small[@]}" \
  --train_batch_size 2 --max_train_steps 2 --seed 3 --run_validation --validation_steps 1 --validation_prompts $TMP/vp.txt \
  --validation_num_inference_steps 3 --lora_rank 2 --lora_format both 2>$TMP/val.log || bad "validation run: $(cat $TMP/val.log)"
ls $TMP/val/validation | tr '\n' ' ' | grep -q "base.png final.png step-000001.png step-000002.png" \
  && ok "validation grids: base, every step, final" || bad "validation files: $(ls $TMP/val/validation)"
gen=(--model $P --prompts_file $TMP/vp.txt --num_inference_steps 3 --guidance_scale 5 --sampler euler --seed 3 --quiet)
$MAPO sample "${gen[@]}" --lora $TMP/val/pytorch_lora_weights.safetensors --out $TMP/s.png --grid $TMP/final.png 2>/dev/null
$MAPO sample "${gen[@]}" --out $TMP/b.png --grid $TMP/base.png 2>/dev/null
cmp -s $TMP/final.png $TMP/val/validation/final.png && cmp -s $TMP/base.png $TMP/val/validation/base.png \
  && ok "final.png / base.png equal mapo sample's grids byte for byte" || bad "validation images differ from mapo sample"
$MAPO sample "${gen[@]}" --lora $TMP/val/lora_kohya.safetensors --out $TMP/k.png --grid $TMP/kgrid.png 2>/dev/null
cmp -s $TMP/kgrid.png $TMP/final.png && ok "--lora_format both: the kohya file draws the same images" || bad "kohya output"
grep -q validation $TMP/val/logs/mapo/events.out.tfevents.* && grep -q test_without_lora $TMP/val/logs/mapo/events.out.tfevents.* \
  && ok "validation grids in TensorBoard (validation, test_without_lora)" || bad "no validation images in TensorBoard"
expect_error "validation prompts file missing" "/no/such/prompts" $MAPO train --pretrained_model_name_or_path $P --dataset_name $D/manifest \
  --output_dir $TMP/v2 "${small[@]}" --max_train_steps 1 --run_validation --validation_prompts /no/such/prompts.txt
# 8. --variant fp16: <name>.fp16.safetensors files (here: the fp16 single file converted, then
#    renamed as diffusers names variants) are read, converted to float32: the same image as
#    the folder with plain names; without --variant the renamed folder has no weights
$MAPO convert --in tests/fixtures/single_file/sd15_fp16.safetensors --out $TMP/f16 --config_dir $P --quiet 2>/dev/null || bad "convert fp16"
cp -r $TMP/f16 $TMP/f16v
for f in $(cd $TMP/f16v && find . -name '*.safetensors'); do mv "$TMP/f16v/$f" "$TMP/f16v/${f%.safetensors}.fp16.safetensors"; done
sm=(--prompt "a red square" --num_inference_steps 2 --height 32 --width 32 --quiet)
$MAPO sample --model $TMP/f16 "${sm[@]}" --out $TMP/plain.png 2>/dev/null
$MAPO sample --model $TMP/f16v --variant fp16 "${sm[@]}" --out $TMP/variant.png 2>/dev/null
cmp -s $TMP/plain.png $TMP/variant.png && ok "--variant fp16 reads *.fp16.safetensors (same image)" || bad "--variant"
expect_error "variant files without --variant" "safetensors" $MAPO sample --model $TMP/f16v "${sm[@]}" --out $TMP/nv.png
finish
