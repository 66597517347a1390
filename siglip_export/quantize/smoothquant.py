"""SmoothQuant: move activation outliers from LayerNorm outputs into the weights that read them.

Trained vision transformers (and the `outliers` stress checkpoint) have a few channels whose
normalised activations are far larger than the rest; one per-tensor int8 scale then wastes
most of its range on them. For a LayerNorm whose output feeds only matrix products with
constant weights, a per-channel scale s_j can be divided out of the norm's gamma and beta and
multiplied into row j of every weight that reads it: the float model computes the same thing,
the activations quantise better, the weights (per output channel) barely worse. With alpha in
[0, 1], s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al., 2023); max|x_j| is measured on
the calibration inputs.

Applies to LayerNormalization (gamma, beta: inputs 1, 2) and ONNX Runtime's fused
SkipLayerNormalization (inputs 2, 3; its other outputs are the un-normalised sum and stay as
they are), read by MatMul or Gemm (weight at input 1, not transposed) or fused Attention (packed q/k/v
weight at input 1), directly or through a Reshape that keeps the channel axis last.
A norm read by anything else is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3)}  # op -> (gamma, beta) input index
READERS = ("MatMul", "Gemm", "Attention")  # weight at input 1, [in_channels, out] (a Gemm without transB)
SCALE_RANGE = (1e-5, 1e5)


def _smoothable(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """(norm, the nodes reading its output) for every norm whose readers all take a constant weight.
    A Reshape that keeps the channel axis last (onnxsim flattens [batch, tokens, channels] into
    [batch * tokens, channels] before a MatMul) is looked through."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}

    def weight_readers(tensor: str, channels: int) -> list[onnx.NodeProto] | None:
        found = []
        for user in readers.get(tensor, []):
            if tensor in outputs:
                return None
            if user.op_type == "Reshape" and user.input[0] == tensor and user.input[1] in inits:
                shape = numpy_helper.to_array(inits[user.input[1]])
                deeper = weight_readers(user.output[0], channels) if shape.size and shape[-1] == channels else None
                if deeper is None:
                    return None
                found += deeper
            elif (user.op_type in READERS and list(user.input).index(tensor) == 0 and user.input[1] in inits
                  and inits[user.input[1]].dims[0] == channels
                  and not any(a.name in ("transA", "transB") and a.i for a in user.attribute)):
                found.append(user)
            else:
                return None
        return found or None

    found = []
    for node in model.graph.node:
        if node.op_type not in NORMS or len(node.input) <= max(NORMS[node.op_type]):
            continue
        gamma, beta = (node.input[i] for i in NORMS[node.op_type])
        if gamma not in inits or beta not in inits:
            continue
        users = weight_readers(node.output[0], int(np_size(inits[gamma])))
        if users is not None:
            found.append((node, users))
    return found


def np_size(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims))


def smooth(model: onnx.ModelProto, channel_max: dict[str, np.ndarray], alpha: float) -> int:
    """Rescale, in place, every smoothable norm whose output's per-channel max |x| is in
    `channel_max` (by output name). Returns how many norms were smoothed."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    done = 0
    for norm, users in _smoothable(model):
        x_max = channel_max.get(norm.output[0])
        names = [norm.input[i] for i in NORMS[norm.op_type]] + [u.input[1] for u in users]
        if x_max is None or any(uses[n] != 1 for n in names):  # a shared tensor: rescaling it would leak
            continue
        gamma, beta, *mats = [numpy_helper.to_array(inits[n]).astype(np.float64) for n in names]
        w_max = np.max([np.abs(w).max(axis=1) for w in mats], axis=0)
        scale = np.clip(np.maximum(x_max, 1e-12) ** alpha / np.maximum(w_max, 1e-12) ** (1 - alpha), *SCALE_RANGE)
        for name, value in zip(names, [gamma / scale, beta / scale, *(w * scale[:, None] for w in mats)]):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        done += 1
    return done


def norm_outputs(model: onnx.ModelProto) -> list[str]:
    """The outputs `smooth` needs per-channel statistics of."""
    return [norm.output[0] for norm, _ in _smoothable(model)]
