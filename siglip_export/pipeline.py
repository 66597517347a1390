"""The export pipeline: model -> ONNX -> checked -> simplified -> verified -> published.

Everything is built in a hidden temporary directory beside the target and renamed into
place only after every gate passed, so a run killed at any moment never leaves a partial
file under the final names, and a failed run leaves an earlier good export untouched.

The steps are here, in order; what they use lives beside it: `options` (what was asked),
`progress` (the console lines), `model` (the reference model and checkpoints), `graph` (torch
-> ONNX), `verify` (the gates), `variants` (the faster variants), `records` (the manifest's
records), `publication` (the atomic swap), `runtime.contract` (file names and the manifest's
layout).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from runtime.contract.kinds import KINDS, OUTPUTS, TOWERS, ArtefactKind
from runtime.contract.layer_outputs import FEATURES
from runtime.contract.manifest import MANIFEST, ArtefactRecord, Manifest, ModelRecord
from runtime.errors import ArtefactError, UserError
from runtime.files import sha256_file
from runtime.inputs.images import PREPROCESSOR_CONFIG, ImageSettings

from . import __version__
from .graph.build_errors import ExportError
from .graph.torch_export import (
    batch_axis_is_symbolic,
    export_tower,
    io_signature,
    save_model,
    set_metadata,
    simplify_portable,
    tower_spec,
)
from .model.checkpoint import load_pretrained, weight_files
from .model.config import DEFAULT_PRESET, preset, save_config
from .model.feature_tower import FeatureRequest, VisionFeatures, eager_feature_outputs, resize_position_embeddings
from .model.modeling_siglip import SiglipModel, SiglipVisionModel, build_model
from .options import ExportOptions
from .progress import Progress
from .publication import Staging, is_within
from .records import artefact_record, tool_versions
from .variants import TowerExport, build_variants, check_buildable
from .variants.race import select
from .variants.targets import resolve as resolve_target_name
from .verify.gate import (
    Gate,
    VerificationError,
    describe_failures,
    eager_outputs,
    measure,
    measure_elsewhere,
    reference_provider,
)
from .verify.samples import tower_inputs

# Files a runtime needs beside the models, copied from a checkpoint when present.
TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "added_tokens.json")
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: exported from preset {preset!r} with seed {seed}, not a trained model. "
    "Pass --checkpoint DIR (a Hugging Face SigLIP directory, e.g. a download of google/{preset}) "
    "for real embeddings."
)

__all__ = ["ExportOptions", "Progress", "run_export"]


# --- publication ------------------------------------------------------------------------------

def owned_by_manifest(directory: Path) -> set[str]:
    """The names an earlier export's manifest accounts for (empty when it cannot be read)."""
    try:
        return Manifest.read(directory).owned_files()
    except ArtefactError:
        return set()


def output_staging(output_dir: Path) -> Staging:
    """The publication of an artefact directory: replaceable when empty or an earlier export's."""
    return Staging(output_dir, MANIFEST, owned_by_manifest, "output directory")


# --- steps ------------------------------------------------------------------------------------

def load_model(options: ExportOptions, progress: Progress) -> tuple[SiglipModel | SiglipVisionModel, dict]:
    """The model in eval mode, and the manifest's record of where it came from."""
    if options.checkpoint is not None:
        with progress.step(f"load checkpoint {options.checkpoint}") as step:
            model = load_pretrained(options.checkpoint)
            files = weight_files(options.checkpoint)
            step["note"] = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
        with progress.step("hash checkpoint weights"):
            weights = [{"file": p.name, "sha256": sha256_file(p)} for p in files]
        return model, {"type": "checkpoint", "path": str(Path(options.checkpoint).resolve()),
                       "weights": weights, "random_weights": False}
    name = options.preset or DEFAULT_PRESET
    config = preset(name)
    warning = RANDOM_WEIGHTS_WARNING.format(preset=name, seed=options.seed)
    progress.info(f"WARNING: {warning}")
    with progress.step(f"build {name} (random weights)") as step:
        torch.manual_seed(options.seed)
        model = build_model(config).eval()
        step["note"] = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    return model, {"type": "preset", "preset": name, "seed": options.seed, "random_weights": True,
                   "warning": warning}


def select_towers(model, requested: tuple[str, ...] | None) -> dict[str, torch.nn.Module]:
    available = {"vision": model.vision_model}
    if isinstance(model, SiglipModel):
        available["text"] = model.text_model
    wanted = requested or tuple(available)
    unknown = [t for t in wanted if t not in TOWERS]
    if unknown:
        raise UserError(f"unknown tower {unknown[0]!r} in --towers (choose from {', '.join(TOWERS)})")
    missing = [t for t in wanted if t not in available]
    if missing:
        raise UserError(f"--towers asks for {missing[0]!r}, but the model has only: {', '.join(available)}")
    return {t: available[t] for t in TOWERS if t in wanted}


