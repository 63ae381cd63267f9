#!/usr/bin/env bash
# Mixed precision and gradient checkpointing through the CLI (docs/PRECISION.md):
#  - --mixed_precision no is the float32 run bit for bit; fp16 says so once and runs as bf16;
#  - --gradient_checkpointing and --recompute_norms give bit-identical gradients (debug-step on
#    the three parity models, MaPO and Diffusion-DPO) and bit-identical trained weights (mapo
#    train), in float32 and in bf16, and the memory plan shows the smaller activation figure;
#  - a bf16 training run resumes bit-identically after a stop;
#  - mapo sample and mapo bench run in bf16;
#  - under LoRA in bf16 the frozen UNet's weights are held in bf16, and such a run resumes
#    bit-identically.
source tests/cli/common.bash
M=tests/fixtures/unet/sd15/model
P=tests/fixtures/pipeline/sd15
$MAPO make-pairs --model $M --out $TMP/p.safetensors --n 6 --res 8 --seq 7 >/dev/null || bad "make-pairs"
tr=(--pretrained_model_name_or_path $M --dataset_name $TMP/p.safetensors --train_batch_size 2
    --learning_rate 1e-3 --seed 3 --max_train_steps 3 --checkpointing_steps 0 --quiet)
W=unet/diffusion_pytorch_model.safetensors
same() { cmp -s "$1" "$2"; }

# ---- gradients with and without checkpointing, bit for bit
f0=$fails
for c in sd15 sdxl mixed; do
  F=tests/fixtures/unet/$c
  for mp in no bf16; do
    for loss in mapo dpo; do
      $MAPO debug-step --model $F/model --ref $F/ref --loss $loss --batch $F/batch.safetensors \
        --mixed_precision $mp --out $TMP/a.st >/dev/null 2>&1 || bad "debug-step $c $mp $loss"
      $MAPO debug-step --model $F/model --ref $F/ref --loss $loss --batch $F/batch.safetensors \
        --mixed_precision $mp --gradient_checkpointing --out $TMP/b.st >/dev/null 2>&1 \
        || bad "debug-step $c $mp $loss --gradient_checkpointing"
      same $TMP/a.st $TMP/b.st || bad "$c $mp $loss: gradients differ with --gradient_checkpointing"
      $MAPO debug-step --model $F/model --ref $F/ref --loss $loss --batch $F/batch.safetensors \
        --mixed_precision $mp --recompute_norms --out $TMP/b.st >/dev/null 2>&1 \
        || bad "debug-step $c $mp $loss --recompute_norms"
      same $TMP/a.st $TMP/b.st || bad "$c $mp $loss: gradients differ with --recompute_norms"
    done
  done
done
[ $fails -eq $f0 ] && ok "checkpointed and --recompute_norms gradients bit-identical (3 models x float32 / bf16 x MaPO / Diffusion-DPO)"

# ---- training: no = default; checkpointing identical; fp16 = bf16 with a note
$MAPO train "${tr[@]}" --output_dir $TMP/f32 2>/dev/null || bad "float32 run"
$MAPO train "${tr[@]}" --output_dir $TMP/no --mixed_precision no 2>/dev/null || bad "--mixed_precision no"
same $TMP/f32/$W $TMP/no/$W && ok "--mixed_precision no is the float32 run bit for bit" || bad "no != default"
$MAPO train "${tr[@]}" --output_dir $TMP/ck --gradient_checkpointing 2>$TMP/ck.log || bad "checkpointed run"
same $TMP/f32/$W $TMP/ck/$W && ok "--gradient_checkpointing trains bit-identically (float32)" \
  || bad "checkpointed training differs"
$MAPO train "${tr[@]}" --output_dir $TMP/bf --mixed_precision bf16 2>/dev/null || bad "bf16 run"
$MAPO train "${tr[@]}" --output_dir $TMP/bfck --mixed_precision bf16 --gradient_checkpointing 2>/dev/null \
  || bad "bf16 checkpointed run"
