"""Files the runtime writes and checks: sha256 digests (the manifest's and an index's records) and
atomic writes (a temporary name beside the target, flushed, then renamed over it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import UserError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, flush it to disk, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


__all__ = ["sha256_file", "write_atomic"]
