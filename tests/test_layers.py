"""Every reference layer in npgpt/layers/: gradients, forward values, dtypes.

Gradients: each layer's analytic backward against npgpt.gradcheck.check_layer
(five-point central differences, float64) for every array input, over
hypothesis-drawn shapes that include T = 1, one head and odd sizes.  The
bound is the project's 1e-6 max relative error everywhere (no looser bound
is needed; the worst error measured over 1,500 draws per layer is 7e-8).
Two input regions where the finite differences themselves cannot reach 1e-6
are handled explicitly (layer-norm rows with almost no spread, GELU's far
tails): see rows_with_spread and test_gelu_gradients.

Forward values are checked against straightforward loop-and-formula
versions written here, so that a backward that is the exact derivative of a
wrong forward would still be caught.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt import gradcheck
from npgpt.layers import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear

TOL = 1e-6  # max relative error; gradcheck.DEFAULT_TOL, stated here on purpose
GRAD_SETTINGS = settings(max_examples=20, deadline=None)
VALUE_SETTINGS = settings(max_examples=15, deadline=None)

seeds = st.integers(0, 2**32 - 1)
batches = st.integers(1, 3)
times = st.integers(1, 5)  # T = 1 included: attention over a single position
sizes = st.integers(1, 7)  # odd sizes included


def assert_gradcheck(report, n_inputs):
    """The report covers n_inputs inputs and every one is below TOL."""
    assert len(report.results) == n_inputs, str(report)
    worst = max(r.max_rel_error for r in report.results)
    assert report.passed and worst < TOL, f"max relative error {worst:.2e} >= {TOL:g}\n{report}"


# ---------------------------------------------------------------- gradients
@GRAD_SETTINGS
@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=3), c_in=sizes, c_out=sizes,
       with_bias=st.booleans())
def test_linear_gradients(seed, lead, c_in, c_out, with_bias):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((*lead, c_in)), "w": rng.standard_normal((c_in, c_out)),
              "b": rng.standard_normal(c_out) if with_bias else None}
    report = gradcheck.check_layer(linear.forward, linear.backward, inputs, name="linear", seed=seed)
    assert_gradcheck(report, 3 if with_bias else 2)


@GRAD_SETTINGS
@given(seed=seeds, B=batches, T=times, C=st.integers(1, 9), with_bias=st.booleans())
def test_layernorm_gradients(seed, B, T, C, with_bias):
    rng = np.random.default_rng(seed)
    inputs = {"x": rows_with_spread(rng, (B, T, C)), "w": rng.standard_normal(C),
              "b": rng.standard_normal(C) if with_bias else None}
    report = gradcheck.check_layer(layernorm.forward, layernorm.backward, inputs, name="layernorm", seed=seed)
    assert_gradcheck(report, 3 if with_bias else 2)


def rows_with_spread(rng, shape):
    """Random rows, each with a standard deviation drawn from [0.1, 3] and a random mean.

    Finite differences with step h = 1e-3 resolve a layer norm only if a row's
    spread is well above h: a row whose two entries differ by ~1e-3 (frequent
    at C = 2 with raw normal draws) gives truncation errors up to 4e-4.  That
    is the stencil's limit, not the backward's, so the drawn rows keep their
    spread >= 0.1 and the nearly constant row gets its own test below.
    """
    z = rng.standard_normal(shape)
    if shape[-1] > 1:
        z = (z - z.mean(axis=-1, keepdims=True)) / z.std(axis=-1, keepdims=True)
    return z * rng.uniform(0.1, 3.0, (*shape[:-1], 1)) + rng.standard_normal((*shape[:-1], 1))


@pytest.mark.parametrize("spread", [1e-2, 3e-3, 1e-3])
def test_layernorm_gradients_nearly_constant_rows(spread):
    """Rows whose variance is comparable to the layer's eps = 1e-5, where eps
    matters: checked with a finite-difference step far below the spread."""
    rng = np.random.default_rng(int(1 / spread))
    x = 0.7 + spread * rng.standard_normal((2, 3, 5))
    inputs = {"x": x, "w": rng.standard_normal(5), "b": rng.standard_normal(5)}
    report = gradcheck.check_layer(layernorm.forward, layernorm.backward, inputs, name="layernorm", eps=spread * 1e-3)
    assert_gradcheck(report, 3)


@GRAD_SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), scale=st.sampled_from([0.5, 2.0, 4.0]))
def test_gelu_gradients(seed, shape, scale):
    # Inputs within [-5, 5].  Below about -6, GPT-2's 0.5 x (1 + tanh u) cancels
    # in 1 + tanh(u) ~ 1e-13 and the forward itself has no significant digits
    # left, so no finite difference can check a relative error there; the
    # tails get their own (absolute) test below.
    x = np.clip(np.random.default_rng(seed).standard_normal(shape) * scale, -5.0, 5.0)
    report = gradcheck.check_layer(gelu.forward, gelu.backward, {"x": x}, name="gelu", seed=seed)
    assert_gradcheck(report, 1)


@GRAD_SETTINGS
@given(seed=seeds, B=batches, T=times, n_head=st.integers(1, 3), head_size=st.integers(1, 3),
       scale=st.sampled_from([0.5, 1.5]))
def test_attention_gradients(seed, B, T, n_head, head_size, scale):
    C = n_head * head_size  # n_head divides C by construction
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * C)) * scale
    report = gradcheck.check_layer(attention.forward, attention.backward, {"qkv": qkv, "n_head": n_head},
                                   name="attention", seed=seed)
    assert_gradcheck(report, 1)


@GRAD_SETTINGS
@given(seed=seeds, B=batches, T=times, V=st.integers(2, 7),
       label_smoothing=st.sampled_from([0.0, 0.1, 0.37]), ignore_index=st.sampled_from([-1, -100]))
def test_cross_entropy_gradients(seed, B, T, V, label_smoothing, ignore_index):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.3] = ignore_index  # some ignored positions (maybe all, maybe none)
    logits = rng.standard_normal((B, T, V)) * 2.0

    def fwd(logits, targets):
        return cross_entropy.forward(logits, targets, label_smoothing=label_smoothing, ignore_index=ignore_index)

    report = gradcheck.check_layer(fwd, cross_entropy.backward, {"logits": logits, "targets": targets},
                                   name="cross_entropy", seed=seed)
    assert_gradcheck(report, 1)


@GRAD_SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_dropout_gradients(seed, shape, p):
    x = np.random.default_rng(seed).standard_normal(shape)

    def fwd(x):  # a fresh generator with the same seed: the same mask at every evaluation
        return dropout.forward(x, p, np.random.default_rng(seed + 1))

    report = gradcheck.check_layer(fwd, dropout.backward, {"x": x}, name="dropout", seed=seed)
    assert_gradcheck(report, 1)


@GRAD_SETTINGS
@given(seed=seeds, B=batches, T=times, V=st.integers(1, 6), C=sizes, extra_positions=st.integers(0, 3))
def test_embedding_gradients(seed, B, T, V, C, extra_positions):
    rng = np.random.default_rng(seed)
    inputs = {"idx": rng.integers(0, V, (B, T)),  # small V: repeated ids are the rule
              "wte": rng.standard_normal((V, C)), "wpe": rng.standard_normal((T + extra_positions, C))}
    report = gradcheck.check_layer(embedding.forward, embedding.backward, inputs, name="embedding", seed=seed)
    assert_gradcheck(report, 2)


# ----------------------------------------------------- forward values by hand
def test_gelu_tails():
    """Far from 0, GELU is 0 (left) or the identity (right), and so is its slope."""
    x = np.array([-12.0, -9.0, -7.0, 7.0, 9.0, 12.0])
    out, cache = gelu.forward(x)
    dx = gelu.backward(np.ones_like(x), cache)
    assert np.all(np.abs(out[:3]) < 1e-9) and np.all(np.abs(dx[:3]) < 1e-9)
    np.testing.assert_allclose(out[3:], x[3:], rtol=1e-12)
    np.testing.assert_allclose(dx[3:], 1.0, rtol=1e-9)


@VALUE_SETTINGS
@given(seed=seeds, B=batches, T=times, n_head=st.integers(1, 3), head_size=st.integers(1, 3))
def test_attention_forward_matches_per_head_loop(seed, B, T, n_head, head_size):
    C = n_head * head_size
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * C))
    out, _ = attention.forward(qkv, n_head)
    expected = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            cols = slice(h * head_size, (h + 1) * head_size)
            q = qkv[b, :, 0:C][:, cols]
            k = qkv[b, :, C:2 * C][:, cols]
            v = qkv[b, :, 2 * C:3 * C][:, cols]
            for t in range(T):
                scores = [sum(q[t, d] * k[s, d] for d in range(head_size)) / math.sqrt(head_size)
                          for s in range(t + 1)]  # keys 0..t only: causal
                top = max(scores)
                weights = [math.exp(sc - top) for sc in scores]
                total = sum(weights)
                for d in range(head_size):
                    expected[b, t, h * head_size + d] = sum(w * v[s, d] for s, w in enumerate(weights)) / total
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)


@VALUE_SETTINGS
@given(seed=seeds, B=batches, T=st.integers(2, 5), n_head=st.integers(1, 3))
def test_attention_is_causal(seed, B, T, n_head):
    """Changing position t's q, k, v changes no output before t, and the
    gradient of earlier outputs reaches no later position."""
    rng = np.random.default_rng(seed)
    C = 2 * n_head
    qkv = rng.standard_normal((B, T, 3 * C))
    t = int(rng.integers(1, T))
    changed = qkv.copy()
    changed[:, t:] += rng.standard_normal((B, T - t, 3 * C))
    out, cache = attention.forward(qkv, n_head)
    out2, _ = attention.forward(changed, n_head)
    np.testing.assert_array_equal(out2[:, :t], out[:, :t])
    assert not np.allclose(out2[:, t:], out[:, t:])
    dout = np.zeros_like(out)
    dout[:, :t] = rng.standard_normal((B, t, C))
    dqkv = attention.backward(dout, cache)
    assert np.all(dqkv[:, t:] == 0.0)
    assert np.any(dqkv[:, :t] != 0.0)


@VALUE_SETTINGS
@given(seed=seeds, rows=st.integers(1, 4), C=st.integers(1, 9), with_bias=st.booleans())
def test_layernorm_forward_matches_formula(seed, rows, C, with_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, C)) * 3.0 + 1.0
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    eps = 1e-5
    out, _ = layernorm.forward(x, w, b if with_bias else None, eps=eps)
    for r in range(rows):
        mean = sum(x[r]) / C
        var = sum((xi - mean) ** 2 for xi in x[r]) / C  # biased variance, as GPT-2 and PyTorch
        for c in range(C):
            expected = (x[r, c] - mean) / math.sqrt(var + eps) * w[c] + (b[c] if with_bias else 0.0)
            assert out[r, c] == pytest.approx(expected, rel=1e-10, abs=1e-12)


@VALUE_SETTINGS
@given(seed=seeds, n=st.integers(1, 20))
def test_gelu_forward_matches_formula(seed, n):
    x = np.random.default_rng(seed).standard_normal(n) * 3.0
    out, _ = gelu.forward(x)
    for xi, oi in zip(x, out):
        u = math.sqrt(2.0 / math.pi) * (xi + 0.044715 * xi**3)
        assert oi == pytest.approx(0.5 * xi * (1.0 + math.tanh(u)), rel=1e-12, abs=1e-15)
    # and the tanh form stays close to the exact erf GELU (a sanity check on the constants)
    exact = np.array([0.5 * xi * (1.0 + math.erf(xi / math.sqrt(2.0))) for xi in x])
    np.testing.assert_allclose(out, exact, atol=1e-3)


@VALUE_SETTINGS
@given(seed=seeds, B=batches, T=times, c_in=sizes, c_out=sizes)
def test_linear_forward_matches_loops(seed, B, T, c_in, c_out):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((B, T, c_in)), rng.standard_normal((c_in, c_out)), rng.standard_normal(c_out)
    out, _ = linear.forward(x, w, b)
    out_nobias, _ = linear.forward(x, w, None)
    for bi in range(B):
        for t in range(T):
            for j in range(c_out):
                dot = sum(x[bi, t, i] * w[i, j] for i in range(c_in))  # weights stored (in, out)
                assert out_nobias[bi, t, j] == pytest.approx(dot, rel=1e-12, abs=1e-12)
                assert out[bi, t, j] == pytest.approx(dot + b[j], rel=1e-12, abs=1e-12)


def hand_cross_entropy(logits, targets, label_smoothing=0.0, ignore_index=-1):
    """Mean over counted positions of -sum_j q_j log p_j, with p = softmax(logits)
    by explicit exp/sum and q = (1 - eps) one_hot(target) + eps / V
    (PyTorch's definition of label smoothing)."""
    B, T, V = logits.shape
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T):
            if targets[b, t] == ignore_index:
                continue
            z = sum(math.exp(l) for l in logits[b, t])
            log_p = [math.log(math.exp(l) / z) for l in logits[b, t]]
            q = [label_smoothing / V + (1.0 - label_smoothing) * (j == targets[b, t]) for j in range(V)]
            total += -sum(qj * lp for qj, lp in zip(q, log_p))
            count += 1
    return total / count if count else 0.0


