#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, about ten seconds):
#     python3 tools/make_optim8bit_fixtures.py            # writes tests/fixtures/optim8bit/
#     python3 tools/make_optim8bit_fixtures.py --out DIR  # somewhere else
# Needs numpy, safetensors, torch and bitsandbytes (pip install bitsandbytes; development
# only -- CI reads the committed file).
#
# Reference values for src/train/optim8bit.c (bitsandbytes' AdamW8bit), read by
# tests/test_optim8bit.c. What runs `--use_8bit_adam` in the official MaPO script is
# bitsandbytes' CUDA kernel kOptimizerStatic8bit2StateBlockwise<float, ADAM, 256, 1>
# (csrc/kernels.cu) for tensors with >= min_8bit_size = 4096 elements and
# kOptimizer32bit2State<float, ADAM> for smaller ones. There is no GPU here, so this script
# ports those two kernels to numpy float32, statement by statement (port_step8 / port_step32
# below; docs/METHOD.md "## 8-bit AdamW" has the formulas). Two deliberate, documented
# departures, shared with the C code: __powf and __fdividef (CUDA's fast approximations) are
# replaced by the correctly rounded pow (in double, rounded to float) and IEEE division, and
# no multiply-add is fused (nvcc would contract some of them into FMAs; which ones is a
# compiler decision). The differences to a GPU are therefore at the last bit of p.
#
# What comes from bitsandbytes itself (the installed package, version in the metadata):
#   * the two dynamic maps, bnb.functional.create_dynamic_map(signed=True / False), and the
#     maps a real bnb.optim.AdamW8bit puts in its state (qmap1 / qmap2) -- checked equal;
#   * the 8-bit / 32-bit rule: a real AdamW8bit is stepped once on tensors of 4095, 4096 and
#     4099 elements and the dtype of its state and the length of absmax are recorded;
#   * dequantisation: the port's code[c] * absmax is checked bit-identical to
#     bnb.functional.dequantize_blockwise on the run's codes;
#   * an end-to-end run of the real bnb.optim.AdamW8bit on this CPU (its CPU backend,
#     backends/cpu/ops.py): bnbcpu.params. That backend is NOT the CUDA kernel: it orders the
#     AdamW arithmetic as torch (weight decay first, eps added to sqrt(v)/sqrt(bc2)) and
#     quantises through a 65536-entry lookup table over [-1, 1] (quantize_cpu_impl in
#     csrc/cpu_ops.cpp), so the codes of small moments differ; the test reports how far the
#     CUDA-kernel semantics land from it (a loose check, not the reference).
# The port's quantiser (quantize_2D: a 7-step binary search over the sorted map, then the
# midpoint rule) is checked here against brute-force nearest-code search on every value
# quantised in the runs plus every code, every midpoint and random values: it always returns
# a nearest code (at an exact midpoint it keeps the code its search landed on).
#
# optim8bit/adamw8bit.safetensors
#   qmap.signed [256], qmap.unsigned [256] (F32): create_dynamic_map(True / False)
#   bnb_rule [3, 3] (I64): rows (numel, 1 if AdamW8bit kept uint8 state else 0, absmax length)
#   layout [3, 2] (I64): (offset, numel) of the tensors in the flat arena: 4608 (48 x 96,
#       18 full blocks), 4099 (16 blocks + 3 elements), 510 (below 4096: float32 state)
#   p0 [N], grads [5, N] (F32), lrs [5] (F64)
#   r1.hp [4] (F64: beta1, beta2, eps, weight_decay) = 0.9, 0.999, 1e-8, 1e-2
#   r1.params [5, N]; r1.state1 / r1.state2 [5, N8] (U8: codes of the 8-bit tensors, in
#       layout order); r1.absmax1 / r1.absmax2 [5, B] (F32); r1.m32 / r1.v32 [5, N32] (F32):
#       after each of the 5 steps
#   r2: betas 0.8 / 0.99, eps 1e-6, weight_decay 0, the same gradients except: elements
#       r2.nan_index get NaN and r2.inf_index +inf at step 2 (the kernel zeroes their moments
#       and leaves p), block r2.zero_block (of the 4608 tensor) gets zero gradients at every
#       step (absmax 0: the quantiser sees 0/0 = NaN, lands on code 0 = -0.993, and the sign
#       rule moves it to 255), and block r2.tiny_block gets g = 1e3 at its first element and
#       -1e-5 at the next five at every step (first moments of relative size -1e-8, whose
#       nearest code is 0 = +0.0: the sign rule moves them to code 126, the smallest
#       negative one).
#       r2.params [N], r2.state1 / r2.state2 [N8], r2.absmax1 / r2.absmax2 [B],
#       r2.m32 / r2.v32 [N32]: after step 5 only
#   bnbcpu.params [N]: r1's hyper-parameters through the real bnb.optim.AdamW8bit on this
#       CPU (see above), after step 5
import argparse
import os
import sys

