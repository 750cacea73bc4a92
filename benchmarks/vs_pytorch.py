"""npgpt against the same GPT-2 written in PyTorch, same CPU, same threads (2 by default).

    python benchmarks/vs_pytorch.py                 # S, M and L, 3 rounds each
    python benchmarks/vs_pytorch.py --configs S --rounds 5

Each measurement runs in its own process (two thread pools in one process
spin after their work and slow each other down), and the two frameworks
alternate, npgpt, torch, npgpt, torch, ... so that a change in machine
load hits both.  Printed per config: median tokens/s of each, their
ratio, ms per step split forward/backward/optimizer, and peak RSS.

The PyTorch model below is written for this comparison: GPT-2's
architecture as npgpt builds it (pre-LN blocks, GELU tanh, tied LM head,
biases, GPT-2 init), trained the way PyTorch trains fastest on a CPU:
eager mode, F.scaled_dot_product_attention(is_causal=True), fused AdamW,
float32, torch.set_num_threads(--threads).  Needs torch (pip install torch==2.13.0).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {  # the same as npgpt.bench.CONFIGS: (model sizes, batch size)
    "S": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12),
    "M": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 8),
    "L": (dict(n_layer=12, n_head=12, n_embd=768, block_size=64, vocab_size=50257), 4),
}
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
THREADS = 2  # --threads overrides


# --------------------------------------------------------------- the torch side
def build_torch_gpt(n_layer, n_head, n_embd, block_size, vocab_size):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.attn_proj = nn.Linear(n_embd, n_embd)
            self.ln_2 = nn.LayerNorm(n_embd)
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (a.view(B, T, n_head, C // n_head).transpose(1, 2) for a in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            residual_std = 0.02 / math.sqrt(2 * n_layer)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, 0.0, residual_std if name.endswith("proj.weight") else 0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied LM head
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    return GPT()


def torch_worker(name, steps, warmup):
    import resource

    import torch

    torch.set_num_threads(int(os.environ.get("NPGPT_BENCH_THREADS", THREADS)))
    torch.manual_seed(0)
    sizes, batch_size = CONFIGS[name]
    model = build_torch_gpt(**sizes)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], fused=True, **ADAMW)
    g = torch.Generator().manual_seed(0)
    T, V = sizes["block_size"], sizes["vocab_size"]
    idx = torch.randint(0, V, (batch_size, T), generator=g)
    targets = torch.randint(0, V, (batch_size, T), generator=g)
    split = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    step_times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model(idx, targets)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            step_times.append(t3 - t0)
            for k, dt in zip(split, (t1 - t0, t2 - t1, t3 - t2)):
                split[k] += dt
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_s = statistics.median(step_times)
    return {"framework": "torch", "config": name, "tokens_per_s": batch_size * T / step_s,
            "step_ms": 1e3 * step_s, "split_ms": {k: 1e3 * v / steps for k, v in split.items()},
            "peak_rss_mb": rss_mb, "threads": torch.get_num_threads(), "loss": loss.item()}


# ------------------------------------------------------------------ orchestration
def thread_env(threads):
    env = dict(os.environ)
    # OpenBLAS's idle workers spin for ~0.1 s after each product, on the cores
    # Numba's kernels need next; a short timeout lets them sleep (measured: S
    # +27%, M +8% tokens/s).  Read when OpenBLAS loads, so it is set here, in
    # the child's environment.  PyTorch does not use OpenBLAS.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NPGPT_BENCH_THREADS=str(threads))
    return env


def run_one(framework, name, steps, warmup, threads):
    """One measurement in a fresh process -> its JSON result."""
    if framework == "npgpt":
        cmd = [sys.executable, "-m", "npgpt", "bench", "--config", name, "--json",
               "--steps", str(steps), "--warmup", str(warmup)]
    else:
        cmd = [sys.executable, __file__, "--worker", "--configs", name, "--steps", str(steps), "--warmup", str(warmup)]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, env=thread_env(threads), cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_split(r):
    """ms per phase, fwd/bwd/opt; data-parallel npgpt runs forward and backward together: fwd+bwd/opt."""
    return "/".join(f"{v:.0f}" for v in r["split_ms"].values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="S,M,L", help="comma-separated, from S, M, L")
    p.add_argument("--rounds", type=int, default=3, help="alternations per config (median reported)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: 20 S, 8 M, 5 L)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=THREADS, help="threads for both frameworks (default 2)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.configs.split(",")
    default_steps = {"S": 20, "M": 8, "L": 5}
    if args.worker:
        print(json.dumps(torch_worker(names[0], args.steps or default_steps[names[0]], args.warmup)))
        return 0
    print(f"{'config':<7}{'npgpt tok/s':>12}{'torch tok/s':>12}{'ratio':>7}   {'ms fwd/bwd/opt npgpt':>21}"
          f"{'torch':>17}   {'RSS MB npgpt':>12}{'torch':>7}   {'MFU npgpt':>9}")
    for name in names:
        steps = args.steps or default_steps[name]
        results = {"npgpt": [], "torch": []}
        for _ in range(args.rounds):
            for framework in ("npgpt", "torch"):
                results[framework].append(run_one(framework, name, steps, args.warmup, args.threads))
        med = {f: statistics.median(r["tokens_per_s"] for r in rs) for f, rs in results.items()}
        mid = {f: sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2] for f, rs in results.items()}
        rss = {f: max(r["peak_rss_mb"] for r in rs) for f, rs in results.items()}
        print(f"{name:<7}{med['npgpt']:>12,.0f}{med['torch']:>12,.0f}{med['npgpt'] / med['torch']:>6.2f}x   "
              f"{fmt_split(mid['npgpt']):>21}{fmt_split(mid['torch']):>17}   {rss['npgpt']:>12.0f}{rss['torch']:>7.0f}"
              f"   {100 * mid['npgpt']['mfu']:>8.0f}%", flush=True)
    print(f"({args.rounds} alternating rounds per config, each framework in its own process, {args.threads} thread(s); "
          "tokens/s is the median over rounds of each process's median step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
