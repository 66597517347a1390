"""Accuracy-aware int8: quantise what this checkpoint tolerates, keep the rest in float.

A recipe that quantises every matrix product holds on random weights and fails on checkpoints
whose activations carry outlier channels (trained ones do): one per-tensor int8 scale cannot
cover a range set by a few huge channels. So every export measures its own checkpoint:

0. SmoothQuant (smoothquant.py), where it helps: where the whole model quantised misses the
   target, it is quantised again with SmoothQuant, and the smoothed source is kept for the rest
   of the search when it at least halves the error.
1. Candidates: the nodes the quantiser turns into int8 (ONNX Runtime dynamic: fused Attention,
   weight MatMuls, the patch Conv; static QDQ: weight MatMuls and Gemms; NNCF: those and the Conv).
2. Sensitivity, end to end: one float model gets a switch per candidate that puts that node
   alone into simulated int8 (its activations through QuantizeLinear / DequantizeLinear, per
   call when dynamic or with ranges calibrated over all calibration inputs when static; its
   weight rounded to int8 per output channel); each candidate's error is 1 - cosine of
   `pooler_output` against float on a few probe inputs. (A local measure, the node's own output
   error, ranked the pooling head's layers low although their error reaches the embedding
   unattenuated: on the `outliers` stress checkpoint the search then kept 27 nodes in float.)
3. Search: candidates ranked by damage per multiply-add (what stays in float is then cheap:
   the pooling head's layers, on one token, nearly free); a binary search over how many of
   them stay in float, assuming more float never hurts, run on the sensitivity pass's
   simulation and confirmed by real builds (`search`), each a build by the quantiser
   (`nodes_to_exclude`, NNCF's ignored scope), scored on `pooler_output` against
   fp32 eager over the calibration inputs and random ones. The target is the gate plus a
   margin, so the gate, measured afterwards on other inputs, holds with room. Keeping more than
   half the candidates' multiply-adds in float is not worth an int8 file: the variant is
   rejected with the numbers instead.
4. Outlier channels split off (outlier_split.py), raced: where step 3 keeps more than SPLIT_WORTH
   of the multiply-adds in float (or fails) and the checkpoint has outlier channels, steps 1 - 3
   run again on the source with each affected product split in two (the outlier channels'
   part, a few input channels, apart; those thin parts stay in float in every trial,
   `fixed_float`). Fewer multiply-adds in float is not the same as faster:
   the split adds a thin product and a sum per product. So when both searches pass, the two
   files are timed in turns on this machine (`latency`) and the faster is published. Measured
   on the base-size `outliers` checkpoint with NNCF: the split search kept 0.15% of the
   multiply-adds in float against 27.2%, and ran 0.80x as fast on an AMX CPU (bf16 float parts
   are cheap there) but 1.15x on the same CPU with oneDNN held to AVX-512 VNNI (f32 float parts).

What was kept in float, the cosine reached and the search's cost go into the manifest.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.build_errors import VariantFailed
from ..graph.torch_export import save_model
from . import outlier_split
from .smoothquant import norm_outputs, smooth

MARGIN = 0.5  # aim at gate + MARGIN * (1 - gate): int8's 0.99 gate -> 0.995 on the search inputs
MAX_KEPT_FRACTION = 0.5  # more of the candidates' multiply-adds in float: rejected, not worth an int8 file
SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength (the paper's default)
SMOOTHING_GAIN = 0.5  # used only when it at least halves the all-quantised error (1 - cosine)
SPLIT = "split"  # the source with outlier channels split off (outlier_split.py)
SPLIT_WORTH = 0.05  # the split source is searched too when more of the multiply-adds than this stay in float
RACE_ROUNDS = 4  # the two passing files timed in turns, this many rounds each
PROGRESS_EVERY_S = 15  # a line at least this often during the sensitivity pass
# What each quantiser turns into int8: ONNX Runtime's dynamic quantiser (weights constant), its
# static QDQ quantiser as the int8-qdq recipe asks (op_types_to_quantize), NNCF for OpenVINO.
DYNAMIC_OPS = ("Attention", "MatMul", "Conv")
STATIC_OPS = ("MatMul", "Gemm")
OPENVINO_OPS = ("MatMul", "Gemm", "Conv")


@dataclass
class Candidate:
    """A node the quantiser would make int8: its float input, its constant weight."""

    name: str
    op_type: str
    activations: list[str]
    weight: str
    error: float = 0.0  # 1 - cosine of the embedding with this node alone in int8
    cost: float = 1.0  # multiply-adds per input (weight size x rows it is applied to)


@dataclass
class SearchResult:
    target: float
    reached: float
    kept_float: list[str]
    candidates: int
    trials: list[dict] = field(default_factory=list)  # {"kept_float": k, "min_cosine": c} in the order run
    seconds: float = 0.0
    ranking: list[dict] = field(default_factory=list)  # most sensitive first: {"node", "op_type", "error"}
    smoothquant: dict = field(default_factory=dict)
    outlier_split: dict = field(default_factory=dict)
    float_share: float = 0.0  # of the candidates' multiply-adds, the share kept in float
    # the simulation's answer: {"kept_float" (None: out of reach), "min_cosine", "offset", "calls"}
    simulated: dict = field(default_factory=dict)
    fixed_float: int = 0  # of kept_float, those never searched: the split-off outlier products (outlier_split.py)

    def record(self) -> dict:
        """The manifest's `build.search`."""
        return {"target_min_cosine": self.target, "reached_min_cosine": self.reached,
                "kept_float": self.kept_float, "candidates": self.candidates,
                "float_share_of_macs": round(self.float_share, 4), "outlier_parts_in_float": self.fixed_float,
                "smoothquant": self.smoothquant,
                "outlier_split": self.outlier_split, "simulated": self.simulated,
                "trials": self.trials, "seconds": round(self.seconds, 1), "most_sensitive": self.ranking[:10]}


