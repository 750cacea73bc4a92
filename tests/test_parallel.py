"""Data parallelism (npgpt/parallel.py): the loss and gradient of a batch
split across worker threads equal one plain forward + backward over the
whole batch, whatever the shards and however the ignored targets fall.

The oracle is the model itself run on the whole batch; the shard weights
n_k / n are never recomputed here, so a wrong weighting shows up as a
mismatch with it (test_equal_shard_weights_are_caught).
"""
import threading
import time

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt import GPT, GPTConfig
from npgpt import parallel
from npgpt.model import views_into
from npgpt.parallel import DataParallel, choose_workers, split_rows

V, T = 11, 8
TOL = {"float64": dict(rtol=1e-10, atol=1e-13), "float32": dict(rtol=1e-5, atol=1e-6)}


def tiny_model(dtype="float64", backend="numba", seed=0, **overrides):
    """A tiny model with its weights pushed off GPT-2's init (std 0.2) so that
    every gradient entry is well above rounding noise."""
    config = dict(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16, dtype=dtype, backend=backend)
    config.update(overrides)
    model = GPT(GPTConfig(**config), seed=seed)
    noise = np.random.default_rng(seed + 100).normal(0.0, 0.2, model.flat_params.shape)
    model.flat_params += noise.astype(model.flat_params.dtype)
    return model


def batch(B, seed=1, ignore=None):
    """-> idx, targets (B, T); ignore: a (B, T) bool mask of targets to set to -1."""
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    if ignore is not None:
        targets[ignore] = -1
    return idx, targets


def uneven_ignores(B, workers, seed=2):
    """An ignore mask whose valid-target counts differ a lot between the
    shards: the first shard's targets are all ignored, the second keeps a
    single one, later rows lose a random ~30%."""
    mask = np.random.default_rng(seed).random((B, T)) < 0.3
    shards = split_rows(B, workers)
    a, b = shards[0]
    mask[a:b] = True
    if len(shards) > 2:
        a, b = shards[1]
        mask[a:b] = True
        mask[a, 0] = False
    return mask


def plain_loss_and_grad(model, x, y, **kwargs):
    """The oracle: one forward and backward over the whole batch."""
    loss, cache = model.forward(x, y, **kwargs)
    grad = np.empty_like(model.flat_params)
    model.backward(cache, out=grad)
    return loss, grad


@pytest.fixture
def make_dp():
    """make_dp(model, workers) -> a DataParallel that is closed after the test."""
    made = []

    def make(model, workers):
        dp = DataParallel(model, workers)
        made.append(dp)
        return dp

    yield make
    for dp in made:
        dp.close()


def parallel_loss_and_grad(dp, x, y, **kwargs):
    grad = np.full_like(dp.model.flat_params, np.nan)  # every entry must be overwritten
    loss = dp.loss_and_grad(x, y, grad, **kwargs)
    return loss, grad


def assert_same(loss, grad, ref_loss, ref_grad, dtype):
    assert isinstance(loss, float)
    assert grad.dtype == ref_grad.dtype
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(loss, ref_loss, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_grad, **TOL[dtype])


# ------------------------------------------------- equal to the one-batch path
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_equals_one_batch(make_dp, dtype, workers):
    model = tiny_model(dtype)
    ignore = np.zeros((6, T), bool)
    ignore[1, :3] = ignore[4, 5] = True
    x, y = batch(6, ignore=ignore)
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
    assert np.abs(ref_grad).max() > 1e-2  # not a trivially small gradient
    dp = make_dp(model, workers)
    loss, grad = parallel_loss_and_grad(dp, x, y)
    assert_same(loss, grad, ref_loss, ref_grad, dtype)
    # the same object again: the per-worker buffers are reused, not accumulated into
    loss, grad = parallel_loss_and_grad(dp, x, y)
    assert_same(loss, grad, ref_loss, ref_grad, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("B, workers, n_shards", [(5, 2, 2), (2, 3, 2), (7, 3, 3), (1, 3, 1)])
def test_uneven_shards_and_unevenly_ignored_targets(make_dp, dtype, B, workers, n_shards):
    assert len(split_rows(B, workers)) == n_shards
    model = tiny_model(dtype)
    x, y = batch(B, seed=3, ignore=uneven_ignores(B, workers))
    if B > 1:
        counts = [np.count_nonzero(y[a:b] != -1) for a, b in split_rows(B, workers)]
        assert counts[0] == 0 and len(set(counts)) == len(counts)  # one shard all ignored, all counts differ
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
    loss, grad = parallel_loss_and_grad(make_dp(model, workers), x, y)
    assert_same(loss, grad, ref_loss, ref_grad, dtype)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_target_ignored_gives_zero_loss_and_gradient(make_dp, workers):
    model = tiny_model()
    x, y = batch(5, ignore=np.ones((5, T), bool))
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
    assert ref_loss == 0.0 and not ref_grad.any()  # the plain path's convention
    loss, grad = parallel_loss_and_grad(make_dp(model, workers), x, y)
    assert loss == 0.0
    assert not np.isnan(grad).any() and not grad.any()


def test_other_ignore_index(make_dp):
    model = tiny_model()
    x, y = batch(5, ignore=uneven_ignores(5, 3))
    y[y == -1] = 7  # 7 is now the ignored id (and a valid -1 would be out of range)
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y, ignore_index=7)
    loss, grad = parallel_loss_and_grad(make_dp(model, 3), x, y, ignore_index=7)
    assert_same(loss, grad, ref_loss, ref_grad, "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("workers", [2, 3])
def test_label_smoothing(make_dp, dtype, workers):
    model = tiny_model(dtype)
    x, y = batch(5, seed=4, ignore=uneven_ignores(5, workers))
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y, label_smoothing=0.1)
    ref_loss_unsmoothed, _ = plain_loss_and_grad(model, x, y)
    assert abs(ref_loss - ref_loss_unsmoothed) > 1e-3  # smoothing changes the objective
    loss, grad = parallel_loss_and_grad(make_dp(model, workers), x, y, label_smoothing=0.1)
    assert_same(loss, grad, ref_loss, ref_grad, dtype)


