"""GPT-2: the layers of npgpt.layers composed into a language model.

    idx (B, T) -> embedding -> n_layer pre-LN blocks -> ln_f -> logits (B, T, V)

Each block is  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))  with
mlp = c_fc (C -> 4C), GELU, c_proj (4C -> C).  The LM head reuses
`wte.weight` (weight tying), so its gradient adds to the embedding's.

Two variants of "Attention Is All You Need" (docs/model.md, "Post-LN and
sinusoidal positions"): norm="post" puts each layer norm after its residual
sum, x = ln_1(x + attn(x));  x = ln_2(x + mlp(x)), and has no ln_f (the
last block already ends in a norm; the paper has none); positions="sinusoidal"
adds the fixed table of npgpt/layers/positional.py instead of a learned
wpe.weight, which then does not exist.

Parameters are named as in Hugging Face's GPT-2 and live as views into one
flat float buffer (`model.flat_params`), like llm.c's ParameterTensors:
the optimizer, gradient clipping and checkpoints then each work on a
single array.  Gradients have the same layout (`Gradients`).

To read the model's math in one sitting, start with npgpt/reference.py:
the same forward and backward in the plain layers, without the fused-kernel
branches, dropout and buffers this file adds for speed.  GPT's docstring
shows the public methods at work.
"""
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import layers
from .layers import positional
from .seeding import as_generator

BACKENDS = ("numpy", "numba")
NORMS = ("pre", "post")  # layer norm before each sub-layer (GPT-2) or after its residual sum (the paper)
POSITIONS = ("learned", "sinusoidal")  # wpe.weight, or the paper's fixed sinusoid table


@dataclass(frozen=True)
class GPTConfig:
    """Every size that defines a model; validated on construction."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    dtype: str = "float32"
    backend: str = "numba"  # npgpt.kernels; "numpy" runs the reference layers
    layer_norm_epsilon: float = 1e-5  # GPT-2's; Hugging Face configs name it so
    n_inner: int | None = None  # the MLP's hidden width; None means 4 * n_embd, as in GPT-2
    # LoRA adapters (npgpt/layers/lora.py; docs/layers/lora.md): rank 0 means none.
    # Targets: comma-separated layer names out of LORA_TARGETS.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "attn.c_attn,attn.c_proj"
    norm: str = "pre"  # NORMS
    positions: str = "learned"  # POSITIONS

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"GPTConfig.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"GPTConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be in (0, 1), got {eps!r}")
        if self.n_inner is not None and (isinstance(self.n_inner, bool) or not isinstance(self.n_inner, (int, np.integer))
                                         or self.n_inner <= 0):
            raise ValueError(f"GPTConfig.n_inner must be a positive integer or None (4 * n_embd), got {self.n_inner!r}")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, (int, np.integer)) or self.lora_rank < 0:
            raise ValueError(f"GPTConfig.lora_rank must be an integer >= 0, got {self.lora_rank!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise ValueError(f"GPTConfig.lora_alpha must be a positive number, got {self.lora_alpha!r}")
        lora_target_names(self.lora_targets)  # raises on an unknown name
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"GPTConfig.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be even for sinusoidal positions "
                             f"(channels come in sin/cos pairs)")

    @property
    def mlp_width(self):
        """The MLP's hidden width: n_inner, or 4 * n_embd when n_inner is None."""
        return self.n_inner or 4 * self.n_embd

    def to_dict(self):
        return asdict(self)


# The linear layers of a block that can carry a LoRA adapter; short names accepted too.
LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
LORA_TARGET_ALIASES = {"c_attn": "attn.c_attn", "c_proj": "attn.c_proj", "c_fc": "mlp.c_fc"}


def lora_target_names(targets):
    """"c_attn,c_proj" -> ("attn.c_attn", "attn.c_proj"): canonical names in block order.

    "c_proj" alone is attention's output projection; the MLP's is "mlp.c_proj".
    """
    if not isinstance(targets, str):
        raise ValueError(f"GPTConfig.lora_targets must be a comma-separated string, got {targets!r}")
    names = set()
    for part in filter(None, (t.strip() for t in targets.split(","))):
        name = LORA_TARGET_ALIASES.get(part, part)
        if name not in LORA_TARGETS:
            raise ValueError(f"unknown LoRA target {part!r}; choose from c_attn, c_proj, c_fc, mlp.c_proj")
        names.add(name)
    return tuple(t for t in LORA_TARGETS if t in names)


