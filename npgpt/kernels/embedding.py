"""Token + position embedding.  Reference: npgpt/layers/embedding.py"""
import numpy as np
from numba import njit, prange

COLUMN_BLOCK = 64  # columns per parallel task in backward: rows stay contiguous


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _lookup(idx, wte, wpe, out):
    """idx (B, T) int, wte (V, C), wpe (Tmax, C) -> out (B, T, C) filled in place."""
    B, T = idx.shape
    C = wte.shape[1]
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        token = idx[b, t]
        for c in range(C):
            out[b, t, c] = wte[token, c] + wpe[t, c]


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _scatter_add(idx, dout, dwte, dwpe):
    """dout (B, T, C) -> adds into dwte (V, C) and dwpe (Tmax, C).

    A token id may repeat, so two rows of dout can land on the same row of
    dwte.  Each parallel task therefore owns a block of *columns* and walks
    every row: no two tasks ever write the same element.
    """
    B, T, C = dout.shape
    n_blocks = (C + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for blk in prange(n_blocks):
        c0 = blk * COLUMN_BLOCK
        c1 = min(c0 + COLUMN_BLOCK, C)
        for b in range(B):
            for t in range(T):
                token = idx[b, t]
                for c in range(c0, c1):
                    dwte[token, c] += dout[b, t, c]
                    dwpe[t, c] += dout[b, t, c]


def _check_ids(idx, V):
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        # the compiled lookup does not bounds-check; fail as NumPy indexing would
        raise IndexError(f"token ids must be in [0, {V}), got range [{idx.min()}, {idx.max()}]")


def forward(idx, wte, wpe):
    """idx (B, T) int, wte (V, C), wpe (Tmax, C) -> out (B, T, C), cache."""
    idx = np.ascontiguousarray(idx)
    B, T = idx.shape
    if T > wpe.shape[0]:
        raise IndexError(f"sequence length {T} exceeds the {wpe.shape[0]} position embeddings")
    _check_ids(idx, wte.shape[0])
    out = np.empty((B, T, wte.shape[1]), dtype=np.result_type(wte, wpe))
    _lookup(idx, wte, wpe, out)
    return out, (idx, wte.shape, wpe.shape)


def backward(dout, cache):
    """dout (B, T, C) -> dwte (V, C), dwpe (Tmax, C)."""
    idx, wte_shape, wpe_shape = cache
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    _scatter_add(idx, np.ascontiguousarray(dout), dwte, dwpe)
    return dwte, dwpe


def backward_into(dout, cache, dwte, dwpe):
    """Like backward, but *adds* into existing dwte (V, C) and dwpe (Tmax, C).

    The model uses this for the tied embedding: the LM head has already
    written its share of dwte, and adding in place saves a zeroed (V, C)
    temporary and a pass over it (38M floats at GPT-2 size).
    """
    idx = cache[0]
    _scatter_add(idx, np.ascontiguousarray(dout), dwte, dwpe)
