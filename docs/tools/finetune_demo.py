"""The offline fine-tuning demo of docs/pretrained.md: pretrain, export, load in transformers, fine-tune.

    python docs/tools/finetune_demo.py                 # about 10 minutes on 2 busy cores
    python docs/tools/finetune_demo.py --work /tmp/demo --no-write

1. Pretrain a small BPE model (vocab 512, 4 layers, 4 heads, n_embd 128,
   context 64) with `npgpt train` on the bundled Tiny Shakespeare.
2. `npgpt export` it to a Hugging Face GPT-2 folder; if transformers is
   installed, load it there and compare the logits with npgpt's.
3. A second text: the software licences in /usr/share/common-licenses
   (GPL, LGPL, GFDL, Apache, MPL, ...; about 250k characters), nothing
   downloaded.  Fine-tune the pretrained checkpoint on it (`--init-from`,
   the fine-tuning defaults), with full fine-tuning and with LoRA, and
   train the same model from scratch for the same number of steps (the
   from-scratch defaults, the pretrained model's tokenizer: the same
   tokens, so losses per token compare directly).
4. Write the table of validation losses into docs/pretrained.md between
   the `finetune-demo` markers (unless --no-write).

Every run goes through npgpt's own command line (npgpt.cli.main) in this
process; the figures are whatever this machine produces.
"""
import argparse
import glob
import json
import math
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from npgpt import data  # noqa: E402
from npgpt.cli import main  # noqa: E402
from npgpt.evaluate import evaluate_tokens  # noqa: E402
from npgpt.pretrained import load  # noqa: E402

PAGE = ROOT / "docs" / "pretrained.md"
BEGIN, END = "<!-- finetune-demo: begin -->", "<!-- finetune-demo: end -->"
LICENCES = "/usr/share/common-licenses"
MODEL = ["--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64"]
QUIET = ["--sample-tokens", "0", "--no-progress", "--log-interval", "0"]
STEPS = 300  # fine-tuning and from-scratch steps
PRETRAIN_STEPS = 600


REUSE = False  # --reuse: keep the runs already finished in --work


def npgpt(*args):
    argv = [str(a) for a in args]
    if REUSE and "--out" in argv and os.path.exists(os.path.join(argv[argv.index("--out") + 1], "checkpoint.json")):
        print("reusing " + argv[argv.index("--out") + 1], flush=True)
        return
    print("$ npgpt " + " ".join(argv), flush=True)
    status = main(argv)
    if status != 0:
        sys.exit(f"npgpt {' '.join(argv)} failed with status {status}")


def second_text(path):
    """The licence texts, concatenated (each once: GPL is a link to GPL-3, and so on)."""
    seen, parts = set(), []
    for name in sorted(glob.glob(os.path.join(LICENCES, "*"))):
        real = os.path.realpath(name)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        parts.append(pathlib.Path(real).read_text(encoding="utf-8", errors="replace"))
    if not parts:
        sys.exit(f"no licence texts in {LICENCES}: give another second text with --second FILE")
    text = "\n\n".join(parts)
    pathlib.Path(path).write_text(text, encoding="utf-8")
    return text


def random_start(pretrained, out):
    """OUT: an npgpt checkpoint of the pretrained model's size and tokenizer with fresh random weights,
    so that `--init-from OUT` trains the same model from scratch on the same tokens."""
    from npgpt import checkpoint
    from npgpt.model import GPT

    if REUSE and os.path.exists(os.path.join(out, "checkpoint.json")):
        return
    loaded = load(pretrained)
    model = GPT(loaded.model.config, seed=1337)  # npgpt train's seed and initialisation
    os.makedirs(out, exist_ok=True)
    checkpoint.save(out, model, loaded.tokenizer, {"iter": 0})


def val_curve(out, val_text):
    """{iteration: validation bits per character} from OUT/metrics.jsonl.

    A loss in nats per token becomes bits per character through the run's
    own tokens per character on the validation text, so that runs with
    different tokenizers compare.
    """
    tokens_per_char = data.encode(val_text, load(str(out)).tokenizer).size / len(val_text)
    lines = pathlib.Path(out, "metrics.jsonl").read_text().splitlines()
    return {r["iter"]: r["val_loss"] / math.log(2) * tokens_per_char for r in map(json.loads, lines)}


def bits_per_char(ckpt, text):
    """Bits per character of the best snapshot on the whole of `text` (sequential windows)."""
    loaded = load(str(ckpt))
    tokens = data.encode(text, loaded.tokenizer)
    loss, _ = evaluate_tokens(loaded.model, tokens, 32)
    return loss / math.log(2) * tokens.size / len(text)


