#!/usr/bin/env bash
# bench/precision.sh [OUT_DIR] [ROUNDS]: the interleaved figures of docs/BENCHMARKS.md
# ("Mixed precision and gradient checkpointing"): mapo float32 / bf16 (with and without
# gradient checkpointing; on head dim 64 also with --recompute_norms) against PyTorch float32 and
# autocast-bf16 on both bench configs, then
# MaPO against Diffusion-DPO inside mapo at the same settings. Each compare.sh run prints its
# table; OUT_DIR keeps every program's raw JSON line. ONLY_DPO=1 runs the last part alone.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mapo_precision}; r=${2:-3}
mkdir -p "$out"
for cfg in bench/bench_unet_dh64.json bench/bench_unet.json; do
  [ "${ONLY_DPO:-0}" = 1 ] && break
  n=$(basename "$cfg" .json)
  bash bench/compare.sh "$cfg" mapo "$r" --mixed_precision bf16 --raw "$out/$n.bf16.tsv"
  bash bench/compare.sh "$cfg" mapo "$r" --mixed_precision no --raw "$out/$n.f32.tsv"
  bash bench/compare.sh "$cfg" mapo "$r" --mixed_precision bf16 --gradient_checkpointing \
    --raw "$out/$n.bf16ckpt.tsv"
  [ "$n" = bench_unet_dh64 ] || continue
  for mp in no bf16; do # mapo's --recompute_norms (the same bits, less memory)
    bash bench/compare.sh "$cfg" mapo "$r" --mixed_precision $mp --recompute_norms \
      --raw "$out/$n.$mp.recompute.tsv"
  done
done
# MaPO against Diffusion-DPO inside mapo (bf16, head dim 64), interleaved
for i in $(seq "$r"); do
  for loss in mapo dpo; do
    ./mapo bench --config bench/bench_unet_dh64.json --loss $loss --steps 6 --mixed_precision bf16 \
      --gemm_probe 0 | sed "s/^/$loss\t/" >>"$out/mapo_vs_dpo.tsv"
  done
done
python3 - "$out/mapo_vs_dpo.tsv" <<'PY'
import json, statistics as st, sys
rows = [l.split("\t", 1) for l in open(sys.argv[1]) if l.strip()]
d = {k: [json.loads(j) for kk, j in rows if kk == k] for k in ("mapo", "dpo")}
t = {k: st.median(x["step_s"] for x in v) for k, v in d.items()}
m = {k: st.median(x["train_mem_mb"] for x in v) for k, v in d.items()}
print(f"inside mapo (bf16, head dim 64): MaPO step {t['mapo']:.3f} s, DPO {t['dpo']:.3f} s "
      f"(DPO +{100 * (t['dpo'] / t['mapo'] - 1):.0f}% time); training memory MaPO {m['mapo']:.0f} MiB, "
      f"DPO {m['dpo']:.0f} MiB (+{100 * (m['dpo'] / m['mapo'] - 1):.0f}%)")
PY
