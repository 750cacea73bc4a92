"""Write notebooks/*.ipynb from the cell sources below.

The notebooks are generated, without outputs, so that a change to one shows
as a readable diff of this file; tests/test_notebooks.py checks the committed
.ipynb files equal what this script writes and executes every cell.

    python notebooks/build_notebooks.py          # rewrite the notebooks
"""
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def md(text):
    return ("markdown", text)


def code(text):
    return ("code", text)


LAYERNORM_BY_HAND = [
    md("""# Layer norm's backward, by hand, and its check

Derivation: [docs/layers/layernorm.md](../docs/layers/layernorm.md).

We write a layer norm's forward, derive its backward one step at a time, then
let `npgpt.gradcheck.check_layer` compare it against finite differences. At the
end a backward with one term missing is shown failing: the check is what tells
you a derivation is wrong."""),
    code("""import numpy as np
from npgpt import gradcheck
from npgpt.layers import layernorm

# Inputs from their own generator (seed 1): the checker draws its upstream gradient independently.
rng = np.random.default_rng(1)
B, T, C = 2, 3, 5
x = rng.standard_normal((B, T, C))
w = rng.standard_normal(C)
b = rng.standard_normal(C)"""),
    md("""## Forward, in small steps

Each line is one primitive, and the cache keeps what the backward will need."""),
    code("""def my_forward(x, w, b, eps=1e-5):
    \"\"\"x (..., C), w (C,), b (C,) -> out (..., C), cache.\"\"\"
    mean = x.mean(axis=-1, keepdims=True)           # (..., 1)
    xc = x - mean                                   # (..., C)
    var = (xc ** 2).mean(axis=-1, keepdims=True)    # (..., 1) biased: divide by C
    rstd = 1.0 / np.sqrt(var + eps)                 # (..., 1)
    xhat = xc * rstd                                # (..., C)
    out = xhat * w + b
    return out, (xc, rstd, xhat, w)

out, cache = my_forward(x, w, b)
ref, _ = layernorm.forward(x, w, b)
assert np.allclose(out, ref)
print(out.shape, "same as npgpt.layers.layernorm.forward")"""),
    md("""## Backward, the same steps in reverse

`x` reaches the output along three paths (see `docs/figures/layernorm_paths.png`):
directly through `xc`, through the mean, and through the variance. Going back
line by line, each path adds its term to `dx`:

    out  = xhat * w + b     ->  dw = sum(dout * xhat), db = sum(dout), dxhat = dout * w
    xhat = xc * rstd        ->  dxc = dxhat * rstd,   drstd = sum_C(dxhat * xc)
    rstd = (var + eps)^-1/2 ->  dvar = drstd * (-1/2) * rstd^3
    var  = mean(xc^2)       ->  dxc += dvar * 2 * xc / C
    xc   = x - mean         ->  dx = dxc, dmean = -sum_C(dxc)
    mean = mean(x)          ->  dx += dmean / C"""),
    code("""def my_backward(dout, cache):
    \"\"\"dout (..., C) -> dx (..., C), dw (C,), db (C,).\"\"\"
    xc, rstd, xhat, w = cache
    C = w.shape[0]
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)
    db = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * w
    dxc = dxhat * rstd                                    # path 1: straight through
    drstd = (dxhat * xc).sum(axis=-1, keepdims=True)
    dvar = drstd * -0.5 * rstd ** 3
    dxc = dxc + dvar * 2.0 * xc / C                       # path 3: through the variance
    dx = dxc - dxc.sum(axis=-1, keepdims=True) / C        # path 2: through the mean
    return dx, dw, db

report = gradcheck.check_layer(my_forward, my_backward, {"x": x, "w": w, "b": b}, name="my layernorm")
print(report)
assert report.passed"""),
    md("""## The compact formula

Collecting the three terms with `g = dout * w` gives the one line that
`npgpt/layers/layernorm.py` uses:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

Both versions must agree to rounding:"""),
    code("""dout = np.random.default_rng(2).standard_normal(out.shape)
mine = my_backward(dout, cache)
library = layernorm.backward(dout, layernorm.forward(x, w, b)[1])
for name, a, l in zip(("dx", "dw", "db"), mine, library):
    print(f"{name}: max |difference| = {np.abs(a - l).max():.1e}")
    assert np.allclose(a, l, rtol=1e-12, atol=1e-12)"""),
    md("""## A wrong backward is caught

Forget the variance path (the third term), a common slip. The check fails on `x`
and still passes `w` and `b`, which tells you where to look."""),
    code("""def backward_without_variance_term(dout, cache):
    xc, rstd, xhat, w = cache
    C = w.shape[0]
    dxc = dout * w * rstd
    dx = dxc - dxc.sum(axis=-1, keepdims=True) / C        # the mean's term only
    return dx, (dout * xhat).reshape(-1, C).sum(axis=0), dout.reshape(-1, C).sum(axis=0)

bad = gradcheck.check_layer(my_forward, backward_without_variance_term, {"x": x, "w": w, "b": b},
                            name="no variance term")
print(bad)
assert not bad.passed"""),
]


