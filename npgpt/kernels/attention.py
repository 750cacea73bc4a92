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
from .simd import COLS, ROWS, tile_product

BLOCK = 64  # queries per block in the backward: its scratch is (BLOCK, T), never (T, T)
# Scratch rows of T elements get COLS more: at T = 256 a float32 row is 1 KiB, and
# addresses 1 KiB apart share one of only four L1 cache sets, so a tile walking down
# a column (64 rows) would evict its own lines.  The extra columns are never used.
SKEW = COLS


@njit(inline="always")
def _round_up(n, m):
    return (n + m - 1) // m * m


@njit(inline="always")
def _load_head(qkv, b, col, hs, factor, out):
    """out (>= T, >= hs) <- qkv[b, :, col : col + hs] * factor: one head's q, k or v.

    The padding (T and hs rounded up to whole tiles) is left alone: the
    caller zeroes it once, and zeros add nothing to a product.
    Rows are sliced first so the inner index is a plain d: an offset index
    (col + d) may be negative as far as Numba knows, and its wrap-around
    check keeps the copy from vectorising.
    """
    for t in range(qkv.shape[1]):
        src, dst = qkv[b, t, col:col + hs], out[t]
        for d in range(hs):
            dst[d] = src[d] * factor


@njit(inline="always")
def _load_head_transposed(qkv, b, col, hs, factor, out_t):
    """out_t (>= hs, >= T) <- (qkv[b, :, col : col + hs] * factor)^T."""
    for t in range(qkv.shape[1]):
        src = qkv[b, t, col:col + hs]
        for d in range(hs):
            out_t[d, t] = src[d] * factor


