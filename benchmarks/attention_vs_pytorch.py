"""npgpt's causal attention kernel against PyTorch's scaled_dot_product_attention, one thread each.

    python benchmarks/attention_vs_pytorch.py [--configs S,M] [--rounds 3]

Measures the forward and the backward of npgpt.kernels.attention against
torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
and its backward, float32, at the shapes one worker sees: half of S's and
M's batch (each of their two data-parallel workers runs on one core), and
L's whole batch of 4 (L trains with one worker; here it gets one thread
too, so the table compares per-core speed).  Both get the same random qkv.

Each measurement runs in its own process, on one thread (a second thread
pool in the same process would spin and slow the first down), and the two
frameworks alternate, npgpt, torch, npgpt, torch, ... so that a change in
machine load hits both.  Each process warms up, then times --reps forward
calls and --reps backward calls separately and reports their medians; the
table shows the median over --rounds processes.  Needs torch (pip install
torch==2.13.0).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (B, n_head, T, head size): one data-parallel worker's share of each config
CONFIGS = {
    "S": (6, 4, 64, 32),
    "M": (4, 6, 256, 64),
    "L": (4, 12, 64, 64),
}
WARMUP = 2  # calls before timing: Numba compiles, PyTorch picks its kernels


def random_qkv(B, n_head, T, hs):
    """The packed (B, T, 3C) input and a (B, T, C) output gradient, identical in both workers."""
    import numpy as np

    C = n_head * hs
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((B, T, 3 * C), dtype=np.float32)
    dout = rng.standard_normal((B, T, C), dtype=np.float32)
    return qkv, dout


def time_fwd_bwd(forward, backward, reps):
    """Median ms of forward() and of backward(result), each timed on its own.

    Every rep runs a fresh forward, because a backward consumes the forward's
    cache (PyTorch frees its graph), but only the call itself is timed.
    """
    fwd, bwd = [], []
    for i in range(WARMUP + reps):
        t0 = time.perf_counter()
        result = forward()
        t1 = time.perf_counter()
        backward(result)
        t2 = time.perf_counter()
        if i >= WARMUP:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return 1e3 * statistics.median(fwd), 1e3 * statistics.median(bwd)


# ------------------------------------------------------------------- the workers
def npgpt_worker(name, reps):
    import npgpt  # noqa: F401  first: it sets environment defaults that must precede numpy
    import numba

    from npgpt.kernels import attention

    numba.set_num_threads(1)
    B, n_head, T, hs = CONFIGS[name]
    qkv, dout = random_qkv(B, n_head, T, hs)
    fwd_ms, bwd_ms = time_fwd_bwd(lambda: attention.forward(qkv, n_head),
                                  lambda result: attention.backward(dout, result[1]), reps)
    return {"framework": "npgpt", "config": name, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
            "threads": numba.get_num_threads()}


def torch_worker(name, reps):
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(1)
    B, n_head, T, hs = CONFIGS[name]
    qkv, dout = random_qkv(B, n_head, T, hs)

    def heads(a):
        """(B, T, n_head*hs) -> contiguous (B, n_head, T, hs), the layout sdpa is fastest on."""
        return torch.from_numpy(a).view(B, T, n_head, hs).transpose(1, 2).contiguous()

    q, k, v = (heads(a).requires_grad_() for a in qkv.reshape(B, T, 3, n_head * hs).transpose(2, 0, 1, 3))
    dout_heads = heads(dout)

    def backward(out):
        for t in (q, k, v):  # otherwise each backward adds into the last one's gradients
            t.grad = None
        out.backward(dout_heads)

    fwd_ms, bwd_ms = time_fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), backward, reps)
    return {"framework": "torch", "config": name, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
            "threads": torch.get_num_threads()}


WORKERS = {"npgpt": npgpt_worker, "torch": torch_worker}


# ------------------------------------------------------------------ orchestration
def one_thread_env():
    """The children's environment: every thread pool sized to one, read when the libraries load."""
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return env


def run_one(framework, name, reps):
    """One measurement in a fresh process -> its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--configs", name, "--reps", str(reps)]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, env=one_thread_env(), cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def attention_flops(name):
    """Forward FLOPs of causal attention: QK^T and PV, 2*T*T*C each, over the causal half."""
    B, n_head, T, hs = CONFIGS[name]
    return 2 * B * T * T * n_head * hs


def torch_available():
    """Checked in the parent so a missing torch is one line, not a child's traceback."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="S,M,L", help="comma-separated, from S, M, L")
    p.add_argument("--rounds", type=int, default=3, help="alternations per config (median reported)")
    p.add_argument("--reps", type=int, default=20, help="timed forward and backward calls per process")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {','.join(unknown)}; choose from {','.join(CONFIGS)}")
    if args.worker:
        print(json.dumps(WORKERS[args.worker](names[0], args.reps)))
        return 0
    if not torch_available():
        print("the PyTorch side needs torch: pip install torch==2.13.0")
        return 2

    print(f"{'config':<7}{'npgpt fwd ms':>13}{'bwd ms':>9}{'torch fwd ms':>14}{'bwd ms':>9}"
          f"{'torch/npgpt':>13}   {'npgpt GFLOP/s fwd':>17}{'bwd':>7}")
    for name in names:
        results = {"npgpt": [], "torch": []}
        for _ in range(args.rounds):
            for framework in ("npgpt", "torch"):
                results[framework].append(run_one(framework, name, args.reps))
        med = {f: {k: statistics.median(r[k] for r in rs) for k in ("fwd_ms", "bwd_ms")} for f, rs in results.items()}
        n, t = med["npgpt"], med["torch"]
        ratio = (t["fwd_ms"] + t["bwd_ms"]) / (n["fwd_ms"] + n["bwd_ms"])
        flops = attention_flops(name)  # backward counted as twice the forward
        print(f"{name:<7}{n['fwd_ms']:>13.3f}{n['bwd_ms']:>9.3f}{t['fwd_ms']:>14.3f}{t['bwd_ms']:>9.3f}"
              f"{ratio:>12.2f}x   {flops / n['fwd_ms'] / 1e6:>17.1f}{2 * flops / n['bwd_ms'] / 1e6:>7.1f}", flush=True)
    print(f"({args.rounds} alternating rounds per config, each framework in its own process, 1 thread; "
          f"ms is the median over rounds of each process's median of {args.reps} calls; "
          "torch/npgpt > 1 means npgpt is faster at forward+backward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
