"""`npgpt classify train | eval | predict`: text classification on a GPT (docs/classify.md).

    npgpt classify train --data train.csv --out out-clf                 # a new GPT, char tokenizer
    npgpt classify train --init-from out-lm --data train.csv --val val.csv --out out-clf
    npgpt classify train --resume out-clf --max-iters 800              # continue exactly
    npgpt classify eval --ckpt out-clf --data test.csv                  # accuracy, macro-F1, P/R, confusion
    npgpt classify predict --ckpt out-clf --text "a lovely film"
    npgpt classify predict --ckpt out-clf --data texts.csv --out preds.csv

Training is npgpt/train.py's Trainer over a ClassificationTask
(npgpt/classify_task.py): the same settings, progress bar, metrics.jsonl,
best-validation checkpoint and bit-exact resume as `npgpt train`.
"""
import csv
import os
import sys
import time

from . import checkpoint
from . import classify_data as cd
from . import train as tr
from .classify_task import (BUNDLED, ClassificationTask, classifier_from_checkpoint, encode_examples, predict_texts,
                            run_in_batches)
from .errors import UserError

DATA_HELP = ("CSV with a header row (or .tsv, or JSON Lines .jsonl) of labelled texts "
             "(default: the bundled 40-sentence sentiment set)")


def add_arguments(parser):
    sub = parser.add_subparsers(dest="classify_command", metavar="{train,eval,predict}")
    sub.required = True

    t = sub.add_parser("train", help="fine-tune a GPT (or train one from scratch) to label texts",
                       description="Train a classifier: a GPT with a linear head on the last real token.")
    tr.add_arguments(t)  # every `npgpt train` setting, --resume, --config, --overwrite, --no-progress
    t._option_string_actions["--data"].help = DATA_HELP
    t.add_argument("--val", metavar="FILE", help="validation file in the same format (default: a seeded, "
                   "stratified --val-fraction of --data)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of --data held out without --val (default 0.1)")
    t.add_argument("--text-column", default="text", help="the text column or JSON field (default: text)")
    t.add_argument("--label-column", default="label", help="the label column or JSON field (default: label)")
    t.add_argument("--lm-weight", type=float, default=0.0,
                   help="weight of an auxiliary language-model loss on the same texts, as GPT-1 (default 0)")

    e = sub.add_parser("eval", help="accuracy, macro-F1, per-class precision/recall, confusion matrix, baseline")
    e.add_argument("--ckpt", required=True, metavar="OUT", help="a `npgpt classify train` output directory")
    e.add_argument("--data", required=True, metavar="FILE", help="labelled test file (CSV/TSV/JSONL)")
    p = sub.add_parser("predict", help="the label and class probabilities of texts")
    p.add_argument("--ckpt", required=True, metavar="OUT", help="a `npgpt classify train` output directory")
    p.add_argument("--text", action="append", help="a text to label (repeatable)")
    p.add_argument("--data", metavar="FILE", help="a CSV/TSV/JSONL file of texts (its label column, if any, is ignored)")
    p.add_argument("--out", metavar="PREDS.csv", help="with --data: write text, label and probabilities here")
    for q in (e, p):
        q.add_argument("--text-column", help="the text column (default: the one used in training)")
        q.add_argument("--label-column", help="the label column (default: the one used in training)")
        q.add_argument("--backend", choices=("numpy", "numba"))


def run(args):
    if args.classify_command == "train":
        return run_train(args)
    clf, tokenizer, labels, extras = classifier_from_checkpoint(checkpoint.load(args.ckpt, "best"), backend=args.backend)
    text_column = args.text_column or extras["text_column"]
    label_column = args.label_column or extras["label_column"]
    if args.classify_command == "eval":
        examples = cd.read_examples(args.data, text_column, label_column)
        y = labels.ids(examples, args.data)
        encoded, _ = encode_examples(tokenizer, examples, clf.config.block_size, args.data)
        probs, _ = run_in_batches(clf, encoded, y)
        print(cd.format_report(cd.classification_report(y, probs.argmax(axis=1), labels.names)))
        return 0
    return run_predict(args, clf, text_column)


