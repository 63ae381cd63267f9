#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, a few seconds):
#     python3 tools/make_train_fixtures.py            # writes tests/fixtures/train/
#     python3 tools/make_train_fixtures.py --out DIR  # somewhere else
#
# Reference values for the training-side pieces that are pure functions, read by
# tests/test_objectives.c, tests/test_optim.c and tests/test_ddpm.c:
#
#   objectives.safetensors (F64)
#     MaPO, Diffusion-DPO and SFT losses and d loss / d l for several sets of per-sample
#     errors l[2B] (chosen half first). For each case <obj>.<case>.*:
#       l [2B], hp [3] (MaPO: beta_mapo, snr_value, T; DPO: beta_dpo, 0, 0; SFT: 0, 0, 0),
#       lref [2B] (DPO only),
#       loss_torch [1], dl_torch [2B]: torch autograd in float64 on the OFFICIAL formulas
#           written naively, as the official code writes them:
#             MaPO:  log_odds = (s*lw)/(exp(s*lw)-1) - (s*ll)/(exp(s*ll)-1)
#                    loss = lw.mean() - beta * logsigmoid(T * log_odds).mean()
#             DPO:   inside = -0.5*beta*((lw-ll) - (rw-rl)); loss = -logsigmoid(inside).mean()
#       naive_ok [1]: 1 when every naive value is finite AND within 1e-12 (relative, loss
#           and gradient norm) of the high-precision reference below -- the naive formula
#           is 0/0 at l = 0, loses digits in exp(x)-1 for tiny x, and its gradient is
#           inf/inf = NaN once exp(s*l) overflows (s*l > 709.78, e.g. l = 1e4);
#       loss_mp [1], dl_mp [2B], stats_mp [4]: the same quantities from mpmath at 50 digits
#           (the limit g(0) = 1, g'(0) = -s/2 at l = 0), rounded to double -- the
#           reference for every case; stats_mp = (win score mean g(lw), lose score mean
#           g(ll), "OR loss" -beta*mean(logsigmoid), fraction with g(lw) > g(ll)) for MaPO,
#           (mean inside, implicit accuracy, 0, 0) for DPO.
#     Metadata "cases.mapo", "cases.dpo", "cases.sft": comma-separated case names.
#
#   kto.safetensors (F64; labels U8), written only by kto() -- regenerate it alone with
#       cd tools && python3 -c "import make_train_fixtures as m; m.kto('../tests/fixtures/train')"
#     Diffusion-KTO loss and d loss / d l on n labelled examples for several cases (see kto()):
#     a torch float64 port of the official train_kto_sd_v1.5.py loss lines, and mpmath.
#
#   adamw.safetensors (F32 tensors, F64 hyper-parameters)
#     p0 [N], grads [5, N], lrs [5] (F64, lr of each step), shared by the runs;
#     <run>.hp [6] (F64: beta1, beta2, eps, weight_decay, max_norm (0 = no clipping), 0),
#     <run>.params [5, N]: parameters after each torch.optim.AdamW(foreach=False,
#         fused=False) step (float32), <run>.norms [5] (F32: what clip_grad_norm_ returned,
#         clip runs only). Runs: "plain" (betas 0.8/0.99, eps 1e-6, wd 0.05, no clipping),
#     "clip" (same, clip_grad_norm_(max_norm=1.0) before every step; the gradient scales are
#     chosen so that some steps clip and some do not), "lowb1" (beta1 0.3: torch's lerp
#     takes its large-weight branch; wd 0). Metadata "runs".
#
#   schedules.safetensors (F64)
#     sched.<name>.w<warmup>.t<total> [K]: lr multiplier for scheduler steps 0..K-1, read
#     from get_last_lr() of diffusers.optimization.get_scheduler(name, SGD(lr=1.0),
#     num_warmup_steps, num_training_steps) after k calls of scheduler.step() -- i.e. the
#     LambdaLR lambda at k. Names constant, constant_with_warmup, linear, cosine; (warmup,
#     total) = (3, 10) and (0, 7); K = total + 3 (past the end).
#
#   ddpm.safetensors (F32)
#     <sched>.abar [T]: DDPMScheduler(...).alphas_cumprod for sched in
#       scaled_linear_1000 (0.00085..0.012, the SD/SDXL schedule), linear_1000 (diffusers'
#       defaults 1e-4..0.02), linear_100 (T=100, 0.001..0.03), scaled_linear_100 (T=100,
#       0.0001..0.02);
#     <sched>.x0 [4, 96], .eps [4, 96], .t [4] (I64), .noisy [4, 96] (add_noise),
#       .velocity [4, 96] (get_velocity) for scaled_linear_1000 and linear_100.
#
# torch runs on CPU; the kernels it dispatches to (AVX2 / AVX-512 on x86) are noted in each
# file's metadata, since float32 linspace and AdamW depend on them at the last bit.
import argparse
import math
import os
import sys

