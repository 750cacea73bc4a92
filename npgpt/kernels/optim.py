"""AdamW update and gradient norm over one flat parameter buffer.

Reference: npgpt/optim.py (NumPy versions of the same two functions).
Every parameter lives in one flat array (model.flat_params), so the whole
optimizer step is a single fused pass that reads param, grad, m, v and the
decay mask once and writes param, m, v once, instead of a dozen NumPy
passes with their temporaries.  At GPT-2 size that is 124M elements: the
update is memory-bound, and passes are what cost.
"""
import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _adamw(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, bias1, bias2):
    one = param.dtype.type(1)
    for i in prange(param.size):
        g = grad[i]
        m[i] = beta1 * m[i] + (one - beta1) * g
        v[i] = beta2 * v[i] + (one - beta2) * g * g
        p = param[i] - lr * weight_decay * param.dtype.type(decay[i]) * param[i]  # decoupled weight decay
        param[i] = p - lr * (m[i] / bias1) / (np.sqrt(v[i] / bias2) + eps)


NORM_CHUNKS = 64  # fixed, not one per thread: the same sum order on any number of threads


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _sum_squares(a):
    """sum(a**2) in float64 (124M float32 squares would lose digits in float32).

    NORM_CHUNKS contiguous chunks, summed in parallel and then in order: a
    prange reduction would split the sum by thread, and the clipping factor
    would then differ in its last bits between machines.
    """
    partial = np.zeros(NORM_CHUNKS)
    for chunk in prange(NORM_CHUNKS):
        total = 0.0
        for i in range(chunk * a.size // NORM_CHUNKS, (chunk + 1) * a.size // NORM_CHUNKS):
            x = np.float64(a[i])
            total += x * x
        partial[chunk] = total
    total = 0.0
    for chunk in range(NORM_CHUNKS):
        total += partial[chunk]
    return total


def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step, in place, over flat 1-D arrays of equal size.

    param, grad, m, v (n,); decay (n,) 1.0 where weight decay applies, 0.0
    elsewhere, in any numeric dtype: a uint8 mask saves 3 bytes per
    parameter over float32 (500 MB at GPT-2 size); step counts from 1 (for
    the bias corrections).
        m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
        param -= lr * weight_decay * decay * param            (decoupled)
        param -= lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
    """
    if not (param.shape == grad.shape == m.shape == v.shape == decay.shape and param.ndim == 1):
        raise ValueError("adamw_step needs flat 1-D arrays of one size")
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    T = param.dtype.type  # scalars in the parameters' type: no float64 promotion
    _adamw(param, grad, m, v, decay, T(lr), T(beta1), T(beta2), T(eps), T(weight_decay),
           T(1.0 - beta1 ** step), T(1.0 - beta2 ** step))


def global_norm(grad):
    """grad (n,) -> sqrt(sum(grad**2)) as a Python float, accumulated in float64."""
    return math.sqrt(_sum_squares(np.ascontiguousarray(grad).reshape(-1)))
