"""The batch of a CPU forward pass shared out over worker processes: one slice here, the others elsewhere.

Two threads of one Python process share its interpreter lock, and every NumPy call takes it to start and
to finish. The UNet's passes are short (a Winograd block, a chunk of SiLU: tens of microseconds), so two
threads running them wait on each other: on a 2-core machine each pass of one ran 2-3x slower while the
other thread ran the same passes, against 1.0-1.3x for two processes (`benchmarks/numpy_passes.py`), and
the bundled model's forward at batch 64 took 199 ms in two threads against 172 ms with its second half in a
worker process (`benchmarks/processes_speed.py`; the figures in `benchmarks/README.md`).

So with N BLAS threads and a batch of N or more, `UNet2DModel` runs slice 0 of the batch in this process
and slices 1..N−1 in N−1 worker processes (each running `processes.main`), started on first use and kept:

    parent → worker    ("model", key, params, config)     once per model: the weights, pickled
                       ("forward", key, sample, timesteps)
    worker → parent    ("done", ε) or ("failed", "what went wrong")

Models of up to WEIGHT_BYTES (32 MiB of weights; the bundled model has 6.5) take this way. Larger ones stay
in threads: their passes run over more channels, and for the cifar10-32 architecture (143 MiB) the processes
measured 0.94–1.05 of the threads' time at batch 8, while each worker would hold another copy of the weights.

The slices are those of `parallel.batch_parallel` and every slice runs `unet_forward` with a one-thread BLAS,
so the result is the threads' result bit for bit (`tests/test_processes.py`). Each worker holds its own copy of
the weights, read when a model is first shared out: like the Winograd kernels kept per weight, a weight
changed in place afterwards is not seen (build a new `UNet2DModel` for new weights).
The threads of `parallel.batch_parallel` remain the way where processes cannot run: inside a daemonic
process (a Dask worker), with TINYDDIM_WORKER_PROCESSES=0, or when a worker fails to start or dies (then
that call runs in threads, and the next one starts new workers).
"""

import atexit
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import weakref

import numpy as np

from . import parallel
from .backend import get_array_module
from .weights import map_tree

ENABLED = os.environ.get("TINYDDIM_WORKER_PROCESSES", "1") != "0"
WEIGHT_BYTES = 32 << 20  # models up to this size take worker processes (each holds a copy of the weights)
_workers = []  # the started workers (subprocess.Popen), each with .model: a weak reference to what it holds
_lock = threading.Lock()  # one forward at a time talks to the workers
_log = logging.getLogger(__name__)


def applies(model, sample):
    """Whether the batch goes to worker processes: NumPy arrays, 2+ BLAS threads and 2+ images, weights of
    at most WEIGHT_BYTES, not already in one share of a parallel region, not disabled, and not in a daemonic
    process (a Dask worker: Dask shares the cores out itself)."""
    return (ENABLED and get_array_module(sample) is np and len(sample) > 1 and parallel.cpu_threads() > 1
            and not getattr(parallel._local, "inside", False) and not multiprocessing.current_process().daemon
            and weight_bytes(model.params) <= WEIGHT_BYTES)


def weight_bytes(tree):
    """The bytes of every array of a params tree."""
    sizes = []
    map_tree(lambda weight: sizes.append(weight.nbytes), tree)
    return sum(sizes)


def forward(model, sample, timesteps):
    """ε of `model` (a UNet2DModel) for `sample` (B, C, H, W) at `timesteps` (B ints): slice 0 of the batch
    here, one slice in each worker process, concatenated as `parallel.batch_parallel` would."""
    from .unet import unet_forward

    run = lambda x, t: unet_forward(model.params, model.config, x, t)
    parts = parallel.slices(len(sample), min(parallel.cpu_threads(), len(sample)))
    with _lock:
        try:
            workers = _started(len(parts) - 1)
            for worker, part in zip(workers, parts[1:]):
                if worker.model() is not model:
                    _send(worker, ("model", id(model), model.params, model.config))
                    worker.model = weakref.ref(model)
                _send(worker, ("forward", id(model), sample[part], timesteps[part]))
        except OSError as error:
            return _in_threads(run, sample, timesteps, f"could not start or reach a worker process ({error})")
        try:
            with parallel.one_share():
                first = run(sample[parts[0]], timesteps[parts[0]])
            replies = [pickle.load(worker.stdout) for worker in workers]
        except (EOFError, OSError, pickle.UnpicklingError):
            return _in_threads(run, sample, timesteps, "a worker process exited")
        except BaseException:  # an error here, or Ctrl-C: no reply may be left unread for the next call
            stop()
            raise
    failed = [text for kind, text in replies if kind == "failed"]
    if failed:
        raise RuntimeError(f"the UNet failed in a worker process: {failed[0]}")
    return np.concatenate([first] + [eps for _, eps in replies])  # (B/N, ...) x N -> (B, ...)


def _in_threads(run, sample, timesteps, why):
    """After a worker failed: the workers dropped (the next call starts new ones), this batch in threads."""
    _log.warning("tinyddim: %s; this batch runs in threads (TINYDDIM_WORKER_PROCESSES=0 runs every batch so)", why)
    stop()
    return parallel.batch_parallel(run, sample, timesteps)


def _started(count):
    """The first `count` workers, started where missing (each with a one-thread BLAS, and this tinyddim on
    its path)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    while len(_workers) < count:
        worker = subprocess.Popen([sys.executable, "-c", "from tinyddim.processes import main; main()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        worker.model = lambda: None  # holds no model yet
        _workers.append(worker)
    return _workers[:count]


def _send(worker, message):
    pickle.dump(message, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    worker.stdin.flush()


def stop():
    """End every worker process (closing its pipe ends its loop); the next forward starts new ones."""
    while _workers:
        worker = _workers.pop()
        try:
            worker.stdin.close()
            worker.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            worker.kill()


atexit.register(stop)


def main():
    """A worker: reads messages from stdin, keeps the last model it was sent, writes each ε to stdout."""
    from .unet import unet_forward

    messages, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    held = {}
    while True:
        try:
            kind, key, *rest = pickle.load(messages)
        except EOFError:
            return
        if kind == "model":
            held = {key: rest}  # (params, config)
            continue
        try:
            reply = ("done", unet_forward(*held[key], *rest))
        except Exception as error:  # reported to the parent, which raises it there
            reply = ("failed", f"{type(error).__name__}: {error}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
