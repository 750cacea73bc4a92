"""The training loop and `npgpt train`.

    npgpt train                                   # char model on Tiny Shakespeare, ~5 min on 2 cores
    npgpt train --data my.txt --max-iters 5000 --out out-mine
    npgpt train --resume out-mine --max-iters 8000   # continue exactly where it stopped
    npgpt train --init-from out-mine --data other.txt --out out-tuned   # fine-tune

One loop (Trainer) for every task: language modelling here, classification
and seq2seq elsewhere.  A task (npgpt/tasks.py, which states the protocol)
draws batches, computes a loss and its gradient and evaluates; the Trainer
does everything else, the same way for all of them:

- one iteration: grad_accum micro-batches, their gradients averaged, a
  non-finite loss or gradient stopping the run (naming the first bad
  tensor), an optional z-score outlier skip, clipping, one AdamW step at
  the schedule's rate;
- every log_interval iterations a record in OUT/steps.jsonl (loss, lr,
  gradient norm and clipping, ms per step, tokens/s, MFU), after a header
  naming the run's settings, versions, CPU and git revision;
- every stats_interval iterations (off by default) a "stats" record in the
  step log: per-tensor update ratios and per-layer activation statistics
  (npgpt/observe.py), read from the step's own arrays;
- every eval_interval iterations the task's evaluation, a line in
  OUT/metrics.jsonl, and a checkpoint when the validation loss improved;
  with --plot the figures OUT/plots/*.png and OUT/report.html redrawn
  (npgpt/plot.py); with --tensorboard every record also goes to TensorBoard;
  OUT/best.json names the best-validation snapshot, checkpoint.json the
  latest (npgpt/checkpoint.py);
- at the end (or on Ctrl-C / SIGTERM) a final checkpoint; resuming it is
  bit-exact (weights, AdamW moments, RNGs, schedule, outlier windows).

Settings come from, in increasing priority: the defaults below (or the
fine-tuning defaults with --init-from), the checkpoint being resumed, a
--config TOML file, and command-line flags.
"""
import argparse
import datetime
import functools
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import tomllib
import typing
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from . import checkpoint, observe, safeload
from .errors import UserError
from .evaluate import perplexity
from .lock import lock_out_dir
from .memory import keep_freed_memory
from .model import NORMS, POSITIONS, GPTConfig, views_into
from .optim import SCHEDULES, AdamW, kernels_for, make_schedule
from .parallel import choose_workers
from .resources import check_training_run
from .tasks import LanguageModelingTask, estimate_loss, initial_model_settings  # noqa: F401 (estimate_loss: docs)

METRICS = "metrics.jsonl"  # one record per evaluation
STEP_LOG = "steps.jsonl"  # a header per start or resume, one record per --log-interval, skipped updates


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
    norm: str = "pre"  # layer norm placement: pre (GPT-2) or post (the Transformer paper); docs/model.md
    positions: str = "learned"  # learned (GPT-2's wpe) or sinusoidal (the paper's fixed table)
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
    init_from: str | None = None  # fine-tune this model (an npgpt output directory or a GPT-2 folder)
    freeze: str | None = None  # fine-tuning: which base weights train (npgpt/finetune.py); None: all, or none with LoRA
    lora_rank: int = 0  # fine-tuning: rank of fresh LoRA adapters (0: none)
    lora_alpha: float = 16.0  # LoRA scale alpha / rank
    lora_targets: str = "c_attn,c_proj"  # the layers of every block that get adapters
    log_interval: int = 10  # iterations per step-log record in OUT/steps.jsonl; 0: no step log
    skip_loss_z: float = 0.0  # skip an update whose loss z-score exceeds this; 0: never
    skip_grad_z: float = 0.0  # skip an update whose gradient-norm z-score exceeds this; 0: never
    stats_interval: int = 0  # network statistics (npgpt/observe.py) every N iterations into OUT/steps.jsonl; 0: none
    plot: bool = False  # refresh OUT/plots/*.png and OUT/report.html after each evaluation (npgpt/plot.py)
    tensorboard: str | None = None  # also write every record as TensorBoard events into this directory


# Fine-tuning defaults, used with --init-from for the settings the user did not give (docs/training.md):
# a pretrained model needs small steps to keep what it knows, and a small corpus is learnt
# (then overfit) in a few hundred of them, so evaluate often and keep the best snapshot.
FINETUNE_DEFAULTS = dict(lr=1e-4, min_lr=1e-5, warmup_iters=20, max_iters=500, eval_interval=50)
FINETUNE_MAX_BLOCK = 256  # default context when fine-tuning: the model's, at most this (CPU time grows with T^2)


