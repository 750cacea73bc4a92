"""Hostile input, table-driven: every case gives its exit code, one error line, no traceback,
and leaves every file the user had in --out in place (issue 11)."""
import hashlib
import json
import os
import shutil

import pytest

from npgpt import safeload
from npgpt.cli import main
from npgpt.errors import UserError
from training_helpers import TINY, write_corpus

DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit in json and tomllib


def files_in(directory):
    """Every path under directory (relative), so a case can show nothing was removed."""
    found = set()
    for root, dirs, names in os.walk(directory):
        for n in dirs + names:
            found.add(os.path.relpath(os.path.join(root, n), directory))
    return found


def run(capsys, *args):
    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def assert_one_line(status, err, phrase, code=2):
    assert status == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npgpt: error: "), err
    assert "Traceback" not in err
    assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    data = write_corpus(tmp)
    assert main(["train", *TINY, "--data", data, "--out", str(tmp / "out"), "--max-iters", "2"]) == 0
    return tmp / "out", data


def pointer(out):
    return json.loads((out / "checkpoint.json").read_text())


def rewrite(out, name, data):
    """Replace snapshot file `name` with data and re-record its hash: a consistent, crafted checkpoint."""
    p = pointer(out)
    (out / p["snapshot"] / name).write_bytes(data)
    p["files"][name] = hashlib.sha256(data).hexdigest()
    (out / "checkpoint.json").write_text(json.dumps(p))


def edit_json(out, name, change):
    p = pointer(out)
    obj = json.loads((out / p["snapshot"] / name).read_text())
    obj = change(obj)
    rewrite(out, name, json.dumps(obj).encode())


def edit_pointer(change):
    def apply(out):
        p = change(pointer(out))
        (out / "checkpoint.json").write_text(p if isinstance(p, str) else json.dumps(p))
    return apply


def setitem(key, value):
    def change(obj):
        obj[key] = value
        return obj
    return change


