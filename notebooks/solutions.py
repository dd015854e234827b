"""Solutions to the exercises of 08_exercises.ipynb. Try them first; the notebook's checks tell you when you are right.

The test suite runs the notebook with these answers in place of the empty ones, so every check below must pass.
"""

import math

import numpy as np

# ---- Exercise 1: Algorithm 2 from the posterior mean μ̃(x_t, x̂_0) -------------------------------------------
#
# DDPM's posterior q(x_{t-1} | x_t, x_0) has mean (DDPM Eq. 7)
#     μ̃ = √ᾱ_prev β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_prev) / (1 − ᾱ_t) · x_t,     α_t = 1 − β_t = ᾱ_t / ᾱ_prev.
# Put in x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t and use √ᾱ_prev / √ᾱ_t = 1 / √α_t:
#     μ̃ = β_t / (√α_t (1 − ᾱ_t)) · (x_t − √(1 − ᾱ_t) ε) + √α_t (1 − ᾱ_prev) / (1 − ᾱ_t) · x_t
# The x_t coefficient is [β_t + α_t (1 − ᾱ_prev)] / (√α_t (1 − ᾱ_t)) = (1 − α_t ᾱ_prev) / (√α_t (1 − ᾱ_t)) = 1 / √α_t,
# since α_t ᾱ_prev = ᾱ_t. The ε coefficient is −β_t / (√α_t √(1 − ᾱ_t)). So
#     μ̃ = (1 / √α_t) · (x_t − β_t / √(1 − ᾱ_t) · ε),
# which is line 4 of Algorithm 2 without its noise (β_t = 1 − α_t).


def algorithm2_mean(x_t, eps, alpha_bar_t, alpha_bar_prev):
    """DDPM Algorithm 2's mean, (x_t − β_t/√(1 − ᾱ_t) · ε) / √α_t, for the jump t -> t_prev."""
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    return (x_t - beta_t / math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_t)


# ---- Exercise 2: σ_t(η = 1)² = β̃_t -----------------------------------------------------------------------------
#
# Eq. 16 at η = 1: σ² = (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev). With ᾱ_t/ᾱ_prev = α_t, 1 − α_t = β_t, this is
#     σ² = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t = β̃_t                                            (DDPM Eq. 7)
# and DDIM's direction coefficient becomes 1 − ᾱ_prev − β̃_t = (1 − ᾱ_prev)(1 − β_t/(1 − ᾱ_t))
# = (1 − ᾱ_prev)(α_t − ᾱ_t)/(1 − ᾱ_t), the identity behind notebook 04's "η = 1 is DDPM".


def sigma_squared_eta_one(alpha_bar_t, alpha_bar_prev):
    """β̃_t written from ᾱ alone: (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)."""
    return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)


# ---- Exercise 3: the paper's quadratic timesteps --------------------------------------------------------------
#
# Appendix D.2 of the DDIM paper: τ_i grows quadratically with i, up to about 0.8 T (CIFAR-10 experiments).


def quadratic_timesteps(num_train_timesteps, num_inference_steps):
    """⌊(i · √(0.8 T) / (S − 1))²⌋ for i = 0 … S − 1, duplicates dropped, in descending order."""
    ramp = np.linspace(0, math.sqrt(0.8 * num_train_timesteps), num_inference_steps)
    return np.unique((ramp**2).astype(np.int64))[::-1]


# ---- Exercise 4: DDIM inversion by hand ----------------------------------------------------------------------
#
# Climb the timesteps in increasing order. From x at ᾱ_prev (ᾱ = 1 at the start, x = x_0), evaluate ε_θ there
# (at the first step, where no timestep has ᾱ = 1, at the timestep being climbed to) and take Eq. 12 with η = 0
# with the two ᾱ swapped: x̂_0 = (x − √(1 − ᾱ_prev) ε)/√ᾱ_prev, then x = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε.


def invert_by_hand(unet, scheduler, x0, num_inference_steps):
    """The latent x_T that DDIM (η = 0, the same S) decodes back to about x0 (B, C, H, W)."""
    scheduler.set_timesteps(num_inference_steps)
    climb = sorted(scheduler.timesteps.tolist())                     # t_1 < t_2 < … < t_S
    x, t_prev = x0, None
    for t in climb:
        alpha_bar_prev = 1.0 if t_prev is None else scheduler.alpha_bar_at(t_prev)
        alpha_bar_t = scheduler.alpha_bar_at(t)
        eps = unet(x, t if t_prev is None else t_prev)
        x0_pred = (x - math.sqrt(1 - alpha_bar_prev) * eps) / math.sqrt(alpha_bar_prev)
        x = math.sqrt(alpha_bar_t) * x0_pred + math.sqrt(1 - alpha_bar_t) * eps
        t_prev = t
    return x


# ---- Exercise 5: breaking "leading" spacing at S = 1 and 2 ---------------------------------------------------
#
# leading: timesteps = arange(S)[::-1] · (T // S), so S = 1 gives [0] and S = 2 gives [500, 0]. At S = 1 the model
# is asked only at t = 0, i.e. "x_T is a clean image with a trace of noise (1 − ᾱ_0 = 4e-5)": it predicts almost no
# noise, x̂_0 = (x_T − √(1 − ᾱ_0) ε)/√ᾱ_0 ≈ x_T, and the "sample" is the Gaussian latent itself, clipped to the image
# range (the check measures it). At S = 2 the first step pretends that pure noise is x_500, which should still carry
# √ᾱ_500 ≈ 0.70 of the image: the model sees an input unlike anything it was trained on at that t, and the result is
# a blob. The first timestep must be where the noise level is that of x_T ~ N(0, I).
#
# trailing starts there, at t = 999, but S = 1 fails too, differently: the one step is x̂_0 of Eq. 9, which divides by
# √ᾱ_999 = 5e-5 (cosine schedule), so any error of the network's ε is magnified 20,000 times and clipping turns
# x̂_0 into black-and-white speckle. (The exact ε of notebook 02 has no such error and gives the data mean instead.)
# With S = 2 (999, 499) the second step repairs much of it and rough digits appear.

LEADING_S1_EXPLANATION = ("leading spacing with S = 1 evaluates the model only at t = 0, where it predicts almost no "
                          "noise, so the sample is x_T itself (clipped); trailing starts at the right noise level, "
                          "t = 999, but one step there divides the network's error by sqrt(alpha_bar_999) = 5e-5")
