"""`npgpt seq2seq train | translate | eval`, the seq2seq task for npgpt's one training loop, and BLEU.

    npgpt seq2seq train --task reverse --out out-rev            # a synthetic task: copy | reverse | sort | add
    npgpt seq2seq train --data pairs.tsv --out out-mt           # one source<TAB>target per line
    npgpt seq2seq train --resume out-mt --max-iters 6000        # continue exactly where it stopped
    npgpt seq2seq translate --ckpt out-rev --text "hgfedcba" --beam 4
    npgpt seq2seq eval --ckpt out-rev --task reverse            # exact match, token accuracy, BLEU

Training goes through npgpt/train.py's Trainer, which is generic over a
task object (/work/wt/TASK_PROTOCOL.md): `Seq2SeqTask` below says how a
batch is drawn, what the loss is and which metrics are reported; the
Trainer owns the optimizer, schedule, clipping, progress bar, metrics.jsonl,
checkpoints and resume.  `run_training` is the one place that hands the
task over, holding the --out lock (npgpt/lock.py) as `npgpt train` does.

Settings (SETTINGS below) come from the defaults, then `--config
FILE.toml`, then the flags.  Every checkpoint keeps them (the task's
"settings" in state.json), so `--resume OUT` rebuilds the same model,
tokenizer and data, restores the Trainer's optimizer, schedule and RNG
states, and continues bit for bit as if the run had never stopped; only
RUN_SETTINGS may change on resume.
"""
import argparse
import math
import os
import sys
from collections import Counter

import numpy as np

from . import seq2seq_data as data
from .errors import UserError
from .seq2seq import NORMS, POSITIONS, ACTIVATIONS, Seq2Seq, TransformerConfig, beam_search, greedy_decode

