"""Layer normalization over the last axis.  Reference: npgpt/layers/layernorm.py

The forward keeps x, mean and rstd instead of xhat: the model holds x
anyway (it is the residual stream), so the cache costs two floats per row
instead of a second (N, C) array, and the backward recomputes
xhat = (x - mean) * rstd on the fly.
"""
import numpy as np
from numba import njit, prange

ROWS_PER_CHUNK = 64  # backward: rows per parallel task, each with its own dw/db partial sums
MAX_CHUNKS = 32  # the chunk count depends on N alone, never on the thread count, so the
# partial sums (and dw's and db's rounding) are the same however many threads run


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(x, w, b, has_bias, eps, out, mean, rstd):
    """x (N, C), w (C,), b (C,) -> fills out (N, C), mean (N,), rstd (N,)."""
    N, C = x.shape
    T = x.dtype.type  # constants in x's type: float32 math stays float32
    zero, one, n = T(0), T(1), T(C)
    for r in prange(N):
        s = zero
        for c in range(C):
            s += x[r, c]
        m = s / n
        ss = zero
        for c in range(C):
            d = x[r, c] - m
            ss += d * d
        rs = one / np.sqrt(ss / n + eps)
        mean[r] = m
        rstd[r] = rs
        for c in range(C):
            y = (x[r, c] - m) * rs * w[c]
            out[r, c] = y + b[c] if has_bias else y


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(dout, x, mean, rstd, w, dx, dw_part, db_part):
    """dout, x (N, C) -> dx (N, C); dw_part, db_part (n_chunks, C) per-chunk sums.

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w.
    dw and db sum over rows; each task sums its own chunk of rows into its
    own partial row, so no two tasks write the same element.
    """
    N, C = x.shape
    n_chunks = dw_part.shape[0]
    T = x.dtype.type
    zero, n = T(0), T(C)
    for ch in prange(n_chunks):
        r0 = ch * N // n_chunks
        r1 = (ch + 1) * N // n_chunks
        for r in range(r0, r1):
            m, rs = mean[r], rstd[r]
            sum_g = zero
            sum_gx = zero
            for c in range(C):
                xhat = (x[r, c] - m) * rs
                g = dout[r, c] * w[c]
                sum_g += g
                sum_gx += g * xhat
                dw_part[ch, c] += dout[r, c] * xhat
                db_part[ch, c] += dout[r, c]
            mean_g = sum_g / n
            mean_gx = sum_gx / n
            for c in range(C):
                xhat = (x[r, c] - m) * rs
                dx[r, c] = rs * (dout[r, c] * w[c] - mean_g - xhat * mean_gx)


def forward(x, w, b, eps=1e-5):
    """x (..., C), w (C,), b (C,) or None -> out (..., C), cache."""
    C = w.shape[0]
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    dtype = np.result_type(x, w)
    N = x2.shape[0]
    out = np.empty((N, C), dtype=dtype)
    mean = np.empty(N, dtype=dtype)
    rstd = np.empty(N, dtype=dtype)
    bias = w if b is None else b  # any (C,) array of the right type; ignored without a bias
    _forward(x2, w, bias, b is not None, dtype.type(eps), out, mean, rstd)
    cache = (x2, mean, rstd, w, b is not None)
    return out.reshape(x.shape), cache


def backward(dout, cache):
    """dout (..., C) -> dx (..., C), dw (C,), db (C,) or None."""
    x2, mean, rstd, w, has_bias = cache
    N, C = x2.shape
    dout2 = np.ascontiguousarray(dout).reshape(N, C)
    n_chunks = max(1, min(N // ROWS_PER_CHUNK, MAX_CHUNKS))
    dx = np.empty_like(dout2)
    dw_part = np.zeros((n_chunks, C), dtype=dout2.dtype)
    db_part = np.zeros((n_chunks, C), dtype=dout2.dtype)
    _backward(dout2, x2, mean, rstd, w, dx, dw_part, db_part)
    db = db_part.sum(axis=0) if has_bias else None
    return dx.reshape(dout.shape), dw_part.sum(axis=0), db