def image_settings_for(options: ExportOptions, config) -> ImageSettings:
    """The checkpoint's own preprocessor_config.json when it has one, else SigLIP's standard;
    with --image-size, resizing to that size (the rest of the checkpoint's settings kept)."""
    if options.checkpoint is not None and (Path(options.checkpoint) / PREPROCESSOR_CONFIG).is_file():
        settings = ImageSettings.from_file(Path(options.checkpoint) / PREPROCESSOR_CONFIG)
        if options.image_size is not None:
            return dataclasses.replace(settings, height=config.image_size, width=config.image_size)
        if (settings.height, settings.width) != (config.image_size, config.image_size):
            raise UserError(
                f"{PREPROCESSOR_CONFIG} resizes to {settings.height}x{settings.width}, but the model "
                f"takes {config.image_size}x{config.image_size}"
            )
        return settings
    return ImageSettings(height=config.image_size, width=config.image_size)


def _save_checked(model: onnx.ModelProto, path: Path, metadata_props: dict[str, str],
                  threshold: int) -> tuple[list[str], tuple]:
    """Check the batch axis, stamp the metadata, save; returns (external data files, IO signature).

    Saving with external data empties the in-memory tensors: afterwards the file is the truth.
    """
    bad = batch_axis_is_symbolic(model)
    if bad:
        raise ExportError(f"{path.name}: the batch axis of {', '.join(bad)} is not the symbolic 'batch'")
    set_metadata(model, metadata_props)
    signature = io_signature(model)
    return save_model(model, path, threshold), signature


@dataclass
class ExportTarget:
    """One file exported from a torch module: the plain tower (the contract's two outputs), or
    the tower with extra outputs (the `features` kind)."""

    kind: ArtefactKind
    module: torch.nn.Module
    outputs: tuple[str, ...]
    gate: Gate
    reference: Callable[[np.ndarray], dict[str, np.ndarray]]
    build: dict | None = None


def plain_target(tower: TowerExport, options: ExportOptions) -> ExportTarget:
    return ExportTarget(KINDS[None], tower.module, OUTPUTS, options.gate, tower.reference)


def features_target(tower: TowerExport, request: FeatureRequest, options: ExportOptions) -> ExportTarget:
    """The image tower with the layer features and attention maps `request` asks for, gated like
    the fp32 export on every output."""
    module = VisionFeatures(tower.module, request)
    outputs = request.outputs()
    gate = Gate(max_rel_err=options.gate.max_rel_err, min_cosine=options.gate.min_cosine, outputs=outputs)
    return ExportTarget(KINDS[FEATURES], module, outputs, gate, lambda x: eager_feature_outputs(module, x),
                        build=request.record())


def export_one(tower: TowerExport, target: ExportTarget, options: ExportOptions, progress: Progress) -> ArtefactRecord:
    """Export, check, simplify, save and verify one file of `tower`; the plain export keeps its
    raw graph at `tower.raw` for the `opt` variant, whose fusion needs the unsimplified graph."""
    kind = target.kind
    path = tower.scratch / kind.file(tower.name)
    raw = tower.scratch / f".raw.{path.name}" if options.simplify else path
    threshold = options.external_data_threshold
    # The raw export is written to disk and dropped from memory before onnxsim reads it back:
    # holding both graphs (and the checker's serialised copy) would double the peak memory.
    extras = f", {len(target.outputs) - len(OUTPUTS)} extra outputs" if len(target.outputs) > len(OUTPUTS) else ""
    with progress.step(f"export {path.name} (opset {options.opset}{extras})"):
        model = export_tower(target.module, options.opset, target.outputs)
        data_files, signature = _save_checked(model, raw, tower.metadata, threshold)
        del model
        gc.collect()
    with progress.step(f"check {path.name} (full_check)"):
        onnx.checker.check_model(str(raw), full_check=True)
    if options.simplify:
        with progress.step(f"simplify {path.name} (onnxsim)") as step:
            before = len(onnx.load(str(raw), load_external_data=False).graph.node)
            model = simplify_portable(raw)
            step["note"] = f"{before} -> {len(model.graph.node)} nodes"
            data_files, signature = _save_checked(model, path, tower.metadata, threshold)
            del model
            gc.collect()
            onnx.checker.check_model(str(path), full_check=True)
    with progress.step(f"verify {path.name} batch {','.join(map(str, options.verify_batch_sizes))}") as step:
        parity = measure(kind, path, reference_provider(kind), target.reference, tower.inputs, target.gate,
                         options.threads)
        worst = min(r.outputs[o].min_cosine for r in parity.results for o in target.outputs)
        step["note"] = f"min cosine {worst:.7f}" + ("" if parity.passed else "  FAILED")
    if not parity.passed:
        raise VerificationError(describe_failures(path.name, parity, target.gate))
    others = measure_elsewhere(kind, path, target.reference, tower.inputs, target.gate, options.threads, progress,
                               parity.runtime)
    return artefact_record(path, data_files, tower=tower.name, kind=kind, opset=options.opset, signature=signature,
                           parity=parity, runtimes=others, simplified=options.simplify, build=target.build)


