"""Softmax cross-entropy, fused.  Reference: npgpt/layers/cross_entropy.py

The reference makes four (B, T, V) arrays (shifted logits, exp, log-probs,
probabilities); at GPT-2's V = 50257 each is 200 KB per position.  Here the
forward makes none: per row it takes the max, the sum of exponentials and
(for label smoothing) the sum of logits, and keeps one log-sum-exp per
position.  The backward writes softmax - target in a single pass from the
logits and that log-sum-exp.
"""
import numpy as np
from numba import njit, prange

from .fastexp import exp_inplace


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(logits, targets, valid, label_smoothing, lse, losses):
    """logits (N, V), targets (N,) -> fills lse (N,), losses (N,) (0 where not valid).

    loss = (1 - eps) (lse - logit[target]) + eps (lse - mean(logits)),
    the same as (1 - eps) * nll + eps * mean_j(-log p_j).
    """
    N, V = logits.shape
    zero = logits.dtype.type(0)
    one = logits.dtype.type(1)
    for r in prange(N):
        e = np.empty(V, dtype=logits.dtype)  # one row's exp(logit - max)
        bits = np.empty(V, dtype=np.int32)
        mx = logits[r, 0]  # start from a real logit: fastmath assumes no -inf
        total_logits = zero
        for j in range(V):
            x = logits[r, j]
            mx = max(mx, x)
            total_logits += x
        for j in range(V):
            e[j] = logits[r, j] - mx
        exp_inplace(e, bits)
        total = zero
        for j in range(V):
            total += e[j]
        lse[r] = mx + np.log(total)
        if valid[r]:
            nll = lse[r] - logits[r, targets[r]]
            smooth = lse[r] - total_logits / V
            losses[r] = (one - label_smoothing) * nll + label_smoothing * smooth
        else:
            losses[r] = zero


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(logits, targets, lse, weight, label_smoothing, dlogits):
    """Fills dlogits (N, V) = (softmax(logits) - target distribution) * weight[row].

    The target distribution is (1 - eps) one_hot(target) + eps / V.
    dlogits may be logits itself (an in-place backward).
    """
    N, V = logits.shape
    one = logits.dtype.type(1)
    uniform = label_smoothing / V
    for r in prange(N):
        bits = np.empty(V, dtype=np.int32)  # exp's scratch
        w = weight[r]
        m = lse[r]
        target = targets[r]
        row = dlogits[r]
        for j in range(V):
            row[j] = logits[r, j] - m
        exp_inplace(row, bits)  # softmax, from the log-sum-exp
        for j in range(V):
            row[j] = (row[j] - uniform) * w
        row[target] -= (one - label_smoothing) * w


def forward(logits, targets, label_smoothing=0.0, ignore_index=-1):
    """logits (B, T, V), targets (B, T) int -> scalar mean loss, cache."""
    V = logits.shape[-1]
    dtype = logits.dtype
    logits2 = np.ascontiguousarray(logits).reshape(-1, V)  # (N, V)
    targets = np.asarray(targets)
    valid = (targets != ignore_index).reshape(-1)  # (N,)
    safe_targets = np.where(valid, targets.reshape(-1), 0)  # any in-range index where ignored
    if safe_targets.size and (safe_targets.min() < 0 or safe_targets.max() >= V):
        raise IndexError(f"targets must be in [0, {V}) or equal ignore_index")
    lse = np.empty(logits2.shape[0], dtype=dtype)
    losses = np.empty(logits2.shape[0], dtype=dtype)
    eps = dtype.type(label_smoothing)
    _forward(logits2, safe_targets, valid, eps, lse, losses)
    n_valid = int(valid.sum())
    loss = losses.sum(dtype=np.float64) / max(n_valid, 1)
    cache = (logits2, safe_targets, valid, n_valid, lse, eps, np.shape(logits))
    return dtype.type(loss), cache


def backward(dloss, cache, out=None):
    """dloss (scalar) -> dlogits (B, T, V).

    out: an optional (B, T, V) buffer for dlogits; passing the logits
    themselves (when nothing else needs them) saves a (B, T, V) array.
    """
    logits2, safe_targets, valid, n_valid, lse, eps, shape = cache
    dtype = logits2.dtype
    weight = (valid * (float(dloss) / max(n_valid, 1))).astype(dtype)  # (N,), 0 where ignored
    dlogits = np.empty_like(logits2) if out is None else out.reshape(logits2.shape)
    _backward(logits2, safe_targets, lse, weight, eps, dlogits)
    return dlogits.reshape(shape)



def backward_in_place(dloss, cache):
    """backward, written over the cached logits: at V = 50257 that saves a
    (B, T, V) array and its page faults.  The cache is spent afterwards."""
    return backward(dloss, cache, out=cache[0])
