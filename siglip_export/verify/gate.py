"""Parity gates: an artefact, run through `runtime`, against the eager PyTorch model.

Two measures per output (`runtime.contract.parity`): the relative error and the minimum row cosine.
A gate is passed only when every output, at every batch size, on every input set, is within it.
The result is the manifest's typed `Parity` record (`runtime.contract.manifest`).

A gate measured in one runtime does not carry to another (one int8 QDQ file measured 0.999
against fp32 in ONNX Runtime and 0.935 in OpenVINO on an AMD CPU). So each published file is
verified first in its kind's reference runtime (ONNX Runtime's CPU provider for ONNX files,
OpenVINO for an IR, TensorRT for an engine), which decides publication, and then, with the same
gate, in each other runtime its kind lists (`runtime.contract.kinds`) that can run here: OpenVINO
where it is installed, ONNX Runtime's CUDA and TensorRT providers on a GPU host (`measure_elsewhere`).
The manifest records every result; `runtime` refuses a variant in a runtime where its gate failed
or was never measured, unless asked to (`allow_unverified`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from runtime.contract.kinds import ArtefactKind, Runner, open_runner, runtime_of
from runtime.contract.manifest import GateRecord, OutputMetrics, Parity, ParityRow
from runtime.contract.parity import min_row_cosine, relative_error
from runtime.errors import first_line
from runtime.runners.environment import ORT_PROVIDERS, import_onnxruntime, nvidia_driver_present

from ..progress import Progress


class VerificationError(Exception):
    """An artefact does not match the eager model within its gate. Nothing is published."""


@dataclass(frozen=True)
class Gate:
    """Pass when, for each output in `outputs`, min row cosine >= min_cosine and (unless
    max_rel_err is None) relative error <= max_rel_err. The fp32 gate covers both outputs;
    the faster variants' gates are a minimum cosine of pooler_output (their relative error is
    reported, not gated)."""

    max_rel_err: float | None = 1e-4
    min_cosine: float = 0.99999
    outputs: tuple[str, ...] = ("last_hidden_state", "pooler_output")

    def passes(self, metrics: dict[str, OutputMetrics]) -> bool:
        return all(
            metrics[o].min_cosine >= self.min_cosine
            and (self.max_rel_err is None or metrics[o].rel_err <= self.max_rel_err)
            for o in self.outputs
        )

    def describe(self) -> str:
        text = f"min_cosine >= {self.min_cosine} on {', '.join(self.outputs)}"
        return f"rel_err <= {self.max_rel_err:g}, {text}" if self.max_rel_err is not None else text

    def record(self) -> GateRecord:
        return GateRecord(min_cosine=self.min_cosine, max_rel_err=self.max_rel_err, outputs=list(self.outputs))


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, OutputMetrics]:
    metrics = {}
    for name, ref in expected.items():
        out = actual[name]
        if out.shape != ref.shape:
            raise VerificationError(f"{name}: artefact shape {out.shape} differs from eager {ref.shape}")
        if not np.isfinite(out).all():
            metrics[name] = OutputMetrics(rel_err=float("inf"), min_cosine=float("-inf"))
            continue
        metrics[name] = OutputMetrics(rel_err=relative_error(out, ref), min_cosine=min_row_cosine(out, ref))
    return metrics


def eager_outputs(tower: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        last, pooled = tower(torch.from_numpy(x))
    return {"last_hidden_state": last.numpy(), "pooler_output": pooled.numpy()}


def verify_artefact(
    model: Runner,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    inputs: list[tuple[str, np.ndarray]],
    gate: Gate,
    runtime: str = "onnxruntime-cpu",
) -> Parity:
    """Run every input through the artefact and the reference; the manifest's parity record.
    `runtime`: where `model` runs (runtime.contract.runtime_of), recorded with the result."""
    rows = []
    for kind, x in inputs:
        metrics = compare(model.run(x), reference(x))
        rows.append(ParityRow(inputs=kind, batch_size=int(x.shape[0]), outputs=metrics, passed=gate.passes(metrics)))
    return Parity(gate=gate.record(), passed=all(r.passed for r in rows), provider=model.provider, results=rows,
                  runtime=runtime)


def describe_failures(file: str, parity: Parity, gate: Gate) -> str:
    lines = [f"{file} does not match the eager model (gate: {gate.describe()})"]
    for row in parity.results:
        if not row.passed:
            for name, m in row.outputs.items():
                lines.append(f"  {row.inputs} batch {row.batch_size} {name}: "
                             f"rel_err {m.rel_err:.3g}, min_cosine {m.min_cosine:.7f}")
    return "\n".join(lines)


# --- the same gate in every runtime of a kind that this machine has -----------------------------

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
        if not nvidia_driver_present():
            return "no NVIDIA GPU"
        if ORT_PROVIDERS[provider] not in import_onnxruntime().get_available_providers():
            return f"this onnxruntime has no {ORT_PROVIDERS[provider]}"
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
