"""Rewrite every group normalization in a graph to one native node.

    counts = fuse_graph(graph)   # mutates graph; returns what it fused

The node emitted is `gncpu::GroupNorm` (see gncpu/onnx/ops/group_norm.py):
x, per-channel scale and bias (or ""), attributes num_groups, epsilon,
activation and channels_last. Passes, in order:

1. decomposed GN, proven algebraically (fusion_decomposed): the torch
   exporters' Reshape -> InstanceNormalization -> Reshape -> Mul -> Add, the
   tf2onnx/Keras channels-last moments pattern, the inlined ONNX function
   body; trailing per-channel Mul/Add/Sub/Div are folded into scale and bias.
2. native nodes: ai.onnx GroupNormalization (opset 18's per-group scale is
   expanded to per-channel) and com.microsoft GroupNorm become gncpu nodes,
   so that pass 3 applies to them too.
3. activations: `Sigmoid(y) -> Mul(y, sigmoid)` (SiLU), Relu, Gelu-20 and
   the exporters' erf GELU `y * 0.5 * (1 + Erf(y / sqrt(2)))` after a
   GroupNorm are folded into its kernel.

A pass that cannot prove its pattern leaves the graph as it was.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx

from .fusion_decomposed import Match, find_match
from .fusion_facts import GraphIndex, const_value, is_float_cast, static_shapes
from .graph import Graph, Node

FUSED_DOMAIN = "gncpu"
FUSED_OP = "GroupNorm"

DECOMPOSED_KEYS = ("torch_instance_norm", "decomposed_group_norm", "channels_last_decomposition")
COUNT_KEYS = ("torch_instance_norm", "decomposed_group_norm", "channels_last_decomposition",
              "group_normalization", "contrib_group_norm", "silu", "relu", "gelu", "gelu_tanh")

# Op types that are group normalization run natively (for counting).
NATIVE_GROUP_NORMS = {(FUSED_DOMAIN, FUSED_OP), ("", "GroupNormalization"),
                      ("com.microsoft", "GroupNorm"), ("com.microsoft", "SkipGroupNorm")}


def fuse_graph(graph: Graph) -> Dict[str, object]:
    """Fuse every provable group normalization in `graph` (in place).

    Returns counts per pattern (keys COUNT_KEYS); "native_group_norms", how
    many native group-norm nodes the graph holds afterwards; and the summary
    keys "group_norm_fused" (decomposed GNs fused), "silu_fused" and
    "patterns" (the non-zero counts)."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    shapes, dtypes = static_shapes(graph)

    def index():
        built = GraphIndex(graph)
        built.shapes, built.dtypes = shapes, dtypes
        return built

    _fuse_decomposed(graph, index, counts)
    _convert_native(graph, index(), counts)
    _fuse_activations(graph, index(), counts)
    if any(n.domain == FUSED_DOMAIN for n in graph.nodes):
        graph.opsets.setdefault(FUSED_DOMAIN, 1)
    counts["native_group_norms"] = count_native_group_norms(graph)
    # The summary keys gncpu.onnx.InferenceSession.stats() reads.
    counts["group_norm_fused"] = sum(counts[k] for k in DECOMPOSED_KEYS)
    counts["silu_fused"] = counts["silu"]
    counts["patterns"] = {k: counts[k] for k in COUNT_KEYS if counts[k]}
    return counts


def count_native_group_norms(graph: Graph) -> int:
    return sum((n.domain, n.op_type) in NATIVE_GROUP_NORMS for n in graph.nodes)


# ----------------------------------------------------------------------------
# 1. decomposed patterns

