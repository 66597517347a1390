"""`--target`: the export races its gated files, the manifest records the fastest per runtime, and
the runtime runs that file when no variant is asked for (tiny config; timings faked where the
choice logic is under test, since real ones differ from CPU to CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import Artefacts, ImageEncoder
from runtime.contract.manifest import Manifest
from runtime.contract.selection import RaceEntry, Selection
from runtime.runners.environment import cpu_identity
from siglip_export.verify.samples import PHOTOS_DIR

from conftest import hf_model, tiny_config

REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted(str(p) for p in PHOTOS_DIR.glob("*.jpg"))[:2]

pytest.importorskip("openvino", reason="--target cpu races OpenVINO's files too")
pytest.importorskip("nncf", reason="--target cpu builds ov-int8 with NNCF")


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """A tiny checkpoint exported with --target cpu (and ONNX Runtime's int8 besides), through the CLI
    users run: (artefact dir, stdout)."""
    base = tmp_path_factory.mktemp("raced")
    hf_model(tiny_config()).save_pretrained(base / "ckpt")
    done = subprocess.run([sys.executable, "export.py", "--checkpoint", str(base / "ckpt"), "--output-dir",
                           str(base / "art"), "--target", "cpu", "--variants", "int8", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base / "art", done.stdout


def with_selection(src: Path, dst: Path, edit) -> Path:
    """A copy of export `src` whose manifest's selection is `edit(selection dict)` (None: removed)."""
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["selection"] = edit(manifest["selection"])
    if manifest["selection"] is None:
        del manifest["selection"]
    path.write_text(json.dumps(manifest))
    return dst


def faked(fastest_first: list[tuple[str, str | None, str, str]], machine=None) -> dict:
    """A raced selection of the vision tower with made-up timings, fastest first."""
    entries = [RaceEntry(f, v, rt, p, {1: 10.0 * (i + 1), 8: 50.0 * (i + 1)})
               for i, (f, v, rt, p) in enumerate(fastest_first)]
    return Selection("cpu", True, "faked for a test", {"vision": entries}, machine=machine or cpu_identity(),
                     batch_sizes=[1, 8], rounds=3).to_dict()


OV_INT8 = ("vision_model.ov-int8.xml", "ov-int8", "openvino-cpu", "cpu")
INT8 = ("vision_model.int8.onnx", "int8", "onnxruntime-cpu", "cpu")
OPT = ("vision_model.opt.onnx", "opt", "onnxruntime-cpu", "cpu")
PLAIN_OV = ("vision_model.onnx", None, "openvino-cpu", "openvino")


def test_target_cpu_records_the_race_and_embed_runs_its_winner_without_a_variant(raced, tmp_path):
    directory, stdout = raced
    selection = Manifest.read(directory).selection
    assert selection is not None and selection.raced and selection.target == "cpu"
    assert selection.machine == cpu_identity() and selection.batch_sizes == [1, 8]
    results = selection.results("vision")
    # every published float32-input vision file raced in each CPU runtime where it passed its gate
    assert {(e.file, e.runtime) for e in results} >= {("vision_model.onnx", "onnxruntime-cpu"),
                                                      ("vision_model.onnx", "openvino-cpu"),
                                                      ("vision_model.int8.onnx", "onnxruntime-cpu"),
                                                      ("vision_model.ov-int8.xml", "openvino-cpu")}
    assert all(set(e.ms) == {1, 8} and all(v > 0 for v in e.ms.values()) for e in results)
    assert [e.score_ms for e in results] == sorted(e.score_ms for e in results)
    written = json.loads((directory / "manifest.json").read_text())["selection"]["towers"]["vision"]
    assert written["fastest"]["file"] == results[0].file and written["fastest"]["runner_up"]["file"] == results[1].file
    assert set(written["winners"]) == {"onnxruntime-cpu", "openvino-cpu"}
    assert f"fastest vision tower on this machine: {results[0].label}" in stdout
    assert "race vision: round 3/3 done" in stdout and "left" in stdout

    out = tmp_path / "e.npy"
    done = subprocess.run([sys.executable, "-m", "runtime", "embed", str(directory), *PHOTOS, "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"image tower: {results[0].file} on ")
    assert "the fastest verified file for the CPU in the export's race" in done.stderr
    winner = ImageEncoder(directory, variant=results[0].variant or "fp32", provider=results[0].provider)
    np.testing.assert_allclose(np.load(out), winner.embed(PHOTOS), atol=1e-5)


def test_the_recorded_fastest_verified_file_runs_with_its_timing_and_runner_up(raced, tmp_path):
    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([OV_INT8, INT8, OPT]))
    choice = Artefacts(directory).choose("vision")
    assert (choice.variant, choice.file, choice.provider) == ("ov-int8", "vision_model.ov-int8.xml", "cpu")
    assert "10.0 / 50.0 ms at batch 1 / 8" in choice.reason
    assert "runner-up vision_model.int8.onnx in onnxruntime-cpu, 20.0 / 100.0 ms" in choice.reason
    encoder = ImageEncoder(directory)
    assert encoder.describe().startswith("vision_model.ov-int8.xml on OpenVINO")
    assert "the race ran on another CPU" not in encoder.describe()


def test_a_provider_picks_among_its_own_runtimes(raced, tmp_path):
    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([OV_INT8, PLAIN_OV, INT8, OPT]))
    artefacts = Artefacts(directory)
    assert artefacts.choose("vision", provider="openvino").file == "vision_model.ov-int8.xml"
    # an ONNX file with provider cpu runs in ONNX Runtime: the .xml winner is OpenVINO's own CPU device
    assert artefacts.choose("vision", provider="cpu").variant == "ov-int8"
    # no entry for the GPU's runtimes: the plain file, saying why
    gpu = artefacts.choose("vision", provider="cuda")
    assert gpu.variant is None and "has no result for provider cuda" in gpu.reason


def test_a_file_not_verified_in_its_runtime_is_passed_over(raced, tmp_path):
    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([OV_INT8, INT8, OPT]))
    manifest = json.loads((directory / "manifest.json").read_text())
    record = next(a for a in manifest["artefacts"] if a.get("variant") == "ov-int8")
    record["parity"]["passed"] = False  # as if it had missed its gate in OpenVINO
    for row in record["parity"]["results"]:
        row["passed"], row["pooler_output"]["min_cosine"] = False, 0.5
    (directory / "manifest.json").write_text(json.dumps(manifest))
    choice = Artefacts(directory).choose("vision")
    assert choice.variant == "int8", choice.reason


