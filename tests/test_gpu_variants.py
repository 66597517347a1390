"""The artefacts for ONNX Runtime's CUDA provider, checked on the CPU: the fused fp16 image
tower (`cuda-fp16`), the one that takes uint8 images (`cuda-fp16-u8`), and the runtime's bound
buffers and output selection. What needs a GPU carries the `gpu` marker."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import hf_model, tiny_config
from onnx import TensorProto, helper

from runtime import ImageEncoder, InputError
from runtime.contract.kinds import KINDS
from runtime.inputs.images import ImageSettings, normalise_table, preprocess, resized
from runtime.runners.environment import nvidia_driver_present
from runtime.runners.onnxruntime_model import OnnxModel
from runtime.serving.model_config import tensor_block
from siglip_export.graph.float_builders import float32_products, with_uint8_input
from siglip_export.graph.torch_export import op_counts
from siglip_export.pipeline import ExportOptions, run_export

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
SETTINGS = ImageSettings(height=32, width=32)  # the tiny config's image size


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_variants")
    hf_model(tiny_config()).save_pretrained(base / "ckpt")
    manifest = run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "out", towers=("vision",),
                                        variants=("cuda-fp16", "cuda-fp16-u8")), emit=None)
    return base / "out", manifest


def test_cuda_fp16_is_fused_all_fp16_and_within_its_gate(exported):
    out, manifest = exported
    layers = tiny_config().vision_config.num_hidden_layers
    assert manifest.rejected == [] and manifest.skipped == []
    for variant in ("cuda-fp16", "cuda-fp16-u8"):
        record = manifest.find("vision", variant)
        assert record.file == f"vision_model.{variant}.onnx" and record.precision == "fp16"
        assert record.parity.passed and record.accuracy["pooler_output_min_cosine"] >= KINDS[variant].gate
        assert record.build["fused_ops"] == {"Attention": layers, "SkipLayerNormalization": 2 * layers,
                                             "GELU": layers + 1, "FastGelu": layers + 1}
        model = onnx.load(str(out / record.file))
        counts = op_counts(model)
        assert counts["Attention"] == layers and counts["SkipLayerNormalization"] == 2 * layers
        assert float32_products(model) == []  # every MatMul, Gemm and Attention takes fp16
        float_weights = [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]
        assert float_weights == ([] if variant == "cuda-fp16" else ["uint8_input/table"])
    # Casts: the input's and the two outputs', plus the uint8 file's index cast.
    plain_casts = op_counts(onnx.load(str(out / "vision_model.cuda-fp16.onnx")))["Cast"]
    assert manifest.find("vision", "cuda-fp16").build["casts"] == plain_casts == 3
    assert op_counts(onnx.load(str(out / "vision_model.cuda-fp16-u8.onnx")))["Cast"] == plain_casts + 1 \
        == manifest.find("vision", "cuda-fp16-u8").build["casts"]


def test_a_float32_product_is_found():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="up"),
                               helper.make_node("MatMul", ["x32", "w"], ["y"], name="mm")], "g", [x], [y], [w])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph))
    assert float32_products(model) == ["mm"]


@pytest.mark.parametrize("settings", [SETTINGS, ImageSettings(height=32, width=32, image_mean=[0.485, 0.456, 0.406],
                                                             image_std=[0.229, 0.224, 0.225]),
                                      ImageSettings(height=32, width=32, do_normalize=False)])
def test_in_graph_normalisation_is_bit_for_bit_the_host_preprocessing(settings, tmp_path):
    """The uint8 input's lookup, alone in front of an Identity: the float32 values the tower sees
    equal `preprocess`'s exactly, on the photos and on every byte value."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("seen", TensorProto.FLOAT, ["batch", 3, 32, 32])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["pixel_values"], ["seen"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    model = with_uint8_input(model, "pixel_values", normalise_table(settings))
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "normalise.onnx")
    runner = OnnxModel(tmp_path / "normalise.onnx")
    assert runner.input_dtype == np.uint8
    photos = resized(PHOTOS, settings)
    assert np.array_equal(runner.run(photos)["seen"], preprocess(PHOTOS, settings))
    every_byte = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 1, 8, 32), (1, 3, 8, 32))
    padded = np.zeros((1, 3, 32, 32), np.uint8)
    padded[:, :, :8] = every_byte
    assert np.array_equal(runner.run(padded)["seen"][:, :, :8], preprocess(padded[0].transpose(1, 2, 0), ImageSettings(
        height=32, width=32, do_resize=False, image_mean=settings.image_mean, image_std=settings.image_std,
        do_normalize=settings.do_normalize))[:, :, :8])


