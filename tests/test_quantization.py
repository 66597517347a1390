"""Variants that hold on any checkpoint: accuracy-aware int8 (SmoothQuant, the sensitivity search),
NNCF's OpenVINO int8, a gate per runtime, and checkpoints built to stress them.

Nothing here asserts one CPU's numbers: a variant is either published within its gate (in the
runtime that gates it, and in every other runtime as recorded) or rejected with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import hf_model, tiny_config, tiny_vision_config

from runtime import ImageEncoder, ProviderError
from runtime.contract.kinds import KINDS, runtime_of
from runtime.contract.manifest import Manifest
from runtime.runners.onnxruntime_model import OnnxModel
from siglip_export.graph.build_errors import VariantFailed
from siglip_export.graph.openvino_rewrite import for_openvino, unflatten_products, unpack_products
from siglip_export.pipeline import ExportOptions, run_export
from siglip_export.quantize import outlier_split
from siglip_export.quantize.int8_search import search, target_for
from siglip_export.quantize.sensitivity import Candidate
from siglip_export.quantize.smoothquant import norm_outputs, smooth

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))
from benchmarks.stress import write_stress_checkpoint  # noqa: E402

PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
CPU_VARIANTS = ("opt", "int8", "int8-qdq", "fp16", "ov-bf16", "ov-int8")


def assert_published_within_gates_or_not_published(manifest: Manifest, variants, gates=None) -> None:
    """Every variant asked for is published within its gate, or rejected / skipped with a reason."""
    published = {a.variant: a for a in manifest.records("vision") if a.variant}
    missing = {u.variant: u for u in manifest.rejected + manifest.skipped if u.tower == "vision"}
    for variant in variants:
        if variant in published:
            record = published[variant]
            gate = (gates or {}).get(variant, KINDS[variant].gate)
            assert record.parity.passed and record.parity.gate.min_cosine == gate, variant
            assert record.accuracy["pooler_output_min_cosine"] >= gate, variant
            for runtime, parity in record.runtimes.items():  # recorded as it came out, pass or fail
                worst = min(r.outputs["pooler_output"].min_cosine for r in parity.results)
                assert parity.passed == all(r.passed for r in parity.results) and parity.passed == (worst >= gate)
        else:
            assert variant in missing and missing[variant].reason, variant


@pytest.fixture(scope="module", params=["norms", "outliers"])
def stressed(request, tmp_path_factory):
    """A tiny checkpoint that is not a preset, in transformers' format, exported with every CPU variant."""
    base = tmp_path_factory.mktemp(f"stress_{request.param}")
    ckpt = write_stress_checkpoint(base / "ckpt", tiny_vision_config(), request.param)
    manifest = run_export(ExportOptions(checkpoint=ckpt, output_dir=base / "out", variants=CPU_VARIANTS,
                                        verify_batch_sizes=(1, 3)), emit=None)
    return request.param, base / "out", manifest


def test_stress_checkpoints_publish_within_gates_or_reject(stressed):
    kind, out, manifest = stressed
    assert_published_within_gates_or_not_published(manifest, CPU_VARIANTS)
    assert Manifest.read(out).to_dict() == manifest.to_dict()
    if kind == "outliers":  # the checkpoint carries what it promises: 70000 in the residual stream
        import torch

        from siglip_export.model.checkpoint import load_pretrained

        model = load_pretrained(out.parent / "ckpt")
        with torch.no_grad():
            embeddings = model.vision_model.embeddings(torch.zeros(1, 3, 32, 32))
        assert embeddings.abs().max() > 65504


