"""The floor of tinyddim's Fréchet distance, and the bundled model's distance; writes docs/fid_floor.json.

The floor is what real digits score against real digits at the sizes a measurement uses: n random test
digits against the other 10,000 − n (disjoint), over `--splits` random splits, for n in `--sizes` (500, 1,000
and 2,000: the sizes of the Table 1 cells and of its DDPM anchor).
Training digits are no floor (the feature network was trained on them), but the bundled diffusion model
learnt them too, so the script also scores 500 random training digits against the shipped statistics of
all 10,000 test digits. Last, `--samples` images of the bundled model (DDIM, η = 0) at each of `--steps`
against the same shipped statistics.

    python scripts/mnist/fid_floor.py                       # several minutes on one core, most of it sampling
    python scripts/mnist/fid_floor.py --samples 0           # the floor only (seconds; keeps the file's samples)
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tinyddim  # noqa: E402
from tinyddim.config import write_atomic  # noqa: E402
from tinyddim.features import digit_features, load_features  # noqa: E402
from tinyddim.fid import feature_statistics, fid_against_mnist, frechet_distance, mnist_test_statistics  # noqa: E402
from tinyddim.mnist import load_mnist  # noqa: E402


def summary(values):
    values = [round(float(v), 4) for v in values]
    return {"mean": round(float(np.mean(values)), 3), "std": round(float(np.std(values, ddof=1)), 3),
            "values": values}


def features_of(split):
    images, _ = load_mnist(split, size=16)
    params = load_features()
    return np.concatenate([digit_features(params, images[i : i + 500]) for i in range(0, len(images), 500)])


def floor(test, sizes, splits):
    """{n: d² of n test digits against the other len(test) − n, over random splits}."""
    result = {}
    for n in sizes:
        values = []
        for seed in range(splits):
            order = np.random.default_rng(seed).permutation(len(test))
            values.append(frechet_distance(*feature_statistics(test[order[:n]]),
                                           *feature_statistics(test[order[n:]])))
        result[str(n)] = summary(values)
    return result


def write_report(report, path):
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=10, help="random splits per size (default 10)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000], help="floor sizes n")
    parser.add_argument("--samples", type=int, default=500, help="bundled-model samples per run (0: none)")
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 50], help="DDIM steps S (default 10 50)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="sampling seeds (default 0)")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "fid_floor.json"))
    args = parser.parse_args()

    test, train = features_of("test"), features_of("train")
    report = {
        "what": "squared Fréchet distance d² of tinyddim's digit features (tinyddim.fid), mean ± std (ddof 1)",
        "test_vs_other_test_digits": floor(test, args.sizes, args.splits),
        "train_500_vs_mnist_test_stats": summary(
            [frechet_distance(*feature_statistics(train[np.random.default_rng(seed).permutation(len(train))[:500]]),
                              *mnist_test_statistics()) for seed in range(args.splits)]),
        "bundled_samples_vs_mnist_test_stats": {},
    }
    if not args.samples and Path(args.output).is_file():  # the floor alone: keep the samples already scored
        kept = json.loads(Path(args.output).read_text(encoding="utf-8"))
        report["bundled_samples_vs_mnist_test_stats"] = kept.get("bundled_samples_vs_mnist_test_stats", {})
        report["samples_command"] = kept.get("samples_command", kept.get("command"))
    words = lambda values: " ".join(map(str, values))
    report["command"] = (f"python scripts/mnist/fid_floor.py --splits {args.splits} --sizes {words(args.sizes)} "
                         f"--samples {args.samples} --steps {words(args.steps)} --seeds {words(args.seeds)}")
    print(json.dumps(report, indent=1, ensure_ascii=False))
    write_report(report, args.output)
    for steps in args.steps if args.samples else []:
        values = []
        for seed in args.seeds:
            start = time.time()
            images = tinyddim.sample(batch_size=args.samples, num_inference_steps=steps, generator=seed,
                                     output_type="np", progress=False)
            values.append(round(fid_against_mnist(images), 4))
            print(f"S={steps} seed {seed}: d² {values[-1]:.3f} ({time.time() - start:.0f} s)")
            report["bundled_samples_vs_mnist_test_stats"][f"S={steps}"] = {
                "n": args.samples, "eta": 0.0, "seeds": args.seeds[: len(values)], "values": values}
            write_report(report, args.output)  # after each run: a long run stopped early keeps what it has
    print(f"wrote {os.path.relpath(args.output, ROOT)}")


if __name__ == "__main__":
    main()
