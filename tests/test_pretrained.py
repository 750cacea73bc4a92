"""Hugging Face GPT-2 folders in and out, checked against transformers itself, offline.

Each test builds a small random GPT2LMHeadModel with transformers (the hub
is never reached), moves its biases and layer-norm gains away from 0 and 1
so that every tensor matters, and saves it with save_pretrained.  Skips
cleanly when torch or transformers is missing.
"""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import safetensors.numpy  # noqa: E402

from npgpt import GPT, GPTConfig, checkpoint, pretrained  # noqa: E402
from npgpt.cli import main as cli_main  # noqa: E402
from npgpt.errors import UserError  # noqa: E402
from npgpt.generate import generate  # noqa: E402
from npgpt.tokenizers.bpe import BPETokenizer  # noqa: E402
from npgpt.tokenizers.char import CharTokenizer  # noqa: E402

V, T_MAX = 61, 32
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 4


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; don't compete for the shared cores
    yield
    torch.set_num_threads(threads)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected))) / max(float(np.max(np.abs(expected))), 1e-300)


def make_hf(seed=0, **overrides):
    """A small random GPT2LMHeadModel in eval mode, biases and gains perturbed."""
    fields = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=V, n_positions=T_MAX, n_inner=40,
                  layer_norm_epsilon=1e-4, bos_token_id=0, eos_token_id=0)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "gpt2-small-random"
    make_hf().save_pretrained(folder)
    return str(folder)


def hf_loss_and_grads(hf, idx, targets, dtype):
    hf = hf.to(dtype)
    hf.zero_grad()
    logits = hf(torch.as_tensor(idx)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(targets).reshape(-1))
    loss.backward()
    grads = {n.removeprefix("transformer."): p.grad.detach().numpy().copy() for n, p in hf.named_parameters()}
    return logits.detach().numpy(), float(loss.detach()), grads


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_logits_loss_and_every_gradient_equal_transformers(hf_dir, backend, dtype, tol):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    model = GPT.from_pretrained(hf_dir, dtype=dtype, backend=backend)
    assert model.config.n_inner == 40 and model.config.layer_norm_epsilon == 1e-4  # mapped from config.json
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (3, 13))
    idx, targets = ids[:, :-1], ids[:, 1:]
    ref_logits, ref_loss, ref_grads = hf_loss_and_grads(hf, idx, targets, getattr(torch, dtype))

    assert relative_error(model.logits(idx), ref_logits) <= tol
    loss, cache = model.forward(idx, targets)
    assert abs(loss - ref_loss) / abs(ref_loss) <= tol
    grads = model.backward(cache)
    assert set(grads) == set(ref_grads)  # every HF parameter (lm_head is wte: tied, one tensor)
    for name, g in grads.items():
        assert relative_error(g, ref_grads[name]) <= tol, name


def test_twenty_greedy_tokens_equal_through_the_kv_cache(hf_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval().double()
    model = GPT.from_pretrained(hf_dir, dtype="float64", backend="numpy")
    prompt = [5, 17, 3, 42]
    ours = list(generate(model, prompt, 20, np.random.default_rng(0), temperature=0.0, use_cache=True))
    tokens = list(prompt)
    with torch.no_grad():  # greedy decoding, written out: argmax of the last position, 20 times
        for _ in range(20):
            tokens.append(int(hf(torch.tensor([tokens])).logits[0, -1].argmax()))
    assert ours == tokens[len(prompt):]


def test_block_size_crops_the_position_table(hf_dir):
    full = GPT.from_pretrained(hf_dir, dtype="float64", backend="numpy")
    short = GPT.from_pretrained(hf_dir, dtype="float64", backend="numpy", block_size=8)
    assert short.config.block_size == 8 and short.params["wpe.weight"].shape == (8, 16)
    np.testing.assert_array_equal(short.params["wpe.weight"], full.params["wpe.weight"][:8])
    idx = np.arange(8)[None] % V
    np.testing.assert_array_equal(short.logits(idx), full.logits(idx))
    with pytest.raises(UserError, match="block_size 64 must be in 1..32"):
        GPT.from_pretrained(hf_dir, block_size=64)


def test_default_n_inner_is_four_times_n_embd(tmp_path):
    make_hf(n_inner=None).save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path))
    assert model.config.n_inner is None and model.params["h.0.mlp.c_fc.weight"].shape == (16, 64)