# ------------------------------------------------------------------ BLEU
def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU (Papineni et al. 2002) in percent, of hypothesis strings against one reference each.

    Tokens are whitespace-separated words, no smoothing: sacrebleu's
    corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none")
    (tests/test_seq2seq_cli.py checks the two agree).  Clipped n-gram
    counts and totals are summed over the corpus, for n = 1..4; BLEU =
    BP * exp(mean log precision), BP = exp(1 - r / c) when the hypotheses'
    total length c is below the references' r.  Any zero precision gives 0.
    """
    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_order + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


# ------------------------------------------------------------------ metrics
def decode_all(model, encoded, beam=1, length_penalty=0.6, batch_size=64):
    """[(source ids, target ids)] -> [decoded target ids] (greedy in batches, or beam search one by one)."""
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        src = data.make_batch(chunk, model.config.pad_id)[0]
        if beam == 1:
            out += greedy_decode(model, src)
        else:
            out += [beam_search(model, s[s != model.config.pad_id], beam, length_penalty) for s in src]
    return out


def teacher_forced(model, encoded, batch_size=64):
    """-> (mean loss over target tokens, token accuracy): the share of target tokens (with EOS)
    whose most likely prediction, given the true prefix, is right."""
    loss_sum = correct = count = 0.0
    for i in range(0, len(encoded), batch_size):
        src, tgt_in, targets = data.make_batch(encoded[i:i + batch_size], model.config.pad_id)
        real = targets != model.config.pad_id
        logits = model.logits(src, tgt_in)
        correct += float((logits.argmax(-1) == targets)[real].sum())
        n = float(real.sum())
        loss_sum += model.forward(src, tgt_in, targets, label_smoothing=0.0)[0] * n
        count += n
    return loss_sum / count, correct / count


def evaluate_pairs(model, tokenizer, encoded, beam=1, length_penalty=0.6):
    """{"val_loss", "token_accuracy", "exact_match", "bleu", "bleu_unit"} of a model on encoded pairs.

    BLEU counts whitespace-separated words; when no reference holds two
    words (the synthetic tasks, single words), it counts characters instead.
    """
    loss, token_acc = teacher_forced(model, encoded)
    decoded = decode_all(model, encoded, beam, length_penalty)
    hyps = [tokenizer.target.decode(ids) for ids in decoded]
    refs = [tokenizer.target.decode(t) for _, t in encoded]
    exact = float(np.mean([list(d) == list(t) for d, (_, t) in zip(decoded, encoded)]))
    unit = "words" if any(" " in r.strip() for r in refs) else "characters"
    if unit == "characters":  # no reference has two words (a synthetic task): BLEU of the characters
        hyps, refs = [" ".join(h) for h in hyps], [" ".join(r) for r in refs]
    return {"val_loss": loss, "token_accuracy": token_acc, "exact_match": exact, "bleu": corpus_bleu(hyps, refs),
            "bleu_unit": unit}


# ------------------------------------------------------------------ the task
class Seq2SeqTask:
    """Seq2seq as a task of npgpt's one training loop (TASK_PROTOCOL.md).

    train: a list of encoded pairs (a pairs file), or the name of a
    synthetic task, whose batches are drawn fresh every step from the
    training part of its examples (never the held-out part).
    """

    name = "seq2seq"

    def __init__(self, model, tokenizer, train, val, batch_size, task_options=None, eval_examples=200,
                 description=""):
        self.model, self.tokenizer, self.train, self.val = model, tokenizer, train, val
        self.batch_size, self.task_options = batch_size, dict(task_options or {})
        self.eval_examples, self.description = eval_examples, description
        self.cfg = None  # the run's settings (a TrainConfig), set by run_training
        self.settings = {}  # the command's settings, saved with every checkpoint (set by build_task)
        self.flops_per_batch = None  # MFU is not reported for seq2seq
        lengths = [len(s) + len(t) + 1 for s, t in (val if isinstance(train, str) else train)]
        self.tokens_per_batch = int(round(batch_size * float(np.mean(lengths))))  # source + decoder tokens

    def draw_batch(self, rng):
        """-> (src (B, S), tgt_in (B, T), targets (B, T)), one micro-batch of training pairs."""
        if isinstance(self.train, str):
            pairs = data.synthetic_pairs(self.train, self.batch_size, rng, **self.task_options)
            encoded, _ = data.encode_pairs(pairs, self.tokenizer, self.model.config.block_size, skip_long=True)
        else:
            encoded = [self.train[i] for i in rng.integers(0, len(self.train), size=self.batch_size)]
        return data.make_batch(encoded, self.model.config.pad_id)

    def loss_and_grad(self, batch, grad, dropout_rng):
        """Forward and backward of one micro-batch; the mean loss's gradient lands in grad."""
        loss, cache = self.model.forward(*batch, rng=dropout_rng)
        self.model.backward(cache, out=grad)
        return loss

    def evaluate(self):
        """Validation loss and token accuracy on every validation pair, exact match of greedy
        decoding on the first eval_examples of them; the same pairs every time."""
        loss, token_acc = teacher_forced(self.model, self.val)
        some = self.val[:self.eval_examples]
        decoded = decode_all(self.model, some)
        exact = float(np.mean([list(d) == list(t) for d, (_, t) in zip(decoded, some)]))
        return {"val_loss": loss, "token_accuracy": token_acc, "exact_match": exact}

    def checkpoint_extras(self):
        """What a checkpoint keeps of the task: its tokenizer, the synthetic task, and every setting of
        `npgpt seq2seq train` (so --resume rebuilds the same data and model)."""
        return {"tokenizer": self.tokenizer.to_dict(),
                "task": self.train if isinstance(self.train, str) else "pairs", "task_options": self.task_options,
                "settings": self.settings}

    def describe(self):
        m = self.model
        c = m.config
        return (f"npgpt seq2seq train: {m.num_params:,} parameters ({c.n_encoder_layer}+{c.n_decoder_layer} layers, "
                f"{c.norm}-LN, {c.activation}, {c.positions} positions, n_embd {c.n_embd}, {c.n_head} heads, "
                f"vocab {c.source_vocab_size}/{c.vocab_size}{' shared' if c.share_embeddings else ''}), "
                f"{c.backend} backend; {self.description}")

    def finish(self, out=sys.stdout):
        """Print a few held-out translations."""
        some = self.val[:3]
        for (s, t), d in zip(some, decode_all(self.model, some)):
            mark = "ok" if list(d) == list(t) else "wrong"
            print(f"{self.tokenizer.source.decode(s)!r} -> {self.tokenizer.target.decode(d)!r} ({mark})", file=out)


