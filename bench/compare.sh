#!/usr/bin/env bash
# bench/compare.sh [CONFIG] [LOSS] [ROUNDS]: alternates `mapo bench` and tools/bench_torch.py on
# the same config and batch, ROUNDS times each (the machine's speed drifts, so interleaving
# keeps the comparison fair), and prints the median step time, pairs/s and peak RSS of both.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:-bench/bench_unet.json}; loss=${2:-mapo}; rounds=${3:-3}
m=(); t=(); mr=0; tr=0
for i in $(seq "$rounds"); do
  a=$(./mapo bench --config "$cfg" --loss "$loss" --steps 6)
  b=$(python3 tools/bench_torch.py --config "$cfg" --loss "$loss" --steps 6 2>/dev/null | tail -1)
  m+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['step_s'])" "$a")")
  t+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['step_s'])" "$b")")
  mr=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['peak_rss_mb'])" "$a")
  tr=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['peak_rss_mb'])" "$b")
done
python3 - "$cfg" "$loss" "$mr" "$tr" "${m[*]}" "${t[*]}" <<'PY'
import sys, statistics as st
cfg, loss, mr, tr, m, t = sys.argv[1:]
m = [float(x) for x in m.split()]; t = [float(x) for x in t.split()]
mm, tm = st.median(m), st.median(t)
print(f"{cfg} {loss}: mapo step {mm:.3f} s ({2/mm:.2f} pairs/s) | pytorch step {tm:.3f} s "
      f"({2/tm:.2f} pairs/s) | speed ratio {tm/mm:.2f}x | peak RSS mapo {float(mr):.0f} MiB, "
      f"pytorch {float(tr):.0f} MiB ({float(mr)/float(tr):.2f}x) | runs mapo {m} pytorch {t}")
PY
