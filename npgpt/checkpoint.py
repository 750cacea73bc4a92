"""Checkpoints: a directory of safetensors and JSON files, saved atomically, no pickle.

Layout of a training output directory OUT:

    OUT/checkpoint.json        the pointer: which snapshot is current (the latest), with each file's sha256
    OUT/best.json              the same for the best-validation snapshot (written by the trainer)
    OUT/ckpt-0002000/          the current snapshot
        model.safetensors      weights, GPT-2's Hugging Face names
        optimizer.safetensors  AdamW moments m, v (flat)
        config.json            the GPTConfig
        tokenizer.json         the tokenizer's to_dict()
        state.json             iteration, RNG states, schedule state, training settings
    OUT/metrics.jsonl          (written by the trainer)

A save writes a new snapshot into a hidden staging directory, renames it
into place, and only then replaces checkpoint.json (temp file +
os.replace, both atomic on POSIX).  A crash at any point leaves
checkpoint.json naming the previous, complete snapshot; leftovers are
left alone (a save deletes only the snapshot the pointer named before it,
never other `ckpt-*` or `.saving-*` entries, which may be the user's).  Loading checks every file's hash, so a
truncated or edited file is reported instead of half-loaded.

The best snapshot costs no extra write: a save marked best=True points
best.json at the new snapshot too (after checkpoint.json, so a crash
between the two leaves best.json at the previous best, still on disk); a
later save that is not the best keeps the snapshot best.json names
instead of deleting it.  Resuming reads checkpoint.json (the latest);
sampling and evaluation read best.json when it names another snapshot
(`load_model`, `load(..., which="best")`).  A pointer file can also be
named directly: `--ckpt OUT/checkpoint.json` is the latest, `OUT/best.json`
the best.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import safetensors.numpy

from .errors import UserError
from .fileio import atomic_write_bytes, current_umask, fsync_dir
from .model import GPT, NORMS, POSITIONS, GPTConfig, param_shapes
from .safeload import Const, Float, Int, Map, Obj, OneOf, load_json, parse_json

POINTER = "checkpoint.json"
BEST_POINTER = "best.json"
FORMAT = "npgpt-checkpoint"
VERSION = 1
SNAPSHOT_RE = re.compile(r"^ckpt-\d{7,}(-\d+)?$")  # 7 digits or more: iteration 10,000,000+ too
STAGING_PREFIX = ".saving-"

# What a checkpoint's JSON files must look like (safeload schemas); everything else is refused.
POINTER_SCHEMA = Obj({"format": Const(FORMAT), "version": Const(VERSION), "snapshot": str,
                      "iter": Int(min=0), "files": Map(str)})
STATE_SCHEMA = Obj({}, optional={"iter": Int(min=0)})
CONFIG_SCHEMA = Obj({"vocab_size": Int(min=1), "block_size": Int(min=1), "n_layer": Int(min=1),
                     "n_head": Int(min=1), "n_embd": Int(min=1)},
                    optional={"dropout": Float(min=0.0, max=1.0), "bias": bool, "dtype": str, "backend": str,
                              "norm": OneOf(*NORMS), "positions": OneOf(*POSITIONS)})  # absent: pre, learned
TOKENIZER_SCHEMA = Obj({})


@dataclass
class Checkpoint:
    """Everything a snapshot holds, loaded into memory."""

    path: str  # the snapshot directory
    config: dict  # GPTConfig fields
    params: dict  # {name: array}
    tokenizer: dict
    optimizer: dict  # {"m": (N,), "v": (N,)} or {} when saved without
    state: dict  # JSON training state

    @property
    def iteration(self):
        return int(self.state.get("iter", 0))


# ------------------------------------------------------------------ writing
def _json_bytes(obj):
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _write_file(directory, name, data, hashes):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    hashes[name] = hashlib.sha256(data).hexdigest()


def _new_snapshot_name(out_dir, iteration):
    name, n = f"ckpt-{iteration:07d}", 1
    while os.path.exists(os.path.join(out_dir, name)):
        name, n = f"ckpt-{iteration:07d}-{n}", n + 1
    return name


def read_pointer(out_dir, name=POINTER):
    """The parsed checkpoint.json (or best.json) of out_dir, or None when there is none."""
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return None
    try:
        pointer = load_json(path, POINTER_SCHEMA, max_bytes=1 << 20)
    except UserError as e:
        raise UserError(f"corrupt checkpoint: {e}") from None
    if not SNAPSHOT_RE.match(pointer["snapshot"]):
        raise UserError(f"corrupt checkpoint: {path} names no valid snapshot")
    return pointer


def _read_pointer_or_none(out_dir, name):
    try:
        return read_pointer(out_dir, name)
    except UserError:
        return None


def save(out_dir, model, tokenizer, state, optimizer_arrays=None, best=False):
    """Save a snapshot of model (+ optimizer moments and training state) into out_dir atomically.

    state: a JSON-serialisable dict (iteration, RNG states, ...).
    best: this snapshot is the best so far: best.json names it too.
    Otherwise the snapshot best.json names (if any) is kept.
    Returns the snapshot directory.
    """
    os.makedirs(out_dir, exist_ok=True)
    # the snapshots this save replaces: the only existing entries a save ever deletes
    previous = _read_pointer_or_none(out_dir, POINTER)
    previous_best = _read_pointer_or_none(out_dir, BEST_POINTER)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        hashes = {}
        _write_file(staging, "model.safetensors", safetensors.numpy.save(dict(model.params)), hashes)
        if optimizer_arrays:
            _write_file(staging, "optimizer.safetensors", safetensors.numpy.save(dict(optimizer_arrays)), hashes)
        _write_file(staging, "config.json", _json_bytes(model.config.to_dict()), hashes)
        _write_file(staging, "tokenizer.json", _json_bytes(tokenizer.to_dict()), hashes)
        _write_file(staging, "state.json", _json_bytes(state), hashes)
        fsync_dir(staging)
        name = _new_snapshot_name(out_dir, int(state.get("iter", 0)))
        os.rename(staging, os.path.join(out_dir, name))  # atomic: the snapshot appears complete
        fsync_dir(out_dir)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _raise_save_error(e, out_dir, previous)
    pointer = {"format": FORMAT, "version": VERSION, "snapshot": name, "iter": int(state.get("iter", 0)),
               "files": hashes}
    try:
        atomic_write_bytes(os.path.join(out_dir, POINTER), _json_bytes(pointer))  # the commit point
    except BaseException as e:
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)  # ours and never committed
        _raise_save_error(e, out_dir, previous)
    if best:
        atomic_write_bytes(os.path.join(out_dir, BEST_POINTER), _json_bytes(pointer))
    kept = {name, (pointer if best else previous_best or {}).get("snapshot")}
    for old in (previous, previous_best):
        if old is not None and old["snapshot"] not in kept:
            shutil.rmtree(os.path.join(out_dir, old["snapshot"]), ignore_errors=True)
            kept.add(old["snapshot"])
    return os.path.join(out_dir, name)


def _raise_save_error(e, out_dir, previous):
    """A failed write (full disk, quota, permissions) as one line without the staging file's temporary name."""
    if isinstance(e, OSError):
        kept = "the previous checkpoint is unharmed" if previous is not None else "nothing was saved"
        raise UserError(f"cannot save a checkpoint in {out_dir}: {e.strerror or type(e).__name__}; {kept}") from None
    raise e


