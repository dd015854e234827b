"""Trajectories, interpolation, inversion and the paper's experiment helpers."""

import math

import numpy as np
import pytest

from conftest import max_abs
from tinyddim import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, quadratic_timesteps
from tinyddim.backend import randn
from tinyddim.explore import consistency_images, eta_sweep, interpolation, reconstruction_error, slerp
from tinyddim.weights import unet_config


def test_trajectory_holds_every_state_and_ends_at_the_images(mnist_pipe):
    out = mnist_pipe(batch_size=2, generator=0, num_inference_steps=4, output_type="np", return_trajectory=True)
    tr = out.trajectory
    assert list(tr.timesteps) == [750, 500, 250, 0]
    assert tr.x_t.shape == (5, 2, 1, 16, 16) and tr.x0_pred.shape == tr.eps.shape == (4, 2, 1, 16, 16)
    np.testing.assert_allclose(np.clip(tr.x_t[-1] / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1), out.images, atol=1e-6)
    again = mnist_pipe(batch_size=2, generator=0, num_inference_steps=4, output_type="np")
    assert np.array_equal(again.images, out.images) and again.trajectory is None


def test_trajectory_steps_follow_eq_12(mnist_pipe):
    tr = mnist_pipe(batch_size=1, generator=1, num_inference_steps=3, return_trajectory=True).trajectory
    alpha_bar = mnist_pipe.scheduler.alpha_bar
    for i, t in enumerate(tr.timesteps):
        a_prev = alpha_bar[tr.timesteps[i + 1]] if i + 1 < len(tr.timesteps) else 1.0
        expected = math.sqrt(a_prev) * tr.x0_pred[i] + math.sqrt(1 - a_prev) * tr.eps[i]
        np.testing.assert_allclose(tr.x_t[i + 1], expected, atol=1e-5)


def test_slerp_hits_the_endpoints_and_keeps_the_norm_of_orthogonal_latents():
    z0 = np.array([[1.0, 0.0]], np.float32)
    z1 = np.array([[0.0, 1.0]], np.float32)
    path = slerp(z0, z1, np.linspace(0, 1, 5))
    assert path.shape == (5, 1, 2)
    np.testing.assert_allclose(path[0], z0, atol=1e-7)
    np.testing.assert_allclose(path[-1], z1, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(path.reshape(5, 2), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(slerp(z0, z1, 0.5), [[math.sqrt(0.5), math.sqrt(0.5)]], atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        slerp(z0, np.zeros((2, 2), np.float32), 0.5)


def test_interpolation_and_consistency_helpers_decode_given_latents(mnist_pipe):
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 1, 16, 16), dtype=np.float32)
    images = interpolation(mnist_pipe, z0, z1, num=3, num_inference_steps=2)
    assert images.shape == (3, 16, 16, 1)
    ends = mnist_pipe(batch_size=2, latents=np.stack([z0, z1]), num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(images[[0, -1]], ends, atol=1e-5)
    grids = consistency_images(mnist_pipe, np.stack([z0, z1]), steps=(2, 5))
    assert sorted(grids) == [2, 5] and grids[2].shape == (2, 16, 16, 1)
    np.testing.assert_allclose(grids[2], ends, atol=1e-6)


def test_eta_sweep_scores_every_eta_and_sigma_hat(mnist_pipe):
    table = eta_sweep(mnist_pipe, score=lambda images: float(images.mean()), etas=(0.0, 1.0), steps=(2, 3),
                      batch_size=2)
    assert sorted(table, key=str) == sorted([(0.0, 2), (1.0, 2), ("σ̂", 2), (0.0, 3), (1.0, 3), ("σ̂", 3)], key=str)


SWEEP_BOUND = 2e-4  # max |cell − diffusers' run| over images in [0, 1] (random UNet, S ≤ 5); measured 1.7e-5


def diffusers_sweep_cell(model, scheduler_config, row, S, batch_size, seed, monkeypatch):
    """The images of one eta_sweep cell, made by diffusers' DDIMPipeline (row η) or DDPMPipeline with
    variance_type="fixed_large" (row σ̂), from x_T = the seed's standard normal draw and the noise of
    the generator seed + 1, drawn in the order the samplers use it."""
    import torch
    import diffusers
    import diffusers.pipelines.ddim.pipeline_ddim as ddim_pipeline
    import diffusers.pipelines.ddpm.pipeline_ddpm as ddpm_pipeline
    import diffusers.schedulers.scheduling_ddim as ddim_scheduling
    import diffusers.schedulers.scheduling_ddpm as ddpm_scheduling

    latents = np.random.default_rng(seed).standard_normal((batch_size, 1, 16, 16), dtype=np.float32)
    noise = np.random.default_rng(seed + 1)
    for module in (ddim_pipeline, ddpm_pipeline):
        monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(latents.copy()))
    for module in (ddim_scheduling, ddpm_scheduling):
        monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(
            noise.standard_normal(tuple(shape), dtype=np.float32)))
    if row == "σ̂":
        scheduler = diffusers.DDPMScheduler.from_config({**scheduler_config, "variance_type": "fixed_large"})
        pipe, kwargs = diffusers.DDPMPipeline(unet=model, scheduler=scheduler), {}
    else:
        scheduler = diffusers.DDIMScheduler.from_config(scheduler_config)
        pipe, kwargs = diffusers.DDIMPipeline(unet=model, scheduler=scheduler), {"eta": row}
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=batch_size, num_inference_steps=S, output_type="np", **kwargs).images


