"""`python export.py` end to end: artefacts, manifest, parity gate, atomic publication, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import hf_model, rel_err, tiny_config, write_checkpoint

import export as export_cli
from runtime.errors import ArtefactError
from runtime.runners.onnxruntime_model import OnnxModel
from siglip_export.pipeline import ExportOptions, run_export
from siglip_export.verify.gate import Gate, VerificationError

ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(directory.iterdir())}


def run_cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *map(str, args)], cwd=kwargs.pop("cwd", ROOT),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    """The CLI run once on a tiny checkpoint that transformers wrote: (checkpoint dir, output dir, hf model, process)."""
    base = tmp_path_factory.mktemp("e2e")
    hf = hf_model(tiny_config())
    hf.save_pretrained(base / "ckpt")
    (base / "ckpt" / "spiece.model").write_bytes(b"not a real sentencepiece model, but it must be copied")
    proc = run_cli("--checkpoint", base / "ckpt", "--output-dir", base / "out")
    return base / "ckpt", base / "out", hf, proc


def test_cli_exports_both_towers(exported_tiny):
    _, out, _, proc = exported_tiny
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for step in ("export vision_model.onnx", "simplify text_model.onnx", "verify text_model.onnx", "publish"):
        assert step in proc.stdout
    assert "| vision_model.onnx |" in proc.stdout and "pass" in proc.stdout  # the summary table
    assert "RANDOM WEIGHTS" not in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert names == {"vision_model.onnx", "text_model.onnx", "manifest.json", "config.json",
                     "preprocessor_config.json", "spiece.model"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")], "scratch directory left behind"


def test_manifest_matches_files(exported_tiny):
    ckpt, out, hf, _ = exported_tiny
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "checkpoint" and manifest["source"]["random_weights"] is False
    assert manifest["source"]["weights"] == [{"file": "model.safetensors", "sha256": sha256(ckpt / "model.safetensors")}]
    assert manifest["model"]["logit_scale"] == pytest.approx(hf.logit_scale.item())
    assert manifest["model"]["logit_bias"] == pytest.approx(hf.logit_bias.item())
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= manifest["tools"].keys() or "onnxruntime-gpu" in manifest["tools"]
    for art in manifest["artefacts"]:
        assert art["sha256"] == sha256(out / art["file"])
        assert art["opset"] == 18 and art["precision"] == "fp32" and art["external_data"] == []
        assert art["parity"]["passed"] and art["parity"]["gate"] == {
            "max_rel_err": 1e-4, "min_cosine": 0.99999, "outputs": ["last_hidden_state", "pooler_output"]}
        assert {r["batch_size"] for r in art["parity"]["results"]} == {1, 3, 8}
        assert {r["inputs"] for r in art["parity"]["results"]} in ({"photos", "random"}, {"padded-text", "random"})
    vision, text = manifest["artefacts"]
    assert vision["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert vision["outputs"] == [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", 16, 32]},
                                 {"name": "pooler_output", "dtype": "float32", "shape": ["batch", 32]}]
    assert text["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}]


def test_batch_axis_symbolic_and_metadata_in_published_files(exported_tiny):
    _, out, _, _ = exported_tiny
    for name, input_name in (("vision_model.onnx", "pixel_values"), ("text_model.onnx", "input_ids")):
        model = onnx.load(str(out / name))
        values = [*model.graph.input, *model.graph.output]
        assert [v.name for v in values] == [input_name, "last_hidden_state", "pooler_output"]
        for v in values:
            assert v.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert model.opset_import[0].version == 18
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["siglip.config"])["hidden_size"] == 32
        if name == "vision_model.onnx":
            assert json.loads(meta["siglip.preprocessing"])["size"] == {"height": 32, "width": 32}


def test_one_file_answers_batch_1_3_8_like_transformers(exported_tiny):
    _, out, hf, _ = exported_tiny
    vision, text = OnnxModel(out / "vision_model.onnx"), OnnxModel(out / "text_model.onnx")
    for batch in (1, 3, 8):
        pixels = torch.randn(batch, 3, 32, 32)
        ids = torch.randint(0, 99, (batch, 16))
        with torch.no_grad():
            v_ref = hf.get_image_features(pixel_values=pixels)
            t_ref = hf.get_text_features(input_ids=ids)
        v = vision.run(pixels.numpy())
        t = text.run(ids.numpy())
        assert v["pooler_output"].shape == (batch, 32) and v["last_hidden_state"].shape == (batch, 16, 32)
        assert rel_err(v["pooler_output"], v_ref.pooler_output) <= 1e-4
        assert rel_err(v["last_hidden_state"], v_ref.last_hidden_state) <= 1e-4
        assert rel_err(t["pooler_output"], t_ref.pooler_output) <= 1e-4


def test_external_data_with_forced_threshold(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    manifest = run_export(ExportOptions(checkpoint=ckpt, output_dir=tmp_path / "out", towers=("vision",),
                                        external_data_threshold=1000), emit=None)
    art = manifest.artefacts[0]
    data = tmp_path / "out" / "vision_model.onnx.data"
    assert [(d.file, d.sha256) for d in art.external_data] == [("vision_model.onnx.data", sha256(data))]
    assert data.stat().st_size > (tmp_path / "out" / "vision_model.onnx").stat().st_size
    assert data.stat().st_mode & 0o777 == (tmp_path / "out" / "vision_model.onnx").stat().st_mode & 0o777
    assert art.parity.passed
    assert OnnxModel(tmp_path / "out" / "vision_model.onnx").run(np.zeros((2, 3, 32, 32), np.float32))
    data.rename(tmp_path / "elsewhere.data")
    with pytest.raises(ArtefactError, match="vision_model.onnx"):
        OnnxModel(tmp_path / "out" / "vision_model.onnx")


def test_towers_flag_and_vision_only_checkpoint(tmp_path):
    config = tiny_config()
    hf = hf_model(config.vision_config)
    ckpt = write_checkpoint(tmp_path / "v", config.vision_config.to_dict(), hf.state_dict())
    manifest = run_export(ExportOptions(checkpoint=ckpt, output_dir=tmp_path / "out", verify_batch_sizes=(2,)), emit=None)
    assert [a.file for a in manifest.artefacts] == ["vision_model.onnx"]
    assert manifest.model.logit_scale is None
    assert export_cli.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "o2"), "--towers", "text"]) == 2


def test_parity_miss_exits_3_and_publishes_nothing(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    out = tmp_path / "out"
    assert export_cli.main(["--checkpoint", str(ckpt), "--output-dir", str(out), "--towers", "vision", "--quiet"]) == 0
    before = snapshot(out)

    import siglip_export.pipeline as pipeline

    real = pipeline.eager_outputs

    def drifted(tower, x):  # the reference moves by 1e-3 relative: the fp32 gate must catch it
        return {k: v * (1 + 1e-3) for k, v in real(tower, x).items()}

    monkeypatch.setattr(pipeline, "eager_outputs", drifted)
    capsys.readouterr()
    assert export_cli.main(["--checkpoint", str(ckpt), "--output-dir", str(out), "--towers", "vision"]) == 3
    err = capsys.readouterr().err
    assert "parity gate failed, nothing published" in err
    assert re.search(r"photos batch 1 last_hidden_state: rel_err 0\.000999", err), err
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_impossible_gate_raises_with_numbers(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    with pytest.raises(VerificationError, match=r"min_cosine >= 1\.5 on last_hidden_state, pooler_output\)\n  photos batch 1 last_hidden_state: rel_err \S+, min_cosine 1\.0000000"):
        run_export(ExportOptions(checkpoint=ckpt, output_dir=tmp_path / "out", towers=("vision",),
                                 gate=Gate(max_rel_err=1e-4, min_cosine=1.5)), emit=None)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def good_state():
    return tiny_config().to_dict(), dict(hf_model(tiny_config()).state_dict())


def _bad_input_cases(tmp_path, good_state):
    config, state = good_state
    cases = {}
    cases["missing checkpoint directory"] = (["--checkpoint", tmp_path / "nope"], "checkpoint directory not found")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(config))
    cases["no weights file"] = (["--checkpoint", tmp_path / "noweights"], "no weights file")
    corrupt = write_checkpoint(tmp_path / "corrupt", config, state)
    (corrupt / "model.safetensors").write_bytes(b"garbage" * 10)
    cases["corrupt safetensors"] = (["--checkpoint", corrupt], "corrupt or truncated")
    truncated = write_checkpoint(tmp_path / "truncated", config, state)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 100])
    cases["truncated safetensors"] = (["--checkpoint", truncated], "corrupt or truncated")
    missing = dict(state)
    del missing["text_model.head.bias"]
    cases["missing tensor"] = (["--checkpoint", write_checkpoint(tmp_path / "m", config, missing)],
                               "missing tensors: text_model.head.bias")
    extra = {**state, "extra.weight": torch.zeros(1)}
    cases["unexpected tensor"] = (["--checkpoint", write_checkpoint(tmp_path / "x", config, extra)],
                                  "unexpected tensors: extra.weight")
    shaped = {**state, "logit_bias": torch.zeros(2)}
    cases["mis-shaped tensor"] = (["--checkpoint", write_checkpoint(tmp_path / "s", config, shaped)],
                                  r"logit_bias: checkpoint (2,) vs model (1,)")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    torch.save(state, pickled / "pytorch_model.bin")
    cases["pickle-only checkpoint"] = (["--checkpoint", pickled], "pickle checkpoint")
    (tmp_path / "afile").write_text("x")
    cases["output path is a file"] = (["--output-dir", tmp_path / "afile"], "is a file")
    cases["output parent is a file"] = (["--output-dir", tmp_path / "afile" / "out"], "not writable")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("mine")
    cases["output dir not an export"] = (["--output-dir", tmp_path / "precious"], "was not written by siglip-export")
    cases["unsupported opset"] = (["--opset", "13"], "unsupported opset 13")
    bad_config = tmp_path / "badconfig"
    bad_config.mkdir()
    (bad_config / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": {"hidden_act": "relu"}}))
    cases["unsupported config value"] = (["--checkpoint", bad_config], "hidden_act 'relu'")
    return cases


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, good_state, capsys):
    for name, (args, message) in _bad_input_cases(tmp_path, good_state).items():
        argv = [str(a) for a in args]
        if "--output-dir" not in argv:
            argv += ["--output-dir", str(tmp_path / "out")]
        capsys.readouterr()
        code = export_cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err!r}"
        assert message in lines[0], f"{name}: {lines[0]!r}"
        assert not (tmp_path / "out").exists(), name
    assert (tmp_path / "precious" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bad_flags_exit_2_without_traceback():
    for args, message in ((["--verify-batch-sizes", "1,0"], "positive integers"), (["--towers", "audio"], "vision"),
                          (["--checkpoint", "a", "--preset", "siglip-base-patch16-224"], "not allowed with")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--checkpoint", tmp_path / "nope", "--output-dir", tmp_path / "out", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_sigkill_mid_export_leaves_no_partial_artefact(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    out = tmp_path / "out"
    assert run_cli("--checkpoint", ckpt, "--output-dir", out, "--quiet").returncode == 0
    before = snapshot(out)
    # Kill at several moments: while the model is written, after it is written, while verifying.
    for marker in (".raw.vision_model.onnx", "vision_model.onnx", "text_model.onnx"):
        proc = subprocess.Popen([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(ckpt),
                                 "--output-dir", str(out), "--quiet"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scratch = tmp_path / f".out.tmp-{proc.pid}"
        deadline = time.monotonic() + 120
        while not (scratch / marker).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"export finished before the kill at {marker}"
        assert snapshot(out) == before, f"killed at {marker}: the published export changed"
    # The next run cleans up what the killed runs left, and publishes.
    assert run_cli("--checkpoint", ckpt, "--output-dir", out, "--quiet", "--seed", "1").returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    assert json.loads((out / "manifest.json").read_text())["artefacts"][0]["sha256"] == sha256(out / "vision_model.onnx")


def test_sigkill_first_export_publishes_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    proc = subprocess.Popen([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(ckpt),
                             "--output-dir", str(tmp_path / "out"), "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = tmp_path / f".out.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    while not (scratch / "vision_model.onnx").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_export_at_base_size(tmp_path):
    """`python export.py` with no arguments: the base preset, random weights, said loudly."""
    proc = run_cli("--output-dir", tmp_path / "artifacts", timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("RANDOM WEIGHTS") == 2 and "--checkpoint DIR" in proc.stdout
    manifest = json.loads((tmp_path / "artifacts" / "manifest.json").read_text())
    assert manifest["source"] == {**manifest["source"], "type": "preset", "preset": "siglip-base-patch16-224",
                                  "seed": 0, "random_weights": True}
    assert "RANDOM WEIGHTS" in manifest["source"]["warning"]
    vision, text = manifest["artefacts"]
    assert vision["outputs"][0]["shape"] == ["batch", 196, 768] and text["inputs"][0]["shape"] == ["batch", 64]
    assert vision["parity"]["passed"] and text["parity"]["passed"]
    for art in manifest["artefacts"]:
        assert art["sha256"] == sha256(tmp_path / "artifacts" / art["file"])


def test_never_deletes_what_an_earlier_export_did_not_write(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--towers", "vision", "--verify-batch-sizes", "2", "--quiet"]
    assert export_cli.main([*args, "--output-dir", str(out)]) == 0
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert export_cli.main([*args, "--output-dir", str(out)]) == 2
    assert "holds files siglip-export did not write (my_notes.txt)" in capsys.readouterr().err
    assert (out / "my_notes.txt").read_text() == "mine"
    # The checkpoint inside the directory that would be replaced: refused before anything runs.
    (out / "my_notes.txt").unlink()
    inner = out / "ckpt"
    hf_model(tiny_config()).save_pretrained(inner)
    assert export_cli.main(["--checkpoint", str(inner), "--output-dir", str(out), "--quiet"]) == 2
    assert "lies inside --output-dir" in capsys.readouterr().err
    assert (inner / "model.safetensors").is_file()


def test_output_dir_given_as_a_symbolic_link(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for _ in range(2):  # first export, then a replacement through the same link
        assert export_cli.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "link"), "--towers",
                                "vision", "--verify-batch-sizes", "2", "--quiet"]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "link", "real"]


def test_negative_seed_is_a_usage_error(capsys):
    try:
        code = export_cli.main(["--seed", "-1"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "expected a non-negative integer, got '-1'" in capsys.readouterr().err
