#!/usr/bin/env bash
# The Fashion-MNIST reference-mismatch study (docs/STUDY.md): MaPO, Diffusion-DPO and SFT on
# the style (4 strengths), safety and general tasks, under identical data order, noise and
# timesteps; hyper-parameters chosen on validation noise, then 3 seeds on test noise.
#
#   bash tools/study.sh [full|demo] [OUT]      (make study = full, make demo = demo)
#
# Every step writes its result atomically and is skipped when the result exists, so an
# interrupted study resumes where it stopped. Two jobs run at a time, one thread each (for a
# model this small, two single-threaded processes beat one process on two threads).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}
MAPO=${MAPO:-./mapo}
BASE=${BASE:-models/fmnist-base}
EV=${EV:-models/fmnist-evaluators}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

case "$MODE" in
full)
  S=${2:-out/study}
  TASKS="style-0.25 style-0.50 style-0.75 style-1.00 safety general"
  METHODS="mapo dpo sft"
  SEEDS="0 1 2"
  POOL_PER_CLASS=60       # base samples the training pairs are built from (600)
  HELD_PER_CLASS=10       # base samples of the held-out pairs (100)
  VAL_PER_CLASS=5         # validation samples per run (50)
  TEST_PER_CLASS=10       # test samples per run (100)
  STEPS=60; BATCH=8       # 480 pair visits a run
  GRID_LR=${GRID_LR:-"4e-5 2e-4"}               # the grids can be set from the environment
  GRID_BETA_MAPO=${GRID_BETA_MAPO:-"0.01 0.1"}
  GRID_BETA_DPO=${GRID_BETA_DPO:-"500 5000"}
  ;;
demo)
  S=${2:-out/demo}
  TASKS="style-1.00"
  METHODS="mapo dpo"
  SEEDS="0"
  POOL_PER_CLASS=30; HELD_PER_CLASS=5; VAL_PER_CLASS=0; TEST_PER_CLASS=10
  STEPS=100; BATCH=8
  GRID_LR="2e-4"; GRID_BETA_MAPO="0.01"; GRID_BETA_DPO="5000"   # the study's choices
  ;;
smoke) # the whole flow at toy sizes (tests/cli/study.sh)
  S=${2:-out/study-smoke}
  TASKS="style-1.00"
  METHODS="mapo dpo sft"
  SEEDS="0 1"
  POOL_PER_CLASS=2; HELD_PER_CLASS=2; VAL_PER_CLASS=1; TEST_PER_CLASS=1
  STEPS=2; BATCH=2
  GRID_LR="1e-4"; GRID_BETA_MAPO="0.1 1"; GRID_BETA_DPO="5000"
  ;;
*) echo "usage: tools/study.sh [full|demo|smoke] [OUT]" >&2; exit 2 ;;
esac
SAMPLE_STEPS=${SAMPLE_STEPS:-10}; GUIDANCE=3; FD_IMAGES=${FD_IMAGES:-2000}
NOISE_POOL=1000; NOISE_HELD=2000; NOISE_VAL=3000; NOISE_TEST=4000
mkdir -p "$S/tasks" "$S/runs" "$S/logs"
T0=${T0:-$(date +%s)}
say() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }

