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
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None


def run_train(args):
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


def run_encode(args):
    tok = load_tokenizer(args.tokenizer)
    if args.text is not None and args.file is not None:
        raise UserError("give the text or --file, not both")
    if args.text is not None:
        text = args.text
    elif args.file is not None:
        text = _read_text(args.file)
    else:
        text = sys.stdin.read()
    try:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
    except SpecialTokenError as e:  # the library's message names the Python argument; add the flag
        raise UserError(f"{e} (on the command line: --allow-special)") from None
    if args.tokens:
        for i in ids:
            print(i, repr(tok.decode_bytes([i]))[1:])
    else:
        print(" ".join(map(str, ids)))
    return 0


def run_decode(args):
    tok = load_tokenizer(args.tokenizer)
    words = args.ids if args.ids else sys.stdin.read().replace(",", " ").split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise UserError(f"not a token id: {bad!r} (expected integers)") from None
    text = tok.decode(ids)
    sys.stdout.write(text)
    if sys.stdout.isatty() and not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0
