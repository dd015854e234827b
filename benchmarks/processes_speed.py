"""The batch in worker processes against the same batch in threads, and PyTorch, interleaved in one run.

    python benchmarks/processes_speed.py --threads 2                          # the bundled model, batch 64
    python benchmarks/processes_speed.py --threads 2 --arch cifar10 --batch 8

With N threads `UNet2DModel` runs one slice of the batch here and the others in N − 1 worker processes
(`tinyddim/processes.py`); with `processes.ENABLED` off, the same slices run in N threads of this process
(`tinyddim/parallel.py`). Each round times PyTorch, then tinyddim both ways; the figures are medians with
their min–max, and the ratio processes / threads is the median of the round-by-round ratios.
"""

import argparse
import os
import sys


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import machine_section, models, positive, round_times, set_threads, show, spread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--arch", default="bundled", choices=("bundled", "cifar10"))
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--rounds", type=positive, default=15)
    args = parser.parse_args()
    set_threads(args.threads)
    import numpy as np
    import torch

    from tinyddim import processes

    machine_section(args)
    torch_model, unet = models(args.arch)
    x = np.random.default_rng(1).standard_normal((args.batch,) + unet.sample_shape, dtype=np.float32)

    def ours(enabled):
        def run():
            processes.ENABLED = enabled
            return unet(x, 500)
        return run

    with torch.no_grad():
        theirs = lambda: torch_model(torch.from_numpy(x), 500)
        torch_s, processes_s, threads_s = round_times([theirs, ours(True), ours(False)], args.rounds)
    processes.ENABLED = True
    ratios = spread(list(np.array(processes_s) / np.array(threads_s)))
    print(f"{args.arch} forward batch {args.batch}, {args.threads} threads: PyTorch {show(spread(torch_s))}; "
          f"tinyddim, worker processes {show(spread(processes_s))}, threads {show(spread(threads_s))}")
    print(f"processes / threads {ratios['median']:.3f} ({ratios['min']:.3f}–{ratios['max']:.3f}); "
          f"processes / PyTorch {spread(processes_s)['median'] / spread(torch_s)['median']:.2f}, "
          f"threads / PyTorch {spread(threads_s)['median'] / spread(torch_s)['median']:.2f}")


if __name__ == "__main__":
    main()