import mpmath
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
mpmath.mp.dps = 50


def meta_base():
    import diffusers
    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "generator": "tools/make_train_fixtures.py"}


# ------------------------------------------------------------------ objectives
def mapo_naive(l, B, beta, s, T):
    l = l.clone().requires_grad_(True)
    lw, ll = l[:B], l[B:]
    log_odds = (s * lw) / (torch.exp(s * lw) - 1) - (s * ll) / (torch.exp(s * ll) - 1)
    ratio = F.logsigmoid(log_odds * T)
    loss = lw.mean() - beta * ratio.mean()
    loss.backward()
    return loss.detach(), l.grad.detach()


def dpo_naive(l, lref, B, beta):
    l = l.clone().requires_grad_(True)
    lw, ll = l[:B], l[B:]
    rw, rl = lref[:B], lref[B:]
    inside = -0.5 * beta * ((lw - ll) - (rw - rl))
    loss = -F.logsigmoid(inside).mean()
    loss.backward()
    return loss.detach(), l.grad.detach()


def sft_naive(l, B):
    l = l.clone().requires_grad_(True)
    loss = l[:B].mean()
    loss.backward()
    return loss.detach(), l.grad.detach()


mpf = mpmath.mpf


def mp_g(s, l):
    x = mpf(s) * mpf(l)
    if x == 0:
        return mpf(1)
    return x / mpmath.expm1(x)


def mp_gprime(s, l):  # d g / d l
    x = mpf(s) * mpf(l)
    if x == 0:
        return -mpf(s) / 2
    e = mpmath.expm1(x)
    return mpf(s) * (e - x * mpmath.exp(x)) / (e * e)


def mp_logsig(z):
    return -mpmath.log1p(mpmath.exp(-z))


def mp_sigm_neg(z):  # d logsigmoid / dz
    return 1 / (1 + mpmath.exp(z))


def mapo_mp(l, B, beta, s, T):
    l = [mpf(float(v)) for v in l]
    beta, s, T = mpf(beta), mpf(s), mpf(T)
    dl = [mpf(0)] * (2 * B)
    sw = sl = sgw = sgl = sls = mpf(0)
    wins = 0
    for i in range(B):
        gw, gl = mp_g(s, l[i]), mp_g(s, l[B + i])
        z = T * (gw - gl)
        sw += l[i]; sl += l[B + i]; sgw += gw; sgl += gl; sls += mp_logsig(z)
        wins += gw > gl
        c = -beta / B * mp_sigm_neg(z) * T
        dl[i] = 1 / mpf(B) + c * mp_gprime(s, l[i])
        dl[B + i] = -c * mp_gprime(s, l[B + i])
    loss = sw / B - beta * sls / B
    stats = [sgw / B, sgl / B, -beta * sls / B, mpf(wins) / B]
    return float(loss), [float(v) for v in dl], [float(v) for v in stats]


