"""Finite-difference gradient checking, public API.  Background: docs/gradcheck.md

Check a layer of your own in three lines:

    from npgpt import gradcheck
    report = gradcheck.check_layer(my_forward, my_backward, {"x": x, "w": w})
    print(report); assert report.passed

`check_layer` draws a random upstream gradient `dout`, and compares the
layer's `backward(dout, cache)` against central differences of the scalar
sum(forward(...) * dout), in float64.  Projecting on a random dout checks
every output at once for the price of one scalar function.
"""
from dataclasses import dataclass, field

import numpy as np

# The five-point central difference
#   f'(x) ~ (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / 12h
# has truncation error O(h^4) instead of the two-point rule's O(h^2), so h can
# be large (1e-3), which makes the rounding error (~1e-16 / h) small too.
DEFAULT_EPS = 1e-3  # see docs/gradcheck.md
# A whole model composes many layers, so its loss has larger high-order
# derivatives: at 1e-3 the O(h^4) truncation reached 2.4e-6 on one entry in
# an exhaustive check; 5e-4 keeps both truncation and rounding below 2e-7.
MODEL_EPS = 5e-4
DEFAULT_TOL = 1e-6
TINY = 1e-12  # floor of the relative error's denominator, so 0 vs 0 counts as exact
# A gradient entry 100,000 times smaller than the largest gradient in the
# check (GELU's slope near x = -0.75, attention's key bias, which gets exactly
# zero) is dominated by the differences' rounding noise; such entries are
# judged against this fraction of the largest instead of their own size.
NOISE_FLOOR = 1e-5


def numerical_gradient(f, x, dout=1.0, eps=DEFAULT_EPS, indices=None):
    """Central-difference gradient of sum(f(x) * dout) with respect to x.

    f: callable taking x and returning an array (or a scalar).  x is
    perturbed in place, one entry at a time, and restored afterwards.
    indices: flat indices to estimate (default: all); the others stay 0.
    returns an array shaped like x, each entry from the five-point stencil
    (g(x-2h) - 8 g(x-h) + 8 g(x+h) - g(x+2h)) / 12h,  g = sum(f * dout), h = eps.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat_x = x.reshape(-1)  # a view: writing it perturbs x
    if not np.shares_memory(flat_x, x):
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")
    indices = range(x.size) if indices is None else indices
    for i in indices:
        original = flat_x[i]
        outputs = {}
        for step in (-2, -1, 1, 2):
            flat_x[i] = original + step * eps
            outputs[step] = np.array(f(x), dtype=np.float64)  # a copy: f may reuse its buffer
        flat_x[i] = original
        # Subtract the outputs pairwise *before* summing against dout: outputs
        # that x[i] does not touch then cancel exactly instead of adding noise.
        near = outputs[1] - outputs[-1]
        far = outputs[2] - outputs[-2]
        grad.reshape(-1)[i] = np.sum((8.0 * near - far) * dout) / (12.0 * eps)
    return grad


def relative_error(analytic, numerical, tiny=TINY):
    """max over entries of |a - n| / max(|a| + |n|, tiny).

    Scale-free: 1e-7 means agreement to about 7 significant digits whether
    the gradient is 1e3 or 1e-3.  tiny keeps two exact zeros at error 0.
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numerical, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient shape {a.shape} does not match numerical shape {n.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)))


@dataclass
class CheckResult:
    layer: str
    input: str
    max_rel_error: float
    tol: float

    @property
    def passed(self):
        return bool(self.max_rel_error < self.tol)  # NaN fails


