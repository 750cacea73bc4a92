"""Sampling from a trained model, with a KV cache, and `npgpt sample`.

    >>> import npgpt
    >>> model = npgpt.GPT(npgpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, backend="numpy"))
    >>> ids = model.generate([1, 2, 3], 20, temperature=0.8, top_k=5, seed=0)   # all at once
    >>> streamed = [int(token) for token in generate(model, [1, 2, 3], 20, 0, temperature=0.8, top_k=5)]
    >>> streamed == list(ids[3:])      # one id at a time, as soon as it is drawn; the same ids
    True

Without a cache every new token re-runs the model over the whole context.
With it, each layer keeps the keys and values of the positions it has
already seen (KVCache), so a new token runs the model over one position
and attends to the stored keys: the result is the same, the cost per token
is one position instead of T.

GPT-2's positions are learned and absolute, so a context longer than
block_size cannot simply slide by one: when it is full, the cache keeps
the last block_size // 2 tokens and recomputes them once (`window_start`),
which costs about one position per generated token on average.  The
uncached path uses the same window, so both give the same tokens.
"""
import math
import sys

import numpy as np

from . import layers
from .errors import UserError
from .layers.attention import merge_heads, split_heads
from .seeding import as_generator


# ------------------------------------------------------------------ the cache
class KVCache:
    """Keys and values per layer: k[i], v[i] each (B, nh, block_size, hs); `length` positions filled."""

    def __init__(self, config, batch_size, dtype):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)
        self.k = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.v = [np.zeros(shape, dtype) for _ in range(config.n_layer)]
        self.length = 0


def cached_attention(qkv, n_head, k_cache, v_cache, pos):
    """Causal attention of t new positions against everything cached so far.

    qkv: (B, t, 3C) for positions pos..pos+t-1; k_cache, v_cache:
    (B, nh, Tmax, hs), written in place at those positions.
    Returns (B, t, C).  New query i (absolute position pos+i) sees keys
    0..pos+i: the same mask as layers.attention, shifted by pos.
    """
    q, k, v = split_heads(qkv, n_head)  # each (B, nh, t, hs)
    t = q.shape[2]
    end = pos + t
    k_cache[:, :, pos:end] = k
    v_cache[:, :, pos:end] = v
    keys, values = k_cache[:, :, :end], v_cache[:, :, :end]  # (B, nh, end, hs)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ keys.transpose(0, 1, 3, 2)) * scale  # (B, nh, t, end)
    future = np.arange(end)[None, :] > (pos + np.arange(t))[:, None]  # (t, end) True where key is ahead
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return merge_heads(probs @ values)  # (B, nh, t, hs) -> (B, t, C)


def forward_cached(model, idx, cache):
    """idx (B, t) new tokens -> logits (B, t, V), extending cache by t positions.

    The same computation as model.logits, block by block with the
    reference layers, except that attention reads earlier positions from
    the cache instead of recomputing them.
    """
    P, cfg = model.params, model.config
    pos = cache.length
    t = idx.shape[1]
    if pos + t > cfg.block_size:
        raise ValueError(f"KV cache holds {cfg.block_size} positions; cannot add {t} after {pos}")
    eps = cfg.layer_norm_epsilon

    def linear(x, prefix):  # x @ w + b, plus the layer's LoRA adapter if it has one
        out, _ = layers.linear.forward(x, P[prefix + ".weight"], P.get(prefix + ".bias"))
        if prefix + ".lora_a" in P:
            out += layers.lora.forward(x, P[prefix + ".lora_a"], P[prefix + ".lora_b"], model.lora_scale)[0]
        return out

    x, _ = layers.embedding.forward(idx, P["wte.weight"], model._position_rows()[pos:])  # (B, t, C) at positions pos..
    post = cfg.norm == "post"

    def layernorm(x, prefix):
        return layers.layernorm.forward(x, P[prefix + ".weight"], P.get(prefix + ".bias"), eps)[0]

    def residual(x, ln, branch):  # pre (GPT-2): x + f(ln(x));  post (the paper): ln(x + f(x))
        return layernorm(x + branch(x), ln) if post else x + branch(layernorm(x, ln))

    for i in range(cfg.n_layer):
        pre = f"h.{i}."

        def attention(h):  # (B, t, C) -> (B, t, C), earlier positions' keys and values read from the cache
            qkv = linear(h, pre + "attn.c_attn")  # (B, t, 3C)
            return linear(cached_attention(qkv, cfg.n_head, cache.k[i], cache.v[i], pos), pre + "attn.c_proj")

        def mlp(h):  # (B, t, C) -> (B, t, 4C) -> (B, t, C)
            return linear(layers.gelu.forward(linear(h, pre + "mlp.c_fc"))[0], pre + "mlp.c_proj")

        x = residual(x, pre + "ln_1", attention)
        x = residual(x, pre + "ln_2", mlp)
    if not post:  # post-LN has no ln_f: the last block ends in its ln_2
        x = layernorm(x, "ln_f")
    cache.length = pos + t
    return x @ P["wte.weight"].T  # tied head: (B, t, C) @ (C, V)