def test_uint8_variant_equals_the_float_path(exported):
    out, manifest = exported
    record = manifest.find("vision", "cuda-fp16-u8")
    assert record.inputs[0].dtype == "uint8" and manifest.find("vision", "cuda-fp16").inputs[0].dtype == "float32"
    u8 = OnnxModel(out / record.file).run(resized(PHOTOS, SETTINGS))
    f32 = OnnxModel(out / "vision_model.cuda-fp16.onnx").run(preprocess(PHOTOS, SETTINGS))
    for name in ("pooler_output", "last_hidden_state"):
        np.testing.assert_allclose(u8[name], f32[name], rtol=0, atol=1e-6)
    # The Python API preprocesses to what the variant takes.
    encoder = ImageEncoder(out, variant="cuda-fp16-u8", provider="cpu")
    assert encoder.pixels(PHOTOS[:2]).dtype == np.uint8
    np.testing.assert_allclose(encoder.embed(PHOTOS, normalize=True),
                               ImageEncoder(out, variant="cuda-fp16", provider="cpu").embed(PHOTOS, normalize=True),
                               atol=1e-6)
    with pytest.raises(InputError, match="pixel_values must be uint8, got float32"):
        encoder.embed_pixels(preprocess(PHOTOS[:1], SETTINGS))
    # A Triton repository serving it takes bytes.
    assert "data_type: TYPE_UINT8" in "\n".join(tensor_block("input", record.inputs, record.file))


