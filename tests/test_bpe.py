"""Byte-level BPE: tiktoken is the oracle for encoding, GPT-2's loader for files."""
import importlib.resources
import json

import numpy as np
import pytest
import tiktoken
import tiktoken.load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npgpt.tokenizers
import npgpt.train  # noqa: F401  imported here, not first inside a capsys test: Trainer binds sys.stdout at import
from npgpt.cli import main
from npgpt.errors import UserError
from npgpt.tokenizers.bpe import (BYTE_ID, BYTE_ORDER, ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer, bpe,
                                  SpecialTokenError, bytes_to_unicode, learn_merges, merge, pair_counts)

CORPUS = importlib.resources.files("npgpt").joinpath("corpora", "tinyshakespeare.txt").read_text("utf-8")
# Shakespeare is ASCII: add some multi-byte text so that merges inside UTF-8 sequences get learned too.
UNICODE_SAMPLE = "naïve café façade déjà vu — 東京は日本の首都です。 Привет, мир! 😀😀 🎉🎉 👍🏽 ½ ① ٣٤ 1234567 \t\t  \n\n"
TRAIN_TEXT = CORPUS[:60_000] + UNICODE_SAMPLE * 30


def ids_of(s):
    """The single-byte ids of an ASCII string: ids_of("ab") -> [64, 65]."""
    return [BYTE_ID[b] for b in s.encode()]


def oracle(tok):
    return tiktoken.Encoding(name="npgpt-test", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(),
                             special_tokens=tok.special_tokens)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TRAIN_TEXT, 700, special_tokens=(ENDOFTEXT, "<|pad|>"))


@pytest.fixture(scope="module")
def enc(tok):
    return oracle(tok)


# ---- the helpers, by hand ----------------------------------------------------

def test_byte_order_and_file_alphabet_are_gpt2s():
    assert BYTE_ORDER[:3] == [ord("!"), ord('"'), ord("#")]
    assert BYTE_ID[ord(" ")] == 220 and BYTE_ID[ord("\n")] == 198 and BYTE_ID[0] == 188  # "Ġ", "Ċ", "Ā" in GPT-2
    assert sorted(BYTE_ORDER) == list(range(256))
    chars = bytes_to_unicode()
    assert (chars[ord(" ")], chars[0], chars[255]) == ("Ġ", "Ā", "ÿ")
    assert len(set(chars.values())) == 256 and all(c.isprintable() and not c.isspace() for c in chars.values())


def test_merge_and_pair_counts():
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([5, 5, 5, 5], (5, 5), 6) == [6, 6]
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5]
    assert merge([], (1, 2), 3) == []
    assert pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert pair_counts([7, 7, 7], weight=3) == {(7, 7): 6}


def test_bpe_merges_lowest_rank_first_and_leftmost_on_ties():
    ranks = {b"a": 0, b"b": 1, b"aa": 2, b"ab": 3}
    assert bpe(b"aaab", ranks) == [2, 3]        # aa before ab: [aa, a, b] -> [aa, ab]
    assert bpe(b"aaa", ranks) == [2, 0]         # leftmost aa wins
    assert bpe(b"ba", ranks) == [1, 0]          # "ba" is not a token
    ranks[b"aab"] = 4
    assert bpe(b"aab", ranks) == [4]            # aa, then aa+b


# ---- training ----------------------------------------------------------------

def test_aaabdaaabac_by_hand():
    """The classic example: aa -> Z, ab -> Y, ZY -> X, so aaabdaaabac -> XdXac."""
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3 + 1)
    a, b, c, d = ids_of("abcd")
    assert tok.merges == [(a, a), (a, b), (256, 257)]
    assert tok.decode([256, 257, 258]) == "aaabaaab"
    assert tok.encode("aaabdaaabac") == [258, d, 258, a, c]
    assert tok.special_tokens == {ENDOFTEXT: 259} and tok.vocab_size == 260


def test_merges_never_cross_split_chunks():
    tok = BPETokenizer.train("ab ab ab", 256 + 2 + 0, special_tokens=())
    # chunks: "ab", " ab", " ab": (a,b) occurs 3 times, then (" ", ab) twice; "b " is never a pair
    a, b = ids_of("ab")
    assert tok.merges == [(a, b), (BYTE_ID[ord(" ")], 256)]
    assert tok.encode("ab ab") == [256, 257]


