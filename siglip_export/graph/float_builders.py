"""The float variants' graphs: ONNX Runtime's fusions (`opt`, `cuda-fp16`), fp16, a uint8 input
normalised in the graph, and the OpenVINO IR (`ov-bf16`).

Which kind of artefact each is (file name, precision, gate, runner) is `runtime.contract`'s
business, and whether it is published is decided by its gate (`siglip_export.variants`, through
`siglip_export.verify` and `runtime`). A variant that cannot be built on this machine raises
`VariantSkipped` (with the reason); one whose structure is wrong (a fusion that did not happen)
raises `VariantFailed`. The int8 builders are in `siglip_export.quantize`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .build_errors import VariantFailed, VariantSkipped
from .torch_export import op_counts, quiet

GELU_OPS = ("FastGelu", "BiasGelu", "Gelu")  # ORT fuses the tanh GELU to FastGelu below opset 20,
# and the native Gelu that opset 20+ exports to BiasGelu


def _expected_fusions(config, tower: str) -> dict[str, int]:
    layers = config.num_hidden_layers
    # Two residual adds + norms per layer; one GELU per MLP (the image tower's pooling head has one more).
    return {"Attention": layers, "SkipLayerNormalization": 2 * layers,
            "GELU": layers + (1 if tower == "vision" else 0)}


def _check_fusions(model: onnx.ModelProto, config, tower: str) -> dict[str, int]:
    """The fused-op counts, or VariantFailed when one Attention per layer (and its norms and
    GELUs) did not fuse."""
    counts = op_counts(model)
    counts["GELU"] = sum(counts[op] for op in GELU_OPS)
    expected = _expected_fusions(config, tower)
    fused = {op: counts[op] for op in expected}
    missing = {op: (fused[op], n) for op, n in expected.items() if fused[op] != n}
    if missing:
        raise VariantFailed("fusion incomplete: " + ", ".join(f"{op} {got} of {want}" for op, (got, want) in missing.items()))
    return {**fused, **{op: counts[op] for op in GELU_OPS if counts[op]}}


def _ort_fusions(raw_path: Path, config, use_gpu: bool):
    """ONNX Runtime's transformer optimiser (an onnxruntime.transformers OnnxModel) on the raw export."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(str(raw_path), model_type="clip", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=0, use_gpu=use_gpu)
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # save_model_to_file would add it
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return optimized


def build_opt(raw_path: Path, config, tower: str) -> tuple[onnx.ModelProto, dict]:
    """ONNX Runtime's transformer fusions on the raw (unsimplified) export.

    The raw export is used because onnxsim's rewrites (q/k/v projections merged into one
    MatMul + Split, folded reshapes) hide the pattern ORT's attention fusion matches. The
    counts are checked: one Attention per encoder layer, or the variant fails.
    """
    model = _ort_fusions(raw_path, config, use_gpu=False).model
    return model, {"fused_ops": _check_fusions(model, config, tower)}


