"""Images -> `pixel_values`, bit for bit as transformers' SiglipImageProcessorPil does it.

The reference is transformers' PIL/numpy image processor for SigLIP (`SiglipImageProcessorPil`
in transformers 5.x, `SiglipImageProcessor` in 4.x); tests assert `np.array_equal` with it.
For each image:

1. RGB, decided as transformers decides it:
   - a file path is opened, turned upright by its EXIF orientation and converted with
     `Image.convert("RGB")`, then handled as an RGB image below. That is what the processor
     does with a path (`transformers.image_utils.load_image`): an alpha channel is dropped,
     not composited (given the opened image instead, it composites), but a palette or RGB
     colour key survives convert("RGB") as a key and is composited: pixels of that colour
     become white. Same input as transformers, same output, either way.
   - a PIL image whose bands include "A", or that carries a `transparency` entry (palette,
     L or RGB images with a colour key), goes to RGBA and is alpha-composited on opaque white
     with Pillow; any other mode (L, 1, I, I;16, F, CMYK, YCbCr, RGBa, ...) goes through
     `Image.convert("RGB")`.
   - a uint8 (H, W, C) array: C = 3 as is; C = 1 repeated; C = 4 composited on white in
     float64, `round(a/255 * rgb + (1 - a/255) * 255)` (round half to even), as transformers
     does it for arrays (identical to Pillow's compositing: checked for every colour/alpha pair).
2. Resize with Pillow on the uint8 RGB image to (width, height) with the configured filter
   (3 = bicubic, with Pillow's antialiasing when shrinking); Pillow rounds and clips to uint8.
3. Channels first, stacked: uint8 (N, 3, height, width) (`resized`; what a uint8-input
   artefact takes, its graph doing steps 4 and 5 with `normalise_table`).
4. Rescale: `float32(float64(x) * rescale_factor)`.
5. Normalise in float32: `(x - float32(mean)) / float32(std)` (`normalise`): float32 (N, 3, H, W).

Not covered: transformers 5.x's torchvision-backed `SiglipImageProcessor` resizes with
torchvision, not Pillow, so bit-identity with it is not expected (and is untested here).
numpy + Pillow only.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ArtefactError, InputError

PREPROCESSOR_CONFIG = "preprocessor_config.json"

_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _three(values, name: str) -> list:
    """mean / std: one number for all channels or one per channel -> a list of 3 floats."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)] * 3
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ArtefactError(f"{PREPROCESSOR_CONFIG}: {name} must be a number or 3 numbers, got {values!r}") from None
    if len(values) != 3:
        raise ArtefactError(f"{PREPROCESSOR_CONFIG}: {name} must have 3 values (R, G, B), got {values!r}")
    return values


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
        """From `preprocessor_config.json` as transformers writes it (or `to_dict`'s output).

        Options transformers would honour but this module does not implement are refused
        rather than ignored, so the output never silently differs from transformers'.
        """
        if not isinstance(values, dict):
            raise ArtefactError(f"{PREPROCESSOR_CONFIG} must hold a JSON object, got {type(values).__name__}")
        size = values.get("size")
        if size is None:
            size = {}
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            size = {"height": size[0], "width": size[1]}
        elif isinstance(size, int) and not isinstance(size, bool):
            # transformers reads a bare int as {"shortest_edge": n} for SigLIP (default_to_square=False)
            size = {"shortest_edge": size}
        if not isinstance(size, dict) or not set(size) <= {"height", "width"} or len(size) == 1:
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: size {values.get('size')!r} is not a fixed height/width, "
                                f"as SigLIP needs")
        if values.get("do_center_crop"):
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: do_center_crop is not supported (SigLIP does not crop)")
        if values.get("do_pad") and values.get("pad_size"):
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: do_pad with pad_size is not supported")
        settings = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None})
        try:
            settings.height = int(size.get("height", settings.height))
            settings.width = int(size.get("width", settings.width))
            settings.resample = int(settings.resample)
            settings.rescale_factor = float(settings.rescale_factor)
        except (TypeError, ValueError) as exc:
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: {exc}") from None
        if settings.height < 1 or settings.width < 1:
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: size {settings.height}x{settings.width} is not positive")
        if settings.resample not in _PIL_FILTERS:
            raise ArtefactError(f"{PREPROCESSOR_CONFIG}: resample {values.get('resample')!r} is not a Pillow filter "
                                f"({', '.join(f'{k} {v}' for k, v in _PIL_FILTERS.items())})")
        settings.image_mean = _three(settings.image_mean, "image_mean")
        settings.image_std = _three(settings.image_std, "image_std")
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
    """Open an image file fully, turned upright by its EXIF orientation; its mode is kept.

    Decoding happens here, so a truncated or corrupt file fails here, with its name.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}" if not path.exists() else f"image path is not a file: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            # exif_transpose returns a transposed image or a copy; both outlive the file.
            return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def _has_transparency(image) -> bool:
    return "A" in image.getbands() or image.info.get("transparency") is not None


def _pil_to_rgb(image):
    from PIL import Image

    if not _has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _check_array(array: np.ndarray) -> np.ndarray:
    """A uint8 image array as (H, W, C), C in 1, 3, 4; a 2-D array is read as (H, W, 1)."""
    if array.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 (H, W, C), got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"image arrays must be (H, W, C) with C = 1, 3 or 4 channels, got shape {array.shape}")
    return array


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    array = _check_array(array)
    channels = array.shape[2]
    if channels == 3:
        return array
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    alpha = array[:, :, 3:].astype(np.float64) / 255.0
    blended = alpha * array[:, :, :3] + (1.0 - alpha) * 255.0  # float64 throughout
    return np.round(blended).astype(np.uint8)


def to_rgb(image):
    """RGB with transparency composited on opaque white, as transformers' `convert_to_rgb`.

    A PIL image gives a PIL image in mode RGB; a uint8 (H, W[, C]) array gives a (H, W, 3)
    uint8 array.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    return _pil_to_rgb(image)


