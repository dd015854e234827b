"""How much keeping activations in parity order could buy at most: the bundled forward without its parity
splits and scatters.

    python benchmarks/layout_bound.py --threads 1 --rounds 25

Every Winograd convolution splits its input into four parity grids (strided copies) and scatters its output
back (strided copies). A UNet that kept its activations in parity order between convolutions would skip
part of that work. This script times the forward as it is, with the split replaced by ready-made grids, and
with the scatter dropped too, interleaved round by round (CPU clock). The outputs of the last two are
wrong, their shapes and all other work are not: the difference is an upper bound on what the layout buys.
"""

import argparse
import inspect
import os
import sys
import time


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import models, positive, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--rounds", type=positive, default=25)
    args = parser.parse_args()
    set_threads(args.threads)
    import numpy as np

    import tinyddim.fastops as fastops

    grids = {}

    def ready_grids(x, top, bottom):  # the grids' shape, made once: no split
        shape = (2, 2, x.shape[1], len(x), (bottom - top) // 2, x.shape[3] // 2 + 1)
        if shape not in grids:
            grids[shape] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        return grids[shape]

    source = inspect.getsource(fastops._winograd_block)
    assert "    for p in range(2):" in source, "the scatter loop of _winograd_block has changed"
    namespace = dict(vars(fastops))
    exec(source[: source.index("    for p in range(2):")], namespace)  # the block without its scatter
    variants = {"as it is": (fastops._parity_grids, fastops._winograd_block),
                "no split": (ready_grids, fastops._winograd_block),
                "no split, no scatter": (ready_grids, namespace["_winograd_block"])}
    _, unet = models("bundled")
    x = np.random.default_rng(0).standard_normal((args.batch,) + unet.sample_shape, dtype=np.float32)
    times = {name: [] for name in variants}
    with np.errstate(all="ignore"):  # the wrong variants may overflow
        for _ in range(args.rounds + 1):
            for name, (split, block) in variants.items():
                fastops._parity_grids, fastops._winograd_block = split, block
                start = time.process_time()
                unet(x, 500)
                times[name].append(time.process_time() - start)
    print(f"bundled forward, batch {args.batch}, {args.threads} threads, CPU clock, {args.rounds} rounds:")
    for name, bucket in times.items():
        bucket = sorted(bucket[1:])  # the first round warms up
        print(f"  {name:22s} median {bucket[len(bucket) // 2] * 1e3:6.1f} ms (min {bucket[0] * 1e3:.1f}, "
              f"max {bucket[-1] * 1e3:.1f})")


if __name__ == "__main__":
    main()