def test_int8_search_is_recorded(stressed):
    _, _, manifest = stressed
    for record in manifest.records("vision"):
        if record.variant == "ov-int8":  # built from the graph rewritten for OpenVINO
            rewritten = record.build["graph_rewrites"]
            assert rewritten["products_unflattened"] > 0 and rewritten["products_unpacked"] > 0
        if record.variant not in ("int8", "int8-qdq", "ov-int8"):
            continue
        found = record.build["search"]
        assert found["target_min_cosine"] == pytest.approx(target_for(KINDS[record.variant].gate))
        assert found["reached_min_cosine"] >= found["target_min_cosine"]
        assert 0 <= found["float_share_of_macs"] <= 0.5 and len(found["kept_float"]) < found["candidates"]
        assert found["seconds"] >= 0 and set(found["smoothquant"]) >= {"alpha", "used", "all_quantised_min_cosine"}
        split = found["outlier_split"]
        assert set(split) >= {"ratio", "products_split", "used"} and not (split["used"] and found["smoothquant"]["used"])
        if split["used"]:  # published from the split source: it passed its own search
            assert split["products_split"] > 0
            assert split["kept_float"] + split["outlier_parts_in_float"] == len(found["kept_float"])
        if record.variant == "int8":  # what stayed in float is what the file has in float
            attention = sum(1 for n in found["kept_float"] if n.startswith("Attention"))
            assert record.build["quantized_ops"]["QAttention"] == tiny_config().vision_config.num_hidden_layers - attention


def test_search_finds_the_fewest_in_float():
    candidates = [Candidate(f"n{i}", "MatMul", ["x"], "w", error=float(10 - i)) for i in range(10)]
    tried = []

    def trial(kept):  # monotone: each node kept in float adds 0.002
        tried.append(len(kept))
        return 0.985 + 0.002 * len(kept)

    result = search(candidates, trial, target=0.995)
    assert result.kept_float == ["n0", "n1", "n2", "n3", "n4"]  # most sensitive first
    assert result.reached == pytest.approx(0.995) and len(tried) <= 5
    with pytest.raises(VariantFailed, match=r"keeping the 5 most sensitive of 10 quantisable nodes \(50% of their "
                                            r"multiply-adds\) in float reaches min cosine 0\.995000 < target 0\.999000"):
        search(candidates, trial, target=0.999)


def test_fixed_nodes_stay_in_float_in_every_trial_and_count_in_the_share():
    candidates = [Candidate(f"n{i}", "MatMul", ["x"], "w", error=float(10 - i), cost=10.0) for i in range(4)]
    fixed = [Candidate("p/outliers", "MatMul", ["x"], "w", cost=2.0)]
    seen = []

    def trial(kept):  # each searched node in float adds 0.006
        seen.append(list(kept))
        return 0.99 + 0.006 * (len(kept) - 1)

    result = search(candidates, trial, target=0.995, fixed=fixed)
    assert seen and all(k[0] == "p/outliers" for k in seen)
    assert result.kept_float == ["p/outliers", "n0"] and result.float_share == pytest.approx(12 / 42)
    assert result.record()["outlier_parts_in_float"] == 1
    whole = search(candidates, lambda kept: 1.0, target=0.995, fixed=fixed)  # reaches with only the fixed in float
    assert whole.kept_float == ["p/outliers"] and whole.float_share == pytest.approx(2 / 42)


def test_a_simulated_search_builds_only_to_confirm():
    candidates = [Candidate(f"n{i}", "MatMul", ["x"], "w", error=float(10 - i)) for i in range(10)]

    def real(kept):  # monotone: each node kept in float adds 0.002; 5 reach 0.995
        tried.append(len(kept))
        return 0.985 + 0.002 * len(kept)

    tried = []  # a simulation that agrees with the builds: one real build besides the all-quantised one
    result = search(candidates, real, target=0.995, simulate=lambda kept: 0.985 + 0.002 * len(kept))
    assert result.kept_float == [f"n{i}" for i in range(5)] and tried == [0, 5]
    assert result.simulated["kept_float"] == 5 and result.record()["simulated"] == result.simulated
    tried = []  # optimistic by a constant (two nodes' worth): calibrated on the all-quantised build, one build
    result = search(candidates, real, target=0.995, simulate=lambda kept: 0.989 + 0.002 * len(kept))
    assert result.kept_float == [f"n{i}" for i in range(5)] and tried == [0, 5]
    assert result.simulated["offset"] == pytest.approx(0.004)
    tried = []  # optimistic more with each node kept: the build at 4 misses, the cap (5, half the MACs) reaches
    result = search(candidates, real, target=0.995, simulate=lambda kept: 0.985 + 0.003 * len(kept))
    assert result.kept_float == [f"n{i}" for i in range(5)] and tried == [0, 4, 5]
    assert result.simulated == {"kept_float": 4, "min_cosine": 0.997, "offset": 0.0, "aim": 0.995,
                                "calls": result.simulated["calls"]}
    tried = []  # optimistic by a ratio (its error 0.4x the build's): the constant offset is out of reach, the ratio is not
    result = search(candidates, lambda kept: (tried.append(len(kept)), 1 - 0.01 * (1 - len(kept) / 5))[1], target=0.995,
                    simulate=lambda kept: 1 - 0.004 * (1 - len(kept) / 6))
    assert tried == [0, 3] and len(result.kept_float) == 3
    assert result.simulated["kept_float"] == 3 and result.simulated["aim"] == pytest.approx(0.998)
    tried = []  # pessimistic (4 nodes, so below the target at the cap): it cannot tell, so build by build
    result = search(candidates, real, target=0.995, simulate=lambda kept: 0.977 + 0.002 * len(kept))
    assert len(result.kept_float) == 5 and tried == [0, 5, 2, 3, 4] and result.simulated["kept_float"] is None
    with pytest.raises(VariantFailed, match="not worth an int8 file"):  # the real build at the cap decides
        search(candidates, real, target=0.999, simulate=lambda kept: 1.0)


