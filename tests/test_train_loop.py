"""The one training loop: task-agnostic, best snapshot, step log, guardrails, outlier skip, --init-from."""
import io
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from npgpt import checkpoint, tasks
from npgpt import train as train_module
from npgpt.cli import main
from npgpt.errors import UserError
from npgpt.train import Trainer, TrainConfig
from training_helpers import TINY, assert_identical, final_params, train, write_corpus


# ------------------------------------------------------------------ a toy task: linear regression
class ToyConfig:
    """A linear model's config, described in the fields a checkpoint's config.json requires."""

    def __init__(self, dim):
        self.dim, self.backend, self.dtype = dim, "numpy", "float64"

    def to_dict(self):
        return {"vocab_size": 1, "block_size": 1, "n_layer": 1, "n_head": 1, "n_embd": self.dim}


class ToyModel:
    """y = x @ weight + bias, parameters as views into one flat buffer (the layout AdamW needs)."""

    def __init__(self, dim):
        from npgpt.model import views_into

        self.config = ToyConfig(dim)
        self.shapes = {"weight": (dim, 1), "bias": (1,)}
        self.num_params = dim + 1
        self.flat_params = np.zeros(self.num_params)
        self.params = views_into(self.flat_params, self.shapes)


class ToyTokenizer:
    def to_dict(self):
        return {"type": "none"}


class RegressionTask:
    """Mean squared error of a linear model on y = x . w* + noise.  spikes: {draw number: factor}
    multiplies that micro-batch's loss (and, with spike_grad, its gradient) to make an outlier."""

    name = "toy-regression"

    def __init__(self, cfg, ckpt=None, dim=8, spikes=None, spike_grad=False):
        self.cfg, self.dim = cfg, dim
        self.model, self.tokenizer = ToyModel(dim), ToyTokenizer()
        if ckpt is not None:
            self.model.flat_params[:-1] = ckpt.params["weight"].ravel()
            self.model.flat_params[-1:] = ckpt.params["bias"]
            assert ckpt.state["task"] == {"name": self.name, "true_weight_norm": 1.0}
        self.true_w = np.random.default_rng(0).standard_normal(dim)
        self.true_w /= np.linalg.norm(self.true_w)
        self.tokens_per_batch, self.flops_per_batch = cfg.batch_size, None
        self.spikes, self.spike_grad, self.draws = spikes or {}, spike_grad, 0

    def draw_batch(self, rng):
        x = rng.standard_normal((self.cfg.batch_size, self.dim))
        return x, x @ self.true_w + 0.1 * rng.standard_normal(self.cfg.batch_size)

    def loss_and_grad(self, batch, grad, dropout_rng):
        x, y = batch
        w, b = self.model.params["weight"][:, 0], self.model.params["bias"][0]
        err = x @ w + b - y  # (B,)
        grad[:-1] = 2 * x.T @ err / len(y)
        grad[-1] = 2 * err.mean()
        self.draws += 1
        factor = self.spikes.get(self.draws, 1.0)
        if self.spike_grad:
            grad *= factor
        return float(np.mean(err**2)) * factor

    def evaluate(self):
        x, y = self.draw_batch(np.random.default_rng(99))
        w, b = self.model.params["weight"][:, 0], self.model.params["bias"][0]
        return {"val_loss": float(np.mean((x @ w + b - y) ** 2)), "weight_error": float(np.linalg.norm(w - self.true_w))}

    def checkpoint_extras(self):
        return {"true_weight_norm": 1.0}

    def describe(self):
        return "toy regression"


def toy_config(out, **kw):
    settings = dict(out=str(out), max_iters=60, batch_size=16, lr=0.05, min_lr=0.005, warmup_iters=0,
                    eval_interval=20, grad_clip=0.0, weight_decay=0.0, workers=1, backend="numpy", log_interval=10)
    settings.update(kw)
    return TrainConfig(**settings)