# Settings that define the model: a resumed run may not change them.
MODEL_SETTINGS = ("tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "dtype", "norm", "positions",
                  "lora_rank", "lora_alpha", "lora_targets")
# Settings that define the optimizer's state: a resumed run may not change them either.
OPTIMIZER_SETTINGS = ("freeze",)

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
    "norm": "layer norm before each sub-layer (pre, GPT-2) or after its residual sum (post, the Transformer "
            "paper: needs warmup; docs/model.md)",
    "positions": "learned position embeddings (GPT-2) or the fixed sinusoid table of the Transformer paper",
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
    "init_from": "fine-tune the model in this npgpt output directory (its best snapshot) or Hugging Face GPT-2 "
                 "folder: its size and tokenizer are kept, and unset settings take fine-tuning defaults "
                 "(docs/training.md)",
    "freeze": "with --init-from: the base weights that train, the rest frozen: none (all train), lora (only "
              "the adapters), all-but-last:N, all-but-head-and-ln, all-but-ln; unset: none, or lora with --lora-rank",
    "lora_rank": "with --init-from: add LoRA adapters of this rank and train them alone (0: no adapters)",
    "lora_alpha": "LoRA scale: the adapters' product is multiplied by alpha / rank",
    "lora_targets": "comma-separated layers of every block that get adapters: c_attn, c_proj (attention's "
                    "output), c_fc, mlp.c_proj",
    "log_interval": "write a step-log record (loss, lr, gradient norm, clipping, ms/step, tokens/s, MFU) "
                    "to OUT/steps.jsonl every N iterations (0: none)",
    "skip_loss_z": "skip the update of a step whose loss is more than this many standard deviations above "
                   "the last 128 steps' (0: never)",
    "skip_grad_z": "skip the update of a step whose gradient norm is more than this many standard deviations "
                   "above the last 128 steps' (0: never)",
    "stats_interval": "write network statistics (per-tensor weight/gradient RMS and update:data ratio, per-layer "
                      "activations) to OUT/steps.jsonl every N iterations (0: none; docs/observability.md)",
    "plot": "refresh the figures OUT/plots/*.png and OUT/report.html after each evaluation (needs matplotlib)",
    "tensorboard": "also write the run's records as TensorBoard event files into DIR (needs tensorboardX)",
}
METAVARS = {"tensorboard": "DIR"}
CHOICES = {"tokenizer": ("char", "bpe"), "lr_schedule": SCHEDULES, "dtype": ("float32", "float64"),
           "backend": ("numpy", "numba"), "norm": NORMS, "positions": POSITIONS}


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
        if name in METAVARS:
            kwargs["metavar"] = METAVARS[name]
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
    for name in ("warmup_iters", "lr_patience", "sample_tokens", "seed", "workers", "log_interval",
                 "stats_interval"):
        if getattr(cfg, name) < 0:
            bad(name, ">= 0", getattr(cfg, name))
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        bad("lr", "> 0", cfg.lr)
    if not 0 <= cfg.min_lr <= cfg.lr:
        bad("min_lr", f"between 0 and --lr ({cfg.lr:g})", cfg.min_lr)
    for name in ("dropout", "label_smoothing", "beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            bad(name, "in [0, 1)", getattr(cfg, name))
    for name in ("weight_decay", "grad_clip", "skip_loss_z", "skip_grad_z"):
        if not (getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name))):
            bad(name, ">= 0", getattr(cfg, name))
    if not 0 < cfg.lr_gamma <= 1:
        bad("lr_gamma", "in (0, 1]", cfg.lr_gamma)
    if cfg.lr_decay_iters is not None and cfg.lr_decay_iters < 1:
        bad("lr_decay_iters", "a positive integer", cfg.lr_decay_iters)
    if cfg.stats_interval and cfg.norm != "pre":  # npgpt.observe reads the pre-LN block's forward cache
        raise UserError(f"--stats-interval needs --norm pre (the statistics of a --norm {cfg.norm} model are not "
                        f"implemented)")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n-embd ({cfg.n_embd}) must be divisible by --n-head ({cfg.n_head})")
    if cfg.tokenizer == "char" and cfg.vocab_size is not None:
        raise UserError("--vocab-size applies to --tokenizer bpe only (a char vocabulary is the corpus's characters)")
    if cfg.tokenizer == "bpe" and (cfg.vocab_size is None or cfg.vocab_size < 257):
        bad("vocab_size", "at least 257 with --tokenizer bpe (256 bytes + merges)", cfg.vocab_size)
    validate_finetuning(cfg, bad)


