"""Sampling: the KV cache changes the cost, not the tokens; sampling rules; `npgpt sample`."""
import numpy as np
import pytest

from npgpt import GPT, GPTConfig, generate
from npgpt.cli import main
from npgpt.tokenizers.char import CharTokenizer
from training_helpers import train, write_corpus


def peaked_model(block_size=8):
    """A float64 model with large weights, so logits differ a lot between tokens and positions."""
    model = GPT(GPTConfig(vocab_size=11, block_size=block_size, n_layer=2, n_head=2, n_embd=12, dtype="float64"), seed=3)
    model.flat_params += np.random.default_rng(0).normal(0, 0.3, model.num_params)
    return model


def test_cached_forward_gives_the_same_logits_as_a_full_run():
    model = peaked_model()
    idx = np.random.default_rng(1).integers(0, 11, (2, 8))
    full = model.logits(idx)  # (2, 8, V)
    cache = generate.KVCache(model.config, 2, model.dtype)
    parts = [generate.forward_cached(model, idx[:, :3], cache)]  # a 3-token prefill, then one at a time
    parts += [generate.forward_cached(model, idx[:, t : t + 1], cache) for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="KV cache holds 8 positions"):
        generate.forward_cached(model, idx[:, :1], cache)


@pytest.mark.parametrize("prompt_len", [1, 5, 11])
def test_cached_and_uncached_generation_give_identical_tokens(prompt_len):
    """30 new tokens with block_size 8: the window refills several times."""
    model = peaked_model()
    prompt = list(np.random.default_rng(2).integers(0, 11, prompt_len))
    runs = [list(generate.generate(model, prompt, 30, np.random.default_rng(5), temperature=1.0, use_cache=c))
            for c in (True, False)]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 3  # a real sample, not a constant


def test_window_keeps_half_a_block_when_full():
    assert generate.window_start(0, 8, 8) == 0
    assert generate.window_start(0, 9, 8) == 5  # keeps the last 4
    assert generate.window_start(5, 12, 8) == 5


def test_sampling_rules():
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    rng = np.random.default_rng(0)
    assert generate.sample_token(logits, rng, temperature=0) == 1
    assert all(generate.sample_token(logits, rng, top_k=1) == 1 for _ in range(20))
    assert all(generate.sample_token(logits, rng, top_p=0.01) == 1 for _ in range(20))
    top2 = {generate.sample_token(logits, rng, top_k=2) for _ in range(200)}
    assert top2 == {1, 2}
    everything = {generate.sample_token(logits, rng, temperature=5.0) for _ in range(500)}
    assert everything == {0, 1, 2, 3}
    # the frequencies follow softmax(logits)
    draws = [generate.sample_token(logits, rng) for _ in range(4000)]
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, p, atol=0.03)


def test_stream_text_writes_exactly_the_generated_text():
    tok = CharTokenizer.train("abc ")
    pieces = []
    text = generate.stream_text(tok, tok.encode("ab"), iter(tok.encode("c ba")), pieces.append)
    assert text == "c ba" and "".join(pieces) == "c ba"


def test_sample_command_streams_a_reproducible_sample(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "out", "--max-iters", 3) == 0
    capsys.readouterr()
    args = ["sample", "--ckpt", str(tmp_path / "out"), "--prompt", "First", "--max-new-tokens", "40",
            "--num-samples", "2", "--seed", "7", "--top-p", "0.9"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    samples = first.strip("\n").split("\n---------------\n")
    assert len(samples) == 2 and all(s.startswith("First") and len(s) == len("First") + 40 for s in samples)
