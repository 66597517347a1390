"""torch -> ONNX for one tower, with a symbolic batch axis named `batch`.

Exporter: torch.onnx's dynamo exporter (`torch.export` + onnxscript), the maintained one
since PyTorch 2.9; the TorchScript exporter is deprecated. With the model's explicit
softmax attention (`fused_attn=False`) it emits plain MatMul / Softmax / LayerNormalization
nodes that ONNX Runtime's optimiser fuses into `Attention` (one per encoder layer), and every
non-batch dimension stays a concrete number.

Opset: 18 by default. LayerNormalization is native from opset 17 (below that it is a chain of
ReduceMean / Sub / Pow / Sqrt nodes that is slower and drifts in fp16); 18 is the opset the
dynamo exporter writes natively, so no version conversion runs, and every ONNX Runtime
release since 1.14, TensorRT 8.6+ and OpenVINO 2023+ read it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from runtime.contract.kinds import KINDS, OUTPUTS
from runtime.contract.manifest import TensorInfo
from runtime.errors import UserError

from ..model.modeling_siglip import SiglipTextTransformer, SiglipVisionTransformer
from .build_errors import ExportError

DEFAULT_OPSET = 18
MIN_OPSET = 17
# The newest opset tested end to end here (ONNX Runtime 1.32 runs 17..25); runtimes older than
# ONNX Runtime 1.20 / TensorRT 10 may not read above 21, so 18 stays the default.
MAX_OPSET = 23
BATCH = "batch"
# Bytes of initializers above which weights go beside the model: protobuf cannot serialise a
# message over 2 GiB, and the graph itself adds a little.
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1_800_000_000

OUTPUT_NAMES = OUTPUTS  # the contract's output names, in graph order

# onnxsim passes that emit ONNX Runtime contrib ops (com.microsoft): the plain export must stay
# standard ONNX so OpenVINO, TensorRT and other runtimes read it. Fusion is the `opt` variant's job.
NON_PORTABLE_ONNXSIM_PASSES = ["fuse_attention", "fuse_gqa"]


@dataclass(frozen=True)
class TowerSpec:
    """What one tower's artefact looks like: the contract's file and tensor names."""

    name: str  # "vision" | "text"
    input_name: str  # pixel_values | input_ids
    input_dtype: str  # numpy dtype name
    input_shape: tuple  # with BATCH for the batch axis

    @property
    def file(self) -> str:
        """The plain export's file name (vision_model.onnx | text_model.onnx), from the contract."""
        return KINDS[None].file(self.name)


def tower_spec(tower: SiglipVisionTransformer | SiglipTextTransformer) -> TowerSpec:
    inner = getattr(tower, "tower", None)  # a wrapper with extra outputs (features.VisionFeatures)
    if isinstance(inner, SiglipVisionTransformer):
        return tower_spec(inner)
    if isinstance(tower, SiglipVisionTransformer):
        c = tower.config
        return TowerSpec("vision", "pixel_values", "float32",
                         (BATCH, c.num_channels, c.image_size, c.image_size))
    if isinstance(tower, SiglipTextTransformer):
        # The text tower is trained on sequences padded to full length and pools the last token,
        # so the sequence axis is fixed at max_position_embeddings rather than dynamic.
        return TowerSpec("text", "input_ids", "int64",
                         (BATCH, tower.config.max_position_embeddings))
    raise TypeError(f"not a SigLIP tower: {type(tower).__name__}")


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"unsupported opset {opset!r}: choose {MIN_OPSET}..{MAX_OPSET} "
            f"({MIN_OPSET} is the first with a native LayerNormalization; default {DEFAULT_OPSET})"
        )
    return opset


