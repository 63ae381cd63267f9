#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; needs torch, diffusers,
# transformers, safetensors):
#     python3 tools/make_single_file_fixtures.py    # writes tests/fixtures/single_file/
#
# Original-layout ("single-file", as A1111 / ComfyUI / CivitAI hold them) checkpoints of the tiny
# random pipelines in tests/fixtures/pipeline/{sd15,sdxl} (tools/make_pipeline_fixtures.py):
#   sd15.safetensors       model.diffusion_model.* (UNet), first_stage_model.* (VAE),
#                          cond_stage_model.transformer.text_model.* (CLIP-L, transformers layout)
#                          + the buffers real files carry: ...embeddings.position_ids (I64),
#                          alphas_cumprod (the DDPM schedule)
#   sd15_fp16.safetensors  the same in F16 (as most files on CivitAI; position_ids stay I64)
#   sdxl.safetensors       model.diffusion_model.* (with label_emb), first_stage_model.*,
#                          conditioner.embedders.0.transformer.text_model.* (CLIP-L),
#                          conditioner.embedders.1.model.* (OpenCLIP bigG layout: fused
#                          attn.in_proj_weight / in_proj_bias, text_projection [hidden, proj]
#                          (transposed), positional_embedding, ln_final, resblocks.*), logit_scale
# The mapping is written here in the diffusers -> original direction (the reverse of diffusers'
# single_file_utils), independently of src/models/single_file.c, and then CHECKED with diffusers'
# own loader: StableDiffusionPipeline / StableDiffusionXLPipeline.from_single_file(file,
# config=<the tiny pipeline folder>, local_files_only=True) must give every tensor of every
# component equal (torch.equal) to the folder's.
#   One exception, a limit of diffusers with this tiny fixture, not of the mapping: diffusers picks
#   the loader of text_encoder_2 by comparing the CLIP-L position-embedding width with
#   text_encoder_2's hidden size (768 vs 1280 in a real SDXL); here both encoders are 32 wide, so
#   from_single_file would fill text_encoder_2 from the CLIP-L weights. text_encoder_2 is therefore
#   checked by calling diffusers' convert_open_clip_checkpoint (the function from_single_file uses
#   for a real SDXL) on the file and loading the result strictly into CLIPTextModelWithProjection.
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
PIPE = os.path.join(ROOT, "pipeline")
OUT = os.path.join(ROOT, "single_file")

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def sub(d, prefix):
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def put_resnet(out, src, dst, renames):
    for k, v in src.items():
        for a, b in renames:
            if k.startswith(a + "."):
                k = b + k[len(a):]
                break
        else:
            raise KeyError(f"unmapped resnet tensor {k}")
        out[dst + "." + k] = v


