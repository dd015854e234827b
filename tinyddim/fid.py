"""A Fréchet distance for digits: how far a set of images is from the MNIST test digits, offline.

    d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})                (Heusel et al. 2017, arXiv 1706.08500)

Notation: `mu` μ and `sigma` Σ are the mean (D,) and covariance (D, D) of an image set's features, the
penultimate activations (D = 128) of the small digit classifier in `tinyddim.features`; d² is the squared
Fréchet (2-Wasserstein) distance between the Gaussians N(μ1, Σ1) and N(μ2, Σ2), what pytorch-fid reports
as "FID". The network is not Inception, so the numbers compare tinyddim runs with each other (and with
the floor measured by `scripts/mnist/fid_floor.py`), not with published FIDs.

    mu, sigma = image_statistics(images)              # images (N, 16, 16, 1) in [0, 1]
    mu, sigma = folder_statistics("samples/")         # a folder of 16x16 PNG images
    fid_against_mnist(images)                         # d² to the shipped statistics of the 10k test digits
"""

import os
import zipfile

import numpy as np

from .config import write_atomic
from .features import IMAGE_SHAPE, digit_features, load_features

MNIST_TEST_STATS = os.path.join(os.path.dirname(__file__), "bundled", "mnist_test_stats.npz")
BATCH = 500  # images per forward pass
_reference = {}


# ---- the distance ---------------------------------------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2}), in float64.

    Tr (Σ1Σ2)^{1/2} is the sum of the square roots of the eigenvalues of Σ1Σ2, which are those of the
    symmetric positive semi-definite M = Σ1^{1/2} Σ2 Σ1^{1/2} (AB and BA share their eigenvalues).
    Symmetric eigendecompositions give it with no complex arithmetic, and stay accurate for singular
    covariances (fewer images than features), where a general matrix square root of Σ1Σ2 is ill-conditioned.
    Eigenvalues at rounding level (|λ| ≤ D·ε·λ_max, negative ones included) count as 0: their square roots
    would be noise of size √ε.
    """
    mu1, sigma1 = _checked(mu1, sigma1, "1")
    mu2, sigma2 = _checked(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 differ in size: {mu1.shape[0]} and {mu2.shape[0]} features")
    root1 = _sqrt_psd(sigma1, "sigma1")  # Σ1^{1/2}, symmetric
    _sqrt_psd(sigma2, "sigma2")  # only checks that Σ2 is a covariance
    middle = root1 @ sigma2 @ root1  # Σ1^{1/2} Σ2 Σ1^{1/2}
    eigenvalues = _above_rounding(np.linalg.eigvalsh((middle + middle.T) / 2))
    trace_sqrt = np.sqrt(eigenvalues).sum()  # Tr (Σ1Σ2)^{1/2}
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return max(float(d2), 0.0)


def _checked(mu, sigma, which):
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != mu.shape * 2:
        raise ValueError(f"mu{which} must be (D,) and sigma{which} (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{which} or sigma{which} holds NaN or infinity")
    if np.abs(sigma - sigma.T).max(initial=0) > 1e-6 * np.abs(sigma).max(initial=0):
        raise ValueError(f"sigma{which} is not symmetric, so it is not a covariance")
    return mu, sigma


def _sqrt_psd(sigma, name):
    """Σ^{1/2} of a symmetric positive semi-definite Σ: V diag(√λ) Vᵀ."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    if eigenvalues.size and eigenvalues.min() < -1e-4 * np.abs(eigenvalues).max():
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}), "
                         "so it is not a covariance")
    return (vectors * np.sqrt(_above_rounding(eigenvalues))) @ vectors.T


def _above_rounding(eigenvalues):
    """Eigenvalues of a PSD matrix with those at rounding level, |λ| ≤ D·ε·λ_max, set to 0."""
    tiny = len(eigenvalues) * np.finfo(np.float64).eps * np.abs(eigenvalues).max(initial=0)
    return np.where(eigenvalues > tiny, eigenvalues, 0.0)


# ---- statistics of image sets ------------------------------------------------------------------------

def feature_statistics(features):
    """(μ, Σ) of features (N, D), float64: the mean and the covariance with N − 1 (np.cov, as pytorch-fid)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features (N, D) with N >= 2 for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def image_statistics(images, params=None, progress=False):
    """(μ, Σ) of the digit features of `images`: floats (N, 16, 16, 1) or (N, 16, 16) in [0, 1], uint8, or
    a list of PIL images. `params` is the feature network's params tree (default: the bundled one)."""
    images = _checked_images(images)
    params = load_features() if params is None else params
    from tqdm.auto import tqdm

    starts = tqdm(range(0, len(images), BATCH), desc="features", unit="batch", disable=not progress, leave=False)
    features = np.concatenate([digit_features(params, images[i : i + BATCH]) for i in starts])  # (N, 128)
    return feature_statistics(features)


