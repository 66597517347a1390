"""Graph simplification and the builders behind the faster variants.

Every function here writes a file; which kind of artefact it is (file name, precision, gate,
runner) is `runtime.contract`'s business, and whether it is published is decided by its gate
(`variants.py`, through `verify.py` and `runtime`). A variant that cannot be built on this
machine raises `VariantSkipped` (with the reason); one whose structure is wrong (a fusion that
did not happen) raises `VariantFailed`.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from .onnx_export import ExportError, quiet

# onnxsim passes that emit ONNX Runtime contrib ops (com.microsoft): the plain export must stay
# standard ONNX so OpenVINO, TensorRT and other runtimes read it. Fusion is the `opt` variant's job.
NON_PORTABLE_ONNXSIM_PASSES = ["fuse_attention", "fuse_gqa"]


class VariantSkipped(Exception):
    """This machine cannot build the variant (a missing library or GPU): the reason is the message."""


class VariantFailed(Exception):
    """The variant was built but is structurally wrong (e.g. a fusion did not happen)."""


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
    (issue 11 measured the unfused fp16 file, LayerNorm and Softmax in fp32 between Casts, no
    faster than fp32 on an H200)."""
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
    itself: each value is looked up in `table` (3, 256), runtime.preprocess.normalise_table, so
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


def build_int8(opt_path: Path, out_path: Path, keep_float: list[str] = ()) -> dict:
    """Dynamic int8 (weights per channel, activations quantised on the fly) on the fused graph;
    the nodes in `keep_float` stay in float (int8_search.py chooses them).

    Quantising after fusion turns every Attention into QAttention (q/k/v in int8 too);
    quantising first would leave the fused q/k/v projection in fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(opt_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=list(keep_float))
    attention = [n.name for n in onnx.load(str(opt_path), load_external_data=False).graph.node
                 if n.op_type == "Attention"]
    expected = len([a for a in attention if a not in keep_float])
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    if counts["QAttention"] != expected:
        raise VariantFailed(f"QAttention {counts['QAttention']} of {expected}")
    return {"quantized_ops": {op: counts[op] for op in ("QAttention", "MatMulInteger", "ConvInteger")},
            "mode": "dynamic"}


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's static quantiser (its CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - not used by MinMax calibration
        pass


def build_int8_qdq(plain_path: Path, out_path: Path, input_name: str, calibration: list[np.ndarray],
                   keep_float: list[str] = (), calibration_cache: Path | None = None) -> dict:
    """Static int8 in QDQ form: standard QuantizeLinear / DequantizeLinear pairs, so runtimes other
    than ONNX Runtime (OpenVINO, TensorRT) can run it. Per-channel weights, per-tensor activations
    calibrated (min / max) on `calibration`; LayerNorm, Softmax and GELU stay in float, and so do
    the MatMul / Gemm nodes in `keep_float` (int8_search.py chooses them). `calibration_cache`: a file ONNX
    Runtime writes the calibrated ranges to, and reads them from when it exists (the search builds
    the model several times from one calibration).

    The patch-embedding Conv stays in float too: its input is the raw pixels, whose per-tensor
    range calibrated on photos clips other inputs (measured on the base model, random weights:
    pooler cosine 0.970 with it quantised, 0.9993 without, on photos and on noise)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise VariantFailed("no calibration images")
    # Attention's score and mixing MatMuls (two activations) stay in float: about 5% of the
    # FLOPs at 196 tokens, and int8 error in the scores is amplified by the softmax (measured on
    # the `outliers` stress checkpoint, base size: quantising only those two took the pooler
    # cosine to 0.989).
    graph = onnx.load(str(plain_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    scores = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input[:2])]
    with quiet():
        quantize_static(str(plain_path), str(out_path), _Calibration(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[*keep_float, *scores],
                        calibration_cache_path=calibration_cache)
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    return {"mode": "static-qdq", "float_always": "attention score and mixing MatMuls (activation x activation)",
            "quantized_ops": {op: counts[op] for op in ("QuantizeLinear", "DequantizeLinear")}}


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


def _openvino(capability: str):
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
    ov = _openvino("BF16")
    with quiet():
        ov.save_model(ov.convert_model(str(plain_path)), str(out_xml), compress_to_fp16=False)
    return {"openvino": ov.get_version(), "inference_precision": "bf16"}


def openvino_int8_available() -> None:
    """VariantSkipped unless NNCF and OpenVINO with int8 on this CPU are there."""
    _openvino("INT8")
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise VariantSkipped("nncf is not installed (pip install -e '.[openvino]')") from None


def build_openvino_int8(source: Path, out_xml: Path, calibration: list[np.ndarray], keep_float: list[str] = ()) -> dict:
    """OpenVINO IR quantised to int8 by NNCF's post-training quantisation (transformer preset:
    per-channel weights, activations calibrated on `calibration`), with the ONNX nodes in
    `keep_float` left in float (int8_search.py chooses them; OpenVINO names a Gemm's product
    `<name>/WithoutBiases`)."""
    ov = _openvino("INT8")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # Attention's score and mixing products stay in float, as in the QDQ recipe (OpenVINO fuses
    # them into one ScaledDotProductAttention op).
    ignored = nncf.IgnoredScope(names=[n for k in keep_float for n in (k, f"{k}/WithoutBiases")],
                                types=["ScaledDotProductAttention"], validate=False)
    with quiet("nncf"), contextlib.redirect_stderr(io.StringIO()):  # NNCF draws progress bars
        # Measured on the base model, pooler cosine against fp32, all quantised: NNCF's own SmoothQuant
        # (its transformer default; int8_search applies SmoothQuant where it helps instead) took uniform
        # noise inputs from 0.999 to 0.963 on perturbed norms; activation ranges from the averaged
        # per-sample extremes (NNCF's default) rather than the global ones cost the `outliers` stress
        # checkpoint 0.924 -> 0.884 (the ranges clip its outlier tokens).
        advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
                                                  activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
        model = nncf.quantize(ov.convert_model(str(source)), nncf.Dataset(calibration),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                              ignored_scope=ignored, advanced_parameters=advanced)
        ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return {"openvino": ov.get_version(), "nncf": nncf.__version__, "mode": "static (NNCF, transformer preset)"}