import numpy as np

f32 = np.float32
BLOCK = 256


# ----------------------------------------------------------------------------------------
# The kernels, ported. Every operation is a float32 numpy operation (correctly rounded,
# never fused), in the order the CUDA source writes it.

def corrections(b1, b2, step):
    """correction1 = 1 - beta1^step; correction2 = sqrt(1 - beta2^step) (float32)"""
    p1 = f32(float(b1) ** step)  # C: (float)pow((double)b1f, (double)step)
    p2 = f32(float(b2) ** step)
    c1 = f32(f32(1) - p1)
    c2 = np.sqrt(f32(f32(1) - p2), dtype=f32)
    return c1, c2


def quantize_2d(x, code, signed):
    """kernels.cu quantize_2D<SIGNED>: x float32 array -> uint8 codes"""
    x = np.asarray(x, dtype=f32)
    pivot = np.full(x.shape, 127, np.int64)
    upper_pivot = np.full(x.shape, 255, np.int64)
    lower_pivot = np.zeros(x.shape, np.int64)
    lower = np.full(x.shape, f32(-1.0) if signed else f32(0.0), f32)
    upper = np.full(x.shape, f32(1.0), f32)
    val = code[pivot]  # quadrants[1] = code[127]
    i = 64
    while i > 0:
        gt = x > val
        lower_pivot = np.where(gt, pivot, lower_pivot)
        lower = np.where(gt, val, lower)
        upper_pivot = np.where(gt, upper_pivot, pivot)
        upper = np.where(gt, upper, val)
        pivot = np.where(gt, pivot + i, pivot - i)
        val = code[pivot]  # quadrants[local_pivot] after the first step is code[63] / code[191]
        i >>= 1
    gt = x > val
    mid_up = (upper + val) * f32(0.5)
    mid_lo = (lower + val) * f32(0.5)
    out = np.where(gt, np.where(x > mid_up, upper_pivot, pivot),
                   np.where(x < mid_lo, lower_pivot, pivot))
    return out.astype(np.uint8)