def example_input(spec: TowerSpec, batch: int, seed: int = 0) -> torch.Tensor:
    """A tracing input. Batch 2, not 1, so no size-1 broadcast can be baked into the graph."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spec.input_shape[1:])
    if spec.input_dtype == "int64":
        return torch.randint(0, 2, shape, generator=gen, dtype=torch.int64)
    return torch.randn(shape, generator=gen)


@contextlib.contextmanager
def quiet(*logger_names: str):
    """Exporters, optimisers and quantisers print and warn freely; keep the pipeline's output readable.

    Silences the root logger and the named ones, warnings and stdout for the duration."""
    loggers = [logging.getLogger(n) for n in ("", *logger_names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_tower(
    tower: SiglipVisionTransformer | SiglipTextTransformer, opset: int = DEFAULT_OPSET,
    output_names: tuple[str, ...] = OUTPUT_NAMES, fused_attention: bool = False,
) -> onnx.ModelProto:
    """Export one tower to an in-memory ONNX model with the contract's names and a `batch` axis.
    `output_names`: the module's outputs in order (the contract's two, then any extras).

    The tower runs its explicit-softmax attention for the export (what ONNX Runtime's fusions
    match) and is restored afterwards; `fused_attention=True` keeps scaled_dot_product_attention,
    which opset 23 exports as the standard Attention op (benchmarks/attention_route.py).
    """
    check_opset(opset)
    spec = tower_spec(tower)
    attention = [m for m in tower.modules() if hasattr(m, "fused_attn")]
    previous = [m.fused_attn for m in attention]
    for m in attention:
        m.fused_attn = fused_attention
    batch = torch.export.Dim(BATCH, min=1, max=4096)
    try:
        with torch.no_grad(), quiet("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            program = torch.onnx.export(
                tower.eval(),
                (example_input(spec, batch=2),),
                dynamo=True,
                input_names=[spec.input_name],
                output_names=list(output_names),
                dynamic_shapes={spec.input_name: {0: batch}},
                opset_version=opset,
                optimize=True,
                external_data=False,
            )
    finally:
        for m, flag in zip(attention, previous):
            m.fused_attn = flag
    model = program.model_proto
    name_batch_axis(model, spec, output_names)
    return model


def name_batch_axis(model: onnx.ModelProto, spec: TowerSpec, output_names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """Check the exported graph's input and output names, and name their axis 0 `batch`."""
    ios = [i for i in model.graph.input if i.name == spec.input_name] + list(model.graph.output)
    if [i.name for i in ios] != [spec.input_name, *output_names]:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in model.graph.input]} and outputs "
            f"{[o.name for o in model.graph.output]}, expected {spec.input_name} -> {list(output_names)}"
        )
    ensure_batch_axis(model, spec.input_name)


def ensure_batch_axis(model: onnx.ModelProto, input_name: str) -> None:
    """Make axis 0 of the input and every output the symbolic `batch` (tools that rewrite graphs
    sometimes rename it); a constant there is an error."""
    for value in [*(i for i in model.graph.input if i.name == input_name), *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_value:
            raise ExportError(f"{value.name}: the batch axis became the constant {dim.dim_value}")
        dim.dim_param = BATCH


def batch_axis_is_symbolic(model: onnx.ModelProto) -> list[str]:
    """The inputs / outputs whose first axis is not the symbolic `batch` (empty when all are)."""
    bad = []
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param != BATCH or dims[0].dim_value:
            bad.append(value.name)
    return bad


def io_signature(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs): names, dtypes and shapes (symbolic axes as strings) of the graph's IO."""

    def describe(value) -> TensorInfo:
        t = value.type.tensor_type
        return TensorInfo(name=value.name, dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name,
                          shape=[d.dim_param or d.dim_value for d in t.shape.dim])

    initializers = {i.name for i in model.graph.initializer}
    return ([describe(i) for i in model.graph.input if i.name not in initializers],
            [describe(o) for o in model.graph.output])


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(
        len(t.raw_data) or np.prod(t.dims, dtype=np.int64) * 4 for t in model.graph.initializer
    )


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add (or replace) ONNX `metadata_props`; runtimes read them without this package."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def save_model(model: onnx.ModelProto, path: Path, external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD) -> list[str]:
    """Write `model` to `path`; weights go to `<file>.data` beside it when they exceed the threshold.

    Returns the external data file names (relative to the model's directory), empty when inline.
    """
    path = Path(path)
    if initializer_bytes(model) <= external_data_threshold:
        onnx.save_model(model, str(path))
        return []
    location = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    # onnx creates the data file private (0600); a server running as another user (a Triton
    # container) must read it like the model: give it the model file's permissions.
    (path.parent / location).chmod(path.stat().st_mode & 0o777)
    return [location]


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def non_standard_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})


def simplify_portable(path: Path) -> onnx.ModelProto:
    """onnxsim, restricted to standard ONNX ops (see NON_PORTABLE_ONNXSIM_PASSES)."""
    import onnxsim

    model, ok = onnxsim.simplify(str(path), check_n=0, certify=False, skipped_optimizers=NON_PORTABLE_ONNXSIM_PASSES)
    if not ok:
        raise ExportError(f"onnxsim could not validate the simplified {path.name}")
    foreign = non_standard_ops(model)
    if foreign:
        raise ExportError(f"onnxsim introduced non-standard ops into {path.name}: {', '.join(foreign)}")
    return model
