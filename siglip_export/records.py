"""The manifest's records of what an export published, built in one place from what was written:
a model file's record (`artefact_record`: its hashes, size, IO signature, gates) and the tool
versions."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from runtime.contract.kinds import ArtefactKind
from runtime.contract.manifest import ArtefactRecord, FileDigest, Parity, TensorInfo
from runtime.files import sha256_file

from . import __version__

RECORDED_TOOLS = ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy")


def artefact_record(path: Path, data_files: list[str], *, tower: str, kind: ArtefactKind, opset: int,
                    signature: tuple[list[TensorInfo], list[TensorInfo]], parity: Parity,
                    runtimes: dict[str, Parity], **details) -> ArtefactRecord:
    """The manifest record of a published model file at `path` (in the scratch directory) with
    `data_files` beside it: hashed and sized as written, its kind's facts, its IO `signature`
    (inputs, outputs), the gate that decided publication and those measured in other runtimes.
    `details`: the record's optional fields (`simplified`, `accuracy`, `build`)."""
    directory = path.parent
    inputs, outputs = signature
    return ArtefactRecord(
        file=path.name, tower=tower, variant=kind.variant, format=kind.format, precision=kind.precision,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size + sum((directory / f).stat().st_size for f in data_files),
        external_data=[FileDigest(f, sha256_file(directory / f)) for f in data_files],
        opset=opset, inputs=inputs, outputs=outputs, parity=parity, runtimes=runtimes, **details,
    )


def tool_versions() -> dict[str, str]:
    versions = {"siglip-export": __version__, "python": platform.python_version()}
    for dist in RECORDED_TOOLS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