def target_for(gate: float) -> float:
    return gate + MARGIN * (1.0 - gate)


def find_candidates(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[Candidate]:
    """The nodes of `op_types` with a constant weight, in graph order: what the search may keep in
    float. (A MatMul of two activations is never quantised: optimize.build_int8_qdq.)"""
    weights = {i.name for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        if node.op_type == "MatMul":
            constant = [i for i in node.input[:2] if i in weights]
            if constant:
                found.append(Candidate(node.name, node.op_type, [i for i in node.input[:2] if i not in weights],
                                       constant[0]))
        elif node.input[1] in weights:  # Attention (input, packed q/k/v weight), Conv, Gemm (input, weight)
            found.append(Candidate(node.name, node.op_type, [node.input[0]], node.input[1]))
    return found


# --- sensitivity ------------------------------------------------------------------------------

def _weight_levels() -> int:
    """The largest weight level the builders use here: 127, or 63 where the CPU lacks an int8 dot
    product and they quantise weights to 7 bits (ort_int8.build_int8, NNCF's overflow fix)."""
    from runtime.runners.environment import has_int8_dot_product

    return 127 if has_int8_dot_product() else 63


def _quantize_weight(w: np.ndarray, axis: int, levels: int = 127) -> np.ndarray:
    """Symmetric int8 (`levels` = 127) or fewer bits, one scale per output channel (`axis`), back to float."""
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / levels
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -levels, levels) * scale


def _weight_axis(candidate: Candidate, node: onnx.NodeProto) -> int:
    """The weight's output-channel axis (what per-channel quantisation scales along)."""
    if candidate.op_type == "Conv":
        return 0
    if candidate.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else -1
    return 0 if candidate.op_type == "MatMul" and node.input[0] == candidate.weight else -1


class _Recorder:
    """A float session that also returns the tensors named."""

    def __init__(self, model: onnx.ModelProto, names: list[str]):
        import onnxruntime as ort

        augmented = onnx.ModelProto()
        augmented.CopyFrom(model)
        outputs = {o.name for o in augmented.graph.output}
        self.names = sorted(set(names))
        for name in self.names:
            if name not in outputs:
                augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        self.session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, {self.input: x})))


