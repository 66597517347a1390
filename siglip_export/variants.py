"""Build, verify and gate the faster variants of one tower.

Every variant is an artefact kind in `runtime.contract` (its file name, format, precision,
gate, runner) plus a builder here, registered with `@builder("name")`: a function that writes
the kind's file into the scratch directory and returns a `Built`. Verification and gating are
the same for every kind: the file is loaded with the runner its kind names (the code path
users deploy) and compared with the eager model on the photos and random inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx

from runtime.contract import KINDS, ONNX, ArtefactKind, open_runner
from runtime.errors import UserError
from runtime.manifest import ArtefactRecord, Unpublished
from runtime.parity import min_row_cosine
from runtime.preprocess import ImageSettings, normalise, normalise_table, preprocess
from runtime.tensorrt_engine import metadata_path

from .int8_search import DYNAMIC_OPS, OPENVINO_OPS, STATIC_OPS, Build, accuracy_aware
from .onnx_export import TowerSpec, ensure_batch_axis, io_signature, save_model, set_metadata
from .openvino_graph import for_openvino
from .optimize import (
    VariantFailed,
    VariantSkipped,
    build_cuda_fp16,
    build_fp16,
    build_int8,
    build_int8_qdq,
    build_openvino,
    build_openvino_int8,
    build_opt,
    op_counts,
    openvino_int8_available,
    with_uint8_input,
)
from .progress import Progress
from .records import file_record
from .runtime_gates import measure, measure_elsewhere, reference_provider
from .tensorrt_build import build_engine, tensorrt_available
from .verify import PHOTO_SUFFIXES, PHOTOS_DIR, tower_inputs, uint8_inputs

if TYPE_CHECKING:
    from .options import ExportOptions


@dataclass
class Built:
    """What a builder wrote: the model file, its build report (the manifest's `build`), the files
    beside it that belong to it (external data, OpenVINO weights, engine metadata), and files
    published beside the manifest that several artefacts may share (a TensorRT timing cache)."""

    path: Path
    info: dict
    data_files: list[str] = field(default_factory=list)
    shared_files: list[str] = field(default_factory=list)


@dataclass
class TowerExport:
    """One tower as the pipeline exported it: what every builder and the verification need."""

    name: str  # "vision" | "text"
    module: object  # the eager tower (torch.nn.Module)
    spec: TowerSpec
    plain: Path  # the verified plain export
    raw: Path  # the unsimplified export (ORT's fusions need it)
    metadata: dict[str, str]  # stamped into every ONNX file's metadata_props
    image_settings: ImageSettings
    inputs: list[tuple[str, np.ndarray]]  # the verification inputs
    reference: Callable[[np.ndarray], dict[str, np.ndarray]]  # the eager model's outputs for an input
    plain_record: ArtefactRecord | None = None
    seed: int = 0  # --seed: the random inputs' (uint8 ones from seed + 2, int8 search's seed + 1, calibration's seed + 3)

    @property
    def scratch(self) -> Path:
        return self.plain.parent

    def gate_inputs(self, kind: ArtefactKind) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]],
                                                     list[tuple[str, np.ndarray]]]:
        """(reference, inputs) for verifying a file of `kind`: the tower's own, or for a kind
        that takes uint8 images, uint8 inputs and the eager model on their normalised values."""
        if kind.image_input == "float32":
            return self.reference, self.inputs
        settings = self.image_settings
        return (lambda x: self.reference(normalise(x, settings))), uint8_inputs(self.inputs, settings, self.seed + 2)


# Random inputs the int8 search scores on besides the calibration inputs: the gate takes the worst
# row, and a static int8 file's worst row on noise varies with the sample, so the search sees more.
SEARCH_ROWS = 64
PROBE_ROWS = 4  # of the calibration inputs and of the random ones, for the per-node sensitivity
RACE_ROWS = 8  # batch of the timed calls when two passing int8 files race (int8_search._race)
# Random inputs calibrated on besides the images (or token sequences): the gate judges random
# inputs too, and activation ranges calibrated on photos alone clip them. On the base-size
# `outliers` stress checkpoint, the ov-int8 search (all quantised, without -> with SmoothQuant,
# min cosine over its search inputs): photos alone 0.922 -> 0.933, SmoothQuant not used, 33 of 79
# nodes kept in float; with 2 random inputs 0.923 -> 0.967, used, 25 kept. In scratch runs on
# fewer inputs, 4 or 8 random ones did no better than 2 (each widens the ranges for the photos).
CALIBRATION_RANDOM = 2

Builder = Callable[["VariantBuilder", ArtefactKind, Path], Built]
BUILDERS: dict[str, Builder] = {}


def builder(variant: str) -> Callable[[Builder], Builder]:
    """Register the function that builds `variant`'s file (the kind must be in runtime.contract)."""

    def register(fn: Builder) -> Builder:
        BUILDERS[variant] = fn
        return fn

    return register


class VariantBuilder:
    """Builds the variants of one tower, each file once; a kind built from another
    (`builds_from`) builds that one on demand, published or not."""

    def __init__(self, tower: TowerExport, options: ExportOptions, progress: Progress | None = None):
        self.tower, self.options = tower, options
        self.progress = progress or Progress(None)
        self.built: dict[str, Built] = {}
        self._apart: list[tuple[str, np.ndarray]] | None = None

    def build(self, variant: str) -> Built:
        if variant not in self.built:
            kind = KINDS[variant]
            self.built[variant] = BUILDERS[variant](self, kind, self.tower.scratch / kind.file(self.tower.name))
        return self.built[variant]

    def save(self, model: onnx.ModelProto, path: Path, variant: str) -> list[str]:
        """Stamp the batch axis and metadata, save; returns the external data files."""
        ensure_batch_axis(model, self.tower.spec.input_name)
        set_metadata(model, {**self.tower.metadata, "siglip.variant": variant})
        return save_model(model, path, self.options.external_data_threshold)

    def restamp(self, path: Path, variant: str) -> list[str]:
        """Metadata and batch-axis name for a file another tool wrote (weights stay where they are)."""
        model = onnx.load(str(path), load_external_data=False)
        ensure_batch_axis(model, self.tower.spec.input_name)
        set_metadata(model, {**self.tower.metadata, "siglip.variant": variant})
        onnx.save_model(model, str(path))
        return [f for f in (f"{path.name}.data",) if (path.parent / f).is_file()]

    def _drawn_apart(self) -> list[tuple[str, np.ndarray]]:
        """Inputs like the verification's (realistic ones and random ones), from another seed;
        made once per tower, for every int8 kind's search."""
        if self._apart is None:
            self._apart = tower_inputs(self.tower.spec, self.tower.module.config, (SEARCH_ROWS,), self.options.seed + 1,
                                       self.tower.image_settings)
        return self._apart

    def openvino_source(self) -> tuple[Path, dict]:
        """The plain graph rewritten for OpenVINO's int8 (openvino_graph.py), written beside the
        plain file under a hidden name (pruned before publication), and what the rewrite changed."""
        path = self.tower.scratch / f".openvino.{self.tower.plain.name}"
        return path, for_openvino(self.tower.plain, path)

    def calibration(self) -> list[np.ndarray]:
        """Calibration inputs, one per call: images (--calibration-images, else the packaged photos),
        or for the text tower padded token sequences drawn apart from the verification inputs; then
        CALIBRATION_RANDOM random inputs drawn like the gate's, from a seed of their own."""
        if self.tower.name == "vision":
            real = calibration_batches(self.options.calibration_images, self.tower.image_settings)
        else:
            padded = next(x for kind, x in self._drawn_apart() if kind == "padded-text")
            real = [row[None] for row in padded[:8]]
        drawn = tower_inputs(self.tower.spec, self.tower.module.config, (CALIBRATION_RANDOM,), self.options.seed + 3,
                             self.tower.image_settings)
        noise = next(x for kind, x in drawn if kind == "random")
        return real + [row[None] for row in noise]

    @staticmethod
    def calibration_record(calibration: list[np.ndarray]) -> dict:
        """What a static int8 file was calibrated on, for its manifest entry."""
        return {"calibration_inputs": len(calibration) - CALIBRATION_RANDOM, "calibration_random": CALIBRATION_RANDOM}

    def accuracy_aware(self, kind: ArtefactKind, path: Path, source: Path, op_types: tuple[str, ...],
                       build: Build) -> Built:
        """int8 by int8_search: the fewest nodes in float at which the search inputs reach the gate
        with a margin (pooler_output cosine against fp32 eager). The search inputs are what the gate
        will judge, drawn apart from it: the calibration inputs and random ones."""
        calibration = self.calibration()
        # One call each: dynamic int8's ranges then cover a whole batch, the harder case.
        batches = [np.concatenate(calibration)] + [x for kind_, x in self._drawn_apart() if kind_ == "random"]
        probes = [batches[0][:PROBE_ROWS], batches[1][:PROBE_ROWS]]  # the sensitivity pass runs once per node
        references = [self.tower.reference(x)["pooler_output"] for x in batches]

        def score(candidate: Path) -> float:  # through the runner users deploy, where the gate runs
            model = open_runner(kind, candidate, provider=reference_provider(kind), threads=self.options.threads)
            return min(min_row_cosine(model.run(x)["pooler_output"], ref) for x, ref in zip(batches, references))

        def latency(candidate: Path) -> float:  # seconds per call at batch RACE_ROWS, best of two after a warm-up
            model = open_runner(kind, candidate, provider=reference_provider(kind), threads=self.options.threads)
            x = batches[-1][:RACE_ROWS]
            model.run(x)
            seconds = []
            for _ in range(2):
                started = time.perf_counter()
                model.run(x)
                seconds.append(time.perf_counter() - started)
            return min(seconds)

        def note(line: str) -> None:  # a search takes minutes on the base model: say where it is
            self.progress.info(f"{'':9}{path.name} search: {line}")

        report, search = accuracy_aware(source, path, build, score, calibration, probes,
                                        self.options.gate_for(kind.variant).min_cosine, op_types, latency, note)
        data_files = self.restamp(path, kind.variant) if kind.format == ONNX else []
        return Built(path, {**report, "search": search.record()}, data_files)


# --- builders: one per kind in runtime.contract.KINDS ----------------------------------------

@builder("opt")
def _opt(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    model, info = build_opt(b.tower.raw, b.tower.module.config, b.tower.name)
    return Built(path, info, b.save(model, path, kind.variant))


@builder("int8")
def _int8(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    return b.accuracy_aware(kind, path, b.build(kind.builds_from).path, DYNAMIC_OPS, build=build_int8)


@builder("int8-qdq")
def _int8_qdq(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    calibration = b.calibration()
    input_name = b.tower.spec.input_name

    def build(source: Path, out: Path, kept: list[str]) -> dict:
        cache = out.with_name(f".{source.name}.ranges.json")  # one calibration per source for every trial
        return build_int8_qdq(source, out, input_name, calibration, kept, cache)

    built = b.accuracy_aware(kind, path, b.tower.plain, STATIC_OPS, build)
    built.info.update(b.calibration_record(calibration))
    return built


@builder("fp16")
def _fp16(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    model, info = build_fp16(b.tower.plain)
    return Built(path, info, b.save(model, path, kind.variant))


@builder("cuda-fp16")
def _cuda_fp16(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    model, info = build_cuda_fp16(b.tower.raw, b.tower.module.config)
    return Built(path, info, b.save(model, path, kind.variant))


@builder("cuda-fp16-u8")
def _cuda_fp16_u8(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    source = b.build(kind.builds_from)
    model = with_uint8_input(onnx.load(str(source.path)), b.tower.spec.input_name,
                             normalise_table(b.tower.image_settings))
    info = {**source.info, "casts": op_counts(model)["Cast"],
            "image_input": "uint8 (N, 3, H, W), normalised in the graph by table lookup"}
    return Built(path, info, b.save(model, path, kind.variant))


@builder("ov-bf16")
def _ov_bf16(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    # From the plain graph as it is: the rewrite ov-int8 is built from (openvino_graph.py) measured
    # 7% faster in bf16 at batch 8 but 6% slower at batch 1 (three thin products for one packed).
    info = build_openvino(b.tower.plain, path)
    return Built(path, info, [path.with_suffix(".bin").name])


@builder("ov-int8")
def _ov_int8(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    openvino_int8_available()  # before a search that needs it
    calibration = b.calibration()

    def build(source: Path, out: Path, kept: list[str]) -> dict:
        return build_openvino_int8(source, out, calibration, kept)

    source, rewritten = b.openvino_source()
    built = b.accuracy_aware(kind, path, source, OPENVINO_OPS, build)
    built.info.update(b.calibration_record(calibration), graph_rewrites=rewritten)
    built.data_files = [path.with_suffix(".bin").name]
    return built


@builder("trt-fp16")
def _trt_fp16(b: VariantBuilder, kind: ArtefactKind, path: Path) -> Built:
    reason = tensorrt_available()
    if reason:  # before the fp16 graph it would be built from
        raise VariantSkipped(reason)
    source = b.build(kind.builds_from).path
    cache = kind.shared_files[0]  # the timing cache: later builds (the other tower, a rebuild) start from it
    info = build_engine(source, path, b.options.trt_profile, b.tower.scratch / cache, b.tower.spec.input_name)
    return Built(path, info, [metadata_path(path).name], shared_files=[cache])


def calibration_batches(directory: Path | None, settings: ImageSettings) -> list[np.ndarray]:
    """Images for static int8 calibration: `directory`, else the packaged photos, one per batch."""
    directory = Path(directory) if directory else PHOTOS_DIR  # checked up front (ExportOptions.check)
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise UserError(f"--calibration-images {directory} holds no .jpg / .jpeg / .png images")
    return [preprocess([p], settings) for p in paths]


# --- build, verify, gate ---------------------------------------------------------------------

@dataclass
class VariantResults:
    published: list[ArtefactRecord] = field(default_factory=list)
    rejected: list[Unpublished] = field(default_factory=list)
    skipped: list[Unpublished] = field(default_factory=list)
    shared_files: list[str] = field(default_factory=list)


def build_variants(tower: TowerExport, options: ExportOptions, progress: Progress) -> VariantResults:
    """Build, verify and gate each requested variant of one tower. A rejected variant's files stay
    in the scratch directory, unlisted, and are pruned before publication."""
    out = VariantResults()
    variants = VariantBuilder(tower, options, progress)
    for variant in options.variants:
        kind = KINDS[variant]
        base = dict(file=kind.file(tower.name), tower=tower.name, variant=variant, precision=kind.precision)
        if not kind.applies_to(tower.name):
            out.skipped.append(Unpublished(**base, reason=f"{variant} is made for {kind.made_for} only"))
            continue
        built = _build(variants, kind, base, out, progress)
        if built is not None:
            _verify(tower, kind, built, base, options, out, progress)
    return out


def _build(variants: VariantBuilder, kind: ArtefactKind, base: dict, out: VariantResults,
           progress: Progress) -> Built | None:
    with progress.step(f"build {base['file']}") as step:
        try:
            return variants.build(kind.variant)
        except VariantSkipped as exc:
            out.skipped.append(Unpublished(**base, reason=str(exc)))
            step["note"] = f"skipped: {exc}"
        except (VariantFailed, UserError) as exc:
            out.rejected.append(Unpublished(**base, reason=str(exc)))
            step["note"] = f"REJECTED: {exc}"
        except Exception as exc:  # a variant's failure must not cost the fp32 files that passed
            out.rejected.append(Unpublished(**base, reason=f"build failed: {type(exc).__name__}: {exc}"))
            step["note"] = f"REJECTED: build failed: {type(exc).__name__}"
    return None


def _verify(tower: TowerExport, kind: ArtefactKind, built: Built, base: dict, options: ExportOptions,
            out: VariantResults, progress: Progress) -> None:
    """The gate in the kind's reference runtime decides publication; the others are recorded."""
    gate = options.gate_for(kind.variant)
    reference, samples = tower.gate_inputs(kind)
    with progress.step(f"verify {base['file']}") as step:
        try:
            parity = measure(kind, built.path, reference_provider(kind), reference, samples, gate, options.threads)
        except Exception as exc:
            out.rejected.append(Unpublished(**base, reason=f"verification failed: {type(exc).__name__}: {exc}"))
            step["note"] = f"REJECTED: verification failed: {type(exc).__name__}"
            return
        numbers = parity.worst()
        step["note"] = (f"min cosine {numbers['pooler_output_min_cosine']:.6f} (gate {gate.min_cosine})"
                        + ("" if parity.passed else "  REJECTED"))
    if not parity.passed:
        out.rejected.append(Unpublished(**base, reason="missed its gate", accuracy=numbers, parity=parity))
        return
    others = measure_elsewhere(kind, built.path, reference, samples, gate, options.threads, progress, parity.runtime)
    if kind.format == ONNX:
        inputs, outputs = io_signature(onnx.load(str(built.path), load_external_data=False))
    else:  # an IR or engine built from the plain graph takes and gives what it does (the contract)
        inputs, outputs = tower.plain_record.inputs, tower.plain_record.outputs
    out.published.append(ArtefactRecord(
        **file_record(built.path, built.data_files), tower=tower.name, variant=kind.variant, format=kind.format,
        precision=kind.precision, opset=options.opset, inputs=inputs, outputs=outputs, parity=parity,
        accuracy=numbers, build=built.info, runtimes=others,
    ))
    out.shared_files += [f for f in built.shared_files if f not in out.shared_files]
