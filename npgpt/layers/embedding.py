"""Token + position embedding.  Derivation: docs/layers/embedding.md"""
import numpy as np


def forward(idx, wte, wpe):
    """Look up token and position vectors and add them.

    idx: (B, T) integer token ids, 0 <= id < V
    wte: (V, C) token embedding table
    wpe: (Tmax, C) position embedding table, T <= Tmax
    returns out (B, T, C), cache
    """
    B, T = idx.shape
    out = wte[idx] + wpe[:T]  # (B, T, C) + (T, C) broadcasts over the batch
    cache = (idx, wte.shape, wpe.shape)
    return out, cache


def backward(dout, cache):
    """dout (B, T, C) -> dwte (V, C), dwpe (Tmax, C).

    A lookup routes each row of dout back to the row it was read from.
    The same token id may appear many times, so its gradient rows must be
    *summed*: np.add.at accumulates repeated indices, whereas
    `dwte[idx] += dout` would keep only one of them.
    """
    idx, wte_shape, wpe_shape = cache
    B, T, C = dout.shape
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    dwpe[:T] = dout.sum(axis=0)  # every sequence in the batch used positions 0..T-1
    return dwte, dwpe
