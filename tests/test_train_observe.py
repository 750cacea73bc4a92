"""npgpt train's observability: --stats-interval, --plot and --tensorboard on real tiny runs.

The statistics themselves are checked against NumPy in tests/test_observe.py; here: that the
one Trainer records them at the right steps, that what it records is what npgpt.observe computes
for that step, that recording them changes nothing about training (weights, resume), and that
--plot / --tensorboard draw and log the run's own records.
"""
import json
import math
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
from training_helpers import assert_identical, final_params, train, write_corpus

from npgpt import checkpoint, observe, plot
from npgpt.cli import main
from npgpt.model import views_into
from npgpt.tasks import LanguageModelingTask
from npgpt.train import STEP_LOG, TrainConfig, Trainer, rng_from_state, typed_settings


def read_log(out, name=STEP_LOG):
    with open(out / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def stats_records(out):
    return [r for r in read_log(out) if r["kind"] == "stats"]


def trainer_from(out, **changes):
    """A Trainer resuming the checkpoint in out, in-process (nothing is written unless it saves)."""
    ckpt = checkpoint.load(str(out))
    cfg = replace(TrainConfig(**typed_settings(ckpt.state["train_config"], "test")), **changes)
    task = LanguageModelingTask(cfg, ckpt)
    return Trainer(task.cfg, task, ckpt, progress=False), ckpt


def rms(a):
    a = np.asarray(a, dtype=np.float64)
    return math.sqrt(float(np.mean(a * a)))


# ------------------------------------------------------------------ the records
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stats_records_every_n_steps_equal_what_observe_computes(tmp_path, backend):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--backend", backend, "--max-iters", 5, "--stats-interval", 3,
                 "--log-interval", 2, "--grad-clip", 0.1) == 0  # step 6 is clipped: grad_rms must undo it
    at5 = tmp_path / "at5"
    shutil.copytree(out, at5)
    # the resumed run keeps --stats-interval 3; the shared tiny flags say --backend numpy, so repeat it
    assert train("--resume", out, "--max-iters", 7, "--backend", backend) == 0
    stats = stats_records(out)
    assert [r["iter"] for r in stats] == [3, 6]

    # Step 6 again, from the same checkpoint, observed by hand with npgpt.observe.
    trainer, ckpt = trainer_from(at5, stats_interval=0, max_iters=7)
    assert trainer.stats_recorder is None
    names = list(trainer.model.shapes)
    before = {n: np.array(p) for n, p in trainer.model.params.items()}
    task = trainer.task
    unclipped = np.zeros_like(trainer.grad)  # the gradient of step 6, recomputed on its own
    task.loss_and_grad(task.draw_batch(rng_from_state(ckpt.state["rng"]["data"])), unclipped, None)
    recorder = observe.StatsRecorder(trainer.model)
    recorder.begin()
    _, norm, _ = trainer.step()
    expected = recorder.end(trainer.iter, trainer.grad, norm, trainer.cfg.grad_clip)
    assert norm > trainer.cfg.grad_clip == 0.1
    after = {n: np.array(p) for n, p in trainer.model.params.items()}

    record = stats[1]
    assert set(record) == {"kind", "iter", "params", "layers"} and record["iter"] == expected["iter"] == 6
    assert list(record["params"]) == names
    grads = views_into(unclipped, trainer.model.shapes)
    for name in names:
        got, want = record["params"][name], expected["params"][name]
        assert set(got) == {"weight_rms", "grad_rms", "update_ratio"}
        assert got["weight_rms"] == pytest.approx(want["weight_rms"], rel=1e-6)
        assert got["weight_rms"] == pytest.approx(rms(before[name]), rel=1e-6)  # plain NumPy
        assert got["grad_rms"] == pytest.approx(want["grad_rms"], rel=1e-5)
        assert got["grad_rms"] == pytest.approx(rms(grads[name]), rel=1e-4)  # unclipped, though the step clipped
        step = np.std(after[name].astype(np.float64) - before[name].astype(np.float64))
        if want["update_ratio"] is None:
            assert got["update_ratio"] is None
        else:
            assert got["update_ratio"] == pytest.approx(want["update_ratio"], abs=1e-6)
            assert got["update_ratio"] == pytest.approx(math.log10(step / np.std(before[name])), abs=1e-6)
    assert any(v["update_ratio"] is not None for v in record["params"].values())
    assert list(record["layers"]) == [f"h.{i}" for i in range(trainer.model.config.n_layer)]
    for layer, got in record["layers"].items():
        want = expected["layers"][layer]
        assert set(got) == {"resid_mean", "resid_std", "gelu_beyond_3", "attn_entropy"}
        np.testing.assert_allclose([got["resid_mean"], got["resid_std"], got["gelu_beyond_3"]],
                                   [want["resid_mean"], want["resid_std"], want["gelu_beyond_3"]],
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["attn_entropy"], want["attn_entropy"], rtol=1e-5)
        assert len(got["attn_entropy"]) == trainer.model.config.n_head


def test_stats_off_creates_no_recorder_and_wraps_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a StatsRecorder was created with --stats-interval 0")

    monkeypatch.setattr(observe, "StatsRecorder", refuse)
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "out", "--max-iters", 4) == 0
    assert [r["kind"] for r in read_log(tmp_path / "out")].count("stats") == 0


