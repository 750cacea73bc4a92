"""`npgpt seq2seq train | translate | eval`, the seq2seq task for npgpt's one training loop, and BLEU.

    npgpt seq2seq train --task reverse --out out-rev            # a synthetic task: copy | reverse | sort | add
    npgpt seq2seq train --data pairs.tsv --out out-mt           # one source<TAB>target per line
    npgpt seq2seq translate --ckpt out-rev --text "hgfedcba" --beam 4
    npgpt seq2seq eval --ckpt out-rev --task reverse            # exact match, token accuracy, BLEU

Training goes through npgpt/train.py's Trainer, which is generic over a
task object (/work/wt/TASK_PROTOCOL.md): `Seq2SeqTask` below says how a
batch is drawn, what the loss is and which metrics are reported; the
Trainer owns the optimizer, schedule, clipping, progress bar, metrics.jsonl,
checkpoints and resume.  `run_training` is the one place that hands the
task over.
"""
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
        return {"tokenizer": self.tokenizer.to_dict(),
                "task": self.train if isinstance(self.train, str) else "pairs", "task_options": self.task_options}

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


def run_training(task, args):
    """Hand the task to npgpt's one training loop (npgpt/train.py's Trainer over a task).

    The loop's settings come from TrainConfig's defaults and this command's
    flags; one data-parallel worker (npgpt/parallel.py splits GPT batches).
    Resume is the lead's to wire: Trainer(cfg, task, ckpt) with the
    checkpoint read by load_seq2seq.
    """
    from dataclasses import replace

    from . import train

    if not hasattr(train, "METRICS"):  # the task-generic Trainer(cfg, task) of the trainloop branch
        raise UserError("npgpt seq2seq train needs npgpt's task-generic training loop (npgpt/train.py's "
                        "Trainer over a task), which this build does not have yet")
    cfg = replace(train.TrainConfig(), out=args.out, data=args.data, max_iters=args.max_iters,
                  batch_size=args.batch_size, block_size=args.block_size, lr=args.lr, min_lr=args.lr / 10,
                  warmup_iters=args.warmup_iters, eval_interval=args.eval_interval, seed=args.seed,
                  dtype=args.dtype, backend=args.backend, dropout=args.dropout,
                  label_smoothing=args.label_smoothing, beta2=0.98, weight_decay=0.0, workers=1, sample_tokens=0)
    train.prepare_out_dir(cfg.out, resume=False, overwrite=args.overwrite)
    for name in (train.METRICS, train.STEP_LOG):
        open(os.path.join(cfg.out, name), "w").close()
    task.cfg = cfg
    trainer = train.Trainer(cfg, task, None, progress=not args.no_progress)
    if not trainer.train():
        print(f"interrupted at iteration {trainer.iter}; checkpoint saved in {cfg.out}", file=sys.stderr)
        return 130
    print(f"done: {cfg.max_iters} iterations, val loss {trainer.last_val:.4f}; checkpoint in {cfg.out}", flush=True)
    task.finish()
    return 0


# ------------------------------------------------------------------ checkpoints
def load_seq2seq(out_dir, backend=None):
    """(model, PairTokenizer, state) from a training output directory written by checkpoint.save.

    checkpoint.load checks GPT's config fields, so this reads the same
    verified files with the seq2seq config instead.
    """
    from . import checkpoint
    from .safeload import Obj

    if not os.path.isdir(out_dir):
        raise UserError(f"no checkpoint at {out_dir}: directory not found")
    pointer = checkpoint.read_pointer(out_dir)
    if pointer is None:
        raise UserError(f"no checkpoint at {out_dir}: {checkpoint.POINTER} is missing")
    snapshot = os.path.join(out_dir, pointer["snapshot"])
    hashes = pointer["files"]

    def read_json(name):
        path = os.path.join(snapshot, name)
        return checkpoint._load_json(checkpoint._read_verified(snapshot, name, hashes), path, Obj({}))

    config = read_json("config.json")
    if config.get("model") != "seq2seq":
        raise UserError(f"{out_dir} holds no seq2seq model (its config.json has no \"model\": \"seq2seq\")")
    try:
        cfg = TransformerConfig(**{**config, **({"backend": backend} if backend else {})})
    except (TypeError, ValueError) as e:
        raise UserError(f"corrupt checkpoint: bad seq2seq config in {snapshot} ({e})") from None
    params = checkpoint._load_tensors(checkpoint._read_verified(snapshot, "model.safetensors", hashes),
                                      os.path.join(snapshot, "model.safetensors"))
    model = Seq2Seq(cfg)
    if set(params) != set(model.shapes):
        raise UserError(f"corrupt checkpoint: {snapshot} weights do not match its config")
    bad = checkpoint.first_non_finite(params)
    if bad is not None:
        raise UserError(f"corrupt checkpoint: weight {bad} in {snapshot} holds NaN or inf values; refused")
    for name, p in model.params.items():
        if params[name].shape != p.shape:
            raise UserError(f"corrupt checkpoint: {name} has shape {params[name].shape}, config says {p.shape}")
        p[...] = params[name]
    try:
        tokenizer = data.PairTokenizer.from_dict(read_json("tokenizer.json"))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt checkpoint: bad seq2seq tokenizer in {snapshot} ({e})") from None
    if tokenizer.vocab_size != cfg.vocab_size or tokenizer.source.vocab_size != cfg.source_vocab_size:
        raise UserError(f"corrupt checkpoint: tokenizer and model vocabularies differ in {snapshot}")
    return model, tokenizer, read_json("state.json")


