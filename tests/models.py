"""Small diffusers models with random weights, in the shapes of the real checkpoints' families.

They are the reference for UNet parity: tests build them with torch + diffusers, save them as diffusers
does, and load the folders with tinyddim.
"""

import json
import os

import numpy as np

# Scaled-down copies of the real checkpoints' configs (fewer channels, small images).
FAMILIES = {
    # google/ddpm-cifar10-32: (128, 256, 256, 256), attention at the 2nd level, one head, old embedding.
    "ddpm-cifar10": dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=[32, 64, 64, 64], layers_per_block=2,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=16),
    # google/ddpm-{celebahq,church,bedroom,cat}-256: six levels, attention at the 5th.
    "ddpm-256": dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=[16, 16, 32, 32, 64, 64],
        layers_per_block=2,
        down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, attention_head_dim=None,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=8),
    # anton-l/ddpm-butterflies-128 and the diffusers course models: multi-head attention at two levels.
    "butterflies": dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16, 16, 32, 32], layers_per_block=2,
        down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], attention_head_dim=8,
        norm_num_groups=8),
    # One-channel digits, like the bundled model.
    "mnist": dict(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=[16, 32, 32], layers_per_block=1,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=8, norm_num_groups=8),
}

SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
             "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": True, "variance_type": "fixed_small"}


def diffusers_unet(family, seed=0, **overrides):
    """A diffusers UNet2DModel with random weights; norms are perturbed so they are not identity."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(**{**FAMILIES[family], **overrides}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.02))
    return model


def save_pipeline_folder(model, folder, layout="pipeline", old_keys=False, old_config=False):
    """Save as diffusers does: layout "pipeline" (unet/ + scheduler/) or "flat" (config beside weights).

    old_keys: attention weights named query/key/value/proj_attn, as in google/ddpm-* checkpoints.
    old_config: drop keys that old config.json files lack (they take diffusers' defaults).
    """
    from safetensors.torch import save_file

    unet_dir = os.path.join(folder, "unet") if layout == "pipeline" else folder
    os.makedirs(unet_dir, exist_ok=True)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if old_keys:
        state = {_old_key(key): value for key, value in state.items()}
    save_file(state, os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    config["_class_name"] = "UNet2DModel"
    if old_config:
        for key in ("downsample_type", "upsample_type", "attn_norm_num_groups", "add_attention",
                    "num_train_timesteps", "dropout", "class_embed_type", "num_class_embeds"):
            config.pop(key, None)
    _write_json(os.path.join(unet_dir, "config.json"), config)
    scheduler_dir = os.path.join(folder, "scheduler") if layout == "pipeline" else folder
    os.makedirs(scheduler_dir, exist_ok=True)
    _write_json(os.path.join(scheduler_dir, "scheduler_config.json"), SCHEDULER)
    if layout == "pipeline":
        _write_json(os.path.join(folder, "model_index.json"),
                    {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                     "scheduler": ["diffusers", "DDPMScheduler"]})
    return folder


def _old_key(key):
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
        key = key.replace(f".{new}.", f".{old}.")
    return key


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def torch_eps(model, x, t):
    """diffusers' ε_θ(x, t) as a NumPy array."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x)), torch.as_tensor(t)).sample.numpy()


def diffusers_unet_from_file(path):
    """(diffusers UNet2DModel, scheduler config) rebuilt from a converted `.safetensors` file."""
    import torch
    from diffusers import UNet2DModel

    from tinyddim.weights import read_metadata, read_state_dict

    metadata = read_metadata(path)
    model = UNet2DModel(**json.loads(metadata["unet_config"])).eval()
    model.load_state_dict({key: torch.from_numpy(value) for key, value in read_state_dict(path).items()})
    return model, json.loads(metadata["scheduler_config"])