# (id, mutation of a copy of a good checkpoint, phrase of the one error line)
CHECKPOINT_CASES = [
    ("pointer-deep", edit_pointer(lambda p: DEEP), "nested more than"),
    ("pointer-list", edit_pointer(lambda p: [1, 2]), "must be an object"),
    ("pointer-null", edit_pointer(lambda p: None), "must be an object"),
    ("pointer-string", edit_pointer(lambda p: '"x"'), "must be an object"),
    ("pointer-not-json", edit_pointer(lambda p: "{oops"), "not valid JSON"),
    ("pointer-nan", edit_pointer(lambda p: '{"iter": NaN}'), "not valid JSON"),
    ("pointer-version-2", edit_pointer(lambda p: setitem("version", 2)(p)), "field 'version'"),
    ("pointer-version-str", edit_pointer(lambda p: setitem("version", "1")(p)), "field 'version'"),
    ("pointer-no-version", edit_pointer(lambda p: {k: v for k, v in p.items() if k != "version"}), "'version' is missing"),
    ("pointer-iter-negative", edit_pointer(lambda p: setitem("iter", -3)(p)), "field 'iter' must be an integer >= 0, got -3"),
    ("pointer-iter-float", edit_pointer(lambda p: setitem("iter", 2.5)(p)), "field 'iter'"),
    ("pointer-iter-bool", edit_pointer(lambda p: setitem("iter", True)(p)), "field 'iter'"),
    ("pointer-format", edit_pointer(lambda p: setitem("format", "pickle")(p)), "field 'format'"),
    ("pointer-files-list", edit_pointer(lambda p: setitem("files", [])(p)), "field 'files'"),
    ("pointer-files-hash-int", edit_pointer(lambda p: setitem("files", {"model.safetensors": 3})(p)), "field 'files.model.safetensors'"),
    ("pointer-snapshot-int", edit_pointer(lambda p: setitem("snapshot", 7)(p)), "field 'snapshot'"),
    ("pointer-snapshot-traversal", edit_pointer(lambda p: setitem("snapshot", "../../etc")(p)), "valid snapshot"),
    ("pointer-binary", lambda out: (out / "checkpoint.json").write_bytes(b"\xff\xfe\x00\x01"), "not UTF-8"),
    ("pointer-directory", lambda out: ((out / "checkpoint.json").unlink(), (out / "checkpoint.json").mkdir()), "directory"),
    ("state-list", lambda out: rewrite(out, "state.json", b"[1, 2]"), "must be an object"),
    ("state-deep", lambda out: rewrite(out, "state.json", DEEP.encode()), "nested more than"),
    ("state-iter-negative", lambda out: edit_json(out, "state.json", setitem("iter", -1)), "field 'iter'"),
    ("state-iter-string", lambda out: edit_json(out, "state.json", setitem("iter", "5")), "field 'iter'"),
    ("config-list", lambda out: rewrite(out, "config.json", b"[]"), "must be an object"),
    ("config-null", lambda out: rewrite(out, "config.json", b"null"), "must be an object"),
    ("config-deep", lambda out: rewrite(out, "config.json", DEEP.encode()), "nested more than"),
    ("config-n-embd-string", lambda out: edit_json(out, "config.json", setitem("n_embd", "16")), "field 'n_embd'"),
    ("config-n-layer-zero", lambda out: edit_json(out, "config.json", setitem("n_layer", 0)), "field 'n_layer'"),
    ("config-vocab-negative", lambda out: edit_json(out, "config.json", setitem("vocab_size", -5)), "field 'vocab_size'"),
    ("config-dropout-2", lambda out: edit_json(out, "config.json", setitem("dropout", 2.0)), "field 'dropout'"),
    ("config-bias-string", lambda out: edit_json(out, "config.json", setitem("bias", "yes")), "field 'bias'"),
    ("config-missing-block", lambda out: edit_json(out, "config.json", lambda c: {k: v for k, v in c.items() if k != "block_size"}),
     "'block_size' is missing"),
    ("tokenizer-deep", lambda out: rewrite(out, "tokenizer.json", DEEP.encode()), "nested more than"),
    ("tokenizer-list", lambda out: rewrite(out, "tokenizer.json", b"[]"), "must be an object"),
    ("tokenizer-binary", lambda out: rewrite(out, "tokenizer.json", b"\xff\xff"), "not UTF-8"),
]


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("case, mutate, phrase", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_crafted_checkpoint(trained, tmp_path, capsys, command, case, mutate, phrase):
    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    mutate(out)
    before = files_in(out)
    args = [command, "--ckpt", out]
    if command == "sample":
        args += ["--max-new-tokens", "3"]
    else:
        args += ["--data", data]
    status, err = run(capsys, *args)
    assert_one_line(status, err, phrase)
    assert files_in(out) >= before


RESUME_CASES = [c for c in CHECKPOINT_CASES if c[0].startswith(("pointer-iter", "pointer-version", "state", "config-list"))]


@pytest.mark.parametrize("case, mutate, phrase", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_crafted_checkpoint_on_resume(trained, tmp_path, capsys, case, mutate, phrase):
    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    mutate(out)
    before = files_in(out)
    status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--out", out, "--max-iters", "4")
    assert_one_line(status, err, phrase)
    assert files_in(out) >= before


@pytest.mark.parametrize("toml, phrase", [
    (DEEP.replace("[", "a = [", 1), "nested more than"),
    ("a = " + "{b = " * 200 + "1" + "}" * 200, "nested more than"),
    (".".join(["k"] * 300) + " = 1", "nested more than"),
    ('lr = "0.001"', "setting 'lr' must be float"),
    ("lr = nan", "setting 'lr' must be finite"),
    ("max_iters = 2.5", "setting 'max_iters' must be int"),
    ("max_iters = true", "setting 'max_iters' must be int"),
    ("bias = 1", "setting 'bias' must be bool"),
    ("[section]\nlr = 1", "unknown setting 'section'"),
    ("lr = [1, 2]", "setting 'lr' must be float"),
    ("= broken", "not valid TOML"),
])
def test_hostile_toml(tmp_path, capsys, toml, phrase):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    data = write_corpus(tmp_path)
    status, err = run(capsys, "train", *TINY, "--data", data, "--out", tmp_path / "out", "--config", path)
    assert_one_line(status, err, phrase)


@pytest.mark.parametrize("content, phrase", [
    (DEEP, "nested more than"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested more than"),
    ("[1]", "must be an object"),
    ('{"a": "1"}', "field 'a' must be an integer"),
    ('{"a": NaN}', "not valid JSON"),
    (b"\xff", "not UTF-8"),
])
def test_hostile_encoder_json(tmp_path, content, phrase):
    from npgpt.tokenizers.bpe import BPETokenizer

    enc = tmp_path / "encoder.json"
    enc.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(UserError, match=phrase):
        BPETokenizer.from_gpt2_files(enc, tmp_path / "vocab.bpe")


@pytest.mark.parametrize("content", [DEEP, '{"merges": ' + "[" * 3000 + "]" * 3000 + "}"])
def test_hostile_tokenizer_json(tmp_path, content):
    from npgpt.tokenizers.bpe import BPETokenizer

    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(UserError, match="nested more than"):
        BPETokenizer.load(path)


# ------------------------------------------------------------------ safeload itself
S = safeload
SCHEMA = S.Obj({"iter": S.Int(min=0), "version": S.Const(1), "name": str},
               optional={"lr": S.Float(min=0.0), "tags": S.List(str, max_len=2), "mode": S.OneOf("a", "b")},
               extra=False)


@pytest.mark.parametrize("obj, message", [
    ({"iter": -3, "version": 1, "name": "x"}, "f.json: field 'iter' must be an integer >= 0, got -3"),
    ({"iter": 0, "version": 2, "name": "x"}, "field 'version' must be 1, got 2"),
    ({"iter": 0, "version": 1}, "field 'name' is missing"),
    ({"iter": 0, "version": 1, "name": 3}, "field 'name' must be a string, got 3"),
    ({"iter": 0, "version": 1, "name": "x", "lr": "0.001"}, "field 'lr' must be a finite number >= 0.0"),
    ({"iter": 0, "version": 1, "name": "x", "lr": float("inf")}, "field 'lr' must be a finite number"),
    ({"iter": 0, "version": 1, "name": "x", "tags": ["a", 1]}, "field 'tags[1]' must be a string"),
    ({"iter": 0, "version": 1, "name": "x", "tags": ["a"] * 3}, "at most 2"),
    ({"iter": 0, "version": 1, "name": "x", "mode": "c"}, "field 'mode' must be one of 'a', 'b'"),
    ({"iter": 0, "version": 1, "name": "x", "other": 1}, "unknown field 'other'"),
    ([], "f.json must be an object, got []"),
])
def test_check_names_file_and_field(obj, message):
    with pytest.raises(UserError) as e:
        S.check(obj, SCHEMA, "f.json")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_check_accepts_a_good_value():
    good = {"iter": 5, "version": 1, "name": "x", "lr": 1, "tags": ["a"], "mode": "b"}
    assert S.check(good, SCHEMA, "f.json") is good


def test_size_bound(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(UserError, match="larger than 100 bytes"):
        S.load_json(path, max_bytes=100)
    assert len(S.load_json(path)) == 1001


def test_character_device_is_refused():
    with pytest.raises(UserError, match="not a regular file"):
        S.load_json("/dev/zero")


def test_depth_scan_ignores_brackets_in_strings():
    assert S.max_nesting('{"a": "[[[[[[", "b": [1, "]]"]}') == 2
    assert S.parse_json('["' + "[" * 1000 + '"]', "x") == ["[" * 1000]
    assert S.max_nesting('"\\"[[[["') == 0


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("loss, ppl", [(1000.0, float("inf")), (709.5, float("inf")), (float("inf"), float("inf")),
                                       (float("-inf"), 0.0), (0.0, 1.0)])
def test_perplexity_never_overflows(loss, ppl):
    from npgpt.evaluate import perplexity

    assert perplexity(loss) == ppl


def test_nan_perplexity_stays_nan():
    from npgpt.evaluate import perplexity

    assert perplexity(float("nan")) != perplexity(float("nan"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverging_run_stops_and_keeps_the_good_checkpoint(trained, tmp_path, capsys, monkeypatch, bad):
    from npgpt import train as train_mod

    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before_pointer = (out / "checkpoint.json").read_bytes()
    before = files_in(out)
    monkeypatch.setattr(train_mod.Trainer, "evaluate", lambda self: bad)
    status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--out", out, "--max-iters", "4")
    assert_one_line(status, err, "training diverged at iteration 4")
    assert (out / "checkpoint.json").read_bytes() == before_pointer
    assert files_in(out) >= before


def test_non_finite_weights_are_never_saved(trained, tmp_path, capsys, monkeypatch):
    from npgpt import train as train_mod

    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before_pointer = (out / "checkpoint.json").read_bytes()
    real_step = train_mod.Trainer.step

    def poisoned(self):
        result = real_step(self)
        if self.iter == 4:  # after the last step: the save check, not the gradient check, must catch it
            next(iter(self.model.params.values()))[...] = float("nan")
        return result

    monkeypatch.setattr(train_mod.Trainer, "step", poisoned)
    monkeypatch.setattr(train_mod.Trainer, "evaluate", lambda self: 1.0)
    status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--out", out, "--max-iters", "4")
    assert_one_line(status, err, "is not finite")
    assert (out / "checkpoint.json").read_bytes() == before_pointer


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_non_finite_weights_are_refused(trained, tmp_path, capsys, value, command):
    import safetensors.numpy

    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    params = dict(safetensors.numpy.load((out / pointer(out)["snapshot"] / "model.safetensors").read_bytes()))
    name = sorted(params)[0]
    params[name] = params[name].copy()
    params[name].flat[0] = value
    rewrite(out, "model.safetensors", safetensors.numpy.save(params))
    args = [command, "--ckpt", out] + (["--max-new-tokens", "3"] if command == "sample" else ["--data", data])
    assert_one_line(*run(capsys, *args), "holds NaN or inf")


# ------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("iteration", [9_999_999, 10_000_000, 123_456_789, 10**12])
def test_snapshots_past_ten_million_iterations(tmp_path, iteration):
    from npgpt import checkpoint
    from npgpt.model import GPT, GPTConfig
    from npgpt.tokenizers.char import CharTokenizer

    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, backend="numpy"))
    tok = CharTokenizer("abcde")
    checkpoint.save(str(tmp_path), model, tok, {"iter": 5})
    checkpoint.save(str(tmp_path), model, tok, {"iter": iteration})
    assert checkpoint.load(str(tmp_path)).iteration == iteration
    assert [e for e in os.listdir(tmp_path) if e.startswith("ckpt-")] == [f"ckpt-{iteration:07d}"]


def test_a_save_deletes_only_the_snapshot_it_replaces(tmp_path):
    from npgpt import checkpoint
    from npgpt.model import GPT, GPTConfig
    from npgpt.tokenizers.char import CharTokenizer

    mine = ["ckpt-0000001", "ckpt-12345678", ".saving-mine", "notes.txt"]
    for name in mine:
        (tmp_path / name).mkdir() if not name.endswith(".txt") else (tmp_path / name).write_text("keep")
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, backend="numpy"))
    tok = CharTokenizer("abcde")
    checkpoint.save(str(tmp_path), model, tok, {"iter": 7})
    checkpoint.save(str(tmp_path), model, tok, {"iter": 9})
    left = set(os.listdir(tmp_path))
    assert set(mine) <= left and "ckpt-0000009" in left and "ckpt-0000007" not in left


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_character_device_is_refused_as_a_corpus(tmp_path, capsys, device):
    status, err = run(capsys, "train", *TINY, "--data", device, "--out", tmp_path / "out")
    assert_one_line(status, err, "not a regular file")


def test_sigterm_saves_like_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "npgpt.cli", "train", *TINY, "--data", data, "--out", str(out),
                             "--max-iters", "100000", "--eval-interval", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    from npgpt import checkpoint

    assert checkpoint.load(str(out)).iteration > 0


def test_sample_into_a_closed_pipe_exits_quietly(trained):
    import subprocess
    import sys

    good, _ = trained
    cmd = f"{sys.executable} -m npgpt.cli sample --ckpt {good} --max-new-tokens 2000 --num-samples 3 | head -c 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr


# ------------------------------------------------------------------ split patterns (family 4)
def bpe_json(pattern):
    return json.dumps({"type": "bpe", "version": 1, "merges": [], "special_tokens": {"<|endoftext|>": 256},
                       "pattern": pattern})


# (id, pattern, phrase of the one error line); each is refused before any text is split
BAD_PATTERNS = [
    ("two-groups", r"(\w+)|(\s+)", "2 capture group(s)"),
    ("one-group", r"(?s)(.)", "1 capture group(s)"),
    ("backreference", r"(?s)(.)\1|.", "capture group"),
    ("drops-space", r"\S+", "drops text"),
    ("drops-punctuation", r"\w+|\s+", "drops text"),
    ("drops-newline", r"[^\n]+", "drops text"),
    ("drops-rare-digit", r"(?!\u2167)(?s).", "drops text"),
    ("empty-match", r"\w*|(?s).", "matches the empty string"),
    ("invalid", r"((", "invalid split pattern"),
    ("too-long", "a|" * 3000 + "(?s).", "characters refused"),
    ("backtracking", r"(?:a|aa)+$|(?s).", "too slow"),
]


@pytest.mark.parametrize("case, pattern, phrase", BAD_PATTERNS, ids=[c[0] for c in BAD_PATTERNS])
def test_hostile_split_pattern_in_tokenizer_json(tmp_path, capsys, case, pattern, phrase):
    path = tmp_path / "tok.json"
    path.write_text(bpe_json(pattern))
    before = files_in(tmp_path)
    status, err = run(capsys, "tokenizer", "encode", "-t", path, "hello world")
    assert_one_line(status, err, phrase)
    assert str(path) in err  # names the file
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("command", ["sample", "eval", "resume"])
@pytest.mark.parametrize("case, pattern, phrase", [c for c in BAD_PATTERNS if c[0] in ("two-groups", "drops-space", "backtracking")],
                         ids=["two-groups", "drops-space", "backtracking"])
def test_hostile_split_pattern_in_checkpoint(trained, tmp_path, capsys, command, case, pattern, phrase):
    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    rewrite(out, "tokenizer.json", bpe_json(pattern).encode())
    before = files_in(out)
    if command == "resume":
        args = ["train", *TINY, "--data", data, "--resume", out, "--max-iters", "4"]
    else:
        args = [command, "--ckpt", out] + (["--max-new-tokens", "3"] if command == "sample" else ["--data", data])
    assert_one_line(*run(capsys, *args), phrase)
    assert files_in(out) >= before


def test_a_vetted_pattern_is_guarded_when_it_runs():
    """A pattern that covers every probe but drops one word: encode refuses instead of losing it."""
    from npgpt.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer([], pattern=r"(?s)(?!secret).")
    assert tok.decode(tok.encode("a public text")) == "a public text"
    with pytest.raises(UserError, match="drops text at character 3"):
        tok.encode("my secret")


def test_gpt4_style_patterns_are_accepted():
    from npgpt.tokenizers.bpe import BPETokenizer

    cl100k = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
    tok = BPETokenizer.train("hello world 12345, hello again\n" * 20, 270, pattern=cl100k)
    text = "It's 2026: hello   world!\n\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok._splitter.split("12345") == ["123", "45"]  # the pattern really is cl100k's, not GPT-2's


# ------------------------------------------------------------------ the --out lock (family 7)
def test_a_second_run_on_the_same_out_is_refused(trained, tmp_path, capsys):
    from npgpt.lock import lock_out_dir

    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = {p: (out / p).read_bytes() for p in files_in(out) if (out / p).is_file()}
    with lock_out_dir(str(out)):  # another run holds it
        status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--max-iters", "4")
        assert_one_line(status, err, "is in use by another npgpt training run (process")
        status, err = run(capsys, "train", *TINY, "--data", data, "--out", out, "--overwrite", "--max-iters", "4")
        assert_one_line(status, err, "is in use by another npgpt training run")
    after = {p: (out / p).read_bytes() for p in files_in(out) if (out / p).is_file() and p != ".npgpt.lock"}
    assert after == {p: b for p, b in before.items() if p != ".npgpt.lock"}  # metrics.jsonl untouched
    assert run(capsys, "train", *TINY, "--data", data, "--resume", out, "--max-iters", "4")[0] == 0  # released


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom npgpt.lock import lock_out_dir\n"
                               f"with lock_out_dir({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    data = write_corpus(tmp_path)
    assert_one_line(*run(capsys, "train", *TINY, "--data", data, "--out", out, "--max-iters", "2"), "in use")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / ".npgpt.lock").exists()  # stale file, no lock: the kernel dropped it with the process
    assert run(capsys, "train", *TINY, "--data", data, "--out", out, "--max-iters", "2")[0] == 0


# ------------------------------------------------------------------ resources (family 5)
@pytest.mark.parametrize("flags, phrase", [
    (["--n-embd", "1000000", "--n-head", "1"], "needs about"),
    (["--n-layer", "100000000"], "needs about"),
    (["--batch-size", "100000000"], "activations"),
    (["--block-size", "1000000000"], "needs about"),
    (["--n-embd", "10000000000000", "--n-head", "1"], "PB of memory"),
    (["--tokenizer", "bpe", "--vocab-size", "100000000000"], "logits"),
    (["--workers", "64"], "--workers 64 is more than --batch-size 4"),
    (["--workers", "5"], "is more than --batch-size 4"),
])
def test_impossible_sizes_are_refused_before_allocating(tmp_path, capsys, flags, phrase):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    status, err = run(capsys, "train", *TINY, "--data", data, "--out", out, *flags)
    assert_one_line(status, err, phrase)
    assert not out.exists()  # refused before --out was even created


def test_the_memory_estimate_matches_a_measured_run():
    from npgpt.resources import BASE_BYTES, training_memory

    # `npgpt bench --config L` (GPT-2 124M, batch 4, block 64, 1 worker) measured 2,430 MB peak RSS (README)
    estimate = BASE_BYTES + sum(training_memory(50257, 64, 12, 768, 4).values())
    assert 0.9 * 2430 * 2**20 < estimate < 1.1 * 2430 * 2**20


def test_the_memory_check_compares_with_what_is_available(monkeypatch):
    from npgpt import resources

    parts = {"weights": 3 * 2**30}
    assert resources.check_memory(parts, 8 * 2**30) > 3 * 2**30
    with pytest.raises(UserError, match=r"needs about 3.1 GB of memory \(weights 3.0 GB\), more than the 2.0 GB"):
        resources.check_memory(parts, 2 * 2**30)
    monkeypatch.setenv("NPGPT_SKIP_MEMORY_CHECK", "1")
    resources.check_memory(parts, 2 * 2**30)
    assert resources.available_memory() is None or resources.available_memory() > 0


def test_a_crafted_config_cannot_make_sample_allocate(trained, tmp_path, capsys):
    good, _ = trained
    for k, (change, phrase) in enumerate([(setitem("n_layer", 10**9), "config says n_layer 1000000000"),
                                          (setitem("n_embd", 2**40), "has shape"),
                                          (setitem("vocab_size", 10**12), "has shape")]):
        out = tmp_path / f"out-{k}"
        shutil.copytree(good, out)
        edit_json(out, "config.json", change)
        assert_one_line(*run(capsys, "sample", "--ckpt", out, "--max-new-tokens", "2"), phrase)


# ------------------------------------------------------------------ small ones (family 8)
@pytest.mark.parametrize("word, phrase", [
    ("\u00b2", "not a token id: '\u00b2'"),
    ("\u0663", "not a token id"),
    ("9" * 5000, "unknown token id 99999999999999999999... (5000 digits)"),
    ("-1", "unknown token id -1"),
    ("1.5", "not a token id"),
    ("-", "not a token id"),
    ("0x10", "not a token id"),
    ("100000", "unknown token id 100000 (this tokenizer has ids 0..256)"),
])
def test_hostile_decode_ids(tmp_path, capsys, word, phrase):
    path = tmp_path / "tok.json"
    path.write_text(bpe_json(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""))
    assert_one_line(*run(capsys, "tokenizer", "decode", "-t", path, "65", word), phrase)


@pytest.mark.parametrize("target, phrase", [("/dev/zero", "not a regular file"), ("dir", "is a directory"),
                                            ("bad.txt", "not UTF-8 text (invalid byte at offset 3)"),
                                            ("missing.txt", "file not found")])
def test_hostile_encode_inputs(tmp_path, capsys, target, phrase):
    path = tmp_path / "tok.json"
    path.write_text(bpe_json(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""))
    (tmp_path / "dir").mkdir()
    (tmp_path / "bad.txt").write_bytes(b"abc\xff def")
    file = target if target.startswith("/") else tmp_path / target
    status, err = run(capsys, "tokenizer", "encode", "-t", path, "--file", file)
    assert_one_line(status, err, phrase)


@pytest.mark.parametrize("temperature", ["1e-310", "5e-324", "1e-7"])
def test_a_denormal_temperature_is_refused(trained, capsys, temperature):
    good, _ = trained
    assert_one_line(*run(capsys, "sample", "--ckpt", good, "--max-new-tokens", "3", "--temperature", temperature),
                    "--temperature must be 0 (greedy) or at least 1e-06")


# ------------------------------------------------------------------ past 10,000,000 iterations (family 2)
def test_a_run_resumed_at_iteration_ten_million_saves_and_loads(trained, tmp_path, capsys):
    from npgpt import checkpoint

    good, data = trained
    out = tmp_path / "out"
    shutil.copytree(good, out)
    (out / "ckpt-9999999").mkdir()  # the user's own directory, shaped like a snapshot
    edit_json(out, "state.json", setitem("iter", 10_000_000))
    edit_pointer(lambda p: setitem("iter", 10_000_000)(p))(out)
    old_snapshot = pointer(out)["snapshot"]
    status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--max-iters", "10000003")
    assert status == 0, err
    assert pointer(out)["snapshot"] == "ckpt-10000003"
    assert checkpoint.load(str(out)).iteration == 10_000_003
    assert not (out / old_snapshot).exists() and (out / "ckpt-9999999").is_dir()
    assert run(capsys, "sample", "--ckpt", out, "--max-new-tokens", "3")[0] == 0
    status, err = run(capsys, "train", *TINY, "--data", data, "--resume", out, "--max-iters", "10000005")
    assert status == 0, err
    assert checkpoint.load(str(out)).iteration == 10_000_005


@pytest.mark.parametrize("flags, phrase", [
    (["--data", "/dev/zero"], "/dev/zero is not a regular file"),
    (["--data", "DIR"], "is a directory"),
    (["-o", "FIFO"], "exists and is not a regular file"),
    (["-o", "DIR"], "exists and is not a regular file"),
])
def test_hostile_tokenizer_train_paths(tmp_path, capsys, flags, phrase):
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    flags = [str(tmp_path / f.lower()) if f in ("DIR", "FIFO") else f for f in flags]
    before = files_in(tmp_path)
    assert_one_line(*run(capsys, "tokenizer", "train", "--vocab-size", "260", *flags), phrase)
    assert files_in(tmp_path) == before and (tmp_path / "fifo").is_fifo()  # the FIFO is not replaced


@pytest.mark.parametrize("out, phrase", [("/dev/null", "cannot write to output directory /dev/null"),
                                         ("FILE", "cannot write to output directory")])
def test_hostile_out_paths(tmp_path, capsys, out, phrase):
    data = write_corpus(tmp_path)
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" if out == "FILE" else out
    assert_one_line(*run(capsys, "train", *TINY, "--data", data, "--out", out, "--max-iters", "2"), phrase)
    assert (tmp_path / "file").read_text() == "mine"


def test_check_split_pattern_names_where_the_pattern_came_from():
    from npgpt.tokenizers.split import GPT2_SPLIT_PATTERN, check_split_pattern

    assert check_split_pattern(GPT2_SPLIT_PATTERN, "x").split("it's 42!") == ["it", "'s", " 42", "!"]
    with pytest.raises(UserError, match=r"^tokenizer.json pre_tokenizer: split pattern '\\\\S\+' drops text"):
        check_split_pattern(r"\S+", "tokenizer.json pre_tokenizer")
    with pytest.raises(UserError, match="^f.json: the split pattern must be a string, got dict"):
        check_split_pattern({"Regex": "x"}, "f.json")
