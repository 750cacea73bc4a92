"""LoRA in the fast path: the reference, unchanged.  Reference: npgpt/layers/lora.py

An adapter is two skinny matrix products, x @ a (N, Cin) @ (Cin, r) and
u @ b (N, r) @ (r, Cout), and one scale applied to the (N, r) middle.  All
the work is in the products, which BLAS already does best; the only thing
a Numba pass could fuse is the scale, on an array r / Cout the size of the
layer's output, so a kernel would add compile time and nothing else.  The
model adds the adapter's output to the frozen layer's in place.
"""
from ..layers.lora import backward, forward, init, merged_weight  # noqa: F401

__all__ = ["forward", "backward", "init", "merged_weight"]
