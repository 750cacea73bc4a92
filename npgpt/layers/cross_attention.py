"""Multi-head cross-attention: queries from one sequence, keys and values from another.

Derivation: docs/layers/cross_attention.md

Shapes: q (B, Tq, C), kv (B, Tk, 2C) packed k|v in that order, key_mask
(B, Tk) bool with True = a real key, False = padding.  Tq and Tk are
independent.  No causal mask: every query sees every real key.

A query whose keys are all padding (a fully masked row) has no
distribution to take: its output is defined as 0 and it passes no
gradient to q, k or v (its probability row is all zeros).
"""
import math

import numpy as np


def _heads(x, n_head):
    """x (B, T, C) -> (B, nh, T, hs)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(y):
    """y (B, nh, T, hs) -> (B, T, nh * hs)."""
    B, nh, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def check_shapes(q, kv, n_head, key_mask):
    """One clear ValueError for inputs that do not fit together."""
    if q.ndim != 3 or kv.ndim != 3 or q.shape[0] != kv.shape[0]:
        raise ValueError(f"cross_attention: q {q.shape} and kv {kv.shape} must be (B, Tq, C) and (B, Tk, 2C)")
    C = q.shape[-1]
    if kv.shape[-1] != 2 * C or C % n_head:
        raise ValueError(f"cross_attention: kv's last axis ({kv.shape[-1]}) must be 2 * C = {2 * C}, "
                         f"and C divisible by n_head ({n_head})")
    if key_mask is not None and np.shape(key_mask) != kv.shape[:2]:
        raise ValueError(f"cross_attention: key_mask {np.shape(key_mask)} must be (B, Tk) = {kv.shape[:2]}")


def masked_softmax(scores, key_mask):
    """scores (B, nh, Tq, Tk), key_mask (B, Tk) bool or None -> probs, 0 on padding keys.

    Padding keys are dropped with np.where rather than -inf, so a row with
    no real key comes out as all zeros instead of 0/0 = NaN.
    """
    if key_mask is None:
        scores = scores - scores.max(axis=-1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=-1, keepdims=True)
    real = np.asarray(key_mask, dtype=bool)[:, None, None, :]  # (B, 1, 1, Tk)
    mx = np.where(real, scores, -np.inf).max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)  # a fully masked row: any shift will do
    e = np.where(real, np.exp(np.where(real, scores - mx, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)  # fully masked: 0 / 1 = 0


def forward(q, kv, n_head, key_mask=None):
    """q (B, Tq, C), kv (B, Tk, 2C), key_mask (B, Tk) bool or None -> out (B, Tq, C), cache.

    Per head: P = softmax(q k^T / sqrt(hs)) over the real keys, y = P v.
    """
    check_shapes(q, kv, n_head, key_mask)
    C = q.shape[-1]
    qh = _heads(q, n_head)
    kh, vh = _heads(kv[..., :C], n_head), _heads(kv[..., C:], n_head)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    scores = (qh @ kh.transpose(0, 1, 3, 2)) * scale  # (B, nh, Tq, Tk)
    probs = masked_softmax(scores, key_mask).astype(q.dtype, copy=False)
    y = probs @ vh  # (B, nh, Tq, hs)
    return merge_heads(y), (qh, kh, vh, probs, scale)


def backward(dout, cache):
    """dout (B, Tq, C) -> (dq (B, Tq, C), dkv (B, Tk, 2C)).

    dP = dy v^T, dv = P^T dy, dS = P * (dP - rowsum(dP * P)),
    dq = dS k * scale, dk = dS^T q * scale.  Padding keys have P = 0, so
    dS = 0 there: they get no gradient, and a fully masked row gives none.
    """
    qh, kh, vh, probs, scale = cache
    B, nh, Tq, hs = qh.shape
    dy = _heads(dout, nh)
    dprobs = dy @ vh.transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dq = (dscores @ kh) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ qh) * scale
    return merge_heads(dq), np.concatenate([merge_heads(dk), merge_heads(dv)], axis=-1)
