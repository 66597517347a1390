"""The export pipeline: model -> ONNX -> checked -> simplified -> verified -> published.

Everything is built in a hidden temporary directory beside the target and renamed into
place only after every gate passed, so a run killed at any moment never leaves a partial
file under the final names, and a failed run leaves an earlier good export untouched.
"""

from __future__ import annotations

import gc
import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import onnx
import torch

from runtime.errors import UserError
from runtime.preprocess import PREPROCESSOR_CONFIG, ImageSettings, preprocess
from runtime.session import OnnxModel, sha256_file

from . import __version__
from .checkpoint import load_pretrained, weight_files
from .config import DEFAULT_PRESET, preset, save_config
from .modeling_siglip import SiglipModel, SiglipVisionModel, build_model
from .onnx_export import (
    BATCH,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DEFAULT_OPSET,
    ExportError,
    batch_axis_is_symbolic,
    check_opset,
    ensure_batch_axis,
    export_tower,
    io_signature,
    save_model,
    set_metadata,
    tower_spec,
)
from .optimize import (
    DEFAULT_GATES,
    PRECISION,
    VARIANTS,
    VISION_ONLY,
    VariantFailed,
    VariantSkipped,
    build_fp16,
    build_int8,
    build_int8_qdq,
    build_openvino,
    build_opt,
    simplify_portable,
)
from .publication import (
    check_replaceable,
    is_within,
    make_scratch,
    publish,
    resolve_target,
)
from .tensorrt_build import build_engine, tensorrt_available
from .verify import (
    PHOTO_SUFFIXES,
    PHOTOS_DIR,
    Gate,
    VerificationError,
    describe_failures,
    eager_outputs,
    verification_inputs,
    verify_artefact,
    worst,
)

MANIFEST = "manifest.json"
TOWERS = ("vision", "text")
# Files a runtime needs beside the models, copied from a checkpoint when present.
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "added_tokens.json")
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: exported from preset {preset!r} with seed {seed}, not a trained model. "
    "Pass --checkpoint DIR (a Hugging Face SigLIP directory, e.g. a download of google/{preset}) "
    "for real embeddings."
)


@dataclass
class ExportOptions:
    checkpoint: Path | None = None
    preset: str | None = None  # used when no checkpoint is given; DEFAULT_PRESET when neither
    output_dir: Path = Path("artifacts")
    towers: tuple[str, ...] | None = None  # None: every tower the model has
    opset: int = DEFAULT_OPSET
    verify_batch_sizes: tuple[int, ...] = (1, 3, 8)
    simplify: bool = True
    seed: int = 0
    gate: Gate = field(default_factory=Gate)
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    threads: int | None = None  # ONNX Runtime threads for verification (None: all cores)
    variants: tuple[str, ...] = ()  # faster variants to build, each behind its gate (optimize.VARIANTS)
    gates: dict[str, float] = field(default_factory=dict)  # variant -> min cosine, over DEFAULT_GATES
    calibration_images: Path | None = None  # int8-qdq calibration (default: the packaged photos)
    trt_profile: tuple[int, int, int] = (1, 8, 64)  # TensorRT batch profile min / opt / max


class Progress:
    """One line per finished step with its duration and the total elapsed time."""

    def __init__(self, emit: Callable[[str], None] | None = print):
        self.emit = emit or (lambda line: None)
        self.start = time.perf_counter()
        self.live = bool(emit is print and sys.stdout.isatty())

    def info(self, line: str) -> None:
        self.emit(line)

    @contextmanager
    def step(self, name: str) -> Iterator[dict]:
        if self.live:
            sys.stdout.write(f"[{time.perf_counter() - self.start:6.1f}s] {name} ...\r")
            sys.stdout.flush()
        begun = time.perf_counter()
        detail: dict = {}
        yield detail
        took = time.perf_counter() - begun
        note = f"  {detail['note']}" if detail.get("note") else ""
        self.emit(f"[{time.perf_counter() - self.start:6.1f}s] {name:<42} {took:6.1f}s{note}")


