"""`npgpt tokenizer train | encode | decode`: the BPE tokenizer from the command line.

    npgpt tokenizer train --vocab-size 1024 -o tok.json        # on the bundled Tiny Shakespeare
    npgpt tokenizer encode -t tok.json "To be, or not to be"   # -> ids, space separated
    npgpt tokenizer encode -t tok.json --tokens "To be"        # -> one 'id token' line each
    npgpt tokenizer decode -t tok.json 2514 307                # -> text

-t takes a file written by `train` (or `BPETokenizer.save`) or a directory
holding GPT-2's encoder.json + vocab.bpe (or Hugging Face's vocab.json +
merges.txt).
"""
import importlib.resources
import os
import sys
import time

from ..errors import UserError
from .bpe import ENDOFTEXT, BPETokenizer, SpecialTokenError
from .split import safe_cut


def add_arguments(parser):
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="learn a byte-level BPE vocabulary from a text file",
                           description="Learn a byte-level BPE vocabulary (GPT-2's split pattern) from a text file.")
    train.add_argument("--data", metavar="FILE", help="UTF-8 text to learn from (default: the bundled Tiny Shakespeare)")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="total ids: 256 bytes + merges + special tokens")
    train.add_argument("--special", action="append", metavar="TOKEN",
                       help=f"a special token (repeatable; default: {ENDOFTEXT})")
    train.add_argument("-o", "--output", default="tokenizer.json", metavar="FILE",
                       help="where to save the tokenizer as JSON (default: tokenizer.json)")
    train.add_argument("--gpt2-dir", metavar="DIR", help="also write GPT-2's encoder.json and vocab.bpe into DIR")
    train.set_defaults(run=run_train)

    encode = sub.add_parser("encode", help="text -> token ids", description="Print the token ids of a text.")
    _add_tokenizer_argument(encode)
    encode.add_argument("text", nargs="?", help="the text (default: read --file, else standard input)")
    encode.add_argument("--file", metavar="FILE", help="read the text from FILE")
    encode.add_argument("--allow-special", action="store_true",
                        help="encode special-token text (e.g. <|endoftext|>) as the special id instead of refusing it")
    encode.add_argument("--tokens", action="store_true", help="print one 'id token' line per token")
    encode.set_defaults(run=run_encode)

    decode = sub.add_parser("decode", help="token ids -> text", description="Print the text of token ids.")
    _add_tokenizer_argument(decode)
    decode.add_argument("ids", nargs="*", help="token ids (default: read them from standard input)")
    decode.set_defaults(run=run_decode)


def _add_tokenizer_argument(parser):
    parser.add_argument("-t", "--tokenizer", required=True, metavar="PATH",
                        help="a tokenizer JSON file, or a directory with GPT-2's encoder.json + vocab.bpe")


def run(args):
    return args.run(args)


def load_tokenizer(path):
    """A BPETokenizer from a JSON file or a directory of GPT-2 / Hugging Face files."""
    if not os.path.isdir(path):
        return BPETokenizer.load(path)
    for encoder, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if os.path.exists(os.path.join(path, encoder)) and os.path.exists(os.path.join(path, merges)):
            return BPETokenizer.from_gpt2_files(os.path.join(path, encoder), os.path.join(path, merges))
    raise UserError(f"{path} holds neither encoder.json + vocab.bpe nor vocab.json + merges.txt")


def _read_text(path):
    if path is None:
        return importlib.resources.files("npgpt").joinpath("corpora", "tinyshakespeare.txt").read_text("utf-8")
    _is_regular(path)  # a device such as /dev/zero would be read until memory runs out
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None


def run_train(args):
    if os.path.lexists(args.output) and not os.path.isfile(args.output):  # never replace a device, FIFO or directory
        raise UserError(f"-o {args.output} exists and is not a regular file; choose another output path")
    text = _read_text(args.data)
    specials = args.special if args.special is not None else [ENDOFTEXT]
    start = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, specials)
    seconds = time.perf_counter() - start
    tok.save(args.output)
    n_bytes = len(text.encode("utf-8"))
    print(f"learned {len(tok.merges)} merges from {n_bytes:,} bytes in {seconds:.2f}s; "
          f"vocab_size {tok.vocab_size}; saved {args.output}")
    if args.gpt2_dir:
        tok.save_gpt2(args.gpt2_dir)
        print(f"wrote {os.path.join(args.gpt2_dir, 'encoder.json')} and {os.path.join(args.gpt2_dir, 'vocab.bpe')}")
    n_tokens = len(tok.encode(text, disallowed_special=()))
    print(f"the text is {n_tokens:,} tokens ({n_bytes / n_tokens:.2f} bytes per token)")
    return 0


