#!/usr/bin/env python3
# Command (from the repository root; CPU only, deterministic, about a minute):
#     python3 tools/make_metrics_fixtures.py            # writes tests/fixtures/metrics/
#     python3 tools/make_metrics_fixtures.py --out DIR  # somewhere else
#
# Reference values for src/eval/metrics.c, read by tests/test_metrics.c. Needs numpy, scipy,
# mpmath and safetensors (pip install numpy scipy mpmath safetensors). Inputs are stored in the
# dtype the C code reads (F32, or F16 for the largest feature sets -- exactly representable in
# float32); every reference is computed from the stored values converted to float64, so the
# inputs seen by both sides are identical.
#
# metrics.safetensors
#   Student t:
#     t.dof [D] (I32), t.p [P] (F64): the grid, dof 1..200 and 250, 500, 1e3, 1e4, 1e5, 1e6;
#     t.q_mp [D, P]: the quantile from mpmath (40 digits: root of the regularized incomplete
#         beta) -- the truth; t.q_scipy [D, P]: scipy.stats.t.ppf(p, dof);
#     t.kappa [D, P] (F32): relative condition number of the quantile, |F(t) - F(0)| / (|t| f(t))
#         for the branch solved (tail 1 - p, or centre p - 0.5): a relative error e of that
#         probability moves t by kappa * e (relative);
#     t.cdf_t [C] (F64), t.cdf_dof [C] (I32), t.cdf_mp [C] (mpmath, the tail as above),
#         t.cdf_scipy [C]: P(T <= t).
#   mean CI (cases in metadata "ci.cases"):
#     ci.<c>.x [n] (F64); ci.<c>.ref [3]: mean, sd (ddof 1), half = t.ppf(0.975, n-1) sd/sqrt(n)
#     (NaN for sd and half when n = 1).
#   win rate (cases in "wr.cases"):
#     wr.<c>.a [n], wr.<c>.b [n] (F32; the references use exactly these values); wr.<c>.hp [2]: higher_better, tie_eps;
#     wr.<c>.counts [3] (I64): wins, ties, losses; wr.<c>.ref [3]: rate, lo, hi -- from the
#     outcome vector o in {0, 0.5, 1}: o.mean(), o.mean() -/+ z o.std(ddof=1) / sqrt(n),
#     clipped to [0, 1] (n = 1: [0, 1]).
#   Frechet distance (cases in "fd.cases"):
#     fd.<c>.x [n, d], fd.<c>.y [m, d] (F32 or F16);
#     fd.<c>.mu_x [d], fd.<c>.mu_y [d]: numpy mean; fd.<c>.cov_x [d, d], fd.<c>.cov_y: numpy.cov
#         (rowvar=False, ddof 1) -- for d = 64 only the first 4 rows [4, d] (size budget);
#     fd.<c>.tr [2]: trace of cov_x, cov_y; fd.<c>.norm [2]: largest eigenvalue of each;
#     fd.<c>.fd_sqrtm [1]: pytorch-fid's formula, scipy.linalg.sqrtm(cov_x @ cov_y), real part;
#     fd.<c>.fd_svd [1]: the same distance with tr((Sx Sy)^{1/2}) as the nuclear norm of
#         Xc Yc^T / sqrt((n-1)(m-1)) (Xc, Yc centred data): the nonzero eigenvalues of Sx Sy are
#         the squared singular values of that matrix, and the SVD has none of the square-root
#         ill-conditioning of sqrtm at singular covariances -- the accurate reference;
#     fd.<c>.lam [d]: eigenvalues of Sx^{1/2} Sy Sx^{1/2} (those squared singular values,
#         zero-padded to d), fd.<c>.lamxx [d]: eigenvalues of Sx^2 (the identical-sets case);
#         the test's error bound is a function of these.
#   cosines (cases in "cos.cases"): cos.<c>.x [n, d], cos.<c>.y [m, d] (F32 or a view of an
#     fd case named in metadata cos.<c>.from), cos.<c>.ref [2]: mean pair cosine over the first
#     min(n, m) rows, cosine of the two mean vectors (numpy float64).
#   top-1: top1.<c>.logits [n, k] (F16), top1.<c>.labels [n] (I32), top1.<c>.ref [1]:
#     mean(argmax(logits, 1) == labels) (numpy; ties between maxima -> lowest index).
import argparse
import os
import time

