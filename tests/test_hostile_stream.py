"""Streaming `npgpt tokenizer encode` (issue 11): the ids equal encoding the whole text, with memory bounded
by a block, wherever the blocks happen to be cut."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt.cli import main
from npgpt.tokenizers import cli as tok_cli
from npgpt.tokenizers.bpe import GPT2_SPLIT_PATTERN, BPETokenizer, SpecialTokenError
from npgpt.tokenizers.split import check_split_pattern, safe_cut
from training_helpers import CORPUS

# The characters GPT-2's pattern treats differently: letters, digits, symbols, apostrophes, each kind of
# whitespace, non-ASCII letters and digits, and the pieces of a special token.
ALPHABET = list("ab Z1 9'sltrevmd.,!?-_\n\t\r ") + ["\u00a0", "\u3000", "\u00e9", "\u4e2d", "\u0663", "\u00b2",
                                                     "\U0001f44d", "\u0301", "<|endoftext|>", "<|", "|>"]
texts = st.lists(st.sampled_from(ALPHABET), max_size=80).map("".join)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(CORPUS[:4000] + " it's 123 \u4e2d\u6587 ", 300)


def blocks_of(text, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(0, 80), max_size=8))
def test_streamed_ids_equal_whole_text_ids(tok, text, cuts):
    for allowed in ("all", frozenset()):
        try:
            whole = tok.encode(text, allowed_special=allowed)
        except SpecialTokenError as e:
            with pytest.raises(SpecialTokenError) as streamed:
                list(tok_cli.encode_stream(tok, blocks_of(text, cuts), allowed))
            assert streamed.value.position == e.position  # the same place in the whole text
            continue
        parts = list(tok_cli.encode_stream(tok, blocks_of(text, cuts), allowed))
        assert [i for ids in parts for i in ids] == whole


@settings(max_examples=300, deadline=None)
@given(text=texts, tail=texts)
def test_a_safe_cut_splits_like_the_whole_whatever_follows(text, tail):
    splitter = check_split_pattern(GPT2_SPLIT_PATTERN)
    q = safe_cut(text, GPT2_SPLIT_PATTERN)
    if q is not None:
        whole = text + tail
        assert splitter.split(text[:q]) + splitter.split(whole[q:]) == splitter.split(whole)


def test_no_cut_for_an_unknown_pattern_and_none_inside_a_special_token():
    assert safe_cut("hello world", r"(?s).") is None
    assert safe_cut("a <|end of text|> b", GPT2_SPLIT_PATTERN, ["<|end of text|>"]) == 1
    assert safe_cut("a <|end of text|>", GPT2_SPLIT_PATTERN, ["<|end of text|>"]) == 1
    assert safe_cut("abc", GPT2_SPLIT_PATTERN) is None


def test_memory_is_bounded_by_a_block(tok, tmp_path, capsys, monkeypatch):
    """Each encode call sees at most about one block, never the whole text, and the output is the whole's."""
    text = CORPUS * 3
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    tok_path = tmp_path / "tok.json"
    tok.save(tok_path)
    monkeypatch.setattr(tok_cli, "BLOCK_CHARS", 500)
    seen = []
    real_encode = BPETokenizer.encode

    def spy(self, s, **kwargs):
        seen.append(len(s))
        return real_encode(self, s, **kwargs)

    monkeypatch.setattr(BPETokenizer, "encode", spy)
    capsys.readouterr()
    assert main(["tokenizer", "encode", "-t", str(tok_path), "--file", str(path)]) == 0
    printed = capsys.readouterr().out
    assert len(seen) > len(text) // 600 and max(seen) <= 2 * 500
    assert printed == " ".join(map(str, real_encode(tok, text))) + "\n"


def test_tokens_mode_streams_too(tok, tmp_path, capsys, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("To be, or not to be\n" * 50, encoding="utf-8")
    tok_path = tmp_path / "tok.json"
    tok.save(tok_path)
    monkeypatch.setattr(tok_cli, "BLOCK_CHARS", 64)
    capsys.readouterr()
    assert main(["tokenizer", "encode", "-t", str(tok_path), "--tokens", "--file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == tok.encode(path.read_text())


def test_a_special_token_late_in_a_file_is_reported_at_its_place(tok, tmp_path, capsys, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("word " * 400 + "<|endoftext|>", encoding="utf-8")
    tok_path = tmp_path / "tok.json"
    tok.save(tok_path)
    monkeypatch.setattr(tok_cli, "BLOCK_CHARS", 100)
    capsys.readouterr()
    assert main(["tokenizer", "encode", "-t", str(tok_path), "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(at character 2000)" in err and err.count("\n") == 1
