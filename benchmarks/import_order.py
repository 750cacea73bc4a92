"""Does importing torch (or numpy) before npgpt slow npgpt's training step?

    python benchmarks/import_order.py                       # S and M, 3 rounds
    python benchmarks/import_order.py --configs S,M --rounds 3 --workers 1,0

Each measurement is its own process (what matters is what the process
loaded before `import npgpt`), and the orders alternate within a round:
nothing first, torch first, numpy first, nothing first, ...  so that a
change in machine load hits all of them.  Printed per config and mode:
the median ms per step of each order and its ratio to "npgpt first"
(the issue's target: torch first within 10%, a ratio <= 1.10), plus CPU
ms per step (threads spinning instead of sleeping show up there first).
Workers 1 is the plain step (one model, each product and kernel split
across the cores), 0 npgpt's own choice (data-parallel at S and M).

Before npgpt/threads.py, torch first made the plain S step 8-9x slower:
Numba's OpenMP layer bound to torch's libgomp, started with the spinning
default wait policy, and numpy's OpenBLAS had read no thread timeout.
Needs torch for the torch-first rows (pip install torch==2.13.0); without
it they are left out.
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_STEPS = {"S": 20, "M": 5, "L": 3}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_child(config, workers, import_first, steps, warmup):
    """One measurement in a fresh process -> its JSON result."""
    cmd = [sys.executable, os.path.join(HERE, "step_child.py"), "--config", config, "--workers", str(workers),
           "--steps", str(steps), "--warmup", str(warmup), "--import-first", import_first]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"step_child.py {' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="S,M", help="comma-separated, from S, M, L")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the import orders (median reported)")
    p.add_argument("--workers", default="1,0", help="comma-separated: 1 = plain step, 0 = npgpt's choice")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: 20 S, 5 M, 3 L)")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    orders = [""] + (["torch"] if importlib.util.find_spec("torch") else []) + ["numpy"]
    label = {"": "npgpt first", "torch": "torch first", "numpy": "numpy first"}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {args.rounds} rounds, orders alternated, "
          "each run its own process")
    if "torch" not in orders:
        print("(torch is not installed: no torch-first rows)")
    print(f"{'config':<7}{'workers':>8}  {'order':<12}{'ms/step':>9}{'ratio':>8}{'CPU ms/step':>13}"
          f"{'layer':>7}   ms/step per round")
    for config in args.configs.split(","):
        steps = args.steps or DEFAULT_STEPS[config]
        for workers in (int(w) for w in args.workers.split(",")):
            runs = {order: [] for order in orders}
            for _ in range(args.rounds):
                for order in orders:
                    runs[order].append(run_child(config, workers, order, steps, args.warmup))
            base = statistics.median(r["step_ms"] for r in runs[""])
            for order in orders:
                ms = [r["step_ms"] for r in runs[order]]
                cpu = statistics.median(r["cpu_ms_per_step"] for r in runs[order])
                chosen = runs[order][0]
                print(f"{config:<7}{chosen['workers']:>8}  {label[order]:<12}{statistics.median(ms):>9.1f}"
                      f"{statistics.median(ms) / base:>7.2f}x{cpu:>13.1f}{chosen['threading_layer']:>7}   "
                      + " ".join(f"{m:.1f}" for m in ms), flush=True)
    print("ratio: median ms/step of that order / median ms/step with npgpt imported first (target for torch "
          "first: <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
