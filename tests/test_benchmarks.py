"""The A/B tool measures what it says: the base revision's ops, not the working tree's twice."""

import ast
import inspect
import os
import re
import subprocess
import sys

import pytest

import tinyddim.fastattn
import tinyddim.fastops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
def test_compare_ops_loads_the_base_revisions_speed_ups():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import compare_ops
    finally:
        sys.path.pop(0)
    base = compare_ops.load_base_ops("HEAD")
    for name, ours in (("fastops", tinyddim.fastops), ("fastattn", tinyddim.fastattn)):
        module = getattr(base, name)
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
