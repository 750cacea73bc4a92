"""Hugging Face GPT-2 folders in and out: config.json, safetensors weights, tokenizer files.

    model = GPT.from_pretrained("gpt2/")                 # a Hugging Face folder or an npgpt checkpoint
    model, tokenizer = load_for_finetuning("gpt2/", "float32", "numba", block_size=256)
    model.save_pretrained("export/", tokenizer=tok)      # transformers.GPT2LMHeadModel loads it

A Hugging Face GPT-2 folder (docs/pretrained.md) holds
  - config.json: sizes under GPT-2's names (n_positions, n_embd, n_layer,
    n_head, n_inner, layer_norm_epsilon, vocab_size, activation_function);
  - model.safetensors, or shards listed in model.safetensors.index.json:
    GPT-2's parameter names, with the `transformer.` prefix (what
    save_pretrained writes) or without it (the hub's own `gpt2` file).
    Conv1D stores its weight (in, out), npgpt's orientation, so nothing is
    transposed.  `h.N.attn.bias` / `masked_bias` are the causal mask, a
    buffer, and are skipped; `lm_head.weight`, when present, must equal
    `wte.weight` (npgpt ties the head);
  - the tokenizer: vocab.json + merges.txt, or tokenizer.json.

Every JSON file goes through npgpt.safeload; weights are read with the
safetensors package, never with pickle.  Shapes are checked against the
config before the model's buffer is allocated, so a crafted config cannot
make npgpt allocate more than its weight files describe.  Bad input raises
UserError with one line naming the file and the key.
"""
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from . import safeload
from .errors import UserError
from .fileio import atomic_write_bytes
from .model import GPT, GPTConfig, param_shapes

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh approximation under its two names
MAX_SIZE = 1 << 24  # bound on every size in config.json: far above any GPT-2, far below an overflow

# config.json: every field optional (transformers fills GPT2Config's defaults); types checked here,
# meaning checked in hf_config_fields.
_SIZE = safeload.Int(min=1, max=MAX_SIZE)
HF_CONFIG_SCHEMA = safeload.Obj({}, optional={
    "model_type": str, "activation_function": str, "vocab_size": _SIZE, "n_positions": _SIZE,
    "n_embd": _SIZE, "n_layer": _SIZE, "n_head": _SIZE, "n_inner": (int, type(None)),
    "layer_norm_epsilon": safeload.Float(min=0.0, max=1.0), "tie_word_embeddings": bool,
    "scale_attn_weights": bool, "scale_attn_by_inverse_layer_idx": bool, "add_cross_attention": bool,
    "reorder_and_upcast_attn": bool,
})
HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
               "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
INDEX_SCHEMA = safeload.Obj({"weight_map": safeload.Map(str)})
_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # the causal mask, not a parameter


# ------------------------------------------------------------------ config.json
def read_hf_config(folder):
    """folder/config.json -> its validated dict (GPT-2's names)."""
    path = os.path.join(folder, CONFIG)
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {folder}: checkpoint.json is missing (an npgpt training output directory) "
                        f"and there is no {CONFIG} (a Hugging Face GPT-2 folder)")
    return safeload.load_json(path, HF_CONFIG_SCHEMA, max_bytes=1 << 20)


def hf_config_fields(hf, where):
    """A Hugging Face GPT-2 config dict -> GPTConfig fields; UserError naming the field npgpt cannot run."""
    if "block_size" in hf and "n_positions" not in hf:
        raise UserError(f"{where} is an npgpt snapshot's config; load the training output directory "
                        "that holds checkpoint.json instead")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{where}: model_type is {hf['model_type']!r}; npgpt loads GPT-2 models ('gpt2') only")
    c = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if k in HF_DEFAULTS}}
    if c["activation_function"] not in TANH_GELUS:
        raise UserError(f"{where}: activation_function {c['activation_function']!r} is not supported; npgpt "
                        f"runs GPT-2's tanh GELU ({' or '.join(TANH_GELUS)})")
    refused = {"scale_attn_weights": (False, "attention scores not scaled by 1/sqrt(head size)"),
               "scale_attn_by_inverse_layer_idx": (True, "attention scaled by 1/layer index"),
               "add_cross_attention": (True, "cross-attention layers")}
    for key, (bad, what) in refused.items():
        if hf.get(key) is bad:
            raise UserError(f"{where}: {key} is {json.dumps(bad)} ({what}); npgpt's GPT-2 does not do that")
    if c["n_inner"] is not None and not 0 < c["n_inner"] <= MAX_SIZE:
        raise UserError(f"{where}: field 'n_inner' must be a positive integer or null, got {c['n_inner']!r}")
    if c["n_embd"] % c["n_head"]:
        raise UserError(f"{where}: n_embd {c['n_embd']} is not divisible by n_head {c['n_head']}")
    if not c["layer_norm_epsilon"] > 0:
        raise UserError(f"{where}: field 'layer_norm_epsilon' must be > 0, got {c['layer_norm_epsilon']!r}")
    return {"vocab_size": c["vocab_size"], "block_size": c["n_positions"], "n_layer": c["n_layer"],
            "n_head": c["n_head"], "n_embd": c["n_embd"], "n_inner": c["n_inner"],
            "layer_norm_epsilon": float(c["layer_norm_epsilon"]), "bias": True}