# ------------------------------------------------------------------ sampling
def window_start(start, n_tokens, block_size):
    """Where the model's context begins once the sequence holds n_tokens.

    Unchanged while the context fits; when it would exceed block_size it
    jumps forward to keep the last block_size // 2 tokens (at least one).
    """
    if n_tokens - start <= block_size:
        return start
    return n_tokens - max(block_size // 2, 1)


def sample_token(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """logits (V,) -> one token id drawn from softmax(logits / temperature).

    temperature 0 picks the most likely token.  top_k keeps the k most
    likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability reaches p.  Exactly one uniform draw from rng per call
    (none when greedy), so a seed fixes the whole sample.  rng: a
    Generator, an int seed or None (a fresh random one).

    >>> sample_token([0.0, 5.0, 1.0], rng=0, temperature=0)
    1
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k is not None and top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")  # most likely first
    sorted_probs = probs[order]
    if top_p is not None and top_p < 1.0:
        before = np.cumsum(sorted_probs) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs = np.where(before < top_p, sorted_probs, 0.0)  # the first token always stays
    cdf = np.cumsum(sorted_probs)
    u = as_generator(rng).random() * cdf[-1]
    return int(order[min(np.searchsorted(cdf, u, side="right"), order.size - 1)])


def check_sampling(max_new_tokens, temperature=1.0, top_k=None, top_p=None):
    """ValueError naming the first invalid sampling setting (top_k/top_p None: off)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float, np.floating)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None (off) or an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float, np.floating)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None (off) or in (0, 1], got {top_p!r}")


def generate(model, prompt_ids, max_new_tokens, rng=None, temperature=1.0, top_k=None, top_p=None, use_cache=True):
    """Yield max_new_tokens token ids continuing prompt_ids (a non-empty list of ids).

    rng: a Generator (its stream advances), an int seed, or None (random).
    """
    tokens = [int(i) for i in prompt_ids]
    if not tokens:
        raise ValueError("generation needs a prompt of at least one token")
    rng = as_generator(rng)
    block_size = model.config.block_size
    start = max(0, len(tokens) - block_size)
    cache = KVCache(model.config, 1, model.dtype) if use_cache else None
    for _ in range(max_new_tokens):
        new_start = window_start(start, len(tokens), block_size)
        if use_cache:
            if new_start != start or cache.length == 0:  # (re)fill the cache with the whole window
                cache.length = 0
                logits = forward_cached(model, np.array([tokens[new_start:]]), cache)
            else:  # one new position
                logits = forward_cached(model, np.array([tokens[-1:]]), cache)
        else:
            logits = model.logits(np.array([tokens[new_start:]]))
        start = new_start
        token = sample_token(logits[0, -1], rng, temperature, top_k, top_p)
        tokens.append(token)
        yield token


# ------------------------------------------------------------------ streaming
def stream_text(tokenizer, prompt_ids, token_iter, write):
    """Decode tokens as they arrive and write only the new text.

    Decoding the whole sequence each time is what makes multi-byte
    characters split across BPE tokens come out right; a trailing U+FFFD
    (an incomplete character) is held back until its bytes arrive.
    Returns the generated text.
    """
    ids = list(prompt_ids)
    shown = len(tokenizer.decode(ids))
    for token in token_iter:
        ids.append(token)
        text = tokenizer.decode(ids)
        ready = text.rstrip("\ufffd")
        if len(ready) > shown:
            write(ready[shown:])
            shown = len(ready)
    text = tokenizer.decode(ids)
    if len(text) > shown:
        write(text[shown:])
    return text[len(tokenizer.decode(list(prompt_ids))):]


# ------------------------------------------------------------------ the command
def add_arguments(parser):
    parser.add_argument("--ckpt", default="out",
                        help="training output directory, or a Hugging Face GPT-2 folder, to sample from (default: out)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8, help="<1 sharper, >1 more random, 0 greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 = all (default: 200)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens up to this mass (default: 1.0 = off)")
    parser.add_argument("--num-samples", type=int, default=1, help="how many samples (default: 1)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed; the same seed gives the same text (default: 1337)")


def check_sampling_args(args):
    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if 0 < args.temperature < 1e-6:  # logits / 1e-310 overflow to inf; so small a temperature is greedy anyway
        raise UserError(f"--temperature must be 0 (greedy) or at least 1e-06, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")


def encode_prompt(tokenizer, prompt):
    """prompt -> ids, with a one-line error naming characters the vocabulary lacks."""
    if prompt == "":
        raise UserError("--prompt is empty; give at least one character (the default is a newline)")
    try:
        return tokenizer.encode(prompt)
    except ValueError as e:
        raise UserError(f"--prompt cannot be encoded: {e}") from None


def print_samples(model, tokenizer, prompt_ids, num_samples, max_new_tokens, seed, temperature, top_k, top_p,
                  out=None):
    """Stream num_samples samples to out (default: stdout), separated by a rule; returns their texts."""
    out = out or sys.stdout
    rng = np.random.default_rng(seed)
    prompt_text = tokenizer.decode(prompt_ids)
    texts = []
    for i in range(num_samples):
        if i:
            out.write("\n---------------\n")
        out.write(prompt_text)
        out.flush()

        def write(s):
            out.write(s)
            out.flush()

        tokens = generate(model, prompt_ids, max_new_tokens, rng, temperature, top_k or None, top_p)
        texts.append(stream_text(tokenizer, prompt_ids, tokens, write))
    out.write("\n")
    out.flush()
    return texts


def run(args):
    from .pretrained import load

    check_sampling_args(args)
    # generation runs the reference layers (with the KV cache) whatever the training backend was
    loaded = load(args.ckpt, backend="numpy")
    model, tokenizer = loaded.model, loaded.require_tokenizer("sampling")
    prompt_ids = encode_prompt(tokenizer, args.prompt)
    print_samples(model, tokenizer, prompt_ids, args.num_samples, args.max_new_tokens, args.seed,
                  args.temperature, args.top_k, args.top_p)
    return 0
