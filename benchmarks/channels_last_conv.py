"""What a channels-last layout (B, H, W, C) would buy the Winograd convolutions: the bundled forward's 3x3
convs, timed as they are against the same Winograd F(2x2, 3x3) on channels-last activations, and torch.

    python benchmarks/channels_last_conv.py --threads 1 --rounds 15

tinyddim holds activations as (B, C, H, W). Its Winograd conv splits them into parity grids and transposes
(image, channel) on the way, then scatters and transposes back: at 16x16 and below those copies move rows
of 8, 4 or 2 floats (`layout_bound.py`). Held channels-last, every copy moves runs of C floats instead:

    the input transform's rows       padded rows 2a + i, each one contiguous run of (W+2)·C floats
    its columns                      padded columns 2b + j: runs of C floats at a stride of 2C
    the 16 products                  (tiles, C) @ (C, O), no transpose
    the output                       written straight into out[:, 2a + p, 2b + q, :], runs of O floats

This script defines that conv (`conv3x3_channels_last`, checked here against `nn.conv2d(fast=False)` at
every shape), records the Winograd convs of one bundled forward, and times each shape three ways,
interleaved round by round on the CPU clock: tinyddim's conv of (B, C, H, W), the channels-last one of
(B, H, W, C), and torch's conv2d. It prints ms per call and the totals over one forward. Only the convs:
a UNet holding channels-last activations would also change group norm, the concatenations and upsampling
(runs of C floats, not of H·W) and drop attention's two token transposes. None of that is measured here.
Use --threads 1: with --threads N NumPy's BLAS runs N threads on the whole batch, while the UNet gives each
of N threads a slice of the batch and a one-thread BLAS, so only the 1-thread figures carry over.
Needs `pip install -e ".[test]"` (torch).
"""

import argparse
import os
import sys
import time


def winograd_kernel_channels_last(weight):
    """U = G g Gᵀ of each 3x3 kernel g (`winograd.winograd_kernel`), as (16, C, O) for the products
    (tiles, C) @ (C, O)."""
    import numpy as np

    from tinyddim.winograd import winograd_kernel

    return np.ascontiguousarray(winograd_kernel(weight).transpose(0, 2, 1))  # (16, O, C) -> (16, C, O)