def dpo_mp(l, lref, B, beta):
    l = [mpf(float(v)) for v in l]
    r = [mpf(float(v)) for v in lref]
    beta = mpf(beta)
    dl = [mpf(0)] * (2 * B)
    sls = sin = mpf(0)
    acc = 0
    for i in range(B):
        inside = -beta / 2 * ((l[i] - l[B + i]) - (r[i] - r[B + i]))
        sls += mp_logsig(inside); sin += inside; acc += inside > 0
        c = -1 / mpf(B) * mp_sigm_neg(inside) * (-beta / 2)
        dl[i] = c
        dl[B + i] = -c
    return float(-sls / B), [float(v) for v in dl], [float(sin / B), acc / B, 0.0, 0.0]


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def objectives(out_dir):
    g = torch.Generator().manual_seed(1234)
    U = lambda n, lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    T64 = lambda v: torch.tensor(v, dtype=torch.float64)
    tensors, names = {}, {"mapo": [], "dpo": [], "sft": []}
    report = []

    mapo_cases = [
        # name, l (chosen then rejected), beta, s, T
        ("random", U(8, 0.0, 2.0), 0.1, 0.5, 1000),
        ("realistic", U(16, 0.02, 0.3), 0.1, 0.5, 1000),
        ("beta64", U(8, 0.0, 0.5), 64.0, 0.5, 1000),
        ("snr2_T100", U(8, 0.0, 1.5), 8.0, 2.0, 100),
        ("small", T64([1e-8, 0.0, 3e-6, 1e-12, 2e-8, 1e-8, 0.0, 5e-4]), 0.1, 0.5, 1000),
        ("large", T64([50.0, 300.0, 1500.0, 1e4, 1e4, 2000.0, 10.0, 800.0]), 0.1, 0.5, 1000),
        ("mixed", T64([0.0, 1e4, 1.0, 1e-7, 1e4, 0.0, 1e-7, 1.0]), 1024.0, 0.5, 1000),
        ("equal", None, 0.1, 0.5, 1000),
    ]
    for name, l, beta, s, T in mapo_cases:
        if l is None:
            h = U(4, 0.0, 2.0)
            l = torch.cat([h, h])
        B = l.numel() // 2
        lt, dlt = mapo_naive(l, B, beta, s, T)
        lm, dlm, st = mapo_mp(l, B, beta, s, T)
        ok = rel(lt, lm) < 1e-12 and rel(dlt, dlm) < 1e-12
        p = f"mapo.{name}."
        tensors.update({p + "l": l, p + "hp": T64([beta, s, float(T)]),
                        p + "loss_torch": lt.reshape(1), p + "dl_torch": dlt,
                        p + "naive_ok": T64([1.0 if ok else 0.0]),
                        p + "loss_mp": T64([lm]), p + "dl_mp": T64(dlm), p + "stats_mp": T64(st)})
        names["mapo"].append(name)
        report.append(f"mapo.{name}: naive vs mpmath loss {rel(lt, lm):.2e} grad {rel(dlt, dlm):.2e}"
                      f" -> reference {'torch+mpmath' if ok else 'mpmath only'}")

    dpo_cases = [
        ("random", U(8, 0.05, 0.2), U(8, 0.05, 0.2), 5000.0),
        ("saturate", U(8, 0.0, 1.0), U(8, 0.0, 1.0), 5000.0),
        ("beta2500", U(6, 0.05, 0.2), U(6, 0.05, 0.2), 2500.0),
        ("same_as_ref", None, None, 5000.0),
    ]
    for name, l, lref, beta in dpo_cases:
        if l is None:
            l = U(8, 0.05, 0.2)
            lref = l.clone()
        B = l.numel() // 2
        lt, dlt = dpo_naive(l, lref, B, beta)
        lm, dlm, st = dpo_mp(l, lref, B, beta)
        ok = rel(lt, lm) < 1e-12 and rel(dlt, dlm) < 1e-12
        p = f"dpo.{name}."
        tensors.update({p + "l": l, p + "lref": lref, p + "hp": T64([beta, 0.0, 0.0]),
                        p + "loss_torch": lt.reshape(1), p + "dl_torch": dlt,
                        p + "naive_ok": T64([1.0 if ok else 0.0]),
                        p + "loss_mp": T64([lm]), p + "dl_mp": T64(dlm), p + "stats_mp": T64(st)})
        names["dpo"].append(name)
        report.append(f"dpo.{name}: naive vs mpmath loss {rel(lt, lm):.2e} grad {rel(dlt, dlm):.2e}")

    l = U(10, 0.0, 1.0)
    lt, dlt = sft_naive(l, 5)
    p = "sft.random."
    tensors.update({p + "l": l, p + "hp": T64([0.0, 0.0, 0.0]), p + "loss_torch": lt.reshape(1),
                    p + "dl_torch": dlt, p + "naive_ok": T64([1.0]), p + "loss_mp": lt.reshape(1),
                    p + "dl_mp": dlt, p + "stats_mp": T64([0.0, 0.0, 0.0, 0.0])})
    names["sft"].append("random")

    meta = meta_base()
    for k, v in names.items():
        meta["cases." + k] = ",".join(v)
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, "objectives.safetensors"), meta)
    return report


