"""Parity gates: an artefact, run through `runtime`, against the eager PyTorch model.

Two measures per output, both computed in float64:
- relative error: max |artefact - eager| / max |eager| over the whole tensor;
- minimum row cosine: the worst cosine similarity between matching vectors along the last
  axis (every token of `last_hidden_state`, every embedding of `pooler_output`).
A gate is passed only when every output, at every batch size, on every input set, is within it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from runtime.preprocess import ImageSettings, preprocess
from runtime.session import OnnxModel

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

    def passes(self, metrics: dict[str, dict]) -> bool:
        return all(
            metrics[o]["min_cosine"] >= self.min_cosine
            and (self.max_rel_err is None or metrics[o]["rel_err"] <= self.max_rel_err)
            for o in self.outputs
        )

    def describe(self) -> str:
        text = f"min_cosine >= {self.min_cosine} on {', '.join(self.outputs)}"
        return f"rel_err <= {self.max_rel_err:g}, {text}" if self.max_rel_err is not None else text


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def min_row_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    a = np.asarray(actual, np.float64).reshape(-1, actual.shape[-1])
    e = np.asarray(expected, np.float64).reshape(-1, expected.shape[-1])
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
    cos = np.where(denom > 0, (a * e).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
    return float(cos.min())


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, dict]:
    metrics = {}
    for name, ref in expected.items():
        out = actual[name]
        if out.shape != ref.shape:
            raise VerificationError(f"{name}: artefact shape {out.shape} differs from eager {ref.shape}")
        if not np.isfinite(out).all():
            metrics[name] = {"rel_err": float("inf"), "min_cosine": float("-inf")}
            continue
        metrics[name] = {"rel_err": relative_error(out, ref), "min_cosine": min_row_cosine(out, ref)}
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

    Images: the packaged public-domain photos, preprocessed as the runtime does, and standard
    normal noise. Text: sentence-like sequences (random tokens, then padding to full length
    with `pad_id`, as SigLIP's tokenizer emits them: its eos and pad are both `</s>`, id 1)
    and uniformly random ids.
    """
    rng = np.random.default_rng(seed)
    sets = []
    if spec.name == "vision":
        photos = preprocess(photo_paths(), image_settings or ImageSettings())
        for b in batch_sizes:
            sets.append(("photos", photos[np.arange(b) % len(photos)]))
            sets.append(("random", rng.standard_normal((b, *spec.input_shape[1:])).astype(np.float32)))
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


def eager_outputs(tower: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        last, pooled = tower(torch.from_numpy(x))
    return {"last_hidden_state": last.numpy(), "pooler_output": pooled.numpy()}


def verify_artefact(
    model: OnnxModel,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    inputs: list[tuple[str, np.ndarray]],
    gate: Gate,
) -> dict:
    """Run every input through the artefact and the reference; the manifest's parity record."""
    rows = []
    for kind, x in inputs:
        metrics = compare(model.run(x), reference(x))
        rows.append({"inputs": kind, "batch_size": int(x.shape[0]), **metrics, "passed": gate.passes(metrics)})
    gate_record = {**asdict(gate), "outputs": list(gate.outputs)}
    return {"gate": gate_record, "passed": all(r["passed"] for r in rows), "provider": model.provider,
            "results": rows}


def worst(parity: dict) -> dict[str, float]:
    """The worst numbers of a parity record: min cosine and max relative error per output."""
    out = {}
    for name in ("last_hidden_state", "pooler_output"):
        out[f"{name}_min_cosine"] = min(r[name]["min_cosine"] for r in parity["results"])
        out[f"{name}_rel_err"] = max(r[name]["rel_err"] for r in parity["results"])
    return out


def describe_failures(file: str, parity: dict, gate: Gate) -> str:
    lines = [f"{file} does not match the eager model (gate: {gate.describe()})"]
    for row in parity["results"]:
        if not row["passed"]:
            for name in ("last_hidden_state", "pooler_output"):
                m = row[name]
                lines.append(f"  {row['inputs']} batch {row['batch_size']} {name}: "
                             f"rel_err {m['rel_err']:.3g}, min_cosine {m['min_cosine']:.7f}")
    return "\n".join(lines)
