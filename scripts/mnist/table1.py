"""The DDIM paper's Table 1 for the bundled model: a Fréchet distance against S, η and the timestep spacing.

Cells (each from the same x_T per image index: image k of every cell starts from default_rng([seed, k])):

    leading and trailing spacing   η ∈ {0, 0.2, 0.5, 1} and σ̂ (DDPM's larger variance), S ∈ {10, 20, 50, 100}
    the paper's quadratic rule     η = 0, S ∈ {10, 20, 50, 100} (`tinyddim.quadratic_timesteps`)
    DDPM over all 1,000 steps      the slow anchor (variance β̃_t, the bundled config)

Each cell is a folder of PNGs made by `tinyddim.sample_to_folder` under --state (outside the repository):
the run can be stopped at any moment and started again, and it makes only what is missing. The distance
of each finished cell is the Fréchet distance between the features (`tinyddim.fid`) of its images and the
shipped statistics of the 10,000 MNIST test digits. Cells run cheapest first (S = 10 before S = 100; DDPM
last), so a partial run still fills whole rows of S.

    python scripts/mnist/table1.py --state STATE_DIR --out docs/table1      # writes table1.{json,md,png}
    [--n-images 2000] [--ddpm-images 1000] [--batch-size 250] [--steps 10 20] [--report-only]
    [--resume-from docs/table1.json] [--only 'leading-S50-eta0' 'trailing-S50-*'] [--readme README.md]
    [--dask local:2]    # the cells' images on Dask workers (the same PNG bytes; on 2 cores, about 20% faster)

--readme puts OUT.md between the README's `<!-- table1 -->` and `<!-- /table1 -->` lines (tests/test_table1.py
checks that the two agree).

A lost STATE (a new machine) need not redo finished cells: --resume-from takes the distances of the cells
an earlier run committed (its OUT.json, same seed and image counts) as finished, and makes only the rest.

Wall time. The grid runs for hours, beside other work, so its own clock says little. `--calibrate` times
the bundled model's sampling on a quiet machine (one batch of --batch-size images over 10 DDIM steps,
rounds, min / median / max) and keeps the seconds per image per step in STATE/calibration.json; a cell's
wall time is then S x that x its images (every sampler here costs one UNet evaluation per step; the step
itself is negligible). Without a calibration, the grid's own measured time is reported.
"""

import argparse
import fnmatch
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import tinyddim as td
from tinyddim.config import write_atomic
from tinyddim.distributed import connect
from tinyddim.explore import TABLE1_ROWS, table1_cell

STEPS = (10, 20, 50, 100)
SPACINGS = ("leading", "trailing")
FLOOR = Path(__file__).resolve().parents[2] / "docs" / "fid_floor.json"


def cells(steps, n_images, ddpm_images):
    """[(name, description, n, builder)] in the order they are made: by S, then spacing and row; DDPM last."""
    plan = []
    for S in steps:
        for spacing in SPACINGS:
            for row in TABLE1_ROWS:
                label = "sigma_hat" if row == "σ̂" else f"eta{row:g}"
                plan.append((f"{spacing}-S{S}-{label}", dict(sampler="DDIM" if row != "σ̂" else "σ̂", row=str(row),
                             spacing=spacing, S=S), n_images,
                             lambda pipe, row=row, S=S, spacing=spacing: table1_cell(pipe, row, S, spacing)))
        plan.append((f"quadratic-S{S}-eta0", dict(sampler="DDIM", row="0", spacing="quadratic", S=S,
                                                  evaluations=len(td.quadratic_timesteps(S))), n_images,
                     lambda pipe, S=S: table1_cell(pipe, 0.0, S, UNUSED_SPACING, td.quadratic_timesteps(S))))
    plan.append(("ddpm-S1000", dict(sampler="DDPM", row="DDPM", spacing="all", S=1000), ddpm_images,
                 lambda pipe: table1_cell(pipe, "DDPM", 1000, UNUSED_SPACING)))
    return plan


