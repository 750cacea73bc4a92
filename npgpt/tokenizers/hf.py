"""Hugging Face tokenizer files -> npgpt tokenizers: vocab.json + merges.txt, or a
`tokenizers`-library tokenizer.json (GPT-2's byte-level BPE, or the character
tokenizer npgpt's save_pretrained writes).

    tok, problem = load_tokenizer("gpt2-folder")   # (None, what is missing) when there are no files

Every file goes through npgpt/safeload.py; a present but corrupt or
unsupported file raises UserError naming it.
"""
import os

from .. import safeload
from ..errors import UserError
from .bpe import BPETokenizer
from .char import CharTokenizer

TOKENIZER_JSON = "tokenizer.json"
VOCAB, MERGES = "vocab.json", "merges.txt"


def load_tokenizer(folder, vocab_size=None):
    """(tokenizer, "") from a folder's vocab.json + merges.txt or tokenizer.json; (None, what is missing) without.

    A file that is present but corrupt raises UserError.  vocab_size: the
    model's; a tokenizer with more ids than that is refused.
    """
    have = {n: os.path.exists(os.path.join(folder, n)) for n in (VOCAB, MERGES, TOKENIZER_JSON)}
    if have[VOCAB] and have[MERGES]:
        tok = BPETokenizer.from_gpt2_files(os.path.join(folder, VOCAB), os.path.join(folder, MERGES))
    elif have[TOKENIZER_JSON]:
        tok = tokenizer_from_json(os.path.join(folder, TOKENIZER_JSON))
    elif have[VOCAB] or have[MERGES]:
        present, missing = (VOCAB, MERGES) if have[VOCAB] else (MERGES, VOCAB)
        return None, f"{folder} has {present} but not {missing} (and no {TOKENIZER_JSON})"
    else:
        return None, f"{folder} has no tokenizer files ({VOCAB} + {MERGES}, or {TOKENIZER_JSON})"
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise UserError(f"{folder}: the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {vocab_size}")
    return tok, ""


_TOKENIZER_JSON_SCHEMA = safeload.Obj({"model": safeload.Obj({"type": str})},
                                      optional={"added_tokens": safeload.List(safeload.Obj({"id": safeload.Int(min=0),
                                                                                              "content": str}))})


def tokenizer_from_json(path):
    """A `tokenizers` library tokenizer.json -> npgpt's BPETokenizer (GPT-2 style) or CharTokenizer (npgpt's export)."""
    d = safeload.load_json(path, _TOKENIZER_JSON_SCHEMA)
    if _is_char_tokenizer_json(d):
        vocab = safeload.check(d["model"].get("vocab"), safeload.Map(int), f"{path}: model.vocab")
        chars = sorted(vocab, key=vocab.get)
        if [vocab[c] for c in chars] != list(range(len(chars))) or any(len(c) != 1 for c in chars):
            raise UserError(f"{path}: a character vocabulary must map single characters to ids 0..n-1")
        return CharTokenizer(chars)
    model = d["model"]
    if model["type"] != "BPE":
        raise UserError(f"{path}: model type {model['type']!r} is not supported (npgpt reads byte-level BPE)")
    if not _is_gpt2_byte_level(d):
        raise UserError(f"{path}: only GPT-2's byte-level BPE is supported (pre_tokenizer ByteLevel with GPT-2's "
                        "regex, no add_prefix_space, no normalizer)")
    vocab = safeload.check(model.get("vocab"), safeload.Map(safeload.Int(min=0)), f"{path}: model.vocab")
    merges = safeload.check(model.get("merges"), list, f"{path}: model.merges")
    lines = []
    for i, m in enumerate(merges):  # "a b" (older files) or ["a", "b"] (tokenizers >= 0.20)
        if isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            m = f"{m[0]} {m[1]}"
        if not isinstance(m, str):
            raise UserError(f"{path}: model.merges[{i}] must be \"a b\" or [\"a\", \"b\"], got {str(m)[:40]}")
        lines.append(m)
    encoder = dict(vocab)
    for t in d.get("added_tokens", []):
        encoder.setdefault(t["content"], t["id"])
    return bpe_from_encoder(encoder, lines, path)


def _is_char_tokenizer_json(d):
    model = d["model"]
    return (model.get("type") == "BPE" and model.get("merges") == [] and d.get("pre_tokenizer") is None
            and isinstance(d.get("decoder"), dict) and d["decoder"].get("type") == "Fuse")


def _is_gpt2_byte_level(d):
    pre = d.get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        pres = pre.get("pretokenizers")
        pre = pres[0] if isinstance(pres, list) and len(pres) == 1 else None
    return (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", False)
            and pre.get("use_regex", True) is True and d.get("normalizer") is None)


def bpe_from_encoder(encoder, merge_lines, where):
    """{token string: id} + ["a b", ...] from one file -> BPETokenizer (BPETokenizer.from_encoder's rule)."""
    return BPETokenizer.from_encoder(encoder, merge_lines, where)
