"""SigLIP configurations: typed dataclasses with Hugging Face's field names.

A released `config.json` maps onto these without a translation table: full checkpoints nest
`vision_config` / `text_config` (model_type "siglip"), vision-only checkpoints are flat
(model_type "siglip_vision_model"). Fields HF writes that do not change the network
(`architectures`, `torch_dtype`, `transformers_version`, ...) are ignored on read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runtime.errors import UserError


class ConfigError(UserError):
    """A config value or config.json that this implementation cannot build."""


# hidden_act values we implement. SigLIP uses GELU with the tanh approximation (big_vision's
# `nn.gelu` default is approximate); exact-erf GELU is accepted for fine-tuned variants.
SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu")


def _check_positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _single_size(owner: str, name: str, value: Any) -> int:
    # HF types image_size / patch_size as int or (h, w); released SigLIP models are square.
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"{owner}.{name} must be square, got {value!r}")
        value = value[0]
    return value


@dataclass
class _TowerConfig:
    """Fields both towers share; HF names and SigLIP-B/16 defaults."""

    hidden_size: int = 768
    intermediate_size: int = 3072  # 4 x hidden_size
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6  # not PyTorch's 1e-5: the JAX original uses 1e-6
    attention_dropout: float = 0.0

    model_type: ClassVar[str] = ""

    def _validate(self) -> None:
        owner = type(self).__name__
        _check_positive(
            owner,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
        )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{owner}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"{owner}.hidden_act {self.hidden_act!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ConfigError(f"{owner}.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not (0.0 <= float(self.attention_dropout) < 1.0):
            raise ConfigError(f"{owner}.attention_dropout must be in [0, 1), got {self.attention_dropout!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """HF-style dict (what `config.json` holds for this tower), model_type included."""
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from an HF dict, ignoring keys that do not describe the network."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class SiglipVisionConfig(_TowerConfig):
    """The image tower. Defaults: SigLIP-B/16 at 224 px (196 patches, no class token)."""

    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    # The attention-pooling head gives `pooler_output`; towers without it (PaliGemma's) are
    # refused because the artefact contract promises that output.
    vision_use_head: bool = True

    model_type: ClassVar[str] = "siglip_vision_model"

    def __post_init__(self) -> None:
        self.image_size = _single_size("SiglipVisionConfig", "image_size", self.image_size)
        self.patch_size = _single_size("SiglipVisionConfig", "patch_size", self.patch_size)
        self._validate()
        _check_positive(
            "SiglipVisionConfig",
            num_channels=self.num_channels,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )
        if self.patch_size > self.image_size:
            raise ConfigError(
                f"SiglipVisionConfig.patch_size {self.patch_size} is larger than image_size {self.image_size}"
            )
        if self.vision_use_head is not True:
            raise ConfigError(
                "SiglipVisionConfig.vision_use_head=false (a tower without the attention-pooling head) "
                "is not supported: the artefact contract needs pooler_output"
            )

    @property
    def num_patches(self) -> int:
        # Conv2d with stride = patch and no padding: a remainder is dropped (so400m: 384 // 14 = 27).
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SiglipTextConfig(_TowerConfig):
    """The text tower: 64 tokens, padded to full length, no attention mask, no causal mask."""

    vocab_size: int = 32000
    max_position_embeddings: int = 64
    # Token ids as HF's SiglipTextConfig defaults them; the tokenizer files are what count.
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    # Width of the text head's output; None means hidden_size (every released SigLIP).
    projection_size: int | None = None

    model_type: ClassVar[str] = "siglip_text_model"

    def __post_init__(self) -> None:
        if self.projection_size is None:
            self.projection_size = self.hidden_size
        self._validate()
        _check_positive(
            "SiglipTextConfig",
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            projection_size=self.projection_size,
        )


@dataclass
class SiglipConfig:
    """Both towers (model_type "siglip"), as a full checkpoint's config.json nests them."""

    text_config: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    vision_config: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    initializer_factor: float = 1.0

    model_type: ClassVar[str] = "siglip"

    def __post_init__(self) -> None:
        if isinstance(self.text_config, dict):
            self.text_config = SiglipTextConfig.from_dict(self.text_config)
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig.from_dict(self.vision_config)
        if self.text_config.projection_size != self.vision_config.hidden_size:
            # The logits are a cosine between the two pooled embeddings.
            raise ConfigError(
                f"text projection_size {self.text_config.projection_size} differs from vision "
                f"hidden_size {self.vision_config.hidden_size}: the embeddings cannot be compared"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "text_config": self.text_config.to_dict(),
            "vision_config": self.vision_config.to_dict(),
            "initializer_factor": self.initializer_factor,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SiglipConfig:
        return cls(
            text_config=SiglipTextConfig.from_dict(values.get("text_config") or {}),
            vision_config=SiglipVisionConfig.from_dict(values.get("vision_config") or {}),
            initializer_factor=values.get("initializer_factor", 1.0),
        )


AnyConfig = SiglipConfig | SiglipVisionConfig


def config_from_dict(values: dict[str, Any]) -> AnyConfig:
    """The config an HF `config.json` describes: nested -> SiglipConfig, flat -> vision only."""
    if not isinstance(values, dict):
        raise ConfigError(f"config must be a JSON object, got {type(values).__name__}")
    model_type = values.get("model_type")
    if isinstance(model_type, str) and model_type.startswith("siglip2"):
        raise ConfigError(f"model_type {model_type!r} is SigLIP 2 NaFlex (variable resolution, packed patches), "
                          f"which this exporter does not support; the fixed-resolution google/siglip2-*-patch16-* "
                          f"checkpoints are model_type 'siglip'")
    try:
        if model_type == SiglipConfig.model_type or "vision_config" in values:
            if model_type not in (None, SiglipConfig.model_type):
                raise ConfigError(f"model_type {model_type!r} is not SigLIP (expected 'siglip')")
            return SiglipConfig.from_dict(values)
        if model_type in (None, SiglipVisionConfig.model_type):
            return SiglipVisionConfig.from_dict(values)
    except TypeError as exc:  # a value of the wrong JSON type reaching a comparison
        raise ConfigError(f"invalid config value: {exc}") from None
    raise ConfigError(
        f"model_type {model_type!r} is not supported (expected 'siglip' or 'siglip_vision_model')"
    )


def load_config(path: str | Path) -> AnyConfig:
    """Read an HF `config.json` (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"config.json not found: {path}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return config_from_dict(values)


def save_config(config: AnyConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


# --- Presets: the released family, values from the released config.json files. ------------
# Fields not listed keep the defaults above, as they do in the released files.

def _preset(image_size: int, patch_size: int = 16, width: str = "base", text_positions: int = 64,
            siglip2: bool = False):
    widths = {
        # hidden, intermediate, layers, heads
        "base": (768, 3072, 12, 12),
        "large": (1024, 4096, 24, 16),
        "so400m": (1152, 4304, 27, 16),
    }
    hidden, intermediate, layers, heads = widths[width]
    dims = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    return lambda: SiglipConfig(
        # SigLIP 2 (fixed resolution): the same towers, Gemma's 256k vocabulary (<pad> 0, <eos> 1, <bos> 2).
        text_config=SiglipTextConfig(max_position_embeddings=text_positions, **dims,
                                     **(dict(vocab_size=256000, pad_token_id=0, eos_token_id=1, bos_token_id=2)
                                        if siglip2 else {})),
        vision_config=SiglipVisionConfig(image_size=image_size, patch_size=patch_size, **dims),
    )


PRESETS = {
    "siglip-base-patch16-224": _preset(224),
    "siglip-base-patch16-256": _preset(256),
    "siglip-base-patch16-384": _preset(384),
    "siglip-base-patch16-512": _preset(512),
    "siglip-large-patch16-256": _preset(256, width="large"),
    "siglip-large-patch16-384": _preset(384, width="large"),
    "siglip-so400m-patch14-224": _preset(224, patch_size=14, width="so400m", text_positions=16),
    "siglip-so400m-patch14-384": _preset(384, patch_size=14, width="so400m"),
    **{f"siglip2-base-patch16-{size}": _preset(size, siglip2=True) for size in (224, 256, 384, 512)},
    **{f"siglip2-large-patch16-{size}": _preset(size, width="large", siglip2=True) for size in (256, 384, 512)},
    **{f"siglip2-so400m-patch16-{size}": _preset(size, width="so400m", siglip2=True) for size in (256, 384, 512)},
}
DEFAULT_PRESET = "siglip-base-patch16-224"


def preset(name: str) -> SiglipConfig:
    """A fresh config for a released model, by its Hub name with or without `google/`."""
    key = name.removeprefix("google/")
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key]()


__all__ = [
    "ConfigError",
    "SiglipVisionConfig",
    "SiglipTextConfig",
    "SiglipConfig",
    "config_from_dict",
    "load_config",
    "save_config",
    "PRESETS",
    "DEFAULT_PRESET",
    "preset",
]
