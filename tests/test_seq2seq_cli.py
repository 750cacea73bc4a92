"""Seq2seq in use: a tiny model trained on copy (the leaky-mask test, decoding), pairs files,
BLEU, and `npgpt seq2seq translate|eval` on a saved checkpoint."""
import os
import shutil

import numpy as np
import pytest

from npgpt import seq2seq_data as data
from npgpt.cli import main
from npgpt.errors import UserError
from npgpt.optim import AdamW
from npgpt.seq2seq import Seq2Seq, TransformerConfig, beam_search, greedy_decode
from npgpt.safeload import Obj
from npgpt.seq2seq_cli import corpus_bleu, teacher_forced
from npgpt.tokenizers.char import CharTokenizer

COPY = dict(min_len=1, max_len=4, n_symbols=6)


class LeakyDecoder(Seq2Seq):
    """A mask bug: the decoder's self-attention sees the whole target, future included."""

    def _self_attention_forward(self, h, prefix, key_mask=None, causal=False):
        return super()._self_attention_forward(h, prefix, key_mask=None, causal=False)


def train_copy(model_class, iters=200, seed=0):
    """A plain AdamW loop (not npgpt's Trainer: the model alone is under test) on the copy task."""
    from threadpoolctl import threadpool_limits

    tok = data.PairTokenizer(CharTokenizer(data.task_alphabet("copy", COPY["n_symbols"])))
    cfg = TransformerConfig(vocab_size=tok.vocab_size, block_size=8, n_encoder_layer=1, n_decoder_layer=1, n_head=2,
                            n_embd=32, positions="learned", share_embeddings=True, backend="numpy")
    model = model_class(cfg, seed=seed)
    opt = AdamW(model, betas=(0.9, 0.98), weight_decay=0.0)
    grad = np.zeros_like(model.flat_params)
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):  # tiny products: BLAS threads only get in each other's way
        for it in range(iters):
            batch, _ = data.encode_pairs(data.synthetic_pairs("copy", 32, rng, **COPY), tok, 8)
            loss, cache = model.forward(*data.make_batch(batch))
            model.backward(cache, out=grad)
            opt.step(grad, 3e-3 * min(1.0, (it + 1) / 30))
    return model, tok


@pytest.fixture(scope="module")
def copy_model():
    return train_copy(Seq2Seq)


@pytest.fixture(scope="module")
def held_out(copy_model):
    _, tok = copy_model
    pairs = data.synthetic_pairs("copy", 100, np.random.default_rng(1), held_out=True, **COPY)
    return data.encode_pairs(pairs, tok, 8)[0]


def exact_match(model, encoded):
    decoded = greedy_decode(model, data.make_batch(encoded)[0])
    return np.mean([d == t for d, (_, t) in zip(decoded, encoded)])


def test_a_leaky_decoder_fits_teacher_forcing_but_cannot_decode(copy_model, held_out):
    """Teacher-forced loss alone cannot catch a mask bug: the leaky decoder gets it near 0 too.
    Greedy decoding can: it never has the future to peek at."""
    real, _ = copy_model
    leaky, _ = train_copy(LeakyDecoder)
    real_loss, leaky_loss = teacher_forced(real, held_out)[0], teacher_forced(leaky, held_out)[0]
    assert real_loss < 0.05 and leaky_loss < 0.05
    assert exact_match(real, held_out) == 1.0
    assert exact_match(leaky, held_out) < 0.5


@pytest.mark.parametrize("backend", ("numpy", "numba"))
def test_cached_decoding_and_beam_one_equal_greedy(copy_model, held_out, backend):
    trained, _ = copy_model
    from dataclasses import replace

    model = Seq2Seq(replace(trained.config, backend=backend, dtype="float64"))
    model.flat_params[...] = trained.flat_params
    model.flat_params += np.random.default_rng(0).normal(0, 0.05, model.num_params)  # not only perfect outputs
    src = data.make_batch(held_out[:40])[0]
    cached = greedy_decode(model, src)
    assert cached == greedy_decode(model, src, use_cache=False)
    rows = [s[s != 0] for s in src]
    assert [beam_search(model, s, 1) for s in rows] == cached
    beams = [beam_search(model, s, 3) for s in rows]
    assert beams == [beam_search(model, s, 3, use_cache=False) for s in rows]
    assert len({tuple(c) for c in cached}) > 5  # the outputs vary: the comparison means something


