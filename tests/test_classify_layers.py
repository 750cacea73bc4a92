"""Last-token pooling (npgpt/layers/pool_last.py): finite differences, and a wrong backward is caught."""
import numpy as np
import pytest

from npgpt import gradcheck
from npgpt.layers import pool_last


@pytest.mark.parametrize("B,T,C", [(1, 1, 1), (3, 5, 4), (4, 7, 3)])
def test_pool_last_gradients(B, T, C):
    rng = np.random.default_rng(B * 100 + T)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T  # the longest text fills the batch
    if B > 1:
        lengths[-1] = 1
    report = gradcheck.check_layer(pool_last.forward, pool_last.backward,
                                   {"h": rng.standard_normal((B, T, C)), "lengths": lengths}, name="pool_last")
    assert len(report.results) == 1 and report.passed, str(report)


def test_pool_last_picks_the_last_real_token():
    h = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    pooled, _ = pool_last.forward(h, np.array([2, 4]))
    np.testing.assert_array_equal(pooled, np.stack([h[0, 1], h[1, 3]]))


def test_a_backward_that_scatters_to_the_wrong_position_is_caught():
    def wrong_backward(dpooled, cache):
        last, shape = cache
        dh = np.zeros(shape)
        dh[np.arange(shape[0]), np.minimum(last + 1, shape[1] - 1)] = dpooled  # lengths, not lengths - 1
        return dh

    rng = np.random.default_rng(0)
    report = gradcheck.check_layer(pool_last.forward, wrong_backward,
                                   {"h": rng.standard_normal((3, 5, 2)), "lengths": np.array([2, 3, 1])})
    assert not report.passed


@pytest.mark.parametrize("lengths", [[0, 2], [1, 6], [1], [[1, 2]], [1.0, 2.0]])
def test_pool_last_refuses_bad_lengths(lengths):
    with pytest.raises(ValueError, match="lengths"):
        pool_last.forward(np.zeros((2, 5, 3)), np.array(lengths))