BLOCK_CHARS = 1 << 20  # text read and encoded at a time by `encode`: memory stays bounded on any input size


def run_encode(args):
    tok = load_tokenizer(args.tokenizer)
    if args.text is not None and args.file is not None:
        raise UserError("give the text or --file, not both")
    allowed = "all" if args.allow_special else frozenset()
    if args.text is not None:
        blocks = [args.text]
    elif args.file is not None:
        if _is_regular(args.file):  # a pipe is streamed as it comes, like standard input
            _check_utf8(args.file)  # before any output: a bad byte late in a big file must not leave half a result
        blocks = _read_blocks(args.file)
    else:
        blocks = _stdin_blocks()
    first = True
    try:
        for ids in encode_stream(tok, blocks, allowed):
            if args.tokens:
                sys.stdout.write("".join(f"{i} {repr(tok.decode_bytes([i]))[1:]}\n" for i in ids))
            elif ids:
                sys.stdout.write(("" if first else " ") + " ".join(map(str, ids)))
                first = False
    except SpecialTokenError as e:  # the library's message names the Python argument; add the flag
        raise UserError(f"{e} (on the command line: --allow-special)") from None
    if not args.tokens:
        sys.stdout.write("\n")
    return 0


def encode_stream(tok, blocks, allowed_special=frozenset()):
    """Encode text arriving in blocks; yields lists of ids whose concatenation equals tok.encode(whole text).

    Text is encoded up to the last point where the split pattern may cut it
    (split.safe_cut) and the rest carried into the next block, so memory
    holds about one block, not the whole text.  With a split pattern that
    has no known cut points the text is gathered and encoded whole.
    """
    specials = list(tok.special_tokens)
    carry, offset = "", 0
    for block in blocks:
        text = carry + block
        q = safe_cut(text, tok.pattern, specials, start=len(carry))
        if q is None:
            carry = text
            continue
        yield _encode_part(tok, text[:q], allowed_special, offset)
        offset += q
        carry = text[q:]
    if carry:
        yield _encode_part(tok, carry, allowed_special, offset)


def _encode_part(tok, text, allowed_special, offset):
    try:
        return tok.encode(text, allowed_special=allowed_special)
    except SpecialTokenError as e:  # say where in the whole text, not in this part
        raise SpecialTokenError(str(e).replace(f"(at character {e.position})", f"(at character {e.position + offset})"),
                                e.token, e.position + offset) from None


def _is_regular(path):
    """True for a regular file, False for a pipe; UserError for a missing path, a directory or a device."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a directory, not a text file")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise UserError(f"{path} is not a regular file (a device or socket)")
    return stat.S_ISREG(mode)


def _read_blocks(path):
    try:
        with open(path, encoding="utf-8") as f:
            while block := f.read(BLOCK_CHARS):
                yield block
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _stdin_blocks():
    try:
        while block := sys.stdin.read(BLOCK_CHARS):
            yield block
    except UnicodeDecodeError as e:
        raise UserError(f"standard input is not UTF-8 text (invalid byte {e.start} of a block)") from None


def _check_utf8(path):
    """UserError naming the first invalid byte of the file, read in blocks (no more than one in memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(4 * BLOCK_CHARS):
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as e:
                    raise UserError(f"{path} is not UTF-8 text (invalid byte at offset "
                                    f"{offset - pending + e.start})") from None
                offset += len(block)
            decoder.decode(b"", final=True)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (it ends inside a character)") from None


def run_decode(args):
    tok = load_tokenizer(args.tokenizer)
    words = args.ids if args.ids else sys.stdin.read().replace(",", " ").split()
    text = tok.decode([parse_token_id(w, tok.vocab_size) for w in words])
    sys.stdout.write(text)
    if sys.stdout.isatty() and not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def parse_token_id(word, vocab_size):
    """'42' -> 42; UserError for anything but ASCII digits (not '²', not '٣') or an id beyond the vocabulary."""
    digits = word[1:] if word.startswith("-") else word
    if not (digits.isascii() and digits.isdigit()):
        raise UserError(f"not a token id: {_shown_word(word)} (expected integers)")
    if len(digits) > len(str(vocab_size)) or int(word) < 0 or int(word) >= vocab_size:
        shown = word if len(word) <= 30 else f"{word[:20]}... ({len(digits)} digits)"
        raise UserError(f"unknown token id {shown} (this tokenizer has ids 0..{vocab_size - 1})")
    return int(word)


def _shown_word(word):
    return repr(word) if len(word) <= 30 else repr(word[:27]) + f"... ({len(word)} characters)"

