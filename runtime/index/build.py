"""`siglip-runtime index`: plan the shards, embed the pending ones (here or on Ray), build the store.

The layout and the commit rule of an index directory are in runtime.index.shards.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..artefacts import Artefacts, plain_or
from ..contract.manifest import MANIFEST
from ..errors import UserError
from ..files import sha256_file
from .embedder import BatchEmbedder, Embedded
from .shards import (
    INDEX_FILE,
    INDEX_FORMAT,
    INDEX_VERSION,
    finished_shard,
    read_json,
    read_shard,
    shard_name,
    write_json,
    write_shard,
)
from .sources import list_images, paths_digest
from .store import STORE_DIR, build_store, require_store


@dataclass
class IndexOptions:
    variant: str | None = None
    provider: str = "auto"
    threads: int | None = None
    batch_size: int = 32
    workers: int | None = None  # decode threads (default: the cores, at most 8)
    shard_size: int = 1024
    column: str | None = None
    allow_unverified: bool = False
    ray: str | None = None  # None: this process; "local": a Ray cluster on this machine; else its address
    ray_actors: int | None = None
    ray_cpus_per_actor: int = 1


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


def model_identity(artefacts: Artefacts, variant: str | None) -> dict:
    """What an index records of the model that made it; a query must come from the same."""
    if artefacts.manifest is None:
        raise UserError(f"{artefacts.single_file}: index needs an artefact directory written by export.py, "
                        f"not a single .onnx file")
    variant = plain_or(variant)
    record = artefacts.record("vision", variant)
    pooled = record.output("pooler_output")
    dim = pooled.shape[-1] if pooled is not None else None
    if not isinstance(dim, int):
        raise UserError(f"{record.file} has no pooled output of fixed width; index needs a vision model's "
                        f"pooler_output")
    return dict(artefacts=str(artefacts.directory.absolute()),
                manifest_sha256=sha256_file(artefacts.directory / MANIFEST),
                variant=variant, file=record.file, file_sha256=record.sha256, dim=dim)


def _check_resumable(existing: dict, wanted: dict, output: Path) -> None:
    """A re-run continues an index only with the same model, source listing and shard size."""
    if existing.get("format") != INDEX_FORMAT:
        raise UserError(f"{output / INDEX_FILE} is not a siglip-export index")
    old, new = existing.get("model", {}), wanted["model"]
    if (old.get("manifest_sha256"), old.get("variant")) != (new["manifest_sha256"], new["variant"]):
        raise UserError(f"{output} was started with another model ({old.get('artefacts')}, variant "
                        f"{old.get('variant') or 'fp32'}, manifest sha256 {str(old.get('manifest_sha256'))[:12]}); "
                        f"use a new --output, or the same artefacts and --variant")
    if existing.get("source", {}).get("paths_sha256") != wanted["source"]["paths_sha256"]:
        raise UserError(f"{output} was started on another list of images ({existing['source'].get('images')} "
                        f"then, {wanted['source']['images']} now); use a new --output")
    if existing.get("shard_size") != wanted["shard_size"]:
        raise UserError(f"{output} was started with --shard-size {existing.get('shard_size')}; resume with it "
                        f"or use a new --output")


def _prepare(output: Path, wanted: dict) -> Path:
    index_file = output / INDEX_FILE
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a directory")
    if index_file.is_file():
        _check_resumable(read_json(index_file), wanted, output)
    elif output.is_dir() and any(output.iterdir()):
        raise UserError(f"--output {output} is a non-empty directory that is not an index; choose another")
    shards = output / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for stale in shards.glob(".*.tmp-*"):  # what an interrupted run was writing
        stale.unlink(missing_ok=True)
    write_json(index_file, {**wanted, "complete": False})  # until this run has rebuilt the store
    return shards


def _local(artefacts: Artefacts, pending, options: IndexOptions, on_shard: Callable, emit, progress: Progress) -> str:
    from ..encoders import ImageEncoder

    encoder = ImageEncoder(artefacts, variant=options.variant, provider=options.provider, threads=options.threads,
                           batch_size=options.batch_size, allow_unverified=options.allow_unverified)
    workers = options.workers or min(8, os.cpu_count() or 1)
    emit(f"index: {encoder.model.path.name} on {encoder.provider}, batch {encoder.batch_size}, "
         f"{workers} decode threads")
    embedder = BatchEmbedder(encoder, workers)
    progress.restart()
    try:
        stream = embedder.decoded(p for _, shard in pending for p in shard)
        for number, shard in pending:
            taken = (next(stream) for _ in range(len(shard)))
            on_shard(number, embedder.embed(taken, progress.advance))
    finally:
        embedder.close()
    return encoder.provider


def build_index(source, artefacts_dir, output, options: IndexOptions | None = None, emit=print) -> dict:
    """Embed every image SOURCE names into OUTPUT (created, or resumed); returns index.json's content.
    `emit` takes the step lines; the progress line goes to stderr unless `emit` is None (silent)."""
    options = options or IndexOptions()
    quiet = emit is None
    if options.shard_size < 1 or options.batch_size < 1:
        raise UserError(f"shard size and batch size must be positive, got {options.shard_size} and "
                        f"{options.batch_size}")
    emit = emit or (lambda line: None)
    require_store()  # before any work: the store is built at the end
    if options.ray is not None:
        from .on_ray import require_ray

        require_ray()
    output, begun = Path(output), time.perf_counter()
    paths = list_images(source, options.column)
    artefacts = Artefacts(artefacts_dir)
    if artefacts.manifest is not None:  # the file every worker runs, chosen once ("fp32": the plain file)
        choice = artefacts.choose("vision", options.variant, options.provider)
        options = dataclasses.replace(options, variant=choice.variant or "fp32", provider=choice.provider)
        emit(f"index: image tower {choice.file}: {choice.reason}")
    model = model_identity(artefacts, options.variant)
    plan = [paths[i:i + options.shard_size] for i in range(0, len(paths), options.shard_size)]
    wanted = dict(format=INDEX_FORMAT, version=INDEX_VERSION, model=model,
                  source=dict(path=str(Path(source).absolute()), column=options.column, images=len(paths),
                              paths_sha256=paths_digest(paths)),
                  shard_size=options.shard_size, shards=len(plan))
    shards = _prepare(output, wanted)
    done = {i for i in range(len(plan)) if finished_shard(shards, i)}
    pending = [(i, plan[i]) for i in range(len(plan)) if i not in done]
    emit(f"index: {len(paths)} images in {len(plan)} shards of {options.shard_size}"
         + (f"; {len(done)} finished shards kept, {len(pending)} to embed" if done else ""))
    progress = Progress(len(paths), done=sum(len(plan[i]) for i in done), stream=None if quiet else sys.stderr)

    def on_shard(number: int, result: Embedded) -> None:
        write_shard(shards, number, result, model["dim"])

    provider = None
    if pending:
        try:
            if options.ray is not None:
                from .on_ray import embed_on_ray

                provider = embed_on_ray(artefacts, pending, options, model["dim"], on_shard, emit, progress)
            else:
                provider = _local(artefacts, pending, options, on_shard, emit, progress)
        finally:
            progress.close()
    embed_s, rate = time.perf_counter() - begun, progress.rate()
    return _finish(output, shards, plan, wanted, emit, dict(seconds=round(embed_s, 1), images_per_s=round(rate, 2),
                                                              provider=provider, ray=options.ray))


def _finish(output: Path, shards: Path, plan: list, wanted: dict, emit, run: dict) -> dict:
    """All shards are finished: build the store, list the unreadable images, mark complete."""
    rows = sum(read_json(shards / f"{shard_name(n)}.json")["images"] for n in range(len(plan)))
    failures: list[dict] = []

    def vectors():  # each shard read once: its vectors to the store, its failures to the list
        for number in range(len(plan)):
            data = read_shard(shards, number)
            failures.extend(dict(path=str(p), reason=str(r))
                            for p, r in zip(data["failed_paths"], data["failed_reasons"]))
            yield data["paths"], data["embeddings"]

    emit(f"index: building the vector store ({rows} vectors)")
    begun = time.perf_counter()
    store = build_store(output, vectors(), rows, wanted["model"]["dim"])
    store["build_s"] = round(time.perf_counter() - begun, 2)
    write_json(output / "failures.json", failures)
    indexed = store.pop("rows")
    summary = {**wanted, "complete": True, "indexed": indexed, "failed": len(failures), "store": store,
               "last_run": run}
    write_json(output / INDEX_FILE, summary)
    emit(f"index: {indexed} images indexed, {len(failures)} unreadable (listed in {output / 'failures.json'}); "
         f"{store['library']} store in {output / STORE_DIR}")
    return summary
