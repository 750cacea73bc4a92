"""The original Transformer ("Attention Is All You Need"): an encoder-decoder.

    src (B, S) -> embed -> n_encoder_layer encoder blocks -> memory (B, S, C)
    tgt_in (B, T) -> embed -> n_decoder_layer decoder blocks (each reads memory) -> logits (B, T, V)

Encoder block:  self-attention over the source (padding keys masked), MLP.
Decoder block:  causal self-attention, cross-attention (queries from the
decoder, keys and values from the encoder's memory), MLP.

Each sub-layer f sits in a residual connection, with its layer norm either
before it (norm="pre", GPT-2's choice, trains without warmup) or after the
sum (norm="post", the paper's choice):

    pre:   x = x + dropout(f(LN(x)))          and a final LN after the last block
    post:  x = LN(x + dropout(f(x)))          no final LN (the last block ends in one)

Embeddings: x = sqrt(C) * wte[idx] + positions (paper section 3.4), where
positions are the fixed sinusoid (npgpt/layers/positional.py) or a learned
table.  The output layer is tied to the target embedding: logits = h @ wte^T.
With share_embeddings, source and target use one table (and one vocabulary).

Teacher forcing: the decoder reads tgt_in = [BOS] + target and is trained
to predict targets = target + [EOS] at every position at once; pad_id in
targets counts for nothing.  Decoding (greedy, beam search) runs the
decoder one position at a time through a KV cache: see `DecoderState`.

Parameters live as views into one flat buffer, as in npgpt/model.py, so
npgpt/optim.py's AdamW and clipping and npgpt/checkpoint.py's save work
unchanged.  Names (the encoder side; the decoder adds cross.* and ln_3):

    wte.weight | encoder.wte.weight, decoder.wte.weight     token embeddings
    encoder.wpe.weight, decoder.wpe.weight                  learned positions only
    encoder.h.{i}.ln_1 / attn.c_attn / attn.c_proj / ln_2 / mlp.c_fc / mlp.c_proj
    decoder.h.{i}.ln_1 / attn.* / ln_2 / cross.c_q / cross.c_kv / cross.c_proj / ln_3 / mlp.*
    encoder.ln_f, decoder.ln_f                              pre-LN only

ln_k is the norm of the k-th sub-layer in both placements (torch's norm1,
norm2, norm3).  Derivations: docs/seq2seq.md and docs/layers/.
"""
import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from . import layers
from .layers import cross_attention as _ref_cross_attention
from .layers import positional, self_attention_masked
from .model import BACKENDS, views_into

NORMS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu")
POSITIONS = ("sinusoidal", "learned")


