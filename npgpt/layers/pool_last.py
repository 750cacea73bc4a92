"""Last-real-token pooling: one vector per sequence.  Derivation: docs/layers/pool_last.md

A causal model's hidden state at position t has seen tokens 0..t and nothing
after, so the state at a sequence's last real token summarises the whole
text, and the padding that follows it cannot change it.  Real lengths are
always given explicitly: padding is never guessed from a token id (GPT-2 has
no pad token, and guessing has pooled the wrong token in other libraries).
"""
import numpy as np


def check_lengths(lengths, B, T):
    """lengths (B,) ints in [1, T] -> the same as an int64 array; ValueError otherwise."""
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths must be a ({B},) integer array, got shape {lengths.shape} and dtype {lengths.dtype}")
    if B and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"lengths must be in [1, {T}], got range [{lengths.min()}, {lengths.max()}]")
    return lengths.astype(np.int64)


def forward(h, lengths):
    """h (B, T, C), lengths (B,) ints in [1, T] -> pooled (B, C), cache.

    pooled[b] = h[b, lengths[b] - 1]: the hidden state of the last real token.
    """
    B, T, _ = h.shape
    last = check_lengths(lengths, B, T) - 1  # (B,) index of each sequence's last real token
    pooled = h[np.arange(B), last]  # (B, C): fancy indexing copies
    return pooled, (last, h.shape)


def backward(dpooled, cache):
    """dpooled (B, C) -> dh (B, T, C): each row goes back to the one position it came from.

    Every other position of h did not reach the output, so its gradient is 0.
    """
    last, h_shape = cache
    B = h_shape[0]
    dh = np.zeros(h_shape, dtype=dpooled.dtype)  # (B, T, C)
    dh[np.arange(B), last] = dpooled  # one position per row: no two rows collide
    return dh
