"""The GPT model on the reference (numpy) backend: whole-model gradients
against finite differences, parameters, init, tied head, logits, validation.

Every model here says backend="numpy" explicitly: the default backend is
the Numba kernels, which have their own tests.
"""
import math

import numpy as np
import pytest

from npgpt import GPT, GPTConfig, gradcheck

TOL = 1e-6
# Finite-difference step for the whole model.  With weights at std 0.3 a few
# entries (1 in ~10^4) have enough curvature that the default h = 1e-3 leaves
# a truncation error of ~2e-6 (it falls as h^4: 2.5e-9 at h = 1e-4), while
# h = 1e-4 lets rounding noise reach ~1e-6 on small entries.  h = 5e-4 keeps
# both below 2e-7 over every entry of every case below, for six seeds.
MODEL_EPS = 5e-4


def tiny_config(**overrides):
    config = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, dtype="float64", backend="numpy")
    config.update(overrides)
    return GPTConfig(**config)


def tiny_model(seed=0, **overrides):
    """A float64 model with weights drawn at std 0.3 on top of GPT-2's init,
    so that attention is far from uniform and no gradient is at noise level."""
    model = GPT(tiny_config(**overrides), seed=seed)
    model.flat_params += np.random.default_rng(seed + 100).normal(0.0, 0.3, model.flat_params.shape)
    return model


def batch(model, B=2, T=5, seed=1, ignore=True):
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size
    idx, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    if ignore:
        targets[1, 0] = -1
    return idx, targets