@pytest.fixture(scope="module")
def outliers_onnx(tmp_path_factory):
    """The plain export of the tiny `outliers` stress checkpoint."""
    base = tmp_path_factory.mktemp("outliers_onnx")
    ckpt = write_stress_checkpoint(base / "ckpt", tiny_vision_config(), "outliers")
    run_export(ExportOptions(checkpoint=ckpt, output_dir=base / "o", verify_batch_sizes=(2,)), emit=None)
    return base / "o" / "vision_model.onnx"


def test_the_simulation_scores_where_the_builds_are_scored(outliers_onnx, tmp_path):
    """The sensitivity pass probes a row or two per node; the simulator it returns scores on the
    inputs real builds are scored on (`checks`: input, reference), not on the probes."""
    from siglip_export.quantize.int8_search import _candidates
    from siglip_export.quantize.sensitivity import measure_sensitivity

    model = onnx.load(str(outliers_onnx))
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    probe, checked = calibration[0], rng.uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    candidates, fixed = _candidates(model, ("MatMul", "Gemm"), probe)
    assert candidates and not fixed  # the plain source: nothing split off
    reference = OnnxModel(outliers_onnx).run(checked)["pooler_output"]
    everything = {c.name for c in candidates}
    simulate = measure_sensitivity(model, candidates, calibration, [probe], True, tmp_path / "sw.onnx",
                                   checks=[(checked, reference)])
    assert all(c.error >= 0 for c in candidates) and any(c.error > 0 for c in candidates)
    assert simulate(everything) == pytest.approx(1.0, abs=1e-5)  # all in float: the float model
    assert simulate(set()) < simulate(everything)  # all in simulated int8
    against = measure_sensitivity(model, candidates, calibration, [probe], True, tmp_path / "sw2.onnx",
                                  checks=[(checked, -reference)])  # a reference the probes never see
    assert against(everything) == pytest.approx(-1.0, abs=1e-5)


def test_smoothquant_keeps_the_float_model(outliers_onnx, tmp_path):
    path = outliers_onnx
    model = onnx.load(str(path))
    names = norm_outputs(model)
    assert len(names) == 2 * tiny_vision_config().num_hidden_layers + 1  # both norms per layer, and the head's
    rng = np.random.default_rng(0)
    assert smooth(model, {n: rng.uniform(0.1, 50.0, 32) for n in names}, alpha=0.5) == len(names)
    onnx.save(model, str(tmp_path / "smoothed.onnx"))
    x = rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    before = OnnxModel(path).run(x)["pooler_output"]
    after = OnnxModel(tmp_path / "smoothed.onnx").run(x)["pooler_output"]
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()


