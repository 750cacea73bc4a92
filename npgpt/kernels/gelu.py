"""GELU, tanh approximation (GPT-2's).  Reference: npgpt/layers/gelu.py

Besides the contract pair, `bias_forward` / `bias_backward` fuse the bias
of the preceding linear layer (c_fc) into the same pass: x @ w comes out
of BLAS without its bias, the GELU pass adds it, and the backward sums the
bias gradient while it computes dx, instead of a separate pass each.
"""
import math

import numpy as np
from numba import njit, prange

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


@njit(inline="always", fastmath=True)
def _gelu(x, k, cubic, half, one):
    return half * x * (one + np.tanh(k * (x + cubic * x * x * x)))


@njit(inline="always", fastmath=True)
def _gelu_slope(x, k, cubic, cubic3, half, one):
    """d gelu / dx.  sech^2 u is written 1 - tanh^2 u: fastmath breaks 1/cosh^2 at large |u|."""
    t = np.tanh(k * (x + cubic * x * x * x))
    du_dx = k * (one + cubic3 * x * x)  # cubic3 = 3 * 0.044715
    return half * (one + t) + half * x * (one - t * t) * du_dx


@njit(parallel=True, cache=True, fastmath=True)
def _forward(x, b, has_bias, pre, out):
    """x (N, D), b (D,) -> pre = x + b (N, D), out = gelu(pre) (N, D).  pre may be x."""
    N, D = x.shape
    T = x.dtype.type  # constants in x's type: float32 stays float32
    k, cubic, half, one = T(SQRT_2_OVER_PI), T(CUBIC), T(0.5), T(1.0)
    for r in prange(N):
        for c in range(D):
            v = x[r, c] + b[c] if has_bias else x[r, c]
            pre[r, c] = v
            out[r, c] = _gelu(v, k, cubic, half, one)


@njit(parallel=True, cache=True, fastmath=True)
def _backward(dout, pre, dx):
    """dout, pre (N, D) -> dx (N, D)."""
    N, D = pre.shape
    T = pre.dtype.type
    k, cubic, cubic3, half, one = T(SQRT_2_OVER_PI), T(CUBIC), T(3.0 * CUBIC), T(0.5), T(1.0)
    for r in prange(N):
        for c in range(D):
            dx[r, c] = dout[r, c] * _gelu_slope(pre[r, c], k, cubic, cubic3, half, one)


@njit(parallel=True, cache=True, fastmath=True)
def _backward_bias(dout, pre, dx, db_part):
    """As _backward, and db_part (n_chunks, D) gets each chunk of rows' sum of dx."""
    N, D = pre.shape
    n_chunks = db_part.shape[0]
    T = pre.dtype.type
    k, cubic, cubic3, half, one = T(SQRT_2_OVER_PI), T(CUBIC), T(3.0 * CUBIC), T(0.5), T(1.0)
    for ch in prange(n_chunks):
        for r in range(ch * N // n_chunks, (ch + 1) * N // n_chunks):
            for c in range(D):
                g = dout[r, c] * _gelu_slope(pre[r, c], k, cubic, cubic3, half, one)
                dx[r, c] = g
                db_part[ch, c] += g


def _rows(a):
    a = np.ascontiguousarray(a)
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def forward(x):
    """x (any shape) -> out (same shape), cache (x)."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    _forward(x2, x2[0], False, np.empty_like(x2), out)
    return out.reshape(np.shape(x)), x


def backward(dout, cache):
    """dout (any shape) -> dx (same shape)."""
    pre = _rows(cache)
    dx = np.empty_like(pre)
    _backward(_rows(dout), pre, dx)
    return dx.reshape(np.shape(cache))


def bias_forward(x, b):
    """gelu(x + b) for x (..., D) without its bias yet, b (D,) -> out (..., D), cache.

    x is overwritten with x + b (the pre-activation the backward needs), so
    it must be a buffer the caller owns, such as a fresh x @ w.
    """
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    _forward(x2, b, True, x2, out)
    return out.reshape(x.shape), x


def bias_backward(dout, cache):
    """dout (..., D) -> dx (..., D) (= d loss / d(x + b)), db (D,)."""
    pre = _rows(cache)
    N, D = pre.shape
    n_chunks = max(1, min(N // 64, 8))
    dx = np.empty_like(pre)
    db_part = np.zeros((n_chunks, D), dtype=pre.dtype)
    _backward_bias(_rows(dout), pre, dx, db_part)
    return dx.reshape(cache.shape), db_part.sum(axis=0)
