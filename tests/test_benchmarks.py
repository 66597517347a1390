"""benchmarks/: the FLOP count against torch's own counter, and a smoke run of the harness on the tiny
export with its JSON schema. No timing assertions: speed targets belong in the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vision_config
from torch.utils.flop_counter import FlopCounterMode

from siglip_export.model.config import preset
from siglip_export.model.modeling_siglip import SiglipVisionModel

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

import benchmarks.machine
from benchmarks import run as bench
from benchmarks.backends import BACKENDS, floor_key
from benchmarks.floor import chain_flops, layer_dims
from benchmarks.flops import vision_flops


def counted_flops(config, batch: int = 2) -> float:
    """FLOPs per image of the eager image tower by FlopCounterMode, on meta tensors (no compute).

    The explicit attention path: FlopCounterMode has no formula for the CPU SDPA kernel, so
    with SDPA it would silently leave out the attention scores and mixing."""
    with torch.device("meta"):
        model = SiglipVisionModel(config).eval()
    model.set_fused_attn(False)
    pixels = torch.empty(batch, config.num_channels, config.image_size, config.image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.vision_model(pixels)
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("name", ["tiny", "siglip-base-patch16-224", "siglip-so400m-patch14-384"])
def test_flop_formula_matches_flop_counter(name):
    config = tiny_vision_config() if name == "tiny" else preset(name).vision_config
    assert vision_flops(config)["total"] == counted_flops(config)
    # The HF dict (what manifest.json holds) gives the same count as the dataclass.
    assert vision_flops(config.to_dict()) == vision_flops(config)


def test_base_224_is_35_4_gflop():
    flops = vision_flops(preset("siglip-base-patch16-224").vision_config)
    assert flops["total"] / 1e9 == pytest.approx(35.42, abs=0.01)
    assert sum(v for k, v in flops.items() if k != "total") == flops["total"]


def test_floor_helpers():
    assert floor_key("fp32", "cpu") == "fp32"
    assert floor_key("int8", "cpu") == "int8"
    assert floor_key("bf16", "cpu") == "bf16"
    assert floor_key("fp16", "cuda") == "cuda-fp16"
    # One encoder layer's linear work: 4 D x D projections and the MLP.
    d, inner, rows = 768, 3072, 196
    assert chain_flops(rows, layer_dims(d, inner)) == 2 * rows * (4 * d * d + 2 * d * inner)


# --- the harness, end to end on the tiny export -------------------------------------------------

MEASURED_NUMBERS = ("p50_ms", "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb")


def check_row(row: dict) -> None:
    for key in bench.ROW_KEYS:
        assert key in row, f"{key} missing from {row}"
    assert row["backend"] in BACKENDS
    assert isinstance(row["artefact"], str) and row["artefact"]
    assert isinstance(row["precision"], str) and row["precision"]
    assert isinstance(row["batch_size"], int) and row["batch_size"] >= 1
    if row["skipped"] is None:
        for key in MEASURED_NUMBERS:
            assert isinstance(row[key], float) and row[key] > 0, (key, row)
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        for key in ("x_eager", "x_floor"):
            assert row[key] is None or (isinstance(row[key], float) and row[key] > 0), (key, row)
    else:
        assert isinstance(row["skipped"], str) and row["skipped"], row
        for key in (*MEASURED_NUMBERS, "x_eager", "x_floor"):
            assert row[key] is None, (key, row)


def test_smoke_run_on_tiny_export(tiny_artefacts, tmp_path, capsys):
    directory, _ = tiny_artefacts
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--artefacts", str(directory), "--batch-sizes", "1,2", "--iterations", "3", "--warmup", "1",
            "--budget-s", "0.05", "--inputs", "2", "--json", str(out_json)]
    plotting = __import__("importlib").util.find_spec("matplotlib") is not None
    if plotting:
        argv += ["--plot", str(out_png)]
    assert bench.main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out_json.read_text())

    assert {"machine", "model", "floor_ms", "results"} <= set(result)
    machine = result["machine"]
    assert isinstance(machine["cpu_model"], str) and isinstance(machine["cores"], int)
    assert set(machine["isa"]) >= {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    assert all(isinstance(v, bool) for v in machine["isa"].values())
    assert machine["gpu"] is None or isinstance(machine["gpu"], str)
    assert isinstance(machine["versions"], dict) and "onnxruntime" in json.dumps(machine["versions"])
    model = result["model"]
    assert model["config"]["hidden_size"] == 32
    assert model["gflops_per_image"] == pytest.approx(vision_flops(tiny_vision_config())["total"] / 1e9)
    assert model["source"]["type"] == "checkpoint"
    assert set(result["floor_ms"]) == {"1", "2"} and all(v > 0 for v in result["floor_ms"].values())

    rows = result["results"]
    for row in rows:
        check_row(row)
    # Every backend is accounted for, measured or skipped with its reason, at every batch size.
    assert {r["backend"] for r in rows} == set(BACKENDS)
    assert all({r["batch_size"] for r in rows if r["backend"] == b} == {1, 2} for b in BACKENDS)
    measured = {(r["backend"], r["batch_size"]): r for r in rows if r["skipped"] is None}
    for backend in ("torch-eager", "torch-eager-bf16", "ort-cpu"):  # always runnable here
        assert (backend, 1) in measured and (backend, 2) in measured, backend
    for batch in (1, 2):
        eager = measured["torch-eager", batch]
        assert eager["x_eager"] == pytest.approx(1.0)
        assert eager["x_floor"] is not None and eager["floor_key"] == "fp32"
        # The eager model carries the artefact's weights, so accuracy is meaningful.
        assert eager["min_cosine"] > 0.99999
        assert measured["ort-cpu", batch]["min_cosine"] > 0.99999
        assert measured["torch-eager-bf16", batch]["min_cosine"] > 0.99
        assert measured["torch-eager-bf16", batch]["precision"] == "bf16"
    if not torch.cuda.is_available():
        assert all(r["skipped"] for r in rows if r["backend"] in ("torch-cuda", "ort-cuda", "tensorrt"))
    assert model["eager_weights_match_artefacts"] is True

    assert "| backend | artefact | precision | batch | p50 ms" in stdout
    assert "| not measured |" in stdout or all(r["skipped"] is None for r in rows)
    if plotting:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


GPU_ROWS = ("torch-cuda", "torch-cuda-half-resident", "torch-compile-half", "ort-cuda", "ort-cuda-graph",
            "ort-cuda-resident", "ort-cuda-graph-resident", "ort-tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: the smoke run measures the GPU backends")
def test_gpu_backends_say_why_they_cannot_run(tiny_artefacts, tmp_path, monkeypatch):
    """Past the parent's driver check, the GPU workers themselves must fail cleanly, with the reason."""
    monkeypatch.setattr(benchmarks.machine, "nvidia_gpu", lambda: "Pretend GPU")
    monkeypatch.setenv("HOME", str(tmp_path))  # the TensorRT provider's engine cache goes under ~/.cache
    out_json = tmp_path / "gpu.json"
    argv = ["--artefacts", str(tiny_artefacts[0]), "--batch-sizes", "1", "--iterations", "2", "--warmup", "1",
            "--budget-s", "0.05", "--backends", ",".join(GPU_ROWS), "--json", str(out_json)]
    assert bench.main(argv) == 0
    rows = json.loads(out_json.read_text())["results"]
    assert {r["backend"] for r in rows} == set(GPU_ROWS)
    for row in rows:
        check_row(row)
        assert row["skipped"], row
    reasons = {r["backend"]: r["skipped"] for r in rows}
    for name in ("torch-cuda", "torch-cuda-half-resident", "torch-compile-half"):
        assert "torch.cuda.is_available() is False" in reasons[name]
    for name in ("ort-cuda", "ort-cuda-graph", "ort-cuda-resident", "ort-cuda-graph-resident"):
        assert "cuda" in reasons[name].lower()
    assert "tensorrt" in reasons["ort-tensorrt"].lower()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_no_export_is_one_line_and_exit_2(tmp_path):
    for directory in (tmp_path, tmp_path / "missing"):
        proc = _cli("--artefacts", str(directory))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "python export.py" in lines[0], proc.stderr
        assert proc.stdout == ""