def run_toy(cfg, ckpt=None, **task_kw):
    os.makedirs(cfg.out, exist_ok=True)
    task = RegressionTask(cfg, ckpt, **task_kw)
    trainer = Trainer(cfg, task, ckpt, progress=False, out=io.StringIO())
    assert trainer.train()
    return trainer


def records(path, kind=None):
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in found if kind is None or r.get("kind") == kind]


def test_the_loop_trains_a_task_that_is_not_a_language_model(tmp_path):
    trainer = run_toy(toy_config(tmp_path / "out"))
    evals = records(tmp_path / "out" / "metrics.jsonl")
    assert [r["iter"] for r in evals] == [0, 20, 40, 60]
    assert evals[0]["val_loss"] > 0.9 and evals[-1]["val_loss"] < 0.05  # noise floor 0.01
    assert evals[-1]["weight_error"] < 0.1 < evals[0]["weight_error"]  # the task's own metric is logged
    assert trainer.optimizer.step_count == 60
    ckpt = checkpoint.load(str(tmp_path / "out"))
    assert ckpt.iteration == 60 and ckpt.state["task"] == {"name": "toy-regression", "true_weight_norm": 1.0}
    steps = records(tmp_path / "out" / "steps.jsonl")
    assert steps[0]["kind"] == "header" and steps[0]["task"] == "toy-regression"
    assert [r["iter"] for r in steps[1:]] == [10, 20, 30, 40, 50, 60]
    assert all(r["mfu"] is None and r["tokens"] == 16 * r["iter"] for r in steps[1:])


def test_the_toy_task_resumes_bit_exactly(tmp_path):
    straight = run_toy(toy_config(tmp_path / "straight", grad_accum=2))
    run_toy(toy_config(tmp_path / "split", grad_accum=2, max_iters=25, lr_decay_iters=60))
    ckpt = checkpoint.load(str(tmp_path / "split"))
    resumed = run_toy(replace(TrainConfig(**ckpt.state["train_config"]), max_iters=60), ckpt)
    np.testing.assert_array_equal(resumed.model.flat_params, straight.model.flat_params)
    ckpt.state["task"]["name"] = "lm"  # another task's checkpoint
    with pytest.raises(UserError, match="cannot resume .* as a 'toy-regression' run: it holds a 'lm' run"):
        Trainer(toy_config(tmp_path / "split"), RegressionTask(toy_config(tmp_path / "split")), ckpt)


# ------------------------------------------------------------------ the best snapshot
def scripted_evaluations(monkeypatch, values):
    values = iter(values)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: next(values))


def test_the_best_snapshot_is_kept_beside_the_latest(tmp_path, monkeypatch, capsys):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    # evaluations at iterations 0, 5, 10, 12: the model is best at 10, worse at the end
    scripted_evaluations(monkeypatch, [3.0, 2.0, 1.5, 2.5])
    assert train("--data", data, "--out", out, "--max-iters", 12) == 0
    assert json.loads((out / "checkpoint.json").read_text())["snapshot"] == "ckpt-0000012"
    assert json.loads((out / "best.json").read_text())["snapshot"] == "ckpt-0000010"
    assert sorted(e for e in os.listdir(out) if e.startswith("ckpt-")) == ["ckpt-0000010", "ckpt-0000012"]
    assert "(best: iteration 10)" in capsys.readouterr().out

    assert checkpoint.load(str(out)).iteration == 12  # what --resume continues
    assert checkpoint.load_model(str(out))[2].iteration == 10  # what sample and eval use
    assert checkpoint.load(str(out / "checkpoint.json"), which="best").iteration == 12  # a pointer named directly
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out), "--data", data]) == 0
    assert "iteration 10)" in capsys.readouterr().out
    assert main(["eval", "--ckpt", str(out / "checkpoint.json"), "--data", data]) == 0
    assert "iteration 12)" in capsys.readouterr().out

    # resume: an evaluation at 15 beats 1.5, the snapshots of 10 and 12 go
    scripted_evaluations(monkeypatch, [1.0])
    assert train("--resume", out, "--max-iters", 15) == 0
    assert sorted(e for e in os.listdir(out) if e.startswith("ckpt-")) == ["ckpt-0000015"]
    assert json.loads((out / "best.json").read_text())["snapshot"] == "ckpt-0000015"

    # a worse evaluation (1.2 > 1.0) at 20 keeps 15 as the best; --overwrite forgets both
    scripted_evaluations(monkeypatch, [1.2])
    assert train("--resume", out, "--max-iters", 20) == 0
    assert checkpoint.load_model(str(out))[2].iteration == 15
    scripted_evaluations(monkeypatch, [3.0, 2.9])
    assert train("--data", data, "--out", out, "--max-iters", 3, "--overwrite") == 0
    assert sorted(e for e in os.listdir(out) if e.startswith("ckpt-")) == ["ckpt-0000003"]
    assert checkpoint.load_model(str(out))[2].iteration == 3


