"""Mass sampling on Dask (the optional extra `tinyddim[dask]`): chunks of image indices as tasks.

    from dask.distributed import Client
    td.sample_to_folder("samples", 50_000, client=Client("tcp://scheduler:8786"))
    tinyddim sample --num-images 50000 --out-dir samples --dask local:4      # a LocalCluster on this machine

The pipeline is sent once to every worker (`client.scatter(..., broadcast=True)`) and kept in its memory,
so each worker loads the model once; a task is (job, image indices) and writes its PNGs straight into the
folder, which all workers must see (a shared file system on a cluster). A task returns only the number of
files it wrote: no image travels through the scheduler. A worker killed mid-task loses nothing: Dask runs
the task again on another worker, and since PNGs are renamed into place whole, the rerun finds those its
first try finished and makes only the rest.

Dask is imported only inside these functions; the rest of tinyddim does not need it.
"""

import logging

EXTRA = "pip install 'tinyddim[dask]'"
_on_worker = {}  # (model hash, device) -> the pipeline moved to that device, once per worker process


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
        return distributed.Client(n_workers=int(workers), threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR)
    try:
        return distributed.Client(address, timeout=timeout)
    except ValueError as err:
        raise ValueError(f"bad Dask scheduler address {address!r}: {err}") from None
    except OSError:
        raise ConnectionError(f"no Dask scheduler answered at {address} within {timeout:g} s") from None


def run_chunks(client, pipe, job, chunks, done):
    """Make every chunk of image indices as one task on `client`'s workers; done(len(chunk), written)
    runs as each finishes. A task's error is raised here, and the tasks not yet run are cancelled."""
    distributed = import_distributed()
    device = pipe.unet.device
    host = pipe if device == "cpu" else pipe.to("cpu")     # sent as NumPy; each worker moves it once
    [shared] = client.scatter([host], broadcast=True)
    # dealt round-robin over the workers (every worker holds the pipeline, so the scheduler may otherwise
    # queue them all on one); allow_other_workers lets a dead worker's tasks run elsewhere
    workers = sorted(client.scheduler_info()["workers"])
    futures = {client.submit(_task, shared, job, chunk, device, pure=False, workers=[workers[i % len(workers)]],
                             allow_other_workers=True): len(chunk) for i, chunk in enumerate(chunks)}
    try:
        for future in distributed.as_completed(futures):
            done(futures[future], future.result())
    finally:
        client.cancel(list(futures) + [shared])


def _task(pipe, job, indices, device):
    """On a worker: the images `indices` of `job`, with the worker's copy of the pipeline."""
    from .folder import make_images

    if device != "cpu":
        key = (job.model_sha256, device)
        if key not in _on_worker:
            _on_worker.clear()                             # one model per worker at a time
            _on_worker[key] = pipe.to(device)
        pipe = _on_worker[key]
    return make_images(pipe, job, indices)
