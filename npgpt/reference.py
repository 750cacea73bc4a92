"""The whole GPT-2, forward and backward, in the plain layers: read this in one sitting.

npgpt/model.py computes the same loss and gradients (tests/test_reference.py
checks it, on both backends), but it also runs fused kernels, dropout, label
smoothing and in-place buffers.  Here there is none of that: one function
down, one function back, each line a layer of npgpt/layers/ and its shapes.
B batch, T time, C channels (n_embd), V vocabulary, nh heads, hs = C / nh.

    >>> import numpy as np, npgpt
    >>> from npgpt import reference
    >>> config = npgpt.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64")
    >>> model = npgpt.GPT(config, seed=0)
    >>> idx = np.arange(16).reshape(2, 8) % 11                       # (B, T) = (2, 8)
    >>> loss, grads = reference.loss_and_grads(model.params, config, idx, (idx + 1) % 11)
    >>> round(loss, 1)                                                # about ln V = ln 11 = 2.40 at init
    2.4
    >>> fast_loss, fast_grads = model.loss_and_grad(idx, (idx + 1) % 11)
    >>> bool(np.isclose(loss, fast_loss)), bool(np.allclose(grads["wte.weight"], fast_grads["wte.weight"]))
    (True, True)
"""
from .layers import attention, cross_entropy, embedding, gelu, layernorm, linear


def forward(params, config, idx, targets=None):
    """idx (B, T) ints -> (logits (B, T, V), loss or None without targets, cache for backward)."""
    if getattr(config, "norm", "pre") != "pre" or getattr(config, "positions", "learned") != "learned":
        raise ValueError("npgpt.reference is GPT-2's pre-LN, learned-position model; use GPT for the variants")
    P, eps = params, getattr(config, "layer_norm_epsilon", 1e-5)
    x, c_emb = embedding.forward(idx, P["wte.weight"], P["wpe.weight"])  # (B, T) -> (B, T, C): token + position
    blocks = []
    for i in range(config.n_layer):
        p = f"h.{i}."
        # attention branch: x = x + c_proj(attention(c_attn(ln_1(x))))
        h, c_ln1 = layernorm.forward(x, P[p + "ln_1.weight"], P.get(p + "ln_1.bias"), eps)  # (B, T, C)
        qkv, c_qkv = linear.forward(h, P[p + "attn.c_attn.weight"], P.get(p + "attn.c_attn.bias"))  # -> (B, T, 3C)
        a, c_att = attention.forward(qkv, config.n_head)  # (B, T, 3C) -> nh causal heads of hs -> (B, T, C)
        a, c_aproj = linear.forward(a, P[p + "attn.c_proj.weight"], P.get(p + "attn.c_proj.bias"))  # (B, T, C)
        x = x + a  # (B, T, C) the residual stream
        # MLP branch: x = x + c_proj(gelu(c_fc(ln_2(x))))
        h, c_ln2 = layernorm.forward(x, P[p + "ln_2.weight"], P.get(p + "ln_2.bias"), eps)  # (B, T, C)
        h, c_fc = linear.forward(h, P[p + "mlp.c_fc.weight"], P.get(p + "mlp.c_fc.bias"))  # -> (B, T, 4C)
        h, c_gelu = gelu.forward(h)  # (B, T, 4C)
        h, c_mproj = linear.forward(h, P[p + "mlp.c_proj.weight"], P.get(p + "mlp.c_proj.bias"))  # -> (B, T, C)
        x = x + h  # (B, T, C)
        blocks.append((c_ln1, c_qkv, c_att, c_aproj, c_ln2, c_fc, c_gelu, c_mproj))
    x, c_lnf = layernorm.forward(x, P["ln_f.weight"], P.get("ln_f.bias"), eps)  # (B, T, C)
    logits, c_head = linear.forward(x, P["wte.weight"].T)  # (B, T, C) @ (C, V) -> (B, T, V): head tied to wte
    loss, c_ce = None, None
    if targets is not None:
        loss, c_ce = cross_entropy.forward(logits, targets)  # scalar: mean -log p(target)
    return logits, loss, (c_emb, blocks, c_lnf, c_head, c_ce)


def backward(params, cache):
    """cache from forward (called with targets) -> {name: gradient of the loss}, shaped like params."""
    c_emb, blocks, c_lnf, c_head, c_ce = cache
    grads = {}

    def put(prefix, dw, db):  # a layer's weight and bias gradients, under GPT-2's names
        grads[prefix + ".weight"] = dw
        if db is not None:
            grads[prefix + ".bias"] = db

    dlogits = cross_entropy.backward(1.0, c_ce)  # (B, T, V)
    dx, dwte_head, _ = linear.backward(dlogits, c_head)  # dx (B, T, C); dwte_head (C, V): the head's share of wte^T
    dx, dw, db = layernorm.backward(dx, c_lnf)  # (B, T, C)
    put("ln_f", dw, db)
    for i in reversed(range(len(blocks))):
        p = f"h.{i}."
        c_ln1, c_qkv, c_att, c_aproj, c_ln2, c_fc, c_gelu, c_mproj = blocks[i]
        # MLP branch, back to front; the residual hands dx to the branch and past it unchanged
        dh, dw, db = linear.backward(dx, c_mproj)  # (B, T, C) -> (B, T, 4C)
        put(p + "mlp.c_proj", dw, db)
        dh = gelu.backward(dh, c_gelu)  # (B, T, 4C)
        dh, dw, db = linear.backward(dh, c_fc)  # (B, T, 4C) -> (B, T, C)
        put(p + "mlp.c_fc", dw, db)
        dh, dw, db = layernorm.backward(dh, c_ln2)  # (B, T, C)
        put(p + "ln_2", dw, db)
        dx = dx + dh  # (B, T, C) both paths into x add
        # attention branch
        da, dw, db = linear.backward(dx, c_aproj)  # (B, T, C)
        put(p + "attn.c_proj", dw, db)
        dqkv = attention.backward(da, c_att)  # (B, T, C) -> (B, T, 3C)
        dh, dw, db = linear.backward(dqkv, c_qkv)  # (B, T, 3C) -> (B, T, C)
        put(p + "attn.c_attn", dw, db)
        dh, dw, db = layernorm.backward(dh, c_ln1)  # (B, T, C)
        put(p + "ln_1", dw, db)
        dx = dx + dh  # (B, T, C)
    dwte, dwpe = embedding.backward(dx, c_emb)  # (V, C), (block_size, C)
    grads["wte.weight"] = dwte + dwte_head.T  # tied: the lookup's and the head's gradients add
    grads["wpe.weight"] = dwpe
    return {name: grads[name] for name in params}  # in the parameters' storage order


def loss_and_grads(params, config, idx, targets):
    """idx, targets (B, T) ints -> (loss as a float, {name: gradient})."""
    _, loss, cache = forward(params, config, idx, targets)
    return float(loss), backward(params, cache)


def attention_probs(cache):
    """The forward cache -> each block's attention probabilities, a list of n_layer (B, nh, T, T)."""
    _, blocks, _, _, _ = cache
    return [c_att[3] for (_, _, c_att, *_) in blocks]  # attention's cache is (q, k, v, probs, scale)