def test_special_tokens_in_training_text_are_cut_out():
    tok = BPETokenizer.train("xy<|endoftext|>xy<|endoftext|>", 256 + 1 + 1)
    x, y = ids_of("xy")
    assert tok.merges[0] == (x, y)
    assert all(b"|" not in token or len(token) == 1 for token in tok.mergeable_ranks())


def naive_learn_merges(chunk_counts, num_merges):
    """Reference: recount every pair from scratch at every step."""
    chunks = {tuple(c): n for c, n in chunk_counts.items()}
    vocab = {i: bytes([b]) for i, b in enumerate(BYTE_ORDER)}
    merges = []
    while len(merges) < num_merges:
        counts = {}
        for ids, n in chunks.items():
            pair_counts(ids, n, counts)
        candidates = [p for p in counts if vocab[p[0]] + vocab[p[1]] not in vocab.values()]
        if not candidates:
            break
        pair = min(candidates, key=lambda p: (-counts[p], p))
        vocab[len(vocab)] = vocab[pair[0]] + vocab[pair[1]]
        merges.append(pair)
        new = {}
        for ids, n in chunks.items():
            key = tuple(merge(list(ids), pair, len(vocab) - 1))
            new[key] = new.get(key, 0) + n
        chunks = new
    return merges


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="aabbc \n'1é😀", max_size=80), st.integers(0, 40))
def test_incremental_counts_equal_a_full_recount(text, num_merges):
    chunk_counts = BPETokenizer._count_chunks(text, (), GPT2_SPLIT_PATTERN)
    assert learn_merges(chunk_counts, num_merges) == naive_learn_merges(chunk_counts, num_merges)


def test_incremental_counts_equal_a_full_recount_on_shakespeare():
    chunk_counts = BPETokenizer._count_chunks(CORPUS[:3000], (), GPT2_SPLIT_PATTERN)
    assert learn_merges(chunk_counts, 60) == naive_learn_merges(chunk_counts, 60)


def test_trained_vocabulary_shape(tok):
    ranks = tok.mergeable_ranks()
    assert sorted(ranks.values()) == list(range(256 + len(tok.merges)))  # dense, one id per byte string
    assert tok.vocab_size == 700 and len(tok.merges) == 700 - 256 - 2
    assert tok.special_tokens == {ENDOFTEXT: 698, "<|pad|>": 699}
    assert any(len(t.decode("utf-8", "ignore")) < len(t) for t in ranks)  # some merges live inside UTF-8 characters


def test_training_is_deterministic():
    assert BPETokenizer.train(CORPUS[:5000], 300).merges == BPETokenizer.train(CORPUS[:5000], 300).merges


# ---- encoding: tiktoken is the oracle --------------------------------------

PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "don't", "the", " the", "The", "  ", "   ", "\n", "\n\n",
          "\r\n", "\t", " \t ", "\u00a0", "\u3000", "1", "42", " 2024", "3.14", "½", "٣", "😀", "👍🏽", "🇫🇷", "é", "e\u0301",
          "日本語", "Привет", "!!", "?!", " ...", "--", "<|", "|>", "endoftext", "a", "b", "ab", "ba", "aaaa", "ing"]
texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)), max_size=30).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_encode_equals_tiktoken(tok, enc, s):
    assert tok.encode(s) == enc.encode(s)


with_specials = st.lists(st.one_of(st.sampled_from(PIECES + [ENDOFTEXT, "<|pad|>", "<|endoftext", "|>"]),
                                   st.text(max_size=3)), max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(with_specials)
def test_special_token_handling_equals_tiktoken(tok, enc, s):
    for kwargs in ({"allowed_special": "all"}, {"disallowed_special": ()},
                   {"allowed_special": {"<|pad|>"}, "disallowed_special": ()}):
        assert tok.encode(s, **kwargs) == enc.encode(s, **kwargs)
    assert tok.decode(tok.encode(s, allowed_special="all")) == s


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=30))
def test_lone_surrogates_are_replaced_like_tiktoken(tok, enc, s):
    assert tok.encode(s) == enc.encode(s)