# ------------------------------------------------------------------ layouts
def write_hub_layout(src_dir, dst_dir, with_lm_head=False, lm_head_delta=0.0):
    """Rewrite a save_pretrained folder in the hub's own `gpt2` layout: no `transformer.` prefix, mask buffers kept."""
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copy(os.path.join(src_dir, "config.json"), dst_dir)
    tensors = safetensors.numpy.load_file(os.path.join(src_dir, "model.safetensors"))
    hub = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    for i in range(2):  # the causal mask buffers the old checkpoints carry
        hub[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, T_MAX, T_MAX), np.float32))
        hub[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    if with_lm_head:
        hub["lm_head.weight"] = hub["wte.weight"] + np.float32(lm_head_delta)
    safetensors.numpy.save_file(hub, os.path.join(dst_dir, "model.safetensors"), metadata={"format": "pt"})


def test_both_key_layouts_load_identical_weights(hf_dir, tmp_path):
    write_hub_layout(hf_dir, tmp_path / "hub", with_lm_head=True)
    a = GPT.from_pretrained(hf_dir)
    b = GPT.from_pretrained(str(tmp_path / "hub"))
    assert a.shapes == b.shapes
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_a_separate_lm_head_is_refused(hf_dir, tmp_path):
    write_hub_layout(hf_dir, tmp_path / "untied", with_lm_head=True, lm_head_delta=0.5)
    with pytest.raises(UserError, match="lm_head.weight differs from wte.weight"):
        GPT.from_pretrained(str(tmp_path / "untied"))


def test_sharded_files_load(hf_dir, tmp_path):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert not os.path.exists(tmp_path / "model.safetensors")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    np.testing.assert_array_equal(GPT.from_pretrained(str(tmp_path)).flat_params, GPT.from_pretrained(hf_dir).flat_params)


def test_an_npgpt_checkpoint_loads_through_the_same_entry_point(tmp_path):
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=8, backend="numpy"), seed=3)
    checkpoint.save(str(tmp_path), model, CharTokenizer([chr(32 + i) for i in range(V)]), {"iter": 7})
    loaded = pretrained.load(str(tmp_path))
    assert loaded.kind == "npgpt" and loaded.iteration == 7 and loaded.tokenizer.vocab_size == V
    np.testing.assert_array_equal(GPT.from_pretrained(str(tmp_path)).flat_params, model.flat_params)
    as64 = GPT.from_pretrained(str(tmp_path), dtype="float64", block_size=4)
    assert as64.dtype == np.float64 and as64.params["wpe.weight"].shape == (4, 8)


# ------------------------------------------------------------------ export
def perturbed_npgpt_model(tokenizer, **fields):
    config = GPTConfig(**{**dict(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=16,
                                 backend="numpy"), **fields})
    model = GPT(config, seed=4)
    rng = np.random.default_rng(4)
    for name, p in model.params.items():
        if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f"):
            p += rng.normal(0.0, 0.1, p.shape).astype(p.dtype)
    return model


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return BPETokenizer.train(TEXT, vocab_size=300)


