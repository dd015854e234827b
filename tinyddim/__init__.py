"""tinyddim: DDIM (Song, Meng & Ermon, arXiv 2010.02502) in NumPy, loading diffusers checkpoints.

    import tinyddim as td
    images = td.sample()                                   # the bundled MNIST model, offline
    pipe = td.DDIMPipeline.from_pretrained("path/to/ddpm-cifar10-32")
    images = pipe(batch_size=4, generator=0, num_inference_steps=50).images
    td.sample_to_folder("samples", 10_000)                 # one PNG per image, for FID; resumable, sharded
"""

from . import explore, viz
from .backend import get_array_module, to_device, to_numpy
from .ddim import DDIMScheduler, ddim_sigma, ddim_step
from .ddpm import DDPMScheduler, ddpm_step
from .folder import sample_to_folder
from .pipelines import DDIMPipeline, DDPMPipeline, ImagePipelineOutput, default_pipeline, sample
from .unet import UNet2DModel
from .explore import slerp
from .viz import image_grid
from .weights import convert

__version__ = "0.1.0"
__all__ = [
    "DDIMPipeline", "DDIMScheduler", "DDPMPipeline", "DDPMScheduler", "ImagePipelineOutput", "UNet2DModel",
    "convert", "ddim_sigma", "ddim_step", "ddpm_step", "default_pipeline", "get_array_module", "image_grid",
    "sample", "sample_to_folder", "slerp", "to_device", "to_numpy",
]
