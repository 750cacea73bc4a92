"""`npgpt bench`: training throughput, where the time goes, and memory.

    npgpt bench --config S      # or M, L (GPT-2 124M); --json for one machine-readable line

One training step = forward (loss), backward (gradients into one flat
buffer), AdamW over the flat parameters.  Printed: tokens/s; ms per step
split forward / backward / optimizer; a per-kernel breakdown (from extra,
separately timed steps, so the timing itself does not slow the main
measurement); achieved GFLOP/s and model-FLOPs utilisation (MFU) against
the sgemm peak measured in the same run; peak RSS.

Model FLOPs per step (the usual count, same for any framework):
    6 * tokens * (matmul weights, including the tied LM head's C*V)
  + 6 * n_layer * B * T^2 * C      (causal attention: half of q k^T and P v,
                                    forward 2 B T^2 C, backward twice that)
"""
import json
import resource
import statistics
import threading
import time

import numpy as np

from .memory import keep_freed_memory
from .model import GPT, GPTConfig
from .optim import decay_mask, kernels_for
from .parallel import DataParallel, choose_workers

# The benchmark configs: (model sizes, batch size).
CONFIGS = {
    "S": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12),
    "M": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 8),
    "L": (dict(n_layer=12, n_head=12, n_embd=768, block_size=64, vocab_size=50257), 4),
}
ADAMW = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def model_flops_per_step(config, batch_size):
    """Training FLOPs of one step of (batch_size, block_size) tokens; see the module docstring."""
    C, L, T = config.n_embd, config.n_layer, config.block_size
    matmul_weights = L * 12 * C * C + config.vocab_size * C  # per block: qkv 3C^2, proj C^2, mlp 8C^2; + head
    tokens = batch_size * T
    return 6 * tokens * matmul_weights + 6 * L * batch_size * T * T * C


def sgemm_peak_gflops(sizes=(1024, 2048), repeats=5):
    """Best over sizes of the median float32 matmul rate (BLAS, its default threads)."""
    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm-up: thread pool start, page faults
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Timer:
    """Accumulates wall time per name: `with timer("forward"): ...`."""

    def __init__(self):
        self.totals = {}
        self.lock = threading.Lock()  # data-parallel workers add to the same totals

    def __call__(self, name):
        return _Span(self, name)


class _Span:
    def __init__(self, timer, name):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        with self.timer.lock:
            self.timer.totals[self.name] = self.timer.totals.get(self.name, 0.0) + elapsed


class TimedOps:
    """Wraps a backend namespace (npgpt.kernels or npgpt.layers) so that every
    `ops.<layer>.<function>(...)` the model calls is timed under "layer.function"."""

    def __init__(self, ops, timer):
        self._ops, self._timer = ops, timer

    def __getattr__(self, layer):
        return _TimedModule(getattr(self._ops, layer), layer, self._timer)


class _TimedModule:
    def __init__(self, module, layer, timer):
        self._module, self._layer, self._timer = module, layer, timer

    def __getattr__(self, name):
        function = getattr(self._module, name)
        if not callable(function):
            return function

        def timed(*args, **kwargs):
            with self._timer(f"{self._layer}.{name}"):
                return function(*args, **kwargs)

        return timed


class Trainer:
    """The benchmarked step: forward, backward into a reused flat buffer, AdamW.

    workers > 1 splits the batch across that many data-parallel threads
    (npgpt/parallel.py), as `npgpt train` does; forward and backward then
    run interleaved inside the workers and are timed together.
    """

    def __init__(self, config, batch_size, seed=0, workers=0):
        self.model = GPT(config, seed=seed)
        workers = workers or choose_workers(self.model, batch_size)
        self.parallel = DataParallel(self.model, workers) if workers > 1 else None
        self.optimizer_step = kernels_for(config.backend)[0]  # adamw_step
        n = self.model.num_params
        self.grad = np.zeros(n, self.model.dtype)
        self.m = np.zeros(n, self.model.dtype)
        self.v = np.zeros(n, self.model.dtype)
        self.decay = decay_mask(self.model.shapes)  # one byte per parameter
        self.step_count = 0
        rng = np.random.default_rng(seed)
        T = config.block_size
        self.idx = rng.integers(0, config.vocab_size, (batch_size, T))
        self.targets = rng.integers(0, config.vocab_size, (batch_size, T))

    def step(self, timer):
        if self.parallel is not None:
            with timer("forward+backward"):
                loss = self.parallel.loss_and_grad(self.idx, self.targets, self.grad)
        else:
            loss = self._forward_backward(timer)
        with timer("optimizer"):
            self.step_count += 1
            self.optimizer_step(self.model.flat_params, self.grad, self.m, self.v, self.decay,
                                step=self.step_count, **ADAMW)
        return loss

    def _forward_backward(self, timer):
        with timer("forward"):
            loss, cache = self.model.forward(self.idx, self.targets)
        with timer("backward"):
            self.model.backward(cache, out=self.grad)
            del cache
        return loss


