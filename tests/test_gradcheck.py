"""npgpt.gradcheck itself: the numerical gradient is right, the relative error
behaves, and, most importantly, the checker fails on wrong backwards.

The deliberately broken backwards below are written here from the
derivations, each with a switch that removes one term.  With every switch
on, the same code must pass (the control); with one switch off, the same
checker must fail, by a wide margin.
"""
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt import GPT, GPTConfig, gradcheck, layers
from npgpt.layers import attention, embedding, gelu, layernorm, linear

TOL = gradcheck.DEFAULT_TOL
CLEARLY_WRONG = 1e-3  # a broken backward must miss by at least this much, not just graze TOL


def worst(report):
    return max(r.max_rel_error for r in report.results)


# ------------------------------------------------------- numerical_gradient
def test_numerical_gradient_of_elementwise_function_with_known_derivative():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))
    num = gradcheck.numerical_gradient(lambda x: np.sin(x) * x**2, x, dout)
    exact = dout * (np.cos(x) * x**2 + 2 * x * np.sin(x))
    np.testing.assert_allclose(num, exact, rtol=1e-9, atol=1e-11)
    assert num.dtype == np.float64 and num.shape == x.shape


def test_numerical_gradient_of_scalar_and_matrix_functions():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5)
    num = gradcheck.numerical_gradient(lambda x: np.sum(x**3) + np.exp(x[0]), x)  # default dout = 1
    exact = 3 * x**2
    exact[0] += np.exp(x[0])
    np.testing.assert_allclose(num, exact, rtol=1e-9)

    X, A = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    dout = rng.standard_normal((2, 4))
    num = gradcheck.numerical_gradient(lambda X: X @ A, X, dout)
    np.testing.assert_allclose(num, dout @ A.T, rtol=1e-9, atol=1e-12)  # d sum((XA) * dout) / dX


def test_numerical_gradient_indices_restores_x_and_needs_contiguous():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3))
    before = x.copy()
    num = gradcheck.numerical_gradient(lambda x: x**2, x, np.ones_like(x), indices=[1, 7])
    np.testing.assert_array_equal(x, before)  # perturbed in place, then restored bit for bit
    flat = num.reshape(-1)
    np.testing.assert_allclose(flat[[1, 7]], 2 * before.reshape(-1)[[1, 7]], rtol=1e-9)
    assert np.count_nonzero(np.delete(flat, [1, 7])) == 0  # the others stay 0
    with pytest.raises(ValueError, match="contiguous"):
        gradcheck.numerical_gradient(lambda x: x, np.ones((4, 4))[:, :2])  # reshape(-1) would copy


def test_numerical_gradient_is_fourth_order():
    """Five-point stencil: halving the step divides the truncation error by ~16 (2^4)."""
    x = np.array([0.3])
    exact = np.exp(0.3)
    errors = [abs(gradcheck.numerical_gradient(np.exp, x, eps=h)[0] - exact) for h in (0.2, 0.1)]
    assert 12 < errors[0] / errors[1] < 20


# ---------------------------------------------------------- relative_error
finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(a=st.lists(finite, min_size=1, max_size=6), data=st.data(), k=st.floats(1e-3, 1e3))
def test_relative_error_properties(a, data, k):
    a = np.array(a)
    n = np.array(data.draw(st.lists(finite, min_size=a.size, max_size=a.size)))
    e = gradcheck.relative_error(a, n)
    assert 0.0 <= e <= 1.0  # |a - n| <= |a| + |n|
    assert e == gradcheck.relative_error(n, a)  # symmetric
    assert gradcheck.relative_error(a, a) == 0.0
    if np.all(np.abs(a) + np.abs(n) > 1e-6):  # away from the tiny floor: scale-free
        assert gradcheck.relative_error(k * a, k * n) == pytest.approx(e, rel=1e-9, abs=1e-15)
    per_entry = [gradcheck.relative_error(a[i:i + 1], n[i:i + 1]) for i in range(a.size)]
    assert e == max(per_entry)  # the max over entries


