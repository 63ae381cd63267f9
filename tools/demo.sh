#!/usr/bin/env bash
# make demo: the study's style task in small (docs/STUDY.md has the full one). Takes the
# committed base model (models/fmnist-base: a pixel-space text-to-image model pretrained by mapo
# on Fashion-MNIST) and judges (models/fmnist-evaluators); samples the base model, builds
# preference pairs whose chosen images are real garments in a striped style the base model never
# draws (rejected: its own samples), aligns the base with MaPO and with Diffusion-DPO under
# identical data order, noise and timesteps, evaluates both on held-out noise against the base,
# and writes the report (out/demo/report/index.html). About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=out/demo
echo "== mapo demo: align a Fashion-MNIST text-to-image model to a new style (MaPO vs Diffusion-DPO)"
rm -rf "$S"
bash tools/study.sh demo "$S"
./mapo report --study "$S" --out "$S/report" --md_prefix "$S/report/" >/dev/null
echo
echo "== results (win rate over the base model on the same prompts and noise; style rate = share"
echo "   of samples the style detector calls striped; full numbers in $S/report/summary.md)"
awk '/^## style-1.00/{f=1;next} f&&/^\| base \| MaPO/{exit} f&&/^\|/' "$S/report/summary.md"
echo
echo "report: $S/report/index.html (grids before/after, training curves); logs: $S/runs/*/"
