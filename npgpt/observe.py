"""Network statistics: what the weights, gradients and activations do while training.

Every --stats-interval steps the trainer records, from arrays it already has:

  per parameter tensor (`parameter_stats`)
      weight_rms     sqrt(mean(p^2)) of the weights the gradient was taken at
      grad_rms       sqrt(mean(g^2)) of the gradient, before clipping
      update_ratio   log10(std(p_after - p_before) / std(p_before)): the size of
                     the update actually applied (clipping, weight decay, Adam's
                     normalisation all included) relative to the weights.
                     Around -3 is the usual healthy value (docs/observability.md).

  per block i (`ActivationStats`, from the forward cache of the step)
      resid_mean, resid_std   of the residual stream leaving the block
      gelu_beyond_3           fraction of the MLP's GELU inputs with |x| > 3
      attn_entropy            mean entropy (nats) of each head's attention
                              distribution, over all batch rows and query positions

Nothing here runs a second model or a second training loop.  The activation
statistics are read from each forward's cache just before the backward
consumes it (`StatsRecorder` wraps `model.backward` for the stats step
only), so a step without statistics does no extra work and holds no extra
memory.  What a cache holds, and so what each statistic costs:

  - residual stream: the Numba layer norm caches its input x (the stream);
    the reference caches only xhat and rstd, so for the numpy backend the
    stream is rebuilt from the cached branch inputs: the embedding lookup and,
    per block, the two output projections (one (N, C) @ (C, C) and one
    (N, 4C) @ (4C, C) product), about a quarter of a forward's products;
  - GELU inputs: both backends cache them (the kernel's includes c_fc's bias);
  - attention probabilities: the reference caches them (B, nh, T, T); the
    flash kernel keeps only one log-sum-exp per query, so the probabilities
    are recomputed from the cached qkv, a few batch rows (b, nh, T, T) at a
    time (16 MB of scratch at most): one extra q k^T product per layer on a
    stats step.

    recorder = StatsRecorder(model)
    recorder.begin()                       # before the step: snapshot the weights, watch the forwards
    loss, norm, lr = trainer.step()        # the ordinary step (any number of micro-batches / workers)
    record = recorder.end(iteration, grad, norm, grad_clip)   # -> {"kind": "stats", ...}
"""
import math
import threading

import numpy as np

from .model import views_into

# ------------------------------------------------------------------ parameters


def _rms(a):
    """sqrt(mean(a^2)) summed in float64, without a float64 copy of a."""
    a = a.reshape(-1)
    return math.sqrt(float(np.dot(a, a)) / a.size) if a.size else 0.0


def _std(a):
    """Population std of a, computed in float64."""
    return float(np.std(a, dtype=np.float64)) if a.size else 0.0


def update_ratio_log10(before, after):
    """log10(std(after - before) / std(before)), None when either std is 0.

    A freshly initialised bias or layer-norm gain has std 0 (all zeros or
    all ones), so its ratio is undefined, not infinite; an untouched tensor
    (update exactly 0) has no finite log either.  The difference is taken in
    float64: float32 weights subtract exactly there.
    """
    scale = _std(before)
    step = _std(after.astype(np.float64) - before.astype(np.float64))
    if scale == 0.0 or step == 0.0:
        return None
    return math.log10(step / scale)


def parameter_stats(shapes, params_before, params_after, grad, grad_scale=1.0):
    """Per parameter tensor: weight RMS, gradient RMS and the log10 update:data ratio.

    shapes: {name: shape} in storage order (model.shapes); params_before,
    params_after, grad: flat (N,) buffers.  grad_scale multiplies the
    gradient's RMS: the trainer's grad buffer is clipped in place by the
    optimizer, and grad_scale = 1 / (clip factor) gives back the RMS of the
    gradient the backward computed (see `unclipped_scale`).
    -> {name: {"weight_rms", "grad_rms", "update_ratio"}}
    """
    before, after, g = (views_into(a, shapes) for a in (params_before, params_after, grad))
    return {name: {"weight_rms": _rms(before[name]), "grad_rms": _rms(g[name]) * grad_scale,
                   "update_ratio": update_ratio_log10(before[name], after[name])}
            for name in shapes}


def unclipped_scale(grad_norm, grad_clip):
    """1 / the factor npgpt.optim.clip_by_global_norm scaled the gradient by (1 when not clipped)."""
    if grad_clip > 0 and grad_norm > grad_clip:
        return (grad_norm + 1e-6) / grad_clip
    return 1.0


# ------------------------------------------------------------------ activations
ENTROPY_CHUNK = 1 << 21  # float64 scores recomputed at once for the flash kernel's entropy: 16 MB