def unet_to_ldm(sd, cfg):
    """diffusers UNet2DConditionModel state dict -> model.diffusion_model.* (LDM openaimodel)"""
    n = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    L = lpb if isinstance(lpb, list) else [lpb] * n
    out = {}
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in simple.items():
        for s in ("weight", "bias"):
            if f"{a}.{s}" in sd:
                out[f"{b}.{s}"] = sd[f"{a}.{s}"]
    k = 1
    for i in range(n):
        for j in range(L[i]):
            put_resnet(out, sub(sd, f"down_blocks.{i}.resnets.{j}."), f"input_blocks.{k}.0", RESNET)
            for kk, v in sub(sd, f"down_blocks.{i}.attentions.{j}.").items():
                out[f"input_blocks.{k}.1.{kk}"] = v
            k += 1
        if i < n - 1:
            for s in ("weight", "bias"):
                out[f"input_blocks.{k}.0.op.{s}"] = sd[f"down_blocks.{i}.downsamplers.0.conv.{s}"]
            k += 1
    put_resnet(out, sub(sd, "mid_block.resnets.0."), "middle_block.0", RESNET)
    for kk, v in sub(sd, "mid_block.attentions.0.").items():
        out[f"middle_block.1.{kk}"] = v
    put_resnet(out, sub(sd, "mid_block.resnets.1."), "middle_block.2", RESNET)
    m = 0
    for i in range(n):
        nl = L[n - 1 - i] + 1
        for j in range(nl):
            put_resnet(out, sub(sd, f"up_blocks.{i}.resnets.{j}."), f"output_blocks.{m}.0", RESNET)
            att = sub(sd, f"up_blocks.{i}.attentions.{j}.")
            for kk, v in att.items():
                out[f"output_blocks.{m}.1.{kk}"] = v
            if j == nl - 1 and i < n - 1:
                u = 2 if att else 1
                for s in ("weight", "bias"):
                    out[f"output_blocks.{m}.{u}.conv.{s}"] = sd[f"up_blocks.{i}.upsamplers.0.conv.{s}"]
            m += 1
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(sd, cfg):
    n = len(cfg["block_out_channels"])
    out = {}
    vres = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
            ("conv_shortcut", "nin_shortcut")]
    for part in ("encoder", "decoder"):
        for a, b in (("conv_in", "conv_in"), ("conv_norm_out", "norm_out"), ("conv_out", "conv_out")):
            for s in ("weight", "bias"):
                out[f"{part}.{b}.{s}"] = sd[f"{part}.{a}.{s}"]
        for r in (0, 1):
            put_resnet(out, sub(sd, f"{part}.mid_block.resnets.{r}."), f"{part}.mid.block_{r + 1}", vres)
        for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                     ("to_out.0", "proj_out")):
            for s in ("weight", "bias"):
                v = sd[f"{part}.mid_block.attentions.0.{a}.{s}"]
                if s == "weight" and a != "group_norm":
                    v = v[:, :, None, None]  # linear -> 1x1 conv, as the original AttnBlock
                out[f"{part}.mid.attn_1.{b}.{s}"] = v
    for i in range(n):
        for kk, v in sub(sd, f"encoder.down_blocks.{i}.").items():
            if kk.startswith("downsamplers.0.conv."):
                out[f"encoder.down.{i}.downsample.conv." + kk.split(".")[-1]] = v
        for j in range(cfg["layers_per_block"]):
            put_resnet(out, sub(sd, f"encoder.down_blocks.{i}.resnets.{j}."), f"encoder.down.{i}.block.{j}", vres)
        lvl = n - 1 - i  # decoder.up_blocks.i is the original decoder.up.(n-1-i)
        for kk, v in sub(sd, f"decoder.up_blocks.{i}.").items():
            if kk.startswith("upsamplers.0.conv."):
                out[f"decoder.up.{lvl}.upsample.conv." + kk.split(".")[-1]] = v
        for j in range(cfg["layers_per_block"] + 1):
            put_resnet(out, sub(sd, f"decoder.up_blocks.{i}.resnets.{j}."), f"decoder.up.{lvl}.block.{j}", vres)
    for a in ("quant_conv", "post_quant_conv"):
        for s in ("weight", "bias"):
            if f"{a}.{s}" in sd:
                out[f"{a}.{s}"] = sd[f"{a}.{s}"]
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return {"first_stage_model." + k: v for k, v in out.items()}


