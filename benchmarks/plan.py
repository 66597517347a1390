"""What a benchmark run measures: each selected backend (benchmarks.backends.BACKENDS) against
the export's manifest records, or the reason it cannot run here.

A backend runs a record when the record's format is one it takes (and, for formats it runs
only in the plain export, the record is the plain one), and when the record's kind runs on the
backend's provider (runtime.contract): an int8 file with CPU-only kernels is not timed on CUDA.
Nothing here reads file names.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from runtime.artefacts import Artefacts
from runtime.contract.manifest import MANIFEST, ArtefactRecord, Manifest
from runtime.errors import ArtefactError, UserError

from .backends import BACKENDS, GROUPS, Backend, OrtRunner, TorchRunner

REFERENCE_ARTEFACT = "siglip_export (config.json)"  # what the torch backends run
INSTALL_HINTS = {"openvino": " (pip install openvino)", "tensorrt": " (pip install -e '.[tensorrt]')"}
_PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class PlanItem:
    """One (backend, artefact) the run times, or lists as skipped with `skipped` as the reason."""

    backend: Backend
    artefact: str
    precision: str
    path: str | None = None
    skipped: str | None = None
    artefact_precision: str | None = None  # the record's own (an int8 IR under a backend's default hint)

    @property
    def device(self) -> str:
        return self.backend.device


def load_manifest(directory: Path) -> Manifest:
    """The export's manifest (UserError, one line, when there is none or it cannot be read)."""
    if not (directory / MANIFEST).is_file():
        raise UserError(f"{directory} has no {MANIFEST}: run `python export.py` first "
                        f"(or pass --artefacts DIR of an export)")
    try:
        return Artefacts(directory).manifest
    except ArtefactError as exc:
        raise UserError(f"{exc} (re-run `python export.py`)") from None


def select_backends(names: list[str]) -> list[Backend]:
    """Backends named on the command line (names or groups, space- or comma-separated), in table order."""
    wanted: set[str] = set()
    for name in (n.strip() for item in names for n in item.split(",")):
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in BACKENDS:
            wanted.add(name)
        else:
            raise UserError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)}; "
                            f"groups: {', '.join(GROUPS)})")
    return [b for name, b in BACKENDS.items() if name in wanted]


def _ort_providers() -> tuple[list[str], str | None]:
    from runtime.runners.environment import import_onnxruntime as _import_ort

    try:
        return _import_ort().get_available_providers(), None
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        return [], str(exc)


def _environment_reason(backend: Backend, gpu: str | None, ort: tuple[list[str], str | None]) -> str | None:
    """Why `backend` cannot run on this machine at all, or None."""
    for module in backend.needs:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed{INSTALL_HINTS.get(module, '')}"
    providers, ort_error = ort
    if backend.runner is OrtRunner and ort_error:
        return f"onnxruntime is not importable: {ort_error}"
    if backend.device == "cuda" and gpu is None:
        reason = "no NVIDIA GPU on this machine (no /proc/driver/nvidia/version, no nvidia-smi)"
        torch_version = _version("torch") or ""
        if backend.runner is TorchRunner and "+cpu" in torch_version:
            reason += f"; torch {torch_version} is a CPU-only build"
        return reason
    name = _PROVIDER_NAMES.get(backend.provider or "")
    if backend.runner is OrtRunner and name and name not in providers:
        return f"this onnxruntime build has no {name} (has: {', '.join(providers)})"
    if backend.runner is OrtRunner and backend.provider == "tensorrt":
        from runtime.runners.environment import TENSORRT_LIBRARIES, tensorrt_libraries_present

        if not tensorrt_libraries_present():
            return f"TensorRT's libraries ({TENSORRT_LIBRARIES[0]}) are not installed; onnxruntime lists {name} anyway"
    return None


def _kind_reason(backend: Backend, record: ArtefactRecord) -> str | None:
    """Why this backend does not run this record's kind (its provider is not one the kind runs on)."""
    try:
        kind = record.kind
    except ArtefactError as exc:
        return str(exc)
    if backend.provider is not None and backend.provider not in kind.providers:
        return f"{record.file} runs on {kind.runs_on}, not on the {backend.provider} provider"
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def plan_backends(backends: list[Backend], manifest: Manifest, directory: Path, gpu: str | None,
                  variants: tuple[str, ...] | None = None) -> list[PlanItem]:
    """One item per (backend, artefact) in backend order: the job to run, or `skipped` with the reason.
    `variants`: only the artefacts of these variants ('plain': the unoptimised export)."""
    ort = _ort_providers()
    vision = [r for r in manifest.records("vision") if variants is None or (r.variant or "plain") in variants]
    items = []
    for backend in backends:
        reason = _environment_reason(backend, gpu, ort)
        if not backend.formats:
            items.append(PlanItem(backend, REFERENCE_ARTEFACT, backend.precision or "fp32", skipped=reason))
            continue
        records = [r for r in vision if backend.runs(r)]
        if not records:
            wanted = " or ".join(f"{'plain ' if f in backend.plain_only else ''}{f}" for f in backend.formats)
            items.append(PlanItem(backend, f"no {wanted} artefact", backend.precision or "unknown",
                                  skipped=f"the export has no image-tower {wanted} artefact"))
        for record in records:
            items.append(PlanItem(backend, record.file, backend.precision or record.precision,
                                  str(directory / record.file), reason or _kind_reason(backend, record),
                                  artefact_precision=record.precision))
    return items
