"""GELU, tanh approximation (GPT-2's).  Reference: npgpt/layers/gelu.py

Besides the contract pair, `bias_forward` / `bias_backward` fuse the bias
of the preceding linear layer (c_fc) into the same pass: x @ w comes out
of BLAS without its bias, the GELU pass adds it, and the backward sums the
bias gradient while it computes dx, instead of a separate pass each.
"""
import math

import numpy as np
from numba import njit, prange

from .fastexp import exp_inplace

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715
EXP_LIMIT = 80.0  # exp(80) ~ 5.5e34 fits float32 (max ~3.4e38)
ROWS_PER_TASK, MAX_TASKS = 32, 32


@njit(inline="always", fastmath=True)
def _exp_of_minus_2u(x, k2, cubic, limit):
    """exp(-2u) before the exp: k2 (x + cubic x^3) with k2 = -2 sqrt(2/pi), capped at limit.

    The kernels write gelu with sigmoid(2u) = 1 / (1 + exp(-2u)) = (1 + tanh u) / 2
    instead of tanh: Numba compiles tanh to one slow libm call per element
    while exp vectorises (fastexp.py), and gelu(x) = x sigmoid(2u) has no
    cancellation.  The cap keeps exp finite (fastmath assumes no inf); at
    the cap sigmoid is already 0 to within 1e-34.
    """
    return min(k2 * (x + cubic * x * x * x), limit)


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(x, b, has_bias, out, n_tasks):
    """x (N, D), b (D,) -> out = gelu(x + b) (N, D).  With has_bias, x becomes x + b in place."""
    N, D = x.shape
    T = x.dtype.type  # constants in x's type: float32 stays float32
    k2, cubic, one, limit = T(-2 * SQRT_2_OVER_PI), T(CUBIC), T(1.0), T(EXP_LIMIT)
    for task in prange(n_tasks):
        e = np.empty(D, dtype=x.dtype)  # exp(-2u) of one row
        bits = np.empty(D, dtype=np.int32)
        for r in range(task * N // n_tasks, (task + 1) * N // n_tasks):
            xr, outr = x[r], out[r]
            if has_bias:
                for c in range(D):
                    xr[c] += b[c]
            for c in range(D):
                e[c] = _exp_of_minus_2u(xr[c], k2, cubic, limit)
            exp_inplace(e, bits)
            for c in range(D):
                outr[c] = xr[c] / (one + e[c])  # x sigmoid(2u)


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(dout, pre, dx, db_part):
    """dout, pre (N, D) -> dx (N, D); db_part (n_tasks, D) gets each task's rows' sum of dx.

    d gelu / dx = 0.5 (1 + tanh u) + 0.5 x sech^2(u) du/dx.  With
    s = sigmoid(2u): 1 + tanh u = 2 s and sech^2 u = 1 - tanh^2 u =
    4 s (1 - s), so the slope is s + 2 x s (1 - s) du/dx, where
    2 du/dx = -k2 (1 + 3 cubic x^2).  No cosh, which fastmath breaks at large |u|.
    """
    N, D = pre.shape
    n_tasks = db_part.shape[0]
    T = pre.dtype.type
    k2, cubic, cubic3, one, limit = T(-2 * SQRT_2_OVER_PI), T(CUBIC), T(3 * CUBIC), T(1.0), T(EXP_LIMIT)
    for task in prange(n_tasks):
        e = np.empty(D, dtype=pre.dtype)
        bits = np.empty(D, dtype=np.int32)
        db = db_part[task]
        for r in range(task * N // n_tasks, (task + 1) * N // n_tasks):
            pre_r, dout_r, dx_r = pre[r], dout[r], dx[r]
            for c in range(D):
                e[c] = _exp_of_minus_2u(pre_r[c], k2, cubic, limit)
            exp_inplace(e, bits)
            for c in range(D):
                x = pre_r[c]
                s = one / (one + e[c])
                g = dout_r[c] * (s - x * s * (one - s) * k2 * (one + cubic3 * x * x))
                dx_r[c] = g
                db[c] += g


def _rows(a):
    a = np.ascontiguousarray(a)
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _tasks(N):
    """Row blocks for N rows: enough to share out, few partial sums of db.

    A function of N alone, never of the thread count, so that db's partial
    sums, and therefore its rounding, are the same however many threads run.
    """
    return max(1, min(N // ROWS_PER_TASK, MAX_TASKS))


def forward(x):
    """x (any shape) -> out (same shape), cache (x)."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    _forward(x2, x2[0], False, out, _tasks(x2.shape[0]))  # x2[0]: an unused stand-in for the bias
    return out.reshape(np.shape(x)), x


def backward(dout, cache):
    """dout (any shape) -> dx (same shape)."""
    pre = _rows(cache)
    dx = np.empty_like(pre)
    _backward(_rows(dout), pre, dx, np.zeros((_tasks(pre.shape[0]), pre.shape[1]), pre.dtype))
    return dx.reshape(np.shape(cache))


def bias_forward(x, b):
    """gelu(x + b) for x (..., D) without its bias yet, b (D,) -> out (..., D), cache.

    x is overwritten with x + b (the pre-activation the backward needs), so
    it must be a contiguous buffer the caller owns, such as a fresh x @ w.
    """
    if not x.flags.c_contiguous:
        raise ValueError("bias_forward overwrites x in place: it must be C-contiguous")
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    _forward(x2, b, True, out, _tasks(x2.shape[0]))
    return out.reshape(x.shape), x


def bias_backward(dout, cache):
    """dout (..., D) -> dx (..., D) (= d loss / d(x + b)), db (D,)."""
    pre = _rows(cache)
    dx = np.empty_like(pre)
    db_part = np.zeros((_tasks(pre.shape[0]), pre.shape[1]), dtype=pre.dtype)
    _backward(_rows(dout), pre, dx, db_part)
    return dx.reshape(cache.shape), db_part.sum(axis=0)