@pytest.mark.parametrize("s", ["", " ", "a" * 5000, " " * 3000 + "x", "=" * 4000, "😀" * 500, "ab" * 2000 + "\n" * 999])
def test_long_runs_equal_tiktoken(tok, enc, s):
    assert tok.encode(s) == enc.encode(s)


def test_whole_corpus_equals_tiktoken(tok, enc):
    ids = tok.encode(CORPUS)
    assert ids == enc.encode(CORPUS)
    assert tok.decode(ids) == CORPUS
    assert len(ids) < 0.55 * len(CORPUS)  # the merges compress (about 2 bytes per token here)


def test_the_cache_does_not_change_results(tok):
    fresh = BPETokenizer.from_dict(tok.to_dict())
    text = CORPUS[:20000]
    assert fresh.encode(text) == tok.encode(text) == fresh.encode(text)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_decode_inverts_encode(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert all(0 <= i < tok.vocab_size for i in ids)


# ---- special tokens: tiktoken's rules ---------------------------------------

def test_special_tokens_are_refused_by_default(tok, enc):
    text = "the end<|endoftext|>a new start"
    with pytest.raises(SpecialTokenError, match=r"special token '<\|endoftext\|>'.*allowed_special") as refused:
        tok.encode(text)
    assert (refused.value.token, refused.value.position) == (ENDOFTEXT, 7)
    assert isinstance(refused.value, UserError)
    with pytest.raises(ValueError):  # tiktoken refuses it too
        enc.encode(text)


def test_allowed_special_tokens_get_their_ids(tok, enc):
    text = "the end<|endoftext|>a<|pad|><|pad|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids == enc.encode(text, allowed_special="all")
    assert ids[-4:] == [698, *ids_of("a"), 699, 699] and ids.count(698) == 1
    assert tok.decode(ids) == text
    only_eot = tok.encode(text, allowed_special={ENDOFTEXT}, disallowed_special=())
    assert only_eot == enc.encode(text, allowed_special={ENDOFTEXT}, disallowed_special=())
    assert 698 in only_eot and 699 not in only_eot
    with pytest.raises(UserError, match="<|pad|>"):  # <|pad|> is neither allowed nor exempted
        tok.encode(text, allowed_special={ENDOFTEXT})


def test_special_tokens_as_ordinary_text(tok, enc):
    text = "x<|endoftext|>y"
    ids = tok.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=()) == tok.encode_ordinary(text)
    assert 698 not in ids and tok.decode(ids) == text


def test_unknown_special_names_are_refused(tok):
    with pytest.raises(UserError, match="not special tokens"):
        tok.encode("hi", allowed_special={"<|nope|>"})


# ---- files -------------------------------------------------------------------

def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.mergeable_ranks() == tok.mergeable_ranks() and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(CORPUS[:5000]) == tok.encode(CORPUS[:5000])
    d = json.loads(path.read_text("utf-8"))  # plain JSON, merges readable in GPT-2's notation
    assert d["type"] == "bpe" and d["merges"][0].count(" ") == 1 and d["vocab_size"] == 700
    assert "\n  \"Ġ t\",\n" in path.read_text("utf-8")


def test_to_dict_round_trip_through_the_interface(tok):
    d = json.loads(json.dumps(tok.to_dict()))  # what a checkpoint stores
    again = npgpt.tokenizers.from_dict(d)
    assert isinstance(again, BPETokenizer) and again.mergeable_ranks() == tok.mergeable_ranks()
    assert again.vocab_size == tok.vocab_size


def test_gpt2_files_read_by_tiktoken_give_the_same_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no caching by path
    tok = BPETokenizer.train(TRAIN_TEXT[:20000] + UNICODE_SAMPLE, 400)
    tok.save_gpt2(tmp_path)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(tmp_path / "vocab.bpe"), str(tmp_path / "encoder.json"))
    assert ranks == tok.mergeable_ranks()
    encoder = json.loads((tmp_path / "encoder.json").read_text("utf-8"))
    assert encoder["!"] == 0 and encoder["Ġ"] == 220 and encoder[ENDOFTEXT] == 399
    assert (tmp_path / "vocab.bpe").read_text("utf-8").startswith("#version: 0.2\n")


