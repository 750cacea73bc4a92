"""GPT's two options from the Transformer paper: norm="post" (layer norm after each residual sum,
no ln_f) and positions="sinusoidal" (a fixed table instead of wpe.weight).

Gradients against finite differences on both backends, a broken post-LN
backward caught, numba == numpy, the forward against the paper's formula,
cached == uncached sampling, checkpoints and resume, export refused, and
the default model unchanged.
"""
import json

import numpy as np
import pytest

from npgpt import GPT, GPTConfig, checkpoint, gradcheck, reference
from npgpt import generate
from npgpt.layers import positional
from npgpt.model import param_shapes
from test_cli_errors import assert_one_line_error, run_cli
from training_helpers import assert_identical, final_params, train, write_corpus

TOL = 1e-6
MODEL_EPS = 5e-4  # as tests/test_model.py: truncation and rounding both below 2e-7 at std-0.3 weights
VARIANTS = [(norm, positions) for norm in ("pre", "post") for positions in ("learned", "sinusoidal")]
VARIANT_IDS = [f"{n}-{p}" for n, p in VARIANTS]


def variant_model(norm, positions, backend="numpy", seed=0, **overrides):
    """A float64 model whose weights are moved off GPT-2's init (std 0.3), so no gradient is tiny."""
    fields = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, dtype="float64", backend=backend,
                  norm=norm, positions=positions)
    model = GPT(GPTConfig(**{**fields, **overrides}), seed=seed, workers=1)
    model.flat_params += np.random.default_rng(seed + 100).normal(0.0, 0.3, model.flat_params.shape)
    return model


