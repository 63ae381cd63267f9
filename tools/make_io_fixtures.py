#!/usr/bin/env python3
# Writes tests/fixtures/io/dtypes.safetensors, the reference file for tests/test_safetensors.c.
# Produced with (from the repository root):
#     python3 tools/make_io_fixtures.py
# (torch 2.x + safetensors 0.x from pip).
#
# The file holds the same 64 values stored as "f16", "bf16", "f32" and "f64" (each is
# torch's rounding of the float64 list below to that dtype), and "expect.f16",
# "expect.bf16", "expect.f32", "expect.f64": torch's .float() of each, as F32. The C test
# converts the first four with st_to_f32 and compares bit-exactly (NaN: both NaN).
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "io",
                   "dtypes.safetensors")


def values():
    """64 float64 values covering the tricky cases of every dtype."""
    inf, nan = float("inf"), float("nan")
    v = [
        0.0, -0.0, 1.0, -1.0, -2.5, 0.5, 1.0 / 3.0, -1.0 / 3.0,
        65504.0, -65504.0, 65519.0, 65520.0,            # f16 max, rounds to max, rounds to inf
        2.0 ** -24, -(2.0 ** -24), 2.0 ** -20, 3 * 2.0 ** -24,  # f16 subnormals
        2.0 ** -25, 2.0 ** -26,                          # halfway / below f16 min subnormal
        6.103515625e-05, 6.0e-05,                        # f16 min normal, just below it
        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,          # f16 round-to-even ties
        1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,            # bf16 round-to-even ties
        2.0 ** -133, -(2.0 ** -140), 1e-45, 1.4e-45,     # f32 / bf16 subnormals
        2.0 ** -149, 2.0 ** -150, 1.17549435e-38, 1e-40,
        3.4028234663852886e38, 3.4e38, 3.5e38, 1e38,    # f32 max, near max, overflow
        1e300, -1e300, 5e-324, -5e-324,                  # f64-only range
        inf, -inf, nan, 123456.789,
    ]
    g = torch.Generator().manual_seed(1234)
    rest = 64 - len(v)
    v += (torch.randn(rest, generator=g, dtype=torch.float64) * 3).tolist()
    assert len(v) == 64
    return torch.tensor(v, dtype=torch.float64)


def main():
    base = values()
    tensors = {}
    for name, dt in (("f16", torch.float16), ("bf16", torch.bfloat16), ("f32", torch.float32),
                     ("f64", torch.float64)):
        t = base.to(dt).contiguous()
        tensors[name] = t
        tensors["expect." + name] = t.float().clone()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={"source": "tools/make_io_fixtures.py",
                                      "torch": torch.__version__})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
