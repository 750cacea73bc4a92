"""Inverted dropout.  Reference: npgpt/layers/dropout.py

The mask is drawn exactly as the reference draws it (rng.random(x.shape)
>= p, from the caller's NumPy Generator, outside any kernel: Numba's RNG
is not NumPy's), so both give the same output for the same seed.  The
cache keeps the mask as one byte per element instead of a float array.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _apply(x, keep, scale, out):
    """x (n,), keep (n,) bool -> out = x * scale where keep, else 0."""
    zero = x.dtype.type(0)
    for i in prange(x.size):
        out[i] = x[i] * scale if keep[i] else zero


def forward(x, p, rng):
    """x (any shape), p in [0, 1), rng: np.random.Generator -> out, cache."""
    if p == 0.0:
        return x, None
    keep = rng.random(x.shape) >= p  # the reference's draw, bit for bit
    x = np.ascontiguousarray(x)
    scale = x.dtype.type(1.0 / (1.0 - p))
    out = np.empty_like(x)
    _apply(x.reshape(-1), keep.reshape(-1), scale, out.reshape(-1))
    return out, (keep, scale)


def backward(dout, cache):
    """dout -> dx: the same mask and scale, since out is linear in x."""
    if cache is None:
        return dout
    keep, scale = cache
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(dout)
    _apply(dout.reshape(-1), keep.reshape(-1), dout.dtype.type(scale), dx.reshape(-1))
    return dx
