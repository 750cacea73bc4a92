"""Tasks: what differs between training a language model, a classifier or a seq2seq model.

npgpt has ONE training loop (`npgpt.train.Trainer`): it takes the steps,
accumulates and clips the gradients, follows the schedule, evaluates on a
cadence, writes metrics.jsonl and the step log, keeps the latest and the
best-validation checkpoints, handles Ctrl-C and SIGTERM, stops a diverging
run and resumes bit-exactly.  What a task adds is only how a batch is drawn,
what the loss is, and which metrics an evaluation reports.

The protocol a task follows (duck-typed; `LanguageModelingTask` below is the
reference implementation, a toy regression task in tests/test_train.py the
smallest one):

    name: str                      "lm", "classify", ...: saved in the checkpoint, checked on resume
    cfg                            the run's settings: the loop reads max_iters, batch_size,
                                   grad_accum, lr..., eval_interval, seed, workers, out (TrainConfig
                                   has them all); a task may settle some of them (e.g. the model
                                   size of an --init-from model) and the loop uses task.cfg
    model                          has flat_params (N,), params {name: view}, shapes {name: shape}
                                   in storage order, num_params, config (.backend, .dtype, .to_dict())
    tokenizer                      saved as tokenizer.json (anything with to_dict())
    tokens_per_batch: int          tokens in one micro-batch: for tokens/s
    flops_per_batch: int | None    training FLOPs of one micro-batch: for MFU (None: not reported)

    draw_batch(rng) -> batch       one training micro-batch; rng is the run's data generator and
                                   must be the only randomness used (resume replays it)
    loss_and_grad(batch, grad, dropout_rng) -> loss
                                   forward + backward of one micro-batch: the gradient of the MEAN
                                   loss is written over grad (N,); dropout_rng (a Generator) is the
                                   run's dropout stream, to be used only if the model has dropout
    evaluate() -> dict             {"val_loss": float, ...other metrics}; deterministic (the same
                                   batches at every call) and without touching the training RNGs
    checkpoint_extras() -> dict    JSON-able task data for state.json (e.g. label names); a task
                                   re-reads it from ckpt.state["task"] when it is resumed
    describe() -> str              the start-up line: model, data, worker count
    set_workers(n)                 optional: use n data-parallel workers (the loop decides n once
                                   and saves it, so that a resumed run splits batches the same way)
    finish()                       optional: after a finished run, e.g. print a sample

Everything else (optimizer, schedule, checkpoints, logs, guardrails) is the
loop's, so a new task is one class and never a copy of the loop.
"""
import os
from dataclasses import replace

import numpy as np

from . import checkpoint, data
from .errors import UserError
from .model import GPT, GPTConfig
from .parallel import DataParallel


# ------------------------------------------------------------------ evaluation
def estimate_loss(model, tokens, batch_size, block_size, n_batches, rng, parallel=None):
    """Mean loss over n_batches random windows of tokens (no dropout); parallel splits each batch."""
    losses = []
    for _ in range(n_batches):
        x, y = data.get_batch(tokens, batch_size, block_size, rng)
        losses.append(parallel.loss(x, y) if parallel is not None else model.forward(x, y)[0])
    return float(np.mean(losses))


def lm_flops_per_batch(config, batch_size):
    """Training FLOPs of one (batch_size, block_size) micro-batch: npgpt bench's count."""
    from .bench import model_flops_per_step

    return model_flops_per_step(config, batch_size)


# ------------------------------------------------------------------ fine-tuning's starting point
# `--init-from PATH` reads a model in two places, both here: its settings (before the run's
# settings are resolved) and its weights.  PATH is an npgpt training output directory (its
# best-validation snapshot) or a Hugging Face GPT-2 folder; npgpt/pretrained.py reads both.
def _require_model_dir(path):
    if not os.path.exists(path):
        raise UserError(f"--init-from {path}: directory not found")
    if not os.path.isdir(path):
        raise UserError(f"--init-from {path}: not a directory")
    from .pretrained import CONFIG, is_npgpt_checkpoint

    if not is_npgpt_checkpoint(path) and not os.path.isfile(os.path.join(path, CONFIG)):
        raise UserError(f"--init-from {path}: neither an npgpt checkpoint ({checkpoint.POINTER}) nor a Hugging Face "
                        f"GPT-2 folder ({CONFIG} + model.safetensors) is there")