def forget_best(out_dir):
    """Remove best.json, and the snapshot it names unless checkpoint.json names it too
    (a fresh run with --overwrite must not leave the previous run's best behind)."""
    best = _read_pointer_or_none(out_dir, BEST_POINTER)
    path = os.path.join(out_dir, BEST_POINTER)
    if os.path.isfile(path):
        os.unlink(path)
        fsync_dir(out_dir)
    latest = _read_pointer_or_none(out_dir, POINTER)
    if best is not None and (latest is None or latest["snapshot"] != best["snapshot"]):
        shutil.rmtree(os.path.join(out_dir, best["snapshot"]), ignore_errors=True)


# ------------------------------------------------------------------ reading
def _read_verified(snapshot, name, hashes):
    path = os.path.join(snapshot, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"corrupt checkpoint: cannot read {path} ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != hashes.get(name):
        raise UserError(f"corrupt checkpoint: {path} does not match its recorded sha256 (truncated or modified)")
    return data


def _load_json(data, path, schema):
    try:
        return parse_json(data, path, schema)
    except UserError as e:
        raise UserError(f"corrupt checkpoint: {e}") from None


def _load_tensors(data, path):
    try:
        return safetensors.numpy.load(data)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise UserError(f"corrupt checkpoint: {path} is not a valid safetensors file ({e})") from None


def first_non_finite(params):
    """The name of the first array holding NaN or inf, or None: such weights are refused, never saved or used."""
    for name, w in params.items():
        if w.dtype.kind in "fc" and not np.isfinite(w).all():
            return name
    return None


def _locate(out_dir, which):
    """(training output directory, the pointer to read there, its parsed content) for load()."""
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    if os.path.isfile(out_dir) and os.path.basename(out_dir) in (POINTER, BEST_POINTER):
        # a pointer named directly: OUT/checkpoint.json (the latest) or OUT/best.json
        directory, name = os.path.dirname(out_dir) or ".", os.path.basename(out_dir)
        return directory, name, read_pointer(directory, name)
    if not os.path.exists(out_dir):
        raise UserError(f"no checkpoint at {out_dir}: directory not found")
    if not os.path.isdir(out_dir):
        raise UserError(f"no checkpoint at {out_dir}: not a directory")
    pointer = read_pointer(out_dir)
    if pointer is None:
        raise UserError(f"no checkpoint at {out_dir}: {POINTER} is missing (no training run has saved a checkpoint there)")
    if which == "best":
        best = read_pointer(out_dir, BEST_POINTER)
        if best is not None and best["snapshot"] != pointer["snapshot"]:
            return out_dir, BEST_POINTER, best
    return out_dir, POINTER, pointer


def model_kind(config):
    """What kind of model a config.json describes: its "model" field; GPT configs have none ("gpt")."""
    return config.get("model", "gpt")


def load(out_dir, which="latest", kind="gpt", config_schema=CONFIG_SCHEMA):
    """Read a snapshot of out_dir (a training output directory) into a Checkpoint.

    which: "latest" (what checkpoint.json names: resuming) or "best" (the
    best-validation snapshot when best.json names one other than the
    latest, else the latest).  out_dir may also be a pointer file itself.
    kind: the model the caller builds ("gpt", or "seq2seq" with that
    model's config_schema); a checkpoint of another kind gets one line.
    """
    out_dir, pointer_name, pointer = _locate(out_dir, which)
    snapshot = os.path.join(out_dir, pointer["snapshot"])
    if not os.path.isdir(snapshot):
        raise UserError(f"corrupt checkpoint: snapshot directory {snapshot} is missing")
    hashes = pointer["files"]
    for required in ("model.safetensors", "config.json", "tokenizer.json", "state.json"):
        if required not in hashes:
            raise UserError(f"corrupt checkpoint: {pointer_name} lists no {required}")

    def read(name):
        return _read_verified(snapshot, name, hashes)

    config_path = os.path.join(snapshot, "config.json")
    config = _load_json(read("config.json"), config_path, Obj({}))
    if model_kind(config) != kind:
        raise UserError(f"{out_dir} holds a {model_kind(config)!s:.40} model, not a {kind} model")
    config = _load_json(read("config.json"), config_path, config_schema)
    tokenizer = _load_json(read("tokenizer.json"), os.path.join(snapshot, "tokenizer.json"), TOKENIZER_SCHEMA)
    state = _load_json(read("state.json"), os.path.join(snapshot, "state.json"), STATE_SCHEMA)
    params = _load_tensors(read("model.safetensors"), os.path.join(snapshot, "model.safetensors"))
    bad = first_non_finite(params)
    if bad is not None:
        raise UserError(f"corrupt checkpoint: weight {bad} in {snapshot} holds NaN or inf values (a diverged run?); refused")
    optimizer = {}
    if "optimizer.safetensors" in hashes:
        optimizer = _load_tensors(read("optimizer.safetensors"), os.path.join(snapshot, "optimizer.safetensors"))
    return Checkpoint(snapshot, config, params, tokenizer, optimizer, state)


def config_from(ckpt, **overrides):
    """The checkpoint's GPTConfig, with run-time fields (dropout, backend) optionally changed."""
    fields = dict(ckpt.config)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"corrupt checkpoint: bad model config in {ckpt.path} ({e})") from None


