"""Inverted dropout.  Derivation: docs/layers/dropout.md"""


def forward(x, p, rng):
    """x (any shape), p in [0, 1), rng: np.random.Generator -> out, cache.

    Each element is zeroed with probability p and the survivors are scaled
    by 1/(1-p), so the expected output equals x and nothing needs to change
    at inference time.  With p == 0 this is the identity and draws nothing.
    The mask comes from the caller's seeded generator, so a run is
    reproducible and a gradient check can replay the same mask.
    """
    if p == 0.0:
        return x, None
    keep = rng.random(x.shape) >= p  # (same shape) True where the element survives
    scaled_mask = keep.astype(x.dtype) * (1.0 / (1.0 - float(p)))  # float(): an np.float64 p would promote float32
    return x * scaled_mask, scaled_mask


def backward(dout, cache):
    """dout -> dx: the same mask and scale, since out is linear in x."""
    scaled_mask = cache
    if scaled_mask is None:
        return dout
    return dout * scaled_mask
