"""UNet2DModel: diffusers' unconditional UNet, as a forward pass over a params tree.

    ε_θ(x_t, t) = unet(x_t, t)         x_t: (B, C, H, W), t: int or (B,) ints

The params tree is the checkpoint's state dict split on "." (numbered parts become list indices), so
the diffusers key `down_blocks.1.attentions.0.to_q.weight` is `params["down_blocks"][1]["attentions"][0]
["to_q"]["weight"]`, and each op takes its weights by keyword: `conv2d(h, **p["conv1"], padding=1)`.

The forward follows diffusers' phases: time embedding, conv_in, down blocks (keeping skips), mid block,
up blocks (popping skips), then norm / SiLU / conv_out. It covers the architectures of the real
unconditional checkpoints (google/ddpm-*, anton-l/ddpm-butterflies-128, the diffusers course models):
blocks DownBlock2D, AttnDownBlock2D, UNetMidBlock2D, UpBlock2D, AttnUpBlock2D with positional time
embeddings. Anything else raises an error that names it.
"""

from . import processes
from .backend import device_of, get_array_module, to_device
from .nn import conv2d, group_norm, linear, self_attention, silu, timestep_embedding, upsample_conv
from .parallel import batch_parallel
from .weights import head_dim, load_unet, map_tree

# ---- the forward pass ---------------------------------------------------------------------------


def resnet_block(p, h, temb, config, output_scale=1.0):
    """ResnetBlock2D: norm-SiLU-conv, add the time embedding, norm-SiLU-conv, plus a (1x1) shortcut."""
    groups, eps = config.norm_num_groups, config.norm_eps
    x = h
    h = silu(group_norm(h, **p["norm1"], num_groups=groups, eps=eps), inplace=True)
    h = conv2d(h, **p["conv1"], padding=1)
    temb = linear(silu(temb), **p["time_emb_proj"])[:, :, None, None]  # (B, O) -> (B, O, 1, 1)
    if config.resnet_time_scale_shift == "scale_shift":
        scale, shift = temb[:, : h.shape[1]], temb[:, h.shape[1] :]
        h = group_norm(h, **p["norm2"], num_groups=groups, eps=eps) * (1 + scale) + shift
    else:
        h += temb
        h = group_norm(h, **p["norm2"], num_groups=groups, eps=eps)
    h = conv2d(silu(h, inplace=True), **p["conv2"], padding=1)
    if "conv_shortcut" in p:
        x = conv2d(x, **p["conv_shortcut"])
    h += x
    return h if output_scale == 1 else h / output_scale