def run_predict(args, clf, text_column):
    if (args.text is None) == (args.data is None):
        raise UserError("give either --text TEXT (repeatable) or --data FILE")
    if args.out and not args.data:
        raise UserError("--out writes the predictions of --data FILE")
    names = clf.labels.names
    if args.text is not None:
        predicted, probs = predict_texts(clf, args.text)
        for text, label, p in zip(args.text, predicted, probs):
            shown = ", ".join(f"{n} {q:.4f}" for n, q in zip(names, p))
            print(f"{label}\t({shown})\t{text}")
        return 0
    texts = read_texts(args.data, text_column)
    predicted, probs = predict_texts(clf, texts)
    out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow([text_column, "predicted"] + [f"p_{n}" for n in names])
        for text, label, p in zip(texts, predicted, probs):
            writer.writerow([text, label] + [f"{q:.6f}" for q in p])
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        print(f"{len(texts)} predictions written to {args.out}")
    return 0


def read_texts(path, text_column):
    """The texts of a CSV/TSV/JSONL file, with or without a label column (the text is read as both fields)."""
    return [e.text for e in cd.read_examples(path, text_column, text_column)]


def run_train(args):
    started = time.perf_counter()
    from .memory import keep_freed_memory
    from .lock import lock_out_dir

    keep_freed_memory()
    if args.resume is None and not hasattr(args, "out"):
        args.out = "out-classify"
    if not hasattr(args, "sample_tokens"):
        args.sample_tokens = 0
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not args.lm_weight >= 0 or args.lm_weight == float("inf"):
        raise UserError(f"--lm-weight must be a finite number >= 0, got {args.lm_weight}")
    cfg, ckpt = tr.resolve_settings(args)
    if cfg.label_smoothing:
        raise UserError("--label-smoothing applies to language modelling; the classifier's loss has none")
    with lock_out_dir(cfg.out):
        tr.prepare_out_dir(cfg.out, resume=ckpt is not None, overwrite=args.overwrite)
        if ckpt is not None:
            task = ClassificationTask.resume(cfg, ckpt)
        else:
            task = ClassificationTask.build(cfg, os.path.abspath(args.val) if args.val else None, args.text_column,
                                            args.label_column, args.lm_weight, args.val_fraction)
        trainer = tr.Trainer(task.cfg, task, ckpt, progress=not args.no_progress)
        cfg = trainer.cfg
        if ckpt is None:
            for name in (tr.METRICS, tr.STEP_LOG):
                open(os.path.join(cfg.out, name), "w").close()
            checkpoint.forget_best(cfg.out)
        print(f"npgpt classify train: {task.describe()}; "
              + (f"resuming at iteration {trainer.iter}" if ckpt else
                 f"fine-tuning {cfg.init_from}, {cfg.max_iters} iterations" if cfg.init_from else
                 f"{cfg.max_iters} iterations"), flush=True)
        finished = trainer.train()
        if not finished:
            print(f"interrupted at iteration {trainer.iter}; checkpoint saved in {cfg.out}. "
                  f"Continue with: npgpt classify train --resume {cfg.out}", file=sys.stderr)
            return 130
        m = trainer.eval_metrics
        print(f"done: {cfg.max_iters} iterations, val loss {trainer.last_val:.4f}, accuracy "
              f"{m.get('val_accuracy', float('nan')):.4f}, macro-F1 {m.get('val_macro_f1', float('nan')):.4f} "
              f"(best val loss {trainer.best_val:.4f}), {time.perf_counter() - started:.0f}s wall; "
              f"checkpoint in {cfg.out}", flush=True)
    return 0


__all__ = ["add_arguments", "run", "BUNDLED"]
