"""npgpt plot: the figures read back from the Figure objects, the PNGs and report.html on disk."""
import base64
import json
import math
import re
import sys

import numpy as np
import pytest

from npgpt import plot
from npgpt.cli import main

pytest.importorskip("matplotlib")

N_LAYER, N_HEAD = 2, 2
CONFIG = {"batch_size": 4, "block_size": 8, "grad_accum": 2, "grad_clip": 1.0, "lr": 1e-3, "n_layer": N_LAYER}
MATRICES = ["wte.weight", "wpe.weight"] + [f"h.{i}.{k}" for i in range(N_LAYER) for k in plot.MATRIX_KINDS]


def synthetic_records():
    """A run of 40 steps: a header, a step record each step, evals every 10, stats every 20."""
    records = [{"kind": "header", "config": CONFIG, "versions": {"npgpt": "0.1.0", "numpy": "2.x"},
                "cpu": "test cpu", "threads": {"numba": 2}, "git": "abc123"}]
    for step in range(1, 41):
        records.append({"kind": "step", "step": step, "tokens": step * 64, "train_loss": 4.0 - step / 20,
                        "lr": 1e-3 * min(1, step / 10), "grad_norm": 2.0 if step % 7 == 0 else 0.5,
                        "clipped": step % 7 == 0, "ms_per_step": 10.0, "tokens_per_sec": 6400.0, "mfu": 0.1})
        if step % 10 == 0:
            records.append({"iter": step, "train_loss": 4.0 - step / 20, "val_loss": 4.1 - step / 20,
                            "val_perplexity": 50.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 6400.0,
                            "elapsed": step / 10})
        if step % 20 == 0:
            params = {n: {"weight_rms": 0.02, "grad_rms": 0.01, "update_ratio": -3.0 + step / 100 + 0.01 * k}
                      for k, n in enumerate(MATRICES)}
            params["h.0.ln_1.bias"] = {"weight_rms": 0.0, "grad_rms": 0.01, "update_ratio": None}
            layers = {f"h.{i}": {"resid_mean": 0.01 * i, "resid_std": 1.0 + i + step / 100,
                                 "gelu_beyond_3": 0.001 * (i + 1), "attn_entropy": [1.0 + i, 0.5 + i]}
                      for i in range(N_LAYER)}
            records.append({"kind": "stats", "iter": step, "params": params, "layers": layers})
    return records


def write_run(path, records, tail=""):
    path.mkdir(exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_each_figure_has_its_axes_and_series(tmp_path):
    run = plot.load_run(str(write_run(tmp_path / "out", synthetic_records())))
    figures = plot.build_figures(run)
    assert set(figures) == {"loss", "lr", "grad_norm", "update_ratio", "activations"}

    by_step, by_tokens = figures["loss"].axes
    assert (by_step.get_xlabel(), by_tokens.get_xlabel()) == ("step", "tokens")
    train, val = lines_by_label(by_step)["train"], lines_by_label(by_step)["val"]
    assert list(train.get_xdata()) == list(range(1, 41)) and train.get_ydata()[0] == pytest.approx(3.95)
    assert list(val.get_xdata()) == [10, 20, 30, 40]
    # tokens = steps * batch * block * grad_accum from the header's config
    assert list(lines_by_label(by_tokens)["val"].get_xdata()) == [s * 64 for s in (10, 20, 30, 40)]

    lr_line = lines_by_label(figures["lr"].axes[0])["lr"]
    assert lr_line.get_ydata()[-1] == pytest.approx(1e-3)

    grad = lines_by_label(figures["grad_norm"].axes[0])
    assert list(grad["clipped"].get_xdata()) == [7, 14, 21, 28, 35]  # exactly the clip events
    assert grad["clip threshold 1"].get_ydata()[0] == 1.0

    panels = {ax.get_title(): ax for ax in figures["update_ratio"].axes}
    assert set(panels) == set(plot.MATRIX_KINDS) | {"embeddings"}
    fc = lines_by_label(panels["mlp.c_fc.weight"])
    assert set(fc) == {"layer 0", "layer 1", "-3"}
    assert list(fc["-3"].get_ydata()) == [-3.0, -3.0]
    assert list(fc["layer 1"].get_xdata()) == [20, 40]
    k = MATRICES.index("h.1.mlp.c_fc.weight")
    assert list(fc["layer 1"].get_ydata()) == pytest.approx([-2.8 + 0.01 * k, -2.6 + 0.01 * k])
    assert set(lines_by_label(panels["embeddings"])) == {"wte", "wpe", "-3"}

    acts = {ax.get_title(): ax for ax in figures["activations"].axes}
    assert set(acts) == {"residual stream mean", "residual stream std", "GELU inputs beyond ±3",
                         "attention entropy"}
    assert list(lines_by_label(acts["residual stream std"])["layer 1"].get_ydata()) == pytest.approx([2.2, 2.4])
    assert list(lines_by_label(acts["GELU inputs beyond ±3"])["layer 1"].get_ydata()) == pytest.approx([0.2, 0.2])
    entropy = lines_by_label(acts["attention entropy"])
    assert list(entropy["layer 1"].get_ydata()) == pytest.approx([1.75, 1.75])  # mean of the heads 2.0, 1.5
    assert list(entropy["_lowest head"].get_ydata()) == pytest.approx([1.5, 1.5])  # the last layer's


def test_plot_writes_pngs_and_a_self_contained_report(tmp_path, capsys):
    out = write_run(tmp_path / "out", synthetic_records())
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["loss", "lr", "grad_norm", "update_ratio", "activations"]
    assert printed == [str(out / "plots" / f"{n}.png") for n in names] + [str(out / "report.html")]
    from matplotlib.image import imread

    for name in names:
        pixels = imread(out / "plots" / f"{name}.png")
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600, name
        rgb = pixels[..., :3]
        assert (rgb < 0.5).mean() > 0.005, f"{name}: (almost) no dark pixels"  # axes, text and lines
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, f"{name}: too few colours for a plotted figure"
    report = (out / "report.html").read_text(encoding="utf-8")
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report)
    assert len(embedded) == len(names)  # nothing to fetch: it opens from disk with no server
    assert base64.b64decode(embedded[0]) == (out / "plots" / "loss.png").read_bytes()
    assert "grad_clip" in report and "abc123" in report and "test cpu" in report
    assert "http" not in report.replace("http-equiv", "")


