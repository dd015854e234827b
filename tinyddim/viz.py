"""Pictures: image grids (PIL) for samples."""

import math

import numpy as np


def image_grid(images, ncols=None, scale=1, padding=2):
    """Tile images (a list of PIL images, or floats (B, H, W, C) in [0, 1]) into one PIL image.

    `scale` enlarges each pixel (nearest neighbour) so that small digits stay crisp.
    """
    from PIL import Image

    pixels = _as_uint8(images)  # (B, H, W, C)
    count, height, width, channels = pixels.shape
    ncols = ncols or math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    grid = np.full((nrows * (height + padding) + padding, ncols * (width + padding) + padding, channels),
                   255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        top = padding + (i // ncols) * (height + padding)
        left = padding + (i % ncols) * (width + padding)
        grid[top : top + height, left : left + width] = image
    picture = Image.fromarray(grid[:, :, 0] if channels == 1 else grid)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def _as_uint8(images):
    """PIL images or floats in [0, 1] -> uint8 (B, H, W, C)."""
    if isinstance(images, np.ndarray):
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    arrays = [np.asarray(image) for image in images]
    return np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays])
