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


def backward_into(dout, cache, dw, db):
    """Like backward, but dw (Cin, Cout) and db (Cout,) or None are output buffers
    (the model passes views of its flat gradient, so nothing is copied) -> dx."""
    x, w, has_bias = cache
    Cin, Cout = w.shape
    x2 = x.reshape(-1, Cin)
    dout2 = dout.reshape(-1, Cout)
    if dw.flags.c_contiguous:
        np.matmul(x2.T, dout2, out=dw)  # (Cin, N) @ (N, Cout), written in place by BLAS
    else:  # a transposed view, such as the tied LM head's wte^T: write (dw^T) = dout^T x instead
        np.matmul(dout2.T, x2, out=dw.T)
    if has_bias:  # a bias added elsewhere (fused into GELU) has its gradient summed there
        np.sum(dout2, axis=0, out=db)
    return (dout2 @ w.T).reshape(x.shape)
