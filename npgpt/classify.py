"""A GPT with a classification head: the last real token's hidden state -> a label.

    idx (B, T), lengths (B,) -> GPT blocks -> ln_f -> h (B, T, C)
        -> pooled = h[b, lengths[b] - 1]  (B, C)          npgpt/layers/pool_last.py
        -> logits = pooled @ score.weight  (B, K)         npgpt/layers/linear.py (no bias, as GPT-2's head)
        -> cross-entropy against the labels (B,)          npgpt/layers/cross_entropy.py

Optionally, as GPT-1 fine-tuned, an auxiliary language-modelling loss on the
same texts is added with weight lm_weight:  loss = ce_cls + lm_weight * ce_lm,
where ce_lm predicts each real token from the ones before it (padding is
ignored).

The parameters are the GPT's, named as in GPT-2, plus `score.weight`
(C, K), all views into one flat buffer, so npgpt's AdamW, gradient
clipping, checkpoints and the training loop work unchanged.

    clf = GPTClassifier(GPT(config), num_labels=2)
    loss, cache = clf.forward(idx, lengths, labels)
    grads = clf.backward(cache)            # {name: array}, over one flat buffer
    probs = clf.predict_proba(idx, lengths)
"""
import math

import numpy as np

from .layers import pool_last
from .model import views_into


