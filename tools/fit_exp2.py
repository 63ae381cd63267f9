#!/usr/bin/env python3
# Fits the degree-6 polynomial of exp2_16_masked (src/ops/exp16.h) and prints its coefficients
# and worst relative error on [-1/2, 1/2] in units of 2^-24, evaluated with float32 Horner steps
# (multiply, round, add, round: no fused multiply-add, so a little pessimistic), beside the
# Taylor coefficients of the same degree. The fit: least squares for relative error on 4,000
# Chebyshev nodes, reweighted 30 times toward the points of largest error (an approximation of
# the minimax polynomial), then rounded to float32.
#     python3 tools/fit_exp2.py
import math

import numpy as np


def horner_f32(c, x):
    p = np.float32(c[-1]) * np.ones_like(x)
    for k in range(len(c) - 2, -1, -1):
        p = (p * x).astype(np.float32)
        p = (p + np.float32(c[k])).astype(np.float32)
    return p


def worst_units(c, x):
    p = horner_f32(np.array(c, dtype=np.float32), x)
    return float(np.max(np.abs(p.astype(np.float64) / np.exp2(x.astype(np.float64)) - 1))) * 2**24


deg, n = 6, 4000
t = 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
w = np.ones(n)
A = np.vstack([t**k for k in range(deg + 1)]).T
for _ in range(30):
    c = np.linalg.lstsq(A * (w / 2**t)[:, None], w, rcond=None)[0]
    err = (A @ c) / 2**t - 1
    w = w * (1 + 20 * np.abs(err) / np.abs(err).max())
c32 = [float(np.float32(v)) for v in c]
x = np.linspace(-0.5, 0.5, 200001).astype(np.float32)
taylor = [math.log(2) ** k / math.factorial(k) for k in range(deg + 1)]
print("fitted coefficients (1, f, f^2, ...):", ", ".join(f"{v:.17g}" for v in c32))
print(f"worst relative error: fitted {worst_units(c32, x):.1f} units of 2^-24, "
      f"Taylor {worst_units(taylor, x):.1f}")
