"""npgpt.kernels against the reference layers, finite differences, and the model.

Every kernel must give the reference layer's results: max relative error
(max |kernel - reference| / max |reference|, per output or gradient) below
1e-9 in float64 and 1e-4 in float32.  The kernels' own backward passes are
also checked against central differences in float64, so a kernel cannot
pass by sharing a bug with the reference.  No test here is timed.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import numba
from numba import njit
from threadpoolctl import threadpool_limits

from npgpt import gradcheck, kernels, layers
from npgpt.kernels import simd
from npgpt.gradcheck_cli import layer_cases
from npgpt.model import GPT, GPTConfig

TOL = {np.float64: 1e-9, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]
FAST = settings(max_examples=12, deadline=None)  # shapes vary; the compiled code is reused


def rel_error(actual, expected):
    """max |actual - expected| / max |expected| (0 if both are all zeros)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected), initial=0.0)
    diff = np.max(np.abs(actual - expected), initial=0.0)
    return diff / scale if scale > 0 else diff


def assert_same(kernel_results, reference_results, dtype):
    """Compare tuples of arrays (None where both are None) within the dtype's tolerance."""
    if not isinstance(kernel_results, tuple):
        kernel_results, reference_results = (kernel_results,), (reference_results,)
    assert len(kernel_results) == len(reference_results)
    for i, (k, r) in enumerate(zip(kernel_results, reference_results)):
        if r is None:
            assert k is None, f"result {i}: kernel gave an array where the reference gave None"
            continue
        assert np.asarray(k).dtype == np.asarray(r).dtype, f"result {i}: dtype {np.asarray(k).dtype} != {np.asarray(r).dtype}"
        err = rel_error(k, r)
        assert err < TOL[dtype], f"result {i}: max relative error {err:.2e}"


def both(layer_name, dtype, forward_args, dout_seed=0, forward_kwargs=None):
    """Run kernel and reference forward, then backward on the same random dout."""
    forward_kwargs = forward_kwargs or {}
    kernel, reference = getattr(kernels, layer_name), getattr(layers, layer_name)
    out_k, cache_k = kernel.forward(*forward_args, **forward_kwargs)
    out_r, cache_r = reference.forward(*forward_args, **forward_kwargs)
    assert_same(out_k, out_r, dtype)
    dout = np.random.default_rng(dout_seed).standard_normal(np.shape(out_r)).astype(dtype)
    if np.ndim(out_r) == 0:
        dout = 1.0
    assert_same(kernel.backward(dout, cache_k), reference.backward(dout, cache_r), dtype)


def randn(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ------------------------------------------------------------ kernel vs reference
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dtype):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 11, (3, 7))
    idx[0, :3] = 4  # repeated ids must accumulate
    both("embedding", dtype, (idx, randn(rng, (11, 70), dtype), randn(rng, (9, 70), dtype)))


