"""npgpt.observe: every statistic equals a plain NumPy recomputation from the same arrays.

The recomputations below are written independently of npgpt.observe: a
small float64 GPT-2 forward that keeps every residual stream, GELU input and
attention matrix, and per-tensor slices of the flat buffers taken by offset.
"""
import math

import numpy as np
import pytest

from npgpt import GPT, GPTConfig, observe
from npgpt.optim import AdamW, accumulate_gradients
from npgpt.parallel import DataParallel, threads_may_share_kernels

CFG = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def make_model(backend, dtype="float64", seed=3, dropout=0.0, **kw):
    model = GPT(GPTConfig(**{**CFG, **kw}, dtype=dtype, backend=backend, dropout=dropout), seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():  # nonzero biases and uneven gains: every term counts
        if p.ndim == 1:
            p += rng.normal(0, 0.3, p.shape).astype(p.dtype)
    return model


def batch(B=3, T=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CFG["vocab_size"], (B, T)), rng.integers(0, CFG["vocab_size"], (B, T))


# ------------------------------------------------------------- the independent recomputation
def plain_forward(params, n_layer, n_head, idx):
    """float64 GPT-2 forward -> (residual streams leaving each block, GELU inputs, attention probs)."""
    P = {k: v.astype(np.float64) for k, v in params.items()}

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b

    B, T = idx.shape
    x = P["wte.weight"][idx] + P["wpe.weight"][:T]
    C = x.shape[-1]
    hs = C // n_head
    streams, gelu_in, probs = [], [], []
    for i in range(n_layer):
        g = lambda n: P[f"h.{i}.{n}"]  # noqa: E731
        qkv = ln(x, g("ln_1.weight"), g("ln_1.bias")) @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for j in range(3))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        s[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        probs.append(a)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        pre = ln(x, g("ln_2.weight"), g("ln_2.bias")) @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias")
        gelu_in.append(pre)
        gelu = 0.5 * pre * (1 + np.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre ** 3)))
        x = x + gelu @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
        streams.append(x)
    return streams, gelu_in, probs


def plain_activation_stats(params, n_layer, n_head, idx):
    streams, gelu_in, probs = plain_forward(params, n_layer, n_head, idx)
    out = {}
    for i in range(n_layer):
        p = probs[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)  # (B, nh, T)
        out[f"h.{i}"] = {"resid_mean": streams[i].mean(), "resid_std": streams[i].std(),
                         "gelu_beyond_3": np.mean(np.abs(gelu_in[i]) > 3),
                         "attn_entropy": h.mean(axis=(0, 2))}
    return out


def assert_same_activation_stats(got, want, rtol):
    assert got.keys() == want.keys()
    for layer in want:
        for key in ("resid_mean", "resid_std", "gelu_beyond_3"):
            np.testing.assert_allclose(got[layer][key], want[layer][key], rtol=rtol, atol=rtol,
                                       err_msg=f"{layer} {key}")
        np.testing.assert_allclose(got[layer]["attn_entropy"], want[layer]["attn_entropy"], rtol=rtol,
                                   err_msg=f"{layer} attn_entropy")


# ------------------------------------------------------------- activations
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_activation_stats_equal_a_plain_recomputation(backend):
    model = make_model(backend)
    model.params["h.1.mlp.c_fc.bias"][:] += 2.5  # push part of the GELU inputs past 3
    idx, targets = batch()
    _, cache = model.forward(idx, targets)
    got = observe.activation_stats(model, cache)
    want = plain_activation_stats(model.params, CFG["n_layer"], CFG["n_head"], idx)
    assert 0.01 < want["h.1"]["gelu_beyond_3"] < 0.99  # the fraction is tested, not a trivial 0
    assert_same_activation_stats(got, want, rtol=1e-9)


