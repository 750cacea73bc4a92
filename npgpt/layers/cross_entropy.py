"""Softmax cross-entropy with label smoothing and ignored targets.

Derivation: docs/layers/cross_entropy.md
"""
import numpy as np


def log_softmax(logits):
    """logits (..., V) -> log-probabilities (..., V), computed stably."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def forward(logits, targets, label_smoothing=0.0, ignore_index=-1):
    """logits (B, T, V), targets (B, T) int -> scalar mean loss, cache.

    Per position the loss is (1 - eps) * (-log p[target]) + eps * mean_j(-log p[j]):
    the cross-entropy against the target distribution (1 - eps) one_hot + eps / V,
    PyTorch's definition.  Positions whose target equals ignore_index count
    neither in the sum nor in the mean; if every position is ignored the
    loss is 0 (not NaN) and so is its gradient.
    """
    V = logits.shape[-1]
    logp = log_softmax(logits)  # (B, T, V)
    valid = targets != ignore_index  # (B, T) bool
    safe_targets = np.where(valid, targets, 0)  # any in-range index; masked out below
    nll = -np.take_along_axis(logp, safe_targets[..., None], axis=-1)[..., 0]  # (B, T)
    per_position = (1.0 - label_smoothing) * nll
    if label_smoothing:
        per_position = per_position - label_smoothing * logp.mean(axis=-1)
    n_valid = int(valid.sum())
    loss = np.where(valid, per_position, 0.0).sum() / max(n_valid, 1)
    cache = (np.exp(logp), safe_targets, valid, n_valid, label_smoothing, V)
    return logits.dtype.type(loss), cache


def backward(dloss, cache):
    """dloss (scalar, usually 1.0) -> dlogits (B, T, V).

    d loss_position / d logits = softmax(logits) - target_distribution, and
    the mean divides by the number of counted positions.
    """
    probs, safe_targets, valid, n_valid, label_smoothing, V = cache
    dlogits = probs.copy()  # (B, T, V)
    if label_smoothing:
        dlogits -= label_smoothing / V
    np.put_along_axis(
        dlogits,
        safe_targets[..., None],
        np.take_along_axis(dlogits, safe_targets[..., None], axis=-1) - (1.0 - label_smoothing),
        axis=-1,
    )
    weight = valid * (float(dloss) / max(n_valid, 1))  # (B, T), 0 where ignored
    dlogits *= weight[..., None].astype(dlogits.dtype)
    return dlogits