TRAINING_LOOP = [
    md("""# A complete GPT training loop

Page: [docs/training_loop.md](../docs/training_loop.md). A small character-level
GPT on the bundled Tiny Shakespeare, written with the public API
(`model.loss_and_grad`, `AdamW.step(grads, lr)`, `make_schedule`), with the two
sanity checks to run before any long training:

1. **loss at init is about ln V**: a fresh model should be unsure, spreading
   its probability evenly over the V tokens;
2. **it can overfit one batch**: with a single batch repeated, the loss must
   fall far below ln V, or the gradients or the optimizer are broken.

It runs the default fused Numba kernels: the first run on a machine compiles
them once (about 30 s, said on stderr) and caches them. `backend="numpy"`
runs the plain reference layers instead, with no compile but slower steps."""),
    code("""import math
import numpy as np
import npgpt
from npgpt.data import load_text, make_corpus, get_batch

text = load_text()                                    # bundled Tiny Shakespeare
tok = npgpt.CharTokenizer.train(text)
corpus = make_corpus(text, tok)                       # .train, .val: token arrays
V, B, T = tok.vocab_size, 8, 32
config = npgpt.GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=4, n_embd=64)
model = npgpt.GPT(config, seed=0)
rng = np.random.default_rng(0)
print(f"V = {V}, {model.num_params:,} parameters")"""),
    md("""## Check 1: loss at init ≈ ln V"""),
    code("""x, y = get_batch(corpus.train, B, T, rng)             # (B, T) each
loss, grads = model.loss_and_grad(x, y)               # grads: {name: array}, views into grads.flat
print(f"loss at init {loss:.3f}, ln V = {math.log(V):.3f}")
assert abs(loss - math.log(V)) < 0.1"""),
    md("""## Check 2: overfit one batch

The same `(x, y)` every step, no weight decay. Passing last step's `grads`
back into `loss_and_grad` reuses its buffer."""),
    code("""opt = npgpt.AdamW(model, weight_decay=0.0)
for it in range(150):
    loss, grads = model.loss_and_grad(x, y, grads=grads)
    opt.step(grads, lr=3e-3)
print(f"after 150 steps on one batch: loss {loss:.3f}")
assert loss < 1.0"""),
    md("""## The training loop itself

A fresh model, random batches, a warmup-then-cosine schedule, dropout on
(a generator passed as `rng`), and a validation loss before and after."""),
    code("""model = npgpt.GPT(npgpt.GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=4, n_embd=64, dropout=0.1),
                  seed=0)
opt = npgpt.AdamW(model, weight_decay=0.1, grad_clip=1.0)
sched = npgpt.make_schedule("cosine", lr=1e-2, min_lr=1e-3, warmup_iters=10, decay_iters=150)
grads = None

def val_loss(n_batches=4):
    vrng = np.random.default_rng(123)                 # the same batches every time
    return np.mean([model.forward(*get_batch(corpus.val, B, T, vrng))[0] for _ in range(n_batches)])

first_val = val_loss()
for it in range(150):
    x, y = get_batch(corpus.train, B, T, rng)
    loss, grads = model.loss_and_grad(x, y, grads=grads, rng=rng)   # rng turns dropout on
    norm = opt.step(grads, sched.lr(it))              # clips in place, returns the pre-clip norm
    if it % 50 == 0 or it == 149:
        print(f"step {it:3d}  lr {sched.lr(it):.2e}  loss {loss:.3f}  grad norm {norm:.2f}")
last_val = val_loss()
print(f"val loss {first_val:.3f} -> {last_val:.3f}")
assert last_val < first_val - 0.5"""),
    md("""## Sample from it

A hundred and fifty steps of a tiny model give letters in roughly the right
places, not Shakespeare. `generate` runs through the KV cache and returns
the prompt with its continuation."""),
    code("""ids = model.generate(tok.encode("ROMEO:"), 80, temperature=0.8, top_k=20, seed=0)
print(tok.decode(list(ids)))"""),
]