def train_config(settings):
    """The Trainer's settings (a TrainConfig) from this command's; one data-parallel worker."""
    from dataclasses import replace

    from . import train

    names = ("out", "data", "max_iters", "batch_size", "block_size", "lr", "min_lr", "warmup_iters", "lr_decay_iters",
             "eval_interval", "seed", "dtype", "backend", "dropout", "label_smoothing", "grad_clip", "weight_decay")
    return replace(train.TrainConfig(), **{name: settings[name] for name in names}, beta2=0.98, workers=1,
                   sample_tokens=0)


def run_training(task, settings, ckpt=None, overwrite=False, progress=True):
    """Train task through npgpt's one training loop (npgpt/train.py's Trainer), holding --out's lock.

    ckpt: the checkpoint being resumed (the task already holds its model), or None for a fresh run.
    """
    from . import checkpoint, train
    from .lock import lock_out_dir

    cfg = train_config(settings)
    task.cfg = cfg
    with lock_out_dir(cfg.out):  # one run per --out (npgpt/lock.py)
        train.prepare_out_dir(cfg.out, resume=ckpt is not None, overwrite=overwrite)
        trainer = train.Trainer(cfg, task, ckpt, progress=progress)
        if ckpt is None:  # a fresh run owns its metrics files and forgets a previous run's best snapshot
            for name in (train.METRICS, train.STEP_LOG):
                open(os.path.join(cfg.out, name), "w").close()
            checkpoint.forget_best(cfg.out)
        print(f"resuming at iteration {trainer.iter}" if ckpt is not None else f"{cfg.max_iters} iterations", flush=True)
        if not trainer.train():
            print(f"interrupted at iteration {trainer.iter}; checkpoint saved in {cfg.out}. "
                  f"Continue with: npgpt seq2seq train --resume {cfg.out}", file=sys.stderr)
            return 130
    print(f"done: {cfg.max_iters} iterations, val loss {trainer.last_val:.4f}; checkpoint in {cfg.out}", flush=True)
    task.finish()
    return 0


# ------------------------------------------------------------------ checkpoints
def _config_schema():
    """What a seq2seq checkpoint's config.json must hold (npgpt/safeload.py): every TransformerConfig field."""
    from dataclasses import fields

    from .safeload import Const, Float, Int, Obj, OneOf

    kinds = {"norm": OneOf(*NORMS), "activation": OneOf(*ACTIVATIONS), "positions": OneOf(*POSITIONS),
             "model": Const("seq2seq"), "dtype": str, "backend": str, "share_embeddings": bool,
             "dropout": Float(min=0.0, max=1.0), "label_smoothing": Float(min=0.0, max=1.0)}
    return Obj({f.name: kinds.get(f.name, Int(min=0)) for f in fields(TransformerConfig)})


def load_checkpoint(out_dir, which="latest"):
    """A seq2seq Checkpoint of out_dir, read and verified by npgpt/checkpoint.py (hashes, schema, finite weights)."""
    from . import checkpoint

    return checkpoint.load(out_dir, which, kind="seq2seq", config_schema=_config_schema())


def model_from_checkpoint(ckpt, backend=None, batch_size=None):
    """(Seq2Seq holding the checkpoint's weights, PairTokenizer) of a loaded Checkpoint.

    batch_size: a run is about to train it; its memory is checked before the model is allocated.
    """
    try:
        cfg = TransformerConfig(**{**ckpt.config, **({"backend": backend} if backend else {})})
    except (TypeError, ValueError) as e:
        raise UserError(f"corrupt checkpoint: bad seq2seq config in {ckpt.path} ({e})") from None
    from .seq2seq import param_shapes

    expected = param_shapes(cfg)  # checked before the model is allocated
    if set(ckpt.params) != set(expected):
        raise UserError(f"corrupt checkpoint: {ckpt.path} weights do not match its config")
    for name, shape in expected.items():
        if ckpt.params[name].shape != tuple(shape):
            raise UserError(f"corrupt checkpoint: {name} has shape {ckpt.params[name].shape}, config says {shape}")
    if batch_size is not None:
        check_memory(cfg, batch_size)
    model = Seq2Seq(cfg)
    for name, p in model.params.items():
        p[...] = ckpt.params[name]  # into the flat buffer's view: keeps the layout the optimizer relies on
    try:
        tokenizer = data.PairTokenizer.from_dict(ckpt.tokenizer)
    except (ValueError, KeyError, TypeError, UserError) as e:
        raise UserError(f"corrupt checkpoint: bad seq2seq tokenizer in {ckpt.path} ({e})") from None
    if tokenizer.vocab_size != cfg.vocab_size or tokenizer.source.vocab_size != cfg.source_vocab_size:
        raise UserError(f"corrupt checkpoint: tokenizer and model vocabularies differ in {ckpt.path}")
    return model, tokenizer


