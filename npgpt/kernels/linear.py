"""Affine map y = x @ w + b through BLAS.  Reference: npgpt/layers/linear.py

Nothing hand-written beats sgemm, so this kernel's only job is to hand BLAS
the biggest matrices it can: all leading axes are flattened into rows, so
(B, T, Cin) @ (Cin, Cout) is one (B*T, Cin) @ (Cin, Cout) product instead
of B smaller ones.
"""
import numpy as np


def forward(x, w, b=None):
    """x (..., Cin), w (Cin, Cout), b (Cout,) or None -> out (..., Cout), cache."""
    Cin, Cout = w.shape
    x2 = x.reshape(-1, Cin)  # (N, Cin), N = product of the leading axes
    out = x2 @ w  # (N, Cout): one GEMM
    if b is not None:
        out += b  # in place: no second (N, Cout) temporary
    cache = (x, w, b is not None)
    return out.reshape(*x.shape[:-1], Cout), cache


def backward(dout, cache):
    """dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,) or None."""
    x, w, has_bias = cache
    Cin, Cout = w.shape
    x2 = x.reshape(-1, Cin)  # (N, Cin)
    dout2 = dout.reshape(-1, Cout)  # (N, Cout)
    dx = dout2 @ w.T  # (N, Cout) @ (Cout, Cin); BLAS reads w transposed in place
    dw = x2.T @ dout2  # (Cin, N) @ (N, Cout)
    db = dout2.sum(axis=0) if has_bias else None
    return dx.reshape(x.shape), dw, db