def batch(V, B=2, T=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("norm,positions", VARIANTS, ids=VARIANT_IDS)
def test_parameters_follow_the_options(norm, positions):
    names = set(param_shapes(GPTConfig(n_layer=2, norm=norm, positions=positions)))
    assert ("wpe.weight" in names) == (positions == "learned")  # the sinusoid is not a parameter
    assert ("ln_f.weight" in names) == (norm == "pre")  # post-LN: the last block ends in its ln_2
    assert {"h.1.ln_1.weight", "h.1.ln_2.weight"} <= names  # each sub-layer keeps its norm


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        GPTConfig(norm="middle")
    with pytest.raises(ValueError, match="positions must be one of"):
        GPTConfig(positions="rotary")
    with pytest.raises(ValueError, match="must be even for sinusoidal"):
        GPTConfig(n_embd=9, n_head=3, positions="sinusoidal")


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("norm,positions", VARIANTS, ids=VARIANT_IDS)
def test_whole_model_gradients_match_finite_differences(norm, positions, backend):
    model = variant_model(norm, positions, backend, dropout=0.1)
    idx, targets = batch(7)
    targets[1, 0] = -1
    report = gradcheck.check_model(model, idx, targets, eps=MODEL_EPS, dropout_seed=3, label_smoothing=0.1)
    assert [r.input for r in report.results] == list(model.params), "every parameter tensor is checked"
    worst = max(r.max_rel_error for r in report.results)
    assert report.passed and worst < TOL, f"{norm}/{positions}/{backend}: max relative error {worst:.2e}\n{report}"


def _post_ln_backward_as_if_pre_ln(self, dout, c_ln, ln, G, branch_backward):
    """A plausible bug: the post-LN sum's gradient skips the norm on the identity path."""
    ds, dw, db = self.ops.layernorm.backward(dout, c_ln)
    G[ln + ".weight"][...] = dw
    if db is not None:
        G[ln + ".bias"][...] = db
    return dout + branch_backward(ds)  # should be ds + branch_backward(ds)


def _post_ln_backward_without_the_residual(self, dout, c_ln, ln, G, branch_backward):
    ds, dw, db = self.ops.layernorm.backward(dout, c_ln)
    G[ln + ".weight"][...] = dw
    if db is not None:
        G[ln + ".bias"][...] = db
    return branch_backward(ds)  # forgets that x reached the sum directly too


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("broken", [_post_ln_backward_as_if_pre_ln, _post_ln_backward_without_the_residual])
def test_a_broken_post_ln_backward_is_caught(monkeypatch, broken, backend):
    model = variant_model("post", "learned", backend)
    idx, targets = batch(7)
    assert gradcheck.check_model(model, idx, targets, eps=MODEL_EPS).passed  # the control
    monkeypatch.setattr(GPT, "_residual_backward", broken)
    report = gradcheck.check_model(model, idx, targets, eps=MODEL_EPS)
    assert not report.passed
    assert max(r.max_rel_error for r in report.results) > 1e-2


@pytest.mark.parametrize("norm,positions", VARIANTS, ids=VARIANT_IDS)
def test_numba_equals_numpy(norm, positions):
    models = {b: variant_model(norm, positions, b, dropout=0.1) for b in ("numpy", "numba")}
    idx, targets = batch(7, B=3, T=6)
    out = {b: m.loss_and_grad(idx, targets, rng=np.random.default_rng(4)) for b, m in models.items()}
    assert np.isclose(out["numpy"][0], out["numba"][0], rtol=1e-12)
    for name in models["numpy"].params:
        np.testing.assert_allclose(out["numba"][1][name], out["numpy"][1][name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(models["numba"].logits(idx), models["numpy"].logits(idx), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ the forward itself
def _paper_logits(model, idx):
    """The post-LN, sinusoidal GPT written out from the paper's formulas in plain NumPy, no npgpt model code."""
    P, cfg = model.params, model.config
    T, C, nh = idx.shape[1], cfg.n_embd, cfg.n_head

    def ln(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + cfg.layer_norm_epsilon) * P[name + ".weight"] + P[name + ".bias"]

    def dense(x, name):
        return x @ P[name + ".weight"] + P[name + ".bias"]

    def attention(x, name):  # causal, nh heads
        q, k, v = np.split(dense(x, name + ".c_attn"), 3, axis=-1)
        heads = [slice(h * C // nh, (h + 1) * C // nh) for h in range(nh)]
        out = []
        for s in heads:
            scores = q[..., s] @ k[..., s].swapaxes(-1, -2) / np.sqrt(C // nh)
            scores = np.where(np.tri(T, dtype=bool), scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            out.append((p / p.sum(-1, keepdims=True)) @ v[..., s])
        return dense(np.concatenate(out, axis=-1), name + ".c_proj")

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    pos = np.array([[t / 10000 ** (2 * (c // 2) / C) for c in range(C)] for t in range(T)])
    x = P["wte.weight"][idx] + np.where(np.arange(C) % 2 == 0, np.sin(pos), np.cos(pos))
    for i in range(cfg.n_layer):
        x = ln(x + attention(x, f"h.{i}.attn"), f"h.{i}.ln_1")
        x = ln(x + dense(gelu(dense(x, f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj"), f"h.{i}.ln_2")
    return x @ P["wte.weight"].T


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_post_ln_sinusoidal_forward_is_the_papers(backend):
    model = variant_model("post", "sinusoidal", backend)
    idx, _ = batch(7, T=6)
    np.testing.assert_allclose(model.logits(idx), _paper_logits(model, idx), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(model.position_table, positional.forward(6, 8))


def test_sinusoidal_positions_matter_and_get_no_gradient():
    model = variant_model("pre", "sinusoidal")
    idx = np.full((1, 6), 3)  # one token repeated: only the positions tell the rows apart
    logits = model.logits(idx)
    assert not np.allclose(logits[0, 0], logits[0, 1])
    table = model.position_table.copy()
    model.loss_and_grad(idx, idx)
    np.testing.assert_array_equal(model.position_table, table)  # a constant: nothing writes into it


def test_post_ln_every_block_ends_normalised():
    """With unit gains and zero biases on the norms, each block's output has mean 0 and variance ~1 per position."""
    model = variant_model("post", "learned")
    for name, p in model.params.items():
        if ".ln_" in name:
            p[...] = 1.0 if name.endswith(".weight") else 0.0
    caches = []
    out = model._hidden(batch(7)[0], None, caches)  # (B, T, C): what the head reads
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)
    assert len(caches) == 2 + model.config.n_layer  # embedding, dropout, blocks: no ln_f


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("norm,positions", VARIANTS, ids=VARIANT_IDS)
def test_cached_equals_uncached(norm, positions):
    model = variant_model(norm, positions, vocab_size=11, block_size=8, n_embd=12)
    idx = np.random.default_rng(1).integers(0, 11, (2, 8))
    cache = generate.KVCache(model.config, 2, model.dtype)
    parts = [generate.forward_cached(model, idx[:, :3], cache)]
    parts += [generate.forward_cached(model, idx[:, t:t + 1], cache) for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), model.logits(idx), rtol=1e-10, atol=1e-12)
    prompt = [1, 2, 3]
    runs = [list(generate.generate(model, prompt, 30, np.random.default_rng(5), use_cache=c)) for c in (True, False)]
    assert runs[0] == runs[1] and len(set(runs[0])) > 3


@pytest.mark.parametrize("norm,positions", VARIANTS, ids=VARIANT_IDS)
def test_attention_maps_come_from_the_variant(norm, positions):
    model = variant_model(norm, positions, backend="numba")
    idx = batch(7, T=6)[0]
    maps = model.attention_maps(idx)  # (n_layer, B, nh, T, T)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(maps, 1) == 0)
    if (norm, positions) != ("pre", "learned"):
        with pytest.raises(ValueError, match="reference is GPT-2"):
            reference.forward(model.params, model.config, idx)


# ------------------------------------------------------------------ the default is GPT-2, unchanged
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_default_model_equals_the_gpt2_reference(backend):
    """The default options are pre-LN and learned positions, and the model computes exactly reference.py's
    GPT-2 (which does not know the options): the same loss, the same gradients."""
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64", backend=backend)
    assert (config.norm, config.positions) == ("pre", "learned")
    model = GPT(config, seed=3, workers=1)
    idx, targets = batch(11, T=8)
    loss, grads = model.loss_and_grad(idx, targets)
    ref_loss, ref_grads = reference.loss_and_grads(model.params, config, idx, targets)
    rtol = 0 if backend == "numpy" else 1e-10  # the same layers in the same order: bit for bit
    assert np.isclose(loss, ref_loss, rtol=rtol, atol=0)
    for name in model.params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=rtol, atol=1e-14 if rtol else 0, err_msg=name)


def test_default_checkpoint_config_loads_as_pre_ln_learned():
    """A config.json written before the options existed has neither key: it means GPT-2's arrangement."""
    fields = dict(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8)
    config = checkpoint.config_from(checkpoint.Checkpoint("old", fields, {}, {}, {}, {}))
    assert (config.norm, config.positions) == ("pre", "learned")


# ------------------------------------------------------------------ command line, checkpoints, export
def test_train_resume_sample_and_export_refusal(tmp_path, capsys):
    data = write_corpus(tmp_path)
    flags = ["--data", data, "--norm", "post", "--positions", "sinusoidal"]
    assert train(*flags, "--out", tmp_path / "straight", "--max-iters", 8) == 0
    assert train(*flags, "--out", tmp_path / "split", "--max-iters", 5, "--lr-decay-iters", 8) == 0
    assert train("--resume", tmp_path / "split", "--max-iters", 8) == 0
    assert_identical(final_params(tmp_path / "straight"), final_params(tmp_path / "split"))

    model, _, _ = checkpoint.load_model(str(tmp_path / "split"))
    assert (model.config.norm, model.config.positions) == ("post", "sinusoidal")
    assert "wpe.weight" not in model.params and "ln_f.weight" not in model.params
    assert model.generate([1, 2], max_new_tokens=5, seed=0).shape == (7,)

    status, err = run_cli(capsys, "train", "--resume", tmp_path / "split", "--norm", "pre", "--max-iters", 9)
    assert_one_line_error(status, err, "norm=post")
    status, err = run_cli(capsys, "train", "--data", data, "--init-from", tmp_path / "split", "--norm", "pre",
                          "--out", tmp_path / "tuned")
    assert_one_line_error(status, err, "norm=post")
    assert train("--data", data, "--init-from", tmp_path / "split", "--out", tmp_path / "tuned", "--max-iters", 2) == 0
    tuned, _, _ = checkpoint.load_model(str(tmp_path / "tuned"))
    assert (tuned.config.norm, tuned.config.positions) == ("post", "sinusoidal")

    status, err = run_cli(capsys, "export", "--ckpt", tmp_path / "split", "--to", tmp_path / "hf")
    assert_one_line_error(status, err, "norm=post, positions=sinusoidal", "GPT-2 folder")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("norm,positions", [("post", "learned"), ("pre", "sinusoidal")])
def test_save_pretrained_refuses_either_option(tmp_path, norm, positions):
    from npgpt.errors import UserError

    model = GPT(GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8, norm=norm,
                          positions=positions, backend="numpy"))
    with pytest.raises(UserError, match=f"norm={norm}, positions={positions}"):
        model.save_pretrained(str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_corrupt_norm_in_a_checkpoint_is_one_line(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "run", "--max-iters", 2, "--norm", "post") == 0
    pointer = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    config_path = tmp_path / "run" / pointer["snapshot"] / "config.json"
    config = json.loads(config_path.read_text())
    assert config["norm"] == "post"
    config["norm"] = "sideways"
    config_path.write_text(json.dumps(config))
    status, err = run_cli(capsys, "sample", "--ckpt", tmp_path / "run", "--max-new-tokens", 3)
    assert_one_line_error(status, err)
    assert "norm" in err
