"""tinyddim's NumPy UNet against diffusers' PyTorch UNet2DModel, measured side by side in one run.

    python benchmarks/unet_speed.py --threads 2 --json docs/benchmark_2threads.json     # everything (~5 min)
    python benchmarks/unet_speed.py --quick                                             # a smoke run
    python benchmarks/unet_speed.py --table docs/benchmark_1thread.json docs/benchmark_2threads.json

Sections
    machine  what decides the figures: CPU model and flags, NumPy / PyTorch / BLAS versions, the BLAS kernel
             (threadpoolctl), thread counts, OPENBLAS_CORETYPE
    gemm     this machine's float32 GEMM peak, NumPy and PyTorch (the ceiling for both)
    bundled  the bundled MNIST model in both frameworks (the same weights): forward at batch 64, and
             DDIMPipeline images/s at batch 64 and 256 with 50 steps (diffusers' DDIMPipeline against ours)
    speed    google/ddpm-cifar10-32 architecture, random weights: forward time at batch 1 and 8,
             tinyddim / PyTorch ratio, GFLOP/s (FLOPs counted by torch's FlopCounterMode)
    memory   peak memory above the loaded model during one forward at batch 8, each in a fresh process
    large    google/ddpm-*-256 architecture at 256x256, batch 1: time and peak memory, each in a fresh process

Timings interleave the two frameworks round by round; each figure is the median over the rounds, with the
spread (min / median / max) beside it, so a reader can tell what a 5% change means. Both run float32 with
the same thread count. `--table` prints the README's speed table from two `--json` files (1 and 2 threads).
Needs `pip install -e ".[test]"`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256], layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)
DDPM_256 = dict(
    CIFAR10, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4)
ARCHITECTURES = {"cifar10": CIFAR10, "ddpm-256": DDPM_256}


def positive(text):
    """An argparse type: a whole number of at least 1 (rounds, threads, batch, steps); else a one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def set_threads(threads):
    """Before NumPy and PyTorch load: one thread count for both."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def models(arch, seed=0):
    """(diffusers model, tinyddim UNet2DModel) with the same weights: random ones in the shape of `arch`,
    or the bundled model's (arch "bundled")."""
    import torch
    from diffusers import UNet2DModel as TorchUNet

    from tinyddim.pipelines import BUNDLED_MODEL
    from tinyddim.unet import UNet2DModel
    from tinyddim.weights import read_metadata, read_state_dict, to_tree, unet_config

    torch.manual_seed(seed)
    if arch == "bundled":
        torch_model = TorchUNet(**json.loads(read_metadata(BUNDLED_MODEL)["unet_config"])).eval()
        torch_model.load_state_dict({key: torch.from_numpy(value.astype("float32"))
                                     for key, value in read_state_dict(BUNDLED_MODEL).items()})
    else:
        torch_model = TorchUNet(**ARCHITECTURES[arch]).eval()
    state = {key: value.detach().numpy().copy() for key, value in torch_model.state_dict().items()}
    return torch_model, UNet2DModel(unet_config(dict(torch_model.config)), to_tree(state))


def forward_fns(torch_model, unet, x):
    import torch

    x_torch = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            return torch_model(x_torch, 500).sample.numpy()

    return run_torch, lambda: unet(x, 500)


def round_times(fns, rounds, synchronize=lambda: None, clock=time.perf_counter):
    """Seconds of each fn in every round, calling them in turn each round (after one warm-up call each).

    `synchronize` waits for a device to finish (GPU timings); `clock` may be time.process_time (CPU time)."""
    for fn in fns:
        fn()
    synchronize()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, bucket in zip(fns, times):
            start = clock()
            fn()
            synchronize()
            bucket.append(clock() - start)
    return times


def median_times(fns, rounds, synchronize=lambda: None, clock=time.perf_counter):
    """The median seconds of each fn over interleaved rounds (`round_times`)."""
    return [spread(bucket)["median"] for bucket in round_times(fns, rounds, synchronize, clock)]


