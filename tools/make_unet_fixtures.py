#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic):
#     python3 tools/make_unet_fixtures.py            # writes tests/fixtures/unet/<case>/
#     python3 tools/make_unet_fixtures.py --out DIR  # somewhere else
#
# Parity fixtures for the C implementation of diffusers' UNet2DConditionModel and of the
# MaPO / Diffusion-DPO / SFT objectives (docs/METHOD.md, MaPO). Everything is float32.
# Per case (sd15, sdxl, mixed):
#   model/   config.json + diffusion_pytorch_model.safetensors   (policy, perturbed random init)
#   ref/     same config, different seed                          (frozen reference for DPO)
#   batch.safetensors        sample, timestep, encoder_hidden_states, target
#                            (+ text_embeds, time_ids for SDXL-shaped; + x0, noise, alphas_cumprod)
#   expect_{mapo,dpo,sft}.safetensors  model_pred, errors, loss, grad.<param> (+ ref_errors for dpo)
#   expect_adamw.safetensors 3 AdamW steps of the MaPO loss on the same batch
#   case.json                shapes, prediction type, parameter count, hyper-parameters
import argparse
import copy
import json
import os
import struct
import sys
import warnings

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

warnings.filterwarnings("ignore")
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

B = 2            # pairs; 2B samples
S = 7            # prompt tokens
T = 1000         # num_train_timesteps
BETA_MAPO = 0.1
SNR = 0.5
BETA_DPO = 5000.0
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
MAX_GRAD_NORM = 1.0
ADAMW_STEPS = 3

CASES = {
    "sd15": dict(
        seed=1001, close=0.05, H=8, W=8, P=0, prediction_type="epsilon",
        cfg=dict(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[8, 16], layers_per_block=1,
            attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4,
            use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0,
        ),
    ),
    "sdxl": dict(
        seed=2002, close=0.01, H=8, W=8, P=16, prediction_type="epsilon",
        cfg=dict(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[8, 8, 8], layers_per_block=1,
            transformer_layers_per_block=[1, 1, 2], attention_head_dim=[1, 2, 4],
            cross_attention_dim=24, norm_num_groups=4, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 16,
            flip_sin_to_cos=True, freq_shift=0,
        ),
    ),
    "mixed": dict(
        seed=3003, close=0.05, H=8, W=12, P=0, prediction_type="v_prediction",
        cfg=dict(
            sample_size=8, in_channels=4, out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[8, 8, 8], layers_per_block=2,
            attention_head_dim=[2, 4, 4], cross_attention_dim=20, norm_num_groups=4,
            use_linear_projection=False, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
        ),
    ),
    # For tests/test_bf16_parity.c only (bf16_only: model/, batch, expect_mapo, case.json): the
    # other cases' heads are narrower than 32, where mapo's bf16 attention keeps its float32
    # kernel (BF16_MIN_DH, src/ops/engine_attention.c). Here the mid block's attentions have one
    # head of dim 32 over a 16x20 latent (self-attention 320 x 320: two query tiles of the bf16
    # kernel, 192 + 128 rows, where a score tile holds 2^16 floats, one on a 2 MiB L2;
    # cross-attention 320 x 7). One block keeps it small (182,820
    # parameters: a 32-channel UNet's floor is the 128-wide time embedding and the mid block).
    "attn32": dict(
        seed=4004, close=0.05, H=16, W=20, P=0, prediction_type="epsilon", bf16_only=True,
        cfg=dict(
            sample_size=16, in_channels=4, out_channels=4,
            down_block_types=["DownBlock2D"], up_block_types=["UpBlock2D"],
            block_out_channels=[32], layers_per_block=1,
            attention_head_dim=1, cross_attention_dim=32, norm_num_groups=8,
            use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0,
        ),
    ),
}


