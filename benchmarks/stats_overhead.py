"""What network statistics cost: tokens/s of training with stats off vs every 100 steps.

    python benchmarks/stats_overhead.py                    # config S (the default npgpt train model), 6 rounds
    python benchmarks/stats_overhead.py --rounds 10 --interval 100 --backend numba

One Trainer (the `npgpt train` model and settings: config S, 4 x 4 x 128,
block 64, batch 12, data-parallel workers as npgpt train picks them) trains
in blocks of --interval steps, alternating: a block without statistics,
then a block whose last step is a stats step (the Trainer's own
`--stats-interval` hook: npgpt.observe.StatsRecorder around the step, its
record appended to OUT/steps.jsonl).  Alternating in one process shares out the
machine's drift between the two modes.  Prints each mode's tokens/s over
all its blocks, the ratio, and what one stats step costs on its own: its
extra time over a plain step, as a share of a block, is the overhead with
less of the machine's noise in it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npgpt.memory import keep_freed_memory  # noqa: E402
from npgpt.tasks import LanguageModelingTask  # noqa: E402
from npgpt.train import STEP_LOG, TrainConfig, Trainer  # noqa: E402


def run_block(trainer, steps, recorder):
    """steps training steps from a multiple of trainer.stats_interval; with the recorder on, the last
    is a stats step -> (seconds, seconds of the last step)."""
    trainer.stats_recorder = recorder  # None: what --stats-interval 0 runs
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step()
    last = time.perf_counter() - t0
    return time.perf_counter() - start, last


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="pairs of blocks (off, on)")
    parser.add_argument("--interval", type=int, default=100, help="steps per block = the stats interval")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (kernels compile, pages fault in)")
    parser.add_argument("--backend", default="numba", choices=("numba", "numpy"))
    args = parser.parse_args()

    keep_freed_memory()
    with tempfile.TemporaryDirectory() as out:
        warmup = -(-args.warmup // args.interval) * args.interval  # rounded up: blocks start on a stats phase
        total = warmup + 2 * args.rounds * args.interval + 1
        cfg = TrainConfig(out=out, max_iters=total, lr_decay_iters=total, backend=args.backend, sample_tokens=0,
                          stats_interval=args.interval)
        task = LanguageModelingTask(cfg)
        trainer = Trainer(task.cfg, task, progress=False)
        recorder = trainer.stats_recorder
        tokens = trainer.tokens_per_iter * args.interval
        print(f"config S: {trainer.model.num_params:,} parameters, {cfg.backend} backend, "
              f"{trainer.cfg.workers} worker(s), {trainer.tokens_per_iter} tokens/step; stats every "
              f"{args.interval} steps, {args.rounds} rounds", flush=True)
        run_block(trainer, warmup, recorder)  # also warms the stats step itself
        times = {"off": [], "on": []}
        stats_steps = []
        for r in range(args.rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):  # ABBA: no mode always goes first
                seconds, last_seconds = run_block(trainer, args.interval, recorder if mode == "on" else None)
                times[mode].append(seconds)
                if mode == "on":
                    stats_steps.append(last_seconds)
                print(f"round {r + 1} {mode:>3}: {tokens / seconds:,.0f} tok/s", flush=True)
        with open(os.path.join(out, STEP_LOG), encoding="utf-8") as f:
            written = sum(json.loads(line)["kind"] == "stats" for line in f)
        expected = warmup // args.interval + args.rounds
        assert written == expected, f"{written} stats records, expected {expected}"
    rate = {mode: tokens * len(t) / sum(t) for mode, t in times.items()}
    plain_step_ms = 1000 * sum(times["off"]) / (len(times["off"]) * args.interval)
    print(f"stats off: {rate['off']:,.0f} tok/s   stats every {args.interval}: {rate['on']:,.0f} tok/s   "
          f"ratio on/off {rate['on'] / rate['off']:.4f} ({100 * (1 - rate['on'] / rate['off']):+.2f}% lost)")
    extra_ms = 1000 * statistics.median(stats_steps) - plain_step_ms
    print(f"a stats step: median {1000 * statistics.median(stats_steps):.1f} ms vs a plain step "
          f"{plain_step_ms:.1f} ms (mean): {extra_ms:+.1f} ms, "
          f"i.e. {100 * extra_ms / (args.interval * plain_step_ms):.2f}% "
          f"of {args.interval} steps (less sensitive to a busy machine than the ratio); per-block ratios on/off: "
          + ", ".join(f"{off / on:.3f}" for off, on in zip(times["off"], times["on"])))


if __name__ == "__main__":
    main()
