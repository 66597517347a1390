"""Graph simplification and the builders behind the faster variants.

Every function here writes a file; which kind of artefact it is (file name, precision, gate,
runner) is `runtime.contract`'s business, and whether it is published is decided by its gate
(`variants.py`, through `verify.py` and `runtime`). A variant that cannot be built on this
machine raises `VariantSkipped` (with the reason); one whose structure is wrong (a fusion that
did not happen) raises `VariantFailed`.
"""

from __future__ import annotations

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


def build_int8(opt_path: Path, out_path: Path, config) -> dict:
    """Dynamic int8 (weights per channel, activations quantised on the fly) on the fused graph.

    Quantising after fusion turns every Attention into QAttention (q/k/v in int8 too);
    quantising first would leave the fused q/k/v projection in fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(opt_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    if counts["QAttention"] != config.num_hidden_layers:
        raise VariantFailed(f"QAttention {counts['QAttention']} of {config.num_hidden_layers}")
    return {"quantized_ops": {op: counts[op] for op in ("QAttention", "MatMulInteger")}, "mode": "dynamic"}


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's static quantiser (its CalibrationDataReader protocol)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - not used by MinMax calibration
        pass


def build_int8_qdq(plain_path: Path, out_path: Path, input_name: str, calibration: list[np.ndarray]) -> dict:
    """Static int8 in QDQ form: standard QuantizeLinear / DequantizeLinear pairs, so runtimes other
    than ONNX Runtime (OpenVINO, TensorRT) can run it. Per-channel weights, per-tensor activations
    calibrated (min / max) on `calibration`; LayerNorm, Softmax and GELU stay in float.

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
    with quiet():
        quantize_static(str(plain_path), str(out_path), _Calibration(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=["MatMul"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    return {"mode": "static-qdq", "calibration_images": int(sum(len(b) for b in calibration)),
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


def build_openvino(plain_path: Path, out_xml: Path) -> dict:
    """OpenVINO IR of the plain graph; runtime runs it with a bf16 inference-precision hint."""
    try:
        import openvino as ov
    except ImportError:
        raise VariantSkipped("openvino is not installed (pip install -e '.[openvino]')") from None
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        raise VariantSkipped(f"this CPU has no bf16 support in OpenVINO (capabilities: {', '.join(capabilities)})")
    with quiet():
        ov.save_model(ov.convert_model(str(plain_path)), str(out_xml), compress_to_fp16=False)
    return {"openvino": ov.get_version(), "inference_precision": "bf16"}
