"""Pipelines: a UNet ε_θ and a scheduler, looped from pure noise x_T to an image x_0.

    pipe = DDIMPipeline.from_pretrained("ddpm-cifar10-32")      # folder, converted file or hub id
    images = pipe(batch_size=4, generator=0, num_inference_steps=50, eta=0.0).images

The keywords, defaults and outputs are diffusers' (`ImagePipelineOutput(images)`), plus `latents`
(a given x_T), `timesteps` (a custom list to visit) and `progress` (turn the progress bar off). `generator`
may be None, an int seed, a `numpy.random.Generator`, or a list of B Generators, one per image (each
image's x_T and η-noise then come from its own, whatever batch it is in); the noise is drawn on the host,
so a seed gives the same images on any device.
"""

import os
from dataclasses import dataclass

import numpy as np

from .backend import as_generator, get_array_module, randn, to_device
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .images import as_x0, to_images
from .inversion import ddim_invert
from .schedules import set_steps
from .trajectory import Trajectory
from .unet import UNet2DModel, check_input
from .weights import read_scheduler_config, resolve

OUTPUT_TYPES = ("pil", "np")


@dataclass
class ImagePipelineOutput:
    """`images`: a list of PIL images, or a float array (B, H, W, C) in [0, 1].
    `trajectory`: the run's x_t, x̂_0 and ε per step (a `Trajectory`), when asked for."""

    images: object
    trajectory: Trajectory = None


class _Pipeline:
    scheduler_class = None

    def __init__(self, unet, scheduler):
        self.unet = unet
        self.scheduler = self.scheduler_class.from_config(scheduler.config)
        self.progress = True

    @classmethod
    def from_pretrained(cls, path, device="cpu"):
        """A diffusers pipeline folder, a flat model folder with scheduler_config.json, a converted
        `.safetensors` file, or a hub id (with huggingface_hub installed)."""
        path = resolve(path)
        unet = UNet2DModel.from_pretrained(path, device=device)
        config = read_scheduler_config(path)
        if config is None:
            raise FileNotFoundError(f"no scheduler config for {path}: expected scheduler/scheduler_config.json, "
                                    "scheduler_config.json, or a converted file with one in its metadata")
        return cls(unet, cls.scheduler_class.from_config(config))

    def to(self, device):
        """This pipeline with its UNet on `device`."""
        return type(self)(self.unet.to(device), self.scheduler)

    def set_progress_bar_config(self, disable=False):
        self.progress = not disable

    def _progress(self, timesteps, progress):
        if not (self.progress if progress is None else progress):
            return timesteps
        from tqdm.auto import tqdm

        return tqdm(timesteps, leave=False)

    def initial_latents(self, batch_size, rng, latents=None):
        """x_T ~ N(0, I) drawn on the host and moved to the UNet's device, or the given `latents`.

        `latents` may have any shape (B, C, H, W) the UNet takes (other sizes, non-square: it is
        convolutional); then the batch size is B and `batch_size` is not used.
        """
        batch = len(latents) if latents is not None and getattr(latents, "ndim", 0) == 4 else batch_size
        if isinstance(rng, list) and len(rng) != batch:
            raise ValueError(f"generator is a list of {len(rng)} Generators for a batch of {batch}; "
                             "pass one per image")
        if latents is None:
            if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
            return to_device(randn(rng, (batch_size,) + self.unet.sample_shape), self.unet.device)
        self._check_latents(latents)
        if not get_array_module(latents).isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")
        return to_device(latents, self.unet.device).astype(np.float32)


    def _check_latents(self, latents):
        """A UNet2DModel checks what it can take (rank, channels, sizes); any other ε-model, rank and channels."""
        try:
            if isinstance(self.unet, UNet2DModel):
                check_input(self.unet.config, latents)
            elif getattr(latents, "ndim", 0) != 4 or latents.shape[1] != self.unet.sample_shape[0]:
                raise ValueError(f"expected (B, {self.unet.sample_shape[0]}, H, W), got shape "
                                 f"{getattr(latents, 'shape', type(latents).__name__)}")
        except ValueError as err:
            raise ValueError(f"latents: {err}") from None


def check_call(num_inference_steps, output_type, eta=0.0, timesteps=None):
    ok_steps = isinstance(num_inference_steps, (int, np.integer)) and num_inference_steps >= 1
    if timesteps is None and not ok_steps:  # with a custom list, num_inference_steps is not used
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; expected one of {list(OUTPUT_TYPES)}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 is DDIM, 1 is DDPM-like), got {eta}")


def _output(images, return_dict, trajectory=None):
    if return_dict:
        return ImagePipelineOutput(images=images, trajectory=trajectory)
    return (images,) if trajectory is None else (images, trajectory)