def test_a_save_that_is_not_the_best_never_deletes_the_best(tmp_path):
    from npgpt import GPT, GPTConfig
    from npgpt.tokenizers.char import CharTokenizer

    model, tok = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, backend="numpy")), CharTokenizer("abcde")
    checkpoint.save(str(tmp_path), model, tok, {"iter": 1}, best=True)
    checkpoint.save(str(tmp_path), model, tok, {"iter": 2})  # e.g. Ctrl-C: not evaluated
    checkpoint.save(str(tmp_path), model, tok, {"iter": 3})
    assert sorted(e for e in os.listdir(tmp_path) if e.startswith("ckpt-")) == ["ckpt-0000001", "ckpt-0000003"]
    assert checkpoint.load(str(tmp_path), which="best").iteration == 1
    checkpoint.save(str(tmp_path), model, tok, {"iter": 4}, best=True)
    assert sorted(e for e in os.listdir(tmp_path) if e.startswith("ckpt-")) == ["ckpt-0000004"]


def test_a_crash_before_best_json_is_replaced_leaves_the_previous_best(tmp_path, monkeypatch):
    from npgpt import GPT, GPTConfig
    from npgpt.tokenizers.char import CharTokenizer

    model, tok = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, backend="numpy")), CharTokenizer("abcde")
    checkpoint.save(str(tmp_path), model, tok, {"iter": 1}, best=True)
    checkpoint.save(str(tmp_path), model, tok, {"iter": 2})
    real = checkpoint.atomic_write_bytes

    def crash_on_best(path, data):
        if path.endswith(checkpoint.BEST_POINTER):
            raise KeyboardInterrupt  # the machine "dies" between the two pointers
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", crash_on_best)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), model, tok, {"iter": 3}, best=True)
    monkeypatch.undo()
    assert checkpoint.load(str(tmp_path)).iteration == 3  # the latest was committed
    assert checkpoint.load(str(tmp_path), which="best").iteration == 1  # the old best is intact


# ------------------------------------------------------------------ the step log
STEP_FIELDS = {"kind", "iter", "tokens", "steps", "train_loss", "lr", "grad_norm", "clipped", "grad_norm_max",
               "clipped_steps", "skipped_steps", "ms_per_step", "tokens_per_sec", "mfu"}


