"""diffusers' own fast tests with hard-coded numbers, pointed at tinyddim.

The expected numbers, tolerances and model configs are diffusers' (huggingface/diffusers, tests/schedulers/
test_scheduler_ddim.py, test_scheduler_ddpm.py, their common base test_schedulers.py, and
tests/pipelines/ddim/test_ddim.py, tests/pipelines/ddpm/test_ddpm.py); diffusers 0.42.1 reaches every one
of them. The test code is ours.

Where diffusers draws noise from a torch generator, the same torch generator is seeded here, the same
tensors are drawn from it in the same order, and they are handed to tinyddim as `latents=` (x_T) and
`variance_noise=` (the ε_t of each step); so the runs see the very numbers diffusers' runs see.

Not ported: the tests without hard-coded numbers (check_over_configs / check_over_forward, which compare a
scheduler with its saved-and-reloaded self; PipelineTesterMixin's save/load and batch checks; DDPM's
test_inference_predict_sample, which compares two identical runs) and the @slow integration tests, which
download checkpoints. diffusers' private _get_variance is checked through our public σ_t and β̃_t.
"""

import numpy as np
import pytest
import torch

from tinyddim import DDIMScheduler, DDPMScheduler, ddim_sigma
from tinyddim.ddpm import ddpm_beta_tilde

# ---- the common base (test_schedulers.py): a deterministic sample, noise and "model" --------------

B, C, H, W = 4, 3, 8, 8


def dummy_sample_deter(flip=False):
    """arange(N) / N laid out as (C, H, W, B) and moved to (B, C, H, W); `flip` reverses it first (the noise)."""
    n = B * C * H * W
    values = np.arange(n, dtype=np.float32)[::-1] if flip else np.arange(n, dtype=np.float32)
    return (values / np.float32(n)).reshape(C, H, W, B).transpose(3, 0, 1, 2).copy()  # (C, H, W, B) -> (B, C, H, W)


def dummy_model(sample, t):
    """diffusers' dummy ε model: sample · t / (t + 1), with t cast to the sample's float32 as diffusers does."""
    t = np.float32(t)
    return sample * t / (t + 1)


def abs_sum_and_mean(x):
    return float(np.abs(x).sum()), float(np.abs(x).mean())


# ---- DDIMScheduler (test_scheduler_ddim.py) -------------------------------------------------------

DDIM_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                   clip_sample=True)


def ddim_full_loop(**config):
    scheduler = DDIMScheduler(**{**DDIM_CONFIG, **config})
    scheduler.set_timesteps(10)
    sample = dummy_sample_deter()
    for t in scheduler.timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, 0.0).prev_sample
    return sample


@pytest.mark.parametrize("config,expected_sum,expected_mean", [
    ({}, 172.0067, 0.223967),                                        # test_full_loop_no_noise
    ({"prediction_type": "v_prediction"}, 52.5302, 0.0684),          # test_full_loop_with_v_prediction
    ({"set_alpha_to_one": True, "beta_start": 0.01}, 149.8295, 0.1951),   # ..._with_set_alpha_to_one
    ({"set_alpha_to_one": False, "beta_start": 0.01}, 149.0784, 0.1941),  # ..._with_no_set_alpha_to_one
], ids=["no_noise", "v_prediction", "set_alpha_to_one", "no_set_alpha_to_one"])
def test_ddim_full_loop_gives_diffusers_numbers(config, expected_sum, expected_mean):
    # Leading spacing, S = 10 divides T: our t_prev rule and diffusers' t − T // S agree here.
    result_sum, result_mean = abs_sum_and_mean(ddim_full_loop(**config))
    assert abs(result_sum - expected_sum) < 1e-2 and abs(result_mean - expected_mean) < 1e-3


def test_ddim_full_loop_with_noise_gives_diffusers_numbers():
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps[8:]                               # t_start = 8: [100, 0]
    sample = scheduler.add_noise(dummy_sample_deter(), dummy_sample_deter(flip=True), timesteps[:1])
    for t in timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, 0.0).prev_sample
    result_sum, result_mean = abs_sum_and_mean(sample)
    assert abs(result_sum - 354.5418) < 1e-2 and abs(result_mean - 0.4616) < 1e-3


def test_ddim_steps_offset_gives_diffusers_timesteps():
    scheduler = DDIMScheduler(**DDIM_CONFIG, steps_offset=1)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]


@pytest.mark.parametrize("t,t_prev,expected", [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460),
                                                (487, 486, 0.00979), (999, 998, 0.02)])
def test_ddim_variance_gives_diffusers_numbers(t, t_prev, expected):
    # diffusers' private _get_variance(t, t_prev) is σ_t² at η = 1 (Eq. 16); (0, 0) is 0/0 there and 0 in
    # diffusers, and ours gives 0 for it only through η: ᾱ_t = ᾱ_prev makes 1 − ᾱ_t/ᾱ_prev = 0.
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    variance = ddim_sigma(scheduler.alpha_bar_at(t), scheduler.alpha_bar_at(t_prev), eta=1.0) ** 2
    assert abs(variance - expected) < 1e-5


