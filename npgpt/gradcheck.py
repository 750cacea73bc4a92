"""Finite-difference gradient checking, public API.  Background: docs/gradcheck.md

Check a layer of your own in three lines:

    from npgpt import gradcheck
    report = gradcheck.check_layer(my_forward, my_backward, {"x": x, "w": w})
    print(report); assert report.passed

`check_layer` draws two random upstream gradients `dout` and compares the
layer's `backward(dout, cache)` against central differences of the scalar
sum(forward(...) * dout), in float64.  Projecting on a random dout checks
every output at once for the price of one scalar function.  The douts come
from their own random stream and never resemble an input (a dout equal to x
would pass a backward that uses x in its place); backward gets a copy of
each.  A failing row names its worst entry: index, analytic and numerical
value, and their ratio (a "sum instead of a mean" bug shows its factor).
"""
import math
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


# The upstream gradients come from their own random stream, keyed apart from
# any seed a caller might draw inputs from: with default_rng(seed) for both, a
# caller's first input *was* dout, and a backward that used x where dout
# belongs passed.  The key is "gradc" in ASCII.
DOUT_STREAM = 0x6772616463
N_DOUTS = 2  # a backward must agree with the differences for two different douts
# A dout this correlated with an input (or with the other dout) is redrawn:
# sum(out * dout) must not hide a bug that mixes up dout and an input.
MAX_CORRELATION = 0.5


def numerical_gradient(f, x, dout=1.0, eps=DEFAULT_EPS, indices=None):
    """Central-difference gradient of sum(f(x) * dout) with respect to x.

    f: callable taking x and returning an array (or a scalar).  x is
    perturbed in place, one entry at a time, and restored afterwards.
    indices: flat indices to estimate (default: all); the others stay 0.
    returns an array shaped like x, each entry from the five-point stencil
    (g(x-2h) - 8 g(x-h) + 8 g(x+h) - g(x+2h)) / 12h,  g = sum(f * dout), h = eps.
    """
    return numerical_gradients(f, x, [dout], eps, indices)[0]


def numerical_gradients(f, x, douts, eps=DEFAULT_EPS, indices=None):
    """numerical_gradient for several douts at once: one gradient per dout,
    all from the same four evaluations of f per entry."""
    grads = [np.zeros(x.shape, dtype=np.float64) for _ in douts]
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
        for grad, dout in zip(grads, douts):
            grad.reshape(-1)[i] = np.sum((8.0 * near - far) * dout) / (12.0 * eps)
    return grads


def relative_error(analytic, numerical, tiny=TINY):
    """max over entries of |a - n| / max(|a| + |n|, tiny).

    Scale-free: 1e-7 means agreement to about 7 significant digits whether
    the gradient is 1e3 or 1e-3.  tiny keeps two exact zeros at error 0.
    """
    errors = _relative_errors(analytic, numerical, tiny)
    return float(np.max(errors)) if errors.size else 0.0


def _relative_errors(analytic, numerical, tiny):
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numerical, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient shape {a.shape} does not match numerical shape {n.shape}")
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)


