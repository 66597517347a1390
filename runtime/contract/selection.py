"""Which artefact an export found fastest, per tower and per runtime: the manifest's `selection`.

`siglip-export --target cpu` races every gated file on the exporting machine (batch 1 and 8, the
files taking turns round by round) and records each one's milliseconds here, with the machine
it ran on. `--target cuda` on a machine without a GPU records the kind chosen by the documented
rule instead, marked not raced. The runtime runs the recorded fastest verified artefact for the
provider in use when no variant is asked for (`runtime.artefacts.Artefacts.choose`).

    "selection": {
      "target": "cpu", "raced": true, "note": "...", "batch_sizes": [1, 8], "rounds": 3,
      "machine": {"cpu": "AMD EPYC", "isa": ["avx2"], "cores": 2},
      "towers": {"vision": {"results": [{"file", "variant", "runtime", "provider", "ms": {"1": .., "8": ..},
                                         "score_ms"}, ...],          # fastest first
                            "fastest": {... "runner_up": {...}},
                            "winners": {"onnxruntime-cpu": {... "runner_up": {...}}, "openvino-cpu": {...}}}}
    }

A result's score is the geometric mean of its milliseconds over the batch sizes (each batch size's
ratio counts alike). `fastest` and `winners` are derived from `results` and written for readers;
on reading they are recomputed. numpy-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArtefactError

# The runtimes a race covers, by the hardware they run on (keys of runtime.contract.kinds.runtime_of).
CPU_RUNTIMES = ("onnxruntime-cpu", "openvino-cpu")
GPU_RUNTIMES = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def _field(record: dict, key: str, types, where: str, optional: bool = False):
    if record.get(key) is None:
        if optional:
            return None
        raise ArtefactError(f"{where} has no {key!r}")
    value = record[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                              else (types,)):
        raise ArtefactError(f"{where}: {key!r} is {type(value).__name__}")
    return value


@dataclass
class RaceEntry:
    """One file run one way: its record (file, variant), the runtime it ran in and the provider
    that gives that runtime (`runtime.contract.kinds.runtime_of`), and its p50 milliseconds per
    call at each batch size (empty when chosen by rule, not raced)."""

    file: str
    variant: str | None
    runtime: str
    provider: str
    ms: dict[int, float] = field(default_factory=dict)

    @property
    def score_ms(self) -> float | None:
        """Geometric mean of the milliseconds over the batch sizes; None when not raced."""
        if not self.ms:
            return None
        return math.exp(sum(math.log(v) for v in self.ms.values()) / len(self.ms))

    @property
    def label(self) -> str:
        """"vision_model.ov-int8.xml in openvino-cpu": for messages."""
        return f"{self.file} in {self.runtime}"

    def timing(self) -> str:
        """"40.1 / 230.2 ms at batch 1 / 8", or "not raced"."""
        if not self.ms:
            return "not raced"
        sizes = sorted(self.ms)
        return (f"{' / '.join(f'{self.ms[b]:.1f}' for b in sizes)} ms at batch "
                f"{' / '.join(str(b) for b in sizes)}")

    @classmethod
    def from_dict(cls, d: dict, where: str) -> RaceEntry:
        ms = _field(d, "ms", dict, where, optional=True) or {}
        try:
            timings = {int(k): float(v) for k, v in ms.items()}
        except (TypeError, ValueError):
            raise ArtefactError(f"{where}: 'ms' must map batch sizes to milliseconds, got {ms!r}") from None
        return cls(_field(d, "file", str, where), _field(d, "variant", str, where, optional=True),
                   _field(d, "runtime", str, where), _field(d, "provider", str, where), timings)

    def to_dict(self) -> dict:
        score = self.score_ms
        return {"file": self.file, "variant": self.variant, "runtime": self.runtime, "provider": self.provider,
                "ms": {str(b): round(v, 2) for b, v in sorted(self.ms.items())},
                "score_ms": None if score is None else round(score, 2)}


def ranked(entries: list[RaceEntry]) -> list[RaceEntry]:
    """Fastest first; entries not raced keep their order, after the raced ones."""
    raced = sorted((e for e in entries if e.score_ms is not None), key=lambda e: e.score_ms)
    return raced + [e for e in entries if e.score_ms is None]


@dataclass
class Selection:
    """What `--target` chose: every candidate per tower (fastest first), and where it was measured."""

    target: str
    raced: bool
    note: str
    towers: dict[str, list[RaceEntry]]
    machine: dict[str, Any] | None = None  # runtime.runners.environment.cpu_identity() of the racing machine
    batch_sizes: list[int] = field(default_factory=list)
    rounds: int = 0

    def results(self, tower: str) -> list[RaceEntry]:
        return ranked(self.towers.get(tower, []))

    def winners(self, tower: str) -> dict[str, RaceEntry]:
        """The fastest entry of each runtime, by runtime."""
        out: dict[str, RaceEntry] = {}
        for entry in self.results(tower):
            out.setdefault(entry.runtime, entry)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "selection") -> Selection:
        if not isinstance(d, dict):
            raise ArtefactError(f"{where} is not a JSON object")
        towers = {}
        for tower, block in (_field(d, "towers", dict, where) or {}).items():
            rows = _field(block, "results", list, f"{where} {tower}") if isinstance(block, dict) else None
            if rows is None:
                raise ArtefactError(f"{where} {tower} is not a JSON object with 'results'")
            towers[tower] = [RaceEntry.from_dict(r, f"{where} {tower} result {i}") for i, r in enumerate(rows)]
        return cls(target=_field(d, "target", str, where), raced=_field(d, "raced", bool, where),
                   note=_field(d, "note", str, where, optional=True) or "", towers=towers,
                   machine=_field(d, "machine", dict, where, optional=True),
                   batch_sizes=list(_field(d, "batch_sizes", list, where, optional=True) or []),
                   rounds=_field(d, "rounds", int, where, optional=True) or 0)

    def to_dict(self) -> dict:
        towers = {}
        for tower in self.towers:
            results = self.results(tower)

            def with_runner_up(entries: list[RaceEntry]) -> dict | None:
                if not entries:
                    return None
                return {**entries[0].to_dict(), "runner_up": entries[1].to_dict() if len(entries) > 1 else None}

            winners = {runtime: with_runner_up([e for e in results if e.runtime == runtime])
                       for runtime in self.winners(tower)}
            towers[tower] = {"results": [e.to_dict() for e in results], "fastest": with_runner_up(results),
                             "winners": winners}
        return {"target": self.target, "raced": self.raced, "note": self.note, "batch_sizes": list(self.batch_sizes),
                "rounds": self.rounds, "machine": self.machine, "towers": towers}


def same_machine(recorded: dict[str, Any] | None, here: dict[str, Any]) -> bool:
    """Whether `here` (cpu_identity()) is the CPU model and instruction sets a race ran on."""
    return recorded is not None and recorded.get("cpu") == here.get("cpu") \
        and sorted(recorded.get("isa") or []) == sorted(here.get("isa") or [])


__all__ = ["CPU_RUNTIMES", "GPU_RUNTIMES", "RaceEntry", "Selection", "ranked", "same_machine"]