@VALUE_SETTINGS
@given(seed=seeds, B=batches, T=times, V=st.integers(2, 7), label_smoothing=st.sampled_from([0.0, 0.1, 0.5]))
def test_cross_entropy_forward_by_hand(seed, B, T, V, label_smoothing):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V)) * 2.0
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.25] = -1
    loss, _ = cross_entropy.forward(logits, targets, label_smoothing=label_smoothing)
    assert float(loss) == pytest.approx(hand_cross_entropy(logits, targets, label_smoothing), rel=1e-12, abs=1e-14)


def test_cross_entropy_plain_is_minus_log_softmax_of_target():
    logits = np.array([[[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]]])
    targets = np.array([[0, 1]])
    loss, _ = cross_entropy.forward(logits, targets)
    nll0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0) + math.exp(0.5)))
    nll1 = -math.log(1.0 / (1.0 + 1.0 + math.exp(3.0)))
    assert float(loss) == pytest.approx((nll0 + nll1) / 2, rel=1e-14)


def test_cross_entropy_ignored_positions_leave_the_mean():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 4, 5))
    targets = rng.integers(0, 5, (2, 4))
    ignored = targets.copy()
    ignored[0, 1] = ignored[1, 3] = -1
    loss, cache = cross_entropy.forward(logits, ignored)
    keep = ignored != -1
    per_position = [hand_cross_entropy(logits[b:b + 1, t:t + 1], targets[b:b + 1, t:t + 1])
                    for b in range(2) for t in range(4) if keep[b, t]]
    assert float(loss) == pytest.approx(sum(per_position) / 6, rel=1e-12)  # divided by 6, not 8
    dlogits = cross_entropy.backward(1.0, cache)
    assert np.all(dlogits[~keep] == 0.0)
    assert np.all(np.abs(dlogits[keep]).sum(axis=-1) > 0)
    # ignore_index is a parameter: -100 (PyTorch's default) works the same way
    loss100, _ = cross_entropy.forward(logits, np.where(keep, targets, -100), ignore_index=-100)
    assert float(loss100) == pytest.approx(float(loss), rel=1e-15)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_all_ignored_is_zero_not_nan(label_smoothing):
    logits = np.random.default_rng(0).standard_normal((2, 3, 4))
    loss, cache = cross_entropy.forward(logits, np.full((2, 3), -1), label_smoothing=label_smoothing)
    dlogits = cross_entropy.backward(1.0, cache)
    assert float(loss) == 0.0
    assert dlogits.shape == logits.shape and np.all(dlogits == 0.0)


