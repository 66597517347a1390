"""The artefact contract: every kind of file an export holds, and the runners that load them.

This module is the one place where artefact facts live. A reader finds every kind here:

| variant        | file (per tower)                 | format   | prec.   | runner      | providers (auto order)        | gate    |
| -------------- | -------------------------------- | -------- | ------- | ----------- | ----------------------------- | ------- |
| (plain)        | `<tower>_model.onnx`             | onnx     | fp32    | onnxruntime | tensorrt, cuda, cpu, openvino | fp32    |
| `opt`          | `<tower>_model.opt.onnx`         | onnx     | fp32    | onnxruntime | tensorrt, cuda, cpu           | 0.99999 |
| `int8`         | `<tower>_model.int8.onnx`        | onnx     | int8    | onnxruntime | cpu                           | 0.99    |
| `int8-qdq`     | `vision_model.int8-qdq.onnx`     | onnx     | int8    | onnxruntime | cuda, cpu, tensorrt, openvino | 0.99    |
| `fp16`         | `<tower>_model.fp16.onnx`        | onnx     | fp16    | onnxruntime | tensorrt, cuda, cpu           | 0.999   |
| `ov-bf16`      | `<tower>_model.ov-bf16.xml`      | openvino | bf16    | openvino    | cpu, openvino                 | 0.999   |
| `ov-int8`      | `vision_model.ov-int8.xml`       | openvino | int8    | openvino    | cpu, openvino                 | 0.99    |
| `trt-fp16`     | `vision_model.fp16.engine`       | engine   | fp16    | tensorrt    | tensorrt                      | 0.999   |
| `cuda-fp16`    | `vision_model.cuda-fp16.onnx`    | onnx     | fp16    | onnxruntime | cuda, cpu                     | 0.999   |
| `cuda-fp16-u8` | `vision_model.cuda-fp16-u8.onnx` | onnx     | fp16    | onnxruntime | cuda, cpu                     | 0.999   |
| `features`     | `vision_model.features.onnx`     | onnx     | fp32    | onnxruntime | tensorrt, cuda, cpu, openvino | fp32    |

(the table is `KINDS`; `tests/test_contract.py` checks this docstring against it.)

Everything else asks: the export pipeline names its files with `ArtefactKind.file`, the runtime
loads a record with `open_runner`, Triton and the benchmark choose by a record's `format`,
`variant` and `precision`. Nothing parses or globs file names. Adding a kind is one `register`
call here (or from a plugin) plus its builder on the build side (`siglip_export.variants`).

What one export holds (its files, their hashes, signatures and parity) is recorded per export
in `manifest.json`, read into the typed records of `runtime.contract.manifest`.

numpy only: importing this module loads no runtime library (ONNX Runtime, OpenVINO, TensorRT
are imported by the runner that needs them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError

TOWERS = ("vision", "text")
TOWER_STEMS = {"vision": "vision_model", "text": "text_model"}
TOWER_LABELS = {"vision": "image", "text": "text"}  # for messages
OUTPUTS = ("last_hidden_state", "pooler_output")  # every artefact's outputs, in graph order

ONNX, OPENVINO, ENGINE = "onnx", "openvino", "engine"
FORMATS = (ONNX, OPENVINO, ENGINE)
# Runtime's provider names (plus "auto"): ONNX Runtime's CPU, CUDA and TensorRT providers, and
# "openvino", OpenVINO's CPU plugin, which runs ONNX files too.
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")
IMAGE_INPUTS = ("float32", "uint8")  # ArtefactKind.image_input


# --- runners ----------------------------------------------------------------------------------

@runtime_checkable
class Runner(Protocol):
    """What every loaded artefact offers: ONNX Runtime (`session.OnnxModel`), OpenVINO
    (`openvino_model.OpenVinoModel`) and TensorRT engines (`tensorrt_engine.TensorRTEngine`)."""

    path: Path
    provider: str  # what really runs, e.g. "CPUExecutionProvider", "OpenVINO CPU (bf16)"
    input_name: str
    input_shape: tuple  # the batch axis is a string
    input_dtype: np.dtype
    output_names: list[str]

    @property
    def max_batch(self) -> int | None: ...  # None: unbounded

    def run(self, x: np.ndarray, outputs=None) -> dict[str, np.ndarray]: ...  # outputs: names to fetch (None: all)


@dataclass(frozen=True)
class RunnerType:
    """A family of runners: how to load a file of a kind, and what to call it in messages."""

    name: str
    label: str  # "ONNX Runtime", "OpenVINO (CPU)"
    load: Callable[..., Runner]  # (path, kind, provider, threads, tensorrt, auto_providers) -> Runner
    fixed_device: bool = False  # the label already says where it runs


def _load_onnxruntime(path: Path, kind: ArtefactKind, provider: str, threads, tensorrt, auto) -> Runner:
    from ..runners.onnxruntime_model import OnnxModel

    return OnnxModel(path, provider=provider, threads=threads, tensorrt=tensorrt, auto_providers=auto)


def _load_openvino(path: Path, kind: ArtefactKind, provider: str, threads, tensorrt, auto) -> Runner:
    from ..runners.openvino_model import OpenVinoModel

    return OpenVinoModel(path, precision=kind.float_precision, threads=threads)


def _load_engine(path: Path, kind: ArtefactKind, provider: str, threads, tensorrt, auto) -> Runner:
    from ..runners.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(path)


RUNNERS = {
    "onnxruntime": RunnerType("onnxruntime", "ONNX Runtime", _load_onnxruntime),
    "openvino": RunnerType("openvino", "OpenVINO (CPU)", _load_openvino, fixed_device=True),
    "tensorrt": RunnerType("tensorrt", "TensorRT (GPU)", _load_engine, fixed_device=True),
}


# --- kinds ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArtefactKind:
    """One kind of artefact: everything the pipeline, runtime, Triton and benchmarks need to know.

    variant: the name users pass (`--variants`, `--variant`); None for the plain fp32 export.
    suffix: what follows the tower's stem in the file name (`.opt.onnx`).
    gate: default minimum row cosine of `pooler_output` against fp32 eager; None for the plain
        export, whose gate is the fp32 one (relative error and cosine on both outputs).
    providers: runtime providers it runs on, in the order `auto` tries them.
    builds_from: the variant whose file it is built from (None: the tower's export).
    aliases: other names `--variant` accepts for it when no kind of that name was published.
    shared_files: files its builds share, published beside the manifest (a TensorRT timing cache).
    float_precision: what a runner that is told (OpenVINO's inference precision hint) computes the
        float parts in: "bf16" where the CPU has it (else the runner falls back to f32), or "f32".
    image_input: what the image tower's `pixel_values` holds: "float32", normalised as
        `runtime.inputs.images` does it, or "uint8", the resized RGB image (N, 3, H, W) that the graph
        normalises itself (4x fewer bytes to copy to a GPU or send to a server).
    """

    variant: str | None
    suffix: str
    format: str
    precision: str
    runner: str
    providers: tuple[str, ...]
    gate: float | None
    towers: tuple[str, ...] = TOWERS
    builds_from: str | None = None
    aliases: tuple[str, ...] = ()
    shared_files: tuple[str, ...] = ()
    float_precision: str = "f32"
    image_input: str = "float32"
    description: str = ""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"artefact kind {self.variant!r}: unknown format {self.format!r}")
        if self.runner not in RUNNERS:
            raise ValueError(f"artefact kind {self.variant!r}: unknown runner {self.runner!r}")
        if not self.providers or any(p not in PROVIDERS for p in self.providers):
            raise ValueError(f"artefact kind {self.variant!r}: providers must be some of {PROVIDERS}")
        if any(t not in TOWERS for t in self.towers):
            raise ValueError(f"artefact kind {self.variant!r}: towers must be some of {TOWERS}")
        if self.image_input not in IMAGE_INPUTS or (self.image_input != "float32" and self.towers != ("vision",)):
            raise ValueError(f"artefact kind {self.variant!r}: image_input must be one of {IMAGE_INPUTS} "
                             f"(other than float32 for the image tower only)")

    @property
    def name(self) -> str:
        """For messages: the variant, or "plain"."""
        return self.variant or "plain"

    def file(self, tower: str) -> str:
        return TOWER_STEMS[tower] + self.suffix

    def applies_to(self, tower: str) -> bool:
        return tower in self.towers

    @property
    def made_for(self) -> str:
        """"the image tower", "the image and text towers": for messages."""
        return f"the {' and '.join(TOWER_LABELS[t] for t in self.towers)} tower{'s' if len(self.towers) > 1 else ''}"

    @property
    def runs_on(self) -> str:
        runner = RUNNERS[self.runner]
        return runner.label if runner.fixed_device else f"{runner.label} with provider {' or '.join(self.providers)}"


KINDS: dict[str | None, ArtefactKind] = {}


def register(kind: ArtefactKind) -> ArtefactKind:
    """Add a kind to the registry (its variant name must be new, and its files must not clash)."""
    if kind.variant in KINDS:
        raise ValueError(f"artefact kind {kind.name!r} is already registered")
    for other in KINDS.values():
        clash = [t for t in kind.towers if t in other.towers and other.file(t) == kind.file(t)]
        if clash:
            raise ValueError(f"artefact kind {kind.name!r} would write {kind.file(clash[0])}, as {other.name!r} does")
    KINDS[kind.variant] = kind
    return kind


def unregister(variant: str) -> None:
    """Remove a kind (tests register throw-away kinds)."""
    KINDS.pop(variant, None)


def kind_of(variant: str | None) -> ArtefactKind:
    try:
        return KINDS[variant]
    except KeyError:
        raise InputError(f"unknown variant {variant!r} (choose from {', '.join(variant_names())})") from None


def variant_names() -> tuple[str, ...]:
    """Every registered variant name, in registration order (the plain export is not a variant)."""
    return tuple(k for k in KINDS if k is not None)


_ONNX_ANYWHERE = ("tensorrt", "cuda", "cpu")  # runtime's historical auto order
_OPENVINO_CPU = ("cpu", "openvino")  # an OpenVINO IR: both names mean OpenVINO's CPU plugin
register(ArtefactKind(None, ".onnx", ONNX, "fp32", "onnxruntime", (*_ONNX_ANYWHERE, "openvino"), gate=None,
                      description="fp32, standard ONNX ops only: portable to any ONNX runtime"))
register(ArtefactKind("opt", ".opt.onnx", ONNX, "fp32", "onnxruntime", _ONNX_ANYWHERE, gate=0.99999,
                      description="fp32 with ONNX Runtime's fused Attention, SkipLayerNormalization, FastGelu"))
register(ArtefactKind("int8", ".int8.onnx", ONNX, "int8", "onnxruntime", ("cpu",), gate=0.99, builds_from="opt",
                      description="opt quantised dynamically, accuracy-aware: QAttention, MatMulInteger (CPU kernels)"))
# TensorRT after the CPU: its provider takes a QDQ graph only in INT8 mode, which TensorRTOptions
# does not set, so `auto` stops at the CPU and TensorRT runs it only when asked for.
register(ArtefactKind("int8-qdq", ".int8-qdq.onnx", ONNX, "int8", "onnxruntime", ("cuda", "cpu", "tensorrt", "openvino"),
                      gate=0.99, towers=("vision",),
                      description="static int8 in standard QuantizeLinear / DequantizeLinear form, accuracy-aware"))
register(ArtefactKind("fp16", ".fp16.onnx", ONNX, "fp16", "onnxruntime", _ONNX_ANYWHERE, gate=0.999,
                      description="fp16 weights and math, float32 IO; LayerNorm and Softmax in float32"))
register(ArtefactKind("ov-bf16", ".ov-bf16.xml", OPENVINO, "bf16", "openvino", _OPENVINO_CPU, gate=0.999,
                      float_precision="bf16",
                      description="OpenVINO IR run with bf16 inference precision (AMX / AVX-512-BF16 CPUs)"))
register(ArtefactKind("ov-int8", ".ov-int8.xml", OPENVINO, "int8", "openvino", _OPENVINO_CPU, gate=0.99,
                      towers=("vision",), float_precision="bf16",
                      description="OpenVINO IR quantised to int8 by NNCF, accuracy-aware (VNNI / AMX CPUs)"))
register(ArtefactKind("trt-fp16", ".fp16.engine", ENGINE, "fp16", "tensorrt", ("tensorrt",), gate=0.999,
                      towers=("vision",), builds_from="fp16", aliases=("fp16",),
                      shared_files=("tensorrt.timing_cache",),
                      description="TensorRT engine of the fp16 graph, bound to the GPU and TensorRT that built it"))
# For ONNX Runtime's CUDA provider: its GPU fusions, then fp16 (its own conversion, IO kept float32).
# The CPU runs it too (where the export gates it, and as auto's fall back); TensorRT's provider
# does not take the com.microsoft ops, so it is not listed.
register(ArtefactKind("cuda-fp16", ".cuda-fp16.onnx", ONNX, "fp16", "onnxruntime", ("cuda", "cpu"), gate=0.999,
                      towers=("vision",),
                      description="fp16 fused for the CUDA provider (Attention, SkipLayerNormalization, FastGelu)"))
register(ArtefactKind("cuda-fp16-u8", ".cuda-fp16-u8.onnx", ONNX, "fp16", "onnxruntime", ("cuda", "cpu"), gate=0.999,
                      towers=("vision",), builds_from="cuda-fp16", image_input="uint8",
                      description="cuda-fp16 taking the resized uint8 image; normalises in the graph"))
# Not a faster variant: the image tower with extra outputs (runtime.contract.layer_outputs), asked for with
# --hidden-states / --attention rather than --variants; its gate is the fp32 one, on every output.
register(ArtefactKind("features", ".features.onnx", ONNX, "fp32", "onnxruntime", (*_ONNX_ANYWHERE, "openvino"),
                      gate=None, towers=("vision",),
                      description="fp32 image tower with layer features and attention maps as extra outputs"))


def runtime_of(kind: ArtefactKind, provider: str) -> str:
    """Where a file of `kind` runs with `provider` (not "auto"): the key of its per-runtime gate.
    `onnxruntime-cpu`, `onnxruntime-cuda`, `onnxruntime-tensorrt`, `openvino-cpu`, `tensorrt`."""
    if kind.runner == "openvino" or provider == "openvino":
        return "openvino-cpu"
    if kind.runner == "tensorrt":
        return "tensorrt"
    return f"onnxruntime-{provider}"


def open_runner(kind: ArtefactKind, path: str | os.PathLike, *, provider: str = "auto", threads: int | None = None,
                tensorrt=None, auto_providers: tuple[str, ...] | None = None) -> Runner:
    """Load a file of `kind` with the runner that serves it. A provider the kind does not run on
    is refused (InputError naming both), never silently replaced. `auto_providers`: what `auto`
    may try, in order (default: the kind's providers)."""
    path = Path(path)
    if provider != "auto" and provider not in kind.providers:
        if provider not in PROVIDERS:
            raise InputError(f"unknown provider {provider!r} (choose from auto, {', '.join(PROVIDERS)})")
        raise InputError(f"{path.name} runs on {kind.runs_on}; provider {provider!r} does not apply "
                         f"(use {' or '.join(('auto', *kind.providers))})")
    runner = "openvino" if provider == "openvino" else kind.runner  # OpenVINO reads ONNX files too
    return RUNNERS[runner].load(path, kind, provider, threads, tensorrt, auto_providers or kind.providers)


__all__ = ["ArtefactKind", "ENGINE", "FORMATS", "IMAGE_INPUTS", "KINDS", "ONNX", "OPENVINO", "OUTPUTS", "PROVIDERS", "RUNNERS",
           "Runner", "RunnerType", "TOWERS", "TOWER_LABELS", "TOWER_STEMS", "kind_of", "open_runner", "register", "runtime_of",
           "unregister", "variant_names"]
