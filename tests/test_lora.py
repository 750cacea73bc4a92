"""LoRA adapters: the layer's gradients, the model with adapters, freezing and the trainable-only optimizer."""
import numpy as np
import pytest

from npgpt import GPT, GPTConfig, checkpoint, gradcheck, kernels, layers, pretrained
from npgpt.cli import main as cli_main
from npgpt.errors import UserError
from npgpt.finetune import TrainableAdamW, add_lora, freeze, mask_ranges, merge_lora, trainable_mask, trainable_names
from npgpt.generate import generate
from npgpt.layers import lora
from npgpt.optim import AdamW
from npgpt.tokenizers.char import CharTokenizer

ALL_TARGETS = "c_attn,c_proj,c_fc,mlp.c_proj"


def tiny_config(**fields):
    return GPTConfig(**{**dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64",
                               backend="numpy"), **fields})


def with_trained_adapters(model, seed=1):
    """Give every adapter a non-zero B, as training would, so that the adapters matter."""
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if name.endswith(".lora_b"):
            p[...] = rng.normal(0.0, 0.2, p.shape)
    return model


def batch(seed=0, B=2, T=6, V=13):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


# ------------------------------------------------------------------ the layer
def lora_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 3, 5)), "a": rng.standard_normal((5, 2)), "b": rng.standard_normal((2, 4))}


def test_forward_is_x_a_b_times_scale():
    inp = lora_inputs()
    out, _ = lora.forward(inp["x"], inp["a"], inp["b"], 0.75)
    np.testing.assert_allclose(out, inp["x"] @ (inp["a"] @ inp["b"]) * 0.75, rtol=1e-13)


@pytest.mark.parametrize("ops", [layers, kernels], ids=["reference", "kernels"])
def test_layer_gradients_match_finite_differences(ops):
    report = gradcheck.check_layer(lambda x, a, b: ops.lora.forward(x, a, b, 0.75), ops.lora.backward, lora_inputs(),
                                   name="lora")
    assert report.passed, str(report)


def test_a_wrong_backward_is_caught():
    def forgets_the_scale_in_dx(dout, cache):
        dx, da, db = lora.backward(dout, cache)
        return dx / 0.75, da, db

    report = gradcheck.check_layer(lambda x, a, b: lora.forward(x, a, b, 0.75), forgets_the_scale_in_dx, lora_inputs())
    assert not report.passed
    assert [r.passed for r in report.results] == [False, True, True]


