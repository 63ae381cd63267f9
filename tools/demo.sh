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