def test_export_loads_in_transformers_with_the_same_logits_and_tokens(bpe_tokenizer, tmp_path):
    model = perturbed_npgpt_model(bpe_tokenizer)
    model.save_pretrained(str(tmp_path), tokenizer=bpe_tokenizer)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert set(info["missing_keys"]) <= {"lm_head.weight"} and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info.get("error_msgs")
    idx = np.array([bpe_tokenizer.encode(TEXT[:60])[:20]])
    with torch.no_grad():
        ref = hf.eval()(torch.as_tensor(idx)).logits.numpy()
    assert relative_error(model.logits(idx), ref) <= 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    sample = TEXT[:120] + " héllo wörld 123  <|endoftext|>"
    assert hf_tok.encode(sample, add_special_tokens=False) == bpe_tokenizer.encode(sample, allowed_special="all")
    ids = bpe_tokenizer.encode(sample, allowed_special="all")
    assert hf_tok.decode(ids) == bpe_tokenizer.decode(ids)


def test_npgpt_to_transformers_to_npgpt_is_bit_exact(bpe_tokenizer, tmp_path):
    model = perturbed_npgpt_model(bpe_tokenizer)
    model.save_pretrained(str(tmp_path / "a"), tokenizer=bpe_tokenizer)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "a"))
    hf.save_pretrained(tmp_path / "b")  # transformers' own writer, its own layout
    transformers.AutoTokenizer.from_pretrained(str(tmp_path / "a")).save_pretrained(tmp_path / "b")
    back = pretrained.load(str(tmp_path / "b"))
    assert back.model.config.to_dict() == model.config.to_dict() | {"backend": back.model.config.backend}
    np.testing.assert_array_equal(back.model.flat_params, model.flat_params)
    assert back.tokenizer.encode(TEXT) == bpe_tokenizer.encode(TEXT)


def test_a_tokenizer_json_alone_loads_as_the_same_bpe(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_gpt2(str(tmp_path / "gpt2-files"))  # GPT-2's own names: encoder.json + vocab.bpe
    os.rename(tmp_path / "gpt2-files" / "encoder.json", tmp_path / "gpt2-files" / "vocab.json")
    os.rename(tmp_path / "gpt2-files" / "vocab.bpe", tmp_path / "gpt2-files" / "merges.txt")
    tokenizers = pytest.importorskip("tokenizers")
    fast = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(tmp_path / "gpt2-files" / "vocab.json"),
                                                                str(tmp_path / "gpt2-files" / "merges.txt")))
    fast.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = tokenizers.decoders.ByteLevel()
    fast.add_special_tokens(["<|endoftext|>"])
    folder = tmp_path / "model"
    make_hf(vocab_size=bpe_tokenizer.vocab_size).save_pretrained(folder)
    fast.save(str(folder / "tokenizer.json"))  # the `tokenizers` library's one-file format
    assert not os.path.exists(folder / "vocab.json")
    tok = pretrained.load(str(folder)).tokenizer
    sample = TEXT + " héllo wörld 123  <|endoftext|>"
    assert tok.encode(sample, allowed_special="all") == bpe_tokenizer.encode(sample, allowed_special="all")
    assert tok.encode(sample, allowed_special="all") == fast.encode(sample).ids  # and as the tokenizers library does
    assert tok.special_tokens == bpe_tokenizer.special_tokens