def test_step_log_records_and_a_header_per_start(tmp_path):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 6, "--log-interval", 2, "--grad-clip", "0.5",
                 "--lr-decay-iters", 10) == 0
    assert train("--resume", out, "--max-iters", 10) == 0
    log = records(out / "steps.jsonl")
    assert [(r["kind"], r["iter"]) for r in log] == [("header", 0), ("step", 2), ("step", 4), ("step", 6),
                                                     ("header", 6), ("step", 8), ("step", 10)]
    first, again = log[0], log[4]
    assert (first["resume"], again["resume"]) == (False, True)
    assert first["config"]["log_interval"] == 2 and first["num_params"] == 4096
    assert set(first["versions"]) == {"python", "numpy", "numba", "npgpt"}
    assert {"cpu", "cores", "numba_threads", "blas"} <= set(first["machine"])
    assert first["peak_flops"] > 0 and first["flops_per_iter"] > 0
    evals = records(out / "metrics.jsonl")
    for r in log:
        if r["kind"] != "step":
            continue
        assert set(r) == STEP_FIELDS
        assert r["tokens"] == r["iter"] * 4 * 16 and r["steps"] == 2
        assert r["clipped"] == (r["grad_norm"] > 0.5) and r["clipped_steps"] <= 2
        assert r["grad_norm_max"] >= r["grad_norm"] and 0 < r["mfu"] < 1 and r["ms_per_step"] > 0
    # the step log's lr is the schedule's, as in the evaluation records
    assert log[3]["lr"] == next(e["lr"] for e in evals if e["iter"] == 6)


def test_log_interval_zero_writes_no_step_log(tmp_path):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "out", "--max-iters", 2, "--log-interval", 0) == 0
    assert (tmp_path / "out" / "steps.jsonl").read_text() == ""


# ------------------------------------------------------------------ guardrails
@pytest.fixture
def five_iterations(tmp_path):
    data = write_corpus(tmp_path)
    out = tmp_path / "out"
    assert train("--data", data, "--out", out, "--max-iters", 5) == 0
    return out


def snapshot_files(out):
    return {os.path.join(root, n): open(os.path.join(root, n), "rb").read()
            for root, _, names in os.walk(out) for n in names if not n.endswith(".jsonl")}


@pytest.mark.parametrize("where", ["weight", "gradient"])
def test_a_nan_stops_the_run_naming_the_tensor(five_iterations, monkeypatch, capsys, where):
    out = five_iterations
    before = snapshot_files(out)
    real = tasks.LanguageModelingTask.loss_and_grad
    calls = []

    def poisoned(self, batch, grad, dropout_rng):
        calls.append(1)
        if len(calls) == 2 and where == "weight":  # the second step after resuming: iteration 7
            self.model.params["h.0.mlp.c_fc.weight"][3, 5] = np.nan
        loss = real(self, batch, grad, dropout_rng)
        if len(calls) == 2 and where == "gradient":
            from npgpt.model import views_into

            views_into(grad, self.model.shapes)["h.0.attn.c_proj.bias"][1] = np.inf
        return loss

    monkeypatch.setattr(tasks.LanguageModelingTask, "loss_and_grad", poisoned)
    capsys.readouterr()
    assert train("--resume", out, "--max-iters", 10) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    expected = ("weight h.0.mlp.c_fc.weight is not finite (loss nan)" if where == "weight"
                else "the gradient of h.0.attn.c_proj.bias is not finite (gradient norm inf)")
    assert err[0].startswith(f"npgpt: error: training diverged at iteration 7: {expected}"), err[0]
    assert snapshot_files(out) == before  # the last good checkpoint, byte for byte


def test_outlier_skip_skips_exactly_the_injected_spike(tmp_path):
    out = tmp_path / "loss"
    trainer = run_toy(toy_config(out, max_iters=200, skip_loss_z=6.0), spikes={150: 30.0})
    skips = records(out / "steps.jsonl", "skip")
    assert [r["iter"] for r in skips] == [150] and skips[0]["loss_z"] > 6
    assert trainer.optimizer.step_count == 199
    assert sum(r["skipped_steps"] for r in records(out / "steps.jsonl", "step")) == 1

    out = tmp_path / "grad"
    trainer = run_toy(toy_config(out, max_iters=200, skip_grad_z=6.0), spikes={170: 30.0}, spike_grad=True)
    assert [r["iter"] for r in records(out / "steps.jsonl", "skip")] == [170]
    assert trainer.optimizer.step_count == 199
    # without the option the spike is applied
    trainer = run_toy(toy_config(tmp_path / "off", max_iters=200), spikes={170: 30.0}, spike_grad=True)
    assert trainer.optimizer.step_count == 200 and not records(tmp_path / "off" / "steps.jsonl", "skip")


