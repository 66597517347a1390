"""The image tower's extra outputs for vision-language work, as the `features` artefact holds them.

    hidden_state_<i>   [batch, patches, hidden]   transformers' `hidden_states[i]`: 0 is the patch
                                                  embeddings, i the output of encoder layer i
                                                  (before the final LayerNorm); `-2` is what
                                                  LLaVA-style models feed their language model
    attention_<l>      [batch, patches, patches]  encoder layer l's self-attention (0-based, as
                                                  transformers' `attentions[l]`), averaged over heads
    pooler_attention   [batch, patches]           the attention-pooling head's weights over the
                                                  patches, averaged over heads

The default `vision_model.onnx` keeps its two outputs and its speed; these live in
`vision_model.features.onnx`, beside `last_hidden_state` and `pooler_output`. Layer indices
may be negative (Python's convention) and are stored non-negative. numpy only.
"""

from __future__ import annotations

from ..errors import UserError

FEATURES = "features"  # the artefact kind's variant name (runtime.contract)
POOLER_ATTENTION = "pooler_attention"


def hidden_state_name(index: int) -> str:
    return f"hidden_state_{index}"


def attention_name(layer: int) -> str:
    return f"attention_{layer}"


def normalize(index: int, count: int, what: str) -> int:
    """`index` in [-count, count) as a non-negative index; UserError naming it otherwise."""
    if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
        raise UserError(f"{what} {index!r} is out of range: the model has {count} "
                        f"{'hidden states' if 'hidden' in what else 'layers'} (indices {-count}..{count - 1})")
    return index % count


def parse_indices(text: str, what: str) -> list[int] | None:
    """"-2" or "4,8,-1" -> the integers as given; "all" -> None. UserError for anything else."""
    text = text.strip()
    if text == "all":
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers or 'all', got {text!r}") from None
    if not values:
        raise UserError(f"{what} is empty: give indices (e.g. -2 or 4,8,-1) or 'all'")
    return values


def parse_layers(text: str, count: int, what: str) -> tuple[int, ...]:
    """"-2", "4,8,-1" or "all" -> sorted, distinct, non-negative indices < count."""
    values = parse_indices(text, what)
    if values is None:
        return tuple(range(count))
    return tuple(sorted({normalize(v, count, what) for v in values}))


__all__ = ["FEATURES", "POOLER_ATTENTION", "attention_name", "hidden_state_name", "normalize", "parse_indices",
           "parse_layers"]
