"""tinyddim's NumPy UNet against diffusers' PyTorch UNet2DModel, measured side by side in one run.

    python benchmarks/unet_speed.py                 # all sections, 2 threads
    python benchmarks/unet_speed.py --threads 1 --sections speed

Sections
    gemm     this machine's float32 GEMM peak, NumPy and PyTorch (the ceiling for both)
    speed    google/ddpm-cifar10-32 architecture, random weights: forward time at batch 1 and 8,
             tinyddim / PyTorch ratio, GFLOP/s (FLOPs counted by torch's FlopCounterMode)
    memory   peak memory above the loaded model during one forward at batch 8, each in a fresh process
    large    google/ddpm-*-256 architecture at 256x256, batch 1: time and peak memory of one forward
    sample   the bundled model: a 16-image, 50-step DDIM grid

Timings interleave the two frameworks round by round and report the median. Both run float32 with the
same thread count. Note: some machines set OPENBLAS_CORETYPE to an older kernel for safety, which
slows NumPy's GEMM; the gemm section shows what the run got. Needs `pip install -e ".[test]"`.
"""

import argparse
import json
import os
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


def median_times(fns, rounds, synchronize=lambda: None):
    """Median seconds of each fn, calling them in turn each round (after one warm-up call each).

    `synchronize` waits for a device to finish (GPU timings)."""
    for fn in fns:
        fn()
    synchronize()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            synchronize()
            bucket.append(time.perf_counter() - start)
    return [sorted(bucket)[len(bucket) // 2] for bucket in times]


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
        t_torch, t_ours = median_times([run_torch, run_ours], args.rounds)
        flops = count_flops(torch_model, x)
        rows.append(dict(batch=batch, torch_ms=t_torch * 1e3, tinyddim_ms=t_ours * 1e3, ratio=t_ours / t_torch,
                         gflops_tinyddim=flops / t_ours / 1e9, gflops_torch=flops / t_torch / 1e9,
                         gflop_per_image=flops / batch / 1e9, max_abs_diff=diff))
        r = rows[-1]
        peak = f" ({r['gflops_tinyddim'] / gemm_peak:.0%} of NumPy's GEMM peak)" if gemm_peak else ""
        print(f"speed  cifar10-32 batch {batch}: PyTorch {r['torch_ms']:.1f} ms, tinyddim {r['tinyddim_ms']:.1f} ms, "
              f"ratio {r['ratio']:.2f}; tinyddim {r['gflops_tinyddim']:.0f} GFLOP/s{peak}, PyTorch "
              f"{r['gflops_torch']:.0f} GFLOP/s; {r['gflop_per_image']:.1f} GFLOP/image; max |diff| {diff:.1e}")
    return rows


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 0.2 ms by a thread."""

    def __enter__(self):
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

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def mib(self):
        return (self.peak - self.base) / 2**20


def memory_child(framework, arch, batch):
    """In a fresh process: the peak memory of the first forward above the loaded model, and the time of a
    second one (printed as JSON). The first forward counts what each framework's allocator takes."""
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
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(json.dumps({"framework": framework, "peak_mib": peak.mib, "seconds": seconds}))


def child(framework, arch, batch, threads):
    command = [sys.executable, __file__, "--threads", str(threads), "--memory-child", framework, arch, str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_section(args):
    results = {fw: child(fw, "cifar10", 8, args.threads) for fw in ("torch", "tinyddim")}
    print(f"memory cifar10-32 batch 8, peak above the loaded model: PyTorch {results['torch']['peak_mib']:.0f} MiB, "
          f"tinyddim {results['tinyddim']['peak_mib']:.0f} MiB")
    return results


def large_section(args):
    results = {fw: child(fw, "ddpm-256", 1, args.threads) for fw in ("torch", "tinyddim")}
    print(f"large  ddpm-256 at 256x256 batch 1: PyTorch {results['torch']['seconds']:.2f} s, "
          f"{results['torch']['peak_mib']:.0f} MiB; tinyddim {results['tinyddim']['seconds']:.2f} s, "
          f"{results['tinyddim']['peak_mib']:.0f} MiB peak above the loaded model")
    return results


def sample_section(args):
    import tinyddim

    pipe = tinyddim.default_pipeline()
    pipe(batch_size=16, generator=0, num_inference_steps=2, progress=False)
    start = time.perf_counter()
    pipe(batch_size=16, generator=0, num_inference_steps=50, progress=False)
    seconds = time.perf_counter() - start
    print(f"sample bundled model, 16 images x 50 DDIM steps: {seconds:.2f} s")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sections", default="gemm,speed,memory,large,sample")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory-child", nargs=3, metavar=("FRAMEWORK", "ARCH", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.memory_child:
        framework, arch, batch = args.memory_child
        return memory_child(framework, arch, int(batch))
    import torch

    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    print(f"threads {args.threads}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    results = {"threads": args.threads}
    gemm_peak = results["gemm_gflops"] = gemm_section(args) if "gemm" in sections else None
    for name, section in (("speed", lambda: speed_section(args, gemm_peak)), ("memory", lambda: memory_section(args)),
                          ("large", lambda: large_section(args)), ("sample", lambda: sample_section(args))):
        if name in sections:
            results[name] = section()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
