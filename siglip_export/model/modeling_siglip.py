"""The SigLIP reference model in PyTorch.

Module and parameter names follow Hugging Face transformers (4.x layout), so a released
checkpoint's state dict loads with `strict=True` after the one quirk that
`checkpoint.convert_hf_state_dict` handles (the pooling head's packed q/k/v).

Shapes: B batch, N image patches, S text tokens, D hidden size, H heads, hd = D / H.

Attention switch: every `SiglipAttention` carries `fused_attn`. True (the default) runs
`F.scaled_dot_product_attention`, the fast path for eager use. False runs the explicit
`softmax(q @ k^T * scale) @ v`, which is what the ONNX export uses: it becomes plain
MatMul / Mul / Softmax / MatMul nodes with one layout on every opset and exporter, the
pattern ONNX Runtime's attention fusion recognises, whereas SDPA's export differs
between exporters and opsets. `tests/test_modeling.py` asserts the two paths agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig


def _activation(name: str):
    if name == "gelu":
        return nn.GELU()
    return nn.GELU(approximate="tanh")  # gelu_pytorch_tanh / gelu_new: the same function


class SiglipVisionEmbeddings(nn.Module):
    """Non-overlapping patches -> linear embedding + learned position embedding. No class token."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.num_patches = config.num_patches
        self.position_embedding = nn.Embedding(self.num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c, size = self.config.num_channels, self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c, size, size):
            raise ValueError(
                f"pixel_values must have shape (batch, {c}, {size}, {size}), got {tuple(pixel_values.shape)}"
            )
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.position_embedding.weight  # (N, D) broadcast over B


class SiglipTextEmbeddings(nn.Module):
    """Token embedding + learned position embedding."""

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {seq} tokens, more than max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        x = self.token_embedding(input_ids)  # (B, S, D)
        return x + self.position_embedding.weight[:seq]  # (S, D) broadcast over B


class SiglipAttention(nn.Module):
    """Multi-head attention; self-attention, or cross-attention when `key_value_states` is given."""

    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = float(config.attention_dropout)
        self.fused_attn = True  # see the module docstring
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_weights(hidden_states, key_value_states, weights=False)[0]

    def forward_with_weights(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None,
                             weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output (B, n, D), attention weights averaged over heads (B, n, m) or None). Asking
        for the weights takes the explicit-softmax path (fused kernels do not return them)."""
        kv = hidden_states if key_value_states is None else key_value_states
        b, n, d = hidden_states.shape
        q = self._heads(self.q_proj(hidden_states))  # (B, H, n, hd)
        k = self._heads(self.k_proj(kv))  # (B, H, m, hd)
        v = self._heads(self.v_proj(kv))  # (B, H, m, hd)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if self.fused_attn and not weights:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, n, m)
            probs = scores.softmax(dim=-1)
            out = torch.matmul(F.dropout(probs, p=dropout, training=self.training), v)  # (B, H, n, hd)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, n, D)
        return self.out_proj(out), (probs.mean(dim=1) if weights else None)


class SiglipMLP(nn.Module):
    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = _activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x, weights=False)[0]

    def forward_with_weights(self, x: torch.Tensor, weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, self-attention weights averaged over heads (B, n, n) or None)."""
        attended, probs = self.self_attn.forward_with_weights(self.layer_norm1(x), weights=weights)
        x = x + attended
        x = x + self.mlp(self.layer_norm2(x))
        return x, probs


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """big_vision's MAPHead: a learned probe attends to the tokens, then `x + mlp(norm(x))`.

    No residual around the attention (the probe is not added back), as in the original.
    """

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = SiglipAttention(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(hidden_states, weights=False)[0]

    def forward_with_weights(self, hidden_states: torch.Tensor,
                             weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled (B, D), the probe's attention over the patches averaged over heads (B, N) or None)."""
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)  # (B, 1, D)
        x, probs = self.attention.forward_with_weights(probe, key_value_states=hidden_states, weights=weights)
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0], (probs[:, 0] if weights else None)


