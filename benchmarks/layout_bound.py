"""How much keeping activations in parity order could buy at most: the bundled forward without its parity
splits and scatters.

    python benchmarks/layout_bound.py --threads 1 --rounds 25

Every Winograd convolution splits its input into four parity grids (strided copies) and scatters its output
back (strided copies). A UNet that kept its activations in parity order between convolutions would skip
part of that work. This script times the forward as it is, with the split replaced by ready-made grids, and
with the scatter dropped too, interleaved round by round (CPU clock). The outputs of the last two are
wrong, their shapes and all other work are not: the difference is an upper bound on what the layout buys.

Then, convolution by convolution (the shapes the forward records), it times the split and the scatter as
they are against the same copies from and into activations already in parity order, (B, C, 2, 2, H/2,
W/2): what parity order alone would change, with the zero border and the (image, channel) transpose kept.
"""

import argparse
import inspect
import os
import sys
import time


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import models, positive, round_times, set_threads, show, spread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--rounds", type=positive, default=25)
    args = parser.parse_args()
    set_threads(args.threads)
    import numpy as np

    import tinyddim.winograd as winograd

    grids = {}

    def ready_grids(x, top, bottom):  # the grids' shape, made once: no split
        shape = (2, 2, x.shape[1], len(x), (bottom - top) // 2, x.shape[3] // 2 + 1)
        if shape not in grids:
            grids[shape] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        return grids[shape]

    source = inspect.getsource(winograd._winograd_block)
    assert "    for p in range(2):" in source, "the scatter loop of _winograd_block has changed"
    namespace = dict(vars(winograd))
    exec(source[: source.index("    for p in range(2):")], namespace)  # the block without its scatter
    variants = {"as it is": (winograd.parity_grids, winograd._winograd_block),
                "no split": (ready_grids, winograd._winograd_block),
                "no split, no scatter": (ready_grids, namespace["_winograd_block"])}
    _, unet = models("bundled")
    x = np.random.default_rng(0).standard_normal((args.batch,) + unet.sample_shape, dtype=np.float32)

    def forward_with(split, block):
        def run():
            winograd.parity_grids, winograd._winograd_block = split, block
            unet(x, 500)
        return run

    with np.errstate(all="ignore"):  # the wrong variants may overflow
        times = round_times([forward_with(*v) for v in variants.values()], args.rounds, clock=time.process_time)
    print(f"bundled forward, batch {args.batch}, {args.threads} threads, CPU clock, {args.rounds} rounds:")
    for name, bucket in zip(variants, times):
        print(f"  {name:22s} median {show(spread(bucket))}")
    winograd.parity_grids, winograd._winograd_block = variants["as it is"]
    parity_order_copies(unet, x, args.rounds)


def parity_order_copies(unet, x, rounds):
    """Split and scatter of every Winograd conv of one forward: from and into the usual layout, against from
    and into activations in parity order (B, C, 2p, 2q, H/2, W/2); ms per forward, medians over rounds."""
    import numpy as np
    from unet_speed import round_times, spread

    import tinyddim.parallel as parallel
    import tinyddim.winograd as winograd

    convs, conv = [], winograd.conv3x3_winograd
    def recorded(h, weight, bias=None):
        if h.shape[2] * h.shape[3] > winograd.BATCH_LAST_PIXELS:  # 4x4 images take the batch-last path: no grids
            convs.append((h.shape, len(weight)))
        return conv(h, weight, bias)

    winograd.conv3x3_winograd = recorded
    unet(x, 500)
    winograd.conv3x3_winograd = conv
    totals = dict.fromkeys(("split", "split from parity order", "scatter", "scatter into parity order"), 0.0)
    for shape, out_channels in convs:
        batch, channels, height, width = shape
        t, s = height // 2, width // 2
        h = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        ordered = np.ascontiguousarray(h.reshape(batch, channels, t, 2, s, 2).transpose(0, 1, 3, 5, 2, 4))
        y = np.ones((2, 2, out_channels, batch, t, s + 1), dtype=np.float32)  # a block's outputs, by parity
        out = np.empty((batch, out_channels, height, width), np.float32)
        out_ordered = np.empty((batch, out_channels, 2, 2, t, s), np.float32)
        blocks = [images for images, _ in parallel.blocks(batch, t, s + 1, winograd.WINOGRAD_TILES)]
        assert np.array_equal(winograd.parity_grids(h[blocks[0]], -1, height + 1), _grids_from_ordered(ordered[blocks[0]]))

        def scatter(target):  # target(images, p, q): the (n, O, t, s) view that outputs of parity (p, q) go to
            for images in blocks:
                for p in range(2):
                    for q in range(2):
                        target(images, p, q)[...] = y[p, q, :, : images.stop - images.start, :, :s].transpose(1, 0, 2, 3)

        runs = {"split": lambda: [winograd.parity_grids(h[i], -1, height + 1) for i in blocks],
                "split from parity order": lambda: [_grids_from_ordered(ordered[i]) for i in blocks],
                "scatter": lambda: scatter(lambda i, p, q: out[i, :, p::2, q::2]),
                "scatter into parity order": lambda: scatter(lambda i, p, q: out_ordered[i, :, p, q])}
        for name, bucket in zip(runs, round_times(list(runs.values()), rounds, clock=time.process_time)):
            totals[name] += spread(bucket)["median"]
    print(f"the copies of its {len(convs)} Winograd convs, ms per forward (medians):")
    for name, seconds in totals.items():
        print(f"  {name:26s} {seconds * 1e3:6.1f} ms")


def _grids_from_ordered(ordered):
    """`winograd.parity_grids` of a whole image block, from activations already in parity order (n, C, 2p, 2q,
    t, s): padded row 2a + p is row 2a + p − 1 of the image, i.e. grid row a − 1 + p of image parity 1 − p."""
    import numpy as np

    n, channels, _, _, t, s = ordered.shape
    grids = np.zeros((2, 2, channels, n, t + 1, s + 1), dtype=ordered.dtype)
    for p in range(2):
        for q in range(2):
            grids[p, q, :, :, 1 - p : t + 1 - p, 1 - q : s + 1 - q] = ordered[:, :, 1 - p, 1 - q].transpose(1, 0, 2, 3)
    return grids


if __name__ == "__main__":
    main()
