"""What the fusion passes can prove about a graph's values at load time:
which are constants (and their values), the static shapes ONNX shape
inference finds, and what a shape tensor (the target of a Reshape) holds in
terms of other tensors' dimensions.

A shape tensor's value is a list of *entries*: an int, or `Dim(tensor, axis)`
standing for "dimension `axis` of `tensor`" when that is not known statically.
This is what lets a pass prove that `Reshape(y, Concat(Shape(x)[0:1], [6, 6, 8]))`
gives y the shape of x without knowing the batch size.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import numpy as np
import onnx

from .graph import Graph, Node, constant_value, node_to_proto, outer_scope_reads

# Initializers up to this many elements are handed to shape inference as
# values (reshape targets, axes); larger ones only as typed inputs, so a
# large model is not copied into a protobuf just to learn its shapes.
_SMALL_CONSTANT = 4096

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


class Dim(NamedTuple):
    tensor: str
    axis: int


class GraphIndex:
    """Producer and consumer maps of a graph, rebuilt after each rewrite."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer: Dict[str, Node] = {}
        self.consumers: Dict[str, List[Node]] = {}
        self.position: Dict[int, int] = {}
        for position, node in enumerate(graph.nodes):
            self.position[id(node)] = position
            for name in node.outputs:
                if name:
                    self.producer[name] = node
            for name in node.inputs:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in _subgraph_reads(node) - set(node.inputs):
                # If / Loop bodies reading a value from this scope consume it too
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {v.name for v in graph.outputs}
        # Filled by the fusion driver: static shapes and element types (names
        # keep their meaning across rewrites, so these survive a rebuild).
        self.shapes: Dict[str, tuple] = {}
        self.dtypes: Dict[str, int] = {}


def _subgraph_reads(node: Node) -> set:
    reads = set()
    for value in node.attrs.values():
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, Graph):
                reads |= outer_scope_reads(sub)
    return reads


def is_float_cast(node: Node) -> bool:
    """A Cast between floating-point types: a change of precision only."""
    return node.domain == "" and node.op_type == "Cast" and node.attrs.get("to") in _FLOAT_TYPES


# ----------------------------------------------------------------------------
# constants

_FOLDABLE = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Neg", "Flatten"}


def const_value(index: GraphIndex, name: str, _depth: int = 0) -> Optional[np.ndarray]:
    """The value of `name` when it is a constant: an initializer or Constant,
    possibly through Identity / Cast / Unsqueeze / Squeeze / Reshape / Neg /
    Flatten of constants (how exporters hand over weights)."""
    if not name or _depth > 16:
        return None
    graph = index.graph
    if name in graph.initializers:
        return graph.initializers[name]
    node = index.producer.get(name)
    if node is None or node.domain != "":
        return None
    if node.op_type == "Constant":
        return constant_value(graph, name)
    if node.op_type not in _FOLDABLE:
        return None
    inputs = [const_value(index, i, _depth + 1) if i else None for i in node.inputs]
    if inputs[0] is None:
        return None
    data = np.asarray(inputs[0])
    op, attrs = node.op_type, node.attrs
    try:
        if op == "Identity":
            return data
        if op == "Neg":
            return -data
        if op == "Cast":
            target = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
            return data.astype(target)
        if op == "Flatten":
            axis = attrs.get("axis", 1) % max(data.ndim, 1) if data.ndim else 0
            return data.reshape(int(np.prod(data.shape[:axis])), -1)
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes")
            if len(inputs) > 1 and node.inputs[1]:
                if inputs[1] is None:
                    return None
                axes = [int(a) for a in np.asarray(inputs[1]).ravel()]
            if op == "Squeeze":
                return np.squeeze(data, axis=None if axes is None else tuple(axes))
            out_rank = data.ndim + len(axes)
            return np.expand_dims(data, tuple(sorted(a % out_rank for a in axes)))
        if op == "Reshape":
            if len(inputs) < 2:
                return None
            if inputs[1] is None:
                # e.g. Keras reshapes gamma to [1, 1, 1, G, C // G] computed from Shape(x)
                entries = shape_entries(index, node.inputs[1], lambda t: _static_dims(index, t), _depth + 1)
                if entries is None or not all(isinstance(e, int) for e in entries):
                    return None
                inputs[1] = np.array(entries, np.int64)
            target = [int(v) for v in np.asarray(inputs[1]).ravel()]
            if not attrs.get("allowzero", 0):
                target = [data.shape[i] if v == 0 else v for i, v in enumerate(target)]
            return data.reshape(target)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None


