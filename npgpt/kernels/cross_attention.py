"""Multi-head cross-attention with a key padding mask, flash style.  Reference: npgpt/layers/cross_attention.py

No (Tq, Tk) matrix is kept: each query's scores live in one scratch row
of Tk elements per (batch, head) task, and the forward keeps only the
output and one log-sum-exp per (batch, head, query),

    lse[t] = log sum_{real j} exp(s[t, j]),   s = q k^T * scale,

from which the backward recomputes P[t, j] = exp(s[t, j] - lse[t]).
Activation memory is O(B (Tq + Tk) C).

Padding keys are skipped by an explicit test on the mask, never given a
-inf (fastmath assumes no infinities).  A query with no real key writes
output 0, lse 0, and is skipped by the backward: gradient 0, as in the
reference.  Scalar loops: this kernel favours being obviously right over
the SIMD tiles of npgpt/kernels/attention.py.
"""
import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(q, kv, mask, n_head, scale, out, lse):
    """q (B, Tq, C), kv (B, Tk, 2C), mask (B, Tk) uint8 -> fills out (B, Tq, C), lse (B, nh, Tq)."""
    B, Tq, C = q.shape
    Tk = kv.shape[1]
    hs = C // n_head
    zero = q.dtype.type(0)
    for task in prange(B * n_head):
        b, h = task // n_head, task % n_head
        kc, vc = h * hs, C + h * hs  # this head's key and value columns in kv
        s = np.empty(Tk, dtype=q.dtype)
        for t in range(Tq):
            qt = q[b, t, h * hs:(h + 1) * hs]
            dst = out[b, t, h * hs:(h + 1) * hs]
            mx = zero
            seen = False
            for j in range(Tk):
                if mask[b, j]:
                    acc = zero
                    kj = kv[b, j, kc:kc + hs]
                    for d in range(hs):
                        acc += qt[d] * kj[d]
                    s[j] = acc * scale
                    if not seen or s[j] > mx:
                        mx = s[j]
                    seen = True
            for d in range(hs):
                dst[d] = zero
            if not seen:  # every key is padding: output 0 by definition
                lse[b, h, t] = zero
                continue
            total = zero
            for j in range(Tk):
                if mask[b, j]:
                    p = np.exp(s[j] - mx)  # <= 1: the max keeps exp from overflowing
                    total += p
                    vj = kv[b, j, vc:vc + hs]
                    for d in range(hs):
                        dst[d] += p * vj[d]
            inv = 1 / total
            for d in range(hs):
                dst[d] *= inv
            lse[b, h, t] = mx + np.log(total)


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(dout, q, kv, mask, out, lse, n_head, scale, dq, dkv):
    """dout (B, Tq, C) -> fills dq (B, Tq, C) and dkv (B, Tk, 2C).

    Per real pair (t, j): P = exp(s - lse_t), dP = dy_t . v_j,
    dS = P (dP - D_t), D_t = dy_t . y_t;  dq_t += scale dS k_j,
    dk_j += scale dS q_t, dv_j += P dy_t.  One task per (batch, head) owns
    that head's columns of dkv, so the sums over queries are race-free.
    """
    B, Tq, C = q.shape
    Tk = kv.shape[1]
    hs = C // n_head
    zero = q.dtype.type(0)
    for task in prange(B * n_head):
        b, h = task // n_head, task % n_head
        qc, kc, vc = h * hs, h * hs, C + h * hs
        for j in range(Tk):
            for d in range(hs):
                dkv[b, j, kc + d] = zero
                dkv[b, j, vc + d] = zero
        n_real = 0
        for j in range(Tk):
            n_real += mask[b, j] != 0
        for t in range(Tq):
            dqt = dq[b, t, qc:qc + hs]
            for d in range(hs):
                dqt[d] = zero
            if n_real == 0:  # a fully masked row passes no gradient
                continue
            qt = q[b, t, qc:qc + hs]
            dyt = dout[b, t, qc:qc + hs]
            yt = out[b, t, qc:qc + hs]
            D = zero
            for d in range(hs):
                D += dyt[d] * yt[d]
            m = lse[b, h, t]
            for j in range(Tk):
                if not mask[b, j]:
                    continue  # padding: P = 0, no gradient either way
                kj = kv[b, j, kc:kc + hs]
                vj = kv[b, j, vc:vc + hs]
                sc = zero
                dp = zero
                for d in range(hs):
                    sc += qt[d] * kj[d]
                    dp += dyt[d] * vj[d]
                p = np.exp(sc * scale - m)
                ds = p * (dp - D) * scale
                dkj = dkv[b, j, kc:kc + hs]
                dvj = dkv[b, j, vc:vc + hs]
                for d in range(hs):
                    dqt[d] += ds * kj[d]
                    dkj[d] += ds * qt[d]
                    dvj[d] += p * dyt[d]


def _mask(key_mask, B, Tk):
    """key_mask (B, Tk) bool or None -> contiguous uint8 (B, Tk), 1 = real key."""
    if key_mask is None:
        return np.ones((B, Tk), dtype=np.uint8)
    return np.ascontiguousarray(key_mask, dtype=np.uint8)


def forward(q, kv, n_head, key_mask=None):
    """Same contract as npgpt.layers.cross_attention.forward.

    cache = (q, kv, mask, out, lse (B, nh, Tq), n_head, scale): no (Tq, Tk) array.
    """
    from ..layers.cross_attention import check_shapes

    check_shapes(q, kv, n_head, key_mask)
    q = np.ascontiguousarray(q)
    kv = np.ascontiguousarray(kv, dtype=q.dtype)
    B, Tq, C = q.shape
    mask = _mask(key_mask, B, kv.shape[1])
    scale = q.dtype.type(1.0 / math.sqrt(C // n_head))
    out = np.empty((B, Tq, C), dtype=q.dtype)
    lse = np.empty((B, n_head, Tq), dtype=q.dtype)
    _forward(q, kv, mask, n_head, scale, out, lse)
    return out, (q, kv, mask, out, lse, n_head, scale)


def backward(dout, cache):
    """dout (B, Tq, C) -> (dq (B, Tq, C), dkv (B, Tk, 2C))."""
    q, kv, mask, out, lse, n_head, scale = cache
    dq, dkv = np.empty_like(q), np.empty_like(kv)  # every element is written
    _backward(np.ascontiguousarray(dout, dtype=q.dtype), q, kv, mask, out, lse, n_head, scale, dq, dkv)
    return dq, dkv
