"""Exercise 7 of 7: the backward of causal multi-head self-attention.

forward is written.  Write backward: it receives dout and the cache; it
returns dqkv (n_head is an integer: no gradient).

Check your answer (from this directory):
    npgpt exercise check . attention        (or: python attention.py)
Read first: docs/layers/attention.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/attention.py: look at it once yours passes.
"""
import math

import numpy as np


def split_heads(qkv, n_head):
    """qkv (B, T, 3C) -> q, k, v each (B, nh, T, hs), hs = C // nh."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = np.split(qkv, 3, axis=-1)  # each (B, T, C)
    return tuple(a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for a in (q, k, v))


def merge_heads(y):
    """y (B, nh, T, hs) -> (B, T, nh * hs): heads side by side, as they were split."""
    B, nh, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def causal_softmax(scores):
    """scores (..., T, T) -> probabilities (..., T, T), zero above the diagonal."""
    T = scores.shape[-1]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # True where key > query
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def forward(qkv, n_head):
    """qkv (B, T, 3C), q|k|v packed in that order -> out (B, T, C), cache.

    For each head: P = softmax(q k^T / sqrt(hs)) under the causal mask, y = P v.
    """
    q, k, v = split_heads(qkv, n_head)  # (B, nh, T, hs)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, T, T)
    probs = causal_softmax(scores)  # (B, nh, T, T)
    y = probs @ v  # (B, nh, T, hs)
    cache = (q, k, v, probs, scale)
    return merge_heads(y), cache


def backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C).

    Hints, walking forward backwards:
    - Undo merge_heads on dout: dy (B, nh, T, hs).
    - y = P @ v is a matrix product: dP and dv as in the linear layer.
    - Softmax, one row at a time: dS = P * (dP - rowsum(dP * P)).  Derive it
      from d P[j] / d S[i] = P[j] (delta_ij - P[i]).  What do masked entries get?
    - S = q @ k^T * scale: dq and dk, again as matrix products (mind the scale).
    - Put dq, dk, dv back together the way split_heads took qkv apart.
    """
    q, k, v, probs, scale = cache
    raise NotImplementedError("write attention's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
