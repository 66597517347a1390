"""A file's gate, measured in every runtime its kind runs in that this machine has.

A gate measured in one runtime does not carry to another (issue 12 reports one int8 QDQ file at
cosine 0.999 against fp32 in ONNX Runtime and 0.935 in OpenVINO on an AMD CPU). So each published file is
verified first in its kind's reference runtime (ONNX Runtime's CPU provider for ONNX files,
OpenVINO for an IR, TensorRT for an engine), which decides publication, and then, with the same
gate, in each other runtime its kind lists (`runtime.contract`) that can run here: OpenVINO
where it is installed, ONNX Runtime's CUDA and TensorRT providers on a GPU host. The manifest
records every result; `runtime` refuses a variant in a runtime where its gate failed or was
never measured, unless asked to (`allow_unverified`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from runtime.contract import ArtefactKind, open_runner, runtime_of
from runtime.errors import first_line
from runtime.manifest import Parity

from .verify import Gate, verify_artefact

if TYPE_CHECKING:
    from .progress import Progress

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]


def reference_provider(kind: ArtefactKind) -> str:
    """Where the export gates a kind: the CPU where it runs there, else its first provider."""
    return "cpu" if "cpu" in kind.providers else kind.providers[0]


def measure(kind: ArtefactKind, path: Path, provider: str, reference: Reference,
            inputs: list[tuple[str, np.ndarray]], gate: Gate, threads: int | None) -> Parity:
    """The gate's result for `path` run by `kind`'s runner with `provider`."""
    runner = open_runner(kind, path, provider=provider, threads=threads)
    return verify_artefact(runner, reference, inputs, gate, runtime=runtime_of(kind, provider))


def unavailable(provider: str) -> str | None:
    """Why this machine cannot run `provider` at all, or None (trying may still fail: a GPU
    provider whose libraries are missing)."""
    if provider == "openvino" and importlib.util.find_spec("openvino") is None:
        return "openvino is not installed"
    if provider in ("cuda", "tensorrt"):
        from runtime.session import _NAMED, _import_ort, nvidia_driver_present

        if not nvidia_driver_present():
            return "no NVIDIA GPU"
        if _NAMED[provider] not in _import_ort().get_available_providers():
            return f"this onnxruntime has no {_NAMED[provider]}"
    return None


def measure_elsewhere(kind: ArtefactKind, path: Path, reference: Reference, inputs: list[tuple[str, np.ndarray]],
                      gate: Gate, threads: int | None, progress: Progress, measured: str) -> dict[str, Parity]:
    """The gate in every other runtime of `kind` this machine runs (`measured`: done already)."""
    results: dict[str, Parity] = {}
    for provider in kind.providers:
        runtime = runtime_of(kind, provider)
        if runtime == measured or runtime in results or unavailable(provider):
            continue
        with progress.step(f"verify {path.name} in {runtime}") as step:
            try:
                parity = measure(kind, path, provider, reference, inputs, gate, threads)
            except Exception as exc:  # it does not start here (libraries missing): nothing measured
                step["note"] = f"not measured: {first_line(exc)}"
                continue
            results[runtime] = parity
            worst = min(r.outputs["pooler_output"].min_cosine for r in parity.results)
            step["note"] = (f"min cosine {worst:.6f} (gate {gate.min_cosine})"
                            + ("" if parity.passed else f"  FAILED: {runtime} will refuse it"))
    return results
