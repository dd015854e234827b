"""DDPM: Denoising Diffusion Probabilistic Models, Ho, Jain & Abbeel 2020 (arXiv 2006.11239).

`ddpm_step` samples the posterior q(x_{t−1} | x_t, x̂_0) of Eqs. 6–7, which with an unclipped x̂_0 is
line 4 of Algorithm 2. `DDPMScheduler` wraps it with diffusers' options and variance types.

Names follow the Notation block of `schedules.py` (the one list for the package): `x0_pred` is x̂_0,
`beta_t` the β of the whole jump t -> t_prev, `beta_tilde` the posterior variance β̃_t (Eq. 7), `sigma` the
standard deviation σ_t of the added noise `noise` (Algorithm 2's z).

variance_type -> σ_t
    fixed_small, fixed_small_log   √β̃_t  (σ_t² = β̃_t)
    fixed_large, fixed_large_log   √β_t
    learned                        √v, where the model outputs v = σ_t² in its second C channels
    learned_range                  the model outputs v ∈ [−1, 1] there, and
                                   log σ_t² = (v+1)/2 · log β_t + (1−v)/2 · log β̃_t   (Nichol & Dhariwal, Eq. 15)
diffusers returns NaN for fixed_large_log (it takes √ of log β_t); we use √β_t as its name says.
"""

import math
from dataclasses import dataclass
from typing import Any

from .backend import get_array_module
from .schedules import Scheduler, x0_and_eps

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def ddpm_beta_tilde(alpha_bar_t, alpha_bar_prev):
    """β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t, β_t = 1 − ᾱ_t/ᾱ_prev; floored at 1e-20 as diffusers.   (DDPM Eq. 7)"""
    beta_t = 1 - alpha_bar_t / alpha_bar_prev
    return max((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, 1e-20)


def ddpm_step(x_t, x0_pred, alpha_bar_t, alpha_bar_prev, sigma=0.0, noise=None):
    """One DDPM update x_t -> x_prev = μ̃_t(x_t, x̂_0) + σ_t · z.                  (DDPM Eq. 7, Alg. 2)

        μ̃_t = √ᾱ_prev β_t / (1 − ᾱ_t) · x̂_0  +  √α_t (1 − ᾱ_prev) / (1 − ᾱ_t) · x_t

    `sigma` is a float or an array (learned variances); no noise is added when `noise` is None.
    """
    beta_t = 1 - alpha_bar_t / alpha_bar_prev                     # β_t (of the whole jump t -> t_prev)
    coef_x0 = math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)
    coef_xt = math.sqrt(1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    x_prev = coef_x0 * x0_pred + coef_xt * x_t                    # μ̃_t, Eq. 7
    if noise is not None:
        x_prev = x_prev + sigma * noise                           # Alg. 2, line 4
    return x_prev


@dataclass
class DDPMSchedulerOutput:
    """prev_sample: x_prev; pred_original_sample: x̂_0."""

    prev_sample: Any
    pred_original_sample: Any = None


class DDPMScheduler(Scheduler):
    """Ancestral DDPM sampling with diffusers' DDPMScheduler keywords, defaults and config files.

    Without `set_timesteps` it visits all T timesteps; `set_timesteps(S)` skips, with β_t = 1 − ᾱ_t/ᾱ_prev.
    """

    choices = {**Scheduler.choices, "variance_type": VARIANCE_TYPES}

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
                 thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
                 sample_max_value=1.0, timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False):
        self._setup(locals())

    def _sigma(self, alpha_bar_t, alpha_bar_prev, predicted_variance):
        """σ_t for the configured variance_type (a float, or an array for learned variances)."""
        kind = self.config.variance_type
        beta_t, beta_tilde = 1 - alpha_bar_t / alpha_bar_prev, ddpm_beta_tilde(alpha_bar_t, alpha_bar_prev)
        if kind in ("fixed_small", "fixed_small_log"):
            return math.sqrt(beta_tilde)
        if kind in ("fixed_large", "fixed_large_log"):
            return math.sqrt(beta_t)
        if kind == "learned":
            return predicted_variance**0.5
        frac = (predicted_variance + 1) / 2                       # learned_range
        log_var = frac * math.log(beta_t) + (1 - frac) * math.log(beta_tilde)
        return get_array_module(log_var).exp(0.5 * log_var)

    def _split_variance(self, model_output, sample):
        """(model output, predicted variance): learned variance types read it from channels C … 2C−1."""
        if not self.config.variance_type.startswith("learned"):
            return model_output, None
        C = sample.shape[1]
        if model_output.shape[1] != 2 * C:
            raise ValueError(f"variance_type={self.config.variance_type!r} needs a model output with 2·C = {2 * C} "
                             f"channels, got shape {tuple(model_output.shape)}")
        return model_output[:, :C], model_output[:, C:]           # (B, C, H, W) each

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict=True):
        """One DDPM step from `sample` (x_t) at `timestep` (t) to x_prev at the next entry of `.timesteps`.

        Noise (added for t > 0, as diffusers) is `variance_noise`, or drawn on the host from `generator`
        (None, an int seed, or a numpy Generator). Returns DDPMSchedulerOutput, or (prev_sample, x0_pred).
        """
        self._check_generator(generator)
        t, t_prev = self._t_and_prev(timestep)
        alpha_bar_t, alpha_bar_prev = self.alpha_bar_at(t), self.alpha_bar_at(t_prev)
        model_output, predicted_variance = self._split_variance(model_output, sample)

        x0_pred, _ = x0_and_eps(model_output, sample, alpha_bar_t, self.config.prediction_type)
        x0_pred = self._clip_x0(x0_pred)                          # clip_sample / thresholding
        noise, sigma = None, 0.0
        if t > 0:
            noise = self._noise(sample, generator, variance_noise)
            sigma = self._sigma(alpha_bar_t, alpha_bar_prev, predicted_variance)
        x_prev = ddpm_step(sample, x0_pred, alpha_bar_t, alpha_bar_prev, sigma, noise)

        if not return_dict:
            return x_prev, x0_pred
        return DDPMSchedulerOutput(prev_sample=x_prev, pred_original_sample=x0_pred)
