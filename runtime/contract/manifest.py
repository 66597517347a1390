"""`manifest.json` as typed records: read from JSON once, at the edge, and passed inward as objects.

A `Manifest` says where an export came from (`source`, `model`), what it published
(`ArtefactRecord`: file, tower, variant, format, precision, hashes, IO signature, `Parity`),
and what it did not (`Unpublished`: rejected by a gate, or skipped). What a kind of file *is*
(its name, runner, providers, gate) is not recorded here but looked up in `runtime.contract`.

`SCHEMA_VERSION` says which layout a file has. A manifest written by siglip-export 0.1.0 (no
`schema_version`, `format` "siglip-export/1") still loads: every kind it knew has one fixed
format. Anything else this version cannot read is refused in one line naming its version and
the fix (upgrade, or re-export).

Longer than the project's ~350-line aim on purpose: one dataclass per record, each with its
explicit reader (naming the bad field) and writer, so the whole layout reads in one file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ArtefactError
from .kinds import FORMATS, KINDS, OUTPUTS, TOWERS, ArtefactKind, variant_names
from .selection import Selection

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "siglip-export/1"  # the `format` field; unchanged since 0.1.0 (schema_version says more)
# 1: siglip-export 0.1.0 (implicit); 2: + schema_version, per-record `format`; 3: + each parity's
# `runtime` and each record's `runtimes` (the gate measured in other runtimes); 4: + `selection`
# (what `--target` raced or chose, runtime.contract.selection).
SCHEMA_VERSION = 4


def _runtime_from_provider(provider: str) -> str:
    """The runtime a parity record written before schema 3 was measured in, from its provider."""
    from ..runners.environment import ORT_PROVIDERS as _NAMED  # runtime's provider names -> ONNX Runtime's

    known = {ort_name: f"onnxruntime-{name}" for name, ort_name in _NAMED.items()}
    if provider in known:
        return known[provider]
    return "openvino-cpu" if provider.startswith("OpenVINO") else "tensorrt" if provider.startswith("TensorRT") \
        else provider


def _field(record: dict, key: str, types, where: str, optional: bool = False):
    """record[key] checked against `types`; a missing or wrong field is an ArtefactError naming it."""
    if key not in record or record[key] is None:
        if optional:
            return None
        raise ArtefactError(f"{where} has no {key!r}")
    value = record[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ArtefactError(f"{where}: {key!r} is {type(value).__name__}, expected "
                            f"{' or '.join(t.__name__ for t in _as_tuple(types))}")
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


@dataclass
class TensorInfo:
    """One input or output: name, numpy dtype name, shape (the batch axis is the string `batch`)."""

    name: str
    dtype: str
    shape: list[int | str]

    @classmethod
    def from_dict(cls, d: dict, where: str) -> TensorInfo:
        return cls(_field(d, "name", str, where), _field(d, "dtype", str, where), list(_field(d, "shape", list, where)))

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class FileDigest:
    file: str
    sha256: str | None = None  # None: a side file whose content another tool owns (recorded by name)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> FileDigest:
        return cls(_field(d, "file", str, where), _field(d, "sha256", str, where, optional=True))

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256}


@dataclass
class OutputMetrics:
    rel_err: float  # max |artefact - eager| / max |eager|
    min_cosine: float  # worst row cosine along the last axis

    @classmethod
    def from_dict(cls, d: dict, where: str) -> OutputMetrics:
        return cls(float(_field(d, "rel_err", (int, float), where)), float(_field(d, "min_cosine", (int, float), where)))

    def to_dict(self) -> dict:
        return {"rel_err": self.rel_err, "min_cosine": self.min_cosine}


@dataclass
class ParityRow:
    """One input set at one batch size: metrics per output, and whether the gate held."""

    inputs: str  # "photos", "random", "padded-text"
    batch_size: int
    outputs: dict[str, OutputMetrics]
    passed: bool

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ParityRow:
        outputs = {k: OutputMetrics.from_dict(v, f"{where} {k}") for k, v in d.items() if isinstance(v, dict)}
        return cls(_field(d, "inputs", str, where), _field(d, "batch_size", int, where), outputs,
                   _field(d, "passed", bool, where))

    def to_dict(self) -> dict:  # outputs sit beside the other keys, as 0.1.0 wrote them
        return {"inputs": self.inputs, "batch_size": self.batch_size,
                **{k: m.to_dict() for k, m in self.outputs.items()}, "passed": self.passed}


@dataclass
class GateRecord:
    """The gate an artefact was held to (see siglip_export.verify.Gate)."""

    min_cosine: float
    max_rel_err: float | None = None
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))

    @classmethod
    def from_dict(cls, d: dict, where: str) -> GateRecord:
        rel = _field(d, "max_rel_err", (int, float), where, optional=True)
        return cls(float(_field(d, "min_cosine", (int, float), where)), None if rel is None else float(rel),
                   list(_field(d, "outputs", list, where)))

    def to_dict(self) -> dict:
        return {"max_rel_err": self.max_rel_err, "min_cosine": self.min_cosine, "outputs": list(self.outputs)}


@dataclass
class Parity:
    """How an artefact compared with the eager model in one runtime: every row, the gate, the
    provider that ran it, and which runtime that is (`contract.runtime_of`)."""

    gate: GateRecord
    passed: bool
    provider: str
    results: list[ParityRow]
    runtime: str = ""

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Parity:
        rows = _field(d, "results", list, where)
        provider = _field(d, "provider", str, where)
        return cls(GateRecord.from_dict(_field(d, "gate", dict, where), f"{where} gate"),
                   _field(d, "passed", bool, where), provider,
                   [ParityRow.from_dict(r, f"{where} row {i}") for i, r in enumerate(rows)],
                   _field(d, "runtime", str, where, optional=True) or _runtime_from_provider(provider))

    def to_dict(self) -> dict:
        return {"gate": self.gate.to_dict(), "passed": self.passed, "provider": self.provider,
                "runtime": self.runtime, "results": [r.to_dict() for r in self.results]}

    def worst(self) -> dict[str, float]:
        """`<output>_min_cosine` (lowest) and `<output>_rel_err` (highest) over every row."""
        out = {}
        names = [n for n in OUTPUTS if all(n in r.outputs for r in self.results)]
        for name in names:
            out[f"{name}_min_cosine"] = min(r.outputs[name].min_cosine for r in self.results)
            out[f"{name}_rel_err"] = max(r.outputs[name].rel_err for r in self.results)
        return out

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({r.batch_size for r in self.results})


@dataclass
class ArtefactRecord:
    """A published model file: what it is (tower, variant, format, precision), how to check it
    (sha256, size, external data), what it takes and gives, and how closely it matches eager."""

    file: str
    tower: str
    variant: str | None
    format: str
    precision: str
    sha256: str
    size_bytes: int
    external_data: list[FileDigest]
    opset: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parity: Parity  # in the runtime the export gates it in (ONNX Runtime's CPU provider for ONNX files)
    simplified: bool | None = None  # the plain export: whether onnxsim ran
    accuracy: dict[str, float] | None = None  # variants: parity.worst(), for quick reading
    build: dict[str, Any] | None = None  # variants: what the builder reports (fused ops, profile, ...)
    runtimes: dict[str, Parity] = field(default_factory=dict)  # the same gate in the other runtimes measured

    def gate_in(self, runtime: str) -> Parity | None:
        """The gate's result in `runtime` (contract.runtime_of), None where it was never measured."""
        return self.parity if self.parity.runtime == runtime else self.runtimes.get(runtime)

    @property
    def kind(self) -> ArtefactKind:
        if self.variant not in KINDS:
            raise ArtefactError(f"{self.file} is a {self.variant!r} artefact, a kind this siglip-export does not "
                                f"know (it knows: {', '.join(variant_names())}): upgrade siglip-export")
        return KINDS[self.variant]

    @property
    def files(self) -> list[str]:
        """The model file and every file it needs beside it."""
        return [self.file, *(d.file for d in self.external_data)]

    def output(self, name: str) -> TensorInfo | None:
        return next((o for o in self.outputs if o.name == name), None)

    @classmethod
    def from_dict(cls, d: dict, where: str, schema: int) -> ArtefactRecord:
        variant = _field(d, "variant", str, where, optional=True)
        tower = _field(d, "tower", str, where)
        if tower not in TOWERS:
            raise ArtefactError(f"{where}: unknown tower {tower!r}")
        if schema == 1:  # 0.1.0 wrote no format: every kind it knew has one fixed format
            if variant not in KINDS:
                raise ArtefactError(f"{where}: unknown variant {variant!r}")
            fmt = KINDS[variant].format
        else:
            fmt = _field(d, "format", str, where)
            if fmt not in FORMATS:
                raise ArtefactError(f"{where}: unknown format {fmt!r}")
        return cls(
            file=_field(d, "file", str, where), tower=tower, variant=variant, format=fmt,
            precision=_field(d, "precision", str, where), sha256=_field(d, "sha256", str, where),
            size_bytes=_field(d, "size_bytes", int, where),
            external_data=[FileDigest.from_dict(x, f"{where} external_data")
                           for x in _field(d, "external_data", list, where)],
            opset=_field(d, "opset", int, where),
            inputs=[TensorInfo.from_dict(x, f"{where} input") for x in _field(d, "inputs", list, where)],
            outputs=[TensorInfo.from_dict(x, f"{where} output") for x in _field(d, "outputs", list, where)],
            parity=Parity.from_dict(_field(d, "parity", dict, where), f"{where} parity"),
            simplified=_field(d, "simplified", bool, where, optional=True),
            accuracy=_field(d, "accuracy", dict, where, optional=True),
            build=_field(d, "build", dict, where, optional=True),
            runtimes={k: Parity.from_dict(v, f"{where} runtimes {k}")
                      for k, v in (_field(d, "runtimes", dict, where, optional=True) or {}).items()},
        )

    def to_dict(self) -> dict:
        out = {"file": self.file, "tower": self.tower, "variant": self.variant, "format": self.format,
               "precision": self.precision, "sha256": self.sha256, "size_bytes": self.size_bytes,
               "external_data": [x.to_dict() for x in self.external_data], "opset": self.opset}
        if self.simplified is not None:
            out["simplified"] = self.simplified
        out["inputs"] = [t.to_dict() for t in self.inputs]
        out["outputs"] = [t.to_dict() for t in self.outputs]
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.build is not None:
            out["build"] = self.build
        out["parity"] = self.parity.to_dict()
        if self.runtimes:
            out["runtimes"] = {k: v.to_dict() for k, v in self.runtimes.items()}
        return out