@dataclass
class CheckResult:
    """One row of a report: one input (or parameter) of one layer.

    index, analytic, numerical: the worst entry (the one with the largest
    relative error), its index into the input's shape and both values there.
    factor: analytic / numerical if it is the same on every checked entry
    that is not at noise level (a constant-factor bug), else None.
    dout: which upstream gradient (1 or 2) gave the worst entry.
    """
    layer: str
    input: str
    max_rel_error: float
    tol: float
    index: tuple = None
    analytic: float = None
    numerical: float = None
    factor: float = None
    dout: int = None

    @property
    def passed(self):
        return bool(self.max_rel_error < self.tol)  # NaN fails

    @property
    def ratio(self):
        """analytic / numerical at the worst entry (inf if only the numerical one is 0)."""
        if self.analytic is None or self.numerical is None:
            return None
        if self.numerical == 0.0:
            return float("nan") if self.analytic == 0.0 else math.copysign(math.inf, self.analytic)
        return self.analytic / self.numerical

    def where(self):
        """'w[2, 1]': the worst entry, named as a learner would index it."""
        if self.index is None:
            return self.input
        return f"{self.input}[{', '.join(str(i) for i in self.index)}]" if self.index else self.input

    def detail(self):
        """One line on the worst entry."""
        if self.analytic is None:
            return ""
        line = (f"worst entry {self.where()}: analytic {self.analytic:.6g}, numerical {self.numerical:.6g}, "
                f"ratio {format_ratio(self.ratio)}")
        if self.dout is not None:
            line += f" (with dout {self.dout} of {N_DOUTS})"
        return line

    def hint(self):
        """What a failing row's numbers suggest, or '' (for a passing row too)."""
        if self.passed or self.analytic is None:
            return ""
        if not math.isfinite(self.analytic):
            return "the analytic gradient is not finite"
        if self.factor is not None and abs(self.factor + 1.0) < 1e-3:
            return "every entry has the wrong sign"
        if self.factor is not None:
            return (f"every entry is off by the same factor {self.factor:.6g} "
                    "(a constant: a sum instead of a mean, a missing 1/N or scale?)")
        if self.analytic == 0.0:
            return "the analytic gradient is 0 here but the numerical one is not (a missing path or sum?)"
        if self.numerical == 0.0:
            return ("the numerical gradient is exactly 0 here (this entry cannot move the output) but the "
                    "analytic one is not (gradient leaking through a mask, or into a path that does not exist?)")
        return ""


@dataclass
class GradcheckReport:
    results: list = field(default_factory=list)

    @property
    def passed(self):
        return all(r.passed for r in self.results)

    @property
    def failures(self):
        return [r for r in self.results if not r.passed]

    def extend(self, other):
        self.results.extend(other.results)
        return self

    def __str__(self):
        return self.format()

    def format(self, verbose=False, results=None):
        """The table: one row per input; under each failing row (every row
        if verbose) a line on its worst entry."""
        results = self.results if results is None else results
        rows = [("layer", "input", "max rel error", "result")]
        rows += [(r.layer, r.input, f"{r.max_rel_error:.2e}", "pass" if r.passed else "FAIL") for r in results]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        indent = " " * (widths[0] + 2)
        out = lines[:2]
        for r, line in zip(results, lines[2:]):
            out.append(line)
            if (verbose or not r.passed) and r.detail():
                out.append(indent + "-> " + r.detail())
            if r.hint():
                out.append(indent + "-> " + r.hint())
        return "\n".join(out)


def format_ratio(ratio):
    """A ratio for people: 2.000, -1.000, 0, inf, 1.234e+05."""
    if ratio == 0.0:
        return "0"
    if math.isfinite(ratio) and ratio != 0.0 and not 1e-3 <= abs(ratio) < 1e4:
        return f"{ratio:.3e}"
    return f"{ratio:.3f}" if math.isfinite(ratio) else str(ratio)


def _sample_indices(size, max_entries, rng):
    """All flat indices, or max_entries of them drawn at random."""
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return rng.choice(size, size=max_entries, replace=False)


def compare(name, pairs, tol=DEFAULT_TOL, floor=NOISE_FLOOR, where=None):
    """pairs: {input name: (analytic, numerical)} -> GradcheckReport.

    Entries smaller than floor * (the largest numerical gradient of any input)
    are judged against that level rather than their own size: there the
    difference quotient is rounding noise (see docs/gradcheck.md).
    where: optional {input name: (flat positions, shape)} when the pairs hold
    a sample of an input's entries, so the worst entry's index is reported
    in the input's own shape (default: the index into the pair's arrays).
    """
    scale = max((float(np.max(np.abs(n))) for _, n in pairs.values() if np.size(n)), default=0.0)
    tiny = max(floor * scale, TINY)
    report = GradcheckReport()
    for key, (analytic, numerical) in pairs.items():
        positions, shape = (where or {}).get(key, (None, np.shape(analytic)))
        report.results.append(_row(name, key, analytic, numerical, tiny, tol, positions, shape))
    return report