def build_model(ckpt, **overrides):
    """A GPT holding the checkpoint's weights; overrides as in config_from.

    The weights are checked against the config's shapes before the model is
    allocated, so a crafted config (n_embd 10**9) cannot make npgpt allocate
    more than the weights file itself holds.
    """
    config = config_from(ckpt, **overrides)
    if config.n_layer > len(ckpt.params):  # each layer has several weights: don't list 10**9 layers' names
        raise UserError(f"corrupt checkpoint: {ckpt.path} config says n_layer {config.n_layer}, but the weights "
                        f"file holds only {len(ckpt.params)} arrays")
    expected = param_shapes(config)
    if set(ckpt.params) != set(expected):
        missing = sorted(set(expected) - set(ckpt.params))
        extra = sorted(set(ckpt.params) - set(expected))
        raise UserError(f"corrupt checkpoint: {ckpt.path} weights do not match its config "
                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, shape in expected.items():
        if ckpt.params[name].shape != shape:
            raise UserError(f"corrupt checkpoint: {name} has shape {ckpt.params[name].shape}, config says {shape}")
    model = GPT(config)
    for name, p in model.params.items():
        p[...] = ckpt.params[name]  # into the flat buffer's view: keeps the layout the optimizer relies on
    return model


def load_description(out_dir, which="best"):
    """(config dict, tokenizer dict) of a snapshot, verified, without reading its weights."""
    out_dir, pointer_name, pointer = _locate(out_dir, which)
    snapshot = os.path.join(out_dir, pointer["snapshot"])
    found = []
    for name, schema in (("config.json", CONFIG_SCHEMA), ("tokenizer.json", TOKENIZER_SCHEMA)):
        if name not in pointer["files"]:
            raise UserError(f"corrupt checkpoint: {pointer_name} lists no {name}")
        path = os.path.join(snapshot, name)
        found.append(_load_json(_read_verified(snapshot, name, pointer["files"]), path, schema))
    return tuple(found)


def load_model(out_dir, backend=None, which="best"):
    """(model, tokenizer, checkpoint) for sampling and evaluation: the best-validation snapshot by default."""
    from .tokenizers import from_dict

    ckpt = load(out_dir, which)
    model = build_model(ckpt, backend=backend)
    try:
        tokenizer = from_dict(ckpt.tokenizer)  # a BPE split pattern is vetted here (tokenizers/split.py)
    except (UserError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt checkpoint: bad tokenizer in {ckpt.path} ({e})") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"corrupt checkpoint: tokenizer has {tokenizer.vocab_size} tokens, "
                        f"model expects {model.config.vocab_size}")
    return model, tokenizer, ckpt
