"""The training loop and `npgpt train`.

    npgpt train                                   # char model on Tiny Shakespeare, ~5 min on 2 cores
    npgpt train --data my.txt --max-iters 5000 --out out-mine
    npgpt train --resume out-mine --max-iters 8000   # continue exactly where it stopped

One iteration: draw grad_accum micro-batches of random windows, average
their gradients, clip, take one AdamW step at the schedule's rate.  Every
eval_interval iterations: validation loss (mean over eval_iters random
validation batches), a line in OUT/metrics.jsonl, and a checkpoint when
the validation loss improved.  At the end (or on Ctrl-C) a final
checkpoint, then a sample.

Settings come from, in increasing priority: the defaults below, the
checkpoint being resumed, a --config TOML file, and command-line flags.
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import tomllib
import typing
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from . import checkpoint, data, safeload
from .errors import UserError
from .evaluate import perplexity
from .lock import lock_out_dir
from .memory import keep_freed_memory
from .model import GPT, GPTConfig
from .optim import SCHEDULES, AdamW, accumulate_gradients, make_schedule
from .parallel import DataParallel, choose_workers
from .resources import check_training_run


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run.  Defaults: the `npgpt train` model (see docs/training.md)."""

    out: str = "out"
    data: str | None = None  # None: the bundled Tiny Shakespeare
    tokenizer: str = "char"
    vocab_size: int | None = None  # BPE only
    max_iters: int = 2000
    batch_size: int = 12  # per micro-batch
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True  # biases in linear and layer-norm layers, as GPT-2
    dropout: float = 0.0
    label_smoothing: float = 0.0
    lr: float = 1e-3
    min_lr: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # cosine reaches min_lr here; None: max_iters
    lr_step_every: int = 1000  # step schedule
    lr_gamma: float = 0.5  # step and plateau schedules
    lr_patience: int = 2  # plateau schedule, in evaluations
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # nanoGPT's Shakespeare setting: few tokens per step, so average v over longer
    grad_clip: float = 1.0  # 0: off
    grad_accum: int = 1
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    dtype: str = "float32"
    backend: str = GPTConfig().backend  # the model's default: whoever tunes the kernels decides it
    workers: int = 0  # data-parallel threads; 0: automatic (npgpt.parallel.choose_workers)
    sample_tokens: int = 500  # printed at the end; 0: none


