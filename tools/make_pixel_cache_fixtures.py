#!/usr/bin/env python3
"""Fixtures of tests/cli/pixel_cache.sh: what `mapo cache` must store for a pixel-space pipeline
(no VAE) on the manifest dataset of tests/fixtures/pipeline/data/manifest, computed
independently with PIL + torchvision.

The preprocessing is the official scripts' (train_diffusion_dpo_sdxl.py / MaPO train.py
preprocess_train), as tools/make_pipeline_fixtures.py runs it for the VAE caches: the chosen
image plays jpg_0 (the rejected one is resized to its size with PIL's default filter), ToTensor,
Resize(RES, bilinear, antialiased) of both together, horizontal flip (for the *_hflip tensors),
CenterCrop(RES), Normalize(0.5, 0.5). For a 1-channel UNet the [-1, 1] RGB result is then made
gray with ITU-R 601-2 luma (PIL's "L" weights): 0.299 R + 0.587 G + 0.114 B, in float32.

RES = 16 is the sample_size of the test's pixel pipelines (mapo init-pixel-pipeline
--image_size 16), so the test also checks the default resolution (sample_size x 1, no VAE).

Writes tests/fixtures/pixel_cache/expect_gray.safetensors ([5, 1, 16, 16] each) and
expect_rgb.safetensors ([5, 3, 16, 16] each): chosen, rejected, chosen_hflip, rejected_hflip.

Run from anywhere: python3 tools/make_pixel_cache_fixtures.py (needs torch, torchvision, PIL,
safetensors)."""
import json
import os

import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
DATA = os.path.join(ROOT, "pipeline", "data", "manifest")
OUT = os.path.join(ROOT, "pixel_cache")
RES = 16


def preprocess(chosen, rejected, flip):
    resize = transforms.Resize(RES, interpolation=transforms.InterpolationMode.BILINEAR)
    crop = transforms.CenterCrop(RES)
    im0 = Image.open(chosen).convert("RGB")
    im1 = Image.open(rejected).convert("RGB")
    im1 = im1.resize(im0.size)
    x = resize(torch.cat([transforms.ToTensor()(im0), transforms.ToTensor()(im1)], 0))
    if flip:
        x = transforms.RandomHorizontalFlip(p=1.0)(x)
    x = transforms.Normalize([0.5], [0.5])(crop(x))
    return x[:3], x[3:]


def luma(x):
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def main():
    lines = [json.loads(s) for s in open(os.path.join(DATA, "manifest.jsonl")) if s.strip()]
    rgb = {k: [] for k in ("chosen", "rejected", "chosen_hflip", "rejected_hflip")}
    for ln in lines:
        for flip in (False, True):
            c, r = preprocess(os.path.join(DATA, ln["chosen"]), os.path.join(DATA, ln["rejected"]),
                              flip)
            sfx = "_hflip" if flip else ""
            rgb["chosen" + sfx].append(c)
            rgb["rejected" + sfx].append(r)
    os.makedirs(OUT, exist_ok=True)
    meta = {"resolution": str(RES), "crop": "center", "source": "tools/make_pixel_cache_fixtures.py"}
    rgb = {k: torch.stack(v).float().contiguous() for k, v in rgb.items()}
    gray = {k: torch.stack([luma(x) for x in v]).contiguous() for k, v in rgb.items()}
    save_file(rgb, os.path.join(OUT, "expect_rgb.safetensors"), metadata=dict(meta, channels="3"))
    save_file(gray, os.path.join(OUT, "expect_gray.safetensors"),
              metadata=dict(meta, channels="1", gray="0.299 R + 0.587 G + 0.114 B of the [-1, 1] image"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
