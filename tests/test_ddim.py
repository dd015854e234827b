"""DDIM: Eq. 12 / Eq. 16 identities, every DDIMScheduler option against diffusers, and errors.

Errors against diffusers are max |ours − theirs| / max(1, max |theirs|): x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
grows like 1/√ᾱ_t (≈ 2·10⁴ for the cosine schedule at t = 999), and float32 rounds it in proportion.
"""

import math

import numpy as np
import pytest
import torch
import diffusers

from conftest import rel_err
from tinyddim.ddim import DDIMScheduler, DDIMSchedulerOutput, ddim_sigma, ddim_step
from tinyddim.ddpm import DDPMScheduler, ddpm_beta_tilde

SHAPE = (2, 3, 8, 8)  # (B, C, H, W)
TOL = 2e-5  # float32 against stock diffusers: measured ≤ 8.3e-6 (prediction_type='sample': 3.4e-5, bound 5e-5)
EXACT = 2e-13  # float64, diffusers given our ᾱ: measured ≤ 1.2e-14
COSINE = {"beta_schedule": "squaredcos_cap_v2"}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
TRAINED = np.sort(np.random.default_rng(1).uniform(1e-4, 0.05, 100)).tolist()


def err_vs_diffusers(S, eta=0.0, use_clipped_model_output=False, seed=0, exact=False, **config):
    """The worst error over every step of an S-step schedule, fresh random inputs at each step.

    exact=False: float32 inputs against stock diffusers (which rounds ᾱ and its coefficients to float32).
    exact=True: float64 inputs, and diffusers given our float64 ᾱ table, so only the logic can differ.
    """
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(S)
    ref.set_timesteps(S)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    dtype = np.float64 if exact else np.float32
    if exact:
        ref.alphas_cumprod = torch.from_numpy(ours.alpha_bar)
        ref.final_alpha_cumprod = torch.tensor(ours.final_alpha_cumprod, dtype=torch.float64)
    rng, worst = np.random.default_rng(seed), 0.0
    for t in ours.timesteps:
        model_output, sample, noise = (rng.standard_normal(SHAPE).astype(dtype) for _ in range(3))
        kwargs = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
        a = ours.step(model_output, t, sample, variance_noise=noise if eta > 0 else None, **kwargs)
        b = ref.step(torch.from_numpy(model_output), int(t), torch.from_numpy(sample),
                     variance_noise=torch.from_numpy(noise) if eta > 0 else None, **kwargs)
        assert a.prev_sample.dtype == dtype
        worst = max(worst, rel_err(a.prev_sample, b.prev_sample),
                    rel_err(a.pred_original_sample, b.pred_original_sample))
    return worst


# ---- Eq. 16 and Eq. 12 -------------------------------------------------------------------------------

def test_ddim_sigma_is_zero_at_eta_zero():
    alpha_bar = DDIMScheduler().alpha_bar
    assert all(ddim_sigma(alpha_bar[t], alpha_bar[t - 20], 0.0) == 0.0 for t in range(20, 1000, 20))


def test_ddim_sigma_squared_at_eta_one_is_ddpm_beta_tilde_for_consecutive_steps():
    s = DDIMScheduler()
    for t in range(1, 1000):
        beta_tilde = (1 - s.alpha_bar[t - 1]) / (1 - s.alpha_bar[t]) * s.betas[t]  # DDPM Eq. 7
        assert ddim_sigma(s.alpha_bar[t], s.alpha_bar[t - 1], 1.0) ** 2 == pytest.approx(beta_tilde, rel=1e-9)


def test_ddim_sigma_grows_linearly_with_eta():
    a, b = 0.3, 0.5
    assert ddim_sigma(a, b, 0.5) == pytest.approx(0.5 * ddim_sigma(a, b, 1.0), rel=1e-15)


def test_ddim_with_oracle_eps_recovers_x0_exactly():
    s = DDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)  # float64
    x = s.add_noise(x0, eps, s.timesteps[0])
    for t in s.timesteps:  # with η = 0, every x_t on the chain is √ᾱ_t x_0 + √(1−ᾱ_t) ε for the same ε
        out = s.step(eps, t, x)
        np.testing.assert_allclose(out.pred_original_sample, x0, atol=1e-10)
        x = out.prev_sample
    np.testing.assert_allclose(x, x0, atol=1e-10)


def test_ddim_eta_one_over_every_step_equals_ddpm_beta_tilde_step():
    ddim, ddpm = DDIMScheduler(clip_sample=False), DDPMScheduler(clip_sample=False)
    ddim.set_timesteps(1000)
    rng = np.random.default_rng(0)
    for t in [999, 700, 300, 1, 0]:
        eps, x, noise = (rng.standard_normal(SHAPE) for _ in range(3))
        a = ddim.step(eps, t, x, eta=1.0, variance_noise=noise)
        b = ddpm.step(eps, t, x, variance_noise=noise)
        np.testing.assert_allclose(a.prev_sample, b.prev_sample, atol=1e-10)