import mpmath
import numpy as np
import scipy
import scipy.linalg
import scipy.stats
from safetensors.numpy import save_file

Z975 = 1.959963984540054
mpmath.mp.dps = 40


# ------------------------------------------------------------------ Student t
def mp_tail(t, nu):  # P(T > t), t >= 0
    return mpmath.betainc(nu / 2, mpmath.mpf(1) / 2, 0, nu / (nu + t * t), regularized=True) / 2


def mp_centre(t, nu):  # P(0 < T <= t)
    return mpmath.betainc(mpmath.mpf(1) / 2, nu / 2, 0, t * t / (nu + t * t), regularized=True) / 2


def mp_pdf(t, nu):
    return mpmath.gamma((nu + 1) / 2) / (mpmath.sqrt(nu * mpmath.pi) * mpmath.gamma(nu / 2)) * \
        (1 + t * t / nu) ** (-(nu + 1) / 2)


def mp_quantile(p, dof, start):
    """t with P(T <= t) = p (p a double, taken exactly); the branch as the C code: the tail
    1 - p when it is <= 0.25, else the centre |p - 0.5|. Returns (t, kappa)."""
    P = mpmath.mpf(p)
    nu = mpmath.mpf(dof)
    q = 1 - P if P > 0.5 else P
    c = abs(P - mpmath.mpf(1) / 2)
    use_tail = q <= mpmath.mpf(1) / 4
    if use_tail:
        f = lambda t: mp_tail(t, nu) - q  # noqa: E731
    else:
        f = lambda t: mp_centre(t, nu) - c  # noqa: E731
    t = mpmath.findroot(f, mpmath.mpf(abs(start)), tol=mpmath.mpf(10) ** -36)
    kappa = (q if use_tail else c) / (t * mp_pdf(t, nu))
    sign = 1 if p > 0.5 else -1
    return sign * float(t), float(kappa)


def student_t(out):
    dofs = list(range(1, 201)) + [250, 500, 1000, 10**4, 10**5, 10**6]
    ps = [1e-10, 0.025, 0.3, 0.5 + 2.0**-20, 0.6, 0.75, 0.9, 0.95, 0.975, 0.995, 0.9995,
          1 - 2.0**-30]
    qmp = np.zeros((len(dofs), len(ps)))
    qsp = np.zeros_like(qmp)
    kap = np.zeros_like(qmp)
    for i, dof in enumerate(dofs):
        for j, p in enumerate(ps):
            qsp[i, j] = scipy.stats.t.ppf(p, dof)
            qmp[i, j], kap[i, j] = mp_quantile(p, dof, qsp[i, j])
    out["t.dof"] = np.array(dofs, dtype=np.int32)
    out["t.p"] = np.array(ps)
    out["t.q_mp"] = qmp
    out["t.q_scipy"] = qsp
    out["t.kappa"] = kap.astype(np.float32)  # only scales a tolerance
    rel = np.abs(qsp - qmp) / np.abs(qmp)
    print(f"  scipy t.ppf vs mpmath: max relative difference {rel.max():.3g} "
          f"(p = {ps[np.unravel_index(rel.argmax(), rel.shape)[1]]!r}), "
          f"at p = 0.975: {rel[:, ps.index(0.975)].max():.3g}")
    ct, cd = [], []
    for dof in [1, 2, 3, 10, 199, 10**6]:
        for t in [-30.0, -1.96, -0.1, 0.0, 1e-8, 0.1, 1.0, 1.96, 10.0, 1000.0]:
            ct.append(t)
            cd.append(dof)
    cmp_ = []
    for t, dof in zip(ct, cd):  # (mpmath.quad is not accurate in the far tails: not used)
        tail = mp_tail(mpmath.mpf(abs(t)), mpmath.mpf(dof))
        cmp_.append(float(tail if t < 0 else 1 - tail))
    out["t.cdf_t"] = np.array(ct)
    out["t.cdf_dof"] = np.array(cd, dtype=np.int32)
    out["t.cdf_mp"] = np.array(cmp_)
    out["t.cdf_scipy"] = np.array([scipy.stats.t.cdf(t, d) for t, d in zip(ct, cd)])


