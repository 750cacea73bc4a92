"""Exercise 5 of 7: the backward of softmax cross-entropy, with label
smoothing and ignored targets.

forward is written.  Write backward: it receives dloss (a scalar, the
gradient of the final loss with respect to this loss, usually 1.0) and the
cache; it returns dlogits (targets are integers: no gradient).

Check your answer (from this directory):
    npgpt exercise check . cross_entropy        (or: python cross_entropy.py)
The checker tries label_smoothing 0 first, then 0.1.
Read first: docs/layers/cross_entropy.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/cross_entropy.py: look at it once yours passes.
"""
import numpy as np


def log_softmax(logits):
    """logits (..., V) -> log-probabilities (..., V), computed stably."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def forward(logits, targets, label_smoothing=0.0, ignore_index=-1):
    """logits (B, T, V), targets (B, T) int -> scalar mean loss, cache.

    Per position: (1 - eps) * (-log p[target]) + eps * mean_j(-log p[j]).
    Positions whose target is ignore_index count neither in the sum nor in the mean.
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
    """dloss (scalar) -> dlogits (B, T, V).

    Hints:
    - Start with one position, no smoothing: d(-log softmax(z)[t]) / dz = ?
      (write log softmax(z)[t] = z[t] - log sum_j exp(z[j]) and differentiate).
    - The smoothed loss is a cross-entropy against the target distribution
      (1 - eps) * one_hot(t) + eps / V: the same formula with that in place of one_hot.
    - The loss is a *mean* over the counted positions: divide by n_valid, and
      give ignored positions 0.  Then multiply by dloss (it is not always 1).
    """
    probs, safe_targets, valid, n_valid, label_smoothing, V = cache
    raise NotImplementedError("write cross_entropy's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
