"""`siglip-runtime index --ray [ADDRESS]`: the same shards, embedded by a pool of Ray actors.

Ray Data streams the pending images (`from_items`) through `map_batches` with a pool of encoder
actors: each actor gets the artefacts through Ray's object store (the model file, its external
data, manifest.json and preprocessor_config.json; no shared filesystem needed for them), opens
an ImageEncoder on a private copy, and decodes and embeds its batches exactly as the local run
does (runtime.index.shards.BatchEmbedder). The driver gathers the rows by shard and commits each
shard as it completes, so the index directory is the one a local run writes. The image paths
must be readable from every worker (a shared or mounted filesystem).

ADDRESS: "local" starts a Ray cluster on this machine for the run; anything else is passed to
`ray.init(address=...)` ("auto", "ray://head:10001", ...). Needs `pip install 'siglip-export[index]'`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from ..artefacts import Artefacts
from ..contract.manifest import MANIFEST
from ..errors import UserError
from ..inputs.images import PREPROCESSOR_CONFIG
from .embedder import BatchEmbedder, Embedded
from .shards import INDEX_EXTRA


def artefact_bundle(artefacts: Artefacts, variant: str | None) -> dict[str, bytes]:
    """The files an image encoder needs, by name: what the workers receive."""
    names = [MANIFEST, *artefacts.record("vision", variant).files]
    if (artefacts.directory / PREPROCESSOR_CONFIG).is_file():
        names.append(PREPROCESSOR_CONFIG)
    return {name: (artefacts.directory / name).read_bytes() for name in names}


class EncoderActor:
    """A Ray Data actor: rows {shard, pos, path} -> the same rows with `vector` and `reason`
    ("" for an embedded image; the vector of an unreadable one is zeros)."""

    def __init__(self, holder: str, dim: int, variant, provider, threads, batch_size, workers, allow_unverified):
        import ray

        from ..encoders import ImageEncoder

        bundle = ray.get(ray.get_actor(holder).files.remote())
        directory = Path(tempfile.mkdtemp(prefix="siglip-artefacts-"))
        try:
            for name, data in bundle.items():
                (directory / name).write_bytes(data)
            encoder = ImageEncoder(directory, variant=variant, provider=provider, threads=threads,
                                   batch_size=batch_size, allow_unverified=allow_unverified)
        finally:  # the session holds the model now; leave no copy behind on the worker
            shutil.rmtree(directory, ignore_errors=True)
        self.dim = dim
        self.embedder = BatchEmbedder(encoder, workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        result = self.embedder.embed(self.embedder.decoded(paths))
        found = dict(zip(result.paths, result.matrix(self.dim)))
        reasons = dict(result.failed)
        vectors = np.stack([found.get(p, np.zeros(self.dim, np.float32)) for p in paths])
        return dict(shard=batch["shard"], pos=batch["pos"], path=batch["path"], vector=vectors,
                    reason=np.array([reasons.get(p, "") for p in paths], dtype=object))


class _Holder:
    """Holds the artefact files for the encoder actors (by name, so that their constructor
    arguments are plain values and an actor Ray restarts can fetch the files again)."""

    def __init__(self, files: dict[str, bytes]):
        self._files = files

    def files(self) -> dict[str, bytes]:
        return self._files


def require_ray():
    """The ray module, or UserError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] part of the extra)
    except ImportError:
        raise UserError(f"--ray needs Ray Data: {INDEX_EXTRA}") from None
    return ray


def _connect(address: str):
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
    return ray


def embed_on_ray(artefacts: Artefacts, pending: list[tuple[int, list[str]]], options, dim: int, on_shard: Callable,
                 emit, progress) -> str:
    """Embed the pending shards with Ray Data; `on_shard(number, Embedded)` as each completes."""
    ray = _connect(options.ray)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # shards complete one after another
    context.enable_progress_bars = False  # ours counts images and shows the time left
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus = options.ray_cpus_per_actor
    use_gpu = options.provider in ("cuda", "tensorrt")
    total = ray.cluster_resources()
    actors = options.ray_actors or max(1, int(total.get("GPU" if use_gpu else "CPU", 1) // (1 if use_gpu else cpus)))
    workers = options.workers or cpus
    rows = [dict(shard=number, pos=pos, path=path) for number, shard in pending for pos, path in enumerate(shard)]
    batches = -(-len(rows) // options.batch_size)
    actors = min(actors, batches)
    holder_name = f"siglip-artefacts-{uuid.uuid4().hex[:12]}"
    holder = ray.remote(_Holder).options(name=holder_name, num_cpus=0).remote(
        artefact_bundle(artefacts, options.variant))
    each = f"{cpus} CPU{'s' if cpus > 1 else ''}" + (" and 1 GPU" if use_gpu else "")
    emit(f"index: Ray cluster with {int(total.get('CPU', 0))} CPUs and {int(total.get('GPU', 0))} GPUs; "
         f"{actors} encoder actor{'s' if actors > 1 else ''} of {each}")
    dataset = ray.data.from_items(rows, override_num_blocks=min(batches, max(256, 4 * actors)))
    embedded = dataset.map_batches(
        EncoderActor, batch_size=options.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs=dict(
            holder=holder_name, dim=dim, variant=options.variant, provider=options.provider,
            threads=options.threads or cpus, batch_size=options.batch_size, workers=workers,
            allow_unverified=options.allow_unverified))
    try:
        _gather(embedded, dict((number, len(shard)) for number, shard in pending), on_shard, progress)
    finally:
        ray.kill(holder)
    return f"{options.provider} on Ray ({actors} actors)"


def _gather(embedded, sizes: dict[int, int], on_shard: Callable, progress) -> None:
    """Rows back from the actors -> one Embedded per shard, committed as soon as it is whole."""
    gathered: dict[int, dict[int, tuple]] = {}
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for number, pos, path, vector, reason in zip(batch["shard"], batch["pos"], batch["path"], batch["vector"],
                                                     batch["reason"]):
            gathered.setdefault(int(number), {})[int(pos)] = (str(path), vector, str(reason))
        progress.advance(len(batch["path"]), sum(1 for r in batch["reason"] if r))
        for number in [n for n, got in gathered.items() if len(got) == sizes[n]]:
            result = Embedded()
            for _, (path, vector, reason) in sorted(gathered.pop(number).items()):
                if reason:
                    result.failed.append((path, reason))
                else:
                    result.paths.append(path)
                    result.vectors.append(np.asarray(vector, np.float32)[None])
            on_shard(number, result)
    if gathered:
        raise RuntimeError(f"Ray returned incomplete shards {sorted(gathered)}")


__all__ = ["EncoderActor", "artefact_bundle", "embed_on_ray"]