# ------------------------------------------------------------------ building a run
def build_task(args):
    """Model, tokenizer and data of a fresh run from the command line -> Seq2SeqTask."""
    if (args.task is None) == (args.data is None):
        raise UserError("give either --task copy|reverse|sort|add or --data PAIRS.tsv")
    options = {}
    if args.task is not None:
        options = ({"digits": args.digits} if args.task == "add"
                   else {"min_len": args.min_len, "max_len": args.max_len, "n_symbols": args.n_symbols})
        val_pairs = data.synthetic_pairs(args.task, args.val_size, np.random.default_rng([args.seed, 7]),
                                         held_out=True, **options)
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
        tokenizer = data.build_pair_tokenizer(args.tokenizer, train_pairs + val_pairs, shared=not args.separate_vocab,
                                              vocab_size=args.vocab_size)
        train, dropped = data.encode_pairs(train_pairs, tokenizer, args.block_size, args.skip_long, args.data)
        where = f"{len(train):,} training pairs from {args.data}" + (f" ({dropped} too long, dropped)" if dropped else "")
    val, _ = data.encode_pairs(val_pairs, tokenizer, args.block_size, args.skip_long, args.val_data or "validation pairs")
    cfg = TransformerConfig(vocab_size=tokenizer.vocab_size, src_vocab_size=tokenizer.source.vocab_size,
                            block_size=args.block_size, n_encoder_layer=args.n_encoder_layer,
                            n_decoder_layer=args.n_decoder_layer, n_head=args.n_head, n_embd=args.n_embd,
                            norm=args.norm, activation=args.activation, positions=args.positions,
                            share_embeddings=tokenizer.shared, dropout=args.dropout,
                            label_smoothing=args.label_smoothing, dtype=args.dtype, backend=args.backend)
    model = Seq2Seq(cfg, seed=args.seed)
    return Seq2SeqTask(model, tokenizer, train, val, args.batch_size, options, description=where)


# ------------------------------------------------------------------ the command
def add_arguments(parser):
    sub = parser.add_subparsers(dest="seq2seq_command", metavar="{train,translate,eval}")
    sub.required = True

    t = sub.add_parser("train", help="train an encoder-decoder on a synthetic task or a pairs file")
    source = t.add_argument_group("data")
    source.add_argument("--task", choices=data.TASKS, help="a built-in synthetic task")
    source.add_argument("--data", metavar="PAIRS.tsv", help="UTF-8 file, one source<TAB>target per line")
    source.add_argument("--val-data", metavar="PAIRS.tsv", help="validation pairs (default: a seeded 10%% of --data)")
    source.add_argument("--skip-long", action="store_true", help="drop pairs longer than --block-size instead of refusing the file")
    source.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    source.add_argument("--vocab-size", type=int, help="BPE vocabulary size (with --tokenizer bpe)")
    source.add_argument("--separate-vocab", action="store_true", help="separate source and target vocabularies and embeddings")
    source.add_argument("--min-len", type=int, default=1, help="synthetic tasks: shortest string (default 1)")
    source.add_argument("--max-len", type=int, default=10, help="synthetic tasks: longest string (default 10)")
    source.add_argument("--n-symbols", type=int, default=10, help="synthetic tasks: alphabet size (default 10)")
    source.add_argument("--digits", type=int, default=3, help="add: most digits per operand (default 3)")
    source.add_argument("--val-size", type=int, default=500, help="synthetic tasks: held-out examples (default 500)")
    m = t.add_argument_group("model")
    m.add_argument("--block-size", type=int, default=64)
    m.add_argument("--n-encoder-layer", type=int, default=2)
    m.add_argument("--n-decoder-layer", type=int, default=2)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=128)
    m.add_argument("--norm", choices=NORMS, default="pre")
    m.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    m.add_argument("--positions", choices=POSITIONS, default="sinusoidal")
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--label-smoothing", type=float, default=0.0)
    m.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    m.add_argument("--backend", choices=("numpy", "numba"), default="numba")
    r = t.add_argument_group("run (passed to npgpt's training loop)")
    r.add_argument("--out", default="out-seq2seq")
    r.add_argument("--max-iters", type=int, default=3000)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--warmup-iters", type=int, default=100)
    r.add_argument("--eval-interval", type=int, default=250)
    r.add_argument("--seed", type=int, default=1337)
    r.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

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
        _check_train_args(args)
        task = build_task(args)
        print(task.describe(), flush=True)
        return run_training(task, args)
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


def _check_train_args(args):
    for name in ("block_size", "n_encoder_layer", "n_decoder_layer", "n_head", "n_embd", "max_iters", "batch_size",
                 "eval_interval", "min_len", "max_len", "n_symbols", "digits", "val_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.warmup_iters < 0 or args.seed < 0:
        raise UserError("--warmup-iters and --seed must be >= 0")
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise UserError("--vocab-size applies to --tokenizer bpe only")
    if args.min_len > args.max_len:
        raise UserError(f"--min-len {args.min_len} is above --max-len {args.max_len}")
    if args.n_symbols > len(data.SYMBOLS):
        raise UserError(f"--n-symbols must be at most {len(data.SYMBOLS)}, got {args.n_symbols}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    if args.tokenizer == "bpe" and args.task:
        raise UserError("--tokenizer bpe applies to --data; synthetic tasks use characters")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
