"""Sinusoidal positional encoding, "Attention Is All You Need" section 3.5.

Derivation: docs/layers/positional.md

    PE[t, 2i]     = sin(t / 10000^(2i / C))
    PE[t, 2i + 1] = cos(t / 10000^(2i / C))

A constant table with no parameters: the model adds it to the token
embeddings, x = wte[idx] + PE, so there is no backward.  The gradient of
the sum flows to the embedding unchanged (d x / d wte[idx] = identity) and
nowhere else.
"""
import numpy as np

BASE = 10000.0


def frequencies(C):
    """C (even) -> omega (C // 2,): the angular frequency of channel pair i, 1 / BASE^(2i / C)."""
    return BASE ** (-np.arange(0, C, 2, dtype=np.float64) / C)


def forward(T, C, offset=0, dtype=np.float64):
    """T positions offset .. offset + T - 1, C channels (even) -> PE (T, C).

    offset serves incremental decoding: the rows of positions already seen
    are not recomputed.  Computed in float64, then cast.
    """
    if not isinstance(T, (int, np.integer)) or T < 0 or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"positional: T ({T}) and offset ({offset}) must be non-negative integers")
    if not isinstance(C, (int, np.integer)) or C <= 0 or C % 2:
        raise ValueError(f"positional: C ({C}) must be a positive even integer (channels come in sin/cos pairs)")
    t = np.arange(offset, offset + T, dtype=np.float64)[:, None]  # (T, 1)
    angle = t * frequencies(C)[None, :]  # (T, C // 2)
    pe = np.empty((T, C), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle)
    return pe.astype(dtype, copy=False)


def shift_matrix(k, C):
    """(C, C) block-diagonal M with PE[t + k] = PE[t] @ M for every t.

    Pair i is (sin a, cos a), a = omega_i t; adding k turns the angle by
    omega_i k: sin(a + b) = sin a cos b + cos a sin b, cos(a + b) = cos a cos b - sin a sin b.
    M depends on k only, not on t: attention can match by relative offset.
    """
    M = np.zeros((C, C))
    for i, w in enumerate(frequencies(C)):
        c, s = np.cos(w * k), np.sin(w * k)
        M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, -s], [s, c]]
    return M
