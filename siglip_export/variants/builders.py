"""One builder per faster kind of `runtime.contract.kinds.KINDS`: each writes its kind's file into
the scratch directory and returns a `Built`. Registered on import (`siglip_export.variants`)."""

from __future__ import annotations

from pathlib import Path

import onnx

from runtime.contract.kinds import ArtefactKind
from runtime.inputs.images import normalise_table
from runtime.runners.tensorrt_engine import metadata_path

from ..graph.build_errors import VariantSkipped
from ..graph.float_builders import build_cuda_fp16, build_fp16, build_openvino, build_opt, with_uint8_input
from ..graph.tensorrt_build import build_engine, tensorrt_available
from ..graph.torch_export import op_counts
from ..quantize.int8_search import DYNAMIC_OPS, OPENVINO_OPS, STATIC_OPS
from ..quantize.nncf_int8 import build_openvino_int8, openvino_int8_available
from ..quantize.ort_int8 import build_int8, build_int8_qdq
from .registry import Built, VariantBuilder, builder


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