def test_relative_error_values():
    assert gradcheck.relative_error(np.zeros(3), np.zeros(3)) == 0.0  # 0 vs 0 is exact, not NaN
    assert gradcheck.relative_error([1.0], [-1.0]) == 1.0  # opposite signs: the worst
    assert gradcheck.relative_error([2.0], [0.0]) == 1.0
    assert gradcheck.relative_error([1.0, 100.0], [1.0, 101.0]) == pytest.approx(1 / 201)
    assert gradcheck.relative_error(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError, match="shape"):
        gradcheck.relative_error(np.zeros(3), np.zeros(4))
    assert math.isnan(gradcheck.relative_error([np.nan], [1.0]))
    assert not gradcheck.CheckResult("x", "y", float("nan"), TOL).passed  # NaN fails


def test_compare_noise_floor():
    """Entries far below the largest gradient are judged against NOISE_FLOOR * largest:
    a 1e-13 discrepancy on a 1e-12 entry is noise; a large discrepancy is not."""
    big = np.array([1.0, -2.0, 3.0])
    tiny_a, tiny_n = np.array([1e-12]), np.array([2e-12])
    report = gradcheck.compare("layer", {"w": (big, big * (1 + 1e-9)), "b": (tiny_a, tiny_n)})
    assert report.passed, str(report)
    assert not gradcheck.compare("layer", {"w": (big, big), "b": (tiny_a, tiny_n)}, floor=0.0).passed
    assert not gradcheck.compare("layer", {"w": (big, big), "b": (np.array([1e-3]), np.array([-1e-3]))}).passed
    assert 0 < gradcheck.NOISE_FLOOR < 1e-3


# ------------------------------------------------ check_layer contract errors
def _linear_inputs(with_bias=True):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((2, 3, 4)), "w": rng.standard_normal((4, 5)),
            "b": rng.standard_normal(5) if with_bias else None}


def test_check_layer_passes_on_a_correct_layer_and_reports_every_input():
    report = gradcheck.check_layer(linear.forward, linear.backward, _linear_inputs(), name="linear")
    assert [(r.layer, r.input) for r in report.results] == [("linear", "x"), ("linear", "w"), ("linear", "b")]
    assert report.passed and worst(report) < TOL
    assert "linear" in str(report) and "pass" in str(report)
    # a list of inputs works too, and float32 inputs are checked in float64
    as_list = [v.astype(np.float32) for v in _linear_inputs().values()]
    assert gradcheck.check_layer(linear.forward, linear.backward, as_list).passed
    assert as_list[0].dtype == np.float32  # the caller's arrays are not converted in place


def test_check_layer_wrong_gradient_count():
    def backward_two(dout, cache):
        return linear.backward(dout, cache)[:2]

    with pytest.raises(ValueError, match="returned 2 gradients for 3 inputs"):
        gradcheck.check_layer(linear.forward, backward_two, _linear_inputs(), name="linear")


def test_check_layer_wrong_gradient_shape():
    def backward_transposed(dout, cache):
        dx, dw, db = linear.backward(dout, cache)
        return dx, dw.T, db

    with pytest.raises(ValueError, match=r"gradient for w has shape \(5, 4\), expected \(4, 5\)"):
        gradcheck.check_layer(linear.forward, backward_transposed, _linear_inputs(), name="linear")


def test_check_layer_gradient_for_none_and_missing_gradient():
    def backward_fake_bias(dout, cache):
        dx, dw, _ = linear.backward(dout, cache)
        return dx, dw, np.zeros(5)

    with pytest.raises(ValueError, match="got a gradient for b, which was None"):
        gradcheck.check_layer(linear.forward, backward_fake_bias, _linear_inputs(with_bias=False))

    def backward_no_dw(dout, cache):
        dx, _, db = linear.backward(dout, cache)
        return dx, None, db

    with pytest.raises(ValueError, match=r"backward returned None for w, expected a gradient of shape \(4, 5\)"):
        gradcheck.check_layer(linear.forward, backward_no_dw, _linear_inputs())


