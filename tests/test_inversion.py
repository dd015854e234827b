"""DDIM inversion, step by step: against diffusers' DDIMInverseScheduler and a two-step case by hand.

Conventions. diffusers' DDIMInverseScheduler climbs the same pairs of timesteps as `ddim_invert`
(ᾱ = 1, or ᾱ_0 with set_alpha_to_one=False, before the first), and its `step(ε, t, x)` is the same
update, Eq. 12 with the two ᾱ swapped. They differ in where ε_θ is evaluated: diffusers' inversion
pipelines (DiffEdit, Pix2Pix-Zero) call the model at the timestep they climb *to*; tinyddim calls it at
the timestep it climbs *from* (the explicit Euler step of the ODE, Eq. 13), and at the first timestep
on the first step, which starts from the image itself. The reference loop below evaluates the model
where tinyddim does and hands the result to diffusers' step. diffusers' inverse scheduler also clips x̂_0
by default (ours never does: it is built with clip_sample=False) and has no "linspace" spacing; with
"trailing" spacing and S not dividing T it climbs from t − T // S, not from the previous listed timestep,
so those cases are left out.
"""

import math

import numpy as np
import pytest
import torch

from tinyddim import DDIMScheduler
from tinyddim.inversion import ddim_invert

SHAPE = (2, 3, 4, 4)  # (B, C, H, W)


class ToyUNet:
    """A smooth ε-model that depends strongly on t (a wrong timestep shows), recording where it is called."""

    device = "cpu"

    def __init__(self):
        self.calls, self.inputs = [], []

    def __call__(self, x, t):
        self.calls.append(int(t))
        self.inputs.append(np.array(x))  # ddim_invert calls it once per step, on the state it climbs from
        return np.tanh(x) * (0.3 + int(t) / 1000) + 0.05 * math.sin(int(t) / 40)


def climb_with_diffusers(config, S, x0):
    """Inversion by diffusers' DDIMInverseScheduler, in float64 with our ᾱ table; every state x_t."""
    from diffusers import DDIMInverseScheduler

    ours = DDIMScheduler(**config)
    ref = DDIMInverseScheduler(**config, clip_sample=False)
    ref.set_timesteps(S)
    ref.alphas_cumprod = torch.from_numpy(ours.alpha_bar)  # float64: only the logic can differ
    ref.initial_alpha_cumprod = torch.tensor(ours.final_alpha_cumprod, dtype=torch.float64)
    unet, x, states = ToyUNet(), torch.from_numpy(x0), []
    T = ours.config.num_train_timesteps
    for t in ref.timesteps.tolist():
        t_from = t - T // S
        eps = unet(x.numpy(), t if t_from < 0 else t_from)  # where tinyddim evaluates ε_θ
        x = ref.step(torch.from_numpy(eps), t, x).prev_sample
        states.append(x.numpy())
    return states, unet.calls


@pytest.mark.parametrize("config,S", [
    ({}, 10),
    ({}, 1),
    ({"steps_offset": 1}, 20),
    ({"set_alpha_to_one": False}, 10),
    ({"timestep_spacing": "trailing"}, 20),
    ({"beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
      "beta_end": 0.012}, 10),
], ids=["leading-S10", "one-step", "offset-S20", "alpha-0-S10", "trailing-S20", "cosine-S25", "v-sd-S10"])
def test_each_inversion_step_matches_diffusers_ddim_inverse_scheduler(config, S):
    x0 = np.random.default_rng(0).uniform(-1, 1, SHAPE)  # float64
    expected, expected_calls = climb_with_diffusers(config, S, x0)
    unet = ToyUNet()
    latents = ddim_invert(unet, DDIMScheduler(**config), x0, S)
    assert unet.calls == expected_calls  # ε_θ at t_1, then at each timestep climbed from
    states = unet.inputs[1:] + [latents]  # the state after each step
    assert len(states) == S
    for ours, theirs in zip(states, expected):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-14)  # float64 both: measured 1.1e-15


class LinearUNet:
    """ε(x, t) = c_t · x with c_t = 0.5 + t / 1000, so each inversion step multiplies x by a number."""

    device = "cpu"

    def __call__(self, x, t):
        return (0.5 + int(t) / 1000) * x


def test_two_step_inversion_equals_the_update_written_out_by_hand():
    """T = 1000 linear β, S = 2: timesteps [500, 0], so the climb is x_0 -> x at t=0 -> x at t=500."""
    alpha_bar = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000))
    a0, a500 = float(alpha_bar[0]), float(alpha_bar[500])
    c0 = 0.5  # ε_θ evaluated at t = 0 both times: first the timestep climbed to, then the one climbed from
    # step 1, from the image (ᾱ = 1): x̂_0 = x_0, so x at t=0 is √ᾱ_0 x_0 + √(1 − ᾱ_0) c_0 x_0
    k1 = math.sqrt(a0) + math.sqrt(1 - a0) * c0
    # step 2, from t = 0 to t = 500: ε = c_0 x, x̂_0 = (x − √(1 − ᾱ_0) ε) / √ᾱ_0
    k2 = math.sqrt(a500) * (1 - math.sqrt(1 - a0) * c0) / math.sqrt(a0) + math.sqrt(1 - a500) * c0
    x0 = np.random.default_rng(1).uniform(-1, 1, SHAPE)
    latents = ddim_invert(LinearUNet(), DDIMScheduler(), x0, num_inference_steps=2)
    np.testing.assert_allclose(latents, k1 * k2 * x0, rtol=1e-13, atol=0)
    wrong_t = math.sqrt(a500) * (1 - math.sqrt(1 - a0) * 1.0) / math.sqrt(a0) + math.sqrt(1 - a500) * 1.0
    assert abs(k2 - wrong_t) > 0.1  # ε_θ at t = 500 in step 2 would be far off


def test_inversion_then_ddim_sampling_returns_the_image_for_a_model_exact_on_one_image():
    """If ε_θ(x, t) is the ε that puts x on the line through one x_0, both directions are exact (Eq. 13)."""
    scheduler = DDIMScheduler(clip_sample=False)
    x0 = np.random.default_rng(2).uniform(-1, 1, SHAPE)

    class Oracle:
        device = "cpu"

        def __call__(self, x, t):
            a = scheduler.alpha_bar[int(t)]
            return (x - math.sqrt(a) * x0) / math.sqrt(1 - a)

    latents = ddim_invert(Oracle(), scheduler, x0, num_inference_steps=10)
    x = latents
    for t in scheduler.timesteps:
        x = scheduler.step(Oracle()(x, t), t, x).prev_sample
    np.testing.assert_allclose(x, x0, rtol=0, atol=1e-10)
