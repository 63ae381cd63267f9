#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     python3 tools/make_vae_fixtures.py            # writes tests/fixtures/vae/<case>/
#     python3 tools/make_vae_fixtures.py --out DIR  # somewhere else
#
# Parity fixtures for the C implementation of diffusers' AutoencoderKL (src/models/vae.c):
# random-initialised tiny VAEs, perturbed so that no layer is trivially neutral. Per case:
#   model/                  config.json + diffusion_pytorch_model.safetensors (F32, or F16 for "f16")
#   expect.safetensors      x, noise -> mean, logvar, std, sample, latents; z -> dec;
#                           latents -> dec_latents (decode(latents / scaling + shift));
#                           tiled: z_tiled -> dec_tiled, x_tiled -> mean/logvar/std_tiled
#   case.json               shapes, tile sizes, scaling / shift factors
# Everything is float32 (the f16 case runs the float32 model holding the f16-rounded weights).
import argparse
import copy
import json
import os
import struct
import warnings

import torch
from safetensors.torch import load_file

warnings.filterwarnings("ignore")
from diffusers import AutoencoderKL  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

CASES = {
    # 2 blocks (f = 2), quant convs, no shift; tiling with sample_size 16 (latent tiles of 8,
    # overlap 6, blend 4 pixels when decoding / 2 latents when encoding)
    "small": dict(
        seed=11, B=2, H=16, W=24, z_tiled=(2, 14, 20), x_tiled=(1, 36, 44), weights="f32",
        cfg=dict(
            in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4,
            sample_size=16, scaling_factor=0.18215,
        ),
    ),
    # 3 blocks (f = 4), shift_factor set, no quant convs (SD3 / Flux style), 2 layers per block;
    # tiling with sample_size 32 (latent tiles of 8)
    "shift": dict(
        seed=22, B=2, H=24, W=20, z_tiled=(1, 13, 17), x_tiled=(1, 56, 72), weights="f32",
        cfg=dict(
            in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=[8, 8, 16], layers_per_block=2, latent_channels=4,
            norm_num_groups=4, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False, force_upcast=False,
        ),
    ),
    # F16 weights, mid block without attention, 3 latent channels, 12 channels (3 per group),
    # and a logvar pushed past both clamps (channel 0 > 20, channel 1 < -30)
    "f16": dict(
        seed=33, B=1, H=12, W=20, z_tiled=None, x_tiled=None, weights="f16", clamp=True,
        cfg=dict(
            in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[12, 8], layers_per_block=1, latent_channels=3, norm_num_groups=4,
            sample_size=32, mid_block_add_attention=False, scaling_factor=0.13025,
        ),
    ),
}


def make_model(cfg, seed):
    """Random init with a fixed seed, then perturb every parameter so that zero-initialised or
    constant layers (norm weights = 1, biases = 0) cannot hide bugs."""
    torch.manual_seed(seed)
    model = AutoencoderKL(**cfg).float()
    g = torch.Generator().manual_seed(seed + 17)
    norm_params = set()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                norm_params.update([id(mod.weight), id(mod.bias)])
        for _, p in model.named_parameters():
            if id(p) not in norm_params:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        # small activations after both conv_in: the first GroupNorms then see a variance of
        # ~1e-5, where their eps (1e-6) matters, so a wrong eps cannot go unnoticed
        for conv in (model.encoder.conv_in, model.decoder.conv_in):
            conv.weight.mul_(0.01)
            conv.bias.mul_(0.01)
    model.eval()
    return model


_DT = {torch.float32: "F32"}