def _row(layer, key, analytic, numerical, tiny, tol, positions, shape):
    errors = _relative_errors(analytic, numerical, tiny).reshape(-1)
    if errors.size == 0:
        return CheckResult(layer, key, 0.0, tol)
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    n = np.asarray(numerical, dtype=np.float64).reshape(-1)
    k = int(np.argmax(np.where(np.isnan(errors), np.inf, errors)))  # a NaN is the worst entry
    flat = k if positions is None else int(positions[k])
    index = tuple(int(i) for i in np.unravel_index(flat, shape))
    return CheckResult(layer, key, float(np.max(errors)), tol, index, float(a[k]), float(n[k]),
                       _common_factor(a, n, tiny))


def _common_factor(a, n, tiny):
    """analytic / numerical if it is one constant over every entry above the noise level, else None."""
    big = (np.abs(n) > tiny) & np.isfinite(a)
    if np.count_nonzero(big) < 2:
        return None
    ratios = a[big] / n[big]
    middle = float(np.median(ratios))
    if middle == 0.0 or np.max(np.abs(ratios - middle)) > 1e-4 * abs(middle):
        return None
    return middle


def upstream_gradients(shape, inputs=(), seed=0, n=N_DOUTS):
    """n random upstream gradients for an output of `shape`.

    They come from their own stream (DOUT_STREAM), and each is redrawn while
    it is too correlated with one of `inputs` of the same size, or with an
    earlier dout: a dout that equals an input, or a multiple of one, would
    let a backward that uses the input in dout's place pass.  A scalar dout
    (a loss) is kept away from 0, where every gradient would be noise.
    """
    rng = np.random.default_rng([seed, DOUT_STREAM])
    douts = []
    while len(douts) < n:
        for _ in range(1000):
            dout = rng.standard_normal(shape)
            if not (np.ndim(dout) == 0 and abs(dout) < 0.3) and not any(
                    _resembles(dout, other) for other in [*inputs, *douts]):
                break
        douts.append(dout)
    return douts


def _resembles(a, b):
    """True if a and b (same size) are nearly proportional or affinely related."""
    if np.size(a) != np.size(b) or np.size(a) < 2:
        return False
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    # Small arrays correlate by chance; for them only a near-exact relation counts.
    limit = MAX_CORRELATION if a.size >= 8 else 0.999
    for x, y in ((a, b), (a - a.mean(), b - b.mean())):  # cosine, then Pearson correlation
        norm = np.linalg.norm(x) * np.linalg.norm(y)
        if norm > 0 and abs(float(x @ y)) / norm > limit:
            return True
    return False


def check_layer(forward, backward, inputs, name="layer", eps=DEFAULT_EPS, tol=DEFAULT_TOL,
                max_entries=None, seed=0, floor=NOISE_FLOOR):
    """Compare backward against central differences for every float input.

    forward(*inputs) -> (out, cache);  backward(dout, cache) -> grads.
    inputs: a dict {name: value} (or a list) of forward's positional
    arguments.  Float arrays are copied to float64 and checked; integer
    arrays (token ids) and plain Python values (n_head, p) are passed
    through.  backward must return one gradient per float array or None
    argument, in order (None for a None argument, such as a missing bias),
    as a tuple or a list, or a bare array when there is one.
    Close over anything that must not change between calls, such as a
    dropout generator: `lambda x: dropout.forward(x, 0.5, np.random.default_rng(0))`.

    The check runs twice, with two random douts drawn from their own stream
    (see upstream_gradients); each call gets a fresh forward on fresh copies
    of the inputs and its own copy of dout, so a backward may overwrite both
    (as an in-place cross-entropy backward does).  A row reports the worse
    of the two.
    max_entries: check a random subset of each input's entries (for speed).
    returns a GradcheckReport with one row per checked input.
    """
    if not isinstance(inputs, dict):
        inputs = {f"input{i}": v for i, v in enumerate(inputs)}
    args = {k: _as_float64(v) for k, v in inputs.items()}
    slots = [k for k, v in args.items() if v is None or _is_float_array(v)]
    checked = [k for k in slots if args[k] is not None]
    _refuse_vacuous_check(name, inputs, args, checked)

    out = _run_forward(forward, _fresh_copies(args), name)[0]
    if np.size(out) == 0:
        raise ValueError(f"{name}: forward returned an empty output, so there is nothing to check")
    douts = upstream_gradients(np.shape(out), [np.asarray(out), *(args[k] for k in checked)], seed)
    analytic = [_analytic_gradients(forward, backward, args, slots, dout, name) for dout in douts]

    def f(_):
        return _run_forward(forward, args.values(), name)[0]

    rng = np.random.default_rng(seed)  # which entries to sample
    pairs = [{} for _ in douts]
    where = {}
    for key in checked:
        x = args[key]
        sel = _sample_indices(x.size, max_entries, rng)
        numericals = numerical_gradients(f, x, douts, eps, sel)
        for pair, grads, numerical in zip(pairs, analytic, numericals):
            pair[key] = (grads[key].reshape(-1)[sel], numerical.reshape(-1)[sel])
        where[key] = (sel, x.shape)
    reports = [compare(name, pair, tol, floor, where) for pair in pairs]
    return _worst_of(reports)