def copy_runtime_files(options: ExportOptions, model, scratch: Path, image_settings: ImageSettings) -> list[str]:
    """config.json, preprocessor_config.json and tokenizer files, so the directory stands alone."""
    save_config(model.config, scratch / "config.json")
    (scratch / PREPROCESSOR_CONFIG).write_text(json.dumps(image_settings.to_dict(), indent=2) + "\n")
    copied = ["config.json", PREPROCESSOR_CONFIG]
    if options.checkpoint is not None and isinstance(model, SiglipModel):
        for name in TOKENIZER_FILES:
            source = Path(options.checkpoint) / name
            if source.is_file():
                shutil.copy2(source, scratch / name)
                copied.append(name)
    return copied


def prune_unlisted(scratch: Path, manifest: Manifest) -> None:
    """Delete every scratch file the manifest does not list (raw exports, rejected and intermediate
    variants): what is published is exactly what is recorded."""
    keep = manifest.owned_files()
    for path in scratch.iterdir():
        if path.name not in keep:
            path.unlink()


def _tower_export(name: str, module, scratch: Path, options: ExportOptions, source: dict,
                  image_settings: ImageSettings) -> TowerExport:
    spec = tower_spec(module)
    props = {
        "siglip.tower": name,
        "siglip.config": json.dumps(module.config.to_dict()),
        "siglip.source": json.dumps(source),
        "siglip_export.version": __version__,
    }
    if name == "vision":
        props["siglip.preprocessing"] = json.dumps(image_settings.to_dict())
    plain = scratch / spec.file
    return TowerExport(name=name, module=module, spec=spec, plain=plain,
                       raw=scratch / f".raw.{spec.file}" if options.simplify else plain, metadata=props,
                       image_settings=image_settings,
                       inputs=tower_inputs(spec, module.config, options.verify_batch_sizes, options.seed,
                                           image_settings),
                       reference=lambda x: eager_outputs(module, x), seed=options.seed)


def _check_paths(options: ExportOptions, target: Path) -> None:
    if options.checkpoint is not None and Path(options.checkpoint).exists() and is_within(options.checkpoint, target):
        raise UserError(f"--checkpoint {options.checkpoint} lies inside --output-dir {options.output_dir}, "
                        f"which is replaced whole: choose another output directory")


def run_export(options: ExportOptions, emit: Callable[[str], None] | None = print) -> Manifest:
    """Run the whole pipeline; returns the manifest. Raises UserError / VerificationError / ExportError."""
    progress = Progress(emit)
    target = resolve_target_name(options.target) if options.target is not None else None
    if target is not None:  # the target's variants, then any asked for besides
        options = dataclasses.replace(options, variants=tuple(dict.fromkeys((*target.variants, *options.variants))),
                                      quick_search=True)
    options.check()
    check_buildable(options.variants)
    stage = output_staging(options.output_dir)
    _check_paths(options, stage.target)
    with stage:
        scratch = stage.scratch
        model, source = load_model(options, progress)
        towers = select_towers(model, options.towers)
        vision_config = model.config.vision_config if isinstance(model, SiglipModel) else model.config
        if options.image_size is not None:
            with progress.step(f"resize position embeddings to {options.image_size}px") as step:
                source["image_size"] = resize_position_embeddings(model.vision_model, options.image_size)
                step["note"] = f"from {source['image_size']['interpolated_from'] or options.image_size}px, bicubic"
        image_settings = image_settings_for(options, vision_config)
        features = options.feature_request(vision_config.num_hidden_layers)
        if features.wanted and "vision" not in towers:
            raise UserError("--hidden-states / --attention need the image tower (add vision to --towers)")
        manifest = Manifest(
            source=source,
            model=ModelRecord(
                config=model.config.to_dict(), preprocessing=image_settings.to_dict(),
                logit_scale=model.logit_scale.item() if isinstance(model, SiglipModel) else None,
                logit_bias=model.logit_bias.item() if isinstance(model, SiglipModel) else None,
            ),
            artefacts=[],
            tools=tool_versions(),
        )
        exported = []
        for name, module in towers.items():
            tower = _tower_export(name, module, scratch, options, source, image_settings)
            exported.append(tower)
            tower.plain_record = export_one(tower, plain_target(tower, options), options, progress)
            manifest.artefacts.append(tower.plain_record)
            if name == "vision" and features.wanted:
                manifest.artefacts.append(export_one(tower, features_target(tower, features, options), options,
                                                     progress))
            if options.variants:
                built = build_variants(tower, options, progress)
                manifest.artefacts += built.published
                manifest.rejected += built.rejected
                manifest.skipped += built.skipped
                manifest.files += [f for f in built.shared_files if f not in manifest.files]
        if target is not None:
            manifest.selection = select(target, manifest, exported, options.threads, progress)
        manifest.files[:0] = copy_runtime_files(options, model, scratch, image_settings)
        prune_unlisted(scratch, manifest)
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.write(scratch)
        with progress.step(f"publish {stage.target}"):
            stage.publish()
    return manifest