def _checked_images(images):
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):  # PIL images
        from .images import pil_to_numpy

        images = pil_to_numpy([image.convert("L") for image in images])  # (N, H, W, 1) uint8
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]  # (N, H, W) -> (N, H, W, 1)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"the digit feature network takes images (N, 16, 16, 1) in [0, 1]; got shape {images.shape}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {len(images)}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    images = images.astype(np.float32)
    if not np.isfinite(images).all() or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"images must be in [0, 1]; got values in [{images.min():.3g}, {images.max():.3g}]")
    return images


def folder_statistics(folder, progress=False, limit=None):
    """(μ, Σ) of the PNG images in `folder` (not its subfolders), read as grayscale 16x16 digits; with
    `limit`, of the first `limit` of them in name order (000000.png, 000001.png, …: images 0 … limit − 1)."""
    files = png_files(folder)[:limit]
    sizes = {}
    for path in files:
        with _open_image(path) as image:
            sizes.setdefault(image.size, path)
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h} ({os.path.basename(p)})" for (w, h), p in list(sizes.items())[:3])
        raise ValueError(f"{folder} holds images of different sizes: {examples}")
    (width, height), example = next(iter(sizes.items()))
    if (height, width, 1) != IMAGE_SHAPE:
        raise ValueError(f"{folder} holds {width}x{height} images ({os.path.basename(example)}); the digit "
                         "feature network takes 16x16")
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} PNG image; need at least 2 for a covariance")
    from tqdm.auto import tqdm

    params, features = load_features(), []
    name = os.path.basename(os.path.normpath(folder))
    with tqdm(total=len(files), desc=name, unit="image", disable=not progress, leave=False) as bar:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            pixels = np.stack([_grayscale(path) for path in chunk])[..., None]  # (n, 16, 16) -> (n, 16, 16, 1)
            features.append(digit_features(params, pixels))
            bar.update(len(chunk))
    return feature_statistics(np.concatenate(features))


def png_files(folder):
    """The sorted paths of the `.png` files directly in `folder`; errors for a missing or empty folder."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(".png"))
    if not files:
        raise ValueError(f"no PNG images in {folder}")
    return files


def _open_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from None


def _grayscale(path):
    """A PNG file -> float32 (H, W) in [0, 1]: 16-bit grayscale over 65535, anything else as 8-bit luma."""
    with _open_image(path) as image:
        try:
            if image.mode.startswith("I;16"):
                return np.asarray(image, dtype=np.float32) / 65535
            return np.asarray(image.convert("L"), dtype=np.float32) / 255
        except OSError as err:  # a truncated file fails only when its pixels are read
            raise ValueError(f"cannot read {path} as an image: {err}") from None


# ---- statistics files -------------------------------------------------------------------------------

def save_statistics(path, mu, sigma, overwrite=False):
    """Write `mu`, `sigma` to an `.npz` file (the keys pytorch-fid writes), atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"statistics file must end in .npz: {path}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    mu, sigma = _checked(mu, sigma, "")

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mu=mu, sigma=sigma)

    write_atomic(path, write)


def load_statistics(path):
    """(μ, Σ) from an `.npz` file with keys `mu` (D,) and `sigma` (D, D), float64; errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such statistics file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read {path}: it is not an .npz archive")
    try:
        data = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read {path} as an .npz of statistics: {err}") from None
    with data:
        missing = [key for key in ("mu", "sigma") if key not in data.files]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(map(repr, missing))} (keys: {', '.join(data.files) or 'none'})")
        try:
            mu, sigma = data["mu"], data["sigma"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read {path} as an .npz of statistics: {err}") from None
    if mu.ndim != 1 or sigma.shape != mu.shape * 2:
        raise ValueError(f"{path}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    try:
        return _checked(mu, sigma, "")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def statistics(path, progress=False):
    """(μ, Σ) of a folder of PNG images or from an `.npz` statistics file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return folder_statistics(path, progress=progress)
    if path.endswith(".npz"):
        return load_statistics(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    raise ValueError(f"{path} is neither a folder of PNG images nor an .npz of statistics")


def mnist_test_statistics():
    """(μ, Σ) of the 10,000 MNIST test digits, shipped with tinyddim (`scripts/mnist/train_features.py`)."""
    if not _reference:
        _reference["stats"] = load_statistics(MNIST_TEST_STATS)
    return _reference["stats"]


def fid_against_mnist(images_or_path, progress=False):
    """d² from images (as `image_statistics` takes), a folder of PNGs or an `.npz`, to the MNIST test digits."""
    if isinstance(images_or_path, (str, os.PathLike)):
        mu, sigma = statistics(images_or_path, progress=progress)
    else:
        mu, sigma = image_statistics(images_or_path, progress=progress)
    return frechet_distance(mu, sigma, *mnist_test_statistics())
