"""Attention maps as pictures: a heatmap over the image, from `ImageEncoder.attention`.

    grid = patch_grid(weights)             # (patches,) -> (rows, cols), rows = cols = sqrt(patches)
    overlay("cat.jpg", grid).save("cat.png")

numpy + Pillow only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .errors import InputError
from .inputs.images import load_image

# A dark-to-bright colour ramp (black, purple, red, orange, pale yellow), interpolated to 256 steps.
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
_RAMP = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c])
                  for c in range(3)], axis=1).astype(np.uint8)


def received(weights: np.ndarray) -> np.ndarray:
    """Per patch, how much attention it gets: the pooling head's weights (patches,) as they are;
    a layer's self-attention (patches, patches) averaged over the querying patches."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights if weights.ndim == 1 else weights.mean(axis=0)


def patch_grid(weights: np.ndarray) -> np.ndarray:
    """(patches,) or (patches, patches) -> the (side, side) grid of attention received."""
    flat = received(weights)
    side = math.isqrt(flat.shape[0])
    if side * side != flat.shape[0]:
        raise InputError(f"{flat.shape[0]} patches do not form a square grid")
    return flat.reshape(side, side)


def overlay(image, grid: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The image (a path or PIL image) with the grid, scaled to [0, 1] and coloured, blended over it."""
    picture = (load_image(image) if not isinstance(image, Image.Image) else image).convert("RGB")
    low, high = float(grid.min()), float(grid.max())
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    small = Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L")
    large = np.asarray(small.resize(picture.size, Image.Resampling.BICUBIC))
    heat = Image.fromarray(_RAMP[large], mode="RGB")
    return Image.blend(picture, heat, alpha)


__all__ = ["overlay", "patch_grid", "received"]