# ------------------------------------------------ wrong backwards are caught
def layernorm_backward_by_terms(dout, cache, mean_term=True, variance_term=True):
    """Layer norm backward from the derivation, each term removable."""
    x, w, eps = cache
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dout * w
    dx = g.copy()
    if mean_term:
        dx -= g.mean(axis=-1, keepdims=True)
    if variance_term:
        dx -= xhat * (g * xhat).mean(axis=-1, keepdims=True)
    C = x.shape[-1]
    return rstd * dx, (dout * xhat).reshape(-1, C).sum(0), dout.reshape(-1, C).sum(0)


def layernorm_with_own_cache(x, w, b):
    out, _ = layernorm.forward(x, w, b)
    return out, (x, w, 1e-5)


@pytest.mark.parametrize("dropped", [None, "mean_term", "variance_term"])
def test_layernorm_missing_term_is_caught(dropped):
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((2, 3, 6)) * 2 + 1, "w": rng.standard_normal(6), "b": rng.standard_normal(6)}
    kwargs = {dropped: False} if dropped else {}
    report = gradcheck.check_layer(layernorm_with_own_cache,
                                   lambda dout, cache: layernorm_backward_by_terms(dout, cache, **kwargs), inputs)
    x_error = report.results[0].max_rel_error
    if dropped is None:
        assert report.passed and worst(report) < TOL, str(report)  # the control
    else:
        assert not report.passed and x_error > CLEARLY_WRONG, str(report)
        assert report.results[1].passed and report.results[2].passed  # dw, db are still right


def attention_backward_by_terms(dout, cache, subtract=True, mask=True):
    """Causal attention backward, recomputed from qkv: the softmax's
    Jacobian-vector product without its subtraction, or probabilities
    without the causal mask, as switches."""
    qkv, n_head = cache
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = (a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
    if mask:
        scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    dy = dout.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
    dprobs = dy @ v.transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) if subtract else probs * dprobs
    dq = dscores @ k / math.sqrt(hs)
    dk = dscores.transpose(0, 1, 3, 2) @ q / math.sqrt(hs)
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)  # noqa: E731
    return np.concatenate([merge(dq), merge(dk), merge(dv)], axis=-1)


def attention_with_own_cache(qkv, n_head):
    out, _ = attention.forward(qkv, n_head)
    return out, (qkv, n_head)


@pytest.mark.parametrize("dropped", [None, "subtract", "mask"])
def test_attention_wrong_backward_is_caught(dropped):
    qkv = np.random.default_rng(1).standard_normal((2, 5, 3 * 6))
    kwargs = {dropped: False} if dropped else {}
    report = gradcheck.check_layer(attention_with_own_cache,
                                   lambda dout, cache: attention_backward_by_terms(dout, cache, **kwargs),
                                   {"qkv": qkv, "n_head": 2})
    if dropped is None:
        assert report.passed and worst(report) < TOL, str(report)
    else:
        assert not report.passed and worst(report) > CLEARLY_WRONG, str(report)


def test_embedding_backward_that_loses_repeats_is_caught():
    rng = np.random.default_rng(2)
    idx = np.array([[1, 3, 1, 0], [3, 3, 2, 1]])  # repeated ids
    inputs = {"idx": idx, "wte": rng.standard_normal((4, 3)), "wpe": rng.standard_normal((4, 3))}

    def fwd(idx, wte, wpe):
        out, _ = embedding.forward(idx, wte, wpe)
        return out, (idx, wte.shape, wpe.shape)

    def backward_fancy_index(dout, cache):
        idx, wte_shape, wpe_shape = cache
        dwte = np.zeros(wte_shape)
        dwte[idx] += dout  # buffered: each repeated row keeps only one of its contributions
        return dwte, dout.sum(axis=0)

    def backward_add_at(dout, cache):
        idx, wte_shape, wpe_shape = cache
        dwte = np.zeros(wte_shape)
        np.add.at(dwte, idx, dout)
        return dwte, dout.sum(axis=0)

    good = gradcheck.check_layer(fwd, backward_add_at, inputs)
    assert good.passed, str(good)
    bad = gradcheck.check_layer(fwd, backward_fancy_index, inputs)
    assert not bad.results[0].passed and bad.results[0].max_rel_error > CLEARLY_WRONG, str(bad)
    assert bad.results[1].passed  # wpe was right