def test_variants_pick_the_artefacts_timed(tiny_artefacts, tmp_path):
    proc = _cli("--artefacts", str(tiny_artefacts[0]), "--variants", "plain,warp-drive")
    assert proc.returncode == 2 and "'warp-drive'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    out_json = tmp_path / "plain.json"
    argv = ["--artefacts", str(tiny_artefacts[0]), "--batch-sizes", "1", "--iterations", "2", "--warmup", "1",
            "--budget-s", "0.05", "--backends", "ort-cpu", "--variants", "plain", "--json", str(out_json)]
    assert bench.main(argv) == 0
    rows = json.loads(out_json.read_text())["results"]
    assert [r["artefact"] for r in rows] == ["vision_model.onnx"], rows
    argv[argv.index("plain")] = "int8"  # not in this export: the plain file is left out too
    assert bench.main(argv) == 0
    rows = json.loads(out_json.read_text())["results"]
    assert len(rows) == 1 and rows[0]["artefact"].startswith("no ") and "has no image-tower" in rows[0]["skipped"], rows


def test_rounds_pool_each_points_calls(tiny_artefacts, tmp_path, capsys):
    """--rounds N: every backend runs N times (a fresh worker each), and each point's statistics
    cover all its rounds' calls."""
    out_json = tmp_path / "rounds.json"
    argv = ["--artefacts", str(tiny_artefacts[0]), "--batch-sizes", "1,2", "--iterations", "3", "--warmup", "1",
            "--budget-s", "5", "--backends", "ort-cpu", "--variants", "plain", "--rounds", "3",
            "--json", str(out_json)]
    assert bench.main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(out_json.read_text())
    assert result["run"]["rounds"] == 3 and "3 rounds, alternating" in captured.out
    assert captured.err.count("ort-cpu vision_model.onnx (fp32): b1") == 3, captured.err
    rows = result["results"]
    assert [(r["backend"], r["artefact"], r["batch_size"]) for r in rows] == [
        ("ort-cpu", "vision_model.onnx", 1), ("ort-cpu", "vision_model.onnx", 2)]
    for row in rows:
        check_row(row)
        assert row["skipped"] is None, row
        assert len(row["rounds_p50_ms"]) == 3 and row["iterations"] == 9 == len(row["samples_ms"]), row
        assert min(row["rounds_p50_ms"]) <= row["p50_ms"] <= max(row["rounds_p50_ms"])
        assert row["p50_ms"] == pytest.approx(float(np.median(row["samples_ms"])), rel=1e-3)
    proc = _cli("--artefacts", str(tiny_artefacts[0]), "--rounds", "0")
    assert proc.returncode == 2 and "--rounds" in proc.stderr and proc.stdout == "", proc.stderr


