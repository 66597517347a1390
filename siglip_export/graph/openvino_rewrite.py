"""The plain graph rewritten into shapes OpenVINO's CPU plugin compiles well (same float model).

`ov-int8` is built from this, not from the plain file itself, which stays what it is: the
portable fp32 reference (and what OpenVINO's default, the peer the benchmark compares with, reads).
Two rewrites, both standard ONNX:

- Flattened products put back on the token axis. The plain export computes each MLP layer as
  Reshape(x, [-1, K]) -> Gemm -> Reshape(y, [B, T, N]). OpenVINO fuses the bias and GELU into
  its FullyConnected kernel either way, but the Reshape then sits between the fused kernel and
  the activation quantiser NNCF puts after GELU, so in an int8 file that quantiser runs alone,
  in f32, behind a bf16 -> f32 copy (about 2 ms a layer at batch 8). As MatMul + Add on the
  3-D tensor the quantiser joins the kernel and fc1 writes u8 straight into fc2.
- Packed products unpacked. The plain export computes q, k and v as one MatMul against the
  concatenated weights, then a Split on the last axis, which OpenVINO's CPU plugin runs with a
  reference kernel (about 0.5 ms a layer at batch 8). One MatMul per part (its columns of the
  weight, and of the bias where an Add sits between) needs no Split, and lets int8_search keep
  q, k or v in float alone.

Measured on the base-size `outliers` stress checkpoint (2-core Xeon with AMX, the same nodes kept
in float, batch 8; README, "The graph ov-int8 is built from"): unflattening took an int8 call
from 227.9 to 204.3 ms, unpacking then from 205.8 to 191.8 ms; at batch 1 both are neutral for
int8. In bf16 alone unpacking is a trade (7% faster at batch 8, 6% slower at batch 1: three thin
products for one), so `ov-bf16` stays on the plain graph.

Each product keeps its node name (an unpacked part is `<name>/part<i>`), so what int8_search
reports kept in float can be found in the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .torch_export import save_model


def _readers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred shapes by tensor name (None for a dimension that is not a number)."""
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def _replace(model: onnx.ModelProto, nodes: list[onnx.NodeProto], replace: dict[int, list[onnx.NodeProto]],
             drop: set[int]) -> None:
    """Put `replace[i]` where `nodes[i]` was and leave out the nodes whose index is in `drop` (by
    position: node names may be empty), then the initializers nothing reads any more."""
    nodes = [new for i, node in enumerate(nodes) if i not in drop for new in replace.get(i, [node])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = ({name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
            | {i.name for i in model.graph.input})  # an initializer listed as an input stays
    kept = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def unflatten_products(model: onnx.ModelProto, shapes: dict | None = None) -> int:
    """Rewrite, in place, Reshape(x, [-1, K]) -> Gemm(W, b) -> Reshape(back to x's leading axes)
    as MatMul(x, W) + b, where the inferred `shapes` (by default, of `model`) prove the round
    trip; returns how many."""
    nodes = list(model.graph.node)
    position = {id(node): i for i, node in enumerate(nodes)}
    inits = {i.name for i in model.graph.initializer}
    producer = {out: node for node in nodes for out in node.output}
    readers, shapes = _readers(nodes), shapes if shapes is not None else _shapes(model)
    outputs = {o.name for o in model.graph.output}
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for i, gemm in enumerate(nodes):
        if gemm.op_type != "Gemm" or gemm.input[1] not in inits or gemm.output[0] in outputs:
            continue
        attrs = _attributes(gemm)
        if attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
        if bias is not None and bias not in inits:
            continue
        flat, after = producer.get(gemm.input[0]), readers.get(gemm.output[0], [])
        if flat is None or flat.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
            continue
        back = after[0]
        x, y = flat.input[0], back.output[0]
        xs, flat_s, ys, ws = shapes.get(x), shapes.get(flat.output[0]), shapes.get(y), shapes.get(gemm.input[1])
        if not (xs and flat_s and ys and ws) or len(xs) < 3 or len(ys) != len(xs) or len(flat_s) != 2 or len(ws) != 2:
            continue
        if None in xs[1:] or xs[1:-1] != ys[1:-1] or flat_s[1] != xs[-1] or ws != [xs[-1], ys[-1]]:
            continue  # not a flatten of the leading axes and back
        name = gemm.name or f"{y}/product"
        product = helper.make_node("MatMul", [x, gemm.input[1]], [f"{y}/product" if bias else y], name=name)
        replace[i] = [product] + ([helper.make_node("Add", [product.output[0], bias], [y], name=f"{name}/bias")]
                                  if bias else [])
        drop.add(position[id(back)])
        if len(readers[flat.output[0]]) == 1 and flat.output[0] not in outputs:
            drop.add(position[id(flat)])
    _replace(model, nodes, replace, drop)
    return len(replace)


def unpack_products(model: onnx.ModelProto, shapes: dict | None = None) -> int:
    """Rewrite, in place, MatMul(x, W) [+ b] -> Split(last axis) as one MatMul [+ b] per part, on
    that part's columns of W (and b); returns how many products were unpacked. `shapes`: as in
    `unflatten_products`."""
    nodes = list(model.graph.node)
    position = {id(node): i for i, node in enumerate(nodes)}
    inits = {i.name: i for i in model.graph.initializer}
    readers, shapes = _readers(nodes), shapes if shapes is not None else _shapes(model)
    outputs = {o.name for o in model.graph.output}
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for i, product in enumerate(nodes):
        if product.op_type != "MatMul" or product.input[1] not in inits or len(inits[product.input[1]].dims) != 2:
            continue
        if len(readers[product.input[1]]) != 1:
            continue  # a shared weight: slicing it for one reader would not change the other
        chain, bias = [product], None
        after = readers.get(product.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":  # a bias between the product and the split
            add = after[0]
            other = add.input[1] if add.input[0] == product.output[0] else add.input[0]
            if other not in inits or len(readers[other]) != 1:
                continue
            bias = numpy_helper.to_array(inits[other])
            chain.append(add)
            after = readers.get(add.output[0], [])
        if len(after) != 1 or after[0].op_type != "Split" or any(n.output[0] in outputs for n in chain):
            continue
        split = after[0]
        weight = numpy_helper.to_array(inits[product.input[1]])
        rank = len(shapes.get(split.input[0]) or [])
        axis = _attributes(split).get("axis", 0)
        sizes = (numpy_helper.to_array(inits[split.input[1]]).tolist()
                 if len(split.input) > 1 and split.input[1] in inits else None)
        if not rank or axis not in (-1, rank - 1) or sizes is None or sum(sizes) != weight.shape[1]:
            continue  # only a split of the product's columns, in sizes known here
        if bias is not None and bias.shape != (weight.shape[1],):
            continue
        new, start, name = [], 0, product.name or f"{product.output[0]}/product"
        for j, (size, out) in enumerate(zip(sizes, split.output)):
            part, columns = f"{name}/part{j}", slice(start, start + size)
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, columns]), f"{part}/weight"))
            if bias is None:
                new.append(helper.make_node("MatMul", [product.input[0], f"{part}/weight"], [out], name=part))
            else:
                model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(bias[columns]), f"{part}/bias"))
                new += [helper.make_node("MatMul", [product.input[0], f"{part}/weight"], [f"{out}/product"], name=part),
                        helper.make_node("Add", [f"{out}/product", f"{part}/bias"], [out], name=f"{part}/bias")]
            start += size
        replace[i] = new
        drop.update(position[id(n)] for n in (*chain[1:], split))
    _replace(model, nodes, replace, drop)
    return len(replace)


def for_openvino(source: Path, out: Path) -> dict[str, int]:
    """Write `source` with both rewrites to `out` (external data beside it when large); returns
    what each changed (the manifest's record)."""
    # Shapes from the graph without its weights: shape inference serialises the model, which
    # protobuf caps at 2 GB; the reshape targets it needs are small, stored in the graph.
    shapes = _shapes(onnx.load(str(source), load_external_data=False))
    model = onnx.load(str(source))
    done = {"products_unflattened": unflatten_products(model, shapes), "products_unpacked": unpack_products(model, shapes)}
    save_model(model, out)
    return done