def test_a_wrong_statistic_is_caught():
    """The comparison can fail: entropy from probabilities normalised by a wrong log-sum-exp differs."""
    model = make_model("numba")
    idx, targets = batch()
    _, cache = model.forward(idx, targets)
    want = plain_activation_stats(model.params, CFG["n_layer"], CFG["n_head"], idx)
    assert_same_activation_stats(observe.activation_stats(model, cache), want, rtol=1e-6)
    qkv, out, lse, n_head, scale = cache[2][2]
    cache[2] = cache[2][:2] + ((qkv, out, lse + 0.01, n_head, scale),) + cache[2][3:]
    with pytest.raises(AssertionError, match="attn_entropy"):
        assert_same_activation_stats(observe.activation_stats(model, cache), want, rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 2e-4)])
def test_both_backends_give_the_same_activation_stats(dtype, rtol):
    idx, targets = batch(B=4, seed=5)
    stats = {}
    for backend in ("numpy", "numba"):
        model = make_model(backend, dtype=dtype)
        stats[backend] = observe.activation_stats(model, model.forward(idx, targets)[1])
    assert_same_activation_stats(stats["numba"], stats["numpy"], rtol)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dropout_masks_are_part_of_the_residual_stream(backend):
    """With dropout on, the stream is the masked one the model added (the numpy path rebuilds it)."""
    model = make_model(backend, dropout=0.3)
    idx, targets = batch()
    _, cache = model.forward(idx, targets, rng=np.random.default_rng(7))
    streams = observe.residual_streams(model, cache)
    # the last stream is ln_f's input: normalising it must give the cached normalised output's statistics
    x = streams[-1].reshape(-1, CFG["n_embd"])
    mu, rstd = x.mean(-1), 1 / np.sqrt(x.var(-1) + 1e-5)
    if backend == "numpy":
        xhat, cached_rstd = cache[2 + CFG["n_layer"]][:2]
        np.testing.assert_allclose((x - mu[:, None]) * rstd[:, None], xhat.reshape(x.shape), atol=1e-9)
    else:
        _, cached_mean, cached_rstd = cache[2 + CFG["n_layer"]][:3]
        np.testing.assert_allclose(mu, cached_mean, atol=1e-12)
    np.testing.assert_allclose(rstd, cached_rstd.reshape(-1), rtol=1e-9)