ATTENTION_MAPS = [
    md("""# Looking inside a trained model: attention maps

We train a tiny character GPT briefly, then ask it for every head's attention
probabilities `P = causal_softmax(q @ k.T / sqrt(hs))` with
`model.attention_maps(idx)`, and draw them. `npgpt attention --ckpt out --text
"..." --out attn.png` draws the same for a checkpoint of `npgpt train`."""),
    code("""import numpy as np
import matplotlib.pyplot as plt
import npgpt
from npgpt.data import load_text, make_corpus, get_batch

text = load_text()
tok = npgpt.CharTokenizer.train(text)
corpus = make_corpus(text, tok)
config = npgpt.GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
model = npgpt.GPT(config, seed=0)
opt = npgpt.AdamW(model)
sched = npgpt.make_schedule("cosine", lr=1e-2, min_lr=1e-3, warmup_iters=10, decay_iters=150)
rng, grads = np.random.default_rng(0), None
for it in range(150):
    loss, grads = model.loss_and_grad(*get_batch(corpus.train, 8, 32, rng), grads=grads)
    opt.step(grads, sched.lr(it))
print(f"trained: loss {loss:.3f}")"""),
    md("""## The attention probabilities

`attention_maps` runs the forward of `npgpt/reference.py` (the plain layers)
and keeps each block's `probs`: one (T, T) map per layer and head. Each row
is a probability distribution over the keys, and nothing looks ahead."""),
    code("""sentence = "First Citizen:\\nBefore we proceed"
maps = model.attention_maps(tok.encode(sentence))                # (n_layer, n_head, T, T) for one prompt
print(maps.shape)
assert np.allclose(maps.sum(axis=-1), 1.0, atol=1e-5)             # every row is a distribution
assert np.all(np.triu(maps, k=1) == 0.0)                          # the causal mask: no future keys"""),
    md("""## Draw every head

Rows are queries (the position predicting the next character), columns the
keys it looks at; the upper triangle is empty because of the causal mask."""),
    code("""labels = [repr(c)[1:-1] for c in sentence]
L, H = config.n_layer, config.n_head
fig, axes = plt.subplots(L, H, figsize=(3 * H, 3 * L))
for l in range(L):
    for h in range(H):
        ax = axes[l, h]
        ax.imshow(maps[l, h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {l} head {h}", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, fontsize=5)
        ax.set_yticks(range(len(labels)), labels, fontsize=5)
fig.tight_layout()
plt.show()"""),
    md("""## What do the heads do?

Two simple summaries per head: how much of each query's attention falls on
itself and on the previous position, averaged over positions, and the entropy
of each row (ln T would be uniform attention over T keys, 0 a single key).
After 150 steps of a 2-layer model the heads are still broad; train longer
(or read `npgpt train`'s checkpoints) and look for heads that sharpen onto
the previous character or onto the start of a word."""),
    code("""for l in range(L):
    for h in range(H):
        p = maps[l, h]
        self_w = np.mean(np.diagonal(p))
        prev_w = np.mean(np.diagonal(p, offset=-1))
        entropy = -np.mean(np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1))
        print(f"layer {l} head {h}: self {self_w:.2f}  previous {prev_w:.2f}  mean entropy {entropy:.2f} nats")"""),
]


NOTEBOOKS = {
    "01_layernorm_backward.ipynb": LAYERNORM_BY_HAND,
    "02_training_loop.ipynb": TRAINING_LOOP,
    "03_attention_maps.ipynb": ATTENTION_MAPS,
}


def notebook_json(cells):
    """cells [(kind, source)] -> the .ipynb text (nbformat 4, no outputs, stable key order)."""
    out = []
    for i, (kind, source) in enumerate(cells):
        cell = {"cell_type": kind, "id": f"cell-{i}", "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        out.append(cell)
    nb = {
        "cells": out,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main():
    for name, cells in NOTEBOOKS.items():
        (HERE / name).write_text(notebook_json(cells), encoding="utf-8")
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    sys.exit(main())
