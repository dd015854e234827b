"""Data parallelism over CPU cores for the NumPy forward pass.

NumPy runs every elementwise op (group norm, SiLU, the Winograd transforms, im2col copies) on one core;
only its matrix products (BLAS) use several. Splitting the batch into one slice per core and running the
slices in threads, each with a one-thread BLAS, keeps every core busy for the whole forward pass: NumPy
releases the GIL inside its loops. Every op of the UNet works image by image, so the slices agree with one
pass over the whole batch to float32 rounding (a matrix product over fewer images may round differently).

Threads share one interpreter lock, which every NumPy call takes to start and to finish; where the calls are
short, two threads wait on each other. So `UNet2DModel` gives a batch to worker processes where it can
(`processes.py`, which cuts the same slices and gives the same result); `batch_parallel` is the way where
they cannot run, and the plain reference of that speed-up.

One large image cannot be split that way, so the ops themselves share out their independent blocks
(`shared_out`: the row bands of a convolution, the chunks of SiLU) when they are not already running in
one slice of a batch: 256x256 at batch 1 then uses every core too.

The number of cores is BLAS's thread count (set by OMP_NUM_THREADS or OPENBLAS_NUM_THREADS, as for
NumPy itself); with one thread, or one image, or arrays on a GPU, the function is called as it is.
"""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backend import get_array_module

_lock = threading.Lock()  # one parallel forward at a time: BLAS's thread count is process-wide
_state = {}               # the threadpoolctl controller and the thread pool, made on first use
_local = threading.local()  # .inside: this thread already runs one share of a parallel region


def _controller():
    """threadpoolctl's view of the loaded BLAS (a dependency; None where it is missing: then one pass)."""
    if "controller" not in _state:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _state["controller"] = None
        else:
            _state["controller"] = ThreadpoolController()
    return _state["controller"]


def cpu_threads():
    """The number of threads BLAS uses for NumPy's matrix products (1 if none is found)."""
    controller = _controller()
    if controller is None:
        return 1
    return max([info["num_threads"] for info in controller.select(user_api="blas").info()] or [1])


def _pool(threads):
    """The worker threads, remade (and the old ones let go) when the thread count changes."""
    if _state.get("threads") != threads:
        if "pool" in _state:
            _state["pool"].shutdown(wait=False)
        _state["pool"], _state["threads"] = ThreadPoolExecutor(threads, thread_name_prefix="tinyddim"), threads
    return _state["pool"]


def batch_parallel(fn, sample, timesteps):
    """fn(sample[s], timesteps[s]) over one slice s of the batch per CPU thread, concatenated.

    `sample` is (B, ...) and `timesteps` B ints; the result is fn(sample, timesteps).
    """
    threads = min(cpu_threads(), len(sample)) if get_array_module(sample) is np else 1
    if threads < 2:
        return fn(sample, timesteps)
    parts = slices(len(sample), threads)
    return np.concatenate(_share(lambda s: fn(sample[s], timesteps[s]), parts, threads))


def slices(batch, count):
    """`count` slices of nearly equal length that cover range(batch), in order."""
    bounds = np.linspace(0, batch, count + 1).round().astype(int)
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


def one_blas_thread():
    """A context in which BLAS runs one thread (for a share of work beside others running at once)."""
    controller = _controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@contextlib.contextmanager
def one_share():
    """This thread runs one share of a parallel region (beside worker processes running the others): a
    one-thread BLAS, and ops that do not share their blocks out again."""
    _local.inside = True
    try:
        with one_blas_thread():
            yield
    finally:
        _local.inside = False


def shared_out(fn, items):
    """fn(item) for each item (independent blocks of one op, each writing its own part of the output),
    over the CPU threads with a one-thread BLAS each; in order, in this thread, where this thread is
    already one share of a parallel region (a slice of `batch_parallel`), or BLAS has one thread."""
    threads = 1 if getattr(_local, "inside", False) or len(items) < 2 else min(cpu_threads(), len(items))
    if threads < 2:
        for item in items:
            fn(item)
    else:
        _share(fn, items, threads)


def _share(fn, items, threads):
    """[fn(item) for item in items] in `threads` worker threads, each marked as inside a parallel region."""
    def run(item):
        _local.inside = True
        try:
            return fn(item)
        finally:
            _local.inside = False

    with _lock, one_blas_thread():
        return list(_pool(threads).map(run, items))


def blocks(batch, out_h, floats_per_row, budget):
    """(images, rows) slices that cover an op's output (B images of out_h rows), each needing at most
    ~`budget` floats of scratch at `floats_per_row` per output row: whole images, several at once where they
    fit, else bands of rows of one image. The blocks of a conv (`fastops`, `winograd`), shared out."""
    rows_per_block = max(1, budget // floats_per_row)
    if rows_per_block >= out_h:  # whole images fit: take several at once
        step = rows_per_block // out_h
        return [(slice(b, min(b + step, batch)), slice(0, out_h)) for b in range(0, batch, step)]
    bands = -(-out_h // rows_per_block)
    rows_per_block = -(-out_h // bands)  # bands of equal height
    return [(slice(b, b + 1), slice(r, min(r + rows_per_block, out_h)))
            for b in range(batch) for r in range(0, out_h, rows_per_block)]
