"""Cross-attention and the encoder's masked self-attention: gradients, backends, masks, torch."""
import numpy as np
import pytest

from npgpt import gradcheck
from npgpt.kernels import cross_attention as kernel
from npgpt.layers import cross_attention as reference
from npgpt.layers import self_attention_masked

BACKENDS = {"reference": reference, "kernel": kernel}
# (B, Tq, Tk, n_head, hs, mask rule): padding at the end of some rows, Tq != Tk, T = 1, Tk = 1
SHAPES = [
    (2, 3, 5, 2, 3, "tail"),
    (1, 1, 4, 1, 4, "tail"),  # Tq = 1
    (2, 4, 1, 2, 2, None),  # Tk = 1
    (2, 2, 3, 1, 3, "empty"),  # batch 1's keys are all padding: a fully masked row
    (2, 5, 3, 2, 2, "random"),
]


def make_mask(rule, B, Tk, rng):
    if rule is None:
        return None
    if rule == "tail":  # batch b keeps its first Tk - b keys
        return np.arange(Tk)[None, :] < (Tk - np.arange(B))[:, None]
    if rule == "empty":
        mask = np.ones((B, Tk), bool)
        mask[1] = False
        return mask
    mask = rng.random((B, Tk)) < 0.6
    mask[:, 0] = True
    return mask