# ------------------------------------------------------------------ one training run
# run TASK METHOD SEED BETA LR SPLIT SELECTED
run() {
  local task=$1 method=$2 seed=$3 beta=$4 lr=$5 split=$6 sel=$7
  local name="$task-$method-b$beta-lr$lr-s$seed-$split" d="$S/runs/$task-$method-b$beta-lr$lr-s$seed-$split"
  [ -s "$d/result.json" ] && return 0
  local kind=${task%%-*} per noise
  if [ "$split" = val ]; then per=$VAL_PER_CLASS; noise=$NOISE_VAL; else per=$TEST_PER_CLASS; noise=$NOISE_TEST; fi
  local bflag=()
  case $method in mapo) bflag=(--beta_mapo "$beta") ;; dpo) bflag=(--beta_dpo "$beta") ;; esac
  local pflag=(--pairs "$S/tasks/$task/heldout.safetensors")
  [ "$split" = val ] && pflag=()
  rm -rf "$d"; mkdir -p "$d"
  local t0=$(date +%s.%N)
  "$MAPO" train --pretrained_model_name_or_path "$BASE" --dataset_name "$S/tasks/$task/train.safetensors" \
      --output_dir "$d" --loss "$method" "${bflag[@]}" --learning_rate "$lr" --lr_scheduler constant \
      --train_batch_size $BATCH --max_train_steps $STEPS --checkpointing_steps 0 --seed "$seed" \
      --no_memory_check --quiet > "$d/train.log" 2>&1 || { echo "run $name: training failed (see $d/train.log)" >&2; return 1; }
  local t1=$(date +%s.%N)
  "$MAPO" eval --model "$BASE" --unet "$d/unet" --evaluators "$EV" --out "$d/eval" --task "$kind" \
      --against "$S/base-$split/scores.safetensors" "${pflag[@]}" \
      --per_class "$per" --noise_seed $noise --num_inference_steps $SAMPLE_STEPS \
      --guidance_scale $GUIDANCE --fd_images $FD_IMAGES --quiet > "$d/eval.log" 2>&1 || { echo "run $name: eval failed (see $d/eval.log)" >&2; return 1; }
  local rss; rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' "$d/train.log" | tail -1)
  local sps; sps=$(awk -v a="$t0" -v b="$t1" -v n=$STEPS 'BEGIN{printf "%.4f", (b-a)/n}')
  cp "$d/eval/grid.png" "$d/grid.png"
  printf '{"task": "%s", "method": "%s", "seed": %s, "beta": %s, "lr": %s, "selected": %s, "split": "%s",\n "eval": %s,\n "train": {"steps": %s, "batch": %s, "sec_per_step": %s, "peak_rss_mb": %s, "log": "train_log.jsonl"},\n "grid": "grid.png"}\n' \
      "$task" "$method" "$seed" "${beta:-null}" "$lr" "$sel" "$split" "$(cat "$d/eval/eval.json")" \
      "$STEPS" "$BATCH" "$sps" "${rss:-null}" > "$d/result.json.tmp"
  mv "$d/result.json.tmp" "$d/result.json"
  say "done $name"
}
if [ "${STUDY_RUN:-}" = 1 ]; then run "${@:3}"; exit $?; fi
export -f run say
export S BASE EV MAPO FD_IMAGES STEPS BATCH VAL_PER_CLASS TEST_PER_CLASS NOISE_VAL NOISE_TEST SAMPLE_STEPS GUIDANCE T0

# ------------------------------------------------------------------ base samples and tasks
base_eval() { # NAME PER_CLASS NOISE
  [ -s "$S/$1/scores.safetensors" ] && [ -s "$S/$1/eval.json" ] && return 0
  "$MAPO" eval --model "$BASE" --evaluators "$EV" --out "$S/$1" --per_class "$2" --noise_seed "$3" \
      --num_inference_steps $SAMPLE_STEPS --guidance_scale $GUIDANCE --fd_images $FD_IMAGES --quiet \
      > "$S/logs/$1.log" 2>&1
  say "base samples: $1 ($(( $2 * 10 )) images)"
}
say "study '$MODE' into $S: tasks [$TASKS], methods [$METHODS], seeds [$SEEDS]"
base_eval pool "$POOL_PER_CLASS" $NOISE_POOL &
base_eval heldpool "$HELD_PER_CLASS" $NOISE_HELD &
wait
base_eval base-test "$TEST_PER_CLASS" $NOISE_TEST &
[ "$VAL_PER_CLASS" -gt 0 ] && base_eval base-val "$VAL_PER_CLASS" $NOISE_VAL &
wait
for task in $TASKS; do
  d="$S/tasks/$task"; mkdir -p "$d"
  kind=${task%%-*}; st=()
  [ "$kind" = style ] && st=(--strength "${task#style-}")
  [ -s "$d/train.safetensors" ] || "$MAPO" fmnist-pairs --task "$kind" "${st[@]}" --pool "$S/pool/scores.safetensors" \
      --pipeline "$BASE" --evaluators "$EV" --split train --out "$d/train.safetensors" --quiet
  [ -s "$d/heldout.safetensors" ] || "$MAPO" fmnist-pairs --task "$kind" "${st[@]}" --pool "$S/heldpool/scores.safetensors" \
      --pipeline "$BASE" --evaluators "$EV" --split t10k --seed 1 --out "$d/heldout.safetensors" --quiet
  say "task $task: $(cat "$d/train.safetensors.json")"
done

# ------------------------------------------------------------------ validation grid (seed 0)
jobs_val=()
for task in $TASKS; do for m in $METHODS; do for lr in $GRID_LR; do
  case $m in mapo) betas=$GRID_BETA_MAPO ;; dpo) betas=$GRID_BETA_DPO ;; *) betas=0 ;; esac
  for b in $betas; do jobs_val+=("$task $m 0 $b $lr val false"); done
done; done; done
if [ "$VAL_PER_CLASS" -gt 0 ]; then
  say "validation grid: ${#jobs_val[@]} runs"
  printf '%s\n' "${jobs_val[@]}" | STUDY_RUN=1 xargs -P "$JOBS" -L 1 bash tools/study.sh "$MODE" "$S"
fi

