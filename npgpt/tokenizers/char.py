"""Character-level tokenizer: one id per distinct character of the corpus.

    tok = CharTokenizer.train("hello")   # vocabulary ['e', 'h', 'l', 'o']
    tok.encode("hole")  -> [1, 3, 2, 0]
    tok.decode([1, 0, 2, 2, 3]) -> 'hello'

The vocabulary is the sorted set of the corpus's characters, so the same
text always gives the same ids; it is saved with every checkpoint.
"""


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
