"""Exercise 4 of 7: the backward of the token + position embedding.

forward is written.  Write backward: it receives dout and the cache; it
returns dwte and dwpe (idx holds integers, so it gets no gradient).

Check your answer (from this directory):
    npgpt exercise check . embedding        (or: python embedding.py)
Read first: docs/layers/embedding.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/embedding.py: look at it once yours passes.
"""
import numpy as np


def forward(idx, wte, wpe):
    """idx (B, T) int token ids, wte (V, C), wpe (Tmax, C), T <= Tmax -> out (B, T, C), cache."""
    B, T = idx.shape
    out = wte[idx] + wpe[:T]  # (B, T, C) + (T, C) broadcasts over the batch
    cache = (idx, wte.shape, wpe.shape)
    return out, cache


def backward(dout, cache):
    """dout (B, T, C) -> dwte (V, C), dwpe (Tmax, C).

    Hints:
    - A lookup copies a row; its backward sends each row of dout back to the
      row it was read from.  Rows nobody read get 0.
    - The same token id can appear many times in idx: its gradient rows must
      be *summed*.  Try `dwte[idx] += dout` on a small example with a repeated
      id and see what it does; then look up np.add.at.
    - Every sequence in the batch used positions 0..T-1 of wpe.
    """
    idx, wte_shape, wpe_shape = cache
    raise NotImplementedError("write embedding's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