# A list of timesteps, or all 1,000 steps, leaves the spacing no say; it is still pinned, so that these cells'
# configs (kept in their folders' manifests) do not change with the bundled model's default spacing.
UNUSED_SPACING = "leading"


def cpu_name():
    """The CPU's model name and widest vector extension (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            name = value.strip() if key.strip() == "model name" else name
            flags = set(value.split()) if key.strip() == "flags" else flags
    except OSError:
        pass
    return name + (", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else "")


def read(path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def write_json(path, value):
    text = json.dumps(value, indent=1, ensure_ascii=False)
    write_atomic(str(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# the keys of a cell's result file, as run_cell and with_anchor_distance write it
RESULT_KEYS = ("n", "distance", "seconds_per_image", "threads", "anchor_n", "distance_at_anchor_n")


def adopt(state, committed, n_images, ddpm_images, seed):
    """Write the committed JSON's finished cells into STATE/results (where missing); their names, in order."""
    found = read(Path(committed), {})
    if (found.get("seed"), found.get("n_images"), found.get("ddpm_images")) != (seed, n_images, ddpm_images):
        raise SystemExit(f"--resume-from {committed}: made with another seed or image count; not adopted")
    adopted = []
    for cell in found.get("cells", []):
        path = state / "results" / f"{cell['name']}.json"
        if not path.is_file():
            write_json(path, {key: cell[key] for key in RESULT_KEYS if key in cell})
            adopted.append(cell["name"])
    if isinstance(found.get("wall_time"), dict) and not (state / "calibration.json").is_file():
        write_json(state / "calibration.json", found["wall_time"])  # until --calibrate measures this machine
    return adopted


def run_cell(state, name, n, build, pipe, batch_size, seed, client=None, anchor_n=None):
    """Make the cell's missing images, add the time to its log, and compute its distance once complete;
    with anchor_n < n, also the distance of its first anchor_n images (the DDPM anchor's sample size)."""
    folder, timing_path, result_path = state / "cells" / name, state / "timing" / f"{name}.json", \
        state / "results" / f"{name}.json"
    result = read(result_path)
    if result is not None and result["n"] == n:
        return with_anchor_distance(result, folder, anchor_n, result_path)
    pipeline, call = build(pipe)
    made = td.sample_to_folder(folder, n, pipeline=pipeline, seed=seed, batch_size=batch_size, client=client, **call)
    timing = read(timing_path, {"seconds": 0.0, "images": 0, "threads": []})
    if made.written:
        timing["seconds"] += made.seconds
        timing["images"] += made.written
        threads = td.parallel.cpu_threads() if client is None else \
            sum(worker["nthreads"] for worker in client.scheduler_info()["workers"].values())  # all workers'
        timing["threads"] = sorted(set(timing["threads"]) | {threads})
        write_json(timing_path, timing)
    mu, sigma = td.fid.folder_statistics(folder)
    result = {"n": n, "distance": td.frechet_distance(mu, sigma, *td.fid.mnist_test_statistics()),
              "seconds_per_image": timing["seconds"] / max(timing["images"], 1), "threads": timing["threads"]}
    write_json(result_path, result)
    return with_anchor_distance(result, folder, anchor_n, result_path)


def with_anchor_distance(result, folder, anchor_n, result_path):
    """The result with `distance_at_anchor_n`: the distance of images 0 … anchor_n − 1 alone (d² falls with n,
    so a cell compares with the DDPM anchor at the anchor's size); computed once, where the images exist."""
    if anchor_n is None or anchor_n >= result["n"] or "distance_at_anchor_n" in result:
        return result
    if not folder.is_dir() or len(td.fid.png_files(folder)) < anchor_n:
        return result  # adopted from a committed table, images not here: left out
    mu, sigma = td.fid.folder_statistics(folder, limit=anchor_n)
    result = {**result, "anchor_n": anchor_n,
              "distance_at_anchor_n": td.frechet_distance(mu, sigma, *td.fid.mnist_test_statistics())}
    write_json(result_path, result)
    return result