@dataclass
class GradcheckReport:
    results: list = field(default_factory=list)

    @property
    def passed(self):
        return all(r.passed for r in self.results)

    def extend(self, other):
        self.results.extend(other.results)
        return self

    def __str__(self):
        rows = [("layer", "input", "max rel error", "result")]
        rows += [(r.layer, r.input, f"{r.max_rel_error:.2e}", "pass" if r.passed else "FAIL") for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _sample_indices(size, max_entries, rng):
    """All flat indices, or max_entries of them drawn at random."""
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return rng.choice(size, size=max_entries, replace=False)


def compare(name, pairs, tol=DEFAULT_TOL, floor=NOISE_FLOOR):
    """pairs: {input name: (analytic, numerical)} -> GradcheckReport.

    Entries smaller than floor * (the largest numerical gradient of any input)
    are judged against that level rather than their own size: there the
    difference quotient is rounding noise (see docs/gradcheck.md).
    """
    scale = max((float(np.max(np.abs(n))) for _, n in pairs.values() if np.size(n)), default=0.0)
    tiny = max(floor * scale, TINY)
    report = GradcheckReport()
    for key, (analytic, numerical) in pairs.items():
        report.results.append(CheckResult(name, key, relative_error(analytic, numerical, tiny), tol))
    return report


def check_layer(forward, backward, inputs, name="layer", eps=DEFAULT_EPS, tol=DEFAULT_TOL,
                max_entries=None, seed=0, floor=NOISE_FLOOR):
    """Compare backward against central differences for every float input.

    forward(*inputs) -> (out, cache);  backward(dout, cache) -> grads.
    inputs: a dict {name: value} (or a list) of forward's positional
    arguments.  Float arrays are copied to float64 and checked; integer
    arrays (token ids) and plain Python values (n_head, p) are passed
    through.  backward must return one gradient per float array or None
    argument, in order (None for a None argument, such as a missing bias).
    Close over anything that must not change between calls, such as a
    dropout generator: `lambda x: dropout.forward(x, 0.5, np.random.default_rng(0))`.
    max_entries: check a random subset of each input's entries (for speed).
    returns a GradcheckReport with one row per checked input.
    """
    if not isinstance(inputs, dict):
        inputs = {f"input{i}": v for i, v in enumerate(inputs)}
    rng = np.random.default_rng(seed)
    args = {k: _as_float64(v) for k, v in inputs.items()}
    slots = [k for k, v in args.items() if v is None or (isinstance(v, np.ndarray) and v.dtype.kind == "f")]

    out, cache = forward(*args.values())
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout if np.ndim(out) else float(dout), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(slots):
        raise ValueError(f"{name}: backward returned {len(grads)} gradients for {len(slots)} inputs {slots}")

    def f(_):
        return forward(*args.values())[0]

    pairs = {}
    for key, grad in zip(slots, grads):
        x = args[key]
        if x is None:
            if grad is not None:
                raise ValueError(f"{name}: got a gradient for {key}, which was None")
            continue
        if grad is None or np.shape(grad) != x.shape:
            raise ValueError(f"{name}: gradient for {key} has shape {np.shape(grad)}, expected {x.shape}")
        sel = _sample_indices(x.size, max_entries, rng)
        numerical = numerical_gradient(f, x, dout, eps, sel).reshape(-1)[sel]
        pairs[key] = (np.asarray(grad, dtype=np.float64).reshape(-1)[sel], numerical)
    return compare(name, pairs, tol, floor)


def check_model(model, idx, targets, name="model", eps=MODEL_EPS, tol=DEFAULT_TOL,
                max_entries=8, seed=0, dropout_seed=None, floor=NOISE_FLOOR, **forward_kwargs):
    """Check every parameter tensor of a GPT against central differences.

    The model should be float64.  Each tensor gets max_entries random
    entries (all of them if it is smaller).  dropout_seed: if given,
    dropout is on, with the same mask replayed at every evaluation.
    forward_kwargs go to model.forward (label_smoothing, ignore_index).
    """
    if model.dtype != np.float64:
        raise ValueError("check_model needs a float64 model (GPTConfig(dtype='float64'))")
    rng = np.random.default_rng(seed)

    def loss(_=None):
        dropout_rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
        return model.forward(idx, targets, rng=dropout_rng, **forward_kwargs)[0]

    dropout_rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
    grads = model.backward(model.forward(idx, targets, rng=dropout_rng, **forward_kwargs)[1])
    pairs = {}
    for pname, p in model.params.items():
        sel = _sample_indices(p.size, max_entries, rng)
        numerical = numerical_gradient(loss, p, 1.0, eps, sel).reshape(-1)[sel]
        pairs[pname] = (grads[pname].reshape(-1)[sel], numerical)
    return compare(name, pairs, tol, floor)


def _as_float64(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return np.array(value, dtype=np.float64)  # a private, contiguous float64 copy
    return value