def meta(loss, extra=None):
    m = {"loss_type": loss, "beta_mapo": repr(BETA_MAPO), "snr_value": repr(SNR),
         "num_train_timesteps": str(T), "beta_dpo": repr(BETA_DPO),
         "beta_schedule": "scaled_linear", "beta_start": "0.00085", "beta_end": "0.012",
         "pairs": str(B), "dtype": "float32", "torch": torch.__version__}
    if extra:
        m.update({k: str(v) for k, v in extra.items()})
    return m


def make_model(cfg, seed):
    """Random init with a fixed seed, then perturb every parameter so that zero-initialised or
    constant layers (norm weights = 1, biases = 0) cannot hide bugs."""
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**cfg).float()
    g = torch.Generator().manual_seed(seed + 17)
    norm_params = set()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if mod.weight is not None:
                    mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                    norm_params.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                    norm_params.add(id(mod.bias))
        for _, p in model.named_parameters():
            if id(p) not in norm_params:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.train()
    return model


def make_batch(case, cfg, sched):
    C = cfg["in_channels"]
    H, W, P = case["H"], case["W"], case["P"]
    D = cfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(case["seed"] + 101)
    x0_w = torch.randn(B, C, H, W, generator=g)
    x0_l = torch.randn(B, C, H, W, generator=g)
    # Pair 1: a rejected image close to the chosen one, so that the sigmoids of MaPO and DPO see
    # a moderate argument for that pair (pair 0 is typically saturated with T=1000 / beta=5000).
    x0_l[1] = x0_w[1] + case["close"] * torch.randn(C, H, W, generator=g)
    eps = torch.randn(B, C, H, W, generator=g)
    t = torch.randint(0, T, (B,), generator=g, dtype=torch.int64)
    prompt = torch.randn(B, S, D, generator=g)

    x0 = torch.cat([x0_w, x0_l])
    noise = torch.cat([eps, eps])
    timesteps = torch.cat([t, t])
    sample = sched.add_noise(x0, noise, timesteps)
    if case["prediction_type"] == "epsilon":
        target = noise.clone()
    else:
        target = sched.get_velocity(x0, noise, timesteps)
    batch = {
        "sample": sample.float().contiguous(),
        "timestep": timesteps.contiguous(),
        "encoder_hidden_states": torch.cat([prompt, prompt]).contiguous(),
        "target": target.float().contiguous(),
        "x0": x0.contiguous(),
        "noise": noise.contiguous(),
        "alphas_cumprod": sched.alphas_cumprod.float().contiguous(),
    }
    if P:
        text = torch.randn(B, P, generator=g)
        # original_size (h, w), crop_top_left (y, x), target_size (h, w)
        tid = torch.tensor([[1024.0, 768.0, 0.0, 32.0, 1024.0, 1024.0],
                            [512.0, 896.0, 48.0, 0.0, 1024.0, 1024.0]])[:B]
        batch["text_embeds"] = torch.cat([text, text]).contiguous()
        batch["time_ids"] = torch.cat([tid, tid]).contiguous()
    return batch


def forward(model, batch):
    kw = {}
    if "text_embeds" in batch:
        kw["added_cond_kwargs"] = {"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]}
    return model(batch["sample"], batch["timestep"], batch["encoder_hidden_states"], **kw,
                 return_dict=False)[0]


def errors_of(pred, target):
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])


def mapo_loss(errors):
    lw, ll = errors.chunk(2)
    log_odds = (SNR * lw) / (torch.exp(SNR * lw) - 1) - (SNR * ll) / (torch.exp(SNR * ll) - 1)
    ratio_losses = T * log_odds
    loss = lw.mean() - BETA_MAPO * F.logsigmoid(ratio_losses).mean()
    return loss, {"log_odds": log_odds.detach()}


def dpo_loss(errors, ref_errors):
    lw, ll = errors.chunk(2)
    rw, rl = ref_errors.chunk(2)
    inside = -0.5 * BETA_DPO * ((lw - ll) - (rw - rl))
    loss = -F.logsigmoid(inside).mean()
    return loss, {"inside": inside.detach()}


