"""runtime/: sessions, providers, input validation, the Python API and `python -m runtime`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rel_err

from runtime import ArtefactError, ImageEncoder, InputError, OnnxModel, ProviderError, TextEncoder, ZeroShotClassifier
from runtime.__main__ import main as runtime_main
from runtime.artefacts import Artefacts
from runtime.inputs.images import ImageSettings, preprocess
from runtime.runners.environment import nvidia_driver_present, tensorrt_libraries_present
from runtime.runners.onnxruntime_model import TensorRTOptions

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))


def onnxruntime_has(provider: str) -> bool:
    import onnxruntime

    return provider in onnxruntime.get_available_providers()


def test_cpu_provider_and_auto_report_what_runs(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    cpu = OnnxModel(artefacts / "vision_model.onnx", provider="cpu")
    assert cpu.provider == "CPUExecutionProvider" and cpu.providers == ["CPUExecutionProvider"]
    auto = OnnxModel(artefacts / "vision_model.onnx", provider="auto")
    assert auto.provider in auto.providers
    if not nvidia_driver_present():
        assert auto.provider == "CPUExecutionProvider"


@pytest.mark.skipif(nvidia_driver_present(), reason="checks the refusal on a machine without an NVIDIA GPU")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_named_gpu_provider_without_gpu_is_an_error(tiny_artefacts, provider):
    artefacts, _ = tiny_artefacts
    with pytest.raises(ProviderError, match=provider):
        OnnxModel(artefacts / "vision_model.onnx", provider=provider)


def test_unknown_provider_and_bad_threads(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    with pytest.raises(InputError, match="'tpu'"):
        OnnxModel(artefacts / "vision_model.onnx", provider="tpu")
    with pytest.raises(InputError, match="threads must be >= 1, got 0"):
        OnnxModel(artefacts / "vision_model.onnx", threads=0)
    assert OnnxModel(artefacts / "vision_model.onnx", threads=1).run(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 3, 32), np.float32), r"must have 4 dimensions \(batch, 3, 32, 32\), got shape \(2, 3, 32\)"),
        (np.zeros((2, 4, 32, 32), np.float32), r"axis 1 must be 3 .*got shape \(2, 4, 32, 32\)"),
        (np.zeros((2, 3, 64, 64), np.float32), r"axis 2 must be 32 .*got shape \(2, 3, 64, 64\)"),
        (np.zeros((2, 3, 32, 32), np.float64), "must be float32, got float64"),
        (np.zeros((0, 3, 32, 32), np.float32), r"empty batch \(shape \(0, 3, 32, 32\)\)"),
        (np.full((1, 3, 32, 32), np.nan, np.float32), "3072 NaN or Inf"),
        ([[0.0]], "must be a numpy array, got list"),
    ],
)
def test_image_input_validation_names_the_value(tiny_artefacts, array, message):
    artefacts, _ = tiny_artefacts
    model = OnnxModel(artefacts / "vision_model.onnx")
    with pytest.raises(InputError, match=message):
        model.run(array)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((2, 16), np.int32), "must be int64, got int32"),
        (np.ones((2, 17), np.int64), r"axis 1 must be 16 .*got shape \(2, 17\)"),
        (np.full((2, 16), 99, np.int64), r"outside \[0, 99\): min 99, max 99"),
        (np.full((2, 16), -1, np.int64), r"outside \[0, 99\): min -1"),
    ],
)
def test_text_input_validation_names_the_value(tiny_artefacts, array, message):
    artefacts, _ = tiny_artefacts
    with pytest.raises(InputError, match=message):
        OnnxModel(artefacts / "text_model.onnx").run(array)


def test_tensorrt_profile_is_validated():
    with pytest.raises(InputError, match="1 <= min <= opt <= max, got 1/64/8"):
        TensorRTOptions(min_batch=1, opt_batch=64, max_batch=8)


def test_missing_truncated_and_foreign_model_files(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    with pytest.raises(ArtefactError, match="model file not found"):
        OnnxModel(tmp_path / "vision_model.onnx")
    data = (artefacts / "vision_model.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtefactError, match="cannot load .*truncated.onnx"):
        OnnxModel(tmp_path / "truncated.onnx")
    with pytest.raises(ArtefactError, match="artefact directory not found"):
        Artefacts(tmp_path / "nowhere")
    with pytest.raises(ArtefactError, match="has no manifest.json"):
        Artefacts(tmp_path)


def test_image_encoder_matches_eager_and_chunks(tiny_artefacts):
    artefacts, hf = tiny_artefacts
    encoder = ImageEncoder(artefacts, provider="cpu", batch_size=3)
    vectors = encoder.embed(PHOTOS)  # 8 photos in chunks of 3, 3, 2
    assert vectors.shape == (8, 32) and vectors.dtype == np.float32
    pixels = preprocess(PHOTOS, ImageSettings(height=32, width=32))
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output
    assert rel_err(vectors, expected) <= 1e-4
    normalized = encoder.embed(PHOTOS[:2], normalize=True)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-6)
    assert np.allclose(encoder.embed_pixels(pixels), vectors, atol=1e-6)
    with pytest.raises(InputError, match="no images given"):
        encoder.embed([])
    assert np.allclose(encoder.embed(str(PHOTOS[0])), vectors[:1], atol=1e-6)  # one path is a batch of one


def test_one_encoder_from_8_threads_equals_sequential(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    encoder = ImageEncoder(artefacts, provider="cpu", batch_size=2)
    jobs = [PHOTOS[i % len(PHOTOS) : i % len(PHOTOS) + 1 + i % 3] for i in range(32)]
    sequential = [encoder.embed(job) for job in jobs]
    results: list = [None] * len(jobs)
    errors = []

    def worker(k):
        try:
            for i in range(k, len(jobs), 8):
                results[i] = encoder.embed(jobs[i])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, sequential):
        assert np.array_equal(got, want)


def test_single_onnx_file_reads_its_own_preprocessing(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    lone = tmp_path / "model.onnx"
    shutil.copy(artefacts / "vision_model.onnx", lone)
    vectors = ImageEncoder(lone, provider="cpu").embed(PHOTOS[:2])
    assert np.allclose(vectors, ImageEncoder(artefacts, provider="cpu").embed(PHOTOS[:2]), atol=1e-6)
    shutil.copy(artefacts / "text_model.onnx", tmp_path / "text.onnx")
    with pytest.raises(ArtefactError, match="is the text tower, not the vision tower"):
        ImageEncoder(tmp_path / "text.onnx")


def test_classify_without_tokenizer_or_text_tower(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts  # exported from a checkpoint without tokenizer files
    with pytest.raises(ArtefactError, match="has no tokenizer"):
        ZeroShotClassifier(artefacts, provider="cpu")
    vision_only = tmp_path / "vision_only"
    shutil.copytree(artefacts, vision_only)
    manifest = json.loads((vision_only / "manifest.json").read_text())
    manifest["artefacts"] = [a for a in manifest["artefacts"] if a["tower"] == "vision"]
    (vision_only / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="has no text tower"):
        ZeroShotClassifier(vision_only)
    with pytest.raises(ArtefactError, match="has no text_model.onnx"):
        TextEncoder(vision_only)


def run_module(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_embed_writes_npy_in_argument_order(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    order = [PHOTOS[3], PHOTOS[0], PHOTOS[5]]
    out = tmp_path / "vectors.npy"
    proc = run_module("embed", artefacts, *order, "--output", out, "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    expected = ImageEncoder(artefacts, provider="cpu").embed(order)
    assert np.allclose(vectors, expected, atol=1e-6)
    assert runtime_main(["embed", str(artefacts), *map(str, order), "--output", str(out), "--normalize"]) == 0
    assert np.allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]  # no temporary file left


def test_cli_takes_the_artefact_directory_as_a_flag_too(tiny_artefacts, tmp_path, capsys):
    """`embed --artefacts DIR IMAGE...` equals `embed DIR IMAGE...`; without a directory: one line, exit 2."""
    artefacts, _ = tiny_artefacts
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    assert runtime_main(["embed", str(artefacts), str(PHOTOS[0]), str(PHOTOS[1]), "--output", str(first)]) == 0
    assert runtime_main(["embed", "--artefacts", str(artefacts), str(PHOTOS[0]), str(PHOTOS[1]),
                         "--output", str(second)]) == 0
    assert np.array_equal(np.load(first), np.load(second)) and np.load(second).shape == (2, 32)
    capsys.readouterr()
    for argv in (["embed", str(PHOTOS[0]), "--output", str(first)], ["serve"]):
        with pytest.raises(SystemExit) as exited:
            runtime_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 2 and len(err) == 1 and "needs an artefact directory" in err[0], err


def test_cli_errors_are_one_line(tiny_artefacts, tmp_path, capsys):
    artefacts, _ = tiny_artefacts
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(PHOTOS[0].read_bytes()[:200])
    out = tmp_path / "x.npy"
    cases = [
        (["embed", str(artefacts), str(tmp_path / "missing.jpg"), "--output", str(out)], "image not found"),
        (["embed", str(artefacts), str(corrupt), "--output", str(out)], "cannot read image"),
        (["embed", str(tmp_path / "nodir"), str(PHOTOS[0]), "--output", str(out)], "artefact directory not found"),
        (["embed", str(artefacts), str(PHOTOS[0]), "--output", str(tmp_path / "x.txt")], "must end in .npy"),
        (["classify", str(artefacts), str(PHOTOS[0]), "--labels", "cat"], "has no tokenizer"),
        (["embed", str(artefacts), str(PHOTOS[0]), "--output", str(out), "--variant", "nope"],
         "unknown variant 'nope' (choose from opt, int8"),
        (["embed", str(artefacts), str(PHOTOS[0]), "--output", str(out), "--variant", "fp16"],
         "has no vision_model.fp16.onnx (the export has: vision_model.onnx, text_model.onnx)"),
    ]
    if not nvidia_driver_present():
        cases.append((["embed", str(artefacts), str(PHOTOS[0]), "--output", str(out), "--provider", "cuda"], "cuda"))
    for argv, message in cases:
        capsys.readouterr()
        assert runtime_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert not out.exists()


@pytest.mark.skipif(nvidia_driver_present(), reason="checks the refusal on a machine without an NVIDIA GPU")
def test_gpu_provider_refusal_is_one_line_on_the_real_streams(tiny_artefacts, tmp_path):
    """In a subprocess, so output ONNX Runtime writes itself (file descriptors 1 and 2) is seen too."""
    artefacts, _ = tiny_artefacts
    for provider in ("cuda", "tensorrt"):
        proc = run_module("embed", artefacts, PHOTOS[0], "--output", tmp_path / "x.npy", "--provider", provider)
        assert proc.returncode == 2 and proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1 and "needs an NVIDIA GPU" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_driver_present() or not onnxruntime_has("CUDAExecutionProvider"),
                    reason="needs an NVIDIA GPU and onnxruntime-gpu")
def test_cuda_provider_with_io_binding_matches_cpu(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    pixels = preprocess(PHOTOS, ImageSettings(height=32, width=32))
    gpu = OnnxModel(artefacts / "vision_model.onnx", provider="cuda")
    assert gpu.provider == "CUDAExecutionProvider"
    cpu = OnnxModel(artefacts / "vision_model.onnx", provider="cpu")
    assert rel_err(gpu.run(pixels)["pooler_output"], cpu.run(pixels)["pooler_output"]) <= 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_driver_present() or not onnxruntime_has("TensorrtExecutionProvider")
                    or not tensorrt_libraries_present(),
                    reason="needs an NVIDIA GPU and onnxruntime-gpu with TensorRT libraries")
def test_tensorrt_provider_profile_and_cache(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    options = TensorRTOptions(min_batch=1, opt_batch=2, max_batch=4, cache_dir=str(tmp_path))
    model = OnnxModel(artefacts / "vision_model.onnx", provider="tensorrt", tensorrt=options)
    assert model.provider == "TensorrtExecutionProvider" and model.max_batch == 4
    pixels = preprocess(PHOTOS[:4], ImageSettings(height=32, width=32))
    cpu = OnnxModel(artefacts / "vision_model.onnx", provider="cpu").run(pixels)["pooler_output"]
    assert rel_err(model.run(pixels)["pooler_output"], cpu) <= 1e-3
    with pytest.raises(InputError, match="batch 5 exceeds"):
        model.run(preprocess(PHOTOS[:5], ImageSettings(height=32, width=32)))
    assert any(tmp_path.rglob("*")), "no engine cache written"


TEXTS = ["a photo of a cat", "Two DOGS playing in the snow!", "", "a red car parked in the street at night " * 3]


def test_text_encoder_matches_transformers_through_the_tokenizer(text_artefacts):
    artefacts, hf, tokenizer, _ = text_artefacts
    assert {"spiece.model", "tokenizer_config.json"} <= {p.name for p in artefacts.iterdir()}
    encoder = TextEncoder(artefacts, provider="cpu", batch_size=3)
    ids = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    assert np.array_equal(encoder.tokenizer(TEXTS), ids.numpy())
    with torch.no_grad():
        expected = hf.get_text_features(input_ids=ids).pooler_output
    assert rel_err(encoder.embed(TEXTS), expected) <= 1e-4
    assert encoder.embed("a photo of a cat").shape == (1, 32)


def test_zero_shot_probabilities_match_transformers(text_artefacts):
    artefacts, hf, tokenizer, processor = text_artefacts
    labels = ["cat", "dog", "rocket"]
    classifier = ZeroShotClassifier(artefacts, provider="cpu")
    probs = classifier.probabilities(PHOTOS[:5], labels)
    prompts = [f"This is a photo of {label}." for label in labels]
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    pixels = processor([str(p) for p in PHOTOS[:5]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.sigmoid(hf(input_ids=ids, pixel_values=pixels).logits_per_image).numpy()
    assert probs.shape == (5, 3)
    assert np.abs(probs - expected).max() <= 1e-5
    # Sigmoid, not softmax: the rows are independent probabilities.
    assert not np.allclose(probs.sum(axis=1), 1.0)
    scores = classifier.classify(PHOTOS[:1], labels)
    assert list(scores[0]) == labels and scores[0]["dog"] == pytest.approx(float(probs[0, 1]))
    with pytest.raises(InputError, match="labels must be non-empty strings"):
        classifier.probabilities(PHOTOS[:1], [])
    with pytest.raises(InputError, match="template must contain"):
        ZeroShotClassifier(artefacts, template="no slot")


def test_cli_classify_text_and_json(text_artefacts):
    artefacts, *_ = text_artefacts
    proc = run_module("classify", artefacts, PHOTOS[0], PHOTOS[1], "--labels", "cat", "a red car", "--json",
                      "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = ZeroShotClassifier(artefacts, provider="cpu").classify(PHOTOS[:2], ["cat", "a red car"])
    assert [r["image"] for r in result] == [str(PHOTOS[0]), str(PHOTOS[1])]
    for got, want in zip(result, expected):
        assert list(got["scores"]) == ["cat", "a red car"]
        assert got["scores"] == pytest.approx(want, abs=1e-6)
    plain = run_module("classify", artefacts, PHOTOS[0], "--labels", "cat", "dog", "--provider", "cpu")
    assert plain.returncode == 0 and plain.stdout.splitlines()[0] == str(PHOTOS[0])
    assert plain.stdout.splitlines()[1].split()[0] == "cat"


def test_engine_built_elsewhere_is_refused_with_both_values(tmp_path):
    from runtime.runners.tensorrt_engine import check_compatible, read_metadata

    engine = tmp_path / "vision_model.fp16.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(ArtefactError, match="has no metadata file vision_model.fp16.engine.json"):
        read_metadata(engine)
    meta = {"tensorrt_version": "10.9.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "model_sha256": "ab" * 32}
    (tmp_path / "vision_model.fp16.engine.json").write_text(json.dumps(meta))
    assert read_metadata(engine) == meta
    check_compatible(meta, "10.9.0", "NVIDIA H100 80GB HBM3", "9.0")  # same machine: accepted
    with pytest.raises(ArtefactError, match="built with TensorRT 10.9.0, this machine has TensorRT 11.0.0"):
        check_compatible(meta, "11.0.0", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(ArtefactError, match=r"built for NVIDIA H100 .*9\.0.*this GPU is NVIDIA L4 \(compute capability 8\.9\)"):
        check_compatible(meta, "10.9.0", "NVIDIA L4", "8.9")


@pytest.mark.gpu
@pytest.mark.skipif(not nvidia_driver_present() or importlib.util.find_spec("tensorrt") is None,
                    reason="needs an NVIDIA GPU with tensorrt and cuda-python")
def test_native_tensorrt_engine_builds_and_matches(tmp_path):
    from conftest import hf_model, tiny_config

    from runtime.runners.tensorrt_engine import TensorRTEngine
    from siglip_export.pipeline import ExportOptions, run_export

    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    manifest = run_export(ExportOptions(checkpoint=ckpt, output_dir=tmp_path / "o", towers=("vision",),
                                        variants=("trt-fp16",), trt_profile=(1, 4, 8)), emit=None)
    assert [a.file for a in manifest.artefacts] == ["vision_model.onnx", "vision_model.fp16.engine"]
    engine = TensorRTEngine(tmp_path / "o" / "vision_model.fp16.engine")
    pixels = preprocess(PHOTOS[:4], ImageSettings(height=32, width=32))
    cpu = OnnxModel(tmp_path / "o" / "vision_model.onnx").run(pixels)["pooler_output"]
    got = engine.run(pixels)["pooler_output"]
    assert ((got * cpu).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(cpu, axis=1)).min() >= 0.999
    with pytest.raises(InputError, match="batch 9 exceeds"):
        engine.run(preprocess(PHOTOS[:1] * 9, ImageSettings(height=32, width=32)))
