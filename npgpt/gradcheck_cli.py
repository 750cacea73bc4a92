"""`npgpt gradcheck`: every layer and the whole model against finite differences,
or a learner's own layer from a file (`--file my_layer.py`).

The suite is also what the tests run over fixed shapes; `layer_cases`
is the single list of what gets checked.
"""
import importlib.machinery
import importlib.util
import inspect
import pathlib
import sys
import time
import traceback

import numpy as np

from . import gradcheck
from .errors import UserError
from .model import GPT, GPTConfig, get_backend

# Small but not trivial: odd sizes, more than one head, repeated token ids.
B, T, C, V, N_HEAD = 2, 5, 12, 7, 3
LAYER_NAMES = ("embedding", "linear", "layernorm", "gelu", "attention", "cross_entropy", "dropout")
SUITE_NAMES = LAYER_NAMES + ("model",)
# What a --file layer gets for each argument of forward when the file has no inputs().
DEFAULT_INPUT_SHAPE = (2, 3, 4)
REPEAT_FAILURES_AFTER = 10  # rows: a longer table repeats its failing rows at the end


def layer_cases(ops, rng):
    """[(layer name, forward, backward, inputs)] for one backend's layer modules."""
    x = rng.standard_normal((B, T, C))
    targets = rng.integers(0, V, (B, T))
    targets[0, 1] = -1  # one ignored position
    return [
        ("embedding", ops.embedding.forward, ops.embedding.backward,
         {"idx": rng.integers(0, V, (B, T)), "wte": rng.standard_normal((V, C)), "wpe": rng.standard_normal((T + 2, C))}),
        ("linear", ops.linear.forward, ops.linear.backward,
         {"x": x, "w": rng.standard_normal((C, 2 * C)), "b": rng.standard_normal(2 * C)}),
        ("layernorm", ops.layernorm.forward, ops.layernorm.backward,
         {"x": x, "w": rng.standard_normal(C), "b": rng.standard_normal(C)}),
        ("gelu", ops.gelu.forward, ops.gelu.backward, {"x": 2.0 * x}),
        ("attention", ops.attention.forward, ops.attention.backward,
         {"qkv": rng.standard_normal((B, T, 3 * C)), "n_head": N_HEAD}),
        ("cross_entropy", lambda logits, t: ops.cross_entropy.forward(logits, t, label_smoothing=0.1),
         ops.cross_entropy.backward, {"logits": rng.standard_normal((B, T, V)), "targets": targets}),
        ("dropout", lambda x: ops.dropout.forward(x, 0.25, np.random.default_rng(1)), ops.dropout.backward, {"x": x}),
    ]


def gradcheck_model(backend="numpy", seed=0, dropout=0.1, label_smoothing=0.1, max_entries=8):
    """A tiny float64 GPT with weights drawn at std 0.3, so that no gradient
    sits at rounding-noise level (at GPT-2's 0.02 init attention is nearly
    uniform and its q/k gradients are tiny)."""
    rng = np.random.default_rng(seed)
    config = GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=8,
                       dropout=dropout, dtype="float64", backend=backend)
    model = GPT(config, seed=seed)
    model.flat_params += rng.normal(0.0, 0.3, model.flat_params.shape)
    idx = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    targets[1, 0] = -1
    return gradcheck.check_model(model, idx, targets, name=f"model[{backend}]", max_entries=max_entries,
                                 dropout_seed=seed + 1 if dropout else None, label_smoothing=label_smoothing)


def run_suite(backends=("numpy",), seed=0, only=None):
    """Check every layer (and the model) of each backend; only: a set of SUITE_NAMES to keep."""
    report = gradcheck.GradcheckReport()
    for backend in backends:
        ops = get_backend(backend)
        for name, fwd, bwd, inputs in layer_cases(ops, np.random.default_rng(seed)):
            if only is not None and name not in only:
                continue
            label = name if backend == "numpy" else f"{name}[{backend}]"
            report.extend(gradcheck.check_layer(fwd, bwd, inputs, name=label, seed=seed))
        if only is None or "model" in only:
            report.extend(gradcheck_model(backend, seed))
    return report


# ------------------------------------------------------------ a learner's file
def load_layer_file(path):
    """Import a learner's .py file (this runs it) -> the module.  Errors become one-line UserErrors."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    name = "npgpt_user_layer_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    try:
        loader.exec_module(module)
    except Exception as error:  # the learner's code: report it in one line, with where
        raise UserError(f"{path}: loading it raised {_describe_error(error, path)}") from error
    return module


class NotWrittenYet(UserError):
    """A learner's function still raises NotImplementedError."""


def guarded(function, role, path):
    """function, with any exception it raises turned into a one-line UserError
    naming role ('forward', 'backward') and the line of path it came from."""
    path = pathlib.Path(path)

    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NotImplementedError as error:
            raise NotWrittenYet(f"{path.name}: {role} is not written yet" + (f" ({error})" if str(error) else "")) from error
        except Exception as error:
            raise UserError(f"{path.name}: {role} raised {_describe_error(error, path)}") from error

    return call


def _describe_error(error, path):
    """'ValueError: shapes ... (line 12)': the innermost line of path in the traceback."""
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{type(error).__name__}: {error.msg} (line {error.lineno})"
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if pathlib.Path(frame.filename).resolve() == path.resolve()]
    return f"{message} (line {lines[-1]})" if lines else message


