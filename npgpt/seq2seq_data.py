"""Sequence pairs for the encoder-decoder: synthetic tasks, pairs files, tokenizers, batches.

    pairs = synthetic_pairs("reverse", 1000, rng)            # [("4821", "1284"), ...]
    pairs = load_pairs("train.tsv")                          # one `source<TAB>target` per line
    tok = build_pair_tokenizer("char", pairs)                # shared char vocabulary + PAD, BOS, EOS
    src, tgt_in, targets = make_batch(encoded_pairs, tok)    # (B, S), (B, T), (B, T) padded with PAD

Ids 0, 1, 2 are PAD, BOS and EOS in every vocabulary; the wrapped
tokenizer's ids follow from 3.  The decoder reads tgt_in = BOS + target
and learns targets = target + EOS (teacher forcing); PAD in targets counts
for nothing in the loss.

Pairs files.  UTF-8, one pair per line, the source and target separated by
a tab.  Blank lines are skipped.  A line with more than one tab keeps its
first two fields (Tatoeba/Anki exports carry a third, attribution column).
Each bad file gets one line naming the problem and the line number: no
tab, an empty side, bytes that are not UTF-8, a NUL byte.  A pair longer
than the model's block_size (source tokens > block_size, or target
tokens + 1 > block_size) is refused with a line naming it and the
--block-size it would need; training accepts --skip-long to drop such
pairs instead and reports how many it dropped.  Nothing is truncated: a
cut target would teach the model wrong outputs.
"""
import os
import zlib

import numpy as np

from .errors import UserError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
TASKS = ("copy", "reverse", "sort", "add")
SYMBOLS = "abcdefghijklmnopqrstuvwxyz"  # copy, reverse and sort draw from the first `n_symbols` of these


# ------------------------------------------------------------------ synthetic tasks
def task_pair(task, rng, min_len=1, max_len=10, n_symbols=10, digits=3):
    """One (source, target) pair of a synthetic task.

    copy: "cbad" -> "cbad"; reverse: "cbad" -> "dabc"; sort: "cbad" -> "abcd";
    add: "123+45" -> "168", each operand of 1..digits digits.
    """
    if task == "add":
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, digits + 1)))) for _ in range(2))
        return f"{a}+{b}", str(a + b)
    n = int(rng.integers(min_len, max_len + 1))
    s = "".join(SYMBOLS[i] for i in rng.integers(0, n_symbols, size=n))
    if task == "copy":
        return s, s
    if task == "reverse":
        return s, s[::-1]
    if task == "sort":
        return s, "".join(sorted(s))
    raise UserError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")


def is_held_out(source, fraction_in_ten=1):
    """True for about a tenth of all possible sources, fixed by a hash: these are never trained on.

    So a synthetic task's validation examples are held out for real, even
    when training draws fresh examples every step.
    """
    return zlib.crc32(source.encode("utf-8")) % 10 < fraction_in_ten


def synthetic_pairs(task, n, rng, held_out=False, **task_options):
    """n pairs of task, all from the held-out part (held_out=True) or all from the training part."""
    pairs = []
    while len(pairs) < n:
        source, target = task_pair(task, rng, **task_options)
        if is_held_out(source) == held_out:
            pairs.append((source, target))
    return pairs


def task_alphabet(task, n_symbols=10):
    """Every character a task's pairs can hold: the char vocabulary, known before any pair is drawn."""
    return "0123456789+" if task == "add" else SYMBOLS[:n_symbols]


