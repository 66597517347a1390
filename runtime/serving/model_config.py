"""Triton model configuration (protobuf text of Triton's `ModelConfig`), written by hand.

One home for what the written repository (`siglip_export.triton`, served by a stock Triton)
and the served one (`runtime.serving.server`, Triton's Python backend around `runtime`) share, so a
client written for one works unchanged against the other: the model names, the tensors' names,
data types and dims, and the dynamic batching block.
"""

from __future__ import annotations

from pathlib import Path

from ..contract.manifest import TensorInfo
from ..errors import ArtefactError

# numpy dtype name (as the manifest records it) -> Triton data type.
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


def model_name(prefix: str, tower: str, variant: str | None) -> str:
    """`<prefix>_<tower>[_<variant>]`, with `-` as `_` (Triton model names become directory names)."""
    return f"{prefix}_{tower}" + (f"_{variant.replace('-', '_')}" if variant else "")


def tensor_block(kind: str, tensors: list[TensorInfo], source: Path | str, batched: bool = True) -> list[str]:
    """An `input [...]` or `output [...]` block. Batched: the first axis must be the symbolic
    batch axis and is left out of `dims` (Triton adds it); other symbolic axes become -1."""
    lines = [f"{kind} ["]
    name = Path(source).name
    for i, tensor in enumerate(tensors):
        shape = tensor.shape
        if batched and (not shape or not isinstance(shape[0], str)):
            raise ArtefactError(f"{name}: {tensor.name} has no symbolic batch axis (shape {shape}); "
                                f"Triton's batching needs one")
        if tensor.dtype not in TRITON_DTYPES:
            raise ArtefactError(f"{name}: {tensor.name} has dtype {tensor.dtype}, which Triton lacks")
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in (shape[1:] if batched else shape))
        lines += [
            "  {",
            f'    name: "{tensor.name}"',
            f"    data_type: {TRITON_DTYPES[tensor.dtype]}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    return lines + ["]"]


def batching_lines(preferred: list[int] | tuple[int, ...], max_queue_delay_us: int) -> list[str]:
    """The dynamic batcher: requests wait up to `max_queue_delay_us` to join a batch."""
    lines = ["dynamic_batching {"]
    if preferred:
        lines += [f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"]
    return lines + [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]


def instance_lines(count: int, kind: str) -> list[str]:
    return ["instance_group [", "  {", f"    count: {count}", f"    kind: {kind}", "  }", "]"]


def parameter_lines(parameters: dict[str, str]) -> list[str]:
    """Model-level `parameters` (string values), read by the model as `model_config["parameters"]`."""
    return [f'parameters {{ key: "{k}" value: {{ string_value: "{_escape(v)}" }} }}' for k, v in parameters.items()]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


__all__ = ["TRITON_DTYPES", "batching_lines", "instance_lines", "model_name", "parameter_lines", "tensor_block"]
