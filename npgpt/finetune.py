"""Fine-tuning helpers: which parameters train, an optimizer for those alone, LoRA on and off.

    model, tok = npgpt.pretrained.load_for_finetuning("gpt2/", lora_rank=8, lora_targets="c_attn,c_proj")
    mask = freeze(model, None)                  # with adapters: the adapters alone train
    opt = TrainableAdamW(model, mask, weight_decay=0.0)
    ...  grads = model.backward(cache, out=grad); opt.step(grad, lr)
    merged = merge_lora(model)                  # a plain GPT with the adapters folded in

Freezing is a mask over the model's flat parameter buffer.  `freeze` also
tells the model which parameters are frozen, so that its backward skips
their weight-gradient products; the optimizer reads only the trainable
part, keeps its moments m and v only for it, and never writes a frozen
entry, so frozen weights stay equal bit for bit.  For GPT-2 124M with rank-8 adapters on c_attn and
c_proj, the moments shrink from 2 x 124M floats to 2 x 0.6M.

Freeze specs (`npgpt train --freeze SPEC`) name the base weights that
train; LoRA adapters, when the model has them, always train:

    none                   every parameter trains (the default without adapters)
    lora                   no base weight trains (the default with adapters)
    all-but-last:N         the last N blocks and ln_f train (N = 0: ln_f alone)
    all-but-head-and-ln    the tied head/token embedding wte and every layer norm train
    all-but-ln             every layer norm trains, nothing else
"""
import math

import numpy as np

from .errors import UserError
from .model import GPT
from .optim import DEFAULT_BETAS, AdamW, clip_by_global_norm, decay_mask, kernels_for

FREEZE_SPECS = ("none", "lora", "all-but-last:N", "all-but-head-and-ln", "all-but-ln")


def _is_layernorm(name):
    return ".ln_" in name or name.startswith("ln_f.")


def trainable_names(model, freeze_spec=None):
    """The names of the parameters that train under freeze_spec (see the module docstring)."""
    names = list(model.shapes)
    adapters = {n for n in names if ".lora_" in n}
    adapters |= set(getattr(model, "always_trained", ()))  # a task's new head (npgpt/classify.py's score.weight)
    base = [n for n in names if n not in adapters]
    spec = (freeze_spec or ("lora" if adapters else "none")).strip()
    if spec == "none":
        chosen = set(base)
    elif spec == "lora":
        if not adapters:
            raise UserError("--freeze lora needs LoRA adapters (--lora-rank > 0); without them nothing would train")
        chosen = set()
    elif spec.startswith("all-but-last:"):
        count = spec.removeprefix("all-but-last:")
        n_layer = model.config.n_layer
        if not count.isdigit() or int(count) > n_layer:
            raise UserError(f"--freeze {spec}: N must be an integer in 0..{n_layer} (the model's n_layer)")
        first = n_layer - int(count)
        chosen = {n for n in base if n.startswith("ln_f.")
                  or (n.startswith("h.") and int(n.split(".")[1]) >= first)}
    elif spec == "all-but-head-and-ln":
        chosen = {n for n in base if n == "wte.weight" or _is_layernorm(n)}
    elif spec == "all-but-ln":
        chosen = {n for n in base if _is_layernorm(n)}
    else:
        raise UserError(f"unknown --freeze {spec!r}; choose from {', '.join(FREEZE_SPECS)}")
    return [n for n in names if n in chosen or n in adapters]


def trainable_mask(model, freeze_spec=None):
    """(num_params,) bool over model.flat_params: True where a parameter trains under freeze_spec."""
    keep = set(trainable_names(model, freeze_spec))
    parts = [np.full(math.prod(shape), name in keep) for name, shape in model.shapes.items()]
    return np.concatenate(parts)


def freeze(model, freeze_spec=None):
    """Mark the parameters freeze_spec does not train as frozen on model; returns the trainable mask.

    model.backward then leaves their gradients at zero and skips the
    products that only they need (dW of a frozen linear layer, of the tied
    head, the embedding's scatter), which is where LoRA saves time, not
    just memory.  Use the mask for TrainableAdamW.
    """
    keep = set(trainable_names(model, freeze_spec))
    model.frozen = frozenset(n for n in model.shapes if n not in keep)
    return trainable_mask(model, freeze_spec)


def mask_ranges(mask):
    """A bool mask -> [(start, stop), ...], its runs of True: trainable parameters lie in few long runs.

    >>> mask_ranges(np.array([True, True, False, True]))
    [(0, 2), (3, 4)]
    """
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


