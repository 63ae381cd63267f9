#!/usr/bin/env bash
# make demo: align a small random-initialised SD-1.5-shaped UNet on synthetic pairs with MaPO,
# Diffusion-DPO and SFT under identical conditions (same data order, noise and timesteps), and
# print how the chosen / rejected denoising errors moved. Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
D=out/demo
mkdir -p $D
./mapo init-unet --config bench/bench_unet.json --out $D/base --seed 0
./mapo make-pairs --model $D/base --out $D/pairs.safetensors --n 32 --res 16 --seq 8 --seed 1
for loss in mapo dpo sft; do
  echo "== $loss"
  ./mapo train --pretrained_model_name_or_path $D/base --dataset_name $D/pairs.safetensors \
     --output_dir $D/$loss --loss $loss --train_batch_size 4 --max_train_steps 40 \
     --learning_rate 1e-4 --lr_scheduler constant --checkpointing_steps 20 --seed 0 --quiet
  summarize() {
    awk -F'[:,]' 'NR==1{for(i=1;i<=NF;i++){if($i~/"model_losses_w"/)w=i+1; if($i~/"model_losses_l"/)l=i+1}}
      {W[NR]=$w; L[NR]=$l} END{n=NR; a=0;b=0;c=0;d=0; for(i=1;i<=5;i++){a+=W[i];b+=L[i]} for(i=n-4;i<=n;i++){c+=W[i];d+=L[i]}
      printf "  first 5 steps: err_w %.4f err_l %.4f margin %.4f | last 5 steps: err_w %.4f err_l %.4f margin %.4f\n", a/5,b/5,(b-a)/5,c/5,d/5,(d-c)/5}' "$1"
  }
  summarize $D/$loss/train_log.jsonl
done
echo "aligned UNets: $D/{mapo,dpo,sft}/unet (diffusers UNet2DConditionModel folders); logs: $D/*/train_log.jsonl"

# The whole text-to-image path on a tiny random-initialised SDXL pipeline folder (as diffusers
# saves it) and a Pick-a-Pic-style parquet file: decode + preprocess + encode once (cache), MaPO
# with LoRA, then images from the base and the aligned model, same seeds.
P=tests/fixtures/pipeline/sdxl
echo "== text-to-image: $P aligned with MaPO + LoRA on tests/fixtures/pipeline/data/parquet"
./mapo train --pretrained_model_name_or_path $P --dataset_name tests/fixtures/pipeline/data/parquet \
   --output_dir $D/sdxl_mapo_lora --lora_rank 4 --resolution 32 --train_batch_size 2 \
   --max_train_steps 20 --learning_rate 1e-3 --checkpointing_steps 0 --seed 0 --quiet
mkdir -p $D/samples
printf 'a red square\na blue circle on white\ntwo cats\nsunset; sea & sky\n' > $D/prompts.txt
./mapo sample --model $P --prompts_file $D/prompts.txt --num_inference_steps 8 --seed 1 \
   --out $D/samples/base.png --grid $D/base_grid.png --quiet
./mapo sample --model $P --lora $D/sdxl_mapo_lora --prompts_file $D/prompts.txt \
   --num_inference_steps 8 --seed 1 --out $D/samples/mapo.png --grid $D/mapo_grid.png --quiet
echo "LoRA: $D/sdxl_mapo_lora/pytorch_lora_weights.safetensors (pipeline.load_lora_weights loads it)"
echo "images: $D/base_grid.png, $D/mapo_grid.png (random-initialised model: noise-like pictures)"
