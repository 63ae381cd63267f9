#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic; after make_unet_fixtures.py):
#     python3 tools/make_bf16_fixtures.py            # writes tests/fixtures/unet/<case>/autocast_bf16.safetensors
#     python3 tools/make_bf16_fixtures.py --cases sd15 --out DIR
#
# The yardstick of `--mixed_precision bf16` (issue 8): how far PyTorch's own bf16 mixed precision,
# torch.autocast("cpu", dtype=torch.bfloat16), lands from the float32 reference of the parity
# fixtures. For each case (sd15, sdxl, mixed, attn32) we load the committed model/ and
# batch.safetensors (the files the C test loads), run the MaPO objective of make_unet_fixtures.py (same forward,
# errors_of, mapo_loss, grads_of) as the official MaPO training script does under accelerate's
# bf16 autocast:
#     with torch.autocast("cpu", dtype=torch.bfloat16):
#         model_pred = unet(...)                              # bf16 activations
#         errors = mse(model_pred.float(), target.float())    # float32, as the official script
#         loss = mapo(errors)                                 # float32
#     loss.backward()                                         # outside autocast, as accelerate does
# with float32 parameters (autocast casts a bf16 copy of each weight per op; masters and their
# .grad stay float32), and store per tensor name n (model_pred, errors, loss, grad.<param>) the
# relative L2 error against expect_mapo.safetensors,
#     relerr.<n> = ||autocast - ref||_2 / ||ref||_2      (float64 scalar, computed in float64)
# and, as the spread of that one draw of the rounding errors,
#     relerr_max.<n> = the largest such error over it and REALIZATIONS perturbed copies of the
#                      problem (parameters and inputs x (1 + U(-1,1) 2^-8), each copy against its
#                      own float32 run)
# and nothing else (the fixture stays small: 50-130 kB, mostly the header's tensor names).
# tests/test_bf16_parity.c requires mapo's bf16 error per tensor to be at most
# max(1.5 x relerr_max, 1e-4), and the median over tensors of mapo / relerr and model_pred's
# mapo / relerr to be at most 1.5 (the reasons are there).
# Takes ~2 minutes on 2 threads.
import argparse
import copy
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_unet_fixtures as M  # noqa: E402  (sets 2 threads, deterministic algorithms)
import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

# The float32 run in this process must reproduce expect_mapo.safetensors (the reference was made
# by the same code; the README's alignment note puts the difference at ~1e-6): a larger gap means
# the model or batch on disk is not what the reference was computed from.
F32_REPRO_TOL = 1e-4

# Perturbed copies measured for relerr_max (see perturbed()).
REALIZATIONS = 8

# What torch's CPU autocast runs in bf16 here (traced with a TorchDispatchMode on these UNets):
# the listed ops get bf16 operands (weights cast per call); as their outputs are bf16, everything
# downstream of them -- group_norm / layer_norm (float32 weights, bf16 in and out), silu, gelu,
# residual adds, upsampling, the attention-internal div -- also runs on bf16 activations, and
# their backward on bf16 gradients. Only the timestep sinusoid (sin, cos), the errors and the loss
# stay float32.
AUTOCAST_OPS = ("convolution (conv_in/out, resnets, conv proj_in/out, down/upsamplers), "
                "addmm/mm (every nn.Linear: time/add embedding, to_q/k/v/out, ff, linear proj), "
                "_scaled_dot_product_flash_attention_for_cpu (attention QK^T, softmax, PV)")


def load_case(d):
    """The committed policy model and batch, as the C test loads them. The batch tensors are
    cloned: torch's CPU kernels round differently on the mmap'd (unaligned) buffers of load_file,
    after .clone() the float32 forward matches the reference bit for bit (fixture README)."""
    model = UNet2DConditionModel.from_pretrained(os.path.join(d, "model")).float()
    model.train()  # as make_model leaves it (no dropout in these configs either way)
    batch = {k: v.clone() for k, v in load_file(os.path.join(d, "batch.safetensors")).items()}
    return model, batch


