"""tinyddim: DDIM (Song, Meng & Ermon, arXiv 2010.02502) in NumPy, loading diffusers checkpoints.

    import tinyddim as td
    images = td.sample()                                   # the bundled MNIST model, offline
    pipe = td.DDIMPipeline.from_pretrained("path/to/ddpm-cifar10-32")
    images = pipe(batch_size=4, generator=0, num_inference_steps=50).images
    td.sample_to_folder("samples", 10_000)                 # one PNG per image, for FID; resumable, sharded
    td.fid.fid_against_mnist("samples")                    # Fréchet distance to the MNIST test digits
"""

from . import exact_eps, explore, fid, mnist, ode, viz
from .backend import get_array_module, to_device, to_numpy
from .ddim import DDIMScheduler, ddim_sigma, ddim_step
from .ddpm import DDPMScheduler, ddpm_step
from .folder import sample_to_folder
from .pipelines import DDIMPipeline, DDPMPipeline, ImagePipelineOutput, default_pipeline, sample
from .schedules import quadratic_timesteps
from .unet import UNet2DModel
from .explore import slerp
from .fid import frechet_distance
from .images import as_x0, numpy_to_pil, pil_to_numpy, to_images
from .viz import image_grid
from .weights import convert

__version__ = "0.1.0"
__all__ = [
    "DDIMPipeline", "DDIMScheduler", "DDPMPipeline", "DDPMScheduler", "ImagePipelineOutput", "UNet2DModel",
    "as_x0", "convert", "ddim_sigma", "ddim_step", "ddpm_step", "default_pipeline", "frechet_distance",
    "get_array_module", "image_grid", "numpy_to_pil", "pil_to_numpy", "quadratic_timesteps", "sample",
    "sample_to_folder", "slerp", "to_device", "to_images", "to_numpy",
]
