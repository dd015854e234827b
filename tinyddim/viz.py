"""Pictures for reading the paper: image grids (PIL) and matplotlib figures of schedules and sampling runs.

    image_grid        samples tiled into one PIL image
    labelled_grid     a grid of images with a label on each row and column (t, S, η …), as a figure
    plot_schedules    β_t, ᾱ_t and SNR_t = ᾱ_t / (1 − ᾱ_t) for the beta schedules
    plot_timesteps    the S timesteps of leading / trailing / linspace spacing
    plot_sigmas       σ_t(η) of DDIM Eq. 16 over the (t, t_prev) pairs of a timestep list
    trajectory_strip  x_t above x̂_0 (DDIM Eq. 9) for the steps of one sampling run
    plot_eta_table    an η / S table (Table 1) as one line per η (or σ̂) against S

Each plot function returns a `matplotlib.figure.Figure` built with the object-oriented API (no pyplot
state, nothing shown): in Jupyter (`%matplotlib inline`) a returned figure displays itself, and
`fig.savefig("plot.png")` writes it anywhere, on a headless machine too.
"""

import math

import numpy as np

from .ddim import ddim_sigma
from .images import pil_to_numpy, to_images
from .schedules import BETA_SCHEDULES, TIMESTEP_SPACINGS, make_betas, make_timesteps


