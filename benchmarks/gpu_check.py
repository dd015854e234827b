"""The GPU check: CuPy against PyTorch CUDA on one card, and CPU/GPU agreement. A few minutes at most.

    python benchmarks/gpu_check.py            # on a machine with CuPy, PyTorch (CUDA) and diffusers

1. forward time of the google/ddpm-cifar10-32 architecture (random weights) at batch 1 and 64,
   tinyddim on CuPy / diffusers on PyTorch CUDA, float32, medians of interleaved rounds (target <= 1.5);
2. the bundled model, 50 DDIM steps from one seed on "cpu" and on "cuda": max |difference| of the
   images (target <= 1e-3).
Installs nothing; prints one line per figure and writes them as JSON to --json if given.
"""

import argparse
import json
import os
import sys

import numpy as np


def forward_check(rounds):
    import cupy
    import torch

    from unet_speed import median_times, models

    torch_model, unet = models("cifar10")
    torch_model = torch_model.cuda()
    unet = unet.to("cuda")

    def synchronize():
        torch.cuda.synchronize()
        cupy.cuda.Device().synchronize()

    rows = []
    for batch in (1, 64):
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        x_torch, x_cupy = torch.from_numpy(x).cuda(), cupy.asarray(x)

        def run_torch():
            with torch.no_grad():
                return torch_model(x_torch, 500).sample

        def run_ours():
            return unet(x_cupy, 500)

        diff = float(np.abs(run_torch().cpu().numpy() - cupy.asnumpy(run_ours())).max())
        t_torch, t_ours = median_times([run_torch, run_ours], rounds, synchronize)
        rows.append(dict(batch=batch, torch_ms=t_torch * 1e3, cupy_ms=t_ours * 1e3, ratio=t_ours / t_torch,
                         max_abs_diff=diff))
        print(f"forward batch {batch}: PyTorch CUDA {t_torch * 1e3:.2f} ms, tinyddim CuPy {t_ours * 1e3:.2f} ms, "
              f"ratio {t_ours / t_torch:.2f}, max |diff| {diff:.1e}")
    return rows


def same_images_check():
    import tinyddim

    kwargs = dict(batch_size=8, generator=0, num_inference_steps=50, output_type="np", progress=False)
    cpu = tinyddim.default_pipeline("cpu")(**kwargs).images
    gpu = tinyddim.default_pipeline("cuda")(**kwargs).images
    diff = float(np.abs(cpu - gpu).max())
    print(f"bundled model, 50 steps, seed 0: max |CPU - GPU| = {diff:.1e}")
    return diff


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import positive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        import cupy  # noqa: F401
        import torch
    except ImportError as err:
        sys.exit(f"gpu_check.py needs CuPy and PyTorch with CUDA ({err}): pip install -e \".[gpu,test]\"")
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU: PyTorch sees none")
    results = {"forward": forward_check(args.rounds), "cpu_gpu_max_diff": same_images_check()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
