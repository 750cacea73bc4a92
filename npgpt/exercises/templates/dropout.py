"""Exercise 3 of 7: the backward of (inverted) dropout.

forward is written.  Write backward: it receives dout and the cache; it
returns dx.  (p and rng are not arrays, so they get no gradient.)

Check your answer (from this directory):
    npgpt exercise check . dropout        (or: python dropout.py)
Read first: docs/layers/dropout.md, sections "Shapes" and "Forward".
The solution is npgpt/layers/dropout.py: look at it once yours passes.
"""


def forward(x, p, rng):
    """x (any shape), p in [0, 1), rng: np.random.Generator -> out, cache.

    Each element is zeroed with probability p and the survivors are scaled
    by 1/(1-p).  With p == 0 this is the identity (and the cache is None).
    """
    if p == 0.0:
        return x, None
    keep = rng.random(x.shape) >= p  # True where the element survives
    scaled_mask = keep.astype(x.dtype) * (1.0 / (1.0 - float(p)))
    return x * scaled_mask, scaled_mask


def backward(dout, cache):
    """dout -> dx (same shape).

    Hints:
    - With the mask fixed, out is linear in x: out = x * scaled_mask.
      What is d out[i] / d x[i]?
    - Do not forget the p == 0 case, where the cache is None.
    """
    scaled_mask = cache
    raise NotImplementedError("write dropout's backward (hints in its docstring)")


if __name__ == "__main__":
    from npgpt.exercises import main

    main(["check", __file__])
