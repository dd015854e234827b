"""The README's published sizes and speed table stay true."""

import re
from pathlib import Path

import pytest

from conftest import benchmark_module

ROOT = Path(__file__).resolve().parent.parent


def lines(*paths):
    return sum(len((ROOT / path).read_text().splitlines()) for path in paths)


def test_readme_states_the_sampler_and_unet_sizes_within_ten_percent():
    readme = (ROOT / "README.md").read_text()
    sampler = int(re.search(r"DDIM sampler \(`tinyddim/ddim.py`\) is about (\d+) lines", readme).group(1))
    unet = int(re.search(r"`tinyddim/nn.py`\) is about (\d+) lines", readme).group(1))
    assert abs(lines("tinyddim/ddim.py") - sampler) <= 0.1 * sampler
    assert abs(lines("tinyddim/unet.py", "tinyddim/nn.py") - unet) <= 0.1 * unet
    fast = int(re.search(r"speed-ups \(`tinyddim/fastops.py`\)\s+are about (\d+) lines", readme).group(1))
    assert abs(lines("tinyddim/fastops.py") - fast) <= 0.1 * fast
    for path in ("winograd", "fastattn"):
        stated = int(re.search(rf"\(`tinyddim/{path}.py`\)\s+(\d+)", readme).group(1))
        assert abs(lines(f"tinyddim/{path}.py") - stated) <= 0.1 * stated, path
    threads = int(re.search(r"threads\s+\(`tinyddim/parallel.py`\) (\d+),", readme).group(1))
    assert abs(lines("tinyddim/parallel.py") - threads) <= 0.1 * threads
    workers = int(re.search(r"processes\s+\(`tinyddim/processes.py`\) (\d+)\.", readme).group(1))
    assert abs(lines("tinyddim/processes.py") - workers) <= 0.1 * workers


def test_readme_maps_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reading the code"):readme.index("## Set up")]
    for path in (ROOT / "tinyddim").glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert f"`tinyddim/{path.name}`" in section, f"README's Reading the code has no row for {path.name}"
    assert readme.index("## Reading the code") < readme.index("## Set up")  # right after the first example


def test_no_library_file_is_long_or_prints():
    for path in (ROOT / "tinyddim").glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) < 400, path
        if path.name != "cli.py":
            assert not re.search(r"^\s*print\(", text, re.M), path


@pytest.mark.parametrize("runs", ["benchmark_{}", "benchmark_avx2_{}"])
def test_readme_speed_table_is_the_one_its_benchmark_runs_print(runs):
    """Every row of the README's speed tables (one per machine) is what `unet_speed.py --table` makes of the
    committed runs (docs/benchmark_*.json), so a new run changes the table and the text that reads it."""
    paths = [ROOT / "docs" / (runs.format(threads) + ".json") for threads in ("1thread", "2threads")]
    printed = benchmark_module("unet_speed").table(paths)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Speed"):readme.index("## How exact")]
    rows = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(rows) > 2 and "\n".join(rows) in section
    machine = printed.splitlines()[0].split(". Ratio")[0].removeprefix("Measured on ")
    assert " ".join(machine.split()) in " ".join(section.split()), machine
