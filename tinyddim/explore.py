"""The paper's experiments, small enough to run on a laptop with any DDIMPipeline.

    consistency_images      Fig. 5: one x_T, sampled with S = 10 ... 1000 steps, keeps its content
    slerp, interpolation    Fig. 6: spherical interpolation between two latents, decoded with η = 0
    eta_sweep               Table 1: sample quality against η ∈ {0, 0.5, 1}, σ̂ and the number of steps S
    reconstruction_error    Table 2: encode images with DDIM inversion, decode, per-pixel RMSE against S

`interpolation` takes `timesteps=` (a custom list) as the pipelines do. The helpers that sweep S take
`timesteps_for=`: a function (S, T) -> timestep list, e.g. `quadratic_timesteps`, used for each S instead
of the scheduler's spacing (results stay keyed by the S asked for, even if the list is shorter).
"""

import math

import numpy as np

from .backend import get_array_module, randn
from .ddpm import DDPMScheduler
from .ddim import DDIMScheduler
from .images import as_x0
from .pipelines import DDIMPipeline, DDPMPipeline


def slerp(z0, z1, alpha):
    """Spherical interpolation between latents z0 and z1 (same shape); alpha a scalar or a 1-D array.

        z = sin((1 − α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1,    cos θ = ⟨z0, z1⟩ / (‖z0‖ ‖z1‖)

    Returns one latent for a scalar alpha, or a stack (len(alpha), *z0.shape).
    """
    xp = get_array_module(z0)
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs latents of one shape, got {z0.shape} and {z1.shape}")
    cos_theta = float((z0 * z1).sum()) / math.sqrt(float((z0 * z0).sum()) * float((z1 * z1).sum()))
    theta = math.acos(min(1.0, max(-1.0, cos_theta)))
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    if theta < 1e-6:  # (anti)parallel latents: fall back to the straight line
        weights = [(1 - a, a) for a in alphas]
    else:
        weights = [(math.sin((1 - a) * theta) / math.sin(theta), math.sin(a * theta) / math.sin(theta))
                   for a in alphas]
    out = xp.stack([w0 * z0 + w1 * z1 for w0, w1 in weights]).astype(z0.dtype)
    return out[0] if np.ndim(alpha) == 0 else out


def interpolation(pipe, z0, z1, num=8, num_inference_steps=50, output_type="np", timesteps=None):
    """Images decoded (η = 0) from `num` latents slerped from z0 to z1, each (C, H, W).   (Fig. 6)"""
    latents = slerp(z0, z1, np.linspace(0, 1, num))  # (num, C, H, W)
    return pipe(batch_size=num, latents=latents, eta=0.0, num_inference_steps=num_inference_steps,
                output_type=output_type, progress=False, timesteps=timesteps).images


def _timesteps(pipe, S, timesteps_for):
    """The custom list for S steps, or None (the scheduler's own spacing)."""
    return None if timesteps_for is None else timesteps_for(S, pipe.scheduler.config.num_train_timesteps)


def consistency_images(pipe, latents, steps=(10, 20, 50, 100, 1000), timesteps_for=None):
    """{S: images (B, H, W, C)} from the same x_T `latents` (B, C, H, W) with S DDIM steps.   (Fig. 5)"""
    return {S: pipe(batch_size=len(latents), latents=latents, eta=0.0, num_inference_steps=S,
                    output_type="np", progress=False, timesteps=_timesteps(pipe, S, timesteps_for)).images
            for S in steps}


def eta_sweep(pipe, score, etas=(0.0, 0.5, 1.0), steps=(10, 20, 50, 100), batch_size=64, seed=0,
              sigma_hat=True, timesteps_for=None):
    """{(η or "σ̂", S): score(images)} for images from the same x_T.   (Table 1)

    σ̂ is the paper's "larger variance" DDPM, σ̂_t = √(1 − ᾱ_t/ᾱ_prev): the DDPM step with
    variance_type="fixed_large" over the same S timesteps. `score` maps images (B, H, W, C) in [0, 1]
    to a number (e.g. a classifier's confidence).
    """
    latents = randn(seed, (batch_size,) + pipe.unet.sample_shape)
    table = {}
    for S in steps:
        timesteps = _timesteps(pipe, S, timesteps_for)
        for row in list(etas) + (["σ̂"] if sigma_hat else []):
            pipeline, call = table1_cell(pipe, row, S, timesteps=timesteps)  # the same cells as Table 1's grid
            table[(row, S)] = score(pipeline(batch_size=batch_size, latents=latents, generator=seed + 1,
                                             output_type="np", progress=False, **call).images)
    return table


