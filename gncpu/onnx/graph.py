"""The loader's intermediate representation: a plain, mutable graph.

Fusion passes and the session work on these dataclasses, never on protobufs:
attributes are plain Python values (int, float, str, lists of those,
np.ndarray for TENSOR attributes, Graph for GRAPH attributes), so a pass can
read `node.attrs["epsilon"]` and build a replacement `Node(...)` directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

Dim = Union[int, str, None]

# The default ONNX domain has two spellings; the IR uses "".
_DEFAULT_DOMAINS = ("", "ai.onnx")


def normalize_domain(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


@dataclass
class Node:
    op_type: str
    inputs: List[str]          # "" marks an absent optional input
    outputs: List[str]
    attrs: Dict[str, object] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def describe(self) -> str:
        """How errors name a node: its name (if any), op type and domain."""
        op = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        return f"node {self.name!r} ({op})" if self.name else f"node ({op}) -> {self.outputs}"


@dataclass
class ValueInfo:
    name: str
    dtype: Optional[np.dtype]
    shape: Optional[Tuple[Dim, ...]]   # None: rank unknown; str/None dims: symbolic/unknown


@dataclass
class Graph:
    nodes: List[Node]
    initializers: Dict[str, np.ndarray]
    inputs: List[ValueInfo]
    outputs: List[ValueInfo]
    opsets: Dict[str, int]             # "" = ai.onnx
    value_info: Dict[str, ValueInfo] = field(default_factory=dict)
    name: str = ""

    def producer(self, name: str) -> Optional[Node]:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> List[Node]:
        """Nodes reading `name`, including reads from inside their subgraphs."""
        return [node for node in self.nodes if name in node.inputs or name in subgraph_reads(node)]

    def is_graph_output(self, name: str) -> bool:
        return any(v.name == name for v in self.outputs)

    def opset(self, domain: str = "") -> int:
        return self.opsets.get(normalize_domain(domain), 0)


def subgraph_reads(node: Node) -> set:
    """Names a node's GRAPH attributes take from the enclosing scope."""
    reads = set()
    for value in node.attrs.values():
        graphs = value if isinstance(value, list) else [value]
        for sub in graphs:
            if isinstance(sub, Graph):
                reads |= outer_scope_reads(sub)
    return reads


def outer_scope_reads(graph: Graph) -> set:
    """Names used in `graph` (recursively) but defined outside it."""
    defined = set(graph.initializers) | {v.name for v in graph.inputs} | {""}
    reads = set()
    for node in graph.nodes:
        reads |= {name for name in node.inputs if name not in defined}
        reads |= {name for name in subgraph_reads(node) if name not in defined}
        defined |= set(node.outputs)
    return reads


# ----------------------------------------------------------------------------
# protobuf -> IR

def tensor_dtype(elem_type: int) -> Optional[np.dtype]:
    if elem_type == 0:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _value_info(proto: onnx.ValueInfoProto) -> ValueInfo:
    dtype, shape = None, None
    if proto.type.HasField("tensor_type"):
        tensor_type = proto.type.tensor_type
        dtype = tensor_dtype(tensor_type.elem_type)
        if tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
                for d in tensor_type.shape.dim)
    return ValueInfo(proto.name, dtype, shape)


