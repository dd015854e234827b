"""DDIM inversion (paper §5.4): run the η = 0 ODE backwards, x_0 -> x_T, to encode images as latents.

With η = 0, Eq. 12 maps x_t to x_prev deterministically. Solving the same update for the later state
gives the encoder: from x_{t_prev} at ᾱ_prev, with ε = ε_θ(x_{t_prev}, t_prev),

    x_t = √ᾱ_t · x̂_0 + √(1 − ᾱ_t) · ε,      x̂_0 = (x_{t_prev} − √(1 − ᾱ_prev) · ε) / √ᾱ_prev

which is `ddim_step` with the two ᾱ swapped: the update of Eq. 13, an Euler step of the ODE of Eq. 14, taken
in the other direction (see `ode.py`).
The model is evaluated at the current timestep, without clipping; the first step, from the image itself
(ᾱ = 1 past the last step), evaluates it at the first timestep it climbs to.
"""

from .backend import to_device
from .ddim import ddim_step
from .schedules import set_steps, x0_and_eps


def ddim_invert(unet, scheduler, x0, num_inference_steps=50, progress=lambda steps: steps, timesteps=None):
    """Latents x_T such that DDIM sampling with η = 0 and the same steps returns (about) `x0` (B, C, H, W).

    The steps are `timesteps` (a custom descending list) when given, else `num_inference_steps` of them.
    """
    set_steps(scheduler, num_inference_steps, timesteps)
    climb = scheduler.timesteps[::-1].tolist()  # increasing: t_1 < t_2 < ... < t_S
    x = to_device(x0, unet.device)
    for t_prev, t in progress(list(zip([-1] + climb[:-1], climb))):
        alpha_bar_prev, alpha_bar_t = scheduler.alpha_bar_at(t_prev), scheduler.alpha_bar_at(t)
        model_output = unet(x, t if t_prev < 0 else t_prev)
        _, eps = x0_and_eps(model_output, x, alpha_bar_prev, scheduler.config.prediction_type)
        x, _ = ddim_step(x, eps, alpha_bar_t=alpha_bar_prev, alpha_bar_prev=alpha_bar_t)  # swapped: climbs
    return x
