#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; needs torch, diffusers, peft,
# safetensors):
#     python3 tools/make_kohya_fixtures.py          # writes tests/fixtures/lora_kohya/
#
# kohya-ss sd-scripts LoRA files (the format A1111 / Forge / ComfyUI load), written here from the
# diffusers-format LoRAs the way sd-scripts' networks/lora.py names and saves them:
#     lora_unet_<module, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha (0-dim tensor)
# <module>: SD 1.x is trained by sd-scripts on a diffusers-layout UNet, so the diffusers path
# (lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q); SDXL on its sgm UNet,
# so the original layout (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q,
# lora_unet_middle_block_1_..., lora_unet_output_blocks_0_1_...). The original-layout indices are
# computed here from the config (layers_per_block, block types); diffusers' own converter
# (lora_state_dict -> _maybe_map_sgm_blocks_to_diffusers -> _convert_non_diffusers_lora_to_diffusers)
# reading them back is what checks them: every file below is loaded with diffusers and must
# reproduce the diffusers-format LoRA's output.
#
# Per UNet fixture case (sd15, sdxl = tests/fixtures/unet/<case>/model with the LoRA of
# tests/fixtures/lora/<case>):
#   <case>/lora_kohya.safetensors   what mapo's unet_lora_save_kohya must write bit for bit:
#                                   float32, alpha = r, sd-scripts' layout for the model, metadata
#   sd15/lora_kohya_original.safetensors   SD 1.5 in the original layout (input_blocks_1_1, which
#                                   A1111 / ComfyUI / diffusers also accept), alpha = 1 with
#                                   lora_up x r (sd-scripts' default --network_alpha 1): loads to
#                                   the same adapters bit for bit (r is a power of two)
#   sdxl/lora_kohya_fp16.safetensors   as sd-scripts' --save_precision fp16: every tensor float16,
#                                   alpha 1 (float16), lora_up x r
#   <case>/diffusers_check.json     relative error of diffusers' UNet output with each file against
#                                   tests/fixtures/lora/<case>/expect.safetensors model_pred
# Per tiny pipeline (pipe_sd15, pipe_sdxl = tests/fixtures/pipeline/<kind>):
#   pytorch_lora_weights.safetensors   a rank-2 LoRA on the pipeline's UNet (peft gaussian A,
#                                   random B) saved by diffusers' save_lora_weights
#   lora_kohya.safetensors          the same in kohya form (alpha = r)
#   expect.safetensors              latents [1,4,16,16]; image: pipe(PROMPT, DDIM, STEPS steps,
#                                   guidance GUIDANCE, 32x32, latents, output_type "np") after
#                                   pipe.load_lora_weights(kohya file) -- asserted equal to the same
#                                   after load_lora_weights(diffusers file); base_image without LoRA
# Rerunning rewrites the same tensors; the files' bytes may still differ in the order of the
# header's metadata keys (safetensors serialises metadata from a hash map).
import json
import os
import sys
import warnings

import numpy as np
import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
from diffusers import (DDIMScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from make_unet_fixtures import forward  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests/fixtures/lora_kohya")
RANK = 2
PROMPT = "An astronaut riding a horse on Mars, 4k!"
STEPS = 4
GUIDANCE = 5.0
H = W = 32


def layers_of(cfg):
    n = len(cfg["down_block_types"])
    lpb = cfg["layers_per_block"]
    return [lpb] * n if isinstance(lpb, int) else list(lpb)


def to_original(mod, cfg):
    """diffusers module path -> original (sgm / LDM) module path of an attention block"""
    layers = layers_of(cfg)
    n = len(layers)
    p = mod.split(".")
    if p[0] == "down_blocks" and p[2] == "attentions":
        i, j = int(p[1]), int(p[3])
        idx = 1 + sum(layers[b] + 1 for b in range(i)) + j  # input_blocks.0 is conv_in
        return ".".join(["input_blocks", str(idx), "1"] + p[4:])
    if p[0] == "up_blocks" and p[2] == "attentions":
        i, j = int(p[1]), int(p[3])
        idx = sum(layers[n - 1 - b] + 1 for b in range(i)) + j
        return ".".join(["output_blocks", str(idx), "1"] + p[4:])
    if p[0] == "mid_block" and p[1] == "attentions":
        return ".".join(["middle_block", "1"] + p[3:])
    raise ValueError(mod)


def kohya_base(mod, cfg, layout):
    if layout == "auto":
        layout = "original" if cfg.get("addition_embed_type") == "text_time" else "diffusers"
    m = to_original(mod, cfg) if layout == "original" else mod
    return "lora_unet_" + m.replace(".", "_")


def to_kohya(path_in, path_out, cfg, layout="auto", alpha=None, dtype=torch.float32):
    """diffusers-format LoRA file -> kohya file; alpha None: r (scale 1), else lora_up x r/alpha"""
    sd = load_file(path_in)
    out, ranks = {}, set()
    for k in sorted(sd):
        if not k.endswith(".lora.down.weight"):
            continue
        mod = k[len("unet."):-len(".lora.down.weight")]
        A, B = sd[k], sd[f"unet.{mod}.lora.up.weight"]
        r = A.shape[0]
        ranks.add(r)
        a = float(r if alpha is None else alpha)
        base = kohya_base(mod, cfg, layout)
        out[base + ".lora_down.weight"] = A.to(dtype).contiguous()
        out[base + ".lora_up.weight"] = (B * (r / a)).to(dtype).contiguous()
        out[base + ".alpha"] = torch.tensor(a).to(dtype)  # sd-scripts: register_buffer(torch.tensor(alpha))
    assert 2 * len(out) == 3 * len(sd), (len(out), len(sd))
    sdxl = cfg.get("addition_embed_type") == "text_time"
    v2 = not sdxl and cfg["cross_attention_dim"] == 1024
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version":
            "sdxl_base_v1-0" if sdxl else "sd_v2" if v2 else "sd_v1", "ss_v2": str(v2)}
    if len(ranks) == 1:
        r = ranks.pop()
        meta["ss_network_dim"] = str(r)
        meta["ss_network_alpha"] = str(float(r if alpha is None else alpha))
    save_file(out, path_out, metadata=meta)
    return out


