#!/usr/bin/env python3
# Writes tests/fixtures/halfprec/, the reference files of tests/test_halfprec.c (half-precision
# weight files: sharded checkpoints, --save_precision). Produced with (from the repository root;
# CPU only, deterministic; torch 2.x, diffusers, safetensors from pip):
#     python3 tools/make_halfprec_fixtures.py
#
#   sharded/    a tiny random UNet2DConditionModel (shaped to fit tests/fixtures/pipeline/sd15's text
#               encoder and VAE, so tests/cli/halfprec.sh trains it in that pipeline) saved by diffusers' save_pretrained with
#               max_shard_size="8KB": config.json, diffusion_pytorch_model.safetensors.index.json
#               and its F32 shards diffusion_pytorch_model-0000k-of-0000N.safetensors
#   variant/    the same UNet .half() saved with variant="fp16" and max_shard_size="8KB": the
#               index diffusers writes (diffusion_pytorch_model.safetensors.index.fp16.json) and
#               F16 shards diffusion_pytorch_model.fp16-0000k-of-0000N.safetensors
#   expect.safetensors   the unsharded values, one entry per UNet parameter:
#               "f32.<name>"  the float32 weights (what loading sharded/ must give)
#               "bf16.<name>" torch's w.bfloat16() of them (BF16; what --save_precision bf16
#               writes; what fp16 writes is in variant/: torch's .half() of the same weights)
#   convert.safetensors  scalar conversion cases: "x" F32 (edge cases: signed zeros, f16 max /
#               tie to inf / overflow, subnormal boundaries and ties, bf16 ties and overflow near
#               FLT_MAX, inf, NaN, then random values over 2^-30 .. 2^20), "x_f16" = x.half(),
#               "x_bf16" = x.bfloat16(), and "n_inf" (I64 [2]): how many finite values of x
#               became inf in each.
import os
import warnings

import torch

warnings.filterwarnings("ignore")
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "halfprec")
SHARD = "8KB"


def unet():
    torch.manual_seed(8)
    u = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(4, 8), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=2)
    # spread the magnitudes so the conversions round, tie and go subnormal somewhere
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in u.parameters():
            e = torch.randint(-20, 4, p.shape, generator=g).float()
            p.copy_(torch.randn(p.shape, generator=g) * torch.pow(2.0, e))
    return u.eval()


def conversion_cases():
    f = [0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 65519.99, 65520.0, -65520.0, 70000.0, 1e10,
         2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 3 * 2.0 ** -25, 2.0 ** -26, 6.0e-05,
         2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
         1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 3.3895314e38, 3.4028235e38, -3.4028235e38,
         1e-40, -1e-45, float("inf"), float("-inf"), float("nan")]
    x = torch.tensor(f, dtype=torch.float32)
    g = torch.Generator().manual_seed(10)
    r = torch.randn(2000, generator=g) * torch.pow(2.0, torch.randint(-30, 20, (2000,),
                                                                       generator=g).float())
    # float32 values with exactly-half tails in the 13 / 16 dropped bits (ties)
    t = torch.randint(0x30000000, 0x47000000, (300,), generator=g, dtype=torch.int64)
    t = ((t & ~0xFFF) | 0x1000).to(torch.int32).view(torch.float32)
    t2 = torch.randint(0x00800000, 0x7F000000, (300,), generator=g, dtype=torch.int64)
    t2 = ((t2 & ~0xFFFF) | 0x8000).to(torch.int32).view(torch.float32)
    return torch.cat([x, r, t, t2])


def main():
    os.makedirs(ROOT, exist_ok=True)
    for d in ("sharded", "variant"):
        p = os.path.join(ROOT, d)
        if os.path.isdir(p):
            for fn in os.listdir(p):
                os.remove(os.path.join(p, fn))
    u = unet()
    u.save_pretrained(os.path.join(ROOT, "sharded"), max_shard_size=SHARD)
    sd = {k: v.detach().clone().contiguous() for k, v in u.state_dict().items()}
    expect = {}
    for k, v in sd.items():
        expect["f32." + k] = v
        expect["bf16." + k] = v.bfloat16()
    save_file(expect, os.path.join(ROOT, "expect.safetensors"))
    u.half().save_pretrained(os.path.join(ROOT, "variant"), max_shard_size=SHARD, variant="fp16")
    x = conversion_cases()
    h, b = x.half(), x.bfloat16()
    fin = torch.isfinite(x)
    n_inf = torch.tensor([int((torch.isinf(h.float()) & fin).sum()),
                          int((torch.isinf(b.float()) & fin).sum())], dtype=torch.int64)
    save_file({"x": x, "x_f16": h, "x_bf16": b, "n_inf": n_inf},
              os.path.join(ROOT, "convert.safetensors"))
    n = sum(v.numel() for v in sd.values())
    print(f"{len(sd)} tensors, {n} parameters; f16 overflows {int(n_inf[0])}, bf16 "
          f"{int(n_inf[1])}; shards: {len(os.listdir(os.path.join(ROOT, 'sharded'))) - 2} + "
          f"{len(os.listdir(os.path.join(ROOT, 'variant'))) - 2}")


if __name__ == "__main__":
    main()