# ------------------------------------------------------------------ embedding
def test_embedding_repeated_ids_accumulate():
    rng = np.random.default_rng(0)
    V, C, T = 5, 3, 6
    idx = np.array([[2, 2, 0, 2, 4, 0], [2, 1, 1, 2, 2, 2]])  # token 2 appears 7 times
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((T + 1, C))
    out, cache = embedding.forward(idx, wte, wpe)
    for b in range(2):
        for t in range(T):
            np.testing.assert_array_equal(out[b, t], wte[idx[b, t]] + wpe[t])
    dout = rng.standard_normal(out.shape)
    dwte, dwpe = embedding.backward(dout, cache)
    expected = np.zeros((V, C))
    for b in range(2):
        for t in range(T):
            expected[idx[b, t]] += dout[b, t]  # one row at a time: every repeat counts
    np.testing.assert_allclose(dwte, expected, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dwte[3], 0.0)  # token 3 never read
    np.testing.assert_allclose(dwpe[:T], dout.sum(axis=0), rtol=1e-14)
    np.testing.assert_array_equal(dwpe[T:], 0.0)  # positions beyond T never read


# -------------------------------------------------------------------- dropout
def test_dropout_p0_is_identity():
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    out, cache = dropout.forward(x, 0.0, rng)
    np.testing.assert_array_equal(out, x)
    dout = np.random.default_rng(2).standard_normal(x.shape)
    np.testing.assert_array_equal(dropout.backward(dout, cache), dout)
    assert rng.bit_generator.state == state  # draws nothing


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keep_fraction_and_expectation(p):
    n = 200_000
    x = np.full(n, 1.5)
    out, cache = dropout.forward(x, p, np.random.default_rng(7))
    kept = out != 0.0
    sigma = math.sqrt(p * (1 - p) / n)  # std of the kept fraction
    assert abs(kept.mean() - (1 - p)) < 5 * sigma
    np.testing.assert_allclose(out[kept], 1.5 / (1 - p), rtol=1e-14)  # inverted: survivors scaled up
    # expected value preserved: mean(out) ~ 1.5, within 5 standard errors
    assert abs(out.mean() - 1.5) < 5 * 1.5 / (1 - p) * sigma
    dout = np.random.default_rng(8).standard_normal(n)
    dx = dropout.backward(dout, cache)
    np.testing.assert_array_equal(dx == 0.0, ~kept)  # the same mask in backward
    np.testing.assert_allclose(dx[kept], dout[kept] / (1 - p), rtol=1e-14)


