"""LoRA: a low-rank update added to a frozen linear layer.  Derivation: docs/layers/lora.md

A linear layer y = x @ w + b with w (Cin, Cout) gains a trainable detour

    y = x @ w + b + (x @ a @ b_) * scale,    a (Cin, r), b_ (r, Cout), r << Cin, Cout

so fine-tuning learns r * (Cin + Cout) numbers per layer instead of
Cin * Cout.  This module is the detour alone; the model adds its output to
the frozen layer's.  `a` starts random and `b` at zero, so a fresh adapter
changes nothing (docs/layers/lora.md says why that order).
"""
import math

import numpy as np


def forward(x, a, b, scale):
    """x (..., Cin), a (Cin, r), b (r, Cout), scale (a float, alpha / r) -> out (..., Cout), cache.

    out = (x @ a) @ b * scale.  The product goes through the narrow (..., r)
    middle, so it costs N * r * (Cin + Cout), never N * Cin * Cout, and the
    scale is applied there, on the smallest array.
    """
    u = (x @ a) * scale  # (..., Cin) @ (Cin, r) -> (..., r)
    out = u @ b  # (..., r) @ (r, Cout) -> (..., Cout)
    cache = (x, a, b, u, scale)
    return out, cache


def backward(dout, cache):
    """dout (..., Cout) -> dx (..., Cin), da (Cin, r), db (r, Cout).

    With u = scale * x @ a and out = u @ b:
        db = u^T dout                       (r, N) @ (N, Cout)
        du = dout @ b^T                     (N, Cout) @ (Cout, r)
        da = scale * x^T du                 (Cin, N) @ (N, r)
        dx = scale * du @ a^T               (N, r) @ (r, Cin)
    """
    x, a, b, u, scale = cache
    Cin, r = a.shape
    Cout = b.shape[1]
    x2 = x.reshape(-1, Cin)  # (N, Cin): all leading axes are rows
    u2 = u.reshape(-1, r)  # (N, r)
    dout2 = dout.reshape(-1, Cout)  # (N, Cout)
    db = u2.T @ dout2  # (r, Cout)
    du = (dout2 @ b.T) * scale  # (N, r), the scale folded in once for both da and dx
    da = x2.T @ du  # (Cin, r)
    dx = du @ a.T  # (N, Cin)
    return dx.reshape(x.shape), da, db


def init(c_in, c_out, rank, rng, dtype=np.float64):
    """A fresh adapter: a (Cin, r) uniform in +-1/sqrt(Cin), b (r, Cout) zero.

    a's scale is that of a default linear layer on Cin inputs (x @ a has
    roughly x's per-channel size); b = 0 makes the adapter start as the
    identity change.
    """
    bound = 1.0 / math.sqrt(c_in)
    a = rng.uniform(-bound, bound, (c_in, rank)).astype(dtype)
    b = np.zeros((rank, c_out), dtype=dtype)
    return a, b


def merged_weight(w, a, b, scale):
    """w (Cin, Cout) + scale * a @ b: the frozen weight with the adapter folded in (for export)."""
    return w + (a @ b) * scale
