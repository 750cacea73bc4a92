"""Causal multi-head self-attention, flash-attention style.  Reference: npgpt/layers/attention.py

The reference materialises P = softmax(q k^T * scale) as a (B, nh, T, T)
array.  Here each query row's scores live in a length-T scratch row and are
gone once its output is written; the forward keeps only the output and one
log-sum-exp per (batch, head, query),

    lse[t] = log sum_{t2 <= t} exp(s[t, t2]),   s = q k^T * scale,

from which the backward recomputes any probability as
P[t, t2] = exp(s[t, t2] - lse[t]).  Activation memory is O(T) per head.

q, k and v are read straight out of the packed (B, T, 3C) qkv: head h's
query is qkv[b, t, h*hs : (h+1)*hs], its key C columns further on, its
value 2C further on.  Gradients are written to the same places of dqkv.
The causal mask is the loop bound t2 <= t, never a -inf (see fastmath).
"""
import math

import numpy as np
from numba import njit, prange

QUERY_BLOCK = 16  # forward: queries per parallel task (more tasks balance the causal triangle)


@njit(parallel=True, cache=True, fastmath=True)
def _forward(qkv, n_head, scale, out, lse):
    """qkv (B, T, 3C) -> fills out (B, T, C) and lse (B, nh, T)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    n_blocks = (T + QUERY_BLOCK - 1) // QUERY_BLOCK
    zero, one = qkv.dtype.type(0), qkv.dtype.type(1)  # typed constants: float32 stays float32
    for task in prange(B * n_head * n_blocks):
        b = task // (n_head * n_blocks)
        h = (task // n_blocks) % n_head
        blk = task % n_blocks
        qo, ko, vo = h * hs, C + h * hs, 2 * C + h * hs  # column offsets of q, k, v
        scores = np.empty(T, dtype=qkv.dtype)  # one query's row, reused
        acc = np.empty(hs, dtype=qkv.dtype)
        for t in range(blk * QUERY_BLOCK, min((blk + 1) * QUERY_BLOCK, T)):
            # s[t2] = q_t . k_t2 * scale for the visible keys t2 <= t
            mx = zero
            for t2 in range(t + 1):
                s = zero
                for d in range(hs):
                    s += qkv[b, t, qo + d] * qkv[b, t2, ko + d]
                s *= scale
                scores[t2] = s
                if t2 == 0 or s > mx:
                    mx = s
            # softmax numerators and their sum; the max keeps exp from overflowing
            total = zero
            for t2 in range(t + 1):
                e = np.exp(scores[t2] - mx)
                scores[t2] = e
                total += e
            inv = one / total
            # y_t = sum_t2 P[t, t2] v_t2
            acc[:] = zero
            for t2 in range(t + 1):
                p = scores[t2] * inv
                for d in range(hs):
                    acc[d] += p * qkv[b, t2, vo + d]
            for d in range(hs):
                out[b, t, qo + d] = acc[d]
            lse[b, h, t] = mx + np.log(total)


@njit(parallel=True, cache=True, fastmath=True)
def _backward(dout, qkv, out, lse, n_head, scale, dqkv):
    """dout (B, T, C) -> fills dqkv (B, T, 3C), which must start zeroed.

    For each visible pair (t, t2), with P recomputed from lse:
        dP = dy_t . v_t2,   dS = P (dP - D_t),   D_t = dy_t . y_t (= rowsum(dP * P)),
        dq_t += dS k_t2 scale,  dk_t2 += dS q_t scale,  dv_t2 += P dy_t.
    One task per (batch, head): dk and dv of a key gather from every later
    query, so only a task owning the whole head can write them race-free.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    zero = qkv.dtype.type(0)
    for task in prange(B * n_head):
        b, h = task // n_head, task % n_head
        qo, ko, vo = h * hs, C + h * hs, 2 * C + h * hs
        dq = np.empty(hs, dtype=qkv.dtype)
        for t in range(T):
            D = zero
            for d in range(hs):
                D += dout[b, t, qo + d] * out[b, t, qo + d]
            dq[:] = zero
            for t2 in range(t + 1):
                s = zero
                dp = zero
                for d in range(hs):
                    s += qkv[b, t, qo + d] * qkv[b, t2, ko + d]
                    dp += dout[b, t, qo + d] * qkv[b, t2, vo + d]
                p = np.exp(s * scale - lse[b, h, t])
                ds = p * (dp - D) * scale
                for d in range(hs):
                    dq[d] += ds * qkv[b, t2, ko + d]
                    dqkv[b, t2, ko + d] += ds * qkv[b, t, qo + d]
                    dqkv[b, t2, vo + d] += p * dout[b, t, qo + d]
            for d in range(hs):
                dqkv[b, t, qo + d] = dq[d]


def forward(qkv, n_head):
    """qkv (B, T, 3C), q|k|v packed in that order -> out (B, T, C), cache.

    cache = (qkv, out, lse (B, nh, T), n_head, scale): O(B T C), no (T, T) array.
    """
    qkv = np.ascontiguousarray(qkv)
    B, T, C3 = qkv.shape
    C = C3 // 3
    if C3 % 3 or C % n_head:
        raise ValueError(f"qkv's last axis ({C3}) must be 3 * C with C divisible by n_head ({n_head})")
    scale = qkv.dtype.type(1.0 / math.sqrt(C // n_head))
    out = np.empty((B, T, C), dtype=qkv.dtype)
    lse = np.empty((B, n_head, T), dtype=qkv.dtype)
    _forward(qkv, n_head, scale, out, lse)
    return out, (qkv, out, lse, n_head, scale)


def backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C)."""
    qkv, out, lse, n_head, scale = cache
    dqkv = np.zeros_like(qkv)
    _backward(np.ascontiguousarray(dout, dtype=qkv.dtype), qkv, out, lse, n_head, scale, dqkv)
    return dqkv
