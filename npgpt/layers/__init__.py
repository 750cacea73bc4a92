"""Reference layers: plain NumPy forward/backward pairs.

Every module here follows one contract (see DESIGN.md):

    out, cache = forward(*inputs)
    grads      = backward(dout, cache)

`backward` returns the gradient of the loss with respect to each
floating-point array that `forward` took, in forward's argument order.
These are the functions a learner reads next to `docs/layers/<name>.md`;
`npgpt.kernels` holds faster Numba versions with the same signatures.
"""
from . import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, lora, pool_last

# lora (a fine-tuning adapter, docs/layers/lora.md) and pool_last (the classifier's pooling,
# docs/layers/pool_last.md) are imported for the models but are not GPT-2's own layers, which
# __all__ lists (and npgpt/exercises turns into exercises).
__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear"]
