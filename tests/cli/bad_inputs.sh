#!/usr/bin/env bash
# Bad input: each gets one "mapo: error:" line naming the problem, a non-zero exit, no crash,
# and nothing already written is destroyed.
source tests/cli/common.bash
M=tests/fixtures/unet/sd15/model
W=$M/diffusion_pytorch_model.safetensors
$MAPO make-pairs --model $M --out $TMP/p.safetensors --n 4 --res 8 --seq 7 >/dev/null
tr=(--dataset_name $TMP/p.safetensors --train_batch_size 2 --max_train_steps 1 --checkpointing_steps 0 --quiet)

expect_error "no arguments to train" "--pretrained_model_name_or_path" $MAPO train
expect_error "unknown flag" "--bogus" $MAPO train --bogus 1
expect_error "flag without value" "--learning_rate needs a value" $MAPO train --learning_rate
expect_error "non-numeric value" "--learning_rate" $MAPO train --learning_rate abc
expect_error "unknown loss" "orpo" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o "${tr[@]}" --loss orpo
expect_error "unknown scheduler" "step" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o "${tr[@]}" --lr_scheduler step
expect_error "missing model folder" "/no/such/model" $MAPO train --pretrained_model_name_or_path /no/such/model --output_dir $TMP/o "${tr[@]}"
expect_error "missing dataset" "/no/such/pairs" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o --dataset_name /no/such/pairs.safetensors

# a model folder with broken weights
mk() { mkdir -p $TMP/$1; cp $M/config.json $TMP/$1/; }
mk trunc; head -c 5000 $W > $TMP/trunc/diffusion_pytorch_model.safetensors
expect_error "truncated weights" "trunc" $MAPO debug-step --model $TMP/trunc --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/x.safetensors
mk hdr; printf '\xff\xff\xff\xff\x00\x00\x00\x00{}' > $TMP/hdr/diffusion_pytorch_model.safetensors
expect_error "header length past end" "hdr" $MAPO debug-step --model $TMP/hdr --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/x.safetensors
mk empty; : > $TMP/empty/diffusion_pytorch_model.safetensors
expect_error "empty weights file" "empty" $MAPO debug-step --model $TMP/empty --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/x.safetensors
mk other; cp tests/fixtures/unet/sdxl/model/diffusion_pytorch_model.safetensors $TMP/other/
expect_error "weights of another model" "missing" $MAPO debug-step --model $TMP/other --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/x.safetensors
mkdir -p $TMP/cfg; cp $W $TMP/cfg/; sed 's/"resnet_time_scale_shift": "default"/"resnet_time_scale_shift": "scale_shift"/' $M/config.json > $TMP/cfg/config.json
expect_error "unsupported config value" "resnet_time_scale_shift" $MAPO debug-step --model $TMP/cfg --batch tests/fixtures/unet/sd15/batch.safetensors --out $TMP/x.safetensors

# pair files that do not fit
$MAPO make-pairs --model tests/fixtures/unet/sdxl/model --out $TMP/px.safetensors --n 4 --res 8 --seq 7 >/dev/null
expect_error "pair file of another model" "cross_attention_dim" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o --dataset_name $TMP/px.safetensors --quiet
$MAPO make-pairs --model $M --out $TMP/podd.safetensors --n 4 --res 7 --seq 7 >/dev/null
expect_error "latent size not divisible" "divisible" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o --dataset_name $TMP/podd.safetensors --quiet
# NaN inside a pair file: patch the first float of 'chosen' (header says where) to NaN
python_free_nan() {
  local f=$1 n; n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
  local off; off=$(head -c $((8+n)) "$f" | tail -c $n | sed 's/.*"chosen":{[^}]*"data_offsets":\[\([0-9]*\),.*/\1/')
  printf '\x00\x00\xc0\x7f' | dd of="$f" bs=1 seek=$((8+n+off)) conv=notrunc status=none
}
cp $TMP/p.safetensors $TMP/pnan.safetensors; python_free_nan $TMP/pnan.safetensors
expect_error "NaN in pair file" "non-finite" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/o --dataset_name $TMP/pnan.safetensors --quiet
# a debug batch with mismatched shapes: the sdxl batch on the sd15 model
expect_error "batch of another model" "encoder_hidden_states" $MAPO debug-step --model $M --batch tests/fixtures/unet/sdxl/batch.safetensors --out $TMP/x.safetensors
# a diverging run: the loss goes non-finite and training stops with a message, earlier work kept
$MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/div "${tr[@]}" --max_train_steps 2 --checkpointing_steps 1 >/dev/null 2>&1
expect_error_w "diverging run (NaN/Inf)" "finite" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/div --dataset_name $TMP/p.safetensors --train_batch_size 2 --max_train_steps 6 --checkpointing_steps 1 --learning_rate 1e30 --max_grad_norm 0 --adam_epsilon 1e-30 --resume_from_checkpoint latest --quiet
[ -f $TMP/div/checkpoint-1/unet/diffusion_pytorch_model.safetensors ] && [ -f $TMP/div/unet/diffusion_pytorch_model.safetensors ] \
  && ok "earlier checkpoint and model survive the failed run" || bad "earlier work lost"
