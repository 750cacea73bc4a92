"""How much slower is npgpt's step while another process keeps one core busy?

    python benchmarks/busy_core.py                          # S, plain and data-parallel, 3 rounds
    python benchmarks/busy_core.py --configs S,M --rounds 3

The "hog" is a second process spinning in a loop, pinned to the last CPU
(as a build or a browser tab would take a core).  For each config and
mode the quiet and busy measurements alternate, each in its own process
(benchmarks/step_child.py), and the ratio busy / quiet is printed (the
issue's target: at most 2.5x; 2x is what a step that needs both cores
must pay when one of them is shared 50/50).

Modes: plain = one model, every product and kernel split across the
cores (workers 1); data-parallel = the batch split across one worker
thread per core (workers 2, npgpt/parallel.py, what `npgpt train` and
`model.loss_and_grad` use for small models).  CPU ms per step counts
every thread of the step's process: threads that spin while they wait
show up there.  Linux only (CPU affinity).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

from import_order import DEFAULT_STEPS, cpu_model, run_child

MODES = {"plain": 1, "data-parallel": 2}
HOG = "import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n"


def start_hog():
    cpu = max(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", HOG % cpu])
    time.sleep(0.5)  # let it start spinning
    return hog


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="S", help="comma-separated, from S, M, L")
    p.add_argument("--rounds", type=int, default=3, help="quiet/busy alternations (median reported)")
    p.add_argument("--modes", default="plain,data-parallel", help="comma-separated: plain, data-parallel")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: 20 S, 5 M, 3 L)")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("busy_core.py needs Linux (os.sched_setaffinity)")
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} CPUs for this process; load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.rounds} rounds, quiet and busy alternated")
    print(f"{'config':<7}{'mode':<15}{'quiet ms':>9}{'busy ms':>9}{'busy/quiet':>11}"
          f"{'CPU ms quiet':>13}{'busy':>7}   quiet / busy per round")
    for config in args.configs.split(","):
        steps = args.steps or DEFAULT_STEPS[config]
        for mode in args.modes.split(","):
            quiet, busy = [], []
            for _ in range(args.rounds):
                quiet.append(run_child(config, MODES[mode], "", steps, args.warmup))
                hog = start_hog()
                try:
                    busy.append(run_child(config, MODES[mode], "", steps, args.warmup))
                finally:
                    hog.kill()
                    hog.wait()
            q = statistics.median(r["step_ms"] for r in quiet)
            b = statistics.median(r["step_ms"] for r in busy)
            cpu_q = statistics.median(r["cpu_ms_per_step"] for r in quiet)
            cpu_b = statistics.median(r["cpu_ms_per_step"] for r in busy)
            rounds = " ".join(f"{x['step_ms']:.0f}/{y['step_ms']:.0f}" for x, y in zip(quiet, busy))
            print(f"{config:<7}{mode:<15}{q:>9.1f}{b:>9.1f}{b / q:>10.2f}x{cpu_q:>13.1f}{cpu_b:>7.1f}   {rounds}",
                  flush=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other processes' load "
          "makes 'quiet' less quiet: compare ratios within one run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
