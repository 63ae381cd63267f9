#!/usr/bin/env bash
# The data cache's vae_fingerprint names the weights the VAE loader reads for
# --pretrained_vae_model_name_or_path (docs/PRECISION.md "Fingerprints"): a VAE folder, or a
# pipeline folder whose vae/ is read (as diffusers' AutoencoderKL.from_pretrained(path,
# subfolder="vae")), with --variant and sharded indexes picked as the loader picks them.
# 1. a pipeline folder copy as the VAE: the cache is reused on a second run and after a byte of
#    its unet/ weights changes (the cache does not depend on it), rebuilt after a value byte of
#    its vae/ weights changes; the same VAE named by its vae/ folder reuses that cache.
# 2. a pipeline folder holding only vae/ (no unet/) is fingerprinted as its vae/.
# 3. a pipeline folder whose vae/ is sharded with an fp16 variant, --variant fp16: a changed F32
#    shard (not read) keeps the cache, a changed fp16 shard rebuilds it; the bare vae/ folder
#    reuses it.
source tests/cli/common.bash
P=tests/fixtures/pipeline/sd15
D=tests/fixtures/pipeline/data/manifest
S=tests/fixtures/sharded
# the last value of the last tensor of a safetensors file set to 1.0 (F32 or F16: a value byte,
# not the header)
last_to_one() { printf '\x00\x00\x80\x3f' | dd of="$1" bs=1 seek=$(( $(stat -c %s "$1") - 4 )) conv=notrunc 2>/dev/null; }
last_to_one16() { printf '\x00\x3c' | dd of="$1" bs=1 seek=$(( $(stat -c %s "$1") - 2 )) conv=notrunc 2>/dev/null; }
common=(--pretrained_model_name_or_path $P --dataset_name $D --train_batch_size 1 --max_train_steps 1
        --checkpointing_steps 0 --learning_rate 1e-4 --seed 5 --quiet)
# run OUT VAE [flags...]: mapo train with --pretrained_vae_model_name_or_path VAE into OUT
run() { local o=$1 v=$2; shift 2
  $MAPO train "${common[@]}" --output_dir $o --pretrained_vae_model_name_or_path $v "$@" 2>$TMP/log; }
used()    { grep -q "using the cache" $TMP/log && ! grep -q "rebuilding" $TMP/log; }
rebuilt() { grep -q "rebuilding .*vae_fingerprint" $TMP/log; }
vfp() { head -c 4096 $1/cache.safetensors | grep -ao '"vae_fingerprint":"[0-9a-f]*"'; }

# 1. a pipeline folder as the VAE
cp -r $P $TMP/v || bad "copy the pipeline"
run $TMP/a $TMP/v && [ -n "$(vfp $TMP/a)" ] && ok "cache with a pipeline folder as the VAE: $(vfp $TMP/a)" \
  || bad "cache with a pipeline folder as the VAE: $(cat $TMP/log)"
run $TMP/a $TMP/v && used && ok "second run: the cache reused" || bad "second run: $(cat $TMP/log)"
run $TMP/a $TMP/v/vae && used && ok "the same VAE named by its vae/ folder: the cache reused" \
  || bad "pipeline folder vs its vae/: $(cat $TMP/log)"
last_to_one $TMP/v/unet/diffusion_pytorch_model.safetensors
run $TMP/a $TMP/v && used && ok "a changed byte of the VAE pipeline's unet/ weights: the cache reused" \
  || bad "changed unet/ of the VAE pipeline: $(cat $TMP/log)"
before=$(vfp $TMP/a)
last_to_one $TMP/v/vae/diffusion_pytorch_model.safetensors
run $TMP/a $TMP/v && rebuilt && [ "$(vfp $TMP/a)" != "$before" ] \
  && ok "a changed value byte of the VAE pipeline's vae/ weights: the cache rebuilt" \
  || bad "changed vae/ of the VAE pipeline: $(cat $TMP/log)"

# a VAE folder's fingerprint is the one it had before pipeline folders were told apart (the value
# of the fixture's vae/ then), so caches made with a VAE folder stay valid
run $TMP/f $P/vae && [ "$(vfp $TMP/f)" = '"vae_fingerprint":"bcd797555519bc95"' ] \
  && ok "a VAE folder's fingerprint unchanged: $(vfp $TMP/f)" || bad "VAE folder fingerprint $(vfp $TMP/f): $(cat $TMP/log)"

# 2. a folder with only vae/
mkdir $TMP/w && cp -r $P/vae $TMP/w/vae || bad "copy the VAE"
run $TMP/b $TMP/w && [ -n "$(vfp $TMP/b)" ] || bad "cache with a folder holding only vae/: $(cat $TMP/log)"
run $TMP/b $P/vae && used && ok "a folder holding only vae/ fingerprinted as its vae/ (cache reused by $P/vae)" \
  || bad "a folder holding only vae/: $(cat $TMP/log)"

# 3. sharded vae/ with an fp16 variant
cp -r $P $TMP/s && rm -rf $TMP/s/vae && cp -r $S/vae/sharded $TMP/s/vae || bad "copy the sharded VAE"
run $TMP/c $TMP/s --variant fp16 && [ -n "$(vfp $TMP/c)" ] || bad "cache with a sharded fp16 VAE: $(cat $TMP/log)"
last_to_one $TMP/s/vae/diffusion_pytorch_model-00004-of-00004.safetensors
run $TMP/c $TMP/s --variant fp16 && used && ok "--variant fp16: a changed F32 shard (not read) keeps the cache" \
  || bad "F32 shard with --variant fp16: $(cat $TMP/log)"
last_to_one16 $TMP/s/vae/diffusion_pytorch_model.fp16-00002-of-00002.safetensors
run $TMP/c $TMP/s --variant fp16 && rebuilt && ok "--variant fp16: a changed fp16 shard rebuilds the cache" \
  || bad "fp16 shard: $(cat $TMP/log)"
run $TMP/c $TMP/s/vae --variant fp16 && used && ok "the bare sharded vae/ folder: the cache reused" \
  || bad "bare sharded vae/: $(cat $TMP/log)"

# 4. bad inputs: the loader's message, once
mkdir -p $TMP/n/vae && cp $P/vae/config.json $TMP/n/vae/ || bad "copy the VAE config"
expect_error "a pipeline folder whose vae/ has no weights" "$TMP/n/vae: no diffusion_pytorch_model.safetensors" \
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D --out $TMP/x.safetensors --pretrained_vae_model_name_or_path $TMP/n
expect_error "a folder with neither config.json nor vae/config.json" "$P/tokenizer: no config.json (nor vae/config.json)" \
  $MAPO cache --pretrained_model_name_or_path $P --dataset_name $D --out $TMP/x.safetensors --pretrained_vae_model_name_or_path $P/tokenizer
finish
