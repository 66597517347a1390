"""Parity gates: an artefact, run through `runtime`, against the eager PyTorch model.

Two measures per output (`runtime.parity`): the relative error and the minimum row cosine.
A gate is passed only when every output, at every batch size, on every input set, is within it.
The result is the manifest's typed `Parity` record (`runtime.contract`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from runtime.contract import Runner
from runtime.manifest import GateRecord, OutputMetrics, Parity, ParityRow
from runtime.parity import min_row_cosine, relative_error
from runtime.preprocess import ImageSettings, preprocess, resized

from .onnx_export import TowerSpec

PHOTOS_DIR = Path(__file__).parent / "photos"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class VerificationError(Exception):
    """An artefact does not match the eager model within its gate. Nothing is published."""


@dataclass(frozen=True)
class Gate:
    """Pass when, for each output in `outputs`, min row cosine >= min_cosine and (unless
    max_rel_err is None) relative error <= max_rel_err. The fp32 gate covers both outputs;
    the faster variants' gates are a minimum cosine of pooler_output (their relative error is
    reported, not gated)."""

    max_rel_err: float | None = 1e-4
    min_cosine: float = 0.99999
    outputs: tuple[str, ...] = ("last_hidden_state", "pooler_output")

    def passes(self, metrics: dict[str, OutputMetrics]) -> bool:
        return all(
            metrics[o].min_cosine >= self.min_cosine
            and (self.max_rel_err is None or metrics[o].rel_err <= self.max_rel_err)
            for o in self.outputs
        )

    def describe(self) -> str:
        text = f"min_cosine >= {self.min_cosine} on {', '.join(self.outputs)}"
        return f"rel_err <= {self.max_rel_err:g}, {text}" if self.max_rel_err is not None else text

    def record(self) -> GateRecord:
        return GateRecord(min_cosine=self.min_cosine, max_rel_err=self.max_rel_err, outputs=list(self.outputs))


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, OutputMetrics]:
    metrics = {}
    for name, ref in expected.items():
        out = actual[name]
        if out.shape != ref.shape:
            raise VerificationError(f"{name}: artefact shape {out.shape} differs from eager {ref.shape}")
        if not np.isfinite(out).all():
            metrics[name] = OutputMetrics(rel_err=float("inf"), min_cosine=float("-inf"))
            continue
        metrics[name] = OutputMetrics(rel_err=relative_error(out, ref), min_cosine=min_row_cosine(out, ref))
    return metrics


def photo_paths(directory: Path = PHOTOS_DIR) -> list[Path]:
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no verification photos in {directory}")
    return paths


def verification_inputs(
    spec: TowerSpec, batch_sizes: tuple[int, ...], seed: int, image_settings: ImageSettings | None = None,
    vocab_size: int | None = None, pad_id: int = 1,
) -> list[tuple[str, np.ndarray]]:
    """(input set, array) pairs: realistic inputs and random ones, at every batch size.

    Images: the packaged public-domain photos, preprocessed as the runtime does, and uniform
    noise over [-1, 1], the range preprocessing maps every pixel into (a value outside it
    never comes from an image, and a statically calibrated int8 file is not meant to take
    one). Text: sentence-like sequences (random tokens, then padding to full length
    with `pad_id`, as SigLIP's tokenizer emits them: its eos and pad are both `</s>`, id 1)
    and uniformly random ids.
    """
    rng = np.random.default_rng(seed)
    sets = []
    if spec.name == "vision":
        photos = preprocess(photo_paths(), image_settings or ImageSettings())
        for b in batch_sizes:
            sets.append(("photos", photos[np.arange(b) % len(photos)]))
            sets.append(("random", rng.uniform(-1.0, 1.0, (b, *spec.input_shape[1:])).astype(np.float32)))
    else:
        seq = spec.input_shape[1]
        for b in batch_sizes:
            padded = np.full((b, seq), pad_id, dtype=np.int64)
            for row in padded:
                n = int(rng.integers(1, seq))
                row[:n] = rng.integers(2, vocab_size, n)
            sets.append(("padded-text", padded))
            sets.append(("random", rng.integers(0, vocab_size, (b, seq), dtype=np.int64)))
    return sets


def uint8_inputs(inputs: list[tuple[str, np.ndarray]], settings: ImageSettings, seed: int) -> list[tuple[str, np.ndarray]]:
    """`inputs` (the image tower's verification inputs) for an artefact that takes uint8 images:
    the same sets and batch sizes, the photos resized but not normalised, and uniform random
    bytes in place of the noise."""
    rng = np.random.default_rng(seed)
    photos = resized(photo_paths(), settings)
    out = []
    for kind, x in inputs:
        if kind == "photos":
            out.append((kind, photos[np.arange(len(x)) % len(photos)]))
        else:
            out.append((kind, rng.integers(0, 256, x.shape, dtype=np.uint8)))
    return out


def tower_inputs(spec: TowerSpec, config, batch_sizes: tuple[int, ...], seed: int,
                 image_settings: ImageSettings | None = None) -> list[tuple[str, np.ndarray]]:
    """`verification_inputs` for a tower, the text tower's vocabulary and pad id taken from its
    config (a pad id outside the vocabulary falls back to 1, SigLIP's `</s>`)."""
    if spec.name != "text":
        return verification_inputs(spec, batch_sizes, seed, image_settings)
    pad = config.pad_token_id if config.pad_token_id is not None and config.pad_token_id < config.vocab_size else 1
    return verification_inputs(spec, batch_sizes, seed, image_settings, vocab_size=config.vocab_size, pad_id=pad)


def eager_outputs(tower: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        last, pooled = tower(torch.from_numpy(x))
    return {"last_hidden_state": last.numpy(), "pooler_output": pooled.numpy()}


def verify_artefact(
    model: Runner,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    inputs: list[tuple[str, np.ndarray]],
    gate: Gate,
    runtime: str = "onnxruntime-cpu",
) -> Parity:
    """Run every input through the artefact and the reference; the manifest's parity record.
    `runtime`: where `model` runs (runtime.contract.runtime_of), recorded with the result."""
    rows = []
    for kind, x in inputs:
        metrics = compare(model.run(x), reference(x))
        rows.append(ParityRow(inputs=kind, batch_size=int(x.shape[0]), outputs=metrics, passed=gate.passes(metrics)))
    return Parity(gate=gate.record(), passed=all(r.passed for r in rows), provider=model.provider, results=rows,
                  runtime=runtime)


def describe_failures(file: str, parity: Parity, gate: Gate) -> str:
    lines = [f"{file} does not match the eager model (gate: {gate.describe()})"]
    for row in parity.results:
        if not row.passed:
            for name, m in row.outputs.items():
                lines.append(f"  {row.inputs} batch {row.batch_size} {name}: "
                             f"rel_err {m.rel_err:.3g}, min_cosine {m.min_cosine:.7f}")
    return "\n".join(lines)