def attribute_value(attr: onnx.AttributeProto, opsets: Dict[str, int]):
    kind = onnx.AttributeProto
    if attr.type == kind.GRAPH:
        return graph_from_proto(attr.g, opsets)
    if attr.type == kind.GRAPHS:
        return [graph_from_proto(g, opsets) for g in attr.graphs]
    if attr.type == kind.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type == kind.TENSORS:
        return [numpy_helper.to_array(t) for t in attr.tensors]
    if attr.type == kind.SPARSE_TENSOR:
        return _sparse_to_dense(attr.sparse_tensor)
    if attr.type == kind.STRING:
        return attr.s.decode("utf-8")
    if attr.type == kind.STRINGS:
        return [s.decode("utf-8") for s in attr.strings]
    if attr.type == kind.FLOATS:
        return [float(v) for v in attr.floats]
    if attr.type == kind.INTS:
        return [int(v) for v in attr.ints]
    if attr.type == kind.FLOAT:
        return float(attr.f)
    if attr.type == kind.INT:
        return int(attr.i)
    return onnx.helper.get_attribute_value(attr)


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def graph_from_proto(proto: onnx.GraphProto, opsets: Dict[str, int]) -> Graph:
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.initializer}
    for sparse in proto.sparse_initializer:
        initializers[sparse.values.name] = _sparse_to_dense(sparse)
    nodes = [
        Node(op_type=n.op_type, inputs=list(n.input), outputs=list(n.output),
             attrs={a.name: attribute_value(a, opsets) for a in n.attribute},
             name=n.name, domain=normalize_domain(n.domain))
        for n in proto.node
    ]
    # Old exporters (IR < 4) list initializers among the inputs too; they are not feeds.
    inputs = [_value_info(v) for v in proto.input if v.name not in initializers]
    outputs = [_value_info(v) for v in proto.output]
    value_info = {v.name: _value_info(v) for v in proto.value_info}
    return Graph(nodes, initializers, inputs, outputs, dict(opsets), value_info, proto.name)


def graph_from_model(model: onnx.ModelProto) -> Graph:
    opsets = {normalize_domain(o.domain): int(o.version) for o in model.opset_import}
    if not model.opset_import:
        # IR versions before opset_import existed meant ai.onnx opset 1.
        opsets[""] = 1
    return graph_from_proto(model.graph, opsets)


# ----------------------------------------------------------------------------
# IR -> protobuf (for the per-node onnx.reference fallback and for saving fused graphs)

def attribute_proto(name: str, value) -> onnx.AttributeProto:
    if isinstance(value, Graph):
        return onnx.helper.make_attribute(name, graph_to_proto(value))
    if isinstance(value, np.ndarray):
        return onnx.helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, list) and value and isinstance(value[0], Graph):
        return onnx.helper.make_attribute(name, [graph_to_proto(g) for g in value])
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return onnx.helper.make_attribute(name, [numpy_helper.from_array(t) for t in value])
    return onnx.helper.make_attribute(name, value)


def node_to_proto(node: Node) -> onnx.NodeProto:
    proto = onnx.helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name or None,
                                  domain=node.domain or None)
    proto.attribute.extend(attribute_proto(k, v) for k, v in node.attrs.items())
    return proto


def _value_info_proto(info: ValueInfo) -> onnx.ValueInfoProto:
    if info.dtype is None:
        proto = onnx.ValueInfoProto()
        proto.name = info.name
        return proto
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype))
    return onnx.helper.make_tensor_value_info(info.name, elem, info.shape)


def graph_to_proto(graph: Graph) -> onnx.GraphProto:
    return onnx.helper.make_graph(
        [node_to_proto(n) for n in graph.nodes], graph.name or "graph",
        [_value_info_proto(v) for v in graph.inputs], [_value_info_proto(v) for v in graph.outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), name) for name, a in graph.initializers.items()],
        value_info=[_value_info_proto(v) for v in graph.value_info.values()])


def model_from_graph(graph: Graph) -> onnx.ModelProto:
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in graph.opsets.items()]
    return onnx.helper.make_model(graph_to_proto(graph), opset_imports=opsets)


# ----------------------------------------------------------------------------
# constants

def constant_node_value(node: Node) -> Optional[np.ndarray]:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    if "value_string" in attrs:
        return np.array(attrs["value_string"], dtype=object)
    if "value_strings" in attrs:
        return np.array(attrs["value_strings"], dtype=object)
    if "sparse_value" in attrs:
        return np.asarray(attrs["sparse_value"])
    return None


def constant_value(graph: Graph, name: str) -> Optional[np.ndarray]:
    """The value of `name` if it is known at load time (an initializer, or the
    output of a Constant node, possibly through Identity nodes), else None."""
    seen = set()
    while name and name not in seen:
        seen.add(name)
        if name in graph.initializers:
            return graph.initializers[name]
        node = graph.producer(name)
        if node is None or node.domain != "":
            return None
        if node.op_type == "Constant":
            return constant_node_value(node)
        if node.op_type == "Identity":
            name = node.inputs[0]
            continue
        return None
    return None
