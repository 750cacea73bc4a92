"""The public API: one test per friction item of issue 10 (each fails on the code before it)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import npgpt
from npgpt import GPT, GPTConfig, optim
from npgpt.cli import main
from training_helpers import train, write_corpus

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny(backend="numpy", dtype="float32", **kw):
    return GPT(GPTConfig(**TINY, backend=backend, dtype=dtype), seed=1, **kw)


def batch(B=4, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (B, T)), rng.integers(0, 11, (B, T))


# ------------------------------------------------------------------ names
def test_import_npgpt_gives_the_whole_public_api():
    for name in ("GPT", "GPTConfig", "Gradients", "AdamW", "make_schedule", "CosineSchedule", "ConstantSchedule",
                 "StepSchedule", "PlateauSchedule", "CharTokenizer", "BPETokenizer", "load_tokenizer",
                 "gradcheck", "UserError", "reference"):
        assert hasattr(npgpt, name), name
    from npgpt.tokenizers import BPETokenizer, CharTokenizer  # noqa: F401  (failed before)


def test_user_error_is_a_value_error():
    assert issubclass(npgpt.UserError, ValueError)
    with pytest.raises(ValueError):
        from npgpt.data import load_text

        load_text("/no/such/file.txt")


# ------------------------------------------------------------------ tokenizers
def test_char_tokenizer_saves_and_loads(tmp_path):
    tok = npgpt.CharTokenizer.train("to be or not to be")
    path = str(tmp_path / "chars.json")
    tok.save(path)
    for again in (npgpt.CharTokenizer.load(path), npgpt.load_tokenizer(path)):
        assert isinstance(again, npgpt.CharTokenizer) and again.chars == tok.chars
    tok.save_pretrained(str(tmp_path / "dir"))
    assert npgpt.CharTokenizer.from_pretrained(str(tmp_path / "dir")).chars == tok.chars
    assert npgpt.load_tokenizer(str(tmp_path / "dir")).chars == tok.chars


def test_load_tokenizer_reads_bpe_and_refuses_junk(tmp_path):
    bpe = npgpt.BPETokenizer.train("hello hello world " * 20, 260)
    bpe.save(str(tmp_path / "bpe.json"))
    assert npgpt.load_tokenizer(str(tmp_path / "bpe.json")).encode("hello world") == bpe.encode("hello world")
    (tmp_path / "junk.json").write_text('{"type": "char", "chars": 3}')
    with pytest.raises(npgpt.UserError, match="junk.json"):
        npgpt.CharTokenizer.load(str(tmp_path / "junk.json"))
    with pytest.raises(npgpt.UserError, match="not found"):
        npgpt.load_tokenizer(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------ one gradient format
def test_backward_returns_gradients_that_adamw_takes_as_they_are():
    x, y = batch()
    models = [tiny(), tiny()]
    grads = []
    for model in models:
        loss, cache = model.forward(x, y)
        grads.append(model.backward(cache))
    assert isinstance(grads[0], npgpt.Gradients) and isinstance(grads[0], dict)
    assert np.shares_memory(grads[0]["wte.weight"], grads[0].flat)
    assert grads[0].keys() == models[0].params.keys()
    opts = [npgpt.AdamW(m) for m in models]
    n1 = opts[0].step(grads[0], 1e-2)  # the Gradients ...
    n2 = opts[1].step(grads[1].flat, 1e-2)  # ... and its flat buffer: the same update, bit for bit
    assert n1 == n2
    np.testing.assert_array_equal(models[0].flat_params, models[1].flat_params)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_adamw_step_names_a_wrong_gradient_instead_of_a_numba_typing_error(backend):
    model = tiny(backend)
    opt = npgpt.AdamW(model)
    x, y = batch()
    _, grads = model.loss_and_grad(x, y)
    before = model.flat_params.copy()
    wrong = {
        "a plain dict": dict(grads),
        "wrong size": np.zeros(model.num_params + 1, np.float32),
        "wrong dtype": grads.flat.astype(np.float64),
        "a list": list(grads.flat),
    }
    for what, g in wrong.items():
        with pytest.raises(ValueError, match="Gradients|gradient") as info:
            opt.step(g, 1e-3)
        assert type(info.value) is ValueError, what
    np.testing.assert_array_equal(model.flat_params, before)  # nothing moved
    assert opt.step_count == 0


def test_adamw_state_dict_is_a_dict_that_round_trips():
    model = tiny()
    opt = npgpt.AdamW(model)
    opt.step(np.ones(model.num_params, np.float32), 1e-3)
    state = opt.state_dict()
    assert isinstance(state, dict) and set(state) == {"m", "v", "step"} and state["step"] == 1
    other = npgpt.AdamW(tiny())
    other.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()})
    np.testing.assert_array_equal(other.m, opt.m)
    np.testing.assert_array_equal(other.v, opt.v)
    assert other.step_count == 1
    with pytest.raises(ValueError, match="'m', 'v' and 'step'"):
        other.load_state_dict((state, {}))


def test_adamw_default_betas_are_npgpt_trains():
    from npgpt.train import TrainConfig

    opt = npgpt.AdamW(tiny())
    assert (opt.beta1, opt.beta2) == (TrainConfig.beta1, TrainConfig.beta2) == (0.9, 0.99)


def test_make_schedule_works_on_its_own_defaults():
    for name in optim.SCHEDULES:
        s = npgpt.make_schedule(name, lr=1e-3)
        assert 0 <= s.lr(0) <= 1e-3 and 0 <= s.lr(5000) <= 1e-3
    cosine = npgpt.make_schedule("cosine", lr=1e-3)
    assert cosine.lr(0) == pytest.approx(1e-3) and cosine.lr(2000) == pytest.approx(0.0)


# ------------------------------------------------------------------ loss_and_grad
@pytest.mark.parametrize("ignore", [False, True])
def test_loss_and_grad_with_workers_equals_one_pass(ignore):
    """Two data-parallel workers (numba) = one pass on numba = the numpy reference, to float64 rounding."""
    x, y = batch(B=5)
    if ignore:
        y[0, :5] = -1  # uneven counted targets per shard: the shard weights must follow them
    one = tiny("numba", "float64", workers=1)
    two = tiny("numba", "float64", workers=2)
    ref = tiny("numpy", "float64")
    results = [m.loss_and_grad(x, y) for m in (one, two, ref)]
    assert two._parallel is not None and two._parallel.workers == 2 and one._parallel is None
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        np.testing.assert_allclose(grads.flat, results[0][1].flat, rtol=1e-9, atol=1e-13)


def test_loss_and_grad_reuses_a_buffer_and_chooses_workers_like_npgpt_train():
    from npgpt.parallel import choose_workers

    model = tiny("numba")
    x, y = batch()
    expected = choose_workers(model, len(x))
    buffer = npgpt.Gradients(np.full(model.num_params, np.nan, np.float32), model.shapes)
    loss, grads = model.loss_and_grad(x, y, grads=buffer)
    assert grads is buffer and np.isfinite(buffer.flat).all()  # every entry overwritten
    assert (model._parallel.workers if model._parallel else 1) == expected
    model.workers = 1
    loss1, grads1 = model.loss_and_grad(x, y)
    assert loss1 == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(grads1.flat, grads.flat, rtol=1e-4, atol=1e-6)
    model.workers = 0
    with pytest.raises(ValueError, match="model.workers"):
        model.loss_and_grad(x, y)


# ------------------------------------------------------------------ seeds and generators
def test_an_int_seed_or_none_works_wherever_a_generator_does():
    from npgpt import data, generate

    tokens = np.arange(100, dtype=np.uint16)
    a, _ = data.get_batch(tokens, 3, 8, 5)
    b, _ = data.get_batch(tokens, 3, 8, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert data.get_batch(tokens, 3, 8, None)[0].shape == (3, 8)
    assert generate.sample_token([0.0, 1.0, 2.0], 3) == generate.sample_token([0.0, 1.0, 2.0], np.random.default_rng(3))
    assert 0 <= generate.sample_token([0.0, 1.0, 2.0], None) < 3
    model = tiny()
    assert len(list(generate.generate(model, [1, 2], 5, None))) == 5
    assert list(generate.generate(model, [1, 2], 5, 9)) == list(generate.generate(model, [1, 2], 5, np.random.default_rng(9)))
    dropout = GPT(GPTConfig(**TINY, backend="numpy", dropout=0.5), seed=1)
    x, y = batch()
    assert dropout.forward(x, y, rng=4)[0] == dropout.forward(x, y, rng=np.random.default_rng(4))[0]
    with pytest.raises(ValueError, match="random seed"):
        data.get_batch(tokens, 3, 8, 0.5)


# ------------------------------------------------------------------ generate
def test_model_generate_matches_the_streaming_sampler_and_is_seeded():
    from npgpt import generate

    model = tiny()
    out = model.generate([3, 4, 5], max_new_tokens=12, temperature=0.9, top_k=5, seed=2)
    assert out.shape == (15,) and list(out[:3]) == [3, 4, 5]
    assert list(out[3:]) == list(generate.generate(model, [3, 4, 5], 12, np.random.default_rng(2), 0.9, 5))
    np.testing.assert_array_equal(out, model.generate(np.array([3, 4, 5]), 12, 0.9, 5, seed=2))
    rows = model.generate(np.array([[1, 2], [7, 8]]), max_new_tokens=20, temperature=0)  # greedy
    assert rows.shape == (2, 22)
    for row in rows:
        greedy = list(row[:2])
        for _ in range(20):  # no cache: the full model's argmax at each step, block_size window
            greedy.append(int(np.argmax(model.logits(np.array([greedy[-8:]]))[0, -1])))
        assert list(row) == greedy
    for bad in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=1.5), dict(max_new_tokens=-2)):
        kw = {"max_new_tokens": 3, **bad}
        with pytest.raises(ValueError) as info:
            model.generate([1], **kw)
        assert "--" not in str(info.value)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\)"):
        model.generate([1, 11], 3)


# ------------------------------------------------------------------ messages
def test_library_messages_name_no_command_line_flags(tmp_path):
    from npgpt import checkpoint, data
    from npgpt.optim import AdamW

    model = tiny()
    grad = np.full(model.num_params, np.nan, np.float32)
    bpe = npgpt.BPETokenizer.train("hello hello", 258, special_tokens=("<|endoftext|>",))
    messages = []
    for call in (lambda: AdamW(model).step(grad, 1e-3),
                 lambda: data.build_tokenizer("bpe", "some text"),
                 lambda: data.check_long_enough(np.arange(3), 8, "training split"),
                 lambda: bpe.encode("a<|endoftext|>"),
                 lambda: checkpoint.load(str(tmp_path))):
        with pytest.raises((ValueError, FloatingPointError)) as info:
            call()
        messages.append(str(info.value))
    assert all("--" not in m for m in messages), messages


# ------------------------------------------------------------------ attention maps
def test_attention_maps_are_causal_distributions_and_do_not_see_the_future():
    model = tiny("numba")
    idx = np.array([[1, 5, 2, 7, 3, 3]])
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 1, 2, 6, 6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0)
    prefix = model.attention_maps(idx[0, :4])  # a 1-D prompt: (n_layer, nh, T, T)
    np.testing.assert_allclose(prefix, maps[:, 0, :, :4, :4], rtol=1e-5, atol=1e-7)


def test_npgpt_attention_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert train("--data", write_corpus(tmp_path), "--out", out, "--max-iters", "2") == 0
    png = tmp_path / "attn.png"
    assert main(["attention", "--ckpt", str(out), "--text", "First Citizen", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_npgpt_attention_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["attention", "--ckpt", str(tmp_path), "--text", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["npgpt: error: npgpt attention needs matplotlib to draw; install it with: pip install 'npgpt[plot]'"]


# ------------------------------------------------------------------ first run
FIRST_RUN = """
import sys
from npgpt import GPT, GPTConfig, firstrun, kernels
if sys.argv[1] == "warm":  # pretend every core kernel has been compiled before
    import os
    for name in firstrun.CORE_MODULES:
        for path in firstrun.index_files(getattr(kernels, name)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
GPT(GPTConfig(backend="numba"))
GPT(GPTConfig(backend="numba"))
"""


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_a_cold_numba_cache_is_announced_once(tmp_path, cache):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", FIRST_RUN, cache], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "compiling" in line]
    if cache == "cold":
        assert lines == ["npgpt: compiling the Numba kernels once (about 30 s on a first run; cached afterwards)"]
    else:
        assert lines == []