# ------------------------------------------------------- GPT.backward's dloss
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_backward_dloss_scales_the_gradient(backend, label_smoothing):
    model = tiny_model(backend=backend)
    ignore = np.zeros((3, T), bool)
    ignore[0, 2:] = True
    x, y = batch(3, ignore=ignore)

    def grad_with(dloss):
        _, cache = model.forward(x, y, label_smoothing=label_smoothing)  # numba's backward consumes the cache
        out = np.full_like(model.flat_params, np.nan)
        model.backward(cache, out=out, dloss=dloss)
        return out

    g1 = grad_with(1.0)
    _, cache = model.forward(x, y, label_smoothing=label_smoothing)
    default = model.backward(cache)  # dloss defaults to 1
    for name, g in views_into(g1, model.shapes).items():
        np.testing.assert_array_equal(default[name], g)
    for dloss in [0.37, -2.5, 3e-4]:
        np.testing.assert_allclose(grad_with(dloss), dloss * g1, rtol=1e-12, atol=1e-15)
    g0 = grad_with(0.0)
    assert not np.isnan(g0).any() and not g0.any()


# ------------------------------------------------------------------- dropout
def test_dropout_is_deterministic_whatever_the_thread_timing(make_dp, monkeypatch):
    model = tiny_model(dropout=0.2)
    x, y = batch(6, ignore=uneven_ignores(6, 3))
    dp = make_dp(model, 3)

    def run(seed):
        rng = np.random.default_rng(seed)
        loss, grad = parallel_loss_and_grad(dp, x, y, rng=rng)
        return loss, grad, rng.bit_generator.state

    loss0, grad0, state0 = run(7)
    # dropout is really on: the gradient differs from the evaluation-mode one
    _, eval_grad = plain_loss_and_grad(model, x, y)
    assert np.abs(grad0 - eval_grad).max() > 1e-3
    for _ in range(3):
        loss, grad, state = run(7)
        assert loss == loss0
        np.testing.assert_array_equal(grad, grad0)
        assert state == state0

    # Force the shards to finish in opposite orders: first the first shard
    # is held back, then the last.  The masks must not depend on it.
    forward = model.forward
    for slow_row in [0, 5]:
        def slow_forward(idx, targets, **kwargs):
            if np.array_equal(idx[0], x[slow_row]) or np.array_equal(idx[-1], x[slow_row]):
                time.sleep(0.05)
            return forward(idx, targets, **kwargs)

        monkeypatch.setattr(model, "forward", slow_forward)
        loss, grad, state = run(7)
        assert loss == loss0
        np.testing.assert_array_equal(grad, grad0)
        assert state == state0
    monkeypatch.undo()

    # another seed draws other masks; so does the next step from the same generator
    _, grad_other, _ = run(8)
    assert np.abs(grad_other - grad0).max() > 1e-3
    rng = np.random.default_rng(7)
    _, first = parallel_loss_and_grad(dp, x, y, rng=rng)
    _, second = parallel_loss_and_grad(dp, x, y, rng=rng)
    np.testing.assert_array_equal(first, grad0)
    assert np.abs(second - first).max() > 1e-3


