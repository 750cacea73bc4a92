"""Checkpoints: round trip, atomic saves under simulated crashes, corruption reports."""
import json
import os

import numpy as np
import pytest

from npgpt import GPT, GPTConfig, checkpoint
from npgpt.errors import UserError
from npgpt.tokenizers.char import CharTokenizer


def tiny_model(seed=0):
    return GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=seed)


def save(out, model, it, **extra):
    moments = {"m": np.full(model.num_params, it, np.float32), "v": np.ones(model.num_params, np.float32)}
    return checkpoint.save(str(out), model, CharTokenizer("abcde"), {"iter": it, **extra}, moments)


def test_round_trip(tmp_path):
    model = tiny_model()
    save(tmp_path, model, 7, note="hi")
    loaded, tok, ckpt = checkpoint.load_model(str(tmp_path))
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    assert loaded.config == model.config and tok.chars == list("abcde")
    assert ckpt.iteration == 7 and ckpt.state["note"] == "hi"
    np.testing.assert_array_equal(ckpt.optimizer["m"], 7)
    # the weights are views into one flat buffer, as the optimizer needs
    assert np.shares_memory(loaded.params["wte.weight"], loaded.flat_params)


def test_no_pickle_anywhere(tmp_path):
    save(tmp_path, tiny_model(), 1)
    snapshot = checkpoint.load(str(tmp_path)).path
    assert sorted(os.listdir(snapshot)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                            "state.json", "tokenizer.json"]


def test_a_new_save_replaces_the_old_snapshot(tmp_path):
    save(tmp_path, tiny_model(0), 1)
    save(tmp_path, tiny_model(1), 2)
    snapshots = [e for e in os.listdir(tmp_path) if e.startswith("ckpt-")]
    assert snapshots == ["ckpt-0000002"]
    np.testing.assert_array_equal(checkpoint.load_model(str(tmp_path))[0].flat_params, tiny_model(1).flat_params)


@pytest.mark.parametrize("crash_at", ["optimizer.safetensors", "state.json", "rename", "pointer"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, crash_at):
    old = tiny_model(0)
    save(tmp_path, old, 1)
    files_before = {name: open(os.path.join(tmp_path, "ckpt-0000001", name), "rb").read()
                    for name in os.listdir(os.path.join(tmp_path, "ckpt-0000001"))}

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    if crash_at == "rename":
        monkeypatch.setattr(checkpoint.os, "rename", crash)
    elif crash_at == "pointer":
        monkeypatch.setattr(checkpoint, "atomic_write_bytes", crash)
    else:
        real_write = checkpoint._write_file

        def write_until(directory, name, data, hashes):
            if name == crash_at:
                with open(os.path.join(directory, name), "wb") as f:
                    f.write(data[: len(data) // 2])  # half a file, then the machine "dies"
                raise Crash
            real_write(directory, name, data, hashes)

        monkeypatch.setattr(checkpoint, "_write_file", write_until)
    with pytest.raises(Crash):
        save(tmp_path, tiny_model(1), 2)
    monkeypatch.undo()

    model, _, ckpt = checkpoint.load_model(str(tmp_path))
    assert ckpt.iteration == 1
    np.testing.assert_array_equal(model.flat_params, old.flat_params)
    for name, content in files_before.items():
        assert open(os.path.join(tmp_path, "ckpt-0000001", name), "rb").read() == content
    # the next save succeeds and clears whatever the crash left behind
    save(tmp_path, tiny_model(2), 3)
    assert sorted(e for e in os.listdir(tmp_path) if e != "checkpoint.json") == ["ckpt-0000003"]


def test_corrupt_files_are_reported(tmp_path):
    save(tmp_path, tiny_model(), 1)
    weights = os.path.join(tmp_path, "ckpt-0000001", "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="corrupt checkpoint.*model.safetensors"):
        checkpoint.load(str(tmp_path))
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt checkpoint"):
        checkpoint.load(str(tmp_path))


def test_a_consistent_but_wrong_checkpoint_is_reported(tmp_path):
    """Hashes match but the weights disagree with the config (e.g. files swapped by hand)."""
    save(tmp_path, tiny_model(), 1)
    pointer = json.loads((tmp_path / "checkpoint.json").read_text())
    snapshot = tmp_path / pointer["snapshot"]
    config = json.loads((snapshot / "config.json").read_text())
    config["n_embd"] = 16
    data = (json.dumps(config)).encode()
    (snapshot / "config.json").write_bytes(data)
    import hashlib

    pointer["files"]["config.json"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "checkpoint.json").write_text(json.dumps(pointer))
    with pytest.raises(UserError, match="corrupt checkpoint.*shape"):
        checkpoint.load_model(str(tmp_path))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="directory not found"):
        checkpoint.load(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="checkpoint.json is missing"):
        checkpoint.load(str(tmp_path))