def test_beam_search_finds_a_better_hypothesis_than_greedy():
    """A model whose first step prefers token A, after which every continuation is poor, while B
    leads to a sure EOS: greedy takes A, beam 2 finds B."""

    class Scripted:
        config = TransformerConfig(vocab_size=5, block_size=4, n_embd=4, n_head=1)

        def logits(self, src, prefixes):
            table = {(1,): [0, 0, 0, 1.0, 0.9], (1, 3): [0, 0, 0, 0, 0], (1, 4): [0, 0, 9, 0, 0]}
            rows = [table.get(tuple(p), [0, 0, 9, 0, 0]) for p in prefixes.tolist()]
            return np.array(rows, dtype=float)[:, None, :]

    model = Scripted()
    assert greedy_decode(model, np.array([[3]]), use_cache=False) == [[3]]
    assert beam_search(model, np.array([3]), 2, alpha=0.0, use_cache=False) == [4]


# ------------------------------------------------------------------ BLEU
def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat", "a b c d e f", "one two three four five", "x y z w"]
    refs = ["the cat sat on a mat", "a b c d e f", "one two three four", "x y z w v u"]
    ours = corpus_bleu(hyps, refs)
    theirs = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none").score
    assert 0 < ours < 100
    assert abs(ours - theirs) < 1e-9
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(["q"], ["r"]) == 0.0


