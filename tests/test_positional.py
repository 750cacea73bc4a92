"""Sinusoidal positional encoding: the formula, offsets, and the relative-offset rotation."""
import math

import numpy as np
import pytest

from npgpt.layers import positional


def test_matches_the_formula_entry_by_entry():
    T, C = 7, 6
    pe = positional.forward(T, C)
    for t in range(T):
        for i in range(C // 2):
            angle = t / 10000 ** (2 * i / C)
            assert pe[t, 2 * i] == pytest.approx(math.sin(angle), abs=1e-15)
            assert pe[t, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-15)


def test_offset_is_a_slice_of_the_longer_table():
    np.testing.assert_array_equal(positional.forward(4, 8, offset=3), positional.forward(7, 8)[3:])


def test_position_zero_and_bounds():
    pe = positional.forward(50, 16)
    np.testing.assert_array_equal(pe[0, 0::2], 0.0)
    np.testing.assert_array_equal(pe[0, 1::2], 1.0)
    assert np.all(np.abs(pe) <= 1.0)
    np.testing.assert_allclose(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, 1.0, atol=1e-14)  # each pair on the unit circle


@pytest.mark.parametrize("k", [1, 5, 17])
def test_relative_offset_is_one_fixed_rotation(k):
    """PE[t + k] = PE[t] @ M_k with the same M_k for every t (and M_k orthogonal)."""
    T, C = 40, 8
    pe = positional.forward(T + k, C)
    M = positional.shift_matrix(k, C)
    np.testing.assert_allclose(pe[:T] @ M, pe[k:], atol=1e-12)
    np.testing.assert_allclose(M @ M.T, np.eye(C), atol=1e-14)
    # and M is determined by the data alone: least squares over t recovers it
    fit, *_ = np.linalg.lstsq(pe[:T], pe[k:], rcond=None)
    np.testing.assert_allclose(fit, M, atol=1e-8)


def test_dtype_and_bad_arguments():
    assert positional.forward(3, 4, dtype=np.float32).dtype == np.float32
    for args in [(3, 5), (3, 0), (-1, 4), (3, 4, -2), (2.5, 4)]:
        with pytest.raises(ValueError, match="positional"):
            positional.forward(*args)
