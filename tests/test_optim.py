"""AdamW, clipping, accumulation and the learning-rate schedules."""
import math

import numpy as np
import pytest

from npgpt import GPT, GPTConfig
from npgpt import optim


def textbook_adamw(p, grads, decay, lr, b1, b2, eps, wd):
    """AdamW as written in Loshchilov & Hutter / PyTorch's docs, one element at a time in float64."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        for i in range(p.size):
            p[i] -= lr * wd * decay[i] * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def adamw_implementations():
    from npgpt.kernels import optim as kernel

    return [pytest.param(optim.adamw_step, optim.global_norm, id="numpy"),
            pytest.param(kernel.adamw_step, kernel.global_norm, id="numba")]


@pytest.mark.parametrize("adamw_step, global_norm", adamw_implementations())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_step_matches_the_textbook(adamw_step, global_norm, dtype):
    rng = np.random.default_rng(0)
    n = 37
    p0 = rng.standard_normal(n)
    decay = (rng.random(n) < 0.5).astype(dtype)
    grads = [rng.standard_normal(n) for _ in range(5)]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.95, 1e-8, 0.1
    expected = textbook_adamw(p0, grads, decay, lr, b1, b2, eps, wd)

    p, m, v = p0.astype(dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    for t, g in enumerate(grads, start=1):
        adamw_step(p, g.astype(dtype), m, v, decay, lr, b1, b2, eps, wd, t)
    assert p.dtype == dtype
    np.testing.assert_allclose(p, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    g = grads[0].astype(dtype)
    assert global_norm(g) == pytest.approx(np.linalg.norm(grads[0]), rel=1e-6)


def test_weight_decay_only_touches_2d_weights():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    mask = optim.decay_mask(model.shapes)
    masks = dict(zip(model.shapes, np.split(mask, np.cumsum([p.size for p in model.params.values()])[:-1])))
    for name, m in masks.items():
        expected = 1.0 if model.params[name].ndim == 2 else 0.0
        assert np.all(m == expected), name
    # with a zero gradient, only decayed weights move
    opt = optim.AdamW(model, weight_decay=0.5, grad_clip=0.0)
    before = model.flat_params.copy()
    opt.step(np.zeros_like(before), lr=0.1)
    moved = model.flat_params != before
    assert np.array_equal(moved, (mask == 1) & (before != 0))


def test_clipping_scales_to_max_norm_and_reports_the_original():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = optim.AdamW(model, grad_clip=1.0)
    grad = np.full(model.num_params, 0.1, np.float32)
    norm = opt.step(grad, lr=1e-3)
    assert norm == pytest.approx(0.1 * math.sqrt(model.num_params), rel=1e-5)
    assert optim.global_norm(grad) == pytest.approx(1.0, rel=1e-4)  # clipped in place

    small = np.full(4, 0.1)
    optim.clip_by_global_norm(small, 1.0, optim.global_norm(small))
    np.testing.assert_array_equal(small, 0.1)  # under the limit: untouched
    big = np.full(4, 10.0)
    optim.clip_by_global_norm(big, 0.0, optim.global_norm(big))
    np.testing.assert_array_equal(big, 10.0)  # 0 turns clipping off


def test_step_refuses_a_nan_gradient():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = optim.AdamW(model)
    before = model.flat_params.copy()
    grad = np.zeros(model.num_params, np.float32)
    grad[3] = np.nan
    with pytest.raises(FloatingPointError):
        opt.step(grad, lr=1e-3)
    np.testing.assert_array_equal(model.flat_params, before)


def test_accumulating_micro_batches_equals_one_big_batch():
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 13, (6, 8))
    y = rng.integers(0, 13, (6, 8))
    big = np.zeros(model.num_params)
    big_loss = optim.accumulate_gradients(model, [(x, y)], big)
    acc = np.zeros(model.num_params)
    acc_loss = optim.accumulate_gradients(model, [(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:], y[4:])], acc)
    assert acc_loss == pytest.approx(big_loss, rel=1e-12)
    np.testing.assert_allclose(acc, big, rtol=1e-10, atol=1e-14)


def test_optimizer_state_round_trips():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = optim.AdamW(model)
    opt.step(np.ones(model.num_params, np.float32), lr=1e-3)
    state = opt.state_dict()
    assert isinstance(state, dict) and state["step"] == 1
    other = optim.AdamW(model)
    other.load_state_dict({k: (a.copy() if k != "step" else a) for k, a in state.items()})
    assert other.step_count == 1
    np.testing.assert_array_equal(other.m, opt.m)
    np.testing.assert_array_equal(other.v, opt.v)


# ------------------------------------------------------------------ schedules
def test_cosine_warms_up_then_decays_to_min_lr():
    s = optim.make_schedule("cosine", lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    assert s.lr(0) == pytest.approx(0.1)  # 1/10 of the way up
    assert s.lr(9) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.55)  # halfway: the mean of lr and min_lr
    assert s.lr(110) == pytest.approx(0.1)
    assert s.lr(500) == pytest.approx(0.1)
    rates = [s.lr(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_constant_and_step():
    c = optim.make_schedule("constant", lr=0.3, warmup_iters=0)
    assert c.lr(0) == c.lr(10_000) == 0.3
    s = optim.make_schedule("step", lr=1.0, min_lr=0.2, warmup_iters=0, step_every=100, gamma=0.5)
    assert [s.lr(i) for i in (0, 99, 100, 199, 200, 300)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.2]


def test_plateau_drops_after_patience_and_its_state_round_trips():
    s = optim.make_schedule("plateau", lr=1.0, min_lr=0.1, warmup_iters=0, gamma=0.5, patience=2)
    for loss in (3.0, 2.0, 2.0, 2.0):  # improvement, then two bad evaluations: still patient
        s.observe(loss)
    assert s.lr(100) == 1.0
    s.observe(2.5)  # the third bad one
    assert s.lr(100) == 0.5
    restored = optim.make_schedule("plateau", lr=1.0, min_lr=0.1, warmup_iters=0, gamma=0.5, patience=2)
    restored.load_state_dict(s.state_dict())
    for loss in (1.9, 2.0, 2.0, 2.0):
        s.observe(loss)
        restored.observe(loss)
        assert s.lr(100) == restored.lr(100)
    assert s.lr(100) == 0.25
    for _ in range(20):
        s.observe(5.0)
    assert s.lr(100) == 0.1  # floored at min_lr


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        optim.make_schedule("linear", lr=1.0)