class DDIMPipeline(_Pipeline):
    """DDIM sampling (Song et al. 2020, Eq. 12): η = 0 is the deterministic ODE, η = 1 is DDPM-like.

    As in diffusers, any DDPM/DDIM scheduler config is turned into a DDIMScheduler.
    """

    scheduler_class = DDIMScheduler

    def __call__(self, batch_size=1, generator=None, eta=0.0, num_inference_steps=50,
                 use_clipped_model_output=None, output_type="pil", return_dict=True, latents=None,
                 callback=None, return_trajectory=False, progress=None, timesteps=None):
        """Sample `batch_size` images from x_T ~ N(0, I) (or `latents`) in `num_inference_steps` DDIM steps.

        timesteps: a custom list to visit instead (strictly descending, e.g. `quadratic_timesteps(S)`);
        `num_inference_steps` is then ignored.

        callback(step_index, t, x_t, x0_pred) runs after each step; return_trajectory=True adds a
        `Trajectory` (x_t, x̂_0, ε of every step, on the host) to the output.
        """
        check_call(num_inference_steps, output_type, eta, timesteps)
        rng = as_generator(generator)
        x_t = self.initial_latents(batch_size, rng, latents)
        set_steps(self.scheduler, num_inference_steps, timesteps)
        trajectory = Trajectory(self.scheduler.timesteps.copy()) if return_trajectory else None
        if trajectory is not None:
            trajectory.record(x_t=x_t)
        for i, t in enumerate(self._progress(self.scheduler.timesteps, progress)):
            eps = self.unet(x_t, t)
            step = self.scheduler.step(eps, t, x_t, eta=eta, generator=rng,
                                       use_clipped_model_output=bool(use_clipped_model_output))
            x_t = step.prev_sample
            if trajectory is not None:
                trajectory.record(x_t, step.pred_original_sample, step.pred_epsilon)
            if callback is not None:
                callback(i, int(t), x_t, step.pred_original_sample)
        images = to_images(x_t, output_type)
        return _output(images, return_dict, trajectory.stacked() if trajectory is not None else None)

    def invert(self, images, num_inference_steps=50, progress=None, timesteps=None):
        """Latents x_T that give `images` back with `pipe(latents=..., eta=0.0)` and the same steps.  (§5.4)

        `images`: a list of PIL images, or floats (B, H, W, C) in [0, 1], as the pipeline returns them.
        `timesteps`: a custom list (decode with the same one); `num_inference_steps` is then ignored.
        The round trip is closest when decoding without clipping x̂_0 (a scheduler with clip_sample=False),
        since inversion does not clip; see `explore.reconstruction_error`. Avoid a last step at t = T − 1
        where ᾱ ≈ 0 (trailing spacing with the bundled cosine schedule: √ᾱ_999 ≈ 5e-5): decoding divides the
        encoder's ε error by √ᾱ there; leading spacing round-trips (notebook 05).
        """
        check_call(num_inference_steps, "np", timesteps=timesteps)
        x0 = as_x0(images)
        if x0.shape[1:] != self.unet.sample_shape:
            raise ValueError(f"images are {x0.shape[1:]} (C, H, W); the model makes {self.unet.sample_shape}")
        return ddim_invert(self.unet, self.scheduler, x0, num_inference_steps,
                           lambda steps: self._progress(steps, progress), timesteps)


class DDPMPipeline(_Pipeline):
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), 1000 steps by default."""

    scheduler_class = DDPMScheduler

    def __call__(self, batch_size=1, generator=None, num_inference_steps=1000, output_type="pil",
                 return_dict=True, latents=None, progress=None, timesteps=None):
        """Sample with `num_inference_steps` DDPM steps, or over `timesteps` (then S is ignored), as DDIMPipeline."""
        check_call(num_inference_steps, output_type, timesteps=timesteps)
        rng = as_generator(generator)
        x_t = self.initial_latents(batch_size, rng, latents)
        set_steps(self.scheduler, num_inference_steps, timesteps)
        for t in self._progress(self.scheduler.timesteps, progress):
            x_t = self.scheduler.step(self.unet(x_t, t), t, x_t, generator=rng).prev_sample
        return _output(to_images(x_t, output_type), return_dict)


# ---- the bundled model --------------------------------------------------------------------------

BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "bundled", "mnist.safetensors")


def default_pipeline(device="cpu"):
    """The DDIMPipeline of the small MNIST model shipped inside the package."""
    if not os.path.isfile(BUNDLED_MODEL):
        raise FileNotFoundError(f"the bundled model is missing ({BUNDLED_MODEL}); pass model=PATH to a "
                                "diffusers folder or a file made by `tinyddim convert`")
    return DDIMPipeline.from_pretrained(BUNDLED_MODEL, device=device)


def sample(batch_size=16, num_inference_steps=50, eta=0.0, generator=None, output_type="pil", model=None,
           device="cpu", return_trajectory=False, timesteps=None, **kwargs):
    """Sample images with DDIM: from the bundled model, or from `model` (a folder, converted file or hub id).

    timesteps: a custom list such as `quadratic_timesteps(S)`, visited instead of `num_inference_steps`.

    Returns what the pipeline's `.images` holds: a list of PIL images, or (B, H, W, C) floats in [0, 1];
    with return_trajectory=True, a pair (images, trajectory). Other keywords go to the pipeline.
    """
    pipe = default_pipeline(device) if model is None else DDIMPipeline.from_pretrained(model, device=device)
    out = pipe(batch_size=batch_size, generator=generator, eta=eta, num_inference_steps=num_inference_steps,
               output_type=output_type, return_trajectory=return_trajectory, timesteps=timesteps, **kwargs)
    return (out.images, out.trajectory) if return_trajectory else out.images
