"""Will a training run fit?  Memory and worker checks made before anything large is allocated.

A run whose arrays cannot fit should be refused in one line with the
numbers, not end in a raw MemoryError, or worse, in the kernel's OOM
killer (Linux overcommits: numpy's allocation succeeds and the process
dies later, when the pages are touched).

    check_training_run(cfg, vocab_size)   # UserError if --workers or the memory cannot work

The estimate (`training_memory`) counts the arrays that dominate a step,
in bytes of the run's dtype:

    weights           N                      one flat buffer (model.py)
    gradients         N, + N per extra data-parallel worker, + N with --grad-accum > 1
    AdamW moments     2 N                    m and v
    activations       B T (20 C n_layer + 4 C)   the forward caches kept for backward
    logits            3 B T V                logits, softmax and its gradient

with N = param_count(...).  At GPT-2 124M, batch 4, block 64 this gives
2.34 GB plus the interpreter's ~0.1 GB; `npgpt bench --config L` measured a
peak RSS of 2.43 GB.  Activations are ~20 C floats per token and layer
(layer-norm inputs and outputs, q k v, attention output, projections,
the MLP's 4C pre- and post-GELU, residuals).  The check refuses only a run
that cannot fit: the estimate against the memory available now (RAM +
free swap, or the cgroup limit if lower).  NPGPT_SKIP_MEMORY_CHECK=1
turns it off.
"""
import os
import sys

from .errors import UserError

BASE_BYTES = 100 * 2**20  # Python, NumPy, Numba and their caches
ACTIVATION_FLOATS_PER_LAYER = 20  # x C, per token (see the module docstring)
LOGIT_COPIES = 3


def param_count(vocab_size, block_size, n_layer, n_embd, bias=True):
    """The model's parameter count, from its sizes (model.param_shapes without building a config).

    >>> param_count(65, 64, 4, 128)   # the default `npgpt train` model
    809856
    """
    C = n_embd
    ln = 2 * C if bias else C
    per_layer = 2 * ln + C * 3 * C + C * C + C * 4 * C + 4 * C * C
    if bias:
        per_layer += 3 * C + C + 4 * C + C
    return vocab_size * C + block_size * C + n_layer * per_layer + ln


def training_memory(vocab_size, block_size, n_layer, n_embd, batch_size, workers=1, grad_accum=1,
                    dtype="float32", bias=True):
    """{part: bytes} of a training step's main arrays (see the module docstring)."""
    itemsize = 8 if dtype == "float64" else 4
    n = param_count(vocab_size, block_size, n_layer, n_embd, bias)
    tokens = batch_size * block_size
    extra_grads = max(workers, 1) - 1 + (1 if grad_accum > 1 else 0)
    return {
        "weights": n * itemsize,
        "gradients": n * itemsize * (1 + extra_grads),
        "AdamW moments": 2 * n * itemsize,
        "activations": tokens * (ACTIVATION_FLOATS_PER_LAYER * n_embd * n_layer + 4 * n_embd) * itemsize,
        "logits": LOGIT_COPIES * tokens * vocab_size * itemsize,
    }


def available_memory():
    """Bytes this process can still get: MemAvailable + SwapFree, capped by a cgroup limit; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        if "MemAvailable" in info:
            available = info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return min(available, room) if room is not None else available


def _cgroup_dirs():
    """Where this process's memory cgroup may be: its own path (from /proc/self/cgroup), then the mount's root."""
    dirs = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":  # cgroup v2
                    dirs.append(("/sys/fs/cgroup" + path.rstrip("/"), "memory.max", "memory.current"))
                elif "memory" in controllers.split(","):  # cgroup v1
                    dirs.append(("/sys/fs/cgroup/memory" + path.rstrip("/"), "memory.limit_in_bytes",
                                 "memory.usage_in_bytes"))
    except (OSError, ValueError):
        pass
    return dirs + [("/sys/fs/cgroup", "memory.max", "memory.current"),
                   ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]


def _cgroup_room():
    """limit - usage of this process's memory cgroup (v2 or v1), or None when unlimited or unknown."""
    for directory, limit_name, usage_name in _cgroup_dirs():
        limit_file, usage_file = os.path.join(directory, limit_name), os.path.join(directory, usage_name)
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(int(limit) - usage, 0)
    return None


def human(n_bytes):
    """1536 -> '1.5 KB', 3.2e9 -> '3.2 GB' (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1024 or unit == "PB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_workers(workers, batch_size, cores=None):
    """--workers 0 is automatic; more workers than sequences is refused, more than cores noted."""
    if workers > batch_size:
        raise UserError(f"--workers {workers} is more than --batch-size {batch_size}: each worker takes at least "
                        f"one sequence of the batch (use --workers {min(batch_size, usable_cores())}, "
                        "or 0 to choose automatically)")
    cores = usable_cores() if cores is None else cores
    if workers > cores:
        print(f"npgpt: note: --workers {workers} is more than the {cores} core(s) available; the workers will "
              "share them (slower, same results)", file=sys.stderr)


def check_memory(parts, available, what="this run"):
    """UserError if the estimated parts (bytes) cannot fit into `available` bytes."""
    total = BASE_BYTES + sum(parts.values())
    if available is None or total <= available or os.environ.get("NPGPT_SKIP_MEMORY_CHECK"):
        return total
    shown = ", ".join(f"{name} {human(b)}" for name, b in parts.items())
    raise UserError(f"{what} needs about {human(total)} of memory ({shown}), more than the {human(available)} "
                    "available; use a smaller --n-embd, --n-layer, --block-size or --batch-size "
                    "(NPGPT_SKIP_MEMORY_CHECK=1 skips this check)")


def check_training_run(cfg, vocab_size):
    """Refuse, before anything is allocated, a run whose --workers or memory cannot work.

    cfg: a train.TrainConfig; vocab_size: the model's (a checkpoint's, the
    BPE --vocab-size, or a guess of 256 for a character corpus not yet read).
    """
    if cfg.workers:
        check_workers(cfg.workers, cfg.batch_size)
    n = param_count(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd, cfg.bias)
    workers = cfg.workers or (min(usable_cores(), cfg.batch_size) if n <= 30_000_000 else 1)
    parts = training_memory(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd, cfg.batch_size, workers,
                            cfg.grad_accum, cfg.dtype, cfg.bias)
    check_memory(parts, available_memory(), f"this run ({n:,} parameters)" if n < 10**15 else "this run")
