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