class TrainableAdamW(AdamW):
    """AdamW over the trainable parameters only: moments for them alone, frozen entries never written.

    The same update, clipping and state format as optim.AdamW, over the
    concatenation of the mask's runs; the gradient norm for clipping is
    the trainable parameters' norm.  `trainable`: a bool mask from
    trainable_mask, or None for every parameter.
    """

    def __init__(self, model, trainable=None, betas=DEFAULT_BETAS, eps=1e-8, weight_decay=0.1, grad_clip=1.0):
        self.params = model.flat_params
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay, self.grad_clip = float(eps), float(weight_decay), float(grad_clip)
        mask = np.ones(self.params.size, bool) if trainable is None else np.asarray(trainable, bool)
        if mask.shape != self.params.shape:
            raise ValueError(f"trainable mask has shape {mask.shape}, the model has {self.params.shape} parameters")
        self.ranges = mask_ranges(mask)
        if not self.ranges:
            raise UserError("nothing to train: every parameter is frozen")
        self.size = sum(b - a for a, b in self.ranges)
        self.m = np.zeros(self.size, self.params.dtype)
        self.v = np.zeros(self.size, self.params.dtype)
        full_decay = decay_mask(model.shapes)
        self.decay = np.concatenate([full_decay[a:b] for a, b in self.ranges])
        self.step_count = 0
        self._adamw_step, self._global_norm = kernels_for(model.config.backend)

    def _runs(self):
        """(start, stop, offset into m/v) per run of trainable parameters."""
        offset = 0
        for a, b in self.ranges:
            yield a, b, offset
            offset += b - a

    def step(self, grads, lr):
        """Clip the trainable part of the gradient in place, update the trainable parameters; returns its
        pre-clip norm.  grads: the model's Gradients or their flat (N,) buffer, as for AdamW."""
        grad = self._flat_gradient(grads)
        norm = math.sqrt(sum(self._global_norm(grad[a:b]) ** 2 for a, b in self.ranges))
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; training diverged (try a lower --lr)")
        for a, b in self.ranges:
            clip_by_global_norm(grad[a:b], self.grad_clip, norm)
        self.step_count += 1
        for a, b, o in self._runs():
            n = b - a
            self._adamw_step(self.params[a:b], grad[a:b], self.m[o:o + n], self.v[o:o + n], self.decay[o:o + n],
                             float(lr), self.beta1, self.beta2, self.eps, self.weight_decay, self.step_count)
        return norm

    def load_state_dict(self, state):
        """Restore a state_dict() ({"m", "v", "step"}, m and v over the trainable entries only)."""
        if not isinstance(state, dict) or not {"m", "v", "step"} <= state.keys():
            raise ValueError("an AdamW state must be a dict with 'm', 'v' and 'step'")
        for name in ("m", "v"):
            a = np.asarray(state[name])
            if a.shape != (self.size,) or a.dtype != self.params.dtype:
                raise ValueError(f"optimizer state {name!r} has shape {a.shape} {a.dtype}, expected "
                                 f"({self.size},) {self.params.dtype} (the trainable parameters)")
            getattr(self, name)[...] = a
        self.step_count = int(state["step"])


def add_lora(model, rank, alpha=16.0, targets="attn.c_attn,attn.c_proj", seed=0):
    """A copy of model with fresh LoRA adapters (B = 0: the same outputs) on `targets` of every block."""
    if model.config.lora_rank:
        raise UserError("this model already has LoRA adapters; merge them first (merge_lora)")
    fields = {**model.config.to_dict(), "lora_rank": rank, "lora_alpha": alpha, "lora_targets": targets}
    try:
        adapted = GPT(type(model.config)(**fields), init_weights=False)
    except ValueError as e:
        raise UserError(str(e)) from None
    adapted.flat_params[: model.num_params] = model.flat_params  # base weights: the same prefix of the buffer
    adapted.init_adapters(np.random.default_rng(seed))
    return adapted


def merge_lora(model):
    """A plain GPT (no adapters) whose weights are w + scale * a @ b: the same function, one matmul per layer."""
    from .pretrained import export_params

    if not model.config.lora_rank:
        return model
    plain = GPT(type(model.config)(**{**model.config.to_dict(), "lora_rank": 0}), init_weights=False)
    merged = export_params(model, merge_lora=True)
    for name, p in plain.params.items():
        p[...] = merged[name]
    return plain