# ------------------------------------------------------------------ pairs files
def load_pairs(path):
    """A `source<TAB>target` file -> [(source, target), ...]; UserError naming the first bad line."""
    if not os.path.exists(path):
        raise UserError(f"pairs file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"pairs path is not a regular file: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read pairs file {path}: {e.strerror or type(e).__name__}") from None
    if b"\x00" in raw:
        raise UserError(f"pairs file looks binary (it contains NUL bytes), not UTF-8 text: {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 (invalid byte 0x{raw[e.start]:02x})") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    pairs = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{path}: line {number} has no tab; each line must be source<TAB>target")
        source, target = fields[0], fields[1]
        for side, value in (("source", source), ("target", target)):
            if not value.strip():
                raise UserError(f"{path}: line {number} has an empty {side}")
        pairs.append((source, target))
    if not pairs:
        raise UserError(f"pairs file is empty: {path}")
    return pairs


def split_pairs(pairs, val_fraction=0.1, seed=0):
    """(train, val): a seeded tenth of the pairs validates (a file may be sorted, so not its tail)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * val_fraction))) if len(pairs) > 1 else 0
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]
    return train, val


# ------------------------------------------------------------------ tokenizers
class SpecialsTokenizer:
    """A char or BPE tokenizer with PAD, BOS, EOS in front: ids 0..2 specials, then the inner ids + 3."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def vocab_size(self):
        return self.inner.vocab_size + len(SPECIALS)

    def encode(self, text):
        return [i + len(SPECIALS) for i in self.inner.encode(text)]

    def decode(self, ids):
        """ids -> text; special ids are dropped."""
        return self.inner.decode([int(i) - len(SPECIALS) for i in ids if int(i) >= len(SPECIALS)])

    def to_dict(self):
        return self.inner.to_dict()


class WordTokenizer:
    """text <-> ids, one id per whitespace-separated token (a phoneme, a word); ids follow the sorted vocabulary.

    For targets that are already tokens, such as ARPAbet phonemes "K AE1 T":
    a character tokenizer would spend three or four positions on each.
    decode joins the tokens with single spaces.
    """

    def __init__(self, words):
        words = list(words)
        if not words:
            raise ValueError("a word vocabulary needs at least one word")
        if len(set(words)) != len(words) or any(not isinstance(w, str) or not w or w != "".join(w.split())
                                                 for w in words):
            raise ValueError("a word vocabulary must be distinct, non-empty strings without whitespace")
        self.words = words
        self.stoi = {w: i for i, w in enumerate(words)}

    @property
    def vocab_size(self):
        return len(self.words)

    def encode(self, text):
        """str -> list[int]; words outside the vocabulary raise ValueError naming them."""
        tokens = text.split()
        unknown = sorted(set(tokens) - self.stoi.keys())
        if unknown:
            shown = ", ".join(repr(w) for w in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise ValueError(f"{len(unknown)} word(s) not in the model's {self.vocab_size}-word vocabulary: {shown}")
        return [self.stoi[w] for w in tokens]

    def decode(self, ids):
        return " ".join(self.words[int(i)] for i in ids)

    def to_dict(self):
        return {"type": "words", "words": list(self.words)}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("type") != "words" or not isinstance(d.get("words"), list):
            raise ValueError("not a saved word tokenizer (expected {'type': 'words', 'words': [str, ...]})")
        return cls(d["words"])


def _tokenizer_from_dict(d):
    """A saved char, BPE or word tokenizer."""
    from .tokenizers import from_dict

    if isinstance(d, dict) and d.get("type") == "words":
        return WordTokenizer.from_dict(d)
    return from_dict(d)


class PairTokenizer:
    """The source and target tokenizers of a seq2seq model (one object when shared).

    Saved in a checkpoint's tokenizer.json as {"type": "seq2seq", "shared": bool,
    "source": ..., "target": ...} (each side a char or BPE tokenizer's to_dict).
    """

    def __init__(self, source, target=None):
        self.source = source if isinstance(source, SpecialsTokenizer) else SpecialsTokenizer(source)
        if target is None:
            self.target = self.source
        else:
            self.target = target if isinstance(target, SpecialsTokenizer) else SpecialsTokenizer(target)

    @property
    def shared(self):
        return self.target is self.source

    @property
    def vocab_size(self):
        """The target vocabulary (the output layer's size)."""
        return self.target.vocab_size

    def to_dict(self):
        return {"type": "seq2seq", "shared": self.shared, "source": self.source.to_dict(),
                "target": self.target.to_dict()}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("type") != "seq2seq":
            raise ValueError("not a seq2seq tokenizer (expected {'type': 'seq2seq', ...})")
        source = _tokenizer_from_dict(d.get("source"))
        return cls(source, None if d.get("shared") else _tokenizer_from_dict(d.get("target")))


def build_pair_tokenizer(kind, pairs, shared=True, vocab_size=None, alphabet=None, target_kind=None):
    """A PairTokenizer fitted to pairs: kind "char", "bpe" (vocab_size = merges' target size) or "words"
    (whitespace-separated tokens).

    target_kind: the target side's kind when it differs from the source's
    (e.g. char sources, word targets); the vocabularies are then separate.
    alphabet: for char tokenizers of synthetic tasks, the full character set
    (so a held-out example never meets an unknown character).
    """
    from .tokenizers.char import CharTokenizer

    target_kind = target_kind or kind
    if target_kind != kind and shared:
        raise UserError(f"a {kind} source and a {target_kind} target cannot share a vocabulary (pass --separate-vocab)")

    def fit(texts, kind=kind):
        if kind == "words":
            return WordTokenizer(sorted({w for t in texts for w in t.split()}))
        text = "\n".join(texts)
        if kind == "char":
            return CharTokenizer(sorted(set(alphabet or "") | set(text)))
        if kind == "bpe":
            from .tokenizers.bpe import BPETokenizer

            if vocab_size is None:
                raise UserError("--tokenizer bpe needs --vocab-size N (at least 256)")
            return BPETokenizer.train(text, vocab_size, special_tokens=())
        raise UserError(f"unknown tokenizer {kind!r} (expected 'char', 'bpe' or 'words')")

    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if shared:
        return PairTokenizer(fit(sources + targets))
    return PairTokenizer(fit(sources), fit(targets, target_kind))


# ------------------------------------------------------------------ encoding and batches
def encode_pairs(pairs, tokenizer, block_size, skip_long=False, where="data"):
    """[(source, target)] -> ([(source ids, target ids)], number dropped for length).

    A pair fits when len(source ids) <= block_size and len(target ids) + 1
    <= block_size (the decoder reads BOS + target).  Too long: UserError,
    or dropped with skip_long.
    """
    encoded, dropped = [], 0
    for source, target in pairs:
        try:
            s, t = tokenizer.source.encode(source), tokenizer.target.encode(target)
        except ValueError as e:
            raise UserError(f"{where}: the pair {source[:30]!r} -> {target[:30]!r} cannot be encoded: {e}") from None
        need = max(len(s), len(t) + 1)
        if need > block_size:
            if skip_long:
                dropped += 1
                continue
            shown = source if len(source) <= 30 else source[:30] + "..."
            raise UserError(f"{where}: the pair with source {shown!r} needs {need} positions (source {len(s)} tokens, target "
                            f"{len(t)} + 1), more than block_size {block_size}; raise --block-size to {need} "
                            f"or pass --skip-long to drop such pairs")
        encoded.append((s, t))
    if not encoded:
        raise UserError(f"{where}: no pair fits block_size {block_size}")
    return encoded, dropped


def make_batch(encoded, pad_id=PAD, bos_id=BOS, eos_id=EOS):
    """[(source ids, target ids)] -> src (B, S), tgt_in (B, T), targets (B, T), int64, right-padded.

    tgt_in = BOS + target, targets = target + EOS: position t learns the token after tgt_in[:t + 1].
    """
    B = len(encoded)
    S = max(len(s) for s, _ in encoded)
    T = max(len(t) for _, t in encoded) + 1
    src = np.full((B, S), pad_id, dtype=np.int64)
    tgt_in = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), pad_id, dtype=np.int64)
    for b, (s, t) in enumerate(encoded):
        src[b, :len(s)] = s
        tgt_in[b, :len(t) + 1] = [bos_id, *t]
        targets[b, :len(t) + 1] = [*t, eos_id]
    return src, tgt_in, targets