def load_seq2seq(out_dir, backend=None, which="best"):
    """(model, PairTokenizer, state) of a training output directory's best-validation snapshot
    (which="latest": the last one saved), as `npgpt sample` and `npgpt eval` read a GPT's."""
    ckpt = load_checkpoint(out_dir, which)
    model, tokenizer = model_from_checkpoint(ckpt, backend)
    return model, tokenizer, ckpt.state


# ------------------------------------------------------------------ building a run
def build_task(args, ckpt=None):
    """Model, tokenizer and data of a run -> Seq2SeqTask; with ckpt, the checkpoint's model and
    tokenizer, and the same training and validation data as the run it continues."""
    if (args.task is None) == (args.data is None):
        raise UserError("give either --task copy|reverse|sort|add or --data PAIRS.tsv")
    model = tokenizer = None
    if ckpt is not None:
        model, tokenizer = model_from_checkpoint(ckpt, args.backend, args.batch_size)
    options = {}
    if args.task is not None:
        options = ({"digits": args.digits} if args.task == "add"
                   else {"min_len": args.min_len, "max_len": args.max_len, "n_symbols": args.n_symbols})
        val_pairs = data.synthetic_pairs(args.task, args.val_size, np.random.default_rng([args.seed, 7]),
                                         held_out=True, **options)
        if tokenizer is None:
            alphabet = data.task_alphabet(args.task, args.n_symbols)
            tokenizer = data.build_pair_tokenizer("char", val_pairs, shared=True, alphabet=alphabet)
        train, where = args.task, f"task {args.task} ({options})"
    else:
        pairs = data.load_pairs(args.data)
        if args.val_data:
            train_pairs, val_pairs = pairs, data.load_pairs(args.val_data)
        else:
            train_pairs, val_pairs = data.split_pairs(pairs)
        if not val_pairs:
            raise UserError(f"{args.data} has a single pair: nothing left to validate on (add --val-data)")
        if tokenizer is None:
            target_kind = args.target_tokenizer or args.tokenizer
            tokenizer = data.build_pair_tokenizer(args.tokenizer, train_pairs + val_pairs,
                                                  shared=not args.separate_vocab and target_kind == args.tokenizer,
                                                  vocab_size=args.vocab_size, target_kind=target_kind)
        train, dropped = data.encode_pairs(train_pairs, tokenizer, args.block_size, args.skip_long, args.data)
        where = f"{len(train):,} training pairs from {args.data}" + (f" ({dropped} too long, dropped)" if dropped else "")
    val, _ = data.encode_pairs(val_pairs, tokenizer, args.block_size, args.skip_long, args.val_data or "validation pairs")
    if model is None:
        cfg = model_config(args, tokenizer)
        check_memory(cfg, args.batch_size)
        model = Seq2Seq(cfg, seed=args.seed)
    task = Seq2SeqTask(model, tokenizer, train, val, args.batch_size, options, description=where)
    task.settings = dict(vars(args))
    return task


def model_config(args, tokenizer):
    return TransformerConfig(vocab_size=tokenizer.vocab_size, src_vocab_size=tokenizer.source.vocab_size,
                             block_size=args.block_size, n_encoder_layer=args.n_encoder_layer,
                             n_decoder_layer=args.n_decoder_layer, n_head=args.n_head, n_embd=args.n_embd,
                             norm=args.norm, activation=args.activation, positions=args.positions,
                             share_embeddings=tokenizer.shared, dropout=args.dropout,
                             label_smoothing=args.label_smoothing, dtype=args.dtype, backend=args.backend)


