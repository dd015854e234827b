"""DDIM with η = 0 as an ODE (DDIM §4.3): Euler steps, which are DDIM itself, and Heun's second-order steps.

Divide Eq. 12 with σ_t = 0 by √ᾱ_prev:

    x_prev / √ᾱ_prev = x_t / √ᾱ_t + (√((1 − ᾱ_prev)/ᾱ_prev) − √((1 − ᾱ_t)/ᾱ_t)) · ε_θ(x_t, t)      (DDIM Eq. 13)

With x̄ = x / √ᾱ and σ = √((1 − ᾱ)/ᾱ) (so x = x̄ / √(σ² + 1)) this is one Euler step, from σ_t to σ_prev, of

    dx̄(t) = ε_θ^(t)( x̄(t) / √(σ² + 1) ) dσ(t)                                                   (DDIM Eq. 14)

With the exact ε (`exact_eps.ExactEps`) Eq. 14 is the probability-flow ODE of a variance-exploding SDE
(DDIM Prop. 1): x̄ = x_0 + σ ε, and −σ ∇ log p_σ(x̄) = E[ε | x̄]. Heun's method averages the slope at
both ends of a step, ε_θ(x_t, t) and ε_θ at the Euler guess at t_prev; in x, that is `ddim_step` with the
averaged ε. The last step lands on ᾱ = 1 (σ = 0), where no timestep exists to evaluate ε_θ, so it is an
Euler step (as in Karras et al. 2022). Heun costs 2S − 1 evaluations of ε_θ for S steps, Euler S.
"""

from .backend import to_device
from .ddim import ddim_step

ORDERS = (1, 2)


def ode_sample(model, scheduler, latents, num_inference_steps=50, order=1, timesteps=None, stop_at=-1):
    """x_0 (B, C, H, W) from x_T = `latents` along Eq. 14, over `scheduler`'s timesteps for S steps.

    `timesteps`: a descending list of timesteps to step through instead (S = its length), each to the next
    and the last to `stop_at`, with ᾱ from `scheduler.alpha_bar_at`; `scheduler` is then left untouched.
    `stop_at`: −1 (ᾱ past the end: the image), or a timestep below the last one to return x_t there instead.
    order=1: Euler, the same numbers as DDIM with η = 0 and no clipping; order=2: Heun. No clipping
    of x̂_0 (the ODE has none). ε_θ is called S times (Euler) or 2S − 1 times (Heun): `evaluations`.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order!r}")
    if timesteps is None:
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
    timesteps = [int(t) for t in timesteps]
    if not timesteps or any(a <= b for a, b in zip(timesteps, timesteps[1:])) or timesteps[-1] < 0 \
            or timesteps[0] >= len(scheduler.alpha_bar) or not -1 <= stop_at < timesteps[-1]:
        raise ValueError(f"timesteps must descend strictly within 0 … {len(scheduler.alpha_bar) - 1}, and stop_at "
                         f"lie below them (or be −1); got {timesteps} and stop_at={stop_at}")
    x_t = to_device(latents, model.device)
    for t, t_prev in zip(timesteps, timesteps[1:] + [stop_at]):
        alpha_bar_t, alpha_bar_prev = scheduler.alpha_bar_at(t), scheduler.alpha_bar_at(t_prev)
        eps = model(x_t, t)                                                        # slope at σ_t
        x_prev, _ = ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev)               # Euler, Eq. 13
        if order == 2 and t_prev >= 0:
            eps_prev = model(x_prev, t_prev)                                       # slope at σ_prev
            x_prev, _ = ddim_step(x_t, (eps + eps_prev) / 2, alpha_bar_t, alpha_bar_prev)   # Heun
        x_t = x_prev
    return x_t


def evaluations(num_inference_steps, order=1):
    """How many times `ode_sample` calls ε_θ: S for Euler, 2S − 1 for Heun (its last step is Euler)."""
    if order not in ORDERS:
        raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order!r}")
    return num_inference_steps if order == 1 else 2 * num_inference_steps - 1
