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
from .config import find_file, read_json, write_atomic
from .unet import param_shapes, unet_config

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# Old checkpoints (google/ddpm-*) name the attention weights as the original DDPM code did.
DEPRECATED_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


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
