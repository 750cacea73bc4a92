"""A user's own training loop, written from the docs, against `npgpt bench`.

    python benchmarks/user_loop.py                          # S and M, 3 rounds
    python benchmarks/user_loop.py --configs S,M --rounds 3

The loop is USER_LOOP below: the public API only (`model.loss_and_grad`,
which splits the batch across the cores by itself, and `AdamW.step`), about
thirty lines, as a user would write it.  `npgpt bench` runs the same
model, batch and AdamW settings through its own step.  Each run is its own
process and the two alternate; printed per config: median tokens/s of each
and their ratio (the issue's target: the user loop at >= 95% of bench).

The loop also runs once more with `npgpt.memory.keep_freed_memory()`, which
`npgpt bench` and `npgpt train` call and a library does not (it changes
the process's malloc): the difference between the two rows is what page
faults cost the user's loop.  Where `model.loss_and_grad` does not exist
(a branch without the public training API), the loop falls back to
forward / backward(out=grad) / AdamW.step and says so.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from import_order import DEFAULT_STEPS, REPO, cpu_model

USER_LOOP = '''
import time
import numpy as np
import npgpt
from npgpt.bench import CONFIGS  # the benchmark's model sizes and batch size

sizes, batch_size = CONFIGS[CONFIG]
model = npgpt.GPT(npgpt.GPTConfig(**sizes))
AdamW = getattr(npgpt, "AdamW", None) or __import__("npgpt.optim", fromlist=["AdamW"]).AdamW
optimizer = AdamW(model, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
rng = np.random.default_rng(0)
T, V = sizes["block_size"], sizes["vocab_size"]
x = rng.integers(0, V, (batch_size, T))  # a fixed batch, as `npgpt bench` uses
y = rng.integers(0, V, (batch_size, T))
grads = None  # one gradient buffer, reused from step 1 on

times = []
for step in range(WARMUP + STEPS):
    start = time.perf_counter()
    loss, grads = model.loss_and_grad(x, y, grads=grads)
    optimizer.step(grads, lr=3e-4)
    times.append(time.perf_counter() - start)
step_s = float(np.median(times[WARMUP:]))
print(f"loss {float(loss):.3f}, {batch_size * T / step_s:,.0f} tokens/s")
'''

FALLBACK_LOOP = USER_LOOP.replace(
    "    loss, grads = model.loss_and_grad(x, y, grads=grads)\n",
    "    loss, cache = model.forward(x, y)\n"
    "    grads = np.zeros_like(model.flat_params) if grads is None else grads  # the flat buffer AdamW takes\n"
    "    model.backward(cache, out=grads)\n")

CHILD = '''
import json, sys
CONFIG, STEPS, WARMUP, KEEP = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if KEEP:
    from npgpt.memory import keep_freed_memory
    keep_freed_memory()
import npgpt
loop = LOOP if hasattr(npgpt.GPT, "loss_and_grad") else FALLBACK
exec(loop)
print(json.dumps({"tokens_per_s": batch_size * T / step_s, "api": "loss_and_grad" if loop is LOOP else "fallback"}))
'''


def child_env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_user_loop(config, steps, warmup, keep_memory):
    code = f"LOOP = {USER_LOOP!r}\nFALLBACK = {FALLBACK_LOOP!r}\n" + CHILD
    cmd = [sys.executable, "-c", code, config, str(steps), str(warmup), "1" if keep_memory else "0"]
    out = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"user loop ({config}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_bench(config, steps, warmup):
    cmd = [sys.executable, "-m", "npgpt", "bench", "--config", config, "--json", "--steps", str(steps),
           "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"npgpt bench --config {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="S,M", help="comma-separated, from S, M, L")
    p.add_argument("--rounds", type=int, default=3, help="alternations (median reported)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: 20 S, 5 M, 3 L)")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {args.rounds} rounds, bench and the user loop "
          "alternated, each run its own process")
    print(f"{'config':<7}{'run':<34}{'tokens/s':>10}{'vs bench':>10}   tokens/s per round")
    apis = set()
    for config in args.configs.split(","):
        steps = args.steps or DEFAULT_STEPS[config]
        runs = {"npgpt bench": [], "user loop": [], "user loop + keep_freed_memory()": []}
        for _ in range(args.rounds):
            runs["npgpt bench"].append(run_bench(config, steps, args.warmup)["tokens_per_s"])
            for name, keep in (("user loop", False), ("user loop + keep_freed_memory()", True)):
                r = run_user_loop(config, steps, args.warmup, keep)
                apis.add(r["api"])
                runs[name].append(r["tokens_per_s"])
        bench = statistics.median(runs["npgpt bench"])
        for name, values in runs.items():
            tps = statistics.median(values)
            print(f"{config:<7}{name:<34}{tps:>10,.0f}{100 * tps / bench:>9.0f}%   "
                  + " ".join(f"{v:,.0f}" for v in values), flush=True)
    if "fallback" in apis:
        print("NOTE: model.loss_and_grad does not exist on this branch; the user loop ran forward / "
              "backward(out=) / AdamW.step instead (the plain step, no data parallelism).")
    print("target: the user loop at >= 95% of npgpt bench's tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
