"""Compile time and warm start: from `import npgpt` to the end of the first training step.

    python benchmarks/startup.py            # cold (empty Numba cache), then warm

Each run is a fresh process.  The cold run points NUMBA_CACHE_DIR at a new
empty directory, so every kernel is compiled (float32, the training
dtype); the warm run reuses that directory, so every kernel loads from the
cache, which is what a user sees from the second `npgpt train` on.
"""
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time
start = time.perf_counter()
import numpy as np
import npgpt
from npgpt.bench import ADAMW, CONFIGS
from npgpt.kernels.optim import adamw_step
sizes, batch = CONFIGS["S"]
model = npgpt.GPT(npgpt.GPTConfig(**sizes), seed=0)
idx = np.random.default_rng(0).integers(0, sizes["vocab_size"], (batch, sizes["block_size"]))
grad, m, v = (np.zeros_like(model.flat_params) for _ in range(3))
decay = np.ones_like(model.flat_params)
loss, cache = model.forward(idx, idx)
model.backward(cache, out=grad)
adamw_step(model.flat_params, grad, m, v, decay, step=1, **ADAMW)
print(f"{time.perf_counter() - start:.2f}")
"""


def first_step_seconds(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=repo, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory(prefix="npgpt-numba-cache-") as cache_dir:
        cold = first_step_seconds(cache_dir)
        warm = first_step_seconds(cache_dir)
    print(f"import to first training step (config S): cold cache {cold:.1f} s (compiles every kernel), "
          f"warm cache {warm:.1f} s")


if __name__ == "__main__":
    main()
