"""Images -> `pixel_values`, the way transformers' SiglipImageProcessor (PIL backend) does it.

RGB conversion (transparency composited on white), bicubic resize to the model's square
size with Pillow, rescale by 1/255 (computed in float64, stored float32), normalise with
mean / std 0.5, channels first. numpy + Pillow only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import ArtefactError, InputError

PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class ImageSettings:
    """The subset of `preprocessor_config.json` SigLIP uses; defaults are the released ones."""

    height: int = 224
    width: int = 224
    resample: int = 3  # PIL.Image.BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> ImageSettings:
        size = values.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "shortest_edge" in size:
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: size {size} is not a fixed height/width, as SigLIP needs")
        settings = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None})
        settings.height = int(size.get("height", settings.height))
        settings.width = int(size.get("width", settings.width))
        return settings

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ImageSettings:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ArtefactError(f"cannot read {path}: {exc}") from None

    def to_dict(self) -> dict:
        """In `preprocessor_config.json` form, so transformers reads it too."""
        return {
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "SiglipProcessor",
            "do_resize": self.do_resize,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": self.do_convert_rgb,
        }


def load_image(path: str | os.PathLike):
    """Open an image file fully (so a truncated file fails here, with its name)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if image.mode != "P" else image.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def to_rgb(image):
    """RGB with transparency composited on white, as transformers' `convert_to_rgb`."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def preprocess(images: Iterable, settings: ImageSettings | None = None) -> np.ndarray:
    """PIL images or file paths -> float32 `pixel_values` (N, 3, height, width)."""
    from PIL import Image

    settings = settings or ImageSettings()
    mean = np.asarray(settings.image_mean, dtype=np.float32)
    std = np.asarray(settings.image_std, dtype=np.float32)
    batch = []
    for item in images:
        image = item if isinstance(item, Image.Image) else load_image(item)
        if settings.do_convert_rgb:
            image = to_rgb(image)
        if settings.do_resize and image.size != (settings.width, settings.height):
            image = image.resize((settings.width, settings.height), resample=settings.resample)
        array = np.asarray(image)  # (H, W, 3) uint8
        if array.ndim != 3 or array.shape[2] != 3:
            raise InputError(f"image of mode {image.mode!r} does not give 3 channels; enable do_convert_rgb")
        if settings.do_rescale:
            array = (array.astype(np.float64) * settings.rescale_factor).astype(np.float32)
        if settings.do_normalize:
            array = (array.astype(np.float32) - mean) / std
        batch.append(array.astype(np.float32).transpose(2, 0, 1))  # (3, H, W)
    if not batch:
        raise InputError("no images given")
    return np.stack(batch)
