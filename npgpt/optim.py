"""AdamW over the flat parameter buffer, gradient clipping, accumulation, LR schedules.

Because every parameter is a view into `model.flat_params` (and every
gradient into one flat buffer), the whole update is one pass over three
1-D arrays and clipping is one norm.  `adamw_step` and `global_norm` are
the reference versions; `npgpt.kernels.optim` has Numba versions with the
same signatures, used when the model runs on the "numba" backend.

    >>> import numpy as np, npgpt
    >>> model = npgpt.GPT(npgpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, backend="numpy"))
    >>> opt = AdamW(model, weight_decay=0.1, grad_clip=1.0)          # betas (0.9, 0.99), as `npgpt train`
    >>> schedule = make_schedule("cosine", lr=1e-3, min_lr=1e-4, warmup_iters=10, decay_iters=100)
    >>> x = np.arange(16).reshape(2, 8) % 11
    >>> loss, grads = model.loss_and_grad(x, (x + 1) % 11)       # grads: a Gradients (dict + .flat)
    >>> grad_norm = opt.step(grads, schedule.lr(0))              # clip, then one AdamW update
    >>> opt.step_count
    1
"""
import math

import numpy as np


# ------------------------------------------------------------ the reference math
def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update, in place.  All arrays flat 1-D (N,) of one dtype.

    param, m, v: updated in place.  decay: 1 where weight decay applies
    (2-D weights), 0 elsewhere, any numeric dtype (biases, layer-norm gains).  step: the
    1-based count of updates, for bias correction.

        m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
        p = p - lr wd decay p                  (decoupled: not part of g)
        p = p - lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps)

    Bias correction undoes m and v's pull towards their zero start.  The
    order (decay, then the Adam step) and eps placement are PyTorch's.
    """
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * (grad * grad)
    if weight_decay:
        param -= (lr * weight_decay) * (decay * param)  # decay * param first: a uint8 mask keeps param's dtype
    step_size = lr / (1.0 - beta1**step)
    denom = np.sqrt(v) * (1.0 / math.sqrt(1.0 - beta2**step))
    denom += eps
    param -= step_size * (m / denom)


def global_norm(grad):
    """grad (N,) -> its L2 norm as a Python float, summed in float64."""
    g = grad.astype(np.float64, copy=False)
    return math.sqrt(float(np.dot(g, g)))


def decay_mask(shapes, dtype=np.uint8):
    """{name: shape} in storage order -> flat (N,) mask: 1 on 2-D weights, 0 elsewhere.

    Matrices (linear weights and the embeddings) are decayed; biases and
    layer-norm gains are not, since shrinking them towards 0 has no
    regularising meaning.  One byte per parameter by default: a float32
    mask would cost 500 MB at GPT-2 124M size.
    """
    parts = [np.full(math.prod(s), 1 if len(s) == 2 else 0, dtype=dtype) for s in shapes.values()]
    return np.concatenate(parts)


def clip_by_global_norm(grad, max_norm, norm):
    """Scale grad (in place) so that its norm is at most max_norm; max_norm <= 0 turns clipping off."""
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-6)


def kernels_for(backend):
    """(adamw_step, global_norm): Numba's fused versions for the "numba" backend, else NumPy's."""
    if backend == "numba":
        from .kernels import optim as fused

        return fused.adamw_step, fused.global_norm
    return adamw_step, global_norm


# `npgpt train`'s betas (TrainConfig.beta1/beta2): one default for the library and the command line.
DEFAULT_BETAS = (0.9, 0.99)


class AdamW:
    """AdamW with global-norm clipping over the model's flat parameter buffer.

    The learning rate is passed to every step (it comes from a schedule);
    everything else is fixed at construction.  The default betas (0.9, 0.99)
    are `npgpt train`'s: with few tokens per step (small models, small
    batches) v averages over about 100 steps instead of 20, which gave a
    lower validation loss on Tiny Shakespeare than GPT-2's (0.9, 0.95)
    (docs/optimizer.md).  `state_dict()` holds all the optimizer's state,
    for exact resume.
    """

    def __init__(self, model, betas=DEFAULT_BETAS, eps=1e-8, weight_decay=0.1, grad_clip=1.0):
        self.params = model.flat_params  # (N,) the model's own buffer, updated in place
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay, self.grad_clip = float(eps), float(weight_decay), float(grad_clip)
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        self.decay = decay_mask(model.shapes)
        self.step_count = 0
        self._adamw_step, self._global_norm = kernels_for(model.config.backend)

    def step(self, grads, lr):
        """Clip the gradient in place, apply one update at learning rate lr; returns the pre-clip norm.

        grads: the Gradients that model.backward / model.loss_and_grad
        return, or their flat (N,) buffer (`grads.flat`).
        """
        grad = self._flat_gradient(grads)
        norm = self._global_norm(grad)
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; training diverged (try a lower learning rate)")
        clip_by_global_norm(grad, self.grad_clip, norm)
        self.step_count += 1
        self._adamw_step(self.params, grad, self.m, self.v, self.decay, float(lr), self.beta1, self.beta2,
                         self.eps, self.weight_decay, self.step_count)
        return norm

    def _flat_gradient(self, grads):
        """Gradients or a flat array -> the flat (N,) array the update reads; ValueError for anything else."""
        from .model import Gradients

        if isinstance(grads, Gradients):
            grads = grads.flat
        elif isinstance(grads, dict):
            raise ValueError("AdamW.step needs the Gradients that model.backward returns (or its .flat "
                             "buffer), got a plain dict")
        if not isinstance(grads, np.ndarray):
            raise ValueError(f"AdamW.step needs a Gradients or a flat gradient array, got {type(grads).__name__}")
        expected = self.params
        if grads.shape != expected.shape or grads.dtype != expected.dtype:
            raise ValueError(f"gradient has shape {grads.shape} and dtype {grads.dtype}; this optimizer's model "
                             f"needs a flat array of shape {expected.shape} and dtype {expected.dtype}")
        if not grads.flags.c_contiguous or not grads.flags.writeable:
            raise ValueError("the gradient array must be contiguous and writeable (it is clipped in place)")
        return grads

    def state_dict(self):
        """{"m": (N,) array, "v": (N,) array, "step": int}: everything needed to resume exactly.

        The arrays are the optimizer's own (not copies).
        """
        return {"m": self.m, "v": self.v, "step": self.step_count}

    def load_state_dict(self, state):
        """Restore a state_dict(): m and v are copied in, the step count taken."""
        if not isinstance(state, dict) or not {"m", "v", "step"} <= state.keys():
            raise ValueError("an AdamW state must be a dict with 'm', 'v' and 'step'")
        for name in ("m", "v"):
            a = np.asarray(state[name])
            if a.shape != self.params.shape or a.dtype != self.params.dtype:
                raise ValueError(f"optimizer state {name!r} has shape {a.shape} {a.dtype}, "
                                 f"expected {self.params.shape} {self.params.dtype}")
            getattr(self, name)[...] = a
        self.step_count = int(state["step"])


# ------------------------------------------------------------ accumulation
def accumulate_gradients(model, batches, grad, scratch=None, rng=None, label_smoothing=0.0, parallel=None):
    """Mean gradient over micro-batches, written into grad (N,); returns the mean loss.

    batches: a list of (x, y) micro-batches of equal size.  With equal
    sizes the mean of per-batch mean losses is the mean over all tokens, so
    k micro-batches of B give the gradient of one batch of k*B, in 1/k of
    the activation memory.  scratch (N,) is reused for batches after the
    first.  rng turns dropout on.  parallel: a npgpt.parallel.DataParallel
    that splits each micro-batch across the cores; None runs it in one piece.
    """
    k = len(batches)
    total = 0.0
    for i, (x, y) in enumerate(batches):
        if i > 0 and scratch is None:
            scratch = np.empty_like(grad)
        out = grad if i == 0 else scratch
        if parallel is not None:
            total += parallel.loss_and_grad(x, y, out, rng=rng, label_smoothing=label_smoothing)
        else:
            loss, cache = model.forward(x, y, rng=rng, label_smoothing=label_smoothing)
            total += loss
            model.backward(cache, out=out)
            del cache
        if i > 0:
            grad += scratch
    if k > 1:
        grad *= 1.0 / k
    return total / k


# ------------------------------------------------------------ schedules
class Schedule:
    """Learning rate as a function of the iteration, with a linear warmup.

    lr(it) is the rate for (0-based) iteration it.  Only reduce-on-plateau
    has state that changes while training; every schedule saves and loads
    its state so a resumed run continues exactly.
    """

    def __init__(self, lr, min_lr=0.0, warmup_iters=0):
        self.base_lr, self.min_lr, self.warmup_iters = float(lr), float(min_lr), int(warmup_iters)

    def lr(self, it):
        if it < self.warmup_iters:  # linear ramp from lr/warmup to lr
            return self.base_lr * (it + 1) / self.warmup_iters
        return self.after_warmup(it)

    def after_warmup(self, it):
        raise NotImplementedError

    def observe(self, val_loss):
        """Called with each scheduled validation loss; only reduce-on-plateau uses it."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ConstantSchedule(Schedule):
    def after_warmup(self, it):
        return self.base_lr