# ------------------------------------------------------------------ weights
class WeightFiles:
    """The safetensors file(s) of a folder, opened lazily: {npgpt name: (file, key in file)}.

    Keys are normalised to npgpt's names (the `transformer.` prefix
    dropped); mask buffers are skipped; lm_head.weight is kept apart to be
    compared with wte.weight.
    """

    def __init__(self, folder):
        self.folder = folder
        self.where = {}  # npgpt name -> (path, key)
        self.lm_head = None  # (path, key) or None
        self._open = {}
        for path in self._files():
            handle = self._handle(path)
            for key in handle.keys():
                self._add(path, key)

    def _files(self):
        single, index = os.path.join(self.folder, WEIGHTS), os.path.join(self.folder, WEIGHTS_INDEX)
        if os.path.exists(single):
            return [single]
        if os.path.exists(index):
            weight_map = safeload.load_json(index, INDEX_SCHEMA, max_bytes=16 << 20)["weight_map"]
            shards = []
            for name in dict.fromkeys(weight_map.values()):  # each shard once, in order
                if os.path.basename(name) != name or name in ("", ".", ".."):
                    raise UserError(f"{index}: shard name {name!r} is not a file name in {self.folder}")
                shard = os.path.join(self.folder, name)
                if not os.path.exists(shard):
                    raise UserError(f"{index} lists {name}, which is missing from {self.folder}")
                shards.append(shard)
            if not shards:
                raise UserError(f"{index}: weight_map is empty")
            return shards
        pickles = [n for n in PICKLE_WEIGHTS if os.path.exists(os.path.join(self.folder, n))]
        if pickles:
            raise UserError(
                f"{self.folder} has only {pickles[0]}, a pickle (loading one can run arbitrary code), which npgpt "
                "never opens; convert it once where you trust it: python -c \"from transformers import "
                f"GPT2LMHeadModel as M; M.from_pretrained('{self.folder}').save_pretrained('{self.folder}', "
                "safe_serialization=True)\"")
        raise UserError(f"{self.folder}: no {WEIGHTS} (or {WEIGHTS_INDEX} with its shards)")

    def _handle(self, path):
        if path not in self._open:
            import safetensors

            if not os.path.isfile(path):  # a device or FIFO (or a link to one) would block or never end
                raise UserError(f"{path}: not a regular file")
            try:
                self._open[path] = safetensors.safe_open(path, framework="numpy")
            except Exception as e:  # the package raises its own types for bad headers and short files
                raise UserError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None
        return self._open[path]

    def _add(self, path, key):
        name = key.removeprefix("transformer.")
        if _MASK_BUFFER.match(name):
            return
        if name == "lm_head.weight":
            self.lm_head = (path, key)
            return
        if name in self.where:
            raise UserError(f"{path}: weight {name!r} appears twice ({self.where[name][1]!r} and {key!r})")
        self.where[name] = (path, key)

    def check_layers(self, n_layer, where):
        """config.json's n_layer against the blocks the files hold: checked before any per-layer work."""
        blocks = {name.split(".")[1] for name in self.where if re.match(r"^h\.\d+\.", name)}
        if n_layer != len(blocks):
            raise UserError(f"{where}: n_layer is {n_layer} but the weight files hold {len(blocks)} blocks")

    def check(self, shapes, positions):
        """Every expected name present with its shape (wpe: `positions` rows); nothing unexpected."""
        for name, shape in shapes.items():
            if name not in self.where:
                raise UserError(f"{self.folder}: weight {name!r} (or 'transformer.{name}') is missing")
            path, key = self.where[name]
            want = (positions, shape[1]) if name == "wpe.weight" else shape
            got = tuple(self._handle(path).get_slice(key).get_shape())
            if got != want:
                raise UserError(f"{path}: weight {key!r} has shape {got}, config.json implies {want}")
        extra = sorted(set(self.where) - set(shapes))
        if extra:
            path, key = self.where[extra[0]]
            raise UserError(f"{path}: unexpected weight {key!r} (not part of GPT-2's language model)")
        if self.lm_head is not None:
            path, key = self.lm_head
            got = tuple(self._handle(path).get_slice(key).get_shape())
            if got != shapes["wte.weight"]:
                raise UserError(f"{path}: weight {key!r} has shape {got}, expected {shapes['wte.weight']} (tied to wte)")

    def read(self, name):
        path, key = self.where[name] if name != "lm_head.weight" else self.lm_head
        try:
            tensor = self._handle(path).get_tensor(key)
        except Exception as e:  # truncated data, or a dtype numpy lacks (bfloat16)
            hint = "; NumPy has no bfloat16: save the model in float32" if "bfloat16" in str(e) else ""
            raise UserError(f"{path}: cannot read weight {key!r} ({_first_line(e)}){hint}") from None
        if tensor.dtype.kind != "f":
            raise UserError(f"{path}: weight {key!r} holds {tensor.dtype} values, expected floating point")
        if not np.isfinite(tensor).all():
            raise UserError(f"{path}: weight {key!r} holds NaN or inf values; refused")
        return tensor


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_hf_model(folder, dtype=None, backend=None, block_size=None, seed=0, **overrides):
    """A GPT holding the weights of a Hugging Face GPT-2 folder.

    block_size below n_positions keeps the first block_size rows of the
    position table; overrides are further GPTConfig fields (dropout,
    lora_rank, ...).  Adapters, if any, start fresh (B = 0), drawn with seed.
    """
    where = os.path.join(folder, CONFIG)
    hf = read_hf_config(folder)
    fields = hf_config_fields(hf, where)
    positions = fields["block_size"]
    if block_size is not None:
        if not 0 < block_size <= positions:
            raise UserError(f"block_size {block_size} must be in 1..{positions} (the model's n_positions)")
        fields["block_size"] = block_size
    fields.update({k: v for k, v in (("dtype", dtype), ("backend", backend), *overrides.items()) if v is not None})
    try:
        config = GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None
    files = WeightFiles(folder)
    files.check_layers(config.n_layer, where)  # before param_shapes: a crafted n_layer must not cost time
    if hf.get("tie_word_embeddings") is False and files.lm_head is None:
        raise UserError(f"{where}: tie_word_embeddings is false but the weight files hold no lm_head.weight")
    files.check({k: v for k, v in param_shapes(config).items() if ".lora_" not in k}, positions)
    model = GPT(config, init_weights=False)  # every base weight is overwritten next
    for name, p in model.params.items():
        if ".lora_" in name:
            continue
        w = files.read(name)
        p[...] = w[: config.block_size] if name == "wpe.weight" else w
    if files.lm_head is not None and not np.array_equal(files.read("lm_head.weight").astype(model.dtype),
                                                        model.params["wte.weight"]):
        raise UserError(f"{files.lm_head[0]}: lm_head.weight differs from wte.weight; npgpt ties the LM head to "
                        "the token embedding, so a model with a separate head cannot be loaded")
    model.init_adapters(np.random.default_rng(seed))
    return model