def test_ddim_step_function_matches_eq_12_written_out():
    rng = np.random.default_rng(0)
    x, eps, noise = (rng.standard_normal(SHAPE) for _ in range(3))
    a_t, a_prev, eta = 0.4, 0.7, 0.6
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise
    x_prev, x0_pred = ddim_step(x, eps, a_t, a_prev, eta, noise)
    np.testing.assert_allclose(x_prev, expected, rtol=1e-14)
    np.testing.assert_allclose(x0_pred, x0, rtol=1e-14)


# ---- DDIMScheduler against diffusers -----------------------------------------------------------------

CASES = {
    "linear": (50, {}),
    "linear-no-clip": (50, {"clip_sample": False}),
    "scaled_linear": (50, {**SD, "clip_sample": False}),
    "cosine": (50, COSINE),
    "cosine-no-clip": (50, {**COSINE, "clip_sample": False}),
    "trained_betas": (10, {"num_train_timesteps": 100, "trained_betas": TRAINED, "clip_sample": False}),
    "zero-snr-trailing-v-final-alpha-0": (50, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                               "set_alpha_to_one": False, "prediction_type": "v_prediction",
                                               "clip_sample": False}),
    "zero-snr-scaled-leading-eps": (50, {**SD, "rescale_betas_zero_snr": True}),
    "sample": (50, {"prediction_type": "sample"}),
    "sample-no-clip": (50, {"prediction_type": "sample", "clip_sample": False}),
    "v": (50, {"prediction_type": "v_prediction"}),
    "v-no-clip": (50, {"prediction_type": "v_prediction", "clip_sample": False}),
    "clip-range-2": (50, {"clip_sample_range": 2.0}),
    "clip-range-half": (50, {"clip_sample_range": 0.5, "prediction_type": "sample"}),
    "thresholding": (50, {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}),
    "thresholding-v-max-3": (50, {"thresholding": True, "sample_max_value": 3.0, "prediction_type": "v_prediction"}),
    "set-alpha-to-one-false": (50, {"set_alpha_to_one": False, "clip_sample": False}),
    "steps-offset": (50, {"steps_offset": 1, "clip_sample": False}),
    "leading-S-not-dividing-T": (30, {"clip_sample": False}),
    "trailing": (50, {"timestep_spacing": "trailing", "clip_sample": False}),
    "trailing-cosine-S25": (25, {**COSINE, "timestep_spacing": "trailing"}),
    "linspace-S-equals-T": (100, {"num_train_timesteps": 100, "timestep_spacing": "linspace", "clip_sample": False}),
    "one-step": (1, {"clip_sample": False}),
}


@pytest.mark.parametrize("case", CASES)
def test_ddim_step_matches_diffusers_in_float32(case):
    S, config = CASES[case]
    # with prediction_type="sample", ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t) amplifies diffusers' float32
    # rounding of 1 − ᾱ_t near t = 0 (measured: diffusers 3.7e-5 from a float64 reference, ours 2e-7)
    tol = 5e-5 if config.get("prediction_type") == "sample" else TOL
    assert err_vs_diffusers(S, **config) < tol


@pytest.mark.parametrize("case", CASES)
def test_ddim_step_matches_diffusers_exactly_given_the_same_float64_alpha_bar(case):
    S, config = CASES[case]
    assert err_vs_diffusers(S, exact=True, **config) < EXACT


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("use_clipped_model_output", [False, True])
@pytest.mark.parametrize("config", [{}, {"thresholding": True, "prediction_type": "v_prediction"},
                                    {"timestep_spacing": "trailing", **SD}], ids=["clip", "threshold-v", "trailing-sd"])
def test_ddim_step_with_eta_and_clipped_model_output_matches_diffusers(eta, use_clipped_model_output, config):
    kwargs = {"eta": eta, "use_clipped_model_output": use_clipped_model_output, **config}
    assert err_vs_diffusers(20, **kwargs) < TOL
    assert err_vs_diffusers(20, exact=True, **kwargs) < EXACT


# ---- where diffusers' t − T//S is not the next timestep ------------------------------------------------

def reference_step(alphas_cumprod, t, t_prev, eps, x, eta, noise):
    """Eq. 12 in float64 from diffusers' alphas_cumprod, stepping to the given t_prev."""
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise


@pytest.mark.parametrize("spacing,S", [("trailing", 30), ("trailing", 61), ("linspace", 10), ("linspace", 50)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_to_the_next_listed_timestep_when_s_does_not_divide_t(spacing, S, eta):
    ours = DDIMScheduler(timestep_spacing=spacing, clip_sample=False)
    ours.set_timesteps(S)
    alphas_cumprod = diffusers.DDIMScheduler().alphas_cumprod.double().numpy()
    rng = np.random.default_rng(0)
    t_prevs = ours.timesteps[1:].tolist() + [-1]
    for t, t_prev in zip(ours.timesteps, t_prevs):
        eps, x, noise = (rng.standard_normal(SHAPE) for _ in range(3))
        got = ours.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        assert rel_err(got, reference_step(alphas_cumprod, t, t_prev, eps, x, eta, noise)) < TOL


@pytest.mark.parametrize("spacing,S,t,ours_prev,theirs_prev,min_diff", [
    ("trailing", 30, 966, 932, 933, 5e-5),
    ("linspace", 10, 555, 444, 455, 1e-2),
])
def test_diffusers_ddim_steps_to_t_minus_T_over_S_instead_of_the_next_timestep(
        spacing, S, t, ours_prev, theirs_prev, min_diff):
    ours, ref = DDIMScheduler(timestep_spacing=spacing), diffusers.DDIMScheduler(timestep_spacing=spacing)
    ours.set_timesteps(S)
    ref.set_timesteps(S)
    assert (ours.previous_timestep(t), t - 1000 // S) == (ours_prev, theirs_prev)
    rng = np.random.default_rng(0)
    eps, x = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    a = ours.step(eps, t, x).prev_sample
    b = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x)).prev_sample.numpy()
    assert np.abs(a - b).max() > min_diff


# ---- custom timesteps against the DDIM authors' sampler ---------------------------------------------
# diffusers 0.42's DDIMScheduler.set_timesteps takes no `timesteps` (its DDPMScheduler does: test_ddpm.py),
# so the reference for DDIM over a custom list is the authors' own sampler.

def authors_generalized_steps(x, seq, model, betas, eta, noises):
    """The DDIM authors' sampler (ermongroup/ddim, functions/denoising.py, generalized_steps) in float64
    NumPy: seq increasing, seq_next = [-1] + seq[:-1], ᾱ(t) = ∏_{s≤t} (1 − β_s) with ᾱ(−1) = 1, and one
    noise draw per step (`noises`, in step order)."""
    alpha = np.cumprod(1 - np.concatenate([[0.0], betas]))  # alpha[t + 1] = ᾱ(t)
    seq_next = [-1] + list(seq[:-1])
    for (i, j), noise in zip(zip(reversed(seq), reversed(seq_next)), noises):
        at, at_next = alpha[i + 1], alpha[j + 1]
        et = model(x, i)
        x0_t = (x - et * np.sqrt(1 - at)) / np.sqrt(at)
        c1 = eta * np.sqrt((1 - at / at_next) * (1 - at_next) / (1 - at))
        c2 = np.sqrt((1 - at_next) - c1**2)
        x = np.sqrt(at_next) * x0_t + c1 * noise + c2 * et
    return x


@pytest.mark.parametrize("S", [10, 50, 100])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_over_quadratic_timesteps_is_the_authors_quad_sampler_whose_repeats_are_no_ops(S, eta):
    from tinyddim.schedules import quadratic_timesteps

    seq = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), S) ** 2]  # the authors' "quad" seq, repeats kept
    pairs = list(zip(reversed(seq), reversed([-1] + seq[:-1])))
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal(SHAPE)
    noises = rng.standard_normal((len(pairs),) + SHAPE)

    def model(x, t):
        return np.tanh(x) * (t + 1) / 1000 + 0.1 * x

    scheduler = DDIMScheduler(clip_sample=False)          # the authors' generalized_steps does not clip
    scheduler.set_timesteps(timesteps=quadratic_timesteps(S))
    ours_noises = iter([noise for (i, j), noise in zip(pairs, noises) if i != j])  # a repeat's σ_t is 0
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, eta=eta, variance_noise=next(ours_noises)).prev_sample
    theirs = authors_generalized_steps(x_T, seq, model, scheduler.betas, eta, noises)
    assert len(scheduler.timesteps) == len(set(seq)) and (len(set(seq)) < len(seq)) == (S >= 30)
    assert rel_err(x, theirs) < 1e-13  # measured: 0 at η = 0, ≤ 1.5e-15 at η = 1


# ---- scheduler behaviour ------------------------------------------------------------------------------