def test_subtly_wrong_gelu_backward_is_caught():
    """The exact (erf) GELU's derivative differs from the tanh form's by
    at most ~1e-3 relative: still far outside the 1e-6 tolerance."""
    x = np.linspace(-3, 3, 13) + 0.05

    def erf_gelu_backward(dout, cache):
        x = cache
        cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return dout * (cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))

    assert gradcheck.check_layer(gelu.forward, gelu.backward, {"x": x}).passed
    report = gradcheck.check_layer(gelu.forward, erf_gelu_backward, {"x": x})
    assert not report.passed and worst(report) > 1e-5, str(report)


def tiny_model(seed=0, **overrides):
    config = dict(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8, dtype="float64", backend="numpy")
    config.update(overrides)
    model = GPT(GPTConfig(**config), seed=seed)
    # weights well away from GPT-2's 0.02 init, so that attention is not uniform
    # and no gradient sits at rounding-noise level
    model.flat_params += np.random.default_rng(seed + 100).normal(0.0, 0.3, model.flat_params.shape)
    return model


def test_model_without_tied_head_gradient_is_caught():
    """A model whose LM head forgets to add its share of wte's gradient:
    the head's linear backward (the one whose weight is wte) returns dw = 0."""
    model = tiny_model()
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))
    control = gradcheck.check_model(model, idx, targets, eps=5e-4)  # see MODEL_EPS in test_model.py
    assert control.passed, str(control)

    wte = model.params["wte.weight"]
    head_caches, dropped = set(), []

    def linear_forward(x, w, b=None):
        out, cache = layers.linear.forward(x, w, b)
        if np.shares_memory(w, wte):
            head_caches.add(id(cache))
        return out, cache

    def linear_backward(dout, cache):
        dx, dw, db = layers.linear.backward(dout, cache)
        if id(cache) in head_caches:
            dropped.append(True)
            dw = np.zeros_like(dw)
        return dx, dw, db

    broken_ops = {name: getattr(model.ops, name) for name in layers.__all__}
    broken_ops["linear"] = types.SimpleNamespace(forward=linear_forward, backward=linear_backward)
    model.ops = types.SimpleNamespace(**broken_ops)
    report = gradcheck.check_model(model, idx, targets, eps=5e-4)
    assert dropped, "the head's gradient was never dropped: did the model stop using ops.linear for the head?"
    failed = {r.input for r in report.results if not r.passed}
    assert failed == {"wte.weight"}, str(report)
    assert worst(report) > CLEARLY_WRONG


