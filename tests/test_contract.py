"""The artefact contract (runtime/contract/kinds.py), the typed manifest (runtime/contract/manifest.py), and a
throw-away kind that flows through export -> manifest -> Artefacts -> Triton -> benchmark plan."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import hf_model, tiny_config

import runtime.contract.kinds as contract
from runtime import ArtefactError, ImageEncoder, InputError, ProviderError, UserError
from runtime.__main__ import main as runtime_main
from runtime.artefacts import Artefacts
from runtime.contract.kinds import KINDS, ONNX, ArtefactKind, Runner, open_runner, register, unregister
from runtime.contract.manifest import SCHEMA_VERSION, Manifest
from runtime.runners.onnxruntime_model import OnnxModel

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
OLD_MANIFEST = Path(__file__).parent / "data" / "manifest-0.1.0.json"  # written by siglip-export 0.1.0

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))


# --- the registry -------------------------------------------------------------------------------

def test_module_docstring_table_is_the_registry():
    """The table a reader sees at the top of runtime/contract/kinds.py lists exactly the registered kinds."""
    rows = [line for line in contract.__doc__.splitlines() if line.startswith("| ") and "---" not in line][1:]
    documented = {}
    for row in rows:
        variant, file, fmt, precision, runner, providers, gate = [c.strip().strip("`") for c in row.strip("|").split("|")]
        documented[None if variant == "(plain)" else variant] = (file, fmt, precision, runner, providers, gate)
    assert set(documented) == set(KINDS)
    for variant, kind in KINDS.items():
        file, fmt, precision, runner, providers, gate = documented[variant]
        stem = "vision_model" if kind.towers == ("vision",) else "<tower>_model"
        assert file == stem + kind.suffix, variant
        assert (fmt, precision, runner) == (kind.format, kind.precision, kind.runner), variant
        assert providers == ", ".join(kind.providers), variant
        assert gate == ("fp32" if kind.gate is None else str(kind.gate)), variant


def test_kinds_have_distinct_files_and_valid_facts():
    files = [k.file(t) for k in KINDS.values() for t in k.towers]
    assert len(files) == len(set(files))
    for kind in KINDS.values():
        assert kind.builds_from is None or kind.builds_from in KINDS
        assert kind.gate is None or 0 < kind.gate <= 1
    with pytest.raises(ValueError, match="would write vision_model.opt.onnx, as 'opt' does"):
        register(ArtefactKind("opt2", ".opt.onnx", ONNX, "fp32", "onnxruntime", ("cpu",), gate=0.9))
    with pytest.raises(ValueError, match="already registered"):
        register(KINDS["int8"])
    with pytest.raises(ValueError, match="unknown format"):
        ArtefactKind("x", ".x.bin", "pickle", "fp32", "onnxruntime", ("cpu",), gate=0.9)
    with pytest.raises(InputError, match="unknown variant 'turbo' \\(choose from opt, int8"):
        contract.kind_of("turbo")


def test_runners_implement_the_protocol(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    model = open_runner(KINDS[None], artefacts / "vision_model.onnx", provider="cpu")
    assert isinstance(model, OnnxModel) and isinstance(model, Runner)
    if importlib.util.find_spec("openvino") is not None:
        from runtime.runners.openvino_model import OpenVinoModel

        assert isinstance(OpenVinoModel(artefacts / "vision_model.onnx", precision="f32"), Runner)


def test_a_provider_the_kind_does_not_run_on_is_refused(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    with pytest.raises(InputError, match=r"runs on ONNX Runtime with provider cpu; provider 'cuda' does not apply"):
        open_runner(KINDS["int8"], artefacts / "vision_model.onnx", provider="cuda")
    with pytest.raises(InputError, match="unknown provider 'gpu'"):
        open_runner(KINDS["int8"], artefacts / "vision_model.onnx", provider="gpu")


def test_auto_tries_the_kinds_providers_in_order_up_to_the_cpu(monkeypatch):
    import runtime.runners.onnxruntime_model as session

    class FakeOrt:  # an onnxruntime-gpu build on a machine with a driver
        @staticmethod
        def get_available_providers():
            return [session.TENSORRT, session.CUDA, session.CPU]

    monkeypatch.setattr(session, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(session, "tensorrt_libraries_present", lambda: True)
    candidates = session.OnnxModel._candidates
    assert candidates(None, FakeOrt, "auto", KINDS[None].providers) == [session.TENSORRT, session.CUDA, session.CPU]
    assert candidates(None, FakeOrt, "auto", KINDS["int8"].providers) == [session.CPU]
    assert candidates(None, FakeOrt, "auto", KINDS["int8-qdq"].providers) == [session.CUDA, session.CPU]
    assert candidates(None, FakeOrt, "tensorrt", KINDS[None].providers) == [session.TENSORRT, session.CUDA, session.CPU]
    # onnxruntime-gpu lists its TensorRT provider without TensorRT installed: auto skips it, and
    # asking for it by name fails in one line (before ORT's page of "EP Error")
    monkeypatch.setattr(session, "tensorrt_libraries_present", lambda: False)
    assert candidates(None, FakeOrt, "auto", KINDS[None].providers) == [session.CUDA, session.CPU]
    with pytest.raises(ProviderError, match=r"needs TensorRT's libraries \(libnvinfer.so.10\)"):
        candidates(None, FakeOrt, "tensorrt", KINDS[None].providers)
    assert candidates(None, FakeOrt, "cuda", KINDS[None].providers) == [session.CUDA, session.CPU]
    monkeypatch.setattr(session, "nvidia_driver_present", lambda: False)
    assert candidates(None, FakeOrt, "auto", KINDS[None].providers) == [session.CPU]


# --- the manifest -------------------------------------------------------------------------------

def test_a_0_1_0_manifest_loads_and_keeps_every_field():
    raw = json.loads(OLD_MANIFEST.read_text())
    assert "schema_version" not in raw and raw["tools"]["siglip-export"] == "0.1.0"
    manifest = Manifest.from_dict(raw)
    assert [(a.file, a.format) for a in manifest.records("vision")] == [
        ("vision_model.onnx", "onnx"), ("vision_model.opt.onnx", "onnx"), ("vision_model.int8.onnx", "onnx"),
        ("vision_model.fp16.onnx", "onnx"), ("vision_model.ov-bf16.xml", "openvino")]
    assert manifest.find("vision", "int8").kind is KINDS["int8"]
    assert manifest.rejected[0].parity.worst()["pooler_output_min_cosine"] == raw["rejected"][0]["accuracy"][
        "pooler_output_min_cosine"]
    # Read into records and written back, the 0.1.0 file loses nothing; it gains the schema
    # version, each record's format, and the runtime each parity was measured in (from its provider).
    written = manifest.to_dict()
    assert written["schema_version"] == SCHEMA_VERSION
    runtimes = {"vision_model.ov-bf16.xml": "openvino-cpu", "text_model.ov-bf16.xml": "openvino-cpu"}
    for old, new in zip(raw["artefacts"], written["artefacts"]):
        runtime = runtimes.get(old["file"], "onnxruntime-cpu")
        assert new == {**old, "format": KINDS[old["variant"]].format, "parity": {**old["parity"], "runtime": runtime}}
    assert written["rejected"][0] == {**raw["rejected"][0], "parity": {**raw["rejected"][0]["parity"],
                                                                     "runtime": "onnxruntime-cpu"}}
    assert {k: v for k, v in written.items() if k not in ("schema_version", "artefacts", "rejected")} == \
        {k: v for k, v in raw.items() if k not in ("artefacts", "rejected")}
    assert Manifest.from_dict(json.loads(json.dumps(written))).to_dict() == written


def _as_written_by_0_1_0(directory: Path) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    del data["schema_version"]
    for record in data["artefacts"]:
        del record["format"]
        del record["parity"]["runtime"]
        record.pop("runtimes", None)
    data["tools"]["siglip-export"] = "0.1.0"
    (directory / "manifest.json").write_text(json.dumps(data))


def test_an_export_described_by_a_0_1_0_manifest_still_runs(tiny_artefacts, tmp_path):
    source, _ = tiny_artefacts
    old = tmp_path / "old"
    shutil.copytree(source, old)
    _as_written_by_0_1_0(old)
    assert np.array_equal(ImageEncoder(old, provider="cpu").embed(PHOTOS[:2]),
                          ImageEncoder(source, provider="cpu").embed(PHOTOS[:2]))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=99),
     r"has schema_version 99 \(written by siglip-export .*\); this siglip-export reads up to 4: upgrade"),
    (lambda d: (d.pop("schema_version"), d.update(format="siglip-export/0")),
     r"was written by siglip-export .* \(format 'siglip-export/0'\), which this version cannot read: re-export"),
    (lambda d: d.update(schema_version="two"), r"schema_version 'two', which is not a manifest version: re-export"),
    (lambda d: d["artefacts"][0].pop("sha256"), r"is not a valid manifest: artefacts\[0\] has no 'sha256'"),
    (lambda d: d["artefacts"][0].update(format="pickle"), r"artefacts\[0\]: unknown format 'pickle'"),
    (lambda d: d["artefacts"][1].update(size_bytes="big"), r"artefacts\[1\]: 'size_bytes' is str, expected int"),
    (lambda d: d.update(artefacts=[1]), r"artefacts\[0\] is not a JSON object"),
])
def test_manifests_this_version_cannot_read_are_refused_in_one_line(tiny_artefacts, tmp_path, capsys, change,
                                                                    message):
    source, _ = tiny_artefacts
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    data = json.loads((broken / "manifest.json").read_text())
    change(data)
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match=message):
        Artefacts(broken)
    capsys.readouterr()
    assert runtime_main(["embed", str(broken), str(PHOTOS[0]), "--output", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


# --- a new kind is one registry entry plus its builder -----------------------------------------

@pytest.fixture
def copy_kind():
    """A throw-away kind: the plain fp32 graph under another name, CPU only, image tower only."""
    from siglip_export.variants.registry import BUILDERS, Built, builder

    kind = register(ArtefactKind("fp32-copy", ".copy.onnx", ONNX, "fp32", "onnxruntime", ("cpu",), gate=0.99999,
                                 towers=("vision",), description="test kind: a copy of the plain graph"))

    @builder("fp32-copy")
    def _copy(b, kind, path):
        shutil.copyfile(b.tower.plain, path)
        return Built(path, {"copied_from": b.tower.plain.name}, b.restamp(path, kind.variant))

    yield kind
    unregister("fp32-copy")
    BUILDERS.pop("fp32-copy")


def test_a_registered_kind_flows_through_every_consumer(copy_kind, tmp_path, capsys):
    from benchmarks.backends import BACKENDS
    from benchmarks.plan import plan_backends
    from siglip_export.cli import main as export_main
    from siglip_export.triton.repository import TritonOptions, plan_models

    ckpt = tmp_path / "ckpt"
    hf_model(tiny_config()).save_pretrained(ckpt)
    out = tmp_path / "out"
    # export: the CLI knows the name, the builder runs, the gate verifies it through its runner
    assert export_main(["--checkpoint", str(ckpt), "--output-dir", str(out), "--variants", "fp32-copy,opt",
                        "--verify-batch-sizes", "2", "--quiet"]) == 0
    assert "vision_model.copy.onnx" in capsys.readouterr().out  # the summary table
    # manifest
    manifest = Manifest.read(out)
    record = manifest.find("vision", "fp32-copy")
    assert (record.file, record.format, record.precision) == ("vision_model.copy.onnx", "onnx", "fp32")
    assert record.parity.passed and record.build == {"copied_from": "vision_model.onnx"}
    assert [s.file for s in manifest.skipped] == ["text_model.copy.onnx"]  # image tower only
    # Artefacts and the encoders
    artefacts = Artefacts(out)
    assert artefacts.kind("vision", "fp32-copy") is copy_kind
    assert np.allclose(ImageEncoder(out, variant="fp32-copy").embed(PHOTOS[:2]),
                       ImageEncoder(out, provider="cpu").embed(PHOTOS[:2]), atol=1e-6)
    with pytest.raises(InputError, match="provider 'cuda' does not apply"):
        ImageEncoder(out, variant="fp32-copy", provider="cuda")
    # the Triton plan
    names = [m.name for m in plan_models(artefacts, TritonOptions(variants=(None, "fp32-copy")))]
    assert names == ["siglip_vision", "siglip_text", "siglip_vision_fp32_copy"]
    # the benchmark plan: ORT on the CPU times it; the CUDA provider is not one the kind runs on
    items = plan_backends([BACKENDS["ort-cpu"], BACKENDS["ort-cuda"]], manifest, out, gpu="Pretend GPU")
    by = {(i.backend.name, i.artefact): i for i in items}
    assert by["ort-cpu", "vision_model.copy.onnx"].skipped is None
    assert by["ort-cuda", "vision_model.copy.onnx"].skipped == \
        "vision_model.copy.onnx runs on ONNX Runtime with provider cpu, not on the cuda provider"
    assert by["ort-cuda", "vision_model.opt.onnx"].skipped is None or "CUDAExecutionProvider" in \
        by["ort-cuda", "vision_model.opt.onnx"].skipped


def test_a_kind_without_a_builder_is_refused_before_any_work(tmp_path):
    from siglip_export.pipeline import ExportOptions, run_export

    register(ArtefactKind("unbuilt", ".unbuilt.onnx", ONNX, "fp32", "onnxruntime", ("cpu",), gate=0.9))
    try:
        with pytest.raises(UserError, match="variant 'unbuilt' is registered but has no builder"):
            run_export(ExportOptions(variants=("unbuilt",), output_dir=tmp_path / "out"), emit=None)
        assert not (tmp_path / "out").exists()  # refused before the model was built or anything written
    finally:
        unregister("unbuilt")


def test_the_benchmark_plan_follows_records_not_file_names(tiny_artefacts, tmp_path):
    """An engine and an OpenVINO IR are found by their records' format, whatever their names."""
    from benchmarks.backends import BACKENDS
    from benchmarks.plan import plan_backends

    source, _ = tiny_artefacts
    manifest = Manifest.read(source)
    plain = manifest.find("vision")
    extra = copy.deepcopy(plain)
    extra.file, extra.variant, extra.format, extra.precision = "renamed.plan", "trt-fp16", "engine", "fp16"
    manifest.artefacts.append(extra)
    items = plan_backends([BACKENDS["tensorrt"], BACKENDS["openvino-default"]], manifest, source, gpu=None)
    assert [(i.backend.name, i.artefact, i.precision) for i in items] == [
        ("tensorrt", "renamed.plan", "fp16"), ("openvino-default", "vision_model.onnx", "default")]
    assert items[0].skipped  # no tensorrt here (or no GPU): with the reason
