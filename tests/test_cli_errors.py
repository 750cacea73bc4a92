"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing lost."""
import json

import pytest

from npgpt.cli import main
from training_helpers import TINY, final_params, assert_identical, train, write_corpus


def run_cli(capsys, *args):
    """-> (exit status, stderr) of `npgpt ARGS` run in-process."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    return status, err


def assert_one_line_error(status, err, *phrases):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npgpt: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run to resume, sample and evaluate."""
    tmp = tmp_path_factory.mktemp("trained")
    data = write_corpus(tmp)
    assert train("--data", data, "--out", tmp / "out", "--max-iters", 3) == 0
    return tmp / "out"


# ------------------------------------------------------------------ data
@pytest.mark.parametrize("content, phrase", [
    (None, "data file not found"),
    (b"", "data file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    ("Ça va très bien, merci.\n".encode("latin-1") * 50, "not UTF-8"),
    (b"To be, or not to be.\n", "fewer than block_size + 1"),
])
def test_bad_data_files(tmp_path, capsys, content, phrase):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    status, err = run_cli(capsys, "train", *TINY, "--data", path, "--out", tmp_path / "out")
    assert_one_line_error(status, err, phrase)


# ------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("flags, phrase", [
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr=-1e-3"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--block-size", "0"], "--block-size must be a positive integer"),
    (["--max-iters=-5"], "--max-iters must be a positive integer"),
    (["--dropout", "1.0"], "--dropout must be in [0, 1)"),
    (["--n-embd", "18", "--n-head", "4"], "divisible by --n-head"),
    (["--min-lr", "0.1"], "--min-lr must be between 0 and --lr"),
    (["--vocab-size", "500"], "--vocab-size applies to --tokenizer bpe only"),
])
def test_invalid_hyperparameters(tmp_path, capsys, flags, phrase):
    status, err = run_cli(capsys, "train", *TINY, *flags, "--data", write_corpus(tmp_path), "--out", tmp_path / "o")
    assert_one_line_error(status, err, phrase)
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def test_bad_toml(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iters = \n")
    assert_one_line_error(*run_cli(capsys, "train", "--config", bad), "not valid TOML")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 0.1\n")
    assert_one_line_error(*run_cli(capsys, "train", "--config", unknown), "unknown setting 'learning_rate'")
    assert_one_line_error(*run_cli(capsys, "train", "--config", tmp_path / "none.toml"), "config file not found")


# ------------------------------------------------------------------ output directory
def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    status, err = run_cli(capsys, "train", *TINY, "--data", write_corpus(tmp_path), "--out", blocker / "out")
    assert_one_line_error(status, err, "cannot write to output directory")


def test_an_existing_run_is_not_overwritten(trained, tmp_path, capsys):
    before = final_params(trained)
    status, err = run_cli(capsys, "train", *TINY, "--data", write_corpus(tmp_path), "--out", trained)
    assert_one_line_error(status, err, "already holds a checkpoint", "--resume")
    assert_identical(final_params(trained), before)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("command", [["train", "--resume"], ["sample", "--ckpt"], ["eval", "--ckpt"]])
def test_missing_checkpoint(tmp_path, capsys, command):
    status, err = run_cli(capsys, *command, tmp_path / "nowhere")
    assert_one_line_error(status, err, "no checkpoint at", "not found")
    status, err = run_cli(capsys, *command, tmp_path)  # exists, holds nothing
    assert_one_line_error(status, err, "no checkpoint at", "checkpoint.json is missing")


@pytest.mark.parametrize("command", [["train", "--resume"], ["sample", "--ckpt"], ["eval", "--ckpt"]])
def test_corrupt_checkpoint(trained, tmp_path, capsys, command):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    snapshot = broken / json.loads((broken / "checkpoint.json").read_text())["snapshot"]
    with open(snapshot / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 8)  # flipped bytes: same size, wrong content
    status, err = run_cli(capsys, *command, broken)
    assert_one_line_error(status, err, "corrupt checkpoint", "model.safetensors")


@pytest.mark.parametrize("flags, phrase", [
    (["--n-layer", "2"], "different model"),
    (["--n-embd", "32"], "n-embd=16"),
    (["--dtype", "float64"], "different model"),
    (["--no-bias"], "bias=True"),
    (["--block-size", "32"], "larger than the model's block_size 16"),
    (["--max-iters", "2"], "already at iteration 3"),
])
def test_resume_with_a_different_model(trained, capsys, flags, phrase):
    before = final_params(trained)
    status, err = run_cli(capsys, "train", "--resume", trained, *flags)
    assert_one_line_error(status, err, phrase)
    assert_identical(final_params(trained), before)


def test_resume_on_data_with_unknown_characters(trained, tmp_path, capsys):
    other = write_corpus(tmp_path, "Zebras quietly jump over ×××. " * 100)
    status, err = run_cli(capsys, "train", "--resume", trained, "--data", other, "--max-iters", 5)
    assert_one_line_error(status, err, "'Z'", "'×'")


# ------------------------------------------------------------------ sampling and eval
def test_prompt_with_unknown_characters_names_them(trained, capsys):
    status, err = run_cli(capsys, "sample", "--ckpt", trained, "--prompt", "Zounds, ROMEO! ☃")
    assert_one_line_error(status, err, "--prompt", "'Z'", "'☃'")


@pytest.mark.parametrize("flags, phrase", [
    (["--temperature=-1"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--num-samples", "0"], "--num-samples"),
    (["--prompt", ""], "--prompt is empty"),
])
def test_bad_sampling_options(trained, capsys, flags, phrase):
    assert_one_line_error(*run_cli(capsys, "sample", "--ckpt", trained, *flags), phrase)


def test_eval_on_a_file_and_on_bad_files(trained, tmp_path, capsys):
    status = main(["eval", "--ckpt", str(trained), "--data", write_corpus(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0 and "perplexity" in out and "bits/char" in out
    status, err = run_cli(capsys, "eval", "--ckpt", trained, "--data", tmp_path / "missing.txt")
    assert_one_line_error(status, err, "data file not found")
    status, err = run_cli(capsys, "eval", "--ckpt", trained, "--data", write_corpus(tmp_path, "QQQ xyz", "q.txt"))
    assert_one_line_error(status, err, "cannot encode", "'Q'")
