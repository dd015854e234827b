"""Whole sampling runs against diffusers' pipelines, on every device stand-in, and their bad input."""

import numpy as np
import pytest

from conftest import max_abs
from tinyddim import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, ImagePipelineOutput, UNet2DModel,
                      quadratic_timesteps, to_images)


@pytest.fixture()
def pipe(mnist_pipe):
    """The DDIM pipeline of the small MNIST-shaped UNet (conftest), as the custom-timestep tests call it."""
    return mnist_pipe


def latents_for(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 1, 16, 16), dtype=np.float32)


def diffusers_images(pipeline_class, model, latents, monkeypatch, **kwargs):
    """Run diffusers' own pipeline with its x_T replaced by `latents`."""
    import torch
    from diffusers import DDPMScheduler as TorchDDPM
    import diffusers.pipelines.ddim.pipeline_ddim as ddim_module
    import diffusers.pipelines.ddpm.pipeline_ddpm as ddpm_module

    for module in (ddim_module, ddpm_module):
        monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(latents.copy()))
    pipe = pipeline_class(unet=model, scheduler=TorchDDPM())
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=len(latents), output_type="np", **kwargs).images


# Bounds on |ours − diffusers| over the images in [0, 1]: about 10x the error measured with diffusers 0.42.1 and
# torch 2.13.0 on 1 and 2 threads (the larger of the two written beside each). A random UNet is chaotic over many
# steps (float rounding grows step by step); the trained bundled model is the real test of a whole run.
RANDOM_RUN = {1: (6e-6, 1e-6),      # S: (max, mean); measured S = 1: 6.0e-7, 8.4e-8
              10: (8e-4, 1.2e-4)}  # measured S = 10: 8.3e-5, 1.2e-5
# (S, η, spacing): (max, mean). Leading runs start at t ≤ 980; measured max 2.8e-6, 1.8e-6, 2.4e-6, mean ≤ 5.6e-7.
# Trailing runs (the bundled config) start at t = 999, where x̂_0 = (x_t − √(1 − ᾱ) ε) / √ᾱ divides ε's float32
# rounding by √ᾱ_999 ≈ 5e-5: the first step is ill-conditioned in both libraries alike. Measured there: see below;
# a change that leaves ε's error against diffusers as it was (mean 2.0e-7 at t = 999) can move these 2–3x.
TRAINED_RUN = {(10, 0.0, "leading"): (3e-5, 6e-6),
               (50, 0.0, "leading"): (3e-5, 6e-6),
               (20, 1.0, "leading"): (3e-5, 6e-6),
               (10, 0.0, "trailing"): (3e-3, 5e-5),       # measured max 3.3e-4, mean 5.4e-6
               (50, 0.0, "trailing"): (6e-4, 1e-5),       # measured max 5.6e-5, mean 1.0e-6
               (20, 1.0, "trailing"): (3e-3, 3e-5)}       # measured max 2.8e-4, mean 3.0e-6
DDPM_ONE_STEP = 6e-6  # max; measured 6.0e-7
STRICT_VS_CPU = 5e-5  # max over a 4-step run, Winograd (CPU) against im2col (device); measured 5.2e-6


def random_unet_run_diff(pipe, model, steps, monkeypatch):
    """|ours − diffusers| of a DDIM run of the random "mnist" UNet from one x_T, (2, 16, 16, 1)."""
    from diffusers import DDIMPipeline as TorchDDIMPipeline

    latents = latents_for(2)
    ours = pipe(batch_size=2, latents=latents, num_inference_steps=steps, output_type="np").images
    theirs = diffusers_images(TorchDDIMPipeline, model, latents, monkeypatch, num_inference_steps=steps)
    assert ours.shape == theirs.shape == (2, 16, 16, 1)
    return np.abs(ours - theirs)


def trained_run_diff(bundled_torch, steps, eta, monkeypatch, spacing=None):
    """|ours − diffusers| of a DDIM run of the trained bundled model, same x_T and same noise, (4, 16, 16, 1)."""
    import torch
    from diffusers import DDIMPipeline as TorchDDIMPipeline
    from diffusers import DDIMScheduler as TorchDDIM
    import diffusers.pipelines.ddim.pipeline_ddim as ddim_module
    import diffusers.schedulers.scheduling_ddim as scheduling_module

    from tinyddim.pipelines import BUNDLED_MODEL

    model, scheduler_config = bundled_torch
    if spacing is not None:
        scheduler_config = {**scheduler_config, "timestep_spacing": spacing}
    latents = latents_for(4)
    noises = iter(np.random.default_rng(1).standard_normal((steps + 1, 4, 1, 16, 16), dtype=np.float32))
    monkeypatch.setattr(ddim_module, "randn_tensor", lambda shape, **kw: torch.from_numpy(latents.copy()))
    monkeypatch.setattr(scheduling_module, "randn_tensor", lambda shape, **kw: torch.from_numpy(next(noises)))
    theirs_pipe = TorchDDIMPipeline(unet=model, scheduler=TorchDDIM.from_config(scheduler_config))
    theirs_pipe.set_progress_bar_config(disable=True)
    theirs = theirs_pipe(batch_size=4, eta=eta, num_inference_steps=steps, output_type="np").images

    class SameNoise(np.random.Generator):  # hands our scheduler the very noise diffusers drew
        def standard_normal(self, shape, dtype=np.float32):
            return next(ours_noises)

    ours_noises = iter(np.random.default_rng(1).standard_normal((steps + 1, 4, 1, 16, 16), dtype=np.float32))
    ours_pipe = DDIMPipeline.from_pretrained(BUNDLED_MODEL)
    ours_pipe.scheduler = DDIMScheduler.from_config(scheduler_config)
    ours = ours_pipe(batch_size=4, latents=latents, eta=eta,
                                                       generator=SameNoise(np.random.PCG64()),
                                                       num_inference_steps=steps, output_type="np",
                                                       progress=False).images
    return np.abs(ours - theirs)


