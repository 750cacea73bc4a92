"""One rule for every `rng` or `seed` argument in npgpt's library.

    >>> import numpy as np
    >>> int(as_generator(7).integers(100)) == int(np.random.default_rng(7).integers(100))
    True
    >>> g = np.random.default_rng(0)
    >>> as_generator(g) is g                   # a Generator is used as it is (its stream advances)
    True
"""
import numbers

import numpy as np


def as_generator(rng):
    """None -> a fresh, unseeded Generator; an int -> default_rng(int); a Generator -> itself.

    Anything else (a float, a legacy RandomState) is a ValueError naming what was given.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"expected a random seed (int), a numpy.random.Generator or None, got {type(rng).__name__}")
