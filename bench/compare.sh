#!/usr/bin/env bash
# bash bench/compare.sh [CONFIG] [LOSS] [ROUNDS] [flags]
#
# Interleaves `./mapo bench` and tools/bench_torch.py on the same config and batch, ROUNDS times
# (the machine's speed drifts, so each round runs every program once, in turn: mapo, then the
# PyTorch run(s)), and prints the medians of step time, pairs/s, training memory (peak RSS minus
# the RSS after start-up / after importing torch + diffusers), peak RSS, the speed and memory
# ratios of mapo against each PyTorch run, and mapo's utilisation (gflop_per_s over its
# gemm_ceiling_gflops, when its JSON has a positive one). The last line is one JSON object with
# all the medians. Keys a program does not print are absent ("n/a", null in the JSON).
#
# flags, passed to both sides:
#   --mixed_precision no|bf16|fp16  mapo's precision; with bf16 PyTorch runs twice per round, at
#                                   float32 and under bf16 autocast (--no_torch_f32: bf16 only);
#                                   with fp16 PyTorch runs at float32 only
#   --gradient_checkpointing
#   --recompute_norms               mapo only (PyTorch has no counterpart)
#   --lora_rank R  --res N  --pairs N  --seq N  --steps N (6)  --warmup N (2)
#   --threads N                     OMP_NUM_THREADS for mapo, --threads for PyTorch (2)
# flags of this script:
#   --no_torch_f32                  with bf16: no float32 PyTorch run
#   --torch_precisions LIST         the PyTorch runs, comma-separated from no,bf16 (overrides the above)
#   --no_mapo                       PyTorch only (e.g. float32 against bf16 autocast)
#   --raw FILE                      also write every program's JSON line, "label<TAB>json", to FILE
# environment: MAPO (the binary, ./mapo), PYTHON (python3)
#
# e.g.  bash bench/compare.sh bench/bench_unet_dh64.json mapo 3 --mixed_precision bf16 --gradient_checkpointing
#       bash bench/compare.sh bench/bench_unet_dh64.json mapo 3 --no_mapo --torch_precisions no,bf16
set -euo pipefail
cd "$(dirname "$0")/.."

pos=()
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ] && [ ${#pos[@]} -lt 3 ]; do pos+=("$1"); shift; done
cfg=${pos[0]:-bench/bench_unet.json}; loss=${pos[1]:-mapo}; rounds=${pos[2]:-3}

common=(); mapo_only=(); mp=""; steps=6; warmup=2; threads=2; torch_f32=1; torch_list=""; run_mapo=1; raw=""
need() { [ $# -ge 2 ] || { echo "compare.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --mixed_precision) need "$@"; mp=$2; shift 2 ;;
    --gradient_checkpointing) common+=("$1"); shift ;;
    --recompute_norms) mapo_only+=("$1"); shift ;;
    --lora_rank|--res|--pairs|--seq) need "$@"; common+=("$1" "$2"); shift 2 ;;
    --steps) need "$@"; steps=$2; shift 2 ;;
    --warmup) need "$@"; warmup=$2; shift 2 ;;
    --threads) need "$@"; threads=$2; shift 2 ;;
    --no_torch_f32) torch_f32=0; shift ;;
    --torch_precisions) need "$@"; torch_list=$2; shift 2 ;;
    --no_mapo) run_mapo=0; shift ;;
    --raw) need "$@"; raw=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$mp" in ""|no|bf16|fp16) ;; *) echo "compare.sh: --mixed_precision no|bf16|fp16" >&2; exit 2 ;; esac
if [ -z "$torch_list" ]; then
  if [ "$mp" = bf16 ]; then
    if [ $torch_f32 = 1 ]; then torch_list=no,bf16; else torch_list=bf16; fi
  else
    torch_list=no
  fi
fi
IFS=, read -r -a tps <<<"$torch_list"
for p in "${tps[@]}"; do
  case "$p" in no|bf16) ;; *) echo "compare.sh: --torch_precisions takes no,bf16" >&2; exit 2 ;; esac
done
common+=(--steps "$steps" --warmup "$warmup")
mapo_args=(bench --config "$cfg" --loss "$loss" "${common[@]}" "${mapo_only[@]}")
[ -n "$mp" ] && mapo_args+=(--mixed_precision "$mp")

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
out=$tmp/raw.tsv; : >"$out"
run() {  # label command...
  local label=$1; shift
  if ! "$@" >"$tmp/out" 2>"$tmp/err"; then
    echo "compare.sh: $label failed: $*" >&2; grep -v "kernels-community" "$tmp/err" >&2 || true; exit 1
  fi
  local line; line=$(grep '^{' "$tmp/out" | tail -1 || true)
  [ -n "$line" ] || { echo "compare.sh: $label printed no JSON line: $*" >&2; cat "$tmp/out" "$tmp/err" >&2; exit 1; }
  printf '%s\t%s\n' "$label" "$line" >>"$out"
}
for i in $(seq "$rounds"); do
  if [ $run_mapo = 1 ]; then
    run mapo env OMP_NUM_THREADS="$threads" "${MAPO:-./mapo}" "${mapo_args[@]}"
  fi
  for p in "${tps[@]}"; do
    label=torch_f32; [ "$p" = bf16 ] && label=torch_bf16
    run "$label" "${PYTHON:-python3}" tools/bench_torch.py --config "$cfg" --loss "$loss" --threads "$threads" \
        --mixed_precision "$p" "${common[@]}"
  done
  echo "round $i/$rounds done" >&2
