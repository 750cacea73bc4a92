"""One process's measurement of npgpt's training step, for the benchmarks beside it.

    python benchmarks/step_child.py --config S --workers 1 --import-first torch

Prints one JSON line: median ms per step (forward, backward, AdamW, as
`npgpt bench` times it), tokens/s, CPU seconds per step and Numba's
threading layer.  --import-first imports that module *before* npgpt, as a
user's script or notebook might (torch, numpy); it is the only reason this
runs in its own process.  --workers 1 is the plain step (one model, every
product and kernel split across the cores); 2 splits the batch
(npgpt/parallel.py); 0 lets npgpt choose, as `npgpt bench` does.
"""
import argparse
import importlib
import json
import statistics
import sys
import time


def measure(config, workers, steps, warmup, keep_memory=True):
    from npgpt.bench import CONFIGS, Timer, Trainer
    from npgpt.memory import keep_freed_memory
    from npgpt.model import GPTConfig

    if keep_memory:
        keep_freed_memory()  # as `npgpt bench` does: page faults are not what is measured here
    sizes, batch_size = CONFIGS[config]
    trainer = Trainer(GPTConfig(**sizes), batch_size, seed=0, workers=workers)
    for _ in range(warmup):
        trainer.step(Timer())
    times, cpu0 = [], time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step(Timer())
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / steps
    step_s = statistics.median(times)
    return {"config": config, "workers": trainer.parallel.workers if trainer.parallel else 1,
            "step_ms": 1e3 * step_s, "tokens_per_s": batch_size * sizes["block_size"] / step_s,
            "cpu_ms_per_step": 1e3 * cpu}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="S")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--import-first", default="", help="a module to import before npgpt (e.g. torch)")
    args = p.parse_args(argv)
    if args.import_first:
        importlib.import_module(args.import_first)
    import numba

    result = measure(args.config, args.workers, args.steps, args.warmup)
    result.update(import_first=args.import_first or None, threading_layer=numba.threading_layer(),
                  numba_threads=numba.get_num_threads())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
