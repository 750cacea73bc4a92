"""Non-causal multi-head self-attention with a key padding mask: the encoder's attention.

Derivation: docs/layers/cross_attention.md (it is cross-attention of a
sequence with itself).  Packing matches npgpt/layers/attention.py:
qkv (B, T, 3C) is q|k|v, and backward returns dqkv in the same packing.
key_mask (B, T) bool, True = real token; padding keys are ignored by every
query; a padding query still attends to the real keys (its output is
usually discarded downstream).  A sequence with no real token gives 0.
"""
from . import cross_attention


def split(qkv):
    """qkv (B, T, 3C) -> q (B, T, C), kv (B, T, 2C)."""
    if qkv.ndim != 3 or qkv.shape[-1] % 3:
        raise ValueError(f"self_attention_masked: qkv {qkv.shape} must be (B, T, 3C)")
    C = qkv.shape[-1] // 3
    return qkv[..., :C], qkv[..., C:]


def forward(qkv, n_head, key_mask=None, impl=cross_attention):
    """qkv (B, T, 3C), key_mask (B, T) bool or None -> out (B, T, C), cache.

    impl: the cross-attention module to run (the reference here, or
    npgpt.kernels.cross_attention, which has the same contract).
    """
    q, kv = split(qkv)
    out, cache = impl.forward(q, kv, n_head, key_mask)
    return out, (impl, cache)


def backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C): q's and kv's gradients side by side."""
    import numpy as np

    impl, inner = cache
    dq, dkv = impl.backward(dout, inner)
    return np.concatenate([dq, dkv], axis=-1)
