"""One fine-tuning step at GPT-2 small's size: npgpt, npgpt + LoRA, transformers, a minimal PyTorch GPT.

    python benchmarks/finetune_vs_hf.py                     # B=4, T=256, 3 alternating rounds
    python benchmarks/finetune_vs_hf.py --rounds 1 --steps 3 --contenders npgpt,npgpt-lora

A step is forward, backward and AdamW on a batch of B windows of T tokens,
GPT-2 124M shapes (12 layers, 12 heads, 768 channels, vocabulary 50257),
position table cropped to T as fine-tuning does.  Random weights: the time
of a step does not depend on their values.  Contenders:

  npgpt        every parameter trains; npgpt.optim.AdamW
  npgpt-lora   rank-8 adapters on c_attn and c_proj (alpha 16), everything else
               frozen (npgpt.finetune.freeze: frozen weights' gradient products
               skipped) and TrainableAdamW (moments for the adapters only)
  hf           transformers.GPT2LMHeadModel, eager attention, float32, torch AdamW (fused)
  torch-min    the minimal PyTorch GPT of benchmarks/vs_pytorch.py (SDPA, fused AdamW)

Each measurement runs in its own process with --threads threads (2 by
default), and the contenders alternate round by round, so that a change in
machine load hits all of them.  Printed: the median tokens/s over rounds,
ms per step, and the peak RSS of each process.  Needs torch and
transformers for the last two.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from vs_pytorch import build_torch_gpt, thread_env  # noqa: E402

SIZES = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
CONTENDERS = ("npgpt", "npgpt-lora", "hf", "torch-min")
ADAMW = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
LR = 6e-5


def _batch(B, T, V, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def _result(name, step_times, B, T, extra=None):
    step_s = statistics.median(step_times)
    return {"contender": name, "tokens_per_s": B * T / step_s, "step_ms": 1e3 * step_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **(extra or {})}


def npgpt_worker(name, B, T, steps, warmup):
    import numpy as np

    from npgpt import GPT, GPTConfig
    from npgpt.finetune import TrainableAdamW, add_lora, freeze
    from npgpt.memory import keep_freed_memory
    from npgpt.optim import AdamW

    keep_freed_memory()  # as npgpt train does
    model = GPT(GPTConfig(block_size=T, **SIZES), seed=0)
    if name == "npgpt-lora":
        model = add_lora(model, rank=8, alpha=16.0, targets="c_attn,c_proj")
        opt = TrainableAdamW(model, freeze(model, None), **ADAMW)
    else:
        opt = AdamW(model, **ADAMW)
    x, y = _batch(B, T, SIZES["vocab_size"])
    grad = np.empty_like(model.flat_params)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        _, cache = model.forward(x, y)
        model.backward(cache, out=grad)
        opt.step(grad, LR)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return _result(name, times, B, T, {"optimizer_floats": int(opt.m.size + opt.v.size)})


def torch_worker(name, B, T, steps, warmup):
    import torch

    torch.set_num_threads(int(os.environ.get("NPGPT_BENCH_THREADS", 2)))
    torch.manual_seed(0)
    x, y = (torch.as_tensor(a) for a in _batch(B, T, SIZES["vocab_size"]))
    if name == "hf":
        import transformers

        config = transformers.GPT2Config(n_positions=T, n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        config._attn_implementation = "eager"  # transformers' plain attention, as the issue asks
        model = transformers.GPT2LMHeadModel(config).train()

        def loss_of():
            logits = model(x).logits
            return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    else:
        model = build_torch_gpt(block_size=T, **SIZES).train()

        def loss_of():
            return model(x, y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True, **ADAMW)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return _result(name, times, B, T, {"attention": getattr(model.config, "_attn_implementation", "sdpa")})


def run_one(name, args):
    """One measurement in a fresh process -> its JSON result."""
    cmd = [sys.executable, __file__, "--worker", name, "--batch-size", str(args.batch_size),
           "--block-size", str(args.block_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    repo = os.path.dirname(HERE)
    env = thread_env(args.threads)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, from {', '.join(CONTENDERS)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="alternations (median reported)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        work = npgpt_worker if args.worker.startswith("npgpt") else torch_worker
        print(json.dumps(work(args.worker, args.batch_size, args.block_size, args.steps, args.warmup)))
        return 0
    names = [n for n in args.contenders.split(",") if n]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contender(s) {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    results = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            results[n].append(run_one(n, args))
    print(f"B={args.batch_size} T={args.block_size}, GPT-2 124M shapes, {args.threads} thread(s), "
          f"{args.rounds} alternating round(s) of {args.steps} timed steps")
    print(f"{'contender':<12}{'tokens/s':>10}{'ms/step':>10}{'peak RSS MB':>13}")
    for n, rs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        print(f"{n:<12}{tps:>10,.0f}{statistics.median(r['step_ms'] for r in rs):>10,.0f}"
              f"{max(r['peak_rss_mb'] for r in rs):>13,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
