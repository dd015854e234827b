"""DDIM: Denoising Diffusion Implicit Models, Song, Meng & Ermon 2020 (arXiv 2010.02502).

`ddim_step` is Eq. 12 of the paper and `ddim_sigma` is Eq. 16; `DDIMScheduler` wraps them with
diffusers' options (prediction types, clipping, thresholding) and timesteps (see `schedules.py`).

Names follow the Notation block of `schedules.py` (the one list for the package): `alpha_bar` is ᾱ_t,
DDPM's notation, which the DDIM paper writes α_t; `eps` is the model's ε_θ and `noise` the fresh ε_t of
Eq. 12; `x0_pred` is x̂_0 (Eq. 9), `dir_xt` the direction pointing to x_t, `sigma` σ_t(η) (Eq. 16).

Unlike diffusers' DDIMScheduler, t_prev is the next entry of `.timesteps`, never t − T // S; the two
differ for "trailing" spacing when S does not divide T and for "linspace" spacing unless S = T.
"""

import math
from dataclasses import dataclass
from typing import Any

from .schedules import Scheduler, eps_from_x0, x0_and_eps


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    """σ_t(η) = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev), a Python float.        (DDIM Eq. 16)"""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta == 0:  # deterministic DDIM; also where Eq. 16 is 0/0 (ᾱ_t = 1, the first step of inversion)
        return 0.0
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None, x0_pred=None):
    """One DDIM update x_t -> x_prev; returns (x_prev, x0_pred).                  (DDIM Eq. 12)

        x_prev = √ᾱ_prev · x̂_0  +  √(1 − ᾱ_prev − σ_t²) · ε_θ  +  σ_t · ε_t
                 "predicted x_0"    "direction pointing to x_t"   "random noise"

    `x0_pred` may be given (already clipped, or from another prediction type); otherwise it is Eq. 9.
    `noise` is required when σ_t > 0. Coefficients are Python floats, so NumPy and CuPy arrays both work.
    """
    if x0_pred is None:
        x0_pred = (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)        # Eq. 9
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)                                    # Eq. 16
    dir_xt_sq = 1 - alpha_bar_prev - sigma**2
    if dir_xt_sq < -1e-12:
        raise ValueError(f"eta={eta} is too large here: σ_t² = {sigma**2:.3g} exceeds 1 − ᾱ_prev")
    dir_xt = math.sqrt(max(dir_xt_sq, 0.0)) * eps                                           # Eq. 12
    x_prev = math.sqrt(alpha_bar_prev) * x0_pred + dir_xt                                   # Eq. 12
    if sigma > 0:
        if noise is None:
            raise ValueError(f"eta={eta} gives σ_t = {sigma:.3g} > 0, so ddim_step needs `noise`")
        x_prev = x_prev + sigma * noise                                                     # Eq. 12
    return x_prev, x0_pred


@dataclass
class DDIMSchedulerOutput:
    """prev_sample: x_prev; pred_original_sample: x̂_0; pred_epsilon: the ε of the direction term.

    pred_epsilon is a tinyddim extra (diffusers has only the first two); trajectories and inversion use it.
    """

    prev_sample: Any
    pred_original_sample: Any = None
    pred_epsilon: Any = None


class DDIMScheduler(Scheduler):
    """DDIM sampling with diffusers' DDIMScheduler keywords, defaults and config files.

    Call `set_timesteps(S)`, then for t in `.timesteps`: `x = step(eps_model(x, t), t, x).prev_sample`.
    `set_alpha_to_one=False` uses ᾱ_0 instead of 1 as ᾱ past the last step.
    """

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                 prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                 clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                 rescale_betas_zero_snr=False):
        self._setup(locals())
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alpha_bar[0])

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):
        """One DDIM step from `sample` (x_t) at `timestep` (t) to x_prev at the next entry of `.timesteps`.

        eta: η of Eq. 16 (0: deterministic DDIM, 1: DDPM-like). use_clipped_model_output: use the ε implied
        by the clipped x̂_0 in the direction term. Noise (for η > 0) is `variance_noise`, or drawn on
        the host from `generator` (None, an int seed, or a numpy Generator; an int re-seeds on every call,
        so pass one Generator across steps). Returns DDIMSchedulerOutput, or (prev_sample, x0_pred).
        """
        if self.num_inference_steps is None:
            raise ValueError("DDIMScheduler.step needs timesteps: call set_timesteps(num_inference_steps) first")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._check_generator(generator)
        t, t_prev = self._t_and_prev(timestep)
        alpha_bar_t, alpha_bar_prev = self.alpha_bar_at(t), self.alpha_bar_at(t_prev)

        x0_pred, eps = x0_and_eps(model_output, sample, alpha_bar_t, self.config.prediction_type)
        x0_pred = self._clip_x0(x0_pred)                          # clip_sample / thresholding
        if use_clipped_model_output:
            eps = eps_from_x0(sample, x0_pred, alpha_bar_t)       # the ε that the clipped x̂_0 implies
        noise = self._noise(sample, generator, variance_noise) if eta > 0 else None
        x_prev, x0_pred = ddim_step(sample, eps, alpha_bar_t, alpha_bar_prev, eta, noise, x0_pred=x0_pred)

        if not return_dict:
            return x_prev, x0_pred
        return DDIMSchedulerOutput(prev_sample=x_prev, pred_original_sample=x0_pred, pred_epsilon=eps)
