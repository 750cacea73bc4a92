"""Character-level tokenizer: one id per distinct character of the corpus.

    >>> tok = CharTokenizer.train("hello")   # vocabulary ['e', 'h', 'l', 'o']
    >>> tok.encode("hole")
    [1, 3, 2, 0]
    >>> tok.decode([1, 0, 2, 2, 3])
    'hello'

The vocabulary is the sorted set of the corpus's characters, so the same
text always gives the same ids; it is saved with every checkpoint, and on
its own with `tok.save(path)` / `CharTokenizer.load(path)` (a small JSON file).
"""
import os

from .. import safeload
from ..errors import UserError
from ..fileio import atomic_write_bytes

# What `save` writes and `load` accepts: {"type": "char", "chars": "abc..."}
SAVED_CHAR_TOKENIZER = safeload.Obj({"type": safeload.Const("char"), "chars": str})
# The file name save_pretrained / from_pretrained use inside a directory.
TOKENIZER_FILE = "tokenizer.json"


class UnknownCharactersError(ValueError):
    """Text holds characters that are not in the vocabulary."""


class CharTokenizer:
    """text <-> ids, one id per character; ids follow the vocabulary's sorted order."""

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text):
        """The vocabulary of `text`: its distinct characters, sorted."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        """str -> list[int]; characters outside the vocabulary raise UnknownCharactersError naming them."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise UnknownCharactersError(
                f"{len(unknown)} character(s) not in the model's {self.vocab_size}-character vocabulary: {shown}"
            ) from None

    def decode(self, ids):
        """list[int] -> str."""
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_dict(self):
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d):
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError("not a saved character tokenizer (expected {'type': 'char', 'chars': str})")
        return cls(d["chars"])

    # ---- files ---------------------------------------------------------------

    def save(self, path):
        """Write the vocabulary as JSON to path (atomically: never a half-written file)."""
        import json

        atomic_write_bytes(path, (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path):
        """Read a file written by `save`; UserError naming the file if it is missing or not one.

        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "chars.json")
        >>> CharTokenizer.train("to be").save(path)
        >>> CharTokenizer.load(path).chars
        [' ', 'b', 'e', 'o', 't']
        """
        if not os.path.isfile(path):
            raise UserError(f"tokenizer file not found: {path}")
        d = safeload.load_json(path, SAVED_CHAR_TOKENIZER, what=str(path))
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None

    def save_pretrained(self, directory):
        """Save as `directory/tokenizer.json` (the directory is created if needed)."""
        os.makedirs(directory, exist_ok=True)
        self.save(os.path.join(directory, TOKENIZER_FILE))

    @classmethod
    def from_pretrained(cls, directory):
        """The tokenizer `save_pretrained(directory)` wrote."""
        return cls.load(os.path.join(directory, TOKENIZER_FILE))
