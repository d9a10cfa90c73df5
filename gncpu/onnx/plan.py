"""From a Graph to an execution plan: validate, order, bind kernels, free early.

A plan is a list of steps in topological order. Each step holds the kernel
chosen for its node (a native op from the registry, the control-flow runner
for If/Loop, or onnx.reference for that one node) and the names whose last
reader it is, so intermediates are dropped as soon as nothing needs them.
"""
from __future__ import annotations

import functools
import heapq
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set

import numpy as np

from . import registry
from .errors import InvalidModelError, NodeExecutionError
from .graph import Graph, Node, node_to_proto, subgraph_reads

# Ops whose output differs between runs with equal inputs: never fold them.
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}
CONTROL_FLOW = {"If", "Loop"}
GROUP_NORM_FAMILY = {("", "GroupNormalization"), ("com.microsoft", "GroupNorm"),
                     ("com.microsoft", "SkipGroupNorm"), ("gncpu", "GroupNorm")}


def node_reads(node: Node) -> List[str]:
    return [name for name in node.inputs if name] + sorted(subgraph_reads(node))


def topological_order(graph: Graph, outer: Set[str] = frozenset()) -> List[Node]:
    """Nodes ordered so each runs after the producers of what it reads.

    Raises InvalidModelError naming the node for a tensor nobody defines, a
    tensor defined twice, a graph output nobody produces, or a cycle."""
    available = set(graph.initializers) | {v.name for v in graph.inputs} | set(outer)
    producers: Dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.outputs:
            if not name:
                continue
            if name in producers or name in graph.initializers or name in {v.name for v in graph.inputs}:
                raise InvalidModelError(
                    f"{node.describe()} (index {index}) writes tensor {name!r}, which is already defined "
                    f"(by another node, an initializer or a graph input): ONNX graphs are single-assignment")
            producers[name] = index
    for index, node in enumerate(graph.nodes):
        for name in node_reads(node):
            if name not in available and name not in producers:
                raise InvalidModelError(
                    f"{node.describe()} (index {index}) reads tensor {name!r}, which no node, initializer "
                    f"or graph input defines")
    for out in graph.outputs:
        if out.name not in available and out.name not in producers:
            raise InvalidModelError(f"graph output {out.name!r} is not produced by any node, initializer or input")

    # Kahn's algorithm, stable: among ready nodes the earliest in file order runs first.
    waiting = []
    dependents: Dict[int, List[int]] = {i: [] for i in range(len(graph.nodes))}
    for index, node in enumerate(graph.nodes):
        deps = {producers[name] for name in node_reads(node) if name in producers and name not in available}
        waiting.append(len(deps))
        for dep in deps:
            dependents[dep].append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for dependent in dependents[index]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) != len(graph.nodes):
        stuck = [graph.nodes[i] for i in range(len(graph.nodes)) if waiting[i] > 0]
        names = ", ".join(n.describe() for n in stuck[:5])
        raise InvalidModelError(f"the graph has a cycle: {len(stuck)} nodes wait on each other, e.g. {names}")
    return [graph.nodes[i] for i in order]


# ----------------------------------------------------------------------------
# kernels

@dataclass
class Kernel:
    """How one node runs.

    `call(*args)` is the fast form the plan uses: inputs positionally (None
    for an absent optional one), attributes already bound; it returns an array
    or a tuple of arrays. `run(args, env)` -> tuple of outputs is the general
    form; control-flow kernels need it (`env` holds the enclosing scope), and
    they set `call` to None."""
    kind: str                 # "native", "fallback" or "control"
    run: Callable
    label: str                # op type as reported in summaries and profiles
    call: Optional[Callable] = None


def _native_kernel(node: Node, entry: registry.OpEntry) -> Kernel:
    fn = entry.fn
    attrs = dict(node.attrs)
    if entry.wants_output_count:
        attrs["_num_outputs"] = len(node.outputs)
    call = functools.partial(fn, **attrs) if attrs else fn

    def run(args, env):
        result = call(*args)
        return result if isinstance(result, tuple) else (result,)

    return Kernel("native", run, node.op_type, call)


