#!/usr/bin/env python3
# Command (from the repository root):
#     python3 tools/bench_torch.py                      # bench/bench_unet.json, 2 pairs, 32x32, mapo
#     python3 tools/bench_torch.py --loss dpo --threads 4 --config tests/fixtures/configs/sd15_unet.json
#     python3 tools/bench_torch.py --mixed_precision bf16 --gradient_checkpointing --lora_rank 8
#     python3 tools/bench_torch.py --mixed_precision bf16 --check   # bf16 vs float32 loss, on stderr
#
# PyTorch + diffusers side of the benchmark: times full MaPO (or Diffusion-DPO) training steps of a
# randomly initialised float32 UNet2DConditionModel on the CPU, the way the official MaPO script
# runs them: one noise tensor and one timestep per pair shared by chosen and rejected, DDPM
# add_noise (scaled_linear 0.00085..0.012, T = 1000), one UNet forward on the 2B batch (chosen half
# first), per-sample MSE, the loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad.
# DPO adds a frozen reference UNet forward under torch.no_grad().
#
# --mixed_precision bf16: the forward and the loss run under torch.autocast("cpu", bfloat16) with
#   float32 master weights and float32 AdamW, as accelerate's mixed_precision="bf16" does for the
#   official MaPO script; errors and loss are computed on .float() copies as that script does.
# --gradient_checkpointing: unet.enable_gradient_checkpointing() with a checkpoint function
#   (torch.utils.checkpoint, use_reentrant=False, as diffusers' default) that counts its calls:
#   "checkpointed_calls_per_step" in the JSON; diffusers only checkpoints when
#   torch.is_grad_enabled() and the block's flag is set, and this script exits if no call happened.
# --lora_rank R: peft LoRA (r = lora_alpha = R, gaussian init) on to_q/to_k/to_v/to_out.0 as the
#   official / diffusers LoRA scripts, only the adapters trained. The frozen weights stay float32:
#   the scripts' unet.to(bfloat16) fails on CPU (GroupNorm refuses bfloat16 parameters under CPU
#   autocast when its input is float32).
# --check: before timing, one batch through the same weights in float32 and under bf16 autocast;
#   prints the relative differences of the losses, of the per-sample errors and of the UNet
#   predictions to stderr (the errors average ~4k squared differences each, so their bf16 noise
#   mostly cancels: the loss differs by ~1e-4..1e-3 while the prediction differs by ~1e-2). With
#   --loss dpo the check says 0 for the loss: before any step the policy is the reference, both
#   run in the same precision, and the loss is exactly log 2.
#
# Memory: rss_base_mb = VmRSS after importing torch + diffusers (+ peft), before anything is built;
# peak_rss_mb = the process's high-water mark (ru_maxrss) right after the timed steps (before the
# FLOP-counting passes); train_mem_mb = peak_rss_mb - rss_base_mb.
#
# Prints one line of JSON. FLOPs: torch.utils.flop_counter.FlopCounterMode over one policy forward
# of the 2B batch (it counts matmul/conv/attention as 2*MACs; norms and elementwise ops are not
# counted); step_gflop = 3 x forward (forward + backward convention), + 1 x forward for DPO's
# reference model.
import argparse
import copy
import json
import os
import resource
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

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


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux; VmHWM says the same, and is taken when larger
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024.0)
    except OSError:
        pass
    return peak


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
    ap.add_argument("--mixed_precision", choices=["no", "bf16"], default="no")
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--lora_rank", type=int, default=0, help="train peft LoRA adapters of this rank only (0: full)")
    ap.add_argument("--check", action="store_true",
                    help="print to stderr the bf16-autocast loss against the float32 loss on one batch")
    a = ap.parse_args()

    if a.lora_rank > 0:
        from peft import LoraConfig  # imported before rss_base_mb: an import, not training memory
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    base_rss = rss_mb()  # after importing torch + diffusers, before the model exists
    with open(a.config) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).float().train()
    bf16 = a.mixed_precision == "bf16"

    ref = None
    if a.loss == "dpo":
        ref = copy.deepcopy(unet)  # frozen float32 copy of the initial (base) model
        ref.requires_grad_(False)
    if a.lora_rank > 0:
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=a.lora_rank, lora_alpha=a.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)  # float32 master weights
    nparams = sum(p.numel() for p in unet.parameters())
    ntrained = sum(p.numel() for p in params)

    ckpt_calls = [0]
    if a.gradient_checkpointing:
        def counting_checkpoint(module, *args):
            ckpt_calls[0] += 1
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)
        unet.enable_gradient_checkpointing(counting_checkpoint)

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

    def forward_loss(batch, autocast_on):
        noisy, t, prompt, target, kw = batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_on):
            pred = unet(noisy, t, prompt, **kw).sample
            errors = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            if a.loss == "mapo":
                loss = mapo_loss(errors)
            else:
                with torch.no_grad():
                    rpred = ref(noisy, t, prompt, **kw).sample
                    ref_errors = F.mse_loss(rpred.float(), target.float(),
                                            reduction="none").mean(dim=[1, 2, 3])
                loss = dpo_loss(errors, ref_errors)
        return loss, errors, pred

    if a.check:  # same weights, same batch: float32 against bf16 autocast
        batch = make_batch()
        with torch.no_grad():
            lf, ef, pf = forward_loss(batch, False)
            lb, eb, pb = forward_loss(batch, True)
        print(f"check ({a.loss}, seed {a.seed}): loss float32 {lf.item():.7g}, bf16 autocast "
              f"{lb.item():.7g}, relative difference {abs(lb.item() - lf.item()) / abs(lf.item()):.3e}; "
              f"errors: dtype {eb.dtype}, relative L2 difference "
              f"{((eb - ef).norm() / ef.norm()).item():.3e}; prediction: dtype {pb.dtype}, relative L2 "
              f"difference {((pb.float() - pf).norm() / pf.norm()).item():.3e}", file=sys.stderr)

    def step():
        ckpt_calls[0] = 0
        loss = forward_loss(make_batch(), bf16)[0]
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
    peak = peak_rss_mb()  # the process high-water mark: model, warm-up and timed steps
    step_s = sum(times) / len(times)
    if a.gradient_checkpointing and ckpt_calls[0] == 0:
        sys.exit("bench_torch.py: --gradient_checkpointing: no block was checkpointed")

    out = {"impl": "pytorch", "loss_type": a.loss, "loss": losses[-1], "pairs": B, "res": H,
           "seq": a.seq, "steps": a.steps, "pairs_per_s": B / step_s, "step_s": step_s,
           "step_s_min": min(times),
           "precision": "bf16" if bf16 else "f32",
           "gradient_checkpointing": 1 if a.gradient_checkpointing else 0,
           "checkpointed_calls_per_step": ckpt_calls[0],
           "lora_rank": a.lora_rank,
           "rss_base_mb": base_rss,
           "peak_rss_mb": peak,
           "train_mem_mb": peak - base_rss if base_rss is not None else None,
           "params": nparams, "trained_params": ntrained, "torch": torch.__version__,
           "threads": a.threads, "config": os.path.relpath(os.path.abspath(a.config))}

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
            # what autograd really runs (no input grad for conv_in; recomputation when
            # checkpointing), counted
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