def run_benchmark(name, steps=10, warmup=2, profile_steps=2, backend="numba", seed=0, block_size=None, workers=0):
    """-> dict of every figure `npgpt bench` prints.  block_size overrides the config's;
    workers: data-parallel threads, 0 for `npgpt train`'s automatic choice."""
    start = time.perf_counter()
    sizes, batch_size = CONFIGS[name]
    if block_size is not None:
        sizes = dict(sizes, block_size=block_size)
    config = GPTConfig(backend=backend, **sizes)
    trainer = Trainer(config, batch_size, seed, workers)
    workers = trainer.parallel.workers if trainer.parallel else 1
    warm = Timer()
    for _ in range(warmup):  # JIT compile (or load from cache), first page faults
        trainer.step(warm)
    first_steps_s = time.perf_counter() - start

    step_times, timer = [], Timer()
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step(timer)
        step_times.append(time.perf_counter() - t0)
    step_s = statistics.median(step_times)

    kernels = Timer()
    plain_ops = trainer.model.ops
    trainer.model.ops = TimedOps(plain_ops, kernels)
    profiled = Timer()
    for _ in range(profile_steps):
        with profiled("step"):
            trainer.step(Timer())
    trainer.model.ops = plain_ops
    rss = peak_rss_mb()  # before the sgemm test allocates its matrices

    peak = sgemm_peak_gflops()
    tokens = batch_size * config.block_size
    flops = model_flops_per_step(config, batch_size)
    return {
        "framework": "npgpt", "config": name, "backend": backend, "batch_size": batch_size,
        "block_size": config.block_size,
        "params": trainer.model.num_params, "tokens_per_step": tokens,
        "step_ms": 1e3 * step_s, "step_ms_mean": 1e3 * statistics.mean(step_times),
        "tokens_per_s": tokens / step_s,
        "split_ms": {k: 1e3 * v / steps for k, v in timer.totals.items()},
        "workers": workers,
        # data-parallel workers run kernels at the same time: their summed time / workers is the step's share
        "kernels_ms": {k: 1e3 * v / profile_steps / workers for k, v in sorted(kernels.totals.items(), key=lambda kv: -kv[1])},
        "profiled_step_ms": 1e3 * profiled.totals["step"] / profile_steps,
        "gflops": flops / step_s / 1e9, "sgemm_peak_gflops": peak, "mfu": flops / step_s / 1e9 / peak,
        "peak_rss_mb": rss, "warmup_s": first_steps_s, "loss": float(trainer.step(Timer())),
    }


def format_report(r):
    lines = [
        f"npgpt bench --config {r['config']} (backend {r['backend']}, batch {r['batch_size']}, block {r['block_size']}, "
        f"{r['params'] / 1e6:.2f}M params, {r['tokens_per_step']} tokens/step, "
        f"{r['workers']} data-parallel worker(s))",
        f"  tokens/s        {r['tokens_per_s']:,.0f}",
        f"  ms/step         {r['step_ms']:.1f} (median; mean {r['step_ms_mean']:.1f})  = "
        + " + ".join(f"{k} {v:.1f}" for k, v in r["split_ms"].items()),
        f"  GFLOP/s         {r['gflops']:.1f} (model FLOPs)",
        f"  sgemm peak      {r['sgemm_peak_gflops']:.1f} GFLOP/s (float32, measured now)",
        f"  MFU             {100 * r['mfu']:.0f}% of the sgemm peak",
        f"  peak RSS        {r['peak_rss_mb']:.0f} MB",
        f"  warm-up steps   {r['warmup_s']:.1f} s (includes JIT compile or cache load)",
        f"  per kernel, ms/step (separately timed steps of {r['profiled_step_ms']:.1f} ms"
        + ("; workers' time / workers" if r["workers"] > 1 else "") + "):",
    ]
    step = r["profiled_step_ms"]
    for k, v in r["kernels_ms"].items():
        lines.append(f"    {k:<32} {v:8.2f}  {100 * v / step:5.1f}%")
    rest = step - sum(r["kernels_ms"].values())
    lines.append(f"    {'rest (optimizer, adds, grad sum)':<32} {rest:8.2f}  {100 * rest / step:5.1f}%")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--config", choices=sorted(CONFIGS), default="S",
                        help="S: 4x128, block 64, batch 12; M: 6x384, block 256, batch 8; L: GPT-2 124M, block 64, batch 4")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (JIT, page faults)")
    parser.add_argument("--backend", choices=["numba", "numpy"], default="numba")
    parser.add_argument("--block-size", type=int, default=None,
                        help="override the config's block size (e.g. M at 512: attention memory grows as T)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-parallel threads (0: as npgpt train chooses; 1: split each operation instead)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")


def run(args):
    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    if args.block_size is not None and args.block_size < 1:
        raise ValueError("--block-size must be >= 1")
    if args.workers < 0:
        raise ValueError("--workers must be >= 0")
    keep_freed_memory()  # as npgpt train does (npgpt/memory.py)
    result = run_benchmark(args.config, args.steps, args.warmup, backend=args.backend, block_size=args.block_size,
                           workers=args.workers)
    print(json.dumps(result) if args.json else format_report(result))
    return 0
