"""DDPM: Algorithm 2 / Eq. 7 identities, every DDPMScheduler option against diffusers, and errors.

Errors against diffusers are max |ours − theirs| / max(1, max |theirs|) (see test_ddim.py). Both draw
the same noise: ours gets it as variance_noise, diffusers from a torch generator with the same seed.
"""

import math

import numpy as np
import pytest
import torch
import diffusers

from conftest import rel_err
from tinyddim.ddpm import DDPMScheduler, DDPMSchedulerOutput, ddpm_beta_tilde, ddpm_step
from tinyddim.schedules import quadratic_timesteps

SHAPE = (2, 3, 8, 8)  # (B, C, H, W)
TOL = 2e-5  # float32 against stock diffusers: measured ≤ 6.8e-6
EXACT = 5e-13  # float64, diffusers given our ᾱ: measured ≤ 5.2e-14
VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]


def model_output_for(variance_type, rng, dtype):
    """ε (or x̂_0, v) in channels 0…C−1, plus a predicted variance in C…2C−1 for learned variance types."""
    out = rng.standard_normal(SHAPE)
    if variance_type == "learned":     # the model outputs σ_t² itself
        out = np.concatenate([out, rng.uniform(1e-4, 2e-2, SHAPE)], axis=1)
    if variance_type == "learned_range":  # the model outputs v ∈ [−1, 1]
        out = np.concatenate([out, rng.uniform(-1, 1, SHAPE)], axis=1)
    return out.astype(dtype)


def err_vs_diffusers(S=None, timesteps=None, seed=0, exact=False, custom=None, **config):
    """The worst error over the visited steps (all of `.timesteps`, or the listed ones).

    custom: a list given to both as set_timesteps(timesteps=custom) instead of S.
    """
    ours, ref = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    if S is not None:
        ours.set_timesteps(S)
        ref.set_timesteps(S)
    if custom is not None:
        ours.set_timesteps(timesteps=custom)
        ref.set_timesteps(timesteps=custom)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    dtype = np.float64 if exact else np.float32
    if exact:  # diffusers with our float64 ᾱ: only the logic can differ
        ref.alphas_cumprod = torch.from_numpy(ours.alpha_bar)
        ref.one = torch.tensor(1.0, dtype=torch.float64)
    rng, worst = np.random.default_rng(seed), 0.0
    for i, t in enumerate(ours.timesteps if timesteps is None else timesteps):
        model_output = model_output_for(ours.config.variance_type, rng, dtype)
        sample = rng.standard_normal(SHAPE).astype(dtype)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i),
                            dtype=torch.float64 if exact else torch.float32)
        a = ours.step(model_output, t, sample, variance_noise=noise.numpy())
        b = ref.step(torch.from_numpy(model_output), int(t), torch.from_numpy(sample),
                     generator=torch.Generator().manual_seed(i))
        assert a.prev_sample.dtype == dtype
        worst = max(worst, rel_err(a.prev_sample, b.prev_sample),
                    rel_err(a.pred_original_sample, b.pred_original_sample))
    return worst


# ---- Eq. 7 and Algorithm 2 ---------------------------------------------------------------------------

def test_ddpm_step_with_unclipped_x0_is_algorithm_2_line_4():
    s = DDPMScheduler()
    rng = np.random.default_rng(0)
    for t in [999, 500, 1]:
        x, eps, z = (rng.standard_normal(SHAPE) for _ in range(3))
        a_bar, a_bar_prev, beta = s.alpha_bar[t], s.alpha_bar[t - 1], s.betas[t]
        sigma = math.sqrt(beta)
        expected = (x - beta / math.sqrt(1 - a_bar) * eps) / math.sqrt(1 - beta) + sigma * z
        x0 = (x - math.sqrt(1 - a_bar) * eps) / math.sqrt(a_bar)
        np.testing.assert_allclose(ddpm_step(x, x0, a_bar, a_bar_prev, sigma, z), expected, rtol=1e-9, atol=1e-12)