def test_unknown_backend_exit_2(tiny_artefacts):
    proc = _cli("--artefacts", str(tiny_artefacts[0]), "--backends", "torch-eager,warp-drive")
    assert proc.returncode == 2
    assert "warp-drive" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_device_resident_and_half_modes_run_on_the_cpu(tiny_artefacts, tmp_path, monkeypatch):
    """The GPU rows' modes (inputs staged before the clock and pooler_output alone copied back;
    weights cast instead of autocast) run here through CPU twins of those backends, so their code
    runs without a GPU, and their outputs are checked against the same model run plainly."""
    import numpy as np

    from benchmarks import backends, worker
    from runtime.contract.kinds import ONNX
    from runtime.runners.onnxruntime_model import OnnxModel

    twins = [backends.Backend("test-ort-resident", "cpu", backends.OrtRunner, "ORT CPU, staged inputs",
                              formats=(ONNX,), provider="cpu", resident=True),
             backends.Backend("test-ort-bound-resident", "cpu", backends.OrtRunner,
                              "ORT CPU, staged inputs copied into the bound buffer (as with CUDA graphs)",
                              formats=(ONNX,), provider="cpu", resident=True, bound_resident=True),
             backends.Backend("test-torch-bf16-cast-resident", "cpu", backends.TorchRunner,
                              "torch .to(bfloat16), staged inputs", precision="bf16", cast_weights=True, resident=True)]
    for twin in twins:
        monkeypatch.setitem(backends.BACKENDS, twin.name, twin)
    directory, _ = tiny_artefacts
    path = directory / "vision_model.onnx"
    config = json.loads((directory / "config.json").read_text())
    vision = config.get("vision_config", config)
    shape = [3, vision["image_size"], vision["image_size"]]
    plain = OnnxModel(path)
    eager = backends.load_vision_tower(vision, None)  # seeded random weights, as the torch twin's
    references = {"test-ort-resident": lambda x: plain.run(x)["pooler_output"],
                  "test-ort-bound-resident": lambda x: plain.run(x)["pooler_output"],
                  "test-torch-bf16-cast-resident": lambda x: eager(torch.from_numpy(x))[1].detach().numpy()}
    for twin in twins:
        reference = {str(b): references[twin.name](worker.make_inputs(shape, b, 1, 0)[0]) for b in (1, 2)}
        np.savez(tmp_path / f"{twin.name}.npz", **reference)
        result = worker.backend({"kind": "backend", "backend": twin.name, "path": str(path), "threads": 2,
                                 "batch_sizes": [1, 2], "input_shape": shape, "seed": 0, "vision_config": vision,
                                 "iterations": 3, "warmup": 1, "budget_s": 0.05, "inputs": 2,
                                 "reference": str(tmp_path / f"{twin.name}.npz")})
        assert "error" not in result, result
        assert [r["batch_size"] for r in result["rows"]] == [1, 2]
        for row in result["rows"]:
            assert "skipped" not in row and row["p50_ms"] > 0, row
            assert row["min_cosine"] >= (0.99999 if twin.name.startswith("test-ort") else 0.99), row