def tsave(d, path, md):
    """Byte-deterministic safetensors writer (tensors in sorted name order, sorted metadata)."""
    header = {"__metadata__": dict(sorted(md.items()))}
    blobs, off = [], 0
    for k in sorted(d):
        t = d[k].detach().contiguous().cpu()
        b = t.numpy().tobytes()
        header[k] = {"dtype": _DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    back = load_file(path)
    assert set(back) == set(d) and all(torch.equal(back[k], d[k].detach().cpu()) for k in d), path


def build_case(name, case, outdir):
    cfg = case["cfg"]
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    model = make_model(cfg, case["seed"])
    L = cfg["latent_channels"]
    if case.get("clamp"):
        # push logvar channel 0 above 20 and channel 1 below -30 (the clamps of
        # DiagonalGaussianDistribution); the other channels stay in range
        conv = model.quant_conv if model.quant_conv is not None else model.encoder.conv_out
        with torch.no_grad():
            conv.bias[L + 0] += 40.0
            conv.bias[L + 1] -= 45.0
    if case["weights"] == "f16":
        half = copy.deepcopy(model).half()
        half.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
        model = half.float()  # the exact weights the C side loads
    else:
        model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)

    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    B, H, W = case["B"], case["H"], case["W"]
    h, w = H // f, W // f
    g = torch.Generator().manual_seed(case["seed"] + 101)
    x = (torch.rand(B, cfg["in_channels"], H, W, generator=g) * 2 - 1).contiguous()
    noise = torch.randn(B, L, h, w, generator=g)
    z = torch.randn(B, L, h, w, generator=g)
    scaling = model.config.scaling_factor
    shift = model.config.shift_factor
    out = {"x": x, "noise": noise, "z": z}
    with torch.no_grad():
        post = model.encode(x).latent_dist
        sample = post.mean + post.std * noise
        lat = sample - shift if shift is not None else sample
        lat = lat * scaling
        out.update(mean=post.mean, logvar=post.logvar, std=post.std, sample=sample, latents=lat)
        out["dec"] = model.decode(z).sample
        zz = lat / scaling
        if shift is not None:
            zz = zz + shift
        out["dec_latents"] = model.decode(zz).sample

        info = {}
        if case["z_tiled"]:
            model.enable_tiling()
            Bt, ht, wt = case["z_tiled"]
            zt = torch.randn(Bt, L, ht, wt, generator=g)
            dt = model.decode(zt).sample
            assert dt.shape[-2:] == (ht * f, wt * f), dt.shape
            model.disable_tiling()
            du = model.decode(zt).sample
            out.update(z_tiled=zt, dec_tiled=dt)
            info["tiled_vs_untiled_decode_rel"] = float((dt - du).norm() / du.norm())
        if case["x_tiled"]:
            model.enable_tiling()
            Bt, Ht, Wt = case["x_tiled"]
            xt = torch.rand(Bt, cfg["in_channels"], Ht, Wt, generator=g) * 2 - 1
            pt = model.encode(xt).latent_dist
            assert pt.mean.shape[-2:] == (Ht // f, Wt // f), pt.mean.shape
            model.disable_tiling()
            pu = model.encode(xt).latent_dist
            out.update(x_tiled=xt, mean_tiled=pt.mean, logvar_tiled=pt.logvar, std_tiled=pt.std)
            info["tiled_vs_untiled_encode_mean_rel"] = float((pt.mean - pu.mean).norm() / pu.mean.norm())
    out = {k: v.float().contiguous() for k, v in out.items()}
    md = {"case": name, "torch": torch.__version__, "scaling_factor": repr(scaling),
          "shift_factor": repr(shift), "downscale": str(f)}
    tsave(out, os.path.join(d, "expect.safetensors"), md)
    sample_size = cfg["sample_size"]
    tlm = int(sample_size / f)
    cj = {
        "case": name, "seed": case["seed"], "B": B, "H": H, "W": W, "downscale": f,
        "latent_channels": L, "weights": case["weights"],
        "params": sum(p.numel() for p in model.parameters()),
        "scaling_factor": scaling, "shift_factor": shift,
        "tile_sample_min_size": sample_size, "tile_latent_min_size": tlm,
        "tile_overlap_factor": 0.25, "z_tiled": case["z_tiled"], "x_tiled": case["x_tiled"],
        "logvar_range": [float(post.logvar.min()), float(post.logvar.max())],
        **info, "torch": torch.__version__,
    }
    with open(os.path.join(d, "case.json"), "w") as fo:
        json.dump(cj, fo, indent=1)
    return cj


README = """# AutoencoderKL parity fixtures

Made by `python3 tools/make_vae_fixtures.py` (CPU, torch.set_num_threads(1), deterministic, float32;
diffusers AutoencoderKL). Each case directory holds:

- `model/` (config.json + diffusion_pytorch_model.safetensors): random init with a fixed seed, every
  parameter perturbed (GroupNorm weights 1 + 0.1*randn, biases 0.1*randn, everything else +=
  0.02*randn), then encoder.conv_in and decoder.conv_in scaled by 0.01 so that the first GroupNorms
  see variances of ~1e-5 where their eps of 1e-6 matters. The `f16` case stores F16 weights; its expectations use exactly those weights.
- `expect.safetensors` (all F32):
  `x` [B,3,H,W] uniform in [-1,1); `noise` [B,L,H/f,W/f]; `mean`, `logvar` (clamped to [-30,20]),
  `std` = exp(0.5 logvar) of `vae.encode(x).latent_dist`; `sample` = mean + std * noise;
  `latents` = (sample - shift_factor) * scaling_factor (no shift when shift_factor is null);
  `z` [B,L,H/f,W/f] -> `dec` = vae.decode(z); `dec_latents` = vae.decode(latents / scaling_factor +
  shift_factor). Tiled (vae.enable_tiling(), tile_sample_min_size = sample_size,
  tile_latent_min_size = sample_size / f, overlap 0.25): `z_tiled` -> `dec_tiled`; `x_tiled` ->
  `mean_tiled`, `logvar_tiled`, `std_tiled`.
- `case.json`: shapes, downscale factor f, tile sizes, scaling / shift factors, parameter count.

Cases: small (block_out [8,16], layers 1, groups 4, latent 4, quant convs, 16x24 images, decode
tiling of a 14x20 latent = 3x4 tiles of 8 with overlap, encode tiling of a 36x44 image);
shift (3 blocks [8,8,16], layers 2, shift_factor 0.0609, scaling 1.5305, no quant / post-quant
conv, 24x20 images, 13x17 latent tiled in 8s, 56x72 image tiled in 32s);
f16 (F16 weights, block_out [12,8], latent 3, mid block without attention, logvar channel 0
clamped at 20 and channel 1 at -30).
"""


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "vae"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, case in CASES.items():
        cj = build_case(name, case, a.out)
        print(f"{name}: params {cj['params']}, logvar range {cj['logvar_range']}, "
              f"tiled-vs-untiled decode {cj.get('tiled_vs_untiled_decode_rel')}, "
              f"encode {cj.get('tiled_vs_untiled_encode_mean_rel')}")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(README)
    total = 0
    for root, _, files in os.walk(a.out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total fixture size under {os.path.normpath(a.out)}: {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