def test_outlier_detectors_resume_exactly(tmp_path):
    kw = dict(skip_loss_z=3.0, skip_grad_z=3.0, max_iters=200, lr_decay_iters=200)
    spikes = {150: 30.0, 180: 10.0}
    straight = run_toy(toy_config(tmp_path / "straight", **kw), spikes=spikes, spike_grad=True)
    run_toy(toy_config(tmp_path / "split", **dict(kw, max_iters=140)), spikes=spikes, spike_grad=True)
    ckpt = checkpoint.load(str(tmp_path / "split"))
    assert len(ckpt.state["outliers"]["loss"]) == 128
    resumed = run_toy(replace(TrainConfig(**ckpt.state["train_config"]), max_iters=200), ckpt,
                      spikes={k - 140: v for k, v in spikes.items()}, spike_grad=True)
    np.testing.assert_array_equal(resumed.model.flat_params, straight.model.flat_params)
    assert resumed.optimizer.step_count == straight.optimizer.step_count < 200


# ------------------------------------------------------------------ fine-tuning
OTHER = "All:\nSpeak, we are all resolved.\n\nFirst Citizen:\nYou famish? hear me, then die.\n\n" * 60  # the base's characters


def test_init_from_fine_tunes_an_npgpt_model(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "base", "--max-iters", 5) == 0
    other = write_corpus(tmp_path, OTHER, "other.txt")
    capsys.readouterr()
    status = main(["train", "--data", other, "--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "base"),
                   "--max-iters", "3", "--eval-iters", "2", "--batch-size", "4", "--backend", "numpy",
                   "--sample-tokens", "0", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert "fine-tuning" in capsys.readouterr().out
    settings = checkpoint.load(str(tmp_path / "tuned")).state["train_config"]
    # fine-tuning defaults for what was not given, the model's own size and context
    assert (settings["lr"], settings["min_lr"], settings["warmup_iters"], settings["eval_interval"]) == (1e-4, 1e-5, 20, 50)
    assert (settings["n_layer"], settings["n_embd"], settings["block_size"], settings["max_iters"]) == (1, 16, 16, 3)
    # the iteration-0 evaluation is the base model's, on the new data
    from npgpt import data as data_module

    base, tok, _ = checkpoint.load_model(str(tmp_path / "base"), backend="numpy")
    val = data_module.make_corpus(OTHER, tok).val
    expected = tasks.estimate_loss(base, val, 4, 16, 2, np.random.default_rng([1337, 3]))
    first = records(tmp_path / "tuned" / "metrics.jsonl")[0]
    assert first["iter"] == 0 and first["val_loss"] == expected
    assert train("--resume", tmp_path / "tuned", "--max-iters", 4) == 0


def test_init_from_refuses_a_different_model_and_a_longer_context(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "base", "--max-iters", 2) == 0
    for flags, phrase in [(["--n-layer", "2"], "fixes the model: it has n-layer=1"),
                          (["--block-size", "32"], "larger than the model's block_size 16"),
                          (["--tokenizer", "bpe", "--vocab-size", "300"], "fixes the model: it has tokenizer=char")]:
        capsys.readouterr()
        assert main(["train", "--data", data, "--out", str(tmp_path / "t"), "--init-from", str(tmp_path / "base"),
                     *flags]) == 2
        err = capsys.readouterr().err
        assert phrase in err and len(err.strip().splitlines()) == 1, err
    capsys.readouterr()
    assert main(["train", "--data", data, "--out", str(tmp_path / "t"), "--init-from", str(tmp_path)]) == 2
    assert "neither an npgpt checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "base"), "--init-from", str(tmp_path / "base")]) == 2
    assert "--init-from starts a new run" in capsys.readouterr().err


def test_initial_model_is_the_saved_one_cropped_and_cast(tmp_path):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "base", "--max-iters", 2) == 0
    saved = final_params(tmp_path / "base")
    model, tok = tasks.load_initial_model(str(tmp_path / "base"), "float64", "numpy", block_size=8)
    assert model.config.block_size == 8 and model.dtype == np.float64
    np.testing.assert_array_equal(model.params["wpe.weight"], saved["wpe.weight"][:8])
    np.testing.assert_array_equal(model.params["h.0.mlp.c_fc.weight"], saved["h.0.mlp.c_fc.weight"])


# ------------------------------------------------------------------ freezing and LoRA
@pytest.mark.parametrize("flags", [["--lora-rank", "4", "--lora-targets", "c_attn,c_proj,c_fc"],
                                   ["--freeze", "all-but-head-and-ln"]], ids=["lora", "frozen"])
def test_a_partial_fine_tune_trains_only_its_subset_and_resumes_bit_exactly(tmp_path, flags):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "base", "--max-iters", 3) == 0
    base = final_params(tmp_path / "base")
    common = ["--data", data, "--init-from", tmp_path / "base", "--dropout", "0.1", "--lr", "1e-2", "--lr-decay-iters", "8", *flags]
    assert train(*common, "--out", tmp_path / "straight", "--max-iters", 8) == 0
    assert train(*common, "--out", tmp_path / "split", "--max-iters", 4) == 0
    assert train("--resume", tmp_path / "split", "--max-iters", 8) == 0
    straight = final_params(tmp_path / "straight")
    assert_identical(straight, final_params(tmp_path / "split"))
    ckpt = checkpoint.load(str(tmp_path / "straight"))
    moved = {n for n in base if not np.array_equal(straight[n], base[n])}
    if "--lora-rank" in flags:
        assert not moved  # every base weight frozen, bit for bit
        assert ckpt.config["lora_rank"] == 4 and "h.0.mlp.c_fc.lora_b" in straight
        assert np.any(straight["h.0.attn.c_attn.lora_b"] != 0)  # the adapters trained
        trainable = sum(v.size for n, v in straight.items() if ".lora_" in n)
    else:
        assert moved == {"wte.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.ln_2.weight", "h.0.ln_2.bias",
                         "ln_f.weight", "ln_f.bias"}
        trainable = sum(base[n].size for n in moved)
    assert ckpt.optimizer["m"].shape == ckpt.optimizer["v"].shape == (trainable,)  # moments for those alone


