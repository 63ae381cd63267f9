#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; needs torch and safetensors):
#     python3 tools/make_classifier_fixtures.py     # writes tests/fixtures/classifier/parity/
#
# Parity fixture of the image classifier of include/mapo/classifier.h: the same network as a
# torch nn.Module (names conv1..conv4, norm1..norm4, fc1, fc2), random-initialised with torch's
# defaults, then the GroupNorm affine parameters perturbed (at init they are 1 and 0, which
# would hide a gamma/beta mix-up). With width 8, conv1's 8 channels form 8 GroupNorm groups of
# one channel, so the gradient of conv1.bias is exactly zero (only rounding noise). B = 4 images 1x32x32, width 8, features 16, 3 classes.
#   model/config.json, model/model.safetensors   the model as classifier_load reads it
#   expect.safetensors   x [4,1,32,32], labels (I64 [4]), logits [4,3], features [4,16],
#                        loss (F32 [1], mean cross-entropy), grad.<name> of every parameter
# The script also runs the same computation in float64 and prints the relative L2 error of
# torch's own float32 results against it: the float32 noise floor that the C tolerances in
# tests/test_classifier.c are set against.
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests/fixtures/classifier/parity")


class Classifier(nn.Module):
    def __init__(self, in_channels, image_size, width, features, num_classes):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1)
        self.norm1 = nn.GroupNorm(8, w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, 2, 1)
        self.norm2 = nn.GroupNorm(8, 2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, 2, 1)
        self.norm3 = nn.GroupNorm(8, 4 * w)
        self.conv4 = nn.Conv2d(4 * w, 4 * w, 3, 2, 1)
        self.norm4 = nn.GroupNorm(8, 4 * w)
        self.fc1 = nn.Linear(4 * w * (image_size // 8) ** 2, features)
        self.fc2 = nn.Linear(features, num_classes)

    def forward(self, x):
        h = F.silu(self.norm1(self.conv1(x)))
        h = F.silu(self.norm2(self.conv2(h)))
        h = F.silu(self.norm3(self.conv3(h)))
        h = F.silu(self.norm4(self.conv4(h)))
        f = F.silu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(f), f


def run(model, x, y):
    model.zero_grad()
    logits, feats = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), feats.detach(), loss.detach(), grads


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def main():
    cfg = {"in_channels": 1, "image_size": 32, "width": 8, "features": 16, "num_classes": 3,
           "labels": ["circle", "square", "noise"]}
    torch.manual_seed(0)
    model = Classifier(cfg["in_channels"], cfg["image_size"], cfg["width"], cfg["features"],
                       cfg["num_classes"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("norm"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    B = 4
    x = torch.randn(B, cfg["in_channels"], cfg["image_size"], cfg["image_size"], generator=g)
    y = torch.tensor([0, 2, 1, 2], dtype=torch.int64)
    logits, feats, loss, grads = run(model, x, y)

    m64 = Classifier(cfg["in_channels"], cfg["image_size"], cfg["width"], cfg["features"],
                     cfg["num_classes"]).double()
    m64.load_state_dict(model.state_dict())
    l64, f64, loss64, g64 = run(m64, x.double(), y)
    print("torch float32 vs float64 (relative L2): logits %.2e features %.2e loss %.2e" %
          (rel(logits, l64), rel(feats, f64), rel(loss, loss64)))
    # conv1 has width = 8 channels in 8 groups: GroupNorm removes any per-channel constant,
    # so d loss / d conv1.bias is exactly 0 and only rounding noise is left (norm printed)
    rest = [n for n in grads if n != "conv1.bias"]
    worst = max(rest, key=lambda n: rel(grads[n], g64[n]))
    print("  worst gradient %s %.2e" % (worst, rel(grads[worst], g64[worst])))
    print("  |grad conv1.bias| float32 %.2e float64 %.2e (exactly 0; |grad conv1.weight| %.2e)"
          % (grads["conv1.bias"].norm(), g64["conv1.bias"].norm(), grads["conv1.weight"].norm()))
    print("  loss %.6f, logits\n%s" % (loss.item(), logits))

    os.makedirs(os.path.join(OUT, "model"), exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, "model/model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "model/config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    exp = {"x": x, "labels": y, "logits": logits, "features": feats, "loss": loss.reshape(1)}
    for n, gr in grads.items():
        exp["grad." + n] = gr
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expect.safetensors"))


if __name__ == "__main__":
    main()