def test_eta_sweep_cells_are_the_runs_of_diffusers_pipelines(mnist_pipe, mnist_model, monkeypatch):
    """Table 1: each (η, S) cell is DDIM with that η, and σ̂ is DDPM with β of the jump, from one x_T."""
    from models import SCHEDULER

    table = eta_sweep(mnist_pipe, score=lambda images: images, etas=(0.0, 0.5, 1.0), steps=(2, 5), batch_size=3,
                      seed=4)
    cells = {}
    for (row, S), images in table.items():
        theirs = diffusers_sweep_cell(mnist_model, SCHEDULER, row, S, 3, 4, monkeypatch)
        assert images.shape == theirs.shape == (3, 16, 16, 1)
        assert max_abs(images, theirs) <= SWEEP_BOUND, (row, S)
        cells[(row, S)] = images
    for S in (2, 5):  # the rows differ by far more than the bound (measured ≥ 6.5e-3): η and σ̂ are used
        rows = [cells[(row, S)] for row in (0.0, 0.5, 1.0, "σ̂")]
        assert min(np.abs(a - b).max() for i, a in enumerate(rows) for b in rows[i + 1:]) > 10 * SWEEP_BOUND


class GaussianDataUNet:
    """The exact ε for data x_0 ~ N(0, I): ε(x_t, t) = √(1 − ᾱ_t) · x_t (then x_t ~ N(0, I) for all t)."""

    def __init__(self, alpha_bar):
        self.alpha_bar = alpha_bar
        self.config = unet_config({"in_channels": 1, "out_channels": 1, "sample_size": 8})
        self.device, self.sample_shape = "cpu", (1, 8, 8)

    def __call__(self, x, t):
        return math.sqrt(1 - self.alpha_bar[int(t)]) * x


def test_inversion_error_falls_with_steps_for_the_exact_gaussian_model():
    scheduler = DDPMScheduler()  # clip_sample=True: reconstruction_error decodes without it all the same
    pipe = DDIMPipeline(GaussianDataUNet(scheduler.alpha_bar), scheduler)
    images = np.random.default_rng(0).uniform(0.2, 0.8, (2, 8, 8, 1)).astype(np.float32)
    errors = reconstruction_error(pipe, images, steps=(5, 20, 100))
    assert errors[5] > errors[20] > errors[100] and errors[100] < 0.02
    per_image = reconstruction_error(pipe, images, steps=(5, 20), per_image=True)
    assert per_image[5].shape == (2,) and (per_image[5] > per_image[20]).all()
    assert np.isclose(np.sqrt(np.mean(per_image[20] ** 2)), errors[20], rtol=1e-5)  # RMSE over all pixels


def test_invert_accepts_pil_images_and_checks_their_shape(mnist_pipe):
    images = mnist_pipe(batch_size=2, generator=0, num_inference_steps=2).images
    latents = mnist_pipe.invert(images, num_inference_steps=2, progress=False)
    assert latents.shape == (2, 1, 16, 16) and np.isfinite(latents).all()
    with pytest.raises(ValueError, match="images are"):
        mnist_pipe.invert(np.zeros((1, 8, 8, 1), np.float32), num_inference_steps=2)


# ---- custom timesteps --------------------------------------------------------------------------------

def gaussian_pipe():
    scheduler = DDPMScheduler()
    return DDIMPipeline(GaussianDataUNet(scheduler.alpha_bar), scheduler)


