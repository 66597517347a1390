"""siglip-export, build side: the SigLIP reference model, checkpoint loading and the export pipeline.

Needs PyTorch. The deploy side, `runtime`, does not.
"""

from .checkpoint import CheckpointError, load_pretrained
from .config import (
    PRESETS,
    ConfigError,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    load_config,
    preset,
)
from .modeling_siglip import (
    SiglipAttention,
    SiglipEncoder,
    SiglipEncoderLayer,
    SiglipMLP,
    SiglipModel,
    SiglipMultiheadAttentionPoolingHead,
    SiglipTextEmbeddings,
    SiglipTextModel,
    SiglipTextTransformer,
    SiglipVisionEmbeddings,
    SiglipVisionModel,
    SiglipVisionTransformer,
    build_model,
    set_fused_attn,
    sigmoid_loss,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "PRESETS",
    "SiglipAttention",
    "SiglipConfig",
    "SiglipEncoder",
    "SiglipEncoderLayer",
    "SiglipMLP",
    "SiglipModel",
    "SiglipMultiheadAttentionPoolingHead",
    "SiglipTextConfig",
    "SiglipTextEmbeddings",
    "SiglipTextModel",
    "SiglipTextTransformer",
    "SiglipVisionConfig",
    "SiglipVisionEmbeddings",
    "SiglipVisionModel",
    "SiglipVisionTransformer",
    "build_model",
    "load_config",
    "load_pretrained",
    "preset",
    "set_fused_attn",
    "sigmoid_loss",
]