same $TMP/bf/$W $TMP/bfck/$W && ok "--gradient_checkpointing trains bit-identically (bf16)" \
  || bad "bf16 checkpointed training differs"
for mp in no bf16; do
  ref=$TMP/f32; [ $mp = bf16 ] && ref=$TMP/bf
  $MAPO train "${tr[@]}" --output_dir $TMP/rn_$mp --mixed_precision $mp --recompute_norms \
    2>/dev/null || bad "--recompute_norms run ($mp)"
  same $ref/$W $TMP/rn_$mp/$W && ok "--recompute_norms trains bit-identically ($mp)" \
    || bad "--recompute_norms training differs ($mp)"
  # with LoRA (frozen weights: no input kept for them) and inside checkpointed segments
  L=pytorch_lora_weights.safetensors
  $MAPO train "${tr[@]}" --output_dir $TMP/lo_$mp --mixed_precision $mp --lora_rank 4 \
    2>/dev/null || bad "LoRA run ($mp)"
  $MAPO train "${tr[@]}" --output_dir $TMP/lorn_$mp --mixed_precision $mp --lora_rank 4 \
    --recompute_norms --gradient_checkpointing 2>/dev/null || bad "LoRA --recompute_norms run ($mp)"
  [ -s $TMP/lo_$mp/$L ] && same $TMP/lo_$mp/$L $TMP/lorn_$mp/$L \
    && ok "--recompute_norms with LoRA and checkpointing trains bit-identically ($mp)" \
    || bad "--recompute_norms with LoRA and checkpointing differs ($mp)"
done
same $TMP/bf/$W $TMP/f32/$W && bad "bf16 run equals the float32 run: bf16 not in effect"
$MAPO diff $TMP/bf/$W $TMP/f32/$W --tol 0.05 --quiet >/dev/null && ok "bf16 weights within 5% of float32's" \
  || bad "bf16 weights far from float32: $($MAPO diff $TMP/bf/$W $TMP/f32/$W --tol 0.05 --quiet)"
$MAPO train "${tr[@]}" --output_dir $TMP/fp16 --mixed_precision fp16 2>$TMP/fp16.log || bad "fp16 run"
[ "$(grep -c 'note: --mixed_precision fp16' $TMP/fp16.log)" -eq 1 ] && same $TMP/fp16/$W $TMP/bf/$W \
  && ok "fp16 notes once and runs as bf16" || bad "fp16: $(cat $TMP/fp16.log)"

# ---- memory plan: checkpointing keeps fewer activations
# (32x32 latents, so the activations are several MiB and the plan's whole-MiB figures differ)
act() { sed -n 's/.*activations \([0-9]*\) MiB.*/\1/p' "$1" | head -1; }
$MAPO make-pairs --model $M --out $TMP/p32.safetensors --n 2 --res 32 --seq 7 >/dev/null || bad "make-pairs 32"
pl=(--pretrained_model_name_or_path $M --dataset_name $TMP/p32.safetensors --train_batch_size 2
    --max_train_steps 1 --checkpointing_steps 0 --quiet)
$MAPO train "${pl[@]}" --output_dir $TMP/plan 2>$TMP/plan.log >/dev/null || bad "plan run"
$MAPO train "${pl[@]}" --output_dir $TMP/plan_ck --gradient_checkpointing 2>$TMP/plan_ck.log >/dev/null \
  || bad "checkpointed plan run"
grep -q "activations" $TMP/plan.log && grep -q "activations" $TMP/plan_ck.log || bad "no memory plan line"
a=$(act $TMP/plan.log); b=$(act $TMP/plan_ck.log)
[ -n "$a" ] && [ -n "$b" ] && [ "$b" -lt "$a" ] && ok "memory plan: activations $a MiB -> $b MiB with checkpointing" \
  || bad "memory plan activations: $a vs $b MiB"
$MAPO train "${pl[@]}" --output_dir $TMP/plan_rn --recompute_norms 2>$TMP/plan_rn.log >/dev/null \
  || bad "--recompute_norms plan run"