def float32_products(model: onnx.ModelProto) -> list[str]:
    """MatMul / Gemm / Attention nodes with an input that is not float16 (or whose type the
    graph's value_info does not say): what an fp16 graph must not have."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Attention")
            and any(types.get(i) != onnx.TensorProto.FLOAT16 for i in n.input if i)]


def build_cuda_fp16(raw_path: Path, config) -> tuple[onnx.ModelProto, dict]:
    """The image tower for ONNX Runtime's CUDA provider: the transformer optimiser's GPU fusions
    on the raw export (one Attention per layer, SkipLayerNormalization, FastGelu), then its own
    fp16 conversion with float32 inputs and outputs.

    Nothing is kept in float32: LayerNormalization, SkipLayerNormalization and Softmax run in
    fp16 with fp32 accumulation in ONNX Runtime's CUDA kernels, so the only Casts are the input's
    and the outputs'. Checked: the fusions, no product left in float32, and that Cast bound
    (the unfused fp16 file, LayerNorm and Softmax in fp32 between Casts, measured no faster than
    fp32 on an H200)."""
    optimized = _ort_fusions(raw_path, config, use_gpu=True)
    fused = _check_fusions(optimized.model, config, "vision")
    with quiet():
        optimized.convert_float_to_float16(keep_io_types=True)
    model = optimized.model
    left = float32_products(model)
    if left:
        raise VariantFailed(f"{len(left)} products left in float32 (first: {left[0]})")
    casts = op_counts(model)["Cast"]
    bound = len(model.graph.input) + len(model.graph.output)
    if casts > bound:
        raise VariantFailed(f"{casts} Cast nodes, more than the inputs' and outputs' {bound}")
    return model, {"fused_ops": fused, "casts": casts, "conversion": "onnxruntime float16, keep_io_types"}


def with_uint8_input(model: onnx.ModelProto, input_name: str, table: np.ndarray) -> onnx.ModelProto:
    """The same graph taking `input_name` as uint8 (N, 3, H, W) images and normalising them
    itself: each value is looked up in `table` (3, 256), runtime.inputs.images.normalise_table, so
    the tower sees bit for bit the float32 input the host would have made."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    source = next(i for i in graph.input if i.name == input_name)
    if source.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise VariantFailed(f"{input_name} is not float32; cannot put a uint8 input in front of it")
    normalised = f"{input_name}_normalised"
    for node in graph.node:
        node.input[:] = [normalised if i == input_name else i for i in node.input]
    prefix = "uint8_input/"
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(table, np.float32).reshape(-1), prefix + "table"),
        numpy_helper.from_array(np.arange(3, dtype=np.int32).reshape(1, 3, 1, 1) * 256, prefix + "channel_offset"),
    ])
    lookup = [
        helper.make_node("Cast", [input_name], [prefix + "index"], to=TensorProto.INT32, name=prefix + "cast"),
        helper.make_node("Add", [prefix + "index", prefix + "channel_offset"], [prefix + "row"], name=prefix + "offset"),
        helper.make_node("Gather", [prefix + "table", prefix + "row"], [normalised], axis=0, name=prefix + "lookup"),
    ]
    nodes = lookup + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    source.type.tensor_type.elem_type = TensorProto.UINT8
    return model


def build_fp16(plain_path: Path) -> tuple[onnx.ModelProto, dict]:
    """fp16 weights and arithmetic with float32 inputs and outputs.

    LayerNormalization and Softmax stay in float32: their reductions lose the most in fp16 and
    are where half-precision SigLIP conversions are reported to collapse.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    blocked = ["LayerNormalization", "Softmax"]
    with quiet():
        model = convert_float_to_float16(onnx.load(str(plain_path)), keep_io_types=True, op_block_list=blocked)
    # The converter inserts one Cast per use of a shared fp32 tensor, all identical; keep one.
    seen, unique = set(), []
    for node in model.graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            unique.append(node)
    del model.graph.node[:]
    model.graph.node.extend(unique)
    return model, {"kept_in_fp32": blocked}


def openvino_for(capability: str):
    """The openvino module, or VariantSkipped when it is missing or the CPU lacks `capability`."""
    try:
        import openvino as ov
    except ImportError:
        raise VariantSkipped("openvino is not installed (pip install -e '.[openvino]')") from None
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if capability not in capabilities:
        raise VariantSkipped(f"this CPU has no {capability.lower()} support in OpenVINO "
                             f"(capabilities: {', '.join(capabilities)})")
    return ov


def build_openvino(plain_path: Path, out_xml: Path) -> dict:
    """OpenVINO IR of the plain graph; runtime runs it with a bf16 inference-precision hint."""
    ov = openvino_for("BF16")
    with quiet():
        ov.save_model(ov.convert_model(str(plain_path)), str(out_xml), compress_to_fp16=False)
    return {"openvino": ov.get_version(), "inference_precision": "bf16"}


__all__ = ["GELU_OPS", "build_cuda_fp16", "build_fp16", "build_openvino", "build_opt", "float32_products",
           "openvino_for", "with_uint8_input"]
