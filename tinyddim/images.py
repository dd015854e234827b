"""Images in and out: the pipelines' x_0 in [−1, 1] (B, C, H, W) <-> PIL images or floats (B, H, W, C) in [0, 1].

    to_images(x0, "np")     x_0 -> floats (B, H, W, C) in [0, 1]; "pil" (default) -> a list of PIL images
    as_x0(images)           PIL images or floats in [0, 1] -> x_0 (B, C, H, W) in [−1, 1]
    numpy_to_pil(images)    floats (B, H, W, C) in [0, 1] -> PIL images (8-bit, mode "L" for one channel)
    pil_to_numpy(images)    PIL images -> uint8 (B, H, W, C)
"""

import numpy as np

from .backend import to_numpy


def to_images(x0, output_type="pil"):
    """x_0 in [-1, 1], (B, C, H, W) on any device -> PIL images or a host float array (B, H, W, C) in [0, 1]."""
    images = np.clip(to_numpy(x0) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
    return images if output_type == "np" else numpy_to_pil(images)


def numpy_to_pil(images):
    """(B, H, W, C) floats in [0, 1] -> a list of PIL images (mode "L" for one channel)."""
    from PIL import Image

    pixels = (images * 255).round().astype(np.uint8)
    if pixels.shape[-1] == 1:
        return [Image.fromarray(image[:, :, 0], mode="L") for image in pixels]
    return [Image.fromarray(image) for image in pixels]


def pil_to_numpy(images):
    """A list of PIL images -> uint8 (B, H, W, C), the inverse of `numpy_to_pil` (mode "L" gets C = 1)."""
    arrays = [np.asarray(image) for image in images]
    return np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays])


def as_x0(images):
    """Images as the pipelines return them (PIL list, or floats (B, H, W, C) in [0, 1]) -> x_0 (B, C, H, W) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        pixels = images.astype(np.float32)
    else:
        pixels = pil_to_numpy(images).astype(np.float32) / 255
    if pixels.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C) floats in [0, 1] or a list of PIL images, got {pixels.shape}")
    return pixels.transpose(0, 3, 1, 2) * 2 - 1  # (B, H, W, C) -> (B, C, H, W)