def file_inputs(module, path, seed=0):
    """The example inputs for a learner's forward: the file's inputs() if it
    defines one, else one float64 array of DEFAULT_INPUT_SHAPE per argument
    of forward that has no default (enough for an elementwise layer)."""
    if hasattr(module, "inputs"):
        inputs = guarded(module.inputs, "inputs()", path)()
        if not isinstance(inputs, (dict, list, tuple)):
            raise UserError(f"{path.name}: inputs() must return a dict {{name: example array}}, "
                            f"got {type(inputs).__name__}")
        return inputs
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        parameters = ()
    names = [p.name for p in parameters
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if not names:
        raise UserError(f"{path.name}: forward takes no argument without a default; "
                        "define inputs() returning {name: example array}")
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(DEFAULT_INPUT_SHAPE) for name in names}


def check_file(path, seed=0):
    """A learner's file defining forward and backward -> GradcheckReport."""
    path = pathlib.Path(path)
    module = load_layer_file(path)
    missing = [name for name in ("forward", "backward") if not callable(getattr(module, name, None))]
    if missing:
        raise UserError(f"{path.name}: defines no {' and no '.join(missing)} function "
                        "(it needs forward(*inputs) -> (out, cache) and backward(dout, cache) -> grads)")
    inputs = file_inputs(module, path, seed)
    forward = guarded(module.forward, "forward", path)
    if not hasattr(module, "inputs"):
        try:
            forward(*inputs.values())
        except NotWrittenYet:
            raise
        except UserError as error:
            raise UserError(f"{error} on the default inputs (one {DEFAULT_INPUT_SHAPE} float array for each of "
                            f"{', '.join(inputs)}); define inputs() in {path.name} returning "
                            "{name: example array}") from error
    return gradcheck.check_layer(forward, guarded(module.backward, "backward", path), inputs,
                                 name=path.stem, seed=seed)


# ------------------------------------------------------------ the command
def add_arguments(parser):
    parser.description = (
        "Check every layer's and the whole model's backward against five-point central differences in "
        "float64, or a layer of your own with --file.  Exits 1 if any check fails.")
    parser.add_argument("layers", nargs="*", metavar="LAYER",
                        help=f"check only these ({', '.join(SUITE_NAMES)}; default: all)")
    parser.add_argument("--only", default=None, metavar="LAYER,...",
                        help="the same filter as a comma-separated list, e.g. --only layernorm,attention")
    parser.add_argument("--backend", choices=["numpy", "numba", "all"], default="all",
                        help="which implementation to check (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs, weights and upstream gradients")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show every row's worst entry (index, analytic and numerical value, ratio), "
                             "not only the failing rows'")
    parser.add_argument("--file", default=None, metavar="MY_LAYER.py",
                        help="check your own layer: a Python file defining forward(*inputs) -> (out, cache) "
                             "and backward(dout, cache) -> grads, and optionally inputs() -> {name: example "
                             "array} (default: a " + str(DEFAULT_INPUT_SHAPE) + " float array per argument of "
                             "forward). The file is imported, so its code runs: use it on your own files.")


def selected_layers(args):
    """The positional names and --only, validated -> a set, or None for everything."""
    names = list(args.layers) + [n.strip() for n in (args.only or "").split(",") if n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in SUITE_NAMES]
    if unknown:
        raise UserError(f"unknown layer {unknown[0]!r} (choose from {', '.join(SUITE_NAMES)})")
    return set(names)


def footer(report, settings):
    n_fail = len(report.failures)
    verdict = "all passed" if report.passed else f"{n_fail} FAILED"
    checks = f"{len(report.results)} check" + ("" if len(report.results) == 1 else "s")
    return (f"{checks}, {verdict}: float64, five-point central differences, {settings},\n"
            f"two random douts per layer, tolerance {gradcheck.DEFAULT_TOL:g} on the max relative error.\n"
            f"Noise floor: an entry smaller than {gradcheck.NOISE_FLOOR:g} x the largest gradient in its check\n"
            "is judged against that level, not its own size (docs/gradcheck.md#the-noise-floor).")


def print_report(report, settings, verbose=False):
    print(report.format(verbose=verbose))
    if report.failures and len(report.results) > REPEAT_FAILURES_AFTER:  # so none scrolls out of sight
        print(f"\nFailing rows ({len(report.failures)}):")
        print(report.format(verbose=True, results=report.failures))
    print()
    print(footer(report, settings))


def run(args):
    from .model import BACKENDS

    start = time.perf_counter()
    if args.file is not None:
        if args.layers or args.only:
            raise UserError("--file checks the layer in that file; leave out the layer names")
        report = check_file(args.file, args.seed)
        settings = f"eps={gradcheck.DEFAULT_EPS:g}"
    else:
        only = selected_layers(args)
        backends = BACKENDS if args.backend == "all" else (args.backend,)
        report = run_suite(backends, args.seed, only)
        settings = f"eps={gradcheck.DEFAULT_EPS:g} for layers and {gradcheck.MODEL_EPS:g} for the model"
    print_report(report, settings, args.verbose)
    # On stderr, so that stdout is the same at every run (the docs show it).
    print(f"npgpt gradcheck: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0 if report.passed else 1
