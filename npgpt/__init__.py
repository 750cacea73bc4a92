"""npgpt: a GPT-2-style transformer in NumPy with hand-written backward passes.

Start reading at npgpt/layers/ (one forward/backward pair per layer), then
npgpt/model.py (how they compose), then npgpt/gradcheck.py (how they are
proven).
"""
from . import gradcheck, layers
from .model import GPT, GPTConfig

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "gradcheck", "layers"]
