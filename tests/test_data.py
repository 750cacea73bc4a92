"""Corpora, the char tokenizer, the split and the batches."""
import numpy as np
import pytest

from npgpt import data
from npgpt.errors import UserError
from npgpt.tokenizers import from_dict
from npgpt.tokenizers.char import CharTokenizer, UnknownCharactersError


def test_char_tokenizer_vocabulary_is_sorted_characters_and_round_trips():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    assert from_dict(tok.to_dict()).chars == tok.chars


def test_char_tokenizer_names_unknown_characters():
    tok = CharTokenizer.train("abc")
    with pytest.raises(UnknownCharactersError, match=r"'x', 'é'"):
        tok.encode("abxcé")


def test_bundled_corpus_is_tiny_shakespeare():
    text = data.load_text(None)
    assert len(text.encode("utf-8")) == 1_115_394
    assert text.startswith("First Citizen:")
    assert CharTokenizer.train(text).vocab_size == 65


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"abc\x00def", "binary"),
    (b"caf\xe9 au lait", "not UTF-8"),
])
def test_load_text_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.load_text(str(path))


def test_load_text_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="directory"):
        data.load_text(str(tmp_path))


def test_split_is_90_10_and_tokens_are_compact():
    text = "abcdefghij" * 10
    train, val = data.split_text(text)
    assert (len(train), len(val)) == (90, 10) and train + val == text
    corpus = data.make_corpus(text, CharTokenizer.train(text))
    assert corpus.train.dtype == np.uint16 and corpus.val.dtype == np.uint16
    assert data.token_dtype(65536) == np.uint16 and data.token_dtype(65537) == np.uint32


def test_batches_are_shifted_windows_and_reproducible():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = data.get_batch(tokens, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # consecutive ids: targets are the next token
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows
    x2, _ = data.get_batch(tokens, 8, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    # every window fits: the last possible start is N - T - 1
    starts = np.concatenate([data.get_batch(tokens, 64, 16, np.random.default_rng(s))[0][:, 0] for s in range(20)])
    assert starts.min() >= 0 and starts.max() <= 1000 - 16 - 1


def test_sequential_batches_predict_every_token_once():
    tokens = np.arange(50, dtype=np.uint16)
    targets = np.concatenate([y.ravel() for _, y in data.sequential_batches(tokens, 2, 8)])
    np.testing.assert_array_equal(targets, np.arange(1, 50))


def test_too_short_corpus_is_reported():
    with pytest.raises(UserError, match="fewer than block_size"):
        data.check_long_enough(np.arange(10), 10, "training split")
    data.check_long_enough(np.arange(11), 10, "training split")


def test_bpe_corpus_with_endoftext_separators_encodes_them_as_the_special_token():
    from npgpt.data import encode
    from npgpt.tokenizers.bpe import BPETokenizer

    text = "first document here<|endoftext|>second document there<|endoftext|>" * 20
    tok = BPETokenizer.train(text, 270)
    ids = encode(text, tok).tolist()
    eot = tok.special_tokens["<|endoftext|>"]
    assert ids.count(eot) == 40
    assert tok.decode(ids) == text
