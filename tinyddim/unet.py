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

from .backend import get_array_module, to_device
from .config import build_config
from .nn import attention, conv2d, group_norm, linear, silu, timestep_embedding, upsample_nearest
from .parallel import batch_parallel

# diffusers' UNet2DModel defaults: a key missing from an old config.json takes these values.
# Note: a missing attention_head_dim means 8; an explicit null means one head as wide as the channels.
DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu",
    attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None, num_class_embeds=None,
    num_train_timesteps=None,
)
CHOICES = dict(
    time_embedding_type=["positional"], mid_block_type=["UNetMidBlock2D", None], downsample_type=["conv"],
    upsample_type=["conv"], act_fn=["silu", "swish"], resnet_time_scale_shift=["default", "scale_shift"],
    class_embed_type=[None], num_class_embeds=[None],
)
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


def unet_config(given):
    """A checked UNet2DModel config: diffusers' defaults filled in, unsupported options named."""
    config = build_config(DEFAULTS, given, CHOICES, owner="UNet2DModel config")
    for key, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        for block_type in config[key]:
            if block_type not in allowed:
                raise ValueError(f"UNet2DModel config: unsupported block type {block_type!r} in {key}; "
                                 f"supported: {list(allowed)}")
    levels = len(config.block_out_channels)
    if not len(config.down_block_types) == len(config.up_block_types) == levels:
        raise ValueError("UNet2DModel config: down_block_types, up_block_types and block_out_channels "
                         "must have the same length")
    for channels in config.block_out_channels:
        if channels % config.norm_num_groups or channels % _head_dim(config, channels):
            raise ValueError(f"UNet2DModel config: {channels} channels do not split into norm_num_groups="
                             f"{config.norm_num_groups} groups and heads of attention_head_dim="
                             f"{config.attention_head_dim}")
    return config


def _head_dim(config, channels):
    """Width of one attention head; null means a single head as wide as the channels."""
    return config.attention_head_dim or channels


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
    """Self-attention over the H·W positions, with a residual connection (diffusers' Attention)."""
    batch, channels, height, width = h.shape
    heads = channels // head_dim
    x = h
    if "group_norm" in p:
        h = group_norm(h, **p["group_norm"], num_groups=num_groups, eps=eps)
    tokens = h.reshape(batch, channels, height * width).swapaxes(1, 2)  # (B, C, H, W) -> (B, HW, C)

    def split_heads(y):
        return y.reshape(batch, -1, heads, head_dim).swapaxes(1, 2)  # (B, HW, C) -> (B, heads, HW, d)

    q, k, v = (split_heads(linear(tokens, **p[name])) for name in ("to_q", "to_k", "to_v"))
    out = attention(q, k, v).swapaxes(1, 2).reshape(batch, -1, channels)  # -> (B, HW, C)
    out = linear(out, **p["to_out"][0])
    out = out.swapaxes(1, 2).reshape(batch, channels, height, width)  # (B, HW, C) -> (B, C, H, W)
    return (out + x) / output_scale


def downsample(p, h, padding):
    """Downsample2D: a stride-2 3x3 conv; padding 0 means pad right and bottom by one first."""
    return conv2d(h, **p["conv"], stride=2, padding=padding if padding else (0, 1, 0, 1))


def upsample(p, h):
    """Upsample2D: nearest-neighbour x2, then a 3x3 conv."""
    return conv2d(upsample_nearest(h), **p["conv"], padding=1)


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
                h = attention_block(block["attentions"][i], h, _head_dim(config, channels), groups, eps)
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
                h = attention_block(mid["attentions"][i], h, _head_dim(config, h.shape[1]),
                                    config.attn_norm_num_groups or groups, eps, scale)
            h = resnet_block(resnet, h, temb, config, scale)

    # 5. up blocks: each resnet takes the last skip, concatenated along channels
    for block_type, channels, block in zip(config.up_block_types, config.block_out_channels[::-1],
                                           params["up_blocks"]):
        for i, resnet in enumerate(block["resnets"]):
            h = xp.concatenate([h, skips.pop()], axis=1)  # (B, C, H, W) + (B, C', H, W) -> (B, C+C', H, W)
            h = resnet_block(resnet, h, temb, config)
            if block_type == "AttnUpBlock2D":
                h = attention_block(block["attentions"][i], h, _head_dim(config, channels), groups, eps)
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