def _static_dims(index: GraphIndex, name: str):
    shape = index.shapes.get(name)
    if shape is None:
        return None
    return [d if d is not None else Dim(name, i) for i, d in enumerate(shape)]


# ----------------------------------------------------------------------------
# static shapes

def static_shapes(graph: Graph):
    """(shapes, dtypes): name -> shape tuple (ints for known dims, None for
    unknown) for every value whose rank ONNX shape inference (or the model
    itself) knows, and name -> TensorProto element type where known."""
    shapes: Dict[str, tuple] = {}
    dtypes: Dict[str, int] = {}

    def record(name, shape):
        if shape is not None:
            shapes[name] = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)

    for info in list(graph.inputs) + list(graph.value_info.values()) + list(graph.outputs):
        record(info.name, info.shape)
        if info.dtype is not None:
            dtypes[info.name] = _elem(info.dtype)
    for name, value in graph.initializers.items():
        shapes[name] = tuple(np.shape(value))
        dtypes[name] = _elem(np.asarray(value).dtype)
    try:
        inferred, inferred_types = _infer(graph)
    except Exception:  # noqa: BLE001 - inference is an optional aid; the model's own info stands
        return shapes, dtypes
    for name, elem in inferred_types.items():
        dtypes.setdefault(name, elem)
    for name, shape in inferred.items():
        old = shapes.get(name)
        if old is None or (len(old) == len(shape) and sum(d is None for d in old) > sum(d is None for d in shape)):
            record(name, shape)
    return shapes, dtypes


def _infer(graph: Graph) -> Dict[str, tuple]:
    small = {k: v for k, v in graph.initializers.items() if np.size(v) <= _SMALL_CONSTANT}
    inputs = [onnx.helper.make_tensor_value_info(v.name, _elem(v.dtype), v.shape) for v in graph.inputs]
    for name, value in graph.initializers.items():
        if name not in small:
            inputs.append(onnx.helper.make_tensor_value_info(name, _elem(value.dtype), value.shape))
    proto = onnx.helper.make_graph(
        [node_to_proto(n) for n in graph.nodes], "shapes", inputs, [],
        initializer=[onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in small.items()])
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in graph.opsets.items()]
    model = onnx.helper.make_model(proto, opset_imports=opsets)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    found, types = {}, {}
    for info in list(model.graph.value_info) + list(model.graph.output):
        if not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            types[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            found[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                     for d in tensor_type.shape.dim)
    return found, types


def _elem(dtype) -> int:
    if dtype is None:
        return onnx.TensorProto.UNDEFINED
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ----------------------------------------------------------------------------
# symbolic dimensions

# Ops whose output keeps every dimension of input 0.
_SAME_SHAPE = {"Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Exp",
               "Sqrt", "Reciprocal", "Softplus", "LeakyRelu", "Elu", "Gelu", "HardSigmoid",
               "HardSwish", "Mish", "Clip", "Dropout", "BatchNormalization", "InstanceNormalization",
               "LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax"}
# Ops whose output keeps the batch dimension (axis 0) of input 0.
_SAME_BATCH = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
               "GlobalMaxPool", "Resize", "Upsample", "Pad", "LpPool"}


