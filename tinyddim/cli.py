"""The `tinyddim` command: `tinyddim sample` and `tinyddim convert`.

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

    sample = commands.add_parser("sample", help="write a grid of DDIM samples to a PNG file")
    sample.add_argument("-n", "--num", type=int, default=16, help="number of images (default 16)")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps S (default 50)")
    sample.add_argument("--eta", type=float, default=0.0, help="η: 0 is deterministic DDIM (default 0)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--model", default=None, help="diffusers folder or converted .safetensors "
                                                      "(default: the bundled MNIST model)")
    sample.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sample.add_argument("-o", "--output", default="samples.png", help="PNG to write (default samples.png)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    convert = commands.add_parser("convert", help="pack a diffusers UNet folder into one .safetensors file")
    convert.add_argument("src", help="diffusers folder (flat, or a pipeline folder with unet/)")
    convert.add_argument("dst", help="output .safetensors file")
    convert.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def run_sample(args):
    from .pipelines import sample
    from .viz import image_grid

    _check_output(args.output, args.overwrite)
    if args.num < 1 or args.steps < 1 or args.eta < 0:
        raise ValueError("need -n >= 1, --steps >= 1 and --eta >= 0")
    images = sample(batch_size=args.num, num_inference_steps=args.steps, eta=args.eta, generator=args.seed,
                    output_type="np", model=args.model, device=args.device, progress=False)
    scale = max(1, 128 // images.shape[1])
    grid = image_grid(images, scale=scale)
    write_atomic(args.output, lambda path: grid.save(path, format="PNG"))
    print(f"wrote {len(images)} samples to {args.output}")


def run_convert(args):
    from .weights import convert

    if not args.dst.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors: {args.dst}")
    convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.dst}")


def _check_output(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder for the output: {folder}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        {"sample": run_sample, "convert": run_convert}[args.command](args)
    except (OSError, ValueError, TypeError, RuntimeError, ImportError) as err:
        print(f"tinyddim {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
