"""A list of numpy Generators, one per image: each image's x_T and η-noise come from its own generator."""

import numpy as np
import pytest

import tinyddim as td
from tinyddim.backend import randn
from tinyddim.ddpm import DDPMScheduler


@pytest.fixture(scope="module")
def ddim():
    return td.default_pipeline()


def generators(seed, indices):
    return [np.random.default_rng([seed, k]) for k in indices]


def test_randn_draws_each_slice_from_its_own_generator():
    noise = randn(generators(3, range(4)), (4, 1, 5, 5))
    alone = np.stack([np.random.default_rng([3, k]).standard_normal((1, 5, 5), dtype=np.float32) for k in range(4)])
    assert noise.dtype == np.float32 and np.array_equal(noise, alone)


def run(pipe, indices, **kwargs):
    out = pipe(batch_size=len(indices), generator=generators(5, indices), output_type="np", progress=False,
               **kwargs)
    return out.images


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_a_ddim_batch_with_a_generator_list_equals_its_images_sampled_one_at_a_time(ddim, eta):
    indices = [0, 7, 3]
    batch = ddim(batch_size=3, generator=generators(5, indices), eta=eta, num_inference_steps=5,
                 output_type="np", progress=False, return_trajectory=True)
    alone = [ddim(batch_size=1, generator=generators(5, [k]), eta=eta, num_inference_steps=5, output_type="np",
                  progress=False, return_trajectory=True) for k in indices]
    for b, one in enumerate(alone):
        assert np.array_equal(batch.trajectory.x_t[0, b], one.trajectory.x_t[0, 0])  # x_T: the same draw
        # a batch of 3 and of 1 round ε differently in float32 (by 4e-7 to 1e-6, whichever way the upsampling
        # convs run), and the first step (t = 999, trailing spacing) divides by √ᾱ_999 ≈ 5e-5 in x̂_0: measured
        # max 1.4e-4 over [0, 1] (2.7e-5 with the upsampling convs of 0201a28; 7e-7 from leading's t = 800)
        assert np.abs(batch.images[b] - one.images[0]).max() < 3e-4
    # η > 0 really draws per-image noise: a different generator for image 0 changes it
    other = ddim(batch_size=1, generator=generators(6, [0]), latents=batch.trajectory.x_t[0, :1], eta=eta,
                 num_inference_steps=5, output_type="np", progress=False).images
    assert (np.abs(other[0] - batch.images[0]).max() > 0.01) == (eta > 0)


def test_a_ddpm_batch_with_a_generator_list_equals_its_images_sampled_one_at_a_time(ddim):
    ddpm = td.DDPMPipeline(ddim.unet, DDPMScheduler.from_config(ddim.scheduler.config))
    indices = [2, 9]
    batch = run(ddpm, indices, num_inference_steps=5)
    for b, k in enumerate(indices):
        # measured 3.7e-5 (from t = 999, as for DDIM above; 3e-7 from leading's t = 800)
        assert np.abs(batch[b] - run(ddpm, [k], num_inference_steps=5)[0]).max() < 1e-4
    assert np.abs(batch[0] - batch[1]).max() > 0.1


def test_a_generator_list_of_the_wrong_length_is_a_clear_error(ddim):
    with pytest.raises(ValueError, match="list of 2 Generators for a batch of 3"):
        ddim(batch_size=3, generator=generators(0, range(2)), num_inference_steps=2, progress=False)
    latents = np.zeros((3, 1, 16, 16), np.float32)
    with pytest.raises(ValueError, match="list of 2 Generators for a batch of 3"):
        ddim(batch_size=3, latents=latents, generator=generators(0, range(2)), num_inference_steps=2, progress=False)
    scheduler = td.DDIMScheduler()
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="list of 2 Generators but the batch has 3 images"):
        scheduler.step(latents, scheduler.timesteps[0], latents, eta=1.0, generator=generators(0, range(2)))
    with pytest.raises(TypeError, match="one numpy.random.Generator per image"):
        randn([np.random.default_rng(0), 3], (2, 4))