# Settings that define the model: a resumed run may not change them.
MODEL_SETTINGS = ("tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "dtype")

HELP = {
    "out": "output directory for checkpoints and metrics.jsonl",
    "data": "UTF-8 text file to train on (default: the bundled Tiny Shakespeare)",
    "tokenizer": "char: one token per character; bpe: byte-level BPE trained on the data",
    "vocab_size": "BPE vocabulary size (with --tokenizer bpe)",
    "max_iters": "total optimizer steps (a resumed run continues up to this number)",
    "batch_size": "sequences per micro-batch",
    "block_size": "context length in tokens",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "embedding width (divisible by --n-head)",
    "bias": "biases in linear and layer-norm layers (--no-bias: none, as nanoGPT's default)",
    "dropout": "dropout probability while training",
    "label_smoothing": "label smoothing of the training loss",
    "lr": "peak learning rate",
    "min_lr": "final learning rate of the cosine schedule, floor of step/plateau",
    "lr_schedule": "learning-rate schedule, each after a linear warmup",
    "warmup_iters": "linear warmup iterations",
    "lr_decay_iters": "iteration at which cosine reaches --min-lr (default: --max-iters)",
    "lr_step_every": "step schedule: multiply the rate by --lr-gamma every N iterations",
    "lr_gamma": "step/plateau schedules: the factor the rate is multiplied by",
    "lr_patience": "plateau schedule: evaluations without improvement before the rate drops",
    "weight_decay": "AdamW decoupled weight decay (2-D weights only)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "grad_accum": "micro-batches per optimizer step",
    "eval_interval": "evaluate, log and maybe checkpoint every N iterations",
    "eval_iters": "validation batches per evaluation",
    "seed": "random seed (weights, batches, dropout)",
    "dtype": "float type of weights and activations",
    "backend": "layer implementation: numpy reference layers or numba kernels",
    "workers": "data-parallel threads, each running the whole model on a slice of the batch "
               "(0: one per core for models under 30M parameters, else 1)",
    "sample_tokens": "tokens to sample at the end (0: no sample)",
}
CHOICES = {"tokenizer": ("char", "bpe"), "lr_schedule": SCHEDULES, "dtype": ("float32", "float64"),
           "backend": ("numpy", "numba")}


def _field_kind(f):
    """bool, int, float or str: what a setting holds (`int | None` -> int; None is only ever a default)."""
    if f.type in (bool, int, float, str):
        return f.type
    (kind,) = [t for t in typing.get_args(f.type) if t is not type(None)]
    return kind


FIELDS = {f.name: f for f in fields(TrainConfig)}
KINDS = {name: _field_kind(f) for name, f in FIELDS.items()}


# ------------------------------------------------------------------ settings
def add_arguments(parser):
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override it)")
    parser.add_argument("--resume", metavar="OUT", help="continue the run saved in OUT exactly (writes back to OUT)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if --out already holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (evaluations are still printed)")
    for name, f in FIELDS.items():
        default = f.default if f.default is not None else "none"
        kwargs = {"help": f"{HELP[name]} (default: {default})", "default": argparse.SUPPRESS, "type": KINDS[name]}
        if KINDS[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # --bias / --no-bias
            del kwargs["type"]
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def read_toml(path):
    """A TOML file -> {setting: value}; keys may be spelled max_iters or max-iters."""
    if not os.path.exists(path):
        raise UserError(f"config file not found: {path}")
    return typed_settings(safeload.load_toml(path, what=f"config file {path}"), f"config file {path}")


def typed_settings(raw, where):
    """{key: value} from a TOML file or a checkpoint -> {setting: value}, each of its setting's type.

    An int is accepted for a float setting; a string such as "0.001" is not
    (one line naming the setting, not a TypeError later).
    """
    settings = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"{where}: unknown setting {key!r}")
        kind = KINDS[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and FIELDS[name].default is None:  # settings whose default is None may be null in a checkpoint
            settings[name] = value
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise UserError(f"{where}: setting {key!r} must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise UserError(f"{where}: setting {key!r} must be finite, got {value!r}")
        settings[name] = value
    return settings


def validate(cfg):
    """Raise UserError naming the first invalid setting."""

    def bad(name, rule, value):
        raise UserError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")

    for name in ("max_iters", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "grad_accum",
                 "eval_interval", "eval_iters", "lr_step_every"):
        if getattr(cfg, name) < 1:
            bad(name, "a positive integer", getattr(cfg, name))
    for name in ("warmup_iters", "lr_patience", "sample_tokens", "seed", "workers"):
        if getattr(cfg, name) < 0:
            bad(name, ">= 0", getattr(cfg, name))
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        bad("lr", "> 0", cfg.lr)
    if not 0 <= cfg.min_lr <= cfg.lr:
        bad("min_lr", f"between 0 and --lr ({cfg.lr:g})", cfg.min_lr)
    for name in ("dropout", "label_smoothing", "beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            bad(name, "in [0, 1)", getattr(cfg, name))
    for name in ("weight_decay", "grad_clip"):
        if not (getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name))):
            bad(name, ">= 0", getattr(cfg, name))
    if not 0 < cfg.lr_gamma <= 1:
        bad("lr_gamma", "in (0, 1]", cfg.lr_gamma)
    if cfg.lr_decay_iters is not None and cfg.lr_decay_iters < 1:
        bad("lr_decay_iters", "a positive integer", cfg.lr_decay_iters)
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n-embd ({cfg.n_embd}) must be divisible by --n-head ({cfg.n_head})")
    if cfg.tokenizer == "char" and cfg.vocab_size is not None:
        raise UserError("--vocab-size applies to --tokenizer bpe only (a char vocabulary is the corpus's characters)")
    if cfg.tokenizer == "bpe" and (cfg.vocab_size is None or cfg.vocab_size < 257):
        bad("vocab_size", "at least 257 with --tokenizer bpe (256 bytes + merges)", cfg.vocab_size)


def resolve_settings(args):
    """(TrainConfig, checkpoint to resume or None) from defaults, checkpoint, TOML and flags."""
    given = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    from_file = read_toml(args.config) if args.config else {}
    requested = {**from_file, **given}
    ckpt = None
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        saved = ckpt.state.get("train_config")
        if not isinstance(saved, dict):
            raise UserError(f"corrupt checkpoint: {ckpt.path} has no valid training settings")
        base = TrainConfig(**typed_settings(saved, f"corrupt checkpoint: {ckpt.path} state.json train_config"))
        for name in MODEL_SETTINGS:
            if name in requested and requested[name] != getattr(base, name):
                raise UserError(f"cannot resume {args.resume} with a different model: it has "
                                f"{name.replace('_', '-')}={getattr(base, name)}, you asked for {requested[name]}")
        model_block = int(ckpt.config.get("block_size", 0))
        if requested.get("block_size", base.block_size) > model_block:
            raise UserError(f"--block-size {requested['block_size']} is larger than the model's block_size "
                            f"{model_block} in {args.resume}")
        requested.setdefault("out", args.resume)
    else:
        base = TrainConfig()
    if "data" in requested and requested["data"] is not None:
        requested["data"] = os.path.abspath(requested["data"])  # a checkpoint must find it from anywhere
    cfg = replace(base, **requested)
    if cfg.lr_decay_iters is None:
        # fixed at the start and saved, so that resuming with a larger --max-iters never
        # bends the schedule of the iterations already planned
        cfg = replace(cfg, lr_decay_iters=cfg.max_iters)
    validate(cfg)
    return cfg, ckpt


def prepare_out_dir(out, resume, overwrite):
    """Make sure `out` is writable before any work, and never silently replace a previous run."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    if not resume and not overwrite:
        pointer = checkpoint.read_pointer(out)
        if pointer is not None:
            raise UserError(f"{out} already holds a checkpoint (iteration {pointer.get('iter')}); "
                            f"continue it with --resume {out}, or pass --overwrite, or choose another --out")


# ------------------------------------------------------------------ RNG state
def diverged(out, iteration, what):
    """The documented one-line stop of a non-finite run (exit status 2): nothing new is saved."""
    return UserError(f"training diverged at iteration {iteration}: {what}; nothing was saved and the last "
                     f"good checkpoint in {out} is unharmed (try a lower --lr)")


def rng_state(rng):
    return rng.bit_generator.state  # a dict of Python ints: JSON-serialisable


def rng_from_state(state):
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise UserError("corrupt checkpoint: unrecognised random-generator state")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


# ------------------------------------------------------------------ evaluation
def estimate_loss(model, tokens, batch_size, block_size, n_batches, rng, parallel=None):
    """Mean loss over n_batches random windows of tokens (no dropout); parallel splits each batch."""
    losses = []
    for _ in range(n_batches):
        x, y = data.get_batch(tokens, batch_size, block_size, rng)
        losses.append(parallel.loss(x, y) if parallel is not None else model.forward(x, y)[0])
    return float(np.mean(losses))


# ------------------------------------------------------------------ the trainer
class Trainer:
    """Model, optimizer, schedule, data and RNGs of one run, and the loop that advances them."""

    def __init__(self, cfg, ckpt=None, progress=True, out=None):
        self.cfg, self.progress, self.out = cfg, progress, out or sys.stdout
        text = data.load_text(cfg.data)
        if ckpt is None:
            self.tokenizer = data.build_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
        else:
            from .tokenizers import from_dict

            self.tokenizer = from_dict(ckpt.tokenizer)
        try:
            self.corpus = data.make_corpus(text, self.tokenizer)
        except ValueError as e:  # characters the resumed model has never seen
            raise UserError(f"cannot encode {cfg.data or data.BUNDLED} with the checkpoint's tokenizer: {e}") from None
        data.check_long_enough(self.corpus.train, cfg.block_size, "training split (90% of the corpus)")
        data.check_long_enough(self.corpus.val, cfg.block_size, "validation split (10% of the corpus)")

        backend = cfg.backend  # GPTConfig validates the name
        if ckpt is None:
            model_config = GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=cfg.block_size,
                                     n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                     bias=cfg.bias, dropout=cfg.dropout, dtype=cfg.dtype, backend=backend)
            self.model = GPT(model_config, seed=cfg.seed)
        else:
            self.model = checkpoint.build_model(ckpt, dropout=cfg.dropout, backend=backend)
        self.optimizer = AdamW(self.model, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                               grad_clip=cfg.grad_clip)
        self.schedule = make_schedule(cfg.lr_schedule, cfg.lr, cfg.min_lr, cfg.warmup_iters,
                                      cfg.lr_decay_iters, cfg.lr_step_every, cfg.lr_gamma,
                                      cfg.lr_patience)
        self.grad = np.zeros_like(self.model.flat_params)
        if cfg.workers == 0:
            # Fixed at the start and saved, like lr_decay_iters: the number of shards
            # decides the order of float sums (and the dropout streams), so a run
            # resumed on a machine with another core count still splits the same way.
            self.cfg = cfg = replace(cfg, workers=choose_workers(self.model, cfg.batch_size))
        self.parallel = DataParallel(self.model, cfg.workers) if cfg.workers > 1 else None
        self.scratch = np.zeros_like(self.grad) if cfg.grad_accum > 1 else None
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.grad_accum

        if ckpt is None:
            self.iter, self.best_val = 0, math.inf
            self.data_rng = np.random.default_rng([cfg.seed, 1])  # batches
            self.dropout_rng = np.random.default_rng([cfg.seed, 2])  # dropout masks
            self.elapsed = 0.0
        else:
            self._restore(ckpt)
            if cfg.max_iters <= self.iter:
                raise UserError(f"{cfg.out} is already at iteration {self.iter}; pass a --max-iters above it "
                                f"to train further")
        self.saved_iter = self.iter if ckpt is not None else None
        self.last_val = None

    def _restore(self, ckpt):
        state = ckpt.state
        try:
            self.iter = int(state["iter"])
            best = state["best_val_loss"]
            self.best_val = math.inf if best is None else float(best)
            self.data_rng = rng_from_state(state["rng"]["data"])
            self.dropout_rng = rng_from_state(state["rng"]["dropout"])
            self.schedule.load_state_dict(state["schedule"])
            self.optimizer.load_state_dict(ckpt.optimizer, state["optimizer"])
            self.elapsed = float(state.get("elapsed", 0.0))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
            raise UserError(f"corrupt checkpoint: {ckpt.path} training state is incomplete ({e})") from None

    # ---------------------------------------------------------------- pieces
    def state(self):
        """The JSON training state a checkpoint stores (arrays go separately)."""
        _, opt_scalars = self.optimizer.state_dict()
        return {"iter": self.iter, "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                "train_config": asdict(self.cfg), "optimizer": opt_scalars, "schedule": self.schedule.state_dict(),
                "rng": {"data": rng_state(self.data_rng), "dropout": rng_state(self.dropout_rng)},
                "elapsed": self.elapsed}

    def save(self):
        if self.saved_iter == self.iter:
            return
        bad = checkpoint.first_non_finite(self.model.params)
        if bad is not None:  # never replace a good checkpoint by a NaN one
            raise diverged(self.cfg.out, self.iter, f"weight {bad} is not finite")
        arrays, _ = self.optimizer.state_dict()
        checkpoint.save(self.cfg.out, self.model, self.tokenizer, self.state(), arrays)
        self.saved_iter = self.iter

    def step(self):
        """One optimizer step -> (mean micro-batch loss, gradient norm, learning rate)."""
        cfg = self.cfg
        lr = self.schedule.lr(self.iter)
        batches = [data.get_batch(self.corpus.train, cfg.batch_size, cfg.block_size, self.data_rng)
                   for _ in range(cfg.grad_accum)]
        rng = self.dropout_rng if cfg.dropout > 0 else None
        loss = accumulate_gradients(self.model, batches, self.grad, self.scratch, rng, cfg.label_smoothing,
                                    self.parallel)
        try:
            norm = self.optimizer.step(self.grad, lr)
        except FloatingPointError as e:
            raise UserError(f"at iteration {self.iter + 1}: {e}; the last checkpoint in {cfg.out} is unharmed") from None
        self.iter += 1
        return loss, norm, lr

    def evaluate(self):
        """Validation loss over eval_iters batches; the same batches at every evaluation."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 3])  # fresh each time: comparable numbers, training RNGs untouched
        return estimate_loss(self.model, self.corpus.val, cfg.batch_size, cfg.block_size, cfg.eval_iters, rng,
                             self.parallel)

    def log(self, line):
        from tqdm import tqdm

        tqdm.write(line, file=self.out)
        self.out.flush()  # a log file should show each evaluation as it happens

    def append_metrics(self, record):
        with open(os.path.join(self.cfg.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- the loop
    def train(self):
        """Run to max_iters or until Ctrl-C; returns True if it finished, False if interrupted."""
        from tqdm import tqdm

        cfg = self.cfg
        stop = {"requested": False}

        def on_sigint(signum, frame):
            if stop["requested"]:  # a second Ctrl-C: give up at once (the last checkpoint is intact)
                raise KeyboardInterrupt
            stop["requested"] = True
            self.log(f"{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}: stopping after this iteration and saving a checkpoint (Ctrl-C again to abort)")

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
        # SIGTERM (docker stop, Slurm, timeout) gets the same graceful save as Ctrl-C
        previous_term = signal.signal(signal.SIGTERM, on_sigint) if in_main else None
        try:
            if self.iter == 0:
                self._evaluate_and_log(None, None, None, None, 0.0, scheduled=False)
            bar = tqdm(total=cfg.max_iters, initial=self.iter, unit="it", dynamic_ncols=True,
                       disable=None if self.progress else True, file=sys.stderr)  # None: off when not a terminal
            losses, norm, lr = [], None, None
            window_start, window_tokens = time.perf_counter(), 0
            while self.iter < cfg.max_iters and not stop["requested"]:
                t0 = time.perf_counter()
                loss, norm, lr = self.step()
                self.elapsed += time.perf_counter() - t0
                losses.append(loss)
                window_tokens += self.tokens_per_iter
                tokens_per_sec = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tok/s", refresh=False)
                scheduled = self.iter % cfg.eval_interval == 0
                if scheduled or self.iter == cfg.max_iters:
                    self._evaluate_and_log(float(np.mean(losses)), norm, lr, tokens_per_sec, self.elapsed, scheduled)
                    losses, window_start, window_tokens = [], time.perf_counter(), 0
            bar.close()
            self.save()  # at the end, and on Ctrl-C
            return not stop["requested"]
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
                signal.signal(signal.SIGTERM, previous_term)

    def _evaluate_and_log(self, train_loss, norm, lr, tokens_per_sec, elapsed, scheduled):
        val = self.evaluate()
        if not math.isfinite(val):
            raise diverged(self.cfg.out, self.iter, f"validation loss is {val}")
        self.last_val = val
        if scheduled:  # only evaluations at fixed iterations steer plateau, so resuming stays exact
            self.schedule.observe(val)
        improved = val < self.best_val
        if improved:
            self.best_val = val
        train_text = f"train {train_loss:.4f} | " if train_loss is not None else ""
        ppl = perplexity(val)
        save = improved and self.iter > 0
        if save:
            self.save()  # first: the log says "saved" only once the save has succeeded
        self.log(f"iter {self.iter:>6}: {train_text}val {val:.4f} | ppl {ppl:.2f}"
                 + (f" | lr {lr:.2e} | {tokens_per_sec:,.0f} tok/s" if lr is not None else "")
                 + (" | saved" if save else ""))
        self.append_metrics({"iter": self.iter, "train_loss": train_loss, "val_loss": val,
                             "val_perplexity": ppl if math.isfinite(ppl) else None, "lr": lr, "grad_norm": norm,
                             "tokens_per_sec": tokens_per_sec, "elapsed": round(elapsed, 3)})


# ------------------------------------------------------------------ the command
def run(args):
    started = time.perf_counter()
    keep_freed_memory()  # each step's activations reuse the last step's pages (npgpt/memory.py)
    cfg, ckpt = resolve_settings(args)
    check_training_run(cfg, ckpt.config["vocab_size"] if ckpt else cfg.vocab_size or 256)  # before allocating
    with lock_out_dir(cfg.out):  # one run per --out (npgpt/lock.py); released even on kill -9
        return _run_locked(args, cfg, ckpt, started)


def _run_locked(args, cfg, ckpt, started):
    prepare_out_dir(cfg.out, resume=ckpt is not None, overwrite=args.overwrite)
    progress = not args.no_progress
    trainer = Trainer(cfg, ckpt, progress=progress)
    if ckpt is None:  # a fresh run owns its metrics file
        open(os.path.join(cfg.out, "metrics.jsonl"), "w").close()
    model = trainer.model
    print(f"npgpt train: {model.num_params:,} parameters ({model.config.n_layer} layers, {model.config.n_head} heads, "
          f"n_embd {model.config.n_embd}, block {model.config.block_size}, vocab {model.config.vocab_size}), "
          f"{model.config.backend} backend, {model.config.dtype}, "
          f"{trainer.cfg.workers} data-parallel worker(s); "
          f"{trainer.corpus.train.size:,} training tokens from {cfg.data or data.BUNDLED}; "
          + (f"resuming at iteration {trainer.iter}" if ckpt else f"{cfg.max_iters} iterations"), flush=True)
    finished = trainer.train()
    wall = time.perf_counter() - started
    if not finished:
        print(f"interrupted at iteration {trainer.iter}; checkpoint saved in {cfg.out}. "
              f"Continue with: npgpt train --resume {cfg.out}", file=sys.stderr)
        return 130
    print(f"done: {cfg.max_iters} iterations, val loss {trainer.last_val:.4f} "
          f"(best {trainer.best_val:.4f}), {wall:.0f}s wall; checkpoint in {cfg.out}", flush=True)
    if cfg.sample_tokens:
        from .generate import print_samples

        print("---------------- sample ----------------", flush=True)
        print_samples(model, trainer.tokenizer, _default_prompt(trainer.tokenizer), 1, cfg.sample_tokens,
                      cfg.seed, temperature=0.8, top_k=200, top_p=1.0)
    return 0


def _default_prompt(tokenizer):
    """A newline when the vocabulary has one (a sample then starts like a new speech), else token 0."""
    try:
        return tokenizer.encode("\n")
    except ValueError:
        return [0]
