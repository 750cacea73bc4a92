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

@njit(inline="always")
def _gather_head(qkv, b, col, factor, out):
    """out (T, hs) <- qkv[b, :, col : col + hs] * factor: one head's q, k or v, contiguous."""
    T, hs = out.shape
    for t in range(T):
        for d in range(hs):
            out[t, d] = qkv[b, t, col + d] * factor


@njit(inline="always")
def _gather_head_transposed(qkv, b, col, out):
    """out (hs, T) <- qkv[b, :, col : col + hs].T, so a score row is a contiguous sweep."""
    hs, T = out.shape
    for t in range(T):
        for d in range(hs):
            out[d, t] = qkv[b, t, col + d]


@njit(parallel=True, cache=True, fastmath=True)
def _forward(qkv, n_head, scale, out, lse):
    """qkv (B, T, 3C) -> fills out (B, T, C) and lse (B, nh, T).

    One task per (batch, head).  Its q (scaled), k^T and v are first copied
    into small contiguous arrays, so that every inner loop below runs over
    contiguous memory and compiles to SIMD instructions.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)  # typed constants: float32 stays float32
    for task in prange(B * n_head):
        b, h = task // n_head, task % n_head
        q = np.empty((T, hs), dtype=dtype)
        kT = np.empty((hs, T), dtype=dtype)
        v = np.empty((T, hs), dtype=dtype)
        _gather_head(qkv, b, h * hs, scale, q)  # q * scale: then s = q . k
        _gather_head_transposed(qkv, b, C + h * hs, kT)
        _gather_head(qkv, b, 2 * C + h * hs, one, v)
        s = np.empty(T, dtype=dtype)  # one query's scores, reused
        y = np.empty(hs, dtype=dtype)
        for t in range(T):
            n = t + 1  # causal: query t sees keys 0..t
            # s[t2] = q_t . k_t2, accumulated one channel at a time (contiguous in t2)
            s[:n] = zero
            for d in range(hs):
                qd = q[t, d]
                for t2 in range(n):
                    s[t2] += qd * kT[d, t2]
            mx = s[0]  # a real score, not -inf (fastmath)
            for t2 in range(1, n):
                mx = max(mx, s[t2])
            total = zero
            for t2 in range(n):
                e = np.exp(s[t2] - mx)  # <= 1: the max keeps exp from overflowing
                s[t2] = e
                total += e
            # y_t = sum_t2 P[t, t2] v_t2 with P = e / total
            y[:] = zero
            for t2 in range(n):
                p = s[t2]
                for d in range(hs):
                    y[d] += p * v[t2, d]
            inv = one / total
            for d in range(hs):
                out[b, t, h * hs + d] = y[d] * inv
            lse[b, h, t] = mx + np.log(total)


@njit(parallel=True, cache=True, fastmath=True)
def _backward(dout, qkv, out, lse, n_head, scale, dqkv):
    """dout (B, T, C) -> fills dqkv (B, T, 3C).

    For each visible pair (t, t2), with P recomputed from lse and s = q.k*scale:
        dP = dy_t . v_t2,   dS = P (dP - D_t),   D_t = dy_t . y_t (= rowsum(dP * P)),
        dq_t += dS k_t2 scale,  dk_t2 += dS q_t scale,  dv_t2 += P dy_t.
    One task per (batch, head): dk and dv of a key gather from every later
    query, so only a task owning the whole head can write them race-free.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)
    for task in prange(B * n_head):
        b, h = task // n_head, task % n_head
        qs = np.empty((T, hs), dtype=dtype)  # q * scale
        k = np.empty((T, hs), dtype=dtype)
        kT = np.empty((hs, T), dtype=dtype)
        vT = np.empty((hs, T), dtype=dtype)
        dy = np.empty((T, hs), dtype=dtype)
        _gather_head(qkv, b, h * hs, scale, qs)
        _gather_head(qkv, b, C + h * hs, one, k)
        _gather_head_transposed(qkv, b, C + h * hs, kT)
        _gather_head_transposed(qkv, b, 2 * C + h * hs, vT)
        _gather_head(dout, b, h * hs, one, dy)
        dk = np.zeros((T, hs), dtype=dtype)
        dv = np.zeros((T, hs), dtype=dtype)
        s = np.empty(T, dtype=dtype)
        dp = np.empty(T, dtype=dtype)
        dq = np.empty(hs, dtype=dtype)
        for t in range(T):
            n = t + 1
            D = zero
            for d in range(hs):
                D += dy[t, d] * out[b, t, h * hs + d]
            s[:n] = zero
            dp[:n] = zero
            for d in range(hs):
                qd, dyd = qs[t, d], dy[t, d]
                for t2 in range(n):
                    s[t2] += qd * kT[d, t2]
                    dp[t2] += dyd * vT[d, t2]
            m = lse[b, h, t]
            for t2 in range(n):
                p = np.exp(s[t2] - m)  # P[t, t2], recomputed
                s[t2] = p
                dp[t2] = p * (dp[t2] - D)  # dS[t, t2]
            dq[:] = zero
            for t2 in range(n):
                p, ds = s[t2], dp[t2]
                for d in range(hs):
                    dq[d] += ds * k[t2, d]
                    dk[t2, d] += ds * qs[t, d]  # qs carries the scale dk needs
                    dv[t2, d] += p * dy[t, d]
            for d in range(hs):
                dqkv[b, t, h * hs + d] = dq[d] * scale
        for t in range(T):
            for d in range(hs):
                dqkv[b, t, C + h * hs + d] = dk[t, d]
                dqkv[b, t, 2 * C + h * hs + d] = dv[t, d]


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
    dqkv = np.empty_like(qkv)  # every element is written
    _backward(np.ascontiguousarray(dout, dtype=qkv.dtype), qkv, out, lse, n_head, scale, dqkv)
    return dqkv
