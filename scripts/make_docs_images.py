"""Write the README's pictures, one per notebook, to docs/ (small PNGs, from the library's own plot helpers).

    python scripts/make_docs_images.py [--out docs] [--model PATH]

Uses the bundled model (or --model) on the CPU; takes a few seconds. Rerun after the bundled model changes.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402

import numpy as np  # noqa: E402

import tinyddim as td  # noqa: E402
import tinyddim.nn  # noqa: E402,F401  (td.nn)
from tinyddim.explore import interpolation  # noqa: E402

MAX_BYTES = 100_000


def save_figure(fig, path, dpi=72):
    fig.savefig(path, dpi=dpi)
    return path


def save_image(image, path):
    image.save(path, optimize=True)
    return path


def embedding_figure(config):
    """The sinusoidal time embedding of the UNet (notebook 03)."""
    from matplotlib.figure import Figure

    ts = np.arange(61)  # every t: the fastest channels turn over every 2π ≈ 6 steps, a coarser grid aliases them
    features = td.nn.timestep_embedding(ts, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
    fig = Figure(figsize=(6, 2.4), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(features.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest",
                      extent=(-0.5, len(ts) - 0.5, features.shape[1] - 0.5, -0.5))
    ax.set(xlabel="t", ylabel="channel", title="UNet time embedding: timestep_embedding(t), t = 0 … 60")
    fig.colorbar(shown, ax=ax)
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"))
    parser.add_argument("--model", default=None, help="diffusers folder or converted file (default: bundled)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731

    pipe = td.default_pipeline() if args.model is None else td.DDIMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(0).standard_normal((16,) + pipe.unet.sample_shape, dtype=np.float32)
    scale = max(1, 48 // pipe.unet.sample_shape[-1])

    written = [
        save_figure(td.viz.plot_schedules(), out("01_forward_process.png")),
        save_figure(td.viz.plot_sigmas(pipe.scheduler, 10, etas=(0.0, 0.2, 0.5, 1.0)), out("02_one_ddim_step.png")),
        save_figure(embedding_figure(pipe.unet.config), out("03_unet_tour.png")),
    ]
    run = pipe(batch_size=1, latents=latents[:1], num_inference_steps=20, output_type="np", return_trajectory=True)
    written.append(save_figure(td.viz.trajectory_strip(run.trajectory, max_columns=10), out("04_sampling.png")))
    rows = [interpolation(pipe, latents[i], latents[i + 1], num=9, num_inference_steps=20) for i in (0, 2, 4)]
    written.append(save_image(td.image_grid(np.concatenate(rows), ncols=9, scale=scale),
                              out("05_interpolation_inversion.png")))
    samples = pipe(batch_size=16, latents=latents, num_inference_steps=50, output_type="np").images
    written.append(save_image(td.image_grid(samples, ncols=8, scale=scale), out("06_real_checkpoint.png")))

    for path in written:
        size = os.path.getsize(path)
        print(f"{os.path.relpath(path)}: {size:,} bytes")
        if size > MAX_BYTES:
            raise SystemExit(f"{path} is {size:,} bytes; keep docs pictures under {MAX_BYTES:,}")


if __name__ == "__main__":
    main()
