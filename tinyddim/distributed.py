"""Mass sampling on Dask (the optional extra `tinyddim[dask]`): chunks of image indices as tasks.

    from dask.distributed import Client
    td.sample_to_folder("samples", 50_000, client=Client("tcp://scheduler:8786"))
    tinyddim sample --num-images 50000 --out-dir samples --dask local:4      # a LocalCluster on this machine

The pipeline is sent once to every worker (`client.scatter(..., broadcast=True)`) and kept in its memory,
so each worker loads the model once; a task is (job, image indices) and writes its PNGs straight into the
folder, which all workers must see (a shared file system on a cluster). A task returns only the number of
files it wrote: no image travels through the scheduler. A worker killed mid-task loses nothing: Dask runs
the task again on another worker, and since PNGs are renamed into place whole, the rerun finds those its
first try finished and makes only the rest. If every worker holding the pipeline is gone at once (all
killed, or all dropped by the scheduler for missing their heartbeats, as when the machine was suspended),
`run_chunks` sends the pipeline again and resubmits the unfinished chunks.

Worker memory settings. Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536 (its
`distributed.nanny.pre-spawn-environ`, so that freed memory goes back to the OS). Setting that variable
also fixes glibc's mmap threshold at 128 KiB, so every large NumPy temporary of the forward pass is a
fresh mmap whose pages are faulted in and zeroed again: the UNet then runs about twice as slow. The
cluster that `connect("local:N")` starts leaves the variable unset; for workers started otherwise
(`dask worker`, dask-jobqueue), unset it in a Dask config file on their machines, e.g.
~/.config/dask/tinyddim.yaml holding `distributed: {nanny: {pre-spawn-environ: {MALLOC_TRIM_THRESHOLD_: null}}}`.
A worker that has it set logs a warning once.

Dask is imported only inside these functions; the rest of tinyddim does not need it.
"""

import logging
import os
from concurrent.futures import CancelledError

EXTRA = "pip install 'tinyddim[dask]'"
TRIM = "MALLOC_TRIM_THRESHOLD_"
_on_worker = {}  # (model hash, device) -> the pipeline moved to that device, once per worker process
_warned = []     # non-empty once this worker has logged the MALLOC_TRIM_THRESHOLD_ warning


def import_distributed():
    """dask.distributed, or an ImportError that names the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ImportError(f"Dask sampling needs the dask extra, which is not installed: {EXTRA}") from None
    return distributed


def connect(address, timeout=10):
    """A Client for a scheduler `address` ("tcp://host:8786"), or "local:N": a LocalCluster on this
    machine of N single-thread worker processes (closed with the client). An unreachable scheduler is
    a ConnectionError after `timeout` seconds."""
    distributed = import_distributed()
    if not isinstance(address, str) or not address:
        raise ValueError(f"a Dask address must be 'tcp://host:port' or 'local:N', got {address!r}")
    if address.startswith("local:"):
        workers = address[len("local:"):]
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"--dask local:N needs a number of workers N >= 1, got {address!r}")
        return distributed.Client(local_cluster(int(workers)))
    try:
        return distributed.Client(address, timeout=timeout)
    except ValueError as err:
        raise ValueError(f"bad Dask scheduler address {address!r}: {err}") from None
    except OSError:
        raise ConnectionError(f"no Dask scheduler answered at {address} within {timeout:g} s") from None


def local_cluster(n_workers, **kwargs):
    """A LocalCluster of `n_workers` single-thread worker processes, started without Dask's
    MALLOC_TRIM_THRESHOLD_ (see the module docstring); `kwargs` go to LocalCluster (e.g. env=)."""
    distributed = import_distributed()
    import dask

    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM}": None}):
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR, **kwargs)


def run_chunks(client, pipe, job, chunks, done, attempts=3, wait_for_workers=120):
    """Make every chunk of image indices as one task on `client`'s workers; done(len(chunk), written)
    runs as each finishes. A task's error is raised here, and the tasks not yet run are cancelled.

    If the cluster loses the pipeline (every worker holding it died or was dropped by the scheduler, e.g.
    after missing its heartbeats), the pipeline is sent again, to the workers there are then, and the
    unfinished chunks are submitted again: up to `attempts` losses in a row with no chunk finished between
    them. Chunks that had written their PNGs find them in the folder and make nothing twice."""
    distributed = import_distributed()
    device = pipe.unet.device
    host = pipe if device == "cpu" else pipe.to("cpu")     # sent as NumPy; each worker moves it once
    pending, losses, lost = dict(enumerate(chunks)), 0, False
    while pending:
        if lost:  # the workers that replace the lost ones (a nanny restarts its worker) may take a while
            client.wait_for_workers(1, timeout=wait_for_workers)
        before = len(pending)
        lost = _run_round(client, distributed, host, device, job, pending, done)
        losses = losses + 1 if lost and len(pending) == before else 0
        if losses >= attempts:
            raise RuntimeError(f"the Dask cluster lost the pipeline {losses} times in a row before any chunk of "
                               f"images finished; {len(pending)} chunks are not made (the folder keeps the rest)")


def _run_round(client, distributed, host, device, job, pending, done):
    """Submit the `pending` chunks ({number: indices}) and wait for them, deleting each from `pending` as
    it finishes; True when the round ended because the cluster lost the pipeline (the tasks were
    cancelled), False when every chunk finished."""
    [shared] = client.scatter([host], broadcast=True, hash=False)  # a new key each round
    # dealt round-robin over the workers (every worker holds the pipeline, so the scheduler may otherwise
    # queue them all on one); allow_other_workers lets a dead worker's tasks run elsewhere
    workers = sorted(client.scheduler_info()["workers"])
    futures = {client.submit(_task, shared, job, chunk, device, pure=False, workers=[workers[i % len(workers)]],
                             allow_other_workers=True): number for i, (number, chunk) in enumerate(pending.items())}
    try:
        for future in distributed.as_completed(futures):
            try:
                written = future.result()
            except CancelledError:  # its input, the pipeline, is gone from the cluster
                return True
            done(len(pending.pop(futures[future])), written)
        return False
    finally:
        client.cancel(list(futures) + [shared])


def _task(pipe, job, indices, device):
    """On a worker: the images `indices` of `job`, with the worker's copy of the pipeline."""
    from .folder import make_images

    if TRIM in os.environ and device == "cpu" and not _warned:
        _warned.append(TRIM)
        logging.getLogger(__name__).warning(
            "%s=%s is set on this Dask worker: the NumPy UNet runs about 2x slower (unset it; see "
            "tinyddim.distributed)", TRIM, os.environ[TRIM])
    if device != "cpu":
        key = (job.model_sha256, device)
        if key not in _on_worker:
            _on_worker.clear()                             # one model per worker at a time
            _on_worker[key] = pipe.to(device)
        pipe = _on_worker[key]
    return make_images(pipe, job, indices)
