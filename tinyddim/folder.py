"""Many samples to a folder of PNGs, for FID: deterministic per image, resumable, sharded.

    td.sample_to_folder("samples", 50_000)                   # the bundled model, 50 DDIM steps, η = 0
    td.sample_to_folder("samples", 50_000, shard="3/8")      # one of 8 jobs, run anywhere, same folder
    tinyddim sample --num-images 50000 --out-dir samples --shard 3/8

One image, one identity
    Image k is a function of (model, scheduler config, steps, η, timesteps, seed, k) only: its x_T and
    its η-noise come from its own generator, numpy.random.default_rng([seed, k]), passed to the pipeline
    as a generator list (see `backend.randn`). The batch it is made in changes nothing but float32
    rounding (a matrix product over other images rounds differently).

The folder
    000000.png, 000001.png, …   one 8-bit PNG per image (L or RGB) at the model's resolution, named by
                                index, zero-padded to 6 digits (more past a million): the layout that
                                pytorch-fid, torch-fidelity and clean-fid read
    manifest.json               the model (SHA-256 of its config and weights), pipeline class, full
                                scheduler config, steps, η, timesteps, seed and N; a run with other
                                settings is refused. Also `block`, the batch size of the first run.
    Every file is written under a hidden temporary name (`.tmp-*.part`, which no FID tool reads) and
    renamed, so a run killed at any moment leaves only complete PNGs; the next run skips them.

Blocks and shards
    Images are made in blocks of `block` consecutive indices, block c = images c·block … (c+1)·block − 1.
    Shard I/K (I counts from 0) makes blocks I, I + K, I + 2K, …: contiguous blocks dealt round-robin.
    At the folder's batch size each batch is one block, whatever shard, process or worker makes it, so
    the union of K shards is the same PNG bytes as one run (on one machine, with the same BLAS thread
    count per process). Another batch size, or another thread count, groups the images into different
    matrix products: a pixel may then move by one gray level (`benchmarks/folder_speed.py --sections agreement`).
    So may the rest of a block that a killed run had partly renamed into place: it is made as a smaller batch.
"""

import hashlib
import json
import math
import operator
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np

from .backend import to_numpy
from .config import read_json

MANIFEST = "manifest.json"
FORMAT = "tinyddim-folder-1"
IDENTITY = ("format", "model_sha256", "pipeline", "scheduler", "num_inference_steps", "eta", "timesteps",
            "seed", "num_images", "image_shape")  # the keys two runs into one folder must share
STALE_TMP_SECONDS = 600  # a temporary file this old belongs to a killed run (a PNG is written in ms)


@dataclass
class Job:
    """What a worker needs to make images: small, since it travels with every task."""

    out_dir: str
    num_images: int
    seed: int
    call: dict           # the pipeline's keywords: num_inference_steps or timesteps, and eta for DDIM
    model_sha256: str


@dataclass
class FolderResult:
    """What a run did: PNGs written and skipped (already there), seconds, and how many the folder holds."""

    out_dir: str
    num_images: int
    written: int
    skipped: int
    seconds: float
    in_folder: int

    def __str__(self):
        return (f"wrote {self.written} images, skipped {self.skipped} already there, in {self.seconds:.1f} s; "
                f"{self.out_dir} holds {self.in_folder} of {self.num_images}")


# ---- names, shards, the model's identity --------------------------------------------------------

def image_name(k, num_images):
    """The file of image k: its index zero-padded to 6 digits, or more when N − 1 needs them."""
    return f"{k:0{max(6, len(str(num_images - 1)))}d}.png"


def parse_shard(shard):
    """None, "I/K" or (I, K) -> (I, K) with 0 <= I < K; None is the whole run, (0, 1)."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"shard must be I/K with whole numbers, 0 <= I < K, got {shard!r}")
        i, k = int(parts[0]), int(parts[1])
    elif isinstance(shard, (tuple, list)) and len(shard) == 2 and all(_is_int(part) for part in shard):
        i, k = map(int, shard)
    else:
        raise TypeError(f"shard must be None, 'I/K' or a pair (I, K), got {shard!r}")
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"shard {i}/{k}: need K >= 1 and 0 <= I < K (I counts from 0)")
    return i, k


def shard_indices(num_images, block, shard):
    """The image indices of shard (I, K), in order: blocks I, I + K, … of `block` consecutive images."""
    i, k = shard
    return [n for c in range(i, math.ceil(num_images / block), k)
            for n in range(c * block, min((c + 1) * block, num_images))]


def model_sha256(unet):
    """SHA-256 of a UNet's config and of every weight (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256(json.dumps(unet.config, sort_keys=True, default=str).encode())
    for name, weight in sorted(_flat(unet.params)):
        weight = np.ascontiguousarray(to_numpy(weight))
        digest.update(f"{name} {weight.dtype.str} {weight.shape}".encode())
        digest.update(weight.data)
    return digest.hexdigest()


