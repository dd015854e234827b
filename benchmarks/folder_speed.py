"""Mass sampling to a folder: images per second, Dask overhead, memory against N, and how far images move
when the batch size or thread count changes. The bundled model, PNGs written, one process per contender.

    python benchmarks/folder_speed.py                                  # every section, the default sizes
    python benchmarks/folder_speed.py --sections throughput --num-images 256 --rounds 3

Sections
    throughput  tinyddim's sample_to_folder at each --batch-sizes against diffusers' DDIMPipeline on the
                same weights and steps (writing the same PNGs), one process, --threads threads each
    dask        a Dask LocalCluster of 2 single-thread worker processes (as `--dask local:2` starts it)
                against one process with 2 threads; the cluster's start (and its imports) is not
                counted, sending it the model is. --dask-trim also times workers with Dask's default
                MALLOC_TRIM_THRESHOLD_=65536 (see tinyddim.distributed: the reason to unset it)
    memory      peak RSS of a whole `tinyddim sample --out-dir` process at N = 1,000 and 10,000 images
                (--memory-sizes),
                with --memory-steps steps (1 by default: the UNet's memory does not depend on N, the
                bookkeeping does, and this keeps the run short)
    agreement   one set of images at batch 64, at batch 7, and with 2 threads: PNG pixels that differ

Rounds interleave the contenders; each figure is min / median / max over rounds. The numbers depend on
the CPU, the BLAS kernel and the load of the machine, all printed first: measure on a quiet machine.
Needs `pip install -e ".[test]"` (diffusers, torch, dask).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)


def machine(threads):
    import numpy as np
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"CPU {cpu}; {os.cpu_count()} logical cores{load}")
    coretype = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    print(f"threads {threads}; numpy {np.__version__}; OPENBLAS_CORETYPE={coretype}")
    for info in threadpool_info():
        print(f"  {info['user_api']}: {info['internal_api']} {info.get('version')} {info.get('architecture', '')}, "
              f"{info['num_threads']} threads ({os.path.basename(info['filepath'])})")


def spread(values):
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def save_pngs(images, out, first=0):
    """What sample_to_folder writes, for the diffusers contender: one PNG per image."""
    from tinyddim.images import numpy_to_pil

    for k, image in enumerate(numpy_to_pil(images)):
        image.save(os.path.join(out, f"{first + k:06d}.png"), format="PNG")


def throughput_section(args):
    import torch
    from diffusers import DDIMPipeline as TorchDDIMPipeline
    from diffusers import DDIMScheduler as TorchDDIM
    from threadpoolctl import threadpool_limits

    import tinyddim as td
    from models import diffusers_unet_from_file
    from tinyddim.pipelines import BUNDLED_MODEL

    torch.set_num_threads(args.threads)
    model, scheduler_config = diffusers_unet_from_file(BUNDLED_MODEL)
    theirs = TorchDDIMPipeline(unet=model, scheduler=TorchDDIM.from_config(scheduler_config))
    theirs.set_progress_bar_config(disable=True)
    ours = td.default_pipeline()
    N, S = args.num_images, args.steps

    def run_ours(batch, out):
        with threadpool_limits(args.threads, user_api="blas"):
            td.sample_to_folder(out, N, pipeline=ours, num_inference_steps=S, batch_size=batch, progress=False)

    def run_theirs(batch, out):
        generator = torch.Generator().manual_seed(0)
        for first in range(0, N, batch):
            with torch.no_grad():
                images = theirs(batch_size=min(batch, N - first), generator=generator, num_inference_steps=S,
                                output_type="np").images
            save_pngs(images, out, first)

    contenders = {f"tinyddim batch {b}": (run_ours, b) for b in args.batch_sizes}
    contenders.update({f"diffusers batch {b}": (run_theirs, b) for b in args.batch_sizes})
    rates = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (run, batch) in contenders.items():
            out = tempfile.mkdtemp(prefix="folder_speed-")
            try:
                rates[name].append(N / timed(lambda: run(batch, out)))
            finally:
                shutil.rmtree(out)
    print(f"throughput: {N} images x {S} DDIM steps, {args.threads} threads, images/s min / median / max "
          f"over {args.rounds} rounds")
    for name, values in rates.items():
        print(f"  {name:22s} {spread(values)}")
    return rates


def dask_section(args):
    import logging

    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    import tinyddim as td
    from tinyddim.distributed import local_cluster

    pipe = td.default_pipeline()
    N, S, B = args.num_images, args.steps, args.batch_sizes[0]
    clusters = {"Dask, 2 single-thread workers": local_cluster(2)}  # as `--dask local:2` starts it
    if args.dask_trim:
        clusters["  the same, Dask's MALLOC_TRIM"] = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR)
    clients = {name: Client(cluster) for name, cluster in clusters.items()}
    for client in clients.values():
        client.run(__import__, "tinyddim.folder")  # the workers' imports are part of starting them
    times = {"one process, 2 threads": [], **{name: [] for name in clients}}
    try:
        for _ in range(args.rounds):
            for name in times:
                out = tempfile.mkdtemp(prefix="folder_speed-")
                kwargs = dict(pipeline=pipe, num_inference_steps=S, batch_size=B, progress=False)
                try:
                    if name in clients:
                        run = lambda: td.sample_to_folder(out, N, client=clients[name], **kwargs)
                        times[name].append(timed(run))
                    else:
                        with threadpool_limits(2, user_api="blas"):
                            times[name].append(timed(lambda: td.sample_to_folder(out, N, **kwargs)))
                finally:
                    shutil.rmtree(out)
    finally:
        for name in clients:
            clients[name].close()
            clusters[name].close()
    print(f"dask: {N} images x {S} steps, batch {B}; images/s min / median / max over {args.rounds} rounds")
    for name, values in times.items():
        print(f"  {name:32s} {spread([N / t for t in values])}")
    one, *dask = (statistics.median(values) for values in times.values())
    print(f"  Dask overhead (median time / one process's - 1): {dask[0] / one - 1:+.1%} (target <= 10%)")
    if args.dask_trim:
        print(f"  with Dask's MALLOC_TRIM_THRESHOLD_: {dask[1] / one - 1:+.1%}")
    return times


def memory_section(args):
    peaks = {}
    for N in args.memory_sizes:
        out = tempfile.mkdtemp(prefix="folder_speed-")
        try:
            command = [sys.executable, __file__, "--memory-child", str(N), os.path.join(out, "samples"),
                       str(args.memory_steps), str(args.batch_sizes[0])]
            env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            peaks[N] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(out)
        print(f"memory: N = {N:6d}, {args.memory_steps} step(s), batch {args.batch_sizes[0]}: peak RSS "
              f"{peaks[N]['peak_mib']:.1f} MiB, {peaks[N]['seconds']:.1f} s")
    small, large = args.memory_sizes[0], args.memory_sizes[-1]
    print(f"  peak RSS at N = {large:,} / at N = {small:,}: {peaks[large]['peak_mib'] / peaks[small]['peak_mib']:.3f}")
    return peaks


def memory_child(N, out, steps, batch):
    from tinyddim.cli import main

    start = time.perf_counter()
    main(["sample", "--num-images", str(N), "--out-dir", out, "--steps", str(steps), "--batch-size", str(batch)])
    # VmHWM: this process's peak RSS (getrusage's ru_maxrss would include the parent's, from before exec)
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mib": kib / 1024, "seconds": time.perf_counter() - start}))


def agreement_section(args):
    import numpy as np
    from PIL import Image
    from threadpoolctl import threadpool_limits

    import tinyddim as td

    pipe = td.default_pipeline()
    N, S = args.num_images, args.steps
    base = tempfile.mkdtemp(prefix="folder_speed-")
    runs = {"batch 64, 1 thread": (64, 1), "batch 7, 1 thread": (7, 1), "batch 64, 2 threads": (64, 2)}
    try:
        folders = {}
        for name, (batch, threads) in runs.items():
            folders[name] = os.path.join(base, name.replace(" ", "_").replace(",", ""))
            with threadpool_limits(threads, user_api="blas"):
                td.sample_to_folder(folders[name], N, pipeline=pipe, num_inference_steps=S, batch_size=batch,
                                    progress=False)

        def load(folder):
            return np.stack([np.asarray(Image.open(os.path.join(folder, f"{k:06d}.png")), dtype=np.int16)
                             for k in range(N)])

        first, *others = runs
        reference = load(folders[first])
        print(f"agreement: {N} images x {S} steps, PNG pixels against {first}")
        result = {}
        for name in others:
            diff = np.abs(load(folders[name]) - reference)
            result[name] = dict(max=int(diff.max()), moved=int((diff > 0).sum()), pixels=int(diff.size))
            print(f"  {name:22s} max {diff.max()} gray level(s), {(diff > 0).sum()} of {diff.size} pixels moved "
                  f"({(diff > 0).mean():.4%}; allowed 0.1%)")
    finally:
        shutil.rmtree(base)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="throughput,dask,memory,agreement")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[64, 256])
    parser.add_argument("--threads", type=int, default=1, help="threads of the one-process runs (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=1)
    parser.add_argument("--memory-sizes", type=lambda s: [int(n) for n in s.split(",")], default=[1000, 10000])
    parser.add_argument("--dask-trim", action="store_true", help="also time Dask's default worker environment")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        N, out, steps, batch = args.memory_child
        return memory_child(int(N), out, int(steps), int(batch))
    machine(args.threads)
    sections = {"throughput": throughput_section, "dask": dask_section, "memory": memory_section,
                "agreement": agreement_section}
    results = {name: sections[name](args) for name in args.sections.split(",")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
