"""The bundled MNIST model: it loads offline and samples what it sampled before (its CLI: test_cli.py)."""

from pathlib import Path

import numpy as np

import tinyddim
from tinyddim.pipelines import BUNDLED_MODEL

FIXTURE = Path(__file__).parent / "fixtures" / "bundled_sample.npz"
# max |images − stored|: measured 1.7e-4 (mean 3.8e-6) with one thread and 6.6e-5 with two, where the batch is
# split and the products round differently (0 with one thread when the fixture was stored, before the upsampling
# convs and attention of cb840e7 and eb5e9ef changed how ε rounds): the first trailing step, at t = 999, divides
# ε's rounding by √ᾱ₉₉₉ ≈ 5e-5 in x̂_0 (README, "How exact"). Other machines' BLAS kernels round differently
# again, so the bound is 6x that, still far below one gray level (1/255 ≈ 4e-3)
FIXTURE_BOUND = 1e-3


def test_bundled_model_ships_inside_the_package_with_its_model_card():
    assert Path(BUNDLED_MODEL).is_file() and Path(BUNDLED_MODEL).stat().st_size < 8 * 2**20
    assert (Path(BUNDLED_MODEL).parent / "README.md").is_file()
    pipe = tinyddim.default_pipeline()
    assert pipe.unet.sample_shape == (1, 16, 16)
    assert isinstance(pipe.scheduler, tinyddim.DDIMScheduler)


def test_the_bundled_sampler_uses_the_spacing_table1_chose_and_says_so_in_its_card():
    pipe = tinyddim.default_pipeline()
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.scheduler.set_timesteps(10)
    assert pipe.scheduler.timesteps.tolist() == list(range(999, 0, -100))  # 999, 899, …, 99
    card = (Path(BUNDLED_MODEL).parent / "README.md").read_text(encoding="utf-8")
    assert 'timestep_spacing = "trailing"' in card and "docs/table1.md" in card


def test_few_step_sample_with_a_fixed_seed_matches_the_stored_fixture():
    stored = np.load(FIXTURE)
    images = tinyddim.sample(batch_size=len(stored["images"]), num_inference_steps=int(stored["steps"]),
                             generator=int(stored["seed"]), output_type="np", progress=False)
    np.testing.assert_allclose(images, stored["images"], rtol=0, atol=FIXTURE_BOUND)


def test_sample_returns_pil_digits_by_default_and_a_trajectory_when_asked():
    images = tinyddim.sample(batch_size=2, num_inference_steps=2, generator=0, progress=False)
    assert [image.size for image in images] == [(16, 16)] * 2
    images, trajectory = tinyddim.sample(batch_size=2, num_inference_steps=2, generator=0, output_type="np",
                                         return_trajectory=True, progress=False)
    assert images.shape == (2, 16, 16, 1) and trajectory.x_t.shape == (3, 2, 1, 16, 16)


def test_sample_over_quadratic_timesteps_is_the_bundled_pipeline_over_them():
    timesteps = tinyddim.quadratic_timesteps(10)
    images, trajectory = tinyddim.sample(batch_size=2, generator=0, timesteps=timesteps, output_type="np",
                                         return_trajectory=True, progress=False)
    pipe = tinyddim.default_pipeline()
    expected = pipe(batch_size=2, generator=0, timesteps=timesteps, output_type="np", progress=False).images
    assert np.array_equal(images, expected) and trajectory.timesteps.tolist() == timesteps.tolist()
    spaced = tinyddim.sample(batch_size=2, generator=0, num_inference_steps=10, output_type="np", progress=False)
    assert not np.array_equal(images, spaced)

