"""Outlier channels apart: a matrix product split in two, so the big one quantises well.

Where a few input channels of a weight product are far larger than the rest (the normalised
activations of trained vision transformers have such channels; so does the `outliers` stress
checkpoint), one per-tensor int8 scale spends its range on them and rounds the others to a few
levels. SmoothQuant (smoothquant.py) shrinks them by moving scale into the weights, which then
quantise worse. This instead computes the product in two parts, as LLM.int8() does at run time
(Dettmers et al., 2022), fixed here from calibration statistics:

    x @ W  =  (x * mask) @ W'  +  x[:, outliers] @ W[outliers]

`mask` zeroes the outlier channels and W' is W with their rows zeroed, so the first product,
nearly all the work, sees activations without outliers and gets a tight int8 range; the second
has a handful of input channels (free next to the first) and its own range, or stays in float.
The float model computes the same thing (up to summation order).

Applies to MatMul and Gemm (no transA / transB) with a constant [in, out] weight at input 1 and
the activation at input 0. A channel is an outlier when its largest |value| over the calibration
inputs is over RATIO times the median channel's; at most MAX_SHARE of the channels, the largest,
are split off. A tensor with none is left alone, and so is one whose products share a weight
with another node (changing it would leak).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

RATIO = 8.0  # a channel's max |x| over this multiple of the median channel's: an outlier
MAX_SHARE = 1 / 32  # of a tensor's channels, at most this many are split off (24 of 768)
SUFFIX = "/outliers"  # the split-off product's node name: <product>/outliers


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the weight products reading it that can be split."""
    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.input[0] in inits or len(inits[node.input[1]].dims) != 2:
            continue
        if any(a.name in ("transA", "transB") and a.i for a in node.attribute):
            continue
        found.setdefault(node.input[0], []).append(node)
    return found


def is_part(node_name: str) -> bool:
    """Whether a node is the outlier channels' part of a split product (what `split` adds)."""
    return node_name.endswith(SUFFIX)


def activations(model: onnx.ModelProto) -> list[str]:
    """The tensors `split` needs per-channel statistics of."""
    return sorted(_readers(model))


def outlier_channels(channel_max: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the channels counted as outliers; empty when there are none."""
    median = float(np.median(channel_max))
    over = np.flatnonzero(channel_max > RATIO * max(median, 1e-12))
    most = max(1, int(len(channel_max) * MAX_SHARE))
    if len(over) > most:
        over = over[np.argsort(-channel_max[over])[:most]]
    return np.sort(over)


def split(model: onnx.ModelProto, channel_max: dict[str, np.ndarray]) -> int:
    """Split, in place, every product whose input has outlier channels by `channel_max` (per-channel
    max |x| by tensor name). Returns how many products were split."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    before: dict[str, list[onnx.NodeProto]] = {}  # original node name -> nodes to put before it
    after: dict[str, list[onnx.NodeProto]] = {}  # original node name -> nodes to put after it
    done = 0
    for tensor, users in _readers(model).items():
        peaks = channel_max.get(tensor)
        if peaks is None or any(uses[u.input[1]] != 1 for u in users):  # a shared weight: changing it would leak
            continue
        idx = outlier_channels(np.asarray(peaks, np.float64))
        if not len(idx):
            continue
        mask = np.ones(len(peaks), np.float32)
        mask[idx] = 0.0
        inliers, outliers = f"{tensor}/inliers", f"{tensor}/outlier_channels"
        model.graph.initializer.extend([numpy_helper.from_array(mask, f"{inliers}_mask"),
                                        numpy_helper.from_array(idx.astype(np.int64), f"{outliers}_index")])
        before.setdefault(users[0].name, []).extend([
            helper.make_node("Mul", [tensor, f"{inliers}_mask"], [inliers], name=f"{tensor}/mask_outliers"),
            helper.make_node("Gather", [tensor, f"{outliers}_index"], [outliers], axis=-1,
                             name=f"{tensor}/gather_outliers")])
        for node in users:
            weight = numpy_helper.to_array(inits[node.input[1]])
            if len(weight) != len(peaks):
                raise ValueError(f"{node.name}: weight has {len(weight)} input channels, {tensor} has {len(peaks)}")
            main = weight.copy()
            main[idx] = 0.0  # their inputs are zero there; zero rows also keep the per-column weight scales tight
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(main, node.input[1]))
            part = f"{node.name}{SUFFIX}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[idx]), f"{part}_weight"))
            out = node.output[0]
            node.input[0], node.output[0] = inliers, f"{out}/inliers"
            after.setdefault(node.name, []).extend([
                helper.make_node("MatMul", [outliers, f"{part}_weight"], [f"{out}/outliers"], name=part),
                helper.make_node("Add", [f"{out}/inliers", f"{out}/outliers"], [out], name=f"{part}/add")])
            done += 1
    ordered = [n for node in model.graph.node for n in (*before.get(node.name, []), node, *after.get(node.name, []))]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return done