@njit(inline="always")
def _task_range(chunk, n_chunks, n_tasks):
    """The (batch, head) tasks of one parallel chunk: scratch is allocated once per chunk."""
    return range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks)


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _forward(qkv, n_head, scale, out, lse, n_chunks):
    """qkv (B, T, 3C) -> fills out (B, T, C) and lse (B, nh, T).

    One task per (batch, head); each first copies its q (scaled), k^T and
    v into small zero-padded arrays, then takes the queries ROWS at a time:
    scores s = q k^T tile by tile, softmax, then y = P v.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tk, hs_cols = _round_up(T, COLS), _round_up(hs, COLS)  # keys and head columns in whole tiles
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)  # typed constants: float32 stays float32
    for chunk in prange(n_chunks):
        q = np.zeros((Tk, hs), dtype=dtype)  # Tk >= T rounded up to ROWS
        kT = np.zeros((hs, Tk + SKEW), dtype=dtype)
        v = np.zeros((Tk, hs_cols), dtype=dtype)
        P = np.empty((ROWS, Tk + SKEW), dtype=dtype)  # the group's score rows, then probabilities
        y = np.empty((ROWS, hs_cols), dtype=dtype)
        inv = np.empty(ROWS, dtype=dtype)
        bits = np.empty(Tk, dtype=np.int32)  # exp's scratch
        for task in _task_range(chunk, n_chunks, B * n_head):
            b, h = task // n_head, task % n_head
            _load_head(qkv, b, h * hs, hs, scale, q)  # q * scale: then s = q . k
            _load_head_transposed(qkv, b, C + h * hs, hs, one, kT)
            _load_head(qkv, b, 2 * C + h * hs, hs, one, v)
            for t in range(0, T, ROWS):  # queries t .. t + ROWS - 1
                nk = _round_up(t + ROWS, COLS)  # score columns the group needs, in whole tiles
                for j in range(0, nk, COLS):
                    tile_product(q, t, 0, kT, 0, j, hs, P, 0, j, one, False)
                for r in range(ROWS):
                    n = t + r + 1 if t + r < T else 0  # causal: query t + r sees keys 0..t + r
                    if n == 0:  # past the last query: padding
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
                seen = min(t + ROWS, T)  # keys the group's last query sees
                for d in range(0, hs_cols, COLS):  # y = P v (not yet divided by the totals)
                    tile_product(P, 0, 0, v, 0, d, seen, y, 0, d, one, False)
                for r in range(min(ROWS, T - t)):
                    dst = out[b, t + r, h * hs:(h + 1) * hs]  # sliced: a plain index vectorises
                    for d in range(hs):
                        dst[d] = y[r, d] * inv[r]


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _backward(dout, qkv, out, lse, n_head, scale, dqkv, n_chunks):
    """dout (B, T, C) -> fills dqkv (B, T, 3C).

    For each visible pair (t, j), with P recomputed from lse and s = q.k*scale:
        dP = dy_t . v_j,   dS = P (dP - D_t),   D_t = dy_t . y_t (= rowsum(dP * P)),
        dq_t = scale sum_j dS k_j,  dk_j = scale sum_t dS q_t,  dv_j = sum_t P dy_t.
    One task per (batch, head): dk and dv of a key gather from every later
    query, so only a task owning the whole head can write them race-free.
    Queries go in blocks of BLOCK, whose P and dS rows are the only scratch;
    every product is a sum of ROWS x COLS tiles.  dk and dv are summed
    transposed, dk^T = qs^T dS and dv^T = dy^T P, so that P and dS serve
    as they are (the tile runs along rows of its second operand).
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    Tp = _round_up(T, BLOCK)  # BLOCK is a multiple of ROWS and COLS
    hs_rows, hs_cols = _round_up(hs, ROWS), _round_up(hs, COLS)  # the head in whole tile rows / columns
    dtype = qkv.dtype
    zero, one = dtype.type(0), dtype.type(1)
    for chunk in prange(n_chunks):
        qs = np.zeros((Tp, hs), dtype=dtype)  # q * scale
        qsT = np.zeros((hs_rows, Tp + SKEW), dtype=dtype)
        kT = np.zeros((hs, Tp + SKEW), dtype=dtype)
        k = np.zeros((Tp, hs_cols), dtype=dtype)
        vT = np.zeros((hs, Tp + SKEW), dtype=dtype)
        dy = np.zeros((Tp, hs), dtype=dtype)
        dyT = np.zeros((hs_rows, Tp + SKEW), dtype=dtype)
        dkT = np.empty((hs_rows, Tp + SKEW), dtype=dtype)
        dvT = np.empty((hs_rows, Tp + SKEW), dtype=dtype)
        P = np.empty((BLOCK, Tp + SKEW), dtype=dtype)  # a block's probabilities
        dS = np.empty((BLOCK, Tp + SKEW), dtype=dtype)  # and score gradients
        dq = np.empty((ROWS, hs_cols), dtype=dtype)
        bits = np.empty(Tp, dtype=np.int32)  # exp's scratch
        for task in _task_range(chunk, n_chunks, B * n_head):
            b, h = task // n_head, task % n_head
            _load_head(qkv, b, h * hs, hs, scale, qs)
            _load_head_transposed(qkv, b, h * hs, hs, scale, qsT)
            _load_head_transposed(qkv, b, C + h * hs, hs, one, kT)
            _load_head(qkv, b, C + h * hs, hs, one, k)
            _load_head_transposed(qkv, b, 2 * C + h * hs, hs, one, vT)
            _load_head(dout, b, h * hs, hs, one, dy)
            _load_head_transposed(dout, b, h * hs, hs, one, dyT)
            dkT[:, :] = zero
            dvT[:, :] = zero
            for t0 in range(0, T, BLOCK):
                rows = min(BLOCK, T - t0)  # real queries in this block
                nk = t0 + BLOCK  # keys this block's queries can see (padding included)
                # recompute scores s = q.k and dP = dy.v for each group's visible keys
                for i in range(0, rows, ROWS):
                    for j in range(0, _round_up(t0 + i + ROWS, COLS), COLS):
                        tile_product(qs, t0 + i, 0, kT, 0, j, hs, P, i, j, one, False)
                        tile_product(dy, t0 + i, 0, vT, 0, j, hs, dS, i, j, one, False)
                for i in range(BLOCK):
                    t = t0 + i
                    n = t + 1 if t < T else 0  # causal: query t sees keys 0..t; padding sees none
                    if n:
                        D = zero
                        y_t = out[b, t, h * hs:(h + 1) * hs]
                        for d in range(hs):
                            D += dy[t, d] * y_t[d]
                        m = lse[b, h, t]
                        for j in range(n):
                            P[i, j] -= m
                        exp_inplace(P[i, :n], bits)  # P[t, j], recomputed
                        for j in range(n):
                            dS[i, j] = P[i, j] * (dS[i, j] - D)
                    P[i, n:nk] = zero  # the future gets no gradient
                    dS[i, n:nk] = zero
                # dq_t = scale * sum_j dS[t, j] k_j, over the keys the group sees
                for i in range(0, rows, ROWS):
                    t = t0 + i
                    for d in range(0, hs_cols, COLS):
                        tile_product(dS, i, 0, k, 0, d, min(t + ROWS, T), dq, 0, d, scale, False)
                    for r in range(min(ROWS, T - t)):
                        dst = dqkv[b, t + r, h * hs:(h + 1) * hs]
                        for d in range(hs):
                            dst[d] = dq[r, d]
                # dk_j += sum_t qs_t dS[t, j] and dv_j += sum_t dy_t P[t, j] over this
                # block's queries t >= j (qs carries the scale dk needs)
                for j in range(0, min(nk, _round_up(T, COLS)), COLS):
                    i0 = max(0, j - t0)  # earlier queries cannot see keys j..: skip them
                    for d in range(0, hs_rows, ROWS):
                        tile_product(qsT, d, t0 + i0, dS, i0, j, rows - i0, dkT, d, j, one, True)
                        tile_product(dyT, d, t0 + i0, P, i0, j, rows - i0, dvT, d, j, one, True)
            for t in range(T):
                dk_t = dqkv[b, t, C + h * hs:C + (h + 1) * hs]
                dv_t = dqkv[b, t, 2 * C + h * hs:2 * C + (h + 1) * hs]
                for d in range(hs):
                    dk_t[d] = dkT[d, t]
                    dv_t[d] = dvT[d, t]


def _chunks(n_tasks):
    """Parallel chunks of (batch, head) tasks: two per thread share the work out evenly enough.
    (Results do not depend on it: each task computes its head alone.)"""
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