def test_a_winner_whose_runtime_is_not_installed_gives_way(raced, tmp_path, monkeypatch):
    import runtime.artefacts as artefacts_module

    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([OV_INT8, INT8, OPT]))
    monkeypatch.setattr(artefacts_module, "_installed", lambda runtime: runtime != "openvino-cpu")
    choice = Artefacts(directory).choose("vision")
    assert choice.variant == "int8" and "openvino-cpu left out: not installed here" in choice.reason
    only_ov = with_selection(raced[0], tmp_path / "b", lambda s: faked([OV_INT8, PLAIN_OV]))
    fallback = Artefacts(only_ov).choose("vision")
    assert fallback.variant is None and "not installed here" in fallback.reason


def test_an_export_without_race_records_runs_fp32_with_a_note(raced, tmp_path):
    directory = with_selection(raced[0], tmp_path / "old", lambda s: None)
    choice = Artefacts(directory).choose("vision")
    assert choice.variant is None and choice.file == "vision_model.onnx"
    assert "no race records" in choice.reason and "--target cpu" in choice.reason
    out = tmp_path / "e.npy"
    done = subprocess.run([sys.executable, "-m", "runtime", "embed", str(directory), *PHOTOS, "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("image tower: vision_model.onnx on CPUExecutionProvider") and "no race" in done.stderr


def test_variant_fp32_forces_the_plain_file(raced, tmp_path):
    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([INT8, OPT]))
    for name in ("fp32", "plain"):
        encoder = ImageEncoder(directory, variant=name)
        assert encoder.model.path.name == "vision_model.onnx" and "asked for" in encoder.describe()
    assert ImageEncoder(directory).model.path.name == "vision_model.int8.onnx"


def test_a_race_from_another_cpu_still_picks_its_winner_and_says_so(raced, tmp_path):
    elsewhere = {"cpu": "Some Other CPU 9000", "isa": ["avx512f", "amx_tile"], "cores": 64}
    directory = with_selection(raced[0], tmp_path / "a", lambda s: faked([INT8, OPT], machine=elsewhere))
    choice = Artefacts(directory).choose("vision")
    assert choice.variant == "int8"
    assert "the race ran on another CPU (Some Other CPU 9000, avx512f amx_tile)" in choice.reason


def test_cuda_target_without_a_gpu_is_chosen_by_rule_and_not_raced(tmp_path):
    from siglip_export.pipeline import ExportOptions, run_export
    from siglip_export.variants.targets import gpu_here

    if gpu_here():
        pytest.skip("this machine has a GPU: the cuda target races there instead")
    hf_model(tiny_config()).save_pretrained(tmp_path / "ckpt")
    lines = []
    manifest = run_export(ExportOptions(checkpoint=tmp_path / "ckpt", output_dir=tmp_path / "art", target="cuda",
                                        towers=("vision",), verify_batch_sizes=(2,)), emit=lines.append)
    selection = manifest.selection
    assert selection.target == "cuda" and not selection.raced and "not raced" in selection.note
    assert [(e.variant, e.runtime) for e in selection.results("vision")] == [("cuda-fp16", "onnxruntime-cuda")]
    assert any("not raced" in line for line in lines)
    # on this CPU machine the runtime has no GPU pick to run: the plain file, with why
    choice = Artefacts(tmp_path / "art").choose("vision")
    assert choice.variant is None and "has no result for the CPU" in choice.reason
    # and on a GPU the rule's pick was never verified in ONNX Runtime's CUDA provider: not run unasked
    on_gpu = Artefacts(tmp_path / "art").choose("vision", provider="cuda")
    assert on_gpu.variant is None and "vision_model.cuda-fp16.onnx, was never verified there" in on_gpu.reason
    assert "--variant cuda-fp16 --allow-unverified" in on_gpu.reason


@pytest.mark.parametrize("argv, message", [
    (["--target", "gpu"], "invalid choice: 'gpu'"),
])
def test_an_unknown_target_is_one_line_and_exit_2(argv, message):
    done = subprocess.run([sys.executable, "export.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_target_whose_runtime_is_missing_is_refused_in_one_line(monkeypatch):
    import importlib.util

    from runtime.errors import UserError
    from siglip_export.variants import targets

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(UserError) as raised:
        targets.resolve("cpu")
    assert "openvino is not installed" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UserError, match="unknown target 'tpu'"):
        targets.resolve("tpu")
    assert targets.resolve("portable").variants == ()


def test_the_race_alternates_and_ranks_by_the_geometric_mean(raced):
    from siglip_export.progress import Progress
    from siglip_export.variants.race import candidates, race, race_inputs

    directory = raced[0]
    manifest = Manifest.read(directory)
    entrants = candidates(manifest.records("vision"), ("onnxruntime-cpu",), directory)[:2]
    assert len(entrants) == 2
    order, fake = [], {id(entrants[0]): (0.001, 0.100), id(entrants[1]): (0.010, 0.020)}

    def clock(runner, x):
        who = next(e for e in entrants if e.runner is runner)
        order.append(who.record.file)
        return fake[id(who)][0 if len(x) == 1 else 1]

    lines = []
    inputs = race_inputs("vision", manifest.find("vision", None).inputs[0].shape, None, seed=0)
    entries = race("vision", entrants, inputs, threads=1, progress=Progress(lines.append), rounds=2, clock=clock)
    first, second = entrants[0].record.file, entrants[1].record.file
    assert order == [first] * 4 + [second] * 4 + [second] * 4 + [first] * 4  # 3 calls at batch 1, 1 at 8, reversed
    by_file = {e.file: e for e in entries}
    assert by_file[first].ms == {1: 1.0, 8: 100.0} and by_file[second].ms == {1: 10.0, 8: 20.0}
    # geometric mean: 10 ms vs 14.1 ms, so the first wins though it is slower at batch 8
    assert sorted(entries, key=lambda e: e.score_ms)[0].file == first
    assert any("round 1/2 done" in line and "left" in line for line in lines)
