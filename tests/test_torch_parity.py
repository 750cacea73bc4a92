"""Parity with PyTorch autograd, float64: the same weights give the same loss
and every gradient to ~1e-10 relative.  The PyTorch GPT-2 is written here,
from the architecture (pre-LN blocks, tanh GELU, tied head), not translated
from npgpt.  Skips cleanly when torch is not installed.

npgpt stores weights (in, out) and applies x @ w + b, so the PyTorch model
does the same with the very same arrays: no transposes anywhere.
"""
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from npgpt import GPT, GPTConfig, layers  # noqa: E402
from npgpt.layers import attention, cross_entropy, embedding, gelu, layernorm, linear  # noqa: E402

GRAD_RTOL = 1e-10  # max |npgpt - torch| over a tensor, relative to the tensor's largest entry


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; don't compete for the shared cores
    yield
    torch.set_num_threads(threads)


def assert_close_relative(actual, expected, rtol=GRAD_RTOL, what=""):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err < rtol, f"{what}: relative difference {err:.2e} >= {rtol:g}"
    return err


# --------------------------------------------------- a PyTorch GPT-2, by hand
def torch_gpt_loss(P, config, idx, targets, label_smoothing=0.0, dropout_masks=None):
    """P: {GPT-2 name: float64 leaf tensor}.  Returns the scalar mean loss.

    dropout_masks: scaled masks (0 or 1/(1-p)) for GPT-2's dropouts in order:
    after the embedding, then each block's attention and MLP branches."""
    C, nh = config.n_embd, config.n_head
    hs = C // nh
    idx_t, targets_t = torch.as_tensor(idx), torch.as_tensor(targets)
    B, T = idx.shape

    def ln(x, prefix):
        return F.layer_norm(x, (C,), P[prefix + ".weight"], P.get(prefix + ".bias"), eps=1e-5)

    def affine(x, prefix):
        y = x @ P[prefix + ".weight"]  # weights stored (in, out)
        return y + P[prefix + ".bias"] if prefix + ".bias" in P else y

    masks = iter(dropout_masks or [])

    def drop(x):
        return x * torch.as_tensor(next(masks)) if dropout_masks is not None else x

    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    x = drop(P["wte.weight"][idx_t] + P["wpe.weight"][:T])
    for i in range(config.n_layer):
        q, k, v = affine(ln(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(C, dim=-1)
        q, k, v = (a.view(B, T, nh, hs).transpose(1, 2) for a in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, C)
        x = x + drop(affine(y, f"h.{i}.attn.c_proj"))
        h = F.gelu(affine(ln(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc"), approximate="tanh")
        x = x + drop(affine(h, f"h.{i}.mlp.c_proj"))
    logits = ln(x, "ln_f") @ P["wte.weight"].T  # tied head
    return F.cross_entropy(logits.reshape(B * T, -1), targets_t.reshape(-1), ignore_index=-1,
                           label_smoothing=label_smoothing)


PARITY_CASES = {
    # name: (config overrides, extra weight std, label smoothing, B, T)
    "gpt2_init": ({}, 0.0, 0.0, 2, 8),
    "perturbed_label_smoothing": ({}, 0.3, 0.1, 3, 5),
    "no_bias_one_head": ({"bias": False, "n_head": 1}, 0.3, 0.2, 2, 8),
    "four_heads_T1": ({"n_head": 4, "n_layer": 1}, 0.3, 0.0, 4, 1),
    "dropout_label_smoothing": ({"dropout": 0.25}, 0.3, 0.1, 2, 8),
}


def record_dropout_masks(model):
    """Swap the model's dropout for one that records each scaled mask it applies."""
    masks, real = [], model.ops.dropout

    def forward(x, p, rng):
        out, cache = real.forward(x, p, rng)
        masks.append(np.divide(out, x, out=np.zeros_like(out), where=x != 0))
        return out, cache

    ops = {name: getattr(model.ops, name) for name in layers.__all__}
    ops["dropout"] = types.SimpleNamespace(forward=forward, backward=real.backward)
    model.ops = types.SimpleNamespace(**ops)
    return masks


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_model_loss_and_every_gradient_match_pytorch(case):
    overrides, std, label_smoothing, B, T = PARITY_CASES[case]
    config = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=12, dtype="float64", backend="numpy")
    config.update(overrides)
    config = GPTConfig(**config)
    model = GPT(config, seed=3)
    rng = np.random.default_rng(4)
    model.flat_params += rng.normal(0.0, std, model.flat_params.shape)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    targets[0, -1] = -1  # an ignored position

    masks = record_dropout_masks(model) if config.dropout else None
    dropout_rng = np.random.default_rng(5) if config.dropout else None
    loss, cache = model.forward(idx, targets, rng=dropout_rng, label_smoothing=label_smoothing)
    grads = model.backward(cache)
    if masks is not None:
        assert len(masks) == 1 + 2 * config.n_layer
        assert all(np.isin(np.round(m * (1 - config.dropout), 12), [0.0, 1.0]).all() for m in masks)
        assert any((m == 0).any() for m in masks)

    P = {name: torch.tensor(p, dtype=torch.float64, requires_grad=True) for name, p in model.params.items()}
    torch_loss = torch_gpt_loss(P, config, idx, targets, label_smoothing, masks)
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    assert set(grads) == set(P)
    for name, t in P.items():
        assert_close_relative(grads[name], t.grad.numpy(), what=name)


# --------------------------------------------------------- per-layer parity
def autograd(fn, arrays, dout=None):
    """Run fn on float64 leaf tensors; return (out, [grad of sum(out * dout) per array])."""
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*leaves)
    out.backward(None if dout is None else torch.tensor(dout))
    return out.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("seed", range(3))
def test_layernorm_matches_torch(seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((2, 5, 7)) * 3 + 1, rng.standard_normal(7), rng.standard_normal(7)
    out, cache = layernorm.forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    ref, ref_grads = autograd(lambda x, w, b: F.layer_norm(x, (7,), w, b, eps=1e-5), [x, w, b], dout)
    assert_close_relative(out, ref, 1e-13, "out")
    for name, g, r in zip("xwb", layernorm.backward(dout, cache), ref_grads):
        assert_close_relative(g, r, what=name)


def test_gelu_matches_torch_tanh_approximation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(50) * 3, [-8.0, -3.0, 0.0, 3.0, 8.0]])
    out, cache = gelu.forward(x)
    dout = rng.standard_normal(x.shape)
    ref, (ref_dx,) = autograd(lambda x: F.gelu(x, approximate="tanh"), [x], dout)
    assert_close_relative(out, ref, 1e-13, "out")
    assert_close_relative(gelu.backward(dout, cache), ref_dx, what="dx")


@pytest.mark.parametrize("B, T, n_head, C", [(2, 6, 3, 12), (1, 1, 1, 4), (3, 5, 1, 5), (2, 7, 4, 8)])
def test_attention_matches_torch_sdpa(B, T, n_head, C):
    rng = np.random.default_rng(B * 100 + T)
    qkv = rng.standard_normal((B, T, 3 * C))
    out, cache = attention.forward(qkv, n_head)
    dout = rng.standard_normal(out.shape)

    def torch_attention(qkv):
        q, k, v = (a.view(B, T, n_head, C // n_head).transpose(1, 2) for a in qkv.split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, T, C)

    ref, (ref_dqkv,) = autograd(torch_attention, [qkv], dout)
    assert_close_relative(out, ref, 1e-13, "out")
    assert_close_relative(attention.backward(dout, cache), ref_dqkv, what="dqkv")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.6])
def test_cross_entropy_matches_torch(label_smoothing):
    rng = np.random.default_rng(int(label_smoothing * 10))
    B, T, V = 3, 4, 9
    logits = rng.standard_normal((B, T, V)) * 2
    targets = rng.integers(0, V, (B, T))
    targets[0, 0] = targets[2, 3] = -1
    loss, cache = cross_entropy.forward(logits, targets, label_smoothing=label_smoothing)
    ref, (ref_dlogits,) = autograd(
        lambda z: F.cross_entropy(z.reshape(B * T, V), torch.as_tensor(targets).reshape(-1), ignore_index=-1,
                                  label_smoothing=label_smoothing), [logits])
    assert float(loss) == pytest.approx(float(ref), rel=1e-13)
    assert_close_relative(cross_entropy.backward(1.0, cache), ref_dlogits, what="dlogits")


def test_linear_and_embedding_match_torch():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 6)), rng.standard_normal(6)
    out, cache = linear.forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    ref, ref_grads = autograd(lambda x, w, b: F.linear(x, w.T, b), [x, w, b], dout)  # torch stores (out, in)
    assert_close_relative(out, ref, 1e-13, "linear out")
    for name, g, r in zip("xwb", linear.backward(dout, cache), ref_grads):
        assert_close_relative(g, r, what=f"linear d{name}")

    idx = np.array([[1, 1, 4], [0, 1, 4]])
    wte, wpe = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    out, cache = embedding.forward(idx, wte, wpe)
    dout = rng.standard_normal(out.shape)
    ref, ref_grads = autograd(lambda wte, wpe: F.embedding(torch.as_tensor(idx), wte) + wpe[:3], [wte, wpe], dout)
    assert_close_relative(out, ref, 1e-15, "embedding out")
    for name, g, r in zip(["wte", "wpe"], embedding.backward(dout, cache), ref_grads):
        assert_close_relative(g, r, what=f"embedding d{name}")