class SiglipVisionTransformer(nn.Module):
    """pixel_values (B, C, H, W) -> (last_hidden_state (B, N, D), pooler_output (B, D))."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.post_layernorm(self.encoder(self.embeddings(pixel_values)))  # (B, N, D)
        return x, self.head(x)


class SiglipTextTransformer(nn.Module):
    """input_ids (B, S) -> (last_hidden_state (B, S, D), pooler_output (B, P)).

    Pooled on the last token (SigLIP pads to full length, so it is a pad/eos token), then a
    Linear head. No attention mask and no causal mask: every token sees every token.
    """

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipTextEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.projection_size)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.final_layer_norm(self.encoder(self.embeddings(input_ids)))  # (B, S, D)
        return x, self.head(x[:, -1])  # (B, S, D), (B, P)


def set_fused_attn(module: nn.Module, enabled: bool) -> nn.Module:
    """Choose SDPA (True) or the explicit softmax path (False) in every attention of `module`."""
    for sub in module.modules():
        if isinstance(sub, SiglipAttention):
            sub.fused_attn = bool(enabled)
    return module


def init_weights(module: nn.Module) -> None:
    """Random initialisation for a fresh model (seed first for reproducible weights).

    LeCun-normal Linear / Conv weights and zero biases keep activations O(1) through the depth,
    so random-weight exports exercise realistic magnitudes.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            fan_in = sub.weight[0].numel()
            nn.init.trunc_normal_(sub.weight, std=fan_in**-0.5)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=sub.embedding_dim**-0.5)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, SiglipMultiheadAttentionPoolingHead):
            nn.init.normal_(sub.probe, std=sub.probe.shape[-1] ** -0.5)


class _SiglipBase(nn.Module):
    def set_fused_attn(self, enabled: bool):
        return set_fused_attn(self, enabled)


class SiglipVisionModel(_SiglipBase):
    """The image tower alone. `model(pixel_values)` returns last_hidden_state (B, N, D)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = SiglipVisionTransformer(config)
        init_weights(self)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)[0]

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The attention-pooling head's output (HF's `pooler_output`), (B, D)."""
        return self.vision_model(pixel_values)[1]


class SiglipTextModel(_SiglipBase):
    """The text tower alone. `model(input_ids)` returns last_hidden_state (B, S, D)."""

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.config = config
        self.text_model = SiglipTextTransformer(config)
        init_weights(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids)[0]

    def get_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Last token's state through the head Linear, (B, P)."""
        return self.text_model(input_ids)[1]


@dataclass
class SiglipOutput:
    logits_per_image: torch.Tensor  # (B_img, B_txt)
    logits_per_text: torch.Tensor  # (B_txt, B_img)
    image_embeds: torch.Tensor  # (B_img, D), L2-normalised
    text_embeds: torch.Tensor  # (B_txt, D), L2-normalised
    loss: torch.Tensor | None = None


def sigmoid_loss(logits: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss for a square logits matrix of matching pairs.

    Every (image, text) pair is an independent binary problem: +1 on the diagonal (the
    matching pairs), -1 elsewhere. No softmax over the batch, so no global normalisation is
    needed; the sum over all n^2 pairs is divided by the batch size n, as in the paper.
    """
    n = logits.shape[0]
    if logits.dim() != 2 or logits.shape[1] != n:
        raise ValueError(f"sigmoid_loss needs a square (n, n) logits matrix, got {tuple(logits.shape)}")
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # (n, n)
    return -F.logsigmoid(labels * logits).sum() / n


class SiglipModel(_SiglipBase):
    """Both towers with the learned temperature and bias of the sigmoid loss."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.config = config
        self.text_model = SiglipTextTransformer(config.text_config)
        self.vision_model = SiglipVisionTransformer(config.vision_config)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))  # t' = log 10, so t = 10
        self.logit_bias = nn.Parameter(torch.tensor([-10.0]))  # b = -10: most pairs are negatives
        init_weights(self.text_model)
        init_weights(self.vision_model)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)[1]

    def get_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids)[1]

    def forward(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, return_loss: bool = False
    ) -> SiglipOutput:
        image_embeds = F.normalize(self.get_image_features(pixel_values), dim=-1)  # (Bi, D)
        text_embeds = F.normalize(self.get_text_features(input_ids), dim=-1)  # (Bt, D)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias  # (Bt, Bi)
        logits_per_image = logits_per_text.t()  # (Bi, Bt)
        loss = sigmoid_loss(logits_per_text) if return_loss else None
        return SiglipOutput(logits_per_image, logits_per_text, image_embeds, text_embeds, loss)


def build_model(config: SiglipConfig | SiglipVisionConfig) -> SiglipModel | SiglipVisionModel:
    """A randomly initialised model for `config`: both towers, or the image tower alone."""
    if isinstance(config, SiglipConfig):
        return SiglipModel(config)
    if isinstance(config, SiglipVisionConfig):
        return SiglipVisionModel(config)
    raise TypeError(f"expected SiglipConfig or SiglipVisionConfig, got {type(config).__name__}")


__all__ = [
    "SiglipVisionEmbeddings",
    "SiglipTextEmbeddings",
    "SiglipAttention",
    "SiglipMLP",
    "SiglipEncoderLayer",
    "SiglipEncoder",
    "SiglipMultiheadAttentionPoolingHead",
    "SiglipVisionTransformer",
    "SiglipTextTransformer",
    "SiglipVisionModel",
    "SiglipTextModel",
    "SiglipModel",
    "SiglipOutput",
    "sigmoid_loss",
    "set_fused_attn",
    "init_weights",
    "build_model",
]