def _anchors(idx: GraphIndex) -> List[str]:
    """Tensors a decomposed GN may start from: the data input of a Reshape
    (seen through float Casts: the function body casts x to its stash type
    first), or of an InstanceNormalization applied to x itself (torch's
    GroupNorm(C, C) once an optimizer dropped the no-op Reshape)."""
    found = []
    for node in idx.graph.nodes:
        if node.domain != "" or node.op_type not in ("Reshape", "InstanceNormalization") or not node.inputs[0]:
            continue
        name = node.inputs[0]
        producer = idx.producer.get(name)
        if node.op_type == "InstanceNormalization" and producer is not None and producer.op_type == "Reshape":
            # Part of the torch pattern, anchored at the Reshape's input: if that
            # cannot be proven, the instance norm alone must not pass for a GN.
            continue
        while producer is not None and is_float_cast(producer):
            name = producer.inputs[0]
            producer = idx.producer.get(name)
        if name not in found:
            found.append(name)
    return found


def _fuse_decomposed(graph: Graph, make_index, counts):
    idx = make_index()
    for x in _anchors(idx):
        while True:  # one x may feed several GNs (e.g. parallel branches)
            match = find_match(idx, x, channels_last=False) or find_match(idx, x, channels_last=True)
            if match is None:
                break
            _apply(graph, idx, match)
            counts[match.pattern] += 1
            idx = make_index()


def _unique_name(graph: Graph, idx: GraphIndex, base: str) -> str:
    name, k = base, 0
    while name in graph.initializers or name in idx.producer or name in idx.consumers:
        k += 1
        name = f"{base}_{k}"
    return name


def _param_dtype(idx: GraphIndex, x: str):
    return np.float64 if idx.dtypes.get(x) == onnx.TensorProto.DOUBLE else np.float32


def _add_param(graph, idx, base, values, dtype, neutral) -> str:
    if np.all(values == neutral):
        return ""
    name = _unique_name(graph, idx, base)
    graph.initializers[name] = np.ascontiguousarray(values, dtype=dtype)
    return name


def _apply(graph: Graph, idx: GraphIndex, match: Match):
    end_node = idx.producer[match.output]
    dtype = _param_dtype(idx, match.x)
    scale = _add_param(graph, idx, f"{match.output}.gn_scale", match.gamma, dtype, 1.0)
    bias = _add_param(graph, idx, f"{match.output}.gn_bias", match.beta, dtype, 0.0)
    fused = Node(FUSED_OP, [match.x, scale, bias], [match.output],
                 {"num_groups": int(match.num_groups), "epsilon": float(match.epsilon),
                  "activation": "", "channels_last": int(match.channels_last)},
                 name=end_node.name or f"{match.output}_GroupNorm", domain=FUSED_DOMAIN)
    _replace(graph, match.removed, end_node, fused)


def _replace(graph: Graph, removed: List[Node], anchor: Node, new: Node):
    """Put `new` where `anchor` was, drop `removed` (which includes anchor)
    and the initializers only they read (the folded weights, reshape targets)."""
    gone = {id(n) for n in removed}
    nodes = []
    for node in graph.nodes:
        if node is anchor:
            nodes.append(new)
        elif id(node) not in gone:
            nodes.append(node)
    graph.nodes[:] = nodes
    _drop_unread_initializers(graph, {name for n in removed for name in n.inputs})


def _drop_unread_initializers(graph: Graph, candidates):
    orphans = {name for name in candidates if name in graph.initializers}
    if orphans:
        still_read = {name for n in graph.nodes for name in n.inputs} | {v.name for v in graph.outputs}
        for name in orphans - still_read:
            del graph.initializers[name]


# ----------------------------------------------------------------------------
# 2. native nodes

def _convert_native(graph: Graph, idx: GraphIndex, counts):
    opset = graph.opset("")
    for node in list(graph.nodes):
        if node.domain == "" and node.op_type == "GroupNormalization" and len(node.outputs) == 1:
            fused = _from_group_normalization(graph, idx, node, opset)
            key = "group_normalization"
        elif node.domain == "com.microsoft" and node.op_type == "GroupNorm":
            fused = _from_contrib(node)
            key = "contrib_group_norm"
        else:
            continue
        if fused is not None:
            graph.nodes[graph.nodes.index(node)] = fused
            _drop_unread_initializers(graph, node.inputs[1:])
            counts[key] += 1