def clip_to_ldm(sd, prefix):
    """transformers CLIPTextModel (either layout) -> prefix + text_model.* (+ position_ids)"""
    out = {}
    for k, v in sd.items():
        out[prefix + (k if k.startswith("text_model.") else "text_model." + k)] = v
    P = out[prefix + "text_model.embeddings.position_embedding.weight"].shape[0]
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(P, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(sd, prefix):
    """transformers CLIPTextModelWithProjection -> open_clip's TextTransformer layout"""
    sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"],
           "positional_embedding": sd["embeddings.position_embedding.weight"],
           "ln_final.weight": sd["final_layer_norm.weight"],
           "ln_final.bias": sd["final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T.contiguous(),
           "logit_scale": torch.tensor(4.6052)}
    nl = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for l in range(nl):
        a, b = f"encoder.layers.{l}.", f"transformer.resblocks.{l}."
        for s in ("weight", "bias"):
            out[b + f"attn.in_proj_{s}"] = torch.cat([sd[a + f"self_attn.{p}_proj.{s}"] for p in "qkv"], 0)
            out[b + f"attn.out_proj.{s}"] = sd[a + f"self_attn.out_proj.{s}"]
            out[b + f"ln_1.{s}"] = sd[a + f"layer_norm1.{s}"]
            out[b + f"ln_2.{s}"] = sd[a + f"layer_norm2.{s}"]
            out[b + f"mlp.c_fc.{s}"] = sd[a + f"mlp.fc1.{s}"]
            out[b + f"mlp.c_proj.{s}"] = sd[a + f"mlp.fc2.{s}"]
    n_in = sum(v.numel() for v in sd.values())
    assert sum(v.numel() for k, v in out.items() if k != "logit_scale") == n_in
    return {prefix + k: v for k, v in out.items()}


def component(kind, name, weights):
    d = os.path.join(PIPE, kind, name)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return load_file(os.path.join(d, weights)), cfg


def build(kind):
    unet, ucfg = component(kind, "unet", "diffusion_pytorch_model.safetensors")
    vae, vcfg = component(kind, "vae", "diffusion_pytorch_model.safetensors")
    te, _ = component(kind, "text_encoder", "model.safetensors")
    sd = {}
    sd.update(unet_to_ldm(unet, ucfg))
    sd.update(vae_to_ldm(vae, vcfg))
    if kind == "sd15":
        sd.update(clip_to_ldm(te, "cond_stage_model.transformer."))
    else:
        sd.update(clip_to_ldm(te, "conditioner.embedders.0.transformer."))
        te2, _ = component(kind, "text_encoder_2", "model.safetensors")
        sd.update(open_clip_to_ldm(te2, "conditioner.embedders.1.model."))
    # the DDPM schedule LDM checkpoints carry (SD 1.5 / SDXL betas); ignored by every loader
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return {k: v.contiguous() for k, v in sd.items()}


def check(kind, path):
    """diffusers' from_single_file must give back the folder's tensors exactly"""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    cls = StableDiffusionPipeline if kind == "sd15" else StableDiffusionXLPipeline
    folder = os.path.join(PIPE, kind)
    ref = cls.from_pretrained(folder)
    kw = dict(config=folder, local_files_only=True)
    if kind == "sdxl":
        kw["text_encoder_2"] = ref.text_encoder_2  # see the header: checked separately below
    pipe = cls.from_single_file(path, **kw)
    names = ["unet", "vae", "text_encoder"]
    for name in names:
        a, b = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        assert set(a) == set(b), (name, set(a) ^ set(b))
        for k in b:
            assert torch.equal(a[k], b[k]), (name, k)
        print(f"  {kind}: from_single_file {name}: {len(b)} tensors equal")
    assert pipe.scheduler.config == ref.scheduler.config
    assert pipe.tokenizer.get_vocab() == ref.tokenizer.get_vocab()
    if kind == "sdxl":
        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
        from transformers import CLIPTextModelWithProjection
        ck = load_file(path)
        m = CLIPTextModelWithProjection(ref.text_encoder_2.config)
        conv = convert_open_clip_checkpoint(m, ck, prefix="conditioner.embedders.1.model.")
        m.load_state_dict(conv, strict=True)
        b = ref.text_encoder_2.state_dict()
        for k, v in m.state_dict().items():
            assert torch.equal(v, b[k]), ("text_encoder_2", k)
        print(f"  {kind}: convert_open_clip_checkpoint text_encoder_2: {len(b)} tensors equal")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for kind in ("sd15", "sdxl"):
        sd = build(kind)
        path = os.path.join(OUT, f"{kind}.safetensors")
        save_file(sd, path, metadata={"format": "pt"})
        check(kind, path)
        if kind == "sd15":
            h = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
            save_file(h, os.path.join(OUT, "sd15_fp16.safetensors"), metadata={"format": "pt"})
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        with safe_open(p, "pt") as s:
            print(f"{f}: {len(list(s.keys()))} tensors, {os.path.getsize(p) // 1024} KiB")
    sys.exit(0)
