"""Faster variants behind accuracy gates: opt, int8, int8-qdq, fp16, ov-bf16, trt-fp16."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import hf_model, tiny_config

import export as export_cli
from runtime import ImageEncoder, InputError
from runtime.contract.manifest import Manifest
from runtime.runners.onnxruntime_model import OnnxModel
from siglip_export.pipeline import ExportOptions, run_export

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("variants") / "ckpt"
    hf_model(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    out = checkpoint.parent / "out"
    variants = ("opt", "int8", "fp16", "trt-fp16") + (("ov-bf16",) if HAVE_OPENVINO else ())
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=out, variants=variants), emit=None)
    return out, manifest


def by_file(manifest):
    return {a.file: a for a in manifest.artefacts}


def ov_bf16_published(manifest) -> bool:
    """OpenVINO builds ov-bf16 only where the CPU has bf16 (AMX or AVX-512-BF16); elsewhere the
    export must say why it skipped it."""
    if "vision_model.ov-bf16.xml" in by_file(manifest):
        return True
    if HAVE_OPENVINO:
        reasons = {s.file: s.reason for s in manifest.skipped}
        assert "no bf16 support" in reasons["vision_model.ov-bf16.xml"], reasons
    return False


def test_variants_published_within_their_gates(exported):
    out, manifest = exported
    arts = by_file(manifest)
    expected = {"opt": 0.99999, "int8": 0.99, "fp16": 0.999} | ({"ov-bf16": 0.999} if ov_bf16_published(manifest) else {})
    for tower in ("vision_model", "text_model"):
        for variant, gate in expected.items():
            file = f"{tower}.{variant}.{'xml' if variant == 'ov-bf16' else 'onnx'}"
            art = arts[file]
            assert (out / file).is_file() and art.variant == variant
            assert art.parity.gate.min_cosine == gate and art.parity.passed
            assert art.accuracy["pooler_output_min_cosine"] >= gate
            assert art.accuracy["last_hidden_state_rel_err"] > 0  # reported, not gated
            assert art.parity.batch_sizes == [1, 3, 8]
            for extra in art.external_data:
                assert (out / extra.file).is_file()
    assert arts["vision_model.int8.onnx"].precision == "int8"
    assert arts["vision_model.fp16.onnx"].precision == "fp16"
    assert manifest.rejected == []
    # Every file in the directory is recorded; nothing intermediate (raw exports) is left.
    assert {p.name for p in out.iterdir()} == manifest.owned_files()
    # What was published is what the manifest on disk says.
    assert Manifest.read(out).to_dict() == manifest.to_dict()


def test_fused_op_counts(exported):
    out, manifest = exported
    layers = tiny_config().vision_config.num_hidden_layers
    arts = by_file(manifest)
    assert arts["vision_model.opt.onnx"].build["fused_ops"] == {
        "Attention": layers, "SkipLayerNormalization": 2 * layers, "GELU": layers + 1, "FastGelu": layers + 1}
    assert arts["text_model.opt.onnx"].build["fused_ops"]["Attention"] == layers
    kept = arts["vision_model.int8.onnx"].build["search"]["kept_float"]  # what the int8 search left in float
    assert arts["vision_model.int8.onnx"].build["quantized_ops"]["QAttention"] == \
        layers - sum(1 for n in kept if n.startswith("Attention"))
    counts = {}
    for node in onnx.load(str(out / "vision_model.opt.onnx")).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    assert counts["Attention"] == layers and counts.get("Softmax", 0) == 1  # only the pooling head's


def test_batch_axis_symbolic_in_every_onnx_variant(exported):
    out, manifest = exported
    for art in manifest.records(format="onnx"):
        model = onnx.load(str(out / art.file), load_external_data=False)
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (art.file, value.name)
        assert model.graph.input[0].type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta.get("siglip.variant") == art.variant
        assert art.inputs[0].shape[0] == "batch"


def test_plain_export_is_portable_standard_onnx(exported):
    out, _ = exported
    for name in ("vision_model.onnx", "text_model.onnx", "vision_model.fp16.onnx"):
        model = onnx.load(str(out / name), load_external_data=False)
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name
        assert [o.domain for o in model.opset_import] == [""], name


def test_runtime_runs_every_variant(exported):
    out, manifest = exported
    reference = ImageEncoder(out, provider="cpu").embed(PHOTOS[:4], normalize=True)
    ov = {"ov-bf16": 0.999} if ov_bf16_published(manifest) else {}
    for variant, gate in {"opt": 0.99999, "int8": 0.99, "fp16": 0.999, **ov}.items():
        encoder = ImageEncoder(out, variant=variant, provider="cpu")
        vectors = encoder.embed(PHOTOS[:4], normalize=True)
        assert (vectors * reference).sum(axis=1).min() >= gate, variant
    ids = np.ones((2, 16), np.int64)
    plain = OnnxModel(out / "text_model.onnx").run(ids)["pooler_output"]
    int8 = OnnxModel(out / "text_model.int8.onnx").run(ids)["pooler_output"]
    cos = (plain * int8).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(int8, axis=1)
    assert cos.min() >= 0.99


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the skip path on machines without TensorRT")
def test_tensorrt_variant_skipped_with_reason(exported):
    out, manifest = exported
    skipped = {s.file: s for s in manifest.skipped}
    assert "tensorrt" in skipped["vision_model.fp16.engine"].reason
    assert not (out / "vision_model.fp16.engine").exists()


@pytest.mark.skipif(HAVE_OPENVINO, reason="checks the skip path on machines without OpenVINO")
def test_openvino_variant_skipped_without_openvino(checkpoint, tmp_path):
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("vision",),
                                        variants=("ov-bf16",), verify_batch_sizes=(2,)), emit=None)
    assert "openvino is not installed" in manifest.skipped[0].reason


def test_impossible_gates_reject_and_others_still_publish(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = export_cli.main(["--checkpoint", str(checkpoint), "--output-dir", str(out), "--towers", "vision",
                            "--variants", "opt,int8,fp16", "--gate", "int8=1.0", "--gate", "fp16=1.0",
                            "--verify-batch-sizes", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    rejected = {r["file"]: r for r in manifest["rejected"]}
    assert set(rejected) == {"vision_model.int8.onnx", "vision_model.fp16.onnx"}
    for file in rejected:
        assert not (out / file).exists()
    # fp16 is built, then misses the gate; int8's search finds no int8 file that could reach it.
    assert rejected["vision_model.fp16.onnx"]["accuracy"]["pooler_output_min_cosine"] < 1.0
    assert "WARNING: vision_model.fp16.onnx not published: min cosine" in printed
    assert rejected["vision_model.int8.onnx"]["reason"].startswith("int8 search: keeping the ")
    assert "< target 1.000000" in rejected["vision_model.int8.onnx"]["reason"]
    assert "WARNING: vision_model.int8.onnx not published: int8 search" in printed
    assert {a["file"] for a in manifest["artefacts"]} == {"vision_model.onnx", "vision_model.opt.onnx"}


def test_incomplete_fusion_is_rejected_with_counts(checkpoint, tmp_path, monkeypatch):
    import siglip_export.graph.float_builders as float_builders

    monkeypatch.setattr(float_builders, "_expected_fusions",
                        lambda config, tower: {"Attention": 99, "SkipLayerNormalization": 4, "GELU": 3})
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("vision",),
                                        variants=("opt", "int8"), verify_batch_sizes=(2,)), emit=None)
    reasons = {r.file: r.reason for r in manifest.rejected}
    assert reasons["vision_model.opt.onnx"] == "fusion incomplete: Attention 2 of 99"
    assert reasons["vision_model.int8.onnx"] == reasons["vision_model.opt.onnx"]  # int8 is built on opt
    assert [a.file for a in manifest.artefacts] == ["vision_model.onnx"]


def test_int8_qdq_uses_calibration_images(checkpoint, tmp_path):
    calibration = tmp_path / "calib"
    calibration.mkdir()
    for photo in PHOTOS[:3]:
        (calibration / photo.name).write_bytes(photo.read_bytes())
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("vision",),
                                        variants=("int8-qdq",), gates={"int8-qdq": -1.0}, verify_batch_sizes=(2,),
                                        calibration_images=calibration), emit=None)
    art = by_file(manifest)["vision_model.int8-qdq.onnx"]
    assert art.build["calibration_inputs"] == 3
    assert art.build["calibration_random"] == 2
    assert art.build["quantized_ops"]["QuantizeLinear"] > 0
    model = onnx.load(str(tmp_path / "o" / "vision_model.int8-qdq.onnx"))
    assert {n.domain for n in model.graph.node} <= {""}  # QDQ: standard ops only, portable


@pytest.mark.parametrize("args, message", [
    (["--variants", "turbo"], "unknown variant 'turbo'"),
    (["--variants", "int8", "--gate", "int9=0.9"], "unknown variant 'int9'"),
    (["--variants", "int8", "--gate", "int8=2"], "int8=2.0: a minimum cosine must lie in [-1, 1]"),
    (["--variants", "trt-fp16", "--trt-profile", "8,1,64"], "--trt-profile 8,1,64"),
    (["--variants", "trt-fp16", "--trt-profile", "1,8"], "three batch sizes"),
    (["--variants", "int8-qdq", "--calibration-images", "/nonexistent"], "/nonexistent is not a directory"),
])
def test_bad_variant_flags_exit_2(args, message, tmp_path, capsys):
    try:
        code = export_cli.main(["--output-dir", str(tmp_path / "o"), *args])
    except SystemExit as exc:  # argparse-level errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_artefacts_know_which_tower_has_which_variant(exported):
    from runtime.artefacts import Artefacts

    out, manifest = exported
    artefacts = Artefacts(out)
    assert artefacts.has_variant("vision", "int8") and artefacts.has_variant("text", "int8")
    assert not artefacts.has_variant("text", "int8-qdq")  # image-only: the classifier's text side stays fp32
    engine_built = manifest.find("vision", "trt-fp16") is not None  # only with TensorRT and a GPU
    assert artefacts.has_variant("vision", "trt-fp16") == engine_built


def test_opset_20_exports_native_gelu_and_still_fuses(checkpoint, tmp_path):
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("vision",), opset=20,
                                        variants=("opt",), verify_batch_sizes=(2,)), emit=None)
    fused = by_file(manifest)["vision_model.opt.onnx"].build["fused_ops"]
    assert fused["Attention"] == 2 and fused["GELU"] == 3 and fused.get("FastGelu", 0) == 0  # BiasGelu instead
    assert by_file(manifest)["vision_model.opt.onnx"].opset == 20


def test_image_only_variants_are_reported_skipped_for_the_text_tower(checkpoint, tmp_path):
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("text",),
                                        variants=("int8-qdq", "trt-fp16"), verify_batch_sizes=(2,)), emit=None)
    skipped = {s.file: s.reason for s in manifest.skipped}
    assert skipped == {"text_model.int8-qdq.onnx": "int8-qdq is made for the image tower only",
                       "text_model.fp16.engine": "trt-fp16 is made for the image tower only"}


def test_a_variant_that_crashes_is_rejected_and_the_rest_published(checkpoint, tmp_path, monkeypatch):
    from siglip_export.variants import builders

    def broken(path):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(builders, "build_fp16", broken)
    manifest = run_export(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path / "o", towers=("vision",),
                                        variants=("fp16", "opt"), verify_batch_sizes=(2,)), emit=None)
    assert manifest.rejected[0].reason == "build failed: RuntimeError: converter exploded"
    assert [a.file for a in manifest.artefacts] == ["vision_model.onnx", "vision_model.opt.onnx"]


def test_runtime_refuses_a_provider_that_does_not_apply(exported):
    out, manifest = exported
    if ov_bf16_published(manifest):
        with pytest.raises(InputError, match=r"vision_model.ov-bf16.xml runs on OpenVINO \(CPU\); provider 'cuda'"):
            ImageEncoder(out, variant="ov-bf16", provider="cuda")
    # The registry says int8 (QAttention, MatMulInteger) runs on ONNX Runtime's CPU kernels only.
    with pytest.raises(InputError, match=r"vision_model.int8.onnx runs on ONNX Runtime with provider cpu; "
                                         r"provider 'tensorrt' does not apply \(use auto or cpu\)"):
        ImageEncoder(out, variant="int8", provider="tensorrt")
    with pytest.raises(InputError, match="variant 'int8' needs an artefact directory"):
        ImageEncoder(out / "vision_model.onnx", variant="int8")