def spread(values):
    """min / median / max of a list of timings."""
    ordered = sorted(values)
    return dict(min=ordered[0], median=ordered[len(ordered) // 2], max=ordered[-1])


def show(s, scale=1e3, unit="ms", digits=1):
    """'median (min–max) unit' of a spread."""
    return (f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}) {unit}")


def machine_section(args):
    """The facts a speed figure depends on."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    blas = [dict(api=i.get("internal_api"), version=i.get("version"), kernel=i.get("architecture"),
                 threads=i.get("num_threads"), library=os.path.basename(i.get("filepath", "")))
            for i in threadpool_info() if i.get("user_api") == "blas"]
    facts = dict(cpu=model, cores=os.cpu_count(), avx2="avx2" in flags, avx512="avx512f" in flags,
                 numpy=np.__version__, torch=torch.__version__, python=platform.python_version(), blas=blas,
                 threads=args.threads, torch_threads=torch.get_num_threads(),
                 openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), rounds=args.rounds)
    simd = "AVX-512" if facts["avx512"] else "AVX2" if facts["avx2"] else "no AVX2"
    kernels = ", ".join(f"{b['api']} {b['version']} kernel {b['kernel']}" for b in blas) or "no BLAS found"
    print(f"machine {model}, {facts['cores']} cores, {simd}; NumPy {np.__version__} ({kernels}), "
          f"PyTorch {torch.__version__}; {args.threads} threads (PyTorch {facts['torch_threads']}); "
          f"OPENBLAS_CORETYPE {facts['openblas_coretype'] or '(unset)'}; {args.rounds} rounds")
    return facts


def gemm_section(args):
    import numpy as np
    import torch

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    t_np, t_torch = median_times([lambda: a @ a, lambda: torch.from_numpy(a) @ torch.from_numpy(a)], 5)
    flops = 2 * n**3
    print(f"gemm   float32 {n}^3: NumPy {flops / t_np / 1e9:.0f} GFLOP/s, PyTorch {flops / t_torch / 1e9:.0f} GFLOP/s")
    return flops / t_np / 1e9


def count_flops(torch_model, x):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        torch_model(torch.from_numpy(x), 500)
    return counter.get_total_flops()


def speed_section(args, gemm_peak):
    import numpy as np

    torch_model, unet = models("cifar10")
    rows = []
    for batch in (1, 8):
        x = np.random.default_rng(1).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        run_torch, run_ours = forward_fns(torch_model, unet, x)
        diff = float(np.abs(run_torch() - run_ours()).max())
        t_torch, t_ours = (spread(t) for t in round_times([run_torch, run_ours], args.rounds))
        flops = count_flops(torch_model, x)
        rows.append(dict(batch=batch, torch_s=t_torch, tinyddim_s=t_ours, ratio=t_ours["median"] / t_torch["median"],
                         gflops_tinyddim=flops / t_ours["median"] / 1e9, gflops_torch=flops / t_torch["median"] / 1e9,
                         gflop_per_image=flops / batch / 1e9, max_abs_diff=diff))
        r = rows[-1]
        peak = f" ({r['gflops_tinyddim'] / gemm_peak:.0%} of NumPy's GEMM peak)" if gemm_peak else ""
        print(f"speed  cifar10-32 batch {batch}: PyTorch {show(t_torch)}, tinyddim {show(t_ours)}, "
              f"ratio {r['ratio']:.2f}; tinyddim {r['gflops_tinyddim']:.0f} GFLOP/s{peak}, PyTorch "
              f"{r['gflops_torch']:.0f} GFLOP/s; {r['gflop_per_image']:.1f} GFLOP/image; max |diff| {diff:.1e}")
    return rows


def bundled_section(args):
    """The bundled model: forward at batch 64, then whole DDIMPipeline runs (diffusers' against ours)."""
    import numpy as np
    import torch
    from diffusers import DDIMPipeline as TorchDDIMPipeline
    from diffusers import DDIMScheduler as TorchDDIM

    import tinyddim
    from tinyddim.pipelines import BUNDLED_MODEL
    from tinyddim.weights import read_metadata

    torch_model, unet = models("bundled")
    x = np.random.default_rng(1).standard_normal((64,) + unet.sample_shape, dtype=np.float32)
    run_torch, run_ours = forward_fns(torch_model, unet, x)
    diff = float(np.abs(run_torch() - run_ours()).max())
    t_torch, t_ours = (spread(t) for t in round_times([run_torch, run_ours], args.rounds))
    results = dict(forward=dict(batch=64, torch_s=t_torch, tinyddim_s=t_ours, max_abs_diff=diff,
                                ratio=t_ours["median"] / t_torch["median"]))
    print(f"bundled forward batch 64: PyTorch {show(t_torch)}, tinyddim {show(t_ours)}, "
          f"ratio {results['forward']['ratio']:.2f}; max |diff| {diff:.1e}")

    scheduler = TorchDDIM.from_config(json.loads(read_metadata(BUNDLED_MODEL)["scheduler_config"]))
    theirs = TorchDDIMPipeline(unet=torch_model, scheduler=scheduler)
    theirs.set_progress_bar_config(disable=True)
    ours = tinyddim.default_pipeline()
    steps = args.pipeline_steps

    def run_theirs(batch, steps=steps):
        with torch.no_grad():
            return theirs(batch_size=batch, num_inference_steps=steps, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images

    def run_ours(batch, steps=steps):
        return ours(batch_size=batch, generator=0, num_inference_steps=steps, output_type="np", progress=False).images

    results["pipeline"] = []
    for batch in (64, 256):
        run_theirs(batch, 2), run_ours(batch, 2)  # warm-up: memory pools, Winograd kernels
        t_theirs, t_ours = (spread(t) for t in round_times([lambda: run_theirs(batch), lambda: run_ours(batch)],
                                                            args.pipeline_rounds))
        row = dict(batch=batch, steps=steps, diffusers_s=t_theirs, tinyddim_s=t_ours,
                   diffusers_images_per_s=batch / t_theirs["median"], tinyddim_images_per_s=batch / t_ours["median"],
                   ratio=t_ours["median"] / t_theirs["median"])
        results["pipeline"].append(row)
        print(f"bundled DDIMPipeline batch {batch}, {steps} steps: diffusers {show(t_theirs, 1, 's', 2)} "
              f"({row['diffusers_images_per_s']:.1f} img/s), tinyddim {show(t_ours, 1, 's', 2)} "
              f"({row['tinyddim_images_per_s']:.1f} img/s), ratio {row['ratio']:.2f}")
    return results


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 0.2 ms by a thread: this process's, plus
    the whole of tinyddim's worker processes (`tinyddim/processes.py`: none at entry in a fresh process)."""

    def __enter__(self):
        from tinyddim import processes

        self.workers = processes._workers  # the list of started workers, kept up to date by tinyddim
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0002)

    def _rss(self):
        total = 0
        for pid in ["self"] + [worker.pid for worker in self.workers]:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:  # a worker that has just exited
                pass
        return total

    @property
    def mib(self):
        return (self.peak - self.base) / 2**20


def memory_child(framework, arch, batch, rounds):
    """In a fresh process: the peak memory of the first forward above the loaded model, and the times of
    `rounds` more (printed as JSON). The first forward counts what each framework's allocator takes."""
    import numpy as np

    torch_model, unet = models(arch)
    size = ARCHITECTURES[arch]["sample_size"]
    x = np.random.default_rng(1).standard_normal((batch, 3, size, size), dtype=np.float32)
    run_torch, run_ours = forward_fns(torch_model, unet, x)
    run = run_torch if framework == "torch" else run_ours
    if framework != "torch":
        del torch_model
    with PeakRSS() as peak:
        run()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"framework": framework, "peak_mib": peak.mib, "seconds": spread(seconds)}))