def inputs(B, Tq, Tk, n_head, hs, rule, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    C = n_head * hs
    q = rng.standard_normal((B, Tq, C)).astype(dtype)
    kv = rng.standard_normal((B, Tk, 2 * C)).astype(dtype)
    return q, kv, make_mask(rule, B, Tk, rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck(backend, shape):
    B, Tq, Tk, nh, hs, rule = shape
    q, kv, mask = inputs(*shape)
    mod = BACKENDS[backend]
    report = gradcheck.check_layer(lambda q, kv: mod.forward(q, kv, nh, mask), mod.backward,
                                   {"q": q, "kv": kv}, name=f"cross_attention[{backend}]")
    assert report.passed, str(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_self_attention_gradcheck(backend):
    rng = np.random.default_rng(1)
    B, T, nh, hs = 2, 4, 2, 2
    qkv = rng.standard_normal((B, T, 3 * nh * hs))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    mod = BACKENDS[backend]
    report = gradcheck.check_layer(
        lambda qkv: self_attention_masked.forward(qkv, nh, mask, impl=mod),
        self_attention_masked.backward, {"qkv": qkv}, name="self_attention_masked")
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_equals_reference(dtype, tol, shape):
    q, kv, mask = inputs(*shape, seed=3, dtype=dtype)
    nh = shape[3]
    out_r, cache_r = reference.forward(q, kv, nh, mask)
    out_k, cache_k = kernel.forward(q, kv, nh, mask)
    assert out_k.dtype == dtype
    np.testing.assert_allclose(out_k, out_r, atol=tol, rtol=tol)
    dout = np.random.default_rng(4).standard_normal(out_r.shape).astype(dtype)
    for gk, gr in zip(kernel.backward(dout, cache_k), reference.backward(dout, cache_r)):
        assert gk.dtype == dtype
        np.testing.assert_allclose(gk, gr, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_row_is_zero_not_nan(backend):
    q, kv, _ = inputs(1, 3, 4, 2, 2, None)
    mod = BACKENDS[backend]
    out, cache = mod.forward(q, kv, 2, np.zeros((1, 4), bool))
    assert np.array_equal(out, np.zeros_like(out))
    dq, dkv = mod.backward(np.ones_like(out), cache)
    assert np.array_equal(dq, np.zeros_like(dq)) and np.array_equal(dkv, np.zeros_like(dkv))


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_invariance(backend):
    """Keys added beyond the real ones, masked out, change neither outputs nor real gradients."""
    mod = BACKENDS[backend]
    rng = np.random.default_rng(5)
    q, kv, _ = inputs(2, 3, 4, 2, 3, None, seed=6)
    extra = 100.0 * rng.standard_normal((2, 3, kv.shape[-1]))  # large, so a leak would show
    padded = np.concatenate([kv, extra], axis=1)
    mask = np.arange(7)[None, :] < np.array([[4], [4]])
    out, cache = mod.forward(q, kv, 2, None)
    out_p, cache_p = mod.forward(q, padded, 2, mask)
    np.testing.assert_allclose(out_p, out, atol=1e-12, rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    dq, dkv = mod.backward(dout, cache)
    dq_p, dkv_p = mod.backward(dout, cache_p)
    np.testing.assert_allclose(dq_p, dq, atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(dkv_p[:, :4], dkv, atol=1e-12, rtol=1e-12)
    assert np.array_equal(dkv_p[:, 4:], np.zeros_like(dkv_p[:, 4:]))  # padding gets no gradient


def test_broken_backward_is_caught():
    """A backward that forgets the mask (uses unmasked probabilities) fails the check."""
    q, kv, mask = inputs(2, 3, 5, 2, 3, "tail")

    def broken_backward(dout, cache):
        qh, kh, vh, probs, scale = cache
        unmasked = reference.masked_softmax((qh @ kh.transpose(0, 1, 3, 2)) * scale, None)
        return reference.backward(dout, (qh, kh, vh, unmasked, scale))

    report = gradcheck.check_layer(lambda q, kv: reference.forward(q, kv, 2, mask), broken_backward,
                                   {"q": q, "kv": kv})
    assert not report.passed


def test_bad_shapes_raise_one_clear_error():
    q, kv, _ = inputs(1, 2, 3, 2, 2, None)
    with pytest.raises(ValueError, match="kv's last axis"):
        reference.forward(q, kv[..., :-1], 2)
    with pytest.raises(ValueError, match="key_mask"):
        kernel.forward(q, kv, 2, np.ones((1, 4), bool))


def test_torch_parity():
    torch = pytest.importorskip("torch")
    q, kv, mask = inputs(2, 3, 5, 2, 3, "tail", seed=7)
    nh, hs, C = 2, 3, 6
    dout = np.random.default_rng(8).standard_normal((2, 3, C))
    tq = torch.tensor(q, requires_grad=True)
    tkv = torch.tensor(kv, requires_grad=True)

    def heads(x):
        return x.reshape(2, -1, nh, hs).transpose(1, 2)

    attn_mask = torch.tensor(mask)[:, None, None, :]  # True = take part, broadcast over heads and queries
    y = torch.nn.functional.scaled_dot_product_attention(heads(tq), heads(tkv[..., :C]), heads(tkv[..., C:]),
                                                         attn_mask=attn_mask)
    y = y.transpose(1, 2).reshape(2, 3, C)
    (y * torch.tensor(dout)).sum().backward()
    for mod in BACKENDS.values():
        out, cache = mod.forward(q, kv, nh, mask)
        dq, dkv = mod.backward(dout, cache)
        np.testing.assert_allclose(out, y.detach().numpy(), atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(dq, tq.grad.numpy(), atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(dkv, tkv.grad.numpy(), atol=1e-12, rtol=1e-10)


def test_kernel_cache_has_no_score_matrix():
    """The fused cache is linear in Tq + Tk: no array as large as (nh, Tq, Tk)."""
    q, kv, mask = inputs(1, 64, 96, 2, 2, "tail")
    _, cache = kernel.forward(q, kv, 2, mask)
    sizes = [a.size for a in cache if isinstance(a, np.ndarray)]
    assert max(sizes) < 2 * 64 * 96
    _, ref_cache = reference.forward(q, kv, 2, mask)
    assert max(a.size for a in ref_cache if isinstance(a, np.ndarray)) == 2 * 64 * 96


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_padding_invariance(backend):
    """Padding tokens appended to a source leave the real tokens' outputs as they were."""
    mod = BACKENDS[backend]
    rng = np.random.default_rng(9)
    qkv = rng.standard_normal((1, 4, 12))
    padded = np.concatenate([qkv, 50.0 * rng.standard_normal((1, 2, 12))], axis=1)
    mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
    out, _ = self_attention_masked.forward(qkv, 2, None, impl=mod)
    out_p, _ = self_attention_masked.forward(padded, 2, mask, impl=mod)
    np.testing.assert_allclose(out_p[:, :4], out, atol=1e-12, rtol=1e-12)


def test_encoder_torch_parity():
    """The encoder's attention equals torch.nn.MultiheadAttention's core with a key_padding_mask."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    B, T, nh, hs = 2, 4, 2, 3
    C = nh * hs
    x = rng.standard_normal((B, T, C))
    w_in = rng.standard_normal((3 * C, C)) / np.sqrt(C)  # torch's in_proj_weight: q|k|v rows
    pad = np.array([[False, False, False, True], [False, False, False, False]])  # torch: True = ignore
    mha = torch.nn.MultiheadAttention(C, nh, bias=False, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(w_in))
        mha.out_proj.weight.copy_(torch.eye(C, dtype=torch.float64))  # out_proj = identity
    tx = torch.tensor(x)
    y, _ = mha(tx, tx, tx, key_padding_mask=torch.tensor(pad), need_weights=False)
    qkv = x @ w_in.T  # (B, T, 3C), packed q|k|v like torch's in_proj
    for mod in BACKENDS.values():
        out, _ = self_attention_masked.forward(qkv, nh, ~pad, impl=mod)
        np.testing.assert_allclose(out, y.detach().numpy(), atol=1e-12, rtol=1e-10)