# ---- DDPMScheduler (test_scheduler_ddpm.py) -------------------------------------------------------

DDPM_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                   variance_type="fixed_small", clip_sample=True)


class TorchNoise:
    """The ε_t diffusers' DDPMScheduler.step draws: torch.randn(sample shape) from one seeded torch
    generator, one draw per step with t > 0 (none at t = 0), in step order."""

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)  # the stream of torch.manual_seed(seed)

    def at(self, t, shape):
        if t == 0:
            return None
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).numpy()


def ddpm_loop(scheduler, sample, timesteps):
    noise = TorchNoise(0)
    for t in timesteps:
        step = scheduler.step(dummy_model(sample, t), t, sample, variance_noise=noise.at(t, sample.shape))
        sample = step.prev_sample
    return sample


@pytest.mark.parametrize("config,expected_sum,expected_mean", [
    ({}, 258.9606, 0.3372),                                          # test_full_loop_no_noise
    ({"prediction_type": "v_prediction"}, 202.0296, 0.2631),         # test_full_loop_with_v_prediction
], ids=["epsilon", "v_prediction"])
def test_ddpm_full_loop_over_all_1000_steps_gives_diffusers_numbers(config, expected_sum, expected_mean):
    scheduler = DDPMScheduler(**{**DDPM_CONFIG, **config})
    sample = ddpm_loop(scheduler, dummy_sample_deter(), range(len(scheduler) - 1, -1, -1))
    result_sum, result_mean = abs_sum_and_mean(sample)
    assert abs(result_sum - expected_sum) < 1e-2 and abs(result_mean - expected_mean) < 1e-3


def diffusers_ddpm_with_noise_in_float64(monkeypatch):
    """diffusers' own DDPMScheduler on float64 tensors (its ᾱ table cast up), with the float32 noise it
    draws in float32 runs: the loop of test_full_loop_with_noise without float32 coefficient rounding."""
    from diffusers import DDPMScheduler as TorchDDPM
    import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, generator=None, device=None, dtype=None:
                        torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype))
    scheduler = TorchDDPM(**DDPM_CONFIG)
    for name in ("alphas_cumprod", "alphas", "betas", "one"):
        setattr(scheduler, name, getattr(scheduler, name).double())
    generator = torch.manual_seed(0)
    timesteps = scheduler.timesteps[len(scheduler) - 2:]
    sample = scheduler.add_noise(torch.from_numpy(dummy_sample_deter()).double(),
                                 torch.from_numpy(dummy_sample_deter(flip=True)).double(), timesteps[:1])
    for t in timesteps:
        sample = scheduler.step(sample * t / (t + 1), t, sample, generator=generator).prev_sample
    return abs_sum_and_mean(sample.numpy())


def test_ddpm_full_loop_with_noise_gives_diffusers_numbers_without_float32_rounding(monkeypatch):
    """diffusers' hard-coded 387.9466 / 0.5051 is float32 rounding at t = 1: there 1 − ᾱ_1/ᾱ_0 ≈ 1.2e-4 and
    1 − ᾱ_t keep ~3 of float32's ~7 digits. Ours (float64 ᾱ, Python-float coefficients, a deliberate difference)
    gives 387.9672, 0.0206 above it; diffusers' own scheduler run in float64 gives 387.9676. So the bound
    is against that float64 run of diffusers' code (measured: sum 3.8e-4 apart, from its float32 ᾱ table)."""
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    timesteps = scheduler.timesteps[len(scheduler) - 2:]              # t_start = T − 2: [1, 0]
    sample = scheduler.add_noise(dummy_sample_deter(), dummy_sample_deter(flip=True), timesteps[:1])
    result_sum, result_mean = abs_sum_and_mean(ddpm_loop(scheduler, sample, timesteps))
    reference_sum, reference_mean = diffusers_ddpm_with_noise_in_float64(monkeypatch)
    assert abs(result_sum - reference_sum) < 4e-3 and abs(result_mean - reference_mean) < 1e-5
    assert abs(reference_sum - 387.9466) > 1e-2   # the float32 figure is not reachable in float64 either


@pytest.mark.parametrize("t,expected", [(0, 0.0), (487, 0.00979), (999, 0.02)])
def test_ddpm_variance_gives_diffusers_numbers(t, expected):
    # diffusers' private _get_variance(t) for fixed_small, stepping to t − 1: β̃_t (Eq. 7).
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    assert abs(ddpm_beta_tilde(scheduler.alpha_bar_at(t), scheduler.alpha_bar_at(t - 1)) - expected) < 1e-5


