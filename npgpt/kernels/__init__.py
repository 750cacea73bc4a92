"""Numba kernels: the fast versions of npgpt.layers, same signatures, same results.

Each submodule mirrors the reference layer of the same name (DESIGN.md's
layer contract): `forward(...) -> (out, cache)` and `backward(dout, cache)`
returning gradients in forward's argument order.  The tests compare every
kernel with its reference (float64 to 1e-9, float32 to 1e-4) and check the
kernels against finite differences too.

How they are fast:
- matrix products go to BLAS (`@`) on one (B*T, C) matrix, never inside a
  parallel loop (OpenBLAS's threads and Numba's would fight for the cores);
- everything around the products is one fused `prange` pass compiled with
  `@njit(parallel=True, cache=True, fastmath=True, nogil=True)`;
- attention never builds the (T, T) probability matrix: the forward keeps one
  log-sum-exp per (batch, head, query) and the backward recomputes the
  probabilities from it, so its memory grows as T, not T^2;
- no kernel is pinned to a signature: float32 trains, float64 gradient-checks.

fastmath lets LLVM reorder sums and vectorise, and assumes no NaN or inf, so
no kernel relies on -inf: the causal mask is a loop bound and maxima start
from a real element.
"""
# The thread pools' settings (OMP_WAIT_POLICY, OpenBLAS's thread timeout)
# are made by `import npgpt`, before this package loads: npgpt/threads.py.
from . import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, lora, optim

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear", "lora", "optim"]