# ------------------------------------------------------------------ Diffusion-KTO
def kto_official(l, lref, labels, beta, lambda_d, lambda_u):
    """The loss lines of the official Diffusion-KTO train_kto_sd_v1.5.py (--loss kto,
    --halo sigmoid), one process (accelerator.reduce of a mean is the identity), float64,
    with autograd for d loss / d l. The only change: w_y is formed in float64 (the script's
    `lambda * labels_binary` gives a float32 tensor, exact for the default 1.0)."""
    model_losses = l.clone().requires_grad_(True)
    ref_loss = lref
    policy_KL_logps = -model_losses
    reference_KL_logps = -ref_loss
    g_term = policy_KL_logps - reference_KL_logps
    scale_term = beta
    kl_gpu = g_term.mean().detach()
    kl = kl_gpu
    kl = kl.clamp(min=0).detach()
    g_term = g_term - kl  # eq 8
    label_sgn = 2 * labels - 1
    labels_binary = labels == 1
    label_scale_g = label_sgn * scale_term * g_term
    h = torch.sigmoid(label_scale_g)
    lb = labels_binary.to(torch.float64)
    w_y = lambda_d * lb + lambda_u * (1 - lb)
    l_kto = w_y * (1 - h)
    acc = (label_scale_g > 0).sum().detach() / len(label_scale_g)
    with torch.no_grad():
        diff_pos = g_term[labels_binary].sum() / (labels_binary.sum() + 1e-6)
        diff_neg = g_term[~labels_binary].sum() / ((~labels_binary).sum() + 1e-6)
    loss = l_kto.mean()
    loss.backward()
    stats = [float(kl), float(diff_pos), float(diff_neg), float(acc)]
    return loss.detach(), model_losses.grad.detach(), stats


def kto_mp(l, lref, labels, beta, lambda_d, lambda_u):
    """The same quantities from mpmath at 50 digits on the double inputs; diff_pos /
    diff_neg as exact means (0 with no example of that label)."""
    n = len(l)
    l = [mpf(float(v)) for v in l]
    r = [mpf(float(v)) for v in lref]
    y = [int(v) for v in labels]
    beta, ld, lu = mpf(beta), mpf(lambda_d), mpf(lambda_u)
    g = [r[i] - l[i] for i in range(n)]
    kl = max(sum(g) / n, mpf(0))
    loss = mpf(0)
    dl = []
    acc = 0
    dp, dn = [], []
    for i in range(n):
        sgn = 1 if y[i] else -1
        w = ld if y[i] else lu
        z = sgn * beta * (g[i] - kl)
        sp, sn = 1 / (1 + mpmath.exp(-z)), 1 / (1 + mpmath.exp(z))  # sigmoid(z), sigmoid(-z)
        loss += w * sn
        dl.append(w / n * sp * sn * sgn * beta)
        acc += z > 0
        (dp if y[i] else dn).append(g[i] - kl)
    mean = lambda v: sum(v) / len(v) if v else mpf(0)
    stats = [kl, mean(dp), mean(dn), mpf(acc) / n]
    return float(loss / n), [float(v) for v in dl], [float(v) for v in stats]