def child(framework, arch, batch, threads, rounds):
    command = [sys.executable, __file__, "--threads", str(threads), "--memory-child", framework, arch, str(batch),
               str(rounds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(args):
    results = {fw: child(fw, "cifar10", 8, args.threads, 1) for fw in ("torch", "tinyddim")}
    print(f"memory cifar10-32 batch 8, peak above the loaded model: PyTorch {results['torch']['peak_mib']:.0f} MiB, "
          f"tinyddim {results['tinyddim']['peak_mib']:.0f} MiB")
    return results


def large_section(args):
    results = {fw: child(fw, "ddpm-256", 1, args.threads, args.large_rounds) for fw in ("torch", "tinyddim")}
    results["ratio"] = results["tinyddim"]["seconds"]["median"] / results["torch"]["seconds"]["median"]
    print(f"large  ddpm-256 at 256x256 batch 1: PyTorch {show(results['torch']['seconds'], 1, 's', 2)}, "
          f"{results['torch']['peak_mib']:.0f} MiB; tinyddim {show(results['tinyddim']['seconds'], 1, 's', 2)}, "
          f"{results['tinyddim']['peak_mib']:.0f} MiB peak above the loaded model; ratio {results['ratio']:.2f}")
    return results


def table(paths):
    """The README's speed table (markdown) from `--json` files of runs at different thread counts."""
    runs = [json.load(open(path)) for path in paths]
    m = runs[0]["machine"]
    simd = "AVX-512" if m["avx512"] else "AVX2" if m["avx2"] else "no AVX2"
    blas = ", ".join(f"{b['api']} {b['version']} ({b['kernel']} kernel)" for b in m["blas"])
    lines = [f"Measured on {m['cpu']} ({m['cores']} cores, {simd}), NumPy {m['numpy']} with {blas}, "
             f"PyTorch {m['torch']}, OPENBLAS_CORETYPE {m['openblas_coretype'] or 'unset'}. Ratio tinyddim / "
             f"PyTorch of the medians over interleaved rounds ({m['rounds']} per forward); lower is faster.", "",
             "| | " + " | ".join(f"{r['threads']} thread{'s' * (r['threads'] > 1)}" for r in runs) + " |",
             "| --- |" + " --- |" * len(runs)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + " |")

    def ms(s):
        return f"{s['median'] * 1e3:.0f}"

    row("bundled model, forward at batch 64: PyTorch / tinyddim ms, ratio", lambda r: (
        f"{ms(r['bundled']['forward']['torch_s'])} / {ms(r['bundled']['forward']['tinyddim_s'])}, "
        f"**{r['bundled']['forward']['ratio']:.2f}**"))
    row("spread over rounds of that forward, min / median / max ms: PyTorch; tinyddim", lambda r: "; ".join(
        " / ".join(f"{r['bundled']['forward'][key][k] * 1e3:.0f}" for k in ("min", "median", "max"))
        for key in ("torch_s", "tinyddim_s")))
    for i, p in enumerate(runs[0]["bundled"]["pipeline"]):
        row(f"bundled model, DDIMPipeline batch {p['batch']}, {p['steps']} steps: images/s diffusers / tinyddim",
            lambda r, i=i: (f"{r['bundled']['pipeline'][i]['diffusers_images_per_s']:.1f} / "
                            f"{r['bundled']['pipeline'][i]['tinyddim_images_per_s']:.1f}, "
                            f"**{r['bundled']['pipeline'][i]['ratio']:.2f}**"))
    for i, b in enumerate(runs[0]["speed"]):
        row(f"cifar10-32 architecture, batch {b['batch']}: PyTorch / tinyddim ms, ratio", lambda r, i=i: (
            f"{ms(r['speed'][i]['torch_s'])} / {ms(r['speed'][i]['tinyddim_s'])}, **{r['speed'][i]['ratio']:.2f}**"))
    row("ddpm-256 architecture, 256x256, batch 1: PyTorch / tinyddim s, ratio", lambda r: (
        f"{r['large']['torch']['seconds']['median']:.2f} / {r['large']['tinyddim']['seconds']['median']:.2f}, "
        f"**{r['large']['ratio']:.2f}**"))
    row("ddpm-256, peak memory above the model: PyTorch / tinyddim MiB", lambda r: (
        f"{r['large']['torch']['peak_mib']:.0f} / {r['large']['tinyddim']['peak_mib']:.0f}"))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--rounds", type=positive, default=7, help="interleaved rounds of each forward")
    parser.add_argument("--pipeline-rounds", type=positive, default=3, help="interleaved rounds of each DDIMPipeline run")
    parser.add_argument("--pipeline-steps", type=positive, default=50)
    parser.add_argument("--large-rounds", type=positive, default=3)
    parser.add_argument("--sections", default="gemm,bundled,speed,memory,large")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, 3 DDIM steps")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the README speed table from these runs")
    parser.add_argument("--memory-child", nargs=4, metavar=("FRAMEWORK", "ARCH", "BATCH", "ROUNDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        return print(table(args.table))
    if args.quick:
        args.rounds, args.pipeline_rounds, args.pipeline_steps, args.large_rounds = 2, 1, 3, 1
    set_threads(args.threads)
    if args.memory_child:
        framework, arch, batch, rounds = args.memory_child
        return memory_child(framework, arch, int(batch), int(rounds))
    import torch

    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    results = {"threads": args.threads, "machine": machine_section(args)}
    gemm_peak = results["gemm_gflops"] = gemm_section(args) if "gemm" in sections else None
    for name, section in (("bundled", lambda: bundled_section(args)), ("speed", lambda: speed_section(args, gemm_peak)),
                          ("memory", lambda: memory_section(args)), ("large", lambda: large_section(args))):
        if name in sections:
            results[name] = section()
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
