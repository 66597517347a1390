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


def build_opt(raw_path: Path, config, tower: str) -> tuple[onnx.ModelProto, dict]:
    """ONNX Runtime's transformer fusions on the raw (unsimplified) export.

    The raw export is used because onnxsim's rewrites (q/k/v projections merged into one
    MatMul + Split, folded reshapes) hide the pattern ORT's attention fusion matches. The
    counts are checked: one Attention per encoder layer, or the variant fails.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(str(raw_path), model_type="clip", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=0)
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # save_model_to_file would add it
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    counts = op_counts(model)
    counts["GELU"] = sum(counts[op] for op in GELU_OPS)
    expected = _expected_fusions(config, tower)
    fused = {op: counts[op] for op in expected}
    missing = {op: (fused[op], n) for op, n in expected.items() if fused[op] != n}
    if missing:
        raise VariantFailed("fusion incomplete: " + ", ".join(f"{op} {got} of {want}" for op, (got, want) in missing.items()))
    return model, {"fused_ops": {**fused, **{op: counts[op] for op in GELU_OPS if counts[op]}}}


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
    return {"mode": "static-qdq", "calibration_images": int(sum(len(b) for b in calibration)),
            "float_always": "attention score and mixing MatMuls (activation x activation)",
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
    return {"openvino": ov.get_version(), "nncf": nncf.__version__, "mode": "static (NNCF, transformer preset)",
            "calibration_images": len(calibration)}