@dataclass(frozen=True)
class TransformerConfig:
    """Every size and choice that defines an encoder-decoder; validated on construction."""

    vocab_size: int = 16  # target vocabulary: the output layer's size
    src_vocab_size: int = 0  # source vocabulary; 0 = vocab_size
    block_size: int = 64  # longest source, and longest decoder input (target + 1)
    n_encoder_layer: int = 2
    n_decoder_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_ff: int = 0  # MLP width; 0 = 4 * n_embd
    norm: str = "pre"  # "pre" (GPT-2) or "post" (the paper)
    activation: str = "relu"  # "relu" (the paper) or "gelu" (tanh approximation, GPT-2's)
    positions: str = "sinusoidal"  # "sinusoidal" (fixed) or "learned"
    share_embeddings: bool = False  # one table (and vocabulary) for source and target
    dropout: float = 0.0
    label_smoothing: float = 0.0  # the paper trains with 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    dtype: str = "float32"
    backend: str = "numba"  # npgpt.kernels; "numpy" runs the reference layers
    model: str = "seq2seq"  # what kind of model a checkpoint's config.json describes

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_encoder_layer", "n_decoder_layer", "n_head", "n_embd"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("src_vocab_size", "n_ff", "pad_id", "bos_id", "eos_id"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.n_embd % self.n_head:
            raise ValueError(f"TransformerConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.positions == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"TransformerConfig.n_embd ({self.n_embd}) must be even for sinusoidal positions")
        for name, allowed in (("norm", NORMS), ("activation", ACTIVATIONS), ("positions", POSITIONS),
                              ("dtype", ("float32", "float64")), ("backend", BACKENDS), ("model", ("seq2seq",))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TransformerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("dropout", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerConfig.{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.share_embeddings, bool):
            raise ValueError(f"TransformerConfig.share_embeddings must be true or false, got {self.share_embeddings!r}")
        if self.share_embeddings and self.src_vocab_size not in (0, self.vocab_size):
            raise ValueError(f"shared embeddings need one vocabulary: src_vocab_size {self.src_vocab_size} "
                             f"!= vocab_size {self.vocab_size}")
        specials = (self.pad_id, self.bos_id, self.eos_id)
        if len(set(specials)) != 3 or max(specials) >= min(self.vocab_size, self.source_vocab_size):
            raise ValueError(f"pad_id, bos_id, eos_id {specials} must be distinct ids of both vocabularies")

    @property
    def source_vocab_size(self):
        return self.src_vocab_size or self.vocab_size

    @property
    def ff_width(self):
        return self.n_ff or 4 * self.n_embd

    def to_dict(self):
        return asdict(self)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"TransformerConfig.{name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------ parameters
def param_shapes(config):
    """{name: shape} in storage order."""
    C, F = config.n_embd, config.ff_width
    shapes = {}
    if config.share_embeddings:
        shapes["wte.weight"] = (config.vocab_size, C)
    else:
        shapes["encoder.wte.weight"] = (config.source_vocab_size, C)
        shapes["decoder.wte.weight"] = (config.vocab_size, C)
    if config.positions == "learned":
        shapes["encoder.wpe.weight"] = (config.block_size, C)
        shapes["decoder.wpe.weight"] = (config.block_size, C)

    def norm(prefix):
        shapes[prefix + ".weight"], shapes[prefix + ".bias"] = (C,), (C,)

    def linear(prefix, c_in, c_out):
        shapes[prefix + ".weight"], shapes[prefix + ".bias"] = (c_in, c_out), (c_out,)

    for side, n_layer in (("encoder", config.n_encoder_layer), ("decoder", config.n_decoder_layer)):
        for i in range(n_layer):
            pre = f"{side}.h.{i}."
            norm(pre + "ln_1")
            linear(pre + "attn.c_attn", C, 3 * C)
            linear(pre + "attn.c_proj", C, C)
            norm(pre + "ln_2")
            if side == "decoder":
                linear(pre + "cross.c_q", C, C)
                linear(pre + "cross.c_kv", C, 2 * C)
                linear(pre + "cross.c_proj", C, C)
                norm(pre + "ln_3")
            linear(pre + "mlp.c_fc", C, F)
            linear(pre + "mlp.c_proj", F, C)
        if config.norm == "pre":
            norm(f"{side}.ln_f")
    return shapes


def backend_ops(name):
    """The layer modules a backend runs: npgpt.layers (reference) or npgpt.kernels (fused)."""
    if name == "numba":
        from . import kernels
        from .kernels import cross_attention

        mods = kernels
    else:
        mods, cross_attention = layers, _ref_cross_attention
    return SimpleNamespace(linear=mods.linear, layernorm=mods.layernorm, attention=mods.attention,
                           cross_attention=cross_attention, gelu=mods.gelu, dropout=mods.dropout,
                           embedding=mods.embedding, cross_entropy=mods.cross_entropy)


# ------------------------------------------------------------------ residual sub-layers, pre or post norm
# Plain functions (not methods), so that a GPT block can use the same two placements.
def residual_forward(ops, x, ln_w, ln_b, sublayer, placement, p_drop, rng):
    """x (B, T, C) -> (out (B, T, C), cache): one sub-layer f in its residual connection.

    sublayer: h (B, T, C) -> (y (B, T, C), cache).  placement "pre" (GPT-2):
    out = x + dropout(f(LN(x))); "post" (the paper): out = LN(x + dropout(f(x))).
    ops: the layer modules (npgpt.layers or npgpt.kernels).
    """
    if placement == "pre":
        h, c_ln = ops.layernorm.forward(x, ln_w, ln_b)
        y, c_f = sublayer(h)
        y, c_drop = ops.dropout.forward(y, p_drop, rng)
        return x + y, (c_ln, c_f, c_drop)
    y, c_f = sublayer(x)
    y, c_drop = ops.dropout.forward(y, p_drop, rng)
    out, c_ln = ops.layernorm.forward(x + y, ln_w, ln_b)
    return out, (c_ln, c_f, c_drop)


def residual_backward(ops, dout, cache, sublayer_backward, placement):
    """dout (B, T, C) -> (dx (B, T, C), dln_w, dln_b).  sublayer_backward: (dy, cache) -> dh.

    pre:  out = x + y,  y = drop(f(LN(x)))  ->  dx = dout + LN'(f'(drop'(dout)))
    post: out = LN(s),  s = x + drop(f(x))  ->  ds = LN'(dout),  dx = ds + f'(drop'(ds))
    The residual path passes its gradient through unchanged; the branch adds its part.
    """
    c_ln, c_f, c_drop = cache
    if placement == "pre":
        dh = sublayer_backward(ops.dropout.backward(dout, c_drop), c_f)
        dh, dw, db = ops.layernorm.backward(dh, c_ln)
        return dout + dh, dw, db
    ds, dw, db = ops.layernorm.backward(dout, c_ln)
    return ds + sublayer_backward(ops.dropout.backward(ds, c_drop), c_f), dw, db


# ReLU is two lines, so it lives here rather than in npgpt/layers.
def relu_forward(x):
    """x (any shape) -> max(x, 0), cache (where x > 0)."""
    positive = x > 0
    return x * positive, positive


def relu_backward(dout, positive):
    """The slope is 1 where x > 0, else 0."""
    return dout * positive


# ------------------------------------------------------------------ the model
class Seq2Seq:
    """An encoder-decoder Transformer with hand-written backward passes.

    model = Seq2Seq(TransformerConfig(...), seed=0)
    loss, cache = model.forward(src, tgt_in, targets)   # (B, S), (B, T), (B, T) ints
    grads = model.backward(cache)                       # {name: array shaped like params[name]}
    """

    def __init__(self, config, seed=0):
        self.config = config
        self.dtype = np.dtype(config.dtype)
        self.shapes = param_shapes(config)
        self.num_params = sum(math.prod(s) for s in self.shapes.values())
        self.flat_params = np.zeros(self.num_params, dtype=self.dtype)
        self.params = views_into(self.flat_params, self.shapes)
        self.ops = backend_ops(config.backend)
        self.fused = config.backend == "numba"
        self.embed_scale = math.sqrt(config.n_embd)
        self.src_wte = "wte.weight" if config.share_embeddings else "encoder.wte.weight"
        self.tgt_wte = "wte.weight" if config.share_embeddings else "decoder.wte.weight"
        if config.positions == "sinusoidal":  # fixed: computed once, no parameters
            self.sinusoid = positional.forward(config.block_size, config.n_embd, dtype=self.dtype)
        self._init_weights(np.random.default_rng(seed))

    def _init_weights(self, rng):
        """Token tables N(0, 1/C): times sqrt(C) in the forward they have unit variance, and the
        tied output layer h @ wte^T starts with unit-variance logits.  Learned positions N(0, 1/2),
        the variance of the sinusoid's entries.  Linear weights N(0, 0.02); each side's residual
        projections N(0, 0.02 / sqrt(number of residual sub-layers)), as GPT-2.  Norm gains 1,
        biases 0."""
        cfg = self.config
        n_residual = {"encoder": 2 * cfg.n_encoder_layer, "decoder": 3 * cfg.n_decoder_layer}
        for name, p in self.params.items():
            if name.endswith("wte.weight"):
                p[...] = rng.normal(0.0, cfg.n_embd ** -0.5, p.shape)
            elif name.endswith("wpe.weight"):
                p[...] = rng.normal(0.0, 0.5 ** 0.5, p.shape)
            elif p.ndim == 2:
                side = name.split(".")[0]
                std = 0.02 / math.sqrt(n_residual[side]) if name.endswith("c_proj.weight") else 0.02
                p[...] = rng.normal(0.0, std, p.shape)
            elif name.endswith(".weight"):
                p[...] = 1.0

    # ----------------------------------------------------------------- checks
    def _check_ids(self, ids, what, vocab_size):
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or 0 in ids.shape:
            raise ValueError(f"{what} must be a non-empty 2-D (B, T) array of token ids, got {ids.dtype} {ids.shape}")
        if ids.shape[1] > self.config.block_size:
            raise ValueError(f"{what} has length {ids.shape[1]}, more than block_size {self.config.block_size}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"{what} ids must be in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
        return ids

    def _check_inputs(self, src, tgt_in, targets=None):
        cfg = self.config
        src = self._check_ids(src, "src", cfg.source_vocab_size)
        tgt_in = self._check_ids(tgt_in, "tgt_in", cfg.vocab_size)
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src {src.shape} and tgt_in {tgt_in.shape} must have the same batch size")
        if targets is not None:
            targets = self._check_ids(targets, "targets", cfg.vocab_size)
            if targets.shape != tgt_in.shape:
                raise ValueError(f"targets {targets.shape} must have tgt_in's shape {tgt_in.shape}")
        return src, tgt_in, targets

    # ------------------------------------------------------ pieces: forward
    def _positions(self, side):
        """(block_size, C): the sinusoid, or this side's learned table."""
        return self.sinusoid if self.config.positions == "sinusoidal" else self.params[side + ".wpe.weight"]

    def _embed_forward(self, idx, side, p_drop, rng, offset=0):
        """idx (B, T) -> x (B, T, C) = sqrt(C) * wte[idx] + positions[offset : offset + T].

        The embedding layer adds wte[idx] + wpe; writing the sum as
        sqrt(C) * (wte[idx] + positions / sqrt(C)) lets it do the lookup.
        """
        wte = self.params[self.src_wte if side == "encoder" else self.tgt_wte]
        positions = self._positions(side)[offset:] / self.embed_scale
        x, c_emb = self.ops.embedding.forward(idx, wte, positions)
        x *= self.embed_scale
        x, c_drop = self.ops.dropout.forward(x, p_drop, rng)
        return x, (c_emb, c_drop)

    def _layernorm(self, x, prefix):
        P = self.params
        return self.ops.layernorm.forward(x, P[prefix + ".weight"], P[prefix + ".bias"])

    def _linear(self, x, prefix):
        P = self.params
        return self.ops.linear.forward(x, P[prefix + ".weight"], P[prefix + ".bias"])

    def _residual_forward(self, x, norm, sublayer, p_drop, rng):
        """One residual sub-layer, its norm (named norm) placed by config.norm -> (x, cache)."""
        P = self.params
        return residual_forward(self.ops, x, P[norm + ".weight"], P[norm + ".bias"], sublayer, self.config.norm,
                                p_drop, rng)

    def _self_attention_forward(self, h, prefix, key_mask=None, causal=False):
        """h (B, T, C) -> (B, T, C): c_proj(attention(c_attn(h))).

        causal: the decoder's masked attention; else the encoder's, whose
        padding keys (key_mask False) no query sees.
        """
        qkv, c_qkv = self._linear(h, prefix + "c_attn")  # (B, T, 3C)
        if causal:
            a, c_att = self.ops.attention.forward(qkv, self.config.n_head)  # (B, T, C)
        else:
            a, c_att = self_attention_masked.forward(qkv, self.config.n_head, key_mask, impl=self.ops.cross_attention)
        y, c_proj = self._linear(a, prefix + "c_proj")
        return y, (causal, c_qkv, c_att, c_proj)

    def _cross_attention_forward(self, h, prefix, kv, key_mask):
        """h (B, T, C) decoder states, kv (B, S, 2C) the memory's keys|values -> (B, T, C)."""
        q, c_q = self._linear(h, prefix + "c_q")  # (B, T, C)
        a, c_att = self.ops.cross_attention.forward(q, kv, self.config.n_head, key_mask)  # (B, T, C)
        y, c_proj = self._linear(a, prefix + "c_proj")
        return y, (c_q, c_att, c_proj)

    def _mlp_forward(self, h, prefix):
        """h (B, T, C) -> c_proj(act(c_fc(h))) (B, T, C), through (B, T, F)."""
        u, c_fc = self._linear(h, prefix + "c_fc")  # (B, T, F)
        if self.config.activation == "relu":
            u, c_act = relu_forward(u)
        else:
            u, c_act = self.ops.gelu.forward(u)
        y, c_proj = self._linear(u, prefix + "c_proj")  # (B, T, C)
        return y, (c_fc, c_act, c_proj)

    def _encoder_block_forward(self, x, pre, src_mask, p_drop, rng):
        x, c_attn = self._residual_forward(
            x, pre + "ln_1", lambda h: self._self_attention_forward(h, pre + "attn.", key_mask=src_mask), p_drop, rng)
        x, c_mlp = self._residual_forward(x, pre + "ln_2", lambda h: self._mlp_forward(h, pre + "mlp."), p_drop, rng)
        return x, (c_attn, c_mlp)

    def _decoder_block_forward(self, x, pre, kv, src_mask, p_drop, rng, self_attention=None):
        """x (B, T, C), kv (B, S, 2C) this block's view of the memory -> (B, T, C), cache.

        self_attention: replaces the causal self-attention sub-layer (cached decoding).
        """
        if self_attention is None:
            def self_attention(h):
                return self._self_attention_forward(h, pre + "attn.", causal=True)
        x, c_self = self._residual_forward(x, pre + "ln_1", self_attention, p_drop, rng)
        x, c_cross = self._residual_forward(
            x, pre + "ln_2", lambda h: self._cross_attention_forward(h, pre + "cross.", kv, src_mask), p_drop, rng)
        x, c_mlp = self._residual_forward(x, pre + "ln_3", lambda h: self._mlp_forward(h, pre + "mlp."), p_drop, rng)
        return x, (c_self, c_cross, c_mlp)

    # ---------------------------------------------------------------- forward
    def _encode(self, src, p_drop, rng, cache):
        """src (B, S) -> memory (B, S, C), src_mask (B, S) bool (True = a real token)."""
        cfg = self.config
        src_mask = src != cfg.pad_id
        x, cache["enc_embed"] = self._embed_forward(src, "encoder", p_drop, rng)  # (B, S, C)
        cache["enc_blocks"] = []
        for i in range(cfg.n_encoder_layer):
            x, c = self._encoder_block_forward(x, f"encoder.h.{i}.", src_mask, p_drop, rng)
            cache["enc_blocks"].append(c)
        if cfg.norm == "pre":
            x, cache["enc_ln_f"] = self._layernorm(x, "encoder.ln_f")
        return x, src_mask

    def _decode(self, tgt_in, memory, src_mask, p_drop, rng, cache):
        """tgt_in (B, T), memory (B, S, C) -> decoder output h (B, T, C), before the output layer."""
        cfg = self.config
        x, cache["dec_embed"] = self._embed_forward(tgt_in, "decoder", p_drop, rng)  # (B, T, C)
        cache["dec_blocks"] = []
        for i in range(cfg.n_decoder_layer):
            pre = f"decoder.h.{i}."
            kv, c_kv = self._linear(memory, pre + "cross.c_kv")  # (B, S, 2C): the memory's keys and values
            x, c = self._decoder_block_forward(x, pre, kv, src_mask, p_drop, rng)
            cache["dec_blocks"].append((c_kv, c))
        if cfg.norm == "pre":
            x, cache["dec_ln_f"] = self._layernorm(x, "decoder.ln_f")
        return x

    def _output_layer(self, h):
        """h (..., C) -> logits (..., V) = h @ wte^T, tied to the target embedding."""
        return self.ops.linear.forward(h, self.params[self.tgt_wte].T, None)

    def forward(self, src, tgt_in, targets, rng=None, label_smoothing=None):
        """src (B, S), tgt_in (B, T), targets (B, T) ints -> (scalar loss, cache).

        The loss is the mean cross-entropy over targets that are not pad_id.
        rng: a np.random.Generator turns dropout on (training); None is
        evaluation.  label_smoothing: None takes the config's.
        """
        cfg = self.config
        src, tgt_in, targets = self._check_inputs(src, tgt_in, targets)
        smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
        p_drop = cfg.dropout if rng is not None else 0.0
        cache = {}
        memory, src_mask = self._encode(src, p_drop, rng, cache)  # (B, S, C)
        h = self._decode(tgt_in, memory, src_mask, p_drop, rng, cache)  # (B, T, C)
        logits, cache["head"] = self._output_layer(h)  # (B, T, V)
        loss, cache["loss"] = self.ops.cross_entropy.forward(logits, targets, smoothing, cfg.pad_id)
        cache["memory_shape"] = memory.shape
        return float(loss), cache

    def logits(self, src, tgt_in):
        """src (B, S), tgt_in (B, T) -> logits (B, T, V), evaluation mode."""
        src, tgt_in, _ = self._check_inputs(src, tgt_in)
        cache = {}
        memory, src_mask = self._encode(src, 0.0, None, cache)
        return self._output_layer(self._decode(tgt_in, memory, src_mask, 0.0, None, cache))[0]

    # ----------------------------------------------------- pieces: backward
    def _linear_backward(self, dout, cache, G, prefix):
        """A linear layer's backward -> dx; its weight and bias gradients land in G (the flat buffer's views)."""
        return self._linear_backward_into(dout, cache, G[prefix + ".weight"], G[prefix + ".bias"])

    def _linear_backward_into(self, dout, cache, dw, db):
        if self.fused:  # the kernel writes straight into the views
            return self.ops.linear.backward_into(dout, cache, dw, db)
        dx, dw_new, db_new = self.ops.linear.backward(dout, cache)
        dw[...] = dw_new
        if db is not None:
            db[...] = db_new
        return dx

    def _layernorm_backward(self, dout, cache, G, prefix):
        dx, dw, db = self.ops.layernorm.backward(dout, cache)
        G[prefix + ".weight"][...] = dw
        G[prefix + ".bias"][...] = db
        return dx

    def _residual_backward(self, dout, cache, norm, sublayer_backward, G):
        """dout (B, T, C) -> dx (B, T, C); the norm's gradients land in G."""
        dx, dw, db = residual_backward(self.ops, dout, cache, sublayer_backward, self.config.norm)
        G[norm + ".weight"][...] = dw
        G[norm + ".bias"][...] = db
        return dx

    def _self_attention_backward(self, dy, cache, G, prefix):
        causal, c_qkv, c_att, c_proj = cache
        da = self._linear_backward(dy, c_proj, G, prefix + "c_proj")  # (B, T, C)
        if causal:
            dqkv = self.ops.attention.backward(da, c_att)  # (B, T, 3C)
        else:
            dqkv = self_attention_masked.backward(da, c_att)
        return self._linear_backward(dqkv, c_qkv, G, prefix + "c_attn")

    def _cross_attention_backward(self, dy, cache, G, prefix, dkv_out):
        """-> dh (B, T, C); the memory side's gradient dkv (B, S, 2C) is written into dkv_out."""
        c_q, c_att, c_proj = cache
        da = self._linear_backward(dy, c_proj, G, prefix + "c_proj")
        dq, dkv = self.ops.cross_attention.backward(da, c_att)  # (B, T, C), (B, S, 2C)
        dkv_out[...] = dkv
        return self._linear_backward(dq, c_q, G, prefix + "c_q")

    def _mlp_backward(self, dy, cache, G, prefix):
        c_fc, c_act, c_proj = cache
        du = self._linear_backward(dy, c_proj, G, prefix + "c_proj")  # (B, T, F)
        du = relu_backward(du, c_act) if self.config.activation == "relu" else self.ops.gelu.backward(du, c_act)
        return self._linear_backward(du, c_fc, G, prefix + "c_fc")  # (B, T, C)

    def _embed_backward(self, dx, cache, G, side):
        """x = sqrt(C) (wte[idx] + positions / sqrt(C)): wte gets sqrt(C) times the lookup's
        gradient, learned positions the plain sum over the batch; the sinusoid none."""
        c_emb, c_drop = cache
        dx = self.ops.dropout.backward(dx, c_drop) * self.embed_scale
        dwte, dpos = self.ops.embedding.backward(dx, c_emb)  # (V, C), (block_size - offset, C)
        G[self.src_wte if side == "encoder" else self.tgt_wte] += dwte  # += : a tied or shared table sums its uses
        if self.config.positions == "learned":
            G[side + ".wpe.weight"] += dpos / self.embed_scale

    # --------------------------------------------------------------- backward
    def backward(self, cache, out=None, dloss=1.0):
        """cache from forward -> {name: gradient} with params' keys and shapes, views of one flat buffer.

        out: an optional flat (num_params,) buffer to write into (every
        entry is overwritten); a new one otherwise.  dloss: the gradient of
        the final objective with respect to this loss (a shard's weight).
        The cache is consumed.
        """
        cfg = self.config
        if not cache:
            raise ValueError("this forward cache was already used by a backward")
        c = dict(cache)
        cache.clear()
        flat = np.zeros(self.num_params, self.dtype) if out is None else out
        flat[...] = 0.0
        G = views_into(flat, self.shapes)

        # loss and the tied output layer: logits = h @ wte^T
        dlogits = self.ops.cross_entropy.backward(dloss, c["loss"])  # (B, T, V)
        dh = self._linear_backward_into(dlogits, c["head"], G[self.tgt_wte].T, None)  # (B, T, C)
        del dlogits

        # decoder, last block first; each block's cross-attention sends a gradient to the memory
        if cfg.norm == "pre":
            dh = self._layernorm_backward(dh, c["dec_ln_f"], G, "decoder.ln_f")
        dmemory = np.zeros(c["memory_shape"], dtype=self.dtype)  # (B, S, C)
        for i in reversed(range(cfg.n_decoder_layer)):
            pre = f"decoder.h.{i}."
            c_kv, (c_self, c_cross, c_mlp) = c["dec_blocks"][i]
            dkv = np.empty(c_kv[0].shape[:-1] + (2 * cfg.n_embd,), dtype=self.dtype)  # (B, S, 2C)
            dh = self._residual_backward(dh, c_mlp, pre + "ln_3",
                                         lambda dy, cf: self._mlp_backward(dy, cf, G, pre + "mlp."), G)
            dh = self._residual_backward(dh, c_cross, pre + "ln_2",
                                         lambda dy, cf: self._cross_attention_backward(dy, cf, G, pre + "cross.", dkv), G)
            dh = self._residual_backward(dh, c_self, pre + "ln_1",
                                         lambda dy, cf: self._self_attention_backward(dy, cf, G, pre + "attn."), G)
            dmemory += self._linear_backward(dkv, c_kv, G, pre + "cross.c_kv")
        self._embed_backward(dh, c["dec_embed"], G, "decoder")

        # encoder, from the gradient the decoder sent to its memory
        dx = dmemory
        if cfg.norm == "pre":
            dx = self._layernorm_backward(dx, c["enc_ln_f"], G, "encoder.ln_f")
        for i in reversed(range(cfg.n_encoder_layer)):
            pre = f"encoder.h.{i}."
            c_attn, c_mlp = c["enc_blocks"][i]
            dx = self._residual_backward(dx, c_mlp, pre + "ln_2",
                                         lambda dy, cf: self._mlp_backward(dy, cf, G, pre + "mlp."), G)
            dx = self._residual_backward(dx, c_attn, pre + "ln_1",
                                         lambda dy, cf: self._self_attention_backward(dy, cf, G, pre + "attn."), G)
        self._embed_backward(dx, c["enc_embed"], G, "encoder")
        return G

    # ------------------------------------------------------------- decoding
    def encode(self, src):
        """src (B, S) -> memory (B, S, C), src_mask (B, S), evaluation mode."""
        src = self._check_ids(src, "src", self.config.source_vocab_size)
        return self._encode(src, 0.0, None, {})

    def start_decoding(self, src):
        """src (B, S) -> a DecoderState: the source encoded and each block's cross-attention
        keys and values computed once, an empty self-attention cache."""
        cfg = self.config
        memory, src_mask = self.encode(src)
        cross_kv = [self._linear(memory, f"decoder.h.{i}.cross.c_kv")[0] for i in range(cfg.n_decoder_layer)]
        B = memory.shape[0]
        self_kv = np.zeros((cfg.n_decoder_layer, B, cfg.block_size, 2 * cfg.n_embd), dtype=self.dtype)
        return DecoderState(cross_kv, src_mask, self_kv, 0)

    def decode_step(self, tokens, state):
        """tokens (B,) at position state.length -> logits (B, V) for the next position.

        The same computation as logits(src, tgt_in)[:, -1], except that the
        self-attention reads earlier positions' keys and values from the
        cache instead of recomputing them, and the memory's from state.cross_kv.
        """
        cfg = self.config
        t = state.length
        if t >= cfg.block_size:
            raise ValueError(f"the decoder holds at most block_size {cfg.block_size} positions")
        idx = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)  # (B, 1)
        x, _ = self._embed_forward(idx, "decoder", 0.0, None, offset=t)  # (B, 1, C)
        for i in range(cfg.n_decoder_layer):
            pre = f"decoder.h.{i}."

            def cached_self_attention(h, pre=pre, i=i):
                qkv, _ = self._linear(h, pre + "attn.c_attn")  # (B, 1, 3C)
                C = cfg.n_embd
                state.self_kv[i][:, t] = qkv[:, 0, C:]  # this position's key|value joins the cache
                # the new query sees positions 0..t: every cached key, so no mask is needed
                a, _ = self.ops.cross_attention.forward(qkv[:, :, :C], state.self_kv[i][:, :t + 1], cfg.n_head)
                return self._linear(a, pre + "attn.c_proj")[0], None

            x, _ = self._decoder_block_forward(x, pre, state.cross_kv[i], state.src_mask, 0.0, None,
                                               self_attention=cached_self_attention)
        if cfg.norm == "pre":
            x, _ = self._layernorm(x, "decoder.ln_f")
        state.length = t + 1
        return self._output_layer(x[:, 0])[0]  # (B, V)


class DecoderState:
    """What incremental decoding keeps between steps.

    cross_kv: per decoder block, the memory's keys|values (B, S, 2C), computed once per source;
    src_mask (B, S); self_kv (n_decoder_layer, B, block_size, 2C): the keys|values of the
    positions decoded so far; length: how many.
    """

    def __init__(self, cross_kv, src_mask, self_kv, length):
        self.cross_kv, self.src_mask, self.self_kv, self.length = cross_kv, src_mask, self_kv, length

    def select(self, rows):
        """Keep (and repeat) batch rows: beam search follows each surviving hypothesis's parent."""
        rows = np.asarray(rows)
        return DecoderState([kv[rows] for kv in self.cross_kv], self.src_mask[rows], self.self_kv[:, rows],
                            self.length)


# ------------------------------------------------------------------ decoding
def _next_logits(model, src, prefixes, state):
    """logits (B, V) for the position after prefixes (B, t): through the cache when state is given,
    else by running the whole decoder over the prefix (the uncached reference)."""
    if state is not None:
        logits = model.decode_step(prefixes[:, -1], state)
    else:
        logits = model.logits(src, prefixes)[:, -1]
    logits = np.array(logits, dtype=np.float64)
    logits[:, [model.config.pad_id, model.config.bos_id]] = -np.inf  # never outputs: PAD is not trained, BOS only starts
    return logits


def _max_new_tokens(model, max_len):
    limit = model.config.block_size - 1  # the decoder's input holds BOS + at most block_size - 1 tokens
    return limit if max_len is None else max(0, min(int(max_len), limit))


def greedy_decode(model, src, max_len=None, use_cache=True):
    """src (B, S) -> B lists of target ids (EOS and what follows it removed).

    At each step every row takes its most likely next token; a row is done
    at EOS.  max_len caps the number of generated tokens (at most block_size - 1).
    use_cache=False recomputes the decoder over the whole prefix each step:
    slower, and the reference the cached path must match token for token.
    """
    cfg = model.config
    src = np.asarray(src)
    B = src.shape[0]
    prefixes = np.full((B, 1), cfg.bos_id, dtype=np.int64)  # (B, 1): every row starts with BOS
    state = model.start_decoding(src) if use_cache else None
    done = np.zeros(B, dtype=bool)
    for _ in range(_max_new_tokens(model, max_len)):
        logits = _next_logits(model, src, prefixes, state)  # (B, V)
        nxt = np.where(done, cfg.pad_id, np.argmax(logits, axis=-1))
        prefixes = np.concatenate([prefixes, nxt[:, None]], axis=1)
        done |= nxt == cfg.eos_id
        if done.all():
            break
    return [_strip(row[1:], cfg) for row in prefixes]


def _strip(ids, cfg):
    """ids -> list up to (not including) the first EOS."""
    out = []
    for i in ids:
        if i == cfg.eos_id:
            break
        out.append(int(i))
    return out


def length_penalty(length, alpha):
    """GNMT's ((5 + length) / 6)^alpha: a hypothesis's summed log-probability is divided by it,
    so that longer outputs are not punished merely for having more (negative) terms.  alpha 0: none."""
    return ((5.0 + length) / 6.0) ** alpha


def _log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(model, src, beam_size=4, alpha=0.6, max_len=None, use_cache=True):
    """src (S,) one source -> the best target ids (EOS removed) among beam_size hypotheses.

    Every step extends each live hypothesis by every token, keeps the
    2 * beam_size best by summed log-probability, moves those of the best
    beam_size that end in EOS to the finished list (scored by sum /
    length_penalty) and carries the best beam_size others on.  It stops once beam_size hypotheses have finished
    (or at max_len, when the live ones count as finished too).  With
    beam_size 1 this is greedy decoding.
    """
    cfg = model.config
    if beam_size < 1:
        raise ValueError(f"beam size must be at least 1, got {beam_size}")
    src = np.asarray(src).reshape(1, -1)
    state = model.start_decoding(src) if use_cache else None
    prefixes = np.full((1, 1), cfg.bos_id, dtype=np.int64)  # (K, t) live hypotheses
    scores = np.zeros(1)  # (K,) summed log-probabilities
    finished = []  # (normalised score, ids)
    for step in range(_max_new_tokens(model, max_len)):
        srcs = np.repeat(src, len(prefixes), axis=0)
        logp = _log_softmax(_next_logits(model, srcs, prefixes, state))  # (K, V)
        total = (scores[:, None] + logp).reshape(-1)  # (K * V,) every one-token extension
        best = np.argsort(-total, kind="stable")[: 2 * beam_size]
        parents, tokens = best // logp.shape[1], best % logp.shape[1]
        keep = []
        for rank, (parent, token, score) in enumerate(zip(parents, tokens, total[best])):
            if token == cfg.eos_id:
                if rank < beam_size:  # an EOS ranked below the beam would not have been kept either
                    finished.append((score / length_penalty(step + 1, alpha), _strip(prefixes[parent, 1:], cfg)))
            elif len(keep) < beam_size:
                keep.append((parent, token, score))
            if len(finished) >= beam_size:
                break
        if len(finished) >= beam_size or not keep:
            break
        rows = np.array([p for p, _, _ in keep])
        prefixes = np.concatenate([prefixes[rows], np.array([[t] for _, t, _ in keep])], axis=1)
        scores = np.array([s for _, _, s in keep])
        if state is not None:
            state = state.select(rows)
    else:  # out of room: the live hypotheses compete as they are
        finished += [(s / length_penalty(prefixes.shape[1] - 1, alpha), _strip(p[1:], cfg))
                     for s, p in zip(scores, prefixes)]
    best_score, best_ids = max(finished, key=lambda f: f[0])
    return best_ids
