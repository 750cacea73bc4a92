"""npgpt: a GPT-2-style transformer in NumPy with hand-written backward passes.

Start reading at npgpt/layers/ (one forward/backward pair per layer), then
npgpt/model.py (how they compose), then npgpt/gradcheck.py (how they are
proven).
"""
import os

# OpenBLAS's idle workers spin for a while after each matrix product, on the
# cores Numba's kernels need next; a short timeout lets them sleep (measured:
# S +27%, M +8% tokens/s, docs/speed.md).  OpenBLAS reads this only when it
# loads, so it must be set before numpy is imported; a user's setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import gradcheck, layers  # noqa: E402
from .model import GPT, GPTConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "gradcheck", "layers"]
