#!/usr/bin/env bash
# bash bench/ab.sh ROUNDS CONFIG [mapo bench flags...] -- BINARY...
#
# Interleaves `BINARY bench --config CONFIG --steps 8 --gemm_probe 0 [flags]` over several mapo
# binaries (e.g. the previous build and this one), ROUNDS times, each round running every
# binary once in turn (the machine's speed drifts), and prints per binary the median and the
# minimum step time, the median training memory and every round's step. How the speed changes
# in docs/BENCHMARKS.md were measured, e.g.
#   git stash; make mapo; cp mapo /tmp/mapo_before; git stash pop; make mapo
#   bash bench/ab.sh 4 bench/bench_unet_dh64.json --mixed_precision bf16 -- /tmp/mapo_before ./mapo
#   bash bench/ab.sh 3 bench/bench_unet_dh64.json --mixed_precision bf16 --loss dpo -- ./mapo
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: bench/ab.sh ROUNDS CONFIG [flags...] -- BINARY..." >&2; exit 2; }
rounds=$1 cfg=$2; shift 2
flags=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do flags+=("$1"); shift; done
[ $# -gt 1 ] || { echo "bench/ab.sh: give -- and at least one binary" >&2; exit 2; }
shift
for r in $(seq "$rounds"); do
  for b in "$@"; do
    printf '%s\t' "$b"
    "$b" bench --config "$cfg" --steps 8 --gemm_probe 0 "${flags[@]}" 2>/dev/null | tail -1
  done
done | python3 -c '
import collections, json, statistics, sys
step, mem = collections.defaultdict(list), collections.defaultdict(list)
for line in sys.stdin:
    b, js = line.split("\t", 1)
    d = json.loads(js)
    step[b].append(d["step_s"]); mem[b].append(d["train_mem_mb"])
for b in step:
    print("%-24s median %.4f s  min %.4f s  training memory %.1f MiB  (%s)" % (
        b, statistics.median(step[b]), min(step[b]), statistics.median(mem[b]),
        " ".join("%.3f" % x for x in step[b])))
'
