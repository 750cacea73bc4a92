"""Exercise 2 of 7: the backward of GELU (GPT-2's tanh approximation).

forward is written.  Write backward: it receives dout (the gradient of the
loss with respect to out) and the cache; it returns dx.

Check your answer (from this directory):
    npgpt exercise check . gelu        (or: python gelu.py)
Read first: docs/layers/gelu.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/gelu.py: look at it once yours passes.
"""
import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def forward(x):
    """x (any shape) -> out (same shape), cache.

    gelu(x) = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)
    """
    u = SQRT_2_OVER_PI * (x + CUBIC * x * x * x)
    out = 0.5 * x * (1.0 + np.tanh(u))
    return out, x  # backward recomputes tanh(u) from x


def backward(dout, cache):
    """dout (any shape) -> dx (same shape).

    Hints:
    - GELU works on each entry on its own, so dx = dout * gelu'(x): one
      local derivative per entry, times the gradient arriving from above.
    - gelu is a product, 0.5 * x * (1 + tanh(u)): the product rule gives two terms.
    - d tanh(u) / du = 1 - tanh(u)^2, and du/dx comes from u's polynomial.
    """
    x = cache
    raise NotImplementedError("write gelu's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