def sft_loss(errors):
    lw, _ = errors.chunk(2)
    return lw.mean(), {}


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    out, missing = {}, []
    for n, p in model.named_parameters():
        if p.grad is None:
            missing.append(n)
            out["grad." + n] = torch.zeros_like(p)
        else:
            out["grad." + n] = p.grad.detach().clone().contiguous()
    return out, missing


_DT = {torch.float32: "F32", torch.int64: "I64"}


def tsave(d, path, md):
    """Byte-deterministic safetensors writer (safetensors' own save_file serialises the metadata
    map in hash order, so regenerated files would differ byte-wise). Tensors in sorted name order."""
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
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type=case["prediction_type"])

    model = make_model(cfg, case["seed"])
    init_state = copy.deepcopy(model.state_dict())
    model.save_pretrained(os.path.join(d, "model"), safe_serialization=True)
    only_mapo = case.get("bf16_only", False)
    if not only_mapo:
        ref = make_model(cfg, case["seed"] + 500)
        ref.save_pretrained(os.path.join(d, "ref"), safe_serialization=True)
        for p in ref.parameters():
            p.requires_grad_(False)

    batch = make_batch(case, cfg, sched)
    tsave(batch, os.path.join(d, "batch.safetensors"),
          meta("batch", {"prediction_type": case["prediction_type"]}))

    info = {}
    # ---- MaPO
    pred = forward(model, batch)
    err = errors_of(pred, batch["target"])
    loss, aux = mapo_loss(err)
    g, missing = grads_of(model, loss)
    out = {"model_pred": pred.detach(), "errors": err.detach(), "loss": loss.detach().reshape(1),
           "log_odds": aux["log_odds"], **g}
    tsave(out, os.path.join(d, "expect_mapo.safetensors"), meta("mapo"))
    info["mapo"] = dict(loss=loss.item(), sigmoid_arg=(T * aux["log_odds"]).tolist(),
                        errors=err.tolist(), missing_grads=missing)
    if only_mapo:
        return write_case_json(name, case, cfg, model, batch, info, d)

    # ---- Diffusion-DPO
    with torch.no_grad():
        ref_err = errors_of(forward(ref, batch), batch["target"])
    pred = forward(model, batch)
    err = errors_of(pred, batch["target"])
    loss, aux = dpo_loss(err, ref_err)
    g, missing = grads_of(model, loss)
    out = {"model_pred": pred.detach(), "errors": err.detach(), "ref_errors": ref_err,
           "loss": loss.detach().reshape(1), "inside": aux["inside"], **g}
    tsave(out, os.path.join(d, "expect_dpo.safetensors"), meta("dpo"))
    info["dpo"] = dict(loss=loss.item(), inside=aux["inside"].tolist(), ref_errors=ref_err.tolist(),
                       missing_grads=missing)

    # ---- SFT (chosen only)
    pred = forward(model, batch)
    err = errors_of(pred, batch["target"])
    loss, _ = sft_loss(err)
    g, missing = grads_of(model, loss)
    # the rejected half gets no gradient in SFT, but every parameter still does
    out = {"model_pred": pred.detach(), "errors": err.detach(), "loss": loss.detach().reshape(1), **g}
    tsave(out, os.path.join(d, "expect_sft.safetensors"), meta("sft"))
    info["sft"] = dict(loss=loss.item(), missing_grads=missing)

    # ---- AdamW, 3 steps of MaPO on the same batch
    model.load_state_dict(init_state)
    model.zero_grad(set_to_none=True)
    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=ADAMW["betas"],
                            weight_decay=ADAMW["weight_decay"], eps=ADAMW["eps"], foreach=False)
    losses, norms = [], []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        pred = forward(model, batch)
        loss, _ = mapo_loss(errors_of(pred, batch["target"]))
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        losses.append(loss.item())
        norms.append(float(gn))
    out = {"losses": torch.tensor(losses, dtype=torch.float32),
           "grad_norms": torch.tensor(norms, dtype=torch.float32)}
    for n, p in model.named_parameters():
        out["param." + n] = p.detach().clone()
    tsave(out, os.path.join(d, "expect_adamw.safetensors"),
          meta("mapo", {"optimizer": "AdamW", "lr": ADAMW["lr"], "beta1": ADAMW["betas"][0],
                        "beta2": ADAMW["betas"][1], "weight_decay": ADAMW["weight_decay"],
                        "eps": ADAMW["eps"], "max_grad_norm": MAX_GRAD_NORM,
                        "steps": ADAMW_STEPS}))
    info["adamw"] = dict(losses=losses, grad_norms=norms)
    return write_case_json(name, case, cfg, model, batch, info, d)