# ------------------------------------------------------------------ npgpt checkpoints
def is_npgpt_checkpoint(path):
    from .checkpoint import POINTER

    return os.path.isfile(os.path.join(path, POINTER))


def load_npgpt_model(path, dtype=None, backend=None, block_size=None, seed=0, which="best", **overrides):
    """(model, tokenizer, checkpoint) from an npgpt training output directory, with the same options.

    which: "best" (the best-validation snapshot, what sampling, evaluation and
    fine-tuning use) or "latest" (npgpt/checkpoint.py).
    """
    from . import checkpoint
    from .tokenizers import from_dict

    ckpt = checkpoint.load(path, which)
    fields = {"dtype": dtype, "backend": backend, **overrides}
    if block_size is not None:
        positions = ckpt.config.get("block_size")
        if not 0 < block_size <= positions:
            raise UserError(f"block_size {block_size} must be in 1..{positions} (the checkpoint's block_size)")
        fields["block_size"] = block_size
        if "wpe.weight" in ckpt.params:
            ckpt.params["wpe.weight"] = ckpt.params["wpe.weight"][:block_size]
    if ckpt.config.get("lora_rank"):  # its adapters are kept (and train on); other adapters cannot be added
        rank = fields.get("lora_rank")
        if rank and rank != ckpt.config["lora_rank"]:
            raise UserError(f"{path} has LoRA adapters of rank {ckpt.config['lora_rank']}; merge them first "
                            "(npgpt export --merge-lora) to fine-tune with other adapters")
        fields = {k: v for k, v in fields.items() if not k.startswith("lora_")}
    if _adds_adapters(ckpt, fields):
        model = _with_new_adapters(ckpt, fields, seed)
    else:
        model = checkpoint.build_model(ckpt, **fields)
    try:
        tokenizer = from_dict(ckpt.tokenizer)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt checkpoint: bad tokenizer in {ckpt.path} ({e})") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"corrupt checkpoint: tokenizer has {tokenizer.vocab_size} tokens, "
                        f"model expects {model.config.vocab_size}")
    return model, tokenizer, ckpt