def image_batch(images) -> list:
    """One image (path, PIL image, (H, W[, C]) array) is a batch of one; (N, H, W, C) arrays a batch."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) else list(images)
    try:
        return list(images)
    except TypeError:
        raise InputError(f"expected an image or a sequence of images, got {type(images).__name__}") from None


def _rgb_uint8(item, settings: ImageSettings, index: int):
    """One input -> a uint8 RGB PIL image or (H, W, 3) array, before resizing."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        # transformers' processor loads a path with image_utils.load_image (EXIF, then
        # convert("RGB"), which drops alpha) and then treats the result as an opened image: a
        # colour key that convert("RGB") carried over (from a palette or RGB tRNS) still composites.
        item = load_image(item).convert("RGB")
    if isinstance(item, Image.Image):
        image = _pil_to_rgb(item) if settings.do_convert_rgb else item
    elif isinstance(item, np.ndarray):
        image = _array_to_rgb(item) if settings.do_convert_rgb else _check_array(item)
    else:
        raise InputError(f"image {index}: expected a path, a PIL image or a uint8 array, got {type(item).__name__}")
    if isinstance(image, Image.Image):
        width, height = image.size
        if image.mode != "RGB":
            raise InputError(f"image {index} has mode {image.mode!r}, not RGB; enable do_convert_rgb")
    else:
        height, width = image.shape[:2]
        if image.shape[2] != 3:
            raise InputError(f"image {index} has {image.shape[2]} channels, not 3; enable do_convert_rgb")
    if width < 1 or height < 1:
        raise InputError(f"image {index} is empty ({width}x{height})")
    return image


def resized(images: Iterable, settings: ImageSettings | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Images -> uint8 (N, 3, height, width): steps 1 to 3, before rescaling. What a kind with
    `image_input` uint8 takes (its graph does steps 4 and 5, `normalise`). `out`: write there."""
    from PIL import Image

    settings = settings or ImageSettings()
    items = image_batch(images)
    if not items:
        raise InputError("no images given (empty batch)")
    shape = (len(items), 3, settings.height, settings.width)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise InputError(f"out must be uint8 {shape}, got {out.dtype.name} {out.shape}")
    for index, item in enumerate(items):
        image = _rgb_uint8(item, settings, index)
        if settings.do_resize:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            image = image.resize((settings.width, settings.height), resample=settings.resample)
        array = np.asarray(image)  # (H, W, 3) uint8
        if array.shape[:2] != (settings.height, settings.width):
            raise InputError(f"image {index} is {array.shape[1]}x{array.shape[0]} (WxH), the model takes "
                             f"{settings.width}x{settings.height}, and do_resize is off")
        out[index] = array.transpose(2, 0, 1)
    return out


def normalise(pixels: np.ndarray, settings: ImageSettings | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 `pixel_values`: steps 4 and 5, element by element. `out`:
    write there (float32, the same shape)."""
    settings = settings or ImageSettings()
    if out is not None and (out.shape != pixels.shape or out.dtype != np.float32):
        raise InputError(f"out must be float32 {pixels.shape}, got {out.dtype.name} {out.shape}")
    if settings.do_rescale:
        array = (pixels.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    else:
        array = pixels.astype(np.float32)
    if settings.do_normalize:
        mean = np.asarray(settings.image_mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(settings.image_std, dtype=np.float32).reshape(3, 1, 1)
        return np.divide(array - mean, std, out=out)  # float32, per channel
    if out is None:
        return array
    out[...] = array
    return out


def normalise_table(settings: ImageSettings | None = None) -> np.ndarray:
    """float32 (3, 256): `normalise` of every uint8 value in each channel. A graph that looks its
    uint8 input up in it computes bit for bit what `preprocess` gives."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (1, 3, 1, 256))
    return np.ascontiguousarray(normalise(values, settings)[0, :, 0, :])


def preprocess(images: Iterable, settings: ImageSettings | None = None, dtype=np.float32,
               out: np.ndarray | None = None) -> np.ndarray:
    """Images -> float32 `pixel_values` (N, 3, height, width), or with `dtype` uint8 the resized
    images a uint8-input artefact takes (`resized`). `out`: an array of that shape and dtype to
    write into (a runner's page-locked input buffer, `OnnxModel.run_filled`).

    `images`: a sequence of file paths, PIL images and uint8 (H, W, C) arrays (or one of them,
    or an (N, H, W, C) uint8 array).
    """
    if np.dtype(dtype) == np.uint8:
        return resized(images, settings, out=out)
    if np.dtype(dtype) != np.float32:
        raise InputError(f"preprocess gives float32 or uint8 pixel values, not {np.dtype(dtype).name}")
    return normalise(resized(images, settings), settings, out=out)
