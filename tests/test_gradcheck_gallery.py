"""A gallery of wrong backwards, each of which npgpt.gradcheck must catch, and
of correct but unusual ones, each of which it must pass.

"A checker that can pass a wrong backward is the worst bug this project can
have."  The old checker drew dout from default_rng(seed), the stream callers
draw their inputs from, so dout *was* the first input, and a backward that
used x where dout belongs passed at 1e-13.  It also handed backward its own
dout (a correct backward that updates dout in place failed) and counted a
returned list as one gradient.

Every entry runs twice:
  * through check_layer, on inputs a learner would write (default_rng(0));
  * through the CLI suite's own inputs (gradcheck_cli.layer_cases), for the
    NumPy reference layers and the Numba kernels alike.
A wrong entry must fail on exactly the inputs it breaks, by a wide margin
(> CLEARLY_WRONG), naming the worst entry; a constant-factor bug must show
that factor as the ratio.  A correct entry must pass below the tolerance.
"""
import math

import numpy as np
import pytest

from npgpt import cli, gradcheck, gradcheck_cli, kernels, layers
from npgpt.layers import attention, cross_entropy, embedding, gelu, layernorm, linear

TOL = gradcheck.DEFAULT_TOL
CLEARLY_WRONG = 1e-3


# --------------------------------------------------------------- the verdict
def assert_caught(report, wrong_inputs, factor=None):
    """Exactly wrong_inputs fail, clearly; each failing row names its worst entry."""
    failed = {r.input for r in report.results if not r.passed}
    assert failed == set(wrong_inputs), str(report)
    for r in report.failures:
        assert r.max_rel_error > CLEARLY_WRONG, str(report)
        assert isinstance(r.index, tuple) and r.analytic is not None and r.numerical is not None, str(report)
        assert r.dout in (1, 2)
        assert f"worst entry {r.where()}" in str(report)
        if factor is not None:  # "sum instead of mean": the ratio says by how much
            assert r.ratio == pytest.approx(factor, rel=1e-6), str(report)
            assert r.factor == pytest.approx(factor, rel=1e-6), str(report)
            expected_hint = "wrong sign" if factor == -1.0 else f"same factor {r.factor:.6g}"
            assert expected_hint in str(report)


def assert_passes(report, n_rows):
    assert len(report.results) == n_rows, str(report)
    assert report.passed and max(r.max_rel_error for r in report.results) < TOL, str(report)


# ----------------------------------------------------- wrong backwards, by hand
def tanh_forward(x):
    out = np.tanh(x)
    return out, (x, out)


def tanh_backward(dout, cache):
    x, out = cache
    return dout * (1 - out**2)


def tanh_backward_x_for_dout(dout, cache):
    """The issue's example: x where dout belongs."""
    x, out = cache
    return x * (1 - out**2)


def layernorm_backward_without(term):
    """The reference layer norm backward (layers/layernorm.py's cache) with one of dx's terms left out."""
    def backward(dout, cache):
        xhat, rstd, w, has_bias = cache
        g = dout * w
        dx = g.copy()
        if term != "mean":
            dx -= g.mean(axis=-1, keepdims=True)
        if term != "variance":
            dx -= xhat * (g * xhat).mean(axis=-1, keepdims=True)
        C = w.shape[0]
        return rstd * dx, (dout * xhat).reshape(-1, C).sum(0), dout.reshape(-1, C).sum(0) if has_bias else None
    return backward


def linear_backward_transposed_dw(dout, cache):
    """dw as dout^T x: (Cout, Cin), the transpose of the right answer."""
    x, w, has_bias = cache
    dx, _, db = linear.backward(dout, cache)
    return dx, dout.reshape(-1, w.shape[1]).T @ x.reshape(-1, w.shape[0]), db


def attention_backward_without_mask(dout, cache):
    """The future's entries get dP instead of 0: the mask dropped from the backward."""
    q, k, v, probs, scale = cache
    B, nh, T, hs = q.shape
    dy = dout.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    dprobs = dy @ v.transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    dscores = np.where(future, dprobs, dscores)
    dq, dk = (dscores @ k) * scale, (dscores.transpose(0, 1, 3, 2) @ q) * scale
    return np.concatenate([attention.merge_heads(d) for d in (dq, dk, dv)], axis=-1)


def cross_entropy_backward_sum_not_mean(dloss, cache):
    """The loss is a mean over the counted positions, the gradient a sum."""
    n_valid = cache[3]
    return cross_entropy.backward(dloss, cache) * n_valid


