#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     python3 tools/make_clip_fixtures.py            # writes tests/fixtures/clip_text/<case>/
#     python3 tools/make_clip_fixtures.py --out DIR  # somewhere else
#
# Parity fixtures for the C implementation of transformers' CLIPTextModel and
# CLIPTextModelWithProjection (src/models/clip_text.c). Random-initialised tiny configs, weights
# perturbed (layer norms away from 1/0, projections larger than the default 0.02 init) so every
# layer and every branch changes the output. Per case:
#   model/                    config.json + model.safetensors, as the model class saves them
#   expect.safetensors        input_ids [B,S] I32, hidden_states.<i> for i = 0..L (0 = embeddings,
#                             i = output of layer i, before the final layer norm),
#                             last_hidden_state, pooler_output (+ text_embeds with projection)
# Cases:
#   te_quickgelu   CLIPTextModel, quick_gelu, eos_token_id 2 (SD 1.5's legacy config: pooled at
#                  argmax(ids)); S = 77 = max_position_embeddings; saved by transformers 5, whose
#                  CLIPTextModel has no "text_model." prefix in its state dict.
#                  Rows padded CLIP-L style (pad = end-of-text 999, argmax takes the first) and
#                  OpenCLIP style (pad = 0), one row of full length.
#   te2_gelu_proj  CLIPTextModelWithProjection, gelu, eos_token_id 777 (pooled at the first 777;
#                  ids above 777 occur, so the legacy argmax rule would pick other positions; one
#                  row repeats 777 as padding, one row has no 777 at all: transformers then pools
#                  position 0). Names carry the "text_model." prefix.
#   te_f16_legacy  CLIPTextModel saved in float16 in the layout transformers 4.x wrote (and
#                  every real SD / SDXL text_encoder has): "text_model." prefix plus the
#                  persistent buffer text_model.embeddings.position_ids (I64). Reference outputs
#                  from loading that folder back with transformers in float32.
import argparse
import json
import os
import shutil
import struct
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file

warnings.filterwarnings("ignore")
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

CASES = {
    "te_quickgelu": dict(
        seed=11, cls="CLIPTextModel", dtype="float32", legacy=False,
        cfg=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=1000, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, projection_dim=16, bos_token_id=0, eos_token_id=2,
                 pad_token_id=1),
        S=77,
        # (number of prompt tokens, padding id); rows are [998, tokens..., 999, pad...]
        rows=[(5, 999), (10, 0), (75, None)],
    ),
    "te2_gelu_proj": dict(
        seed=22, cls="CLIPTextModelWithProjection", dtype="float32", legacy=False,
        cfg=dict(hidden_size=40, intermediate_size=53, num_hidden_layers=2, num_attention_heads=5,
                 max_position_embeddings=24, vocab_size=1000, hidden_act="gelu",
                 layer_norm_eps=1e-5, projection_dim=24, bos_token_id=998, eos_token_id=777,
                 pad_token_id=0),
        S=20,
        rows=[(6, 0), (9, 777), (18, None), ("noeos", None)],
    ),
    "te_f16_legacy": dict(
        seed=33, cls="CLIPTextModel", dtype="float16", legacy=True,
        cfg=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, vocab_size=1000, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, projection_dim=32, bos_token_id=0, eos_token_id=2,
                 pad_token_id=1),
        S=16,
        rows=[(4, 999), (7, 0)],
    ),
}

BOS, EOT = 998, 999


def make_ids(case, g):
    eos = case["cfg"]["eos_token_id"]
    eot = EOT if eos == 2 else eos
    S = case["S"]
    rows = []
    for n, pad in case["rows"]:
        if n == "noeos":
            r = torch.randint(3, 997, (S,), generator=g)
            r[r == eot] = 5
        else:
            toks = torch.randint(3, 997, (n,), generator=g)
            toks[toks == eot] = 5
            r = torch.cat([torch.tensor([BOS]), toks, torch.tensor([eot])])
            if len(r) < S:
                r = torch.cat([r, torch.full((S - len(r),), pad)])
            assert len(r) == S
        rows.append(r)
    ids = torch.stack(rows).to(torch.int64)
    if eos != 2:
        # the fixture must tell the two pooling rules apart
        legacy = ids.argmax(-1)
        first = (ids == eos).int().argmax(-1)
        assert (legacy != first).any(), "ids do not distinguish argmax from first-eos pooling"
    return ids


def perturb(model, g):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                base = 1.0 if n.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif "embedding" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


