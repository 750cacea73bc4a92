"""Corpora, train/val split and random training windows.

    >>> text = load_text(None)                        # the bundled Tiny Shakespeare
    >>> tok = build_tokenizer("char", text)
    >>> corpus = make_corpus(text, tok)               # corpus.train, corpus.val: 1-D uint16
    >>> x, y = get_batch(corpus.train, 12, 64, rng=0) # rng: a Generator, an int seed or None
    >>> x.shape, y.shape, bool((x[:, 1:] == y[:, :-1]).all())   # y is x shifted by one
    ((12, 64), (12, 64), True)

Token arrays are compact (uint16 while the vocabulary fits, uint32 beyond),
so a corpus costs 2 bytes per token in memory.
"""
import importlib.resources
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .seeding import as_generator

BUNDLED = "tinyshakespeare"  # the name `--data` is shown as when no path is given
VAL_FRACTION = 0.1


def load_text(path=None):
    """The bundled Tiny Shakespeare when path is None, else the UTF-8 text at `path`.

    Raises UserError for a missing, unreadable, empty, binary or
    non-UTF-8 file, naming the file and the problem.
    """
    if path is None:
        return importlib.resources.files("npgpt").joinpath("corpora", "tinyshakespeare.txt").read_text("utf-8")
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"data path is a directory, not a text file: {path}")
    if not os.path.isfile(path):  # /dev/zero, a FIFO, a socket: would read forever or block
        raise UserError(f"data path is not a regular file (a device, pipe or socket): {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror or type(e).__name__}") from None
    except MemoryError:
        raise UserError(f"data file is too large to read into memory: {path}") from None
    if not raw.strip():
        raise UserError(f"data file is empty: {path}")
    if b"\x00" in raw:  # text never holds NUL bytes; binary files almost always do
        raise UserError(f"data file looks binary (it contains NUL bytes), not UTF-8 text: {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}): {path}") from None


def split_text(text, val_fraction=VAL_FRACTION):
    """text -> (train_text, val_text): the first 90% trains, the last 10% validates."""
    n = int(len(text) * (1.0 - val_fraction))
    return text[:n], text[n:]


def build_tokenizer(kind, text, vocab_size=None):
    """A tokenizer fitted to the corpus.

    char: the vocabulary is every character of the whole text (train and
    val), so validation never meets an unknown character.  bpe: merges are
    learned on the training split only, as a real tokenizer must be.
    """
    if kind == "char":
        from .tokenizers.char import CharTokenizer

        return CharTokenizer.train(text)
    if kind == "bpe":
        try:
            from .tokenizers.bpe import BPETokenizer
        except ImportError:
            raise UserError("the BPE tokenizer is not available in this version of npgpt; use the 'char' tokenizer") from None
        if vocab_size is None:
            raise UserError("a 'bpe' tokenizer needs a vocab_size (at least 257: 256 bytes + merges)")
        return BPETokenizer.train(split_text(text)[0], vocab_size)
    raise UserError(f"unknown tokenizer {kind!r} (expected 'char' or 'bpe')")


def token_dtype(vocab_size):
    """The smallest unsigned dtype that holds ids 0..vocab_size-1."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode(text, tokenizer):
    """str -> 1-D compact token array.

    A corpus may separate documents with special tokens such as
    <|endoftext|> (GPT-2's training data does): a tokenizer that has
    special tokens encodes them as such rather than refusing the corpus.
    """
    if getattr(tokenizer, "special_tokens", None):
        ids = tokenizer.encode(text, allowed_special="all")
    else:
        ids = tokenizer.encode(text)
    return np.array(ids, dtype=token_dtype(tokenizer.vocab_size))


@dataclass
class Corpus:
    train: np.ndarray  # (N_train,) token ids
    val: np.ndarray  # (N_val,) token ids
    chars_per_token: float  # len(text) / tokens, for bits per character


def make_corpus(text, tokenizer, val_fraction=VAL_FRACTION):
    """Split the text 90/10 and encode both halves."""
    train_text, val_text = split_text(text, val_fraction)
    train, val = encode(train_text, tokenizer), encode(val_text, tokenizer)
    n_tokens = max(train.size + val.size, 1)
    return Corpus(train, val, len(text) / n_tokens)


def check_long_enough(tokens, block_size, what):
    """A window needs block_size inputs plus one target beyond them."""
    if tokens.size < block_size + 1:
        raise UserError(
            f"the {what} has {tokens.size} tokens, fewer than block_size + 1 = {block_size + 1}; "
            f"use a longer corpus or a smaller block_size"
        )


def get_batch(tokens, batch_size, block_size, rng):
    """Random contiguous windows: tokens (N,) -> x, y (batch_size, block_size) int64.

    Row b is tokens[s_b : s_b + block_size] and its targets are the same
    window shifted by one, for starts s_b drawn uniformly from rng (a
    Generator, an int seed or None for a fresh random one).
    """
    if tokens.size < block_size + 1:
        raise ValueError(f"{tokens.size} tokens are fewer than block_size + 1 = {block_size + 1}")
    starts = as_generator(rng).integers(0, tokens.size - block_size, size=batch_size)  # (B,)
    offsets = starts[:, None] + np.arange(block_size)  # (B, T)
    x = tokens[offsets].astype(np.int64)
    y = tokens[offsets + 1].astype(np.int64)
    return x, y


def sequential_batches(tokens, batch_size, block_size):
    """Every token of `tokens` predicted once, in order: yields (x, y) pairs.

    The split is cut into consecutive windows of block_size targets (the
    last one shorter), so `npgpt eval` is deterministic and covers the
    whole split.  Each window starts with no context, like a random window.
    """
    n_targets = tokens.size - 1
    T = min(block_size, n_targets)
    n_full = n_targets // T
    starts = np.arange(n_full) * T
    for i in range(0, n_full, batch_size):
        s = starts[i : i + batch_size, None] + np.arange(T)  # (b, T)
        yield tokens[s].astype(np.int64), tokens[s + 1].astype(np.int64)
    rest = n_targets - n_full * T
    if rest:
        s = n_full * T + np.arange(rest)[None, :]  # (1, rest)
        yield tokens[s].astype(np.int64), tokens[s + 1].astype(np.int64)