def ddpm_one_step_diff(folder, model, monkeypatch):
    from diffusers import DDPMPipeline as TorchDDPMPipeline

    latents = latents_for(2)
    ours = DDPMPipeline.from_pretrained(folder)(batch_size=2, latents=latents, num_inference_steps=1,
                                                output_type="np", progress=False).images
    return np.abs(ours - diffusers_images(TorchDDPMPipeline, model, latents, monkeypatch, num_inference_steps=1))


@pytest.mark.parametrize("steps", sorted(RANDOM_RUN))
def test_ddim_run_of_a_random_unet_matches_diffusers_pipeline(mnist_pipe, mnist_model, steps, monkeypatch):
    diff = random_unet_run_diff(mnist_pipe, mnist_model, steps, monkeypatch)
    max_bound, mean_bound = RANDOM_RUN[steps]
    assert diff.max() <= max_bound and diff.mean() <= mean_bound, (diff.max(), diff.mean())


@pytest.mark.parametrize("steps,eta,spacing", sorted(TRAINED_RUN))
def test_ddim_run_of_the_trained_bundled_model_matches_diffusers_pipeline(bundled_torch, steps, eta, spacing,
                                                                          monkeypatch):
    diff = trained_run_diff(bundled_torch, steps, eta, monkeypatch, spacing)
    max_bound, mean_bound = TRAINED_RUN[(steps, eta, spacing)]
    assert diff.max() <= max_bound and diff.mean() <= mean_bound, (diff.max(), diff.mean())


def test_ddpm_pipeline_with_one_step_matches_diffusers(mnist_folder, mnist_model, monkeypatch):
    diff = ddpm_one_step_diff(mnist_folder, mnist_model, monkeypatch)
    assert diff.max() <= DDPM_ONE_STEP, diff.max()


