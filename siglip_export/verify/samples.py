"""The inputs every gate judges: realistic ones (the packaged photos, sentence-like token sequences)
and random ones, at every verification batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.inputs.images import ImageSettings, preprocess, resized

from ..graph.torch_export import TowerSpec

PHOTOS_DIR = Path(__file__).resolve().parents[1] / "photos"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_paths(directory: Path = PHOTOS_DIR) -> list[Path]:
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no verification photos in {directory}")
    return paths


def verification_inputs(
    spec: TowerSpec, batch_sizes: tuple[int, ...], seed: int, image_settings: ImageSettings | None = None,
    vocab_size: int | None = None, pad_id: int = 1,
) -> list[tuple[str, np.ndarray]]:
    """(input set, array) pairs: realistic inputs and random ones, at every batch size.

    Images: the packaged public-domain photos, preprocessed as the runtime does, and uniform
    noise over [-1, 1], the range preprocessing maps every pixel into (a value outside it
    never comes from an image, and a statically calibrated int8 file is not meant to take
    one). Text: sentence-like sequences (random tokens, then padding to full length
    with `pad_id`, as SigLIP's tokenizer emits them: its eos and pad are both `</s>`, id 1)
    and uniformly random ids.
    """
    rng = np.random.default_rng(seed)
    sets = []
    if spec.name == "vision":
        photos = preprocess(photo_paths(), image_settings or ImageSettings())
        for b in batch_sizes:
            sets.append(("photos", photos[np.arange(b) % len(photos)]))
            sets.append(("random", rng.uniform(-1.0, 1.0, (b, *spec.input_shape[1:])).astype(np.float32)))
    else:
        seq = spec.input_shape[1]
        for b in batch_sizes:
            padded = np.full((b, seq), pad_id, dtype=np.int64)
            for row in padded:
                n = int(rng.integers(1, seq))
                row[:n] = rng.integers(2, vocab_size, n)
            sets.append(("padded-text", padded))
            sets.append(("random", rng.integers(0, vocab_size, (b, seq), dtype=np.int64)))
    return sets


def uint8_inputs(inputs: list[tuple[str, np.ndarray]], settings: ImageSettings, seed: int) -> list[tuple[str, np.ndarray]]:
    """`inputs` (the image tower's verification inputs) for an artefact that takes uint8 images:
    the same sets and batch sizes, the photos resized but not normalised, and uniform random
    bytes in place of the noise."""
    rng = np.random.default_rng(seed)
    photos = resized(photo_paths(), settings)
    out = []
    for kind, x in inputs:
        if kind == "photos":
            out.append((kind, photos[np.arange(len(x)) % len(photos)]))
        else:
            out.append((kind, rng.integers(0, 256, x.shape, dtype=np.uint8)))
    return out


def tower_inputs(spec: TowerSpec, config, batch_sizes: tuple[int, ...], seed: int,
                 image_settings: ImageSettings | None = None) -> list[tuple[str, np.ndarray]]:
    """`verification_inputs` for a tower, the text tower's vocabulary and pad id taken from its
    config (a pad id outside the vocabulary falls back to 1, SigLIP's `</s>`)."""
    if spec.name != "text":
        return verification_inputs(spec, batch_sizes, seed, image_settings)
    pad = config.pad_token_id if config.pad_token_id is not None and config.pad_token_id < config.vocab_size else 1
    return verification_inputs(spec, batch_sizes, seed, image_settings, vocab_size=config.vocab_size, pad_id=pad)


__all__ = ["PHOTOS_DIR", "PHOTO_SUFFIXES", "photo_paths", "tower_inputs", "uint8_inputs", "verification_inputs"]
