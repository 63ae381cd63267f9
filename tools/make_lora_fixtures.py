#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; needs torch, diffusers, peft):
#     python3 tools/make_lora_fixtures.py            # writes tests/fixtures/lora/<case>/
#
# LoRA parity fixtures, set up as the official train_with_lora.py does it: peft LoraConfig(r,
# lora_alpha=r, init_lora_weights="gaussian", target_modules=[to_k, to_q, to_v, to_out.0]) on the
# UNet of tests/fixtures/unet/<case>/model, with the batch of the same case. lora_B is then set
# to small random values (at init it is 0, which would hide every bug in the adapter path).
# Per case:
#   pytorch_lora_weights.safetensors  written by diffusers' save_lora_weights from
#                                     convert_state_dict_to_diffusers(get_peft_model_state_dict)
#                                     exactly as the official script saves
#   expect.safetensors  model_pred (adapters on), base_pred (adapters off), MaPO loss, errors and
#                       grad.<peft name> of every adapter; DPO with the adapters switched off as
#                       the reference: dpo.ref_errors, dpo.loss, dpo.grad.<peft name>
# The script also reloads the saved file with load_lora_adapter into a fresh UNet and checks it
# reproduces model_pred, so the file is one diffusers accepts.
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from make_unet_fixtures import BETA_DPO, dpo_loss, errors_of, forward, mapo_loss  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
RANK = 2
ROOT = os.path.join(os.path.dirname(__file__), "..")


def make(case):
    src = os.path.join(ROOT, "tests/fixtures/unet", case)
    out = os.path.join(ROOT, "tests/fixtures/lora", case)
    os.makedirs(out, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(src, "model")).float()
    unet.requires_grad_(False)
    torch.manual_seed(77)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(78)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    lora_params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    sd = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(sd), safe_serialization=True)
    batch = {k: v for k, v in load_file(os.path.join(src, "batch.safetensors")).items()}
    exp = {}
    # MaPO with adapters on
    pred = forward(unet, batch)
    errors = errors_of(pred, batch["target"])
    loss, _ = mapo_loss(errors)
    unet.zero_grad(set_to_none=True)
    loss.backward()
    exp["model_pred"] = pred.detach().contiguous()
    exp["errors"] = errors.detach().contiguous()
    exp["loss"] = loss.detach().reshape(1)
    for n, p in lora_params.items():
        exp["grad." + n.replace(".default", "")] = p.grad.detach().clone().contiguous()
    # base model = adapters off
    unet.disable_adapters()
    with torch.no_grad():
        base = forward(unet, batch)
        ref_errors = errors_of(base, batch["target"])
    unet.enable_adapters()
    exp["base_pred"] = base.contiguous()
    # Diffusion-DPO, reference = the same UNet with adapters off
    pred = forward(unet, batch)
    loss, _ = dpo_loss(errors_of(pred, batch["target"]), ref_errors)
    unet.zero_grad(set_to_none=True)
    loss.backward()
    exp["dpo.ref_errors"] = ref_errors.contiguous()
    exp["dpo.loss"] = loss.detach().reshape(1)
    for n, p in lora_params.items():
        exp["dpo.grad." + n.replace(".default", "")] = p.grad.detach().clone().contiguous()
    save_file({k: v.float().contiguous() for k, v in exp.items()},
              os.path.join(out, "expect.safetensors"),
              metadata={"rank": str(RANK), "beta_dpo": repr(BETA_DPO), "torch": torch.__version__})
    # the saved file loads into diffusers and gives the same output
    fresh = UNet2DConditionModel.from_pretrained(os.path.join(src, "model")).float()
    fresh.load_lora_adapter(os.path.join(out, "pytorch_lora_weights.safetensors"), prefix="unet")
    with torch.no_grad():
        again = forward(fresh, batch)
    err = ((again - exp["model_pred"]).norm() / exp["model_pred"].norm()).item()
    assert err < 1e-6, err
    print(case, "adapters", len(lora_params) // 2, "reload error", err,
          "lora effect", ((exp["model_pred"] - base).norm() / base.norm()).item())


if __name__ == "__main__":
    for c in ("sd15", "sdxl"):
        make(c)