def _accepted_attributes(fn: Callable) -> Optional[set]:
    """Keyword names `fn` takes, or None if it takes any (**kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _schema_attributes(node: Node, version: int) -> Optional[set]:
    """Attribute names the ONNX schema defines for this node, or None if onnx has no schema for it."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, version, node.domain)
    except Exception:  # SchemaError: not a standard op (custom domain, or unknown)
        return None
    return set(schema.attributes)


def _check_attributes(node: Node, version: int) -> None:
    """Reject at load time attributes the ONNX spec does not define for this op,
    naming them, rather than failing with a TypeError halfway through a run."""
    defined = _schema_attributes(node, version)
    if defined is None:
        return
    unknown = sorted(set(node.attrs) - defined)
    if unknown:
        raise InvalidModelError(
            f"{node.describe()} has attribute(s) {unknown} that {node.op_type} (opset {version}) does not define; "
            f"it defines {sorted(defined)}")


def _reference_kernel(node: Node, opsets: Dict[str, int]) -> Optional[Kernel]:
    """Run one node through onnx.reference, or None if it has no implementation."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node_to_proto(node), opsets=dict(opsets))
    except Exception:  # onnx.reference raises assorted types for unknown ops
        return None
    names = [name for name in node.inputs]

    def call(*args):
        feeds = {name: value for name, value in zip(names, args) if name}
        outputs = evaluator.run(None, feeds)
        return tuple(np.asarray(o) if o is not None and not isinstance(o, list) else o for o in outputs)

    return Kernel("fallback", lambda args, env: call(*args), node.op_type, call)


def native_covers(entry: Optional[registry.OpEntry], node: Node) -> bool:
    """Whether the native implementation handles this node: it exists, says it
    supports the node, and takes every attribute the node sets (an attribute
    added by a newer opset than the implementation knows sends the node to the
    reference fallback instead of failing)."""
    if entry is None or (entry.supports is not None and not entry.supports(node)):
        return False
    accepted = _accepted_attributes(entry.fn)
    return accepted is None or set(node.attrs) <= accepted


def bind_kernel(node: Node, opsets: Dict[str, int], outer: Set[str]) -> Kernel:
    version = opsets.get(node.domain, 1 if node.domain else 0)
    if node.domain == "" and node.op_type in CONTROL_FLOW:
        from .control_flow import control_flow_kernel
        return control_flow_kernel(node, opsets, outer)
    _check_attributes(node, version)
    entry = registry.lookup_entry(node.op_type, node.domain, version)
    if native_covers(entry, node):
        return _native_kernel(node, entry)
    kernel = _reference_kernel(node, opsets)
    if kernel is not None:
        return kernel
    where = f"domain {node.domain!r}" if node.domain else "the default domain (ai.onnx)"
    native = registry.supported_op_types(node.domain)
    raise InvalidModelError(
        f"{node.describe()}: no implementation of {node.op_type} in {where} at opset {version}, "
        f"neither native nor in onnx.reference. Native ops in that domain: {', '.join(native) or 'none'}")


def specialize(node: Node, kernel: Kernel, constants: Dict[str, object]) -> Kernel:
    """`kernel` with a call prepared from the node's constant inputs, where its op
    offers one: gncpu's fused GroupNorm checks its weights once at load instead
    of on every run (see ops/group_norm.prepare_fused_group_norm)."""
    if kernel.kind == "native" and node.domain == "gncpu" and node.op_type == "GroupNorm":
        from .ops.group_norm import prepare_fused_group_norm

        call = prepare_fused_group_norm(node, constants)
        if call is not None:
            return Kernel("native", lambda args, env: (call(*args),), kernel.label, call)
    return kernel


# ----------------------------------------------------------------------------
# the plan

@dataclass
class Step:
    node: Node
    kernel: Kernel
    free_after: List[str] = field(default_factory=list)


# Slot 0 of a plan's value list always holds None: absent optional inputs read it.
_ABSENT = 0


class Plan:
    """Runs a validated graph (or subgraph, reading `outer` names from the caller).

    At load every tensor name gets a slot in a list, and every step becomes a
    flat record (call, input slots, output slots, slots to free, step), so a
    run does list indexing and one call per node: no dictionary lookups, no
    attribute handling (see bench/bench_onnx_models.py for the cost per node)."""

    def __init__(self, graph: Graph, outer: Set[str] = frozenset()):
        self.graph = graph
        order = topological_order(graph, outer)
        defined = set(outer) | _defined(graph)
        self.steps = [Step(node, specialize(node, bind_kernel(node, graph.opsets, defined), graph.initializers))
                      for node in order]
        self.output_names = [v.name for v in graph.outputs]
        self._assign_frees()
        self._compile()

    def _assign_frees(self) -> None:
        keep = set(self.output_names)
        last_reader: Dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for name in node_reads(step.node):
                last_reader[name] = index
        for index, step in enumerate(self.steps):
            # Outputs nobody reads are dropped right away, unless the caller wants them.
            for name in step.node.outputs:
                if name and name not in keep and name not in last_reader:
                    step.free_after.append(name)
        for name, index in last_reader.items():
            if name not in keep and name not in self.graph.initializers:
                self.steps[index].free_after.append(name)

    def _compile(self) -> None:
        slots: Dict[str, int] = {"": _ABSENT}

        def slot(name):
            return slots.setdefault(name, len(slots))

        initializers = self.graph.initializers
        for name in initializers:
            slot(name)
        self._template = [None] * len(slots)
        for name, index in slots.items():
            if name:
                self._template[index] = initializers[name]
        # Names the caller's env supplies: graph inputs and whatever the steps read from outside.
        produced = {name for step in self.steps for name in step.node.outputs if name}
        external = [v.name for v in self.graph.inputs]
        for step in self.steps:
            external += [name for name in node_reads(step.node) if name not in produced and name not in initializers]
        self._external = [(name, slot(name)) for name in dict.fromkeys(external)]
        self._records = []
        for step in self.steps:
            node = step.node
            ins = tuple(slot(name) if name else _ABSENT for name in node.inputs)
            outs = tuple(slot(name) if name else _ABSENT for name in node.outputs) or (_ABSENT,)
            frees = tuple(slot(name) for name in step.free_after)
            scope = None
            if step.kernel.call is None:  # control flow: its kernel reads the enclosing scope by name
                scope = tuple((name, slot(name)) for name in sorted(subgraph_reads(node)))
            named = sum(1 for name in node.outputs if name)
            self._records.append((step.kernel.call, ins, outs, frees, scope, named, step))
        self._slots = slots
        self._template += [None] * (len(slots) - len(self._template))
        self._freed_externals = {name for step in self.steps for name in step.free_after
                                 if name in dict(self._external)}

    def execute(self, env: Dict[str, object], wanted: Optional[Sequence[str]] = None,
                on_step: Optional[Callable] = None) -> Dict[str, object]:
        """Run every step on `env` (feeds + outer values), mutating it: graph
        outputs and `wanted` names are added, inputs whose last reader ran are
        removed. `on_step` is called as on_step(step, seconds) after each node."""
        values = self._template.copy()
        for name, index in self._external:
            values[index] = env.get(name)
        extra = [(name, self._slots[name]) for name in (wanted or ())
                 if name not in self.output_names and name in self._slots]
        protected = frozenset(index for _, index in extra)
        with np.errstate(all="ignore"):  # once per run, not per op call (1-6 us each)
            self._run_records(values, protected, on_step)
        for name in self._freed_externals:
            if self._slots[name] not in protected:
                env.pop(name, None)
        for name in self.output_names:
            env[name] = values[self._slots[name]]
        for name, index in extra:
            env[name] = values[index]
        return env

    def _run_records(self, values, protected, on_step):
        clock = time.perf_counter
        for call, ins, outs, frees, scope, named, step in self._records:
            args = [values[i] for i in ins]
            start = clock() if on_step is not None else 0.0
            try:
                if scope is None:
                    result = call(*args)
                else:
                    result = step.kernel.run(args, {name: values[i] for name, i in scope})
            except NodeExecutionError:
                raise
            except Exception as exc:
                raise _node_error(step.node, args, exc) from exc
            if type(result) is tuple:
                if len(result) < named:
                    raise _count_error(step.node, len(result), named)
                for index, value in zip(outs, result):
                    values[index] = value
            elif named > 1:
                raise _count_error(step.node, 1, named)
            else:
                values[outs[0]] = result
            values[_ABSENT] = None  # an unnamed output may have landed there
            if on_step is not None:
                on_step(step, clock() - start)
            for index in frees:
                if index not in protected:
                    values[index] = None


def _count_error(node: Node, returned: int, named: int) -> NodeExecutionError:
    return NodeExecutionError(f"{node.describe()} returned {returned} outputs, the node names {named}")


def _node_error(node: Node, args, exc: Exception) -> NodeExecutionError:
    shapes = ", ".join(f"{name}: {_describe_value(v)}" for name, v in zip(node.inputs, args) if name)
    return NodeExecutionError(f"{node.describe()} failed on inputs ({shapes}): {type(exc).__name__}: {exc}")


def _defined(graph: Graph) -> Set[str]:
    names = set(graph.initializers) | {v.name for v in graph.inputs}
    for node in graph.nodes:
        names |= {n for n in node.outputs if n}
    return names


def _describe_value(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, list):
        return f"sequence of {len(value)}"
    return type(value).__name__


# ----------------------------------------------------------------------------
# constant folding

def fold_constants(graph: Graph, static_shapes: Optional[Dict[str, tuple]] = None) -> int:
    """Evaluate at load every node whose inputs are all known, replacing its
    outputs with initializers. `static_shapes` gives graph inputs whose shape
    is fully fixed (feeds are checked against it), so Shape of them folds too.
    Returns the number of nodes removed."""
    static_shapes = static_shapes or {}
    known = dict(graph.initializers)
    kept, folded = [], 0
    for node in topological_order(graph):
        value = _try_fold(node, known, graph, static_shapes)
        if value is None:
            kept.append(node)
            continue
        for name, result in zip(node.outputs, value):
            if name:
                known[name] = result
                graph.initializers[name] = result
        folded += 1
    graph.nodes = kept
    return folded


def _try_fold(node: Node, known: Dict[str, np.ndarray], graph: Graph, static_shapes):
    if node.op_type in NONDETERMINISTIC or node.op_type in CONTROL_FLOW or subgraph_reads(node):
        return None
    if node.domain == "" and node.op_type == "Shape" and node.inputs[0] in static_shapes:
        shape = np.array(static_shapes[node.inputs[0]], dtype=np.int64)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return (shape[start:end] if end is not None else shape[start:],)
    if node.domain == "" and node.op_type == "Size" and node.inputs[0] in static_shapes:
        return (np.array(int(np.prod(static_shapes[node.inputs[0]])), dtype=np.int64),)
    if not all((name in known) for name in node.inputs if name):
        return None
    if node.domain not in ("",):
        return None
    if any(isinstance(known[name], np.ndarray) and known[name].nbytes > (64 << 20) for name in node.inputs if name):
        return None
    entry = registry.lookup_entry(node.op_type, node.domain, graph.opsets.get(node.domain, 0))
    # Ops without a native implementation fold through onnx.reference: slow, but once, at
    # load (e.g. BiT's weight standardization, a training-mode BatchNormalization on weights).
    kernel = _native_kernel(node, entry) if native_covers(entry, node) else _reference_kernel(node, graph.opsets)
    if kernel is None:
        return None
    try:
        args = [known[name] if name else None for name in node.inputs]
        with np.errstate(all="ignore"):
            results = kernel.run(args, {})
    except Exception:
        # A node that fails on constants fails at run time too, with the node-named error there.
        return None
    if not all(isinstance(r, np.ndarray) for r in results):
        return None
    return results


def remove_dead_nodes(graph: Graph) -> int:
    """Drop nodes none of whose outputs reach a graph output (left over by
    fusion, or dead in the file). Returns how many were removed."""
    needed = {v.name for v in graph.outputs}
    kept = []
    for node in reversed(topological_order(graph)):
        if any(name in needed for name in node.outputs if name):
            kept.append(node)
            needed.update(node_reads(node))
    removed = len(graph.nodes) - len(kept)
    graph.nodes = kept[::-1]
    return removed


def prune_initializers(graph: Graph) -> int:
    """Drop initializers nothing reads any more (weights consumed only by folded
    or fused nodes), so the session does not hold them. Returns how many."""
    needed = {v.name for v in graph.outputs}
    for node in graph.nodes:
        needed.update(node_reads(node))
    unused = [name for name in graph.initializers if name not in needed]
    for name in unused:
        del graph.initializers[name]
    return len(unused)
