"""The facts the manifest records about files and tools, measured on what was written."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from runtime.manifest import FileDigest
from runtime.session import sha256_file

from . import __version__

RECORDED_TOOLS = ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy")


def file_record(path: Path, data_files: list[str]) -> dict:
    """`file`, `sha256`, `size_bytes` (the model and its data files) and `external_data` of a
    model file, as keyword arguments of `runtime.contract.ArtefactRecord`."""
    directory = path.parent
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size + sum((directory / f).stat().st_size for f in data_files),
        "external_data": [FileDigest(f, sha256_file(directory / f)) for f in data_files],
    }


def tool_versions() -> dict[str, str]:
    versions = {"siglip-export": __version__, "python": platform.python_version()}
    for dist in RECORDED_TOOLS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
