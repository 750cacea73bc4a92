"""Reference layers: plain NumPy forward/backward pairs.

Every module here follows one contract (see DESIGN.md):

    out, cache = forward(*inputs)
    grads      = backward(dout, cache)

`backward` returns the gradient of the loss with respect to each
floating-point array that `forward` took, in forward's argument order.
These are the functions a learner reads next to `docs/layers/<name>.md`;
`npgpt.kernels` holds faster Numba versions with the same signatures.
"""
from . import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, pool_last

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear", "pool_last"]
