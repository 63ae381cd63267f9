#!/usr/bin/env python3
# Command (from the repository root; CPU only, allocates nothing: meta device):
#     python3 tools/make_config_fixtures.py
#
# Reads the real UNet configs kept in tests/fixtures/configs/ (sd15_unet.json = unet/config.json of
# runwayml/stable-diffusion-v1-5, sdxl_unet.json = unet/config.json of
# stabilityai/stable-diffusion-xl-base-1.0, copied as they are on the hub), instantiates each with
# diffusers on the meta device, and writes
#     tests/fixtures/configs/param_counts.json     {"sd15_unet.json": N, "sdxl_unet.json": M,
#                                                   "tensors": {...}, "diffusers": version}
#     tests/fixtures/configs/<name>.params.json    {"total": N, "tensors": K,
#                                                   "params": [[name, [shape...]], ...]}
# (parameters in diffusers' named_parameters() order, which is also the state_dict order).
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

EXPECTED = {"sd15_unet.json": 859520964, "sdxl_unet.json": 2567463684}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    d = os.path.normpath(os.path.join(here, "..", "tests", "fixtures", "configs"))
    counts = {}
    ntensors = {}
    ok = True
    for name in ("sd15_unet.json", "sdxl_unet.json"):
        with open(os.path.join(d, name)) as f:
            cfg = json.load(f)
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        with torch.device("meta"):
            model = UNet2DConditionModel(**cfg)
        params = [[n, list(p.shape)] for n, p in model.named_parameters()]
        sd_keys = list(model.state_dict().keys())
        assert sd_keys == [n for n, _ in params], "state_dict has non-parameter entries"
        total = sum(p.numel() for p in model.parameters())
        counts[name] = total
        ntensors[name] = len(params)
        stem = name[:-len(".json")]
        with open(os.path.join(d, stem + ".params.json"), "w") as f:
            f.write('{"config": "%s", "total": %d, "tensors": %d, "params": [\n' % (name, total, len(params)))
            f.write(",\n".join(json.dumps(p, separators=(",", ":")) for p in params))
            f.write("\n]}\n")
        status = "OK" if total == EXPECTED[name] else f"MISMATCH (expected {EXPECTED[name]})"
        ok &= total == EXPECTED[name]
        print(f"{name}: {total} parameters in {len(params)} tensors  {status}")
    out = dict(counts)
    out["tensors"] = ntensors
    out["diffusers"] = diffusers.__version__
    with open(os.path.join(d, "param_counts.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