def test_ddim_step_returns_pred_epsilon_and_a_tuple_without_return_dict():
    s = DDIMScheduler(prediction_type="v_prediction")
    s.set_timesteps(10)
    rng = np.random.default_rng(0)
    v, x = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    out = s.step(v, s.timesteps[3], x)
    assert isinstance(out, DDIMSchedulerOutput)
    a, b = math.sqrt(s.alpha_bar[s.timesteps[3]]), math.sqrt(1 - s.alpha_bar[s.timesteps[3]])
    np.testing.assert_allclose(out.pred_epsilon, a * v + b * x, rtol=1e-6)
    prev, x0 = s.step(v, s.timesteps[3], x, return_dict=False)
    np.testing.assert_array_equal(prev, out.prev_sample)
    np.testing.assert_array_equal(x0, out.pred_original_sample)


def test_ddim_noise_from_the_same_seed_is_the_same():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    a = s.step(x, 500, x, eta=1.0, generator=np.random.default_rng(3)).prev_sample
    b = s.step(x, 500, x, eta=1.0, generator=3).prev_sample
    c = s.step(x, 500, x, eta=1.0, generator=4).prev_sample
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and not np.array_equal(a, c)


def test_ddim_scale_model_input_returns_the_sample():
    x = np.ones(SHAPE, dtype=np.float32)
    assert DDIMScheduler().scale_model_input(x, 10) is x


# ---- errors ------------------------------------------------------------------------------------------

def test_ddim_step_before_set_timesteps_says_to_call_it():
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match=r"call set_timesteps\(num_inference_steps\) first"):
        DDIMScheduler().step(x, 999, x)


def test_ddim_step_at_a_timestep_not_in_the_list_names_it():
    s = DDIMScheduler()
    s.set_timesteps(50)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="timestep 999 is not in this scheduler's timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="timestep 980.0 is not"):
        s.step(x, 980.0, x)


def test_negative_eta_is_an_error():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="eta must be >= 0, got -0.5"):
        s.step(x, 900, x, eta=-0.5)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_sigma(0.5, 0.6, -1.0)


def test_eta_so_large_that_sigma_exceeds_the_direction_term_is_an_error():
    with pytest.raises(ValueError, match="eta=3.0 is too large"):
        ddim_step(np.zeros(3), np.zeros(3), 0.1, 0.9, eta=3.0, noise=np.zeros(3))


def test_ddim_step_function_needs_noise_when_sigma_is_positive():
    with pytest.raises(ValueError, match="needs `noise`"):
        ddim_step(np.zeros(3), np.zeros(3), 0.1, 0.9, eta=0.5)


def test_variance_noise_of_the_wrong_shape_is_an_error():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    expected = r"variance_noise has shape \(2, 3, 8\); expected the sample's shape \(2, 3, 8, 8\)"
    with pytest.raises(ValueError, match=expected):
        s.step(x, 900, x, eta=1.0, variance_noise=x[..., 0])


def test_generator_and_variance_noise_together_are_an_error():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        s.step(x, 900, x, eta=1.0, generator=0, variance_noise=x)


@pytest.mark.parametrize("generator", [torch.Generator(), "seed", 1.5, np.random.RandomState(0)])
def test_a_generator_of_the_wrong_type_is_a_type_error_naming_it(generator):
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(TypeError, match=f"got {type(generator).__name__}"):
        s.step(x, 900, x, eta=0.0, generator=generator)


def test_epsilon_prediction_at_zero_terminal_snr_is_an_error_not_inf():
    s = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    s.set_timesteps(10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="prediction_type='epsilon' cannot give x̂_0 at ᾱ_t = 0"):
        s.step(x, 999, x)


# ---- backend ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{}, {"thresholding": True, "prediction_type": "v_prediction"}],
                         ids=["clip", "threshold-v"])
def test_ddim_scheduler_on_a_strict_device_never_touches_host_and_matches_numpy(config):
    from strict import StrictArray, strict as xp

    s = DDIMScheduler(**config)
    s.set_timesteps(5)
    rng = np.random.default_rng(0)
    x, eps = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    x_dev, eps_dev = xp.asarray(x), xp.asarray(eps)
    for t in s.timesteps:
        kwargs = {"eta": 0.5, "use_clipped_model_output": True}
        x = s.step(eps, t, x, generator=np.random.default_rng(int(t)), **kwargs).prev_sample
        x_dev = s.step(eps_dev, t, x_dev, generator=np.random.default_rng(int(t)), **kwargs).prev_sample
    assert isinstance(x_dev, StrictArray)
    np.testing.assert_allclose(xp.asnumpy(x_dev), x, rtol=1e-6, atol=1e-6)
    noisy = s.add_noise(x_dev, eps_dev, np.array([10, 500]))
    assert isinstance(noisy, StrictArray)
    np.testing.assert_allclose(xp.asnumpy(noisy), s.add_noise(x, eps, np.array([10, 500])), rtol=1e-6)