# ----------------------------------------------------- whole-model gradients
MODEL_CASES = {
    # name: (config overrides, dropout seed or None, forward kwargs)
    "plain": ({}, None, {}),
    "dropout_on": ({"dropout": 0.2}, 5, {}),
    "dropout_configured_but_eval": ({"dropout": 0.2}, None, {}),
    "label_smoothing": ({}, None, {"label_smoothing": 0.1}),
    "no_bias_dropout_smoothing": ({"bias": False, "dropout": 0.1, "n_layer": 1, "n_head": 1}, 7,
                                  {"label_smoothing": 0.2}),
    "three_heads_odd_sizes_T1": ({"n_head": 3, "n_embd": 9, "vocab_size": 5, "n_layer": 1}, None, {}),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_gradients_match_finite_differences(case):
    overrides, dropout_seed, kwargs = MODEL_CASES[case]
    model = tiny_model(**overrides)
    T = 1 if case.endswith("T1") else 5
    idx, targets = batch(model, T=T, ignore=T > 1)
    report = gradcheck.check_model(model, idx, targets, eps=MODEL_EPS, max_entries=8, dropout_seed=dropout_seed,
                                   **kwargs)
    assert [r.input for r in report.results] == list(model.params), "every parameter tensor is checked"
    worst = max(r.max_rel_error for r in report.results)
    assert report.passed and worst < TOL, f"{case}: max relative error {worst:.2e}\n{report}"


def test_dropout_changes_the_training_loss_and_replays_with_the_same_seed():
    """So that the dropout_on gradient check above really ran with a mask."""
    model = tiny_model(dropout=0.2)
    idx, targets = batch(model)
    eval_loss, _ = model.forward(idx, targets)
    a, _ = model.forward(idx, targets, rng=np.random.default_rng(5))
    b, _ = model.forward(idx, targets, rng=np.random.default_rng(5))
    c, _ = model.forward(idx, targets, rng=np.random.default_rng(6))
    assert a == b and a != eval_loss and a != c
    # dropout = 0: a generator changes nothing
    plain = tiny_model()
    assert plain.forward(idx, targets, rng=np.random.default_rng(5))[0] == plain.forward(idx, targets)[0]


def test_grads_have_the_params_keys_shapes_and_dtype():
    for bias in (True, False):
        model = tiny_model(bias=bias)
        idx, targets = batch(model)
        grads = model.backward(model.forward(idx, targets)[1])
        assert list(grads) == list(model.params)
        assert any(k.endswith(".bias") for k in grads) == bias
        for name, p in model.params.items():
            assert grads[name].shape == p.shape and grads[name].dtype == p.dtype, name
            assert np.all(np.isfinite(grads[name])), name


def test_backward_into_a_given_flat_buffer():
    model = tiny_model()
    idx, targets = batch(model)
    out = np.full(model.num_params, np.nan)
    grads = model.backward(model.forward(idx, targets)[1], out=out)
    fresh = model.backward(model.forward(idx, targets)[1])
    for name in model.params:
        assert np.shares_memory(grads[name], out)
        np.testing.assert_array_equal(grads[name], fresh[name])
    assert np.all(np.isfinite(out))  # every entry written, none left over


# ------------------------------------------------------------- parameters
def test_parameter_names_are_gpt2s():
    model = GPT(tiny_config(n_layer=2), seed=0)
    per_block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
    expected |= {f"h.{i}.{n}" for i in range(2) for n in per_block}
    assert set(model.params) == expected
    C, V = 8, 7
    assert model.params["wte.weight"].shape == (V, C)
    assert model.params["wpe.weight"].shape == (6, C)
    assert model.params["h.1.attn.c_attn.weight"].shape == (C, 3 * C)  # stored (in, out)
    assert model.params["h.1.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert model.params["h.1.mlp.c_proj.weight"].shape == (4 * C, C)
    no_bias = GPT(tiny_config(bias=False), seed=0)
    assert set(no_bias.params) == {k for k in expected if not k.endswith(".bias")}


def test_params_are_views_into_flat_params():
    model = GPT(tiny_config(), seed=0)
    assert model.num_params == model.flat_params.size == sum(p.size for p in model.params.values())
    for name, p in model.params.items():
        assert np.shares_memory(p, model.flat_params), name
    model.flat_params[:] = np.arange(model.num_params)
    every_entry = np.sort(np.concatenate([p.ravel() for p in model.params.values()]))
    np.testing.assert_array_equal(every_entry, np.arange(model.num_params))  # a tiling: no overlap, no gap
    model.params["h.0.ln_1.weight"][...] = -1.0  # writes through to the flat buffer
    assert np.count_nonzero(model.flat_params == -1.0) == model.params["h.0.ln_1.weight"].size


def test_gpt2_init_statistics():
    n_layer = 3
    model = GPT(GPTConfig(vocab_size=200, block_size=128, n_layer=n_layer, n_head=4, n_embd=64, backend="numpy"),
                seed=0)
    P = model.params
    residual_std = 0.02 / math.sqrt(2 * n_layer)

    def pooled(suffix):
        return np.concatenate([P[k].ravel() for k in P if k.endswith(suffix)]).astype(np.float64)

    groups = {  # name: (entries, expected std)
        "wte": (P["wte.weight"].ravel(), 0.02),
        "wpe": (P["wpe.weight"].ravel(), 0.02),
        "c_attn": (pooled("attn.c_attn.weight"), 0.02),
        "c_fc": (pooled("mlp.c_fc.weight"), 0.02),
        "attn.c_proj": (pooled("attn.c_proj.weight"), residual_std),
        "mlp.c_proj": (pooled("mlp.c_proj.weight"), residual_std),
    }
    for name, (w, std) in groups.items():
        n = w.size
        assert abs(w.std() / std - 1) < 4 / math.sqrt(2 * n), (name, w.std(), std)  # 4 standard errors
        assert abs(w.mean()) < 4 * std / math.sqrt(n), (name, w.mean())
    for name, p in P.items():
        if name.endswith(".bias"):
            assert np.all(p == 0.0), name
        elif p.ndim == 1:  # layer norm gains
            assert np.all(p == 1.0), name
    # a seed makes a model; another seed, another model
    np.testing.assert_array_equal(GPT(model.config, seed=0).flat_params, model.flat_params)
    assert not np.array_equal(GPT(model.config, seed=1).flat_params, model.flat_params)


# ------------------------------------------------------ tied head and logits
def test_lm_head_is_tied_to_wte():
    model = tiny_model()
    idx = np.array([[0, 1, 2, 1, 0]])  # tokens 3..6 are never looked up
    before = model.logits(idx)
    model.params["wte.weight"][5] += 0.5  # only the head reads row 5
    after = model.logits(idx)
    assert np.all(np.abs(after[..., 5] - before[..., 5]) > 0)
    np.testing.assert_allclose(np.delete(after, 5, axis=-1), np.delete(before, 5, axis=-1), rtol=1e-13, atol=1e-15)
    model.params["wte.weight"][1] += 0.5  # a looked-up row: the embedding changes, so every logit moves
    moved = model.logits(idx)
    assert np.all(moved[0, 1] != after[0, 1])


def log_softmax_by_hand(logits):
    out = np.empty_like(logits)
    for pos in np.ndindex(logits.shape[:-1]):
        row = logits[pos]
        log_z = math.log(sum(math.exp(v) for v in row))
        out[pos] = row - log_z
    return out


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_logits_are_consistent_with_the_loss(label_smoothing):
    model = tiny_model(dropout=0.3)  # inference and eval-mode forward both skip dropout
    idx, targets = batch(model, B=3, T=6)
    logits = model.logits(idx)
    assert logits.shape == (3, 6, model.config.vocab_size) and logits.dtype == np.float64
    logp = log_softmax_by_hand(logits)
    V = logits.shape[-1]
    counted = [(b, t) for b in range(3) for t in range(6) if targets[b, t] != -1]
    expected = sum(-(1 - label_smoothing) * logp[b, t, targets[b, t]] - label_smoothing * logp[b, t].sum() / V
                   for b, t in counted) / len(counted)
    loss, _ = model.forward(idx, targets, label_smoothing=label_smoothing)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected, rel=1e-12)
    # logits for a prefix are the prefix of the logits: causal
    np.testing.assert_allclose(model.logits(idx[:, :3]), logits[:, :3], rtol=1e-12, atol=1e-14)


def test_all_targets_ignored_gives_zero_loss_and_zero_grads():
    model = tiny_model()
    idx, _ = batch(model)
    loss, cache = model.forward(idx, np.full(idx.shape, -1))
    grads = model.backward(cache)
    assert loss == 0.0
    assert all(np.all(g == 0.0) for g in grads.values())


# ----------------------------------------------------------------- dtypes
def test_float32_model_keeps_float32():
    config = tiny_config(dtype="float32")
    model = GPT(config, seed=0)
    idx, targets = batch(model)
    assert model.flat_params.dtype == np.float32
    logits = model.logits(idx)
    assert logits.dtype == np.float32
    loss, cache = model.forward(idx, targets, rng=None, label_smoothing=0.1)
    assert float(np.float32(loss)) == loss  # computed in float32: exactly a float32 value
    grads = model.backward(cache)
    assert all(g.dtype == np.float32 for g in grads.values())
    # the same weights in float64 give nearly, not exactly, the same loss
    model64 = GPT(tiny_config(dtype="float64"), seed=0)
    model64.flat_params[:] = model.flat_params
    loss64, _ = model64.forward(idx, targets, label_smoothing=0.1)
    assert loss64 == pytest.approx(loss, rel=1e-5)


def test_float32_model_with_numpy_scalar_dropout_stays_float32():
    """GPTConfig accepts dropout=np.float64(...); under NumPy 2 that scalar
    used to promote the residual stream to float64."""
    model = GPT(tiny_config(dtype="float32", dropout=np.float64(0.2)), seed=0)
    idx, targets = batch(model)
    loss, _ = model.forward(idx, targets, rng=np.random.default_rng(0))
    assert float(np.float32(loss)) == loss


# ------------------------------------------------------------- validation
@pytest.mark.parametrize("overrides, match", [
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ({"vocab_size": -3}, "vocab_size must be a positive integer"),
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"n_head": -1}, "n_head must be a positive integer"),
    ({"n_embd": 0}, "n_embd must be a positive integer"),
    ({"n_embd": 8.0}, "n_embd must be a positive integer"),
    ({"n_layer": "2"}, "n_layer must be a positive integer"),
    ({"n_layer": True}, "n_layer must be a positive integer"),
    ({"n_embd": 10, "n_head": 4}, r"n_embd \(10\) must be divisible by n_head \(4\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": float("nan")}, r"dropout must be in \[0, 1\)"),
    ({"dropout": "0.1"}, r"dropout must be in \[0, 1\)"),
    ({"dtype": "float16"}, "dtype must be 'float32' or 'float64'"),
    ({"dtype": "int32"}, "dtype must be 'float32' or 'float64'"),
    ({"backend": "torch"}, "backend must be one of"),
    ({"backend": ""}, "backend must be one of"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_valid_configs_construct():
    for overrides in ({}, {"dropout": 0.0}, {"dropout": 0.99}, {"dtype": "float32"}, {"n_head": 1, "n_embd": 1},
                      {"bias": False}, {"backend": "numpy"}):
        assert isinstance(tiny_config(**overrides), GPTConfig)


@pytest.mark.parametrize("idx, targets, match", [
    (np.zeros((1, 7), int), np.zeros((1, 7), int), "sequence length 7 exceeds block_size 6"),
    (np.array([[0, 7, 1]]), np.zeros((1, 3), int), r"token ids must be in \[0, 7\)"),
    (np.array([[0, -1, 1]]), np.zeros((1, 3), int), r"token ids must be in \[0, 7\)"),
    (np.zeros(4, int), np.zeros(4, int), "2-D"),
    (np.zeros((1, 2, 3), int), np.zeros((1, 2, 3), int), "2-D"),
    (np.zeros((2, 3)), np.zeros((2, 3), int), "must hold integers"),
    (np.zeros((0, 3), int), np.zeros((0, 3), int), "non-empty"),
    (np.zeros((2, 3), int), np.zeros((2, 4), int), r"targets shape \(2, 4\) does not match idx shape \(2, 3\)"),
    (np.zeros((2, 3), int), np.zeros((3, 2), int), "does not match idx shape"),
    (np.zeros((2, 3), int), np.zeros((2, 3)), "targets must hold integers"),
    (np.zeros((2, 3), int), np.full((2, 3), 7), r"target ids must be in \[0, 7\)"),
    (np.zeros((2, 3), int), np.full((2, 3), -2), r"target ids must be in \[0, 7\)"),
])
def test_input_validation(idx, targets, match):
    model = GPT(tiny_config(), seed=0)
    with pytest.raises(ValueError, match=match):
        model.forward(idx, targets)


@pytest.mark.parametrize("idx, match", [
    (np.zeros((1, 7), int), "exceeds block_size"),
    (np.array([[3, 99]]), "token ids must be in"),
    (np.zeros(3, int), "2-D"),
    (np.zeros((1, 3), float), "must hold integers"),
])
def test_logits_input_validation(idx, match):
    model = GPT(tiny_config(), seed=0)
    with pytest.raises(ValueError, match=match):
        model.logits(idx)
