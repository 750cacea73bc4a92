"""GELU, tanh approximation (GPT-2's).  Derivation: docs/layers/gelu.md"""
import math

import numpy as np

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # a Python float: keeps float32 arrays float32
CUBIC = 0.044715


def forward(x):
    """x (any shape) -> out (same shape), cache.

    gelu(x) = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)
    """
    u = SQRT_2_OVER_PI * (x + CUBIC * x * x * x)
    out = 0.5 * x * (1.0 + np.tanh(u))
    return out, x  # recomputing tanh in backward is cheaper than storing it


def backward(dout, cache):
    """dout (any shape) -> dx (same shape).

    d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,
    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    x = cache
    t = np.tanh(SQRT_2_OVER_PI * (x + CUBIC * x * x * x))
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x)
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
    return dout * local