def test_stats_interval_must_be_non_negative_and_on_a_pre_norm_model(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "out", "--stats-interval", -1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["npgpt: error: --stats-interval must be >= 0, got -1"]
    assert train("--data", data, "--out", tmp_path / "out", "--stats-interval", 2, "--norm", "post") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["npgpt: error: --stats-interval needs --norm pre (the statistics of a --norm post model are "
                   "not implemented)"]
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # refused before training


def test_a_failing_stats_step_unwraps_the_model(tmp_path):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "out", "--max-iters", 2) == 0
    trainer, _ = trainer_from(tmp_path / "out", stats_interval=1, max_iters=5)

    def broken(batch, grad, dropout_rng):
        raise RuntimeError("boom")

    real = trainer.task.loss_and_grad
    trainer.task.loss_and_grad = broken
    with pytest.raises(RuntimeError, match="boom"):
        trainer.step()
    assert "backward" not in vars(trainer.model)  # GPT.backward again: the next steps pay nothing
    trainer.task.loss_and_grad = real
    trainer.step()
    assert "backward" not in vars(trainer.model)


# ------------------------------------------------------------------ training is unchanged
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_weights_are_identical_with_stats_on_or_off_and_resume_is_bit_exact(tmp_path, backend):
    data = write_corpus(tmp_path)
    common = ["--data", data, "--backend", backend, "--dropout", "0.1", "--log-interval", 2, "--lr-decay-iters", 10]
    assert train(*common, "--out", tmp_path / "off", "--max-iters", 10) == 0
    assert train(*common, "--out", tmp_path / "on", "--max-iters", 10, "--stats-interval", 3) == 0
    assert train(*common, "--out", tmp_path / "resumed", "--max-iters", 5, "--stats-interval", 3) == 0
    assert train("--resume", tmp_path / "resumed", "--max-iters", 10, "--backend", backend) == 0
    off = final_params(tmp_path / "off")
    assert_identical(final_params(tmp_path / "on"), off)
    assert_identical(final_params(tmp_path / "resumed"), off)
    straight, resumed = stats_records(tmp_path / "on"), stats_records(tmp_path / "resumed")
    assert [r["iter"] for r in straight] == [r["iter"] for r in resumed] == [3, 6, 9]
    if backend == "numpy":  # one worker: the same sums in the same order, so the same numbers
        assert straight == resumed
    step_losses = [[r["train_loss"] for r in read_log(tmp_path / name) if r["kind"] == "step"]
                   for name in ("off", "on")]
    assert step_losses[0] == step_losses[1]


# ------------------------------------------------------------------ --plot
def test_train_plot_draws_the_runs_own_records(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 6, "--stats-interval", 3, "--log-interval", 2,
                 "--plot") == 0
    assert f"figures: {out / 'plots'}, {out / 'report.html'}" in capsys.readouterr().out
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["activations.png", "grad_norm.png", "loss.png", "lr.png", "update_ratio.png"]
    for name in pngs:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("<img") == 5 and "stats_interval" in report and "No header record" not in report

    # the figures hold the step log's records (steps.jsonl, "iter"), not only the evaluations
    run = plot.load_run(str(out))
    assert [r["step"] for r in run["steps"]] == [2, 4, 6] and [r["iter"] for r in run["stats"]] == [3, 6]
    figures = plot.build_figures(run)
    train_line, val_line = figures["loss"].axes[0].get_lines()[:2]
    assert list(train_line.get_xdata()) == [2, 4, 6]
    assert list(train_line.get_ydata()) == [r["train_loss"] for r in read_log(out) if r["kind"] == "step"]
    assert list(val_line.get_xdata()) == [0, 5, 6]
    layer_lines = figures["update_ratio"].axes[0].get_lines()
    assert list(layer_lines[0].get_xdata()) == [3, 6]


def test_missing_matplotlib_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 4, "--plot") == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["npgpt: error: npgpt plot needs matplotlib: pip install 'npgpt[plot]'"]
    assert not (out / "checkpoint.json").exists() and not (out / "metrics.jsonl").exists()
    assert "npgpt train:" not in captured.out  # nothing started


# ------------------------------------------------------------------ --tensorboard
def test_missing_tensorboardx_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 4, "--tensorboard", tmp_path / "tb") == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "npgpt: error: --tensorboard needs tensorboardX: pip install 'npgpt[tensorboard]'"]
    assert not (out / "checkpoint.json").exists() and "npgpt train:" not in captured.out


def test_tensorboard_gets_every_record_of_the_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    from test_observe import read_events

    data = write_corpus(tmp_path)
    out, tb = tmp_path / "out", tmp_path / "tb"
    monkeypatch.chdir(tmp_path)
    assert train("--data", data, "--out", out, "--max-iters", 6, "--stats-interval", 3, "--log-interval", 2,
                 "--tensorboard", "tb") == 0  # relative: kept as an absolute path in the checkpoint
    assert checkpoint.load(str(out)).state["train_config"]["tensorboard"] == str(tb)
    scalars, texts = read_events(tb)
    steps = {}
    for tag, step, _ in scalars:
        steps.setdefault(tag, []).append(step)
    assert steps["train/loss"] == [2, 4, 6]  # every step record
    assert steps["val/loss"] == [0, 5, 6]  # every evaluation
    assert steps["update_ratio/h.0.mlp.c_fc.weight"] == [3, 6]  # every stats record
    assert steps["attn_entropy/h.0/head1"] == [3, 6]
    assert texts == ["run/text_summary"]  # the header
    losses = {step: value for tag, step, value in scalars if tag == "train/loss"}
    logged = {r["iter"]: r["train_loss"] for r in read_log(out) if r["kind"] == "step"}
    assert losses == pytest.approx(logged)
