"""Text classification as a task of npgpt's one training loop, its checkpoints, and a small Python API.

    task = ClassificationTask.build(cfg, val_path=None, text_column="text", label_column="label", lm_weight=0.0)
    Trainer(task.cfg, task).train()                 # npgpt/train.py: the loop every task shares
    clf = load_classifier("out-clf")                # GPTClassifier with .tokenizer and .labels
    clf.predict_texts(["a lovely film"])            # -> ["pos"]

`ClassificationTask` follows the protocol in npgpt/tasks.py: a batch is
`batch_size` labelled texts drawn at random, right-padded, with their real
lengths; the loss is the classifier's (npgpt/classify.py); an evaluation
runs every validation text once, in file order, and reports the
classification cross-entropy as val_loss (it picks the best checkpoint),
accuracy and macro-F1.  The checkpoint is an ordinary npgpt checkpoint
whose weights hold the GPT's and `score.weight`, and whose state.json
"task" entry holds the label names, the columns, the validation source and
lm_weight; `load_classifier` rebuilds the classifier from it.
"""
import os
from dataclasses import replace

import numpy as np

from . import checkpoint
from . import classify_data as cd
from .classify import GPTClassifier
from .errors import UserError
from .model import GPT, GPTConfig

NAME = "classify"
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "sentiment_tiny.csv")
EVAL_BATCH = 64  # texts per forward pass when evaluating or predicting


# ------------------------------------------------------------------ encoding
def encode_examples(tokenizer, examples, block_size, where):
    """[Example] -> ([token ids, its FIRST block_size kept], number of texts truncated)."""
    encoded, truncated = [], 0
    for e in examples:
        try:
            ids = tokenizer.encode(e.text)
        except ValueError as err:  # a character a char vocabulary has never seen
            raise UserError(f"{where}, line {e.line}: cannot encode the text with the model's tokenizer ({err})") from None
        if not ids:
            raise UserError(f"{where}, line {e.line}: the text encodes to no tokens")
        truncated += len(ids) > block_size
        encoded.append(cd.truncate(ids, block_size))
    return encoded, truncated


