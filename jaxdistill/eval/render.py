"""Pictures of samples as PNG: image grids, and density plots of 2-D point sets.

`render_samples` picks the picture for the samples' event shape: [H, W, C] images in [−1, 1]
become a grid; 2-D points become a density plot (reference samples in grey, generated samples in
colour) over a square window that holds both.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[..., H, W, C] in [−1, 1] -> uint8 in [0, 255] (clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] (C = 1 or 3) in [−1, 1] -> one uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, 3] grid."""
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid takes [N, H, W, 1 or 3] arrays; got shape {images.shape}.")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def density_plot(points: np.ndarray, reference: np.ndarray | None = None, size: int = 256) -> np.ndarray:
    """uint8 [size, size, 3] picture of 2-D `points` (blue) over `reference` points (grey)."""
    points = np.asarray(points, np.float64).reshape(len(points), -1)
    if points.shape[1] != 2:
        raise ValueError(f"density_plot draws 2-D points; got points of dimension {points.shape[1]}.")
    both = points if reference is None else np.concatenate([points, np.asarray(reference).reshape(-1, 2)])
    finite = both[np.all(np.isfinite(both), axis=1)]
    half = float(np.max(np.abs(finite))) * 1.05 if len(finite) else 1.0
    edges = np.linspace(-half, half, size + 1)

    def density(p):
        h, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=(edges, edges))
        return np.sqrt(h[::-1] / max(h.max(), 1.0))  # y up; sqrt makes sparse modes visible

    img = np.ones((size, size, 3))
    if reference is not None:
        img -= 0.35 * density(np.asarray(reference).reshape(-1, 2))[..., None]
    d = density(points)[..., None]
    img = img * (1 - d) + d * np.array([0.1, 0.3, 0.9])
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def render_samples(samples: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """The picture of a batch of samples: a grid for [N, H, W, C], a density plot for [N, 2]."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        return image_grid(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return density_plot(samples, reference)
    raise ValueError(f"no picture for samples of shape {samples.shape}; expected [N, H, W, C] images or [N, 2] points.")


def save_png(path: str, image: np.ndarray) -> str:
    """Write a uint8 [H, W, 3] (or [H, W]) array as PNG, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path
