"""The A/B tool measures what it says: the base revision's ops, not the working tree's twice."""

import ast
import inspect
import os
import re
import subprocess
import sys

import pytest
from conftest import benchmark_module

import tinyddim.fastattn
import tinyddim.fastops
import tinyddim.winograd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
def test_compare_ops_loads_the_base_revisions_speed_ups():
    compare_ops = benchmark_module("compare_ops")
    base = compare_ops.load_base_ops("HEAD")
    for name, ours, module in (("fastops", tinyddim.fastops, base.fastops),
                               ("fastattn", tinyddim.fastattn, base.fastattn),
                               ("winograd", tinyddim.winograd, base.fastops.winograd)):
        assert module is not ours and module.__name__ == f"base_{name}"
        committed = subprocess.run(["git", "show", f"HEAD:tinyddim/{name}.py"], cwd=ROOT, capture_output=True,
                                   text=True, check=True).stdout
        functions = [node.name for node in ast.parse(committed).body if isinstance(node, ast.FunctionDef)]
        assert functions and all(getattr(module, f).__module__ == f"base_{name}" for f in functions)
        assert sorted(functions) == sorted(f for f, value in vars(module).items()
                                           if inspect.isfunction(value) and value.__module__ == f"base_{name}")


def test_layout_bound_finds_the_scatter_it_leaves_out_and_times_every_variant():
    """It runs (its grids from parity order equal `_parity_grids`, checked inside) and prints each figure."""
    pytest.importorskip("diffusers")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "layout_bound.py"), "--rounds", "1",
                           "--batch", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    labels = [re.split(r"\s{2,}", line.strip())[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert labels == ["as it is", "no split", "no split, no scatter", "split", "split from parity order", "scatter",
                      "scatter into parity order"]


@pytest.mark.parametrize("shape, out_channels, tiles, with_bias", [
    ((5, 16, 8, 6), 24, 256, True),   # 5 images of 12 tiles in blocks of 21: the last block short
    ((3, 32, 4, 4), 16, 4, False),    # one image per block
    ((2, 8, 16, 2), 8, 1, True),      # one tile column
])
def test_channels_last_winograd_equals_the_plain_conv(shape, out_channels, tiles, with_bias):
    """The channels-last conv that `channels_last_conv.py` times is the conv of `nn.conv2d`, on (B, H, W, C)."""
    import numpy as np

    from tinyddim import nn

    channels_last = benchmark_module("channels_last_conv")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    weight = rng.standard_normal((out_channels, shape[1], 3, 3), dtype=np.float32)
    bias = rng.standard_normal(out_channels, dtype=np.float32) if with_bias else None
    kernel = channels_last.winograd_kernel_channels_last(weight)
    got = channels_last.conv3x3_channels_last(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), kernel, bias,
                                              tiles)  # (B, H, W, C) in, (B, H, W, O) out
    expected = nn.conv2d(x, weight, bias, padding=1, fast=False)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_channels_last_conv_times_every_winograd_conv_of_the_forward():
    pytest.importorskip("diffusers")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "channels_last_conv.py"), "--rounds", "1",
                           "--batch", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    # the bundled forward's 9 distinct Winograd convs (its upsampling convs take fastops.upsample_conv)
    assert len(rows) == 9 and all("channels-last" in row and "torch" in row for row in rows)
    assert re.search(r"^totals over one forward: \(B, C, H, W\) [\d.]+ ms \(1\.00\), channels-last", done.stdout, re.M)


def test_numpy_passes_times_each_layout_and_leaves_numpys_buffer_as_it_was():
    """Each pass of `numpy_passes.py` is the subtraction of its operands, laid out as its label says, or the
    exp or division its label names; NumPy's buffer size is back as it was after an unbuffered pass; a smoke
    run prints every layout, with the contiguous pass as the reference, and the two-workers rows."""
    import numpy as np

    module = benchmark_module("numpy_passes")
    found = module.passes(np.random.default_rng(0))
    size = np.getbufsize()
    for label, fn, (a, b) in found:
        np.testing.assert_array_equal(fn(), np.asarray(a) - np.asarray(b), err_msg=label)
        assert np.getbufsize() == size, label
        if label.startswith(("per row", "strided")):
            run = int(label.split("L = ")[1].split(",")[0])
            assert a.shape[1] == run and a.flags.c_contiguous != label.startswith("strided"), label
            assert np.shape(b) == ((len(a), 1) if label.startswith("per row") else a.shape), label
    costlier = module.costlier_passes(np.random.default_rng(1))
    (exp_label, exp, (x,)), (divide_label, divide, (a, b)) = costlier
    assert (exp_label, divide_label) == ("exp", "divide")
    np.testing.assert_array_equal(exp(), np.exp(x))
    np.testing.assert_array_equal(divide(), a / b)
    seconds = module.timed_passes(1 << 10, 3)
    assert seconds > 0 and all(s > 0 for s in module.two_at_once("threads", 1 << 10, 3))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "numpy_passes.py"), "--rounds", "2",
                           "--at-once-rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("  ") and "L = " not in line[:8]]
    labels = [label for label, _, _ in found + costlier]
    assert [" ".join(words[:-4]) for words in lines] == labels
    assert lines[0][-2] == "1.00" and all(float(words[-2]) > 0 for words in lines)
    at_once = re.findall(r"^  L = (\d+) +alone +([\d.]+) µs a pass +two threads ([\d.]+) \(.*\) +two processes ([\d.]+) ",
                         done.stdout, re.M)
    assert [int(row[0]) for row in at_once] == list(module.AT_ONCE)
    assert all(float(value) > 0 for row in at_once for value in row[1:])


def test_processes_speed_times_both_ways_and_pytorch():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "processes_speed.py"), "--threads", "2",
                           "--batch", "4", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^bundled forward batch 4, 2 threads: PyTorch [\d.]+ .*worker processes [\d.]+ .*threads [\d.]+",
                     done.stdout, re.M), done.stdout
    assert re.search(r"^processes / threads [\d.]+ \(", done.stdout, re.M), done.stdout
