"""Data parallelism: split a batch across the cores, each running the whole model.

A small model's matrix products are too small to split well.  At config S
a product is (768, 128) @ (128, 384): a fraction of a millisecond of work,
and a step has about 120 such calls and kernels.  With two cores sharing
each call, the cores spend a large part of every step waking each other,
handing over between OpenBLAS's thread pool and Numba's, and waiting for
the slower half.  Splitting the *batch* instead lets each core run the
full forward and backward on its own rows, single-threaded, with nothing
to hand over until the end, where the shard gradients are summed.

The batch's mean loss is the token-weighted mean of the shards' mean losses,

    L = sum_k (n_k / n) L_k        so        dL/dtheta = sum_k (n_k / n) dL_k/dtheta

where n_k counts shard k's targets that are not ignore_index and n is their
sum.  Each shard's backward starts from dloss = n_k / n (GPT.backward's
dloss) and the gradients add.  Up to float rounding (the sums happen in a
different order) this is the gradient of the whole batch.

The price is one more gradient buffer per extra worker (num_params floats
each), and a sum over it every step: cheap for a small model, 500 MB at
GPT-2 124M, whose products are large enough for BLAS to split well anyway.
`choose_workers` draws that line.

`model.loss_and_grad` uses this on its own; to drive it by hand:

    >>> import numpy as np, npgpt
    >>> model = npgpt.GPT(npgpt.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> parallel = DataParallel(model, workers=2)
    >>> x = np.arange(32).reshape(4, 8) % 11
    >>> grad = np.empty_like(model.flat_params)
    >>> loss = parallel.loss_and_grad(x, (x + 1) % 11, grad)   # x, y (B, T); grad (N,) overwritten
    >>> one_piece, cache = model.forward(x, (x + 1) % 11)
    >>> bool(np.isclose(loss, one_piece)), bool(np.allclose(grad, model.backward(cache).flat, atol=1e-6))
    (True, True)
    >>> parallel.close()
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

# Above this many parameters the model's products keep both cores busy on
# their own, and an extra gradient buffer per worker costs real memory: at
# GPT-2 124M a second worker took `npgpt bench --config L`'s peak RSS from
# 2,430 to 2,959 MB, above PyTorch's 2,726 MB.
MAX_DATA_PARALLEL_PARAMS = 30_000_000


def choose_workers(model, batch_size, cores=None):
    """How many data-parallel workers suit this model and batch: 1 means "don't split".

    Only the Numba backend splits: the NumPy reference is for reading and
    checking, and stays one plain sequence of calls.
    """
    cores = numba.config.NUMBA_NUM_THREADS if cores is None else cores
    if model.config.backend != "numba" or model.num_params > MAX_DATA_PARALLEL_PARAMS:
        return 1
    if not threads_may_share_kernels():
        return 1
    return max(1, min(cores, batch_size))


@numba.njit(parallel=True, cache=True)
def _touch_thread_pool(n):
    total = 0
    for i in numba.prange(n):
        total += i
    return total


def threads_may_share_kernels():
    """True if several Python threads may run parallel Numba kernels at once.

    Numba's OpenMP and TBB threading layers allow it; its fallback,
    "workqueue" (used when neither library loads), aborts the process
    instead.  Numba picks its layer at the first parallel call, hence the
    tiny one here.
    """
    _touch_thread_pool(2)
    return numba.threading_layer() != "workqueue"


def split_rows(n_rows, workers):
    """-> list of (start, stop) ranges over n_rows, as equal as possible, none empty."""
    workers = min(workers, n_rows)
    bounds = np.linspace(0, n_rows, workers + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_weights(y, shards, ignore_index):
    """-> n_k / n for each shard's rows of targets y: its share of the counted
    (not ignore_index) targets; all 0 when the batch counts none (loss 0)."""
    counts = [int(np.count_nonzero(y[a:b] != ignore_index)) for a, b in shards]
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def _one_thread_per_worker():
    # Numba's thread count is per calling thread: each worker runs its
    # kernels on its own core, and the main thread keeps its setting.
    numba.set_num_threads(1)


class DataParallel:
    """Computes a batch's loss and gradient with `workers` threads, one batch shard each."""

    def __init__(self, model, workers):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if workers > 1 and not threads_may_share_kernels():
            raise ValueError("data-parallel workers need Numba's 'omp' or 'tbb' threading layer; this Numba "
                             "fell back to 'workqueue' (use one worker)")
        self.model, self.workers = model, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="npgpt-shard",
                                        initializer=_one_thread_per_worker)
        # Shard 0 writes into the caller's buffer; the others into their own.
        self._buffers = [np.empty_like(model.flat_params) for _ in range(workers - 1)]
        self._blas = _single_threaded_blas()

    def loss_and_grad(self, x, y, grad, rng=None, label_smoothing=0.0, ignore_index=-1):
        """x, y (B, T) -> mean loss over the batch; its gradient is written over grad (N,).

        rng: turns dropout on; each shard draws its masks from its own
        generator, seeded from rng, so that results do not depend on which
        thread finishes first (and a resumed run draws the same masks).
        """
        x, y, shards, weights = self._split(x, y, ignore_index)
        rngs = [None] * len(shards)
        if rng is not None:
            rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=len(shards))]
        outs = [grad] + self._buffers[: len(shards) - 1]

        def run_shard(k):
            a, b = shards[k]
            loss, cache = self.model.forward(x[a:b], y[a:b], rng=rngs[k], label_smoothing=label_smoothing,
                                             ignore_index=ignore_index)
            self.model.backward(cache, out=outs[k], dloss=weights[k])
            return loss * weights[k]

        def add_extras(rows):
            a, b = rows
            for extra in outs[1:]:
                grad[a:b] += extra[a:b]

        with self._blas():
            weighted_losses = list(self._pool.map(run_shard, range(len(shards))))
            if len(outs) > 1:  # each worker sums its own slice of the flat buffers
                list(self._pool.map(add_extras, split_rows(grad.size, self.workers)))
        return float(sum(weighted_losses))

    def loss(self, x, y, ignore_index=-1):
        """x, y (B, T) -> mean loss over the batch, forward only (evaluation, no dropout)."""
        x, y, shards, weights = self._split(x, y, ignore_index)

        def run_shard(k):
            a, b = shards[k]
            loss, _ = self.model.forward(x[a:b], y[a:b], ignore_index=ignore_index)
            return loss * weights[k]

        with self._blas():
            return float(sum(self._pool.map(run_shard, range(len(shards)))))

    def _split(self, x, y, ignore_index):
        """-> x, y as arrays, the shards' row ranges and their loss weights n_k / n."""
        x, y = np.asarray(x), np.asarray(y)
        shards = split_rows(len(x), self.workers)
        return x, y, shards, shard_weights(y, shards, ignore_index)

    def close(self):
        self._pool.shutdown()


def _single_threaded_blas():
    """-> a context-manager factory that keeps BLAS on one thread inside it.

    Two workers each calling a two-threaded BLAS would put four threads on
    two cores.  threadpoolctl finds the BLAS numpy loaded (OpenBLAS, MKL...)
    and sets its thread count for the duration.
    """
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")