def test_bound_buffers_match_plain_runs(exported):
    out, _ = exported
    path = out / "vision_model.onnx"
    plain = OnnxModel(path)
    bound = OnnxModel(path, io_binding=True)
    assert not plain.io_binding and bound.io_binding
    batches = [preprocess(PHOTOS[:n], SETTINGS) for n in (1, 3, 3, 2)]
    for x in batches:
        expected = plain.run(x)
        got = bound.run(x)
        assert list(got) == ["last_hidden_state", "pooler_output"]
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
        only = bound.run(x, outputs=("pooler_output",))
        assert list(only) == ["pooler_output"]
        np.testing.assert_allclose(only["pooler_output"], expected["pooler_output"], rtol=0, atol=1e-6)
    # One buffer set per (batch size, outputs), reused: 3 batch sizes x 2 selections.
    assert sorted(bound._bound) == sorted((b, names) for b in (1, 2, 3)
                                          for names in (("last_hidden_state", "pooler_output"), ("pooler_output",)))
    first = bound.run(batches[0])["pooler_output"]
    bound.run(batches[1])
    assert np.array_equal(bound.run(batches[0])["pooler_output"], first)  # results are copies, not the buffer
    # Buffers are shared: concurrent calls of one batch size still get their own results.
    x = preprocess(PHOTOS, SETTINGS)
    rows = [x[[i, (i + 1) % len(x), (i + 2) % len(x)]] for i in range(len(x))]
    want = [plain.run(r, outputs="pooler_output")["pooler_output"] for r in rows]
    results: dict[int, np.ndarray] = {}

    def call(i):
        for _ in range(5):
            results[i] = bound.run(rows[i], outputs="pooler_output")["pooler_output"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(want):
        np.testing.assert_allclose(results[i], expected, rtol=0, atol=1e-6)
    # Only the newest sets are kept.
    for b in range(4, 4 + OnnxModel.BOUND_SETS):
        bound.run(np.repeat(x[:1], b, axis=0), outputs="pooler_output")
    assert len(bound._bound) == OnnxModel.BOUND_SETS


def test_preprocessing_into_the_bound_buffer(exported):
    """run_filled: the encoders write preprocessed images into the batch size's own host buffer
    (page-locked on a GPU); same results as handing over an array, and a failed fill frees it."""
    out, _ = exported
    for variant in ("cuda-fp16", "cuda-fp16-u8"):
        path = out / f"vision_model.{variant}.onnx"
        plain, bound = OnnxModel(path), OnnxModel(path, io_binding=True)
        x = preprocess(PHOTOS[:3], SETTINGS, dtype=plain.input_dtype)
        expected = plain.run(x, outputs="pooler_output")["pooler_output"]
        for model in (plain, bound):
            got = model.run_filled(3, lambda buf: preprocess(PHOTOS[:3], SETTINGS, dtype=buf.dtype, out=buf),
                                   outputs="pooler_output")
            np.testing.assert_allclose(got["pooler_output"], expected, rtol=0, atol=1e-6)
        host = bound._bound[(3, ("pooler_output",))].host
        assert host is not None and host.dtype == plain.input_dtype and not bound._bound[(3, ("pooler_output",))].pinned

        def broken(buf):
            raise InputError("cannot read image x.jpg")

        with pytest.raises(InputError, match="x.jpg"):
            bound.run_filled(3, broken, outputs="pooler_output")
        np.testing.assert_allclose(bound.run(x, outputs="pooler_output")["pooler_output"], expected, atol=1e-6)
        with pytest.raises(InputError, match="NaN or Inf"):  # what was filled is validated like an input
            OnnxModel(out / "vision_model.cuda-fp16.onnx", io_binding=True).run_filled(1, lambda buf: buf.fill(np.nan))
    with pytest.raises(InputError, match="out must be uint8"):
        preprocess(PHOTOS[:1], SETTINGS, dtype=np.uint8, out=np.empty((2, 3, 32, 32), np.uint8))
    with pytest.raises(InputError, match="out must be float32"):
        preprocess(PHOTOS[:1], SETTINGS, out=np.empty((1, 3, 32, 32), np.float64))
    # The encoder on bound buffers gives what it gives without them, and says which path it took.
    encoder = ImageEncoder(out, variant="cuda-fp16-u8", provider="cpu")
    want = encoder.embed(PHOTOS)
    assert encoder.describe() == "vision_model.cuda-fp16-u8.onnx on CPUExecutionProvider: --variant cuda-fp16-u8 asked for"
    encoder.model = OnnxModel(out / "vision_model.cuda-fp16-u8.onnx", io_binding=True)
    np.testing.assert_allclose(encoder.embed(PHOTOS), want, rtol=0, atol=1e-6)
    assert encoder.describe().startswith("vision_model.cuda-fp16-u8.onnx on CPUExecutionProvider, buffers bound per "
                                         "batch size, CUDA graphs off: ")


def test_cuda_graph_bookkeeping_runs_on_a_cpu_session(exported):
    """What cuda_graph=True adds to the bound sets (a graph id per set, passed as gpu_graph_id,
    the graph released when the set is dropped) goes through ONNX Runtime's API here too: the
    CPU session takes and ignores it. The capture itself needs a GPU (the gpu test below)."""
    out, _ = exported
    model = OnnxModel(out / "vision_model.onnx", io_binding=True)
    model.cuda_graph = True  # the constructor allows it with provider cuda only
    x = preprocess(PHOTOS[:1], SETTINGS)
    expected = OnnxModel(out / "vision_model.onnx").run(x, outputs="pooler_output")["pooler_output"]
    for batch in range(1, OnnxModel.BOUND_SETS + 3):
        got = model.run(np.repeat(x, batch, axis=0), outputs="pooler_output")["pooler_output"]
        np.testing.assert_allclose(got, np.repeat(expected, batch, axis=0), rtol=0, atol=1e-6)
    ids = [bound.graph_id for bound in model._bound.values()]
    assert len(ids) == OnnxModel.BOUND_SETS and len(set(ids)) == len(ids) and 0 not in ids
    assert all(bound.run_options.get_run_config_entry("gpu_graph_id") == str(bound.graph_id)
               for bound in model._bound.values())


def test_output_selection_and_cuda_graph_errors(exported):
    out, _ = exported
    model = OnnxModel(out / "vision_model.onnx")
    x = preprocess(PHOTOS[:1], SETTINGS)
    with pytest.raises(InputError, match="has no output 'logits' \\(outputs: last_hidden_state, pooler_output\\)"):
        model.run(x, outputs=("logits",))
    with pytest.raises(InputError, match="none asked for"):
        model.run(x, outputs=())
    with pytest.raises(InputError, match="cuda_graph needs provider 'cuda'"):
        OnnxModel(out / "vision_model.onnx", provider="cpu", cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_driver_present(), reason="needs an NVIDIA GPU and onnxruntime-gpu")
def test_cuda_fp16_on_the_gpu(exported):
    """On a GPU host the export also gates each file on the CUDA provider; CUDA graph replays
    give what plain bound runs give."""
    out, manifest = exported
    for variant in ("cuda-fp16", "cuda-fp16-u8"):
        gate = manifest.find("vision", variant).gate_in("onnxruntime-cuda")
        assert gate is not None and gate.passed, variant
    x = resized(PHOTOS, SETTINGS)
    plain = OnnxModel(out / "vision_model.cuda-fp16-u8.onnx", provider="cuda")
    graphs = OnnxModel(out / "vision_model.cuda-fp16-u8.onnx", provider="cuda", cuda_graph=True)
    expected = plain.run(x, outputs="pooler_output")["pooler_output"]
    for _ in range(3):  # capture, then replays
        np.testing.assert_allclose(graphs.run(x, outputs="pooler_output")["pooler_output"], expected, atol=1e-3)


def test_attention_route_probe_runs_on_the_cpu(exported, tmp_path, capsys):
    """benchmarks/attention_route.py (the GPU attention route choice) on the CPU provider: the opset-23
    file is all standard Attention in fp16, both files hold the gate, every batch size is timed."""
    import json

    from benchmarks import attention_route

    out, _ = exported
    layers = tiny_config().vision_config.num_hidden_layers
    argv = [str(out), "--backend", "ort-cpu", "--batch-sizes", "1,2", "--rounds", "2", "--calls", "2",
            "--threads", "2", "--json", str(tmp_path / "route.json")]
    assert attention_route.main(argv) == 0
    result = json.loads((tmp_path / "route.json").read_text())
    assert result["ops_route"]["Attention"] == layers + 1  # the encoder's and the pooling head's
    assert "Softmax" not in result["ops_route"] and result["ops_route"]["Cast"] == 3
    assert len(result["accuracy"]) == 2 and min(result["accuracy"].values()) >= KINDS["cuda-fp16"].gate
    assert set(result["coverage"].values()) == {"n/a (the CPU provider)"}
    assert len(result["p50_ms"]) == 2 and all(set(times) == {"1", "2"} for times in result["p50_ms"].values())
    assert set(result["ratio_route_over_fusions"]) == {"1", "2"}
    assert "| route / fusions" in capsys.readouterr().out
    assert attention_route.main([str(out), "--backend", "torch-cuda-half"]) == 2  # not an ONNX Runtime row
    assert attention_route.main([str(tmp_path), "--backend", "ort-cpu"]) == 2  # no export there
    assert "python export.py" in capsys.readouterr().err