def check_memory(cfg, batch_size):
    """Refuse, before the model is allocated, a run whose arrays cannot fit (npgpt/resources.py's check).

    Weights, gradients and AdamW's two moments: 4 N.  Activations, as resources.py
    counts GPT's: ~20 C floats per token and encoder layer, ~30 per decoder layer
    (its cross-attention adds q, k, v, the output and a norm); logits 3 B T V.
    """
    from . import resources
    from .seq2seq import param_shapes

    n = sum(int(np.prod(shape)) for shape in param_shapes(cfg).values())
    itemsize = 8 if cfg.dtype == "float64" else 4
    tokens, C = batch_size * cfg.block_size, cfg.n_embd
    parts = {"weights": n * itemsize, "gradients": n * itemsize, "AdamW moments": 2 * n * itemsize,
             "activations": tokens * C * (20 * cfg.n_encoder_layer + 30 * cfg.n_decoder_layer + 8) * itemsize,
             "logits": 3 * tokens * cfg.vocab_size * itemsize}
    resources.check_memory(parts, resources.available_memory(), f"this run ({n:,} parameters)")


# ------------------------------------------------------------------ settings
# name: (group, type, default, help).  Every setting is saved with each checkpoint (the task's
# "settings"); --resume takes them back, and lets only RUN_SETTINGS change.
SETTINGS = {
    "task": ("data", str, None, "a built-in synthetic task"),
    "data": ("data", str, None, "UTF-8 file, one source<TAB>target per line"),
    "val_data": ("data", str, None, "validation pairs (default: a seeded 10%% of --data)"),
    "skip_long": ("data", bool, False, "drop pairs longer than --block-size instead of refusing the file"),
    "tokenizer": ("data", str, "char", "char, bpe, or words (whitespace-separated tokens)"),
    "target_tokenizer": ("data", str, None, "the target side's tokenizer when it differs from --tokenizer "
                                            "(separate vocabularies), e.g. words for space-separated phonemes"),
    "vocab_size": ("data", int, None, "BPE vocabulary size (with --tokenizer bpe)"),
    "separate_vocab": ("data", bool, False, "separate source and target vocabularies and embeddings"),
    "min_len": ("data", int, 1, "synthetic tasks: shortest string"),
    "max_len": ("data", int, 10, "synthetic tasks: longest string"),
    "n_symbols": ("data", int, 10, "synthetic tasks: alphabet size"),
    "digits": ("data", int, 3, "add: most digits per operand"),
    "val_size": ("data", int, 500, "synthetic tasks: held-out examples"),
    "block_size": ("model", int, 64, None),
    "n_encoder_layer": ("model", int, 2, None),
    "n_decoder_layer": ("model", int, 2, None),
    "n_head": ("model", int, 4, None),
    "n_embd": ("model", int, 128, None),
    "norm": ("model", str, "pre", None),
    "activation": ("model", str, "relu", None),
    "positions": ("model", str, "sinusoidal", None),
    "dropout": ("model", float, 0.0, None),
    "label_smoothing": ("model", float, 0.0, None),
    "dtype": ("model", str, "float32", None),
    "backend": ("model", str, "numba", None),
    "out": ("run", str, "out-seq2seq", None),
    "max_iters": ("run", int, 3000, "total iterations (a resumed run continues up to this number)"),
    "batch_size": ("run", int, 64, None),
    "lr": ("run", float, 1e-3, "peak learning rate"),
    "min_lr": ("run", float, None, "final rate of the cosine schedule (default --lr / 10)"),
    "warmup_iters": ("run", int, 100, None),
    "lr_decay_iters": ("run", int, None, "iteration at which cosine reaches --min-lr (default --max-iters)"),
    "eval_interval": ("run", int, 250, None),
    "grad_clip": ("run", float, 1.0, "clip the global gradient norm to this (0: off)"),
    "weight_decay": ("run", float, 0.0, "AdamW decoupled weight decay"),
    "seed": ("run", int, 1337, None),
}
SETTING_CHOICES = {"task": data.TASKS, "tokenizer": ("char", "bpe", "words"),
                   "target_tokenizer": ("char", "bpe", "words"), "norm": NORMS, "activation": ACTIVATIONS,
                   "positions": POSITIONS, "dtype": ("float32", "float64"), "backend": ("numpy", "numba")}
DEFAULTS = {name: default for name, (_, _, default, _) in SETTINGS.items()}
# What a resumed run may change; the rest would make it another run (another model, data or seed).
RUN_SETTINGS = ("max_iters", "eval_interval", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "grad_clip",
                "weight_decay", "backend")