def check_in_transformers(hf_dir, npgpt_dir):
    """Max relative logit difference of the export in transformers, or a note when it is not installed."""
    try:
        import numpy as np
        import torch
        import transformers
    except ImportError:
        return "transformers is not installed: skipped"
    model = load(str(npgpt_dir), dtype="float64", backend="numpy").model
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).double().eval()
    idx = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 64))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(idx)).logits.numpy()
    diff = float(np.abs(model.logits(idx) - theirs).max() / np.abs(theirs).max())
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    line = "ROMEO:\nO, she doth teach the torches"
    same = tok(line)["input_ids"] == load(str(npgpt_dir)).tokenizer.encode(line)
    return (f"transformers loads the export: max logit difference {diff:.1e} (relative), "
            f"tokenizer {'identical' if same else 'DIFFERENT'}")


def table(runs, second_val, note, steps):
    iters = sorted({i for curve in runs.values() for i in curve["curve"]})
    shown = [i for i in iters if i % 100 == 0 or i == max(iters)]
    head = ("| run | " + " | ".join(f"iter {i}" for i in shown)
            + " | best | best snapshot, all of val | training time |\n")
    head += "|---" * (len(shown) + 4) + "|\n"
    rows = []
    for name, r in runs.items():
        cells = [f"{r['curve'][i]:.3f}" if i in r["curve"] else "" for i in shown]
        best = min(r["curve"].values())
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {best:.3f} | {r['bpc']:.3f} | {r['seconds']:.0f} s |\n")
    return (f"{head}{''.join(rows)}\n"
            f"Validation bits per character on the licences' last 10% ({second_val:,} characters): at each "
            f"evaluation (20 random batches, the loss per token times the run's tokens per character), the best "
            f"of them, and the best snapshot over the whole split. {steps} steps each (training time: "
            f"this shared 2-core machine, busy); {note}.\n")


def run(work, write):
    os.chdir(work)
    text = second_text("licences.txt")
    npgpt("train", "--tokenizer", "bpe", "--vocab-size", 512, *MODEL, "--max-iters", PRETRAIN_STEPS,
          "--eval-interval", 200, "--out", "pre", "--overwrite", *QUIET)
    npgpt("export", "--ckpt", "pre", "--to", "pre-hf", "--force")
    note = check_in_transformers("pre-hf", "pre")
    print(note, flush=True)
    common = ["--init-from", "pre", "--data", "licences.txt", "--max-iters", STEPS, *QUIET]
    npgpt("train", *common, "--out", "ft", "--overwrite")
    npgpt("train", *common, "--out", "ft-1e-3", "--lr", "1e-3", "--min-lr", "1e-4", "--overwrite")
    npgpt("train", *common, "--out", "ft-lora", "--lora-rank", 8, "--lr", "1e-3", "--min-lr", "1e-4", "--overwrite")
    # from scratch: the same model, random weights, the from-scratch defaults (lr 1e-3, warmup 100) and a BPE
    # of the same size trained on the second text itself (npgpt train builds its own tokenizer)
    npgpt("train", "--tokenizer", "bpe", "--vocab-size", 512, *MODEL, "--data", "licences.txt", "--max-iters", STEPS,
          "--eval-interval", 50, "--out", "scratch", "--overwrite", *QUIET)
    # from scratch on the pretrained model's tokens: a random model of the same size and tokenizer, the
    # from-scratch schedule
    random_start("pre", "random")
    npgpt("train", "--init-from", "random", "--data", "licences.txt", "--max-iters", STEPS, *QUIET,
          "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", 100, "--out", "scratch-same-tokens", "--overwrite")
    val_text = data.split_text(text)[1]
    runs = {}
    for name, out in [("from scratch, its own BPE trained on the licences (lr 1e-3)", "scratch"),
                      ("from scratch, the pretrained model's BPE (lr 1e-3)", "scratch-same-tokens"),
                      ("fine-tuned, all weights, the defaults (lr 1e-4)", "ft"),
                      ("fine-tuned, all weights, lr 1e-3", "ft-1e-3"),
                      ("fine-tuned, LoRA r=8 on c_attn,c_proj (lr 1e-3)", "ft-lora")]:
        last = json.loads(pathlib.Path(out, "metrics.jsonl").read_text().splitlines()[-1])
        runs[name] = {"curve": val_curve(out, val_text), "bpc": bits_per_char(out, val_text),
                      "seconds": last["elapsed"]}
    result = table(runs, len(val_text), note, STEPS)
    print(result)
    if write:
        page = PAGE.read_text(encoding="utf-8")
        start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
        PAGE.write_text(page[:start] + "\n" + result + page[end:], encoding="utf-8")
        print(f"wrote the table into {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already finished in --work")
    parser.add_argument("--no-write", action="store_true", help="print the table without editing docs/pretrained.md")
    args = parser.parse_args()
    REUSE = args.reuse
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        run(os.path.abspath(args.work), not args.no_write)
    else:
        with tempfile.TemporaryDirectory() as work:
            run(work, not args.no_write)