done
[ -n "$raw" ] && cp "$out" "$raw"

python3 - "$out" "$cfg" "$loss" "$rounds" "${mp:-default}" "${common[*]}" <<'PY'
import json, statistics as st, sys
path, cfg, loss, rounds, mp, flags = sys.argv[1:]
runs = {}
for line in open(path):
    label, js = line.rstrip("\n").split("\t", 1)
    runs.setdefault(label, []).append(json.loads(js))

def num(d, k):
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

def train_mem(d):
    v = num(d, "train_mem_mb")
    if v is None and num(d, "peak_rss_mb") is not None and num(d, "rss_base_mb") is not None:
        v = num(d, "peak_rss_mb") - num(d, "rss_base_mb")
    return v

def util(d):
    g, c = num(d, "gflop_per_s"), num(d, "gemm_ceiling_gflops")
    return g / c if g is not None and c is not None and c > 0 else None

def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None

summary = {"config": cfg, "loss": loss, "rounds": int(rounds), "mixed_precision": mp, "flags": flags,
           "programs": {}, "ratios": {}}
for label, ds in runs.items():
    s = {"runs": len(ds)}
    for k in ("step_s", "pairs_per_s", "peak_rss_mb", "rss_base_mb", "gflop_per_s",
              "gemm_ceiling_gflops", "activation_peak_mb"):
        s[k] = med(num(d, k) for d in ds)
    s["train_mem_mb"] = med(train_mem(d) for d in ds)
    s["utilisation"] = med(util(d) for d in ds)
    for k in ("precision", "gradient_checkpointing", "pairs", "res", "threads", "trained_params"):
        s[k] = ds[0].get(k)
    s["step_s_rounds"] = [num(d, "step_s") for d in ds]
    summary["programs"][label] = s

def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None

P = summary["programs"]
if "mapo" in P:
    for label in P:
        if label == "mapo":
            continue
        per_round = [ratio(num(m, "pairs_per_s"), num(t, "pairs_per_s"))
                     for m, t in zip(runs["mapo"], runs[label])]
        summary["ratios"]["mapo_vs_" + label] = {
            "speed": ratio(P["mapo"]["pairs_per_s"], P[label]["pairs_per_s"]),
            "speed_median_of_rounds": med(per_round),
            "train_mem": ratio(P["mapo"]["train_mem_mb"], P[label]["train_mem_mb"]),
            "peak_rss": ratio(P["mapo"]["peak_rss_mb"], P[label]["peak_rss_mb"])}
if "torch_f32" in P and "torch_bf16" in P:
    summary["ratios"]["torch_bf16_vs_torch_f32"] = {
        "speed": ratio(P["torch_bf16"]["pairs_per_s"], P["torch_f32"]["pairs_per_s"]),
        "train_mem": ratio(P["torch_bf16"]["train_mem_mb"], P["torch_f32"]["train_mem_mb"]),
        "peak_rss": ratio(P["torch_bf16"]["peak_rss_mb"], P["torch_f32"]["peak_rss_mb"])}

def f(v, fmt, unit=""):
    return "n/a" if v is None else format(v, fmt) + unit

print(f"{cfg} {loss}, medians of {rounds} interleaved round(s); flags: {flags}"
      + ("" if mp == "default" else f" --mixed_precision {mp}"))
print(f"  {'program':<11} {'prec':>5} {'ckpt':>4} {'step s':>8} {'pairs/s':>8} {'train MiB':>9} "
      f"{'peak MiB':>9} {'base MiB':>9} {'GFLOP/s':>8} {'ceiling':>8} {'util':>6}")
for label, s in P.items():
    ck = s["gradient_checkpointing"]
    print(f"  {label:<11} {str(s['precision'] or 'n/a'):>5} {'n/a' if ck is None else ck:>4} "
          f"{f(s['step_s'], '.3f'):>8} {f(s['pairs_per_s'], '.2f'):>8} {f(s['train_mem_mb'], '.0f'):>9} "
          f"{f(s['peak_rss_mb'], '.0f'):>9} {f(s['rss_base_mb'], '.0f'):>9} {f(s['gflop_per_s'], '.1f'):>8} "
          f"{f(s['gemm_ceiling_gflops'], '.0f'):>8} {f(s['utilisation'], '.1%'):>6}")
    print(f"  {'':<11} step_s per round: {' '.join(f(x, '.3f') for x in s['step_s_rounds'])}")
for name, r in summary["ratios"].items():
    extra = (f" (median of per-round ratios {f(r['speed_median_of_rounds'], '.2f', 'x')})"
             if "speed_median_of_rounds" in r else "")
    print(f"  {name}: speed {f(r['speed'], '.2f', 'x')}{extra}, training memory "
          f"{f(r['train_mem'], '.2f', 'x')}, peak RSS {f(r['peak_rss'], '.2f', 'x')}")
print(json.dumps(summary))
PY
