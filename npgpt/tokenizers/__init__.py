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
from . import hf  # noqa: E402 (after bpe and char, which it uses)

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
        if os.path.isfile(inside) and _is_npgpt_tokenizer_file(inside):
            return load_tokenizer(inside)
        if os.path.isfile(os.path.join(path, "encoder.json")) and os.path.isfile(os.path.join(path, "vocab.bpe")):
            return BPETokenizer.from_gpt2_files(os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe"))
        tok, problem = hf.load_tokenizer(path)  # vocab.json + merges.txt, or a `tokenizers` tokenizer.json
        if tok is None:
            raise UserError(f"{path} holds no tokenizer: {problem} (nor npgpt's or GPT-2's encoder.json + vocab.bpe)")
        return tok
    if not os.path.isfile(path):
        raise UserError(f"tokenizer file not found: {path}")
    d = safeload.load_json(path, safeload.Obj({"type": safeload.OneOf("char", "bpe")}), what=str(path))
    if d["type"] == "char":
        return CharTokenizer.load(path)
    return BPETokenizer.load(path)


def _is_npgpt_tokenizer_file(path):
    """True for npgpt's own tokenizer JSON ({"type": "char" | "bpe", ...}), False for a `tokenizers`-library file."""
    d = safeload.load_json(path, safeload.Obj({}), what=str(path))
    return "type" in d and "model" not in d
