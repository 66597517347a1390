"""Per-node int8 sensitivity, and the simulation the int8 search bisects on (int8_search.py).

One float model gets a boolean input per candidate node (a node the quantiser would make int8)
that switches that node to int8 arithmetic, simulated in float: its activations through
QuantizeLinear / DequantizeLinear (dynamic ranges, or ranges calibrated as MinMax calibration
computes them), its weight rounded per output channel to the builders' bits. With it, each
node's damage alone is measured end to end (1 - cosine of `pooler_output` against float, on a
few probe rows; a local measure, the node's own output error, ranked the pooling head's layers
low although their error reaches the embedding unattenuated), and afterwards any set of nodes
kept in float is scored in seconds, where a real build by the quantiser takes tens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.torch_export import save_model

PROGRESS_EVERY_S = 15  # a line at least this often during the sensitivity pass


@dataclass
class Candidate:
    """A node the quantiser would make int8: its float input, its constant weight."""

    name: str
    op_type: str
    activations: list[str]
    weight: str
    error: float = 0.0  # 1 - cosine of the embedding with this node alone in int8
    cost: float = 1.0  # multiply-adds per input (weight size x rows it is applied to)


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


__all__ = ["Candidate", "Checks", "Simulator", "find_candidates", "measure_sensitivity"]