def write_case_json(name, case, cfg, model, batch, info, d):
    nparams = sum(p.numel() for p in model.parameters())
    cj = {
        "case": name, "B": B, "C": cfg["in_channels"], "H": case["H"], "W": case["W"], "S": S,
        "D": cfg["cross_attention_dim"], "P": case["P"], "prediction_type": case["prediction_type"],
        "params": nparams, "param_tensors": len(list(model.parameters())),
        "seed": case["seed"], "ref_seed": case["seed"] + 500,
        "num_train_timesteps": T, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012,
        "beta_mapo": BETA_MAPO, "snr_value": SNR, "beta_dpo": BETA_DPO,
        "adamw": {"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]),
                  "weight_decay": ADAMW["weight_decay"], "eps": ADAMW["eps"],
                  "max_grad_norm": MAX_GRAD_NORM, "steps": ADAMW_STEPS},
        "timesteps": batch["timestep"].tolist(),
        "summary": info,
        "torch": torch.__version__,
    }
    if case.get("bf16_only"):  # no ref/, DPO or AdamW files
        for k in ("ref_seed", "beta_dpo", "adamw"):
            del cj[k]
        cj["files"] = "model/, batch.safetensors, expect_mapo.safetensors (bf16_only)"
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(cj, f, indent=1)
    return cj