def _adds_adapters(ckpt, fields):
    return bool(fields.get("lora_rank")) and not ckpt.config.get("lora_rank")


def _with_new_adapters(ckpt, fields, seed):
    """A model with fresh adapters on a checkpoint that has none: base weights copied, adapters initialised."""
    from .checkpoint import config_from

    config = config_from(ckpt, **fields)
    model = GPT(config, init_weights=False)
    for name, p in model.params.items():
        if ".lora_" not in name:
            if name not in ckpt.params or ckpt.params[name].shape != p.shape:
                raise UserError(f"corrupt checkpoint: {ckpt.path} weight {name} is missing or has the wrong shape")
            p[...] = ckpt.params[name]
    model.init_adapters(np.random.default_rng(seed))
    return model


# ------------------------------------------------------------------ one entry point
@dataclass
class Loaded:
    """What `load` found: the model, its tokenizer (None if the folder has none) and where it came from."""

    model: GPT
    tokenizer: object
    tokenizer_problem: str  # why tokenizer is None ("" when it is not)
    kind: str  # "npgpt" or "huggingface"
    path: str
    iteration: int = 0
    state: dict = None

    def require_tokenizer(self, purpose="sampling"):
        if self.tokenizer is None:
            raise UserError(f"{self.path}: the model loaded, but {purpose} needs its tokenizer: {self.tokenizer_problem}")
        return self.tokenizer


def _check_dir(path):
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"a model path must be a directory name, got {path!r}")
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) in ("checkpoint.json", "best.json"):
        return path  # an npgpt pointer named directly: the latest or the best snapshot
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: directory not found")
    if not os.path.isdir(path):
        raise UserError(f"no checkpoint at {path}: not a directory (give the folder holding checkpoint.json or config.json)")
    return path


def load(path, dtype=None, backend=None, block_size=None, with_tokenizer=True, seed=0, which="best", **overrides):
    """Load a Hugging Face GPT-2 folder or an npgpt training output directory -> Loaded.

    An npgpt directory gives its best-validation snapshot (which="latest": the
    last one saved); OUT/checkpoint.json or OUT/best.json name one directly.
    dtype, backend: None keeps the file's (npgpt) or float32 and the default backend (HF);
    block_size: crop the position table; overrides: other GPTConfig fields (dropout, lora_*);
    seed: draws fresh LoRA adapters' A.
    """
    path = _check_dir(path)
    if os.path.isfile(path) or is_npgpt_checkpoint(path):
        model, tokenizer, ckpt = load_npgpt_model(path, dtype, backend, block_size, seed, which, **overrides)
        return Loaded(model, tokenizer, "", "npgpt", path, ckpt.iteration, ckpt.state)
    model = load_hf_model(path, dtype, backend, block_size, seed, **overrides)
    tokenizer, problem = (load_tokenizer(path, model.config.vocab_size) if with_tokenizer else (None, "not loaded"))
    return Loaded(model, tokenizer, problem, "huggingface", path, 0, {})


