"""Accuracy-aware int8: quantise what this checkpoint tolerates, keep the rest in float.

A recipe that quantises every matrix product holds on random weights and fails on checkpoints
whose activations carry outlier channels (trained ones do): one per-tensor int8 scale cannot
cover a range set by a few huge channels. So every export measures its own checkpoint:

0. SmoothQuant (smoothquant.py), where it helps: where the whole model quantised misses the
   target, it is quantised again with SmoothQuant, and the smoothed source is kept for the rest
   of the search when it at least halves the error.
1. Candidates: the nodes the quantiser turns into int8 (ONNX Runtime dynamic: fused Attention,
   weight MatMuls, the patch Conv; static QDQ: weight MatMuls and Gemms; NNCF: those and the Conv).
2. Sensitivity, end to end (sensitivity.py): one float model gets a switch per candidate that
   puts that node alone into simulated int8; each candidate's error is 1 - cosine of
   `pooler_output` against float on a few probe inputs. (A local measure, the node's own output
   error, kept 27 nodes in float on the `outliers` stress checkpoint.)
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

from ..graph.build_errors import VariantFailed
from ..graph.torch_export import save_model
from . import outlier_split
from .sensitivity import Candidate, Checks, Simulator, _Recorder, _set_costs, find_candidates, measure_sensitivity
from .smoothquant import norm_outputs, smooth

MARGIN = 0.5  # aim at gate + MARGIN * (1 - gate): int8's 0.99 gate -> 0.995 on the search inputs
MAX_KEPT_FRACTION = 0.5  # more of the candidates' multiply-adds in float: rejected, not worth an int8 file
SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength (the paper's default)
SMOOTHING_GAIN = 0.5  # used only when it at least halves the all-quantised error (1 - cosine)
SPLIT = "split"  # the source with outlier channels split off (outlier_split.py)
SPLIT_WORTH = 0.05  # the split source is searched too when more of the multiply-adds than this stay in float
RACE_ROUNDS = 4  # the two passing files timed in turns, this many rounds each
# What each quantiser turns into int8: ONNX Runtime's dynamic quantiser (weights constant), its
# static QDQ quantiser as the int8-qdq recipe asks (op_types_to_quantize), NNCF for OpenVINO.
DYNAMIC_OPS = ("Attention", "MatMul", "Conv")
STATIC_OPS = ("MatMul", "Gemm")
OPENVINO_OPS = ("MatMul", "Gemm", "Conv")


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
    reach target + d; where that is out of its reach, its error must be within the target's times
    the ratio of its error to the build's there), the first real trial is its fewest; where that
    misses, the count doubles
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
        # First as a constant error it leaves out; where that puts the target out of reach, as a
        # ratio of errors (on the same checkpoint's SmoothQuant source: 0.9733 simulated against
        # 0.9662 real, all quantised; 0.007 added to every simulated error, the target was out of
        # reach, and the search went build by build, 7 builds).
        offset = max(0.0, predicted(0) - scores[0])
        aims = [target + offset]
        if offset > 0 and scores[0] < 1.0:
            aims.append(1.0 - (1.0 - target) * (1.0 - predicted(0)) / (1.0 - scores[0]))
        guess = None
        for aim in aims:
            low, high = 0, 1  # doubling from one node kept, then bisection: the answer is usually a few nodes
            while high < most and predicted(high) < aim:
                low, high = high, 2 * high
            high = min(high, most)
            if predicted(high) >= aim:
                guess = fewest(lambda k: predicted(k) >= aim, low, high)
                break
        result.simulated = {"kept_float": guess, "min_cosine": round(predicted(most if guess is None else guess), 6),
                            "offset": round(offset, 6), "aim": round(aim, 6), "calls": len(simulated)}
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