def test_fresh_adapter_is_zero_and_merges_into_the_weight():
    a, b = lora.init(6, 4, 3, np.random.default_rng(0))
    assert a.shape == (6, 3) and b.shape == (3, 4) and not b.any() and a.any()
    assert np.abs(a).max() <= 1 / np.sqrt(6)
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((5, 6)), rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(x @ lora.merged_weight(w, a, b, 2.0), x @ w + lora.forward(x, a, b, 2.0)[0], rtol=1e-12)


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_zero_b_adapters_leave_the_logits_unchanged_bit_for_bit(backend):
    base = GPT(tiny_config(backend=backend), seed=0)
    adapted = add_lora(base, rank=2, targets=ALL_TARGETS)
    r = 2  # each adapter adds r * (Cin + Cout): c_attn 8 -> 24, c_proj 8 -> 8, c_fc 8 -> 32, mlp.c_proj 32 -> 8
    assert adapted.num_params == base.num_params + 2 * r * ((8 + 24) + (8 + 8) + (8 + 32) + (32 + 8))
    idx, _ = batch()
    np.testing.assert_array_equal(adapted.logits(idx), base.logits(idx))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_merged_adapters_give_the_same_logits(backend):
    model = with_trained_adapters(add_lora(GPT(tiny_config(backend=backend), seed=0), 2, 8.0, ALL_TARGETS))
    merged = merge_lora(model)
    assert merged.config.lora_rank == 0 and set(merged.params) == {n for n in model.params if ".lora_" not in n}
    idx, _ = batch()
    base_logits = GPT(tiny_config(backend=backend), seed=0).logits(idx)
    assert np.abs(model.logits(idx) - base_logits).max() > 1e-3  # the adapters do change the model
    np.testing.assert_allclose(merged.logits(idx), model.logits(idx), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_model_with_adapters_matches_finite_differences(backend):
    model = with_trained_adapters(GPT(tiny_config(backend=backend, lora_rank=2, lora_targets=ALL_TARGETS), seed=0))
    idx, targets = batch()
    report = gradcheck.check_model(model, idx, targets, max_entries=6)
    assert report.passed, str(report)
    assert {r.input for r in report.results} >= {"h.1.mlp.c_fc.lora_a", "h.0.attn.c_attn.lora_b"}


def test_kv_cache_sampling_applies_the_adapters():
    model = with_trained_adapters(GPT(tiny_config(lora_rank=2, lora_targets=ALL_TARGETS), seed=0))
    cached = list(generate(model, [1, 2], 12, np.random.default_rng(0), temperature=0.0, use_cache=True))
    uncached = list(generate(model, [1, 2], 12, np.random.default_rng(0), temperature=0.0, use_cache=False))
    assert cached == uncached
    base = GPT(tiny_config(), seed=0)  # the same base weights without adapters samples something else
    assert cached != list(generate(base, [1, 2], 12, np.random.default_rng(0), temperature=0.0))


def test_unknown_target_and_bad_rank_are_refused():
    with pytest.raises(ValueError, match="unknown LoRA target 'q_proj'"):
        tiny_config(lora_rank=2, lora_targets="c_attn,q_proj")
    with pytest.raises(ValueError, match="lora_rank must be an integer >= 0"):
        tiny_config(lora_rank=-1)


# ------------------------------------------------------------------ freezing
def test_freeze_specs_name_the_right_parameters():
    model = GPT(tiny_config(n_layer=3), seed=0)
    assert trainable_names(model) == list(model.shapes)
    last = trainable_names(model, "all-but-last:1")
    assert set(last) == {n for n in model.shapes if n.startswith(("h.2.", "ln_f."))}
    assert trainable_names(model, "all-but-last:0") == ["ln_f.weight", "ln_f.bias"]
    head_ln = set(trainable_names(model, "all-but-head-and-ln"))
    assert "wte.weight" in head_ln and "h.1.ln_2.bias" in head_ln and "h.1.mlp.c_fc.weight" not in head_ln
    assert "wte.weight" not in trainable_names(model, "all-but-ln")
    for bad, message in [("all-but-last:4", "N must be an integer in 0..3"), ("some", "unknown --freeze"),
                         ("lora", "needs LoRA adapters")]:
        with pytest.raises(UserError, match=message):
            trainable_names(model, bad)
    adapted = add_lora(model, 2)
    assert all(".lora_" in n for n in trainable_names(adapted))  # with adapters: the adapters alone by default
    assert set(trainable_names(adapted, "all-but-last:1")) == set(last) | {n for n in adapted.shapes if ".lora_" in n}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("spec", [None, "all-but-last:1", "all-but-head-and-ln"])
def test_frozen_backward_gives_the_same_trainable_gradients_and_zero_elsewhere(backend, spec):
    full = add_lora(GPT(tiny_config(backend=backend), seed=0), 2, targets=ALL_TARGETS) if spec is None else \
        GPT(tiny_config(backend=backend), seed=0)
    full = with_trained_adapters(full)
    partial = GPT(full.config, init_weights=False)
    partial.flat_params[...] = full.flat_params
    mask = freeze(partial, spec)
    assert partial.frozen == {n for n in partial.shapes if n not in trainable_names(partial, spec)}
    idx, targets = batch()
    expected = np.zeros_like(full.flat_params)
    full.backward(full.forward(idx, targets)[1], out=expected)
    got = np.full_like(expected, np.nan)  # a reused buffer: every entry must be written
    partial.backward(partial.forward(idx, targets)[1], out=got)
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-12, atol=1e-15)
    assert not got[~mask].any()


def test_mask_ranges_are_the_runs_of_the_mask():
    assert mask_ranges(np.array([True, True, False, True])) == [(0, 2), (3, 4)]
    assert mask_ranges(np.zeros(3, bool)) == []
    model = GPT(tiny_config(), seed=0)
    mask = trainable_mask(model, "all-but-head-and-ln")
    assert sum(b - a for a, b in mask_ranges(mask)) == mask.sum()


