"""Print how closely tinyddim matches diffusers: the UNet per checkpoint family, and whole DDIM runs.

    python benchmarks/parity_report.py

Uses the small random-weight models of tests/models.py (the shapes of each real checkpoint family)
and the trained bundled model for whole runs. Needs `pip install -e ".[test]"`.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from models import FAMILIES, diffusers_unet, diffusers_unet_from_file, torch_eps  # noqa: E402

from tinyddim import DDIMPipeline  # noqa: E402
from tinyddim.pipelines import BUNDLED_MODEL  # noqa: E402
from tinyddim.unet import UNet2DModel  # noqa: E402
from tinyddim.weights import to_tree, unet_config  # noqa: E402


def unet_parity():
    for family, config in FAMILIES.items():
        model = diffusers_unet(family)
        state = {key: value.numpy() for key, value in model.state_dict().items()}
        unet = UNet2DModel(unet_config(dict(model.config)), to_tree(state))
        size = config["sample_size"]
        x = np.random.default_rng(0).standard_normal((4, config["in_channels"], size, size), dtype=np.float32)
        worst = max(float(np.abs(unet(x, t) - torch_eps(model, x, t)).max()) for t in (0, 250, 999))
        print(f"UNet {family:13s} max |ε diff| over t in (0, 250, 999): {worst:.1e}")


def run_parity(steps=(10, 50)):
    import diffusers.pipelines.ddim.pipeline_ddim as ddim_module
    import torch
    from diffusers import DDIMPipeline as TorchDDIMPipeline
    from diffusers import DDIMScheduler as TorchDDIM

    model, scheduler_config = diffusers_unet_from_file(BUNDLED_MODEL)
    ours = DDIMPipeline.from_pretrained(BUNDLED_MODEL)
    latents = np.random.default_rng(0).standard_normal((16, 1, 16, 16), dtype=np.float32)
    ddim_module.randn_tensor = lambda shape, **kw: torch.from_numpy(latents.copy())
    theirs = TorchDDIMPipeline(unet=model, scheduler=TorchDDIM.from_config(scheduler_config))
    theirs.set_progress_bar_config(disable=True)
    for S in steps:
        a = theirs(batch_size=16, num_inference_steps=S, output_type="np").images
        b = ours(batch_size=16, latents=latents, num_inference_steps=S, output_type="np", progress=False).images
        diff = np.abs(a - b)
        print(f"DDIM run, bundled model, 16 images, S = {S}: images max |diff| {diff.max():.1e}, mean {diff.mean():.1e}")


if __name__ == "__main__":
    unet_parity()
    run_parity()