def kto(out_dir):
    """tests/fixtures/train/kto.safetensors (F64; labels U8). For each case kto.<case>.*:
         l [n], lref [n], labels [n] (U8, 1 desirable), hp [3] (beta, lambda_d, lambda_u),
         loss_torch [1], dl_torch [n], stats_torch [4]: kto_official (torch float64 autograd);
             stats = (kl, diff_pos, diff_neg, acc) as the script logs them (its diff_* divide
             by count + 1e-6);
         naive_ok [1]: 1 when the torch values are within 1e-12 of mpmath (1 - sigmoid(z)
             rounds to 0 once z > ~37, and its gradient sigmoid * (1 - sigmoid) with it);
         loss_mp [1], dl_mp [n], stats_mp [4]: mpmath at 50 digits (diff_* exact means).
       Metadata "cases": comma-separated names."""
    g = torch.Generator().manual_seed(4321)
    U = lambda n, lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    T64 = lambda v: torch.tensor(v, dtype=torch.float64)
    L = lambda v: torch.tensor(v, dtype=torch.int64)

    def near(n, spread):  # policy errors of realistic size, reference errors close to them
        l = U(n, 0.05, 0.2)
        return l, l + U(n, -spread, spread)

    cases = []
    l, r = near(4, 3e-3)
    cases.append(("mixed4", l, r, L([1, 0, 0, 1]), 1000, 1.0, 1.0))
    l, r = near(6, 3e-3)
    cases.append(("mixed6_lambda", l, r, L([0, 1, 1, 0, 1, 0]), 1000, 1.5, 0.7))
    l, r = near(8, 3e-3)  # a mapo pair batch: chosen half desirable, rejected half not
    cases.append(("paired8", l, r, L([1, 1, 1, 1, 0, 0, 0, 0]), 1000, 1.0, 1.0))
    l, r = near(6, 3e-3)
    cases.append(("all_desirable", l, r, L([1] * 6), 1000, 1.0, 1.0))
    l, r = near(4, 3e-3)
    cases.append(("all_undesirable", l, r, L([0] * 4), 1000, 1.0, 1.0))
    l = U(6, 0.05, 0.2)  # the reference fits better on average: mean g < 0, kl clamped to 0
    r = l + U(6, -4e-3, 1e-3)
    cases.append(("clamp", l, r, L([1, 0, 1, 0, 0, 1]), 1000, 1.0, 1.0))
    l = U(8, 0.05, 0.2)  # |z| from 0.5 to 4000 (sigmoid saturated both ways); mean g < 0
    gg = T64([1e-5, -2e-5, 3e-2, -4e-2, 5e-6, 1e-2, -8e-3, 2e-5])
    cases.append(("large_beta", l, l + gg, L([1, 0, 1, 1, 0, 0, 1, 0]), 100000, 1.0, 1.0))
    l = U(4, 0.05, 0.2)  # every z in 40..60: loss ~1e-18, where the naive 1 - sigmoid(z) is 0
    cases.append(("saturated", l, l + T64([0.04, -0.04, 0.05, -0.06]), L([1, 0, 1, 0]), 1000,
                  1.0, 1.0))
    l = U(4, 0.05, 0.2)  # policy == reference: g = kl = z = 0
    cases.append(("tie", l, l.clone(), L([1, 0, 1, 0]), 1000, 1.0, 1.0))

    tensors, names, report = {}, [], []
    for name, l, r, y, beta, ld, lu in cases:
        lt, dlt, stt = kto_official(l, r, y, beta, ld, lu)
        lm, dlm, stm = kto_mp(l, r, y, beta, ld, lu)
        ok = rel(lt, lm) < 1e-12 and rel(dlt, dlm) < 1e-12
        z = (2 * y - 1) * beta * ((r - l) - max(float((r - l).mean()), 0.0))
        p = f"kto.{name}."
        tensors.update({p + "l": l, p + "lref": r, p + "labels": y.to(torch.uint8),
                        p + "hp": T64([float(beta), ld, lu]),
                        p + "loss_torch": lt.reshape(1), p + "dl_torch": dlt,
                        p + "stats_torch": T64(stt), p + "naive_ok": T64([1.0 if ok else 0.0]),
                        p + "loss_mp": T64([lm]), p + "dl_mp": T64(dlm), p + "stats_mp": T64(stm)})
        names.append(name)
        report.append(f"kto.{name}: n {len(l)} |z| {float(z.abs().min()):.3g}..{float(z.abs().max()):.3g}"
                      f" kl {stm[0]:.3g} loss {lm:.6g}; torch vs mpmath loss {rel(lt, lm):.2e}"
                      f" grad {rel(dlt, dlm):.2e} -> reference {'torch+mpmath' if ok else 'mpmath only'}")
    meta = meta_base()
    meta["cases"] = ",".join(names)
    meta["source"] = ("jacklishufan/diffusion-kto train_kto_sd_v1.5.py, --loss kto --halo sigmoid "
                      "(loss lines ported in kto_official)")
    save_file({k: v.contiguous().clone() for k, v in tensors.items()},
              os.path.join(out_dir, "kto.safetensors"), meta)
    os.chmod(os.path.join(out_dir, "kto.safetensors"), 0o644)
    for line in report:
        print(line)
    return report