def _ranges(model: onnx.ModelProto, names: list[str], calibration: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """min / max of each tensor over all calibration inputs (what MinMax calibration computes)."""
    record = _Recorder(model, names)
    ranges: dict[str, tuple[float, float]] = {}
    for x in calibration:
        for name, value in record(x).items():
            low, high = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
    return ranges


def _with_switches(model: onnx.ModelProto, candidates: list[Candidate], ranges: dict | None) -> list[str]:
    """Give `model`, in place, one boolean input per candidate that switches it to int8 arithmetic,
    simulated in float: its activations through QuantizeLinear / DequantizeLinear (uint8; dynamic
    ranges, or the calibrated `ranges` when given) and its weight rounded to int8 per output channel.
    Returns the switches' names, in the candidates' order."""
    helper = onnx.helper
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    added: dict[str, list[onnx.NodeProto]] = {}
    switches = []
    levels = _weight_levels()
    for i, c in enumerate(candidates):
        node, switch, tag = nodes[c.name], f"int8_switch_{i}", f"int8sim{i}"
        switches.append(switch)
        model.graph.input.append(helper.make_tensor_value_info(switch, onnx.TensorProto.BOOL, []))
        new = added.setdefault(c.name, [])
        for j, name in enumerate(c.activations):
            if ranges is None:  # dynamic: the range of each call's own tensor
                new.append(helper.make_node("DynamicQuantizeLinear", [name], [f"{tag}_q{j}", f"{tag}_s{j}", f"{tag}_z{j}"]))
            else:
                low, high = min(ranges[name][0], 0.0), max(ranges[name][1], 0.0)
                scale = (high - low) / 255.0 or 1.0
                model.graph.initializer.extend([
                    numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_s{j}"),
                    numpy_helper.from_array(np.array(np.clip(np.round(-low / scale), 0, 255), np.uint8), f"{tag}_z{j}")])
                new.append(helper.make_node("QuantizeLinear", [name, f"{tag}_s{j}", f"{tag}_z{j}"], [f"{tag}_q{j}"]))
            new.append(helper.make_node("DequantizeLinear", [f"{tag}_q{j}", f"{tag}_s{j}", f"{tag}_z{j}"], [f"{tag}_x{j}"]))
            new.append(helper.make_node("Where", [switch, f"{tag}_x{j}", name], [f"{tag}_a{j}"]))
            node.input[list(node.input).index(name)] = f"{tag}_a{j}"
        weight = numpy_helper.to_array(inits[c.weight]).astype(np.float64)
        rounded = _quantize_weight(weight, _weight_axis(c, node), levels).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(rounded, f"{tag}_w"))
        new.append(helper.make_node("Where", [switch, f"{tag}_w", c.weight], [f"{tag}_wsel"]))
        node.input[list(node.input).index(c.weight)] = f"{tag}_wsel"
    ordered = [n for original in model.graph.node for n in (*added.get(original.name, []), original)]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return switches


def _set_costs(model: onnx.ModelProto, candidates: list[Candidate], x: np.ndarray) -> None:
    """Each candidate's multiply-adds for the input `x`: its weight's size times the rows it meets
    (tokens; patches for the patch-embedding Conv)."""
    shapes = {n: v.shape for n, v in _Recorder(model, [c.activations[0] for c in candidates])(x).items()}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    for c in candidates:
        dims, shape = weights[c.weight], shapes[c.activations[0]]
        if c.op_type == "Conv":  # kernel == stride: one product per patch
            rows = shape[0] * int(np.prod(shape[2:])) // max(1, int(np.prod(dims[2:])))
        else:
            rows = int(np.prod(shape[:-1]))
        c.cost = float(np.prod(dims)) * max(rows, 1)


Simulator = Callable[[set], float]  # names kept in float -> simulated min cosine over the checks
Checks = list[tuple[np.ndarray, np.ndarray]]  # (input, its fp32 pooler_output): what a real build is scored on


