"""Exercise 1 of 7: the backward of a linear layer, out = x @ w + b.

forward is written.  Write backward: it receives dout, the gradient of the
loss with respect to out, and the cache that forward returned; it returns
the gradient of the loss with respect to each of forward's float inputs, in
forward's order: dx, dw, db (db is None when forward had no bias).

Check your answer (from this directory):
    npgpt exercise check . linear        (or: python linear.py)
Read first: docs/layers/linear.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/linear.py: look at it once yours passes.
"""
import numpy as np


def forward(x, w, b=None):
    """x (..., Cin), w (Cin, Cout), b (Cout,) or None -> out (..., Cout), cache."""
    out = x @ w  # (..., Cin) @ (Cin, Cout) -> (..., Cout)
    if b is not None:
        out += b
    cache = (x, w, b is not None)
    return out, cache


def backward(dout, cache):
    """dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,) or None.

    Hints:
    - Write one output entry out:  out[n, j] = sum_i x[n, i] * w[i, j] + b[j].
      Which outputs does x[n, i] touch, and with what factor?  Which does w[i, j]?
    - Each gradient has the shape of the thing it is the gradient of:
      dw must be (Cin, Cout) like w.  Matching shapes tells you where a .T goes.
    - x may have several leading axes (B, T, Cin): x.reshape(-1, Cin) makes
      them one axis of rows; every row contributes to dw and db.
    """
    x, w, has_bias = cache
    raise NotImplementedError("write linear's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