def diffusers_unet_with(path, model_dir, sdxl):
    """load a LoRA file into a fresh UNet through diffusers' pipeline loader (kohya converter)"""
    unet = UNet2DConditionModel.from_pretrained(model_dir).float()
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    sd, alphas = cls.lora_state_dict(path, unet_config=unet.config)
    cls.load_lora_into_unet(sd, alphas, unet)
    n = sum(1 for nm, _ in unet.named_parameters() if "lora_A" in nm)
    return unet, n


def unet_case(case):
    src = os.path.join(ROOT, "tests/fixtures/unet", case)
    lora = os.path.join(ROOT, "tests/fixtures/lora", case)
    out = os.path.join(OUT, case)
    os.makedirs(out, exist_ok=True)
    model = os.path.join(src, "model")
    cfg = json.load(open(os.path.join(model, "config.json")))
    sdxl = case == "sdxl"
    dfile = os.path.join(lora, "pytorch_lora_weights.safetensors")
    n_adapters = sum(1 for k in load_file(dfile) if k.endswith(".lora.down.weight"))
    files = {"lora_kohya.safetensors": {}}
    if case == "sd15":
        files["lora_kohya_original.safetensors"] = {"layout": "original", "alpha": 1.0}
    else:
        files["lora_kohya_fp16.safetensors"] = {"alpha": 1.0, "dtype": torch.float16}
    batch = load_file(os.path.join(src, "batch.safetensors"))
    want = load_file(os.path.join(lora, "expect.safetensors"))["model_pred"]
    check = {}
    for name, kw in files.items():
        p = os.path.join(out, name)
        sd = to_kohya(dfile, p, cfg, **kw)
        unet, n = diffusers_unet_with(p, model, sdxl)
        assert n == n_adapters, (name, n, n_adapters)  # every adapter found its module
        with torch.no_grad():
            pred = forward(unet, batch)
        err = ((pred - want).norm() / want.norm()).item()
        tol = 2e-3 if kw.get("dtype") == torch.float16 else 1e-6
        assert err < tol, (name, err)
        check[name] = {"diffusers_model_pred_rel_err": err, "adapters": n,
                       "example_name": sorted(sd)[0]}
        print(case, name, "adapters", n, "diffusers model_pred rel err %.2e" % err)
    check["diffusers"] = __import__("diffusers").__version__
    with open(os.path.join(out, "diffusers_check.json"), "w") as f:
        json.dump(check, f, indent=2, sort_keys=True)
        f.write("\n")


def pipeline_case(kind):
    pdir = os.path.join(ROOT, "tests/fixtures/pipeline", kind)
    out = os.path.join(OUT, "pipe_" + kind)
    os.makedirs(out, exist_ok=True)
    sdxl = kind == "sdxl"
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    # the LoRA, made as the official train_with_lora.py sets it up (as make_lora_fixtures.py)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(pdir, "unet")).float()
    torch.manual_seed(91 if sdxl else 90)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(92)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    cls.save_lora_weights(out, unet_lora_layers=convert_state_dict_to_diffusers(
        get_peft_model_state_dict(unet)), safe_serialization=True)
    dfile = os.path.join(out, "pytorch_lora_weights.safetensors")
    kfile = os.path.join(out, "lora_kohya.safetensors")
    cfg = json.load(open(os.path.join(pdir, "unet", "config.json")))
    to_kohya(dfile, kfile, cfg)
    pipe = cls.from_pretrained(pdir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lat = torch.randn(1, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(93))

    def sample():
        with torch.no_grad():
            return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=H,
                        width=W, latents=lat.clone(), output_type="np").images[0]

    base = sample()
    imgs = {}
    for name, f in (("diffusers", dfile), ("kohya", kfile)):
        pipe.load_lora_weights(f)
        imgs[name] = sample()
        pipe.unload_lora_weights()
    d = np.abs(imgs["kohya"] - imgs["diffusers"]).max()
    effect = np.abs(imgs["kohya"] - base).max()
    assert d < 1e-6, d
    assert effect > 0.05, effect
    print("pipe", kind, "kohya vs diffusers image max diff %.2e, LoRA effect (max) %.3f" % (d, effect))
    save_file({"latents": lat.contiguous(),
               "image": torch.from_numpy(np.ascontiguousarray(imgs["kohya"])).float(),
               "base_image": torch.from_numpy(np.ascontiguousarray(base)).float()},
              os.path.join(out, "expect.safetensors"),
              metadata={"prompt": PROMPT, "sampler": "ddim", "steps": str(STEPS),
                        "guidance_scale": repr(GUIDANCE), "height": str(H), "width": str(W),
                        "diffusers": __import__("diffusers").__version__,
                        "kohya_vs_diffusers_max_abs": repr(float(d))})


if __name__ == "__main__":
    for c in ("sd15", "sdxl"):
        unet_case(c)
    for k in ("sd15", "sdxl"):
        pipeline_case(k)