def test_shards_run_on_worker_threads(make_dp, monkeypatch):
    model = tiny_model()
    x, y = batch(4)
    seen = []
    forward = model.forward

    def recording_forward(idx, targets, **kwargs):
        seen.append((threading.current_thread().name, len(idx)))
        return forward(idx, targets, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    parallel_loss_and_grad(make_dp(model, 2), x, y)
    assert sorted(n for _, n in seen) == [2, 2]
    assert all(name.startswith("npgpt-shard") for name, _ in seen)  # not the caller's thread


# ------------------------------------------------- the gradient buffer itself
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradient_buffer_is_overwritten(make_dp, dtype):
    """Batches of several sizes through one DataParallel (so some calls leave
    worker buffers unused), into a NaN-filled and a garbage-filled buffer."""
    model = tiny_model(dtype)
    dp = make_dp(model, 3)
    for B in [6, 2, 1, 4, 7]:
        x, y = batch(B, seed=B)
        ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
        for fill in [np.nan, 1e6]:
            grad = np.full_like(model.flat_params, fill)
            loss = dp.loss_and_grad(x, y, grad)
            assert_same(loss, grad, ref_loss, ref_grad, dtype)


def test_rejects_zero_workers():
    with pytest.raises(ValueError, match="workers"):
        DataParallel(tiny_model(), 0)


# ---------------------------------------------------------------- split_rows
@settings(max_examples=300, deadline=None)
@given(n_rows=st.integers(1, 300), workers=st.integers(1, 64))
def test_split_rows_covers_every_row_once_in_near_equal_shards(n_rows, workers):
    shards = split_rows(n_rows, workers)
    assert len(shards) == min(n_rows, workers)
    assert shards[0][0] == 0 and shards[-1][1] == n_rows
    assert all(b == c for (_, b), (c, _) in zip(shards[:-1], shards[1:]))  # contiguous, no overlap
    sizes = [b - a for a, b in shards]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert all(isinstance(v, int) for shard in shards for v in shard)


def test_split_rows_examples():
    assert split_rows(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert split_rows(2, 3) == [(0, 1), (1, 2)]
    assert split_rows(1, 4) == [(0, 1)]
    assert sorted(b - a for a, b in split_rows(5, 2)) == [2, 3]


# ------------------------------------------------------------ choose_workers
def test_choose_workers():
    model = tiny_model()
    assert choose_workers(model, 16, cores=4) == 4
    assert choose_workers(model, 3, cores=8) == 3  # no more workers than rows
    assert choose_workers(model, 1, cores=8) == 1
    assert choose_workers(model, 1000) == numba.config.NUMBA_NUM_THREADS
    assert choose_workers(tiny_model(backend="numpy"), 16, cores=4) == 1  # the reference never splits


def test_choose_workers_keeps_big_models_whole(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(parallel, "MAX_DATA_PARALLEL_PARAMS", model.num_params)
    assert choose_workers(model, 16, cores=4) == 4  # at the limit: still split
    monkeypatch.setattr(parallel, "MAX_DATA_PARALLEL_PARAMS", model.num_params - 1)
    assert choose_workers(model, 16, cores=4) == 1


# ------------------------------------------ the tests catch a wrong weighting
class _EqualCounts:
    """numpy, except that count_nonzero says every shard has one valid
    target: DataParallel then weights the shards equally."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def count_nonzero(a, *args, **kwargs):
        return 1


def test_equal_shard_weights_are_caught(make_dp, monkeypatch):
    model = tiny_model()
    assert split_rows(5, 2) == [(0, 2), (2, 5)]
    ignore = np.zeros((5, T), bool)
    ignore[:2] = True
    ignore[1, 4] = False  # the first shard counts 1 target, the second 24
    x, y = batch(5, seed=5, ignore=ignore)
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
    dp = make_dp(model, 2)
    loss, grad = parallel_loss_and_grad(dp, x, y)
    assert_same(loss, grad, ref_loss, ref_grad, "float64")  # the right weighting passes

    monkeypatch.setattr(parallel, "np", _EqualCounts())
    wrong_loss, wrong_grad = parallel_loss_and_grad(dp, x, y)
    with pytest.raises(AssertionError):
        assert_same(wrong_loss, wrong_grad, ref_loss, ref_grad, "float64")
    assert abs(wrong_loss - ref_loss) > 0.1 * abs(ref_loss)
    assert np.abs(wrong_grad - ref_grad).max() > 0.1 * np.abs(ref_grad).max()


# ------------------------------------------------- inputs and the threading layer
def test_python_lists_are_weighted_like_arrays(make_dp):
    """Counting valid targets on a list once compared the list itself with -1."""
    model = tiny_model()
    x, y = batch(4, ignore=uneven_ignores(4, 2))
    ref_loss, ref_grad = plain_loss_and_grad(model, x, y)
    dp = make_dp(model, 2)
    loss, grad = parallel_loss_and_grad(dp, x.tolist(), y.tolist())
    assert_same(loss, grad, ref_loss, ref_grad, "float64")
    np.testing.assert_allclose(dp.loss(x.tolist(), y.tolist()), ref_loss, **TOL["float64"])


def test_evaluation_loss_equals_the_one_batch_loss(make_dp):
    model = tiny_model()
    x, y = batch(5, ignore=uneven_ignores(5, 2))
    np.testing.assert_allclose(make_dp(model, 2).loss(x, y), model.forward(x, y)[0], **TOL["float64"])


def test_workqueue_threading_layer_falls_back_to_one_worker():
    """Numba's workqueue layer aborts the process when two threads launch kernels:
    choose_workers must not split, and DataParallel must refuse with an error."""
    import subprocess
    import sys

    code = (
        "from npgpt import GPT, GPTConfig\n"
        "from npgpt.parallel import DataParallel, choose_workers\n"
        "m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))\n"
        "print(choose_workers(m, 4, cores=2))\n"
        "try:\n"
        "    DataParallel(m, 2)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    )
    env = dict(__import__("os").environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("refused:") and "workqueue" in lines[1]
