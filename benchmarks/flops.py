"""FLOPs of the SigLIP image tower, from its config (no torch needed).

FLOPs here are 2 x multiply-adds of the matrix products (patch embedding, q/k/v/out
projections, attention scores and mixing, MLP, the attention-pooling head). Bias adds,
LayerNorm, GELU and softmax are elementwise and left out: they are a fraction of a percent,
and this is the convention of `torch.utils.flop_counter.FlopCounterMode`, which
`tests/test_benchmarks.py` checks these numbers against.

SigLIP-B/16 at 224 px: 35.42 GFLOP per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _field(config: Any, name: str):
    value = config[name] if isinstance(config, Mapping) else getattr(config, name)
    if isinstance(value, (list, tuple)):  # HF allows (h, w); SigLIP is square
        value = value[0]
    return int(value)


def vision_flops(config: Any) -> dict[str, int]:
    """FLOPs per image of the image tower, by part, and their "total".

    `config`: a SiglipVisionConfig or its HF dict (hidden_size, intermediate_size,
    num_hidden_layers, num_channels, image_size, patch_size).
    """
    d = _field(config, "hidden_size")
    inner = _field(config, "intermediate_size")
    layers = _field(config, "num_hidden_layers")
    channels = _field(config, "num_channels") if _has(config, "num_channels") else 3
    patch = _field(config, "patch_size")
    n = (_field(config, "image_size") // patch) ** 2  # patches (tokens); no class token
    parts = {
        # Conv2d with kernel = stride = patch: one [C*p*p] -> [D] product per patch.
        "patch_embedding": 2 * n * d * channels * patch * patch,
        "qkv_out_projections": layers * 4 * 2 * n * d * d,
        # Summed over heads: (n x hd) @ (hd x n) per head = n * n * D multiply-adds.
        "attention_scores": layers * 2 * n * n * d,
        "attention_mixing": layers * 2 * n * n * d,
        "mlp": layers * 2 * 2 * n * d * inner,
        # MAP head: one probe query, keys / values from all n tokens, then the MLP on one token.
        "pooling_head": 2 * d * d + 2 * 2 * n * d * d + 2 * n * d + 2 * n * d + 2 * d * d + 2 * 2 * d * inner,
    }
    parts["total"] = sum(parts.values())
    return parts


def _has(config: Any, name: str) -> bool:
    return name in config if isinstance(config, Mapping) else hasattr(config, name)


def pixel_shape(config: Any) -> list[int]:
    """(channels, height, width) of one image the tower takes."""
    side = _field(config, "image_size")
    return [_field(config, "num_channels") if _has(config, "num_channels") else 3, side, side]


def gemm_shapes(config: Any) -> dict[str, int]:
    """The dimensions the floor's GEMMs use: tokens per image, hidden and intermediate size."""
    return {
        "patches": (_field(config, "image_size") // _field(config, "patch_size")) ** 2,
        "hidden_size": _field(config, "hidden_size"),
        "intermediate_size": _field(config, "intermediate_size"),
    }
