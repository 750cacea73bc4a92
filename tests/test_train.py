"""The training loop: exact resume, Ctrl-C, metrics, settings from TOML."""
import json
import os
import signal

import numpy as np
import pytest

from npgpt import train as train_module
from training_helpers import assert_identical, final_params, train, write_corpus

N = 12


@pytest.mark.parametrize("extra", [
    ["--dropout", "0.1", "--grad-accum", "2", "--label-smoothing", "0.1"],
    ["--lr-schedule", "plateau", "--lr-patience", "0", "--eval-interval", "3"],
], ids=["cosine-dropout-accum", "plateau"])
def test_resume_is_bit_identical(tmp_path, extra):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "straight", "--max-iters", N, *extra) == 0
    # k iterations (the schedule told the full length), stop, resume to N
    assert train("--data", data, "--out", tmp_path / "split", "--max-iters", 5, "--lr-decay-iters", N, *extra) == 0
    assert train("--resume", tmp_path / "split", "--max-iters", N) == 0
    assert_identical(final_params(tmp_path / "straight"), final_params(tmp_path / "split"))


def test_ctrl_c_saves_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    data = write_corpus(tmp_path)
    common = ["--data", data, "--dropout", "0.1", "--max-iters", N]
    assert train(*common, "--out", tmp_path / "straight") == 0

    real_step = train_module.Trainer.step

    def step_then_interrupt(self):
        result = real_step(self)
        if self.iter == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers, in the middle of the loop
        return result

    monkeypatch.setattr(train_module.Trainer, "step", step_then_interrupt)
    assert train(*common, "--out", tmp_path / "stopped") == 130
    err = capsys.readouterr().err
    assert "interrupted at iteration 4" in err and "Traceback" not in err
    assert json.loads((tmp_path / "stopped" / "checkpoint.json").read_text())["iter"] == 4
    monkeypatch.undo()

    assert train("--resume", tmp_path / "stopped") == 0
    assert_identical(final_params(tmp_path / "straight"), final_params(tmp_path / "stopped"))


def test_metrics_progress_and_sample(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 10, "--sample-tokens", 40, "--lr", "3e-3") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 5, 10]
    for key in ("iter", "train_loss", "val_loss", "val_perplexity", "lr", "grad_norm", "tokens_per_sec", "elapsed"):
        assert key in records[-1]
    assert records[-1]["val_perplexity"] == pytest.approx(np.exp(records[-1]["val_loss"]))
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    stdout = capsys.readouterr().out
    assert "val" in stdout and "sample" in stdout


def test_settings_from_toml_and_flags_override(tmp_path):
    data = write_corpus(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{data}"\nmax-iters = 3\nlr = 2e-3\nweight_decay = 0.05\n')
    out = tmp_path / "out"
    assert train("--config", config, "--out", out, "--lr", "5e-3") == 0
    from npgpt import checkpoint

    ckpt = checkpoint.load(str(out))
    settings = ckpt.state["train_config"]
    assert (settings["max_iters"], settings["lr"], settings["weight_decay"]) == (3, 5e-3, 0.05)


def test_defaults_of_the_cli_are_the_train_config_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    train_module.add_arguments(parser)
    args = parser.parse_args([])
    cfg, ckpt = train_module.resolve_settings(args)
    assert cfg == train_module.TrainConfig(lr_decay_iters=cfg.max_iters) and ckpt is None


def test_overwrite_starts_afresh(tmp_path):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 5) == 0
    (out / "checkpoint.json").write_text("garbage")  # even a corrupt old run is replaced
    assert train("--data", data, "--out", out, "--max-iters", 10, "--overwrite") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 5, 10]
    assert json.loads((out / "checkpoint.json").read_text())["iter"] == 10


def test_data_parallel_resume_is_bit_identical(tmp_path):
    """Numba backend, two data-parallel workers, dropout and accumulation: resuming stays exact."""
    data = write_corpus(tmp_path)
    extra = ["--backend", "numba", "--workers", "2", "--dropout", "0.1", "--grad-accum", "2"]
    assert train("--data", data, "--out", tmp_path / "straight", "--max-iters", N, *extra) == 0
    assert train("--data", data, "--out", tmp_path / "split", "--max-iters", 5, "--lr-decay-iters", N, *extra) == 0
    # the shared tiny flags say --backend numpy: a resume that repeats them would switch backends
    assert train("--resume", tmp_path / "split", "--max-iters", N, "--backend", "numba") == 0
    assert_identical(final_params(tmp_path / "straight"), final_params(tmp_path / "split"))


def test_automatic_worker_count_is_saved_for_resume(tmp_path, monkeypatch):
    """--workers 0 is resolved once and saved: a resume on a machine with another
    core count splits batches as before, so it still continues exactly."""
    data = write_corpus(tmp_path)
    common = ["--data", data, "--backend", "numba", "--dropout", "0.1", "--workers", "0"]
    monkeypatch.setattr(train_module, "choose_workers", lambda model, batch_size: 2)
    assert train(*common, "--out", tmp_path / "straight", "--max-iters", N) == 0
    assert train(*common, "--out", tmp_path / "split", "--max-iters", 5, "--lr-decay-iters", N) == 0
    state = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    saved = json.loads((tmp_path / "split" / state["snapshot"] / "state.json").read_text())
    assert saved["train_config"]["workers"] == 2
    monkeypatch.setattr(train_module, "choose_workers", lambda model, batch_size: 1)  # "another machine"
    assert train("--resume", tmp_path / "split", "--max-iters", N, "--backend", "numba") == 0
    assert_identical(final_params(tmp_path / "straight"), final_params(tmp_path / "split"))


def test_one_and_two_workers_train_the_same_model(tmp_path):
    """Without dropout, splitting the batch changes only the order of float sums."""
    data = write_corpus(tmp_path)
    common = ["--data", data, "--backend", "numba", "--dtype", "float64", "--max-iters", N]
    assert train(*common, "--out", tmp_path / "one", "--workers", "1") == 0
    assert train(*common, "--out", tmp_path / "two", "--workers", "2") == 0
    one, two = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-9, atol=1e-12, err_msg=name)