def test_ddim_pipeline_turns_a_ddpm_scheduler_into_ddim(mnist_unet):
    pipe = DDIMPipeline(mnist_unet, DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_same_seed_same_images_and_outputs_in_both_types(mnist_pipe):
    a = mnist_pipe(batch_size=2, generator=7, num_inference_steps=3, output_type="np").images
    b = mnist_pipe(batch_size=2, generator=np.random.default_rng(7), num_inference_steps=3, output_type="np").images
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1
    pil = mnist_pipe(batch_size=2, generator=7, num_inference_steps=3).images
    assert [image.size for image in pil] == [(16, 16)] * 2 and pil[0].mode == "L"
    assert np.array_equal(np.asarray(pil[0]), (a[0, :, :, 0] * 255).round().astype(np.uint8))
    out = mnist_pipe(batch_size=1, generator=1, num_inference_steps=2, return_dict=False)
    assert isinstance(out, tuple) and len(out[0]) == 1
    assert isinstance(mnist_pipe(num_inference_steps=1), ImagePipelineOutput)


def test_eta_one_draws_fresh_noise_from_the_generator(mnist_pipe):
    a = mnist_pipe(batch_size=1, generator=3, eta=1.0, num_inference_steps=4, output_type="np").images
    b = mnist_pipe(batch_size=1, generator=3, eta=0.0, num_inference_steps=4, output_type="np").images
    c = mnist_pipe(batch_size=1, generator=3, eta=1.0, num_inference_steps=4, output_type="np").images
    assert np.array_equal(a, c) and not np.array_equal(a, b)


def test_callback_sees_every_step(mnist_pipe):
    seen = []
    mnist_pipe(batch_size=1, generator=0, num_inference_steps=5,
         callback=lambda i, t, x_t, x0_pred: seen.append((i, t, x_t.shape, x0_pred.shape)))
    assert [s[:2] for s in seen] == list(zip(range(5), [800, 600, 400, 200, 0]))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_strict_device_run_never_converts_to_host_and_matches_cpu(mnist_folder, eta):
    cpu = DDIMPipeline.from_pretrained(mnist_folder)
    device = DDIMPipeline.from_pretrained(mnist_folder, device="strict")
    assert device.unet.device == "strict"
    kwargs = dict(batch_size=2, generator=5, eta=eta, num_inference_steps=4, output_type="np", progress=False)
    # the CPU path takes Winograd for 3x3 convs on 16x16 images, the device path im2col: equal to rounding
    assert max_abs(device(**kwargs).images, cpu(**kwargs).images) <= STRICT_VS_CPU
    moved = cpu.to("strict")(**kwargs).images
    assert np.array_equal(moved, device(**kwargs).images)


def test_strict_device_catches_a_host_conversion():
    from strict import strict as xp

    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(xp.asarray(np.ones(3)))
    with pytest.raises(TypeError, match="mixed"):
        xp.asarray(np.ones(3)) + np.ones(3)


def test_cuda_without_cupy_says_to_install_the_gpu_extra(mnist_folder, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)
    from tinyddim import backend

    monkeypatch.setattr(backend, "_devices", {k: v for k, v in backend._devices.items() if k != "cuda"})
    with pytest.raises(RuntimeError, match=r"tinyddim\[gpu\]"):
        UNet2DModel.from_pretrained(mnist_folder, device="cuda")


# ---- custom timesteps --------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_pipeline_over_quadratic_timesteps_is_the_loop_over_the_scheduler(pipe, eta):
    timesteps = quadratic_timesteps(10)
    latents = latents_for(2)
    out = pipe(batch_size=2, latents=latents, eta=eta, generator=3, timesteps=timesteps, num_inference_steps=7,
               output_type="np", return_trajectory=True)                  # num_inference_steps is ignored
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(timesteps=timesteps)
    rng, x_t = np.random.default_rng(3), latents
    for t in scheduler.timesteps:
        x_t = scheduler.step(pipe.unet(x_t, t), t, x_t, eta=eta, generator=rng).prev_sample
    assert np.array_equal(out.images, to_images(x_t, "np"))
    assert out.trajectory.timesteps.tolist() == timesteps.tolist() and len(out.trajectory.x_t) == 11


def test_ddpm_pipeline_over_custom_timesteps_is_the_loop_over_the_scheduler(mnist_folder):
    folder = mnist_folder
    timesteps = [900, 400, 120, 30, 0]
    pipe = DDPMPipeline.from_pretrained(folder)
    latents = latents_for(2)
    images = pipe(batch_size=2, latents=latents, generator=5, timesteps=timesteps, output_type="np",
                  progress=False).images
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(timesteps=timesteps)
    rng, x_t = np.random.default_rng(5), latents
    for t in scheduler.timesteps:
        x_t = scheduler.step(pipe.unet(x_t, t), t, x_t, generator=rng).prev_sample
    assert np.array_equal(images, to_images(x_t, "np"))


def test_pipelines_given_the_built_in_list_as_timesteps_give_the_same_images(pipe, mnist_folder):
    folder = mnist_folder
    pipe.scheduler.set_timesteps(20)
    listed = pipe.scheduler.timesteps.tolist()
    a = pipe(batch_size=2, generator=1, eta=1.0, num_inference_steps=20, output_type="np").images
    b = pipe(batch_size=2, generator=1, eta=1.0, timesteps=listed, output_type="np").images
    ddpm = DDPMPipeline.from_pretrained(folder)
    c = ddpm(batch_size=2, generator=1, num_inference_steps=20, output_type="np", progress=False).images
    d = ddpm(batch_size=2, generator=1, timesteps=listed, output_type="np", progress=False).images
    assert np.array_equal(a, b) and np.array_equal(c, d) and not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(eta=-0.1), ValueError, "eta"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=1.5), ValueError, "batch_size"),
    (dict(output_type="pt"), ValueError, "output_type 'pt'"),
    (dict(latents=np.zeros((1, 3, 16, 16), np.float32)), ValueError, "latents: UNet input has 3 channels"),
    (dict(latents=np.zeros((1, 1, 10, 16), np.float32)), ValueError, "latents: UNet input size 10x16"),
    (dict(latents=np.zeros((16, 16), np.float32)), ValueError, "latents: UNet input must be a 4-D array"),
    (dict(latents=np.full((1, 1, 16, 16), np.nan, np.float32)), ValueError, "NaN"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(num_inference_steps=1001), ValueError, "num_inference_steps"),
    (dict(timesteps=[5, 9]), ValueError, "strictly descending"),
    (dict(timesteps=[1000, 9]), ValueError, "timestep 1000 is outside"),
])
def test_bad_pipeline_arguments_are_named(mnist_pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        mnist_pipe(**kwargs)


def test_latents_of_another_size_set_the_batch_and_the_image_shape(mnist_pipe):
    """The UNet is convolutional: x_T (3, 1, 8, 24) gives three 8x24 images, equal to the scheduler loop by hand."""
    latents = np.random.default_rng(5).standard_normal((3, 1, 8, 24), dtype=np.float32)
    images = mnist_pipe(latents=latents, num_inference_steps=3, output_type="np", progress=False).images
    assert images.shape == (3, 8, 24, 1)
    scheduler = DDIMScheduler.from_config(mnist_pipe.scheduler.config)
    scheduler.set_timesteps(3)
    x_t = latents
    for t in scheduler.timesteps:
        x_t = scheduler.step(mnist_pipe.unet(x_t, t), t, x_t).prev_sample
    np.testing.assert_array_equal(images, np.clip(x_t / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1))
