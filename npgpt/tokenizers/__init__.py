"""Tokenizers: text <-> integer ids.

Every tokenizer offers the same small interface, so the trainer, the
sampler and checkpoints treat them alike:

    tok.encode(text: str) -> list[int]
    tok.decode(ids: list[int]) -> str
    tok.vocab_size -> int
    tok.to_dict() -> a JSON-serialisable dict with a "type" key
    Tokenizer.from_dict(d) -> the same tokenizer

`from_dict` below picks the class from d["type"] ("char" or "bpe").
"""


def from_dict(d):
    """Rebuild a tokenizer saved with `to_dict()` (e.g. from a checkpoint)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char":
        from .char import CharTokenizer

        return CharTokenizer.from_dict(d)
    if kind == "bpe":
        from .bpe import BPETokenizer

        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")
