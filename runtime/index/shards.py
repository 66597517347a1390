"""An index directory's layout and its shards, which a re-run resumes.

The layout of INDEX (written by `siglip-runtime index`, runtime.index.build):

    index.json              what made it (artefacts, manifest sha256, variant), the source, the plan
    shards/shard-00000.npz  embeddings (L2-normalised float32) and paths of one shard's images, and
                            the images it could not read, with the reason
    shards/shard-00000.json the shard's commit record: its file's sha256 and counts
    failures.json           every unreadable image: path and reason (when complete)
    store/                  the vector store searched by `siglip-runtime search` (runtime.index.store)

A shard is finished only when its .json exists and names the sha256 of its .npz: both are written
to temporary names and published by rename, the .json last. An interrupted run loses at most
the shards in flight; a re-run with the same source and model checks each finished shard's
sha256, skips it, and embeds the rest. The plan (the sorted image paths cut into shards of
`shard_size`) is fixed by the source: a re-run whose source lists other images is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import sha256_file, write_atomic
from .embedder import Embedded

INDEX_FORMAT = "siglip-export/index"
INDEX_VERSION = 1
INDEX_FILE = "index.json"
INDEX_EXTRA = "pip install 'siglip-export[index]'"


def write_json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_shard(directory: Path, index: int, result: Embedded, dim: int) -> dict:
    blob = io.BytesIO()
    failed = result.failed
    np.savez(blob, paths=np.array(result.paths, dtype=str), embeddings=result.matrix(dim),
             failed_paths=np.array([p for p, _ in failed], dtype=str),
             failed_reasons=np.array([r for _, r in failed], dtype=str))
    data = blob.getvalue()
    name = shard_name(index)
    write_atomic(directory / f"{name}.npz", data)
    record = dict(shard=index, file=f"{name}.npz", sha256=hashlib.sha256(data).hexdigest(),
                  images=len(result.paths), failed=len(failed))
    write_json(directory / f"{name}.json", record)  # the commit: the shard counts as finished from here
    return record


def finished_shard(directory: Path, index: int) -> dict | None:
    """The commit record of a shard whose file is there with the recorded sha256, else None."""
    record_path = directory / f"{shard_name(index)}.json"
    try:
        record = json.loads(record_path.read_text())
        path = directory / record["file"]
        if path.is_file() and sha256_file(path) == record["sha256"]:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_shard(directory: Path, index: int) -> dict[str, np.ndarray]:
    with np.load(directory / f"{shard_name(index)}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


__all__ = ["INDEX_EXTRA", "INDEX_FILE", "INDEX_FORMAT", "INDEX_VERSION", "finished_shard", "read_json",
           "read_shard", "shard_name", "write_json", "write_shard"]
