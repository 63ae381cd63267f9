#!/usr/bin/env bash
# mapo convert --save_precision float32|fp16|bf16 (docs/PRECISION.md "Writing"):
# 1. a single-file checkpoint (tests/fixtures/single_file): fp16 writes every weights file with
#    the bytes that converting torch's .half() of the same file (sd15_fp16.safetensors) gives;
#    fp16 and bf16 hold, value by value, the float32 conversion's values rounded to nearest even
#    (checked on the raw bits with awk); the other files are the float32 conversion's; float32
#    widens an F16 file exactly; without the flag every tensor keeps its dtype. The fp16 folder
#    samples.
# 2. a LoRA file, both ways (diffusers -> kohya, kohya -> diffusers): F16 / BF16 everywhere (the
#    kohya alpha too), each value the float32 conversion's rounded; the fp16 kohya file samples.
# 3. bad values: one error line each, nothing written.
source tests/cli/common.bash
S=tests/fixtures/single_file
P=tests/fixtures/pipeline/sd15
L=tests/fixtures/lora_kohya/pipe_sd15
export MAPO_CACHE_DIR=$TMP/cache HF_HUB_CACHE=$TMP/no_hub
# the dtypes a safetensors file's header names, e.g. "BF16 F32"
dtypes() { head -c 200000 "$1" | grep -ao '"dtype":"[A-Z0-9]*"' | sed 's/"dtype":"//; s/"//' | sort -u | tr '\n' ' '; }
# the data of a safetensors file (after the u64 header length and the header) as unsigned
# integers of $2 bytes, one a line
words() {
  local hl; hl=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  tail -c +$((9 + hl)) "$1" | od -An -v -tu$2 -w$2 | tr -d ' '
}
# rounded F32 HALF fp16|bf16: HALF holds, value by value, the float32 file's values rounded to
# nearest even as torch's .half() / .bfloat16() (both files written by the same converter, so
# their tensors come in the same order). Prints the number of values compared.
rounded() {
  paste <(words "$1" 4) <(words "$2" 2) | awk -v kind=$3 '
    function bf16(x,   s, a, hi, lo) {
      s = x >= 2147483648 ? 32768 : 0; a = x - (s ? 2147483648 : 0)
      if (a > 2139095040) return s + 32704                     # NaN: 0x7fc0
      hi = int(a / 65536); lo = a % 65536
      if (lo > 32768 || (lo == 32768 && hi % 2 == 1)) hi++
      return s + hi
    }
    function f16(x,   s, a, e, m, p, k, r) {
      s = x >= 2147483648 ? 32768 : 0; a = x - (s ? 2147483648 : 0)
      if (a > 2139095040) return s + 32256                     # NaN: 0x7e00
      if (a >= 1199566848) return s + 31744                    # >= 65520: inf
      if (a >= 947912704) {                                    # a normal half (>= 2^-14)
        a += 4095 + int(a / 8192) % 2
        return s + int((a - 939524096) / 8192)
      }
      if (a < 855638016) return s                              # below 2^-25: zero
      e = int(a / 8388608); m = a % 8388608 + 8388608; p = 2 ^ (126 - e)
      k = int(m / p); r = m % p
      if (r > p / 2 || (r == p / 2 && k % 2 == 1)) k++
      return s + k
    }
    { n++; want = kind == "bf16" ? bf16($1) : f16($1)
      if (NF != 2 || want != $2) { if (++bad <= 3) printf "value %d: float32 bits %s stored as %s, not %d\n", n, $1, $2, want; } }
    END { if (!n || bad) { printf "%d of %d values wrong\n", bad, n; exit 1 } print n }'
}
data_bytes() { echo $(( $(stat -c %s "$1") - 8 - $(od -An -tu8 -N8 "$1" | tr -d ' ') )); }

# 1. a single file
W="unet/diffusion_pytorch_model vae/diffusion_pytorch_model text_encoder/model"
$MAPO convert --in $S/sd15.safetensors --out $TMP/f32 --config_dir $P --quiet 2>$TMP/c.log \
  && $MAPO convert --in $S/sd15_fp16.safetensors --out $TMP/torch16 --config_dir $P --quiet 2>>$TMP/c.log \
  || bad "convert without --save_precision: $(cat $TMP/c.log)"
same=1
for w in $W; do
  [ "$(dtypes $TMP/f32/$w.safetensors)" = "F32 " ] && [ "$(dtypes $TMP/torch16/$w.safetensors)" = "F16 " ] || same=0
done
[ $same = 1 ] && ok "no --save_precision: an F32 file converts to F32, an F16 file to F16" \
  || bad "default dtypes: $(dtypes $TMP/f32/unet/diffusion_pytorch_model.safetensors) / $(dtypes $TMP/torch16/unet/diffusion_pytorch_model.safetensors)"
