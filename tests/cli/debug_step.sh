#!/usr/bin/env bash
# mapo debug-step on the diffusers fixtures, compared with `mapo diff` at 1e-4 relative.
source tests/cli/common.bash
for cs in sd15 sdxl mixed; do
  d=tests/fixtures/unet/$cs
  for loss in mapo dpo sft; do
    ref=(); [ $loss = dpo ] && ref=(--ref $d/ref)
    if ! $MAPO debug-step --model $d/model --batch $d/batch.safetensors --out $TMP/o.safetensors --loss $loss "${ref[@]}" >/dev/null; then
      bad "debug-step $cs $loss failed"; continue; fi
    for pre in grad. model_pred errors loss; do
      # Diffusion-DPO at beta 5000: the gradients and the loss move by beta/2 x the float32
      # differences of the per-sample errors (~1e-7): up to ~3e-4 relative (see
      # tests/test_unet_parity.c, which checks the loss against exactly that explanation)
      tol=1e-4; [ $loss = dpo ] && { [ $pre = grad. ] || [ $pre = loss ]; } && tol=5e-4
      if out=$($MAPO diff $TMP/o.safetensors $d/expect_$loss.safetensors --prefix $pre --tol $tol --quiet 2>&1); then
        ok "$cs $loss $pre: ${out##*$'\n'}"
      else bad "$cs $loss $pre: $out"; fi
    done
  done
done
finish
