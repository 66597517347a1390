"""siglip_export.triton: the Triton model repository, checked against Triton's own config schema
(tritonclient's ModelConfig protobuf) and against the ONNX files it serves.

A real `tritonserver` is used where one is found ($TRITONSERVER, PATH, /opt/tritonserver or the
one inside the nvidia-pytriton wheel): every server validates the configs; one with the
onnxruntime backend (the NGC container) also serves them and is compared with ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import hf_model, tiny_config

from runtime import ArtefactError, UserError
from runtime.files import sha256_file as sha256
from runtime.inputs.images import ImageSettings, preprocess
from runtime.runners.onnxruntime_model import OnnxModel
from siglip_export.triton.repository import REPO_RECORD, TritonOptions, write_triton_repo


def _load_model_config_pb2():
    """Triton's ModelConfig schema from the tritonclient package (a dev dependency).

    Loaded from its file: importing `tritonclient.grpc` would need the grpc extra, which pins
    protobuf below 7, and the sentencepiece classes transformers uses need protobuf 7."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install -e '.[dev]')", allow_module_level=True)
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


model_config_pb2 = _load_model_config_pb2()
from google.protobuf import text_format  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
# ONNX Runtime's type strings -> Triton's data types
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


def parse_config(model_dir: Path):
    """config.pbtxt through Triton's ModelConfig schema: unknown fields or bad values raise."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def sample_input(name: str, shape: tuple, batch: int, vocab: int = 99) -> np.ndarray:
    if name == "pixel_values":
        return preprocess(PHOTOS[:batch], ImageSettings(height=shape[2], width=shape[3]))
    return np.random.default_rng(0).integers(0, vocab, size=(batch, shape[1]), dtype=np.int64)


@pytest.fixture(scope="module")
def repo(tiny_artefacts, tmp_path_factory):
    artefacts, _ = tiny_artefacts
    target = tmp_path_factory.mktemp("triton") / "repo"
    return target, write_triton_repo(artefacts, target)


@pytest.fixture(scope="module")
def external_artefacts(tmp_path_factory):
    """A tiny export whose weights live in `<file>.data` beside each model (threshold 1000 bytes)."""
    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("external")
    hf_model(tiny_config()).save_pretrained(base / "ckpt")
    run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "artefacts", verify_batch_sizes=(2,),
                             external_data_threshold=1000), emit=None)
    return base / "artefacts"


def test_layout_and_configs_parse_with_tritons_schema(repo, tiny_artefacts):
    target, model_dirs = repo
    assert [d.name for d in model_dirs] == ["siglip_vision", "siglip_text"]
    assert {p.name for p in target.iterdir()} == {REPO_RECORD, "siglip_text", "siglip_vision"}
    for model_dir in model_dirs:
        config = parse_config(model_dir)
        assert config.name == model_dir.name
        assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
        assert (model_dir / "1" / "model.onnx").is_file()
        assert config.max_batch_size == 64
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 1000
        [group] = config.instance_group
        assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (1, "KIND_AUTO")
        assert not config.HasField("optimization")
    record = json.loads((target / REPO_RECORD).read_text())
    assert record["artefact_dir"] == str(tiny_artefacts[0].resolve())
    assert [m["name"] for m in record["models"]] == ["siglip_vision", "siglip_text"]


def test_configs_match_the_onnx_files_they_serve(repo):
    """Names, dtypes, dims and the batch axis, read from the served file by ONNX Runtime."""
    _, model_dirs = repo
    for model_dir in model_dirs:
        config = parse_config(model_dir)
        session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for declared, actual in [(config.input, session.get_inputs()), (config.output, session.get_outputs())]:
            assert [t.name for t in declared] == [t.name for t in actual]
            for tensor, value in zip(declared, actual):
                assert dtype_name(tensor.data_type) == ORT_TO_TRITON[value.type]
                assert isinstance(value.shape[0], str), f"{value.name}: batch axis is not symbolic"
                assert list(tensor.dims) == list(value.shape[1:])
        assert [t.name for t in config.input] == [("pixel_values" if "vision" in config.name else "input_ids")]
        assert [t.name for t in config.output] == ["last_hidden_state", "pooler_output"]


def test_served_models_are_the_exported_files(repo, tiny_artefacts):
    artefacts, _ = tiny_artefacts
    _, model_dirs = repo
    manifest = json.loads((artefacts / "manifest.json").read_text())
    for model_dir, entry in zip(model_dirs, manifest["artefacts"]):
        served, source = OnnxModel(model_dir / "1" / "model.onnx"), OnnxModel(artefacts / entry["file"])
        x = sample_input(source.input_name, source.input_shape, batch=3)
        for name, value in source.run(x).items():
            np.testing.assert_array_equal(served.run(x)[name], value)


def test_external_data_is_carried_under_the_name_the_model_records(external_artefacts, tmp_path):
    manifest = json.loads((external_artefacts / "manifest.json").read_text())
    assert all(a["external_data"] for a in manifest["artefacts"])
    model_dirs = write_triton_repo(external_artefacts, tmp_path / "repo")
    for model_dir, entry in zip(model_dirs, manifest["artefacts"]):
        version = model_dir / "1"
        proto = onnx.load(str(version / "model.onnx"), load_external_data=False)
        locations = {kv.value for t in proto.graph.initializer for kv in t.external_data if kv.key == "location"}
        assert locations == {entry["external_data"][0]["file"]} == {f"{entry['file']}.data"}
        assert sorted(p.name for p in version.iterdir()) == sorted(["model.onnx", *locations])
        # The version directory stands alone: moved away from the artefacts, it still loads and runs.
        alone = tmp_path / "alone" / model_dir.name
        shutil.copytree(version, alone)
        served, source = OnnxModel(alone / "model.onnx"), OnnxModel(external_artefacts / entry["file"])
        x = sample_input(source.input_name, source.input_shape, batch=2)
        np.testing.assert_array_equal(served.run(x)["pooler_output"], source.run(x)["pooler_output"])
        assert oct((alone / locations.pop()).stat().st_mode & 0o777) == "0o644"  # readable by the server's user


def test_tensorrt_accelerator_block(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    options = TritonOptions(max_batch_size=16, preferred_batch_sizes=(8, 4, 8), instance_count=2,
                            instance_kind="KIND_GPU", tensorrt_accelerator=True, tensorrt_precision="FP16")
    vision, text = write_triton_repo(artefacts, tmp_path / "repo", options)
    config = parse_config(vision)
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    parameters = dict(accelerator.parameters)
    assert parameters["precision_mode"] == "FP16" and parameters["trt_engine_cache_enable"] == "1"
    assert parameters["trt_engine_cache_path"].endswith("/siglip_vision")
    assert parameters["trt_profile_min_shapes"] == "pixel_values:1x3x32x32"
    assert parameters["trt_profile_opt_shapes"] == "pixel_values:8x3x32x32"
    assert parameters["trt_profile_max_shapes"] == "pixel_values:16x3x32x32"
    text_parameters = dict(parse_config(text).optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert text_parameters["trt_profile_max_shapes"] == "input_ids:16x16"


@pytest.fixture
def with_variant_and_engine(tiny_artefacts, tmp_path):
    """The tiny export plus variants recorded as the export's optimisation step records them: an
    int8 QDQ ONNX file, an OpenVINO IR and a TensorRT engine with its metadata. The files are
    stand-ins (a copy of the fp32 model, placeholder bytes): only the repository is checked here."""
    source, _ = tiny_artefacts
    artefacts = tmp_path / "artefacts"
    shutil.copytree(source, artefacts)
    manifest = json.loads((artefacts / "manifest.json").read_text())
    vision = next(a for a in manifest["artefacts"] if a["tower"] == "vision")
    shutil.copyfile(artefacts / "vision_model.onnx", artefacts / "vision_model.int8-qdq.onnx")
    (artefacts / "vision_model.ov-bf16.xml").write_text("<net/>")
    (artefacts / "vision_model.fp16.engine").write_bytes(b"\x00placeholder engine\xff" * 10)
    profile = {"min": 1, "opt": 8, "max": 32}
    (artefacts / "vision_model.fp16.engine.json").write_text(json.dumps({"profile": profile}))

    def record(file, variant, fmt, precision, **extra):  # the plain record's signature and parity, as the contract says
        return {**vision, "file": file, "variant": variant, "format": fmt, "precision": precision,
                "sha256": sha256(artefacts / file), "external_data": [], **extra}

    manifest["artefacts"] += [
        record("vision_model.int8-qdq.onnx", "int8-qdq", "onnx", "int8"),
        record("vision_model.ov-bf16.xml", "ov-bf16", "openvino", "bf16"),
        record("vision_model.fp16.engine", "trt-fp16", "engine", "fp16", build={"profile": profile},
               external_data=[{"file": "vision_model.fp16.engine.json", "sha256": None}]),
    ]
    (artefacts / "manifest.json").write_text(json.dumps(manifest))
    return artefacts


def test_variants_and_engines(with_variant_and_engine, tmp_path):
    artefacts = with_variant_and_engine
    dirs = write_triton_repo(artefacts, tmp_path / "all", variants=(None, "int8-qdq"))
    assert [d.name for d in dirs] == ["siglip_vision", "siglip_text", "siglip_vision_int8_qdq",
                                      "siglip_vision_trt_fp16"]
    int8 = parse_config(dirs[2])
    assert [t.name for t in int8.input] == ["pixel_values"] and list(int8.input[0].dims) == [3, 32, 32]
    plan = parse_config(dirs[3])
    assert plan.platform == "tensorrt_plan" and plan.default_model_filename == "model.plan"
    assert plan.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert plan.max_batch_size == 32  # the engine's profile maximum, below the requested 64
    assert list(plan.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert [t.name for t in plan.output] == ["last_hidden_state", "pooler_output"]
    assert (dirs[3] / "1" / "model.plan").read_bytes() == (artefacts / "vision_model.fp16.engine").read_bytes()
    assert (dirs[3] / "1" / "vision_model.fp16.engine.json").is_file()  # which GPU / TensorRT it was built for
    # Only the int8 variant: the text tower has none, so it is left out; engines can be left out too.
    only = write_triton_repo(artefacts, tmp_path / "int8", variants=["int8-qdq"], include_engines=False)
    assert [d.name for d in only] == ["siglip_vision_int8_qdq"]
    with pytest.raises(UserError, match=r"'fp16'.*\(it has: \(plain\), int8-qdq\)"):
        write_triton_repo(artefacts, tmp_path / "fp16", variants=("fp16",))
    with pytest.raises(UserError, match="'ov-bf16' is vision_model.ov-bf16.xml: not an ONNX file"):
        write_triton_repo(artefacts, tmp_path / "ov", variants=("ov-bf16",))
    prefixed = write_triton_repo(artefacts, tmp_path / "prefixed", prefix="siglip_b16", include_engines=False)
    assert [d.name for d in prefixed] == ["siglip_b16_vision", "siglip_b16_text"]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max_batch_size must be a positive integer, got 0"),
    ({"max_batch_size": 16}, "preferred batch size 32 exceeds max_batch_size 16"),
    ({"preferred_batch_sizes": (8, 128)}, "preferred batch size 128 exceeds max_batch_size 64"),
    ({"preferred_batch_sizes": (0,)}, "preferred batch size must be a positive integer, got 0"),
    ({"instance_count": 0}, "instance_count must be a positive integer, got 0"),
    ({"instance_kind": "GPU"}, "instance kind 'GPU'"),
    ({"tensorrt_precision": "FP8"}, "TensorRT precision 'FP8'"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us must be an integer >= 0, got -1"),
    ({"prefix": "my model"}, "prefix 'my model'"),
    ({"variants": ()}, "variants is empty"),
])
def test_bad_options_name_the_value(tiny_artefacts, tmp_path, kwargs, message):
    artefacts, _ = tiny_artefacts
    with pytest.raises(UserError, match=message):
        write_triton_repo(artefacts, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_bad_paths(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    with pytest.raises(UserError, match=f"artefact directory not found: {tmp_path / 'missing'}"):
        write_triton_repo(tmp_path / "missing", tmp_path / "repo")
    with pytest.raises(ArtefactError, match="no manifest.json"):
        write_triton_repo(tmp_path, tmp_path / "repo")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write_triton_repo(artefacts, tmp_path / "a_file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=f"{foreign} exists and was not written by siglip-export"):
        write_triton_repo(artefacts, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    repo = tmp_path / "ours"
    write_triton_repo(artefacts, repo)
    (repo / "notes.txt").write_text("mine")  # added to a repository we wrote: replacing it would delete it
    with pytest.raises(UserError, match=r"holds files siglip-export did not write \(notes.txt\)"):
        write_triton_repo(artefacts, repo)
    assert (repo / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_triton_repo(artefacts, empty)[0] == empty / "siglip_vision"


def test_rewrite_replaces_a_previous_repo_whole(with_variant_and_engine, tmp_path):
    target = tmp_path / "repo"
    write_triton_repo(with_variant_and_engine, target, variants=(None, "int8-qdq"))
    assert (target / "siglip_vision_int8_qdq").is_dir()
    write_triton_repo(with_variant_and_engine, target, max_batch_size=32, include_engines=False)
    assert {p.name for p in target.iterdir()} == {REPO_RECORD, "siglip_text", "siglip_vision"}
    assert parse_config(target / "siglip_vision").max_batch_size == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefacts", "repo"]  # no scratch directory left


def test_a_failed_write_leaves_the_previous_repo_untouched(with_variant_and_engine, tmp_path):
    artefacts = with_variant_and_engine
    target = tmp_path / "repo"
    write_triton_repo(artefacts, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with open(artefacts / "text_model.onnx", "r+b") as f:  # truncate: no longer the file the manifest hashed
        f.truncate(1000)
    with pytest.raises(ArtefactError, match="text_model.onnx does not match the sha256"):
        write_triton_repo(artefacts, target, max_batch_size=8, preferred_batch_sizes=(8,))
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefacts", "repo"]


def test_command_line(tiny_artefacts, tmp_path):
    """`python -m siglip_export.triton ARTEFACTS REPO` with the flags export.py --triton-repo shares."""
    artefacts, _ = tiny_artefacts
    command = [sys.executable, "-m", "siglip_export.triton", str(artefacts), str(tmp_path / "repo"),
               "--triton-max-batch", "16", "--triton-preferred-batch", "4,8", "--triton-kind", "cpu",
               "--triton-instances", "2", "--triton-tensorrt", "--triton-tensorrt-precision", "fp32",
               "--triton-variants", "plain", "--triton-prefix", "b16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "repo" / "b16_vision"), str(tmp_path / "repo" / "b16_text")]
    config = parse_config(tmp_path / "repo" / "b16_vision")
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert dict(accelerator.parameters)["precision_mode"] == "FP32"
    done = subprocess.run([*command[:5], "--triton-max-batch", "4"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: Triton preferred batch size 8 exceeds max_batch_size 4"


# --- a real tritonserver, where one is installed ---------------------------------------------

def find_tritonserver() -> Path | None:
    candidates = [os.environ.get("TRITONSERVER"), shutil.which("tritonserver"), "/opt/tritonserver/bin/tritonserver"]
    spec = importlib.util.find_spec("pytriton")  # nvidia-pytriton bundles a server (Python backend only)
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "tritonserver" / "bin" / "tritonserver"))
    return next((Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tritonserver(repo, tmp_path_factory):
    """A tritonserver on the loopback interface serving the tiny repository: (gRPC client, backends)."""
    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver here (set TRITONSERVER, or run in nvcr.io/nvidia/tritonserver)")
    grpc = pytest.importorskip("tritonclient.grpc")
    target, _ = repo
    backends = binary.parent.parent / "backends"
    port = free_port()
    log = tmp_path_factory.mktemp("tritonserver") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(binary), f"--model-repository={target}", f"--backend-directory={backends}",
             "--allow-http=false", "--allow-metrics=false", "--grpc-address=127.0.0.1", f"--grpc-port={port}",
             "--exit-on-error=false"], stdout=out, stderr=subprocess.STDOUT)
    client = grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                index = client.get_model_repository_index(as_json=True).get("models", [])
                if len(index) == 2 and all(m.get("state") in ("READY", "UNAVAILABLE") for m in index):
                    break
            except Exception:  # not listening yet
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tritonserver did not come up; log:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield client, sorted(p.name for p in backends.iterdir()) if backends.is_dir() else []
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_tritonserver_accepts_the_configs(tritonserver):
    """Triton validates a config (batch sizes, dims, kinds) before it looks for the backend, so even a
    server without the onnxruntime backend checks them: the only failure allowed is the missing backend."""
    client, backends = tritonserver
    for model in client.get_model_repository_index(as_json=True)["models"]:
        if "onnxruntime" in backends:
            assert model["state"] == "READY", model
        else:
            assert model["state"] == "UNAVAILABLE" and "unable to find backend library for backend 'onnxruntime'" \
                in model["reason"], model


def test_tritonserver_serves_what_onnx_runtime_computes(tritonserver, tiny_artefacts):
    client, backends = tritonserver
    if "onnxruntime" not in backends:
        pytest.skip(f"this tritonserver has no onnxruntime backend (backends: {', '.join(backends) or 'none'})")
    from tritonclient import grpc

    artefacts, _ = tiny_artefacts
    for name, file in [("siglip_vision", "vision_model.onnx"), ("siglip_text", "text_model.onnx")]:
        source = OnnxModel(artefacts / file)
        x = sample_input(source.input_name, source.input_shape, batch=3)
        request = grpc.InferInput(source.input_name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64")
        request.set_data_from_numpy(x)
        result = client.infer(name, [request])
        expected = source.run(x)
        for output in ("last_hidden_state", "pooler_output"):
            got = result.as_numpy(output)
            assert np.abs(got - expected[output]).max() <= 1e-4 * np.abs(expected[output]).max()


def test_export_cli_writes_the_repository(tmp_path, capsys):
    import export as export_cli

    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    out, repo = tmp_path / "out", tmp_path / "repo"
    code = export_cli.main(["--checkpoint", str(ckpt), "--output-dir", str(out), "--verify-batch-sizes", "2",
                            "--triton-repo", str(repo), "--triton-max-batch", "16", "--triton-preferred-batch", "4,8"])
    assert code == 0, capsys.readouterr().err
    assert "Triton repository" in capsys.readouterr().out
    for name in ("siglip_vision", "siglip_text"):
        config = parse_config(repo / name)
        assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert (repo / name / "1" / "model.onnx").read_bytes() == (out / f"{name.split('_')[1]}_model.onnx").read_bytes()


def test_export_cli_rejects_bad_triton_input_before_exporting(tmp_path, capsys):
    import export as export_cli

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases = [
        (["--triton-repo", str(tmp_path / "taken")], "was not written by siglip-export"),
        (["--triton-repo", str(tmp_path / "r"), "--triton-preferred-batch", "128"], "128"),
        (["--triton-repo", str(tmp_path / "r"), "--triton-variants", "plain,opt"], "which --variants (or --target) does not build"),
        (["--triton-repo", str(tmp_path / "out" / "triton")], "must not contain each other"),
    ]
    for args, message in cases:
        capsys.readouterr()
        code = export_cli.main(["--output-dir", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
        assert not (tmp_path / "out").exists()  # refused before the export ran