def tool_versions() -> dict[str, str]:
    versions = {"siglip-export": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


# --- publication ------------------------------------------------------------------------------

def owned_by_manifest(directory: Path) -> set[str]:
    """The names an earlier export's manifest accounts for (empty when it cannot be read)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        names = set(manifest.get("files", []))
        for art in manifest.get("artefacts", []):
            names.add(art["file"])
            names.update(d["file"] for d in art.get("external_data", []))
        return names
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()


def prepare_output(target: Path) -> Path:
    """Check the target can be replaced and create the scratch directory beside it."""
    check_replaceable(target, MANIFEST, owned_by_manifest, "output directory")
    return make_scratch(target, "output directory")


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
    """The checkpoint's own preprocessor_config.json when it has one, else SigLIP's standard."""
    if options.checkpoint is not None and (Path(options.checkpoint) / PREPROCESSOR_CONFIG).is_file():
        settings = ImageSettings.from_file(Path(options.checkpoint) / PREPROCESSOR_CONFIG)
        if (settings.height, settings.width) != (config.image_size, config.image_size):
            raise UserError(
                f"{PREPROCESSOR_CONFIG} resizes to {settings.height}x{settings.width}, but the model "
                f"takes {config.image_size}x{config.image_size}"
            )
        return settings
    return ImageSettings(height=config.image_size, width=config.image_size)


def _save_checked(model: onnx.ModelProto, path: Path, spec, metadata_props: dict[str, str],
                  threshold: int) -> tuple[list[str], dict]:
    """Check the batch axis, stamp the metadata, save; returns (external data files, IO signature).

    Saving with external data empties the in-memory tensors: afterwards the file is the truth.
    """
    bad = batch_axis_is_symbolic(model)
    if bad:
        raise ExportError(f"{spec.file}: the batch axis of {', '.join(bad)} is not the symbolic 'batch'")
    set_metadata(model, metadata_props)
    signature = io_signature(model)
    return save_model(model, path, threshold), signature


def _file_record(path: Path, data_files: list[str]) -> dict:
    scratch = path.parent
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size + sum((scratch / f).stat().st_size for f in data_files),
        "external_data": [{"file": f, "sha256": sha256_file(scratch / f)} for f in data_files],
    }


def _verification_inputs(name: str, tower, spec, options: ExportOptions, image_settings: ImageSettings) -> list:
    text = tower.config if name == "text" else None
    pad = text.pad_token_id if text and text.pad_token_id is not None and text.pad_token_id < text.vocab_size else 1
    return verification_inputs(spec, options.verify_batch_sizes, options.seed, image_settings,
                               vocab_size=text.vocab_size if text else None, pad_id=pad)


def export_one(
    name: str, tower, scratch: Path, options: ExportOptions, progress: Progress, metadata_props: dict[str, str],
    inputs: list,
) -> tuple[dict, Path]:
    """Export, check, simplify, save and verify one tower; returns its record and the raw export's path
    (kept for the `opt` variant, whose fusion needs the unsimplified graph)."""
    spec = tower_spec(tower)
    path = scratch / spec.file
    # The raw export is written to disk and dropped from memory before onnxsim reads it back:
    # holding both graphs (and the checker's serialised copy) would double the peak memory.
    raw = scratch / f".raw.{spec.file}" if options.simplify else path
    with progress.step(f"export {spec.file} (opset {options.opset})"):
        model = export_tower(tower, options.opset)
        data_files, signature = _save_checked(model, raw, spec, metadata_props, options.external_data_threshold)
        del model
        gc.collect()
    with progress.step(f"check {spec.file} (full_check)"):
        onnx.checker.check_model(str(raw), full_check=True)
    if options.simplify:
        with progress.step(f"simplify {spec.file} (onnxsim)") as step:
            before = len(onnx.load(str(raw), load_external_data=False).graph.node)
            model = simplify_portable(raw)
            step["note"] = f"{before} -> {len(model.graph.node)} nodes"
            data_files, signature = _save_checked(model, path, spec, metadata_props, options.external_data_threshold)
            del model
            gc.collect()
            onnx.checker.check_model(str(path), full_check=True)
    with progress.step(f"verify {spec.file} batch {','.join(map(str, options.verify_batch_sizes))}") as step:
        session = OnnxModel(path, threads=options.threads)
        parity = verify_artefact(session, lambda x: eager_outputs(tower, x), inputs, options.gate)
        del session
        numbers = worst(parity)
        step["note"] = (f"min cosine {min(numbers['last_hidden_state_min_cosine'], numbers['pooler_output_min_cosine']):.7f}"
                        + ("" if parity["passed"] else "  FAILED"))
    if not parity["passed"]:
        raise VerificationError(describe_failures(spec.file, parity, options.gate))
    record = {**_file_record(path, data_files), "tower": name, "variant": None, "opset": options.opset,
              "precision": "fp32", "simplified": options.simplify, **signature, "parity": parity}
    return record, raw


def _variant_file(stem: str, variant: str) -> str:
    if variant == "ov-bf16":
        return f"{stem}.ov-bf16.xml"
    if variant == "trt-fp16":
        return f"{stem}.fp16.engine"
    return f"{stem}.{variant}.onnx"


def _calibration_batches(options: ExportOptions, settings: ImageSettings) -> list:
    """Images for static int8 calibration: --calibration-images DIR, else the packaged photos."""
    directory = Path(options.calibration_images) if options.calibration_images else PHOTOS_DIR  # checked up front
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise UserError(f"--calibration-images {directory} holds no .jpg / .jpeg / .png images")
    return [preprocess([p], settings) for p in paths]


class _VariantBuilder:
    """Builds the requested variants of one tower; each file once, dependencies (int8 needs opt,
    trt-fp16 needs fp16) built on demand even when not requested themselves."""

    def __init__(self, name, tower, spec, plain: Path, raw: Path, options: ExportOptions,
                 metadata_props: dict[str, str], image_settings: ImageSettings):
        self.name, self.tower, self.spec, self.plain, self.raw = name, tower, spec, plain, raw
        self.options, self.props, self.image_settings = options, metadata_props, image_settings
        self.scratch = plain.parent
        self.stem = spec.file.removesuffix(".onnx")
        self.built: dict[str, tuple[Path, dict]] = {}

    def _save(self, model: onnx.ModelProto, path: Path, variant: str) -> list[str]:
        ensure_batch_axis(model, self.spec.input_name)
        set_metadata(model, {**self.props, "siglip.variant": variant})
        return save_model(model, path, self.options.external_data_threshold)

    def _restamp(self, path: Path, variant: str) -> None:
        """Metadata and batch-axis name for a file another tool wrote (weights stay where they are)."""
        model = onnx.load(str(path), load_external_data=False)
        ensure_batch_axis(model, self.spec.input_name)
        set_metadata(model, {**self.props, "siglip.variant": variant})
        onnx.save_model(model, str(path))

    def build(self, variant: str) -> tuple[Path, dict]:
        if variant in self.built:
            return self.built[variant]
        path = self.scratch / _variant_file(self.stem, variant)
        config = self.tower.config
        if variant == "opt":
            model, info = build_opt(self.raw, config, self.name)
            info["data_files"] = self._save(model, path, variant)
        elif variant == "int8":
            info = build_int8(self.build("opt")[0], path, config)
            self._restamp(path, variant)
        elif variant == "int8-qdq":
            calibration = _calibration_batches(self.options, self.image_settings)
            info = build_int8_qdq(self.plain, path, self.spec.input_name, calibration)
            self._restamp(path, variant)
        elif variant == "fp16":
            model, info = build_fp16(self.plain)
            info["data_files"] = self._save(model, path, variant)
        elif variant == "ov-bf16":
            info = build_openvino(self.plain, path)
            info["data_files"] = [path.with_suffix(".bin").name]
        elif variant == "trt-fp16":
            reason = tensorrt_available()
            if reason:  # before the fp16 graph it would be built from
                raise VariantSkipped(reason)
            fp16 = self.build("fp16")[0]
            profile = self.options.trt_profile
            info = build_engine(fp16, path, profile, self.scratch / "tensorrt.timing_cache", self.spec.input_name)
            info["data_files"] = [f"{path.name}.json", "tensorrt.timing_cache"]
        info.setdefault("data_files", [f for f in (f"{path.name}.data",) if (self.scratch / f).is_file()])
        self.built[variant] = (path, info)
        return self.built[variant]

    def runner(self, variant: str, path: Path):
        """The runtime class that serves this kind of file (the code path users deploy)."""
        if variant == "ov-bf16":
            from runtime.openvino_model import OpenVinoModel

            return OpenVinoModel(path, precision="bf16", threads=self.options.threads)
        if variant == "trt-fp16":
            from runtime.tensorrt_engine import TensorRTEngine

            return TensorRTEngine(path)
        return OnnxModel(path, threads=self.options.threads)


def build_variants(name, tower, spec, plain: Path, raw: Path, options: ExportOptions, progress: Progress,
                   metadata_props: dict[str, str], image_settings: ImageSettings, inputs: list) -> dict[str, list]:
    """Build, verify and gate each requested variant of one tower.

    Returns {"published": [...], "rejected": [...], "skipped": [...]}; a rejected variant's
    files stay in the scratch directory, unlisted, and are pruned before publication.
    """
    out: dict[str, list] = {"published": [], "rejected": [], "skipped": []}
    builder = _VariantBuilder(name, tower, spec, plain, raw, options, metadata_props, image_settings)
    for variant in options.variants:
        file = _variant_file(builder.stem, variant)
        gate = Gate(max_rel_err=None, min_cosine=options.gates.get(variant, DEFAULT_GATES[variant]),
                    outputs=("pooler_output",))
        base = {"file": file, "tower": name, "variant": variant, "precision": PRECISION[variant]}
        if name != "vision" and variant in VISION_ONLY:
            out["skipped"].append({**base, "reason": f"{variant} is made for the image tower only"})
            continue
        with progress.step(f"build {file}") as step:
            try:
                path, info = builder.build(variant)
            except VariantSkipped as exc:
                out["skipped"].append({**base, "reason": str(exc)})
                step["note"] = f"skipped: {exc}"
                continue
            except (VariantFailed, UserError) as exc:
                out["rejected"].append({**base, "reason": str(exc)})
                step["note"] = f"REJECTED: {exc}"
                continue
            except Exception as exc:  # a variant's failure must not cost the fp32 files that passed
                out["rejected"].append({**base, "reason": f"build failed: {type(exc).__name__}: {exc}"})
                step["note"] = f"REJECTED: build failed: {type(exc).__name__}"
                continue
        with progress.step(f"verify {file}") as step:
            try:
                parity = verify_artefact(builder.runner(variant, path), lambda x: eager_outputs(tower, x),
                                         inputs, gate)
            except Exception as exc:
                out["rejected"].append({**base, "reason": f"verification failed: {type(exc).__name__}: {exc}"})
                step["note"] = f"REJECTED: verification failed: {type(exc).__name__}"
                continue
            numbers = worst(parity)
            step["note"] = (f"min cosine {numbers['pooler_output_min_cosine']:.6f} (gate {gate.min_cosine})"
                            + ("" if parity["passed"] else "  REJECTED"))
        build_info = {k: v for k, v in info.items() if k != "data_files"}
        if not parity["passed"]:
            out["rejected"].append({**base, "reason": "missed its gate", "accuracy": numbers, "parity": parity})
            continue
        record = _file_record(path, [f for f in info["data_files"] if f != "tensorrt.timing_cache"])
        out["published"].append({**record, **base, "opset": options.opset, "accuracy": numbers,
                                 "build": build_info, "parity": parity, **_signature_of(path, tower, spec)})
    return out


def _signature_of(path: Path, tower, spec) -> dict:
    """IO names / shapes / dtypes of a variant (all take the fp32 model's inputs and give float32 outputs)."""
    if path.suffix == ".onnx":
        return io_signature(onnx.load(str(path), load_external_data=False))
    rest = list(spec.input_shape[1:])
    hidden = tower.config.hidden_size
    seq = tower.config.num_patches if spec.name == "vision" else spec.input_shape[1]
    pooled = hidden if spec.name == "vision" else tower.config.projection_size
    return {"inputs": [{"name": spec.input_name, "dtype": spec.input_dtype, "shape": [BATCH, *rest]}],
            "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": [BATCH, seq, hidden]},
                        {"name": "pooler_output", "dtype": "float32", "shape": [BATCH, pooled]}]}


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