class GPTClassifier:
    """A GPT body with a linear head on each sequence's last real token."""

    always_trained = ("score.weight",)  # npgpt/finetune.py: no --freeze spec freezes the new head

    def __init__(self, gpt, num_labels, lm_weight=0.0, seed=0):
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")
        if not (isinstance(lm_weight, (int, float)) and math.isfinite(lm_weight) and lm_weight >= 0):
            raise ValueError(f"lm_weight must be a finite number >= 0, got {lm_weight!r}")
        self.gpt, self.num_labels, self.lm_weight = gpt, int(num_labels), float(lm_weight)
        self.config, self.dtype, self.ops = gpt.config, gpt.dtype, gpt.ops
        C = gpt.config.n_embd
        self.shapes = {**gpt.shapes, "score.weight": (C, self.num_labels)}
        self.num_params = gpt.num_params + C * self.num_labels
        # One buffer for body and head: the GPT's parameters become views into its front.
        self.flat_params = np.zeros(self.num_params, dtype=self.dtype)
        self.flat_params[: gpt.num_params] = gpt.flat_params
        gpt.flat_params = self.flat_params[: gpt.num_params]
        gpt.params = views_into(gpt.flat_params, gpt.shapes)
        self.params = views_into(self.flat_params, self.shapes)
        # GPT-2's init for a fresh head: N(0, 0.02), as Hugging Face's GPT2ForSequenceClassification
        self.params["score.weight"][...] = np.random.default_rng(seed).normal(0.0, 0.02, (C, self.num_labels))
        self.tokenizer = self.labels = None  # set by npgpt.classify_task.load_classifier: what predict_texts reads

    @property
    def frozen(self):
        """Names of the frozen parameters (npgpt/finetune.py's freeze sets it): the body's are the GPT's."""
        return self.gpt.frozen

    @frozen.setter
    def frozen(self, names):
        # the head always trains: a frozen random head would teach the body to fit noise
        self.gpt.frozen = frozenset(n for n in names if n != "score.weight")

    # ---------------------------------------------------------------- checks
    def _check(self, idx, lengths, labels=None):
        idx = self.gpt._check_idx(idx)
        self.gpt._check_tokens(idx, self.config.vocab_size)
        lengths = pool_last.check_lengths(lengths, *idx.shape)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (idx.shape[0],) or labels.dtype.kind not in "iu":
                raise ValueError(f"labels must be a ({idx.shape[0]},) integer array, got shape {labels.shape}")
            if labels.min() < 0 or labels.max() >= self.num_labels:
                raise ValueError(f"labels must be in [0, {self.num_labels}), got range [{labels.min()}, {labels.max()}]")
        return idx, lengths, labels

    # ---------------------------------------------------------------- forward
    def _logits(self, idx, lengths, rng, caches):
        """-> class logits (B, K) and the final hidden states (B, T, C); caches filled for backward."""
        h = self.gpt._hidden(idx, rng, caches)  # (B, T, C)
        pooled, c_pool = pool_last.forward(h, lengths)  # (B, C)
        logits, c_score = self.ops.linear.forward(pooled, self.params["score.weight"], None)  # (B, K)
        caches += [c_pool, c_score]
        return logits, h

    def forward(self, idx, lengths, labels, rng=None):
        """idx (B, T) ints, lengths (B,), labels (B,) ints -> (scalar loss, cache).

        rng: a np.random.Generator turns dropout on (training); None evaluates.
        """
        idx, lengths, labels = self._check(idx, lengths, labels)
        caches = []
        logits, h = self._logits(idx, lengths, rng, caches)
        loss, c_ce = self.ops.cross_entropy.forward(logits[:, None, :], labels[:, None])  # (B, 1, K) vs (B, 1)
        caches.append(c_ce)
        loss = float(loss)
        if self.lm_weight:
            lm_loss, c_lm = self._lm_loss(h, idx, lengths)
            caches.append(c_lm)
            loss += self.lm_weight * lm_loss
        return loss, caches

    def _lm_loss(self, h, idx, lengths):
        """Next-token cross-entropy on the real tokens: position t predicts idx[t + 1] while t + 1 < length."""
        B, T = idx.shape
        targets = np.full((B, T), -1, dtype=np.int64)
        targets[:, :-1] = idx[:, 1:]
        targets[np.arange(T)[None, :] >= (lengths[:, None] - 1)] = -1  # the last real token and the padding
        logits, c_head = self.gpt._lm_head(h)  # (B, T, V)
        loss, c_ce = self.ops.cross_entropy.forward(logits, targets)
        return float(loss), (c_head, c_ce)

    def logits(self, idx, lengths):
        """idx (B, T), lengths (B,) -> class logits (B, K), evaluation mode."""
        idx, lengths, _ = self._check(idx, lengths)
        return self._logits(idx, lengths, None, [])[0]

    def predict_proba(self, idx, lengths):
        """-> (B, K) class probabilities (softmax of the logits, in float64)."""
        z = self.logits(idx, lengths).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    # --------------------------------------------------------------- backward
    def backward(self, cache, out=None, dloss=1.0):
        """cache from forward -> {name: gradient} over one flat buffer (out, if given, is overwritten)."""
        if not cache:
            raise ValueError("this forward cache was already used by a backward")
        caches = list(cache)
        cache.clear()
        flat = np.zeros(self.num_params, self.dtype) if out is None else out
        G = views_into(flat, self.shapes)
        gpt_grads = views_into(flat[: self.gpt.num_params], self.gpt.shapes)
        c_lm = caches.pop() if self.lm_weight else None
        c_ce, c_score, c_pool = caches.pop(), caches.pop(), caches.pop()

        dlogits = self.ops.cross_entropy.backward(dloss, c_ce)[:, 0, :]  # (B, K)
        dpooled, dw, _ = self.ops.linear.backward(dlogits, c_score)  # (B, C), (C, K)
        G["score.weight"][...] = dw
        dh = pool_last.backward(dpooled, c_pool)  # (B, T, C): nonzero only at the pooled positions
        if c_lm is not None:  # the auxiliary LM loss: its head is tied to wte, which it writes first
            c_head, c_lm_ce = c_lm
            dlm = self.ops.cross_entropy.backward(dloss * self.lm_weight, c_lm_ce)  # (B, T, V)
            dh_lm, dwte_t, _ = self.ops.linear.backward(dlm, c_head)  # (B, T, C), (C, V)
            dh += dh_lm
            gpt_grads["wte.weight"][...] = dwte_t.T
        else:
            gpt_grads["wte.weight"][...] = 0.0  # the embedding lookup adds its share below
        self.gpt.backward_hidden(dh, caches, gpt_grads)
        return G
