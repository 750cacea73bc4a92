"""Affine map y = x @ w + b.  Derivation: docs/layers/linear.md"""


def forward(x, w, b=None):
    """x (..., Cin), w (Cin, Cout), b (Cout,) or None -> out (..., Cout), cache.

    Weights are stored (in, out), GPT-2's orientation, so that Hugging
    Face checkpoints load without transposes.
    """
    out = x @ w  # (..., Cin) @ (Cin, Cout) -> (..., Cout)
    if b is not None:
        out += b
    cache = (x, w, b is not None)
    return out, cache


def backward(dout, cache):
    """dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,) or None."""
    x, w, has_bias = cache
    Cin, Cout = w.shape
    dx = dout @ w.T  # (..., Cout) @ (Cout, Cin) -> (..., Cin)
    x2 = x.reshape(-1, Cin)  # all leading axes are just more rows
    dout2 = dout.reshape(-1, Cout)
    dw = x2.T @ dout2  # (Cin, N) @ (N, Cout): one outer product per row, summed
    db = dout2.sum(axis=0) if has_bias else None
    return dx, dw, db
