"""The variant builders' registry: `@builder("name")` registers the function that writes a kind's
file (`runtime.contract.kinds` holds the kind itself), and `VariantBuilder` builds one tower's
variants on demand, each file once, with what they share (the calibration inputs, the search's
inputs, the graph rewritten for OpenVINO).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from runtime.contract.kinds import KINDS, ONNX, ArtefactKind, open_runner
from runtime.contract.manifest import ArtefactRecord
from runtime.contract.parity import min_row_cosine
from runtime.errors import UserError
from runtime.inputs.images import ImageSettings, normalise, preprocess

from ..graph.openvino_rewrite import for_openvino
from ..graph.torch_export import TowerSpec, ensure_batch_axis, save_model, set_metadata
from ..options import ExportOptions
from ..progress import Progress
from ..quantize.int8_search import Build, accuracy_aware, quick
from ..verify.gate import reference_provider
from ..verify.samples import PHOTO_SUFFIXES, PHOTOS_DIR, tower_inputs, uint8_inputs


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
# With --target (ExportOptions.quick_search) the search scores on this many of them: a base-size
# row costs ~0.3 s on 2 AVX2 cores, and the gate afterwards judges the file on its own inputs.
QUICK_SEARCH_ROWS = 16
QUICK_PROBE_ROWS = 1  # and its sensitivity pass probes one row of each (79 nodes on the split base model)
PROBE_ROWS = 2  # of the calibration inputs and of the random ones, for the per-node sensitivity (a base-size
# forward is ~0.3 s a row on 2 AVX2 cores, and the pass runs one per candidate node)
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
        if self.options.quick_search:  # --target: fewer search rows, one search (int8_search.quick)
            batches[1:] = [x[:QUICK_SEARCH_ROWS] for x in batches[1:]]
        rows = QUICK_PROBE_ROWS if self.options.quick_search else PROBE_ROWS
        probes = [batches[0][:rows], batches[1][:rows]]  # the sensitivity pass runs once per node
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

        gate = self.options.gate_for(kind.variant).min_cosine
        checks = list(zip(batches, references))  # the simulation scores where the builds are scored
        if self.options.quick_search:
            report, search = quick(source, path, build, score, calibration, probes, gate, op_types, note, checks)
        else:
            report, search = accuracy_aware(source, path, build, score, calibration, probes, gate, op_types, latency,
                                            note, checks)
        data_files = self.restamp(path, kind.variant) if kind.format == ONNX else []
        return Built(path, {**report, "search": search.record()}, data_files)


def calibration_batches(directory: Path | None, settings: ImageSettings) -> list[np.ndarray]:
    """Images for static int8 calibration: `directory`, else the packaged photos, one per batch."""
    directory = Path(directory) if directory else PHOTOS_DIR  # checked up front (ExportOptions.check)
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise UserError(f"--calibration-images {directory} holds no .jpg / .jpeg / .png images")
    return [preprocess([p], settings) for p in paths]


