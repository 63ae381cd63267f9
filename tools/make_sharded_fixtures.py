#!/usr/bin/env python3
# Writes tests/fixtures/sharded/, the reference files of tests/test_sharded.c and
# tests/cli/sharded.sh: a VAE and a CLIP text encoder saved sharded, as diffusers' / transformers'
# save_pretrained(max_shard_size=...) writes large models. Produced with (from the repository
# root; CPU only, deterministic, a few seconds; torch 2.x, diffusers, transformers, safetensors
# from pip):
#     python3 tools/make_sharded_fixtures.py
#
#   vae/plain/           a tiny random AutoencoderKL (block_out (4, 8), 2 groups, 4 latent
#                        channels: it fits tests/fixtures/pipeline/sd15's UNet, so
#                        tests/cli/sharded.sh swaps it into that pipeline), weights perturbed so
#                        every tensor matters; config.json + diffusion_pytorch_model.safetensors
#   vae/sharded/         the same model saved with max_shard_size="16KB": the F32 index
#                        diffusion_pytorch_model.safetensors.index.json + 4 shards, and in the
#                        same folder its .half() saved with variant="fp16" (the index name
#                        diffusers writes, diffusion_pytorch_model.safetensors.index.fp16.json,
#                        + 2 F16 shards), as a Hub repository holds both
#   text_encoder/plain/  a tiny random CLIPTextModelWithProjection ("text_model." names plus
#                        text_projection.weight), perturbed; config.json + model.safetensors
#   text_encoder/sharded/  the same with max_shard_size="8KB" (model.safetensors.index.json +
#                        3 shards) and its bfloat16 copy saved with variant="bf16"
#                        (model.safetensors.index.bf16.json + 2 BF16 shards)
#   expect.safetensors   reference outputs, all F32 (I32 ids):
#       vae.x [1,3,16,16] in [-1,1); vae.mean, vae.logvar: vae.encode(x).latent_dist of the F32
#       model; vae.z [1,4,8,8]; vae.dec = vae.decode(z). vae_fp16.mean / .logvar / .dec: the same
#       from AutoencoderKL.from_pretrained(vae/sharded, variant="fp16", torch_dtype=float32),
#       whose weights are exactly the float32 values of the F16 shards.
#       te.input_ids [2,8]; te.last_hidden_state [2,8,16], te.text_embeds [2,8] of the F32 model;
#       te_bf16.* the same from from_pretrained(text_encoder/sharded, variant="bf16",
#       dtype=float32).
# The script asserts that diffusers / transformers load each sharded folder (and variant) back to
# the plain model's weights (the half ones: to their .half() / .bfloat16() values).
import os
import shutil
import warnings

import torch

warnings.filterwarnings("ignore")
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import make_clip_fixtures  # noqa: E402  (perturb: the text encoder fixtures' weight draw)

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "sharded")


def perturbed_vae():
    torch.manual_seed(41)
    v = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8),
                      layers_per_block=1, norm_num_groups=2, sample_size=32,
                      scaling_factor=0.13025)
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for m in v.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        norms = {id(m.weight) for m in v.modules() if isinstance(m, torch.nn.GroupNorm)}
        norms |= {id(m.bias) for m in v.modules() if isinstance(m, torch.nn.GroupNorm)}
        for p in v.parameters():
            if id(p) not in norms:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return v.eval()


def perturbed_clip():
    torch.manual_seed(43)
    cfg = CLIPTextConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, vocab_size=64,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=8,
                         bos_token_id=62, eos_token_id=63, pad_token_id=0)
    m = CLIPTextModelWithProjection(cfg).eval()
    make_clip_fixtures.perturb(m, torch.Generator().manual_seed(44))
    return m


def same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), what
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{what}: {k}"


def listing(d):
    return sorted(os.listdir(d))


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    exp = {}
    # --- VAE
    v = perturbed_vae()
    vp, vs = os.path.join(ROOT, "vae", "plain"), os.path.join(ROOT, "vae", "sharded")
    v.save_pretrained(vp)
    v.save_pretrained(vs, max_shard_size="16KB")
    vh = perturbed_vae().half()
    vh.save_pretrained(vs, max_shard_size="16KB", variant="fp16")  # keeps the F32 shards
    assert "diffusion_pytorch_model.safetensors.index.json" in listing(vs), listing(vs)
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in listing(vs), listing(vs)
    same_weights(AutoencoderKL.from_pretrained(vs), v, "vae sharded")
    v16 = AutoencoderKL.from_pretrained(vs, variant="fp16", torch_dtype=torch.float32).eval()
    for k, w in v.state_dict().items():
        assert torch.equal(v16.state_dict()[k], w.half().float()), k
    g = torch.Generator().manual_seed(45)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    z = torch.randn(1, 4, 8, 8, generator=g)
    exp["vae.x"], exp["vae.z"] = x, z
    with torch.no_grad():
        for tag, m in (("vae", v), ("vae_fp16", v16)):
            d = m.encode(x).latent_dist
            exp[tag + ".mean"], exp[tag + ".logvar"] = d.mean, d.logvar
            exp[tag + ".dec"] = m.decode(z).sample
    # --- CLIP text encoder
    m = perturbed_clip()
    tp = os.path.join(ROOT, "text_encoder", "plain")
    ts = os.path.join(ROOT, "text_encoder", "sharded")
    m.save_pretrained(tp)
    m.save_pretrained(ts, max_shard_size="8KB")
    perturbed_clip().to(torch.bfloat16).save_pretrained(ts, max_shard_size="8KB", variant="bf16")
    # the bf16 save wrote its own config.json ("dtype": "bfloat16"): the folder keeps the F32 one
    shutil.copy(os.path.join(tp, "config.json"), os.path.join(ts, "config.json"))
    assert "model.safetensors.index.json" in listing(ts), listing(ts)
    assert "model.safetensors.index.bf16.json" in listing(ts), listing(ts)
    assert "model.safetensors" not in listing(ts)
    same_weights(CLIPTextModelWithProjection.from_pretrained(ts).eval(), m, "clip sharded")
    mb = CLIPTextModelWithProjection.from_pretrained(ts, variant="bf16", dtype=torch.float32).eval()
    for k, w in m.state_dict().items():
        assert torch.equal(mb.state_dict()[k], w.bfloat16().float()), k
    ids = torch.tensor([[62, 5, 17, 40, 63, 0, 0, 0],
                        [62, 9, 33, 12, 50, 21, 7, 63]], dtype=torch.int64)
    exp["te.input_ids"] = ids.to(torch.int32)
    with torch.no_grad():
        for tag, mm in (("te", m), ("te_bf16", mb)):
            o = mm(input_ids=ids)
            exp[tag + ".last_hidden_state"] = o.last_hidden_state
            exp[tag + ".text_embeds"] = o.text_embeds
    save_file({k: t.contiguous() for k, t in exp.items()}, os.path.join(ROOT, "expect.safetensors"))
    nv = sum(p.numel() for p in v.parameters())
    nt = sum(p.numel() for p in m.parameters())
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(ROOT) for f in fs)
    print(f"vae {nv} parameters, shards {listing(vs)}\ntext encoder {nt} parameters, shards "
          f"{listing(ts)}\n{size} bytes in all")


if __name__ == "__main__":
    main()