def _softmax_ce(logits, labels):
    """(B, K) logits, (B,) labels -> (B,) cross-entropies and (B, K) probabilities, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = None if labels is None else -logp[np.arange(len(logp)), labels]
    return ce, np.exp(logp)


def run_in_batches(clf, encoded, labels=None, batch_size=EVAL_BATCH):
    """-> (probabilities (N, K), mean cross-entropy or None): every text once, in order, no dropout."""
    probs, ce = [], []
    for i in range(0, len(encoded), batch_size):
        idx, lengths = cd.pad_batch(encoded[i:i + batch_size], clf.config.block_size)
        y = None if labels is None else labels[i:i + batch_size]
        c, p = _softmax_ce(clf.logits(idx, lengths), y)
        probs.append(p)
        if c is not None:
            ce.append(c)
    return np.concatenate(probs), (float(np.concatenate(ce).mean()) if ce else None)


# ------------------------------------------------------------------ the task
class ClassificationTask:
    """Labelled texts -> a GPTClassifier, trained by npgpt's Trainer (protocol: npgpt/tasks.py).

    Build one with ClassificationTask.build (a new run, from scratch or
    --init-from) or ClassificationTask.resume (a checkpoint being resumed).
    """

    name = NAME

    def __init__(self, cfg, model, tokenizer, labels, train, val, extras, where=""):
        self.cfg, self.model, self.tokenizer, self.labels = cfg, model, tokenizer, labels
        self.extras, self.where = extras, where
        block = model.config.block_size
        self.train_ids, self.train_truncated = encode_examples(tokenizer, train, block, where or "training data")
        self.val_ids, self.val_truncated = encode_examples(tokenizer, val, block, extras.get("val") or "validation data")
        self.train_y = labels.ids(train, where or "the training data")
        self.val_y = labels.ids(val, extras.get("val") or "the validation split")
        self.train_counts = cd.class_counts(train, labels.names)
        self.val_counts = cd.class_counts(val, labels.names)
        mean_len = float(np.mean([len(ids) for ids in self.train_ids]))
        self.tokens_per_batch = int(round(cfg.batch_size * mean_len))
        self.flops_per_batch = None  # MFU is not reported for classification

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, cfg, val_path=None, text_column="text", label_column="label", lm_weight=0.0, val_fraction=0.1):
        """A new run: cfg.data (default: the bundled tiny sentiment set) and val_path or a seeded split;
        the model is cfg.init_from's GPT with a fresh head, or a new GPT of cfg's size."""
        data_path = cfg.data or BUNDLED
        examples = cd.read_examples(data_path, text_column, label_column)
        if val_path:
            train, val = examples, cd.read_examples(val_path, text_column, label_column)
        else:
            if len(examples) < 4:
                raise UserError(f"{data_path} holds {len(examples)} examples: too few to hold some out for "
                                "validation (give --val FILE)")
            train, val = cd.split_examples(examples, val_fraction, seed=cfg.seed)
        labels = cd.LabelMap.from_examples(train, f"the training data ({data_path})")
        if cfg.init_from is not None:
            from .pretrained import load_for_finetuning

            lora = {}
            if getattr(cfg, "lora_rank", 0):  # fresh adapters (B = 0), trained alone unless --freeze says more
                lora = {"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets}
            gpt, tokenizer = load_for_finetuning(cfg.init_from, dtype=cfg.dtype, backend=cfg.backend,
                                                 block_size=cfg.block_size, dropout=cfg.dropout, seed=cfg.seed, **lora)
        else:
            from .data import build_tokenizer

            # char: every character of train and validation texts; bpe: merges learnt on the training texts
            corpus = "\n".join(e.text for e in (train + val if cfg.tokenizer == "char" else train))
            tokenizer = build_tokenizer(cfg.tokenizer, corpus, cfg.vocab_size)
            gpt = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                                n_head=cfg.n_head, n_embd=cfg.n_embd, bias=cfg.bias, dropout=cfg.dropout,
                                dtype=cfg.dtype, backend=cfg.backend), seed=cfg.seed)
        model = GPTClassifier(gpt, len(labels.names), lm_weight=lm_weight, seed=cfg.seed)
        extras = {"labels": list(labels.names), "text_column": text_column, "label_column": label_column,
                  "lm_weight": float(lm_weight), "val": os.path.abspath(val_path) if val_path else None,
                  "val_fraction": float(val_fraction)}
        return cls(replace(cfg, workers=1), model, tokenizer, labels, train, val, extras, data_path)

    @classmethod
    def resume(cls, cfg, ckpt):
        """The task of a checkpoint being resumed: its model (latest snapshot), labels, columns and data."""
        model, tokenizer, labels, extras = classifier_from_checkpoint(ckpt, backend=cfg.backend, dropout=cfg.dropout)
        data_path = cfg.data or BUNDLED
        examples = cd.read_examples(data_path, extras["text_column"], extras["label_column"])
        if extras.get("val"):
            train, val = examples, cd.read_examples(extras["val"], extras["text_column"], extras["label_column"])
        else:
            train, val = cd.split_examples(examples, extras.get("val_fraction", 0.1), seed=cfg.seed)
        return cls(replace(cfg, workers=1), model, tokenizer, labels, train, val, extras, data_path)

    # ---------------------------------------------------------------- the protocol
    def draw_batch(self, rng):
        """-> (idx (B, T) right-padded, lengths (B,), labels (B,)): batch_size training texts drawn with rng."""
        rows = rng.integers(0, len(self.train_ids), size=self.cfg.batch_size)
        idx, lengths = cd.pad_batch([self.train_ids[r] for r in rows], self.model.config.block_size)
        return idx, lengths, self.train_y[rows]

    def loss_and_grad(self, batch, grad, dropout_rng):
        idx, lengths, labels = batch
        loss, cache = self.model.forward(idx, lengths, labels, rng=dropout_rng if self.cfg.dropout > 0 else None)
        self.model.backward(cache, out=grad)
        return loss

    def evaluate(self):
        """Cross-entropy of the classification (val_loss), accuracy and macro-F1 on every validation text."""
        probs, loss = run_in_batches(self.model, self.val_ids, self.val_y)
        report = cd.classification_report(self.val_y, probs.argmax(axis=1), self.labels.names)
        return {"val_loss": loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}

    def checkpoint_extras(self):
        return dict(self.extras)

    def describe(self):
        c = self.model.config
        counts = lambda pairs: ", ".join(f"{name} {n}" for name, n in pairs)  # noqa: E731
        cut = self.train_truncated + self.val_truncated
        return (f"{self.model.num_params:,} parameters ({c.n_layer} layers, {c.n_head} heads, n_embd {c.n_embd}, "
                f"block {c.block_size}, vocab {c.vocab_size}, {len(self.labels.names)} classes), {c.backend} "
                f"backend, {c.dtype}; {len(self.train_ids):,} training texts from {self.where} ({counts(self.train_counts)}), "
                f"{len(self.val_ids):,} validation ({counts(self.val_counts)})"
                + (f"; {cut} text(s) longer than {c.block_size} tokens keep their first {c.block_size}" if cut else ""))

    def finish(self):
        pass


# ------------------------------------------------------------------ checkpoints
def classifier_from_checkpoint(ckpt, backend=None, dropout=None):
    """(GPTClassifier, tokenizer, LabelMap, task extras) from a loaded checkpoint; one line if it holds no classifier."""
    from .tokenizers import from_dict

    task = ckpt.state.get("task")
    if not isinstance(task, dict) or task.get("name") != NAME:
        kind = task.get("name") if isinstance(task, dict) else "lm"
        raise UserError(f"{ckpt.path} holds no classifier (it was saved by a {kind!r} run, not `npgpt classify train`)")
    names = task.get("labels")
    if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        raise UserError(f"corrupt checkpoint: {ckpt.path} has no valid label names")
    score = ckpt.params.get("score.weight")
    if score is None or score.ndim != 2 or score.shape[1] != len(names):
        raise UserError(f"corrupt checkpoint: {ckpt.path} has no score.weight for its {len(names)} labels")
    lm_weight = task.get("lm_weight", 0.0)
    body = replace(ckpt, params={k: v for k, v in ckpt.params.items() if k != "score.weight"})
    gpt = checkpoint.build_model(body, backend=backend, dropout=dropout)
    if score.shape[0] != gpt.config.n_embd:
        raise UserError(f"corrupt checkpoint: score.weight has shape {score.shape}, n_embd is {gpt.config.n_embd}")
    try:
        clf = GPTClassifier(gpt, len(names), lm_weight=lm_weight)
        tokenizer = from_dict(ckpt.tokenizer)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt checkpoint: {ckpt.path} ({e})") from None
    clf.params["score.weight"][...] = score
    labels = cd.LabelMap(tuple(names))
    clf.tokenizer, clf.labels = tokenizer, labels
    extras = {"text_column": "text", "label_column": "label", **task}
    return clf, tokenizer, labels, extras


def load_classifier(path, backend=None, which="best"):
    """A trained classifier from a `npgpt classify train` output directory (its best-validation snapshot).

    The returned GPTClassifier also has .tokenizer and .labels (a LabelMap),
    which predict_texts uses.
    """
    clf, _, _, _ = classifier_from_checkpoint(checkpoint.load(path, which), backend=backend)
    return clf


def predict_texts(clf, texts, tokenizer=None, labels=None):
    """[str] -> ([label name], probabilities (N, K)); texts longer than block_size keep their first tokens."""
    tokenizer = tokenizer or clf.tokenizer
    labels = labels or clf.labels
    examples = [cd.Example(t, "?", i + 1) for i, t in enumerate(texts)]
    for e in examples:
        if not e.text.strip():
            raise UserError(f"text {e.line} is empty")
    encoded, _ = encode_examples(tokenizer, examples, clf.config.block_size, "text")
    probs, _ = run_in_batches(clf, encoded)
    return [labels.names[k] for k in probs.argmax(axis=1)], probs


# ------------------------------------------------------------------ the Python API
def fit(data=None, out="out-classify", val=None, init_from=None, text_column="text", label_column="label",
        lm_weight=0.0, progress=False, **settings):
    """Train a classifier through npgpt's training loop -> the best-validation GPTClassifier.

    data: a CSV/JSONL file (default: the bundled tiny sentiment set); val: a
    validation file (default: a seeded 10% of data); init_from: an npgpt
    model directory to start from; settings: TrainConfig fields
    (max_iters, batch_size, n_layer, lr, ...).  Checkpoints and
    metrics.jsonl go to out, as with `npgpt classify train`.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> clf = fit(out=out, max_iters=4, eval_interval=2, n_layer=1, n_embd=16, n_head=2, block_size=32,
    ...           backend="numpy", sample_tokens=0, log_interval=0, verbose=False)
    >>> clf.labels.names
    ('neg', 'pos')
    >>> labels, probs = predict_texts(clf, ["a lovely film", "a dull film"])
    >>> probs.shape
    (2, 2)
    """
    import io

    from . import train as tr

    verbose = settings.pop("verbose", True)
    base = tr.finetuning_base({"init_from": os.path.abspath(init_from), **settings}) if init_from else tr.TrainConfig()
    cfg = replace(base, out=out, data=os.path.abspath(data) if data else None,
                  init_from=os.path.abspath(init_from) if init_from else None, **settings)
    if cfg.lr_decay_iters is None:
        cfg = replace(cfg, lr_decay_iters=cfg.max_iters)
    tr.validate(cfg)
    task = ClassificationTask.build(cfg, val, text_column, label_column, lm_weight)
    tr.prepare_out_dir(cfg.out, resume=False, overwrite=True)
    for name in (tr.METRICS, tr.STEP_LOG):
        open(os.path.join(cfg.out, name), "w").close()
    checkpoint.forget_best(cfg.out)
    trainer = tr.Trainer(task.cfg, task, None, progress=progress, out=None if verbose else io.StringIO())
    trainer.train()
    return load_classifier(cfg.out)
