"""What an index embeds: the image paths a source names. A directory (recursive), a text file of
paths (one per line), or a CSV / Parquet column of paths."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from .shards import INDEX_EXTRA

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _table_column(path: Path, column: str | None) -> list[str]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {path} needs pyarrow: {INDEX_EXTRA}") from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError kinds
            raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    else:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
                names = list(rows[0]) if rows else []
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        columns = {name: [row[name] for row in rows] for name in names}
    if column is None:
        column = "path" if "path" in columns or len(columns) != 1 else next(iter(columns))
    if column not in columns:
        raise UserError(f"{path} has no column {column!r} (it has: {', '.join(columns) or 'no columns'}); "
                        f"pass --column NAME")
    return [str(v) for v in columns[column] if v is not None and str(v).strip()]


def list_images(source: str | os.PathLike, column: str | None = None) -> list[str]:
    """The image paths a source names, absolute, sorted for a directory, in order (first of any
    duplicate kept) for a list: a directory (recursive; files with an image suffix, hidden ones
    skipped), a text file of paths (one per line, # comments), or a CSV / Parquet column of paths.
    Relative paths in a file are read from the file's directory."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"source not found: {source}")
    if source.is_dir():
        if column is not None:
            raise UserError(f"--column applies to a CSV or Parquet source, not to the directory {source}")
        found = []
        for root, dirs, files in os.walk(source):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(root, f) for f in files
                      if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
        paths = sorted(str(Path(p).absolute()) for p in found)
    else:
        if source.suffix.lower() in (".csv", ".parquet"):
            names = _table_column(source, column)
        else:
            if column is not None:
                raise UserError(f"--column applies to a CSV or Parquet source, not to {source}")
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read the list of paths {source}: {exc}") from None
            names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        base = source.absolute().parent
        paths = list(dict.fromkeys(str(base / name) for name in names))  # absolute or read from base
    if not paths:
        what = f"no image files ({', '.join(IMAGE_SUFFIXES)})" if source.is_dir() else "no paths"
        raise UserError(f"{source} lists {what}")
    return paths


def paths_digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


__all__ = ["IMAGE_SUFFIXES", "list_images", "paths_digest"]
