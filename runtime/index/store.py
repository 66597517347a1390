"""The vector store of an index: FAISS, embedded (files on disk, no server).

Chosen by measurement (benchmarks/vector_store.py; the README has the table and the command).
Over 100k x 768 vectors on the 2-core development machine: LanceDB's exact scan took ~0.6 s a
query and its IVF_HNSW_SQ index ~100 s to build for recall@10 0.89; FAISS's exact scan took
~40 ms and its HNSW under 1 ms at recall@10 0.98 (efSearch 256), built in ~25 s; usearch's HNSW
was as fast, 2x slower to build, and importing it before onnxruntime crashes the process
(usearch 2.26), a trap for every program that embeds this runtime.

Layout of INDEX/store/: `vectors.faiss` (row i is the i-th path), `paths.json`. Vectors are
L2-normalised, so the inner product is the cosine. Up to EXACT_ROWS images the index is exact
(IndexFlatIP); above, HNSW (IndexHNSWFlat, M 32) searched with efSearch EF_SEARCH.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import UserError
from .shards import INDEX_EXTRA, write_json

STORE_DIR = "store"
VECTORS = "vectors.faiss"
PATHS = "paths.json"
EXACT_ROWS = 100_000
HNSW_M = 32
EF_SEARCH = 256  # HNSW breadth at query time: recall@10 0.98 at 100k (benchmarks/vector_store.py)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserError(f"the index's vector store needs FAISS: {INDEX_EXTRA}") from None
    return faiss


def require_store() -> None:
    """UserError (naming the extra to install) where FAISS is missing."""
    _faiss()


def build_store(output: Path, shards: Iterable[tuple[np.ndarray, np.ndarray]], rows: int, dim: int) -> dict:
    """The (paths, vectors) of every shard, `rows` in all, into OUTPUT/store (built beside it,
    then swapped in)."""
    faiss = _faiss()
    exact = rows <= EXACT_ROWS
    index = faiss.IndexFlatIP(dim) if exact else faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    paths: list[str] = []
    for names, vectors in shards:
        if len(names):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            paths += [str(p) for p in names]
    if len(paths) != rows:
        raise RuntimeError(f"the shards hold {len(paths)} vectors, their records {rows}")
    final = output / STORE_DIR
    building = output / f".{STORE_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    faiss.write_index(index, str(building / VECTORS))
    write_json(building / PATHS, {"paths": paths})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(building, final)
    kind = "IndexFlatIP (exact)" if exact else f"IndexHNSWFlat (M {HNSW_M}, efSearch {EF_SEARCH})"
    return dict(library="faiss", version=faiss.__version__, kind=kind, rows=len(paths))


class Store:
    """An index's store: `search(vector, k)` -> [(path, cosine)], best first."""

    def __init__(self, output: Path):
        faiss = _faiss()
        directory = Path(output) / STORE_DIR
        try:
            self.paths = json.loads((directory / PATHS).read_text(encoding="utf-8"))["paths"]
            self.index = faiss.read_index(str(directory / VECTORS), faiss.IO_FLAG_READ_ONLY)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{output} has no readable vector store ({reason}); re-run siglip-runtime index") from None
        if self.index.ntotal != len(self.paths):
            raise UserError(f"{directory / VECTORS} does not match {PATHS}; re-run siglip-runtime index")
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = EF_SEARCH

    def __len__(self) -> int:
        return len(self.paths)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        if not self.paths:
            return []
        scores, rows = self.index.search(np.asarray(vector, np.float32).reshape(1, -1), min(k, len(self.paths)))
        return [(self.paths[int(r)], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]


__all__ = ["EXACT_ROWS", "STORE_DIR", "Store", "build_store"]