def initial_model_settings(path):
    """The TrainConfig fields the model at `path` fixes: n_layer, n_head, n_embd, bias, norm, positions,
    block_size (its maximum context), tokenizer and vocab_size; lora_rank/alpha/targets when it has adapters."""
    _require_model_dir(path)
    from .pretrained import CONFIG, hf_config_fields, is_npgpt_checkpoint, read_hf_config

    if not is_npgpt_checkpoint(path):  # a Hugging Face folder: its config.json, GPT-2's names
        fields = hf_config_fields(read_hf_config(path), os.path.join(path, CONFIG))
        settings = {name: fields[name] for name in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
        return {**settings, "norm": "pre", "positions": "learned", "tokenizer": "bpe", "vocab_size": fields["vocab_size"]}
    config, tokenizer = checkpoint.load_description(path, which="best")
    settings = {name: config[name] for name in ("n_layer", "n_head", "n_embd", "block_size")}
    settings["bias"] = config.get("bias", True)
    settings["norm"] = config.get("norm", "pre")
    settings["positions"] = config.get("positions", "learned")
    if config.get("lora_rank"):  # its adapters train on
        settings.update({name: config[name] for name in ("lora_rank", "lora_alpha", "lora_targets") if name in config})
    if tokenizer.get("type") == "char":
        settings.update(tokenizer="char", vocab_size=None)
    else:
        settings.update(tokenizer="bpe", vocab_size=config["vocab_size"])
    return settings


def load_initial_model(path, dtype, backend, block_size, dropout=0.0, lora_rank=0, lora_alpha=16.0,
                       lora_targets="c_attn,c_proj", seed=0):
    """(model, tokenizer) to fine-tune, from the model at `path` (npgpt directory or Hugging Face folder).

    block_size: shorter than the model's crops its position table (the
    first block_size positions); dtype may differ from the saved one.
    lora_rank > 0 adds fresh adapters (B = 0: step 0 is the pretrained model).
    """
    from .pretrained import load_for_finetuning

    _require_model_dir(path)
    lora = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": lora_targets} if lora_rank else {}
    return load_for_finetuning(path, dtype, backend, block_size, seed=seed, dropout=dropout, **lora)


# ------------------------------------------------------------------ language modelling
class LanguageModelingTask:
    """Next-token prediction on one text file: random windows, cross-entropy, val loss and perplexity.

    cfg: a npgpt.train.TrainConfig.  ckpt: a checkpoint being resumed (its
    model and tokenizer are used).  Otherwise cfg.init_from names a model to
    fine-tune, or a new model of cfg's size is built with cfg.seed.
    """

    name = "lm"

    def __init__(self, cfg, ckpt=None):
        text = data.load_text(cfg.data)
        if ckpt is not None:
            from .tokenizers import from_dict

            self.tokenizer = from_dict(ckpt.tokenizer)
            self.model = checkpoint.build_model(ckpt, dropout=cfg.dropout, backend=cfg.backend)
            whose = "checkpoint's"
        elif cfg.init_from is not None:
            self.model, self.tokenizer = load_initial_model(
                cfg.init_from, cfg.dtype, cfg.backend, cfg.block_size, cfg.dropout, cfg.lora_rank, cfg.lora_alpha,
                cfg.lora_targets, seed=cfg.seed)
            whose = "model's"
        else:
            self.tokenizer = data.build_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
            self.model = None
            whose = None
        try:
            self.corpus = data.make_corpus(text, self.tokenizer)
        except ValueError as e:  # characters the resumed model has never seen
            raise UserError(f"cannot encode {cfg.data or data.BUNDLED} with the {whose} tokenizer: {e}") from None
        data.check_long_enough(self.corpus.train, cfg.block_size, "training split (90% of the corpus)")
        data.check_long_enough(self.corpus.val, cfg.block_size, "validation split (10% of the corpus)")
        if self.model is None:
            model_config = GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=cfg.block_size,
                                     n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                     bias=cfg.bias, dropout=cfg.dropout, dtype=cfg.dtype, backend=cfg.backend,
                                     norm=cfg.norm, positions=cfg.positions)
            self.model = GPT(model_config, seed=cfg.seed)
        self.cfg = cfg
        self.parallel = None
        self.tokens_per_batch = cfg.batch_size * cfg.block_size
        self.flops_per_batch = lm_flops_per_batch(replace(self.model.config, block_size=cfg.block_size),
                                                  cfg.batch_size)

    def set_workers(self, workers):
        self.parallel = DataParallel(self.model, workers) if workers > 1 else None
        self.workers = workers

    def draw_batch(self, rng):
        return data.get_batch(self.corpus.train, self.cfg.batch_size, self.cfg.block_size, rng)

    def loss_and_grad(self, batch, grad, dropout_rng):
        """The mean loss of one (x, y) micro-batch, its gradient written over grad.

        Returns the loss as the model computes it (a NumPy float of the
        model's dtype): the loop's sums of it then round exactly as before.
        """
        x, y = batch
        rng = dropout_rng if self.cfg.dropout > 0 else None
        smoothing = self.cfg.label_smoothing
        if self.parallel is not None:
            return self.parallel.loss_and_grad(x, y, grad, rng=rng, label_smoothing=smoothing)
        loss, cache = self.model.forward(x, y, rng=rng, label_smoothing=smoothing)
        self.model.backward(cache, out=grad)
        del cache
        return loss

    def evaluate(self):
        """Validation loss over eval_iters batches; the same batches at every evaluation."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 3])  # fresh each time: comparable numbers, training RNGs untouched
        val = estimate_loss(self.model, self.corpus.val, cfg.batch_size, cfg.block_size, cfg.eval_iters, rng,
                            self.parallel)
        return {"val_loss": val}

    def checkpoint_extras(self):
        return {}  # the tokenizer is saved as tokenizer.json

    def describe(self):
        c = self.model.config
        return (f"{self.model.num_params:,} parameters ({c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, "
                f"block {c.block_size}, vocab {c.vocab_size}), {c.backend} backend, {c.dtype}, "
                f"{self.workers} data-parallel worker(s); {self.corpus.train.size:,} training tokens from "
                f"{self.cfg.data or data.BUNDLED}")

    def finish(self):
        """A sample from the trained model (cfg.sample_tokens of it)."""
        cfg = self.cfg
        if not cfg.sample_tokens:
            return
        from .generate import print_samples

        print("---------------- sample ----------------", flush=True)
        print_samples(self.model, self.tokenizer, default_prompt(self.tokenizer), 1, cfg.sample_tokens,
                      cfg.seed, temperature=0.8, top_k=200, top_p=1.0)


def default_prompt(tokenizer):
    """A newline when the vocabulary has one (a sample then starts like a new speech), else token 0."""
    try:
        return tokenizer.encode("\n")
    except ValueError:
        return [0]

