"""`npgpt gradcheck`: every layer and the whole model against finite differences.

The suite is also what the tests run over fixed shapes; `layer_cases`
is the single list of what gets checked.
"""
import time

import numpy as np

from . import gradcheck
from .model import GPT, GPTConfig, get_backend

# Small but not trivial: odd sizes, more than one head, repeated token ids.
B, T, C, V, N_HEAD = 2, 5, 12, 7, 3


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


def run_suite(backends=("numpy",), seed=0):
    report = gradcheck.GradcheckReport()
    for backend in backends:
        ops = get_backend(backend)
        for name, fwd, bwd, inputs in layer_cases(ops, np.random.default_rng(seed)):
            label = name if backend == "numpy" else f"{name}[{backend}]"
            report.extend(gradcheck.check_layer(fwd, bwd, inputs, name=label, seed=seed))
        report.extend(gradcheck_model(backend, seed))
    return report


def add_arguments(parser):
    parser.add_argument("--backend", choices=["numpy", "numba", "all"], default="all",
                        help="which implementation to check (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs, weights and upstream gradients")


def run(args):
    from .model import BACKENDS

    backends = BACKENDS if args.backend == "all" else (args.backend,)
    start = time.perf_counter()
    report = run_suite(backends, args.seed)
    print(report)
    n_fail = sum(not r.passed for r in report.results)
    verdict = "all passed" if report.passed else f"{n_fail} FAILED"
    print(f"\n{len(report.results)} checks, {verdict} (float64, five-point central differences, "
          f"eps={gradcheck.DEFAULT_EPS:g} for layers and {gradcheck.MODEL_EPS:g} for the model, "
          f"tolerance {gradcheck.DEFAULT_TOL:g}) in {time.perf_counter() - start:.1f}s")
    return 0 if report.passed else 1

