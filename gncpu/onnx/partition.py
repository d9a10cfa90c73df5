"""Which nodes gncpu runs and which onnxruntime runs: the onnxruntime engine's partition.

    parts = partition_graph(graph)   # pure: reads the graph, changes nothing

Like an execution provider's GetCapability, the other way round: gncpu claims
the nodes it must run itself (`claims_node`), and everything else is cut into
regions that onnxruntime runs, one session per region. The result is the run
order: a list of `Region` and `Claimed` parts.

How the cut is made: every tensor gets a stage, the number of claimed nodes on
the longest path from the graph inputs to it. An unclaimed node's stage is the
largest stage of what it reads; a claimed node's outputs are one stage later
than its inputs. All unclaimed nodes of stage s form region s, and the claimed
nodes reading stage-s tensors run after region s and before region s+1. A
region only reads tensors of its own or an earlier stage, so this order is a
valid schedule whatever the graph's shape (skip connections, fan-out, a claimed
node at a graph input or output, claimed nodes back to back).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Union

from .graph import Graph, Node, normalize_domain
from .plan import CONTROL_FLOW, GROUP_NORM_FAMILY, node_reads, topological_order


@dataclass
class Region:
    """Unclaimed nodes that one onnxruntime session runs."""
    index: int
    nodes: List[Node]
    inputs: List[str] = field(default_factory=list)        # read from outside: feeds, claimed outputs, earlier regions
    outputs: List[str] = field(default_factory=list)       # read by later parts, or graph outputs
    initializers: List[str] = field(default_factory=list)  # weights the region's nodes read

    def describe(self) -> str:
        return f"onnxruntime region {self.index} ({len(self.nodes)} nodes)"


@dataclass
class Claimed:
    """One node gncpu runs on its own kernels."""
    node: Node

    def describe(self) -> str:
        return f"gncpu {self.node.describe()}"


Part = Union[Region, Claimed]


def is_group_norm(node: Node) -> bool:
    return (normalize_domain(node.domain), node.op_type) in GROUP_NORM_FAMILY


def contains_group_norm(graph: Graph) -> bool:
    """Whether `graph` (or any subgraph nested in it) has a group-norm node."""
    for node in graph.nodes:
        if is_group_norm(node):
            return True
        for sub in _subgraphs(node):
            if contains_group_norm(sub):
                return True
    return False


def claims_node(node: Node) -> bool:
    """The nodes gncpu runs itself: every group normalization (after fusion, the
    fused gncpu::GroupNorm with its activation; onnxruntime cannot run it, nor
    com.microsoft GroupNorm on CPU, and it runs GroupNormalization-21 as a
    float32 E[x^2]-E[x]^2 body that loses everything at an offset of 1e4), and
    an If or Loop whose body holds one. The body of such a node runs on the
    embedded engine (its GroupNorms on gncpu's kernels): splitting a body
    across onnxruntime sessions per iteration or branch would pay a session
    call per region per trip, and running it inside onnxruntime would give
    its GroupNorms back to onnxruntime. An If/Loop without GroupNorm stays
    inside its region."""
    if is_group_norm(node):
        return True
    return node.domain == "" and node.op_type in CONTROL_FLOW and any(contains_group_norm(g) for g in _subgraphs(node))


def _subgraphs(node: Node) -> List[Graph]:
    found = []
    for value in node.attrs.values():
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, Graph):
                found.append(item)
    return found


def partition_graph(graph: Graph, claims=claims_node) -> List[Part]:
    """The run order of `graph` as onnxruntime regions and claimed nodes (see
    the module docstring). Empty regions are left out; region indices count
    the regions that remain, in run order."""
    stage: Dict[str, int] = {}
    region_nodes: Dict[int, List[Node]] = {}
    claimed_after: Dict[int, List[Node]] = {}
    for node in topological_order(graph):
        reads = node_reads(node)
        level = max((stage.get(name, 0) for name in reads), default=0)
        if claims(node):
            claimed_after.setdefault(level, []).append(node)
            out_stage = level + 1
        else:
            region_nodes.setdefault(level, []).append(node)
            out_stage = level
        for name in node.outputs:
            if name:
                stage[name] = out_stage

    parts: List[Part] = []
    last = max(list(region_nodes) + list(claimed_after), default=-1)
    for level in range(last + 1):
        if region_nodes.get(level):
            parts.append(Region(sum(isinstance(p, Region) for p in parts), region_nodes[level]))
        parts.extend(Claimed(node) for node in claimed_after.get(level, ()))
    _connect(graph, parts)
    return parts


def _connect(graph: Graph, parts: List[Part]) -> None:
    """Fill each region's inputs, outputs and initializers."""
    readers: Dict[str, set] = {}
    for index, part in enumerate(parts):
        for node in _part_nodes(part):
            for name in node_reads(node):
                readers.setdefault(name, set()).add(index)
    graph_outputs = {v.name for v in graph.outputs}
    for index, part in enumerate(parts):
        if not isinstance(part, Region):
            continue
        produced = {name for node in part.nodes for name in node.outputs if name}
        seen = set()
        for node in part.nodes:
            for name in node_reads(node):
                if name in produced or name in seen:
                    continue
                seen.add(name)
                (part.initializers if name in graph.initializers else part.inputs).append(name)
            for name in node.outputs:
                if name and (name in graph_outputs or readers.get(name, set()) - {index}):
                    part.outputs.append(name)


def _part_nodes(part: Part) -> List[Node]:
    return part.nodes if isinstance(part, Region) else [part.node]


def describe_partition(parts: List[Part]) -> dict:
    """Counts summary() prints: regions, nodes per region, claimed nodes by op."""
    regions = [p for p in parts if isinstance(p, Region)]
    claimed = [p.node for p in parts if isinstance(p, Claimed)]
    return {
        "regions": len(regions),
        "region_nodes": [len(r.nodes) for r in regions],
        "claimed_nodes": len(claimed),
        "claimed_group_norms": sum(is_group_norm(n) for n in claimed),
        "claimed_control_flow": sum(not is_group_norm(n) for n in claimed),
    }
