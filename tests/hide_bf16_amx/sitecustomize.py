"""Hide bf16 from OpenVINO and AMX from oneDNN, to run the suite as on a CPU without them (AMD EPYC
with AVX-512 VNNI, whose OpenVINO CPU plugin reports FP32, INT8, BIN, EXPORT_IMPORT) on an Intel
machine with AMX. Not a test; run the suite with

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI PYTHONPATH=tests/hide_bf16_amx python -m pytest

Python imports this module at start-up in every process, subprocesses too. ONEDNN_MAX_CPU_ISA
makes OpenVINO's kernels the AVX-512 VNNI ones instead of AMX (OpenVINO's per-node counters then
name brgemm_avx512_I8, not brgemm_avx512_amx_I8). ONNX Runtime's kernels are not affected: this
is no substitute for running on such a CPU."""

try:
    import openvino as _ov
except Exception:  # noqa: BLE001 - no OpenVINO: nothing to hide
    _ov = None

if _ov is not None:
    _get_property = _ov.Core.get_property

    def _without_bf16(self, *args, **kwargs):
        value = _get_property(self, *args, **kwargs)
        if args[-1:] == ("OPTIMIZATION_CAPABILITIES",):
            return [c for c in value if c not in ("BF16", "FP16", "WINOGRAD")]
        return value

    _ov.Core.get_property = _without_bf16
