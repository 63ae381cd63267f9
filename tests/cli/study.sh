#!/usr/bin/env bash
# The Fashion-MNIST study path end to end at toy sizes, on a tiny random pixel pipeline and
# judges trained for one epoch on a few hundred images: pixel pipeline folder, pretraining data
# (images-only file), plain denoising training and its refusals, sampling, mapo eval, pair
# builders, the study driver (validation grid, choice, test runs, resume) and the report.
source tests/cli/common.bash
export OMP_NUM_THREADS=1
P=$TMP/pipe
$MAPO init-pixel-pipeline --out $P --block_out_channels 8,16,16 --text_width 16 --text_layers 1 \
   --attention_heads 2 --seed 3 >/dev/null || bad "init-pixel-pipeline"
for f in model_index.json scheduler/scheduler_config.json tokenizer/vocab.json tokenizer/merges.txt \
         text_encoder/config.json text_encoder/model.safetensors unet/config.json \
         unet/diffusion_pytorch_model.safetensors; do
  [ -s $P/$f ] || bad "pixel pipeline lacks $f"
done
grep -q '"vae": \[' $P/model_index.json && grep -A2 '"vae"' $P/model_index.json | grep -q null \
  && ok "model_index.json declares no VAE" || bad "model_index.json: vae not null"
expect_error "init-pixel-pipeline over an existing pipeline" "already exists" \
  $MAPO init-pixel-pipeline --out $P
expect_error "bad --block_out_channels" "three integers" \
  $MAPO init-pixel-pipeline --out $TMP/p2 --block_out_channels 8,16

# pretraining data: 300 train images, 10% marked, 10% without caption
$MAPO fmnist-data --pipeline $P --out $TMP/fm.safetensors --max_images 300 --seed 1 2>$TMP/d.log \
  && grep -q "300 images of train" $TMP/d.log && ok "fmnist-data: $(cat $TMP/d.log)" || bad "fmnist-data: $(cat $TMP/d.log)"
expect_error "fmnist-data bad split" "--split" $MAPO fmnist-data --pipeline $P --out $TMP/x.safetensors --split test
expect_error "fmnist-data bad mark share" "[0, 1]" $MAPO fmnist-data --pipeline $P --out $TMP/x.safetensors --mark_share 2
expect_error "fmnist-data hostile data folder" "no such file" \
  $MAPO fmnist-data --pipeline $P --out $TMP/x.safetensors --data $TMP/nowhere
# an images-only file trains with the plain denoising loss only
expect_error "mapo loss on images-only file" "only --loss sft" \
  $MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/fm.safetensors --output_dir $TMP/o1 \
    --loss mapo --max_train_steps 1 --quiet
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/fm.safetensors --output_dir $TMP/pre \
   --loss sft --train_batch_size 8 --max_train_steps 4 --checkpointing_steps 2 --learning_rate 1e-3 \
   --seed 0 --quiet 2>$TMP/t.log && [ -s $TMP/pre/unet/diffusion_pytorch_model.safetensors ] \
   && ok "pretraining on single images" || bad "pretraining: $(cat $TMP/t.log)"
# resume from the step-2 checkpoint gives the same weights
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/fm.safetensors --output_dir $TMP/pre \
   --loss sft --train_batch_size 8 --max_train_steps 4 --checkpointing_steps 2 --learning_rate 1e-3 \
   --seed 0 --quiet --resume_from_checkpoint $TMP/pre/checkpoint-2 2>$TMP/t.log || bad "resume: $(cat $TMP/t.log)"
cp -r $TMP/pre/unet $TMP/unet_resumed
rm -rf $TMP/pre2
$MAPO train --pretrained_model_name_or_path $P --dataset_name $TMP/fm.safetensors --output_dir $TMP/pre2 \
   --loss sft --train_batch_size 8 --max_train_steps 4 --checkpointing_steps 0 --learning_rate 1e-3 \
   --seed 0 --quiet 2>/dev/null
cmp -s $TMP/pre2/unet/diffusion_pytorch_model.safetensors $TMP/unet_resumed/diffusion_pytorch_model.safetensors \
  && ok "pretraining resumes bit-exactly" || bad "resumed pretraining differs"