def cross_entropy_backward_ignores_dloss(dloss, cache):
    return cross_entropy.backward(1.0, cache)


def embedding_backward_losing_repeats(dout, cache):
    idx, wte_shape, wpe_shape = cache
    dwte = np.zeros(wte_shape)
    dwte[idx] += dout  # buffered: a repeated id keeps only one of its rows
    dwpe = np.zeros(wpe_shape)
    dwpe[:idx.shape[1]] = dout.sum(axis=0)
    return dwte, dwpe


def gelu_backward_erf(dout, x):
    """The exact (erf) GELU's derivative for the tanh GELU: off by at most ~1e-3."""
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return dout * (cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


# ------------------------------------------------- correct but unusual backwards
def gelu_backward_in_place(dout, x):
    """Correct, and multiplies dout in place instead of allocating."""
    dout *= gelu.backward(np.ones_like(dout), x)
    return dout


def linear_backward_as_list(dout, cache):
    return list(linear.backward(dout, cache))


# ---------------------------------------------------------- gallery, by hand
def learner_inputs():
    """What a learner writes: every input from default_rng(0), the stream the old dout came from."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6))
    return rng, x


def _tanh():
    return tanh_forward, {"x": np.random.default_rng(0).standard_normal((4, 3))}


def _layernorm():
    rng, x = learner_inputs()
    return layernorm.forward, {"x": x, "w": rng.standard_normal(6), "b": rng.standard_normal(6)}


def _linear_square():
    rng, x = learner_inputs()
    return linear.forward, {"x": x, "w": rng.standard_normal((6, 6)), "b": rng.standard_normal(6)}


def _attention():
    rng = np.random.default_rng(0)
    return attention.forward, {"qkv": rng.standard_normal((2, 5, 18)), "n_head": 2}


def _cross_entropy():
    rng = np.random.default_rng(0)
    targets = np.array([[1, 4, 0], [-1, 2, 2]])  # five counted positions, one ignored
    return cross_entropy.forward, {"logits": rng.standard_normal((2, 3, 5)), "targets": targets}


def _embedding():
    rng = np.random.default_rng(0)
    idx = np.array([[1, 3, 1, 0], [3, 3, 2, 1]])  # repeated ids
    return embedding.forward, {"idx": idx, "wte": rng.standard_normal((4, 3)), "wpe": rng.standard_normal((6, 3))}


def _gelu():
    rng, x = learner_inputs()
    return gelu.forward, {"x": 2 * x}


# name: (setup, backward, inputs that must fail (empty: a correct backward), expected factor)
BY_HAND = {
    "tanh, x where dout belongs": (_tanh, tanh_backward_x_for_dout, {"x"}, None),
    "layernorm without the mean term": (_layernorm, layernorm_backward_without("mean"), {"x"}, None),
    "layernorm without the variance term": (_layernorm, layernorm_backward_without("variance"), {"x"}, None),
    "linear, transposed dw (square w)": (_linear_square, linear_backward_transposed_dw, {"w"}, None),
    "linear, dw off by 2": (_linear_square, lambda d, c: (lambda dx, dw, db: (dx, 2 * dw, db))(*linear.backward(d, c)),
                            {"w"}, 2.0),
    "attention without the mask": (_attention, attention_backward_without_mask, {"qkv"}, None),
    "cross_entropy, sum instead of mean": (_cross_entropy, cross_entropy_backward_sum_not_mean, {"logits"}, 5.0),
    "cross_entropy, ignores dloss": (_cross_entropy, cross_entropy_backward_ignores_dloss, {"logits"}, None),
    "embedding loses repeated ids": (_embedding, embedding_backward_losing_repeats, {"wte"}, None),
    "gelu, erf derivative": (_gelu, gelu_backward_erf, {"x"}, None),
    "gelu, sign flipped": (_gelu, lambda d, x: -gelu.backward(d, x), {"x"}, -1.0),
    # correct ones
    "tanh": (_tanh, tanh_backward, set(), None),
    "gelu, updates dout in place": (_gelu, gelu_backward_in_place, set(), None),
    "linear, returns a list": (_linear_square, linear_backward_as_list, set(), None),
    "layernorm": (_layernorm, layernorm.backward, set(), None),
    "attention": (_attention, attention.backward, set(), None),
    "cross_entropy": (_cross_entropy, cross_entropy.backward, set(), None),
    "embedding": (_embedding, embedding.backward, set(), None),
}


@pytest.mark.parametrize("entry", list(BY_HAND))
def test_gallery_by_hand(entry):
    setup, backward, wrong_inputs, factor = BY_HAND[entry]
    forward, inputs = setup()
    before = {k: np.copy(v) for k, v in inputs.items()}
    report = gradcheck.check_layer(forward, backward, inputs, name=entry)
    if wrong_inputs:
        assert_caught(report, wrong_inputs, factor)
    else:
        assert_passes(report, sum(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in inputs.values()))
    for k, v in inputs.items():  # the caller's inputs are untouched
        np.testing.assert_array_equal(v, before[k])


def test_the_old_dout_stream_is_not_the_inputs_stream():
    """The tanh example's x is default_rng(0)'s first draw; neither dout may equal it, or a multiple of it."""
    x = np.random.default_rng(0).standard_normal((4, 3))
    douts = gradcheck.upstream_gradients(x.shape, [x], seed=0)
    assert len(douts) == 2 and not np.allclose(douts[0], douts[1])
    for dout in douts:
        for other in (x, douts[0] if dout is douts[1] else douts[1]):
            corr = np.corrcoef(dout.reshape(-1), other.reshape(-1))[0, 1]
            assert abs(corr) <= gradcheck.MAX_CORRELATION


def test_a_dout_that_resembles_an_input_is_redrawn():
    """Whatever stream the caller used, an input equal to (a multiple of) the first draw is avoided."""
    first = np.random.default_rng([0, gradcheck.DOUT_STREAM]).standard_normal((5, 6))
    for input_ in (first, -3.0 * first, first + 1.0):
        douts = gradcheck.upstream_gradients(first.shape, [input_], seed=0)
        assert not any(np.allclose(d, first) for d in douts)
        assert all(abs(np.corrcoef(d.reshape(-1), input_.reshape(-1))[0, 1]) <= 0.5 for d in douts)
    scalar = gradcheck.upstream_gradients((), [], seed=0)
    assert all(abs(d) >= 0.3 for d in scalar)  # a loss's dout is kept away from 0


# ------------------------------------------- gallery, on the CLI suite's inputs
def scaled(grads, factor):
    grads = grads if isinstance(grads, tuple) else (grads,)
    out = tuple(None if g is None else factor * g for g in grads)
    return out if len(out) > 1 else out[0]


def x_where_dout_belongs(bwd, inputs):
    """backward(x, cache): the bug the old checker passed on every row whose output has x's shape."""
    x = inputs["x"]
    return lambda dout, cache: bwd(np.array(x, dtype=np.float64), cache)


def mutates_dout(bwd, inputs):
    """Correct, then scribbles over its dout (a backward may use dout as scratch space)."""
    def backward(dout, cache):
        grads = bwd(dout, cache)
        grads = tuple(None if g is None else np.array(g) for g in (grads if isinstance(grads, tuple) else (grads,)))
        if np.ndim(dout):
            dout[...] = 1e3
        return grads if len(grads) > 1 else grads[0]
    return backward


FLOAT_INPUTS = {"embedding": {"wte", "wpe"}, "linear": {"x", "w", "b"}, "layernorm": {"x", "w", "b"},
                "gelu": {"x"}, "attention": {"qkv"}, "cross_entropy": {"logits"}, "dropout": {"x"}}
N_VALID = gradcheck_cli.B * gradcheck_cli.T - 1  # the suite ignores one target

# (name, layer, make_backward(bwd, inputs), inputs that must fail, factor); generic over both backends
GENERIC = [
    ("x where dout belongs", "layernorm", x_where_dout_belongs, {"x", "w", "b"}, None),
    ("x where dout belongs", "gelu", x_where_dout_belongs, {"x"}, None),
    ("x where dout belongs", "dropout", x_where_dout_belongs, {"x"}, None),
    ("factor 2", "linear", lambda bwd, _: lambda d, c: scaled(bwd(d, c), 2.0), {"x", "w", "b"}, 2.0),
    ("factor 1/2", "attention", lambda bwd, _: lambda d, c: scaled(bwd(d, c), 0.5), {"qkv"}, 0.5),
    ("sum instead of mean", "cross_entropy", lambda bwd, _: lambda d, c: scaled(bwd(d, c), N_VALID), {"logits"},
     float(N_VALID)),
    ("sign flipped", "embedding", lambda bwd, _: lambda d, c: scaled(bwd(d, c), -1.0), {"wte", "wpe"}, -1.0),
    ("dropout without 1/(1-p)", "dropout", lambda bwd, _: lambda d, c: scaled(bwd(d, c), 0.75), {"x"}, 0.75),
    ("ignores dloss", "cross_entropy", lambda bwd, _: lambda d, c: bwd(1.0, c), {"logits"}, None),
    ("mutates dout (correct)", "layernorm", mutates_dout, set(), None),
    ("mutates dout (correct)", "gelu", mutates_dout, set(), None),
    ("mutates dout (correct)", "linear", mutates_dout, set(), None),
    ("mutates dout (correct)", "attention", mutates_dout, set(), None),
    ("returns a list (correct)", "linear", lambda bwd, _: lambda d, c: list(bwd(d, c)), set(), None),
] + [("as written (correct)", name, lambda bwd, _: bwd, set(), None) for name in FLOAT_INPUTS]


def suite_case(ops, layer, seed=0):
    cases = {name: (fwd, bwd, inputs) for name, fwd, bwd, inputs in gradcheck_cli.layer_cases(ops, np.random.default_rng(seed))}
    return cases[layer]


@pytest.mark.parametrize("ops", [layers, kernels], ids=["numpy", "numba"])
@pytest.mark.parametrize("name, layer, make, wrong_inputs, factor", GENERIC,
                         ids=[f"{layer}: {name}" for name, layer, *_ in GENERIC])
def test_gallery_on_the_cli_suite_inputs(ops, name, layer, make, wrong_inputs, factor):
    fwd, bwd, inputs = suite_case(ops, layer)
    report = gradcheck.check_layer(fwd, make(bwd, inputs), inputs, name=layer)
    if wrong_inputs:
        assert_caught(report, wrong_inputs, factor)
    else:
        assert_passes(report, len(FLOAT_INPUTS[layer]))


# (name, layer, wrong backward for the reference layers' cache, inputs that must fail)
REFERENCE_ONLY = [
    ("without the mean term", "layernorm", layernorm_backward_without("mean"), {"x"}),
    ("without the variance term", "layernorm", layernorm_backward_without("variance"), {"x"}),
    ("without the mask", "attention", attention_backward_without_mask, {"qkv"}),
    ("loses repeated ids", "embedding", embedding_backward_losing_repeats, {"wte"}),
    ("erf derivative", "gelu", gelu_backward_erf, {"x"}),
]


@pytest.mark.parametrize("name, layer, backward, wrong_inputs", REFERENCE_ONLY,
                         ids=[f"{layer}: {name}" for name, layer, *_ in REFERENCE_ONLY])
def test_gallery_reference_on_the_cli_suite_inputs(name, layer, backward, wrong_inputs):
    fwd, _, inputs = suite_case(layers, layer)
    assert_caught(gradcheck.check_layer(fwd, backward, inputs, name=layer), wrong_inputs)


def test_a_transposed_weight_gradient_on_the_cli_suite_inputs_is_refused():
    """The suite's w is (C, 2C), so a transposed dw has the wrong shape: refused, naming w."""
    fwd, _, inputs = suite_case(layers, "linear")
    with pytest.raises(ValueError, match=r"gradient for w has shape \(24, 12\), expected \(12, 24\)"):
        gradcheck.check_layer(fwd, linear_backward_transposed_dw, inputs, name="linear")


def test_cross_entropy_in_place_kernel_passes():
    """kernels.cross_entropy.backward_in_place writes dlogits over the cached logits (the
    checker's own copy of the input): it is correct and must pass."""
    fwd, _, inputs = suite_case(kernels, "cross_entropy")
    assert_passes(gradcheck.check_layer(fwd, kernels.cross_entropy.backward_in_place, inputs), 1)


def test_run_suite_names_the_broken_layer_and_its_worst_entry(monkeypatch, capsys):
    """Through `npgpt gradcheck` itself: sum instead of mean in cross-entropy shows ratio 9."""
    real = layers.cross_entropy.backward
    monkeypatch.setattr(layers.cross_entropy, "backward", lambda d, c: real(d, c) * N_VALID)
    status = cli.main(["gradcheck", "--backend", "numpy", "cross_entropy", "gelu"])
    out = capsys.readouterr().out
    assert status == 1
    assert "cross_entropy  logits" in out and f"ratio {N_VALID:.3f}" in out, out
    assert f"same factor {N_VALID}" in out
    assert "2 checks, 1 FAILED" in out and "Failing rows" not in out  # a short table is not repeated