def _from_group_normalization(graph, idx, node, opset):
    groups = node.attrs.get("num_groups")
    x, scale, bias = (node.inputs + ["", "", ""])[:3]
    if groups is None or not scale or not bias:
        return None  # malformed: the native op reports it, naming the node
    groups = int(groups)
    shape = idx.shapes.get(x)
    channels = shape[1] if shape is not None and len(shape) >= 2 else None
    if channels is not None and (groups <= 0 or channels % groups):
        return None  # malformed: left to the native op, whose error names this node
    scale_value, bias_value = const_value(idx, scale), const_value(idx, bias)
    if opset >= 21:
        # Only rename when the weights are provably per channel: a model whose
        # version_converter left them per group must fail in the native op.
        for value in (scale_value, bias_value):
            if value is not None and channels is not None and np.shape(value) != (channels,):
                return None
    else:
        if scale_value is None or bias_value is None or channels is None or channels % groups:
            return None
        if np.shape(scale_value) != (groups,) or np.shape(bias_value) != (groups,):
            return None
        dtype = _param_dtype(idx, x)
        scale = _unique_name(graph, idx, f"{node.outputs[0]}.gn_scale")
        graph.initializers[scale] = np.repeat(np.asarray(scale_value, dtype), channels // groups)
        bias = _unique_name(graph, idx, f"{node.outputs[0]}.gn_bias")
        graph.initializers[bias] = np.repeat(np.asarray(bias_value, dtype), channels // groups)
    return Node(FUSED_OP, [x, scale, bias], list(node.outputs),
                {"num_groups": groups, "epsilon": float(node.attrs.get("epsilon", 1e-5)),
                 "activation": "", "channels_last": 0},
                name=node.name, domain=FUSED_DOMAIN)


def _from_contrib(node):
    activation = {0: "", 1: "silu"}.get(node.attrs.get("activation"))
    if activation is None or node.attrs.get("groups") is None or len(node.inputs) < 3:
        return None
    return Node(FUSED_OP, list(node.inputs[:3]), list(node.outputs),
                {"num_groups": int(node.attrs["groups"]), "epsilon": float(node.attrs.get("epsilon", 1e-5)),
                 "activation": activation, "channels_last": int(node.attrs.get("channels_last", 1))},
                name=node.name, domain=FUSED_DOMAIN)


# ----------------------------------------------------------------------------
# 3. activations

def _fuse_activations(graph: Graph, idx: GraphIndex, counts):
    changed = False
    for node in list(graph.nodes):
        if node.domain != FUSED_DOMAIN or node.op_type != FUSED_OP or node.attrs.get("activation"):
            continue
        y = node.outputs[0]
        if y in idx.graph_outputs:
            continue
        fused = _silu_after(idx, y) or _gelu_erf_after(idx, y) or _single_activation_after(idx, y)
        if fused is None:
            continue
        name, output, gone = fused
        node.attrs["activation"] = name
        node.outputs[0] = output
        gone_ids = {id(n) for n in gone}
        graph.nodes[:] = [n for n in graph.nodes if id(n) not in gone_ids]
        counts[name] += 1
        changed = True
    return changed


def _silu_after(idx: GraphIndex, y: str):
    """y's only readers are s = Sigmoid(y) and Mul(y, s) (either order), and
    s has no other reader: the Mul's output is silu(y)."""
    readers = idx.consumers.get(y, [])
    if len(readers) != 2:
        return None
    sigmoid = next((n for n in readers if n.domain == "" and n.op_type == "Sigmoid"), None)
    mul = next((n for n in readers if n.domain == "" and n.op_type == "Mul"), None)
    if sigmoid is None or mul is None:
        return None
    s = sigmoid.outputs[0]
    if sorted(mul.inputs) != sorted([y, s]) or s in idx.graph_outputs:
        return None
    if idx.consumers.get(s, []) != [mul]:
        return None
    return "silu", mul.outputs[0], [sigmoid, mul]


def _single_activation_after(idx: GraphIndex, y: str):
    readers = idx.consumers.get(y, [])
    if len(readers) != 1 or readers[0].domain != "":
        return None
    act = readers[0]
    if act.op_type == "Relu":
        return "relu", act.outputs[0], [act]
    if act.op_type == "Gelu":  # ai.onnx Gelu-20
        approximate = act.attrs.get("approximate", "none")
        name = {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
        if name is not None:
            return name, act.outputs[0], [act]
    return None


def _only_reader(idx: GraphIndex, name: str):
    readers = idx.consumers.get(name, [])
    if len(readers) != 1 or name in idx.graph_outputs:
        return None
    return readers[0]


def _other_operand(node: Node, name: str):
    if node.domain != "" or node.op_type != "Mul" or len(node.inputs) != 2 or name not in node.inputs:
        return None
    a, b = node.inputs
    return b if a == name else a


def _is_const(idx, name, value):
    """name is a one-element constant equal to `value` as rounded to its dtype."""
    const = const_value(idx, name)
    if const is None or np.size(const) != 1 or np.asarray(const).dtype.kind != "f":
        return False
    const = np.asarray(const)
    # A float16 model stores sqrt(2) as 1.4140625: compare at its precision.
    rtol = 4 * float(np.finfo(const.dtype).eps) if const.dtype.itemsize < 8 else 1e-9
    return bool(np.isclose(float(const.ravel()[0]), value, rtol=max(rtol, 1e-9), atol=0))


def _gelu_erf_after(idx: GraphIndex, y: str):
    """y * 0.5 * (1 + Erf(y / sqrt(2))), the Muls associated either way, the
    division written as Div by sqrt(2) or Mul by 1/sqrt(2): exact GELU."""
    readers = idx.consumers.get(y, [])
    if len(readers) != 2:
        return None
    for scaled in readers:
        if scaled.domain != "":
            continue
        if scaled.op_type == "Div" and scaled.inputs[0] == y and _is_const(idx, scaled.inputs[1], np.sqrt(2.0)):
            break
        other = _other_operand(scaled, y)
        if other is not None and _is_const(idx, other, np.sqrt(0.5)):
            break
    else:
        return None
    erf = _only_reader(idx, scaled.outputs[0])
    if erf is None or erf.domain != "" or erf.op_type != "Erf":
        return None
    plus_one = _only_reader(idx, erf.outputs[0])
    if plus_one is None or plus_one.op_type != "Add" or plus_one.domain != "":
        return None
    one = plus_one.inputs[1] if plus_one.inputs[0] == erf.outputs[0] else plus_one.inputs[0]
    if not _is_const(idx, one, 1.0):
        return None
    (y_mul,) = [n for n in readers if n is not scaled]
    first = _only_reader(idx, plus_one.outputs[0])
    if first is None:
        return None
    other = _other_operand(first, plus_one.outputs[0])
    if other is None:
        return None
    if other == y or _is_const(idx, other, 0.5):
        # (1 + erf) * y, then * 0.5 -- or (1 + erf) * 0.5, then * y
        second = _only_reader(idx, first.outputs[0])
        need = 0.5 if other == y else None
        last = _other_operand(second, first.outputs[0]) if second is not None else None
        if last is None:
            return None
        if need is not None and not _is_const(idx, last, need):
            return None
        if need is None and last != y:
            return None
        if (y_mul is not first) if other == y else (y_mul is not second):
            return None
        return "gelu", second.outputs[0], [scaled, erf, plus_one, first, second]
    # (y * 0.5) * (1 + erf)
    half = idx.producer.get(other)
    if half is not y_mul or _only_reader(idx, other) is not first:
        return None
    if not _is_const(idx, _other_operand(half, y) or "", 0.5):
        return None
    return "gelu", first.outputs[0], [scaled, erf, plus_one, half, first]
