#!/usr/bin/env python3
# Command (from the repository root, after `make`; development only: needs torch, diffusers,
# transformers, safetensors; ~10 GB of free disk under /tmp, a few minutes):
#     python3 tools/check_single_file_fullsize.py [./mapo]
#
# The committed single-file fixtures are tiny (2 UNet levels, 1 resnet each, 3-layer text
# encoders). This checks the mapping at the real SD 1.5 and SDXL sizes without any weights:
#   1. the real diffusers models are built on the meta device (UNet, VAE, CLIP ViT-L, OpenCLIP
#      ViT-bigG with their published configs); tools/make_single_file_fixtures.py's
#      diffusers -> original mapping gives the original keys, and diffusers' own
#      convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint / convert_ldm_clip_checkpoint /
#      convert_open_clip_checkpoint must map them back to exactly the model's keys and shapes;
#      infer_diffusers_model_type must say "v1" / "xl_base" (the real layout);
#   2. a full-size original-layout F16 file is written sparse (zeros) with a marker in every
#      tensor: its first two values encode the tensor's number (and each third of a fused
#      in_proj its own); `mapo convert` turns it into a folder (once with the real configs in
#      the config folder, once with tokenizer + scheduler only, so mapo's standard configs are
#      used); every converted tensor must have the diffusers name and shape and carry the marker
#      diffusers' converter routes there; the written UNet / VAE / text-encoder configs must
#      describe the real models.
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(__file__))
import make_single_file_fixtures as mk  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as su  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

MAPO = sys.argv[1] if len(sys.argv) > 1 else "./mapo"
FIX = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pipeline")

UNET = {
    "sd15": dict(sample_size=64, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                 cross_attention_dim=768, attention_head_dim=8),
    "sdxl": dict(sample_size=128, layers_per_block=2, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                 cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_embed_type_num_heads=64,
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}
VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
              projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1)
DT = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}


def models(kind):
    with torch.device("meta"):
        u = UNet2DConditionModel(**UNET[kind])
        v = AutoencoderKL(**VAE, sample_size=512 if kind == "sd15" else 1024,
                          scaling_factor=0.18215 if kind == "sd15" else 0.13025)
        te = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)) if kind == "sdxl" else None
    return u, v, te, te2


def shapes(sd):
    return {k: tuple(t.shape) for k, t in sd.items()}


