"""`npgpt eval`: loss, perplexity and bits per character of a checkpoint.

    npgpt eval --ckpt out                 # on the validation split of the data it trained on
    npgpt eval --ckpt out --data other.txt   # on every token of another file

Unlike the estimate printed while training (random windows), this sweeps
the whole split once in consecutive windows of block_size, so the numbers
are deterministic.
"""
import math

from . import data
from .errors import UserError
from .model import GPTConfig


def perplexity(loss):
    """exp(loss), inf instead of OverflowError once loss passes ~709 (a diverging run), NaN stays NaN."""
    if not math.isfinite(loss):
        return loss if math.isnan(loss) else (math.inf if loss > 0 else 0.0)
    return math.exp(loss) if loss < 709.0 else math.inf


def evaluate_tokens(model, tokens, batch_size):
    """Mean cross-entropy (nats per token) over every target of tokens (N,); returns (loss, n_targets)."""
    total, count = 0.0, 0
    for x, y in data.sequential_batches(tokens, batch_size, model.config.block_size):
        loss, _ = model.forward(x, y)
        total += loss * y.size  # forward returns the mean over this batch's targets
        count += y.size
    return total / count, count


def add_arguments(parser):
    parser.add_argument("--ckpt", default="out", help="training output directory, or a Hugging Face GPT-2 folder (default: out)")
    parser.add_argument("--data", default=None,
                        help="UTF-8 file to evaluate on, all of it (default: the validation split of the training data)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default: 32)")


def run(args):
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    from .pretrained import load

    loaded = load(args.ckpt, backend=GPTConfig().backend)
    model, tokenizer = loaded.model, loaded.require_tokenizer("evaluation")
    if args.data is not None:
        text, source = data.load_text(args.data), args.data
    elif loaded.kind != "npgpt":
        raise UserError(f"{args.ckpt} is a Hugging Face folder, which does not say what it was trained on: "
                        "give --data FILE to evaluate on")
    else:
        trained_on = (loaded.state.get("train_config") or {}).get("data")
        text = data.split_text(data.load_text(trained_on))[1]
        source = f"validation split of {trained_on or data.BUNDLED}"
    try:
        tokens = data.encode(text, tokenizer)
    except ValueError as e:
        raise UserError(f"cannot encode {source} with the checkpoint's tokenizer: {e}") from None
    if tokens.size < 2:
        raise UserError(f"{source} has {tokens.size} token(s); evaluation needs at least 2")
    loss, n = evaluate_tokens(model, tokens, args.batch_size)
    bits_per_char = loss / math.log(2) * tokens.size / len(text)
    print(f"{source}: {n:,} tokens | loss {loss:.4f} | perplexity {perplexity(loss):.3f} | "
          f"bits/char {bits_per_char:.4f}  ({args.ckpt}" + (f", iteration {loaded.iteration})" if loaded.kind == "npgpt" else ")"))
    return 0