# ------------------------------------------------------------------ pairs files
def write(tmp_path, content, name="pairs.tsv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


BAD_FILES = [
    ("abc\tcba\nno tab here\n", "line 2 has no tab"),
    ("abc\tcba\n\tcba\n", "line 2 has an empty source"),
    ("abc\tcba\nabc\t  \n", "line 2 has an empty target"),
    (b"abc\tcba\nab\xff\tba\n", "line 2 is not UTF-8"),
    (b"abc\x00\tcba\n", "contains NUL bytes"),
    ("\n\n", "pairs file is empty"),
    ("abc\tcba\n" + "a" * 20 + "\tb\n", "needs 20 positions"),
]


@pytest.mark.parametrize("content, message", BAD_FILES)
def test_bad_pairs_files_get_one_line(tmp_path, capsys, content, message):
    path = write(tmp_path, content)
    status = main(["seq2seq", "train", "--data", path, "--block-size", "8", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("npgpt: error: ") and message in err, err
    assert "Traceback" not in err


def test_pairs_loading_rules(tmp_path):
    path = write(tmp_path, "\ufeffab\tba\r\n\nc d\te f\tattribution\n")
    assert data.load_pairs(path) == [("ab", "ba"), ("c d", "e f")]  # BOM, CRLF, blank line, third column
    tok = data.build_pair_tokenizer("char", [("abcd", "dcba"), ("a" * 20, "b")])
    kept, dropped = data.encode_pairs([("abcd", "dcba"), ("a" * 20, "b")], tok, 8, skip_long=True)
    assert dropped == 1 and len(kept) == 1
    src, tgt_in, targets = data.make_batch(kept + [(tok.source.encode("ab"), tok.target.encode("b"))])
    assert tgt_in[1].tolist() == [data.BOS, tok.target.encode("b")[0], 0, 0, 0]
    assert targets[1].tolist() == [tok.target.encode("b")[0], data.EOS, 0, 0, 0]
    assert src[1, 2:].tolist() == [0, 0]


def test_separate_bpe_vocabularies():
    pairs = [("the cat sat", "le chat"), ("the dog ran", "le chien")] * 10
    tok = data.build_pair_tokenizer("bpe", pairs, shared=False, vocab_size=260)
    assert not tok.shared and tok.source.vocab_size == tok.target.vocab_size == 263
    ids = tok.source.encode("the cat")
    assert min(ids) >= 3 and tok.source.decode(ids) == "the cat"
    restored = data.PairTokenizer.from_dict(tok.to_dict())
    assert restored.target.decode(restored.target.encode("le chat")) == "le chat"


# ------------------------------------------------------------------ translate and eval
def test_translate_and_eval_commands(tmp_path, capsys, copy_model):
    from npgpt import checkpoint

    model, tok = copy_model
    checkpoint.save(str(tmp_path), model, tok, {"iter": 200, "task": {"task": "copy", "task_options": COPY}})
    assert main(["seq2seq", "translate", "--ckpt", str(tmp_path), "--text", "abcd", "--text", "fe", "--beam", "3"]) == 0
    assert capsys.readouterr().out.split() == ["abcd", "fe"]
    assert main(["seq2seq", "eval", "--ckpt", str(tmp_path), "--task", "copy", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "exact match 100.00%" in out and "token accuracy 100.00%" in out and "BLEU 100.00" in out
    path = write(tmp_path, "ab\tab\ncd\tcc\n", "test.tsv")
    assert main(["seq2seq", "eval", "--ckpt", str(tmp_path), "--data", path]) == 0
    assert "exact match 50.00%" in capsys.readouterr().out
    assert main(["seq2seq", "translate", "--ckpt", str(tmp_path), "--text", "xyz"]) == 2
    assert "not in the model's" in capsys.readouterr().err
    assert main(["seq2seq", "eval", "--ckpt", str(tmp_path / "nowhere"), "--task", "copy"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_word_targets_for_phonemes(tmp_path):
    """Char sources, one target token per space-separated phoneme (--target-tokenizer words)."""
    pairs = [("cat", "K AE1 T"), ("act", "AE1 K T"), ("tack", "T AE1 K")]
    tok = data.build_pair_tokenizer("char", pairs, shared=False, target_kind="words")
    assert tok.target.vocab_size == 3 + 3  # AE1 K T
    assert tok.source.decode(tok.source.encode("tack")) == "tack" and len(tok.source.encode("tack")) == 4
    ids = tok.target.encode("T AE1 K")
    assert len(ids) == 3 and tok.target.decode(ids) == "T AE1 K"
    restored = data.PairTokenizer.from_dict(tok.to_dict())
    assert restored.target.decode(restored.target.encode("K  AE1 T ")) == "K AE1 T"
    with pytest.raises(ValueError, match="'AA1'"):
        tok.target.encode("K AA1 T")
    with pytest.raises(UserError, match="cannot share"):
        data.build_pair_tokenizer("char", pairs, shared=True, target_kind="words")


# ------------------------------------------------------------------ npgpt seq2seq train: resume, lock, settings
TINY = ["--n-embd", "16", "--n-head", "2", "--n-encoder-layer", "1", "--n-decoder-layer", "1", "--block-size", "8",
        "--batch-size", "4", "--backend", "numpy", "--no-progress", "--val-size", "8", "--lr-decay-iters", "8"]


def weights(out):
    from npgpt import checkpoint

    ckpt = checkpoint.load(out, kind="seq2seq", config_schema=Obj({}))
    return ckpt.iteration, ckpt.params, ckpt.optimizer


@pytest.fixture
def pairs_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("abcde"), size=rng.integers(1, 5))) for _ in range(40)]
    return write(tmp_path, "".join(f"{s}\t{s[::-1]}\n" for s in lines))


@pytest.mark.parametrize("source", ["task", "pairs"])
def test_resume_is_exact(tmp_path, capsys, monkeypatch, source, pairs_file):
    """8 iterations in one run == 4, then --resume to 8: the same weights and AdamW moments, bit for bit
    (with dropout on, so the dropout RNG's state must come back too)."""
    from npgpt import train

    data_args = (["--task", "reverse", "--max-len", "4", "--n-symbols", "5"] if source == "task"
                 else ["--data", pairs_file])
    common = [*data_args, *TINY, "--dropout", "0.1", "--eval-interval", "4"]
    whole, half = str(tmp_path / "whole"), str(tmp_path / "half")
    assert main(["seq2seq", "train", *common, "--max-iters", "8", "--out", whole]) == 0
    assert main(["seq2seq", "train", *common, "--max-iters", "4", "--out", half]) == 0
    assert weights(half)[0] == 4
    forgetful = str(tmp_path / "forgetful")
    shutil.copytree(half, forgetful)
    assert main(["seq2seq", "train", "--resume", half, "--max-iters", "8", "--no-progress"]) == 0
    assert "resuming at iteration 4" in capsys.readouterr().out
    (it_a, params_a, opt_a), (it_b, params_b, opt_b) = weights(whole), weights(half)
    assert it_a == it_b == 8
    for name in params_a:
        assert np.array_equal(params_a[name], params_b[name]), name
    assert all(np.array_equal(opt_a[k], opt_b[k]) for k in ("m", "v"))
    # the check can fail: a resume that forgets the RNG states (fresh streams) ends elsewhere
    monkeypatch.setattr(train, "rng_from_state", lambda state: np.random.default_rng(0))
    assert main(["seq2seq", "train", "--resume", forgetful, "--max-iters", "8", "--no-progress"]) == 0
    params_c = weights(forgetful)[1]
    assert not all(np.array_equal(params_a[name], params_c[name]) for name in params_a)


def test_resume_keeps_the_model_and_data(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["seq2seq", "train", "--task", "copy", "--max-len", "4", *TINY, "--max-iters", "2",
                 "--eval-interval", "2", "--out", out]) == 0
    capsys.readouterr()
    for flags, message in ((["--n-embd", "32"], "another --n-embd: it has 16"),
                           (["--task", "sort"], "another --task: it has 'copy'"),
                           (["--max-iters", "2"], "already at iteration 2")):
        assert main(["seq2seq", "train", "--resume", out, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # a fresh run into the same --out is refused unless --overwrite
    assert main(["seq2seq", "train", "--task", "copy", "--max-len", "4", *TINY, "--max-iters", "2", "--out", out]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_bad_resume_directories_get_one_line(tmp_path, capsys, copy_model):
    from npgpt import checkpoint
    from npgpt.model import GPT, GPTConfig
    from npgpt.tokenizers.char import CharTokenizer as Char

    empty = tmp_path / "empty"
    empty.mkdir()
    gpt = str(tmp_path / "gpt")
    checkpoint.save(gpt, GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)),
                    Char("abcde"), {"iter": 1})
    no_settings = str(tmp_path / "no-settings")
    checkpoint.save(no_settings, copy_model[0], copy_model[1], {"iter": 1})
    corrupt = str(tmp_path / "corrupt")
    snapshot = checkpoint.save(corrupt, copy_model[0], copy_model[1], {"iter": 1})
    with open(os.path.join(snapshot, "model.safetensors"), "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    cases = [(str(tmp_path / "nowhere"), "no checkpoint at"), (str(empty), "checkpoint.json is missing"),
             (gpt, "holds a gpt model, not a seq2seq model"), (no_settings, "holds no npgpt seq2seq train settings"),
             (corrupt, "does not match its recorded sha256")]
    for path, message in cases:
        assert main(["seq2seq", "train", "--resume", path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("npgpt: error: ") and message in err, err
    # and GPT's loaders refuse a seq2seq checkpoint in one line too
    with pytest.raises(UserError, match="holds a seq2seq model, not a gpt model"):
        checkpoint.load(no_settings)


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    from npgpt.lock import lock_out_dir

    out = str(tmp_path / "run")
    with lock_out_dir(out):  # a run in progress
        assert main(["seq2seq", "train", "--task", "copy", "--max-len", "4", *TINY, "--max-iters", "2",
                     "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another" in err, err
    assert not os.path.exists(os.path.join(out, "checkpoint.json"))


def test_settings_from_a_toml_file_and_flags(tmp_path, capsys):
    toml = write(tmp_path, 'task = "sort"\nmax-len = 3\nn_embd = 16\nn-head = 2\nmax_iters = 2\n', "run.toml")
    out = str(tmp_path / "run")
    assert main(["seq2seq", "train", "--config", toml, *TINY, "--max-iters", "3", "--eval-interval", "3",
                 "--out", out]) == 0
    from npgpt import checkpoint

    saved = checkpoint.load(out, kind="seq2seq", config_schema=Obj({})).state["task"]["settings"]
    assert (saved["task"], saved["max_len"], saved["n_embd"], saved["max_iters"]) == ("sort", 3, 16, 3)  # flag wins
    bad = write(tmp_path, 'n_embd = "big"\n', "bad.toml")
    assert main(["seq2seq", "train", "--config", bad]) == 2
    assert "setting 'n_embd' must be int" in capsys.readouterr().err
    unknown = write(tmp_path, 'n_layer = 2\n', "unknown.toml")
    assert main(["seq2seq", "train", "--config", unknown]) == 2
    assert "unknown setting 'n_layer'" in capsys.readouterr().err


def test_memory_precheck_refuses_a_run_that_cannot_fit(tmp_path, capsys, monkeypatch):
    from npgpt import resources

    monkeypatch.delenv("NPGPT_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(resources, "available_memory", lambda: 200 * 2**20)
    out = str(tmp_path / "run")
    assert main(["seq2seq", "train", "--task", "copy", "--max-len", "4", *TINY, "--n-embd", "1024", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the 200.0 MB available" in err, err
    assert not os.path.exists(out)  # refused before anything was written
    # a resumed run is checked too, before its model is allocated
    monkeypatch.setattr(resources, "available_memory", lambda: None)  # unknown: no check
    assert main(["seq2seq", "train", "--task", "copy", "--max-len", "4", *TINY, "--max-iters", "2", "--out", out]) == 0
    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)
    capsys.readouterr()
    assert main(["seq2seq", "train", "--resume", out, "--max-iters", "4"]) == 2
    assert "more than the 1.0 MB available" in capsys.readouterr().err


def test_translate_and_eval_read_the_best_snapshot(tmp_path, monkeypatch):
    """Evaluations at 0, 2, 4 score 3.0, 1.0, 2.0: the best snapshot is iteration 2's, the latest 4's."""
    from npgpt import train
    from npgpt.seq2seq_cli import load_seq2seq

    def scripted(values):
        values = iter(values)

        def evaluate(self):
            self.eval_metrics = {"val_loss": next(values)}
            return self.eval_metrics["val_loss"]
        return evaluate

    monkeypatch.setattr(train.Trainer, "evaluate", scripted([3.0, 1.0, 2.0]))
    out = str(tmp_path / "out")
    assert main(["seq2seq", "train", "--task", "reverse", "--max-len", "4", "--n-symbols", "5", *TINY,
                 "--eval-interval", "2", "--max-iters", "4", "--out", out]) == 0
    assert load_seq2seq(out)[2]["iter"] == 2
    assert load_seq2seq(out, which="latest")[2]["iter"] == 4
