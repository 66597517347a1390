"""Portability: the exported .onnx files run in OpenVINO (CPU) and compute what PyTorch and ONNX
Runtime compute. Same file, another runtime: nothing is converted beforehand.

OpenVINO reads ONNX directly (`Core.read_model("vision_model.onnx")`). The int8 QDQ file is
gated in OpenVINO by the export itself (tests/test_quantization.py): how close its int8 result
comes depends on the CPU, so no fixed number is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import rel_err

from runtime.contract.parity import min_row_cosine as min_cosine
from runtime.inputs.images import ImageSettings, preprocess

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
OUTPUTS = ("last_hidden_state", "pooler_output")


def openvino_cpu(path: Path):
    """The model compiled for OpenVINO's CPU plugin at fp32.

    On CPUs with AMX or AVX-512-BF16 (the development machine has both) the CPU plugin's default
    inference precision is bf16, not f32: about 3 significant digits (rel err ~5e-3 here), a
    different computation from the fp32 artefact. The fp32 parity check asks for f32 explicitly;
    deployments that accept bf16 can drop the hint and gain speed.
    """
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", {ov.properties.hint.inference_precision: ov.Type.f32})


def run_openvino(compiled, x: np.ndarray) -> dict[str, np.ndarray]:
    result = compiled(x)
    return {name: np.asarray(result[compiled.output(name)]) for name in OUTPUTS}


def run_ort(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def photos32() -> np.ndarray:
    """The eight packaged photos preprocessed for the tiny model (32x32): float32 (8, 3, 32, 32)."""
    return preprocess(PHOTOS, ImageSettings(height=32, width=32))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_vision_model_fp32_parity_in_openvino(tiny_artefacts, photos32, batch):
    artefacts, hf = tiny_artefacts
    compiled = openvino_cpu(artefacts / "vision_model.onnx")  # one compiled model, any batch size
    assert compiled.input(0).get_partial_shape()[0].is_dynamic
    x = photos32[:batch]
    got = run_openvino(compiled, x)
    with torch.no_grad():
        eager = hf.vision_model(pixel_values=torch.from_numpy(x))
    reference = run_ort(artefacts / "vision_model.onnx", x)
    for name in OUTPUTS:
        assert got[name].shape == reference[name].shape
        assert rel_err(got[name], getattr(eager, name)) <= 1e-4, name
        assert rel_err(got[name], reference[name]) <= 1e-4, name


def test_text_model_fp32_parity_in_openvino(tiny_artefacts):
    artefacts, hf = tiny_artefacts
    compiled = openvino_cpu(artefacts / "text_model.onnx")
    ids = np.random.default_rng(0).integers(0, hf.config.text_config.vocab_size, size=(5, 16), dtype=np.int64)
    got = run_openvino(compiled, ids)
    with torch.no_grad():
        eager = hf.text_model(input_ids=torch.from_numpy(ids))
    reference = run_ort(artefacts / "text_model.onnx", ids)
    for name in OUTPUTS:
        assert rel_err(got[name], getattr(eager, name)) <= 1e-4, name
        assert rel_err(got[name], reference[name]) <= 1e-4, name


def test_bf16_default_is_what_the_f32_hint_avoids(tiny_artefacts, photos32):
    """Documents the CPU plugin's precision on this machine: without the hint, bf16 where the CPU has it."""
    artefacts, _ = tiny_artefacts
    core = ov.Core()
    default = core.compile_model(core.read_model(str(artefacts / "vision_model.onnx")), "CPU")
    precision = default.get_property(ov.properties.hint.inference_precision)
    reference = run_ort(artefacts / "vision_model.onnx", photos32)["pooler_output"]
    error = rel_err(run_openvino(default, photos32)["pooler_output"], reference)
    if precision == ov.Type.bf16:
        assert 1e-4 < error <= 5e-2  # bf16: 8 bits of mantissa
    else:
        assert error <= 1e-4


def test_runner_asks_for_f32_where_the_cpu_reports_no_bf16(tiny_artefacts, monkeypatch):
    """OpenVINO's own choice of precision follows the CPU it detects, which may differ from the
    capabilities it reports (a CPU without bf16 is emulated here by hiding BF16)."""
    from runtime.runners.openvino_model import OpenVinoModel

    artefacts, _ = tiny_artefacts
    reported = ov.Core.get_property

    def without_bf16(self, *args):
        value = reported(self, *args)
        return [c for c in value if c != "BF16"] if args[-1:] == ("OPTIMIZATION_CAPABILITIES",) else value

    monkeypatch.setattr(ov.Core, "get_property", without_bf16)
    model = OpenVinoModel(artefacts / "vision_model.onnx", precision="bf16")
    assert model.precision == "f32" and model.provider == "OpenVINO CPU (f32)"


@pytest.fixture(scope="module")
def variant_export(tmp_path_factory):
    from conftest import hf_model, tiny_config

    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("ov_variants")
    hf_model(tiny_config()).save_pretrained(base / "ckpt")
    run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "out", towers=("vision",),
                             variants=("opt", "int8", "fp16"), verify_batch_sizes=(2,)), emit=None)
    return base / "out"


def test_which_variants_openvino_reads(variant_export):
    """The 'Which artefact runs where' table's OpenVINO column, for the ONNX variants."""
    pixels = preprocess(PHOTOS[:3], ImageSettings(height=32, width=32))
    reference = run_ort(variant_export / "vision_model.onnx", pixels)
    opt = run_openvino(openvino_cpu(variant_export / "vision_model.opt.onnx"), pixels)  # com.microsoft fused ops
    assert rel_err(opt["last_hidden_state"], reference["last_hidden_state"]) <= 1e-4
    fp16 = run_openvino(openvino_cpu(variant_export / "vision_model.fp16.onnx"), pixels)
    assert rel_err(fp16["pooler_output"], reference["pooler_output"]) <= 1e-2
    assert min_cosine(fp16["pooler_output"], reference["pooler_output"]) >= 0.999
    # ORT's dynamic int8 is ONNX Runtime only where it holds com.microsoft.QAttention. The
    # accuracy-aware search may keep every attention in float on some CPU, or the gate may
    # reject the variant: each is a valid outcome, so the check follows what was published.
    import onnx

    from runtime.artefacts import Artefacts

    manifest = Artefacts(variant_export).manifest
    int8 = variant_export / "vision_model.int8.onnx"
    if not int8.is_file():
        assert "int8" in {r.variant for r in manifest.rejected}, "int8 neither published nor rejected"
        return
    if "QAttention" in {node.op_type for node in onnx.load(str(int8), load_external_data=False).graph.node}:
        with pytest.raises(Exception, match="QAttention"):
            openvino_cpu(int8)