def _flat(tree, prefix=""):
    """(dotted name, array) for every array of a params tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        return [(prefix, tree)]
    return [pair for key, value in items for pair in _flat(value, f"{prefix}{key}.")]


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ---- checking a run before anything is written --------------------------------------------------

def pipeline_call(pipe, num_inference_steps, eta, timesteps):
    """The keywords each batch is sampled with, checked now on a copy of the scheduler."""
    from .pipelines import DDIMPipeline, DDPMPipeline

    if not isinstance(pipe, (DDIMPipeline, DDPMPipeline)):
        raise TypeError(f"pipeline must be a DDIMPipeline or a DDPMPipeline, got {type(pipe).__name__}")
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    if timesteps is not None:
        if "timesteps" not in _parameters(pipe.__call__) or "timesteps" not in _parameters(scheduler.set_timesteps):
            raise ValueError(f"timesteps= needs a {type(pipe).__name__} that takes timesteps; this one does not")
        timesteps = _int_list(timesteps)
        scheduler.set_timesteps(timesteps=timesteps)
        call = {"timesteps": timesteps}
    else:
        scheduler.set_timesteps(num_inference_steps)
        call = {"num_inference_steps": operator.index(num_inference_steps)}
    if isinstance(pipe, DDIMPipeline):
        if not isinstance(eta, (int, float, np.integer, np.floating)) or isinstance(eta, bool) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        call["eta"] = float(eta)
    elif eta not in (None, 0):
        raise ValueError("a DDPMPipeline takes no eta: its noise is set by the scheduler's variance_type")
    return call


def _int_list(timesteps):
    values = np.asarray(to_numpy(timesteps) if hasattr(timesteps, "shape") else timesteps)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
        raise ValueError(f"timesteps must be a non-empty list of ints, got {_short(timesteps)}")
    return values.tolist()


def _parameters(fn):
    import inspect

    return inspect.signature(fn).parameters


def make_manifest(pipe, num_images, seed, call, block):
    from . import __version__

    steps = len(call["timesteps"]) if "timesteps" in call else call["num_inference_steps"]
    manifest = {
        "format": FORMAT, "num_images": num_images, "seed": seed, "model_sha256": model_sha256(pipe.unet),
        "pipeline": type(pipe).__name__,
        "scheduler": {"_class_name": type(pipe.scheduler).__name__, **pipe.scheduler.config},
        "num_inference_steps": steps, "eta": call.get("eta"), "timesteps": call.get("timesteps"),
        "image_shape": list(pipe.unet.sample_shape), "block": block, "tinyddim_version": __version__,
    }
    return json.loads(json.dumps(manifest, default=_json_value))  # as it reads back from the file


def _json_value(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def check_out_dir(out_dir):
    """An error now, before anything is written, for an output folder that cannot be one."""
    path = os.path.abspath(out_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"out_dir {out_dir} is a file, not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"cannot make out_dir {out_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir {out_dir}: {existing} is not writable")


def read_manifest(out_dir):
    """The folder's manifest, or None; a folder of PNGs without one is refused."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        return read_json(path)
    if os.path.isdir(out_dir) and any(name.endswith(".png") for name in os.listdir(out_dir)):
        raise ValueError(f"{out_dir} holds PNGs but no {MANIFEST}: they are not this sampler's; "
                         "choose an empty or new folder")
    return None