# ------------------------------------------- the checker cannot be fooled
def test_check_layer_refuses_a_vacuous_check():
    """No float entry to perturb would mean zero rows, and zero rows 'pass': refused instead."""
    identity = (lambda x: (x * 1.0, None), lambda dout, cache: dout)
    with pytest.raises(ValueError, match="nothing to check: no floating-point array.*x: int64 array"):
        gradcheck.check_layer(*identity, {"x": np.arange(6)})
    with pytest.raises(ValueError, match="nothing to check.*x: list"):
        gradcheck.check_layer(*identity, {"x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="every float input is empty"):
        gradcheck.check_layer(*identity, {"x": np.zeros((0, 3))})
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck.check_layer(*identity, {})


def test_check_layer_accepts_a_list_a_tuple_or_a_bare_array():
    inputs = _linear_inputs()
    as_list = gradcheck.check_layer(linear.forward, lambda d, c: list(linear.backward(d, c)), inputs)
    assert as_list.passed and len(as_list.results) == 3
    bare = gradcheck.check_layer(gelu.forward, gelu.backward, {"x": inputs["x"]})
    one_tuple = gradcheck.check_layer(gelu.forward, lambda d, c: (gelu.backward(d, c),), {"x": inputs["x"]})
    assert bare.passed and one_tuple.passed


def test_backward_gets_its_own_copy_of_dout_and_a_fresh_cache():
    """A correct backward that overwrites dout and its cache passes; the douts are two different arrays."""
    seen = []

    def backward(dout, cache):
        seen.append(dout.copy())
        dx = gelu.backward(dout, cache)
        dout[...] = np.nan  # scribble over dout ...
        cache[...] = np.nan  # ... and over the cached input (here: x itself)
        return dx

    x = np.random.default_rng(0).standard_normal((3, 4))
    report = gradcheck.check_layer(gelu.forward, backward, {"x": x})
    assert report.passed, str(report)
    assert len(seen) == 2 and not np.allclose(seen[0], seen[1])
    assert np.isfinite(x).all()  # the caller's input is untouched


def test_a_wrong_second_dout_fails_even_if_the_first_passes():
    calls = []

    def backward(dout, cache):
        calls.append(1)
        dx = gelu.backward(dout, cache)
        return dx if len(calls) == 1 else 2 * dx

    report = gradcheck.check_layer(gelu.forward, backward, {"x": np.linspace(-2, 2, 12)})
    assert not report.passed and report.results[0].dout == 2 and report.results[0].ratio == pytest.approx(2.0)


def test_the_worst_entry_is_named_in_the_inputs_shape():
    """One wrong entry: the row names its index (also when entries are sampled), both values and the ratio."""
    def backward(dout, cache):
        dx = gelu.backward(dout, cache)
        dx[1, 2, 3] *= 3.0
        return dx

    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    for max_entries in (None, 23):
        r = gradcheck.check_layer(gelu.forward, backward, {"x": x}, max_entries=max_entries).results[0]
        assert not r.passed
        assert r.index == (1, 2, 3) and r.where() == "x[1, 2, 3]"
        assert r.ratio == pytest.approx(3.0) and r.analytic == pytest.approx(3 * r.numerical)
        assert r.factor is None  # only one entry is off: no common factor
        assert "worst entry x[1, 2, 3]" in str(gradcheck.GradcheckReport([r]))


def test_check_result_ratio_and_hints():
    row = gradcheck.CheckResult("l", "w", 1.0, TOL, (0,), 0.0, 2.0)
    assert row.ratio == 0.0 and "analytic gradient is 0" in row.hint()
    assert math.isinf(gradcheck.CheckResult("l", "w", 1.0, TOL, (0,), 2.0, 0.0).ratio)
    assert gradcheck.CheckResult("l", "w", 1.0, TOL).ratio is None  # no entries
    assert gradcheck.CheckResult("l", "w", 1e-9, TOL, (0,), 1.0, 1.0, 1.0).hint() == ""  # passing rows get none
    report = gradcheck.compare("l", {"w": (np.array([[2.0, 4.0], [6.0, 8.0]]), np.array([[1.0, 2.0], [3.0, 4.0]]))})
    r = report.results[0]
    assert r.factor == pytest.approx(2.0) and r.index == (0, 0) and "same factor 2" in str(report)


def test_a_forward_that_does_not_return_out_and_cache_is_named():
    with pytest.raises(ValueError, match=r"forward must return a pair \(out, cache\), got ndarray"):
        gradcheck.check_layer(np.tanh, lambda dout, cache: dout, {"x": np.ones(3)})


def test_a_forward_that_changes_its_input_is_refused():
    def forward(x):
        x *= 2.0  # in place: every finite difference would start from a different x
        return x, None

    with pytest.raises(ValueError, match="forward changed its input x in place"):
        gradcheck.check_layer(forward, lambda dout, cache: 2.0 * dout, {"x": np.ones(3)})