def reconstruction_error(pipe, images, steps=(10, 20, 50, 100), clip_sample=False, per_image=False,
                         timesteps_for=None, timestep_spacing=None):
    """{S: per-pixel RMSE on a [0, 1] scale} of images encoded by DDIM inversion and decoded.   (Table 2)

    The decoder is `pipe`'s DDIM with η = 0 and, by default, without clipping x̂_0: the round trip is
    the ODE of Eq. 14 both ways, and clipping (diffusers' default `clip_sample=True`) is not part of it:
    a clipped decoder is a different map from the one inversion runs backwards (it can lower the error, by
    clamping a flat background to black, or raise it). per_image=True gives {S: (B,) RMSE of each image}.
    `timestep_spacing` replaces the config's for both ways (an ending at t = T − 1, as trailing spacing
    has, is ill-conditioned where ᾱ_{T−1} ≈ 0: decoding divides the encoder's ε error by √ᾱ_{T−1}).
    """
    config = dict(pipe.scheduler.config)
    if timestep_spacing is not None:  # for the encoder (pipe.invert) and the decoder alike
        config["timestep_spacing"] = timestep_spacing
        pipe = DDIMPipeline(pipe.unet, DDIMScheduler.from_config(config))
    decoder = DDIMPipeline(pipe.unet, DDIMScheduler.from_config({**config, "clip_sample": clip_sample}))
    target = ((as_x0(images) + 1) / 2).transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C), in [0, 1]
    errors = {}
    for S in steps:
        timesteps = _timesteps(pipe, S, timesteps_for)
        latents = pipe.invert(images, num_inference_steps=S, progress=False, timesteps=timesteps)
        decoded = decoder(batch_size=len(images), latents=latents, eta=0.0, num_inference_steps=S,
                          output_type="np", progress=False, timesteps=timesteps).images
        squared = np.mean((decoded - target) ** 2, axis=(1, 2, 3))  # (B,) mean squared error of each image
        errors[S] = np.sqrt(squared) if per_image else float(np.sqrt(np.mean(squared)))
    return errors


TABLE1_ROWS = (0.0, 0.2, 0.5, 1.0, "σ̂")  # the rows of the paper's Table 1: η, then DDPM's larger variance


def table1_cell(pipe, row, num_inference_steps, timestep_spacing=None, timesteps=None):
    """(pipeline, keywords) that sample one cell of Table 1 with `pipe`'s model and config.   (Table 1)

    row: an η for DDIM (Eq. 12, σ_t(η) of Eq. 16); "σ̂" for DDPM's step with the larger variance
    σ̂_t = √(1 − ᾱ_t/ᾱ_prev) (variance_type="fixed_large"); "DDPM" for DDPM's own posterior variance β̃_t.
    The steps are S of `timestep_spacing` (default: the config's), or the list `timesteps` if given.
    The keywords go to the pipeline (or to `sample_to_folder`) as they are.
    """
    config = dict(pipe.scheduler.config)
    if timestep_spacing is not None:
        config["timestep_spacing"] = timestep_spacing
    call = {"num_inference_steps": num_inference_steps} if timesteps is None else {"timesteps": timesteps}
    if row == "σ̂":
        return DDPMPipeline(pipe.unet, DDPMScheduler.from_config({**config, "variance_type": "fixed_large"})), call
    if row == "DDPM":
        return DDPMPipeline(pipe.unet, DDPMScheduler.from_config({**config, "variance_type": "fixed_small"})), call
    return DDIMPipeline(pipe.unet, DDIMScheduler.from_config(config)), {**call, "eta": float(row)}