def validate_finetuning(cfg, bad):
    """--freeze and --lora-*: well-formed, and only when fine-tuning (freezing random weights teaches nothing)."""
    from .finetune import FREEZE_SPECS
    from .model import lora_target_names

    if cfg.lora_rank < 0:
        bad("lora_rank", ">= 0", cfg.lora_rank)
    if not (cfg.lora_alpha > 0 and math.isfinite(cfg.lora_alpha)):
        bad("lora_alpha", "> 0", cfg.lora_alpha)
    try:
        if not lora_target_names(cfg.lora_targets):
            bad("lora_targets", "at least one of c_attn, c_proj, c_fc, mlp.c_proj", cfg.lora_targets)
    except ValueError as e:
        raise UserError(f"--lora-targets: {e}") from None
    spec = cfg.freeze
    if spec is not None:
        count = spec.removeprefix("all-but-last:")
        if spec not in FREEZE_SPECS[:2] + FREEZE_SPECS[3:] and not (spec.startswith("all-but-last:") and count.isdigit()):
            bad("freeze", "one of " + ", ".join(FREEZE_SPECS), spec)
        if spec == "lora" and not cfg.lora_rank:
            raise UserError("--freeze lora needs LoRA adapters (--lora-rank > 0); without them nothing would train")
    if cfg.init_from is None and (cfg.lora_rank or spec not in (None, "none")):
        flag = "--lora-rank" if cfg.lora_rank else "--freeze"
        raise UserError(f"{flag} applies to fine-tuning: pass --init-from MODEL (a pretrained npgpt output "
                        "directory or Hugging Face GPT-2 folder)")


def resolve_settings(args):
    """(TrainConfig, checkpoint to resume or None) from defaults, checkpoint, TOML and flags.

    With --init-from, the model being fine-tuned fixes the model's settings and the
    fine-tuning defaults (FINETUNE_DEFAULTS) replace the from-scratch ones.
    """
    given = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    from_file = read_toml(args.config) if args.config else {}
    requested = {**from_file, **given}
    for name in ("data", "init_from", "tensorboard"):
        if requested.get(name) is not None:
            requested[name] = os.path.abspath(requested[name])  # a checkpoint must find it from anywhere
    ckpt = None
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        saved = ckpt.state.get("train_config")
        if not isinstance(saved, dict):
            raise UserError(f"corrupt checkpoint: {ckpt.path} has no valid training settings")
        base = TrainConfig(**typed_settings(saved, f"corrupt checkpoint: {ckpt.path} state.json train_config"))
        for name in MODEL_SETTINGS + OPTIMIZER_SETTINGS:
            if name in requested and requested[name] != getattr(base, name):
                what = "model" if name in MODEL_SETTINGS else "set of trainable parameters"
                raise UserError(f"cannot resume {args.resume} with a different {what}: it has "
                                f"{name.replace('_', '-')}={getattr(base, name)}, you asked for {requested[name]}")
        if requested.get("init_from", base.init_from) != base.init_from:
            raise UserError(f"--init-from starts a new run; --resume {args.resume} continues the one there")
        model_block = int(ckpt.config.get("block_size", 0))
        if requested.get("block_size", base.block_size) > model_block:
            raise UserError(f"--block-size {requested['block_size']} is larger than the model's block_size "
                            f"{model_block} in {args.resume}")
        requested.setdefault("out", args.resume)
    elif requested.get("init_from") is not None:
        base = finetuning_base(requested)
    else:
        base = TrainConfig()
    cfg = replace(base, **requested)
    if cfg.lr_decay_iters is None:
        # fixed at the start and saved, so that resuming with a larger --max-iters never
        # bends the schedule of the iterations already planned
        cfg = replace(cfg, lr_decay_iters=cfg.max_iters)
    validate(cfg)
    return cfg, ckpt


def finetuning_base(requested):
    """The defaults of a fine-tuning run: FINETUNE_DEFAULTS, and the model's own size and tokenizer."""
    path = requested["init_from"]
    model = initial_model_settings(path)
    for name in MODEL_SETTINGS:
        if name in model and name in requested and requested[name] != model[name]:
            raise UserError(f"--init-from {path} fixes the model: it has {name.replace('_', '-')}={model[name]}, "
                            f"you asked for {requested[name]}")
    if requested.get("block_size", 0) > model["block_size"]:
        raise UserError(f"--block-size {requested['block_size']} is larger than the model's block_size "
                        f"{model['block_size']} in {path}")
    block_size = min(model.pop("block_size"), FINETUNE_MAX_BLOCK)
    return TrainConfig(**FINETUNE_DEFAULTS, **model, block_size=block_size)


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


