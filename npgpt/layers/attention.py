"""Causal multi-head self-attention on packed q, k, v.

Derivation: docs/layers/attention.md
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
    """scores (..., T, T) -> probabilities (..., T, T), zero above the diagonal.

    Query t may only look at keys 0..t.  Future keys get -inf before the
    softmax, so their probability is exactly 0.
    """
    T = scores.shape[-1]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T) True where key > query
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)  # for exp's sake; softmax is shift-invariant
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def forward(qkv, n_head):
    """qkv (B, T, 3C), q|k|v packed in that order -> out (B, T, C), cache.

    For each head: P = softmax(q k^T / sqrt(hs)) under the causal mask,
    y = P v.  C must be divisible by n_head.
    """
    q, k, v = split_heads(qkv, n_head)  # (B, nh, T, hs)
    scale = 1.0 / math.sqrt(q.shape[-1])  # Python float, so float32 stays float32
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, T, T)
    probs = causal_softmax(scores)  # (B, nh, T, T)
    y = probs @ v  # (B, nh, T, hs)
    cache = (q, k, v, probs, scale)
    return merge_heads(y), cache


def backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C).

    dP = dy v^T and dv = P^T dy (both from y = P v).  Softmax's Jacobian
    applied to a vector gives dS = P * (dP - rowsum(dP * P)); masked
    entries have P = 0 and so get dS = 0: the future receives no gradient.
    Then S = q k^T * scale gives dq = dS k * scale, dk = dS^T q * scale.
    """
    q, k, v, probs, scale = cache
    B, nh, T, hs = q.shape
    dy = dout.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    dprobs = dy @ v.transpose(0, 1, 3, 2)  # (B, nh, T, T)
    dv = probs.transpose(0, 1, 3, 2) @ dy  # (B, nh, T, hs)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))  # (B, nh, T, T)
    dq = (dscores @ k) * scale  # (B, nh, T, hs)
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale  # (B, nh, T, hs)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
