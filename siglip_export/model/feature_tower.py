"""The image tower with its extra outputs (layer features, attention maps): the module the
`features` artefact is exported from. Names and index conventions: `runtime.contract.layer_outputs`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime.contract.kinds import OUTPUTS
from runtime.contract.layer_outputs import POOLER_ATTENTION, attention_name, hidden_state_name

from .modeling_siglip import SiglipVisionTransformer


@dataclass(frozen=True)
class FeatureRequest:
    """What the features artefact outputs beside the contract's two: transformers'
    `hidden_states[i]` for each i in `hidden_states` (0..layers), the self-attention of each
    encoder layer in `attention_layers` (0..layers-1), and the pooling head's attention."""

    hidden_states: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    pooler_attention: bool = False

    @property
    def wanted(self) -> bool:
        return bool(self.hidden_states or self.attention_layers or self.pooler_attention)

    def outputs(self) -> tuple[str, ...]:
        return (*OUTPUTS, *map(hidden_state_name, self.hidden_states), *map(attention_name, self.attention_layers),
                *((POOLER_ATTENTION,) if self.pooler_attention else ()))

    def record(self) -> dict:
        return {"hidden_states": list(self.hidden_states), "attention_layers": list(self.attention_layers),
                "pooler_attention": self.pooler_attention}


class VisionFeatures(nn.Module):
    """pixel_values -> (last_hidden_state, pooler_output, *requested extras), in `outputs()` order,
    computed by the tower's own modules (shared weights, no copy)."""

    def __init__(self, tower: SiglipVisionTransformer, request: FeatureRequest):
        super().__init__()
        self.tower = tower
        self.config = tower.config
        self.request = request

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        wanted_attention = set(self.request.attention_layers)
        x = self.tower.embeddings(pixel_values)
        hidden = [x]
        attention = {}
        for i, layer in enumerate(self.tower.encoder.layers):
            x, probs = layer.forward_with_weights(x, weights=i in wanted_attention)
            hidden.append(x)
            if probs is not None:
                attention[i] = probs
        last = self.tower.post_layernorm(x)
        pooled, head = self.tower.head.forward_with_weights(last, weights=self.request.pooler_attention)
        extras = [hidden[i] for i in self.request.hidden_states]
        extras += [attention[i] for i in self.request.attention_layers]
        if self.request.pooler_attention:
            extras.append(head)
        return (last, pooled, *extras)


def eager_feature_outputs(module: VisionFeatures, x) -> dict:
    """The eager module's outputs by name (the features artefact's parity reference)."""
    with torch.no_grad():
        outputs = module(torch.from_numpy(x))
    return {name: t.numpy() for name, t in zip(module.request.outputs(), outputs)}




def resize_position_embeddings(tower: SiglipVisionTransformer, image_size: int) -> dict:
    """Make `tower` take `image_size` x `image_size` inputs: its learned position embeddings
    resampled bicubically (align_corners=False) from the trained grid to the new one, as
    transformers' `interpolate_pos_encoding=True` does at every call; here it is done once, so
    the exported graph holds the new table. Returns the manifest's record of the change."""
    from runtime.errors import UserError

    config = tower.config
    patch = config.patch_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch \
            or image_size % patch:
        raise UserError(f"--image-size {image_size!r} must be a positive multiple of the patch size {patch}")
    old_size, embeddings = config.image_size, tower.embeddings
    if image_size == old_size:
        return {"image_size": image_size, "interpolated_from": None}
    old_side, new_side = old_size // patch, image_size // patch
    table = embeddings.position_embedding.weight.detach()  # (old_side**2, D)
    grid = table.reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2)
    with torch.no_grad():
        resized = nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    new_table = resized.permute(0, 2, 3, 1).reshape(new_side * new_side, -1)
    embeddings.position_embedding = nn.Embedding.from_pretrained(new_table.contiguous(), freeze=False)
    embeddings.num_patches = new_side * new_side
    config.image_size = image_size
    return {"image_size": image_size, "interpolated_from": old_size, "method": "bicubic, align_corners=False"}


__all__ = ["FeatureRequest", "VisionFeatures", "eager_feature_outputs", "resize_position_embeddings"]