# ------------------------------------------------------------------ AdamW
def adamw(out_dir):
    N, STEPS = 1000, 5
    g = torch.Generator().manual_seed(99)
    p0 = torch.randn(N, generator=g)
    scales = [0.01, 0.08, 0.3, 0.02, 1.0]  # norms ~0.3, 2.5, 9.5, 0.6, 32
    grads = torch.stack([torch.randn(N, generator=g) * sc for sc in scales])
    lrs = [1e-3, 3e-3, 2e-3, 5e-4, 1e-2]
    runs = [("plain", 0.8, 0.99, 1e-6, 0.05, 0.0),
            ("clip", 0.8, 0.99, 1e-6, 0.05, 1.0),
            ("lowb1", 0.3, 0.95, 1e-7, 0.0, 0.0)]
    tensors = {}
    report = []
    for name, b1, b2, eps, wd, max_norm in runs:
        p = p0.clone().requires_grad_(True)
        opt = torch.optim.AdamW([p], lr=lrs[0], betas=(b1, b2), eps=eps, weight_decay=wd,
                                foreach=False, fused=False)
        params, norms = [], []
        for k in range(STEPS):
            for grp in opt.param_groups:
                grp["lr"] = lrs[k]
            p.grad = grads[k].clone()
            if max_norm > 0:
                norms.append(float(torch.nn.utils.clip_grad_norm_([p], max_norm)))
            opt.step()
            params.append(p.detach().clone())
        q = name + "."
        tensors.update({q + "hp": torch.tensor([b1, b2, eps, wd, max_norm, 0.0], dtype=torch.float64),
                        q + "params": torch.stack(params)})
        if max_norm > 0:
            tensors[q + "norms"] = torch.tensor(norms, dtype=torch.float32)
            report.append(f"adamw.{name}: clip_grad_norm_ totals {['%.3f' % v for v in norms]}")
    tensors.update({"p0": p0, "grads": grads, "lrs": torch.tensor(lrs, dtype=torch.float64)})
    meta = meta_base()
    meta["runs"] = ",".join(r[0] for r in runs)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()},
              os.path.join(out_dir, "adamw.safetensors"), meta)
    return report


