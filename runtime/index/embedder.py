"""One batch of images at a time: decoded and resized in a pool of low-priority threads a few
batches ahead of the encoder, embedded, and the unreadable ones recorded with the reason."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..inputs.images import ImageSettings, preprocess


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


__all__ = ["BatchEmbedder", "Embedded"]
