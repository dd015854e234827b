"""A model's convolutions one by one: tinyddim's conv2d against torch's, shape by shape.

    python benchmarks/conv_speed.py --threads 1
    python benchmarks/conv_speed.py --batch 64 --threads 2 --rounds 7
    python benchmarks/conv_speed.py --arch cifar10 --batch 8

Records every conv2d call of one forward of the model (the bundled one by default): input shape, kernel,
stride, padding; and every upsampling conv (`nn.upsample_conv`, "up x2": against torch's nearest
interpolation then conv2d). It then times each distinct call in both frameworks, interleaved round by
round, and prints the median milliseconds, the spread, the ratio, torch's GFLOP/s, and the total over the
forward (each shape times the number of calls). It shows where the forward's conv time goes and how far
each shape is from torch's.

The column "products" times the matrix products of tinyddim's path alone (for Winograd the 16 products
(O, C) @ (C, tiles), for im2col the one (O, C·kh·kw) @ (C·kh·kw, B·H'W'), for an upsampling conv the 8
(O, 2C) @ (2C, B·H·W)), on arrays of their shapes: the part of the conv that BLAS does. Their total is a
floor for the conv time that no faster NumPy transform or copy can go below.
Needs `pip install -e ".[test]"` (torch).
"""

import argparse
import collections
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def recorded_convs(model, batch):
    """{(x shape, weight shape, stride, padding, upsampled): number of calls} over one forward of a tinyddim
    UNet2DModel at this batch size: its conv2d calls, and its upsampling convs (`nn.upsample_conv`, a 3x3
    conv of x upsampled x2, recorded with upsampled=True and x's own shape)."""
    import numpy as np

    from tinyddim import unet

    calls, conv2d, upsample_conv = collections.Counter(), unet.conv2d, unet.upsample_conv

    def record(x, weight, bias=None, stride=1, padding=0):
        calls[(x.shape, weight.shape, stride, padding if isinstance(padding, int) else tuple(padding), False)] += 1
        return conv2d(x, weight, bias, stride, padding)

    def record_upsampling(x, weight, bias=None):
        calls[(x.shape, weight.shape, 1, 1, True)] += 1
        return upsample_conv(x, weight, bias)

    unet.conv2d, unet.upsample_conv = record, record_upsampling
    try:
        model(np.zeros((batch,) + model.sample_shape, np.float32), np.full(batch, 500))
    finally:
        unet.conv2d, unet.upsample_conv = conv2d, upsample_conv
    return calls


def torch_padding(padding):
    """torch.nn.functional.conv2d takes one padding for both sides; (0, 1, 0, 1) is an explicit pad first."""
    return (padding, None) if isinstance(padding, int) else (0, (padding[2], padding[3], padding[0], padding[1]))


def products_alone(x_shape, w_shape, stride, padding, rng, upsampled=False):
    """A callable running only the matrix products of tinyddim's path for this call."""
    import numpy as np

    from tinyddim import winograd

    batch, channels, height, width = x_shape
    out_channels, _, kh, kw = w_shape
    random = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, weight = np.empty(x_shape, np.float32), np.empty(w_shape, np.float32)
    if upsampled:  # fastops.upsample_conv: 2 products (O, 2C) @ (2C, B·H·W) for each of the 4 output parities
        kernel, columns = random(8, out_channels, 2 * channels), random(8, 2 * channels, batch * height * width)
        return lambda: kernel @ columns
    if winograd.applies(x, weight, stride, padding):
        tile_count = batch * height // 2 * (width // 2 + 1)  # the parity grids have one spare tile per row
        kernel, tiles = random(16, out_channels, channels), random(16, channels, tile_count)
        return lambda: kernel @ tiles  # (16, O, C) @ (16, C, tiles)
    if kh == kw == 1 and stride == 1:
        kernel, columns = random(out_channels, channels), random(batch, channels, height * width)
        return lambda: kernel @ columns  # (O, C) @ (B, C, HW)
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    out_h = (height + top + bottom - kh) // stride + 1
    out_w = (width + left + right - kw) // stride + 1
    kernel, columns = random(out_channels, channels * kh * kw), random(channels * kh * kw, batch * out_h * out_w)
    return lambda: kernel @ columns  # (O, C·kh·kw) @ (C·kh·kw, B·H'W')


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import positive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="bundled", choices=("bundled", "cifar10", "ddpm-256"))
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--rounds", type=positive, default=7)
    args = parser.parse_args()
    from unet_speed import machine_section, models, set_threads

    set_threads(args.threads)  # before NumPy and torch load
    import numpy as np
    import torch

    import tinyddim as td

    machine_section(args)
    unet = td.default_pipeline().unet if args.arch == "bundled" else models(args.arch)[1]
    rng = np.random.default_rng(0)
    total = collections.Counter()
    print(f"{args.arch}, batch {args.batch}, {args.threads} threads; ms per call, median (min–max) over "
          f"{args.rounds} rounds")
    for (x_shape, w_shape, stride, padding, upsampled), count in sorted(recorded_convs(unet, args.batch).items()):
        x = rng.standard_normal(x_shape).astype(np.float32)
        weight = (rng.standard_normal(w_shape) * 0.1).astype(np.float32)
        x_torch, w_torch = torch.from_numpy(x), torch.from_numpy(weight)
        pad, explicit = torch_padding(padding)

        def theirs():
            inputs = torch.nn.functional.pad(x_torch, explicit) if explicit else x_torch
            with torch.no_grad():
                if upsampled:  # diffusers' Upsample2D
                    inputs = torch.nn.functional.interpolate(inputs, scale_factor=2.0, mode="nearest")
                return torch.nn.functional.conv2d(inputs, w_torch, stride=stride, padding=pad)

        ours = (lambda: td.nn.upsample_conv(x, weight)) if upsampled else (
            lambda: td.nn.conv2d(x, weight, None, stride, padding))
        runs = {"tinyddim": ours, "torch": theirs,
                "products": products_alone(x_shape, w_shape, stride, padding, rng, upsampled)}
        times = {name: [] for name in runs}
        for fn in runs.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
        ours, torch_ms = np.median(times["tinyddim"]), np.median(times["torch"])
        out_pixels = (x_shape[2] // stride) * (x_shape[3] // stride) * (4 if upsampled else 1)
        gflop = 2 * args.batch * out_pixels * np.prod(w_shape) / 1e9
        products = np.median(times["products"])
        total["tinyddim"] += count * ours
        total["torch"] += count * torch_ms
        total["products"] += count * products
        kind = "up x2, k3" if upsampled else f"k{w_shape[2]} s{stride}"
        print(f"  {count:2d} x {x_shape!s:18} {w_shape[1]:3d}->{w_shape[0]:3d} {kind}: "
              f"tinyddim {ours:6.2f} ({min(times['tinyddim']):.2f}–{max(times['tinyddim']):.2f}), "
              f"torch {torch_ms:6.2f} ({min(times['torch']):.2f}–{max(times['torch']):.2f}), "
              f"ratio {ours / torch_ms:4.2f}, torch {gflop / torch_ms * 1e3:4.0f} GFLOP/s, "
              f"products {products:5.2f} ({products / torch_ms:4.2f} of torch)")
    print(f"all convs of one forward: tinyddim {total['tinyddim']:.1f} ms, torch {total['torch']:.1f} ms, "
          f"ratio {total['tinyddim'] / total['torch']:.2f}; tinyddim's matrix products alone "
          f"{total['products']:.1f} ms ({total['products'] / total['torch']:.2f} of torch's whole convs)")


if __name__ == "__main__":
    main()
