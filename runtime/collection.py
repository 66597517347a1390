"""Embed an image collection into an index directory, in shards that a re-run resumes.

    siglip-runtime index photos/ --artefacts artifacts --output photos.index [--ray [ADDRESS]]

The layout of INDEX:

    index.json              what made it (artefacts, manifest sha256, variant), the source, the plan
    shards/shard-00000.npz  embeddings (L2-normalised float32) and paths of one shard's images, and
                            the images it could not read, with the reason
    shards/shard-00000.json the shard's commit record: its file's sha256 and counts
    failures.json           every unreadable image: path and reason (when complete)
    store/                  the vector store searched by `siglip-runtime search` (runtime.vector_store)

A shard is finished only when its .json exists and names the sha256 of its .npz: both are written
to temporary names and published by rename, the .json last. An interrupted run loses at most
the shards in flight; a re-run with the same source and model checks each finished shard's
sha256, skips it, and embeds the rest. The plan (the sorted image paths cut into shards of
`shard_size`) is fixed by the source: a re-run whose source lists other images is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cli_support import write_atomic
from .errors import InputError, UserError
from .preprocess import ImageSettings, preprocess
from .session import sha256_file

INDEX_FORMAT = "siglip-export/index"
INDEX_VERSION = 1
INDEX_FILE = "index.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
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


# --- the source: a directory, a list file, or a CSV / Parquet column of paths --------------------

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


# --- one batch of images: decoded in a thread pool, embedded, failures recorded ------------------

def _pixels(path: str, settings: ImageSettings, dtype=np.float32):
    """([3, H, W] of the model's input dtype, None) or (None, why the image cannot be used)."""
    try:
        return preprocess([path], settings, dtype=dtype)[0], None
    except (InputError, OSError, ValueError, MemoryError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, text.replace(f"cannot read image {path}: ", "")


@dataclass
class Embedded:
    """The result for a run of images: the readable ones with their vectors, the rest with a reason."""

    paths: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def matrix(self, dim: int) -> np.ndarray:
        return np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)


def _lower_priority() -> None:
    """Run this decode thread at the lowest priority (Linux: per thread), so that it fills the
    encoder's idle moments instead of preempting its threads; elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class BatchEmbedder:
    """Paths -> normalised embeddings with `encoder`, images decoded and resized by `workers`
    low-priority threads (Pillow releases the GIL) a few batches ahead of the encoder."""

    def __init__(self, encoder, workers: int):
        self.encoder = encoder
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode", initializer=_lower_priority)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def decoded(self, paths: Iterable[str]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """(path, pixels or None, reason or None) in the order of `paths`, decoded ahead."""
        pending: list = []
        ahead = 2 * self.encoder.batch_size + self.workers
        for path in paths:
            pending.append((path, self.pool.submit(_pixels, path, self.encoder.settings, self.encoder.model.input_dtype)))
            if len(pending) >= ahead:
                p, future = pending.pop(0)
                yield (p, *future.result())
        for p, future in pending:
            yield (p, *future.result())

    def embed(self, decoded: Iterable[tuple[str, np.ndarray | None, str | None]],
              on_batch: Callable[[int, int], None] | None = None) -> Embedded:
        """Embed the decoded images in batches; `on_batch(images, unreadable)` after each batch."""
        out = Embedded()
        batch: list[tuple[str, np.ndarray]] = []
        failed = 0

        def flush():
            nonlocal failed
            if batch:
                vectors = self.encoder.embed_pixels(np.stack([x for _, x in batch]), normalize=True)
                out.paths += [p for p, _ in batch]
                out.vectors.append(vectors.astype(np.float32))
            if on_batch and (batch or failed):
                on_batch(len(batch) + failed, failed)
            batch.clear()
            failed = 0

        for path, pixels, reason in decoded:
            if pixels is None:
                out.failed.append((path, reason))
                failed += 1
                continue
            batch.append((path, pixels))
            if len(batch) == self.encoder.batch_size:
                flush()
        flush()
        return out


# --- shards: written to a temporary name, committed by a record naming their sha256 -----------

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


# --- progress on stderr: images/s and the time left -------------------------------------------

class Progress:
    """`index: 3072/10000 images (2 unreadable), 31.5 img/s, 3m40s left` on stderr: rewritten in
    place on a terminal, a line every `every_s` seconds otherwise; `stream=None` is silent."""

    def __init__(self, total: int, done: int = 0, stream=sys.stderr, every_s: float = 10.0):
        self.total, self.done, self.failed = total, done, 0
        self.start_done, self.begun = done, time.perf_counter()
        self.stream, self.every_s = stream, every_s
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0

    def restart(self) -> None:
        """Count the rate from now (after the model has loaded)."""
        self.start_done, self.begun = self.done, time.perf_counter()

    def rate(self) -> float:
        took = time.perf_counter() - self.begun
        return (self.done - self.start_done) / took if took > 0 else 0.0

    def advance(self, images: int, failed: int = 0) -> None:
        self.done += images
        self.failed += failed
        now = time.perf_counter()
        if self.stream is None:
            return
        if self.live or now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.rate()
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta = f"{int(left // 60)}m{int(left % 60):02d}s left" if left == left else "-- left"
            line = (f"index: {self.done}/{self.total} images ({self.failed} unreadable), {rate:.1f} img/s, {eta}")
            self.stream.write(("\r" + line.ljust(78)) if self.live else line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["BatchEmbedder", "Embedded", "INDEX_FILE", "INDEX_FORMAT", "Progress", "finished_shard", "list_images",
           "paths_digest", "read_json", "read_shard", "write_json", "write_shard"]