@dataclass
class Unpublished:
    """A variant that was asked for but not published: rejected by its gate (or its build
    failed), or skipped because this machine cannot build it. `reason` says which."""

    file: str
    tower: str
    variant: str | None
    precision: str
    reason: str
    accuracy: dict[str, float] | None = None  # a gate miss: the numbers it reached
    parity: Parity | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Unpublished:
        parity = _field(d, "parity", dict, where, optional=True)
        return cls(_field(d, "file", str, where), _field(d, "tower", str, where),
                   _field(d, "variant", str, where, optional=True), _field(d, "precision", str, where),
                   _field(d, "reason", str, where), _field(d, "accuracy", dict, where, optional=True),
                   None if parity is None else Parity.from_dict(parity, f"{where} parity"))

    def to_dict(self) -> dict:
        out = {"file": self.file, "tower": self.tower, "variant": self.variant, "precision": self.precision,
               "reason": self.reason}
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.parity is not None:
            out["parity"] = self.parity.to_dict()
        return out


@dataclass
class ModelRecord:
    """The model the artefacts compute: its HF config, the logit parameters, the preprocessing."""

    config: dict[str, Any]
    preprocessing: dict[str, Any]
    logit_scale: float | None = None  # None for a vision-only model
    logit_bias: float | None = None

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.config.get("vision_config", self.config)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ModelRecord:
        scale = _field(d, "logit_scale", (int, float), where, optional=True)
        bias = _field(d, "logit_bias", (int, float), where, optional=True)
        return cls(_field(d, "config", dict, where), _field(d, "preprocessing", dict, where),
                   None if scale is None else float(scale), None if bias is None else float(bias))

    def to_dict(self) -> dict:
        return {"config": self.config, "logit_scale": self.logit_scale, "logit_bias": self.logit_bias,
                "preprocessing": self.preprocessing}


