"""The `tinyddim` command: `tinyddim sample` (a grid, or with --out-dir a folder of PNGs), `tinyddim convert`
and `tinyddim fid`.

Errors in what the user gave (paths, options, files) print one line and exit with code 2; outputs are
written to a temporary name and renamed, and an existing output is replaced only with --overwrite.
"""

import argparse
import os
import sys

from .config import write_atomic


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line on stderr and exit code 2 (argparse would print the usage too)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser():
    parser = _Parser(prog="tinyddim", description="DDIM sampling in NumPy.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sample = commands.add_parser("sample", help="write a grid of DDIM samples to a PNG file, or with --out-dir "
                                                "one PNG per image to a folder (for FID)")
    sample.add_argument("-n", "--num", type=int, default=None, help="number of images in the grid (default 16)")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps S (default 50)")
    sample.add_argument("--eta", type=float, default=0.0, help="η: 0 is deterministic DDIM (default 0)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--model", default=None, help="diffusers folder or converted .safetensors "
                                                      "(default: the bundled MNIST model)")
    sample.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sample.add_argument("-o", "--output", default=None, help="grid PNG to write (default samples.png)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    folder = sample.add_argument_group("a folder of PNGs, one per image (tinyddim.sample_to_folder)")
    folder.add_argument("--num-images", type=int, default=None, help="N: images 0 … N−1")
    folder.add_argument("--out-dir", default=None, help="folder of 000000.png … and manifest.json; a second "
                                                        "run skips the images already there")
    folder.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    folder.add_argument("--shard", default=None, metavar="I/K", help="only blocks I, I+K, … of batch-size "
                                                                     "images (I counts from 0)")
    folder.add_argument("--dask", default=None, metavar="ADDRESS|local:N",
                        help="run the batches as tasks on a Dask scheduler, or on N local worker processes")
    folder.add_argument("--dask-timeout", type=float, default=10.0, help="seconds to reach the scheduler "
                                                                          "(default 10)")

    convert = commands.add_parser("convert", help="pack a diffusers UNet folder into one .safetensors file")
    convert.add_argument("src", help="diffusers folder (flat, or a pipeline folder with unet/)")
    convert.add_argument("dst", help="output .safetensors file")
    convert.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    fid = commands.add_parser("fid", help="Fréchet distance of 16x16 digits to the MNIST test digits (or PATH2)",
                              description="Print d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2}) of the digit "
                                          "features of PATH and PATH2 on the last line.")
    fid.add_argument("path", metavar="PATH", help="a folder of 16x16 PNG images, or an .npz of statistics (mu, sigma)")
    fid.add_argument("path2", metavar="PATH2", nargs="?",
                     help="the same (default: the MNIST test digits' statistics, shipped with tinyddim)")
    fid.add_argument("--save-stats", metavar="OUT.npz", help="also write PATH's statistics to OUT.npz")
    fid.add_argument("--overwrite", action="store_true", help="replace an existing --save-stats file")
    return parser


def run_sample(args):
    from .pipelines import sample
    from .viz import image_grid

    if args.out_dir is not None or args.num_images is not None:
        return run_sample_folder(args)
    args.num = 16 if args.num is None else args.num
    args.output = "samples.png" if args.output is None else args.output
    _check_output(args.output, args.overwrite)
    if args.num < 1 or args.steps < 1 or args.eta < 0:
        raise ValueError("need -n >= 1, --steps >= 1 and --eta >= 0")
    images = sample(batch_size=args.num, num_inference_steps=args.steps, eta=args.eta, generator=args.seed,
                    output_type="np", model=args.model, device=args.device, progress=False)
    scale = max(1, 128 // images.shape[1])
    grid = image_grid(images, scale=scale)
    write_atomic(args.output, lambda path: grid.save(path, format="PNG"))
    print(f"wrote {len(images)} samples to {args.output}")


def run_sample_folder(args):
    """`tinyddim sample --num-images N --out-dir DIR`: everything is checked before the first file is written."""
    from .folder import check_out_dir, parse_shard, pipeline_call, sample_to_folder
    from .pipelines import DDIMPipeline, default_pipeline

    if args.out_dir is None or args.num_images is None:
        raise ValueError("a folder run needs both --num-images N and --out-dir DIR")
    if args.num is not None or args.output is not None or args.overwrite:
        raise ValueError("-n, -o and --overwrite are for the grid; a folder run takes --num-images and --out-dir")
    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError(f"need --num-images >= 1 and --batch-size >= 1, got {args.num_images} and {args.batch_size}")
    parse_shard(args.shard)
    check_out_dir(args.out_dir)
    if args.dask is not None:
        from .distributed import import_distributed

        import_distributed()
    if args.model is None:
        pipe = default_pipeline(args.device)
    else:
        pipe = DDIMPipeline.from_pretrained(args.model, device=args.device)
    pipeline_call(pipe, args.steps, args.eta, None)  # bad --steps or --eta: an error before a cluster starts
    client = None
    if args.dask is not None:
        from .distributed import connect

        client = connect(args.dask, timeout=args.dask_timeout)
    try:
        result = sample_to_folder(args.out_dir, args.num_images, pipeline=pipe, num_inference_steps=args.steps,
                                  eta=args.eta, seed=args.seed, batch_size=args.batch_size, shard=args.shard,
                                  client=client)
    except KeyboardInterrupt:
        print("tinyddim sample: interrupted; the PNGs written so far are complete, and the same command "
              "resumes", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if client is not None:
            client.close()
    print(result)


def run_convert(args):
    from .weights import convert

    if not args.dst.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors: {args.dst}")
    convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.dst}")


def run_fid(args):
    from .fid import frechet_distance, mnist_test_statistics, save_statistics, statistics

    if args.save_stats:
        if not args.save_stats.endswith(".npz"):
            raise ValueError(f"--save-stats must end in .npz: {args.save_stats}")
        _check_output(args.save_stats, args.overwrite)
    mu1, sigma1 = statistics(args.path, progress=True)
    if args.save_stats:
        save_statistics(args.save_stats, mu1, sigma1, overwrite=args.overwrite)
        print(f"wrote the statistics of {args.path} to {args.save_stats}")
    reference = args.path2 or "the MNIST test digits"
    mu2, sigma2 = statistics(args.path2, progress=True) if args.path2 else mnist_test_statistics()
    if mu1.shape != mu2.shape:
        raise ValueError(f"{args.path} has {mu1.shape[0]} features, {reference} {mu2.shape[0]}")
    print(f"{frechet_distance(mu1, sigma1, mu2, sigma2):.6g}")


def _check_output(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder for the output: {folder}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        {"sample": run_sample, "convert": run_convert, "fid": run_fid}[args.command](args)
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as err:
        print(f"tinyddim {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
