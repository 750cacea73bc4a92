"""GPT-2: the layers of npgpt.layers composed into a language model.

    idx (B, T) -> embedding -> n_layer pre-LN blocks -> ln_f -> logits (B, T, V)

Each block is  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))  with
mlp = c_fc (C -> 4C), GELU, c_proj (4C -> C).  The LM head reuses
`wte.weight` (weight tying), so its gradient adds to the embedding's.

Parameters are named as in Hugging Face's GPT-2 and live as views into one
flat float buffer (`model.flat_params`), like llm.c's ParameterTensors:
the optimizer, gradient clipping and checkpoints then each work on a
single array.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from . import layers

BACKENDS = ("numpy", "numba")


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

    def to_dict(self):
        return asdict(self)


def param_shapes(config):
    """The model's parameters in storage order: {name: shape}, GPT-2's names."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.block_size, C)}

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
        add_linear(f"h.{i}.mlp.c_fc", C, 4 * C)
        add_linear(f"h.{i}.mlp.c_proj", 4 * C, C)
    add_layernorm("ln_f")
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


def get_backend(name):
    """The module namespace whose submodules implement the layer contract."""
    if name == "numba":
        from . import kernels

        return kernels
    return layers


class GPT:
    """A GPT-2 language model with hand-written backward passes.

    model = GPT(GPTConfig(...), seed=0)
    loss, cache = model.forward(idx, targets)   # idx, targets (B, T) ints
    grads = model.backward(cache)               # {name: array shaped like params[name]}
    """

    def __init__(self, config, seed=0):
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
        self._init_weights(np.random.default_rng(seed))

    def _init_weights(self, rng):
        """GPT-2's init: N(0, 0.02); residual projections N(0, 0.02 / sqrt(2 n_layer)).

        The residual stream adds two projections per block, so scaling them
        down keeps the stream's variance from growing with depth.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.params.items():
            if p.ndim == 2:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                p[...] = rng.normal(0.0, std, p.shape)
            elif name.endswith(".weight"):  # layer norm gains
                p[...] = 1.0
            # biases stay 0: the flat buffer starts zeroed

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
        """idx (B, T) -> final hidden states (B, T, C), after ln_f."""
        ops, P, cfg = self.ops, self.params, self.config
        p_drop = cfg.dropout if rng is not None else 0.0  # dropout only when training
        x, c = ops.embedding.forward(idx, P["wte.weight"], P["wpe.weight"])  # (B, T, C)
        caches.append(c)
        x, c = ops.dropout.forward(x, p_drop, rng)
        caches.append(c)
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            h, c_ln1 = ops.layernorm.forward(x, P[pre + "ln_1.weight"], P.get(pre + "ln_1.bias"))
            qkv, c_qkv = ops.linear.forward(h, P[pre + "attn.c_attn.weight"], P.get(pre + "attn.c_attn.bias"))  # (B, T, 3C)
            a, c_att = ops.attention.forward(qkv, cfg.n_head)  # (B, T, C)
            a, c_aproj = ops.linear.forward(a, P[pre + "attn.c_proj.weight"], P.get(pre + "attn.c_proj.bias"))
            a, c_adrop = ops.dropout.forward(a, p_drop, rng)
            x = x + a  # residual
            h, c_ln2 = ops.layernorm.forward(x, P[pre + "ln_2.weight"], P.get(pre + "ln_2.bias"))
            h, c_fc, c_gelu = self._mlp_up(h, P[pre + "mlp.c_fc.weight"], P.get(pre + "mlp.c_fc.bias"))  # (B, T, 4C)
            h, c_mproj = ops.linear.forward(h, P[pre + "mlp.c_proj.weight"], P.get(pre + "mlp.c_proj.bias"))  # (B, T, C)
            h, c_mdrop = ops.dropout.forward(h, p_drop, rng)
            x = x + h  # residual
            caches.append((c_ln1, c_qkv, c_att, c_aproj, c_adrop, c_ln2, c_fc, c_gelu, c_mproj, c_mdrop))
        x, c = ops.layernorm.forward(x, P["ln_f.weight"], P.get("ln_f.bias"))
        caches.append(c)
        return x

    def _mlp_up(self, h, w, b):
        """gelu(h @ w + b): (B, T, C) -> (B, T, 4C), and the caches of both layers.

        The kernels add the bias inside the GELU pass (one pass over the
        (B, T, 4C) activations instead of two); the reference runs the two
        layers one after the other.
        """
        if self.fused and b is not None:
            h, c_fc = self.ops.linear.forward(h, w, None)
            h, c_gelu = self.ops.gelu.bias_forward(h, b)  # adds b to the fresh h @ w in place
            return h, c_fc, c_gelu
        h, c_fc = self.ops.linear.forward(h, w, b)
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

        rng: a np.random.Generator turns dropout on (training); None is
        evaluation mode.  The loss is the mean cross-entropy over targets
        that are not ignore_index.
        """
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
        ops, P, cfg = self.ops, self.params, self.config
        if not cache:
            raise ValueError("this forward cache was already used by a backward")
        flat = np.zeros(self.num_params, self.dtype) if out is None else out
        G = views_into(flat, self.shapes)
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
        dx = self._linear_backward(dlogits, c_head, G["wte.weight"].T, None)
        del dlogits
        self.backward_hidden(dx, caches, G)
        return G

    def backward_hidden(self, dx, caches, G):
        """The backward of _hidden: dx (B, T, C), the gradient at the final hidden
        states, back through ln_f, the blocks and the embeddings.

        caches: _hidden's caches (consumed: popped from the end).  G: the
        gradient views; every parameter's entry is overwritten, except
        wte's, which the lookup's gradient ADDS to (the tied LM head may
        have written its share first; zero it if nothing did).  A model with
        another head on top (npgpt/classify.py) calls this with its own dx.
        """
        ops, cfg = self.ops, self.config
        dx, dw, db = ops.layernorm.backward(dx, caches.pop())
        _store(G, "ln_f", dw, db)
        for i in reversed(range(cfg.n_layer)):
            pre = f"h.{i}."
            c_ln1, c_qkv, c_att, c_aproj, c_adrop, c_ln2, c_fc, c_gelu, c_mproj, c_mdrop = caches.pop()
            # MLP branch: x = x + drop(c_proj(gelu(c_fc(ln_2(x)))))
            dh = ops.dropout.backward(dx, c_mdrop)
            dh = self._linear_backward(dh, c_mproj, *_grads_of(G, pre + "mlp.c_proj"))
            if self.fused and cfg.bias:
                dh, db = ops.gelu.bias_backward(dh, c_gelu)  # also sums c_fc's bias gradient
                G[pre + "mlp.c_fc.bias"][...] = db
            else:
                dh = ops.gelu.backward(dh, c_gelu)
            dh = self._linear_backward(dh, c_fc, *_grads_of(G, pre + "mlp.c_fc"))
            dh, dw, db = ops.layernorm.backward(dh, c_ln2)
            _store(G, pre + "ln_2", dw, db)
            dx += dh  # the residual passes dx through unchanged; the branch adds its part
            # attention branch: x = x + drop(c_proj(attn(c_attn(ln_1(x)))))
            da = ops.dropout.backward(dx, c_adrop)
            da = self._linear_backward(da, c_aproj, *_grads_of(G, pre + "attn.c_proj"))
            dqkv = ops.attention.backward(da, c_att)
            dh = self._linear_backward(dqkv, c_qkv, *_grads_of(G, pre + "attn.c_attn"))
            dh, dw, db = ops.layernorm.backward(dh, c_ln1)
            _store(G, pre + "ln_1", dw, db)
            dx += dh

        dx = ops.dropout.backward(dx, caches.pop())
        c_emb = caches.pop()
        if self.fused:  # add the lookup's gradient into wte in place: no (V, C) temporary
            G["wpe.weight"][...] = 0.0
            ops.embedding.backward_into(dx, c_emb, G["wte.weight"], G["wpe.weight"])
        else:
            dwte, dwpe = ops.embedding.backward(dx, c_emb)
            G["wte.weight"] += dwte  # tied: the lookup's gradient adds to the head's
            G["wpe.weight"][...] = dwpe

    def _linear_backward(self, dout, cache, dw, db):
        """A linear layer's backward -> dx; its weight and bias gradients land in
        dw and db (views of the flat gradient buffer; db None without a bias).

        The kernels write them there directly; the reference returns new
        arrays, which are copied in.
        """
        if self.fused:
            return self.ops.linear.backward_into(dout, cache, dw, db)
        dx, dw_new, db_new = self.ops.linear.backward(dout, cache)
        dw[...] = dw_new
        if db is not None:
            db[...] = db_new
        return dx


def _grads_of(grads, prefix):
    """-> (weight gradient, bias gradient or None) of the layer named prefix."""
    return grads[prefix + ".weight"], grads.get(prefix + ".bias")


def _store(grads, prefix, dw, db):
    grads[prefix + ".weight"][...] = dw
    if db is not None:
        grads[prefix + ".bias"][...] = db