class RunningMoments:
    """Count, mean and sum of squared deviations of a stream of arrays, merged exactly.

    Chan et al.'s pairwise update: adding a chunk's (n, mean, M2) keeps the
    result equal to the moments of all chunks together, whatever the order,
    without the cancellation of sum(x^2) - n mean^2.
    """

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, a):
        """Add every element of the array a."""
        if a.size == 0:
            return
        a = a.astype(np.float64)  # a transient copy, on a stats step only
        chunk = RunningMoments()
        chunk.n, chunk.mean = a.size, float(a.mean())
        chunk.m2 = float(np.square(a - chunk.mean).sum())
        self.merge(chunk)

    def merge(self, other):
        """Add another RunningMoments' elements."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def std(self):
        return math.sqrt(self.m2 / self.n) if self.n else None


def check_cache_layout(model, caches):
    """Refuse a forward cache that is not GPT._hidden's layout, rather than misread it.

    [embedding, dropout, one 10-tuple per block, ln_f, head, cross-entropy]
    """
    n_layer = model.config.n_layer
    if len(caches) != n_layer + 5 or any(len(block) != 10 for block in caches[2:2 + n_layer]):
        raise ValueError(f"npgpt.observe reads GPT's forward cache: [embedding, dropout, {n_layer} blocks of 10 "
                         f"caches, ln_f, head, loss]; got {len(caches)} entries (did the model's layout change?)")


def residual_streams(model, caches):
    """The residual stream leaving each block, from a forward's cache -> n_layer arrays (B, T, C).

    Block i's output is block i+1's ln_1 input (ln_f's for the last).  The
    Numba layer norm caches that input; the reference's cache (xhat, rstd)
    has lost its mean, so the stream is rebuilt from the cached inputs of
    the branches that add to it, exactly as model._hidden added them.
    """
    n_layer = model.config.n_layer
    blocks = caches[2:2 + n_layer]
    if model.config.backend == "numba":  # layer-norm cache: (x (N, C), mean, rstd, w, has_bias)
        return [blocks[i][0][0] for i in range(1, n_layer)] + [caches[2 + n_layer][0]]
    P, ops = model.params, model.ops
    idx = caches[0][0]
    x = P["wte.weight"][idx] + model._position_rows()[: idx.shape[1]]  # (B, T, C), the embedding's sum
    x = ops.dropout.backward(x, caches[1])  # a dropout's forward and backward apply the same mask
    streams = []
    for i, (_, _, _, c_aproj, c_adrop, _, _, _, c_mproj, c_mdrop) in enumerate(blocks):
        pre = f"h.{i}."
        a = ops.linear.forward(c_aproj[0], P[pre + "attn.c_proj.weight"], P.get(pre + "attn.c_proj.bias"))[0]
        x = x + ops.dropout.backward(a, c_adrop)
        m = ops.linear.forward(c_mproj[0], P[pre + "mlp.c_proj.weight"], P.get(pre + "mlp.c_proj.bias"))[0]
        x = x + ops.dropout.backward(m, c_mdrop)
        streams.append(x)
    return streams


def gelu_inputs(model, caches):
    """The MLP's GELU inputs of each block, (B, T, 4C) (or (N, 4C)): both backends cache them."""
    n_layer = model.config.n_layer
    return [caches[2 + i][7] for i in range(n_layer)]


def attention_entropy_sums(model, attn_cache):
    """-> (nh,) sums over batch rows and queries of each head's attention entropy, and the row count.

    Entropy of query t's distribution p over keys 0..t: H = -sum_j p_j log p_j.
    Reference cache (q, k, v, probs, scale): probs (B, nh, T, T) are at hand.
    Flash cache (qkv, out, lse, n_head, scale): p_j = exp(s_j - lse_t) with
    s = q k^T * scale, so H = lse_t - sum_j p_j s_j; recomputed a few batch
    rows (b, nh, T, T) at a time.
    """
    if model.config.backend != "numba":
        probs = attn_cache[3]  # (B, nh, T, T), exactly 0 above the diagonal
        B, nh, T, _ = probs.shape
        p = probs.astype(np.float64)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return -plogp.sum(axis=(0, 2, 3)), B * T
    qkv, _, lse, n_head, scale = attn_cache
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T) keys a query may not see
    rows = max(1, ENTROPY_CHUNK // (n_head * T * T))  # batch rows per chunk: bounded scratch
    sums = np.zeros(n_head)
    for b0 in range(0, B, rows):
        chunk = qkv[b0:b0 + rows].astype(np.float64)  # (b, T, 3C)
        b = chunk.shape[0]
        q = chunk[:, :, :C].reshape(b, T, n_head, hs).transpose(0, 2, 1, 3)  # (b, nh, T, hs)
        k = chunk[:, :, C:2 * C].reshape(b, T, n_head, hs).transpose(0, 2, 3, 1)  # (b, nh, hs, T)
        s = (q @ k) * float(scale)  # (b, nh, T, T) scores
        s[..., future] = 0.0
        lse_b = lse[b0:b0 + rows].astype(np.float64)[..., None]  # (b, nh, T, 1)
        p = np.exp(np.minimum(s - lse_b, 0.0))  # <= 1; the min guards against rounding above lse
        p[..., future] = 0.0
        sums += (lse_b[..., 0] - (p * s).sum(axis=-1)).sum(axis=(0, 2))
    return sums, B * T


class ActivationStats:
    """Per-block activation statistics summed over every forward of one step (all shards, micro-batches)."""

    def __init__(self, n_layer, n_head):
        self.resid = [RunningMoments() for _ in range(n_layer)]
        self.gelu_total = [0] * n_layer
        self.gelu_beyond = [0] * n_layer
        self.entropy_sum = np.zeros((n_layer, n_head))
        self.entropy_rows = [0] * n_layer
        self._lock = threading.Lock()  # data-parallel workers add from their own threads

    def add_forward(self, model, caches):
        """Add one forward's statistics (call before its backward: the Numba backward empties the cache)."""
        check_cache_layout(model, caches)
        streams = residual_streams(model, caches)
        gelus = gelu_inputs(model, caches)
        n_layer = model.config.n_layer
        part = []
        for i in range(n_layer):
            moments = RunningMoments()
            moments.add(streams[i])
            beyond = int(np.count_nonzero(np.abs(gelus[i]) > 3.0))
            sums, rows = attention_entropy_sums(model, caches[2 + i][2])
            part.append((moments, gelus[i].size, beyond, sums, rows))
        with self._lock:
            for i, (moments, total, beyond, sums, rows) in enumerate(part):
                self.resid[i].merge(moments)
                self.gelu_total[i] += total
                self.gelu_beyond[i] += beyond
                self.entropy_sum[i] += sums
                self.entropy_rows[i] += rows

    def summary(self):
        """-> {"h.i": {"resid_mean", "resid_std", "gelu_beyond_3", "attn_entropy": [per head]}}."""
        out = {}
        for i, moments in enumerate(self.resid):
            rows = self.entropy_rows[i]
            out[f"h.{i}"] = {
                "resid_mean": moments.mean if moments.n else None,
                "resid_std": moments.std,
                "gelu_beyond_3": self.gelu_beyond[i] / self.gelu_total[i] if self.gelu_total[i] else None,
                "attn_entropy": [float(h) / rows for h in self.entropy_sum[i]] if rows else None,
            }
        return out


def activation_stats(model, caches):
    """One forward's cache -> the per-block summary of ActivationStats (a convenience for one batch)."""
    stats = ActivationStats(model.config.n_layer, model.config.n_head)
    stats.add_forward(model, caches)
    return stats.summary()


# ------------------------------------------------------------------ the stats step


class StatsRecorder:
    """Collects one step's statistics around an ordinary training step; costs nothing between begin/end pairs.

    begin(): snapshot the weights, and wrap this model's backward so that each
    forward cache is read just before the backward consumes it.  end():
    unwrap, compare the weights with the snapshot, and return the record.
    """

    def __init__(self, model):
        self.model = model
        self._before = None
        self._acts = None

    def begin(self):
        model = self.model
        self._before = model.flat_params.copy()  # (N,): the one copy a stats step makes
        self._acts = ActivationStats(model.config.n_layer, model.config.n_head)
        acts, original = self._acts, model.backward

        def backward_with_stats(cache, *args, **kwargs):
            acts.add_forward(model, cache)
            return original(cache, *args, **kwargs)

        model.backward = backward_with_stats  # an instance attribute: shadows GPT.backward until end()

    def end(self, iteration, grad, grad_norm, grad_clip):
        """After the optimizer step -> {"kind": "stats", "iter", "params", "layers"}.

        grad: the trainer's flat gradient buffer as the optimizer left it
        (clipped in place); grad_norm: its norm before clipping; grad_clip:
        the clipping threshold (0: off).
        """
        if self._before is None:
            raise RuntimeError("StatsRecorder.end() without begin()")
        model = self.model
        model.__dict__.pop("backward", None)  # GPT.backward again
        params = parameter_stats(model.shapes, self._before, model.flat_params, grad,
                                 unclipped_scale(grad_norm, grad_clip))
        layers = self._acts.summary()
        self._before = self._acts = None
        return {"kind": "stats", "iter": int(iteration), "params": params, "layers": layers}

    def cancel(self):
        """Undo begin() without a record (a step that raised)."""
        self.model.__dict__.pop("backward", None)
        self._before = self._acts = None
