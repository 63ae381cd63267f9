#!/usr/bin/env python3
# Command (from the repository root):
#     ONEDNN_VERBOSE=1 ./mapo bench --config bench/bench_unet_dh64.json --steps 2 --warmup 1 \
#         --mixed_precision bf16 --gemm_probe 0 2>/dev/null | python3 tools/onednn_profile.py --steps 3
#
# Sums oneDNN's verbose execution lines (onednn_verbose,exec,...) by primitive kind and
# implementation over the last STEPS-1 steps of the run (the first step builds the primitives),
# and prints milliseconds and calls per step. Verbose timing inflates small calls.
import argparse
import collections
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, required=True, help="steps the run made (warm-up included)")
a = ap.parse_args()
lines = [l for l in sys.stdin.read().splitlines() if l.startswith("onednn_verbose,exec")]
per = len(lines) // a.steps
timed = lines[-per * (a.steps - 1):] if a.steps > 1 else lines
agg = collections.defaultdict(lambda: [0, 0.0])
for l in timed:
    f = l.split(",")
    k = (f[3], f[4], f[5])  # primitive kind, implementation, propagation kind
    agg[k][0] += 1
    agg[k][1] += float(f[-1])
n = max(a.steps - 1, 1)
print(f"total {sum(v[1] for v in agg.values()) / n:.1f} ms per step")
for k, v in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"{v[1] / n:8.1f} ms {v[0] // n:6d} calls  {' '.join(k)}")