_DT = {torch.float32: "F32", torch.int32: "I32", torch.int64: "I64", torch.float16: "F16"}


def tsave(d, path, md):
    """Byte-deterministic safetensors writer, tensors in sorted name order."""
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
    d = os.path.join(outdir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    mdir = os.path.join(d, "model")
    torch.manual_seed(case["seed"])
    g = torch.Generator().manual_seed(case["seed"])
    cfg = CLIPTextConfig(**case["cfg"])
    cls = CLIPTextModelWithProjection if case["cls"] == "CLIPTextModelWithProjection" else CLIPTextModel
    model = cls(cfg).eval()
    perturb(model, g)
    if case["dtype"] == "float16":
        model = model.half()
    model.save_pretrained(mdir, safe_serialization=True)
    wpath = os.path.join(mdir, "model.safetensors")
    if case["legacy"]:
        # rewrite in transformers 4.x's layout: "text_model." prefix + persistent position_ids
        with safe_open(wpath, "pt") as f:
            sd = {k: f.get_tensor(k).clone() for k in f.keys()}
        assert not any(k.startswith("text_model.") for k in sd)
        sd = {"text_model." + k: v for k, v in sd.items()}
        npos = case["cfg"]["max_position_embeddings"]
        sd["text_model.embeddings.position_ids"] = torch.arange(npos, dtype=torch.int64)[None]
        tsave(sd, wpath, {"format": "pt"})
    # the reference: what transformers computes from the saved folder, in float32
    ref = cls.from_pretrained(mdir, dtype=torch.float32).eval()
    with safe_open(wpath, "pt") as f:
        keys = list(f.keys())
        for n, p in ref.named_parameters():
            k = n if (n in keys) else "text_model." + n
            assert torch.equal(f.get_tensor(k).float(), p.detach()), f"{name}: {n} not loaded"
    ids = make_ids(case, g)
    with torch.no_grad():
        out = ref(input_ids=ids, output_hidden_states=True)
    L = case["cfg"]["num_hidden_layers"]
    hs = out.hidden_states
    assert len(hs) == L + 1
    exp = {"input_ids": ids.to(torch.int32), "last_hidden_state": out.last_hidden_state}
    for i, h in enumerate(hs):
        exp[f"hidden_states.{i}"] = h
    if case["cls"] == "CLIPTextModelWithProjection":
        exp["text_embeds"] = out.text_embeds
        # pooled output is not returned by WithProjection: recompute it as transformers does
        with torch.no_grad():
            exp["pooler_output"] = ref.text_model(input_ids=ids).pooler_output
            assert torch.allclose(ref.text_projection(exp["pooler_output"]), out.text_embeds)
    else:
        exp["pooler_output"] = out.pooler_output
    # sanity: last hidden state is the final layer norm of the last layer's output
    with torch.no_grad():
        ln = ref.final_layer_norm if hasattr(ref, "final_layer_norm") else ref.text_model.final_layer_norm
        assert torch.allclose(ln(hs[-1]), out.last_hidden_state, atol=1e-6)
    exp = {k: v.contiguous() for k, v in exp.items()}
    tsave(exp, os.path.join(d, "expect.safetensors"), {"case": name, "transformers": __import__("transformers").__version__})
    return ids


README = """# CLIP text encoder parity fixtures

Made by `python3 tools/make_clip_fixtures.py` (transformers 5.x, CPU, deterministic); read by
tests/test_clip_text.c. Each case: model/ (config.json + model.safetensors as transformers saves
it) and expect.safetensors (input_ids, hidden_states.0..L, last_hidden_state, pooler_output, and
text_embeds for CLIPTextModelWithProjection).

- te_quickgelu: CLIPTextModel, quick_gelu, eos_token_id 2 (legacy argmax pooling), S = 77.
- te2_gelu_proj: CLIPTextModelWithProjection, gelu, eos_token_id 777 (first-eos pooling; one row
  without eos pools position 0 as transformers does).
- te_f16_legacy: CLIPTextModel in float16 with the 4.x layout ("text_model." prefix and
  embeddings.position_ids), as real SD / SDXL text encoders are stored.
"""


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "clip_text"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, case in CASES.items():
        ids = build_case(name, case, a.out)
        print(f"{name}: ids {list(ids.shape)}")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(README)
    total = 0
    for root, _, files in os.walk(a.out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total fixture size under {os.path.normpath(a.out)}: {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