# Where a cosine reaches min_lr when not told: `npgpt train`'s default run length (max_iters).
DEFAULT_DECAY_ITERS = 2000


class CosineSchedule(Schedule):
    """Half a cosine from lr down to min_lr between warmup_iters and decay_iters, then min_lr."""

    def __init__(self, lr, min_lr=0.0, warmup_iters=0, decay_iters=DEFAULT_DECAY_ITERS):
        super().__init__(lr, min_lr, warmup_iters)
        self.decay_iters = int(decay_iters)

    def after_warmup(self, it):
        span = max(self.decay_iters - self.warmup_iters, 1)
        progress = min(max((it - self.warmup_iters) / span, 0.0), 1.0)  # 0 -> 1
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.base_lr - self.min_lr)


class StepSchedule(Schedule):
    """lr * gamma^(number of completed `every`-iteration periods), floored at min_lr."""

    def __init__(self, lr, min_lr=0.0, warmup_iters=0, every=1000, gamma=0.5):
        super().__init__(lr, min_lr, warmup_iters)
        self.every, self.gamma = int(every), float(gamma)

    def after_warmup(self, it):
        return max(self.min_lr, self.base_lr * self.gamma ** (it // self.every))


class PlateauSchedule(Schedule):
    """Multiply the rate by gamma after `patience` validations without improvement; floor min_lr.

    An improvement is a val loss below best * (1 - threshold).
    """

    def __init__(self, lr, min_lr=0.0, warmup_iters=0, patience=2, gamma=0.5, threshold=1e-3):
        super().__init__(lr, min_lr, warmup_iters)
        self.patience, self.gamma, self.threshold = int(patience), float(gamma), float(threshold)
        self.current = self.base_lr
        self.best = math.inf
        self.bad_evals = 0

    def after_warmup(self, it):
        return self.current

    def observe(self, val_loss):
        if val_loss < self.best * (1.0 - self.threshold):
            self.best, self.bad_evals = float(val_loss), 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.current = max(self.min_lr, self.current * self.gamma)
            self.bad_evals = 0

    def state_dict(self):
        # JSON has no infinity: None stands for "no validation yet"
        return {"current": self.current, "best": None if math.isinf(self.best) else self.best,
                "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.current = float(state["current"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])


SCHEDULES = ("constant", "cosine", "step", "plateau")


def make_schedule(name, lr, min_lr=0.0, warmup_iters=0, decay_iters=None, step_every=1000, gamma=0.5, patience=2):
    """A schedule by name: constant | cosine | step | plateau; every argument but lr has a default.

    decay_iters None: the cosine reaches min_lr at iteration 2000 (`npgpt train`'s default run).

    >>> s = make_schedule("cosine", lr=1e-3)
    >>> s.lr(0), s.lr(1000), s.lr(2000)
    (0.001, 0.0005, 0.0)
    """
    if decay_iters is None:
        decay_iters = DEFAULT_DECAY_ITERS
    if name == "constant":
        return ConstantSchedule(lr, min_lr, warmup_iters)
    if name == "cosine":
        return CosineSchedule(lr, min_lr, warmup_iters, decay_iters)
    if name == "step":
        return StepSchedule(lr, min_lr, warmup_iters, step_every, gamma)
    if name == "plateau":
        return PlateauSchedule(lr, min_lr, warmup_iters, patience, gamma)
    raise ValueError(f"unknown learning-rate schedule {name!r} (expected one of {', '.join(SCHEDULES)})")