def check_manifest(out_dir, found, wanted):
    """A clear error when the folder's samples were made with other settings than this run's."""
    differ = [key for key in IDENTITY if found.get(key) != wanted[key]]
    if not differ:
        return
    if differ == ["scheduler"] and isinstance(found.get("scheduler"), dict):
        keys = sorted(key for key in set(found["scheduler"]) | set(wanted["scheduler"])
                      if found["scheduler"].get(key) != wanted["scheduler"].get(key))
        detail = ", ".join(f"scheduler {key} {found['scheduler'].get(key)!r} there, "
                           f"{wanted['scheduler'].get(key)!r} here" for key in keys)
    else:
        detail = ", ".join(f"{key} {_short(found.get(key))} there, {_short(wanted[key])} here" for key in differ)
    raise ValueError(f"{out_dir} holds samples made with other settings ({detail}); "
                     "use another folder, or the same settings to resume")


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def claim_manifest(out_dir, manifest):
    """Write the manifest unless one is there (atomically: a hard link does not replace), and check it."""
    path = os.path.join(out_dir, MANIFEST)
    tmp = os.path.join(out_dir, f".tmp-{MANIFEST}-{uuid.uuid4().hex[:12]}.part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass                                   # another shard made it first: check it below
        except OSError:                            # a file system without hard links
            if not os.path.exists(path):
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    found = read_json(path)
    check_manifest(out_dir, found, manifest)
    return found


def remove_stale_tmp(out_dir, now=None):
    """Remove temporary files left by killed runs (older than STALE_TMP_SECONDS; live ones are ms old)."""
    now = time.time() if now is None else now
    for name in os.listdir(out_dir):
        if name.startswith(".tmp-") and name.endswith(".part"):
            path = os.path.join(out_dir, name)
            try:
                if now - os.path.getmtime(path) > STALE_TMP_SECONDS:
                    os.remove(path)
            except FileNotFoundError:  # renamed or removed meanwhile by the run that owns it
                pass


# ---- making images ------------------------------------------------------------------------------

def make_images(pipe, job, indices):
    """Sample the images `indices` not yet in the folder, each from its own generator; write their PNGs.

    Returns how many it wrote. A task that Dask runs again finds what its first try wrote, and skips it.
    """
    indices = [k for k in indices if not os.path.exists(os.path.join(job.out_dir, image_name(k, job.num_images)))]
    if not indices:
        return 0
    generator = [np.random.default_rng([job.seed, k]) for k in indices]  # image k's own x_T and noise
    images = pipe(batch_size=len(indices), generator=generator, output_type="pil", progress=False,
                  **job.call).images
    write_pngs(job.out_dir, [image_name(k, job.num_images) for k in indices], images)
    return len(indices)


def write_pngs(folder, names, images):
    """Each image to a hidden temporary file, then all renamed into place: only whole PNGs get a name."""
    tmps = []
    try:
        for name, image in zip(names, images):
            tmps.append(os.path.join(folder, f".tmp-{name}-{uuid.uuid4().hex[:12]}.part"))
            image.save(tmps[-1], format="PNG")
        for tmp, name in zip(tmps, names):
            os.replace(tmp, os.path.join(folder, name))
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def sample_to_folder(out_dir, num_images, *, pipeline=None, num_inference_steps=50, eta=0.0, timesteps=None,
                     seed=0, batch_size=64, shard=None, client=None, progress=True):
    """Sample images 0 … num_images − 1 (or shard I/K of them) to `out_dir` as PNGs; returns a FolderResult.

    pipeline: a DDIMPipeline or DDPMPipeline (default: the bundled model); a DDPMPipeline takes no eta.
    timesteps: the timesteps to visit (then num_inference_steps is len(timesteps)), for pipelines that take them.
    shard: "I/K" or (I, K): only blocks I, I + K, … (see the module docstring). client: a
    dask.distributed Client; chunks of images then run as tasks on its workers. progress: a bar over images.
    Images already in the folder are skipped; a folder made with other settings is refused.
    """
    start = time.perf_counter()
    for name, value, low in (("num_images", num_images, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    shard = parse_shard(shard)
    if client is not None and not hasattr(client, "submit"):
        raise TypeError(f"client must be a dask.distributed Client, got {type(client).__name__}")
    check_out_dir(out_dir)
    if pipeline is None:
        from .pipelines import default_pipeline

        pipeline = default_pipeline()
    call = pipeline_call(pipeline, num_inference_steps, eta, timesteps)
    manifest = make_manifest(pipeline, int(num_images), int(seed), call, int(batch_size))
    found = read_manifest(out_dir)
    if found is not None:
        check_manifest(out_dir, found, manifest)

    os.makedirs(out_dir, exist_ok=True)
    found = claim_manifest(out_dir, manifest)
    remove_stale_tmp(out_dir)
    job = Job(os.path.abspath(out_dir), int(num_images), int(seed), call, manifest["model_sha256"])
    there = set(os.listdir(out_dir))
    wanted = shard_indices(job.num_images, int(found["block"]), shard)
    chunks = [[k for k in wanted[j:j + batch_size] if image_name(k, job.num_images) not in there]
              for j in range(0, len(wanted), batch_size)]
    chunks = [chunk for chunk in chunks if chunk]
    todo = sum(map(len, chunks))
    counts = {"written": 0, "skipped": len(wanted) - todo}

    from tqdm.auto import tqdm

    with tqdm(total=len(wanted), initial=counts["skipped"], unit="img", desc="sampling", disable=not progress,
              dynamic_ncols=True) as bar:
        def done(size, written):
            counts["written"] += written
            counts["skipped"] += size - written
            bar.update(size)

        if client is None:
            for chunk in chunks:
                done(len(chunk), make_images(pipeline, job, chunk))
        else:
            from .distributed import run_chunks

            run_chunks(client, pipeline, job, chunks, done)
        bar.set_postfix_str(f"wrote {counts['written']}, skipped {counts['skipped']}")
    names = {image_name(k, job.num_images) for k in range(job.num_images)}
    return FolderResult(out_dir, job.num_images, counts["written"], counts["skipped"], time.perf_counter() - start,
                        len(names & set(os.listdir(out_dir))))