# ------------------------------------------------------------------ mean CI
def mean_ci(out, meta, rng):
    cases = {
        "n1": np.array([3.25]),
        "n2": np.array([0.71, 0.74]),
        "n5": 0.3 + 0.01 * rng.standard_normal(5),
        "n50": 1e3 + rng.standard_normal(50),  # large offset: the mean's rounding matters
        "n200": rng.standard_normal(200) * np.logspace(-3, 3, 200),
    }
    for c, x in cases.items():
        n = len(x)
        if n == 1:
            ref = [x.mean(), np.nan, np.nan]
        else:
            sd = x.std(ddof=1)
            ref = [x.mean(), sd, scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)]
        out[f"ci.{c}.x"] = x.astype(np.float64)
        out[f"ci.{c}.ref"] = np.array(ref)
    meta["ci.cases"] = ",".join(cases)


# ------------------------------------------------------------------ win rate
def win_rate_ref(a, b, higher_better, tie_eps):
    diff = (a - b) if higher_better else (b - a)
    tie = np.abs(diff) <= tie_eps
    win = ~tie & (diff > 0)
    loss = ~tie & ~win
    o = np.where(tie, 0.5, np.where(win, 1.0, 0.0))
    n = len(o)
    rate = o.mean()
    if n < 2:
        lo, hi = 0.0, 1.0
    else:
        half = Z975 * o.std(ddof=1) / np.sqrt(n)
        lo, hi = max(0.0, rate - half), min(1.0, rate + half)
    return [int(win.sum()), int(tie.sum()), int(loss.sum())], [rate, lo, hi]


def win_rates(out, meta, rng):
    cases = {}
    cases["n1"] = (np.array([0.3]), np.array([0.2]), 1, 0.0)
    cases["n2"] = (np.array([0.3, 0.1]), np.array([0.2, 0.4]), 1, 0.0)
    a = rng.standard_normal(50)
    cases["n50"] = (a + 0.3, rng.standard_normal(50), 1, 0.0)
    # scores on a 0.01 grid: many exact ties, and near-ties decided by tie_eps
    a = np.round(rng.standard_normal(700) * 0.05, 2) + 0.2
    b = np.round(rng.standard_normal(700) * 0.05, 2) + 0.2
    cases["n700_ties"] = (a, b, 1, 0.01)
    a = np.round(rng.standard_normal(300) * 0.05, 2) + 0.2
    b = np.round(rng.standard_normal(300) * 0.05, 2) + 0.21
    cases["n300_lower"] = (a, b, 0, 0.0)  # lower is better (e.g. a distance)
    cases["all_wins"] = (np.arange(10.0) + 1, np.arange(10.0), 1, 0.5)  # s = 0: CI [1, 1]
    cases["all_ties"] = (np.ones(7), np.ones(7), 1, 0.0)
    for c, (a, b, hb, eps) in cases.items():
        a = a.astype(np.float32).astype(np.float64)  # stored as F32 (size budget)
        b = b.astype(np.float32).astype(np.float64)
        counts, ref = win_rate_ref(a, b, hb, eps)
        out[f"wr.{c}.a"] = a.astype(np.float32)
        out[f"wr.{c}.b"] = b.astype(np.float32)
        out[f"wr.{c}.hp"] = np.array([hb, eps], dtype=np.float64)
        out[f"wr.{c}.counts"] = np.array(counts, dtype=np.int64)
        out[f"wr.{c}.ref"] = np.array(ref)
    meta["wr.cases"] = ",".join(cases)