@dataclass
class Manifest:
    """`manifest.json`: where the artefacts came from, and a record per published file."""

    source: dict[str, Any]  # {"type": "checkpoint", "path", "weights"} or {"type": "preset", "preset", "seed"}
    model: ModelRecord
    artefacts: list[ArtefactRecord]
    rejected: list[Unpublished] = field(default_factory=list)
    skipped: list[Unpublished] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # published beside the models (config.json, tokenizer, ...)
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    selection: Selection | None = None  # `--target`'s race (or rule); None: exported without one
    schema_version: int = SCHEMA_VERSION
    format: str = MANIFEST_FORMAT

    # lookups -------------------------------------------------------------------------------

    @property
    def towers(self) -> list[str]:
        return [t for t in TOWERS if any(a.tower == t for a in self.artefacts)]

    def records(self, tower: str | None = None, *, format: str | None = None) -> list[ArtefactRecord]:
        return [a for a in self.artefacts
                if (tower is None or a.tower == tower) and (format is None or a.format == format)]

    def find(self, tower: str, variant: str | None = None, *, format: str | None = None) -> ArtefactRecord | None:
        """The tower's record of `variant` (None: the plain export); failing that, of the kind
        that takes `variant` as an alias (`fp16` finds the `trt-fp16` engine when there is no
        fp16 ONNX file)."""
        records = self.records(tower, format=format)
        exact = next((a for a in records if a.variant == variant), None)
        if exact is not None or variant is None:
            return exact
        return next((a for a in records if a.variant in KINDS and variant in KINDS[a.variant].aliases), None)

    def owned_files(self) -> set[str]:
        """Every file name the export published (what a later export may replace)."""
        names = set(self.files) | {MANIFEST}
        for art in self.artefacts:
            names.update(art.files)
        return names

    # JSON ----------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST) -> Manifest:
        """Read a manifest dict; ArtefactError (one line, naming `source` and the bad field) otherwise."""
        if not isinstance(d, dict):
            raise ArtefactError(f"{source} is not a valid manifest: not a JSON object")
        schema = _schema_version(d, source)
        where = "manifest"
        try:
            return cls(
                source=_field(d, "source", dict, where),
                model=ModelRecord.from_dict(_field(d, "model", dict, where), "model"),
                artefacts=_records(d, "artefacts", lambda a, w: ArtefactRecord.from_dict(a, w, schema)),
                rejected=_records(d, "rejected", Unpublished.from_dict, optional=True),
                skipped=_records(d, "skipped", Unpublished.from_dict, optional=True),
                files=list(_field(d, "files", list, where, optional=True) or []),
                tools=dict(_field(d, "tools", dict, where, optional=True) or {}),
                created=_field(d, "created", str, where, optional=True) or "",
                selection=(Selection.from_dict(d["selection"]) if d.get("selection") is not None else None),
                schema_version=SCHEMA_VERSION,  # read once, held in the current layout
            )
        except ArtefactError as exc:
            raise ArtefactError(f"{source} is not a valid manifest: {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:  # a malformed value deeper down
            raise ArtefactError(f"{source} is not a valid manifest: {type(exc).__name__}: {exc}") from None

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "format": self.format,
            "created": self.created,
            "source": self.source,
            "model": self.model.to_dict(),
            "artefacts": [a.to_dict() for a in self.artefacts],
            "rejected": [r.to_dict() for r in self.rejected],
            "skipped": [s.to_dict() for s in self.skipped],
            "files": list(self.files),
            "tools": dict(self.tools),
            **({"selection": self.selection.to_dict()} if self.selection is not None else {}),
        }

    @classmethod
    def read(cls, directory: str | os.PathLike) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ArtefactError(f"{Path(directory)} has no {MANIFEST}: not an artefact directory written by export.py")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ArtefactError(f"{path} is not a valid manifest: {exc}") from None
        return cls.from_dict(data, str(path))

    def write(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def _records(d: dict, key: str, read: Callable[[dict, str], Any], optional: bool = False) -> list:
    """Each JSON object of the list d[key], read by `read(object, where)`."""
    out = []
    for i, item in enumerate(_field(d, key, list, "manifest", optional=optional) or []):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ArtefactError(f"{where} is not a JSON object")
        out.append(read(item, where))
    return out


def _schema_version(d: dict, where: str) -> int:
    """The layout of a manifest dict: 1 for what 0.1.0 wrote, else its `schema_version`."""
    written_by = d.get("tools", {}).get("siglip-export", "an unknown version") if isinstance(d.get("tools"), dict) \
        else "an unknown version"
    version = d.get("schema_version")
    if version is None:
        if d.get("format") == MANIFEST_FORMAT:
            return 1
        raise ArtefactError(f"{where} was written by siglip-export {written_by} (format {d.get('format')!r}), "
                            f"which this version cannot read: re-export with this siglip-export")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtefactError(f"{where} has schema_version {version!r}, which is not a manifest version: re-export")
    if version > SCHEMA_VERSION:
        raise ArtefactError(f"{where} has schema_version {version} (written by siglip-export {written_by}); this "
                            f"siglip-export reads up to {SCHEMA_VERSION}: upgrade siglip-export, or re-export")
    return version


__all__ = ["ArtefactRecord", "FileDigest", "GateRecord", "MANIFEST", "MANIFEST_FORMAT", "Manifest", "ModelRecord",
           "OutputMetrics", "Parity", "ParityRow", "SCHEMA_VERSION", "TensorInfo", "Unpublished"]