def from_pretrained(path, dtype=None, backend=None, block_size=None, **overrides):
    """GPT.from_pretrained: the model alone (see `load` for the tokenizer)."""
    return load(path, dtype, backend, block_size, with_tokenizer=False, **overrides).model


def load_for_finetuning(path, dtype=None, backend=None, block_size=None, **overrides):
    """(model, tokenizer) to fine-tune: for `npgpt train --init-from PATH`.

    overrides: GPTConfig fields such as dropout and lora_rank / lora_alpha /
    lora_targets (fresh adapters, B = 0, so step 0 is the pretrained
    model).  A folder without tokenizer files is refused: training needs
    to encode its data with the model's own tokenizer.
    """
    loaded = load(path, dtype, backend, block_size, **overrides)
    return loaded.model, loaded.require_tokenizer("fine-tuning")


# ------------------------------------------------------------------ tokenizers
# Reading Hugging Face tokenizer files lives with the tokenizers (npgpt/tokenizers/hf.py);
# writing them is part of save_pretrained below.
from .tokenizers.hf import MERGES, TOKENIZER_JSON, VOCAB, load_tokenizer, tokenizer_from_json  # noqa: E402,F401

TOKENIZER_CONFIG = "tokenizer_config.json"


# ------------------------------------------------------------------ saving
def _json_bytes(obj):
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def export_params(model, merge_lora=True):
    """{npgpt name: array} for a GPT-2 file: adapters merged into their weights, missing biases as zeros."""
    from .layers import lora

    cfg, P = model.config, model.params
    if cfg.norm != "pre" or cfg.positions != "learned":
        raise UserError(f"this model has norm={cfg.norm}, positions={cfg.positions}; a GPT-2 folder can only hold "
                        f"norm=pre, positions=learned (keep it as an npgpt checkpoint)")
    if cfg.lora_rank and not merge_lora:
        raise UserError("this model has LoRA adapters, which a GPT-2 folder cannot hold unmerged; "
                        "export with merge_lora=True (npgpt export --merge-lora)")
    full = GPTConfig(**{**cfg.to_dict(), "bias": True, "lora_rank": 0})
    out = {}
    for name, shape in param_shapes(full).items():
        if name in P:
            w = P[name]
            prefix = name.removesuffix(".weight")
            if prefix + ".lora_a" in P:
                w = lora.merged_weight(w, P[prefix + ".lora_a"], P[prefix + ".lora_b"], model.lora_scale)
            out[name] = np.ascontiguousarray(w)
        else:
            out[name] = np.zeros(shape, model.dtype)  # bias=False: a zero bias is no bias
    return out


def hf_config_dict(model, eos_id=None):
    """config.json for transformers' GPT2LMHeadModel."""
    cfg = model.config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_inner,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "tie_word_embeddings": True, "scale_attn_weights": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "dtype": cfg.dtype, "torch_dtype": cfg.dtype,
        "initializer_range": 0.02, "use_cache": True,
    }


def save_pretrained(model, directory, tokenizer=None, merge_lora=True):
    """Write model (and tokenizer) as a Hugging Face GPT-2 folder; returns the list of files written.

    Weights go to model.safetensors under the `transformer.` prefix, as
    transformers saves them; the head is tied, so there is no lm_head.weight.
    Each file is written atomically; other files in directory are left alone.
    """
    import safetensors.numpy

    params = export_params(model, merge_lora)
    tok_files = tokenizer_files(tokenizer, model.config) if tokenizer is not None else {}
    eos = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>") if tokenizer is not None else None
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"cannot export to {directory}: it exists and is not a directory")
    os.makedirs(directory, exist_ok=True)
    files = {WEIGHTS: safetensors.numpy.save({"transformer." + k: v for k, v in params.items()},
                                             metadata={"format": "pt"}),
             CONFIG: _json_bytes(hf_config_dict(model, eos)), **tok_files}
    for name, data in files.items():
        atomic_write_bytes(os.path.join(directory, name), data)
    return sorted(files)