def calibrate(state, pipe, batch_size, seed, rounds=3):
    """Seconds per image per step of the bundled model's DDIM sampling at this batch size and thread count."""
    pipeline, call = table1_cell(pipe, 0.0, 10)
    generators = lambda: [np.random.default_rng([seed, k]) for k in range(batch_size)]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        pipeline(batch_size=batch_size, generator=generators(), output_type="np", progress=False, **call)
        times.append((time.perf_counter() - start) / (batch_size * 10))
    result = {"seconds_per_image_step": float(np.median(times)), "min": min(times), "max": max(times),
              "batch_size": batch_size, "threads": td.parallel.cpu_threads(), "rounds": rounds,
              "cpu": cpu_name(), "numpy": np.__version__}
    write_json(state / "calibration.json", result)
    return result


def wall_times(results, plan, calibration):
    """Each finished cell's seconds per image: S x the calibrated cost of a step, else the grid's own clock."""
    for name, info, _, _ in plan:
        if name in results and calibration:
            steps = info.get("evaluations", info["S"])  # the quadratic list drops repeats: fewer than S at S ≥ 30
            results[name]["seconds_per_image"] = steps * calibration["seconds_per_image_step"]
    return results


def grid(results, plan, key="distance"):
    """Markdown table lines of results[cell][key]: one row per sampler and spacing, one column per S."""
    steps = sorted({info["S"] for _, info, _, _ in plan if info["S"] != 1000})
    lines = ["| spacing | sampler | " + " | ".join(f"S = {S}" for S in steps) + " |",
             "| --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    rows = {}
    for name, info, _, _ in plan:
        if info["S"] != 1000:
            rows.setdefault((info["spacing"], info["row"]), {})[info["S"]] = results.get(name, {}).get(key)
    for (spacing, row), by_S in rows.items():
        label = "σ̂" if row == "σ̂" else f"η = {float(row):g}"
        cells_text = [f"{by_S[S]:.2f}" if by_S.get(S) is not None else "–" for S in steps]
        lines.append(f"| {spacing} | {label} | " + " | ".join(cells_text) + " |")
    return lines


def table(results, plan, floor):
    """The Markdown report: the grid, DDPM, the grid at DDPM's sample size, wall times, the metric's floor."""
    lines = grid(results, plan)
    ddpm = results.get("ddpm-S1000")
    lines.append("")
    lines.append(f"DDPM over all 1,000 steps: {ddpm['distance']:.2f} ({ddpm['n']} images)" if ddpm
                 else "DDPM over all 1,000 steps: not computed yet")
    anchored = {name: result for name, result in results.items() if "distance_at_anchor_n" in result}
    if anchored:
        anchor_n = next(iter(anchored.values()))["anchor_n"]
        lines += ["", f"The same cells at DDPM's sample size (each cell's first {anchor_n:,} images; d² falls "
                  f"with n, so compare DDPM with these):", ""] + grid(anchored, plan, "distance_at_anchor_n")
    seconds = {}  # S -> seconds per 1,000 images of a leading/trailing cell (every row at one S costs the same)
    for name, info, _, _ in plan:
        if name in results and info["spacing"] != "quadratic":
            seconds.setdefault(info["S"], results[name]["seconds_per_image"] * 1000)
    if seconds:
        lines.append("")
        lines.append("Sampling time per 1,000 images: " + "; ".join(
            f"S = {S}: {t:,.0f} s" + (f" ({seconds[1000] / t:.0f}x faster than DDPM)" if 1000 in seconds and S != 1000
                                      else "") for S, t in sorted(seconds.items())) + ".")
    if floor:
        lines.append("")
        lines.append("The metric's floor (disjoint subsets of the test digits): "
                     + "; ".join(f"{k} images: {v['mean']:.2f} ± {v['std']:.2f}" for k, v in floor.items()))
    return "\n".join(lines) + "\n"


README_MARKERS = ("<!-- table1 -->\n", "<!-- /table1 -->\n")


def with_table(readme, text):
    """The README with `text` between its two marker lines (an error if they are missing)."""
    start, end = README_MARKERS
    if start not in readme or end not in readme:
        raise SystemExit(f"--readme: the README has no {start.strip()} ... {end.strip()} lines")
    before, rest = readme.split(start, 1)
    return before + start + text + end + rest.split(end, 1)[1]


def figure(results, plan, path, floor=None):
    """Distance against S (one line per sampler and spacing) and against wall time per 1,000 images, with
    DDPM's distance and the metric's floor at each sample size used (d² falls with n)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {}
    for name, info, _, _ in plan:
        if info["S"] != 1000 and name in results:
            series.setdefault((info["spacing"], info["row"]), []).append((info["S"], results[name]))
    styles = {"leading": "-", "trailing": "--", "quadratic": ":"}  # the spacing: the line; the row: the colour
    colours = {"0.0": "C0", "0.2": "C1", "0.5": "C2", "1.0": "C3", "σ̂": "C4", "0": "k"}
    for (spacing, row), points in series.items():
        points.sort(key=lambda point: point[0])
        label = f"{spacing}, " + ("σ̂" if row == "σ̂" else f"η = {float(row):g}")
        S, distance = [p[0] for p in points], [p[1]["distance"] for p in points]
        seconds = [p[1]["seconds_per_image"] * 1000 for p in points]
        style = dict(linestyle=styles[spacing], marker="o", color=colours.get(row, "C5"))
        by_steps.plot(S, distance, label=label, **style)
        by_time.plot(seconds, distance, **style)
    ddpm = results.get("ddpm-S1000")
    if ddpm:
        by_steps.axhline(ddpm["distance"], color="k", lw=0.8, label=f"DDPM, 1,000 steps ({ddpm['n']:,} images)")
        by_time.plot([ddpm["seconds_per_image"] * 1000], [ddpm["distance"]], "k*", ms=10)
    sizes = {result["n"] for result in results.values()}
    for n, stats in (floor or {}).items():
        if int(n) in sizes:
            for ax in (by_steps, by_time):
                ax.axhline(stats["mean"], color="0.6", lw=0.8, ls="-.", label=f"floor at {int(n):,} images"
                           if ax is by_steps else None)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    for ax in (by_steps, by_time):
        ax.set_xscale("log")
        ax.set_yscale("log")  # the rows span a factor of 10 at S = 10
        ax.set_ylabel("Fréchet distance to MNIST test digits ↓")
        low, high = ax.get_ylim()
        ax.set_yticks([v for v in (1, 2, 3, 5, 10, 20, 40, 100) if low <= v <= high])
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    by_time.xaxis.set_major_formatter(plain)
    by_time.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    steps = sorted({info["S"] for _, info, _, _ in plan if info["S"] != 1000})
    by_steps.set_xticks(steps, [str(S) for S in steps])
    by_steps.minorticks_off()
    by_steps.set_xlabel("steps S")
    by_time.set_xlabel("sampling seconds per 1,000 images")
    by_steps.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    write_atomic(str(path), lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="folder for the cells' images and results (outside the repo)")
    parser.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png (e.g. docs/table1)")
    parser.add_argument("--n-images", type=int, default=2000, help="images per cell (default 2000)")
    parser.add_argument("--ddpm-images", type=int, default=1000, help="images for DDPM over 1,000 steps")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="values of S (default all)")
    parser.add_argument("--no-ddpm", action="store_true", help="leave out DDPM over all 1,000 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="write the tables from finished cells only")
    parser.add_argument("--calibrate", action="store_true", help="time the sampler (on a quiet machine) first")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="make only the cells whose names match these patterns (fnmatch), e.g. '*-S50-eta0'")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="sample on Dask workers: tcp://HOST:PORT, or local:N single-thread processes")
    parser.add_argument("--readme", default=None, help="also put the table into this README, between its markers")
    parser.add_argument("--resume-from", default=None, help="an earlier OUT.json: its cells count as finished")
    args = parser.parse_args()
    state = Path(args.state)
    for sub in ("cells", "timing", "results"):
        (state / sub).mkdir(parents=True, exist_ok=True)

    if args.resume_from:
        adopted = adopt(state, args.resume_from, args.n_images, args.ddpm_images, args.seed)
        print(f"adopted {len(adopted)} finished cells from {args.resume_from}", flush=True)
    plan = cells(args.steps, args.n_images, args.ddpm_images)
    if args.no_ddpm:
        plan = [cell for cell in plan if cell[1]["S"] != 1000]
    if args.only:
        plan = [cell for cell in plan if any(fnmatch.fnmatch(cell[0], pattern) for pattern in args.only)]
        if not plan:
            parser.error(f"--only {' '.join(args.only)}: no cell of the grid has such a name")
    pipe = td.default_pipeline()
    client = None if args.dask is None or args.report_only else connect(args.dask)
    if args.calibrate:
        print("calibration:", calibrate(state, pipe, args.batch_size, args.seed), flush=True)
    results = {}
    for name, info, n, build in plan:
        if args.report_only:
            found = read(state / "results" / f"{name}.json")
            if found is not None and found["n"] == n:
                results[name] = with_anchor_distance(found, state / "cells" / name, args.ddpm_images,
                                                     state / "results" / f"{name}.json")
            continue
        start = time.perf_counter()
        results[name] = run_cell(state, name, n, build, pipe, args.batch_size, args.seed, client, args.ddpm_images)
        print(f"{name}: distance {results[name]['distance']:.3f} over {n} images "
              f"({time.perf_counter() - start:.0f} s this run)", flush=True)

    if args.out:
        floor = read(FLOOR, {}).get("test_vs_other_test_digits", {})
        calibration = read(state / "calibration.json")
        done = wall_times({name: dict(results[name]) for name, *_ in plan if name in results}, plan, calibration)
        text = (f"**Table 1, reproduced** on the bundled model: Fréchet distance (`tinyddim.fid`, features of "
                f"the shipped digit network) of {args.n_images} samples per cell against the 10,000 MNIST test "
                f"digits; lower is better. {len(done)} of {len(plan)} cells computed.\n\n" + table(done, plan, floor))
        if calibration:
            text += (f"\nWall time: S x {calibration['seconds_per_image_step'] * 1000:.2f} ms per image per step "
                     f"(min {calibration['min'] * 1000:.2f}, max {calibration['max'] * 1000:.2f} over "
                     f"{calibration['rounds']} rounds), timed by `--calibrate` at batch {calibration['batch_size']} "
                     f"with {calibration['threads']} threads on {calibration['cpu']}, NumPy {calibration['numpy']}.\n")
        write_json(Path(args.out + ".json"), {
            "cells": [{"name": name, **info, **done[name]} for name, info, _, _ in plan if name in done],
            "planned": len(plan), "n_images": args.n_images, "ddpm_images": args.ddpm_images, "seed": args.seed,
            "wall_time": calibration or "the grid's own clock (no calibration)",
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "numpy": np.__version__}})
        write_atomic(args.out + ".md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        if done:
            figure(done, plan, Path(args.out + ".png"), floor)
        if args.readme:
            write_atomic(args.readme, lambda tmp: Path(tmp).write_text(
                with_table(Path(args.readme).read_text(encoding="utf-8"), text), encoding="utf-8"))
        print(text)


if __name__ == "__main__":
    main()