def check_python_mapping(kind, u, v, te, te2):
    """the fixture tool's mapping is the inverse of diffusers' converters at full size"""
    ldm = {}
    ldm.update(mk.unet_to_ldm(u.state_dict(), dict(u.config)))
    ldm.update(mk.vae_to_ldm(v.state_dict(), dict(v.config)))
    pre = "cond_stage_model.transformer." if kind == "sd15" else "conditioner.embedders.0.transformer."
    ldm.update(mk.clip_to_ldm(te.state_dict(), pre))
    if te2 is not None:
        ldm.update(mk.open_clip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model."))
    assert su.infer_diffusers_model_type(ldm) == ("v1" if kind == "sd15" else "xl_base")
    conv = su.convert_ldm_unet_checkpoint(ldm, dict(u.config))
    assert shapes(conv) == shapes(u.state_dict()), "unet"
    conv = su.convert_ldm_vae_checkpoint(ldm, dict(v.config))
    assert shapes(conv) == shapes(v.state_dict()), "vae"
    conv = su.convert_ldm_clip_checkpoint(ldm)
    conv = {k.removeprefix("text_model."): t for k, t in conv.items() if "position_ids" not in k}
    assert shapes(conv) == shapes(te.state_dict()), "text_encoder"
    if te2 is not None:
        conv = su.convert_open_clip_checkpoint(te2, ldm, prefix="conditioner.embedders.1.model.")
        assert shapes(conv) == shapes(te2.state_dict()), "text_encoder_2"
    print(f"  {kind}: {len(ldm)} original keys; diffusers' converters map them back to the real "
          f"models' keys and shapes; infer_diffusers_model_type ok")
    return ldm


def marker(code):
    return [code // 1024 + 1, code % 1024 + 1]  # two non-zero F16 values, both exact


def unmarker(a, b):
    return (int(a) - 1) * 1024 + int(b) - 1


def first_two(path):
    """{name: (dtype, shape, the first two values as float)} read from the file's bytes"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        out = {}
        for k, e in hdr.items():
            if k == "__metadata__":
                continue
            f.seek(8 + n + e["data_offsets"][0])
            raw = f.read(min(4, e["data_offsets"][1] - e["data_offsets"][0]))
            vals = np.frombuffer(raw, np.float16) if e["dtype"] == "F16" else []
            out[k] = (e["dtype"], tuple(e["shape"]), list(vals))
        return out


def write_sparse(path, ldm):
    """F16 (I64 position_ids) file of zeros with the markers; returns {key: code}"""
    names = sorted(ldm)
    hdr, off, codes = {"__metadata__": {"format": "pt"}}, 0, {}
    for i, k in enumerate(names):
        t = ldm[k]
        dt = torch.int64 if k.endswith("position_ids") else torch.float16
        n = int(np.prod(t.shape)) * (8 if dt == torch.int64 else 2)
        hdr[k] = {"dtype": DT[dt], "shape": list(t.shape), "data_offsets": [off, off + n]}
        codes[k] = 4 * (i + 1)
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    base = 8 + len(h)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(base + off)
        for k in names:
            if k.endswith("position_ids") or hdr[k]["shape"] == []:
                continue
            b0, shape = base + hdr[k]["data_offsets"][0], hdr[k]["shape"]
            thirds = 3 if k.endswith(("in_proj_weight", "in_proj_bias")) else 1
            row = int(np.prod(shape[1:])) * 2 if len(shape) > 1 else 2
            mk_ = [np.array([m], np.float16).tobytes() for m in marker(codes[k])]
            if k.endswith("text_projection"):  # [D, P] -> [P, D]: [0, 0] and [1, 0] become
                f.seek(b0)                     # the transposed tensor's first two values
                f.write(mk_[0])
                f.seek(b0 + row)
                f.write(mk_[1])
                continue
            for s in range(thirds):
                f.seek(b0 + s * (shape[0] // thirds) * row)
                f.write(np.array(marker(codes[k] + s), np.float16).tobytes())
    return codes


def expected_codes(kind, ldm, codes, u, v, te, te2):
    """{part: {diffusers name: code}} by diffusers' converters run on marker proxies"""
    px = {}
    for k, t in ldm.items():
        c = float(codes[k])
        if k.endswith(("in_proj_weight", "in_proj_bias")):
            d = t.shape[0] // 3
            col = c + torch.arange(t.shape[0], dtype=torch.float32) // d
            px[k] = col[:, None].expand(t.shape) if t.dim() == 2 else col
        else:
            px[k] = torch.full((), c).expand(t.shape) if t.dim() else torch.tensor(c)
    first = lambda d: {k: int(t.reshape(-1)[0]) for k, t in d.items()}  # noqa: E731
    out = {"unet": first(su.convert_ldm_unet_checkpoint(px, dict(u.config))),
           "vae": first(su.convert_ldm_vae_checkpoint(px, dict(v.config))),
           "text_encoder": first({k: t for k, t in su.convert_ldm_clip_checkpoint(px).items()
                                  if "position_ids" not in k})}
    if te2 is not None:
        out["text_encoder_2"] = first(su.convert_open_clip_checkpoint(
            te2, px, prefix="conditioner.embedders.1.model."))
    return out


def config_folder(path, kind, u, v, te, te2, full):
    os.makedirs(path)
    src = os.path.join(FIX, kind)
    for d in ("tokenizer", "tokenizer_2", "scheduler"):
        if os.path.isdir(os.path.join(src, d)):
            shutil.copytree(os.path.join(src, d), os.path.join(path, d))
    if not full:
        return
    shutil.copy(os.path.join(src, "model_index.json"), path)
    u.save_config(os.path.join(path, "unet"))
    v.save_config(os.path.join(path, "vae"))
    te.config.save_pretrained(os.path.join(path, "text_encoder"))
    if te2 is not None:
        te2.config.save_pretrained(os.path.join(path, "text_encoder_2"))


def check_converted(kind, out, want, u, v, te, te2):
    parts = {"unet": (u, "diffusion_pytorch_model"), "vae": (v, "diffusion_pytorch_model"),
             "text_encoder": (te, "model")}
    if te2 is not None:
        parts["text_encoder_2"] = (te2, "model")
    n = 0
    for part, (m, w) in parts.items():
        ref = shapes(m.state_dict())
        got = first_two(os.path.join(out, part, w + ".safetensors"))
        names = {k.removeprefix("text_model.") if part == "text_encoder" else k: k for k in got}
        assert {k: got[names[k]][1] for k in names} == ref, (part, set(names) ^ set(ref))
        for k, (dt, _, vals) in got.items():
            assert dt == "F16", (part, k, dt)
            assert unmarker(*vals[:2]) == want[part][k], (part, k, vals, want[part][k])
            n += 1
    # the configs describe the real models
    uc = json.load(open(os.path.join(out, "unet", "config.json")))
    for k, val in UNET[kind].items():
        if k == "sample_size":
            continue
        got = uc.get(k)
        if isinstance(val, list) and isinstance(got, int):
            got = [got] * len(val)
        if k == "attention_head_dim" and isinstance(val, int):
            got = got if isinstance(got, int) else (got[0] if len(set(got)) == 1 else got)
        assert got == val, ("unet config", k, got, val)
    vc = json.load(open(os.path.join(out, "vae", "config.json")))
    for k, val in VAE.items():
        assert vc.get(k) == val, ("vae config", k, vc.get(k), val)
    for part, ref in (("text_encoder", CLIP_L), ("text_encoder_2", CLIP_G if te2 else None)):
        if ref:
            c = json.load(open(os.path.join(out, part, "config.json")))
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "max_position_embeddings", "hidden_act"):
                assert c.get(k) == ref[k], (part, k, c.get(k), ref[k])
            if part == "text_encoder_2":
                assert c.get("projection_dim") == ref["projection_dim"]
    return n


def main():
    tmp = tempfile.mkdtemp(prefix="mapo_sf_full.")
    try:
        for kind in ("sd15", "sdxl"):
            u, v, te, te2 = models(kind)
            ldm = check_python_mapping(kind, u, v, te, te2)
            f = os.path.join(tmp, f"{kind}.safetensors")
            codes = write_sparse(f, ldm)
            want = expected_codes(kind, ldm, codes, u, v, te, te2)
            for full in (True, False):
                cfg = os.path.join(tmp, f"cfg_{kind}_{int(full)}")
                config_folder(cfg, kind, u, v, te, te2, full)
                out = os.path.join(tmp, f"out_{kind}_{int(full)}")
                r = subprocess.run([MAPO, "convert", "--in", f, "--out", out, "--config_dir", cfg],
                                   capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
                n = check_converted(kind, out, want, u, v, te, te2)
                print(f"  {kind} ({'real configs' if full else 'mapo standard configs'}): "
                      f"{r.stderr.strip()}; {n} tensors named, shaped and routed as diffusers' "
                      f"converters do; configs describe the real models")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