# resume with different settings is refused
expect_error "resume with another seed" "seed" $MAPO train --pretrained_model_name_or_path $M --output_dir $TMP/div "${tr[@]}" --max_train_steps 3 --seed 5 --resume_from_checkpoint latest
# output that cannot be written
expect_error "unwritable output" "/proc" $MAPO train --pretrained_model_name_or_path $M --output_dir /proc/mapo_out "${tr[@]}"
# every other command: one line, non-zero exit, nothing written
P=tests/fixtures/pipeline/sd15
expect_error "unknown command" "unknown command" $MAPO frobnicate
expect_error "sample: unknown sampler" "sampler" $MAPO sample --model $P --prompt x --sampler heun --out $TMP/s.png
expect_error "sample: missing pipeline" "/no/such/pipeline" $MAPO sample --model /no/such/pipeline --prompt x --out $TMP/s.png
expect_error "sample: no prompt" "--prompt" $MAPO sample --model $P --out $TMP/s.png
expect_error "sample: zero steps" "num_inference_steps" $MAPO sample --model $P --prompt x --num_inference_steps 0 --out $TMP/s.png
expect_error "sample: height not a multiple of 8" "height" $MAPO sample --model $P --prompt x --height 33 --out $TMP/s.png
expect_error "sample: missing LoRA file" "/no/such/lora" $MAPO sample --model $P --prompt x --lora /no/such/lora.safetensors --out $TMP/s.png
expect_error "sample: LoRA of another model" "lora" $MAPO sample --model $P --prompt x --lora tests/fixtures/unet/sd15/model/diffusion_pytorch_model.safetensors --num_inference_steps 1 --out $TMP/s.png
expect_error "cache: no --out" "--out" $MAPO cache --pretrained_model_name_or_path $P --dataset_name tests/fixtures/pipeline/data/manifest
expect_error "cache: resolution not a multiple of the VAE factor" "multiple of" $MAPO cache --pretrained_model_name_or_path $P --dataset_name tests/fixtures/pipeline/data/manifest --resolution 31 --out $TMP/c.safetensors
expect_error "cache: a UNet folder instead of a pipeline" "AutoencoderKL" $MAPO cache --pretrained_model_name_or_path $M --dataset_name tests/fixtures/pipeline/data/manifest --out $TMP/c.safetensors
expect_error "init-unet: missing config" "/no/such/config.json" $MAPO init-unet --config /no/such/config.json --out $TMP/u
printf '{"_class_name": "UNet2DConditionModel", "block_out_channels": "wide"}' > $TMP/badcfg.json
expect_error "init-unet: config value of the wrong type" "block_out_channels" $MAPO init-unet --config $TMP/badcfg.json --out $TMP/u
expect_error "make-pairs: zero pairs" "--n" $MAPO make-pairs --model $M --out $TMP/q.safetensors --n 0
expect_error "diff: missing file" "/no/such/a.safetensors" $MAPO diff /no/such/a.safetensors $W
expect_error "diff: not a safetensors file" "$M/config.json" $MAPO diff $M/config.json $W
expect_error "bench: unknown loss" "orpo" $MAPO bench --loss orpo
expect_error "bench: zero pairs" "--pairs" $MAPO bench --pairs 0
expect_error "init-pixel-pipeline: 2 channels" "channels" $MAPO init-pixel-pipeline --out $TMP/pp --channels 2
expect_error "fmnist-evaluators: missing data folder" "/no/such/fmnist" $MAPO fmnist-evaluators --out $TMP/ev --data /no/such/fmnist
expect_error "report: missing study folder" "/no/such/study" $MAPO report --study /no/such/study --out $TMP/r
finish