def mapo_step(model, batch, autocast):
    """forward + MaPO loss (+ backward outside autocast); float32 results and gradients."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        pred = M.forward(model, batch)
        err = M.errors_of(pred, batch["target"])  # pred.float(): errors in float32
        loss, _ = M.mapo_loss(err)
    assert err.dtype == torch.float32 and loss.dtype == torch.float32
    g, missing = M.grads_of(model, loss)
    assert not missing, missing
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and g["grad." + n].dtype == torch.float32, n
    out = {"model_pred": pred.detach(), "errors": err.detach(), "loss": loss.detach().reshape(1), **g}
    return out, pred.dtype


def relerr(a, ref):
    a, ref = a.double().flatten(), ref.double().flatten()
    num, den = torch.linalg.vector_norm(a - ref).item(), torch.linalg.vector_norm(ref).item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def perturbed(model, batch, seed):
    """A nearby copy of the problem: every parameter and every float input multiplied by
    (1 + u * 2^-8), u ~ U(-1, 1) from a fixed seed -- about one bf16 ulp, so that the bf16 rounding
    of weights and activations falls differently (an independent draw of the rounding errors)
    while the float32 problem moves by ~0.2 %. Pairs keep sharing their prompt."""
    g = torch.Generator().manual_seed(seed)
    jig = lambda t: t * (1 + (2 * torch.rand(t.shape, generator=g, dtype=torch.float64) - 1) * 2.0**-8).to(t.dtype)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(jig(p))
    b = dict(batch)
    b["sample"] = jig(batch["sample"]).contiguous()
    n = batch["sample"].shape[0] // 2
    for k in ("encoder_hidden_states", "text_embeds"):
        if k in batch:
            h = jig(batch[k][:n])
            b[k] = torch.cat([h, h]).contiguous()
    return m, b


def build_case(name, outdir, realizations):
    d = os.path.join(outdir, name)
    ref = load_file(os.path.join(d, "expect_mapo.safetensors"))
    model, batch = load_case(d)

    f32, _ = mapo_step(model, batch, autocast=False)
    names = [k for k in sorted(f32)]
    repro = max(relerr(f32[k], ref[k]) for k in names)
    if not repro <= F32_REPRO_TOL:
        sys.exit(f"{name}: float32 rerun differs from expect_mapo by {repro:.3e}: "
                 "regenerate with make_unet_fixtures.py first")

    bf, pred_dtype = mapo_step(model, batch, autocast=True)
    again, _ = mapo_step(model, batch, autocast=True)
    assert all(torch.equal(bf[k], again[k]) for k in names), f"{name}: autocast run not deterministic"
    assert set(bf) == set(ref) - {"log_odds"}, f"{name}: tensor names differ from expect_mapo"

    out, errs = {}, {}
    for k in names:
        errs[k] = relerr(bf[k], ref[k])
        out["relerr." + k] = torch.tensor(errs[k], dtype=torch.float64)

    # The spread of that error: the same measurement on `realizations` perturbed copies (each
    # against its own float32 run). relerr_max.<n> is the largest of the 1 + realizations values.
    emax = dict(errs)
    seed0 = M.CASES[name]["seed"] + 7000 if name in M.CASES else 7000
    for r in range(1, realizations + 1):
        pm, pb = perturbed(model, batch, seed0 + r)
        pf, _ = mapo_step(pm, pb, autocast=False)
        pa, _ = mapo_step(pm, pb, autocast=True)
        for k in names:
            emax[k] = max(emax[k], relerr(pa[k], pf[k]))
    for k in names:
        out["relerr_max." + k] = torch.tensor(emax[k], dtype=torch.float64)

    grads = {k: v for k, v in errs.items() if k.startswith("grad.")}
    zero = [k for k, v in errs.items() if v == 0.0]
    md = {
        "what": "relerr.<name> = ||torch autocast bf16 - float32 reference|| / ||reference|| "
                "(expect_mapo.safetensors), MaPO objective; relerr_max.<name> = the largest such "
                "error over this and `realizations` perturbed copies (params and inputs x (1 + "
                "U(-1,1) 2^-8)), each against its own float32 run",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "autocast": 'torch.autocast("cpu", dtype=torch.bfloat16), backward outside; '
                    "errors and loss float32 (model_pred.float()); float32 master weights",
        "autocast_bf16_ops": AUTOCAST_OPS,
        "model_pred_dtype": str(pred_dtype).replace("torch.", ""),
        "realizations": str(realizations),
        "threads": str(torch.get_num_threads()),
        "cpu_bf16_native": str(bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())),
        "f32_rerun_relerr": f"{repro:.3e}",
        "tensors": str(len(names)),
        "zero_error_tensors": ",".join(zero),
    }
    M._DT.setdefault(torch.float64, "F64")  # make_unet_fixtures' byte-deterministic writer
    M.tsave(out, os.path.join(d, "autocast_bf16.safetensors"), md)

    gv = sorted(grads.values())
    spread = sorted(emax[k] / errs[k] for k in names if errs[k] > 0)
    print(f"{name}: model_pred {errs['model_pred']:.3e} ({md['model_pred_dtype']}), errors "
          f"{errs['errors']:.3e}, loss {errs['loss']:.3e}; {len(gv)} grads {gv[0]:.3e} .. "
          f"{gv[-1]:.3e} (median {gv[len(gv) // 2]:.3e}); float32 rerun {repro:.1e}; "
          f"exactly-zero errors: {len(zero)}; relerr_max / relerr median {spread[len(spread) // 2]:.2f}"
          f" max {spread[-1]:.2f}")
    worst = sorted(grads.items(), key=lambda kv: -kv[1])[:3]
    best = sorted(grads.items(), key=lambda kv: kv[1])[:3]
    print("   largest: " + ", ".join(f"{k[5:]} {v:.2e}" for k, v in worst))
    print("   smallest: " + ", ".join(f"{k[5:]} {v:.2e}" for k, v in best))
    return {"relerr": errs, "relerr_max": emax}


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "unet"))
    ap.add_argument("--cases", default=",".join(M.CASES))
    ap.add_argument("--realizations", type=int, default=REALIZATIONS)
    ap.add_argument("--json", help="also write every relative error to this JSON file")
    a = ap.parse_args()
    allerr = {}
    for name in a.cases.split(","):
        allerr[name] = build_case(name, a.out, a.realizations)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(allerr, f, indent=1)


if __name__ == "__main__":
    main()
