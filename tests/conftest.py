"""Shared fixtures: tiny configs (fast) and helpers that build checkpoints the way transformers writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import torch

from siglip_export.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def tiny_vision_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(image_size=32, patch_size=8, **TINY_TOWER)


def tiny_text_config() -> SiglipTextConfig:
    # pad/eos inside the tiny vocabulary, as in the released files (the </s> piece is id 1).
    return SiglipTextConfig(
        vocab_size=99, max_position_embeddings=16, pad_token_id=1, eos_token_id=1, bos_token_id=None, **TINY_TOWER
    )


def tiny_config() -> SiglipConfig:
    return SiglipConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config())


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the parity measure used throughout."""
    a = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def randomize_norms(model, seed: int = 0) -> None:
    """Give every LayerNorm non-trivial weight and bias, so a swapped or skipped norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))


def hf_model(config, seed: int = 0):
    """A transformers SigLIP model (full or vision-only) with random weights and norms."""
    import transformers

    torch.manual_seed(seed)
    if isinstance(config, SiglipConfig):
        model = transformers.SiglipModel(transformers.SiglipConfig.from_dict(config.to_dict()))
        with torch.no_grad():  # transformers zero-initialises these; make them count
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-4.0)
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig.from_dict(config.to_dict()))
    randomize_norms(model, seed)
    return model.eval()


def write_checkpoint(directory: Path, config_dict: dict, state: dict) -> Path:
    """A checkpoint directory in HF layout from a config dict and a state dict."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_dict))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def tiny_hf_checkpoint(tmp_path):
    """A tiny full SigLIP checkpoint written by transformers' save_pretrained: (dir, hf model)."""
    model = hf_model(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model


@pytest.fixture(scope="session")
def tiny_artefacts(tmp_path_factory):
    """A tiny full checkpoint exported once per session: (artefact dir, hf model)."""
    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("tiny_artefacts")
    model = hf_model(tiny_config())
    model.save_pretrained(base / "ckpt")
    run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "artefacts"), emit=None)
    return base / "artefacts", model
