"""Shared bits of the training tests: a small corpus and a tiny model's flags."""
import numpy as np

from npgpt.cli import main

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
          "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40

# A model small enough that a dozen iterations take well under a second.
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--eval-interval", "5", "--warmup-iters", "2", "--backend", "numpy",
        "--sample-tokens", "0", "--no-progress"]


def write_corpus(tmp_path, text=CORPUS, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def train(*args):
    """Run `npgpt train` in-process; returns the exit status."""
    return main(["train", *TINY, *[str(a) for a in args]])


def final_params(out):
    """The current checkpoint's weights of a run: {name: array}."""
    from npgpt import checkpoint

    return checkpoint.load(str(out)).params


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
