"""npgpt: a GPT-2-style transformer in NumPy with hand-written backward passes.

Start reading at npgpt/layers/ (one forward/backward pair per layer), then
npgpt/model.py (how they compose), then npgpt/gradcheck.py (how they are
proven).
"""
from . import threads

# Thread pools first: OpenBLAS and Numba's OpenMP layer read their settings
# when they load, and a user's `import numpy` or `import torch` may already
# have loaded them; npgpt/threads.py reconfigures what is loaded and sets
# the environment for what is not (a user's own settings win).
threads.configure()

from . import gradcheck, layers  # noqa: E402
from .model import GPT, GPTConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "gradcheck", "layers"]
