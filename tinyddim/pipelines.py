"""Pipelines: a UNet ε_θ and a scheduler, looped from pure noise x_T to an image x_0.

    pipe = DDIMPipeline.from_pretrained("ddpm-cifar10-32")      # folder, converted file or hub id
    images = pipe(batch_size=4, generator=0, num_inference_steps=50, eta=0.0).images

The keywords, defaults and outputs are diffusers' (`ImagePipelineOutput(images)`), plus `latents`
(a given x_T) and `progress` (turn the progress bar off). `generator` may be None, an int seed or a
`numpy.random.Generator`; the noise is drawn on the host, so a seed gives the same images on any device.
"""

import os
from dataclasses import dataclass

import numpy as np

from .backend import as_generator, get_array_module, randn, to_device, to_numpy
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .unet import UNet2DModel
from .weights import read_scheduler_config, resolve

OUTPUT_TYPES = ("pil", "np")


@dataclass
class ImagePipelineOutput:
    """`images`: a list of PIL images, or a float array (B, H, W, C) in [0, 1]."""

    images: object


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
        """x_T ~ N(0, I) drawn on the host and moved to the UNet's device, or the given `latents`."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        shape = (batch_size,) + self.unet.sample_shape
        if latents is None:
            return to_device(randn(rng, shape), self.unet.device)
        if tuple(getattr(latents, "shape", ())) != shape:
            raise ValueError(f"latents must have shape {shape}, got {getattr(latents, 'shape', type(latents))}")
        if not get_array_module(latents).isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")
        return to_device(latents, self.unet.device).astype(np.float32)


def check_call(num_inference_steps, output_type, eta=0.0):
    if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; expected one of {list(OUTPUT_TYPES)}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 is DDIM, 1 is DDPM-like), got {eta}")


def to_images(x0, output_type="pil"):
    """x_0 in [-1, 1], (B, C, H, W) on any device -> PIL images or a host float array (B, H, W, C) in [0, 1]."""
    images = np.clip(to_numpy(x0) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
    return images if output_type == "np" else numpy_to_pil(images)


def numpy_to_pil(images):
    """(B, H, W, C) floats in [0, 1] -> a list of PIL images (mode "L" for one channel)."""
    from PIL import Image

    pixels = (images * 255).round().astype(np.uint8)
    if pixels.shape[-1] == 1:
        return [Image.fromarray(image[:, :, 0], mode="L") for image in pixels]
    return [Image.fromarray(image) for image in pixels]


def _output(images, return_dict):
    return ImagePipelineOutput(images=images) if return_dict else (images,)


class DDIMPipeline(_Pipeline):
    """DDIM sampling (Song et al. 2020, Eq. 12): η = 0 is the deterministic ODE, η = 1 is DDPM-like.

    As in diffusers, any DDPM/DDIM scheduler config is turned into a DDIMScheduler.
    """

    scheduler_class = DDIMScheduler

    def __call__(self, batch_size=1, generator=None, eta=0.0, num_inference_steps=50,
                 use_clipped_model_output=None, output_type="pil", return_dict=True, latents=None,
                 callback=None, progress=None):
        """Sample `batch_size` images. `callback(step_index, t, x_t, x0_pred)` runs after each step."""
        check_call(num_inference_steps, output_type, eta)
        rng = as_generator(generator)
        x_t = self.initial_latents(batch_size, rng, latents)
        self.scheduler.set_timesteps(num_inference_steps)
        for i, t in enumerate(self._progress(self.scheduler.timesteps, progress)):
            eps = self.unet(x_t, t)
            step = self.scheduler.step(eps, t, x_t, eta=eta, generator=rng,
                                       use_clipped_model_output=bool(use_clipped_model_output))
            x_t = step.prev_sample
            if callback is not None:
                callback(i, int(t), x_t, step.pred_original_sample)
        return _output(to_images(x_t, output_type), return_dict)


class DDPMPipeline(_Pipeline):
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), 1000 steps by default."""

    scheduler_class = DDPMScheduler

    def __call__(self, batch_size=1, generator=None, num_inference_steps=1000, output_type="pil",
                 return_dict=True, latents=None, progress=None):
        check_call(num_inference_steps, output_type)
        rng = as_generator(generator)
        x_t = self.initial_latents(batch_size, rng, latents)
        self.scheduler.set_timesteps(num_inference_steps)
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
           device="cpu", **kwargs):
    """Sample images with DDIM: from the bundled model, or from `model` (a folder, converted file or hub id).

    Returns what the pipeline's `.images` holds: a list of PIL images, or (B, H, W, C) floats in [0, 1].
    """
    pipe = default_pipeline(device) if model is None else DDIMPipeline.from_pretrained(model, device=device)
    return pipe(batch_size=batch_size, generator=generator, eta=eta, num_inference_steps=num_inference_steps,
                output_type=output_type, **kwargs).images