for pr in fp16 bf16; do
  D=$([ $pr = fp16 ] && echo F16 || echo BF16)
  $MAPO convert --in $S/sd15.safetensors --out $TMP/$pr --config_dir $P --save_precision $pr 2>$TMP/c.log \
    && grep -q "converted .* -> $TMP/$pr as $pr: " $TMP/c.log && ok "single file --save_precision $pr" \
    || bad "convert $pr: $(cat $TMP/c.log)"
  for w in $W; do
    f=$TMP/$pr/$w.safetensors
    [ "$(dtypes $f)" = "$D " ] && [ $(( $(data_bytes $f) * 2 )) -eq $(data_bytes $TMP/f32/$w.safetensors) ] \
      && ok "$pr $w: every tensor $D, half the float32 data" || bad "$pr $w: dtypes $(dtypes $f), $(data_bytes $f) bytes"
    n=$(rounded $TMP/f32/$w.safetensors $f $pr) && ok "$pr $w: the float32 conversion's $n values, rounded" \
      || bad "$pr $w not the float32 values rounded: $n"
  done
  diff -r -x '*.safetensors' $TMP/f32 $TMP/$pr >/dev/null && ok "$pr: configs, tokenizer, scheduler as float32's" \
    || bad "$pr: other files differ from the float32 conversion"
done
same=1
for w in $W; do cmp -s $TMP/fp16/$w.safetensors $TMP/torch16/$w.safetensors || same=0; done
[ $same = 1 ] && ok "fp16 weights files == the conversion of torch's .half() of the file (bytes)" \
  || bad "fp16 conversion differs from torch's .half()"
$MAPO convert --in $S/sd15_fp16.safetensors --out $TMP/wide --config_dir $P --save_precision float32 --quiet 2>$TMP/c.log \
  || bad "convert F16 file to float32: $(cat $TMP/c.log)"
for w in $W; do
  out=$($MAPO diff $TMP/wide/$w.safetensors $TMP/torch16/$w.safetensors --tol 0 --quiet 2>&1) \
    && [ "$(dtypes $TMP/wide/$w.safetensors)" = "F32 " ] && ok "F16 file --save_precision float32, $w: F32, exact: $out" \
    || bad "F16 -> float32 $w: $out"
done
$MAPO sample --model $TMP/fp16 --prompt "a red square" --num_inference_steps 2 --height 32 --width 32 \
  --out $TMP/s.png --quiet 2>$TMP/s.log && [ -s $TMP/s.png ] && ok "the fp16 pipeline samples" \
  || bad "sample fp16 pipeline: $(cat $TMP/s.log)"

# 2. LoRA files, both ways
for to in kohya diffusers; do
  in=$L/pytorch_lora_weights.safetensors; [ $to = diffusers ] && in=$L/lora_kohya.safetensors
  $MAPO convert --in $in --out $TMP/l_$to.float32.safetensors --to $to --model $P 2>$TMP/c.log \
    && grep -q "($to layout, float32)" $TMP/c.log && [ "$(dtypes $TMP/l_$to.float32.safetensors)" = "F32 " ] \
    && ok "LoRA to $to: float32 by default" || bad "LoRA to $to: $(cat $TMP/c.log)"
  for pr in fp16 bf16; do
    D=$([ $pr = fp16 ] && echo F16 || echo BF16); f=$TMP/l_$to.$pr.safetensors
    $MAPO convert --in $in --out $f --to $to --model $P --save_precision $pr 2>$TMP/c.log \
      && grep -q "($to layout, $pr)" $TMP/c.log && [ "$(dtypes $f)" = "$D " ] \
      && ok "LoRA to $to --save_precision $pr: every tensor $D" || bad "LoRA $to $pr: $(cat $TMP/c.log) $(dtypes $f)"
    n=$(rounded $TMP/l_$to.float32.safetensors $f $pr) && ok "LoRA $to $pr: the float32 conversion's $n values, rounded" \
      || bad "LoRA $to $pr not the float32 values rounded: $n"
  done
done
head -c 100000 $TMP/l_kohya.fp16.safetensors | grep -aq '\.alpha":{"dtype":"F16","shape":\[\]' \
  && ok "kohya fp16: alpha F16 too (as sd-scripts' --save_precision fp16)" || bad "kohya fp16 alpha"
$MAPO sample --model $P --lora $TMP/l_kohya.fp16.safetensors --prompt "a red square" --num_inference_steps 2 \
  --height 32 --width 32 --out $TMP/l.png --quiet 2>$TMP/s.log && [ -s $TMP/l.png ] \
  && ok "the fp16 kohya LoRA samples" || bad "sample fp16 LoRA: $(cat $TMP/s.log)"

# 3. bad values
expect_error "convert: unknown --save_precision (single file)" "--save_precision half: expected float32, fp16 or bf16" \
  $MAPO convert --in $S/sd15.safetensors --out $TMP/x --config_dir $P --save_precision half
expect_error "convert: unknown --save_precision (LoRA)" "--save_precision fp8: expected float32, fp16 or bf16" \
  $MAPO convert --in $L/pytorch_lora_weights.safetensors --out $TMP/x.safetensors --to kohya --model $P --save_precision fp8
expect_error "convert: --save_precision without a value" "--save_precision" \
  $MAPO convert --in $L/pytorch_lora_weights.safetensors --out $TMP/x.safetensors --to kohya --model $P --save_precision
finish