def test_gpt2_files_round_trip(tok, tmp_path):
    tok.save_gpt2(tmp_path)
    again = BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    assert again.mergeable_ranks() == tok.mergeable_ranks()
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens
    text = "<|pad|>" + CORPUS[:3000] + UNICODE_SAMPLE + ENDOFTEXT
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_hand_written_gpt2_files(tmp_path):
    """Files in GPT-2's format, written by hand: Ġ is the space byte."""
    encoder = {bytes_to_unicode()[BYTE_ORDER[i]]: i for i in range(256)}
    encoder.update({"Ġt": 256, "he": 257, "Ġthe": 258, ENDOFTEXT: 259})
    (tmp_path / "vocab.json").write_text(json.dumps(encoder), "utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n", "utf-8")
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert tok.encode(" the then") == [258, 258, BYTE_ID[ord("n")]]
    assert tok.special_tokens == {ENDOFTEXT: 259} and tok.vocab_size == 260


# ---- bad input -----------------------------------------------------------------

@pytest.mark.parametrize("vocab_size", [0, 255, 256, 256.0 + 1, "300", True])
def test_vocab_size_too_small_or_not_an_int(vocab_size):
    with pytest.raises(UserError, match="vocab_size must be an integer of at least 257"):
        BPETokenizer.train("hello", vocab_size)


def test_smallest_vocab_has_no_merges():
    tok = BPETokenizer.train("hello", 257)
    assert tok.merges == [] and tok.encode("hello") == ids_of("hello")
    assert BPETokenizer.train("hello", 256, special_tokens=()).vocab_size == 256


def test_empty_text_is_refused():
    with pytest.raises(UserError, match="empty text"):
        BPETokenizer.train("", 300)


def test_text_too_small_for_the_vocab_names_the_limit():
    with pytest.raises(UserError, match=r"allows only 2 merges, so at most vocab_size 259"):
        BPETokenizer.train("abc", 300)


@pytest.mark.parametrize("specials", [("",), ("<|a|>", "<|a|>"), (3,)])
def test_bad_special_tokens(specials):
    with pytest.raises(UserError, match="special token"):
        BPETokenizer.train("hello", 300, special_tokens=specials)


@pytest.mark.parametrize("content, message", [
    ("", "invalid JSON"),
    ('{"type": "bpe", "version": 1, "merges": [', "invalid JSON"),
    ("[1, 2]", "not a saved BPE tokenizer"),
    ('{"type": "char", "chars": "ab"}', "not a saved BPE tokenizer"),
    ('{"type": "bpe", "version": 7}', "format version"),
    ('{"type": "bpe", "version": 1, "merges": {}, "special_tokens": {}, "pattern": "x"}', "needs \"merges\""),
    ('{"type": "bpe", "version": 1, "merges": ["a"], "special_tokens": {}, "pattern": "x"}', "merge 1"),
    ('{"type": "bpe", "version": 1, "merges": ["a b", "ab c", "x yz"], "special_tokens": {}, "pattern": "x"}',
     "merge 3 .* uses a token"),
    ('{"type": "bpe", "version": 1, "merges": ["a b", "a b"], "special_tokens": {}, "pattern": "x"}',
     "already exists"),
    ('{"type": "bpe", "version": 1, "merges": ["a b"], "special_tokens": {"<|e|>": 5}, "pattern": "x"}', "ids below 257"),
    ('{"type": "bpe", "version": 1, "merges": [], "special_tokens": {}, "pattern": "(("}', "invalid split pattern"),
    ('{"type": "bpe", "version": 1, "vocab_size": 9, "merges": [], "special_tokens": {}, "pattern": "(?s)."}', "says vocab_size 9"),
])
def test_corrupt_tokenizer_files(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content, "utf-8")
    with pytest.raises(UserError, match=message):
        BPETokenizer.load(path)


def test_missing_or_binary_tokenizer_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        BPETokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not a tokenizer file"):
        BPETokenizer.load(tmp_path / "bin.json")