def check_variant_options(options: ExportOptions) -> None:
    unknown = [v for v in options.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r} (choose from {', '.join(VARIANTS)})")
    for variant, value in options.gates.items():
        if variant not in VARIANTS:
            raise UserError(f"--gate names unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if not -1.0 <= value <= 1.0:
            raise UserError(f"--gate {variant}={value}: a minimum cosine must lie in [-1, 1]")
    if len(options.trt_profile) != 3:
        raise UserError(f"--trt-profile needs three batch sizes MIN,OPT,MAX, got {options.trt_profile}")
    low, opt, high = options.trt_profile
    if not 1 <= low <= opt <= high:
        raise UserError(f"--trt-profile {low},{opt},{high}: need 1 <= min <= opt <= max")
    if "trt-fp16" in options.variants and not low <= min(options.verify_batch_sizes) <= max(
            options.verify_batch_sizes) <= high:
        raise UserError(f"--trt-profile {low},{opt},{high} must cover the verification batch sizes "
                        f"{','.join(map(str, options.verify_batch_sizes))}")
    if options.calibration_images is not None and not Path(options.calibration_images).is_dir():
        raise UserError(f"--calibration-images {options.calibration_images} is not a directory")


def prune_unlisted(scratch: Path, artefacts: list[dict], files: list[str]) -> None:
    """Delete every scratch file the manifest does not list (raw exports, rejected and intermediate
    variants): what is published is exactly what is recorded."""
    keep = set(files)
    for art in artefacts:
        keep.add(art["file"])
        keep.update(d["file"] for d in art["external_data"])
    for path in scratch.iterdir():
        if path.name not in keep:
            path.unlink()


def run_export(options: ExportOptions, emit: Callable[[str], None] | None = print) -> dict:
    """Run the whole pipeline; returns the manifest. Raises UserError / VerificationError / ExportError."""
    progress = Progress(emit)
    check_opset(options.opset)
    if not options.verify_batch_sizes or any(b < 1 for b in options.verify_batch_sizes):
        raise UserError(f"verify batch sizes must be positive integers, got {options.verify_batch_sizes}")
    check_variant_options(options)
    target = resolve_target(options.output_dir)
    if options.checkpoint is not None and Path(options.checkpoint).exists() and is_within(options.checkpoint, target):
        raise UserError(f"--checkpoint {options.checkpoint} lies inside --output-dir {options.output_dir}, "
                        f"which is replaced whole: choose another output directory")
    scratch = prepare_output(target)
    try:
        model, source = load_model(options, progress)
        towers = select_towers(model, options.towers)
        vision_config = model.config.vision_config if isinstance(model, SiglipModel) else model.config
        image_settings = image_settings_for(options, vision_config)
        artefacts, rejected, skipped = [], [], []
        for name, tower in towers.items():
            props = {
                "siglip.tower": name,
                "siglip.config": json.dumps(tower.config.to_dict()),
                "siglip.source": json.dumps(source),
                "siglip_export.version": __version__,
            }
            if name == "vision":
                props["siglip.preprocessing"] = json.dumps(image_settings.to_dict())
            inputs = _verification_inputs(name, tower, tower_spec(tower), options, image_settings)
            record, raw = export_one(name, tower, scratch, options, progress, props, inputs)
            artefacts.append(record)
            if options.variants:
                built = build_variants(name, tower, tower_spec(tower), scratch / record["file"], raw, options,
                                       progress, props, image_settings, inputs)
                artefacts += built["published"]
                rejected += built["rejected"]
                skipped += built["skipped"]
        files = copy_runtime_files(options, model, scratch, image_settings)
        if any(a["variant"] == "trt-fp16" for a in artefacts):
            files.append("tensorrt.timing_cache")
        prune_unlisted(scratch, artefacts, files)
        manifest = {
            "format": "siglip-export/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source,
            "model": {
                "config": model.config.to_dict(),
                "logit_scale": model.logit_scale.item() if isinstance(model, SiglipModel) else None,
                "logit_bias": model.logit_bias.item() if isinstance(model, SiglipModel) else None,
                "preprocessing": image_settings.to_dict(),
            },
            "artefacts": artefacts,
            "rejected": rejected,
            "skipped": skipped,
            "files": files,
            "tools": tool_versions(),
        }
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        with progress.step(f"publish {target}"):
            publish(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def summary_table(manifest: dict, output_dir: Path) -> str:
    """Markdown table: every artefact with its size and accuracy, and what was rejected or skipped."""
    rows = ["| artefact | size | accuracy vs eager fp32 (worst over inputs and batch sizes) | gate | path |",
            "| --- | --- | --- | --- | --- |"]
    for art in manifest["artefacts"]:
        n = worst(art["parity"])
        batches = ",".join(str(b) for b in sorted({r["batch_size"] for r in art["parity"]["results"]}))
        accuracy = (f"pooler cos {n['pooler_output_min_cosine']:.6f}, hidden cos {n['last_hidden_state_min_cosine']:.6f}, "
                    f"hidden rel err {n['last_hidden_state_rel_err']:.1e} (batch {batches})")
        rows.append(f"| {art['file']} | {art['size_bytes'] / 1e6:.1f} MB | {accuracy} | pass | "
                    f"{Path(output_dir) / art['file']} |")
    for art in manifest.get("rejected", []):
        detail = (f"pooler cos {art['accuracy']['pooler_output_min_cosine']:.6f} < "
                  f"{art['parity']['gate']['min_cosine']}" if "accuracy" in art else art["reason"])
        rows.append(f"| {art['file']} | - | {detail} | REJECTED | not published |")
    for art in manifest.get("skipped", []):
        rows.append(f"| {art['file']} | - | {art['reason']} | skipped | not built |")
    return "\n".join(rows)
