"""Exercise 6 of 7: the backward of layer norm.

forward is written.  Write backward: it receives dout and the cache; it
returns dx, dw, db (db is None when forward had no bias).

Check your answer (from this directory):
    npgpt exercise check . layernorm        (or: python layernorm.py)
Read first: docs/layers/layernorm.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/layernorm.py: look at it once yours passes.
"""
import numpy as np


def forward(x, w, b, eps=1e-5):
    """x (..., C), w (C,), b (C,) or None -> out (..., C), cache.

    out = (x - mean) / sqrt(var + eps) * w + b, statistics over the last axis.
    """
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + float(eps))  # (..., 1)
    xhat = xc * rstd  # (..., C) zero mean, unit variance
    out = xhat * w
    if b is not None:
        out += b
    cache = (xhat, rstd, w, b is not None)
    return out, cache


def backward(dout, cache):
    """dout (..., C) -> dx (..., C), dw (C,), db (C,) or None.

    Hints:
    - dw and db first: out = xhat * w + b, summed over every row.
    - Then g = dout * w is the gradient arriving at xhat.
    - x[i] reaches xhat[j] along three paths: directly, through the mean,
      and through the variance (rstd).  Each path is one term of dx; a
      missing term is the classic bug.  Write xhat = (x - mean) * rstd and
      differentiate each factor; mean(...) over the last axis appears twice.
    - Stuck?  docs/layers/layernorm.md, "Three paths from x[i] to xhat[j]".
    """
    xhat, rstd, w, has_bias = cache
    raise NotImplementedError("write layernorm's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
