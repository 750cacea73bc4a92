"""Tokenizers: text <-> integer ids.

Every tokenizer offers the same small interface, so the trainer, the
sampler and checkpoints treat them alike:

    tok.encode(text: str) -> list[int]
    tok.decode(ids: list[int]) -> str
    tok.vocab_size -> int
    tok.to_dict() -> a JSON-serialisable dict with a "type" key
    Tokenizer.from_dict(d) -> the same tokenizer
    tok.save(path) / Tokenizer.load(path) -> a JSON file

`from_dict` below picks the class from d["type"] ("char" or "bpe"), and
`load_tokenizer(path)` reads any saved tokenizer:

    >>> from npgpt.tokenizers import CharTokenizer, BPETokenizer, load_tokenizer
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tok.json")
    >>> CharTokenizer.train("abc").save(path)
    >>> load_tokenizer(path).encode("cab")
    [2, 0, 1]
"""
import os

from .. import safeload
from ..errors import UserError
from .bpe import BPETokenizer
from .char import TOKENIZER_FILE, CharTokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "from_dict", "load_tokenizer"]


def from_dict(d):
    """Rebuild a tokenizer saved with `to_dict()` (e.g. from a checkpoint)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(d)
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")


def load_tokenizer(path):
    """Any saved tokenizer: a JSON file from `tok.save(path)` (char or BPE), a
    directory from `tok.save_pretrained(dir)` (its tokenizer.json), or a
    directory of GPT-2 / Hugging Face BPE files (encoder.json + vocab.bpe or
    vocab.json + merges.txt).  UserError naming the path otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, TOKENIZER_FILE)
        if os.path.isfile(inside):
            return load_tokenizer(inside)
        for encoder, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            if os.path.isfile(os.path.join(path, encoder)) and os.path.isfile(os.path.join(path, merges)):
                return BPETokenizer.from_gpt2_files(os.path.join(path, encoder), os.path.join(path, merges))
        raise UserError(f"{path} holds no tokenizer.json, encoder.json + vocab.bpe or vocab.json + merges.txt")
    if not os.path.isfile(path):
        raise UserError(f"tokenizer file not found: {path}")
    d = safeload.load_json(path, safeload.Obj({"type": safeload.OneOf("char", "bpe")}), what=str(path))
    if d["type"] == "char":
        return CharTokenizer.load(path)
    return BPETokenizer.load(path)
