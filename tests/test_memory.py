"""npgpt.memory: freed activation memory is reused instead of faulted in again."""
import os
import subprocess
import sys

import pytest

from npgpt import memory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

# A training step in miniature: allocate and touch activations of assorted
# sizes (100 KB to 3 MB), free them all, repeat; print the page faults of the
# rounds after the first.  Run in a fresh process, so that malloc starts untuned.
STEPS = """
import resource, sys
import numpy as np
from npgpt.memory import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
sizes = [(100 + 97 * i) * 1024 for i in range(30)]
def step():
    arrays = [np.empty(n, np.uint8) for n in sizes]
    for a in arrays:
        a[::4096] = 1  # touch every page, as a kernel writing its output does
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def step_faults(mode):
    env = {k: v for k, v in os.environ.items() if k not in memory.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@linux_only
def test_repeated_steps_reuse_their_pages():
    pages_per_step = sum((100 + 97 * i) * 1024 for i in range(30)) // 4096  # ~11,000
    untuned, tuned = step_faults("untuned"), step_faults("tuned")
    assert untuned > 2 * pages_per_step  # glibc's defaults hand the pages back and fault them in again
    assert tuned < pages_per_step // 10  # tuned: ten more steps need (almost) no new pages


def test_a_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert memory.keep_freed_memory() is False
