#!/usr/bin/env bash
# bench/fullsize.sh [WORK_DIR]: full-size UNets on this CPU (docs/BENCHMARKS.md, "Full size").
#  1. SD 1.5 at 512 px (4x64x64 latents), one pair, MaPO: full fine-tune and LoRA r=8, float32
#     and bf16, each one warm-up step then one timed step, the two precisions interleaved;
#  2. SDXL at 1024 px (4x128x128), one pair, LoRA r=8, --gradient_checkpointing --mixed_precision
#     bf16 through `mapo train` (its memory plan printed before the step), peak RSS measured by
#     /usr/bin/time. Needs ~11 GB of disk in WORK_DIR for the random SDXL UNet.
# Prints one line per run; the raw JSON and logs stay in WORK_DIR. MAPO=BINARY runs another build
# (default ./mapo); SKIP_SD15=1 / SKIP_SDXL=1 leave a part out.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/mapo_fullsize}
MAPO=${MAPO:-./mapo}
mkdir -p "$W"
C=tests/fixtures/configs
run() { # name, then mapo bench arguments
  local name=$1; shift
  /usr/bin/time -f "%M" -o "$W/$name.maxrss" "$MAPO" bench "$@" --pairs 1 --steps 1 --warmup 1 \
    --gemm_probe 0 >"$W/$name.json"
  python3 - "$W/$name.json" "$W/$name.maxrss" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); rss = int(open(sys.argv[2]).read().split()[-1]) / 1048576
print(f"{sys.argv[3]:28s} step {d['step_s']:.1f} s  peak RSS {rss:.1f} GiB  "
      f"activations {d['activation_peak_mb'] / 1024:.1f} GiB  trained {d['trained_params']}")
PY
}
for kind in full lora; do
  [ "${SKIP_SD15:-0}" = 1 ] && break
  extra=(); [ $kind = lora ] && extra=(--lora_rank 8)
  for mp in no bf16; do
    run "sd15_512_${kind}_$mp" --config $C/sd15_unet.json --res 64 "${extra[@]}" --mixed_precision $mp
  done
done
if [ "${SKIP_SDXL:-0}" != 1 ]; then
  [ -f "$W/sdxl/diffusion_pytorch_model.safetensors" ] || "$MAPO" init-unet --config $C/sdxl_unet.json --out "$W/sdxl" --seed 0
  [ -f "$W/sdxl_pairs.safetensors" ] || "$MAPO" make-pairs --model "$W/sdxl" --out "$W/sdxl_pairs.safetensors" --n 2 --res 128 --seq 77
  rm -rf "$W/sdxl_out"
  /usr/bin/time -f "%M %e" -o "$W/sdxl_train.time" "$MAPO" train --pretrained_model_name_or_path "$W/sdxl" \
    --dataset_name "$W/sdxl_pairs.safetensors" --output_dir "$W/sdxl_out" --train_batch_size 1 \
    --max_train_steps 1 --checkpointing_steps 0 --lora_rank 8 --gradient_checkpointing \
    --mixed_precision bf16 --report_to none 2>"$W/sdxl_train.log" >/dev/null
  read -r kb secs <"$W/sdxl_train.time"
  echo "sdxl_1024_lora_ckpt_bf16      $(grep -o 'memory plan.*' "$W/sdxl_train.log" | head -1)"
  echo "sdxl_1024_lora_ckpt_bf16      $(grep -o 'peak activations.*' "$W/sdxl_train.log" | head -1)"
  step=$(python3 -c "import json,sys; print(round(1 / json.loads(open(sys.argv[1]).readline())['pairs_per_s'], 1))" "$W/sdxl_out/train_log.jsonl" 2>/dev/null || echo "?")
  echo "sdxl_1024_lora_ckpt_bf16      measured peak RSS $(python3 -c "print(f'{$kb/1048576:.1f}')") GiB, wall $secs s (load + plan + 1 step + save), step about $step s"
fi