def _run_forward(forward, values, name):
    result = forward(*values)
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return result
    got = type(result).__name__
    if isinstance(result, (tuple, list)):
        got += f" of length {len(result)}"
    raise ValueError(f"{name}: forward must return a pair (out, cache), got {got}")


def _refuse_vacuous_check(name, inputs, args, checked):
    """A check with no float entry to perturb would pass with zero rows: refuse it."""
    if any(args[k].size for k in checked):
        return
    if checked:
        raise ValueError(f"{name}: every float input is empty ({', '.join(checked)}), so there is nothing to check")
    kinds = ", ".join(f"{k}: {_describe_value(v)}" for k, v in inputs.items()) or "no inputs"
    raise ValueError(f"{name}: nothing to check: no floating-point array among the inputs ({kinds}); "
                     "only float arrays are checked (integer arrays and Python values are passed through), "
                     "so pass e.g. x.astype(float)")


def _describe_value(v):
    if isinstance(v, np.ndarray):
        return f"{v.dtype} array"
    return type(v).__name__


def _analytic_gradients(forward, backward, args, slots, dout, name):
    """{input name: float64 gradient} from backward(copy of dout, fresh cache)."""
    fresh = _fresh_copies(args)
    out, cache = _run_forward(forward, fresh, name)  # backward may write into what forward cached
    for key, before, after in zip(args, args.values(), fresh):
        if _is_float_array(before) and not np.array_equal(before, after, equal_nan=True):
            raise ValueError(f"{name}: forward changed its input {key} in place; finite differences need a "
                             "forward that leaves its inputs alone")
    grads = backward(np.array(dout) if np.ndim(out) else float(dout), cache)
    grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
    if len(grads) != len(slots):
        raise ValueError(f"{name}: backward returned {len(grads)} gradients for {len(slots)} inputs {slots}")
    result = {}
    for key, grad in zip(slots, grads):
        x = args[key]
        if x is None:
            if grad is not None:
                raise ValueError(f"{name}: got a gradient for {key}, which was None")
            continue
        if grad is None:
            raise ValueError(f"{name}: backward returned None for {key}, expected a gradient of shape {x.shape}")
        if np.shape(grad) != x.shape:
            raise ValueError(f"{name}: gradient for {key} has shape {np.shape(grad)}, expected {x.shape}")
        result[key] = np.array(grad, dtype=np.float64)  # a copy: backward may reuse its buffers
    return result


def _worst_of(reports):
    """One report from several runs of the same check: each row the worst of its runs."""
    merged = GradcheckReport()
    for rows in zip(*(r.results for r in reports)):
        errors = [row.max_rel_error for row in rows]
        worst = int(np.argmax([math.inf if math.isnan(e) else e for e in errors]))
        rows[worst].dout = worst + 1
        merged.results.append(rows[worst])
    return merged


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
    pairs, where = {}, {}
    for pname, p in model.params.items():
        sel = _sample_indices(p.size, max_entries, rng)
        numerical = numerical_gradient(loss, p, 1.0, eps, sel).reshape(-1)[sel]
        pairs[pname] = (grads[pname].reshape(-1)[sel], numerical)
        where[pname] = (sel, p.shape)
    return compare(name, pairs, tol, floor, where)


def _is_float_array(value):
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _fresh_copies(args):
    return [np.array(v) if isinstance(v, np.ndarray) else v for v in args.values()]


def _as_float64(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return np.array(value, dtype=np.float64)  # a private, contiguous float64 copy
    return value