# ------------------------------------------------------------- parameters
def slices(shapes, flat):
    """{name: flat[offset:offset+size]}, by offsets counted here."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        out[name] = flat[offset:offset + size].astype(np.float64)
        offset += size
    return out


def plain_parameter_stats(shapes, before, after, grad):
    b, a, g = slices(shapes, before), slices(shapes, after), slices(shapes, grad)
    out = {}
    for name in shapes:
        ratio = None
        if np.std(b[name]) > 0 and np.std(a[name] - b[name]) > 0:
            ratio = np.log10(np.std(a[name] - b[name]) / np.std(b[name]))
        out[name] = {"weight_rms": np.sqrt(np.mean(b[name] ** 2)), "grad_rms": np.sqrt(np.mean(g[name] ** 2)),
                     "update_ratio": ratio}
    return out


def assert_same_parameter_stats(got, want, rtol=1e-9):
    assert got.keys() == want.keys()
    for name in want:
        for key in ("weight_rms", "grad_rms"):
            np.testing.assert_allclose(got[name][key], want[name][key], rtol=rtol, err_msg=f"{name} {key}")
        if want[name]["update_ratio"] is None:
            assert got[name]["update_ratio"] is None, name
        else:
            np.testing.assert_allclose(got[name]["update_ratio"], want[name]["update_ratio"], rtol=rtol,
                                       atol=1e-9, err_msg=name)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_update_ratio_is_the_update_actually_applied(backend):
    """A real AdamW step with clipping and weight decay: the ratio comes from the weights before and after."""
    model = make_model(backend, dtype="float32")
    idx, targets = batch()
    opt = AdamW(model, weight_decay=0.5, grad_clip=0.05)
    grad = np.zeros_like(model.flat_params)
    lr = 3e-2
    for _ in range(3):  # Adam's moments away from their first step, where every update is lr * sign(g)
        accumulate_gradients(model, [(idx, targets)], grad)
        before = model.flat_params.copy()
        raw = grad.copy()
        norm = opt.step(grad, lr)
    assert norm > 0.05, "the step must clip for this test to mean anything"
    got = observe.parameter_stats(model.shapes, before, model.flat_params, grad, observe.unclipped_scale(norm, 0.05))
    assert_same_parameter_stats(got, plain_parameter_stats(model.shapes, before, model.flat_params, raw), rtol=1e-5)
    # the applied update is not Karpathy's lr * g shortcut: with clipping, Adam and decay they differ
    w = "h.0.attn.c_attn.weight"
    shortcut = np.log10(np.std(lr * slices(model.shapes, raw)[w]) / np.std(slices(model.shapes, before)[w]))
    assert abs(got[w]["update_ratio"] - shortcut) > 0.5
    # weight decay is in it: the same step without decay moves the weights differently
    assert got["wte.weight"]["update_ratio"] is not None


def test_untouched_and_constant_tensors_have_no_ratio():
    shapes = {"a": (2, 2), "ones": (3,)}
    before = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0])
    after = before.copy()
    after[4:] += [0.1, -0.1, 0.0]
    stats = observe.parameter_stats(shapes, before, after, np.zeros(7))
    assert stats["a"]["update_ratio"] is None  # no update: log10(0) is no number
    assert stats["ones"]["update_ratio"] is None  # std(before) = 0: no scale to compare with
    assert stats["a"]["weight_rms"] == pytest.approx(math.sqrt(7.5))


# ------------------------------------------------------------- the recorder around a real step
def recorded_step(model, batches, grad_clip, parallel=None):
    opt = AdamW(model, weight_decay=0.1, grad_clip=grad_clip)
    grad = np.zeros_like(model.flat_params)
    recorder = observe.StatsRecorder(model)
    recorder.begin()
    before = model.flat_params.copy()
    params_at_forward = {k: v.copy() for k, v in model.params.items()}
    accumulate_gradients(model, batches, grad, parallel=parallel)
    raw = grad.copy()
    norm = opt.step(grad, 1e-2)
    record = recorder.end(1, grad, norm, grad_clip)
    return record, before, raw, params_at_forward


@pytest.mark.parametrize("backend, workers", [("numpy", 1), ("numba", 1), ("numba", 2)])
def test_recorder_sums_every_micro_batch_and_shard(backend, workers):
    if workers > 1 and not threads_may_share_kernels():
        pytest.skip("this Numba has no thread-safe threading layer")
    model = make_model(backend)
    (x1, y1), (x2, y2) = batch(B=4, seed=1), batch(B=4, seed=2)
    parallel = DataParallel(model, workers) if workers > 1 else None
    try:
        record, before, raw, params = recorded_step(model, [(x1, y1), (x2, y2)], grad_clip=0.1, parallel=parallel)
    finally:
        if parallel is not None:
            parallel.close()
    assert record["kind"] == "stats" and record["iter"] == 1
    # the statistics of both micro-batches (and all shards) together = those of one batch of both
    want = plain_activation_stats(params, CFG["n_layer"], CFG["n_head"], np.concatenate([x1, x2]))
    assert_same_activation_stats(record["layers"], want, rtol=1e-9)
    assert_same_parameter_stats(record["params"], plain_parameter_stats(model.shapes, before, model.flat_params, raw))


def test_no_cost_outside_a_stats_step():
    """After end() (or cancel()) the model's backward is the class's own again: nothing is wrapped."""
    model = make_model("numpy")
    recorder = observe.StatsRecorder(model)
    recorder.begin()
    assert "backward" in vars(model)
    recorder.end(1, np.zeros_like(model.flat_params), 0.0, 1.0)
    assert "backward" not in vars(model) and model.backward.__func__ is GPT.backward
    recorder.begin()
    recorder.cancel()
    assert "backward" not in vars(model)
    with pytest.raises(RuntimeError):
        recorder.end(2, np.zeros_like(model.flat_params), 0.0, 1.0)


def test_unclipped_scale_undoes_the_optimizers_clip():
    from npgpt.optim import clip_by_global_norm

    g = np.array([3.0, 4.0])
    clip_by_global_norm(g, 1.0, 5.0)
    np.testing.assert_allclose(g * observe.unclipped_scale(5.0, 1.0), [3.0, 4.0])
    assert observe.unclipped_scale(0.5, 1.0) == 1.0 and observe.unclipped_scale(5.0, 0.0) == 1.0


# ------------------------------------------------------------- TensorBoard
def read_events(log_dir):
    """Every (tag, step, value) scalar in the event files of log_dir: TFRecord framing, read by hand."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars, texts = [], []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])  # length, its crc, the event
            pos += 12 + length + 4  # ... and the event's crc
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.append((value.tag, event.step, value.simple_value))
                else:
                    texts.append(value.tag)
    return scalars, texts


