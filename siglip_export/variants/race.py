"""The race `--target` runs on the exporting machine: every published file of a tower, in every
runtime of the target where it passed its gate, timed at batch 1 and 8 in turns.

Each round runs the candidates in order, the next round in reverse, so a machine whose speed
drifts (a shared VM) puts the drift on every file alike, as benchmarks/run.py --rounds does. Each
file is loaded with the runner users deploy (`runtime.contract.kinds.open_runner`) and asked for
`pooler_output` alone, as the encoders ask. The result is one `RaceEntry` per candidate with its
p50 milliseconds per call, for the manifest's `selection`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.contract.kinds import ArtefactKind, Runner, open_runner, runtime_of
from runtime.contract.layer_outputs import FEATURES
from runtime.contract.manifest import ArtefactRecord, Manifest
from runtime.contract.selection import CPU_RUNTIMES, RaceEntry, Selection
from runtime.errors import first_line
from runtime.runners.environment import cpu_identity, gpu_name

from ..progress import Progress
from .registry import TowerExport
from .targets import Target, gpu_here

BATCH_SIZES = (1, 8)
ROUNDS = 3
CALLS = {1: 3, 8: 1}  # timed calls per round and candidate at each batch size


@dataclass
class Candidate:
    """One file in one runtime, and the calls timed so far."""

    record: ArtefactRecord
    runtime: str
    provider: str
    path: Path
    runner: Runner | None = None
    samples: dict[int, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.record.file} in {self.runtime}"


def provider_for(kind: ArtefactKind, runtime: str) -> str | None:
    """The provider that runs a file of `kind` in `runtime`, None where none does."""
    return next((p for p in kind.providers if runtime_of(kind, p) == runtime), None)


def candidates(records: list[ArtefactRecord], runtimes: tuple[str, ...], directory: Path) -> list[Candidate]:
    """The tower's published files that take the contract's float32 input, in each of `runtimes`
    where their gate passed (plain file first, then the variants in manifest order)."""
    out = []
    for record in records:
        kind = record.kind
        if kind.variant == FEATURES or kind.image_input != "float32":
            continue
        for runtime in runtimes:
            provider = provider_for(kind, runtime)
            parity = record.gate_in(runtime)
            if provider is not None and parity is not None and parity.passed:
                out.append(Candidate(record, runtime, provider, directory / record.file))
    return out


def _time(runner: Runner, x: np.ndarray) -> float:
    started = time.perf_counter()
    runner.run(x, outputs=("pooler_output",))
    return time.perf_counter() - started


def race(name: str, entrants: list[Candidate], inputs: dict[int, np.ndarray], threads: int | None,
         progress: Progress, rounds: int = ROUNDS,
         clock: Callable[[Runner, np.ndarray], float] = _time) -> list[RaceEntry]:
    """Time `entrants` on `inputs` ({batch size: array}) in `rounds` alternating rounds; one
    RaceEntry per entrant that loaded and ran (one that fails to is left out, with a line)."""
    progress.info(f"{'':9}race {name}: {len(entrants)} files x runtimes, batch "
                  f"{' and '.join(map(str, inputs))}, {rounds} rounds in turns")
    ready = []
    for entrant in entrants:
        try:
            entrant.runner = open_runner(entrant.record.kind, entrant.path, provider=entrant.provider, threads=threads)
            for x in inputs.values():  # warm-up: first calls allocate and compile
                entrant.runner.run(x, outputs=("pooler_output",))
        except Exception as exc:  # a file that does not start here is not raced; the rest are
            progress.info(f"{'':9}race {name}: {entrant.label} left out: {first_line(exc)}")
            continue
        ready.append(entrant)
    begun = time.perf_counter()
    for r in range(rounds):
        for entrant in ready[:: 1 if r % 2 == 0 else -1]:
            for batch, x in inputs.items():
                for _ in range(CALLS.get(batch, 1)):
                    entrant.samples.setdefault(batch, []).append(clock(entrant.runner, x) * 1e3)
        took = time.perf_counter() - begun
        left = took / (r + 1) * (rounds - r - 1)
        progress.info(f"{'':9}race {name}: round {r + 1}/{rounds} done, {took:.0f}s, about {left:.0f}s left")
    entries = [RaceEntry(e.record.file, e.record.variant, e.runtime, e.provider,
                         {b: statistics.median(v) for b, v in e.samples.items()}) for e in ready]
    for entrant in entrants:
        entrant.runner = None  # release the sessions before the next tower loads its own
    return entries


def race_inputs(tower_name: str, input_shape: tuple, vocab_size: int | None, seed: int) -> dict[int, np.ndarray]:
    """Random inputs of the tower's shape at each race batch size, drawn like the gate's random set
    (timing does not depend on the values; a fixed seed keeps runs comparable)."""
    rng = np.random.default_rng(seed)
    largest = max(BATCH_SIZES)
    if tower_name == "vision":
        x = rng.uniform(-1.0, 1.0, (largest, *input_shape[1:])).astype(np.float32)
    else:
        x = rng.integers(0, vocab_size, (largest, *input_shape[1:]), dtype=np.int64)
    return {b: np.ascontiguousarray(x[:b]) for b in BATCH_SIZES}


def select(target: Target, manifest: Manifest, towers: list[TowerExport], threads: int | None,
           progress: Progress) -> Selection:
    """The manifest's `selection` for `target`: a race of each tower's published files on this
    machine where it has the target's hardware, else the target's rule, marked not raced."""
    if not target.runtimes:
        return Selection(target.name, False, "the plain fp32 file only: nothing to race", {})
    if target.runtimes != CPU_RUNTIMES and not gpu_here():
        towers_rule = {}
        for tower, variant in target.rule.items():
            record = manifest.find(tower, variant)
            if record is not None and record.variant == variant:
                towers_rule[tower] = [RaceEntry(record.file, variant, target.runtimes[0], "cuda")]
        note = (f"not raced: this machine has no NVIDIA GPU with ONNX Runtime's CUDA provider; chosen by the "
                f"{target.name} target's rule ({', '.join(f'{v} for the {t} tower' for t, v in target.rule.items())})"
                f" and verified on the CPU only, so the runtime runs it on a GPU only once exported there")
        progress.info(f"{'':9}{note}")
        return Selection(target.name, False, note, towers_rule)
    results = {}
    for tower in towers:
        entrants = candidates(manifest.records(tower.name), target.runtimes, tower.scratch)
        inputs = race_inputs(tower.name, tower.spec.input_shape, getattr(tower.module.config, "vocab_size", None),
                             tower.seed + 4)
        with progress.step(f"race {tower.spec.file.split('.')[0]} ({len(entrants)} entrants)") as step:
            entries = sorted(race(tower.name, entrants, inputs, threads, progress), key=lambda e: e.score_ms)
            if entries:
                step["note"] = f"fastest {entries[0].label}, {entries[0].timing()}"
        results[tower.name] = entries
    machine = cpu_identity() if target.runtimes == CPU_RUNTIMES else {**cpu_identity(), "gpu": gpu_name()}
    return Selection(target.name, True, f"p50 per call, {ROUNDS} rounds in turns on the exporting machine",
                     results, machine=machine, batch_sizes=list(BATCH_SIZES), rounds=ROUNDS)


__all__ = ["BATCH_SIZES", "CALLS", "Candidate", "ROUNDS", "candidates", "provider_for", "race", "race_inputs",
           "select"]