def measure_sensitivity(model: onnx.ModelProto, candidates: list[Candidate], calibration: list[np.ndarray],
                        probes: list[np.ndarray], static: bool, work: Path,
                        note: Callable[[str], None] | None = None, checks: Checks | None = None) -> Simulator:
    """Set each candidate's `error`: 1 - cosine of `pooler_output` against float, averaged over the
    rows of `probes`, with that candidate alone in (simulated) int8 (what is not a candidate stays
    in float). One float model with a switch per candidate serves every
    measurement, and afterwards the returned simulator: the min row cosine, over `checks` (the
    inputs real builds are scored on; the probes where none are given), with every candidate in
    simulated int8 but those named. The probes are few because the pass runs once per candidate;
    the simulator must see what the real score sees: measured on the base-size `outliers` stress
    checkpoint (split source, all quantised), 0.9952 over the two probe rows against 0.9898 over
    the 26 rows the builds are scored on, where the real NNCF build scored 0.9882."""
    import onnxruntime as ort

    ranges = _ranges(model, [a for c in candidates for a in c.activations], calibration) if static else None
    switched = onnx.ModelProto()
    switched.CopyFrom(model)
    switches = _with_switches(switched, candidates, ranges)
    save_model(switched, work)  # external data beside it when large
    del switched
    session = ort.InferenceSession(str(work), providers=["CPUExecutionProvider"])
    pixel = session.get_inputs()[0].name
    off = {s: np.array(False) for s in switches}

    def pooled(x: np.ndarray, on: str | None) -> np.ndarray:
        feeds = {pixel: x, **off, **({on: np.array(True)} if on else {})}
        return session.run(["pooler_output"], feeds)[0].astype(np.float64)

    def cosines(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return (y * reference).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(reference, axis=1) + 1e-30)

    exact = [pooled(x, None) for x in probes]
    checks = checks or list(zip(probes, exact))
    started, last = time.perf_counter(), time.perf_counter()
    for i, (c, switch) in enumerate(zip(candidates, switches)):
        c.error = float(np.mean(np.concatenate([1.0 - cosines(pooled(x, switch), reference)
                                                for x, reference in zip(probes, exact)])))
        if note is not None and time.perf_counter() - last > PROGRESS_EVERY_S and i + 1 < len(candidates):
            took = time.perf_counter() - started
            note(f"sensitivity {i + 1}/{len(candidates)}, {took:.0f}s, about "
                 f"{took / (i + 1) * (len(candidates) - i - 1):.0f}s left")
            last = time.perf_counter()

    def simulate(kept: set) -> float:
        feeds = {s: np.array(c.name not in kept) for c, s in zip(candidates, switches)}
        return float(min(cosines(session.run(["pooler_output"], {pixel: x, **feeds})[0].astype(np.float64),
                                 np.asarray(reference, np.float64)).min() for x, reference in checks))

    return simulate


# --- search -----------------------------------------------------------------------------------

def search(candidates: list[Candidate], trial: Callable[[list[str]], float], target: float,
           known: dict[int, float] | None = None, simulate: Simulator | None = None,
           fixed: list[Candidate] = ()) -> SearchResult:
    """The fewest most-sensitive candidates to keep in float for `trial(kept) >= target`.

    `trial(kept_float_names)` builds the quantised model and returns its min cosine; `known`
    holds scores already measured (by number kept). Raises VariantFailed with the numbers when
    keeping MAX_KEPT_FRACTION of them in float is not enough. `fixed` stay in float in every
    trial (named first in each), and count in the float share of the multiply-adds (their costs
    must be set, `_set_costs`).

    With `simulate` (measure_sensitivity's, seconds a call where a real build takes tens), the
    bisection runs on the simulation and real builds only confirm its answer: the simulation is
    first calibrated on the all-quantised build (where it was optimistic by d there, it must
    reach target + d), the first real trial is its fewest; where that misses, the count doubles
    until a real build reaches the target, then real bisection between the last miss and that.
    So a search whose simulation is right, or off by a constant, costs one build after the
    all-quantised one, where trial by trial it cost about log2(candidates).
    """
    started = time.perf_counter()
    # Most damage per multiply-add first: the prefix kept in float then costs the fewest FLOPs for
    # what it saves (the pooling head's layers, on one token, are nearly free to keep).
    ranked = sorted(candidates, key=lambda c: -c.error / c.cost)
    result = SearchResult(target=target, reached=float("-inf"), kept_float=[], candidates=len(ranked),
                          ranking=[{"node": c.name, "op_type": c.op_type, "error": round(c.error, 6),
                                    "macs": int(c.cost)} for c in ranked])
    scores: dict[int, float] = dict(known or {})
    always = [c.name for c in fixed]
    result.fixed_float = len(always)

    def score(k: int) -> float:
        if k not in scores:
            scores[k] = trial([*always, *(c.name for c in ranked[:k])])
            result.trials.append({"kept_float": k, "min_cosine": scores[k]})
        return scores[k]

    fixed_cost = sum(c.cost for c in fixed)
    total = fixed_cost + sum(c.cost for c in ranked) or 1.0
    base = fixed_cost / total  # float share of MACs keeping none of the candidates
    shares = (fixed_cost + np.cumsum([c.cost for c in ranked])) / total  # ... keeping the first k + 1
    most = int(np.searchsorted(shares, MAX_KEPT_FRACTION, side="right"))  # the most kept within the cap
    def fail() -> VariantFailed:
        share = shares[most - 1] if most else base
        return VariantFailed(f"int8 search: keeping the {most} most sensitive of {len(ranked)} quantisable nodes "
                             f"({share:.0%} of their multiply-adds) in float reaches min cosine "
                             f"{scores.get(most, scores[0]):.6f} < target {target:.6f} (all quantised: "
                             f"{scores[0]:.6f}); not worth an int8 file")

    def fewest(passes: Callable[[int], bool], low: int, high: int) -> int:
        """Bisection: the smallest k in (low, high] with passes(k), given passes(high)."""
        while high - low > 1:
            mid = (low + high) // 2
            if passes(mid):
                high = mid
            else:
                low = mid
        return high

    if score(0) >= target:
        best = 0
    elif most == 0:
        raise fail()
    elif simulate is not None:
        simulated: dict[int, float] = {}

        def predicted(k: int) -> float:
            if k not in simulated:
                simulated[k] = simulate({c.name for c in ranked[:k]})
            return simulated[k]

        # Calibrated on the build already scored (none kept): what the simulation leaves out (the
        # runtime's float precision, bf16 in OpenVINO where the CPU has it; the quantiser's own
        # choices) shows there. Measured on the base-size `outliers` stress checkpoint's split source
        # on an AVX-512-BF16 CPU: simulated 0.996940 with one node kept, real 0.994259.
        offset = max(0.0, predicted(0) - scores[0])
        aim = target + offset
        low, high = 0, 1  # doubling from one node kept, then bisection: the answer is usually a few nodes
        while high < most and predicted(high) < aim:
            low, high = high, 2 * high
        high = min(high, most)
        guess = fewest(lambda k: predicted(k) >= aim, low, high) if predicted(high) >= aim else None
        result.simulated = {"kept_float": guess, "min_cosine": round(predicted(most if guess is None else guess), 6),
                            "offset": round(offset, 6), "calls": len(simulated)}
        if guess is None:  # calibrated, the simulation never reaches: it cannot tell, so build by build
            if score(most) < target:
                raise fail()
            best = fewest(lambda k: score(k) >= target, 0, most)
        else:
            low, best = None, guess
            while score(best) < target:  # the simulation was optimistic: more in float, until a build reaches
                if best >= most:
                    raise fail()
                low, best = best, min(most, max(best + 1, 2 * best))
            if low is not None:  # real bisection between the last miss and the first build that reached
                best = fewest(lambda k: score(k) >= target, low, best)
    elif score(most) < target:
        raise fail()
    else:
        best = fewest(lambda k: score(k) >= target, 0, most)  # score(0) < target <= score(most)
    result.kept_float = [*always, *(c.name for c in ranked[:best])]
    result.reached = scores[best]
    result.float_share = float(shares[best - 1]) if best else base
    result.seconds = time.perf_counter() - started
    return result


