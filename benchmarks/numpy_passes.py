"""What one NumPy elementwise pass costs, by how its operands lie in memory: the floor under the speed-ups.

    python benchmarks/numpy_passes.py                                # 256 KiB of float32 per pass, 1 thread
    python benchmarks/numpy_passes.py --rounds 3 --at-once-rounds 1  # a smoke run

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

Two more costs that the figures of the UNet depend on, measured the same way:

    exp, divide  one float32 exp (SiLU and softmax take one per element) and one division, contiguous,
                 against the subtraction: NumPy's exp is a SIMD loop whose speed depends on the CPU's
                 vector width, far more than a subtraction's does
    two at once  two workers running the contiguous subtraction over L floats at the same time, each on
                 its own arrays, against one alone: two threads of this process (as `tinyddim.parallel`
                 runs two slices of a batch), and two processes. Threads share the interpreter's lock:
                 each ufunc call takes it to start and to finish, so short passes in two threads wait on
                 each other; processes share only the hardware
"""

import argparse
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

FLOATS = 1 << 16  # floats per pass: 256 KiB of float32
RUNS = (16, 64, 256, 1024, 4096)  # row lengths L
AT_ONCE = (1 << 12, 1 << 14, 1 << 16)  # floats per pass of the two-workers rows
AT_ONCE_FLOATS = 1 << 26  # floats each worker passes over per round: about 20-50 ms of work


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


def costlier_passes(rng):
    """(label, function, operands) for one float32 exp and one division over FLOATS contiguous floats."""
    import numpy as np

    out = np.empty(FLOATS, dtype=np.float32)
    x = rng.standard_normal(FLOATS + 8, dtype=np.float32)
    a, b = x[:FLOATS], x[8:]
    return [("exp", lambda: np.exp(a, out=out), (a,)), ("divide", lambda: np.divide(a, b, out=out), (a, b))]


def timed_passes(floats, count, barrier=None):
    """Seconds that `count` contiguous float32 subtractions over `floats` floats take, on arrays of their
    own, timed from the moment every worker has reached `barrier` (if given)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(floats + 8, dtype=np.float32)
    out = np.empty(floats, dtype=np.float32)
    np.subtract(x[:floats], x[8:], out=out)
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(count):
        np.subtract(x[:floats], x[8:], out=out)
    return time.perf_counter() - start


def _report(results, floats, count, barrier):
    """timed_passes in a process of its own, its seconds put on the queue `results`."""
    results.put(timed_passes(floats, count, barrier))


def two_at_once(kind, floats, count):
    """Each worker's seconds for `timed_passes(floats, count)` while two run at the same time: two threads
    of this process (kind "threads"), or two processes ("processes")."""
    if kind == "threads":
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda _: timed_passes(floats, count, barrier), range(2)))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_report, args=(results, floats, count, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    seconds = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join()
    return seconds


def at_once_rows(rounds):
    """(L, seconds alone, ratios of two threads, ratios of two processes): per round, each worker's mean
    time running beside the other, over the time of one alone in the same round."""
    import numpy as np

    rows = []
    for floats in AT_ONCE:
        count = AT_ONCE_FLOATS // floats
        alone, threads, processes = [], [], []
        for _ in range(rounds):
            alone.append(timed_passes(floats, count))
            threads.append(np.mean(two_at_once("threads", floats, count)) / alone[-1])
            processes.append(np.mean(two_at_once("processes", floats, count)) / alone[-1])
        rows.append((floats, alone, threads, processes))
    return rows


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import machine_section, positive, round_times, set_threads, spread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=200)
    parser.add_argument("--at-once-rounds", type=positive, default=5, help="rounds of the two-workers rows")
    args = parser.parse_args()
    set_threads(1)
    import numpy as np

    args.threads = 1
    machine_section(args)
    found = passes(np.random.default_rng(0)) + costlier_passes(np.random.default_rng(1))
    times = round_times([fn for _, fn, _ in found], args.rounds)
    reference = np.array(times[0])
    print(f"one float32 subtraction over {FLOATS} floats; contiguous: {spread(times[0])['median'] * 1e6:.1f} µs")
    for (label, _, _), bucket in zip(found, times):
        ratios = spread(list(np.array(bucket) / reference))
        print(f"  {label:32s} {spread(bucket)['median'] * 1e6:7.1f} µs   {ratios['median']:5.2f} "
              f"({ratios['min']:.2f}–{ratios['max']:.2f})")
    print("two workers at once, each running the contiguous subtraction over L floats: its time against one alone")
    for floats, alone, threads, processes in at_once_rows(args.at_once_rounds):
        cells = [f"{kind} {spread(r)['median']:.2f} ({spread(r)['min']:.2f}–{spread(r)['max']:.2f})"
                 for kind, r in (("two threads", threads), ("two processes", processes))]
        print(f"  L = {floats:<6d} alone {spread(alone)['median'] / (AT_ONCE_FLOATS // floats) * 1e6:6.2f} µs a pass   "
              + "   ".join(cells))


if __name__ == "__main__":
    main()
