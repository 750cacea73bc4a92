"""Layer normalization over the last axis.  Derivation: docs/layers/layernorm.md"""
import numpy as np


def forward(x, w, b, eps=1e-5):
    """x (..., C), w (C,), b (C,) or None -> out (..., C), cache.

    out = (x - mean) / sqrt(var + eps) * w + b, statistics over the last
    axis, biased variance (divide by C), as in GPT-2 and PyTorch.
    """
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + float(eps))  # (..., 1); a Python float keeps x's dtype (an np.float64 would not)
    xhat = xc * rstd  # (..., C) zero mean, unit variance
    out = xhat * w
    if b is not None:
        out += b
    cache = (xhat, rstd, w, b is not None)
    return out, cache


def backward(dout, cache):
    """dout (..., C) -> dx (..., C), dw (C,), db (C,) or None.

    With g = dout * w (the gradient arriving at xhat), the three terms of
    dx are: g itself, minus its mean (because the mean was subtracted),
    minus xhat times mean(g * xhat) (because we divided by the std):

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    """
    xhat, rstd, w, has_bias = cache
    C = w.shape[0]
    g = dout * w  # (..., C) gradient with respect to xhat
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)
    db = dout.reshape(-1, C).sum(axis=0) if has_bias else None
    return dx, dw, db