# --- the whole search --------------------------------------------------------------------------

Build = Callable[[Path, Path, list[str]], dict]  # (source model, output, nodes kept in float) -> build report


class _Trials:
    """Builds and scores candidate files; keeps on disk, at `output`, the passing one with the
    fewest nodes in float (the fastest), and deletes the rest as it goes."""

    def __init__(self, output: Path, build: Build, score: Callable[[Path], float], target: float,
                 note: Callable[[str], None], label: str = ""):
        self.output, self.build, self.score, self.target, self.note = output, build, score, target, note
        self.label = label
        self.scratch = output.with_name(f".trial.{output.name}")
        self.best: dict = {}

    def __call__(self, source: Path, kept: list[str]) -> float:
        started = time.perf_counter()
        report = self.build(source, self.scratch, kept)
        cosine = self.score(self.scratch)
        parts = sum(1 for k in kept if outlier_split.is_part(k))  # in float in every trial of a split source
        searched = len(kept) - parts
        self.note(f"{self.label}{searched} kept in float: min cosine {cosine:.6f} "
                  f"({'reaches' if cosine >= self.target else 'misses'} {self.target:.4f}, "
                  f"{time.perf_counter() - started:.0f}s{f'; its {parts} outlier products in float' if parts else ''})")
        if cosine >= self.target and searched < self.best.get("kept", float("inf")):
            for made, kept_as in zip(_with_weights(self.scratch), _with_weights(self.output)):
                made.replace(kept_as)
            self.best = {"kept": searched, "report": report}
        else:
            self.discard()
        return cosine

    def discard(self) -> None:
        for path in _with_weights(self.scratch):
            path.unlink(missing_ok=True)


def _with_weights(path: Path) -> list[Path]:
    """A model file and the weights file that must keep its name beside it (an OpenVINO IR's .bin)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _channel_peaks(model: onnx.ModelProto, names: list[str], calibration: list[np.ndarray]) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each named tensor over the calibration inputs."""
    record = _Recorder(model, names)
    peaks: dict[str, np.ndarray] = {}
    for x in calibration:
        for name, value in record(x).items():
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks.get(name, 0.0), peak)
    return peaks