# ------------------------------------------------------------------ LR schedules
def schedules(out_dir):
    from diffusers.optimization import get_scheduler
    tensors = {}
    for warmup, total in [(3, 10), (0, 7)]:
        for name in ["constant", "constant_with_warmup", "linear", "cosine"]:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            sch = get_scheduler(name, optimizer=opt, num_warmup_steps=warmup,
                                num_training_steps=total)
            vals = []
            for k in range(total + 3):
                vals.append(sch.get_last_lr()[0])  # = 1.0 * lambda(k)
                assert vals[-1] == 1.0 * sch.lr_lambdas[0](k)
                opt.step()
                sch.step()
            tensors[f"sched.{name}.w{warmup}.t{total}"] = torch.tensor(vals, dtype=torch.float64)
        # the official script's --lr_num_cycles / --lr_power, at its learning rates (polynomial
        # decays to lr_end = 1e-7, so its multiplier depends on the initial lr)
        for name, key, vals_ in [("cosine_with_restarts", "num_cycles", [1, 3]),
                                 ("polynomial", "power", [1.0, 2.0, 0.5])]:
            for val in vals_:
                for lr in ([1.0] if name != "polynomial" else [1e-3, 5e-4]):
                    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
                    sch = get_scheduler(name, optimizer=opt, num_warmup_steps=warmup,
                                        num_training_steps=total, **{key: val})
                    vals = []
                    for k in range(total + 3):
                        vals.append(sch.get_last_lr()[0] / lr)
                        opt.step()
                        sch.step()
                    tensors[f"sched.{name}.{key}{val:g}.lr{lr:g}.w{warmup}.t{total}"] = \
                        torch.tensor(vals, dtype=torch.float64)
    save_file(tensors, os.path.join(out_dir, "schedules.safetensors"), meta_base())
    return []


# ------------------------------------------------------------------ DDPM
def ddpm(out_dir):
    from diffusers import DDPMScheduler
    g = torch.Generator().manual_seed(7)
    cases = [("scaled_linear_1000", 1000, 0.00085, 0.012, "scaled_linear", [0, 1, 500, 999]),
             ("linear_1000", 1000, 0.0001, 0.02, "linear", None),
             ("linear_100", 100, 0.001, 0.03, "linear", [0, 37, 99, 50]),
             ("scaled_linear_100", 100, 0.0001, 0.02, "scaled_linear", None)]
    tensors = {}
    for name, T, b0, b1, sched, ts in cases:
        s = DDPMScheduler(num_train_timesteps=T, beta_start=b0, beta_end=b1, beta_schedule=sched)
        tensors[name + ".abar"] = s.alphas_cumprod.clone()
        if ts is None:
            continue
        x0 = torch.randn(4, 96, generator=g)
        eps = torch.randn(4, 96, generator=g)
        t = torch.tensor(ts, dtype=torch.int64)
        tensors.update({name + ".x0": x0, name + ".eps": eps, name + ".t": t,
                        name + ".noisy": s.add_noise(x0, eps, t),
                        name + ".velocity": s.get_velocity(x0, eps, t)})
    meta = meta_base()
    meta["cases"] = ",".join(c[0] for c in cases)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()},
              os.path.join(out_dir, "ddpm.safetensors"), meta)
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    report = objectives(a.out) + adamw(a.out) + schedules(a.out) + ddpm(a.out)
    kto(a.out)  # prints its own report
    for line in report:
        print(line)
    for f in os.listdir(a.out):
        os.chmod(os.path.join(a.out, f), 0o644)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"wrote {a.out} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
