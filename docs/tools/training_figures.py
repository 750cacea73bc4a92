"""Draw docs/training.md's figures: those of the default `npgpt train` run, with statistics every 100 steps.

    python docs/tools/training_figures.py                       # trains (~5 min on 2 cores), then copies the figures
    python docs/tools/training_figures.py --out out-default --reuse   # redraw from a finished run in out-default

Runs, from the repository's own npgpt,

    npgpt train --stats-interval 100 --plot --out OUT

(every other setting at its default: Tiny Shakespeare, 4 x 4 x 128, 2000
steps), then redraws the run's figures from OUT's logs with npgpt.plot, the
code behind `npgpt plot` and `--plot`, and writes them into
docs/figures/training/.  To keep the repository small they are drawn at a
lower resolution than `npgpt plot`'s (DPI below) and stored with a palette
of COLORS colours (Pillow, which matplotlib depends on): a third of the
bytes, no visible change.  With --reuse and a finished run in OUT, nothing
is trained.
"""
import argparse
import io
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from npgpt import checkpoint, plot  # noqa: E402

TARGET = os.path.join(ROOT, "docs", "figures", "training")
FIGURES = ("loss", "lr", "grad_norm", "update_ratio", "activations")
DPI = 72
COLORS = 64


def small_png(fig):
    from PIL import Image

    image = Image.open(io.BytesIO(plot.png_bytes(fig, dpi=DPI))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def train(out):
    command = [sys.executable, "-m", "npgpt.cli", "train", "--stats-interval", "100", "--plot", "--out", out,
               "--overwrite", "--no-progress"]
    print("$ npgpt train --stats-interval 100 --plot --out", out, flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, check=True, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out-default", help="the run's --out directory (default: out-default)")
    parser.add_argument("--reuse", action="store_true", help="draw from a finished run in --out instead of training")
    args = parser.parse_args()
    pointer = checkpoint.read_pointer(args.out) if os.path.isdir(args.out) else None
    if not (args.reuse and pointer is not None):
        train(args.out)
    figures = plot.build_figures(plot.load_run(args.out))
    missing = [name for name in FIGURES if name not in figures]
    if missing:
        sys.exit(f"{args.out}: no records for the figures {missing} (was it run with --stats-interval?)")
    os.makedirs(TARGET, exist_ok=True)
    for name in FIGURES:
        path = os.path.join(TARGET, name + ".png")
        with open(path, "wb") as f:
            f.write(small_png(figures[name]))
        print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
    main()