def test_gpt2_files_that_disagree(tok, tmp_path):
    tok.save_gpt2(tmp_path)
    encoder = json.loads((tmp_path / "encoder.json").read_text("utf-8"))
    encoder["Ġt"], encoder["he"] = encoder["he"], encoder["Ġt"]
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), "utf-8")
    with pytest.raises(UserError, match="follow the merge order"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠt he extra\n", "utf-8")
    with pytest.raises(UserError, match="merge 1"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    with pytest.raises(UserError, match="not found"):
        BPETokenizer.from_gpt2_files(tmp_path / "missing.json", tmp_path / "vocab.bpe")


def test_decode_unknown_id(tok):
    with pytest.raises(UserError, match="unknown token id 700"):
        tok.decode([1, 700])
    with pytest.raises(UserError, match="unknown token id -1"):
        tok.decode([-1])
    with pytest.raises(UserError, match=r"unknown token id 5000 \(this tokenizer has ids 0..699\)"):
        tok.decode(np.array([3, 5000]))
    with pytest.raises(UserError, match="unknown token id 'x'"):
        tok.decode([3, "x"])


def test_decode_accepts_numpy_ids(tok):
    ids = tok.encode("To be, or not to be")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == tok.decode(np.array(ids)) == "To be, or not to be"


# ---- command line ------------------------------------------------------------

def test_cli_train_encode_decode(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_text(CORPUS[:20000], "utf-8")
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "-o", str(out),
                 "--gpt2-dir", str(tmp_path / "gpt2")]) == 0
    assert "learned 43 merges" in capsys.readouterr().out
    tok = BPETokenizer.load(out)
    assert main(["tokenizer", "encode", "-t", str(out), "To be, or not"]) == 0
    printed = capsys.readouterr().out.split()
    assert [int(i) for i in printed] == tok.encode("To be, or not")
    assert main(["tokenizer", "decode", "-t", str(tmp_path / "gpt2"), *printed]) == 0
    assert capsys.readouterr().out == "To be, or not"
    assert main(["tokenizer", "encode", "-t", str(out), "--tokens", "the end"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == tok.encode("the end")
    assert "".join(eval(line.split(" ", 1)[1]) for line in lines) == "the end"  # each line: id 'token'


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["tokenizer", "train", "--data", str(tmp_path / "none.txt"), "--vocab-size", "300"]) == 2
    assert capsys.readouterr().err.strip() == f"npgpt: error: file not found: {tmp_path / 'none.txt'}"
    out = tmp_path / "tok.json"
    BPETokenizer.train("hello hello", 258).save(out)
    assert main(["tokenizer", "encode", "-t", str(out), "a<|endoftext|>"]) == 2
    assert "--allow-special" in capsys.readouterr().err
    assert main(["tokenizer", "encode", "-t", str(out), "--allow-special", "a<|endoftext|>"]) == 0
    assert capsys.readouterr().out.split() == [str(BYTE_ID[ord("a")]), "257"]
    assert main(["tokenizer", "decode", "-t", str(out), "1", "x"]) == 2
    assert "not a token id: 'x'" in capsys.readouterr().err


# ---- npgpt train --tokenizer bpe ---------------------------------------------

def test_npgpt_train_with_a_bpe_tokenizer(tmp_path, capsys):
    """A tiny model on BPE tokens: the tokenizer is learned on the training split,
    saved in the checkpoint, and sampling decodes with it."""
    from npgpt import checkpoint, data

    text = CORPUS[:20000]
    (tmp_path / "corpus.txt").write_text(text, "utf-8")
    out = tmp_path / "out"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
            "--eval-iters", "2", "--eval-interval", "3", "--warmup-iters", "1", "--backend", "numpy",
            "--sample-tokens", "0", "--no-progress", "--max-iters", "6"]
    assert main(["train", *tiny, "--data", str(tmp_path / "corpus.txt"), "--out", str(out),
                 "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    model, tok, ckpt = checkpoint.load_model(str(out))
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == model.config.vocab_size == 300
    assert ckpt.tokenizer["type"] == "bpe"
    assert tok.merges == BPETokenizer.train(data.split_text(text)[0], 300).merges  # training split only
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--prompt", "First", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert "First" in capsys.readouterr().out