# ------------------------------------------------------------------ guardrails
class OutlierDetector:
    """z-score of a value against the previous WINDOW values (llm.c's -sl / -sg).

    z(x) is None until the window is full.  Every value enters the window,
    skipped ones included (as llm.c does), so that a lasting change of level
    widens the window's spread and is not skipped for ever.  The state is
    the list of values itself: saved in the checkpoint, so a resumed run
    skips exactly the steps the straight run skips.
    """

    WINDOW = 128

    def __init__(self, values=()):
        self.values = [float(v) for v in values][-self.WINDOW:]

    def z(self, x):
        if len(self.values) < self.WINDOW:
            return None
        window = np.array(self.values, dtype=np.float64)
        mean, std = float(window.mean()), float(window.std())
        if std == 0.0:
            return 0.0 if x == mean else math.copysign(math.inf, x - mean)
        return (float(x) - mean) / std

    def add(self, x):
        self.values.append(float(x))
        del self.values[:-self.WINDOW]


def first_non_finite_tensor(model, grad):
    """'weight NAME' or 'the gradient of NAME' for the first tensor (storage order) holding NaN or inf,
    weights first (a bad weight is a cause, the gradients it spoils are consequences); None if all are finite."""
    bad = checkpoint.first_non_finite(model.params)
    if bad is not None:
        return f"weight {bad}"
    bad = checkpoint.first_non_finite(views_into(grad, model.shapes))
    return None if bad is None else f"the gradient of {bad}"


# ------------------------------------------------------------------ the step log
@functools.cache
def matmul_peak_flops(n=1024, repeats=3):
    """This machine's float32 matrix-product rate, FLOP/s: the fastest of a few (n, n) products,
    measured once per process.  The fastest, not the median (npgpt bench's choice): on a
    shared machine the median measures the other jobs, and MFU would pass 100%."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * n**3 / fastest


def machine_description():
    """CPU model, core and thread counts, BLAS libraries: for the step log's header."""
    import numba
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = [{"library": i.get("internal_api"), "threads": i.get("num_threads")} for i in threadpool_info()
            if i.get("user_api") == "blas"]
    return {"cpu": cpu, "cores": os.cpu_count(), "numba_threads": numba.config.NUMBA_NUM_THREADS, "blas": blas}


def package_versions():
    import numba

    from . import __version__

    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "npgpt": __version__}


def git_revision():
    """{"commit": sha, "dirty": bool} of the npgpt source tree when it is a git checkout, else None."""
    import subprocess

    where = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


class StepWindow:
    """What happened since the last step-log record: losses, norms, clip and skip counts, time."""

    def __init__(self):
        self.losses, self.norms, self.clipped, self.skipped, self.seconds = [], [], 0, 0, 0.0

    def add(self, loss, norm, clipped, skipped, seconds):
        self.losses.append(float(loss))
        if norm is not None:
            self.norms.append(norm)
        self.clipped += clipped
        self.skipped += skipped
        self.seconds += seconds


