"""Data parallelism over CPU cores for the NumPy forward pass.

NumPy runs every elementwise op (group norm, SiLU, the Winograd transforms, im2col copies) on one core;
only its matrix products (BLAS) use several. Splitting the batch into one slice per core and running the
slices in threads, each with a one-thread BLAS, keeps every core busy for the whole forward pass: NumPy
releases the GIL inside its loops. Every op of the UNet works image by image, so the slices agree with one
pass over the whole batch to float32 rounding (a matrix product over fewer images may round differently).

The number of cores is BLAS's thread count (set by OMP_NUM_THREADS or OPENBLAS_NUM_THREADS, as for
NumPy itself); with one thread, or one image, or arrays on a GPU, the function is called as it is.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backend import get_array_module

_lock = threading.Lock()  # one parallel forward at a time: BLAS's thread count is process-wide
_state = {}               # the threadpoolctl controller and the thread pool, made on first use


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
    bounds = np.linspace(0, len(sample), threads + 1).round().astype(int)
    slices = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    with _lock, _controller().limit(limits=1, user_api="blas"):
        outputs = list(_pool(threads).map(lambda s: fn(sample[s], timesteps[s]), slices))
    return np.concatenate(outputs)
