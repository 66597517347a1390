"""Which embedded vector store `siglip-runtime index` uses: measured, not guessed.

    python benchmarks/vector_store.py --rows 100000 --dim 768 [--queries 200] [--json out.json]

Builds the same collection of L2-normalised vectors in each candidate (on disk, in a temporary
directory), then times single queries (top 10, inner product = cosine) and checks recall@10
against exact numpy search. The vectors are a Gaussian mixture (clusters, as image embeddings
have), the queries perturbed copies of stored vectors. Candidates: LanceDB (flat scan, and its
IVF_HNSW_SQ index), FAISS (exact IndexFlatIP, and HNSW at its default and at the search breadth
runtime.index.store uses), usearch (HNSW). A candidate whose library is missing is reported as
such. usearch is imported last: imported before onnxruntime, it crashes the process (seen with
usearch 2.26 and onnxruntime 1.2x: `import usearch; import onnxruntime` segfaults).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def collection(rows: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 1000, 8), dim)).astype(np.float32)
    data = centres[rng.integers(0, len(centres), rows)] + 0.7 * rng.standard_normal((rows, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    picks = rng.choice(rows, queries, replace=False)
    query = data[picks] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32) / np.sqrt(dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return data, query


def exact_top(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = query @ data.T
    return np.argsort(-scores, axis=1)[:, :k]


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def lancedb_candidate(index_type: str | None):
    def run(data, query, k, where: Path):
        import lancedb
        import pyarrow as pa

        begun = time.perf_counter()
        db = lancedb.connect(where)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), data.shape[1])
        table = db.create_table("images", pa.table({"id": np.arange(len(data)), "vector": vectors}))
        if index_type:
            table.create_index(metric="dot", index_type=index_type)
        build = time.perf_counter() - begun

        def search(q):
            rows = table.search(q).distance_type("dot").limit(k).to_arrow()
            return rows["id"].to_numpy()
        return build, search
    return run


def faiss_candidate(kind: str, ef_search: int = 16):
    def run(data, query, k, where: Path):
        import faiss

        begun = time.perf_counter()
        index = faiss.IndexFlatIP(data.shape[1]) if kind == "flat" else faiss.IndexHNSWFlat(
            data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.add(data)
        if kind != "flat":
            index.hnsw.efSearch = ef_search
        faiss.write_index(index, str(where / "index.faiss"))
        build = time.perf_counter() - begun

        def search(q):
            return index.search(q[None, :], k)[1][0]
        return build, search
    return run


def usearch_candidate(data, query, k, where: Path):
    from usearch.index import Index

    begun = time.perf_counter()
    index = Index(ndim=data.shape[1], metric="ip", dtype="f32")
    index.add(np.arange(len(data)), data)
    index.save(str(where / "index.usearch"))
    build = time.perf_counter() - begun

    def search(q):
        return np.asarray(index.search(q, k).keys)
    return build, search


CANDIDATES = {
    "lancedb flat": lancedb_candidate(None),
    "lancedb IVF_HNSW_SQ": lancedb_candidate("IVF_HNSW_SQ"),
    "faiss IndexFlatIP": faiss_candidate("flat"),
    "faiss HNSW32": faiss_candidate("hnsw"),
    "faiss HNSW32 efSearch 128": faiss_candidate("hnsw", 128),
    "faiss HNSW32 efSearch 256": faiss_candidate("hnsw", 256),
    "usearch HNSW": usearch_candidate,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--only", default=None, help="comma-separated candidate names")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    data, query = collection(args.rows, args.dim, args.queries)
    truth = exact_top(data, query, args.top_k)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    print(f"{args.rows} x {args.dim} float32, {args.queries} queries, top {args.top_k}, {os.cpu_count()} cores")
    print(f"| store | build + save (s) | query p50 (ms) | query p95 (ms) | recall@{args.top_k} | on disk (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for name in names:
        where = Path(tempfile.mkdtemp(prefix="vstore-"))
        try:
            build, search = CANDIDATES[name](data, query, args.top_k, where)
            search(query[0])  # warm-up
            times, hits = [], 0
            for q, expected in zip(query, truth):
                begun = time.perf_counter()
                found = search(q)
                times.append((time.perf_counter() - begun) * 1e3)
                hits += len(set(found.tolist()) & set(expected.tolist()))
            row = dict(store=name, build_s=build, p50_ms=statistics.median(times),
                       p95_ms=float(np.percentile(times, 95)), recall=hits / truth.size, disk_mb=disk_mb(where))
            print(f"| {name} | {build:.1f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['recall']:.3f} | "
                  f"{row['disk_mb']:.0f} |", flush=True)
        except ImportError as exc:
            row = dict(store=name, missing=str(exc))
            print(f"| {name} | not installed ({exc}) | | | | |")
        finally:
            shutil.rmtree(where, ignore_errors=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps(dict(rows=args.rows, dim=args.dim, results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