# ---- the expected weights -----------------------------------------------------------------------


def param_shapes(config):
    """{state-dict key: shape} that a checkpoint of this config must hold (as diffusers builds it)."""
    shapes = {}
    channels, temb_dim = config.block_out_channels, config.time_embedding_dim or config.block_out_channels[0] * 4

    def add(name, out_dim, in_dim=None, kernel=None):
        shapes[f"{name}.weight"] = ((out_dim,) if in_dim is None else (out_dim, in_dim)) + (kernel or ())
        shapes[f"{name}.bias"] = (out_dim,)

    def resnet(name, c_in, c_out):
        add(f"{name}.norm1", c_in)
        add(f"{name}.conv1", c_out, c_in, (3, 3))
        add(f"{name}.time_emb_proj", c_out * (2 if config.resnet_time_scale_shift == "scale_shift" else 1),
            temb_dim)
        add(f"{name}.norm2", c_out)
        add(f"{name}.conv2", c_out, c_out, (3, 3))
        if c_in != c_out:
            add(f"{name}.conv_shortcut", c_out, c_in, (1, 1))

    def attn(name, c, norm=True):
        if norm:
            add(f"{name}.group_norm", c)
        for part in ("to_q", "to_k", "to_v", "to_out.0"):
            add(f"{name}.{part}", c, c)

    add("conv_in", channels[0], config.in_channels, (3, 3))
    add("time_embedding.linear_1", temb_dim, channels[0])
    add("time_embedding.linear_2", temb_dim, temb_dim)
    c_out = channels[0]
    for i, block_type in enumerate(config.down_block_types):
        c_in, c_out = c_out, channels[i]
        for j in range(config.layers_per_block):
            resnet(f"down_blocks.{i}.resnets.{j}", c_in if j == 0 else c_out, c_out)
            if block_type == "AttnDownBlock2D":
                attn(f"down_blocks.{i}.attentions.{j}", c_out)
        if i < len(channels) - 1:
            add(f"down_blocks.{i}.downsamplers.0.conv", c_out, c_out, (3, 3))
    if config.mid_block_type is not None:
        resnet("mid_block.resnets.0", channels[-1], channels[-1])
        resnet("mid_block.resnets.1", channels[-1], channels[-1])
        if config.add_attention:
            norm = config.attn_norm_num_groups is not None or config.resnet_time_scale_shift == "default"
            attn("mid_block.attentions.0", channels[-1], norm)
    reversed_channels = channels[::-1]
    c_out = reversed_channels[0]
    for i, block_type in enumerate(config.up_block_types):
        c_prev, c_out = c_out, reversed_channels[i]
        c_skip_in = reversed_channels[min(i + 1, len(channels) - 1)]
        for j in range(config.layers_per_block + 1):
            c_skip = c_skip_in if j == config.layers_per_block else c_out
            resnet(f"up_blocks.{i}.resnets.{j}", (c_prev if j == 0 else c_out) + c_skip, c_out)
            if block_type == "AttnUpBlock2D":
                attn(f"up_blocks.{i}.attentions.{j}", c_out)
        if i < len(channels) - 1:
            add(f"up_blocks.{i}.upsamplers.0.conv", c_out, c_out, (3, 3))
    add("conv_norm_out", channels[0])
    add("conv_out", config.out_channels, channels[0], (3, 3))
    return shapes


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
        from .weights import load_unet

        config, params = load_unet(path, subfolder=subfolder, device=device)
        return cls(config, params)

    def __call__(self, sample, timestep):
        """ε_θ(sample, timestep); on the CPU the batch is shared out over the cores (`batch_parallel`)."""
        check_input(self.config, sample)
        timesteps = timesteps_for(timestep, len(sample))  # (B,) ints, sliced with the batch
        return batch_parallel(lambda x, t: unet_forward(self.params, self.config, x, t), sample, timesteps)

    def to(self, device):
        """This model with its weights on `device` ("cpu" or "cuda")."""
        from .weights import map_tree

        return UNet2DModel(self.config, map_tree(lambda w: to_device(w, device), self.params))

    @property
    def device(self):
        from .backend import device_of

        return device_of(self.params["conv_in"]["weight"])

    @property
    def sample_shape(self):
        """(C, H, W) of the images this model was trained on."""
        size = self.config.sample_size or 32
        height, width = (size, size) if isinstance(size, int) else size
        return (self.config.in_channels, height, width)
