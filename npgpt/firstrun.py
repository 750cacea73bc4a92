"""Say so when Numba must compile the kernels: the first call otherwise blocks silently for 20-35 s.

Numba caches compiled kernels (cache=True) as an index file (.nbi) next to
each kernel module's __pycache__ (or under NUMBA_CACHE_DIR).  When none of
the core kernels has an index yet, the first training step will compile
them all: one line on stderr says what the wait is.  Checking a few file
names costs microseconds; nothing is timed.
"""
import os
import sys

MESSAGE = "npgpt: compiling the Numba kernels once (about 30 s on a first run; cached afterwards)"
# Kernels that every GPT forward and backward calls: their indexes exist after any first run.
CORE_MODULES = ("attention", "cross_entropy", "embedding", "gelu", "layernorm", "linear", "optim")

_announced = False


def index_files(module):
    """The cache index paths of the Numba functions defined in module (private Numba attributes;
    an empty list when they are missing, e.g. under NUMBA_DISABLE_JIT=1)."""
    paths = []
    for value in vars(module).values():
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
        path = getattr(cache_file, "_index_path", None)
        if isinstance(path, str):
            paths.append(path)
    return paths


def kernel_cache_is_cold():
    """True when no core kernel has a cache index yet: the next kernel calls will compile."""
    from . import kernels

    paths = [p for name in CORE_MODULES for p in index_files(getattr(kernels, name))]
    return bool(paths) and not any(os.path.exists(p) for p in paths)


def announce_compile_once(stream=None):
    """Print MESSAGE to stderr once per process if the kernel cache is cold; returns whether it printed."""
    global _announced
    if _announced:
        return False
    _announced = True
    if not kernel_cache_is_cold():
        return False
    print(MESSAGE, file=stream or sys.stderr, flush=True)
    return True
