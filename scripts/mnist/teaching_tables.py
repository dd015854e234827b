"""The paper's two tables for the bundled MNIST model: about 14 minutes on two cores (OMP_NUM_THREADS=2).

(a) Table 2: DDIM inversion. N real MNIST test digits (resized to the model's size as in training: `tinyddim.mnist`) are
    encoded with `pipe.invert` and decoded with η = 0 and the same S steps; the per-pixel RMSE on a [0, 1]
    scale is reported for S in (10, 20, 50, 100). Encoder and decoder are the η = 0 ODE (DDIM Eq. 14), so the
    decoder does not clip x̂_0 (`clip_sample=False`); --also-clipped adds a row with the model's own config.
    Both ways step over leading spacing (--inversion-spacing). The bundled model samples with trailing spacing,
    but there inversion's last step lands at t = 999, where √ᾱ ≈ 5e-5, and decoding divides the encoder's ε
    error by that: the row of --also-spacing (trailing) shows the result.
(b) Table 1: sample quality against η ∈ {0, 0.5, 1}, DDPM's larger variance σ̂, and S, all from the same x_T
    (`tinyddim.explore.eta_sweep`). The score is conf_ratio from scripts/mnist/mnist_quality.py: the fraction of
    samples its digit classifier labels with confidence > 0.9, over the same fraction for real test digits
    (higher is better; 1 is as clear as real digits). The full mnist_quality reports go to the JSON file.

Usage:
    python scripts/mnist/teaching_tables.py --classifier RUN_DIR/classifier.pt \
        --out docs/teaching_tables            # writes docs/teaching_tables.{json,md}
    [--data-dir DIR] [--model PATH] [--n-invert 256] [--n-samples 256] [--steps 10 20 50 100] [--also-clipped]
    [--inversion-spacing leading] [--also-spacing trailing]

The classifier is read from --classifier, or trained (a few minutes) and cached there if the file is missing.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_quality  # noqa: E402

import tinyddim as td  # noqa: E402
from tinyddim.explore import eta_sweep, reconstruction_error  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def inversion_table(pipe, digits, steps, also_clipped, spacing, also_spacing):
    """Rows of {S: error} for digits (N, H, W, 1) in [0, 1], over `spacing`: the RMSE over all pixels ("ode"),
    and the median of the digits' own RMSEs ("ode_median": a few digits that decode to another shape weigh on
    the first); "clip_sample" with the model's own clipping decoder if asked; "ode_<also_spacing>", the RMSE
    over that other spacing, if given."""
    per_image = reconstruction_error(pipe, digits, steps, per_image=True, timestep_spacing=spacing)
    table = {"ode": {S: float(np.sqrt(np.mean(e ** 2))) for S, e in per_image.items()},
             "ode_median": {S: float(np.median(e)) for S, e in per_image.items()}}
    if also_clipped:
        table["clip_sample"] = reconstruction_error(pipe, digits, steps, clip_sample=True, timestep_spacing=spacing)
    if also_spacing:
        table[f"ode_{also_spacing}"] = reconstruction_error(pipe, digits, steps, timestep_spacing=also_spacing)
    return table


def quality_table(pipe, data_dir, classifier, etas, steps, n_samples, seed):
    """eta_sweep scored by conf_ratio; also returns the full mnist_quality report of every cell."""
    reports = []

    def score(images):  # images (B, H, W, 1) in [0, 1]
        report = mnist_quality.score_samples(images[..., 0], data_dir, classifier)
        reports.append(report)
        return report["conf_ratio"]

    table = eta_sweep(pipe, score, etas=etas, steps=steps, batch_size=n_samples, seed=seed)
    return table, dict(zip(table, reports))  # eta_sweep fills the table in the order it scores


def markdown(inversion, quality, n_invert, n_samples, model, spacing):
    steps_2 = list(next(iter(inversion.values())))
    lines = [f"Model: `{model}`", "",
             f"**Table 2 (inversion)**: per-pixel RMSE ([0, 1] scale) of {n_invert} MNIST test digits, "
             f"encoded with DDIM inversion and decoded with η = 0 in S steps of {spacing} spacing.", "",
             "| | " + " | ".join(f"S = {S}" for S in steps_2) + " |",
             "|---|" + "---:|" * len(steps_2)]
    names = {"ode": "RMSE (η = 0 ODE, no clipping)", "ode_median": "median of the digits' RMSE (same runs)",
             "clip_sample": "RMSE (decoder with clip_sample)"}
    for key, row in inversion.items():
        label = names.get(key) or f"RMSE with {key[len('ode_'):]} spacing instead (ends at t = 999)"
        lines.append(f"| {label} | " + " | ".join(f"{row[S]:.4f}" for S in steps_2) + " |")
    rows = list(dict.fromkeys(r for r, _ in quality))
    steps_1 = sorted({S for _, S in quality})
    lines += ["", f"**Table 1 (η and S)**: conf_ratio of {n_samples} samples from one x_T "
              "(scripts/mnist_quality.py; higher is better, 1 = as clear as real test digits).", "",
              "| | " + " | ".join(f"S = {S}" for S in steps_1) + " |", "|---|" + "---:|" * len(steps_1)]
    for row in rows:
        label = row if isinstance(row, str) else f"η = {row:g}"
        lines.append(f"| {label} | " + " | ".join(f"{quality[(row, S)]:.3f}" for S in steps_1) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: see tinyddim.mnist)")
    parser.add_argument("--classifier", required=True, help="mnist_quality classifier cache (trained if missing)")
    parser.add_argument("--model", default=None, help="diffusers folder or converted file (default: bundled)")
    parser.add_argument("--n-invert", type=int, default=256, help="test digits for Table 2 (default 256)")
    parser.add_argument("--n-samples", type=int, default=256, help="samples per cell of Table 1 (default 256)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100], help="values of S")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="values of η")
    parser.add_argument("--also-clipped", action="store_true", help="Table 2 also with the model's clip_sample")
    parser.add_argument("--inversion-spacing", default="leading",
                        help="Table 2's timestep spacing (default leading: trailing ends at t = 999, see below)")
    parser.add_argument("--also-spacing", default="trailing", help="a Table 2 row with this spacing ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md (e.g. docs/teaching_tables)")
    args = parser.parse_args()
    if not td.mnist.available(args.data_dir):
        parser.error(f"no MNIST files in {args.data_dir or 'the default folders (see tinyddim.mnist)'}")

    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = td.default_pipeline() if args.model is None else td.DDIMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.sample_shape[-1]
    model = args.model or os.path.relpath(td.pipelines.BUNDLED_MODEL, REPO)

    test_digits, _ = mnist_quality.load_mnist(args.data_dir, "test", size)  # resized as in training, [0, 1]
    digits = test_digits[: args.n_invert, :, :, None]                       # (N, H, W, 1)
    inversion = inversion_table(pipe, digits, args.steps, args.also_clipped, args.inversion_spacing, args.also_spacing)
    t_inversion = time.perf_counter() - start

    classifier, accuracy = mnist_quality.get_classifier(args.data_dir, size, args.classifier)
    quality, reports = quality_table(pipe, args.data_dir, classifier, tuple(args.etas), tuple(args.steps),
                                     args.n_samples, args.seed)
    seconds = time.perf_counter() - start

    text = markdown(inversion, quality, args.n_invert, args.n_samples, model, args.inversion_spacing)
    print(text)
    print(f"classifier test accuracy {accuracy:.4f}; {t_inversion:.0f} s for Table 2, {seconds:.0f} s in all")
    if args.out:
        result = {"model": model, "n_invert": args.n_invert, "n_samples": args.n_samples, "seed": args.seed,
                  "inversion_spacing": args.inversion_spacing,
                  "classifier_test_acc": accuracy, "seconds": round(seconds, 1),
                  "table2_rmse": {key: {str(S): e for S, e in row.items()} for key, row in inversion.items()},
                  "table1_conf_ratio": [{"row": str(r), "S": S, "conf_ratio": v} for (r, S), v in quality.items()],
                  "table1_reports": [{"row": str(r), "S": S, **rep} for (r, S), rep in reports.items()]}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False, default=lambda v: v.item())
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