def test_freeze_and_lora_flags_are_checked_in_one_line(tmp_path, capsys):
    data = write_corpus(tmp_path)
    assert train("--data", data, "--out", tmp_path / "base", "--max-iters", 2) == 0
    init = ["--init-from", tmp_path / "base"]
    for flags, phrase in [(["--lora-rank", "4"], "--lora-rank applies to fine-tuning"),
                          (["--freeze", "all-but-ln"], "--freeze applies to fine-tuning"),
                          ([*init, "--freeze", "most"], "--freeze must be one of"),
                          ([*init, "--freeze", "lora"], "needs LoRA adapters"),
                          ([*init, "--freeze", "all-but-last:5"], "N must be an integer in 0..1"),
                          ([*init, "--lora-rank", "2", "--lora-targets", "wte"], "unknown LoRA target 'wte'"),
                          ([*init, "--lora-rank", "2", "--lora-alpha", "0"], "--lora-alpha must be > 0")]:
        capsys.readouterr()
        assert train("--data", data, "--out", tmp_path / "t", "--overwrite", *flags) == 2, flags
        err = capsys.readouterr().err
        assert phrase in err and len(err.strip().splitlines()) == 1, err
    assert train("--data", data, "--out", tmp_path / "lora", *init, "--lora-rank", "2", "--max-iters", 2) == 0
    capsys.readouterr()
    assert train("--resume", tmp_path / "lora", "--max-iters", 3, "--freeze", "none") == 2
    assert "different set of trainable parameters" in capsys.readouterr().err