def port_step8(p, g, c1s, c2s, am1, am2, q1, q2, b1, b2, eps, lr, wd, step):
    """kOptimizerStatic8bit2StateBlockwise<float, ADAM, 256, 1> on one tensor (in place)."""
    n = p.size
    c1, c2 = corrections(b1, b2, step)
    step_size = f32(f32(-lr * c2) / c1)
    w1, w2 = f32(f32(1) - b1), f32(f32(1) - b2)
    c2eps = f32(c2 * eps)
    decay = f32(f32(1) - f32(lr * wd))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for blk in range((n + BLOCK - 1) // BLOCK):
            a, e = blk * BLOCK, min(n, (blk + 1) * BLOCK)
            gv = g[a:e]
            fin = np.isfinite(gv)
            gz = np.where(fin, gv, f32(0))
            s2 = q2[c2s[a:e]] * am2[blk]
            s2 = s2 * b2 + (w2 * gz) * gz
            s1 = q1[c1s[a:e]] * am1[blk]
            s1 = s1 * b1 + w1 * gz
            s1 = np.where(fin, s1, f32(0))
            s2 = np.where(fin, s2, f32(0))
            mx1 = np.fmax.reduce(np.abs(s1), initial=-np.finfo(f32).max)
            mx2 = np.fmax.reduce(np.abs(s2), initial=-np.finfo(f32).max)
            if e - a < BLOCK:  # the padding lanes of a partial block: g = 0, codes 128 / 0
                pad1 = f32(f32(q1[128] * am1[blk]) * b1) + f32(w1 * f32(0))
                pad2 = f32(f32(q2[0] * am2[blk]) * b2) + f32(f32(w2 * f32(0)) * f32(0))
                mx1 = np.fmax(mx1, abs(f32(pad1)))
                mx2 = np.fmax(mx2, abs(f32(pad2)))
            mx1, mx2 = f32(mx1), f32(mx2)
            am1[blk], am2[blk] = mx1, mx2
            pv = p[a:e]
            upd = pv + step_size * (s1 / (np.sqrt(s2) + c2eps))
            if wd > 0:
                upd = upd * decay
            p[a:e] = np.where(fin, upd, pv)
            k1 = quantize_2d(s1 / mx1, q1, True)
            k2 = quantize_2d(s2 / mx2, q2, False)
            # keep the sign of the first moment: nudge one code towards it
            wrong = np.signbit(q1[k1]) != np.signbit(s1)
            k1 = np.where(wrong, np.where(s1 > 0, k1.astype(np.int64) + 1,
                                          k1.astype(np.int64) - 1), k1) & 0xFF
            c1s[a:e] = k1.astype(np.uint8)
            c2s[a:e] = k2
            STATS["quantised1"].append((s1 / mx1).astype(f32))
            STATS["quantised2"].append((s2 / mx2).astype(f32))
            STATS["signfix"] += int(np.count_nonzero(wrong & (s1 != 0)))


def port_step32(p, g, m, v, b1, b2, eps, lr, wd, step):
    """kOptimizer32bit2State<float, ADAM> (max_unorm 0, skip_zeros False), in place."""
    c1, c2 = corrections(b1, b2, step)
    step_size = f32(f32(-lr * c2) / c1)
    w1, w2 = f32(f32(1) - b1), f32(f32(1) - b2)
    with np.errstate(invalid="ignore", over="ignore"):
        m[:] = m * b1 + w1 * g
        v[:] = v * b2 + w2 * (g * g)
        p[:] = p + (f32(1) * step_size) * (m / (np.sqrt(v) + f32(eps * c2)))
        if wd > 0:
            p[:] = p * f32(f32(1) - f32(lr * wd))


STATS = {"quantised1": [], "quantised2": [], "signfix": 0}


class Port:
    """AdamW8bit over a flat arena: 8-bit state for numel >= 4096, float32 below."""

    def __init__(self, layout, q1, q2, min8=4096):
        self.layout, self.q1, self.q2 = layout, q1, q2
        self.t = []
        for off, n in layout:
            if n >= min8:
                nb = (n + BLOCK - 1) // BLOCK
                self.t.append(("q8", np.zeros(n, np.uint8), np.zeros(n, np.uint8),
                               np.zeros(nb, f32), np.zeros(nb, f32)))
            else:
                self.t.append(("f32", np.zeros(n, f32), np.zeros(n, f32)))

    def step(self, p, g, step, lr, hp):
        b1, b2, eps, wd = (f32(x) for x in hp)
        lr = f32(lr)
        for (off, n), st in zip(self.layout, self.t):
            pv, gv = p[off:off + n], g[off:off + n]
            if st[0] == "q8":
                port_step8(pv, gv, st[1], st[2], st[3], st[4], self.q1, self.q2,
                           b1, b2, eps, lr, wd, step)
            else:
                port_step32(pv, gv, st[1], st[2], b1, b2, eps, lr, wd, step)

    def flat(self):
        q = [s for s in self.t if s[0] == "q8"]
        f = [s for s in self.t if s[0] == "f32"]
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
        return {"state1": cat([s[1] for s in q], np.uint8),
                "state2": cat([s[2] for s in q], np.uint8),
                "absmax1": cat([s[3] for s in q], f32),
                "absmax2": cat([s[4] for s in q], f32),
                "m32": cat([s[1] for s in f], f32),
                "v32": cat([s[2] for s in f], f32)}


def check_quantiser(q, signed, xs):
    """quantize_2D returns a nearest code for every x, except where x is the float32-rounded
    midpoint of two neighbouring codes (the kernel compares x with f32((lower + val) * 0.5),
    so at that one value it may keep the farther code by less than an ulp of the midpoint)"""
    x = np.concatenate(xs).astype(f32)
    x = x[np.isfinite(x)]
    k = quantize_2d(x, q, signed).astype(np.int64)
    d = np.abs(x.astype(np.float64) - q[k].astype(np.float64))
    dist = np.abs(x.astype(np.float64)[:, None] - q[None, :].astype(np.float64))
    best = np.min(dist, axis=1)
    near = np.argmin(dist, axis=1)
    bad = np.nonzero(d > best)[0]
    mids = set(((q[1:] + q[:-1]) * f32(0.5)).tolist())
    at_mid = [i for i in bad if float(x[i]) in mids and abs(k[i] - near[i]) == 1]
    rest = sorted(set(bad.tolist()) - set(at_mid))
    if rest:
        i = rest[0]
        sys.exit(f"quantize_2D port: x={x[i]!r} -> code {k[i]} ({q[k[i]]!r}), a nearer code "
                 f"exists ({len(rest)} of {x.size})")
    return x.size, len(at_mid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/optim8bit")
    args = ap.parse_args()
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from safetensors.numpy import save_file
    torch.manual_seed(0)

    q1 = F.create_dynamic_map(signed=True).numpy().astype(f32)
    q2 = F.create_dynamic_map(signed=False).numpy().astype(f32)
    assert q1.shape == (256,) and q2.shape == (256,)
    assert np.all(np.diff(q1) > 0) and np.all(np.diff(q2) > 0), "maps not strictly sorted"

    # the 8-bit / 32-bit rule and the state's maps, from a real AdamW8bit
    rule = []
    for n in (4095, 4096, 4099):
        w = torch.nn.Parameter(torch.randn(n))
        opt = bnb.optim.AdamW8bit([w], lr=1e-3)
        w.grad = torch.randn(n)
        opt.step()
        st = opt.state[w]
        is8 = st["state1"].dtype == torch.uint8
        rule.append((n, int(is8), int(st["absmax1"].numel()) if is8 else 0))
        if is8:
            assert np.array_equal(st["qmap1"].numpy(), q1) and np.array_equal(st["qmap2"].numpy(), q2)
    print("bnb rule (numel, 8-bit, absmax blocks):", rule)
    assert rule == [(4095, 0, 0), (4096, 1, 16), (4099, 1, 17)]

    rng = np.random.default_rng(20240531)
    sizes = [(48, 96), (4099,), (17, 30)]
    layout, off = [], 0
    for s in sizes:
        n = int(np.prod(s))
        layout.append((off, n))
        off += n
    N = off
    STEPS = 5
    p0 = (rng.standard_normal(N) * 0.5).astype(f32)
    # realistic gradients: per-tensor scale, a slowly moving mean direction plus noise,
    # heavy tails, one block 1000x larger, exact zeros here and there
    grads = np.zeros((STEPS, N), f32)
    base = rng.standard_normal(N)
    for k in range(STEPS):
        g = 0.6 * base + rng.standard_normal(N) + 0.3 * rng.standard_t(3, N)
        for (o, n), sc in zip(layout, (1e-3, 3e-2, 1.0)):
            g[o:o + n] *= sc
        g[layout[0][0] + 5 * BLOCK: layout[0][0] + 6 * BLOCK] *= 1e3
        g[rng.integers(0, N, 40)] = 0
        grads[k] = g.astype(f32)
    lrs = np.array([1e-3, 2e-3, 3e-3, 2e-3, 1e-3], np.float64)

    out = {"qmap.signed": q1, "qmap.unsigned": q2,
           "bnb_rule": np.array(rule, np.int64), "layout": np.array(layout, np.int64),
           "p0": p0, "grads": grads, "lrs": lrs}

    # r1: defaults of the official script (betas 0.9 / 0.999, eps 1e-8, weight decay 1e-2)
    hp1 = (0.9, 0.999, 1e-8, 1e-2)
    port = Port(layout, q1, q2)
    p = p0.copy()
    snaps = {k: [] for k in ("params", "state1", "state2", "absmax1", "absmax2", "m32", "v32")}
    for k in range(STEPS):
        port.step(p, grads[k], k + 1, lrs[k], hp1)
        snaps["params"].append(p.copy())
        for key, val in port.flat().items():
            snaps[key].append(val.copy())
    out["r1.hp"] = np.array(hp1, np.float64)
    for key, val in snaps.items():
        out["r1." + key] = np.stack(val)
    r1_final = p.copy()

    # dequantisation equals bitsandbytes' own
    fl = port.flat()
    for c, am, q in ((fl["state1"], fl["absmax1"], q1), (fl["state2"], fl["absmax2"], q2)):
        o8 = b8 = 0
        for (o, n), st in zip(layout, port.t):
            if st[0] != "q8":
                continue
            nb = (n + BLOCK - 1) // BLOCK
            ab = am[b8:b8 + nb]
            ref = F.dequantize_blockwise(torch.from_numpy(c[o8:o8 + n].copy()),
                                         absmax=torch.from_numpy(ab.copy()),
                                         code=torch.from_numpy(q.copy()), blocksize=BLOCK).numpy()
            mine = q[c[o8:o8 + n]] * np.repeat(ab, BLOCK)[:n]
            assert np.array_equal(ref.view(np.uint32), mine.view(np.uint32)), "dequantise differs"
            o8 += n
            b8 += nb

    # r2: no weight decay, other betas / eps, non-finite gradients, an all-zero block
    hp2 = (0.8, 0.99, 1e-6, 0.0)
    nan_index = np.array([layout[1][0] + 7, layout[1][0] + 4098, layout[2][0] + 3], np.int64)
    inf_index = np.array([layout[0][0] + 100, layout[1][0] + 300], np.int64)
    zero_block, tiny_block = 9, 10
    port2 = Port(layout, q1, q2)
    p = p0.copy()
    for k in range(STEPS):
        g = grads[k].copy()
        g[zero_block * BLOCK:(zero_block + 1) * BLOCK] = 0
        tb = tiny_block * BLOCK
        g[tb] = 1e3
        g[tb + 1:tb + 6] = -1e-5
        if k == 1:
            g[nan_index] = np.nan
            g[inf_index] = np.inf
        port2.step(p, g, k + 1, lrs[k], hp2)
    out["r2.hp"] = np.array(hp2, np.float64)
    out["r2.nan_index"], out["r2.inf_index"] = nan_index, inf_index
    out["r2.zero_block"] = np.array([zero_block], np.int64)
    out["r2.tiny_block"] = np.array([tiny_block], np.int64)
    out["r2.params"] = p.copy()
    for key, val in port2.flat().items():
        out["r2." + key] = val
    assert np.all(np.isnan(p[nan_index[2]:nan_index[2] + 1])), "32-bit path propagates NaN"
    zb = port2.t[0]
    print("r2 zero block: absmax", zb[3][zero_block], zb[4][zero_block], "codes",
          np.unique(zb[1][zero_block * BLOCK:(zero_block + 1) * BLOCK]),
          np.unique(zb[2][zero_block * BLOCK:(zero_block + 1) * BLOCK]), "tiny block codes",
          zb[1][tiny_block * BLOCK:tiny_block * BLOCK + 7])

    # the quantiser: a nearest code, always
    extra1 = [q1, (q1[1:] + q1[:-1]) * f32(0.5), np.nextafter(q1, f32(2)), np.nextafter(q1, f32(-2)),
              rng.uniform(-1, 1, 100000), np.array([-1, 1, 0, -0.0], f32)]
    extra2 = [q2, (q2[1:] + q2[:-1]) * f32(0.5), np.nextafter(q2, f32(2)), rng.uniform(0, 1, 100000),
              np.array([1, 0], f32)]
    n1, t1 = check_quantiser(q1, True, STATS["quantised1"] + [e.astype(f32) for e in extra1])
    n2, t2 = check_quantiser(q2, False, STATS["quantised2"] + [e.astype(f32) for e in extra2])
    print(f"quantize_2D port: a nearest code for all {n1} + {n2} values but {t1} + {t2} that "
          f"are float32 midpoints of two codes; sign fixes in the runs: {STATS['signfix']}")

    # the real bnb.optim.AdamW8bit on this CPU (its CPU backend), r1's settings
    params = [torch.nn.Parameter(torch.from_numpy(p0[o:o + n].reshape(s).copy()))
              for (o, n), s in zip(layout, sizes)]
    opt = bnb.optim.AdamW8bit(params, lr=lrs[0], betas=hp1[:2], eps=hp1[2], weight_decay=hp1[3])
    for k in range(STEPS):
        for pr, (o, n), s in zip(params, layout, sizes):
            pr.grad = torch.from_numpy(grads[k, o:o + n].reshape(s).copy())
        for gr in opt.param_groups:
            gr["lr"] = lrs[k]
        opt.step()
    bp = np.concatenate([pr.detach().numpy().reshape(-1) for pr in params]).astype(f32)
    out["bnbcpu.params"] = bp
    travel = np.abs(r1_final - p0)
    for (o, n) in layout:
        d = np.abs(bp[o:o + n] - r1_final[o:o + n])
        print(f"bnb CPU backend vs CUDA-kernel port, tensor of {n}: max |dp| {d.max():.3g}, "
              f"mean {d.mean():.3g}, mean |p - p0| {travel[o:o + n].mean():.3g}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "adamw8bit.safetensors")
    meta = {"bitsandbytes": bnb.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "source": "numpy port of bitsandbytes csrc/kernels.cu kOptimizerStatic8bit2StateBlockwise"
                      " / kOptimizer32bit2State (see tools/make_optim8bit_fixtures.py)"}
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
