"""Load Hugging Face SigLIP checkpoints strictly and loudly.

A checkpoint is a directory in HF layout: `config.json` plus `model.safetensors`, or a
sharded `model.safetensors.index.json`. Every tensor must land: a missing, unexpected or
wrongly shaped one is an error naming the keys. (Seen elsewhere: a loader that silently
random-initialises every weight whose prefix it does not recognise, and users ship noise.)

Pickle is code, not data, so `.bin` / `.pt` checkpoints are refused with the one-line
conversion to safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from runtime.errors import UserError

from .config import AnyConfig, SiglipConfig, SiglipVisionConfig, load_config
from .modeling_siglip import SiglipModel, SiglipVisionModel, build_model


class CheckpointError(UserError):
    """A checkpoint directory or weights file that cannot be loaded as the config describes."""


SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Pickle checkpoints are refused by name rather than ignored, so the message can say why.
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "pytorch_model.pt")

# Non-persistent buffers that older transformers versions saved; they hold arange() and are
# rebuilt from the config, so they are dropped (only these, by exact suffix).
_DERIVED_BUFFERS = ("embeddings.position_ids",)


def _list_keys(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}{', ...' if len(keys) > limit else ''} ({len(keys)} in all)"


def _read_index(path: Path) -> dict[str, str]:
    """The `weight_map` of a shard index: tensor name -> shard file name."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of file names")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid shard index: {exc!r}") from None
    return weight_map


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: one file, or every shard of the index."""
    directory = Path(directory)
    if (directory / SAFETENSORS).is_file():
        return [directory / SAFETENSORS]
    if (directory / SAFETENSORS_INDEX).is_file():
        shards = [directory / name for name in sorted(set(_read_index(directory / SAFETENSORS_INDEX).values()))]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise CheckpointError(f"{SAFETENSORS_INDEX} lists shard files that do not exist: {', '.join(missing)}")
        return shards
    pickles = [name for name in PICKLE_FILES if (directory / name).is_file()]
    if pickles:
        raise CheckpointError(
            f"{directory / pickles[0]} is a pickle checkpoint, which is not loaded because unpickling can run "
            f"code; convert it once, from a source you trust, with safetensors.torch.save_file("
            f"torch.load(path, weights_only=True), '{SAFETENSORS}')"
        )
    raise CheckpointError(f"no weights file in {directory} (expected {SAFETENSORS} or {SAFETENSORS_INDEX})")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise CheckpointError(f"{path} is corrupt or truncated: {exc}") from None


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, keys as stored."""
    directory = Path(directory)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        part = _load_safetensors(path)
        clash = state.keys() & part.keys()
        if clash:
            raise CheckpointError(f"{path} repeats tensors of another shard: {_list_keys(clash)}")
        state.update(part)
    index = directory / SAFETENSORS_INDEX
    if not (directory / SAFETENSORS).is_file() and index.is_file():
        listed = _read_index(index).keys()
        if listed != state.keys():
            raise CheckpointError(
                f"{index} and its shards disagree: listed but absent: {_list_keys(listed - state.keys())}; "
                f"present but unlisted: {_list_keys(state.keys() - listed)}"
            )
    return state


def convert_hf_state_dict(
    state: dict[str, torch.Tensor], model: SiglipModel | SiglipVisionModel
) -> dict[str, torch.Tensor]:
    """Map every key layout found in the wild onto this implementation's names.

    - Full checkpoints (`vision_model.*`, `text_model.*`, `logit_scale`, `logit_bias`) and
      vision-only ones written by transformers 4.x (released files) already match.
    - Vision-only checkpoints written by transformers 5.x drop the `vision_model.` prefix
      (the model's base_model_prefix); it is put back.
    - HF's pooling head is a `torch.nn.MultiheadAttention`, which packs q/k/v into
      `in_proj_weight` (3D, D) and `in_proj_bias` (3D,); ours has separate q/k/v projections
      like every other attention, so the packed tensors are split in q, k, v order.
    - `embeddings.position_ids` buffers (arange, saved by old versions) are dropped.
    """
    state = {k: v for k, v in state.items() if not k.endswith(_DERIVED_BUFFERS)}
    if isinstance(model, SiglipVisionModel) and state and not any(k.startswith("vision_model.") for k in state):
        state = {f"vision_model.{k}": v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".attention.in_proj_")
        if prefix.endswith("head") and name in ("weight", "bias") and value.shape[0] % 3 == 0:
            for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.attention.{proj}.{name}"] = chunk
        else:
            out[key] = value
    return out


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`, failing on any missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing tensors: {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_list_keys(unexpected)}")
    wrong = sorted(k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape))
    if wrong:
        shown = "; ".join(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:5]
        )
        problems.append(f"wrongly shaped tensors ({len(wrong)} in all): {shown}")
    bad_dtype = sorted(k for k in state if k in expected and not state[k].is_floating_point())
    if bad_dtype:
        problems.append(f"non-float tensors: {_list_keys(bad_dtype)}")
    if problems:
        raise CheckpointError(f"{source} does not match the config: " + "; ".join(problems))
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_pretrained(path: str | Path) -> SiglipModel | SiglipVisionModel:
    """Load an HF-layout checkpoint directory in fp32, eval mode.

    Returns a `SiglipModel` when the config has a text tower, else a `SiglipVisionModel`.
    Raises `CheckpointError` / `ConfigError` (both `UserError`) with the offending value.
    """
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint path is not a directory: {directory}")
    config: AnyConfig = load_config(directory)
    assert isinstance(config, (SiglipConfig, SiglipVisionConfig))
    model = build_model(config)
    state = convert_hf_state_dict(read_state_dict(directory), model)
    load_state_dict_strict(model, state, str(directory))
    return model.eval()


__all__ = [
    "CheckpointError",
    "weight_files",
    "read_state_dict",
    "convert_hf_state_dict",
    "load_state_dict_strict",
    "load_pretrained",
]
