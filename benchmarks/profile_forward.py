"""Where a forward pass spends its time, op by op: the cifar10-32 architecture, or the bundled model.

    python benchmarks/profile_forward.py --batch 8 --threads 2
    python benchmarks/profile_forward.py --arch bundled --batch 64 --threads 1 --clock cpu

Wraps the ops that `tinyddim.unet` calls (and the im2col and Winograd pieces inside conv2d) with
timers, runs a few forwards and prints milliseconds per forward. Nested pieces are included in conv2d.
With several threads each one runs a slice of the batch, so the op times add up over the threads.
"""

import argparse
import collections
import os
import sys
import time


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import positive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument("--arch", default="cifar10", choices=("cifar10", "ddpm-256", "bundled"))
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="cpu: each thread's CPU time (steadier on a busy machine)")
    args = parser.parse_args()
    from unet_speed import models, set_threads

    set_threads(args.threads)
    import numpy as np

    import tinyddim.fastops as fastops
    import tinyddim.unet as unet_module
    import tinyddim.winograd as winograd

    totals = collections.Counter()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    def timed(module, name, label):
        fn = getattr(module, name)

        def wrapper(*a, **k):
            start = clock()
            out = fn(*a, **k)
            totals[label] += clock() - start
            return out

        setattr(module, name, wrapper)

    for name in ("conv2d", "group_norm", "silu", "self_attention", "linear", "upsample_conv"):
        timed(unet_module, name, name)
    for module, name, label in ((fastops, "_im2col", "conv2d: im2col copies"),
                                (fastops, "_downsample_im2col", "conv2d: downsampling im2col (grids included)"),
                                (winograd, "parity_grids", "conv2d: parity grids (padding included)"),
                                (winograd, "_winograd_block", "conv2d: Winograd on parity grids (products included)"),
                                (winograd, "_winograd_batch_last",
                                 "conv2d: Winograd of 4x4 images, batch last (products included)")):
        timed(module, name, label)
    _, unet = models(args.arch)
    x = np.random.default_rng(0).standard_normal((args.batch,) + unet.sample_shape, dtype=np.float32)
    unet(x, 500)
    totals.clear()
    total_clock = time.process_time if args.clock == "cpu" else time.perf_counter
    start = total_clock()
    for _ in range(args.rounds):
        unet(x, 500)
    total = (total_clock() - start) / args.rounds
    workers = min(args.threads, args.batch)  # the batch is shared out over the threads (tinyddim.parallel)
    if args.clock == "cpu":
        workers = 1  # process time already sums the threads
    print(f"{args.arch} batch {args.batch}, {args.threads} threads: {total * 1e3:.0f} ms per forward ({args.clock} clock)"
          + (f"; op times are summed over {workers} threads, % of {workers} x wall time" if workers > 1 else "")
          + ("; % of the CPU time of all threads" if args.clock == "cpu" else ""))
    for label, seconds in totals.most_common():
        print(f"  {label:52s} {seconds / args.rounds * 1e3:7.1f} ms  {seconds / args.rounds / total / workers:5.1%}")


if __name__ == "__main__":
    main()