def test_ddpm_beta_tilde_is_the_posterior_variance_of_eq_7():
    s = DDPMScheduler()
    for t in [1, 10, 500, 999]:
        expected = (1 - s.alpha_bar[t - 1]) / (1 - s.alpha_bar[t]) * s.betas[t]
        assert ddpm_beta_tilde(s.alpha_bar[t], s.alpha_bar[t - 1]) == pytest.approx(expected, rel=1e-9)


def test_ddpm_step_at_t_zero_adds_no_noise():
    s = DDPMScheduler(clip_sample=False)
    x = np.ones(SHAPE, dtype=np.float32)
    a = s.step(x, 0, x, variance_noise=100 * x).prev_sample
    np.testing.assert_allclose(a, (x - math.sqrt(1 - s.alpha_bar[0]) * x) / math.sqrt(s.alpha_bar[0]), rtol=1e-6)


def test_ddpm_skipping_steps_uses_the_beta_of_the_whole_jump():
    s = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    s.set_timesteps(10)
    x, z = np.zeros(SHAPE), np.ones(SHAPE)
    t, t_prev = s.timesteps[0], s.timesteps[1]
    beta_jump = 1 - s.alpha_bar[t] / s.alpha_bar[t_prev]
    np.testing.assert_allclose(s.step(x, t, x, variance_noise=z).prev_sample, math.sqrt(beta_jump) * z, rtol=1e-12)


# ---- DDPMScheduler against diffusers -----------------------------------------------------------------

CASES = {
    **{f"{v}-all-steps": (None, {"variance_type": v}) for v in VARIANCE_TYPES},
    **{f"{v}-S20": (20, {"variance_type": v}) for v in VARIANCE_TYPES},
    "learned-range-trailing-S20": (20, {"variance_type": "learned_range", "timestep_spacing": "trailing"}),
    "sample": (20, {"prediction_type": "sample"}),
    "sample-no-clip": (20, {"prediction_type": "sample", "clip_sample": False}),
    "v": (20, {"prediction_type": "v_prediction"}),
    "v-no-clip": (20, {"prediction_type": "v_prediction", "clip_sample": False}),
    "no-clip": (20, {"clip_sample": False}),
    "clip-range-2": (20, {"clip_sample_range": 2.0}),
    "thresholding": (20, {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}),
    "cosine-linspace": (20, {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"}),
    "scaled-linear-offset": (20, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                  "steps_offset": 1, "clip_sample": False}),
    "zero-snr-v-trailing": (20, {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                                 "timestep_spacing": "trailing", "clip_sample": False}),
}
ALL_STEPS_SAMPLE = [999, 998, 500, 2, 1, 0]
FLOAT32_SAMPLE = [999, 998, 500, 100]  # lower t: diffusers' float32 β_t = 1 − ᾱ_t/ᾱ_{t−1} cancels (next test)


@pytest.mark.parametrize("case", CASES)
def test_ddpm_step_matches_diffusers_in_float32(case):
    S, config = CASES[case]
    tol = 5e-5 if config.get("prediction_type") == "sample" else TOL  # see test_ddim.py
    assert err_vs_diffusers(S, None if S else FLOAT32_SAMPLE, **config) < tol


def test_ddpm_float32_step_at_small_t_stays_closer_to_float64_than_diffusers():
    ours, ref = DDPMScheduler(), diffusers.DDPMScheduler()
    rng = np.random.default_rng(0)
    eps, x = (rng.standard_normal(SHAPE) for _ in range(2))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    truth = ours.step(eps, 2, x, variance_noise=z.double().numpy()).prev_sample
    a = ours.step(eps.astype(np.float32), 2, x.astype(np.float32), variance_noise=z.numpy()).prev_sample
    b = ref.step(torch.from_numpy(eps).float(), 2, torch.from_numpy(x).float(),
                 generator=torch.Generator().manual_seed(0))
    assert np.abs(a - truth).max() < 1e-6 < 1e-5 < np.abs(b.prev_sample.numpy() - truth).max()


@pytest.mark.parametrize("case", CASES)
def test_ddpm_step_matches_diffusers_exactly_given_the_same_float64_alpha_bar(case):
    S, config = CASES[case]
    assert err_vs_diffusers(S, None if S else ALL_STEPS_SAMPLE, exact=True, **config) < EXACT


CUSTOM = {"diffusers-test": [100, 87, 50, 1, 0], "quadratic-20": quadratic_timesteps(20).tolist(),
          "ends-at-3": [999, 500, 3]}


@pytest.mark.parametrize("custom", CUSTOM)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_custom_timesteps_match_diffusers_custom_timesteps(custom, variance_type):
    """diffusers' DDPMScheduler.set_timesteps(timesteps=...) steps to the next entry (−1 after the last), as ours."""
    assert err_vs_diffusers(custom=CUSTOM[custom], exact=True, variance_type=variance_type) < 1e-12  # ≤ 3.1e-15
    worst = err_vs_diffusers(custom=[t for t in CUSTOM[custom] if t >= 50], variance_type=variance_type)
    assert worst < TOL  # ≤ 4.8e-6; float32, without the small t where diffusers' float32 β_t cancels (above)


def test_fixed_large_log_uses_sqrt_beta_where_diffusers_returns_nan():
    rng = np.random.default_rng(0)
    x, eps, z = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(3))
    large_log = DDPMScheduler(variance_type="fixed_large_log").step(eps, 500, x, variance_noise=z).prev_sample
    large = DDPMScheduler(variance_type="fixed_large").step(eps, 500, x, variance_noise=z).prev_sample
    np.testing.assert_allclose(large_log, large, rtol=1e-6)
    ref = diffusers.DDPMScheduler(variance_type="fixed_large_log")
    assert torch.isnan(ref.step(torch.from_numpy(eps), 500, torch.from_numpy(x)).prev_sample).all()