def image_grid(images, ncols=None, scale=1, padding=2):
    """Tile images (a list of PIL images, or floats (B, H, W, C) in [0, 1]) into one PIL image.

    `scale` enlarges each pixel (nearest neighbour) so that small digits stay crisp.
    """
    from PIL import Image

    pixels = _as_uint8(images)  # (B, H, W, C)
    count, height, width, channels = pixels.shape
    ncols = ncols or math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    grid = np.full((nrows * (height + padding) + padding, ncols * (width + padding) + padding, channels),
                   255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        top = padding + (i // ncols) * (height + padding)
        left = padding + (i % ncols) * (width + padding)
        grid[top : top + height, left : left + width] = image
    picture = Image.fromarray(grid[:, :, 0] if channels == 1 else grid)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def labelled_grid(images, row_labels=None, col_labels=None, value_range=(0.0, 1.0), colorbar=False, title=None,
                  size=1.0, cmap="gray"):
    """A figure of images in rows and columns, each row and column labelled (e.g. "t = 500", "η = 1").

    `images`: floats (R, K, H, W, C), or (R·K, H, W, C) with K = len(col_labels) (or one row). Pixels are shown
    on the scale `value_range` (lo, hi); values outside it saturate, and `colorbar=True` draws the scale (with
    arrows at the ends) so that nothing is clipped silently. `size`: inches per image.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        ncols = len(col_labels) if col_labels is not None else len(images)
        if len(images) % ncols:
            raise ValueError(f"{len(images)} images do not fill rows of {ncols} columns (one per column label)")
        images = images.reshape((len(images) // ncols, ncols) + images.shape[1:])   # (R·K, ...) -> (R, K, ...)
    if images.ndim != 5 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (R, K, H, W, C) or (R·K, H, W, C) with C = 1 or 3, got {images.shape}")
    nrows, ncols = images.shape[:2]
    for name, labels, count in (("row_labels", row_labels, nrows), ("col_labels", col_labels, ncols)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} has {len(labels)} labels for {count} {name[:3]}s")
    lo, hi = value_range
    fig, axes = _figure(size * ncols + (0.8 if row_labels is not None else 0.1) + (0.7 if colorbar else 0),
                        size * nrows + (0.3 if col_labels is not None else 0.1) + (0.3 if title else 0), nrows, ncols)
    for i in range(nrows):
        for j in range(ncols):
            ax, image = axes[i * ncols + j], images[i, j]
            if image.shape[-1] == 1:
                shown = ax.imshow(image[:, :, 0], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                shown = ax.imshow(np.clip((image - lo) / (hi - lo), 0, 1), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if i == 0 and col_labels is not None:
                ax.set_title(str(col_labels[j]), fontsize=9)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[i]), fontsize=9, rotation=0, ha="right", va="center")
    if colorbar:
        fig.colorbar(shown, ax=axes, shrink=0.8, extend="both")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _as_uint8(images):
    """PIL images or floats in [0, 1] -> uint8 (B, H, W, C)."""
    if isinstance(images, np.ndarray):
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return pil_to_numpy(images)


def _figure(width, height, nrows=1, ncols=1):
    """A pyplot-free Figure and its axes (always a flat list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(np.ravel(fig.subplots(nrows, ncols, squeeze=False)))


# ---- schedules -----------------------------------------------------------------------------------

def plot_schedules(num_train_timesteps=1000, schedules=BETA_SCHEDULES, beta_start=0.0001, beta_end=0.02):
    """Three panels over t: β_t and SNR_t = ᾱ_t / (1 − ᾱ_t) on log scales, ᾱ_t = ∏ (1 − β_s) on a linear one.

    One line per schedule name (`linear`, `scaled_linear`, `squaredcos_cap_v2`), from `make_betas`.
    """
    schedules = (schedules,) if isinstance(schedules, str) else tuple(schedules)
    unknown = [name for name in schedules if name not in BETA_SCHEDULES]
    if unknown or not schedules:
        raise ValueError(f"unknown beta schedule(s) {unknown or schedules!r}; "
                         f"expected names from {list(BETA_SCHEDULES)}")
    fig, (ax_beta, ax_alpha_bar, ax_snr) = _figure(12, 3.4, 1, 3)
    t = np.arange(num_train_timesteps)
    for name in schedules:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, name)
        alpha_bar = np.cumprod(1 - betas)
        ax_beta.plot(t, betas, label=name)
        ax_alpha_bar.plot(t, alpha_bar, label=name)
        ax_snr.plot(t, alpha_bar / (1 - alpha_bar), label=name)
    ax_beta.set(title="β_t", xlabel="t", yscale="log")
    ax_alpha_bar.set(title="ᾱ_t  (the DDIM paper's α_t)", xlabel="t")
    ax_snr.set(title="SNR_t = ᾱ_t / (1 − ᾱ_t)", xlabel="t", yscale="log")
    ax_beta.legend()
    return fig


def plot_timesteps(num_train_timesteps=1000, num_inference_steps=10, spacings=TIMESTEP_SPACINGS,
                   steps_offset=0):
    """One row of markers per spacing: the S timesteps `make_timesteps` gives, on the axis 0 … T − 1."""
    spacings = (spacings,) if isinstance(spacings, str) else tuple(spacings)
    if not spacings:
        raise ValueError(f"spacings is empty; expected names from {list(TIMESTEP_SPACINGS)}")
    fig, (ax,) = _figure(8, 0.6 + 0.5 * len(spacings))
    for row, spacing in enumerate(spacings):
        timesteps = make_timesteps(num_train_timesteps, num_inference_steps, spacing, steps_offset)
        ax.plot(timesteps, np.full(len(timesteps), row), "o", label=spacing)
    ax.set(yticks=range(len(spacings)), yticklabels=list(spacings), ylim=(-0.6, len(spacings) - 0.4),
           xlim=(-0.02 * num_train_timesteps, 1.02 * num_train_timesteps), xlabel="t",
           title=f"timesteps for T = {num_train_timesteps}, S = {num_inference_steps}")
    ax.invert_yaxis()
    return fig


def plot_sigmas(scheduler, num_inference_steps=10, etas=(0.0, 0.5, 1.0)):
    """σ_t(η) of Eq. 16 at each timestep t of `scheduler`'s list for S steps, one line per η.

    σ is computed from the (t, t_prev) pairs the scheduler actually steps between (its own rule for
    t_prev and for ᾱ past the last step); `scheduler` itself is left untouched.
    """
    if not hasattr(scheduler, "alpha_bar_at"):
        raise TypeError(f"plot_sigmas needs a DDIMScheduler or DDPMScheduler, got {type(scheduler).__name__}")
    scheduler = type(scheduler).from_config(dict(scheduler.config))  # a copy: set_timesteps changes it
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps
    fig, (ax,) = _figure(6, 3.4)
    for eta in etas:
        sigmas = [ddim_sigma(scheduler.alpha_bar_at(t), scheduler.alpha_bar_at(scheduler.previous_timestep(t)), eta)
                  for t in timesteps.tolist()]
        ax.plot(timesteps, sigmas, "o-", label=f"η = {eta:g}")
    ax.set(xlabel="t", ylabel="σ_t(η)", title=f"σ_t(η), Eq. 16, S = {len(timesteps)}")
    ax.legend()
    return fig


# ---- sampling runs -------------------------------------------------------------------------------

def trajectory_strip(trajectory, index=0, max_columns=10):
    """Top row x_t, bottom row x̂_0 at up to `max_columns` evenly spaced steps of one image of a run.

    `trajectory`: the `Trajectory` of `pipe(..., return_trajectory=True)`; `index`: which image of the
    batch. Column i shows the x_t that step i starts from (at t = timesteps[i]) above the x̂_0 predicted
    there; pixels are shown as the pipeline would save them, x/2 + 1/2 clipped to [0, 1].
    """
    x_t, x0_pred, timesteps = np.asarray(trajectory.x_t), np.asarray(trajectory.x0_pred), trajectory.timesteps
    steps = len(timesteps)
    if x_t.ndim != 5 or x0_pred.shape != (steps,) + x_t.shape[1:] or len(x_t) != steps + 1:
        raise ValueError("trajectory must be stacked: x_t (S + 1, B, C, H, W), x0_pred (S, B, C, H, W); "
                         f"got {x_t.shape} and {x0_pred.shape} for S = {steps}")
    if not 0 <= index < x_t.shape[1]:
        raise IndexError(f"index {index} is out of range for a batch of {x_t.shape[1]}")
    columns = np.unique(np.round(np.linspace(0, steps - 1, min(max_columns, steps))).astype(int))
    fig, axes = _figure(1.1 * len(columns), 2.5, 2, len(columns))
    for j, i in enumerate(columns):
        for row, images, label in ((0, x_t, "x_t"), (1, x0_pred, "x̂_0")):
            ax = axes[row * len(columns) + j]
            image = to_images(images[i, index : index + 1], "np")[0]  # (H, W, C) in [0, 1]
            ax.imshow(image[:, :, 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if j == 0:
                ax.set_ylabel(label)
        axes[j].set_title(f"t = {timesteps[i]}", fontsize=9)
    return fig


def plot_eta_table(table, ylabel="score"):
    """A Table-1 dict {(η or "σ̂", S): score} (as `explore.eta_sweep` returns) as one line per row
    against S on a log axis."""
    if not isinstance(table, dict) or not table or not all(isinstance(k, tuple) and len(k) == 2 for k in table):
        raise ValueError("table must be a non-empty dict {(eta or 'σ̂', S): score}, as explore.eta_sweep returns")
    rows = list(dict.fromkeys(row for row, _ in table))  # in first-seen order: η values, then σ̂
    fig, (ax,) = _figure(5.5, 3.6)
    for row in rows:
        steps = sorted(S for r, S in table if r == row)
        ax.plot(steps, [table[(row, S)] for S in steps], "o-", label=row if isinstance(row, str) else f"η = {row:g}")
    all_steps = sorted({S for _, S in table})
    ax.set(xscale="log", xlabel="S (sampling steps)", ylabel=ylabel, title="sample quality against η and S")
    ax.set_xticks(all_steps, [str(S) for S in all_steps])
    ax.minorticks_off()
    ax.legend()
    return fig
