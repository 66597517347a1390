"""OpenVINO int8 by NNCF's post-training quantisation (`ov-int8`), with the nodes the int8 search
keeps in float in NNCF's ignored scope."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from runtime.runners.environment import has_int8_dot_product

from ..graph.build_errors import VariantSkipped
from ..graph.float_builders import openvino_for
from ..graph.torch_export import quiet


def import_nncf():
    """nncf, with its usage telemetry off unless SIGLIP_EXPORT_NNCF_TELEMETRY=1. NNCF sends usage
    events by default (no consent file counts as consent) from a forked process; where the network
    does not answer, that process outlives the export holding its stdout, so `export.py | tee log`,
    CI logs and a parent reading the output wait on it (seen here: a test's subprocess hung for
    10 minutes). NNCF_CI is NNCF's own switch for that telemetry and nothing else."""
    if os.environ.get("SIGLIP_EXPORT_NNCF_TELEMETRY") != "1":
        os.environ.setdefault("NNCF_CI", "1")
    import nncf

    return nncf


def openvino_int8_available() -> None:
    """VariantSkipped unless NNCF and OpenVINO with int8 on this CPU are there."""
    openvino_for("INT8")
    try:
        import_nncf()
    except ImportError:
        raise VariantSkipped("nncf is not installed (pip install -e '.[openvino]')") from None


def build_openvino_int8(source: Path, out_xml: Path, calibration: list[np.ndarray], keep_float: list[str] = ()) -> dict:
    """OpenVINO IR quantised to int8 by NNCF's post-training quantisation (transformer preset:
    per-channel weights, activations calibrated on `calibration`), with the ONNX nodes in
    `keep_float` left in float (int8_search.py chooses them; OpenVINO names a Gemm's product
    `<name>/WithoutBiases`)."""
    ov = openvino_for("INT8")
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
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
        # Where the CPU has no VNNI, OpenVINO's int8 kernels saturate as ONNX Runtime's do
        # (ort_int8.build_int8): NNCF's overflow fix then quantises every weight to 7 bits, not the
        # first layer's alone (its default).
        overflow = OverflowFix.FIRST_LAYER if has_int8_dot_product() else OverflowFix.ENABLE
        advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
                                                  activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                                  overflow_fix=overflow)
        model = nncf.quantize(ov.convert_model(str(source)), nncf.Dataset(calibration),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                              ignored_scope=ignored, advanced_parameters=advanced)
        ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return {"openvino": ov.get_version(), "nncf": nncf.__version__, "mode": "static (NNCF, transformer preset)",
            "overflow_fix": overflow.value}


__all__ = ["build_openvino_int8", "openvino_int8_available"]
