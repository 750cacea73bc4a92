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
from numba import get_num_threads, njit, prange

from .fastexp import exp_inplace

BLOCK = 64  # queries per block in the backward: its scratch is (BLOCK, T), never (T, T)
# Reduction lengths are rounded up to a multiple of STEP (zero-padded): LLVM's
# vectorised loop takes 32 floats per iteration and leaves any remainder to
# a slow scalar loop, which on the causal diagonal cost more than the rest.
STEP = 32


@njit(inline="always", fastmath=True)
def _dot_2x4(a, i, b, j, k0, k1):
    """The eight dot products a[i+r, k0:k1] . b[j+c, k0:k1], r < 2, c < 4.

    The micro-kernel every product in this file goes through: two rows of
    a against four rows of b, eight running sums that stay in registers,
    every load reused two or four times.  LLVM vectorises the k loop (8
    floats a step with AVX2): several times faster than one dot at a time.
    Keep the index plain k: an offset index (k + off) may be negative as far
    as Numba knows, and its wrap-around check stops the vectorisation.
    """
    z = a.dtype.type(0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    for k in range(k0, k1):
        a0, a1 = a[i, k], a[i + 1, k]
        b0, b1, b2, b3 = b[j, k], b[j + 1, k], b[j + 2, k], b[j + 3, k]
        s00 += a0 * b0
        s01 += a0 * b1
        s02 += a0 * b2
        s03 += a0 * b3
        s10 += a1 * b0
        s11 += a1 * b1
        s12 += a1 * b2
        s13 += a1 * b3
    return s00, s01, s02, s03, s10, s11, s12, s13


@njit(inline="always")
def _store_2x4(out, i, j, s, scale):
    """out[i:i+2, j:j+4] = s * scale, s from _dot_2x4."""
    for c in range(4):
        out[i, j + c] = s[c] * scale
        out[i + 1, j + c] = s[4 + c] * scale


@njit(inline="always")
def _round_up(n, m):
    return (n + m - 1) // m * m


@njit(inline="always")
def _load_head(qkv, b, col, hs, factor, out):
    """out (Tp, hsp) <- qkv[b, :, col : col + hs] * factor: one head's q, k or v.

    The padding (Tp, hsp are T, hs rounded up for the micro-kernel) is
    left alone: the caller zeroes it once, and zeros add nothing to a dot.
    """
    for t in range(qkv.shape[1]):
        for d in range(hs):
            out[t, d] = qkv[b, t, col + d] * factor


@njit(inline="always")
def _load_head_transposed(qkv, b, col, hs, factor, out_t):
    """out_t (hsp, Tp) <- (qkv[b, :, col : col + hs] * factor)^T."""
    for t in range(qkv.shape[1]):
        for d in range(hs):
            out_t[d, t] = qkv[b, t, col + d] * factor


@njit(inline="always")
def _task_range(chunk, n_chunks, n_tasks):
    """The (batch, head) tasks of one parallel chunk: scratch is allocated once per chunk."""
    return range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks)


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(qkv, n_head, scale, out, lse, n_chunks):
    """qkv (B, T, 3C) -> fills out (B, T, C) and lse (B, nh, T).

    One task per (batch, head); each first copies its q (scaled), k and
    v^T into small zero-padded arrays, then takes the queries two at a time.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tp, hsp = _round_up(T + 1, STEP), _round_up(hs, 4)  # + 1: room for a pair's second query
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)  # typed constants: float32 stays float32
    for chunk in prange(n_chunks):
        q = np.zeros((Tp, hsp), dtype=dtype)
        k = np.zeros((Tp, hsp), dtype=dtype)
        vT = np.zeros((hsp, Tp), dtype=dtype)
        P = np.empty((2, Tp), dtype=dtype)  # the pair's score rows, then probabilities
        inv = np.empty(2, dtype=dtype)
        bits = np.empty(Tp, dtype=np.int32)  # exp's scratch
        for task in _task_range(chunk, n_chunks, B * n_head):
            b, h = task // n_head, task % n_head
            _load_head(qkv, b, h * hs, hs, scale, q)  # q * scale: then s = q . k
            _load_head(qkv, b, C + h * hs, hs, one, k)
            _load_head_transposed(qkv, b, 2 * C + h * hs, hs, one, vT)
            for t in range(0, T, 2):  # queries t and t + 1
                nk = _round_up(t + 2, STEP)  # keys the pair can see, rounded up (the rest is zeroed)
                for j in range(0, nk, 4):
                    _store_2x4(P, 0, j, _dot_2x4(q, t, k, j, 0, hsp), one)
                for r in range(2):
                    n = t + r + 1 if t + r < T else 0  # causal: query t + r sees keys 0..t + r
                    if n == 0:  # the pair's second query is past the end: padding
                        P[r, :nk] = zero
                        continue
                    mx = P[r, 0]  # a real score, never -inf (fastmath)
                    for j in range(1, n):
                        mx = max(mx, P[r, j])
                    for j in range(n):
                        P[r, j] -= mx  # <= 0: the max keeps exp from overflowing
                    exp_inplace(P[r, :n], bits)
                    total = zero
                    for j in range(n):
                        total += P[r, j]
                    P[r, n:nk] = zero  # the future: probability exactly 0
                    inv[r] = one / total
                    lse[b, h, t + r] = mx + np.log(total)
                # y_t = sum_j P[t, j] v_j: the pair's P rows against v^T's rows
                for d in range(0, hsp, 4):
                    y = _dot_2x4(P, 0, vT, d, 0, nk)
                    for r in range(2):
                        if t + r < T:
                            for c in range(4):
                                if d + c < hs:
                                    out[b, t + r, h * hs + d + c] = y[4 * r + c] * inv[r]


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(dout, qkv, out, lse, n_head, scale, dqkv, n_chunks):
    """dout (B, T, C) -> fills dqkv (B, T, 3C).

    For each visible pair (t, j), with P recomputed from lse and s = q.k*scale:
        dP = dy_t . v_j,   dS = P (dP - D_t),   D_t = dy_t . y_t (= rowsum(dP * P)),
        dq_t = scale sum_j dS k_j,  dk_j = scale sum_t dS q_t,  dv_j = sum_t P dy_t.
    One task per (batch, head): dk and dv of a key gather from every later
    query, so only a task owning the whole head can write them race-free.
    Queries go in blocks of BLOCK, whose P and dS rows are the only scratch.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tp, hsp = _round_up(T, BLOCK), _round_up(hs, 4)  # BLOCK is a multiple of STEP
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)
    for chunk in prange(n_chunks):
        qs = np.zeros((Tp, hsp), dtype=dtype)  # q * scale
        k = np.zeros((Tp, hsp), dtype=dtype)
        kT = np.zeros((hsp, Tp), dtype=dtype)
        v = np.zeros((Tp, hsp), dtype=dtype)
        dy = np.zeros((Tp, hsp), dtype=dtype)
        dk = np.empty((Tp, hsp), dtype=dtype)
        dv = np.empty((Tp, hsp), dtype=dtype)
        P = np.zeros((BLOCK, Tp), dtype=dtype)  # a block's probabilities
        dS = np.zeros((BLOCK, Tp), dtype=dtype)  # and score gradients
        PT = np.zeros((Tp, BLOCK), dtype=dtype)  # both transposed, for dk and dv
        dST = np.zeros((Tp, BLOCK), dtype=dtype)
        qsT_block = np.zeros((hsp, BLOCK), dtype=dtype)  # the block's queries' qs^T and dy^T
        dyT_block = np.zeros((hsp, BLOCK), dtype=dtype)
        dq = np.empty((2, hsp), dtype=dtype)
        bits = np.empty(Tp, dtype=np.int32)  # exp's scratch
        for task in _task_range(chunk, n_chunks, B * n_head):
            b, h = task // n_head, task % n_head
            _load_head(qkv, b, h * hs, hs, scale, qs)
            _load_head(qkv, b, C + h * hs, hs, one, k)
            _load_head_transposed(qkv, b, C + h * hs, hs, one, kT)
            _load_head(qkv, b, 2 * C + h * hs, hs, one, v)
            _load_head(dout, b, h * hs, hs, one, dy)
            dk[:, :] = zero
            dv[:, :] = zero
            for t0 in range(0, T, BLOCK):
                nk = t0 + BLOCK  # keys this block's queries can see (padding included)
                # recompute scores s = q.k and dP = dy.v, two queries by four keys at a time
                for i in range(0, BLOCK, 2):
                    for j in range(0, _round_up(t0 + i + 2, 4), 4):
                        _store_2x4(P, i, j, _dot_2x4(qs, t0 + i, k, j, 0, hsp), one)
                        _store_2x4(dS, i, j, _dot_2x4(dy, t0 + i, v, j, 0, hsp), one)
                for i in range(BLOCK):
                    t = t0 + i
                    n = t + 1 if t < T else 0  # causal: query t sees keys 0..t; padding sees none
                    if n:
                        D = zero
                        for d in range(hs):
                            D += dy[t, d] * out[b, t, h * hs + d]
                        m = lse[b, h, t]
                        for j in range(n):
                            P[i, j] -= m
                        exp_inplace(P[i, :n], bits)  # P[t, j], recomputed
                        for j in range(n):
                            dS[i, j] = P[i, j] * (dS[i, j] - D)
                    for j in range(n, nk):  # the future gets no gradient
                        P[i, j] = zero
                        dS[i, j] = zero
                    for j in range(nk):
                        PT[j, i] = P[i, j]
                        dST[j, i] = dS[i, j]
                # dq_t = scale * sum_j dS[t, j] k_j
                for i in range(0, BLOCK, 2):
                    t = t0 + i
                    if t >= T:
                        break
                    kmax = _round_up(t + 2, STEP)
                    for d in range(0, hsp, 4):
                        _store_2x4(dq, 0, d, _dot_2x4(dS, i, kT, d, 0, kmax), scale)
                    for r in range(2):
                        if t + r < T:
                            for d in range(hs):
                                dqkv[b, t + r, h * hs + d] = dq[r, d]
                # dk_j += sum_t dS[t, j] qs_t and dv_j += sum_t P[t, j] dy_t over this
                # block's queries t >= j (qs carries the scale dk needs)
                for i in range(BLOCK):
                    for d in range(hsp):
                        qsT_block[d, i] = qs[t0 + i, d]
                        dyT_block[d, i] = dy[t0 + i, d]
                for j in range(0, nk, 2):
                    i0 = max(0, j - t0) // STEP * STEP  # earlier queries cannot see key j: skip them
                    for d in range(0, hsp, 4):
                        gk = _dot_2x4(dST, j, qsT_block, d, i0, BLOCK)
                        gv = _dot_2x4(PT, j, dyT_block, d, i0, BLOCK)
                        for r in range(2):
                            for c in range(4):
                                dk[j + r, d + c] += gk[4 * r + c]
                                dv[j + r, d + c] += gv[4 * r + c]
            for t in range(T):
                for d in range(hs):
                    dqkv[b, t, C + h * hs + d] = dk[t, d]
                    dqkv[b, t, 2 * C + h * hs + d] = dv[t, d]


def _chunks(n_tasks):
    """Parallel chunks of (batch, head) tasks: two per thread share the work out evenly enough."""
    return max(1, min(n_tasks, 2 * get_num_threads()))


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
    _forward(qkv, n_head, scale, out, lse, _chunks(B * n_head))
    return out, (qkv, out, lse, n_head, scale)


def backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C)."""
    qkv, out, lse, n_head, scale = cache
    dqkv = np.empty_like(qkv)  # every element is written
    _backward(np.ascontiguousarray(dout, dtype=qkv.dtype), qkv, out, lse, n_head, scale, dqkv, _chunks(qkv.shape[0] * n_head))
    return dqkv
