"""siglip-export, build side: the SigLIP reference model, checkpoint loading and the export pipeline.

Needs PyTorch and the other tools of the `export` extra (`pip install "siglip-export[export]"`).
The deploy side, `runtime`, does not. Importing this package imports nothing heavy: the names
below load their module on first use, so `siglip-export` can tell a user without the extra what
to install instead of failing in an import.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "CheckpointError": "model.checkpoint", "load_pretrained": "model.checkpoint",
    "PRESETS": "model.config", "ConfigError": "model.config", "SiglipConfig": "model.config",
    "SiglipTextConfig": "model.config", "SiglipVisionConfig": "model.config", "load_config": "model.config",
    "preset": "model.config",
    **{name: "model.modeling_siglip" for name in (
        "SiglipAttention", "SiglipEncoder", "SiglipEncoderLayer", "SiglipMLP", "SiglipModel",
        "SiglipMultiheadAttentionPoolingHead", "SiglipTextEmbeddings", "SiglipTextModel", "SiglipTextTransformer",
        "SiglipVisionEmbeddings", "SiglipVisionModel", "SiglipVisionTransformer", "build_model", "set_fused_attn",
        "sigmoid_loss")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