def test_ddpm_step_returns_an_output_or_a_tuple():
    s = DDPMScheduler()
    x = np.zeros(SHAPE, dtype=np.float32)
    out = s.step(x, 10, x, generator=0)
    assert isinstance(out, DDPMSchedulerOutput)
    prev, x0 = s.step(x, 10, x, generator=0, return_dict=False)
    np.testing.assert_array_equal(prev, out.prev_sample)
    np.testing.assert_array_equal(x0, out.pred_original_sample)


# ---- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_without_2c_channels_is_an_error(variance_type):
    x = np.zeros(SHAPE, dtype=np.float32)
    expected = rf"variance_type='{variance_type}' needs a model output with 2·C = 6 channels"
    with pytest.raises(ValueError, match=expected):
        DDPMScheduler(variance_type=variance_type).step(x, 10, x)


def test_ddpm_step_at_a_timestep_not_in_the_list_names_it():
    s = DDPMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="timestep 901 is not in this scheduler's timesteps"):
        s.step(x, 901, x)


def test_ddpm_variance_noise_of_the_wrong_shape_and_a_bad_generator_are_errors():
    s, x = DDPMScheduler(), np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="variance_noise has shape"):
        s.step(x, 10, x, variance_noise=x[:1])
    with pytest.raises(TypeError, match="got Generator"):
        s.step(x, 10, x, generator=torch.Generator())


# ---- backend ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance_type", ["fixed_small", "learned", "learned_range"])
def test_ddpm_scheduler_on_a_strict_device_never_touches_host_and_matches_numpy(variance_type):
    from strict import StrictArray, strict as xp

    s = DDPMScheduler(variance_type=variance_type, thresholding=True)
    s.set_timesteps(5)
    rng = np.random.default_rng(0)
    x, model_output = rng.standard_normal(SHAPE, dtype=np.float32), model_output_for(variance_type, rng, np.float32)
    x_dev, model_output_dev = xp.asarray(x), xp.asarray(model_output)
    for t in s.timesteps:
        x = s.step(model_output, t, x, generator=np.random.default_rng(int(t))).prev_sample
        x_dev = s.step(model_output_dev, t, x_dev, generator=np.random.default_rng(int(t))).prev_sample
    assert isinstance(x_dev, StrictArray)
    np.testing.assert_allclose(xp.asnumpy(x_dev), x, rtol=1e-6, atol=1e-6)
