"""A Triton Inference Server model repository from a finished artefact directory.

    write_triton_repo("artifacts", "triton_repo")                  # both towers, ONNX Runtime backend
    write_triton_repo("artifacts", "triton_repo", tensorrt_accelerator=True, variants=(None, "int8-qdq"))

What it writes (model names are `<prefix>_<tower>[_<variant>]` with `-` as `_`, prefix `siglip` by default):

    triton_repo/
      siglip_triton.json                   what was served from where (marks the directory as ours)
      siglip_vision/config.pbtxt           platform "onnxruntime_onnx"
      siglip_vision/1/model.onnx           a copy of vision_model.onnx
      siglip_vision/1/vision_model.onnx.data   external weights, under the name model.onnx records
      siglip_vision_int8_qdq/...           vision_model.int8-qdq.onnx, when variants asks for "int8-qdq"
      siglip_text/...                      text_model.onnx
      siglip_vision_trt_fp16/config.pbtxt  platform "tensorrt_plan", for vision_model.fp16.engine
      siglip_vision_trt_fp16/1/model.plan  (+ vision_model.fp16.engine.json: the GPU / TensorRT it needs)

Every model batches on Triton's side (`max_batch_size`, `dynamic_batching`): the artefacts'
batch axis is dynamic, so `dims` list the other axes only. Inputs and outputs keep the
artefact contract's names (`pixel_values` / `input_ids` -> `last_hidden_state`,
`pooler_output`), so a client written against `runtime` needs no renaming.

The repository is built in a hidden directory beside the target and renamed into place, so
a server polling the repository never sees half a model; a non-empty directory that is not
a repository written here (no `siglip_triton.json`) is never replaced.

This module needs neither Triton nor tritonclient: the configs are protobuf text written by
hand, and the tests parse them with Triton's own schema (tritonclient's `ModelConfig`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.artefacts import Artefacts
from runtime.contract.kinds import ENGINE, ONNX
from runtime.contract.manifest import MANIFEST, ArtefactRecord, TensorInfo
from runtime.errors import ArtefactError, UserError
from runtime.files import sha256_file
from runtime.runners.onnxruntime_model import tensorrt_shapes
from runtime.serving.model_config import TRITON_DTYPES, batching_lines, instance_lines, model_name, tensor_block

from .. import __version__
from ..publication import Staging, is_within

REPO_RECORD = "siglip_triton.json"
VERSION = "1"  # Triton serves the highest numbered version directory; one version per repository
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
# Artefact formats (runtime.contract) Triton serves, and how; OpenVINO IR is not served here.
PLATFORMS = {ONNX: ONNX_PLATFORM, ENGINE: PLAN_PLATFORM}
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}  # Triton's default file names

INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
TENSORRT_PRECISIONS = ("FP32", "FP16", "INT8")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class TritonOptions:
    """How the models are served. Validated on construction (UserError naming the value), so a
    command line can check its flags before a long export runs.

    max_batch_size: the largest batch Triton forms or accepts (engines: at most their profile's max).
    preferred_batch_sizes: batches the dynamic batcher tries to form; each <= max_batch_size.
    max_queue_delay_us: how long a request may wait for others to join its batch.
    instance_count / instance_kind: model copies per device; KIND_AUTO (GPU where there is one),
        KIND_GPU or KIND_CPU. TensorRT plans always run on KIND_GPU.
    tensorrt_accelerator: ONNX models run through ONNX Runtime's TensorRT provider (CUDA for the
        rest), with `tensorrt_precision` ("FP32", "FP16", "INT8": INT8 needs a QDQ variant), an
        engine cache under `tensorrt_cache_dir/<model>` inside the server, and a batch profile
        1 .. max_batch_size (opt: the largest preferred size) so one engine covers every batch.
    variants: which ONNX files to serve: None is `<tower>_model.onnx`, "opt" is
        `<tower>_model.opt.onnx`, and so on. A tower without a requested variant is left out;
        a variant no tower has as an ONNX file is an error (OpenVINO IR variants are not served).
    include_engines: also serve every TensorRT engine the manifest lists, as `tensorrt_plan`.
    prefix: the first part of every model name.
    """

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 100
    instance_count: int = 1
    instance_kind: str = "KIND_AUTO"
    tensorrt_accelerator: bool = False
    tensorrt_precision: str = "FP16"
    tensorrt_workspace_bytes: int = 4 << 30
    tensorrt_cache_dir: str = "/tmp/siglip_trt_cache"
    variants: tuple[str | None, ...] = (None,)
    include_engines: bool = True
    prefix: str = "siglip"
    preferred: tuple[int, ...] = field(init=False, repr=False)  # sorted, deduplicated preferred sizes

    def __post_init__(self):
        # Lists are accepted (a command line builds them); stored as tuples, the options stay hashable.
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        object.__setattr__(self, "variants", tuple(dict.fromkeys(self.variants)))  # in order, once each

        def positive(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"Triton {name} must be a positive integer, got {value!r}")

        positive("max_batch_size", self.max_batch_size)
        positive("instance_count", self.instance_count)
        positive("tensorrt_workspace_bytes", self.tensorrt_workspace_bytes)
        if isinstance(self.max_queue_delay_us, bool) or not isinstance(self.max_queue_delay_us, int) \
                or self.max_queue_delay_us < 0:
            raise UserError(f"Triton max_queue_delay_us must be an integer >= 0, got {self.max_queue_delay_us!r}")
        for size in self.preferred_batch_sizes:
            positive("preferred batch size", size)
            if size > self.max_batch_size:
                raise UserError(f"Triton preferred batch size {size} exceeds max_batch_size {self.max_batch_size}")
        object.__setattr__(self, "preferred", tuple(sorted(set(self.preferred_batch_sizes))))
        if self.instance_kind not in INSTANCE_KINDS:
            raise UserError(f"Triton instance kind {self.instance_kind!r} is not one of {', '.join(INSTANCE_KINDS)}")
        if self.tensorrt_precision not in TENSORRT_PRECISIONS:
            raise UserError(f"TensorRT precision {self.tensorrt_precision!r} is not one of "
                            f"{', '.join(TENSORRT_PRECISIONS)}")
        if not _NAME.match(self.prefix or ""):
            raise UserError(f"Triton model name prefix {self.prefix!r} must be letters, digits, '_' or '-'")
        if not self.variants:
            raise UserError("Triton variants is empty: name at least one (None for the plain .onnx files)")
        for variant in self.variants:
            if variant is not None and not _NAME.match(str(variant)):
                raise UserError(f"Triton variant {variant!r} is not a variant name (e.g. opt, int8, fp16)")


@dataclass
class _Model:
    """One Triton model to write: its name, platform, the files it serves and its signature."""

    name: str
    platform: str
    tower: str
    source: Path  # the .onnx or .engine in the artefact directory
    sha256: str | None
    extra_files: list[tuple[str, str | None]]  # (file name beside the model, sha256) e.g. external data
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    variant: str | None = None
    precision: str | None = None
    engine_max_batch: int | None = None


def _copy_checked(source: Path, target: Path, sha256: str | None) -> None:
    """Copy contents (not permissions: the server may run as another user) and check the hash."""
    if not source.is_file():
        raise ArtefactError(f"{source} is listed in {MANIFEST} but missing")
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    if sha256 and sha256_file(target) != sha256:
        raise ArtefactError(f"{source} does not match the sha256 in {MANIFEST} (modified or truncated)")


def _model(record: ArtefactRecord, directory: Path, name: str) -> _Model:
    """The Triton model serving one manifest record (its signature, files and hashes as recorded)."""
    profile = (record.build or {}).get("profile") or {}
    return _Model(
        name=name, platform=PLATFORMS[record.format], tower=record.tower, source=directory / record.file,
        sha256=record.sha256, extra_files=[(d.file, d.sha256) for d in record.external_data],
        inputs=record.inputs, outputs=record.outputs, variant=record.variant, precision=record.precision,
        engine_max_batch=profile.get("max") if record.format == ENGINE else None,
    )


def plan_models(artefacts: Artefacts, options: TritonOptions) -> list[_Model]:
    """The models a repository for `artefacts` holds under `options`, in a stable order:
    requested ONNX variants (each tower in manifest order), then TensorRT engines."""
    manifest = artefacts.manifest
    onnx_records = manifest.records(format=ONNX)
    models: list[_Model] = []
    for variant in options.variants:
        chosen = [r for r in onnx_records if r.variant == variant]
        if not chosen:
            label = variant or "(plain)"
            other = [r.file for r in manifest.artefacts if r.variant == variant]
            if other:
                raise UserError(f"Triton variant {label!r} is {', '.join(other)}: not an ONNX file, so the "
                                f"onnxruntime backend cannot serve it (TensorRT engines come with include_engines)")
            have = sorted({r.variant or "(plain)" for r in onnx_records})
            raise UserError(f"no ONNX artefact for Triton variant {label!r} in {artefacts.directory} "
                            f"(it has: {', '.join(have) or 'nothing'})")
        for record in chosen:
            models.append(_model(record, artefacts.directory, model_name(options.prefix, record.tower, variant)))
    for record in manifest.records(format=ENGINE) if options.include_engines else []:
        precision = re.sub(r"[^A-Za-z0-9]+", "_", record.precision)
        models.append(_model(record, artefacts.directory, f"{options.prefix}_{record.tower}_trt_{precision}"))
    names = [m.name for m in models]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ArtefactError(f"two artefacts in {artefacts.directory} map to the Triton model name {duplicate!r}")
    return models


# --- config.pbtxt ---------------------------------------------------------------------------

def _profile_shapes(model: _Model, batch: int) -> str:
    return tensorrt_shapes([(t.name, t.shape) for t in model.inputs], batch)


def config_text(model: _Model, options: TritonOptions) -> str:
    """The model's config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    max_batch = options.max_batch_size
    if model.engine_max_batch is not None:
        max_batch = min(max_batch, model.engine_max_batch)
    preferred = [b for b in options.preferred if b <= max_batch]
    kind = "KIND_GPU" if model.platform == PLAN_PLATFORM else options.instance_kind
    lines = [
        f"# Written by siglip-export {__version__} from {model.source.name}"
        + (f" (sha256 {model.sha256[:16]}...)" if model.sha256 else ""),
        f'name: "{model.name}"',
        f'platform: "{model.platform}"',
        f'default_model_filename: "{MODEL_FILES[model.platform]}"',
        f"max_batch_size: {max_batch}",
    ]
    lines += tensor_block("input", model.inputs, model.source)
    lines += tensor_block("output", model.outputs, model.source)
    lines += batching_lines(preferred, options.max_queue_delay_us)
    lines += instance_lines(options.instance_count, kind)
    concrete = all(isinstance(d, int) for t in model.inputs for d in t.shape[1:])
    if options.tensorrt_accelerator and model.platform == ONNX_PLATFORM:
        opt = preferred[-1] if preferred else max_batch
        parameters = {
            "precision_mode": options.tensorrt_precision,
            "max_workspace_size_bytes": str(options.tensorrt_workspace_bytes),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{options.tensorrt_cache_dir.rstrip('/')}/{model.name}",
        }
        if concrete:  # one profile over the batch range Triton sends: no engine rebuild per new batch size
            parameters.update(trt_profile_min_shapes=_profile_shapes(model, 1),
                              trt_profile_opt_shapes=_profile_shapes(model, opt),
                              trt_profile_max_shapes=_profile_shapes(model, max_batch))
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator [", "      {",
                  '        name: "tensorrt"']
        lines += [f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in parameters.items()]
        lines += ["      }", "    ]", "  }", "}"]
    return "\n".join(lines) + "\n"


# --- the repository -------------------------------------------------------------------------

def _owned_by_record(repo: Path) -> set[str]:
    try:
        return {m["name"] for m in json.loads((repo / REPO_RECORD).read_text(encoding="utf-8"))["models"]}
    except (OSError, ValueError, TypeError, KeyError):
        return set()


def repo_staging(repo_dir: str | os.PathLike) -> Staging:
    """The publication of a Triton repository: replaceable when absent, empty, or written here."""
    return Staging(repo_dir, REPO_RECORD, _owned_by_record, "Triton repository")


def check_repo_target(repo_dir: str | os.PathLike) -> Path:
    """Raise UserError unless `repo_dir` can be (re)placed: absent, empty, or a repository written here."""
    return repo_staging(repo_dir).check()


def write_triton_repo(artefact_dir: str | os.PathLike, repo_dir: str | os.PathLike,
                      options: TritonOptions | None = None, **kwargs) -> list[Path]:
    """Write a Triton model repository serving the artefacts in `artefact_dir`; returns the model directories.

    Options come as a `TritonOptions` or as its fields by keyword (not both). Bad input raises
    UserError naming the value; a missing, modified or truncated artefact raises ArtefactError.
    An earlier repository written here is replaced whole; nothing is changed when anything fails.
    """
    if options is not None and kwargs:
        raise TypeError("pass either a TritonOptions or its fields as keywords, not both")
    options = options or TritonOptions(**kwargs)
    source = Path(artefact_dir)
    if not source.is_dir():
        raise UserError(f"artefact directory not found: {source}" if not source.exists()
                        else f"artefact path {source} is not a directory")
    artefacts = Artefacts(source)
    models = plan_models(artefacts, options)
    stage = repo_staging(repo_dir)
    repo = stage.check()
    if is_within(repo, source) or is_within(source, repo):
        raise UserError(f"Triton repository {repo_dir} and artefact directory {artefact_dir} must not contain "
                        f"each other (each is replaced whole)")
    with stage:
        scratch = stage.scratch
        record = []
        for model in models:
            version_dir = scratch / model.name / VERSION
            version_dir.mkdir(parents=True)
            filename = MODEL_FILES[model.platform]
            _copy_checked(model.source, version_dir / filename, model.sha256)
            # External data is found by the file name recorded inside the .onnx, relative to it:
            # keep that exact name (e.g. vision_model.onnx.data) beside model.onnx.
            for name, sha256 in model.extra_files:
                _copy_checked(artefacts.directory / name, version_dir / name, sha256)
            (scratch / model.name / "config.pbtxt").write_text(config_text(model, options))
            record.append({"name": model.name, "platform": model.platform, "tower": model.tower,
                           "variant": model.variant, "precision": model.precision,
                           "source": model.source.name, "sha256": model.sha256,
                           "files": [filename] + [name for name, _ in model.extra_files]})
        (scratch / REPO_RECORD).write_text(json.dumps({
            "format": "siglip-export-triton/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "artefact_dir": str(source.resolve()),
            "manifest_created": artefacts.manifest.created,
            "options": {k: v for k, v in options.__dict__.items() if k != "preferred"},
            "models": record,
        }, indent=2) + "\n")
        stage.publish()
    return [repo / model.name for model in models]


__all__ = ["REPO_RECORD", "TRITON_DTYPES", "TritonOptions", "check_repo_target", "config_text", "plan_models",
           "write_triton_repo"]