def test_invert_over_a_custom_list_round_trips_when_decoded_over_the_same_list():
    pipe = gaussian_pipe()
    images = np.random.default_rng(0).uniform(0.2, 0.8, (2, 8, 8, 1)).astype(np.float32)
    pipe.scheduler.set_timesteps(20)
    built = pipe.invert(images, num_inference_steps=20, progress=False)
    listed = pipe.invert(images, timesteps=pipe.scheduler.timesteps.tolist(), progress=False)
    assert np.array_equal(built, listed)

    decoder = DDIMPipeline(pipe.unet, DDIMScheduler(clip_sample=False))
    timesteps = quadratic_timesteps(50)
    latents = pipe.invert(images, timesteps=timesteps, num_inference_steps=3, progress=False)  # 3 is ignored
    decoded = decoder(batch_size=2, latents=latents, timesteps=timesteps, output_type="np", progress=False).images
    rmse = float(np.sqrt(np.mean((decoded - images) ** 2)))
    assert rmse < 0.02                                     # measured 0.0103 (49 steps); 10 steps: 0.050
    errors = reconstruction_error(pipe, images, steps=(50,), timesteps_for=quadratic_timesteps)
    assert errors[50] == pytest.approx(rmse, rel=1e-6)


def test_reconstruction_error_over_quadratic_timesteps_falls_with_s_and_beats_leading_spacing():
    pipe = gaussian_pipe()
    images = np.random.default_rng(0).uniform(0.2, 0.8, (2, 8, 8, 1)).astype(np.float32)
    quad = reconstruction_error(pipe, images, steps=(10, 20, 100), timesteps_for=quadratic_timesteps)
    leading = reconstruction_error(pipe, images, steps=(10, 20, 100))
    assert quad[10] > quad[20] > quad[100]                         # measured 0.050, 0.025, 0.0052
    assert all(quad[S] < leading[S] for S in (10, 20, 100))       # leading: 0.057, 0.031, 0.0066


def test_explore_helpers_pass_custom_timesteps_through(mnist_pipe):
    pipe = mnist_pipe
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 1, 16, 16), dtype=np.float32)
    timesteps = quadratic_timesteps(4)
    images = interpolation(pipe, z0, z1, num=3, timesteps=timesteps)
    # a batch of 3 both times, so each image rounds alike (BLAS may round a batch of 2 otherwise)
    ends = pipe(batch_size=3, latents=np.stack([z0, z0, z1]), timesteps=timesteps, output_type="np").images
    np.testing.assert_array_equal(images[[0, -1]], ends[[0, -1]])
    pair = pipe(batch_size=2, latents=np.stack([z0, z1]), timesteps=timesteps, output_type="np").images
    grids = consistency_images(pipe, np.stack([z0, z1]), steps=(4, 6), timesteps_for=quadratic_timesteps)
    np.testing.assert_array_equal(grids[4], pair)
    assert not np.array_equal(grids[4], consistency_images(pipe, np.stack([z0, z1]), steps=(4,))[4])

    table = eta_sweep(pipe, score=lambda images: images, etas=(0.0,), steps=(4,), batch_size=2,
                      timesteps_for=quadratic_timesteps)
    latents = randn(0, (2, 1, 16, 16))                                  # eta_sweep's x_T for seed 0
    np.testing.assert_array_equal(table[(0.0, 4)], pipe(batch_size=2, latents=latents, generator=1,
                                                        timesteps=timesteps, output_type="np").images)
    ddpm = DDPMPipeline(pipe.unet, DDPMScheduler.from_config({**pipe.scheduler.config, "variance_type": "fixed_large"}))
    np.testing.assert_array_equal(table[("σ̂", 4)], ddpm(batch_size=2, latents=latents, generator=1,
                                                         timesteps=timesteps, output_type="np",
                                                         progress=False).images)


def test_reconstruction_error_over_another_spacing_is_that_of_a_pipeline_configured_with_it():
    pipe = gaussian_pipe()
    images = np.random.default_rng(1).uniform(0.2, 0.8, (2, 8, 8, 1)).astype(np.float32)
    trailing = DDIMPipeline(pipe.unet, DDIMScheduler.from_config({**pipe.scheduler.config,
                                                                   "timestep_spacing": "trailing"}))
    expected = reconstruction_error(trailing, images, steps=(7,))
    assert reconstruction_error(pipe, images, steps=(7,), timestep_spacing="trailing") == expected
    assert reconstruction_error(pipe, images, steps=(7,)) != expected  # the config's own (leading) differs