def test_ddpm_custom_timesteps_step_to_the_next_entry_and_minus_one_after_the_last():
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    timesteps = [100, 87, 50, 1, 0]
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.timesteps.tolist() == timesteps
    assert [scheduler.previous_timestep(t) for t in scheduler.timesteps] == [87, 50, 1, 0, -1]


@pytest.mark.parametrize("kwargs", [
    dict(timesteps=[100, 87, 50, 51, 0]),                          # test_custom_timesteps_increasing_order
    dict(num_inference_steps=5, timesteps=[100, 87, 50, 1, 0]),    # ..._passing_both_num_inference_steps_and_timesteps
    dict(timesteps=[1000]),                                        # test_custom_timesteps_too_large
], ids=["increasing", "both", "too_large"])
def test_ddpm_bad_custom_timesteps_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        DDPMScheduler(**DDPM_CONFIG).set_timesteps(**kwargs)


# ---- the pipelines (tests/pipelines/ddim/test_ddim.py, tests/pipelines/ddpm/test_ddpm.py) ----------

# diffusers' pipeline test UNet: 4 channels and no attention at the first level, 8 with attention at the
# second; attention_head_dim is diffusers' default 8 (one head of 8 at the second level).
PIPELINE_TEST_UNET = dict(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=8,
                          in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def test_unet(tmp_path_factory):
    """diffusers' test UNet with the weights torch.manual_seed(0) gives it, saved as diffusers does and
    loaded into tinyddim's UNet2DModel."""
    from diffusers import UNet2DModel as TorchUNet

    from models import save_pipeline_folder
    from tinyddim import UNet2DModel

    torch.manual_seed(0)
    folder = save_pipeline_folder(TorchUNet(**PIPELINE_TEST_UNET).eval(), tmp_path_factory.mktemp("test_unet"))
    return UNet2DModel.from_pretrained(folder)


def torch_latents(generator, shape=(1, 3, 8, 8)):
    """x_T as diffusers' pipelines draw it: randn_tensor on the CPU is torch.randn from the given generator."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()


def test_ddim_pipeline_inference_gives_diffusers_image_slice(test_unet):
    from tinyddim import DDIMPipeline

    pipe = DDIMPipeline(test_unet, DDIMScheduler())                       # diffusers' DDIMScheduler() defaults
    latents = torch_latents(torch.Generator(device="cpu").manual_seed(0))  # η = 0: no other noise is drawn
    image = pipe(batch_size=1, latents=latents, num_inference_steps=2, output_type="np", progress=False).images
    assert image.shape == (1, 8, 8, 3)
    expected_slice = np.array([0.0, 9.979e-01, 0.0, 9.999e-01, 9.986e-01, 9.991e-01, 7.106e-04, 0.0, 0.0])
    assert np.abs(image[0, -3:, -3:, -1].flatten() - expected_slice).max() <= 1e-3   # measured 8.0e-5
    assert np.abs(image - diffusers_pipeline_image("DDIMPipeline", "DDIMScheduler")).max() < 2e-5  # 1.1e-6


def diffusers_pipeline_image(pipeline_name, scheduler_name):
    """The test's image from diffusers' own pipeline, the same test UNet and a torch generator seeded 0."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**PIPELINE_TEST_UNET).eval()
    pipe = getattr(diffusers, pipeline_name)(unet=unet, scheduler=getattr(diffusers, scheduler_name)())
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator(device="cpu").manual_seed(0), num_inference_steps=2,
                output_type="np").images


def test_ddpm_pipeline_fast_inference_gives_diffusers_image_slice(test_unet):
    """DDPMPipeline's loop written out with our scheduler, since our pipeline draws its per-step noise from
    a NumPy generator: diffusers' pipeline draws x_T and then, at each step with t > 0, ε_t from the same
    torch generator; those tensors go in as the x_T and `variance_noise` of our steps."""
    from tinyddim import to_images

    generator = torch.Generator(device="cpu").manual_seed(0)
    scheduler = DDPMScheduler()                                          # diffusers' DDPMScheduler() defaults
    x_t = torch_latents(generator)
    scheduler.set_timesteps(2)                                           # [500, 0]
    for t in scheduler.timesteps:
        noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float32).numpy() if t > 0 else None
        x_t = scheduler.step(test_unet(x_t, t), t, x_t, variance_noise=noise).prev_sample
    image = to_images(x_t, "np")
    assert image.shape == (1, 8, 8, 3)
    expected_slice = np.array([0.0, 0.9996672, 0.00329116, 1.0, 0.9995991, 1.0, 0.0060907, 0.00115037, 0.0])
    assert np.abs(image[0, -3:, -3:, -1].flatten() - expected_slice).max() < 1e-2   # measured 5.7e-7
    assert np.abs(image - diffusers_pipeline_image("DDPMPipeline", "DDPMScheduler")).max() < 2e-5  # 2.2e-6