# sampling: batched == one at a time
printf 'a photo of a bag\na photo of a dress\n' > $TMP/pr.txt
$MAPO sample --model $P --unet $TMP/pre/unet --prompts_file $TMP/pr.txt --sampler ddim \
   --num_inference_steps 3 --guidance_scale 3 --out $TMP/a.png --quiet --batch 1 || bad "sample"
$MAPO sample --model $P --unet $TMP/pre/unet --prompts_file $TMP/pr.txt --sampler ddim \
   --num_inference_steps 3 --guidance_scale 3 --out $TMP/b.png --quiet --batch 2 || bad "sample batch"
cmp -s $TMP/a-001.png $TMP/b-001.png && ok "batched sampling == one image at a time" || bad "batched sampling differs"

# judges (one epoch on 300 images: the flow, not their quality) and the study at toy sizes
$MAPO fmnist-evaluators --out $TMP/ev --max_images 300 --epochs 1 --quiet 2>/dev/null \
  && [ -s $TMP/ev/evaluators.json ] && ok "fmnist-evaluators" || bad "fmnist-evaluators"
cp -r $TMP/pre/unet/* $P/unet/
S=$TMP/study
BASE=$P EV=$TMP/ev SAMPLE_STEPS=2 FD_IMAGES=100 bash tools/study.sh smoke $S > $TMP/s.log 2>&1 \
  && ok "study smoke run: $(tail -1 $TMP/s.log)" || bad "study: $(tail -5 $TMP/s.log)"
n=$(ls $S/runs/*/result.json 2>/dev/null | wc -l)
[ "$n" -eq 10 ] && ok "10 runs (4 validation + 6 test)" || bad "expected 10 result.json, found $n"
# splits never overlap: four distinct noise seeds (pairs, held-out pairs, validation, test)
seeds=$(for d in pool heldpool base-val base-test; do sed -n 's/.*"noise_seed": \([0-9]*\).*/\1/p' $S/$d/eval.json; done | sort -u | wc -l)
[ "$seeds" -eq 4 ] && ok "pool, held-out, validation and test noise are distinct" || bad "noise seeds overlap ($seeds distinct)"
grep -q '"split":"train"' $S/tasks/style-1.00/train.safetensors.json && grep -q '"split":"t10k"' $S/tasks/style-1.00/heldout.safetensors.json \
  && ok "training pairs from the train split, held-out pairs from the test split" || bad "pair splits"
# resume: a second run does nothing new
before=$(stat -c %Y $S/runs/*/result.json | sort | tail -1)
BASE=$P EV=$TMP/ev SAMPLE_STEPS=2 FD_IMAGES=100 bash tools/study.sh smoke $S > $TMP/s2.log 2>&1
after=$(stat -c %Y $S/runs/*/result.json | sort | tail -1)
[ "$before" = "$after" ] && ! grep -q "done style" $TMP/s2.log && ok "a finished study resumes to nothing" || bad "resume reran runs"
# pair builders refuse what cannot work
expect_error "style strength out of range" "--strength" $MAPO fmnist-pairs --task style --strength 0 \
  --pool $S/pool/scores.safetensors --pipeline $P --evaluators $TMP/ev --out $TMP/x.safetensors
expect_error "unknown task" "unknown task" $MAPO fmnist-pairs --task nsfw \
  --pool $S/pool/scores.safetensors --pipeline $P --evaluators $TMP/ev --out $TMP/x.safetensors
expect_error "eval against other noise" "paired" $MAPO eval --model $P --evaluators $TMP/ev --out $TMP/e \
  --per_class 1 --num_inference_steps 2 --noise_seed 77 --task style --against $S/base-test/scores.safetensors --fd_images 50
expect_error "eval --against without --task" "--task" $MAPO eval --model $P --evaluators $TMP/ev --out $TMP/e \
  --against $S/base-test/scores.safetensors
# the report: every file it references exists
$MAPO report --study $S --out $TMP/rep 2>/dev/null || bad "report"
missing=0
for f in $(grep -o 'src="[^"]*"\|href="[^"#]*"' $TMP/rep/index.html | sed 's/^[a-z]*="//; s/"$//'); do
  [ -e "$TMP/rep/$f" ] || { missing=$((missing+1)); bad "report references missing $f"; }
done
[ $missing -eq 0 ] && ok "report: every referenced file exists" || true
finish
