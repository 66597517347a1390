"""Run an OpenVINO IR (`<tower>.ov-bf16.xml` + `.bin`) or an ONNX file with OpenVINO on the CPU.

Optional: `pip install -e ".[openvino]"`. On CPUs with AMX or AVX-512-BF16, OpenVINO's bf16
inference precision runs the matrix products in bf16 with fp32 accumulation; elsewhere it
falls back to fp32, and `provider` says which precision really runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ArtefactError, InputError, ProviderError, first_line
from .validation import outputs_for, validate_input

PRECISIONS = ("bf16", "f32")


class OpenVinoModel:
    """`OpenVinoModel(path, precision="bf16").run(array) -> {output name: array}`, like `OnnxModel`.

    Each call uses its own infer request, so one model can be shared by several threads.
    """

    def __init__(self, path: str | os.PathLike, precision: str = "bf16", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise ProviderError("OpenVINO artefacts need the openvino package: pip install -e '.[openvino]'") from None
        if precision not in PRECISIONS:
            raise InputError(f"unknown OpenVINO precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtefactError(f"model file not found: {self.path}")
        if self.path.suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise ArtefactError(f"{self.path.with_suffix('.bin')} (the weights of {self.path.name}) is missing")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            precision = "f32"  # the fall back, asked for: OpenVINO's own guess may differ from what it reports
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(str(self.path), "CPU", config)
        except Exception as exc:
            raise ArtefactError(f"cannot load {self.path} in OpenVINO: {first_line(exc)}") from None
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what really runs
        self.provider = f"OpenVINO CPU ({self.precision})"
        port = self.compiled.inputs[0]
        self.input_name = port.get_any_name()
        shape = port.get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else "batch" for d in shape)
        self.input_dtype = np.dtype(port.get_element_type().to_dtype())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.max_batch = None

    def run(self, x: np.ndarray, outputs=None) -> dict[str, np.ndarray]:
        x = validate_input(x, name=self.input_name, shape=self.input_shape, dtype=self.input_dtype)
        names = outputs_for(self.path, self.output_names, outputs)
        request = self.compiled.create_infer_request()
        results = request.infer({0: x})
        return {name: np.asarray(results[port], dtype=np.float32)
                for name, port in zip(self.output_names, self.compiled.outputs) if name in names}