def tokenizer_files(tokenizer, config):
    """{file name: bytes} that transformers' AutoTokenizer loads and encodes with as npgpt does."""
    from .tokenizers import bpe
    from .tokenizers.char import CharTokenizer

    if isinstance(tokenizer, bpe.BPETokenizer):
        if tokenizer.pattern != bpe.GPT2_SPLIT_PATTERN:
            raise UserError("this BPE tokenizer splits text with its own pattern; transformers' GPT-2 tokenizer "
                            "always uses GPT-2's, so it would encode differently: not exported")
        vocab = {bpe.token_to_str(t): i for t, i in sorted(tokenizer.mergeable_ranks().items(), key=lambda kv: kv[1])}
        vocab.update(tokenizer.special_tokens)
        merges = tokenizer.to_dict()["merges"]
        specials = sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
        eot = "<|endoftext|>" if "<|endoftext|>" in tokenizer.special_tokens else None
        tok_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": config.block_size,
                      "add_prefix_space": False, "errors": "replace", "clean_up_tokenization_spaces": False,
                      "bos_token": eot, "eos_token": eot, "unk_token": eot,
                      "added_tokens_decoder": {str(i): _added_token(s) for s, i in specials}}
        return {VOCAB: (json.dumps(vocab, ensure_ascii=False) + "\n").encode("utf-8"),
                MERGES: ("#version: 0.2\n" + "".join(m + "\n" for m in merges)).encode("utf-8"),
                TOKENIZER_CONFIG: _json_bytes(tok_config)}
    if isinstance(tokenizer, CharTokenizer):
        return {TOKENIZER_JSON: _json_bytes(char_tokenizer_json(tokenizer)),
                TOKENIZER_CONFIG: _json_bytes({"tokenizer_class": "PreTrainedTokenizerFast",
                                               "model_max_length": config.block_size,
                                               "clean_up_tokenization_spaces": False})}
    raise UserError(f"cannot export a {type(tokenizer).__name__} as Hugging Face tokenizer files")


def _added_token(content):
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            "special": True}


def char_tokenizer_json(tokenizer):
    """A character tokenizer as a `tokenizers` tokenizer.json: a BPE model with no merges.

    With no normalizer and no pre-tokenizer the whole text is one word; a
    BPE without merges cuts it into characters and looks each one up, which
    is exactly npgpt's character encoding.  The Fuse decoder joins tokens
    with nothing in between.  A character outside the vocabulary has no
    unknown token to fall back on: transformers drops it, where npgpt
    refuses the text.
    """
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {c: i for i, c in enumerate(tokenizer.chars)},
                      "merges": []}}


# ------------------------------------------------------------------ `npgpt export`
def add_arguments(parser):
    parser.add_argument("--ckpt", default="out", help="training output directory (or a Hugging Face folder) to export (default: out)")
    parser.add_argument("--to", required=True, metavar="DIR",
                        help="folder to write config.json, model.safetensors and the tokenizer files into")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA adapters into their weights (required when the checkpoint has adapters)")
    parser.add_argument("--force", action="store_true", help="overwrite a model already exported to DIR")


def run(args):
    target = args.to
    if os.path.exists(os.path.join(target, "checkpoint.json")):
        raise UserError(f"{target} holds an npgpt checkpoint; export to another folder")
    existing = [n for n in (CONFIG, WEIGHTS) if os.path.exists(os.path.join(target, n))]
    if existing and not args.force:
        raise UserError(f"{target} already holds {existing[0]}; pass --force to overwrite it")
    loaded = load(args.ckpt)
    if loaded.model.config.lora_rank and not args.merge_lora:
        raise UserError(f"{args.ckpt} has LoRA adapters, which a GPT-2 folder cannot hold unmerged: "
                        "add --merge-lora to fold them into the weights")
    files = save_pretrained(loaded.model, target, tokenizer=loaded.tokenizer, merge_lora=args.merge_lora)
    source = f"{args.ckpt} (iteration {loaded.iteration})" if loaded.kind == "npgpt" else args.ckpt
    print(f"exported {source} to {target}: {', '.join(files)}")
    if loaded.tokenizer is None:
        print(f"note: no tokenizer written ({loaded.tokenizer_problem})")
    return 0
