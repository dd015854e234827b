"""A/B of the forward pass: the ops of a git revision against the working tree's, interleaved in one process.

    python benchmarks/compare_ops.py --base HEAD --threads 2 --batch 8
    python benchmarks/compare_ops.py --base HEAD --threads 1 --arch bundled --batch 64 --clock cpu

Loads `tinyddim/nn.py` as it is at --base, then times a forward pass round by round: PyTorch,
the UNet with the base ops, the UNet with the working tree's ops (the model file and `parallel.py` are the
working tree's in both). Separate benchmark runs drift by about ±0.1 in the ratio on a shared machine;
alternating the variants in one process is what makes a few-percent change visible.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

OPS = ("conv2d", "group_norm", "silu", "linear", "self_attention", "upsample_conv")


def load_base_ops(revision):
    """tinyddim/nn.py (and its speed-ups, tinyddim/fastops.py, fastattn.py and winograd.py, where the revision
    has them) at `revision`, imported as modules of their own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(name, source):  # its other imports are the working tree's
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(source.replace("from . import", "from tinyddim import").replace("from .", "from tinyddim."))
        spec = importlib.util.spec_from_file_location(name, f.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        os.unlink(f.name)
        return module

    def show(path):
        done = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    loaded = [load("base_nn", show("tinyddim/nn.py"))]
    for name in ("fastops", "fastattn", "winograd"):  # its speed-ups, where the revision has them
        source = show(f"tinyddim/{name}.py")
        users = [module for module in loaded if hasattr(module, name)]  # they look it up per call
        if source is not None and users:
            loaded.append(load(f"base_{name}", source))
            for module in users:
                setattr(module, name, loaded[-1])
    return loaded[0]


def composed(module, name):
    """An op that a revision's nn.py does not have yet, made of the ops it has: revisions up to 0201a28 ran
    upsample_conv as the conv of the upsampled image, and up to cb840e7 self_attention on (B, HW, C) tokens."""
    if name == "upsample_conv":
        return lambda x, weight, bias=None: module.conv2d(module.upsample_nearest(x), weight, bias, padding=1)
    if name != "self_attention":
        raise AttributeError(f"the base revision's nn.py has no {name}")

    def self_attention(h, heads, to_q, to_k, to_v, to_out):
        batch, channels = h.shape[:2]
        tokens = h.reshape(batch, channels, -1).swapaxes(1, 2)  # (B, C, H, W) -> (B, HW, C)
        q, k, v = (module.linear(tokens, **p).reshape(batch, -1, heads, channels // heads).swapaxes(1, 2)
                   for p in (to_q, to_k, to_v))  # (B, heads, HW, d) views
        out = module.attention(q, k, v).swapaxes(1, 2).reshape(batch, -1, channels)  # -> (B, HW, C)
        return module.linear(out, **to_out).swapaxes(1, 2).reshape(h.shape)  # -> (B, C, H, W)
    return self_attention


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet_speed import positive

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision whose tinyddim/nn.py is the baseline")
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--rounds", type=positive, default=9)
    parser.add_argument("--arch", default="cifar10", choices=("cifar10", "ddpm-256", "bundled"))
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="cpu: the process's CPU time (steadier on a busy machine; with 1 thread)")
    args = parser.parse_args()
    import time

    from unet_speed import forward_fns, models, round_times, set_threads, spread

    set_threads(args.threads)
    import numpy as np

    import tinyddim.nn as work
    import tinyddim.unet as unet_module

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    base = load_base_ops(args.base)
    torch_model, unet = models(args.arch)
    x = np.random.default_rng(1).standard_normal((args.batch,) + unet.sample_shape, dtype=np.float32)
    run_torch, run_ours = forward_fns(torch_model, unet, x)

    def with_ops(module):
        def run():
            for name in OPS:
                setattr(unet_module, name, getattr(module, name, None) or composed(module, name))
            return run_ours()
        return run

    expected = run_torch()
    for label, module in (("base", base), ("work", work)):
        print(f"{label}: max |diff| to PyTorch {np.abs(with_ops(module)() - expected).max():.1e}")
    times = round_times([run_torch, with_ops(base), with_ops(work)], args.rounds, clock=clock)
    t_torch, t_base, t_work = (spread(bucket)["median"] for bucket in times)
    paired = spread([w / b for b, w in zip(times[1], times[2])])  # each round's work / base: drifts cancel
    print(f"{args.arch} batch {args.batch}, {args.threads} threads, {args.clock} clock: PyTorch {t_torch * 1e3:.1f} ms, "
          f"base ({args.base}) {t_base * 1e3:.1f} ms ({t_base / t_torch:.3f}), "
          f"work {t_work * 1e3:.1f} ms ({t_work / t_torch:.3f}); work / base {t_work / t_base:.3f} "
          f"(round by round: median {paired['median']:.3f}, min {paired['min']:.3f}, max {paired['max']:.3f}; "
          f"fastest round of each: {min(times[2]) / min(times[1]):.3f})")

if __name__ == "__main__":
    main()
