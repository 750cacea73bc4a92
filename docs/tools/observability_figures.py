"""Draw docs/observability.md's figures from two real short runs: a healthy one and one with too high a learning rate.

    python docs/tools/observability_figures.py             # ~2 x 400 steps of the npgpt train model (config S)
    python docs/tools/observability_figures.py --steps 100 # quicker, rougher

Both runs are the default `npgpt train` model and recipe (4 x 4 x 128, block
64, batch 12, AdamW, clip 1.0) for --steps steps with the cosine schedule
over those steps; they differ only in the peak learning rate (1e-3, the
default, and --high-lr).  Each step appends a "step" record, every
--stats-interval steps a "stats" record (npgpt.observe.StatsRecorder around
Trainer.step), every --eval-interval an eval record, to the run's
metrics.jsonl, which `npgpt plot` then draws (npgpt.plot.refresh).  The
figures land in docs/figures/observability/<run>/.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from npgpt import observe, plot  # noqa: E402
from npgpt.tasks import LanguageModelingTask  # noqa: E402
from npgpt.train import TrainConfig, Trainer  # noqa: E402

FIGURES = os.path.join(ROOT, "docs", "figures", "observability")


def train_and_record(out, lr, steps, stats_interval, eval_interval, seed):
    cfg = TrainConfig(out=out, max_iters=steps, lr=lr, min_lr=lr / 10, warmup_iters=steps // 20,
                      lr_decay_iters=steps, eval_iters=10, seed=seed, sample_tokens=0)
    task = LanguageModelingTask(cfg)
    trainer = Trainer(task.cfg, task, progress=False)
    recorder = observe.StatsRecorder(trainer.model)
    trainer.append_metrics({"kind": "header", "config": asdict(trainer.cfg),
                            "cpu": platform.processor() or platform.machine()})
    trainer.append_metrics({"iter": 0, "val_loss": trainer.evaluate(), "train_loss": None})
    while trainer.iter < steps:
        stats_step = (trainer.iter + 1) % stats_interval == 0
        if stats_step:
            recorder.begin()
        loss, norm, lr_now = trainer.step()
        clipped = bool(cfg.grad_clip and norm > cfg.grad_clip)
        trainer.append_metrics({"kind": "step", "step": trainer.iter, "tokens": trainer.iter * trainer.tokens_per_iter,
                                "train_loss": loss, "lr": lr_now, "grad_norm": norm, "clipped": clipped})
        if stats_step:
            trainer.append_metrics(recorder.end(trainer.iter, trainer.grad, norm, cfg.grad_clip))
        if trainer.iter % eval_interval == 0:
            val = trainer.evaluate()
            trainer.append_metrics({"iter": trainer.iter, "val_loss": val, "train_loss": loss, "lr": lr_now,
                                    "grad_norm": norm})
            print(f"  lr {lr:g}: step {trainer.iter}, train {loss:.3f}, val {val:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--high-lr", type=float, default=3e-2)
    parser.add_argument("--stats-interval", type=int, default=10)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    for name, lr in (("healthy", 1e-3), ("too_high_lr", args.high_lr)):
        with tempfile.TemporaryDirectory() as out:
            print(f"{name}: lr {lr:g}, {args.steps} steps", flush=True)
            open(os.path.join(out, "metrics.jsonl"), "w").close()
            train_and_record(out, lr, args.steps, args.stats_interval, args.eval_interval, args.seed)
            plot.refresh(out)
            target = os.path.join(FIGURES, name)
            os.makedirs(target, exist_ok=True)
            for png in ("loss.png", "grad_norm.png", "update_ratio.png", "activations.png"):
                shutil.copy(os.path.join(out, plot.PLOTS_DIR, png), os.path.join(target, png))
                print(f"  wrote {os.path.relpath(os.path.join(target, png), ROOT)}")
            with open(os.path.join(out, "metrics.jsonl")) as f:
                last = [json.loads(line) for line in f if '"val_loss"' in line][-1]
            print(f"  final val loss {last['val_loss']:.3f}")


if __name__ == "__main__":
    main()
