"""The `npgpt` command line: one subcommand per job.

Each subcommand lives next to the code it drives: its module exposes
`add_arguments(parser)` and `run(args) -> exit status`.  Bad input raises
UserError (or ValueError / OSError) and is printed as one line, never a
traceback; set NPGPT_DEBUG=1 to see the traceback anyway.
"""
import argparse
import importlib
import os
import sys

from .errors import UserError

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS = {
    "train": ("npgpt.train", "train a GPT (default: a character model on the bundled Tiny Shakespeare)"),
    "sample": ("npgpt.generate", "generate text from a checkpoint, streamed as it is sampled"),
    "eval": ("npgpt.evaluate", "loss, perplexity and bits per character of a checkpoint"),
    "export": ("npgpt.pretrained", "write a checkpoint as a Hugging Face GPT-2 folder that transformers loads"),
    "bench": ("npgpt.bench", "training throughput, per-kernel time, MFU and peak memory (configs S, M, L)"),
    "gradcheck": ("npgpt.gradcheck_cli", "check every layer's and the model's gradients against finite differences"),
    "exercise": ("npgpt.exercises", "backprop exercises: write each layer's backward, check it with the gradcheck"),
    "plot": ("npgpt.plot", "figures of a run (loss, lr, gradient norm, update ratios, activations) and report.html"),
    "tokenizer": ("npgpt.tokenizers.cli", "train a byte-level BPE tokenizer, encode text to ids, decode ids to text"),
    "attention": ("npgpt.attention_cli", "draw every head's attention weights of a checkpoint over a text (needs matplotlib)"),
    "classify": ("npgpt.classify_cli", "text classification on a GPT: train (from scratch or --init-from), eval, predict"),
    "seq2seq": ("npgpt.seq2seq_cli", "encoder-decoder Transformer: train on pairs or a synthetic task, translate, eval"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="npgpt", description="A GPT-2-style transformer in NumPy with hand-written backward passes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _numba_cache_fallback():
    """Point Numba's cache at a writable temp dir when the install and $HOME are read-only.

    Must run before numba is imported (it reads NUMBA_CACHE_DIR once); says so once on stderr.
    """
    if "NUMBA_CACHE_DIR" in os.environ or "numba" in sys.modules:
        return
    package = os.path.dirname(os.path.abspath(__file__))
    if os.access(package, os.W_OK):
        return
    import tempfile

    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"npgpt-numba-cache-{os.getuid()}")
    print(f"npgpt: note: {package} is read-only; caching compiled kernels in {os.environ['NUMBA_CACHE_DIR']}",
          file=sys.stderr)


def _describe(e):
    """One line for an error, without '[Errno N]' prefixes."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def main(argv=None):
    try:
        _numba_cache_fallback()
        args = build_parser().parse_args(argv)  # imports numpy/numba: Ctrl-C here must be quiet too
        return args.run(args) or 0
    except BrokenPipeError:  # `npgpt sample | head`: the reader has all it wanted
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain
        except (OSError, ValueError):
            pass
        return 0
    except (UserError, ValueError, OSError) as e:
        if os.environ.get("NPGPT_DEBUG"):
            raise
        print(f"npgpt: error: {_describe(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("npgpt: error: out of memory (try a smaller --n-embd, --n-layer, --batch-size or --block-size)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