def conv3x3_channels_last(x, kernel, bias=None, tiles=256):
    """conv2d(x, weight, bias, padding=1) of x (B, H, W, C), H and W even, by Winograd F(2x2, 3x3), with
    `kernel` = winograd_kernel_channels_last(weight): (B, H, W, O), in blocks of about `tiles` tiles."""
    import numpy as np

    batch, height, width, _ = x.shape
    out = np.empty((batch, height, width, kernel.shape[-1]), dtype=x.dtype)
    step = max(1, tiles // (height // 2 * (width // 2)))  # whole images per block
    for start in range(0, batch, step):
        _block(x[start : start + step], kernel, bias, out[start : start + step])
    return out


def _block(x, kernel, bias, out):
    """out (n, H, W, O) = the Winograd conv of x (n, H, W, C): tile (a, b) is padded[2a : 2a+4, 2b : 2b+4]."""
    import numpy as np

    from tinyddim.winograd import transform_input, transform_output

    n, height, width, channels = x.shape
    t, s = height // 2, width // 2
    padded = np.zeros((n, height + 2, width + 2, channels), dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x
    d0, d1, d2, d3 = (padded[:, i : i + 2 * t : 2] for i in range(4))  # tile row i: padded rows 2a + i
    rows = np.empty((4, n, t, width + 2, channels), dtype=x.dtype)  # Bᵀ d
    transform_input(d0, d1, d2, d3, rows)
    pairs = rows.reshape(4, n, t, s + 1, 2, channels)  # padded column 2b + j is pairs[..., b + j//2, j%2, :]
    c0, c1, c2, c3 = pairs[:, :, :, :s, 0], pairs[:, :, :, :s, 1], pairs[:, :, :, 1:, 0], pairs[:, :, :, 1:, 1]
    tiles = np.empty((4, 4, n, t, s, channels), dtype=x.dtype)  # (Bᵀ d) B
    transform_input(c0, c1, c2, c3, tiles.swapaxes(0, 1))  # into tiles[:, j]
    m = tiles.reshape(16, -1, channels) @ kernel  # (16, n·t·s, C) @ (16, C, O) -> (16, n·t·s, O)
    if bias is not None:  # on m[1, 1]: its coefficient in Aᵀ m A is 1 for all four outputs
        m[5] += bias
    m = m.reshape(4, 4, n, t, s, -1)
    sums = np.empty((2, 4) + m.shape[2:], dtype=x.dtype)  # Aᵀ m
    transform_output(m[0], m[1], m[2], m[3], sums)
    outputs = out.reshape(n, t, 2, s, 2, -1)  # out[:, 2a + p, 2b + q] = outputs[:, a, p, b, q]
    for p in range(2):  # (Aᵀ m) A, straight into the output: runs of O floats
        transform_output(sums[p, 0], sums[p, 1], sums[p, 2], sums[p, 3], np.moveaxis(outputs[:, :, p], 3, 0))


def winograd_calls(unet, batch):
    """{(x shape, weight shape): calls} of the Winograd convs in one forward of `unet` at this batch, the
    whole batch in one pass (not sliced over threads)."""
    import collections

    import numpy as np

    import tinyddim.winograd as winograd
    from tinyddim.unet import unet_forward

    calls, conv = collections.Counter(), winograd.conv3x3_winograd

    def recorded(x, weight, bias=None):
        calls[(x.shape, weight.shape)] += 1
        return conv(x, weight, bias)

    winograd.conv3x3_winograd = recorded
    try:
        unet_forward(unet.params, unet.config, np.zeros((batch,) + unet.sample_shape, np.float32), 500)
    finally:
        winograd.conv3x3_winograd = conv
    return calls


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import machine_section, models, positive, round_times, set_threads, spread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--batch", type=positive, default=64)
    parser.add_argument("--rounds", type=positive, default=15)
    args = parser.parse_args()
    set_threads(args.threads)  # before NumPy loads: its BLAS reads the thread count once
    import numpy as np
    import torch

    from tinyddim import nn, winograd
    from tinyddim.parallel import cpu_threads

    machine_section(args)
    assert cpu_threads() == args.threads, f"NumPy's BLAS runs {cpu_threads()} threads, not {args.threads}"
    _, unet = models("bundled")
    rng = np.random.default_rng(0)
    names = ("(B, C, H, W)", "channels-last", "torch")
    totals = dict.fromkeys(names, 0.0)
    print(f"bundled forward's Winograd convs, batch {args.batch}, {args.threads} threads, CPU clock; "
          f"ms per call, median (min–max) over {args.rounds} rounds")
    for (shape, weight_shape), count in winograd_calls(unet, args.batch).items():
        x = rng.standard_normal(shape, dtype=np.float32)
        weight = rng.standard_normal(weight_shape, dtype=np.float32) / np.float32(np.sqrt(9 * shape[1]))
        bias = rng.standard_normal(weight_shape[0], dtype=np.float32)
        x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (B, C, H, W) -> (B, H, W, C)
        kernel = winograd_kernel_channels_last(weight)
        expected = nn.conv2d(x, weight, bias, padding=1, fast=False)
        error = np.abs(conv3x3_channels_last(x_last, kernel, bias).transpose(0, 3, 1, 2) - expected).max()
        assert error < 1e-4, f"channels-last Winograd differs from nn.conv2d by {error:.1e} at {shape}"
        x_torch, weight_torch, bias_torch = (torch.from_numpy(a) for a in (x, weight, bias))
        runs = [lambda: winograd.conv3x3_winograd(x, weight, bias),
                lambda: conv3x3_channels_last(x_last, kernel, bias),
                lambda: torch.nn.functional.conv2d(x_torch, weight_torch, bias_torch, padding=1)]
        medians = []
        for name, bucket in zip(names, round_times(runs, args.rounds, clock=time.process_time)):
            s = spread(bucket)
            totals[name] += count * s["median"]
            medians.append(f"{name} {s['median'] * 1e3:6.2f} ({s['min'] * 1e3:.2f}–{s['max'] * 1e3:.2f})")
        print(f"  {count:2d} x {str(shape):18s} {weight_shape[1]:3d}->{weight_shape[0]:3d}: " + ", ".join(medians)
              + f"; max |diff| {error:.1e}")
    base = totals[names[0]]
    print("totals over one forward: " + ", ".join(f"{name} {t * 1e3:.1f} ms ({t / base:.2f})"
                                               for name, t in totals.items()))


if __name__ == "__main__":
    main()
