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

# ---- the public API (below the environment settings above, which must come first)
from . import gradcheck, layers, reference  # noqa: E402
from .errors import UserError  # noqa: E402
from .model import GPT, GPTConfig, Gradients  # noqa: E402
from .optim import (AdamW, ConstantSchedule, CosineSchedule, PlateauSchedule, Schedule,  # noqa: E402
                    StepSchedule, make_schedule)
from .tokenizers import BPETokenizer, CharTokenizer, load_tokenizer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "Gradients", "AdamW", "make_schedule", "Schedule", "ConstantSchedule",
           "CosineSchedule", "StepSchedule", "PlateauSchedule", "CharTokenizer", "BPETokenizer",
           "load_tokenizer", "UserError", "gradcheck", "layers", "reference"]