# ------------------------------------------------------------------ the trainer
class Trainer:
    """The one training loop: optimizer, schedule, RNGs, checkpoints and logs of a run of any task.

    cfg: the run's settings (a TrainConfig, or anything with its loop fields).
    task: see npgpt/tasks.py; it owns the model, the data and the metrics.
    ckpt: a checkpoint being resumed (the task has already read its model from it).
    plotter: an npgpt.plot.Refresher asked to redraw after each evaluation (--plot), or None.
    tensorboard: an npgpt.tensorboard.TensorBoardLogger given every record written (--tensorboard), or None.
    """

    def __init__(self, cfg, task, ckpt=None, progress=True, out=None, plotter=None, tensorboard=None):
        self.task, self.progress, self.out = task, progress, out or sys.stdout
        self.plotter, self.tensorboard = plotter, tensorboard
        self.model = model = task.model
        if cfg.workers == 0:
            # Fixed at the start and saved, like lr_decay_iters: the number of shards
            # decides the order of float sums (and the dropout streams), so a run
            # resumed on a machine with another core count still splits the same way.
            cfg = replace(cfg, workers=choose_workers(model, cfg.batch_size))
        if cfg.lr_decay_iters is None:  # as resolve_settings does: fixed at the start and saved
            cfg = replace(cfg, lr_decay_iters=cfg.max_iters)
        self.cfg = cfg
        if hasattr(task, "set_workers"):
            task.set_workers(cfg.workers)
        self.optimizer = self.make_optimizer(model)
        self.schedule = make_schedule(cfg.lr_schedule, cfg.lr, cfg.min_lr, cfg.warmup_iters,
                                      cfg.lr_decay_iters, cfg.lr_step_every, cfg.lr_gamma,
                                      cfg.lr_patience)
        self.grad = np.zeros_like(model.flat_params)
        self.scratch = np.zeros_like(self.grad) if cfg.grad_accum > 1 else None
        self.tokens_per_iter = task.tokens_per_batch * cfg.grad_accum
        flops = getattr(task, "flops_per_batch", None)
        self.flops_per_iter = None if flops is None else flops * cfg.grad_accum
        self._global_norm = kernels_for(model.config.backend)[1]
        # --stats-interval: None when off, so that an ordinary step does not even test for it
        self.stats_interval = getattr(cfg, "stats_interval", 0)
        self.stats_recorder = observe.StatsRecorder(model) if self.stats_interval else None

        if ckpt is None:
            self.iter, self.best_val, self.tokens = 0, math.inf, 0
            self.best_saved = None  # {"iter", "val_loss"} of the best snapshot on disk
            self.data_rng = np.random.default_rng([cfg.seed, 1])  # batches
            self.dropout_rng = np.random.default_rng([cfg.seed, 2])  # dropout masks
            self.elapsed = 0.0
            self.loss_outliers, self.grad_outliers = OutlierDetector(), OutlierDetector()
        else:
            self._restore(ckpt)
            if cfg.max_iters <= self.iter:
                raise UserError(f"{cfg.out} is already at iteration {self.iter}; pass a --max-iters above it "
                                f"to train further")
        self.resumed = ckpt is not None
        self.saved_iter = self.iter if ckpt is not None else None
        self.last_val, self.last_eval_iter, self.eval_metrics = None, None, {}
        self.step_skipped = False

    def make_optimizer(self, model):
        """AdamW over the model's flat parameters, or over its trainable ones alone.

        With --freeze or LoRA adapters (fine-tuning), finetune.freeze marks the
        other parameters frozen on the model (its backward then skips their
        weight gradients) and TrainableAdamW keeps moments for the trainable
        ones only.  The choice depends only on settings saved in the checkpoint
        (freeze, the model's lora_rank), so a resumed run rebuilds the same
        optimizer, with moments of the same size.
        """
        from .finetune import TrainableAdamW, freeze

        cfg = self.cfg
        spec = getattr(cfg, "freeze", None)
        adapters = bool(getattr(model.config, "lora_rank", 0))
        kw = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
        if spec in (None, "none") and not adapters:
            return AdamW(model, **kw)
        mask = freeze(model, spec)  # data-parallel workers share this model object, so they see it too
        return TrainableAdamW(model, mask, **kw)

    def _restore(self, ckpt):
        state = ckpt.state
        task_state = state.get("task") or {"name": "lm"}  # checkpoints from before tasks were language models
        saved_task = task_state.get("name") if isinstance(task_state, dict) else None
        if saved_task != self.task.name:
            raise UserError(f"cannot resume {ckpt.path} as a {self.task.name!r} run: it holds a {saved_task!r} run")
        try:
            self.iter = int(state["iter"])
            best = state["best_val_loss"]
            self.best_val = math.inf if best is None else float(best)
            self.best_saved = state.get("best_checkpoint")
            if self.best_saved is not None:
                self.best_saved = {"iter": int(self.best_saved["iter"]), "val_loss": float(self.best_saved["val_loss"])}
            self.data_rng = rng_from_state(state["rng"]["data"])
            self.dropout_rng = rng_from_state(state["rng"]["dropout"])
            self.schedule.load_state_dict(state["schedule"])
            self.optimizer.load_state_dict({**ckpt.optimizer, **state["optimizer"]})  # m, v + {"step": n}
            self.elapsed = float(state.get("elapsed", 0.0))
            self.tokens = int(state.get("tokens", self.iter * self.tokens_per_iter))
            outliers = state.get("outliers") or {}
            self.loss_outliers = OutlierDetector(outliers.get("loss", ()))
            self.grad_outliers = OutlierDetector(outliers.get("grad_norm", ()))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
            raise UserError(f"corrupt checkpoint: {ckpt.path} training state is incomplete ({e})") from None

    # ---------------------------------------------------------------- pieces
    @property
    def tokenizer(self):
        return self.task.tokenizer

    def state(self):
        """The JSON training state a checkpoint stores (arrays go separately)."""
        opt_scalars = {"step": self.optimizer.step_count}  # m and v go to optimizer.safetensors
        return {"iter": self.iter, "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                "best_checkpoint": self.best_saved,
                "train_config": asdict(self.cfg), "optimizer": opt_scalars, "schedule": self.schedule.state_dict(),
                "rng": {"data": rng_state(self.data_rng), "dropout": rng_state(self.dropout_rng)},
                "elapsed": self.elapsed, "tokens": self.tokens,
                "outliers": {"loss": self.loss_outliers.values, "grad_norm": self.grad_outliers.values},
                "task": {"name": self.task.name, **self.task.checkpoint_extras()}}

    def save(self):
        """Save the latest snapshot; it is also the best one when this iteration's validation loss
        is the lowest of any saved snapshot."""
        if self.saved_iter == self.iter:
            return
        bad = checkpoint.first_non_finite(self.model.params)
        if bad is not None:  # never replace a good checkpoint by a NaN one
            raise diverged(self.cfg.out, self.iter, f"weight {bad} is not finite")
        best = (self.last_eval_iter == self.iter and self.last_val is not None
                and (self.best_saved is None or self.last_val < self.best_saved["val_loss"]))
        if best:
            self.best_saved = {"iter": self.iter, "val_loss": self.last_val}
        opt_state = self.optimizer.state_dict()
        arrays = {"m": opt_state["m"], "v": opt_state["v"]}
        checkpoint.save(self.cfg.out, self.model, self.task.tokenizer, self.state(), arrays, best=best)
        self.saved_iter = self.iter

    def _accumulate(self):
        """Mean gradient of grad_accum micro-batches into self.grad; returns their mean loss.

        Equal micro-batches: the mean of their mean losses is the mean over all of them, so k
        micro-batches of B give the gradient of one batch of k*B in 1/k of the memory.
        """
        k = self.cfg.grad_accum
        total = 0.0
        for i in range(k):
            batch = self.task.draw_batch(self.data_rng)
            out = self.grad if i == 0 else self.scratch
            total += self.task.loss_and_grad(batch, out, self.dropout_rng)
            if i > 0:
                self.grad += self.scratch
        if k > 1:
            self.grad *= 1.0 / k
        return total / k

    def _non_finite(self, what):
        culprit = first_non_finite_tensor(self.model, self.grad)
        return diverged(self.cfg.out, self.iter + 1, what if culprit is None else f"{culprit} is not finite ({what})")

    def _outlier(self, loss):
        """Feed the z-score detectors -> (reason to skip this update or None, z of the loss, z of the grad norm, norm)."""
        cfg = self.cfg
        reasons, loss_z, grad_z, norm = [], None, None, None
        if cfg.skip_loss_z > 0:
            loss_z = self.loss_outliers.z(loss)
            self.loss_outliers.add(loss)
            if loss_z is not None and loss_z > cfg.skip_loss_z:
                reasons.append(f"loss z-score {loss_z:.1f} > {cfg.skip_loss_z:g}")
        if cfg.skip_grad_z > 0:
            norm = self._global_norm(self.grad)  # AdamW.step computes it again: a second pass, only with this option
            if not math.isfinite(norm):
                raise self._non_finite(f"gradient norm {norm}")
            grad_z = self.grad_outliers.z(norm)
            self.grad_outliers.add(norm)
            if grad_z is not None and grad_z > cfg.skip_grad_z:
                reasons.append(f"gradient-norm z-score {grad_z:.1f} > {cfg.skip_grad_z:g}")
        return ("; ".join(reasons) or None), loss_z, grad_z, norm

    def step(self):
        """One optimizer step -> (mean micro-batch loss, gradient norm before clipping, learning rate).

        A non-finite loss or gradient stops the run (naming the first bad tensor).  An outlier
        (--skip-loss-z, --skip-grad-z) is not applied: the iteration still counts, its batches
        are consumed and the schedule moves on, so skipping never changes which data comes next.
        The step that reaches a multiple of --stats-interval also writes a "stats" record.
        """
        recorder = self.stats_recorder
        if recorder is None or (self.iter + 1) % self.stats_interval:
            return self._step()
        return self._step_with_stats(recorder)

    def _step_with_stats(self, recorder):
        """self._step() observed by npgpt.observe.StatsRecorder, and its "stats" record logged.

        The recorder only reads: it copies the weights before the step and reads each forward's
        cache before its backward, so the step's arithmetic and random draws are those of an
        ordinary step (a run with statistics has the same weights as one without).
        """
        recorder.begin()
        try:
            loss, norm, lr = self._step()
        except BaseException:
            recorder.cancel()
            raise
        # A skipped update left the gradient unclipped and the weights unchanged: no clip factor to undo.
        record = recorder.end(self.iter, self.grad, norm, 0.0 if self.step_skipped else self.cfg.grad_clip)
        if self.step_skipped:
            record["skipped"] = True
        self.append_step_log(record)
        return loss, norm, lr

    def _step(self):
        lr = self.schedule.lr(self.iter)
        loss = self._accumulate()
        if not math.isfinite(loss):
            raise self._non_finite(f"loss {loss}")
        reason, loss_z, grad_z, norm = self._outlier(loss)
        self.step_skipped = reason is not None
        if reason is not None:
            if norm is None:
                norm = self._global_norm(self.grad)
                if not math.isfinite(norm):  # a skip never hides a divergence
                    raise self._non_finite(f"gradient norm {norm}")
            self._log_skip(loss, norm, loss_z, grad_z, lr, reason)
        else:
            norm = self.update(lr)
        self.iter += 1
        self.tokens += self.tokens_per_iter
        return loss, norm, lr

    def update(self, lr):
        """Clip self.grad in place and apply one AdamW step at lr -> the gradient norm before clipping.

        After it, self.grad is the clipped gradient and the change of model.flat_params is
        the update actually applied, which is what a stats step records (_step_with_stats).
        """
        try:
            return self.optimizer.step(self.grad, lr)
        except FloatingPointError:
            raise self._non_finite("gradient norm " + str(self._global_norm(self.grad))) from None

    def evaluate(self):
        """The task's evaluation -> the validation loss, which picks the best checkpoint;
        the task's other metrics are kept in self.eval_metrics."""
        self.eval_metrics = self.task.evaluate()
        return self.eval_metrics["val_loss"]

    def log(self, line):
        from tqdm import tqdm

        tqdm.write(line, file=self.out)
        self.out.flush()  # a log file should show each evaluation as it happens

    def _append(self, name, record):
        with open(os.path.join(self.cfg.out, name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.log(record)

    def append_metrics(self, record):
        self._append(METRICS, record)

    def append_step_log(self, record):
        self._append(STEP_LOG, record)

    def _log_skip(self, loss, norm, loss_z, grad_z, lr, reason):
        it = self.iter + 1
        self.log(f"iter {it:>6}: update skipped ({reason})")
        self.append_step_log({"kind": "skip", "iter": it, "train_loss": float(loss), "grad_norm": norm,
                              "loss_z": loss_z, "grad_norm_z": grad_z, "lr": lr, "reason": reason})

    def _log_header(self):
        model = self.model
        self.append_step_log({
            "kind": "header", "iter": self.iter, "resume": self.resumed,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "task": self.task.name, "config": asdict(self.cfg), "model": model.config.to_dict(),
            "num_params": model.num_params, "tokens_per_iter": self.tokens_per_iter,
            "flops_per_iter": self.flops_per_iter, "peak_flops": matmul_peak_flops(),
            "versions": package_versions(), "machine": machine_description(), "git": git_revision()})

    def _log_steps(self, window, lr, norm):
        """One step-log record for the iterations in window (the last of them is self.iter)."""
        n = len(window.losses)
        ms = 1000.0 * window.seconds / n
        tokens_per_sec = self.tokens_per_iter * n / max(window.seconds, 1e-9)
        mfu = None
        if self.flops_per_iter is not None:
            mfu = self.flops_per_iter * n / max(window.seconds, 1e-9) / matmul_peak_flops()
        clip = self.cfg.grad_clip
        self.append_step_log({
            "kind": "step", "iter": self.iter, "tokens": self.tokens, "steps": n,
            "train_loss": float(np.mean(window.losses)), "lr": lr,
            "grad_norm": norm, "clipped": bool(not self.step_skipped and clip > 0 and norm > clip),
            "grad_norm_max": max(window.norms) if window.norms else None,
            "clipped_steps": window.clipped, "skipped_steps": window.skipped,
            "ms_per_step": round(ms, 3), "tokens_per_sec": round(tokens_per_sec, 1),
            "mfu": None if mfu is None else round(mfu, 5)})

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
            if cfg.log_interval:
                self._log_header()
            if self.iter == 0:
                self._evaluate_and_log(None, None, None, None, 0.0, scheduled=False)
            bar = tqdm(total=cfg.max_iters, initial=self.iter, unit="it", dynamic_ncols=True,
                       disable=None if self.progress else True, file=sys.stderr)  # None: off when not a terminal
            losses, norm, lr = [], None, None
            window_start, window_tokens = time.perf_counter(), 0
            steps = StepWindow()
            while self.iter < cfg.max_iters and not stop["requested"]:
                t0 = time.perf_counter()
                loss, norm, lr = self.step()
                seconds = time.perf_counter() - t0
                self.elapsed += seconds
                losses.append(loss)
                clipped = not self.step_skipped and cfg.grad_clip > 0 and norm > cfg.grad_clip
                steps.add(loss, norm, clipped, self.step_skipped, seconds)
                if cfg.log_interval and self.iter % cfg.log_interval == 0:
                    self._log_steps(steps, lr, norm)
                    steps = StepWindow()
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
        self.eval_metrics = {}
        val = self.evaluate()
        if not math.isfinite(val):
            raise diverged(self.cfg.out, self.iter, f"validation loss is {val}")
        self.last_val, self.last_eval_iter = val, self.iter
        if scheduled:  # only evaluations at fixed iterations steer plateau, so resuming stays exact
            self.schedule.observe(val)
        improved = val < self.best_val
        if improved:
            self.best_val = val
        train_text = f"train {train_loss:.4f} | " if train_loss is not None else ""
        ppl = perplexity(val)
        extra = {k: v for k, v in self.eval_metrics.items() if k != "val_loss"}
        save = improved and self.iter > 0
        if save:
            self.save()  # first: the log says "saved" only once the save has succeeded
        self.log(f"iter {self.iter:>6}: {train_text}val {val:.4f} | ppl {ppl:.2f}"
                 + "".join(f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}" for k, v in extra.items())
                 + (f" | lr {lr:.2e} | {tokens_per_sec:,.0f} tok/s" if lr is not None else "")
                 + (" | saved" if save else ""))
        self.append_metrics({"iter": self.iter, "train_loss": train_loss, "val_loss": val,
                             "val_perplexity": ppl if math.isfinite(ppl) else None, **extra, "lr": lr,
                             "grad_norm": norm, "tokens_per_sec": tokens_per_sec, "elapsed": round(elapsed, 3)})
        if self.plotter is not None:
            self.plotter.request()  # in the background, at most every 30 s (npgpt/plot.py)


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
    plotter, tensorboard = open_observers(cfg)  # before any real work: a missing extra is one line now
    try:
        finished, trainer, task = _train(args, cfg, ckpt, progress, plotter, tensorboard)
    except BaseException:
        close_observers(plotter, tensorboard, failed=True)
        raise
    close_observers(plotter, tensorboard, failed=False)
    if plotter is not None:
        print(f"figures: {os.path.join(cfg.out, 'plots')}, {os.path.join(cfg.out, 'report.html')}", flush=True)
    return _report(finished, trainer, task, started)


def open_observers(cfg):
    """(plot.Refresher or None, TensorBoardLogger or None) for --plot and --tensorboard."""
    plotter = tensorboard = None
    if cfg.plot:
        from .plot import Refresher

        plotter = Refresher(cfg.out)  # raises the install hint if matplotlib is missing
    if cfg.tensorboard is not None:
        from .tensorboard import TensorBoardLogger

        tensorboard = TensorBoardLogger(cfg.tensorboard)  # likewise for tensorboardX
    return plotter, tensorboard


def close_observers(plotter, tensorboard, failed):
    """Flush the event file and draw the last figures; after a failed run, never hide its error."""
    if tensorboard is not None:
        tensorboard.close()
    if plotter is None:
        return
    if failed:
        try:
            plotter.close()
        except Exception:
            pass
        return
    plotter.request()  # the figures end with the last step, also after Ctrl-C
    plotter.close()
    if plotter.error:
        print(f"warning: {plotter.error}", file=sys.stderr)


def _train(args, cfg, ckpt, progress, plotter, tensorboard):
    task = LanguageModelingTask(cfg, ckpt)
    trainer = Trainer(task.cfg, task, ckpt, progress=progress, plotter=plotter, tensorboard=tensorboard)
    cfg = trainer.cfg
    if ckpt is None:  # a fresh run owns its metrics files and forgets a previous run's best snapshot
        for name in (METRICS, STEP_LOG):
            open(os.path.join(cfg.out, name), "w").close()
        checkpoint.forget_best(cfg.out)
    print(f"npgpt train: {task.describe()}; "
          + (f"resuming at iteration {trainer.iter}" if ckpt else
             f"fine-tuning {cfg.init_from}, {cfg.max_iters} iterations" if cfg.init_from else
             f"{cfg.max_iters} iterations"), flush=True)
    return trainer.train(), trainer, task


def _report(finished, trainer, task, started):
    cfg = trainer.cfg
    wall = time.perf_counter() - started
    if not finished:
        print(f"interrupted at iteration {trainer.iter}; checkpoint saved in {cfg.out}. "
              f"Continue with: npgpt train --resume {cfg.out}", file=sys.stderr)
        return 130
    best = trainer.best_saved
    print(f"done: {cfg.max_iters} iterations, val loss {trainer.last_val:.4f} "
          f"(best {trainer.best_val:.4f}), {wall:.0f}s wall; checkpoint in {cfg.out}"
          + (f" (best: iteration {best['iter']})" if best is not None and best["iter"] != trainer.iter else ""),
          flush=True)
    if hasattr(task, "finish"):
        task.finish()
    return 0
