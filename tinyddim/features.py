"""The digit feature network of the Fréchet distance: a small CNN over a params tree, in NumPy.

    params = load_features()                      # the bundled weights, tinyddim/bundled/mnist_features.safetensors
    f = digit_features(params, images)            # images (N, 16, 16, 1) in [0, 1] -> features (N, 128)

A classifier of 16x16 MNIST digits trained by `scripts/mnist/train_features.py` (the torch module
`DigitFeatureNet` there; its state-dict keys are the params tree's names). The features are its
penultimate activations, as pytorch-fid takes Inception's last pooling layer:

    x ∈ [0, 1] -> 2x − 1
    conv1 3x3, 1 -> 32,             group norm, SiLU      16x16
    conv2 3x3 stride 2, 32 -> 64,   group norm, SiLU       8x8
    conv3 3x3 stride 2, 64 -> 64,   group norm, SiLU       4x4
    flatten (channel, row, column)                        1024
    fc 1024 -> 128, SiLU                                   128   <- the features
    head 128 -> 10                                          10   the digit's logits
"""

import os

import numpy as np

from .nn import conv2d, group_norm, linear, silu

FEATURES_FILE = os.path.join(os.path.dirname(__file__), "bundled", "mnist_features.safetensors")
IMAGE_SHAPE = (16, 16, 1)
NUM_GROUPS, NORM_EPS = 8, 1e-5
_cache = {}


def load_features(path=None):
    """The params tree {"conv1": {"weight", "bias"}, ..., "head": {...}} of the feature network (as float32)."""
    from .weights import read_state_dict, to_tree

    path = os.fspath(path or FEATURES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such feature-network weights: {path}")
    if path not in _cache:
        _cache[path] = to_tree(read_state_dict(path))
    return _cache[path]


def digit_features(params, images):
    """Images (N, 16, 16, 1) floats in [0, 1] -> the penultimate activations (N, 128), float32."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) * 2 - 1  # (N, H, W, 1) -> (N, 1, H, W)
    h = x
    for name, stride in (("1", 1), ("2", 2), ("3", 2)):
        h = conv2d(h, **params["conv" + name], stride=stride, padding=1)
        h = silu(group_norm(h, **params["norm" + name], num_groups=NUM_GROUPS, eps=NORM_EPS), inplace=True)
    h = h.reshape(len(h), -1)  # (N, C, 4, 4) -> (N, C·16), torch's flatten order
    return silu(linear(h, **params["fc"]))


def digit_logits(params, images):
    """The classifier's logits (N, 10): the features through the head."""
    return linear(digit_features(params, images), **params["head"])
