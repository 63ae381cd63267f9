#!/usr/bin/env python3
# Command (from the repository root):
#     python3 tools/bench_torch.py                      # bench/bench_unet.json, 2 pairs, 32x32, mapo
#     python3 tools/bench_torch.py --loss dpo --threads 4 --config tests/fixtures/configs/sd15_unet.json
#
# PyTorch + diffusers side of the benchmark: times full MaPO (or Diffusion-DPO) training steps of a
# randomly initialised float32 UNet2DConditionModel on the CPU, the way the official MaPO script
# runs them: one noise tensor and one timestep per pair shared by chosen and rejected, DDPM
# add_noise (scaled_linear 0.00085..0.012, T = 1000), one UNet forward on the 2B batch (chosen half
# first), per-sample MSE, the loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad.
# DPO adds a frozen reference UNet forward under torch.no_grad().
# Prints one line of JSON. FLOPs: torch.utils.flop_counter.FlopCounterMode over one policy forward
# of the 2B batch (it counts matmul/conv/attention as 2*MACs; norms and elementwise ops are not
# counted); step_gflop = 3 x forward (forward + backward convention), + 1 x forward for DPO's
# reference model.
import argparse
import copy
import json
import os
import resource
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

T = 1000
BETA_MAPO = 0.1
SNR = 0.5
BETA_DPO = 5000.0


def mapo_loss(errors):
    lw, ll = errors.chunk(2)
    log_odds = (SNR * lw) / (torch.exp(SNR * lw) - 1) - (SNR * ll) / (torch.exp(SNR * ll) - 1)
    return lw.mean() - BETA_MAPO * F.logsigmoid(T * log_odds).mean()


def dpo_loss(errors, ref_errors):
    lw, ll = errors.chunk(2)
    rw, rl = ref_errors.chunk(2)
    inside = -0.5 * BETA_DPO * ((lw - ll) - (rw - rl))
    return -F.logsigmoid(inside).mean()


def rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(here, "..", "bench", "bench_unet.json"))
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--res", type=int, default=32, help="latent height = width")
    ap.add_argument("--seq", type=int, default=77)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss", choices=["mapo", "dpo"], default="mapo")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-flops", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    base_rss = rss_mb()  # after importing torch + diffusers, before the model exists
    with open(a.config) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).float().train()
    params = [p for p in unet.parameters()]
    nparams = sum(p.numel() for p in params)
    ref = None
    if a.loss == "dpo":
        ref = copy.deepcopy(unet)
        ref.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012)

    B, C, H = a.pairs, cfg.get("in_channels", 4), a.res
    D = cfg["cross_attention_dim"]
    sdxl = cfg.get("addition_embed_type") == "text_time"
    if sdxl:
        P = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]

    def make_batch():
        x0 = torch.randn(2 * B, C, H, H)              # chosen half first, then rejected
        eps = torch.randn(B, C, H, H).repeat(2, 1, 1, 1)
        t = torch.randint(0, T, (B,), dtype=torch.int64).repeat(2)
        prompt = torch.randn(B, a.seq, D).repeat(2, 1, 1)
        noisy = sched.add_noise(x0, eps, t)
        kw = {}
        if sdxl:
            kw["added_cond_kwargs"] = {
                "text_embeds": torch.randn(B, P).repeat(2, 1),
                "time_ids": torch.tensor([[H * 8.0, H * 8.0, 0.0, 0.0, H * 8.0, H * 8.0]]).repeat(2 * B, 1)}
        return noisy, t, prompt, eps, kw

    def step():
        noisy, t, prompt, target, kw = make_batch()
        pred = unet(noisy, t, prompt, **kw).sample
        errors = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if a.loss == "mapo":
            loss = mapo_loss(errors)
        else:
            with torch.no_grad():
                rpred = ref(noisy, t, prompt, **kw).sample
                ref_errors = F.mse_loss(rpred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            loss = dpo_loss(errors, ref_errors)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup):
        step()
    times, losses = [], []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)

    out = {"impl": "pytorch", "loss_type": a.loss, "loss": losses[-1], "pairs": B, "res": H,
           "seq": a.seq, "steps": a.steps, "pairs_per_s": B / step_s, "step_s": step_s,
           "step_s_min": min(times),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "import_rss_mb": base_rss,
           "params": nparams, "torch": torch.__version__, "threads": a.threads,
           "config": os.path.relpath(os.path.abspath(a.config))}

    if not a.no_flops:
        try:
            from torch.utils.flop_counter import FlopCounterMode
            noisy, t, prompt, _, kw = make_batch()
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                unet(noisy, t, prompt, **kw)
            fwd = fc.get_total_flops() / 1e9
            out["fwd_gflop"] = fwd
            out["step_gflop"] = 3 * fwd + (fwd if a.loss == "dpo" else 0.0)
            out["gflop_per_s"] = out["step_gflop"] / step_s
            out["fwd_gflop_by_op"] = {str(k).replace("aten.", ""): v / 1e9
                                      for k, v in fc.get_flop_counts().get("Global", {}).items()}
            # what autograd really runs (no input grad for conv_in): forward + backward, counted
            with FlopCounterMode(display=False) as fc2:
                pred = unet(noisy, t, prompt, **kw).sample
                F.mse_loss(pred, torch.zeros_like(pred)).backward()
            unet.zero_grad(set_to_none=True)
            out["fwd_bwd_gflop_counted"] = fc2.get_total_flops() / 1e9
        except Exception as e:  # pragma: no cover
            out["flop_error"] = repr(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