def test_character_tokenizer_exports_as_a_tokenizer_json_transformers_encodes_identically(tmp_path):
    tok = CharTokenizer.train(TEXT + "é")
    model = perturbed_npgpt_model(tok)
    model.save_pretrained(str(tmp_path), tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    sample = TEXT[:200] + "é  \n\n a"
    assert hf_tok.encode(sample, add_special_tokens=False) == tok.encode(sample)
    assert hf_tok.decode(tok.encode(sample)) == sample
    back = pretrained.load(str(tmp_path))
    assert isinstance(back.tokenizer, CharTokenizer) and back.tokenizer.chars == tok.chars


def test_bias_free_model_exports_zero_biases(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = perturbed_npgpt_model(tok, bias=False)
    model.save_pretrained(str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = np.array([tok.encode(TEXT[:16])])
    with torch.no_grad():
        assert relative_error(model.logits(idx), hf(torch.as_tensor(idx)).logits.numpy()) <= 1e-5


# ------------------------------------------------------------------ full size
@pytest.mark.slow
def test_gpt2_124m_shape_loads_matches_and_takes_a_step(tmp_path):
    """GPT-2 small's shapes (12 x 768, 12 heads, vocab 50257, 1024 positions), random weights."""
    from npgpt.finetune import TrainableAdamW, freeze

    torch.manual_seed(0)
    with torch.device("meta"):  # skip transformers' own init (15 s on one core); fill uniformly instead (4 s)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf = hf.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.uniform_(-0.05, 0.05)
            if ".ln_" in name and name.endswith(".weight"):
                p.add_(1.0)
    hf.tie_weights()
    hf.save_pretrained(tmp_path)
    idx = np.random.default_rng(0).integers(0, 50257, (1, 8))
    with torch.no_grad():
        ref = hf(torch.as_tensor(idx)).logits.numpy()
    del hf
    # the reference layers: this test is about shapes and loading, the kernels are checked at small size
    model = GPT.from_pretrained(str(tmp_path), block_size=64, backend="numpy")
    assert model.num_params == 124_439_808 - (1024 - 64) * 768  # GPT-2 small, position table cropped
    assert relative_error(model.logits(idx), ref) <= 1e-4
    before = model.flat_params.copy()
    mask = freeze(model, "all-but-last:1")  # the backward skips the frozen layers' weight products
    loss, cache = model.forward(idx[:, :-1], idx[:, 1:])
    grad = np.empty_like(model.flat_params)
    model.backward(cache, out=grad)
    opt = TrainableAdamW(model, mask, weight_decay=0.0)
    assert opt.m.size == mask.sum() == 7_087_872 + 2 * 768  # block 11 and ln_f
    opt.step(grad, 1e-4)
    changed = model.flat_params != before
    assert changed[mask].mean() > 0.9 and np.isfinite(loss)
    assert not changed[~mask].any()  # frozen weights untouched, bit for bit


# ------------------------------------------------------------------ bad input
def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def _drop_key(folder, key):
    path = os.path.join(folder, "model.safetensors")
    tensors = safetensors.numpy.load_file(path)
    del tensors[key]
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _truncate(folder, name, keep):
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep] if keep >= 0 else data[:keep])


def _write(folder, name, data):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def _to_bfloat16(folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).to(torch.bfloat16)
    hf.save_pretrained(folder)


def _only_pickle(folder):
    os.remove(os.path.join(folder, "model.safetensors"))
    _write(folder, "pytorch_model.bin", b"\x80\x04not really a pickle")


BAD_FOLDERS = {
    "no config.json": (lambda d: os.remove(os.path.join(d, "config.json")), r"there is no config\.json"),
    "config.json not JSON": (lambda d: _write(d, "config.json", b"{n_layer: 2"), r"config\.json: not valid JSON"),
    "config.json wrong type": (lambda d: _edit_config(d, n_layer="two"), r"config\.json: field 'n_layer' must be an integer"),
    "config.json empty": (lambda d: _write(d, "config.json", b""), r"config\.json: not valid JSON"),
    "activation": (lambda d: _edit_config(d, activation_function="relu"), r"activation_function 'relu' is not supported"),
    "model type": (lambda d: _edit_config(d, model_type="llama"), r"model_type is 'llama'"),
    "untied head missing": (lambda d: _edit_config(d, tie_word_embeddings=False), r"tie_word_embeddings is false but .* no lm_head"),
    "no weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), r"no model\.safetensors"),
    "corrupt safetensors": (lambda d: _write(d, "model.safetensors", b"\x00" * 64), r"model\.safetensors: not a valid safetensors file"),
    "truncated safetensors": (lambda d: _truncate(d, "model.safetensors", -100), r"model\.safetensors: (not a valid safetensors file|cannot read)"),
    "missing key": (lambda d: _drop_key(d, "transformer.h.1.mlp.c_fc.bias"), r"weight 'h\.1\.mlp\.c_fc\.bias' .*is missing"),
    "n_layer disagrees": (lambda d: _edit_config(d, n_layer=16_000_000), r"n_layer is 16000000 but the weight files hold 2 blocks"),
    "weights not a file": (lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                      os.symlink("/dev/zero", os.path.join(d, "model.safetensors"))),
                           r"model\.safetensors: not a regular file"),
    "bfloat16 weights": (lambda d: _to_bfloat16(d), r"cannot read weight 'transformer\.\S+' .*bfloat16.*save the model in float32"),
    "shape mismatch": (lambda d: _edit_config(d, vocab_size=V + 3), r"weight 'transformer\.wte\.weight' has shape \(61, 16\), config\.json implies \(64, 16\)"),
    "only pytorch_model.bin": (_only_pickle, r"only pytorch_model\.bin, a pickle .*can run arbitrary code.*safe_serialization=True"),
    "missing shard": (lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                 _write(d, "model.safetensors.index.json", b'{"weight_map": {"wte.weight": "part-2.safetensors"}}')),
                      r"lists part-2\.safetensors, which is missing"),
    "shard outside the folder": (lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                            _write(d, "model.safetensors.index.json", b'{"weight_map": {"wte.weight": "../x.safetensors"}}')),
                                 r"shard name '\.\./x\.safetensors' is not a file name"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_folder_is_one_clear_line(hf_dir, tmp_path, capsys, case):
    damage, pattern = BAD_FOLDERS[case]
    folder = str(tmp_path / "model")
    shutil.copytree(hf_dir, folder)
    damage(folder)
    with pytest.raises(UserError, match=pattern):
        GPT.from_pretrained(folder)
    _write(folder, "data.txt", TEXT.encode())  # the same through the CLI: one line, exit 2, no traceback
    capsys.readouterr()
    assert cli_main(["eval", "--ckpt", folder, "--data", os.path.join(folder, "data.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_missing_tokenizer_files_the_model_loads_and_sampling_says_what_is_missing(hf_dir, tmp_path, capsys):
    loaded = pretrained.load(hf_dir)  # save_pretrained of a model alone writes no tokenizer
    assert loaded.tokenizer is None and "no tokenizer files (vocab.json + merges.txt, or tokenizer.json)" in loaded.tokenizer_problem
    assert cli_main(["sample", "--ckpt", hf_dir, "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the model loaded, but sampling needs its tokenizer" in err and "vocab.json" in err
    folder = str(tmp_path / "half")
    shutil.copytree(hf_dir, folder)
    _write(folder, "vocab.json", b"{}")
    assert "has vocab.json but not merges.txt" in pretrained.load(folder).tokenizer_problem
    _write(folder, "tokenizer.json", b"[1, 2")
    os.remove(os.path.join(folder, "vocab.json"))
    with pytest.raises(UserError, match=r"tokenizer\.json: not valid JSON"):
        pretrained.load(folder)


def test_sample_and_eval_run_on_a_hugging_face_folder(bpe_tokenizer, tmp_path, capsys):
    model = perturbed_npgpt_model(bpe_tokenizer)
    model.save_pretrained(str(tmp_path), tokenizer=bpe_tokenizer)
    _write(str(tmp_path), "data.txt", TEXT.encode())
    assert cli_main(["sample", "--ckpt", str(tmp_path), "--prompt", "First", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("First")
    assert cli_main(["eval", "--ckpt", str(tmp_path), "--data", str(tmp_path / "data.txt")]) == 0
    out = capsys.readouterr().out
    loss = float(out.split("| loss ")[1].split()[0])
    assert abs(loss - np.log(bpe_tokenizer.vocab_size)) < 1.0  # an untrained model: about log V
    assert cli_main(["eval", "--ckpt", str(tmp_path)]) == 2  # no training data to fall back on
    assert "--data" in capsys.readouterr().err