# ------------------------------------------------------------------ Frechet distance
def fd_sqrtm(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (without its eps fallback; pytorch-fid passes
    disp=False, deprecated in scipy 1.17, to the same algorithm)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def fd_svd(x, y):
    n, m, d = len(x), len(y), x.shape[1]
    xc, yc = x - x.mean(0), y - y.mean(0)
    sv = np.linalg.svd(xc @ yc.T / np.sqrt((n - 1) * (m - 1)), compute_uv=False)
    sx, sy = np.cov(x, rowvar=False, ddof=1), np.cov(y, rowvar=False, ddof=1)
    sx, sy = np.atleast_2d(sx), np.atleast_2d(sy)
    diff = x.mean(0) - y.mean(0)
    fd = diff.dot(diff) + np.trace(sx) + np.trace(sy) - 2 * sv.sum()
    lam = np.zeros(d)
    k = min(d, len(sv))
    lam[:k] = np.sort(sv)[::-1][:k] ** 2
    return fd, lam


def rot(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def frechet(out, meta, rng):
    cases = {}

    def gauss(n, d, scales, mu, r, dtype=np.float32):
        z = rng.standard_normal((n, d)) * scales
        return (z @ r.T + mu).astype(dtype)

    cases["d1_n2"] = (np.array([[0.5], [2.0]], np.float32), np.array([[-1.0], [3.25]], np.float32))
    cases["d1_n700"] = (gauss(700, 1, 1.0, 0.3, np.eye(1)), gauss(50, 1, 2.0, -0.2, np.eye(1)))
    r8 = rot(rng, 8)
    cases["d8_n2"] = (gauss(2, 8, 1.0, 0.0, r8), gauss(3, 8, 1.5, 0.5, r8))
    cases["d8_n50"] = (gauss(50, 8, np.linspace(0.5, 2, 8), 0.1 * rng.standard_normal(8), r8),
                       gauss(60, 8, np.linspace(2, 0.7, 8), 0.0, rot(rng, 8)))
    # condition number ~1e12: eigenvalue scales 1 .. 1e-12 in rotated coordinates
    sc = np.logspace(0, -6, 8)
    cases["d8_illcond"] = (gauss(50, 8, sc, 1.0, r8), gauss(50, 8, sc[::-1], 1.0, rot(rng, 8)))
    r64 = rot(rng, 64)
    cases["d64_n700"] = (gauss(700, 64, np.linspace(0.2, 3, 64), 0.2 * rng.standard_normal(64),
                               r64, np.float16),
                         gauss(200, 64, np.linspace(2.5, 0.3, 64), 0.0, rot(rng, 64), np.float16))
    cases["d64_n20"] = (gauss(20, 64, 1.0, 0.0, r64), gauss(40, 64, 1.3, 0.1, rot(rng, 64)))
    w = rng.standard_normal((5, 64))  # exactly 5-dimensional data, then rounded to float32
    cases["d64_lowrank"] = ((rng.standard_normal((66, 5)) @ w).astype(np.float32),
                            (rng.standard_normal((66, 5)) * 1.2 @ w + 0.1).astype(np.float32))
    worst = 0.0
    for c, (x, y) in cases.items():
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        d = x.shape[1]
        sx = np.atleast_2d(np.cov(xd, rowvar=False, ddof=1))
        sy = np.atleast_2d(np.cov(yd, rowvar=False, ddof=1))
        out[f"fd.{c}.x"] = x
        out[f"fd.{c}.y"] = y
        out[f"fd.{c}.mu_x"] = xd.mean(0)
        out[f"fd.{c}.mu_y"] = yd.mean(0)
        if d <= 8:
            out[f"fd.{c}.cov_x"] = sx
            out[f"fd.{c}.cov_y"] = sy
        else:  # the size budget: the first 4 rows
            out[f"fd.{c}.cov_x"] = np.ascontiguousarray(sx[:4])
            out[f"fd.{c}.cov_y"] = np.ascontiguousarray(sy[:4])
        ex, ey = np.linalg.eigvalsh(sx), np.linalg.eigvalsh(sy)
        out[f"fd.{c}.tr"] = np.array([np.trace(sx), np.trace(sy)])
        out[f"fd.{c}.norm"] = np.array([ex.max(), ey.max()])
        ref_sqrtm = fd_sqrtm(xd.mean(0), sx, yd.mean(0), sy)
        ref_svd, lam = fd_svd(xd, yd)
        out[f"fd.{c}.fd_sqrtm"] = np.array([ref_sqrtm])
        out[f"fd.{c}.fd_svd"] = np.array([ref_svd])
        out[f"fd.{c}.lam"] = lam
        out[f"fd.{c}.lamxx"] = np.sort(np.clip(ex, 0, None))[::-1] ** 2
        dev = abs(ref_sqrtm - ref_svd) / abs(ref_svd)
        worst = max(worst, dev)
        print(f"  fd {c:12s} n={len(x):4d} m={len(y):4d} d={d:2d}  FD {ref_svd:.10g}   "
              f"sqrtm vs svd {dev:.2e}")
    meta["fd.cases"] = ",".join(cases)
    return cases


# ------------------------------------------------------------------ cosines, top-1
def cos_ref(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    k = min(len(x), len(y))
    a, b = x[:k], y[:k]
    pair = np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    mx, my = x.mean(0), y.mean(0)
    return [pair, mx.dot(my) / (np.linalg.norm(mx) * np.linalg.norm(my))]


def cosines(out, meta, rng, fdcases):
    names = []
    x = rng.standard_normal((50, 1)).astype(np.float32)
    y = rng.standard_normal((50, 1)).astype(np.float32)
    out["cos.d1.x"], out["cos.d1.y"] = x, y
    out["cos.d1.ref"] = np.array(cos_ref(x, y))
    names.append("d1")
    x = rng.standard_normal((50, 8)).astype(np.float32)
    y = (0.7 * x + 0.5 * rng.standard_normal((50, 8)) + 0.2).astype(np.float32)
    out["cos.d8.x"], out["cos.d8.y"] = x, y
    out["cos.d8.ref"] = np.array(cos_ref(x, y))
    names.append("d8")
    x, y = fdcases["d64_n700"]  # 700 and 200 rows: pairs over the first 200
    out["cos.d64.ref"] = np.array(cos_ref(x, y))
    meta["cos.d64.from"] = "d64_n700"
    names.append("d64")
    meta["cos.cases"] = ",".join(names)

    cases = []
    lg = (rng.standard_normal((700, 10)) * 2).astype(np.float16)
    lab = rng.integers(0, 10, 700).astype(np.int32)
    lab[:300] = np.argmax(lg[:300], 1)  # ~45% correct
    for i in range(0, 700, 7):  # tied maxima: both the lowest and a higher index labelled
        j = int(np.argmax(lg[i]))
        k = (j + 3) % 10
        lg[i, k] = lg[i, j]
        if i % 2:
            lab[i] = max(j, k)  # numpy.argmax picks min(j, k): counted wrong
    for c, (l, t) in {"n700_k10": (lg, lab),
                      "n5_k1": (np.zeros((5, 1), np.float16), np.zeros(5, np.int32))}.items():
        out[f"top1.{c}.logits"] = l
        out[f"top1.{c}.labels"] = t
        out[f"top1.{c}.ref"] = np.array([np.mean(np.argmax(l.astype(np.float64), 1) == t)])
        cases.append(c)
    meta["top1.cases"] = ",".join(cases)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/metrics")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240611)
    out, meta = {}, {"generator": "tools/make_metrics_fixtures.py", "numpy": np.__version__,
                     "scipy": scipy.__version__, "mpmath": mpmath.__version__}
    t0 = time.time()
    mean_ci(out, meta, rng)
    win_rates(out, meta, rng)
    fdc = frechet(out, meta, rng)
    cosines(out, meta, rng, fdc)
    student_t(out)
    path = os.path.join(args.out, "metrics.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors) "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
