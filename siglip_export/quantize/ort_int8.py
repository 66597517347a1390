"""ONNX Runtime's int8 quantisers, as the int8 search drives them: dynamic int8 on the fused graph
(`int8`) and static int8 in QuantizeLinear / DequantizeLinear form (`int8-qdq`), each with the
nodes the search keeps in float left out (`keep_float`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from runtime.runners.environment import has_int8_dot_product

from ..graph.build_errors import VariantFailed
from ..graph.torch_export import op_counts, quiet


def build_int8(opt_path: Path, out_path: Path, keep_float: list[str] = ()) -> dict:
    """Dynamic int8 (weights per channel, activations quantised on the fly) on the fused graph;
    the nodes in `keep_float` stay in float (int8_search.py chooses them).

    Quantising after fusion turns every Attention into QAttention (q/k/v in int8 too);
    quantising first would leave the fused q/k/v projection in fp32.

    On a CPU without VNNI (AVX2 only), ONNX Runtime's u8 x s8 kernels add pairs of products in
    16 bits, which saturate with full-range int8 weights; the weights are then quantised to 7 bits
    (`reduce_range`), as ONNX Runtime's quantisation guide advises. Measured on the tiny test
    model on a 2-core AMD EPYC without AVX-512: every node quantised reached pooler cosine 0.84
    with 8-bit weights (the search then rejected it), 0.998 with 7-bit ones.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = not has_int8_dot_product()
    with quiet():
        quantize_dynamic(str(opt_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, nodes_to_exclude=list(keep_float))
    attention = [n.name for n in onnx.load(str(opt_path), load_external_data=False).graph.node
                 if n.op_type == "Attention"]
    expected = len([a for a in attention if a not in keep_float])
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    if counts["QAttention"] != expected:
        raise VariantFailed(f"QAttention {counts['QAttention']} of {expected}")
    return {"quantized_ops": {op: counts[op] for op in ("QAttention", "MatMulInteger", "ConvInteger")},
            "mode": "dynamic", "weight_bits": 7 if reduce_range else 8}


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
    reduce_range = not has_int8_dot_product()  # 7-bit weights where int8 products saturate (see build_int8)
    graph = onnx.load(str(plain_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    scores = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input[:2])]
    with quiet():
        quantize_static(str(plain_path), str(out_path), _Calibration(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=[*keep_float, *scores],
                        calibration_cache_path=calibration_cache, reduce_range=reduce_range)
    counts = op_counts(onnx.load(str(out_path), load_external_data=False))
    return {"mode": "static-qdq", "weight_bits": 7 if reduce_range else 8, "float_always": "attention score and mixing MatMuls (activation x activation)",
            "quantized_ops": {op: counts[op] for op in ("QuantizeLinear", "DequantizeLinear")}}


__all__ = ["build_int8", "build_int8_qdq"]
