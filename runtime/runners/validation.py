"""Input checks every runner shares: an array that fits the model's input, and the outputs asked for.

A wrong input is refused before it reaches ONNX Runtime, OpenVINO or TensorRT, with an InputError
naming the offending value (their own errors are pages long and name nodes, not the input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def validate_input(x, *, name: str, shape: tuple, dtype: np.dtype, max_batch: int | None = None,
                   vocab_size: int | None = None) -> np.ndarray:
    """`x` as a contiguous array if it fits a model input of `shape` (str axes are free), else InputError."""
    expected = "(" + ", ".join(str(d) for d in shape) + ")"
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise InputError(f"{name} must be {np.dtype(dtype).name}, got {x.dtype.name}")
    if x.ndim != len(shape):
        raise InputError(f"{name} must have {len(shape)} dimensions {expected}, got shape {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {x.shape})")
    if max_batch is not None and x.shape[0] > max_batch:
        raise InputError(f"{name} batch {x.shape[0]} exceeds the engine profile's maximum {max_batch}")
    for axis, (want, got) in enumerate(zip(shape, x.shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise InputError(f"{name} axis {axis} must be {want} {expected}, got shape {x.shape}")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            raise InputError(f"{name} holds {int(finite.size - finite.sum())} NaN or Inf values")
    elif vocab_size is not None and (x.min() < 0 or x.max() >= vocab_size):
        raise InputError(f"{name} holds ids outside [0, {vocab_size}): min {int(x.min())}, max {int(x.max())}")
    return np.ascontiguousarray(x)


def outputs_for(path: Path, output_names: list[str], outputs) -> tuple[str, ...]:
    """The output names a runner of `path` fetches: all (`outputs` None), or those asked for
    (a name or a sequence), each checked."""
    if outputs is None:
        return tuple(output_names)
    names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [n for n in names if n not in output_names]
    if unknown or not names:
        raise InputError(f"{path.name} has no output {unknown[0] if unknown else '(none asked for)'!r} "
                         f"(outputs: {', '.join(output_names)})")
    return names


__all__ = ["outputs_for", "validate_input"]
