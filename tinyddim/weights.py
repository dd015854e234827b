"""Checkpoints -> params trees: diffusers folders, converted single files, hub ids.

A diffusers UNet lives in a folder with `config.json` and `diffusion_pytorch_model.safetensors` (or the
older `.bin`), either flat or inside `unet/` of a pipeline folder whose `scheduler/` holds
`scheduler_config.json`. `convert` packs one into a single `.safetensors` file whose metadata carries
the configs ("unet_config", "scheduler_config"), with the old attention keys renamed.

Every load checks the weights against the shapes the config implies, and errors name the file, the
key and both shapes.
"""

import json
import os

import numpy as np

from .backend import to_device
from .config import build_config, find_file, read_json, write_atomic

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# Old checkpoints (google/ddpm-*) name the attention weights as the original DDPM code did.
DEPRECATED_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ---- what a checkpoint must hold: its config and the shapes of its weights ----------------------

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
        if channels % config.norm_num_groups:
            raise ValueError(f"UNet2DModel config: {channels} channels do not split into "
                             f"norm_num_groups={config.norm_num_groups} groups")
    for channels in attention_channels(config):
        if channels % head_dim(config, channels):
            raise ValueError(f"UNet2DModel config: the attention over {channels} channels does not split into "
                             f"heads of attention_head_dim={config.attention_head_dim}")
    return config


def attention_channels(config):
    """The channel counts of the levels that have attention (down, up and mid blocks)."""
    levels = zip(config.down_block_types, config.up_block_types[::-1], config.block_out_channels)
    channels = [c for down, up, c in levels if "Attn" in down or "Attn" in up]
    if config.mid_block_type is not None and config.add_attention:
        channels.append(config.block_out_channels[-1])
    return channels


def head_dim(config, channels):
    """Width of one attention head; null means a single head as wide as the channels."""
    return config.attention_head_dim or channels


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


# ---- reading and writing checkpoints --------------------------------------------------------------

def resolve(path):
    """A local path as is; a hub id ("google/ddpm-cifar10-32") through huggingface_hub's cache."""
    path = os.fspath(path)
    if os.path.exists(path) or path.count("/") != 1 or path.startswith((".", "/")):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"no such file or folder: {path} (to load a hub id, "
                                "`pip install tinyddim[hub]`)") from None
    try:
        return snapshot_download(path)
    except Exception as err:  # the hub raises many types; all mean "could not get it"
        raise FileNotFoundError(f"could not load {path!r} from the Hugging Face hub: {err}") from None


def read_state_dict(path):
    """{key: float32 host array} from a `.safetensors` (or, with torch installed, a `.bin`) file."""
    if path.endswith(".bin"):
        return _read_torch_bin(path)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read weights from {path}: corrupt or truncated safetensors file ({err})") from None
    return {key: value.astype(np.float32) for key, value in state.items()}


def _read_torch_bin(path):
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch .bin checkpoint: loading it needs torch "
                          "(`pip install torch`), or convert it to .safetensors elsewhere") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle/zip/runtime errors for a bad file
        raise ValueError(f"cannot read weights from {path}: {err}") from None
    return {key: value.float().numpy() for key, value in state.items()}


def read_metadata(path):
    """The string metadata of a `.safetensors` file (empty dict if none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: corrupt or truncated safetensors file ({err})") from None


def rename_deprecated_keys(state):
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 inside attention blocks."""
    renamed = {}
    for key, value in state.items():
        *prefix, name, kind = key.split(".")
        if ".attentions." in key and name in DEPRECATED_ATTENTION_KEYS:
            key = ".".join(prefix + [DEPRECATED_ATTENTION_KEYS[name], kind])
        renamed[key] = value
    return renamed


def check_state_dict(state, config, source):
    """Every key the config needs is present, with its shape; nothing unexpected is left over."""
    expected = param_shapes(config)
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"{source}: missing weight(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: weight {key} has shape {tuple(state[key].shape)}, "
                             f"the config implies {shape}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise ValueError(f"{source}: unexpected weight(s) {', '.join(unexpected[:5])} "
                         "(is the config.json for this checkpoint?)")


def to_tree(state):
    """Flat {"a.0.b.weight": w} -> nested {"a": [{"b": {"weight": w}}]}; numbered parts become lists."""
    tree = {}
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _lists(tree)


def _lists(node):
    if not isinstance(node, dict):
        return node
    children = {key: _lists(value) for key, value in node.items()}
    if children and all(key.isdigit() for key in children):
        return [children[str(i)] for i in range(len(children))]
    return children


def map_tree(fn, tree):
    """Apply `fn` to every array of a params tree."""
    if isinstance(tree, dict):
        return {key: map_tree(fn, value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [map_tree(fn, value) for value in tree]
    return fn(tree)


def read_unet(path, subfolder=None):
    """(checked config, renamed float32 state dict) from a folder or a converted file."""
    path = resolve(path)
    if os.path.isfile(path):
        metadata = read_metadata(path)
        if "unet_config" not in metadata:
            raise ValueError(f"{path} has no 'unet_config' in its metadata: "
                             "make it with `tinyddim convert SRC DST.safetensors`")
        given, weights = json.loads(metadata["unet_config"]), path
    else:
        if subfolder is None and not os.path.isfile(os.path.join(path, "config.json")) \
                and os.path.isdir(os.path.join(path, "unet")):
            subfolder = "unet"
        given = read_json(find_file(path, ["config.json"], subfolder, what="UNet config"))
        weights = find_file(path, WEIGHT_FILES, subfolder, what="UNet weights")
    config = unet_config(given)
    state = rename_deprecated_keys(read_state_dict(weights))
    check_state_dict(state, config, weights)
    return config, state


def load_unet(path, subfolder=None, device="cpu"):
    """(config, params tree on `device`)."""
    config, state = read_unet(path, subfolder)
    return config, map_tree(lambda w: to_device(w, device), to_tree(state))


def read_scheduler_config(path):
    """The scheduler config beside a UNet: in a converted file's metadata or a folder; None if absent."""
    path = resolve(path)
    if os.path.isfile(path):
        text = read_metadata(path).get("scheduler_config")
        return json.loads(text) if text else None
    for candidate in (os.path.join(path, "scheduler", "scheduler_config.json"),
                      os.path.join(path, "scheduler_config.json")):
        if os.path.isfile(candidate):
            return read_json(candidate)
    return None


def convert(src, dst, dtype="float32", overwrite=False):
    """Pack a diffusers folder into one `.safetensors` file with its configs in the metadata."""
    from safetensors.numpy import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError(f"unsupported dtype {dtype!r}; expected 'float32' or 'float16'")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    config, state = read_unet(src)
    metadata = {"format": "pt", "unet_config": json.dumps(dict(config))}
    scheduler = read_scheduler_config(src)
    if scheduler is not None:
        metadata["scheduler_config"] = json.dumps(scheduler)
    tensors = {key: np.ascontiguousarray(value, dtype=dtype) for key, value in state.items()}
    write_atomic(dst, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return dst
