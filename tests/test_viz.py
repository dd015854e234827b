"""Pictures: each figure holds exactly the library's numbers, in the expected panels, lines and images."""

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from tinyddim import DDIMScheduler, DDPMScheduler, ddim_sigma
from tinyddim.schedules import make_betas, make_timesteps
from tinyddim.trajectory import Trajectory
from tinyddim.viz import (image_grid, labelled_grid, plot_eta_table, plot_schedules, plot_sigmas, plot_timesteps,
                          trajectory_strip)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """Plot functions build figures without pyplot, so none is left open (and none is shown)."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def test_image_grid_tiles_images_with_padding_and_scale():
    images = np.zeros((5, 4, 3, 1))
    images[1] = 1.0
    grid = image_grid(images, ncols=3, padding=2, scale=2)
    assert grid.size == ((3 * (3 + 2) + 2) * 2, (2 * (4 + 2) + 2) * 2) and grid.mode == "L"
    pixels = np.asarray(grid)[::2, ::2]  # undo the scale
    assert (pixels[2:6, 2:5] == 0).all() and (pixels[2:6, 7:10] == 255).all()
    assert (pixels[0, :] == 255).all()  # padding is white
    rgb = image_grid(np.full((2, 4, 4, 3), 0.5))
    assert rgb.mode == "RGB" and np.asarray(rgb)[2, 2].tolist() == [128, 128, 128]


def test_labelled_grid_labels_every_row_and_column_and_shows_the_values_unclipped():
    images = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 1)).astype(np.float32) * 3  # beyond [0, 1]
    fig = labelled_grid(images, ["S = 1", "S = 2"], ["t = 0", "t = 1", "t = 2"], value_range=(-3, 3), colorbar=True)
    axes = [ax for ax in fig.axes if ax.images]
    image_axes, colorbars = axes[:6], fig.axes[6:]
    assert [ax.get_title() for ax in image_axes[:3]] == ["t = 0", "t = 1", "t = 2"]
    assert [image_axes[i].get_ylabel() for i in (0, 3)] == ["S = 1", "S = 2"]
    for k, ax in enumerate(image_axes):  # the data themselves, on the stated scale
        np.testing.assert_array_equal(ax.images[0].get_array(), images[k // 3, k % 3, :, :, 0])
        assert ax.images[0].get_clim() == (-3, 3)
    assert len(colorbars) == 1
    flat = labelled_grid(images.reshape(6, 4, 4, 1), col_labels=list("abc"))
    assert len(flat.axes) == 6 and flat.axes[4].get_title() == ""
    with pytest.raises(ValueError, match="row_labels has 1 labels for 2 rows"):
        labelled_grid(images, ["one"])
    with pytest.raises(ValueError, match="do not fill rows"):
        labelled_grid(images.reshape(6, 4, 4, 1), col_labels=list("abcd"))


def test_plot_schedules_draws_beta_alpha_bar_and_snr_of_each_schedule():
    fig = plot_schedules(num_train_timesteps=100)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    beta_ax, alpha_bar_ax, snr_ax = fig.axes
    assert snr_ax.get_yscale() == beta_ax.get_yscale() == "log" and alpha_bar_ax.get_yscale() == "linear"
    for i, name in enumerate(["linear", "scaled_linear", "squaredcos_cap_v2"]):
        betas = make_betas(100, beta_schedule=name)
        alpha_bar = np.cumprod(1 - betas)
        np.testing.assert_array_equal(beta_ax.lines[i].get_xdata(), np.arange(100))
        np.testing.assert_array_equal(beta_ax.lines[i].get_ydata(), betas)
        np.testing.assert_array_equal(alpha_bar_ax.lines[i].get_ydata(), alpha_bar)
        np.testing.assert_allclose(snr_ax.lines[i].get_ydata(), alpha_bar / (1 - alpha_bar), rtol=1e-12)
        assert beta_ax.lines[i].get_label() == name
    assert [len(ax.lines) for ax in fig.axes] == [3, 3, 3]
    # SNR falls monotonically with t for every schedule: more noise, less signal
    assert all((np.diff(line.get_ydata()) < 0).all() for line in snr_ax.lines)


def test_plot_schedules_names_an_unknown_schedule():
    with pytest.raises(ValueError, match="'cosine'.*squaredcos_cap_v2"):
        plot_schedules(schedules=("linear", "cosine"))
    assert len(plot_schedules(schedules="scaled_linear").axes[0].lines) == 1  # one name alone is fine


def test_plot_timesteps_shows_one_row_per_spacing_with_the_library_timesteps():
    fig = plot_timesteps(1000, 50)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["leading", "trailing", "linspace"]
    for row, line in enumerate(ax.lines):
        np.testing.assert_array_equal(line.get_xdata(), make_timesteps(1000, 50, line.get_label()))
        assert (np.asarray(line.get_ydata()) == row).all()
    leading, trailing, linspace = (line.get_xdata() for line in ax.lines)
    assert leading[0] == 980 and leading[-1] == 0 and trailing[0] == 999 and trailing[-1] == 19
    assert linspace[0] == 999 and linspace[-1] == 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["leading", "trailing", "linspace"]
    offset = plot_timesteps(1000, 50, spacings="leading", steps_offset=1).axes[0].lines[0].get_xdata()
    assert offset[0] == 981 and offset[-1] == 1


def test_plot_timesteps_names_a_bad_spacing():
    with pytest.raises(ValueError, match="'middle'"):
        plot_timesteps(spacings=("leading", "middle"))
    with pytest.raises(ValueError, match="empty"):
        plot_timesteps(spacings=())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_plot_sigmas_uses_the_pairs_of_the_timestep_list(spacing):
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing)
    scheduler.set_timesteps(7)
    before = scheduler.timesteps.copy()
    fig = plot_sigmas(scheduler, num_inference_steps=13, etas=(0.0, 0.5, 1.0))
    np.testing.assert_array_equal(scheduler.timesteps, before)  # the caller's scheduler is untouched
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["η = 0", "η = 0.5", "η = 1"]
    timesteps = make_timesteps(1000, 13, spacing)
    pairs = list(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1]))  # never t − T // S
    alpha_bar = np.cumprod(1 - make_betas(1000, beta_schedule="squaredcos_cap_v2"))
    for line, eta in zip(ax.lines, (0.0, 0.5, 1.0)):
        np.testing.assert_array_equal(line.get_xdata(), timesteps)
        expected = [ddim_sigma(alpha_bar[t], alpha_bar[t_prev] if t_prev >= 0 else 1.0, eta) for t, t_prev in pairs]
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    assert (ax.lines[0].get_ydata() == 0).all()  # η = 0: deterministic DDIM
    np.testing.assert_allclose(ax.lines[2].get_ydata(), 2 * ax.lines[1].get_ydata(), rtol=1e-12)  # σ ∝ η
    assert ax.lines[2].get_ydata()[-1] == 0.0  # the last step lands on ᾱ = 1 (set_alpha_to_one): no noise


def test_plot_sigmas_at_eta_1_is_the_ddpm_posterior_std_and_respects_set_alpha_to_one():
    ddim = DDIMScheduler(set_alpha_to_one=False)
    sigmas = plot_sigmas(ddim, 10, etas=(1.0,)).axes[0].lines[0].get_ydata()
    a = ddim.alpha_bar
    beta_tilde = (1 - a[800]) / (1 - a[900]) * (1 - a[900] / a[800])  # DDPM Eq. 7 for the jump 900 -> 800
    assert math.isclose(sigmas[0], math.sqrt(beta_tilde), rel_tol=1e-12)
    assert sigmas[-1] == 0.0  # the last step goes from t = 0 to ᾱ_0 itself (set_alpha_to_one=False): no noise
    ddpm = plot_sigmas(DDPMScheduler(), 10, etas=(1.0,)).axes[0].lines[0].get_ydata()
    np.testing.assert_array_equal(ddpm[:-1], sigmas[:-1])  # same pairs; only ᾱ past the end differs
    with pytest.raises(TypeError, match="DDIMScheduler"):
        plot_sigmas(a, 10)


def _trajectory(steps=6, batch=2, channels=1, size=4, seed=0):
    rng = np.random.default_rng(seed)
    return Trajectory(np.linspace(900, 0, steps).astype(np.int64),
                      rng.uniform(-1.5, 1.5, (steps + 1, batch, channels, size, size)).astype(np.float32),
                      rng.uniform(-1, 1, (steps, batch, channels, size, size)).astype(np.float32),
                      rng.standard_normal((steps, batch, channels, size, size)).astype(np.float32))


def test_trajectory_strip_puts_x_t_above_x0_pred_for_each_chosen_step():
    tr = _trajectory(steps=6)
    fig = trajectory_strip(tr, index=1, max_columns=4)
    assert len(fig.axes) == 8 and all(len(ax.images) == 1 for ax in fig.axes)
    columns = [0, 2, 3, 5]  # round(linspace(0, 5, 4))
    for j, i in enumerate(columns):
        top, bottom = fig.axes[j].images[0].get_array(), fig.axes[4 + j].images[0].get_array()
        np.testing.assert_allclose(top, np.clip(tr.x_t[i, 1, 0] / 2 + 0.5, 0, 1), atol=1e-6)
        np.testing.assert_allclose(bottom, np.clip(tr.x0_pred[i, 1, 0] / 2 + 0.5, 0, 1), atol=1e-6)
        assert fig.axes[j].get_title() == f"t = {tr.timesteps[i]}"
    assert fig.axes[0].get_ylabel() == "x_t" and fig.axes[4].get_ylabel() == "x̂_0"
    assert len(trajectory_strip(tr).axes) == 12  # all 6 steps when they fit


def test_trajectory_strip_shows_rgb_and_rejects_bad_input():
    fig = trajectory_strip(_trajectory(steps=3, channels=3), max_columns=10)
    assert fig.axes[0].images[0].get_array().shape == (4, 4, 3)
    with pytest.raises(IndexError, match="index 2"):
        trajectory_strip(_trajectory(batch=2), index=2)
    tr = _trajectory()
    tr.x_t = list(tr.x_t)[:3]  # not a whole run
    with pytest.raises(ValueError, match="stacked"):
        trajectory_strip(tr)


def test_plot_eta_table_draws_one_line_per_eta_and_sigma_hat_against_steps():
    table = {(eta, S): eta + S / 100 for S in (10, 20, 50, 100) for eta in (0.0, 0.5, 1.0)}
    table.update({("σ̂", S): -S for S in (10, 20, 50, 100)})
    fig = plot_eta_table(table, ylabel="confidence")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["η = 0", "η = 0.5", "η = 1", "σ̂"]
    for line, row in zip(ax.lines, (0.0, 0.5, 1.0, "σ̂")):
        np.testing.assert_array_equal(line.get_xdata(), [10, 20, 50, 100])
        np.testing.assert_array_equal(line.get_ydata(), [table[(row, S)] for S in (10, 20, 50, 100)])
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "confidence"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "50", "100"]


def test_plot_eta_table_rejects_what_is_not_a_table():
    for bad in ({}, [((0.0, 10), 1.0)], {0.0: 1.0}):
        with pytest.raises(ValueError, match="eta_sweep"):
            plot_eta_table(bad)


def test_figures_save_as_png_without_a_display(tmp_path):
    assert matplotlib.get_backend()  # whatever it is, savefig renders with Agg for PNG
    path = tmp_path / "schedules.png"
    plot_schedules(num_train_timesteps=50).savefig(path, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
