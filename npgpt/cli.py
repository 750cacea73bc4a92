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
    "bench": ("npgpt.bench", "training throughput, per-kernel time, MFU and peak memory (configs S, M, L)"),
    "gradcheck": ("npgpt.gradcheck_cli", "check every layer's and the model's gradients against finite differences"),
    "tokenizer": ("npgpt.tokenizers.cli", "train a byte-level BPE tokenizer, encode text to ids, decode ids to text"),
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (UserError, ValueError, OSError) as e:
        if os.environ.get("NPGPT_DEBUG"):
            raise
        print(f"npgpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