def canonical_dim(index: GraphIndex, dim: Dim, _depth: int = 0) -> Dim:
    """The earliest tensor dimension provably equal to `dim`, so that
    Shape(conv_out)[0] and Shape(Transpose(conv_out))[0] compare equal."""
    while _depth < 256:
        _depth += 1
        node = index.producer.get(dim.tensor)
        if node is None or node.domain != "" or not node.inputs or not node.inputs[0]:
            return dim
        op = node.op_type
        if op == "Transpose":
            perm = node.attrs.get("perm")
            if perm is None or dim.axis >= len(perm):
                return dim
            dim = Dim(node.inputs[0], int(perm[dim.axis]))
        elif op in _SAME_SHAPE and node.outputs[0] == dim.tensor:
            dim = Dim(node.inputs[0], dim.axis)
        elif op in _SAME_BATCH and dim.axis == 0 and node.outputs[0] == dim.tensor:
            dim = Dim(node.inputs[0], 0)
        elif op == "ConstantOfShape":
            # ConstantOfShape(Shape(t)) (ones_like / zeros_like) has t's dims
            shape = index.producer.get(node.inputs[0])
            if shape is None or shape.domain != "" or shape.op_type != "Shape":
                return dim
            start = shape.attrs.get("start", 0)
            if start < 0 or "end" in shape.attrs:
                return dim
            dim = Dim(shape.inputs[0], start + dim.axis)
        else:
            return dim
    return dim


# ----------------------------------------------------------------------------
# shape tensors

def shape_entries(index: GraphIndex, name: str, dims_of, _depth: int = 0) -> Optional[list]:
    """The value of the 1-D int64 tensor `name` as a list of entries (int or
    Dim), or None when it cannot be proven. `dims_of(tensor)` gives a tensor's
    dimensions as entries (or None); Shape nodes are answered through it."""
    if not name or _depth > 32:
        return None
    value = const_value(index, name)
    if value is not None:
        value = np.asarray(value)
        if value.dtype.kind not in "iu" or value.ndim > 1:
            return None
        return [int(v) for v in value.ravel()]
    node = index.producer.get(name)
    if node is None or node.domain != "":
        return None
    op, attrs = node.op_type, node.attrs

    def entries(i):
        if i >= len(node.inputs):
            return None
        return shape_entries(index, node.inputs[i], dims_of, _depth + 1)

    if op == "Shape":
        dims = dims_of(node.inputs[0])
        if dims is None:
            return None
        rank = len(dims)
        start, end = attrs.get("start", 0), attrs.get("end", rank)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return list(dims[start:end])
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
        # On 0-D / 1-D shape tensors these only change the container.
        data = entries(0)
        if data is None or (op in ("Squeeze", "Unsqueeze") and len(data) > 1):
            return None
        return data
    if op == "Concat":
        parts = [entries(i) for i in range(len(node.inputs))]
        if any(p is None for p in parts):
            return None
        return [e for p in parts for e in p]
    if op == "Slice":
        data = entries(0)
        starts, ends = _ints(index, node, 1, attrs.get("starts")), _ints(index, node, 2, attrs.get("ends"))
        axes = _ints(index, node, 3, attrs.get("axes"))
        steps = _ints(index, node, 4, None)
        if data is None or starts is None or ends is None or len(starts) != 1:
            return None
        if axes not in (None, [0], [-1]) or steps not in (None, [1]):
            return None
        return data[slice(*_clip(starts[0], ends[0], len(data)))]
    if op == "Gather":
        data = entries(0)
        idx = const_value(index, node.inputs[1])
        if data is None or idx is None or attrs.get("axis", 0) != 0:
            return None
        try:
            return [data[int(i)] for i in np.asarray(idx).ravel()]
        except IndexError:
            return None
    if op in ("Div", "Mul", "Add", "Sub"):
        a, b = entries(0), entries(1)
        if a is None or b is None:
            return None
        return _elementwise(op, a, b)
    return None


def _ints(index, node, position, attr_value):
    if position < len(node.inputs) and node.inputs[position]:
        value = const_value(index, node.inputs[position])
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]
    return None if attr_value is None else [int(v) for v in attr_value]


def _clip(start, end, length):
    start = min(max(start + length if start < 0 else start, 0), length)
    end = min(max(end + length if end < 0 else end, 0), length)
    return start, end


def _elementwise(op, a, b):
    if len(a) != len(b):
        if len(a) == 1:
            a = a * len(b)
        elif len(b) == 1:
            b = b * len(a)
        else:
            return None
    out = []
    for x, y in zip(a, b):
        if not (isinstance(x, int) and isinstance(y, int)):
            return None
        if op == "Div":
            if y == 0 or x % y:
                return None  # integer Div truncates: only exact divisions are provably what the model means
            out.append(x // y)
        else:
            out.append({"Mul": x * y, "Add": x + y, "Sub": x - y}[op])
    return out