# the chosen (beta, lr) of a task and method: the best validation score, the mean of the win
# rate over the base by the task's judge and by the class judge (aligned to the task while
# keeping prompt fidelity: a model that only draws stripes wins the style judge alone)
choose() { # TASK METHOD -> "beta lr"
  local best="" bw=-1
  for f in "$S"/runs/"$1-$2"-b*-s0-val/result.json; do
    [ -s "$f" ] || continue
    local w; w=$(awk '/"win_rate"/{f=1} f&&/"rate"/{gsub(/[",]/,"");a=$2; f=0}
                      /"win_rate_class"/{g=1} g&&/"rate"/{gsub(/[",]/,""); print (a+$2)/2; exit}' "$f")
    local b; b=$(sed -n 's/.*"beta": \([^,]*\),.*/\1/p' "$f" | head -1)
    local l; l=$(sed -n 's/.*"lr": \([^,]*\),.*/\1/p' "$f" | head -1)
    if awk -v a="$w" -v b="$bw" 'BEGIN{exit !(a>b)}'; then bw=$w; best="$b $l"; fi
  done
  if [ -z "$best" ]; then # no validation runs (demo): the first grid values
    local lr0 b0
    lr0=${GRID_LR%% *}
    case $2 in mapo) b0=${GRID_BETA_MAPO%% *} ;; dpo) b0=${GRID_BETA_DPO%% *} ;; *) b0=0 ;; esac
    best="$b0 $lr0"
  fi
  echo "$best"
}

# ------------------------------------------------------------------ test runs (every seed)
jobs_test=()
for task in $TASKS; do for m in $METHODS; do
  read -r b lr <<< "$(choose "$task" "$m")"
  for seed in $SEEDS; do jobs_test+=("$task $m $seed $b $lr test true"); done
done; done
say "test runs: ${#jobs_test[@]}"
printf '%s\n' "${jobs_test[@]}" | STUDY_RUN=1 xargs -P "$JOBS" -L 1 bash tools/study.sh "$MODE" "$S"

# ------------------------------------------------------------------ study.json for the report
{
  printf '{"title": "MaPO vs Diffusion-DPO vs SFT on Fashion-MNIST (%s)",\n' "$MODE"
  printf ' "methods": ['; sep=""; for m in $METHODS; do printf '%s"%s"' "$sep" "$m"; sep=", "; done; printf '],\n'
  printf ' "seeds": [%s],\n' "$(echo $SEEDS | sed 's/ /, /g')"
  printf ' "tasks": ['
  sep=""
  for task in $TASKS; do
    kind=${task%%-*}; info=$(cat "$S/tasks/$task/train.safetensors.json")
    mism=$(echo "$info" | sed -n 's/.*"mismatch":\([^,]*\),.*/\1/p')
    case $kind in style) strength=${task#style-}; metric="style rate"; hb=true; desc="chosen: real images striped at strength $strength; rejected: the base model's samples" ;;
                  safety) strength=null; metric="mark rate"; hb=false; desc="chosen: clean base samples; rejected: base samples carrying the mark" ;;
                  *) strength=null; metric="class accuracy"; hb=true; desc="two base samples per prompt; chosen: the one the class classifier is more sure of" ;; esac
    be="$S/base-test/eval.json"
    tr=$(awk -v k="$kind" 'BEGIN{key=(k=="style")?"style_rate":(k=="safety")?"mark_rate":"class_acc"} $0 ~ "\""key"\"" {gsub(/[",]/,""); print $2; exit}' "$be")
    ca=$(awk '/"class_acc"/{gsub(/[",]/,""); print $2; exit}' "$be")
    fd=$(awk '/"fd"/{gsub(/[",]/,""); print $2; exit}' "$be")
    printf '%s\n  {"name": "%s", "kind": "%s", "strength": %s, "mismatch": %s, "task_metric": "%s", "task_higher_better": %s, "description": "%s", "pairs_info": %s,\n   "base": {"task_rate": %s, "class_acc": %s, "fd": %s, "grid": "base-test/grid.png"}}' \
      "$sep" "$task" "$kind" "$strength" "$mism" "$metric" "$hb" "$desc" "$info" "$tr" "$ca" "$fd"
    sep=","
  done
  printf '],\n "notes": ["%s steps of batch %s pairs per run, full fine-tune of the base UNet, AdamW, constant LR; every method sees the same pairs, noise and timesteps (counter-based from the seed)", "hyper-parameters chosen on validation noise (seed 0) by the mean of the win rate over the base by the task judge and by the class judge (the report table of the search shows the task win rate only); final runs: 3 seeds on test noise", "samples: DDIM %s steps, guidance %s, from the same initial noise for every model; win rates are paired against the base model", "mismatch: 1 - mean over classes of the cosine between the mean image of the base samples and of the chosen images (pixels in [0, 1]); the Frechet distance uses the class judge features against %s real test images"]}\n' "$STEPS" "$BATCH" "$SAMPLE_STEPS" "$GUIDANCE" "$FD_IMAGES"
} > "$S/study.json.tmp" && mv "$S/study.json.tmp" "$S/study.json"
say "study done: $S/study.json and $S/runs/*/result.json"