def attention_block(p, h, head_dim, num_groups, eps, output_scale=1.0):
    """Self-attention over the H·W positions (`nn.self_attention`), with a residual connection (diffusers'
    Attention)."""
    x = h
    if "group_norm" in p:
        h = group_norm(h, **p["group_norm"], num_groups=num_groups, eps=eps)
    out = self_attention(h, h.shape[1] // head_dim, p["to_q"], p["to_k"], p["to_v"], p["to_out"][0])
    out += x
    return out if output_scale == 1 else out / output_scale


def downsample(p, h, padding):
    """Downsample2D: a stride-2 3x3 conv; padding 0 means pad right and bottom by one first."""
    return conv2d(h, **p["conv"], stride=2, padding=padding if padding else (0, 1, 0, 1))


def upsample(p, h):
    """Upsample2D: nearest-neighbour x2, then a 3x3 conv (`nn.upsample_conv`)."""
    return upsample_conv(h, **p["conv"])


def unet_forward(params, config, sample, timestep):
    """ε_θ(x_t, t) for x_t `sample` (B, C, H, W) and `timestep` (an int or B ints)."""
    xp = get_array_module(sample)
    groups, eps = config.norm_num_groups, config.norm_eps
    check_input(config, sample)
    if config.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time embedding: sinusoidal features of t (host), then Linear-SiLU-Linear
    temb = timestep_embedding(timesteps_for(timestep, len(sample)), config.block_out_channels[0],
                              config.flip_sin_to_cos, config.freq_shift)
    temb = xp.asarray(temb)
    temb = linear(silu(linear(temb, **params["time_embedding"]["linear_1"])),
                  **params["time_embedding"]["linear_2"])

    # 2. conv_in
    h = conv2d(sample, **params["conv_in"], padding=1)

    # 3. down blocks: every resnet (+ attention) output and every downsample is kept as a skip
    skips = [h]
    for block_type, channels, block in zip(config.down_block_types, config.block_out_channels,
                                           params["down_blocks"]):
        for i, resnet in enumerate(block["resnets"]):
            h = resnet_block(resnet, h, temb, config)
            if block_type == "AttnDownBlock2D":
                h = attention_block(block["attentions"][i], h, head_dim(config, channels), groups, eps)
            skips.append(h)
        if "downsamplers" in block:
            h = downsample(block["downsamplers"][0], h, config.downsample_padding)
            skips.append(h)

    # 4. mid block: resnet, attention, resnet
    if config.mid_block_type is not None:
        mid, scale = params["mid_block"], config.mid_block_scale_factor
        h = resnet_block(mid["resnets"][0], h, temb, config, scale)
        for i, resnet in enumerate(mid["resnets"][1:]):
            if config.add_attention:
                h = attention_block(mid["attentions"][i], h, head_dim(config, h.shape[1]),
                                    config.attn_norm_num_groups or groups, eps, scale)
            h = resnet_block(resnet, h, temb, config, scale)

    # 5. up blocks: each resnet takes the last skip, concatenated along channels
    for block_type, channels, block in zip(config.up_block_types, config.block_out_channels[::-1],
                                           params["up_blocks"]):
        for i, resnet in enumerate(block["resnets"]):
            h = xp.concatenate([h, skips.pop()], axis=1)  # (B, C, H, W) + (B, C', H, W) -> (B, C+C', H, W)
            h = resnet_block(resnet, h, temb, config)
            if block_type == "AttnUpBlock2D":
                h = attention_block(block["attentions"][i], h, head_dim(config, channels), groups, eps)
        if "upsamplers" in block:
            h = upsample(block["upsamplers"][0], h)

    # 6. out: norm, SiLU, conv_out
    h = silu(group_norm(h, **params["conv_norm_out"], num_groups=groups, eps=eps), inplace=True)
    return conv2d(h, **params["conv_out"], padding=1)


def timesteps_for(timestep, batch):
    """An int or B ints (any array module) -> a host int array of shape (B,)."""
    try:
        values = [int(timestep)] * batch if _is_scalar(timestep) else [int(t) for t in timestep]
    except (TypeError, ValueError):
        raise TypeError(f"timestep must be an int or {batch} ints, got {timestep!r}") from None
    if len(values) != batch:
        raise ValueError(f"got {len(values)} timesteps for a batch of {batch}")
    return values


def _is_scalar(x):
    return getattr(x, "ndim", 0) == 0 and not isinstance(x, (list, tuple))


def check_input(config, sample):
    """A clear error for input the UNet cannot take: wrong rank, channel count, or size."""
    shape = getattr(sample, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"UNet input must be a 4-D array (B, C, H, W), got shape {shape}")
    if shape[1] != config.in_channels:
        raise ValueError(f"UNet input has {shape[1]} channels, the model expects {config.in_channels}")
    factor = 2 ** (len(config.block_out_channels) - 1)
    if shape[2] % factor or shape[3] % factor:
        raise ValueError(f"UNet input size {shape[2]}x{shape[3]} cannot be halved "
                         f"{len(config.block_out_channels) - 1} times: both sides must be multiples of {factor}")


# ---- the model object ---------------------------------------------------------------------------


class UNet2DModel:
    """ε_θ: a diffusers UNet2DModel checkpoint, run with NumPy (device="cpu") or CuPy ("cuda").

    >>> unet = UNet2DModel.from_pretrained("ddpm-cifar10-32")      # a diffusers folder or .safetensors
    >>> eps = unet(x_t, t)                                          # (B, C, H, W)
    """

    def __init__(self, config, params):
        self.config = config
        self.params = params

    @classmethod
    def from_pretrained(cls, path, subfolder=None, device="cpu"):
        """Load a diffusers folder (flat, or with `unet/`), a converted `.safetensors`, or a hub id."""
        config, params = load_unet(path, subfolder=subfolder, device=device)
        return cls(config, params)

    def __call__(self, sample, timestep):
        """ε_θ(sample, timestep); on the CPU the batch is shared out over the cores: one slice in this process,
        the others in worker processes (`processes.forward`), or in threads (`batch_parallel`)."""
        check_input(self.config, sample)
        timesteps = timesteps_for(timestep, len(sample))  # (B,) ints, sliced with the batch
        if processes.applies(self, sample):
            return processes.forward(self, sample, timesteps)
        return batch_parallel(lambda x, t: unet_forward(self.params, self.config, x, t), sample, timesteps)

    def to(self, device):
        """This model with its weights on `device` ("cpu" or "cuda")."""
        return UNet2DModel(self.config, map_tree(lambda w: to_device(w, device), self.params))

    @property
    def device(self):
        return device_of(self.params["conv_in"]["weight"])

    @property
    def sample_shape(self):
        """(C, H, W) of the images this model was trained on."""
        size = self.config.sample_size or 32
        height, width = (size, size) if isinstance(size, int) else size
        return (self.config.in_channels, height, width)