def _channel_peaks(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    from siglip_export.quantize.sensitivity import _Recorder

    return {n: np.abs(v).reshape(-1, v.shape[-1]).max(axis=0) for n, v in _Recorder(onnx.load(str(path)), names)(x).items()}


def test_outlier_split_keeps_the_float_model(outliers_onnx, tmp_path):
    model = onnx.load(str(outliers_onnx))
    names = outlier_split.activations(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    peaks = _channel_peaks(outliers_onnx, names, x)
    with_outliers = [n for n in names if len(outlier_split.outlier_channels(peaks[n]))]
    assert with_outliers  # the stress checkpoint's normalised activations carry them
    assert outlier_split.split(model, peaks) >= len(with_outliers)
    onnx.save(model, str(tmp_path / "split.onnx"))
    parts = [n for n in model.graph.node if n.name.endswith(outlier_split.SUFFIX)]
    assert parts and all(n.op_type == "MatMul" for n in parts)
    before = OnnxModel(outliers_onnx).run(x)["pooler_output"]
    after = OnnxModel(tmp_path / "split.onnx").run(x)["pooler_output"]
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    flat = onnx.load(str(outliers_onnx))  # channels all alike: nothing to split
    assert outlier_split.split(flat, {n: np.ones_like(peaks[n]) for n in names}) == 0
    assert len(flat.graph.node) == len(onnx.load(str(outliers_onnx)).graph.node)


def test_openvino_source_keeps_the_float_model(outliers_onnx, tmp_path):
    """The graph ov-int8 is built from: products on the token axis, packed q/k/v unpacked, every
    product still findable by its name, the same outputs."""
    plain = onnx.load(str(outliers_onnx))
    before_ops = Counter(n.op_type for n in plain.graph.node)
    assert before_ops["Gemm"] and before_ops["Split"]  # what the plain export has: the rewrite has work
    done = for_openvino(outliers_onnx, tmp_path / "ov.onnx")
    model = onnx.load(str(tmp_path / "ov.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert done == {"products_unflattened": before_ops["Gemm"], "products_unpacked": before_ops["Split"]}
    assert ops["Gemm"] == 0 and ops["Split"] == 0 and ops["Reshape"] == before_ops["Reshape"] - 2 * before_ops["Gemm"]
    names = {n.name for n in model.graph.node}
    for node in plain.graph.node:
        if node.op_type == "Gemm":
            assert node.name in names
        elif node.op_type == "Split":
            packed = next(n.name for n in plain.graph.node if n.output[0] == node.input[0])
            assert {f"{packed}/part{i}" for i in range(len(node.output))} <= names
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    before, after = OnnxModel(outliers_onnx).run(x), OnnxModel(tmp_path / "ov.onnx").run(x)
    for name, value in before.items():
        assert np.abs(after[name] - value).max() <= 1e-5 * np.abs(value).max(), name


def test_openvino_rewrites_leave_what_they_cannot_prove_alone():
    """A Split with a bias before it is unpacked with the bias; a split that is not over the
    product's columns, a shared weight, and a reshape that does not restore the token axis are not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"], name="packed"),
        helper.make_node("Add", ["p", "b"], ["pb"], name="bias"),
        helper.make_node("Split", ["pb", "sizes"], ["q", "k"], axis=-1, name="split"),
        helper.make_node("MatMul", ["x", "w2"], ["p2"], name="rows"),  # split along the 3 tokens, as many as columns
        helper.make_node("Split", ["p2", "tokens"], ["r0", "r1"], axis=1, name="split_rows"),
        helper.make_node("Reshape", ["x", "flat"], ["xf"], name="flatten"),
        helper.make_node("Gemm", ["xf", "w3"], ["g"], name="gemm"),
        helper.make_node("Reshape", ["g", "other"], ["y"], name="not_back"),  # [3, 2, 4]: not x's axes back
        helper.make_node("MatMul", ["x", "w4"], ["p4"], name="shared"),  # its weight is read twice
        helper.make_node("Split", ["p4", "sizes"], ["s0", "s1"], axis=-1, name="split_shared"),
        helper.make_node("MatMul", ["x", "w4"], ["t"], name="same_weight"),
    ]
    inits = [const("w", rng.normal(size=(4, 6)).astype(np.float32)), const("b", rng.normal(size=6).astype(np.float32)),
             const("sizes", np.array([2, 4], np.int64)), const("w2", rng.normal(size=(4, 3)).astype(np.float32)),
             const("tokens", np.array([1, 2], np.int64)), const("flat", np.array([-1, 4], np.int64)),
             const("w3", rng.normal(size=(4, 4)).astype(np.float32)), const("other", np.array([3, 2, 4], np.int64)),
             const("w4", rng.normal(size=(4, 6)).astype(np.float32))]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "r0", "r1", "y", "s0", "s1", "t")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    import onnxruntime as ort

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    before = run(model)
    assert unflatten_products(model) == 0 and unpack_products(model) == 1
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Split"] == 2 and ops["Gemm"] == 1 and {"packed/part0", "packed/part1"} <= {n.name for n in model.graph.node}
    for a, b in zip(run(model), before):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("faster", ["split", "without", "neither passes"])
def test_split_source_races_the_plain_search(outliers_onnx, tmp_path, faster, monkeypatch):
    """Where the first search keeps much in float, the source with outliers split off is searched
    too, and the faster of the two passing files is published (here the quantiser, scores and
    timings are stand-ins; the real ones run in the stress-checkpoint tests)."""
    from siglip_export.quantize import int8_search

    monkeypatch.setattr(int8_search, "SPLIT_WORTH", 0.0)  # whatever stays in float, the split is tried

    def is_split(path: Path) -> bool:
        return any(n.name.endswith(outlier_split.SUFFIX) for n in onnx.load(str(path)).graph.node)

    built: dict[Path, tuple[bool, int]] = {}

    def build(source: Path, out: Path, kept: list[str]) -> dict:
        shutil.copy(source, out)
        built[out] = (is_split(source), len(kept))
        return {"kept": len(kept)}

    def score(path: Path) -> float:  # without the split, two nodes must stay in float (target 0.995); with it, none
        split, kept = built[path]
        if faster == "neither passes":
            return 0.9
        return 1.0 if split else 0.99 + 0.0025 * kept

    def latency(path: Path) -> float:
        return 0.01 if is_split(path) == (faster == "split") else 0.02

    rng = np.random.default_rng(1)
    calibration = [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    out = tmp_path / "vision_model.int8-qdq.onnx"
    if faster == "neither passes":  # rejected with both searches' numbers, nothing left behind
        with pytest.raises(VariantFailed, match=r"in float reaches min cosine 0\.900000 < target 0\.995000 .*"
                                                r"; with outlier channels split off: int8 search: keeping"):
            int8_search.accuracy_aware(outliers_onnx, out, build, score, calibration, calibration[:2], 0.99,
                                       ("MatMul", "Gemm"), latency)
        assert list(tmp_path.iterdir()) == []
        return
    lines: list[str] = []
    report, result = int8_search.accuracy_aware(outliers_onnx, out, build, score, calibration, [calibration[0], calibration[1]],
                                    0.99, ("MatMul", "Gemm"), latency, note=lines.append)
    record = result.record()["outlier_split"]
    # progress: a line per trial of each search (scored, against the target), the sensitivity pass, the race
    trial_lines = [line for line in lines if " kept in float: min cosine " in line]
    all_quantised = result.smoothquant["all_quantised_min_cosine"]  # each source quantised whole, split one too
    searched = [(line.split(" kept")[0].rsplit(" ", 1)[-1], line.startswith("outliers split off")) for line in trial_lines]
    assert ("2", False) in searched  # the unsplit search ends there (1 misses, 2 reaches; the simulation may skip 1)
    if faster == "without":
        assert len(searched) == len(all_quantised) + len(result.trials) + len(record["trials"])
    assert any(line.startswith("0 kept in float: min cosine 0.990000 (misses 0.9950") for line in lines)
    assert any(line.startswith("outliers split off, 0 kept in float: min cosine 1.000000 (reaches") for line in lines)
    assert any(line.startswith("sensitivity of ") for line in lines) and any(line.startswith("racing") for line in lines)
    # none searched into float: only the split-off outlier products, always in float, a sliver of the work
    assert record["products_split"] > 0 and record["kept_float"] == 0
    assert record["outlier_parts_in_float"] == record["products_split"] and 0 < record["float_share_of_macs"] < 0.1
    assert set(record["ms_per_call"]) == {"without", "split"}
    assert record["used"] == (faster == "split") and is_split(out) == (faster == "split")
    if faster == "split":
        parts = record["products_split"]  # in float: the outlier products alone
        assert len(result.kept_float) == parts and all(n.endswith("/outliers") for n in result.kept_float)
        assert report == {"kept": parts}
        unsplit = record["unsplit"]  # the search it replaced stays on record
        assert unsplit["kept_float"] == 2 and unsplit["trials"][-1]["kept_float"] in (1, 2)
        assert len(searched) == len(all_quantised) + len(unsplit["trials"]) + len(record["trials"])
    else:
        assert len(result.kept_float) == 2 and result.float_share > 0 and report == {"kept": 2}
        assert "unsplit" not in record
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no scratch file left


# --- a gate per runtime -----------------------------------------------------------------------

QDQ_GATE = {"int8-qdq": 0.9}  # these tests are about where a gate holds, not how high it is


@pytest.fixture(scope="module")
def qdq_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("qdq")
    hf_model(tiny_config().vision_config).save_pretrained(base / "ckpt")
    manifest = run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "out", variants=("int8-qdq",),
                                        gates=QDQ_GATE, verify_batch_sizes=(1, 2)), emit=None)
    return base / "out", manifest


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed: no second runtime to gate in")
def test_a_portable_variant_is_gated_in_openvino_too(qdq_export):
    out, manifest = qdq_export
    assert_published_within_gates_or_not_published(manifest, ["int8-qdq"], QDQ_GATE)
    plain = manifest.find("vision")
    assert plain.parity.runtime == "onnxruntime-cpu" and "openvino-cpu" in plain.runtimes
    record = manifest.find("vision", "int8-qdq")
    if record is None:
        pytest.skip("int8-qdq was rejected on this CPU (its reason is in the manifest); nothing to run")
    gate = record.gate_in("openvino-cpu")
    assert gate is not None and gate.runtime == "openvino-cpu" and gate.provider.startswith("OpenVINO")
    if gate.passed:
        vectors = ImageEncoder(out, variant="int8-qdq", provider="openvino").embed(PHOTOS[:2])
        assert vectors.shape == (2, 32)
    else:  # failed there on this CPU: refused, unless asked
        with pytest.raises(ProviderError, match="missed its gate in openvino-cpu"):
            ImageEncoder(out, variant="int8-qdq", provider="openvino")
        ImageEncoder(out, variant="int8-qdq", provider="openvino", allow_unverified=True).embed(PHOTOS[:1])


def _edited(out: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    data = json.loads((copy / "manifest.json").read_text())
    change(next(a for a in data["artefacts"] if a["variant"] == "int8-qdq"))
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_the_runtime_refuses_where_the_gate_failed_or_was_never_measured(qdq_export, tmp_path, capsys):
    from runtime.__main__ import main as runtime_main

    out, manifest = qdq_export
    if manifest.find("vision", "int8-qdq") is None:
        pytest.skip("int8-qdq was rejected on this CPU (its reason is in the manifest); nothing to run")

    def failed_in_openvino(record):
        record["runtimes"] = {"openvino-cpu": {**record["parity"], "runtime": "openvino-cpu", "passed": False,
                                               "provider": "OpenVINO CPU (f32)"}}

    failed = _edited(out, tmp_path, failed_in_openvino)
    with pytest.raises(ProviderError, match=r"vision_model.int8-qdq.onnx missed its gate in openvino-cpu at export "
                                            r"\(pooler cosine .*; it passed in: onnxruntime-cpu\)\. Pass --allow-unverified"):
        ImageEncoder(failed, variant="int8-qdq", provider="openvino")
    if HAVE_OPENVINO:
        unverified = ImageEncoder(failed, variant="int8-qdq", provider="openvino", allow_unverified=True)
        assert unverified.embed(PHOTOS[:1]).shape == (1, 32)
    # Never measured on a CUDA provider: refused before anything loads, on any machine.
    with pytest.raises(ProviderError, match="int8-qdq.onnx was never verified in onnxruntime-cuda"):
        ImageEncoder(out, variant="int8-qdq", provider="cuda")
    # The plain fp32 file is the portable contract: not refused where it was not measured.
    assert ImageEncoder(out, provider="cpu").embed(PHOTOS[:1]).shape == (1, 32)
    # The command line: one line, exit 2; --allow-unverified lets it through.
    capsys.readouterr()
    args = ["embed", str(failed), str(PHOTOS[0]), "--output", str(tmp_path / "x.npy"), "--variant", "int8-qdq",
            "--provider", "openvino"]
    assert runtime_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missed its gate in openvino-cpu" in err[0]
    if HAVE_OPENVINO:
        assert runtime_main([*args, "--allow-unverified"]) == 0


def test_auto_tries_only_the_runtimes_a_variant_passed_in(qdq_export, monkeypatch):
    import runtime.artefacts as artefacts

    out, manifest = qdq_export
    if manifest.find("vision", "int8-qdq") is None:
        pytest.skip("int8-qdq was rejected on this CPU (its reason is in the manifest); nothing to run")
    seen = {}
    real = artefacts.open_runner

    def spy(kind, path, **kwargs):
        seen[kind.name] = kwargs.get("auto_providers")
        return real(kind, path, **kwargs)

    monkeypatch.setattr(artefacts, "open_runner", spy)
    ImageEncoder(out, variant="int8-qdq")
    record, kind = manifest.find("vision", "int8-qdq"), KINDS["int8-qdq"]
    gates = {p: record.gate_in(runtime_of(kind, p)) for p in kind.providers}
    assert seen["int8-qdq"] == tuple(p for p, g in gates.items() if g is not None and g.passed)
    assert "cuda" not in seen["int8-qdq"]  # never measured here
    ImageEncoder(out)
    plain = manifest.find("vision")
    assert seen["plain"] == tuple(p for p in KINDS[None].providers  # anywhere its gate did not fail
                                  if (g := plain.gate_in(runtime_of(KINDS[None], p))) is None or g.passed)


@pytest.mark.parametrize("case", ["split passes whole", "none passes whole"])
def test_the_quick_search_tries_each_source_whole_then_searches_the_closest(outliers_onnx, tmp_path, case):
    """--target's search: the plain source, then the split one, built all quantised until one
    reaches the target; where none does, the closest is searched alone, the simulation bisecting
    and real builds confirming (stand-in quantiser and scores, as above)."""
    from siglip_export.quantize import int8_search

    def is_split(path: Path) -> bool:
        return any(n.name.endswith(outlier_split.SUFFIX) for n in onnx.load(str(path)).graph.node)

    built: dict[Path, tuple[bool, int]] = {}
    builds = []

    def build(source: Path, out: Path, kept: list[str]) -> dict:
        shutil.copy(source, out)
        parts = sum(1 for k in kept if outlier_split.is_part(k))  # always in float in a split source
        built[out] = (is_split(source), len(kept) - parts)
        builds.append((*built[out], parts))
        return {"kept": len(kept), "split": is_split(source)}

    def score(path: Path) -> float:  # by the nodes searched into float
        split, kept = built[path]
        if case == "split passes whole":
            return 1.0 if split else 0.9
        return min(1.0, (0.993 if split else 0.95) + 0.0025 * kept)  # split closest; one node in float reaches

    rng = np.random.default_rng(1)
    calibration = [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    out = tmp_path / "vision_model.int8-qdq.onnx"
    lines: list[str] = []
    report, result = int8_search.quick(outliers_onnx, out, build, score, calibration, calibration[:2], 0.99,
                                       ("MatMul", "Gemm"), note=lines.append)
    record = result.record()
    assert record["outlier_split"]["used"] and record["outlier_split"]["quick"] and is_split(out) and report["split"]
    whole = record["smoothquant"]["all_quantised_min_cosine"]
    if case == "split passes whole":  # plain first, then split, which passes: nothing else built
        parts = record["outlier_split"]["products_split"]  # the outlier products, in float in every split build
        assert list(whole) == ["none", "split"] and builds == [(False, 0, 0), (True, 0, parts)] and parts > 0
        assert len(result.kept_float) == parts and record["outlier_parts_in_float"] == parts
        assert not any("sensitivity" in line for line in lines)
    else:
        assert list(whole) == ["none", "split"] and len(result.kept_float) >= 1  # SmoothQuant: not beside a split
        assert result.reached >= result.target and any(line.startswith("outliers split off, sensitivity") for line in lines)
        assert record["simulated"]["calls"] >= 1 and len(result.trials) >= 1
        assert all(b[2] > 0 for b in builds if b[0]) and not any(b[2] for b in builds if not b[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no scratch left behind