def test_embedding_rejects_bad_ids():
    wte, wpe = np.zeros((5, 3), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(IndexError):
        kernels.embedding.forward(np.array([[0, 5]]), wte, wpe)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(dtype, bias):
    rng = np.random.default_rng(1)
    b = randn(rng, 24, dtype) if bias else None
    both("linear", dtype, (randn(rng, (2, 5, 16), dtype), randn(rng, (16, 24), dtype), b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(dtype, bias):
    rng = np.random.default_rng(2)
    b = randn(rng, 37, dtype) if bias else None
    x = randn(rng, (4, 70, 37), dtype, scale=3.0) + dtype(2.0)  # offset mean: the centring matters
    both("layernorm", dtype, (x, randn(rng, 37, dtype), b))


@FAST
@given(n=st.integers(1, 130), c=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_layernorm_shapes(n, c, seed):
    rng = np.random.default_rng(seed)
    both("layernorm", np.float64, (randn(rng, (n, c), np.float64), randn(rng, c, np.float64), randn(rng, c, np.float64)), seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(dtype):
    rng = np.random.default_rng(3)
    both("gelu", dtype, (randn(rng, (3, 5, 41), dtype, scale=4.0),))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_survives_large_inputs(dtype):
    """fastmath must not turn tanh's saturation into NaN (sech^2 as 1 - tanh^2)."""
    x = np.array([-60.0, -20.0, -5.0, 0.0, 5.0, 20.0, 60.0], dtype=dtype)
    both("gelu", dtype, (x,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_with_bias_equals_linear_bias_then_gelu(dtype):
    rng = np.random.default_rng(4)
    x, b = randn(rng, (2, 6, 33), dtype, 2.0), randn(rng, 33, dtype)
    out_r, cache_r = layers.gelu.forward(x + b)
    pre = x.copy()
    out_k, cache_k = kernels.gelu.bias_forward(pre, b)
    assert_same(out_k, out_r, dtype)
    dout = randn(rng, x.shape, dtype)
    dx_r = layers.gelu.backward(dout, cache_r)
    assert_same(kernels.gelu.bias_backward(dout, cache_k), (dx_r, dx_r.reshape(-1, 33).sum(axis=0)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,n_head,hs", [(2, 1, 1, 4), (2, 7, 3, 5), (1, 40, 2, 16), (2, 33, 4, 8), (1, 150, 2, 6),
                                            (2, 70, 2, 20), (1, 65, 1, 33), (1, 256, 2, 64)])
def test_attention(dtype, B, T, n_head, hs):
    rng = np.random.default_rng(5)
    both("attention", dtype, (randn(rng, (B, T, 3 * n_head * hs), dtype, scale=1.5), n_head))


@FAST
@given(b=st.integers(1, 3), t=st.integers(1, 140), n_head=st.integers(1, 4), hs=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_attention_shapes(b, t, n_head, hs, seed):
    rng = np.random.default_rng(seed)
    both("attention", np.float64, (randn(rng, (b, t, 3 * n_head * hs), np.float64, scale=2.0), n_head), seed)


@njit(cache=False)
def _compiled_tile(a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate):
    simd.tile_product(a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate)


@FAST
@given(dtype=st.sampled_from(DTYPES), ai=st.integers(0, 3), ak=st.integers(0, 5), b_k=st.integers(0, 5),
       bj=st.integers(0, 9), n=st.integers(0, 30), oi=st.integers(0, 2), oj=st.integers(0, 7),
       accumulate=st.booleans(), seed=st.integers(0, 2**16))
def test_simd_tile_equals_numpy(dtype, ai, ak, b_k, bj, n, oi, oj, accumulate, seed):
    """The LLVM-IR tile attention is built on equals its NumPy specification (same function, JIT off)."""
    rng = np.random.default_rng(seed)
    a = randn(rng, (ai + simd.ROWS + 1, ak + n + 2), dtype)
    b = randn(rng, (b_k + n + 3, bj + simd.COLS + 2), dtype)
    out = randn(rng, (oi + simd.ROWS + 2, oj + simd.COLS + 1), dtype)
    expected = out.copy()
    simd.tile_product(a, ai, ak, b, b_k, bj, n, expected, oi, oj, dtype(0.75), accumulate)  # plain NumPy
    _compiled_tile(a, ai, ak, b, b_k, bj, n, out, oi, oj, dtype(0.75), accumulate)
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])


def _attention_cache_bytes(T):
    qkv = np.zeros((2, T, 3 * 64), np.float32)
    _, cache = kernels.attention.forward(qkv, 4)
    return sum(a.nbytes for a in cache if isinstance(a, np.ndarray))


def test_attention_memory_grows_linearly_in_T():
    """The cache holds qkv, the output and one lse per query: doubling T doubles it."""
    small, large = _attention_cache_bytes(128), _attention_cache_bytes(256)
    assert large == 2 * small
    _, reference_cache = layers.attention.forward(np.zeros((2, 256, 3 * 64), np.float32), 4)
    assert large < sum(a.nbytes for a in reference_cache if isinstance(a, np.ndarray)) / 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy(dtype, label_smoothing):
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 29, (3, 5))
    targets[1, 2] = targets[2, 0] = -1
    both("cross_entropy", dtype, (randn(rng, (3, 5, 29), dtype, 3.0), targets),
         forward_kwargs={"label_smoothing": label_smoothing, "ignore_index": -1})


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_large_vocab_and_logits(dtype):
    """GPT-2's vocabulary, and logits large enough that a naive exp overflows."""
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 50257, (2, 3))
    logits = randn(rng, (2, 3, 50257), dtype, 3.0)
    logits[0, 0, 7] = 200.0
    both("cross_entropy", dtype, (logits, targets), forward_kwargs={"label_smoothing": 0.1})


def test_cross_entropy_all_ignored_is_zero():
    targets = np.full((2, 3), 5)
    logits = np.random.default_rng(8).standard_normal((2, 3, 9))
    loss, cache = kernels.cross_entropy.forward(logits, targets, ignore_index=5)
    assert loss == 0.0
    assert not np.any(kernels.cross_entropy.backward(1.0, cache))
    both("cross_entropy", np.float64, (logits, targets), forward_kwargs={"ignore_index": 5})


def test_cross_entropy_backward_in_place():
    rng = np.random.default_rng(9)
    logits, targets = rng.standard_normal((2, 4, 13)), rng.integers(0, 13, (2, 4))
    expected = kernels.cross_entropy.backward(0.5, kernels.cross_entropy.forward(logits, targets)[1])
    _, cache = kernels.cross_entropy.forward(logits, targets)
    got = kernels.cross_entropy.backward(0.5, cache, out=logits)
    assert np.shares_memory(got, logits) and rel_error(got, expected) < 1e-15


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_dropout_same_mask_as_reference(dtype, p):
    rng = np.random.default_rng(10)
    x = randn(rng, (3, 4, 17), dtype)
    out_k, cache_k = kernels.dropout.forward(x, p, np.random.default_rng(42))
    out_r, cache_r = layers.dropout.forward(x, p, np.random.default_rng(42))
    assert np.array_equal(out_k, out_r) and out_k.dtype == out_r.dtype
    dout = randn(rng, x.shape, dtype)
    assert np.array_equal(kernels.dropout.backward(dout, cache_k), layers.dropout.backward(dout, cache_r))


# --------------------------------------------------- kernels vs finite differences
@pytest.mark.parametrize("case", range(7))
def test_kernel_gradients_against_finite_differences(case):
    name, fwd, bwd, inputs = layer_cases(kernels, np.random.default_rng(0))[case]
    report = gradcheck.check_layer(fwd, bwd, inputs, name=f"{name}[numba]")
    assert report.passed, str(report)


def test_finite_differences_catch_a_broken_kernel():
    """The check above can fail: drop the softmax-Jacobian's correction term."""
    name, fwd, bwd, inputs = layer_cases(kernels, np.random.default_rng(0))[4]
    assert name == "attention"

    def broken_backward(dout, cache):
        qkv, out, lse, n_head, scale = cache
        return bwd(dout, (qkv, out, lse, n_head, scale * 1.01))

    assert not gradcheck.check_layer(fwd, broken_backward, inputs).passed


# ------------------------------------------------------------------ optimizer
def _reference_adamw(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """A plain NumPy AdamW, for when npgpt.optim is not there yet."""
    m[:] = beta1 * m + (1 - beta1) * grad
    v[:] = beta2 * v + (1 - beta2) * grad * grad
    param -= lr * weight_decay * decay * param
    param -= lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)


def _reference_optim():
    try:
        from npgpt import optim
        return optim.adamw_step, optim.global_norm
    except (ImportError, AttributeError):
        return _reference_adamw, lambda g: float(np.sqrt(np.sum(np.asarray(g, np.float64) ** 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_step_equals_reference(dtype):
    reference_step, _ = _reference_optim()
    rng = np.random.default_rng(11)
    n = 1000
    state = [randn(rng, n, dtype), None, randn(rng, n, dtype, 0.1), np.abs(randn(rng, n, dtype, 0.1))]
    decay = (rng.random(n) < 0.7).astype(dtype)
    ours, theirs = [a.copy() for a in state if a is not None], [a.copy() for a in state if a is not None]
    for step in (1, 2, 3):
        grad = randn(rng, n, dtype)
        kernels.optim.adamw_step(ours[0], grad, ours[1], ours[2], decay, 3e-3, 0.9, 0.95, 1e-8, 0.1, step)
        reference_step(theirs[0], grad, theirs[1], theirs[2], decay, 3e-3, 0.9, 0.95, 1e-8, 0.1, step)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        assert rel_error(a, b) < TOL[dtype]
    assert not np.array_equal(ours[0], state[0])  # it did move


def test_adamw_step_takes_a_byte_mask():
    rng = np.random.default_rng(14)
    n = 257
    decay = rng.random(n) < 0.5
    results = []
    for mask in (decay.astype(np.float32), decay.astype(np.uint8)):
        state = [np.linspace(-1, 1, n, dtype=np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)]
        kernels.optim.adamw_step(state[0], np.ones(n, np.float32), state[1], state[2], mask, 0.1, 0.9, 0.95, 1e-8, 0.5, 1)
        results.append(state[0])
    assert np.array_equal(results[0], results[1])


def test_global_norm():
    _, reference_norm = _reference_optim()
    g = np.random.default_rng(12).standard_normal(100_003).astype(np.float32)
    assert abs(kernels.optim.global_norm(g) - reference_norm(g)) < 1e-5 * reference_norm(g)


# ------------------------------------------------------------------ the model
def _model_pair(dtype, dropout):
    cfg = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout, dtype=dtype)
    reference = GPT(GPTConfig(backend="numpy", **cfg), seed=3)
    fast = GPT(GPTConfig(backend="numba", **cfg), seed=3)
    return reference, fast


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_model_numba_equals_numpy(dtype):
    reference, fast = _model_pair(dtype, dropout=0.1)
    rng = np.random.default_rng(13)
    idx, targets = rng.integers(0, 23, (3, 12)), rng.integers(0, 23, (3, 12))
    targets[0, 4] = -1
    kw = dict(label_smoothing=0.1, ignore_index=-1)
    loss_r, cache_r = reference.forward(idx, targets, rng=np.random.default_rng(5), **kw)
    loss_k, cache_k = fast.forward(idx, targets, rng=np.random.default_rng(5), **kw)
    tol = TOL[np.dtype(dtype).type]
    assert abs(loss_k - loss_r) < tol * abs(loss_r)
    grads_r, grads_k = reference.backward(cache_r), fast.backward(cache_k)
    assert grads_k.keys() == grads_r.keys()
    for name in grads_r:
        assert grads_k[name].dtype == np.dtype(dtype), name
        assert rel_error(grads_k[name], grads_r[name]) < tol, name
    assert rel_error(fast.logits(idx), reference.logits(idx)) < tol


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_results_do_not_depend_on_the_thread_count():
    """Every kernel splits its sums by size, never by thread: one and two threads give the same bits.

    Data-parallel workers run with one thread each while the main thread
    (gradient norm) runs with all of them, and a resumed run may land on a
    machine with another core count; neither may change the rounding.
    """
    cfg = dict(vocab_size=17, block_size=40, n_layer=2, n_head=2, n_embd=32, dtype="float32")
    model = GPT(GPTConfig(backend="numba", **cfg), seed=4)
    rng = np.random.default_rng(2)
    idx, targets = rng.integers(0, 17, (8, 40)), rng.integers(0, 17, (8, 40))  # 320 rows: several chunks

    def loss_grad_norm(threads):
        numba.set_num_threads(threads)
        grad = np.zeros_like(model.flat_params)
        with threadpool_limits(1, user_api="blas"):  # BLAS on one thread: only the kernels' threads vary
            loss, cache = model.forward(idx, targets)
            model.backward(cache, out=grad)
        return loss, grad, kernels.optim.global_norm(grad)

    try:
        one, two = loss_grad_norm(1), loss_grad_norm(2)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert one[0] == two[0]
    np.testing.assert_array_equal(one[1], two[1])
    assert one[2] == two[2]


def test_model_default_backend_is_numba():
    assert GPTConfig().backend == "numba"


def test_reference_runs_without_jit():
    """NUMBA_DISABLE_JIT=1: the NumPy reference model still trains a step, and the
    kernels, now plain Python a learner can step through, still give its results."""
    script = textwrap.dedent("""
        import numpy as np
        from npgpt.model import GPT, GPTConfig
        cfg = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dtype="float64")
        model = GPT(GPTConfig(backend="numpy", **cfg))
        idx = np.random.default_rng(0).integers(0, 11, (2, 8))
        loss, cache = model.forward(idx, idx, label_smoothing=0.1)
        grads = model.backward(cache)
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
        interpreted = GPT(GPTConfig(backend="numba", **cfg))
        loss_k, cache_k = interpreted.forward(idx, idx, label_smoothing=0.1)
        grads_k = interpreted.backward(cache_k)
        assert abs(loss_k - loss) < 1e-12 * loss
        assert all(np.allclose(grads_k[k], grads[k], rtol=1e-9, atol=1e-14) for k in grads)
        import numba
        assert numba.config.DISABLE_JIT
        print("ok", loss)
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