def test_tensorboard_logger_writes_every_kind_of_record(tmp_path):
    pytest.importorskip("tensorboardX")
    from npgpt.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log({"kind": "header", "config": {"lr": 1e-3}, "git": "abc"})
    logger.log({"kind": "step", "step": 5, "train_loss": 2.5, "lr": 1e-3, "grad_norm": 1.5, "clipped": True,
                "ms_per_step": 10.0, "tokens_per_sec": 1000.0, "mfu": None})
    logger.log({"iter": 5, "val_loss": 2.75, "val_perplexity": 15.6, "train_loss": 2.5})
    logger.log({"kind": "stats", "iter": 5, "params": {"h.0.mlp.c_fc.weight": {"weight_rms": 0.02, "grad_rms": 0.5,
                                                                                "update_ratio": -3.25},
                                                        "h.0.ln_1.bias": {"update_ratio": None}},
                "layers": {"h.0": {"resid_mean": 0.0, "resid_std": 1.25, "gelu_beyond_3": 0.5,
                                   "attn_entropy": [1.5, 0.75]}}})
    logger.log({"kind": "something new", "iter": 5})  # ignored
    logger.close()
    scalars, texts = read_events(tmp_path / "tb")
    got = {(tag, step): value for tag, step, value in scalars}
    assert got == {("train/loss", 5): 2.5, ("train/lr", 5): pytest.approx(1e-3), ("train/grad_norm", 5): 1.5,
                   ("train/clipped", 5): 1.0, ("perf/ms_per_step", 5): 10.0, ("perf/tokens_per_sec", 5): 1000.0,
                   ("val/loss", 5): 2.75, ("val/perplexity", 5): pytest.approx(15.6),
                   ("update_ratio/h.0.mlp.c_fc.weight", 5): -3.25,
                   ("weight_rms/h.0.mlp.c_fc.weight", 5): pytest.approx(0.02),
                   ("grad_rms/h.0.mlp.c_fc.weight", 5): 0.5, ("resid_mean/h.0", 5): 0.0, ("resid_std/h.0", 5): 1.25,
                   ("gelu_beyond_3/h.0", 5): 0.5, ("attn_entropy/h.0/head0", 5): 1.5,
                   ("attn_entropy/h.0/head1", 5): 0.75}
    assert texts == ["run/text_summary"]


def test_tensorboard_without_tensorboardx_is_one_line(monkeypatch):
    import sys

    from npgpt.errors import UserError
    from npgpt.tensorboard import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(UserError, match=r"^--tensorboard needs tensorboardX: pip install 'npgpt\[tensorboard\]'$"):
        TensorBoardLogger("unused")


def test_a_cache_of_another_layout_is_refused():
    model = make_model("numpy")
    idx, targets = batch()
    _, cache = model.forward(idx, targets)
    with pytest.raises(ValueError, match="forward cache"):
        observe.activation_stats(model, cache[:-1])