def train_steps(model, mask, steps=3, **adamw):
    opt = TrainableAdamW(model, mask, weight_decay=0.1, **adamw)
    grad = np.empty_like(model.flat_params)
    for i in range(steps):
        idx, targets = batch(i)
        _, cache = model.forward(idx, targets)
        model.backward(cache, out=grad)
        opt.step(grad, 1e-2)
    return opt


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_frozen_parameters_do_not_change_bit_for_bit(backend):
    model = add_lora(GPT(tiny_config(backend=backend, dtype="float32"), seed=0), 2, targets=ALL_TARGETS)
    before = model.flat_params.copy()
    mask = trainable_mask(model)
    opt = train_steps(model, mask)
    assert opt.m.size == opt.v.size == mask.sum() == model.num_params - GPT(tiny_config()).num_params
    np.testing.assert_array_equal(model.flat_params[~mask], before[~mask])
    assert (model.flat_params[mask] != before[mask]).mean() > 0.9

    model = GPT(tiny_config(backend=backend, dtype="float32"), seed=0)
    before = model.flat_params.copy()
    mask = trainable_mask(model, "all-but-last:1")
    train_steps(model, mask)
    np.testing.assert_array_equal(model.flat_params[~mask], before[~mask])
    assert (model.flat_params[mask] != before[mask]).any()


def test_trainable_adamw_over_everything_is_adamw():
    a, b = GPT(tiny_config(), seed=0), GPT(tiny_config(), seed=0)
    train_steps(a, None)
    opt = AdamW(b, weight_decay=0.1)
    grad = np.empty_like(b.flat_params)
    for i in range(3):
        _, cache = b.forward(*batch(i))
        b.backward(cache, out=grad)
        opt.step(grad, 1e-2)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_optimizer_state_round_trips_and_refuses_the_wrong_size():
    model = add_lora(GPT(tiny_config(), seed=0), 2)
    opt = train_steps(model, trainable_mask(model))
    state = opt.state_dict()
    fresh = TrainableAdamW(model, trainable_mask(model))
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.m, opt.m)
    with pytest.raises(ValueError, match="trainable parameters"):
        TrainableAdamW(model, None).load_state_dict(state)


# ------------------------------------------------------------------ checkpoints and export
def test_adapters_survive_a_checkpoint_and_export_merged(tmp_path, capsys):
    tok = CharTokenizer([chr(97 + i) for i in range(13)])
    model = with_trained_adapters(add_lora(GPT(tiny_config(), seed=0), 2, 4.0, "c_attn,mlp.c_proj"))
    checkpoint.save(str(tmp_path / "run"), model, tok, {"iter": 3})
    back = pretrained.load(str(tmp_path / "run"), dtype="float64")
    assert back.model.config.lora_rank == 2 and back.model.config.lora_targets == "c_attn,mlp.c_proj"
    np.testing.assert_array_equal(back.model.flat_params, model.flat_params)
    again = pretrained.load(str(tmp_path / "run"), dtype="float64", lora_rank=0, lora_targets="c_fc")
    np.testing.assert_array_equal(again.model.flat_params, model.flat_params)  # its adapters kept, overrides unused
    with pytest.raises(UserError, match="has LoRA adapters of rank 2; merge them first"):
        pretrained.load(str(tmp_path / "run"), lora_rank=4)

    assert cli_main(["export", "--ckpt", str(tmp_path / "run"), "--to", str(tmp_path / "hf")]) == 2
    assert "add --merge-lora" in capsys.readouterr().err
    assert cli_main(["export", "--ckpt", str(tmp_path / "run"), "--to", str(tmp_path / "hf"), "--merge-lora"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    exported = pretrained.load(str(tmp_path / "hf"), dtype="float64", backend="numpy")
    idx, _ = batch()
    np.testing.assert_allclose(exported.model.logits(idx), model.logits(idx), rtol=1e-12, atol=1e-12)
    assert exported.tokenizer.chars == tok.chars
    assert cli_main(["export", "--ckpt", str(tmp_path / "run"), "--to", str(tmp_path / "hf"), "--merge-lora"]) == 2
    assert "--force" in capsys.readouterr().err  # an earlier export is not overwritten silently
    with pytest.raises(UserError, match="cannot hold unmerged"):
        model.save_pretrained(str(tmp_path / "hf2"), merge_lora=False)


def test_load_for_finetuning_adds_fresh_adapters_to_a_checkpoint(tmp_path):
    tok = CharTokenizer([chr(97 + i) for i in range(13)])
    base = GPT(tiny_config(), seed=0)
    checkpoint.save(str(tmp_path), base, tok, {"iter": 1})
    model, tokenizer = pretrained.load_for_finetuning(str(tmp_path), "float64", "numpy", None, lora_rank=4,
                                                      lora_targets="c_fc")
    assert tokenizer.chars == tok.chars and model.config.lora_rank == 4
    assert set(trainable_names(model)) == {f"h.{i}.mlp.c_fc.lora_{x}" for i in range(2) for x in "ab"}
    idx, _ = batch()
    np.testing.assert_array_equal(model.logits(idx), base.logits(idx))