def test_eval_records_alone_still_give_loss_lr_and_gradient_norm(tmp_path):
    """The records npgpt train writes today (no kind, no header, no stats): the figures they allow."""
    evals = [r for r in synthetic_records() if "kind" not in r]
    run = plot.load_run(str(write_run(tmp_path / "out", evals)))
    figures = plot.build_figures(run)
    assert set(figures) == {"loss", "lr", "grad_norm"}
    assert list(lines_by_label(figures["loss"].axes[0])["train"].get_xdata()) == [10, 20, 30, 40]
    assert "tokens per step unknown" in figures["loss"].axes[1].texts[0].get_text()
    html = plot.report_html(run, {})
    assert "No header record" in html and "--stats-interval" in html


def test_a_record_being_written_is_skipped_and_a_corrupt_one_named(tmp_path, capsys):
    out = write_run(tmp_path / "out", synthetic_records(), tail='{"kind": "step", "st')
    assert len(plot.load_run(str(out))["steps"]) == 40
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["plot", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("npgpt: error: ") and "metrics.jsonl line 4" in err


def test_malformed_parts_of_records_draw_nothing_instead_of_failing(tmp_path):
    records = synthetic_records()
    records[0]["config"] = ["not", "a", "table"]
    stats = [r for r in records if r.get("kind") == "stats"]
    stats[0]["params"] = "nonsense"
    stats[1]["params"]["h.0.mlp.c_fc.weight"] = 7
    stats[1]["layers"]["h.0"] = None
    out = write_run(tmp_path / "out", records)
    figures = plot.build_figures(plot.load_run(str(out)))
    fc = lines_by_label({ax.get_title(): ax for ax in figures["update_ratio"].axes}["mlp.c_fc.weight"])
    assert list(fc["layer 0"].get_xdata()) == [] and list(fc["layer 1"].get_xdata()) == [40]
    assert plot.refresh(str(out))[-1].endswith("report.html")


def test_missing_run_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"npgpt: error: {tmp_path / 'nowhere'}: no such run directory"
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_without_matplotlib_one_line_says_how_to_install(tmp_path, capsys, monkeypatch):
    out = write_run(tmp_path / "out", synthetic_records())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", str(out)]) == 2
    assert capsys.readouterr().err == "npgpt: error: npgpt plot needs matplotlib: pip install 'npgpt[plot]'\n"
    assert not (out / "report.html").exists()


def test_a_real_tiny_run_with_statistics(tmp_path):
    """A few real steps of the Trainer, with a StatsRecorder every 3rd: the figures of all five kinds."""
    from npgpt import observe
    from npgpt.tasks import LanguageModelingTask
    from npgpt.train import TrainConfig, Trainer

    out = tmp_path / "run"
    out.mkdir()
    cfg = TrainConfig(out=str(out), max_iters=6, n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4,
                      eval_iters=1, backend="numpy", sample_tokens=0, warmup_iters=2,
                      lr_decay_iters=6)
    task = LanguageModelingTask(cfg)
    trainer = Trainer(task.cfg, task, progress=False)
    recorder = observe.StatsRecorder(trainer.model)
    for _ in range(cfg.max_iters):
        stats_step = (trainer.iter + 1) % 3 == 0
        if stats_step:
            recorder.begin()
        loss, norm, lr = trainer.step()
        trainer.append_metrics({"kind": "step", "step": trainer.iter, "train_loss": loss, "lr": lr, "grad_norm": norm})
        if stats_step:
            trainer.append_metrics(recorder.end(trainer.iter, trainer.grad, norm, cfg.grad_clip))
        if trainer.iter % 3 == 0:
            trainer.append_metrics({"iter": trainer.iter, "val_loss": trainer.evaluate(), "train_loss": loss})
    written = plot.refresh(str(out))
    assert [p.rsplit("/", 1)[-1] for p in written] == ["loss.png", "lr.png", "grad_norm.png", "update_ratio.png",
                                                       "activations.png", "report.html"]
    figures = plot.build_figures(plot.load_run(str(out)))
    c_fc = lines_by_label({ax.get_title(): ax for ax in figures["update_ratio"].axes}["mlp.c_fc.weight"])
    assert list(c_fc["layer 1"].get_xdata()) == [3, 6]
    assert all(-8 < y < 0 for y in c_fc["layer 1"].get_ydata())  # a real, finite, small ratio
    entropy = {ax.get_title(): ax for ax in figures["activations"].axes}["attention entropy"]
    for y in lines_by_label(entropy)["layer 0"].get_ydata():
        assert 0 < y < math.log(16)  # between one-hot and uniform over the longest context


def test_written_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    out = write_run(tmp_path / "out", [r for r in synthetic_records() if "kind" not in r])
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            written = plot.refresh(str(out))
        finally:
            os.umask(old)
        assert {oct(os.stat(p).st_mode & 0o777) for p in written} == {oct(mode)}
    assert sorted(os.listdir(out)) == ["metrics.jsonl", "plots", "report.html"]  # no temporary left behind


def test_a_repeated_step_keeps_its_last_record(tmp_path):
    """A run resumed from an earlier checkpoint logs its steps again: the plot shows the repeat only."""
    records = [r for r in synthetic_records() if "kind" not in r]
    records.append({**records[1], "val_loss": 1.0})  # step 20 again, after a resume
    evals = plot.load_run(str(write_run(tmp_path / "out", records)))["evals"]
    assert [r["iter"] for r in evals] == [10, 20, 30, 40] and evals[1]["val_loss"] == 1.0


def test_refresher_draws_in_the_background_and_at_most_every_interval(tmp_path):
    out = write_run(tmp_path / "out", [r for r in synthetic_records() if "kind" not in r])
    plotter = plot.Refresher(str(out), min_interval=3600)
    assert plotter.request() is True  # the first request starts a refresh
    assert plotter.request() is False  # the next ones, within the interval, only mark the figures stale
    plotter._thread.join()
    assert (out / "report.html").exists() and plotter.error is None
    (out / "report.html").unlink()
    assert plotter.close() is not None  # the pending request: the final figures are drawn
    assert (out / "report.html").exists()
    assert plotter.close() is None  # nothing pending any more

    broken = plot.Refresher(str(tmp_path / "gone"), min_interval=0)
    broken.request()
    broken._thread.join()
    assert broken.error.startswith("npgpt plot: ") and "no such run directory" in broken.error


def test_npgpt_plot_on_a_real_npgpt_train_run(tmp_path, capsys):
    """Whatever npgpt train writes to metrics.jsonl today, npgpt plot draws it."""
    from training_helpers import train, write_corpus

    out = tmp_path / "out"
    assert train("--data", write_corpus(tmp_path), "--out", out, "--max-iters", "10") == 0
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert str(out / "plots" / "loss.png") in written and str(out / "report.html") in written
    run = plot.load_run(str(out))
    val = lines_by_label(plot.build_figures(run)["loss"].axes[0])["val"]
    assert list(val.get_xdata()) == [r["iter"] for r in run["evals"]] and len(run["evals"]) >= 2