def typed_settings(raw, where):
    """{key: value} from a TOML file or a checkpoint -> {setting: value}; one line for an unknown key or a wrong type."""
    settings = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in SETTINGS:
            raise UserError(f"{where}: unknown setting {key!r}")
        kind = SETTINGS[name][1]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and DEFAULTS[name] is None:
            settings[name] = None
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise UserError(f"{where}: setting {key!r} must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise UserError(f"{where}: setting {key!r} must be finite, got {value!r}")
        if name in SETTING_CHOICES and value not in SETTING_CHOICES[name]:
            raise UserError(f"{where}: setting {key!r} must be one of {', '.join(SETTING_CHOICES[name])}, got {value!r}")
        settings[name] = value
    return settings


def resolve_settings(args):
    """(settings namespace, checkpoint to resume or None) from defaults, checkpoint, TOML file and flags."""
    from . import safeload

    given = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    from_file = {}
    if args.config:
        if not os.path.isfile(args.config):
            raise UserError(f"config file not found: {args.config}")
        from_file = typed_settings(safeload.load_toml(args.config, what=f"config file {args.config}"),
                                   f"config file {args.config}")
    requested = {**from_file, **given}
    for name in ("data", "val_data"):
        if requested.get(name) is not None:
            requested[name] = os.path.abspath(requested[name])  # a resumed run must find it from anywhere
    ckpt = None
    base = dict(DEFAULTS)
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        task_state = ckpt.state.get("task")
        saved = task_state.get("settings") if isinstance(task_state, dict) else None
        if not isinstance(saved, dict):
            raise UserError(f"cannot resume {args.resume}: its checkpoint holds no npgpt seq2seq train settings")
        base.update(typed_settings(saved, f"corrupt checkpoint: {ckpt.path} state.json settings"))
        for name, value in requested.items():
            if name not in RUN_SETTINGS and name != "out" and value != base[name]:
                raise UserError(f"cannot resume {args.resume} with another --{name.replace('_', '-')}: it has "
                                f"{base[name]!r}, you asked for {value!r} (only {', '.join(RUN_SETTINGS)} may change)")
        requested["out"] = args.resume
    settings = {**base, **requested}
    if settings["min_lr"] is None:
        settings["min_lr"] = settings["lr"] / 10
    if settings["lr_decay_iters"] is None:  # fixed at the start and saved: a longer resumed run keeps its schedule
        settings["lr_decay_iters"] = settings["max_iters"]
    return argparse.Namespace(**settings), ckpt


# ------------------------------------------------------------------ the command
def add_arguments(parser):
    sub = parser.add_subparsers(dest="seq2seq_command", metavar="{train,translate,eval}")
    sub.required = True

    t = sub.add_parser("train", help="train an encoder-decoder on a synthetic task or a pairs file",
                       description="Settings come from the defaults, then --config FILE.toml, then the flags; "
                                   "each checkpoint keeps them, and --resume OUT reads them back.")
    t.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override it)")
    t.add_argument("--resume", metavar="OUT", help="continue the run saved in OUT exactly (writes back to OUT); "
                                                   "only the run settings (--max-iters, --lr, ...) may change")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    groups = {"data": t.add_argument_group("data"), "model": t.add_argument_group("model"),
              "run": t.add_argument_group("run (passed to npgpt's training loop)")}
    for name, (group, kind, default, help_text) in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        shown = f" (default {default})" if default not in (None, False) else ""
        kwargs = {"default": argparse.SUPPRESS, "help": (help_text or "") + shown or None}
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = kind
        if name in SETTING_CHOICES:
            kwargs["choices"] = SETTING_CHOICES[name]
        if name in ("data", "val_data"):
            kwargs["metavar"] = "PAIRS.tsv"
        groups[group].add_argument(flag, **kwargs)

    for name, help_text in (("translate", "translate text with a trained seq2seq checkpoint"),
                            ("eval", "exact match, token accuracy and corpus BLEU of a seq2seq checkpoint")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--ckpt", required=True, metavar="OUT", help="a seq2seq training output directory")
        p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
        p.add_argument("--length-penalty", type=float, default=0.6, help="beam search: GNMT's alpha (0: none)")
        p.add_argument("--backend", choices=("numpy", "numba"))
        if name == "translate":
            p.add_argument("--text", action="append", required=True, help="a source text (repeatable)")
        else:
            p.add_argument("--data", metavar="PAIRS.tsv", help="test pairs, one source<TAB>target per line")
            p.add_argument("--task", choices=data.TASKS, help="or held-out examples of a synthetic task")
            p.add_argument("--n", type=int, default=500, help="with --task: how many examples (default 500)")
            p.add_argument("--seed", type=int, default=0)


def one_blas_thread():
    """Run matrix products on one BLAS thread.

    A seq2seq batch is many small products; with two BLAS threads on two
    busy cores they wait on each other (measured: 2.6 s per step of the
    default model against 0.09 s on one thread).  npgpt train gets the same
    from its data-parallel workers.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def run(args):
    one_blas_thread()
    if args.seq2seq_command == "train":
        return run_train(args)
    if args.beam < 1:
        raise UserError(f"--beam must be at least 1, got {args.beam}")
    model, tokenizer, state = load_seq2seq(args.ckpt, args.backend)
    if args.seq2seq_command == "translate":
        for text in args.text:
            ids = tokenizer.source.encode(text)  # unknown characters: one ValueError line
            if not ids or len(ids) > model.config.block_size:
                raise UserError(f"--text {text!r} is {len(ids)} tokens; the model reads 1 to "
                                f"{model.config.block_size} (its block_size)")
            out = decode_all(model, [(ids, [])], args.beam, args.length_penalty)[0]
            print(tokenizer.target.decode(out), flush=True)
        return 0
    if (args.task is None) == (args.data is None):
        raise UserError("give either --data PAIRS.tsv or --task NAME")
    if args.data:
        pairs, where = data.load_pairs(args.data), args.data
    else:
        saved = state.get("task") if isinstance(state.get("task"), dict) else {}  # the Trainer's task extras
        options = saved.get("task_options") if saved.get("task") == args.task else None
        pairs = data.synthetic_pairs(args.task, args.n, np.random.default_rng([args.seed, 9]), held_out=True,
                                     **(options or {}))
        where = f"{args.n} held-out {args.task} examples"
    encoded, _ = data.encode_pairs(pairs, tokenizer, model.config.block_size, where=where)
    metrics = evaluate_pairs(model, tokenizer, encoded, args.beam, args.length_penalty)
    print(f"{where}: exact match {100 * metrics['exact_match']:.2f}% | token accuracy "
          f"{100 * metrics['token_accuracy']:.2f}% | BLEU {metrics['bleu']:.2f} ({metrics['bleu_unit']}) | loss {metrics['val_loss']:.4f} "
          f"({len(encoded)} pairs, {'greedy' if args.beam == 1 else f'beam {args.beam}'})")
    return 0


def run_train(args):
    from .memory import keep_freed_memory

    keep_freed_memory()  # each step's activations reuse the last step's pages, as npgpt train
    settings, ckpt = resolve_settings(args)
    _check_train_args(settings)
    task = build_task(settings, ckpt)
    print(task.describe(), flush=True)
    return run_training(task, vars(settings), ckpt, overwrite=args.overwrite, progress=not args.no_progress)


def _check_train_args(args):
    for name in ("block_size", "n_encoder_layer", "n_decoder_layer", "n_head", "n_embd", "max_iters", "batch_size",
                 "eval_interval", "min_len", "max_len", "n_symbols", "digits", "val_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.warmup_iters < 0 or args.seed < 0:
        raise UserError("--warmup-iters and --seed must be >= 0")
    if not 0 <= args.min_lr <= args.lr:
        raise UserError(f"--min-lr must be between 0 and --lr ({args.lr:g}), got {args.min_lr}")
    if args.lr_decay_iters < 1:
        raise UserError(f"--lr-decay-iters must be a positive integer, got {args.lr_decay_iters}")
    for name in ("grad_clip", "weight_decay"):
        if not (getattr(args, name) >= 0 and math.isfinite(getattr(args, name))):
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.vocab_size is not None and "bpe" not in (args.tokenizer, args.target_tokenizer):
        raise UserError("--vocab-size applies to --tokenizer bpe only")
    if args.min_len > args.max_len:
        raise UserError(f"--min-len {args.min_len} is above --max-len {args.max_len}")
    if args.n_symbols > len(data.SYMBOLS):
        raise UserError(f"--n-symbols must be at most {len(data.SYMBOLS)}, got {args.n_symbols}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    if (args.tokenizer != "char" or args.target_tokenizer) and args.task:
        raise UserError("--tokenizer and --target-tokenizer apply to --data; synthetic tasks use characters")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