README = """# UNet parity fixtures

Made by `python3 tools/make_unet_fixtures.py` (CPU, torch.set_num_threads(2), deterministic,
float32; diffusers UNet2DConditionModel). Each case directory holds:

- `model/` (config.json + diffusion_pytorch_model.safetensors): policy UNet, random init with a fixed
  seed, every parameter perturbed (norm weights 1 + 0.1*randn, norm biases 0.1*randn, everything
  else += 0.02*randn) so zero-init or constant layers do not hide bugs.
- `ref/`: same config, different seed: the frozen reference for Diffusion-DPO.
- `batch.safetensors`: B = 2 pairs, 2B = 4 samples, chosen half first. `sample` [4,C,H,W] = DDPM
  add_noise(x0, noise, t) with scaled_linear betas 0.00085..0.012, T = 1000; `noise` and `timestep`
  shared within a pair (i and i+B); `encoder_hidden_states` [4,7,D] shared within a pair; `target`
  [4,C,H,W] (= noise, or v for v_prediction); SDXL-shaped: `text_embeds` [4,P], `time_ids` [4,6].
  Also `x0`, `noise` [4,C,H,W] and `alphas_cumprod` [1000] (float32 as diffusers computes them).
  Pair 1's rejected latent is chosen latent + small noise so that the sigmoids see moderate arguments.
- `expect_{mapo,dpo,sft}.safetensors`: `model_pred` [4,C,H,W], `errors` [4], `loss` [1],
  `grad.<diffusers parameter name>` for every parameter. dpo adds `ref_errors` [4] and `inside` [2];
  mapo adds `log_odds` [2] (before the T factor).
- `expect_adamw.safetensors`: 3 steps from model/ on the same batch, MaPO loss, each step zero_grad,
  forward, backward, clip_grad_norm_(1.0), torch.optim.AdamW(foreach=False) step. `losses` [3] (before
  each update), `grad_norms` [3] (total norm before clipping, as clip_grad_norm_ returns it),
  `param.<name>` after the 3 steps.
- `case.json`: B, C, H, W, S, D, P, prediction type, parameter count, hyper-parameters, and a summary
  of the values (sigmoid arguments, losses).

Hyper-parameters (also in each safetensors' metadata, as strings):
MaPO beta_mapo = 0.1, snr_value = 0.5, T = 1000:
  lw, ll = errors.chunk(2); log_odds = (s*lw)/(exp(s*lw)-1) - (s*ll)/(exp(s*ll)-1)
  loss = lw.mean() - beta_mapo * logsigmoid(T*log_odds).mean()
Diffusion-DPO beta_dpo = 5000: inside = -0.5*beta*((lw-ll)-(rw-rl)); loss = -logsigmoid(inside).mean()
SFT: loss = lw.mean()
AdamW lr 1e-3, betas (0.9, 0.999), weight_decay 1e-2, eps 1e-8; max_grad_norm 1.0.

Precision: torch's CPU kernels round differently depending on memory alignment: running the saved
model on the batch as loaded from batch.safetensors (mmap'd, not 64-byte aligned) differs from
model_pred by up to ~1e-6 absolute; after .clone() it matches bit for bit. Compare with tolerances.

Cases: sd15 (SD-1.5-shaped, conv proj_in/proj_out), sdxl (SDXL-shaped: linear projections,
transformer_layers_per_block [1,1,2], text_time added conditioning), mixed (conv projections,
layers_per_block 2, per-block head counts, flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6,
8x12 latent, v_prediction); attn32 (for tests/test_bf16_parity.c only, so only `model/`,
`batch.safetensors`, `expect_mapo.safetensors` and `case.json`: one 32-channel block, DownBlock2D /
UpBlock2D, so the only attentions are the mid block's, one head of dim 32 -- the other cases' heads
are narrower than 32, where mapo's bf16 attention keeps its float32 kernel -- over a 16x20 latent,
cross_attention_dim 32).
"""


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "unet"))
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in a.cases.split(","):
        case = CASES[name]
        cj = build_case(name, case, a.out)
        s = cj["summary"]
        line = (f"{name}: params {cj['params']} ({cj['param_tensors']} tensors); "
                f"mapo loss {s['mapo']['loss']:.6f} arg {[round(x, 3) for x in s['mapo']['sigmoid_arg']]}")
        if case.get("bf16_only"):
            print(line + " (MaPO only)")
            if s["mapo"]["missing_grads"]:
                print(f"  WARNING {name}/mapo: no gradient for {s['mapo']['missing_grads']}",
                      file=sys.stderr)
            continue
        print(line + "; "
              f"dpo loss {s['dpo']['loss']:.6f} inside {[round(x, 3) for x in s['dpo']['inside']]}; "
              f"sft {s['sft']['loss']:.6f}; adamw losses {[round(x, 6) for x in s['adamw']['losses']]}")
        for k in ("mapo", "dpo", "sft"):
            if s[k]["missing_grads"]:
                print(f"  WARNING {name}/{k}: no gradient for {s[k]['missing_grads']}", file=sys.stderr)
    # keep the sections other scripts own (from "## autocast_bf16", make_bf16_fixtures.py's)
    readme, tail = os.path.join(a.out, "README.md"), ""
    if os.path.exists(readme):
        old = open(readme).read()
        k = old.find("\n## autocast_bf16")
        tail = old[k:] if k >= 0 else ""
    with open(readme, "w") as f:
        f.write(README.rstrip("\n") + "\n" + tail if tail else README)
    total = 0
    for root, _, files in os.walk(a.out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total fixture size under {os.path.normpath(a.out)}: {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