def param_shapes(config):
    """The model's parameters in storage order: {name: shape}, GPT-2's names."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C)}
    if config.positions == "learned":
        shapes["wpe.weight"] = (config.block_size, C)

    def add_layernorm(prefix):
        shapes[f"{prefix}.weight"] = (C,)
        if config.bias:
            shapes[f"{prefix}.bias"] = (C,)

    def add_linear(prefix, c_in, c_out):
        shapes[f"{prefix}.weight"] = (c_in, c_out)
        if config.bias:
            shapes[f"{prefix}.bias"] = (c_out,)

    for i in range(config.n_layer):
        add_layernorm(f"h.{i}.ln_1")
        add_linear(f"h.{i}.attn.c_attn", C, 3 * C)
        add_linear(f"h.{i}.attn.c_proj", C, C)
        add_layernorm(f"h.{i}.ln_2")
        add_linear(f"h.{i}.mlp.c_fc", C, config.mlp_width)
        add_linear(f"h.{i}.mlp.c_proj", config.mlp_width, C)
    if config.norm == "pre":  # post-LN: the last block's ln_2 is the final norm
        add_layernorm("ln_f")
    if config.lora_rank:  # adapters last: the base weights stay one contiguous prefix of the buffer
        r = config.lora_rank
        for i in range(config.n_layer):
            for target in lora_target_names(config.lora_targets):
                c_in, c_out = shapes[f"h.{i}.{target}.weight"]
                shapes[f"h.{i}.{target}.lora_a"] = (c_in, r)
                shapes[f"h.{i}.{target}.lora_b"] = (r, c_out)
    return shapes


def views_into(flat, shapes):
    """Split a flat buffer into named, reshaped views (no copies)."""
    views, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        views[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    assert offset == flat.size, "flat buffer does not match the parameter shapes"
    return views


class Gradients(dict):
    """{name: gradient} views into one flat buffer `.flat` (num_params,), laid out like model.params.

    model.backward and model.loss_and_grad return it; AdamW.step takes it
    (or its .flat).  Being a dict, it reads like the parameters:
    grads["wte.weight"] has wte's shape.
    """

    def __init__(self, flat, shapes):
        super().__init__(views_into(flat, shapes))
        self.flat = flat


def get_backend(name):
    """The module namespace whose submodules implement the layer contract."""
    if name == "numba":
        from . import kernels

        return kernels
    return layers


class GPT:
    """A GPT-2 language model with hand-written backward passes.

    >>> model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dtype="float64"), seed=0)
    >>> idx = np.arange(16).reshape(2, 8) % 11
    >>> targets = (idx + 1) % 11
    >>> loss, grads = model.loss_and_grad(idx, targets)  # idx, targets (B, T) ints; grads: Gradients
    >>> loss2, cache = model.forward(idx, targets)       # the same in two halves, one batch in one piece
    >>> grads2 = model.backward(cache)                   # {name: array shaped like params[name]}, .flat
    >>> bool(np.isclose(loss, loss2)), bool(np.allclose(grads.flat, grads2.flat))
    (True, True)
    >>> grads["h.0.mlp.c_fc.weight"].shape, grads.flat.shape == model.flat_params.shape
    ((8, 32), True)
    >>> model.generate([[1, 2], [3, 4]], max_new_tokens=5, temperature=0.8, top_k=3, seed=0).shape
    (2, 7)
    >>> model.generate([1, 2, 3], max_new_tokens=4, seed=0).shape   # one prompt: 1-D, prompt included
    (7,)

    workers: data-parallel threads for loss_and_grad (numba backend): None
    chooses like `npgpt train` (npgpt.parallel.choose_workers), 1 runs each
    batch in one piece; settable later as `model.workers`.
    """

    def __init__(self, config, seed=0, workers=None, init_weights=True):
        """init_weights=False leaves the buffer zeroed, for a caller that loads weights next."""
        self.config = config
        self.dtype = np.dtype(config.dtype)
        self.shapes = param_shapes(config)
        self.num_params = sum(math.prod(s) for s in self.shapes.values())
        self.flat_params = np.zeros(self.num_params, dtype=self.dtype)
        self.params = views_into(self.flat_params, self.shapes)
        self.ops = get_backend(config.backend)
        # The numba kernels also offer fused variants (bias inside GELU, in-place
        # buffers); the model takes them where noted, the reference path stays plain.
        self.fused = config.backend == "numba"
        self.workers = workers
        self._parallel = None  # a npgpt.parallel.DataParallel, made on first use
        self.lora_scale = config.lora_alpha / config.lora_rank if config.lora_rank else 0.0  # alpha / r
        # names of parameters that do not train (npgpt.finetune.freeze): backward writes zeros
        # for them and skips the weight-gradient products it can
        self.frozen = frozenset()
        # positions="sinusoidal": a fixed table stands where wpe.weight would; no parameter, no gradient
        self.position_table = (positional.forward(config.block_size, config.n_embd, dtype=self.dtype)
                               if config.positions == "sinusoidal" else None)
        if init_weights:
            self._init_weights(np.random.default_rng(seed))
        if self.fused:
            from .firstrun import announce_compile_once

            announce_compile_once()

    def _init_weights(self, rng):
        """GPT-2's init: N(0, 0.02); residual projections N(0, 0.02 / sqrt(2 n_layer)).

        The residual stream adds two projections per block, so scaling them
        down keeps the stream's variance from growing with depth.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.params.items():
            if ".lora_" in name:
                continue  # adapters: init_adapters below
            if p.ndim == 2:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                p[...] = rng.normal(0.0, std, p.shape)
            elif name.endswith(".weight"):  # layer norm gains
                p[...] = 1.0
            # biases stay 0: the flat buffer starts zeroed
        self.init_adapters(rng)

    def init_adapters(self, rng):
        """Fresh LoRA adapters (if the config has any): a random, b zero, so the model is unchanged."""
        for name in self.params:
            if name.endswith(".lora_a"):
                prefix = name[: -len(".lora_a")]
                a, b = layers.lora.init(*self.shapes[prefix + ".weight"], self.config.lora_rank, rng)
                self.params[name][...] = a
                self.params[prefix + ".lora_b"][...] = b

    # ------------------------------------------------------- pretrained files
    @classmethod
    def from_pretrained(cls, path, dtype=None, backend=None, block_size=None):
        """A Hugging Face GPT-2 folder (config.json + safetensors) or an npgpt checkpoint directory -> GPT.

        block_size below the model's crops the position table.  The
        tokenizer: npgpt.pretrained.load(path).tokenizer.  docs/pretrained.md
        """
        from .pretrained import from_pretrained

        return from_pretrained(path, dtype=dtype, backend=backend, block_size=block_size)

    def save_pretrained(self, directory, tokenizer=None, merge_lora=True):
        """Write a folder transformers' GPT2LMHeadModel (and AutoTokenizer) load; LoRA adapters merged."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer, merge_lora=merge_lora)

    # ----------------------------------------------------------------- checks
    def _check_idx(self, idx, what="idx"):
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"{what} must be a 2-D (B, T) array of token ids, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{what} must hold integers, got dtype {idx.dtype}")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"{what} must be non-empty, got shape {idx.shape}")
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        return idx

    def _check_tokens(self, idx, V):
        if idx.min() < 0 or idx.max() >= V:
            raise ValueError(f"token ids must be in [0, {V}), got range [{idx.min()}, {idx.max()}]")

    def _check_targets(self, targets, idx, ignore_index):
        targets = np.asarray(targets)
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {targets.shape} does not match idx shape {idx.shape}")
        if targets.dtype.kind not in "iu":
            raise ValueError(f"targets must hold integers, got dtype {targets.dtype}")
        counted = targets[targets != ignore_index]
        V = self.config.vocab_size
        if counted.size and (counted.min() < 0 or counted.max() >= V):
            raise ValueError(f"target ids must be in [0, {V}) or equal ignore_index {ignore_index}")
        return targets

    # ---------------------------------------------------------------- forward
    def _hidden(self, idx, rng, caches):
        """idx (B, T) -> final hidden states (B, T, C), after ln_f (pre-LN) or the last block's ln_2 (post-LN)."""
        ops, P, cfg = self.ops, self.params, self.config
        p_drop = cfg.dropout if rng is not None else 0.0  # dropout only when training
        x, c = ops.embedding.forward(idx, P["wte.weight"], self._position_rows())  # (B, T, C)
        caches.append(c)
        x, c = ops.dropout.forward(x, p_drop, rng)
        caches.append(c)
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            x, c_ln1, (c_qkv, c_att, c_aproj, c_adrop) = self._residual(
                x, pre + "ln_1", lambda h: self._attention_branch(h, pre, p_drop, rng))
            x, c_ln2, (c_fc, c_gelu, c_mproj, c_mdrop) = self._residual(
                x, pre + "ln_2", lambda h: self._mlp_branch(h, pre, p_drop, rng))
            caches.append((c_ln1, c_qkv, c_att, c_aproj, c_adrop, c_ln2, c_fc, c_gelu, c_mproj, c_mdrop))
        if cfg.norm == "pre":
            x, c = self._layernorm(x, "ln_f")
            caches.append(c)
        return x

    def _position_rows(self):
        """The (block_size, C) table added to the token embedding: wpe.weight, or the fixed sinusoid."""
        return self.params["wpe.weight"] if self.position_table is None else self.position_table

    def _layernorm(self, x, prefix):
        """x (B, T, C) -> the layer norm named prefix applied to it, and its cache."""
        P = self.params
        eps = self.config.layer_norm_epsilon
        return self.ops.layernorm.forward(x, P[prefix + ".weight"], P.get(prefix + ".bias"), eps)

    def _residual(self, x, ln, branch):
        """One sub-layer in its residual connection: x (B, T, C) -> (out (B, T, C), ln's cache, branch's cache).

        branch: h (B, T, C) -> (y (B, T, C), cache).  ln: the layer norm's name.
        pre (GPT-2):  out = x + branch(ln(x))  -- the stream itself is never normalised;
        post (paper): out = ln(x + branch(x))  -- every block's output is.
        """
        if self.config.norm == "pre":
            h, c_ln = self._layernorm(x, ln)
            y, c_branch = branch(h)
            return x + y, c_ln, c_branch
        y, c_branch = branch(x)
        out, c_ln = self._layernorm(x + y, ln)
        return out, c_ln, c_branch

    def _attention_branch(self, h, pre, p_drop, rng):
        """h (B, T, C) -> drop(c_proj(attn(c_attn(h)))) (B, T, C), (c_qkv, c_att, c_aproj, c_adrop)."""
        qkv, c_qkv = self._linear(h, pre + "attn.c_attn")  # (B, T, 3C)
        a, c_att = self.ops.attention.forward(qkv, self.config.n_head)  # (B, T, C)
        a, c_aproj = self._linear(a, pre + "attn.c_proj")
        a, c_adrop = self.ops.dropout.forward(a, p_drop, rng)
        return a, (c_qkv, c_att, c_aproj, c_adrop)

    def _mlp_branch(self, h, pre, p_drop, rng):
        """h (B, T, C) -> drop(c_proj(gelu(c_fc(h)))) (B, T, C), (c_fc, c_gelu, c_mproj, c_mdrop)."""
        h, c_fc, c_gelu = self._mlp_up(h, pre + "mlp.c_fc")  # (B, T, 4C)
        h, c_mproj = self._linear(h, pre + "mlp.c_proj")  # (B, T, C)
        h, c_mdrop = self.ops.dropout.forward(h, p_drop, rng)
        return h, (c_fc, c_gelu, c_mproj, c_mdrop)

    def _linear(self, x, prefix, with_bias=True):
        """x @ w + b of the layer named prefix, plus its LoRA adapter's x @ a @ b * scale if it has one.

        -> (out, cache); the cache is the linear layer's, or (its, the adapter's).
        """
        P = self.params
        out, cache = self.ops.linear.forward(x, P[prefix + ".weight"], P.get(prefix + ".bias") if with_bias else None)
        if prefix + ".lora_a" not in P:
            return out, cache
        delta, c_lora = self.ops.lora.forward(x, P[prefix + ".lora_a"], P[prefix + ".lora_b"], self.lora_scale)
        out += delta
        return out, (cache, c_lora)

    def _mlp_up(self, h, prefix):
        """gelu(h @ w + b) of the layer named prefix: (B, T, C) -> (B, T, 4C), and the caches of both layers.

        The kernels add the bias inside the GELU pass (one pass over the
        (B, T, 4C) activations instead of two); the reference runs the two
        layers one after the other.
        """
        b = self.params.get(prefix + ".bias")
        if self.fused and b is not None:
            h, c_fc = self._linear(h, prefix, with_bias=False)
            h, c_gelu = self.ops.gelu.bias_forward(h, b)  # adds b to the fresh h @ w in place
            return h, c_fc, c_gelu
        h, c_fc = self._linear(h, prefix)
        h, c_gelu = self.ops.gelu.forward(h)
        return h, c_fc, c_gelu

    def logits(self, idx):
        """idx (B, T) -> logits (B, T, V), inference mode (no dropout)."""
        idx = self._check_idx(idx)
        self._check_tokens(idx, self.config.vocab_size)
        return self._lm_head(self._hidden(idx, None, []))[0]

    def _lm_head(self, x):
        """x (B, T, C) -> logits (B, T, V) = x @ wte^T, cache: the head is tied to the token embedding."""
        return self.ops.linear.forward(x, self.params["wte.weight"].T, None)  # BLAS reads wte^T in place

    def forward(self, idx, targets, rng=None, label_smoothing=0.0, ignore_index=-1):
        """idx, targets (B, T) ints -> (scalar loss, cache).

        rng: a np.random.Generator (or an int seed) turns dropout on
        (training); None is evaluation mode.  The loss is the mean
        cross-entropy over targets that are not ignore_index.
        """
        if rng is not None:
            rng = as_generator(rng)
        idx = self._check_idx(idx)
        self._check_tokens(idx, self.config.vocab_size)
        targets = self._check_targets(targets, idx, ignore_index)
        caches = []
        x = self._hidden(idx, rng, caches)
        logits, c_head = self._lm_head(x)  # (B, T, V)
        loss, c_ce = self.ops.cross_entropy.forward(logits, targets, label_smoothing, ignore_index)
        caches += [c_head, c_ce]
        return float(loss), caches

    # --------------------------------------------------------------- backward
    def backward(self, cache, out=None, dloss=1.0):
        """cache from forward -> {name: gradient}, the same keys and shapes as params.

        out: an optional flat buffer (num_params,) to write the gradients
        into (reused across steps by the trainer); a new one otherwise.
        Every entry of it is overwritten.  With the numba backend the cache
        is consumed: it is emptied, so that each layer's activations are freed
        as soon as its backward is done, and its logits become dlogits.
        dloss: the gradient of the final objective with respect to this
        loss, 1 by default; a weight when a batch is split into shards whose
        gradients are summed (npgpt/parallel.py).
        """
        ops, cfg = self.ops, self.config
        if not cache:
            raise ValueError("this forward cache was already used by a backward")
        G = Gradients(self._gradient_buffer(out), self.shapes)
        frozen = self.frozen
        caches = list(cache)
        if self.fused:
            cache.clear()  # from here on `caches` holds the only references
        c_ce, c_head = caches.pop(), caches.pop()

        # cross-entropy and the tied LM head: logits = x @ wte^T
        if self.fused:
            dlogits = ops.cross_entropy.backward_in_place(dloss, c_ce)  # (B, T, V), over the logits' memory
        else:
            dlogits = ops.cross_entropy.backward(dloss, c_ce)  # (B, T, V)
        # the head's weight is wte^T (C, V): its gradient is the head's share of wte's, transposed
        dx = self._linear_backward(dlogits, c_head, None if "wte.weight" in frozen else G["wte.weight"].T, None)
        del dlogits
        return self.backward_hidden(dx, caches, G)

    def backward_hidden(self, dx, caches, G):
        """The backward of _hidden: dx (B, T, C), the gradient at the final hidden
        states, back through ln_f, the blocks and the embeddings -> G.

        caches: _hidden's caches (consumed: popped from the end).  G: the
        gradient views; every parameter's entry is overwritten, except
        wte's, which the lookup's gradient ADDS to (the tied LM head may
        have written its share first; zero it if nothing did).  A model with
        another head on top (npgpt/classify.py) calls this with its own dx.
        """
        ops, cfg, frozen = self.ops, self.config, self.frozen
        if cfg.norm == "pre":
            dx, dw, db = ops.layernorm.backward(dx, caches.pop())
            _store(G, "ln_f", dw, db)
        for i in reversed(range(cfg.n_layer)):
            pre = f"h.{i}."
            c_ln1, c_qkv, c_att, c_aproj, c_adrop, c_ln2, c_fc, c_gelu, c_mproj, c_mdrop = caches.pop()
            dx = self._residual_backward(dx, c_ln2, pre + "ln_2", G, lambda dy: self._mlp_branch_backward(
                dy, (c_fc, c_gelu, c_mproj, c_mdrop), G, pre))
            dx = self._residual_backward(dx, c_ln1, pre + "ln_1", G, lambda dy: self._attention_branch_backward(
                dy, (c_qkv, c_att, c_aproj, c_adrop), G, pre))

        dx = ops.dropout.backward(dx, caches.pop())
        c_emb = caches.pop()
        trained = {"wte.weight", "wpe.weight"} & set(self.shapes)
        if trained <= frozen:
            return _zero_frozen(G, frozen)
        # sinusoidal positions: the table is a constant, so the lookup's position gradient is dropped
        dwpe = G["wpe.weight"] if "wpe.weight" in G else np.zeros_like(self.position_table)
        if self.fused:  # add the lookup's gradient into wte in place: no (V, C) temporary
            dwpe[...] = 0.0
            ops.embedding.backward_into(dx, c_emb, G["wte.weight"], dwpe)
        else:
            dwte, dwpe[...] = ops.embedding.backward(dx, c_emb)
            G["wte.weight"] += dwte  # tied: the lookup's gradient adds to the head's
        return _zero_frozen(G, frozen)

    def _residual_backward(self, dout, c_ln, ln, G, branch_backward):
        """dout (B, T, C) -> dx (B, T, C) through one sub-layer in its residual connection (see _residual);
        the layer norm's gradients land in G.  branch_backward: dy -> dh.

        pre:  out = x + f(LN(x))          ->  dx = dout + LN'(f'(dout))
        post: out = LN(s),  s = x + f(x)  ->  ds = LN'(dout),  dx = ds + f'(ds)
        The residual path passes its gradient through unchanged; the branch adds its part.
        """
        if self.config.norm == "pre":
            dh, dw, db = self.ops.layernorm.backward(branch_backward(dout), c_ln)
            _store(G, ln, dw, db)
            dout += dh
            return dout
        ds, dw, db = self.ops.layernorm.backward(dout, c_ln)
        _store(G, ln, dw, db)
        dh = branch_backward(ds)
        dh += ds
        return dh

    def _attention_branch_backward(self, dy, caches, G, pre):
        """dy (B, T, C) -> dh (B, T, C) of _attention_branch; its weights' gradients land in G."""
        c_qkv, c_att, c_aproj, c_adrop = caches
        da = self.ops.dropout.backward(dy, c_adrop)
        da = self._linear_backward(da, c_aproj, *_grads_of(G, pre + "attn.c_proj", self.frozen))
        dqkv = self.ops.attention.backward(da, c_att)
        return self._linear_backward(dqkv, c_qkv, *_grads_of(G, pre + "attn.c_attn", self.frozen))

    def _mlp_branch_backward(self, dy, caches, G, pre):
        """dy (B, T, C) -> dh (B, T, C) of _mlp_branch; its weights' gradients land in G."""
        c_fc, c_gelu, c_mproj, c_mdrop = caches
        dh = self.ops.dropout.backward(dy, c_mdrop)
        dh = self._linear_backward(dh, c_mproj, *_grads_of(G, pre + "mlp.c_proj", self.frozen))
        if self.fused and self.config.bias:
            dh, db = self.ops.gelu.bias_backward(dh, c_gelu)  # also sums c_fc's bias gradient
            G[pre + "mlp.c_fc.bias"][...] = db
        else:
            dh = self.ops.gelu.backward(dh, c_gelu)
        return self._linear_backward(dh, c_fc, *_grads_of(G, pre + "mlp.c_fc", self.frozen))

    def _gradient_buffer(self, out):
        """out: None (a new buffer), a Gradients or a flat (num_params,) array of the model's dtype."""
        if out is None:
            return np.zeros(self.num_params, self.dtype)
        if isinstance(out, Gradients):
            out = out.flat
        if (not isinstance(out, np.ndarray) or out.shape != (self.num_params,) or out.dtype != self.dtype
                or not out.flags.c_contiguous):
            raise ValueError(f"the gradient buffer must be a Gradients or a contiguous ({self.num_params},) "
                             f"{self.dtype} array, got {type(out).__name__} {getattr(out, 'shape', '')}")
        return out

    # ------------------------------------------------------- the public loop API
    def loss_and_grad(self, idx, targets, grads=None, rng=None, label_smoothing=0.0, ignore_index=-1):
        """idx, targets (B, T) ints -> (mean loss, Gradients): one training step's forward and backward.

        grads: a Gradients (or flat buffer) to write into, reused across
        steps; a new one when None.  rng: a Generator or int seed turns
        dropout on.  With the numba backend the batch is split across
        data-parallel workers as `npgpt train` does (see `workers`); the
        result equals one forward + backward of the whole batch up to float
        rounding.
        """
        buffer = self._gradient_buffer(grads)
        grads = grads if isinstance(grads, Gradients) else Gradients(buffer, self.shapes)
        if rng is not None:
            rng = as_generator(rng)
        idx = self._check_idx(idx)
        parallel = self._data_parallel(idx.shape[0])
        if parallel is not None:
            self._check_tokens(idx, self.config.vocab_size)
            self._check_targets(targets, idx, ignore_index)
            loss = parallel.loss_and_grad(idx, np.asarray(targets), grads.flat, rng=rng,
                                          label_smoothing=label_smoothing, ignore_index=ignore_index)
            return loss, grads
        loss, cache = self.forward(idx, targets, rng=rng, label_smoothing=label_smoothing,
                                   ignore_index=ignore_index)
        self.backward(cache, out=grads.flat)
        return loss, grads

    def _data_parallel(self, batch_size):
        """The DataParallel that loss_and_grad uses for this batch size, or None for one piece."""
        if self.config.backend != "numba" or batch_size < 2:
            return None
        from .parallel import DataParallel, choose_workers

        workers = choose_workers(self, batch_size) if self.workers is None else int(self.workers)
        if workers < 1:
            raise ValueError(f"model.workers must be None (automatic) or >= 1, got {self.workers!r}")
        if workers == 1:
            return None
        if self._parallel is None or self._parallel.workers != workers:
            if self._parallel is not None:
                self._parallel.close()
            self._parallel = DataParallel(self, workers)
        return self._parallel

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """Continue each prompt by max_new_tokens sampled ids, with the KV cache.

        idx: (B, T) prompt ids, or a 1-D list/array of one prompt's ids.
        Returns the prompts with their continuations: (B, T + max_new_tokens),
        or 1-D for a 1-D prompt.  temperature 0 is greedy; top_k keeps the k
        most likely tokens, top_p the smallest set reaching probability p.
        seed: None (random), an int, or a np.random.Generator.
        """
        from .generate import check_sampling, generate

        check_sampling(max_new_tokens, temperature, top_k, top_p)
        prompts = np.asarray(idx)
        one_prompt = prompts.ndim == 1
        prompts = prompts[None, :] if one_prompt else prompts
        if prompts.ndim != 2 or prompts.size == 0 or prompts.dtype.kind not in "iu":
            raise ValueError(f"idx must be a non-empty 1-D or (B, T) array of token ids, got shape {prompts.shape}")
        self._check_tokens(prompts, self.config.vocab_size)
        rng = as_generator(seed)
        rows = [list(row) + list(generate(self, row, max_new_tokens, rng, temperature, top_k, top_p))
                for row in prompts]
        out = np.array(rows, dtype=np.int64)
        return out[0] if one_prompt else out

    def attention_maps(self, idx):
        """Every head's attention probabilities: idx (B, T) -> (n_layer, B, nh, T, T); 1-D idx (T,) ->
        (n_layer, nh, T, T).  Row t of a map is how query t spreads its attention over keys 0..t."""
        from . import reference

        prompts = np.asarray(idx)
        one_prompt = prompts.ndim == 1
        prompts = self._check_idx(prompts[None, :] if one_prompt else prompts)
        self._check_tokens(prompts, self.config.vocab_size)
        if self.config.norm == "pre" and self.config.positions == "learned":
            _, _, cache = reference.forward(self.params, self.config, prompts)
            maps = np.stack(reference.attention_probs(cache))  # (n_layer, B, nh, T, T)
        else:  # npgpt.reference is GPT-2's arrangement only: run these blocks on the reference layers,
            twin = GPT(replace(self.config, backend="numpy"), init_weights=False)  # whose caches keep the probs
            twin.flat_params[...] = self.flat_params
            caches = []
            twin._hidden(prompts, None, caches)
            blocks = caches[2:2 + self.config.n_layer]
            maps = np.stack([c_att[3] for (_, _, c_att, *_) in blocks])  # attention's cache: (q, k, v, probs, scale)
        return maps[:, 0] if one_prompt else maps

    def _linear_backward(self, dout, cache, dw, db, dlora=None):
        """A linear layer's backward -> dx; its weight and bias gradients land in
        dw and db (views of the flat gradient buffer; db None without a bias),
        its adapter's in dlora = (da, db) when it has one.

        The kernels write them there directly; the reference returns new
        arrays, which are copied in.
        """
        if dlora is not None:  # an adapted layer: out = x @ w + b + lora(x); dx gets both paths
            cache, c_lora = cache
            dx_lora, da, db_lora = self.ops.lora.backward(dout, c_lora)
            dlora[0][...] = da
            dlora[1][...] = db_lora
            dx = self._linear_backward(dout, cache, dw, db)
            dx += dx_lora
            return dx
        if dw is None:  # a frozen weight: skip dW's product, as costly as the forward's
            x, w, has_bias = cache
            dout2 = dout.reshape(-1, w.shape[1])
            if has_bias and db is not None:
                np.sum(dout2, axis=0, out=db)
            return (dout2 @ w.T).reshape(x.shape)
        if self.fused:
            return self.ops.linear.backward_into(dout, cache, dw, db)
        dx, dw_new, db_new = self.ops.linear.backward(dout, cache)
        dw[...] = dw_new
        if db is not None:
            db[...] = db_new
        return dx


def _grads_of(grads, prefix, frozen=frozenset()):
    """-> (weight gradient, bias gradient, (adapter's da, db)) of the layer named prefix;
    None for a missing bias or adapter, and for a frozen parameter (whose gradient stays zero)."""
    dlora = (grads[prefix + ".lora_a"], grads[prefix + ".lora_b"]) if prefix + ".lora_a" in grads else None
    w, b = prefix + ".weight", prefix + ".bias"
    return (None if w in frozen else grads[w]), (None if b in frozen else grads.get(b)), dlora


def _zero_frozen(grads, frozen):
    """Frozen parameters' gradients are exactly zero, whatever was computed or skipped on the way."""
    for name in frozen:
        grads[name][...] = 0.0
    return grads


def _store(grads, prefix, dw, db):
    grads[prefix + ".weight"][...] = dw
    if db is not None:
        grads[prefix + ".bias"][...] = db