def test_dropout_same_seed_same_mask():
    x = np.random.default_rng(0).standard_normal((4, 50))
    a, _ = dropout.forward(x, 0.3, np.random.default_rng(42))
    b, _ = dropout.forward(x, 0.3, np.random.default_rng(42))
    c, _ = dropout.forward(x, 0.3, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a == 0, c == 0)


# --------------------------------------------------------------------- dtypes
def _float32_cases():
    """(name, forward thunk, backward) with every array input float32."""
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    B, T, C, V = 2, 3, 6, 5
    x = f32(B, T, C)
    targets = rng.integers(0, V, (B, T))
    targets[0, 0] = -1
    return [
        ("linear", lambda: linear.forward(x, f32(C, 4), f32(4)), linear.backward),
        ("linear_nobias", lambda: linear.forward(x, f32(C, 4), None), linear.backward),
        ("layernorm", lambda: layernorm.forward(x, f32(C), f32(C)), layernorm.backward),
        ("layernorm_nobias", lambda: layernorm.forward(x, f32(C), None), layernorm.backward),
        ("layernorm_np_eps", lambda: layernorm.forward(x, f32(C), f32(C), eps=np.float64(1e-5)), layernorm.backward),
        ("gelu", lambda: gelu.forward(x), gelu.backward),
        ("attention", lambda: attention.forward(f32(B, T, 3 * C), 2), attention.backward),
        ("cross_entropy", lambda: cross_entropy.forward(f32(B, T, V), targets), cross_entropy.backward),
        ("cross_entropy_smooth", lambda: cross_entropy.forward(f32(B, T, V), targets, label_smoothing=0.1),
         cross_entropy.backward),
        ("cross_entropy_np_smooth", lambda: cross_entropy.forward(f32(B, T, V), targets, np.float64(0.1)),
         cross_entropy.backward),
        ("dropout", lambda: dropout.forward(x, 0.25, np.random.default_rng(1)), dropout.backward),
        # a p that arrived as a NumPy scalar (GPTConfig accepts np.float64) must not promote either
        ("dropout_np_p", lambda: dropout.forward(x, np.float64(0.25), np.random.default_rng(1)), dropout.backward),
        ("dropout_p0", lambda: dropout.forward(x, 0.0, np.random.default_rng(1)), dropout.backward),
        ("embedding", lambda: embedding.forward(rng.integers(0, V, (B, T)), f32(V, C), f32(T, C)), embedding.backward),
    ]


@pytest.mark.parametrize("name, forward, backward", [pytest.param(*case, id=case[0]) for case in _float32_cases()])
def test_float32_in_float32_out(name, forward, backward):
    out, cache = forward()
    assert out.dtype == np.float32, f"{name} forward returned {out.dtype}"
    if np.ndim(out) == 0:
        dout = 1.0  # cross_entropy: a scalar upstream gradient
    else:
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    arrays = [g for g in grads if g is not None]
    assert arrays
    for g in arrays:
        assert g.dtype == np.float32, f"{name} backward returned {g.dtype}"
