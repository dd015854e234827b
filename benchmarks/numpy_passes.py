"""What one NumPy elementwise pass costs, by how its operands lie in memory: the floor under the speed-ups.

    python benchmarks/numpy_passes.py                 # 256 KiB of float32 per pass, 1 thread
    python benchmarks/numpy_passes.py --rounds 3      # a smoke run

Times one float32 subtraction c = a − b over 2^16 floats (256 KiB: the inputs and the one output stay in
cache, as a block of the speed-ups does), every layout against the contiguous pass, interleaved round by
round:

    contiguous   a, b and c contiguous, a and b one array shifted by 8 floats (as a Winograd transform
                 reads its grids): one SIMD loop over the whole array (the reference, 1.00)
    scalar       b one number
    per row      b one number per row of L floats, (R, 1) against (R, L): a group's mean in group norm, a
                 channel's bias or time embedding over H·W pixels, a softmax's row maximum
    unbuffered   the same, with NumPy's ufunc buffer set to L floats for the pass (`np.setbufsize` inside
                 `np.errstate`, which restores it): no operand is copied into a buffer
    strided      a and b views with gaps, rows of L floats: the shifted grids of a Winograd transform

NumPy's ufuncs copy every operand that is not contiguous over a buffer's length (8192 elements) into a
buffer, in pieces of one row, and refill a broadcast operand's buffer on every fill (numpy/numpy#13307;
numpy/numpy#32595 stops the refills, after NumPy 2.4). So a pass whose operands run contiguously for fewer
than a few thousand floats costs several contiguous passes. A ratio is the median of the round-by-round
ratios to the contiguous pass, with its min–max beside it.
"""

import argparse
import os
import sys

FLOATS = 1 << 16  # floats per pass: 256 KiB of float32
RUNS = (16, 64, 256, 1024, 4096)  # row lengths L


def passes(rng):
    """(label, function, (a, b)) for every layout: each function runs one subtraction a − b into the same
    output, from views of the same inputs, so that every layout finds the same data in cache."""
    import numpy as np

    out = np.empty(FLOATS, dtype=np.float32)
    x = rng.standard_normal(FLOATS + 8, dtype=np.float32)
    gapped = rng.standard_normal(FLOATS * 2, dtype=np.float32)  # strided rows are cut from here

    def pass_over(label, a, b, buffer=None):
        target = out.reshape(np.broadcast_shapes(np.shape(a), np.shape(b)))
        if buffer is None:
            return label, lambda: np.subtract(a, b, out=target), (a, b)

        def unbuffered():
            with np.errstate():  # restores the buffer size on the way out
                np.setbufsize(buffer)
                return np.subtract(a, b, out=target)
        return label, unbuffered, (a, b)

    found = [pass_over("contiguous", x[:FLOATS], x[8:]), pass_over("scalar", x[:FLOATS], np.float32(0.5))]
    for run in RUNS:
        rows, per_row = x[:FLOATS].reshape(-1, run), x[: FLOATS // run, None]  # (FLOATS,) -> (R, L), and (R, 1)
        found.append(pass_over(f"per row, L = {run}", rows, per_row))
        found.append(pass_over(f"per row, L = {run}, unbuffered", rows, per_row, buffer=run))
    for run in RUNS:
        rows = gapped[: FLOATS // run * (run + 8)].reshape(-1, run + 8)  # rows of L floats, 8 floats apart
        found.append(pass_over(f"strided, L = {run}", rows[:, :run], rows[:, 8:]))
    return found


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import machine_section, positive, round_times, set_threads, spread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=200)
    args = parser.parse_args()
    set_threads(1)
    import numpy as np

    args.threads = 1
    machine_section(args)
    found = passes(np.random.default_rng(0))
    times = round_times([fn for _, fn, _ in found], args.rounds)
    reference = np.array(times[0])
    print(f"one float32 subtraction over {FLOATS} floats; contiguous: {spread(times[0])['median'] * 1e6:.1f} µs")
    for (label, _, _), bucket in zip(found, times):
        ratios = spread(list(np.array(bucket) / reference))
        print(f"  {label:32s} {spread(bucket)['median'] * 1e6:7.1f} µs   {ratios['median']:5.2f} "
              f"({ratios['min']:.2f}–{ratios['max']:.2f})")


if __name__ == "__main__":
    main()
