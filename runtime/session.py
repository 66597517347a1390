"""One ONNX model in an ONNX Runtime session, with its inputs validated before they reach it.

This is the code path the export pipeline verifies artefacts through, so what is tested is
what is deployed. numpy + onnxruntime only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ArtefactError, InputError

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
               "tensor(int32)": np.int32}

CPU = "CPUExecutionProvider"


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a broken install, reported plainly
        raise ArtefactError(f"onnxruntime is not importable ({exc}); install onnxruntime or onnxruntime-gpu") from None
    return onnxruntime


class OnnxModel:
    """An ONNX file ready to run: `OnnxModel(path).run(array) -> {output name: array}`.

    `threads` sets ONNX Runtime's intra-op thread count (None: one per physical core).
    """

    def __init__(self, path: str | os.PathLike, providers: list | None = None, threads: int | None = None):
        ort = _import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtefactError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise InputError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only; provider fallbacks are reported by us
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or [CPU])
        except Exception as exc:  # ORT raises several types for unreadable, truncated or incomplete models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtefactError(f"cannot load {self.path}: {first}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ArtefactError(f"{self.path}: expected one input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # symbolic axes are strings
        self.input_dtype = np.dtype(_ORT_DTYPES.get(inputs[0].type, np.float32))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        config = json.loads(self.metadata.get("siglip.config", "{}"))
        self.vocab_size = config.get("vocab_size")

    @property
    def providers(self) -> list[str]:
        """The providers the session really runs on, in priority order."""
        return self.session.get_providers()

    def validate(self, x) -> np.ndarray:
        """Raise InputError naming the offending value unless `x` fits this model's input."""
        name = self.input_name
        if not isinstance(x, np.ndarray):
            raise InputError(f"{name} must be a numpy array, got {type(x).__name__}")
        if x.dtype != self.input_dtype:
            raise InputError(f"{name} must be {self.input_dtype.name}, got {x.dtype.name}")
        if x.ndim != len(self.input_shape):
            raise InputError(f"{name} must have {len(self.input_shape)} dimensions {self._shape_text()}, got shape {x.shape}")
        if x.shape[0] == 0:
            raise InputError(f"{name} is an empty batch (shape {x.shape})")
        for axis, (want, got) in enumerate(zip(self.input_shape, x.shape)):
            if isinstance(want, int) and want != got:
                raise InputError(f"{name} axis {axis} must be {want} {self._shape_text()}, got shape {x.shape}")
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                bad = int(np.size(x) - np.isfinite(x).sum())
                raise InputError(f"{name} holds {bad} NaN or Inf values")
        elif self.vocab_size is not None and (x.min() < 0 or x.max() >= self.vocab_size):
            raise InputError(
                f"{name} holds ids outside [0, {self.vocab_size}): min {int(x.min())}, max {int(x.max())}"
            )
        return np.ascontiguousarray(x)

    def _shape_text(self) -> str:
        return "(" + ", ".join(str(d) for d in self.input_shape) + ")"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Validate `x` and run the model: {output name: array}."""
        x = self.validate(x)
        outputs = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, outputs))
