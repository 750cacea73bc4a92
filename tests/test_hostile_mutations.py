"""Property test (issue 11): a checkpoint whose JSON files or tensors are mutated at random
either loads correctly or fails with one `npgpt: error:` line; never a traceback.

Each example copies a good tiny checkpoint, applies one mutation to one of its files
(checkpoint.json, config.json, state.json, tokenizer.json, model.safetensors), and
usually re-records the file's sha256 in the pointer, so the mutation reaches the
parsers instead of stopping at the hash check.  Then `npgpt sample` runs in-process.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgpt import checkpoint
from npgpt.cli import main
from training_helpers import TINY, write_corpus

FILES = ["checkpoint.json", "config.json", "state.json", "tokenizer.json", "model.safetensors"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mutations")
    data = write_corpus(tmp)
    assert main(["train", *TINY, "--data", data, "--out", str(tmp / "out"), "--max-iters", "2"]) == 0
    return tmp / "out"


def _paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a parsed JSON value, the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


@st.composite
def mutations(draw):
    """(file name, function bytes -> bytes, re-record the hash?)"""
    name = draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["json-value", "json-delete", "flip-byte", "truncate", "insert", "tensor-value",
                                 "tensor-header"]))
    seed = draw(st.integers(0, 2**32 - 1))
    value = draw(json_values)
    rehash = draw(st.booleans()) or name != "checkpoint.json"

    def mutate(data):
        rng = np.random.default_rng(seed)
        if kind in ("json-value", "json-delete", "tensor-header"):
            if name.endswith(".safetensors"):  # its header is JSON too
                n = int.from_bytes(data[:8], "little")
                header = json.loads(data[8:8 + n])
                paths = list(_paths(header))
                path = paths[rng.integers(len(paths))]
                header = _replace(header, path, value) if kind != "json-delete" or not path else header
                raw = json.dumps(header).encode()
                return len(raw).to_bytes(8, "little") + raw + data[8 + n:]
            obj = json.loads(data)
            paths = list(_paths(obj))
            path = paths[rng.integers(len(paths))]
            if kind == "json-delete" and path:
                parent = obj
                for key in path[:-1]:
                    parent = parent[key]
                del parent[path[-1]]
            else:
                obj = _replace(obj, path, value)
            return json.dumps(obj).encode()
        if kind == "tensor-value" and name.endswith(".safetensors"):
            tensors = {k: v.copy() for k, v in safetensors.numpy.load(data).items()}
            key = sorted(tensors)[rng.integers(len(tensors))]
            flat = tensors[key].reshape(-1)
            flat[rng.integers(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e30, 0.0, -3.0])
            return safetensors.numpy.save(tensors)
        data = bytearray(data)
        if kind == "flip-byte" and data:
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            del data[rng.integers(len(data) + 1):]
        else:
            at = rng.integers(len(data) + 1)
            data[at:at] = rng.bytes(int(rng.integers(1, 16)))
        return bytes(data)

    return name, kind, mutate, rehash


def _apply(out, name, mutate, rehash):
    pointer_path = out / "checkpoint.json"
    pointer = json.loads(pointer_path.read_text())
    path = pointer_path if name == "checkpoint.json" else out / pointer["snapshot"] / name
    data = mutate(path.read_bytes())
    path.write_bytes(data)
    if rehash and name != "checkpoint.json":
        pointer["files"][name] = hashlib.sha256(data).hexdigest()
        pointer_path.write_text(json.dumps(pointer))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations())
def test_a_mutated_checkpoint_loads_correctly_or_fails_in_one_line(good_checkpoint, capsys, mutation):
    name, kind, mutate, rehash = mutation
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        shutil.copytree(good_checkpoint, out)
        from pathlib import Path

        try:
            _apply(Path(out), name, mutate, rehash)
        except (ValueError, KeyError, TypeError, IndexError):
            return  # the mutation itself did not apply (e.g. JSON-editing a file the flip made invalid)
        before = sorted(os.listdir(out))
        capsys.readouterr()
        status = main(["sample", "--ckpt", out, "--max-new-tokens", "2", "--seed", "1"])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        if status == 0:  # a correct load: what the command used is what the files hold
            model, tokenizer, ckpt = checkpoint.load_model(out, backend="numpy")
            assert all(np.isfinite(w).all() for w in model.params.values())
            for key, w in ckpt.params.items():
                np.testing.assert_array_equal(model.params[key], w)
            assert model.config.vocab_size == tokenizer.vocab_size
        else:
            lines = captured.err.strip().splitlines()
            assert status == 2 and len(lines) == 1 and lines[0].startswith("npgpt: error: "), (name, kind, captured.err)
        assert sorted(os.listdir(out)) == before  # reading never deletes or adds files