def _prepared(source: Path, calibration: list[np.ndarray], output: Path,
              smoothing_beside_split: bool = True) -> dict[str, tuple[Path, int]]:
    """The sources the search may start from besides `source`, by label: the outlier channels split
    off and SmoothQuant applied (not made where the split is and `smoothing_beside_split` is
    false), each written beside `output` with how many products / norms it changed; one left out
    where it changes nothing."""
    model = onnx.load(str(source))
    smoothable, splittable = norm_outputs(model), outlier_split.activations(model)
    peaks = _channel_peaks(model, sorted({*smoothable, *splittable}), calibration) if smoothable or splittable else {}
    made = {}
    for label, names, change in ((SPLIT, splittable, outlier_split.split),
                                 (str(SMOOTHING_ALPHA), smoothable, lambda m, p: smooth(m, p, SMOOTHING_ALPHA))):
        if label != SPLIT and SPLIT in made and not smoothing_beside_split:
            continue
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        count = change(changed, {n: peaks[n] for n in names})
        if count:
            work = output.with_name(f".prepared-{label}.{output.name.rsplit('.', 1)[0]}.onnx")
            save_model(changed, work)  # external data beside it when large, as every artefact
            made[label] = (work, count)
        del changed
    return made


def fixed_float(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """The nodes of `path` that stay in float in every trial: the outlier channels' products of a
    split source (outlier_split.py), as LLM.int8() keeps its outlier part in 16 bits. They are a
    few input channels each (0.45% of the multiply-adds on the base-size `outliers` stress
    checkpoint), and int8 with a range of their own did not serve them: that checkpoint's split
    source reached 0.9882 (NNCF, min cosine over the search inputs) all quantised, 0.9969 with
    them in float (simulated), where the search over all its nodes needed 32 in float (0.88%)."""
    model = onnx.load(str(path), load_external_data=False)
    return [c.name for c in find_candidates(model, op_types) if outlier_split.is_part(c.name)]


def _candidates(model: onnx.ModelProto, op_types: tuple[str, ...], x: np.ndarray) -> tuple[list[Candidate], list[Candidate]]:
    """(the candidates the search may keep in float, those always in float: `fixed_float`), with
    their costs set for the input `x`."""
    found = find_candidates(model, op_types)
    _set_costs(model, found, x)
    return ([c for c in found if not outlier_split.is_part(c.name)], [c for c in found if outlier_split.is_part(c.name)])


def _search_from(chosen: Path, known: float, trials: _Trials, op_types: tuple[str, ...], calibration: list[np.ndarray],
                 probes: list[np.ndarray], checks: Checks | None = None) -> SearchResult:
    """The search over which nodes of `chosen` stay in float (`known`: its score with only the
    `fixed_float` ones in float); the simulation scores on `checks` (measure_sensitivity)."""
    model = onnx.load(str(chosen))
    candidates, fixed = _candidates(model, op_types, probes[0][:1])
    if not candidates:
        raise VariantFailed(f"{chosen.name} has no node the int8 quantiser takes")
    simulate = None
    if known < trials.target:  # the ranking is only needed when something must stay in float
        trials.note(f"{trials.label}sensitivity of {len(candidates)} nodes, one at a time in int8")
        simulate = measure_sensitivity(model, candidates, calibration, probes, op_types != DYNAMIC_OPS,
                                       trials.output.with_name(f".switched.{trials.output.name}"),
                                       lambda line: trials.note(f"{trials.label}{line}"), checks)
    del model
    result = search(candidates, lambda kept: trials(chosen, kept), trials.target, known={0: known},
                    simulate=simulate, fixed=fixed)
    if result.simulated:
        simulated = result.simulated
        answer = (f"{simulated['kept_float']} kept in float reach {simulated['min_cosine']:.6f}"
                  if simulated["kept_float"] is not None else f"the target out of reach ({simulated['min_cosine']:.6f} "
                  f"at the cap)")
        trials.note(f"{trials.label}simulated: {answer}, {simulated['offset']:.6f} optimistic where all quantised "
                    f"({simulated['calls']} simulated calls); "
                    f"{len(result.trials)} real builds")
    return result


@contextlib.contextmanager
def _cleaned(output: Path, *searches: _Trials) -> Iterator[None]:
    """Around a search that publishes at `output`: where it fails, nothing is left there; either
    way no scratch is left (each search's trial file and, but `output`, its best file; the
    prepared sources; the switched models of the sensitivity passes)."""
    try:
        yield
    except BaseException:
        for path in _with_weights(output):
            path.unlink(missing_ok=True)
        raise
    finally:
        for trials in searches:
            trials.discard()
            if trials.output != output:
                for path in _with_weights(trials.output):
                    path.unlink(missing_ok=True)
        prepared = output.parent.glob(f".prepared-*.{output.name.rsplit('.', 1)[0]}.onnx*")
        switched = [p for t in searches for p in output.parent.glob(f".switched.{t.output.name}*")]
        for leftover in [*prepared, *switched]:
            leftover.unlink(missing_ok=True)


def _race(files: list[Path], latency: Callable[[Path], float], rounds: int = RACE_ROUNDS) -> list[float]:
    """Each file's median seconds per call, the files taking turns round by round (this machine's
    speed drifts; turns put the drift on both)."""
    times: list[list[float]] = [[] for _ in files]
    for r in range(rounds):
        order = list(range(len(files)))[:: 1 if r % 2 == 0 else -1]
        for i in order:
            times[i].append(latency(files[i]))
    return [float(np.median(t)) for t in times]


def quick(source: Path, output: Path, build: Build, score: Callable[[Path], float],
          calibration: list[np.ndarray], probes: list[np.ndarray], gate: float, op_types: tuple[str, ...],
          note: Callable[[str], None] | None = None, checks: Checks | None = None) -> tuple[dict, SearchResult]:
    """The search `--target` runs, for an export that takes minutes: the plain source, then the
    one with outlier channels split off (its outlier products in float: `fixed_float`), or where
    the checkpoint has no outlier channels SmoothQuant's, is built all quantised, in that order,
    until one reaches the target; where none does, the one that came closest is searched alone
    (sensitivity, then the bisection on the simulation, real builds only to confirm: `search`).
    No second search and no race between two passing files. SmoothQuant is not tried where the
    split source exists: on the base-size `outliers` stress checkpoint it came to 0.9794 whole
    against the split source's 0.9949 (NNCF), and a build costs ~12 s there. Same target as the
    full search (`accuracy_aware`); the caller scores on fewer rows, and the gate, on its own
    inputs, judges the file afterwards as it judges every file."""
    started = time.perf_counter()
    target = target_for(gate)
    note = note or (lambda line: None)
    trials = _Trials(output, build, score, target, note)
    labels = {"none": "", SPLIT: "outliers split off, ", str(SMOOTHING_ALPHA): "SmoothQuant, "}
    full: dict[str, float] = {}
    prepared: dict[str, tuple[Path, int]] = {}
    with _cleaned(output, trials):
        sources = {"none": source}
        full["none"] = trials(source, [])
        if full["none"] < target:  # the other sources, made only when needed (~20 s on the base model)
            prepared = _prepared(source, calibration, output, smoothing_beside_split=False)
            second = SPLIT if SPLIT in prepared else str(SMOOTHING_ALPHA)
            if second in prepared:
                sources[second] = prepared[second][0]
                trials.label = labels[second]
                full[second] = trials(sources[second], fixed_float(sources[second], op_types))
        choice = max(full, key=lambda k: (full[k], k == SPLIT))  # closest; a tie goes to the split source
        trials.label = labels[choice]
        if full[choice] >= target:  # the search's record, with the costs of what stayed in float, if anything did
            chosen = sources[choice]
            candidates, fixed = (_candidates(onnx.load(str(chosen)), op_types, probes[0][:1])
                                 if fixed_float(chosen, op_types) else
                                 (find_candidates(onnx.load(str(chosen), load_external_data=False), op_types), []))
            result = search(candidates, lambda kept: trials(sources[choice], kept), target, known={0: full[choice]},
                            fixed=fixed)
        else:  # nothing passed yet, so nothing is on disk at `output`
            result = _search_from(sources[choice], full[choice], trials, op_types, calibration, probes, checks)
    result.smoothquant = {"alpha": SMOOTHING_ALPHA, "norms_smoothed": prepared.get(str(SMOOTHING_ALPHA), (None, 0))[1],
                          "used": choice == str(SMOOTHING_ALPHA), "all_quantised_min_cosine": full}
    result.outlier_split = {"ratio": outlier_split.RATIO, "products_split": prepared.get(SPLIT, (None, 0))[1],
                            "used": choice == SPLIT, "quick": True}
    result.seconds = time.perf_counter() - started
    return trials.best["report"], result


def accuracy_aware(source: Path, output: Path, build: Build, score: Callable[[Path], float],
                   calibration: list[np.ndarray], probes: list[np.ndarray], gate: float,
                   op_types: tuple[str, ...], latency: Callable[[Path], float] | None = None,
                   note: Callable[[str], None] | None = None, checks: Checks | None = None) -> tuple[dict, SearchResult]:
    """Search (SmoothQuant or not, then which nodes stay in float) and leave the chosen model at
    `output`; returns (its build report, the search). Where that keeps more than SPLIT_WORTH of the
    multiply-adds in float (or fails) and the checkpoint has outlier channels, the search runs again
    on the source with them split off (outlier_split.py), and, both passing, `latency(file)` (seconds
    per call) picks the faster file. VariantFailed when nothing reaches the target. `note(line)`
    hears of each step (each trial's score), for progress on a search that takes minutes."""
    started = time.perf_counter()
    target = target_for(gate)
    note = note or (lambda line: None)
    trials = _Trials(output, build, score, target, note)
    alternative = _Trials(output.with_name(f".split.{output.name}"), build, score, target, note, "outliers split off, ")
    split_record: dict = {"ratio": outlier_split.RATIO, "products_split": 0, "used": False}
    with _cleaned(output, trials, alternative):
        prepared = _prepared(source, calibration, output)
        full = {"none": trials(source, [])}  # everything quantised, without and with smoothing
        smoothing = str(SMOOTHING_ALPHA)
        if smoothing in prepared and full["none"] < target:
            trials.label = "SmoothQuant, "
            full[smoothing] = trials(prepared[smoothing][0], [])
        # Smoothed only where it clearly helps: it must at least halve the all-quantised error. Its
        # scales come from the calibration inputs; a small gain there can turn into a loss on other
        # inputs once nodes go back to float (measured on the `outliers` stress checkpoint: static
        # QDQ 0.937 -> 0.939 all quantised, but 0.999 -> 0.970 with the 27 most sensitive in float).
        helps = smoothing in full and (full[smoothing] >= target or 1 - full[smoothing] <= SMOOTHING_GAIN * (1 - full["none"]))
        choice = smoothing if full["none"] < target and helps else "none"  # (a passing file on disk is the choice's)
        chosen = source if choice == "none" else prepared[smoothing][0]
        trials.label = "SmoothQuant, " if choice == smoothing else ""
        try:
            result, failed = _search_from(chosen, full[choice], trials, op_types, calibration, probes, checks), None
        except VariantFailed as e:
            result, failed = None, e
        if SPLIT in prepared and (result is None or result.float_share > SPLIT_WORTH):
            split_source, split_record["products_split"] = prepared[SPLIT]
            full[SPLIT] = alternative(split_source, fixed_float(split_source, op_types))
            try:
                other = _search_from(split_source, full[SPLIT], alternative, op_types, calibration, probes, checks)
            except VariantFailed as e:
                split_record["failed"] = str(e)
            else:
                split_record.update(kept_float=len(other.kept_float) - other.fixed_float,
                                    outlier_parts_in_float=other.fixed_float, float_share_of_macs=round(other.float_share, 4),
                                    reached_min_cosine=other.reached, trials=other.trials)
                if result is not None and latency is not None:
                    note(f"racing the two passing files, {RACE_ROUNDS} rounds")
                    mine, theirs = _race([output, alternative.output], latency)
                    split_record["ms_per_call"] = {"without": round(mine * 1e3, 2), "split": round(theirs * 1e3, 2)}
                if result is None or (latency is not None and theirs < mine):
                    for made, kept_as in zip(_with_weights(alternative.output), _with_weights(output)):
                        made.replace(kept_as)
                    if result is not None:  # the search it replaces, whose trials `build.search` no longer lists
                        split_record["unsplit"] = {"kept_float": len(result.kept_float),
                                                   "float_share_of_macs": round(result.float_share, 4),
                                                   "reached_min_cosine": result.reached, "trials": result.trials}
                    trials.best, result, choice = alternative.best, other, SPLIT
                    split_record["used"] = True
        if result is None:
            why = f"; with outlier channels split off: {split_record['failed']}" if "failed" in split_record else ""
            raise VariantFailed(f"{failed}{why}")
    result.smoothquant = {"alpha": SMOOTHING_ALPHA, "norms_smoothed": prepared.get(smoothing, (None, 0))[1],
                          "used": choice == smoothing, "all_quantised_min_cosine": full}
    result.outlier_split = split_record
    result.seconds = time.perf_counter() - started
    return trials.best["report"], result