r=$(act $TMP/plan_rn.log)
[ -n "$r" ] && [ "$r" -lt "$a" ] && ok "memory plan: activations $a MiB -> $r MiB with --recompute_norms" \
  || bad "memory plan activations with --recompute_norms: $a vs $r MiB"

# ---- bf16 resume: stop after 1 step, resume to 3 = uninterrupted
$MAPO train "${tr[@]}" --output_dir $TMP/rs --mixed_precision bf16 --checkpointing_steps 1 \
  --stop_after_steps 1 2>/dev/null
$MAPO train "${tr[@]}" --output_dir $TMP/rs --mixed_precision bf16 --checkpointing_steps 1 \
  --resume_from_checkpoint latest 2>/dev/null || bad "bf16 resume"
same $TMP/rs/$W $TMP/bf/$W && ok "a bf16 run resumes bit-identically" || bad "bf16 resume not exact"

# ---- sample and bench in bf16
$MAPO sample --model $P --prompt "a red square" --num_inference_steps 2 --mixed_precision bf16 \
  --out $TMP/s.png --quiet 2>/dev/null && [ -s $TMP/s.png ] && ok "mapo sample --mixed_precision bf16" \
  || bad "sample bf16"
$MAPO bench --config $M/config.json --res 8 --seq 7 --steps 1 --warmup 0 --mixed_precision bf16 \
  --gradient_checkpointing --recompute_norms --gemm_probe 0 >$TMP/bench.json 2>/dev/null \
  && grep -q '"precision":"bf16","gradient_checkpointing":1,"recompute_norms":1' $TMP/bench.json \
  && ok "mapo bench --mixed_precision bf16 --gradient_checkpointing --recompute_norms" \
  || bad "bench: $(cat $TMP/bench.json)"

# ---- the frozen UNet under LoRA held in bf16 in a bf16 run (PARAMS_FROZEN_BF16; test_lora holds
# the bits to the float32-held base's): half the weight bytes in bench, and a bf16 LoRA run
# resumes bit-identically (the base reloaded in bf16)
wb() { sed -n 's/.*"weight_bytes":\([0-9]*\).*/\1/p' "$1"; }
for mp in no bf16; do
  $MAPO bench --config $M/config.json --res 8 --seq 7 --steps 1 --warmup 0 --lora_rank 4 \
    --mixed_precision $mp --gemm_probe 0 >$TMP/lb_$mp.json 2>/dev/null || bad "bench LoRA $mp"
done
a=$(wb $TMP/lb_no.json); b=$(wb $TMP/lb_bf16.json)
[ -n "$a" ] && [ -n "$b" ] && [ "$b" -lt "$a" ] && [ "$((2 * b))" -gt "$a" ] \
  && ok "LoRA bf16: the frozen weights in bf16 ($a -> $b bytes; norms and biases float32)" \
  || bad "LoRA weight bytes: float32 $a, bf16 $b"
lr=(--lora_rank 4 --mixed_precision bf16 --checkpointing_steps 1)
L=pytorch_lora_weights.safetensors
$MAPO train "${tr[@]}" "${lr[@]}" --output_dir $TMP/lo 2>/dev/null || bad "bf16 LoRA run"
$MAPO train "${tr[@]}" "${lr[@]}" --output_dir $TMP/lr --stop_after_steps 1 2>/dev/null
$MAPO train "${tr[@]}" "${lr[@]}" --output_dir $TMP/lr --resume_from_checkpoint latest 2>/dev/null \
  || bad "bf16 LoRA resume"
[ -s $TMP/lo/$L ] && same $TMP/lr/$L $TMP/lo/$L && ok "a bf16 LoRA run resumes bit-identically" \
  || bad "bf16 LoRA resume not exact"

expect_error "unknown --mixed_precision" "--mixed_precision must be no, bf16 or fp16" \
  $MAPO train "${tr[@]}" --output_dir $TMP/x --mixed_precision fp8
expect_error "unknown --mixed_precision (bench)" "--mixed_precision must be" \
  $MAPO bench --config $M/config.json --mixed_precision half
finish
