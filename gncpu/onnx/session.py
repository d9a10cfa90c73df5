"""InferenceSession: onnxruntime's calling convention over gncpu's native ops.

    session = InferenceSession("vae_decoder.onnx", num_threads=2)
    (image,) = session.run(None, {"latent": z})

Loading parses the model, checks its structure, folds what is constant, fuses
GroupNorm patterns into native nodes (gncpu.onnx.fusion) and binds every node
to a kernel: a native NumPy/gncpu op, the If/Loop runner, or onnx.reference for
that single node (listed once in a warning).
"""
from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from . import context, fusion, ops
from .errors import InvalidModelError
from .graph import Graph, ValueInfo, graph_from_model, normalize_domain
from .partition import Region
from .pickling import ModelSource, rebuild_session
from .plan import GROUP_NORM_FAMILY, Plan, fold_constants, prune_initializers, remove_dead_nodes, topological_order

class FallbackWarning(UserWarning):
    """Some nodes run through onnx.reference (correct, but slow)."""


class EngineFallbackWarning(UserWarning):
    """engine="auto" chose onnxruntime, which cannot load the model: the embedded engine runs it."""


@dataclass(frozen=True)
class NodeArg:
    """A graph input or output as onnxruntime describes it."""
    name: str
    shape: list      # ints, symbolic names (str) or None per dim; [] for scalars
    type: str        # "tensor(float)", "tensor(int64)", ...

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape})"


def _type_string(dtype: Optional[np.dtype]) -> str:
    if dtype is None:
        return "tensor(undefined)"
    try:
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return f"tensor({dtype})"
    return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"


def load_model_proto(model: Union[str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto]) -> onnx.ModelProto:
    """Parse `model` (a path, serialized bytes or a ModelProto) with clear errors."""
    if isinstance(model, onnx.ModelProto):
        proto, source, base_dir = model, "the ModelProto", None
    else:
        if isinstance(model, (bytes, bytearray, memoryview)):
            data, source, base_dir = bytes(model), f"the {len(model)} bytes given", None
        elif isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ONNX model file {path!r} does not exist")
            with open(path, "rb") as f:
                data = f.read()
            source, base_dir = f"file {path!r}", os.path.dirname(os.path.abspath(path))
        else:
            raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")
        if not data:
            raise InvalidModelError(f"{source} is empty, not an ONNX model")
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise InvalidModelError(f"{source} is not a valid ONNX model (truncated or not ONNX): "
                                    f"protobuf parsing failed: {exc}") from exc
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise InvalidModelError(
            f"{source} is not an ONNX model: it has no graph or no IR version (ir_version={proto.ir_version})")
    if not proto.graph.output:
        raise InvalidModelError(f"{source} has a graph with no outputs: nothing to compute")
    if base_dir is not None and _uses_external_data(proto):
        from onnx.external_data_helper import load_external_data_for_model
        try:
            load_external_data_for_model(proto, base_dir)
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"{source}: cannot load its external tensor data: {exc}") from exc
    elif base_dir is None and _uses_external_data(proto):
        raise InvalidModelError(f"{source} keeps tensors in external files; load it from its path instead")
    return proto


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


class InferenceSession:
    """Load an ONNX model once, run it many times.

    model: path, serialized bytes or onnx.ModelProto.
    num_threads: threads a run uses (None: gncpu.get_num_threads()). Convs and
        matmuls split their blocks over that many threads while BLAS is held to
        one thread per call (through threadpoolctl; without it BLAS threads
        itself); GroupNorm kernels get it as their num_threads.
    fuse: rewrite GroupNorm patterns into native nodes (default True).
    allow_fallback: run ops without a native implementation through
        onnx.reference (default True); False makes such models fail to load.
    providers: accepted for code written against onnxruntime; gncpu runs on
        the CPU, so the list must name "CPUExecutionProvider".
    engine: what runs the nodes that are not GroupNorm (see ENGINES):
        "onnxruntime" runs them in onnxruntime sessions, one per region between
        GroupNorms, and the GroupNorms on gncpu's kernels (gncpu.onnx.engine_ort);
        "gncpu" runs every node on the embedded NumPy engine (gncpu.onnx.plan);
        "auto" (default) is "onnxruntime" when onnxruntime can be imported,
        else "gncpu". `session.engine` names the one in use.
    """

    def __init__(self, model, num_threads: Optional[int] = None, *, fuse: bool = True,
                 allow_fallback: bool = True, providers: Optional[Sequence] = None, engine: str = "auto"):
        # Every argument but the model, as given (this must stay the first statement): pickling
        # rebuilds the session from the model's bytes and these, so a new option needs nothing more.
        self._options = {name: value for name, value in locals().items() if name not in ("self", "model")}
        self.engine = _resolve_engine(engine)
        if providers is not None:
            names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
            if "CPUExecutionProvider" not in names:
                raise ValueError(f"providers={list(names)}: gncpu.onnx runs on the CPU only; "
                                 f"pass providers=['CPUExecutionProvider'] or omit providers")
        if num_threads is not None:
            from .._config import _count
            num_threads = _count(num_threads, "num_threads")
        self._num_threads = num_threads
        start = time.perf_counter()
        proto = load_model_proto(model)
        self._model_source = ModelSource(model)
        try:
            graph = graph_from_model(proto)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidModelError(f"cannot read the model's graph (corrupt tensor or attribute?): {exc}") from exc
        # Keep the metadata, not the proto: its tensors would double the weights' memory.
        self._meta = {"producer_name": proto.producer_name, "producer_version": proto.producer_version,
                      "domain": proto.domain, "graph_name": proto.graph.name, "description": proto.doc_string,
                      "version": proto.model_version,
                      "custom_metadata_map": {p.key: p.value for p in proto.metadata_props}}
        del proto
        ops.load_all()
        self._declared_inputs = list(graph.inputs)
        self._declared_outputs = list(graph.outputs)
        self._output_names = tuple(v.name for v in self._declared_outputs)
        self._nodes_in_file = len(graph.nodes)
        self._op_types_in_file = Counter(_op_key(n) for n in graph.nodes)
        topological_order(graph)  # structural errors surface before any work
        static = {v.name: v.shape for v in graph.inputs
                  if v.shape is not None and all(isinstance(d, int) for d in v.shape)}
        self._folded = fold_constants(graph, static)
        self._fusion_report = {}
        if fuse:
            self._fusion_report = dict(fusion.fuse_graph(graph) or {})
        self._dead_removed = remove_dead_nodes(graph)
        self._initializers_pruned = prune_initializers(graph)
        for value in graph.initializers.values():
            if isinstance(value, np.ndarray):
                # Constants: ops never write them, and read-only marks them safe to cache derived values of.
                value.flags.writeable = False
        self._graph = graph
        self._ort = None
        if self.engine == "onnxruntime":
            from .engine_ort import OnnxruntimeCannotLoad, OrtEngine
            try:
                self._ort = OrtEngine(graph, num_threads if num_threads is not None else _default_threads(),
                                      context_threads=num_threads)
            except OnnxruntimeCannotLoad as exc:
                if engine != "auto":
                    raise
                # "auto" promises a session that runs: onnxruntime lacks a kernel for some node
                # (e.g. Erf on float64), and the embedded engine has one.
                warnings.warn(f"gncpu.onnx: {exc}. engine=\"auto\" runs this model on the embedded engine "
                              f"(engine=\"gncpu\") instead", EngineFallbackWarning, stacklevel=2)
                self.engine = "gncpu"
        if self._ort is not None:
            self._plan = None
            # The only buffers a run holds besides the feeds (the rest live inside onnxruntime).
            self._held_arrays = [a for a in self._ort.held.values() if isinstance(a, np.ndarray)]
        else:
            self._ort = None
            self._plan = Plan(graph)
            self._held_arrays = [a for a in graph.initializers.values() if isinstance(a, np.ndarray)]
        if any(s.kernel.label in ("Erf", "Gelu") and s.kernel.kind == "native" for s in self._steps()):
            # Import scipy's erf now (~0.2 s) rather than inside the first run's timing.
            from .ops.elementwise import erf_array
            erf_array(np.zeros(1, np.float32))
        self._load_seconds = time.perf_counter() - start
        self._last_output_shapes: Dict[str, tuple] = {}
        self._last_profile: Optional[Dict[str, dict]] = None
        self._threadpools = _threadpool_controller()
        fallback = Counter(s.kernel.label for s in self._steps() if s.kernel.kind == "fallback")
        if fallback and not allow_fallback:
            raise InvalidModelError(f"no native implementation for {dict(fallback)} and allow_fallback=False")
        if fallback:
            listed = ", ".join(f"{op} x{count}" for op, count in sorted(fallback.items()))
            warnings.warn(f"gncpu.onnx: {sum(fallback.values())} node(s) have no native implementation and run "
                          f"through onnx.reference (slow): {listed}", FallbackWarning, stacklevel=2)

    # ------------------------------------------------------------------ onnxruntime API
    def get_inputs(self) -> List[NodeArg]:
        return [_node_arg(v) for v in self._declared_inputs]

    def get_outputs(self) -> List[NodeArg]:
        return [_node_arg(v) for v in self._declared_outputs]

    def get_modelmeta(self):
        return dict(self._meta)

    def run(self, output_names: Optional[Sequence[str]], input_feed: Dict[str, object], run_options=None) -> list:
        """Outputs named by `output_names` (None: all, in graph order) for `input_feed`."""
        return self._run(output_names, input_feed, None)

    # ------------------------------------------------------------------ gncpu extras
    def run_with_profile(self, output_names, input_feed):
        """Like run(), also returning seconds spent per op type:
        {op_type: {"calls": n, "seconds": s}}, slowest first."""
        totals: Dict[str, list] = {}

        def record(step, seconds):
            entry = totals.setdefault(step.kernel.label, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

        outputs = self._run(output_names, input_feed, record)
        profile = OrderedDict((op, {"calls": c, "seconds": s})
                              for op, (c, s) in sorted(totals.items(), key=lambda kv: -kv[1][1]))
        self._last_profile = profile
        return outputs, profile

    def run_with_progress(self, output_names, input_feed, callback):
        """Like run(); `callback(done_nodes, total_nodes, step_label)` after each node."""
        total = len(self._steps())
        done = [0]

        def record(step, seconds):
            done[0] += 1
            callback(done[0], total, step.kernel.label)

        return self._run(output_names, input_feed, record)

    @property
    def graph(self) -> Graph:
        """The graph as it runs (after folding and fusion); read-only by convention."""
        return self._graph

    def _steps(self) -> list:
        """What a run walks: the plan's nodes, or the onnxruntime engine's parts."""
        return self._ort.steps if self._ort is not None else self._plan.steps

    def stats(self) -> dict:
        """What summary() prints, as a dict."""
        nodes = [(s.node, s.kernel) for s in self._plan.steps] if self._ort is None else \
            [(s.part.node, s.kernel) for s in self._ort.steps if s.kernel.kind != "onnxruntime"]
        kinds = Counter(kernel.kind for _, kernel in nodes)
        gn_native = sum(1 for n, k in nodes if _op_key(n) in GROUP_NORM_FAMILY and k.kind == "native")
        gn_fallback = sum(1 for n, k in nodes if _op_key(n) in GROUP_NORM_FAMILY and k.kind != "native")
        ort_nodes = [] if self._ort is None else [n for p in self._ort.parts if isinstance(p, Region) for n in p.nodes]
        report = self._fusion_report
        return {
            "engine": self.engine,
            "producer": f"{self._meta['producer_name']} {self._meta['producer_version']}".strip(),
            "opsets": dict(self._graph.opsets),
            "nodes_in_file": self._nodes_in_file,
            "op_types_in_file": {(f"{d}::{op}" if d else op): n for (d, op), n in self._op_types_in_file.items()},
            "nodes_folded": self._folded,
            "nodes_removed_dead": self._dead_removed,
            "nodes_run": len(nodes) + len(ort_nodes),
            "native_nodes": kinds.get("native", 0),
            "control_flow_nodes": kinds.get("control", 0),
            "fallback_nodes": kinds.get("fallback", 0),
            "onnxruntime_nodes": len(ort_nodes),
            "fallback_ops": dict(Counter(k.label for _, k in nodes if k.kind == "fallback")),
            "op_types_run": dict(Counter([k.label for _, k in nodes] + [n.op_type for n in ort_nodes])),
            "partition": self._ort.describe() if self._ort is not None else None,
            "group_norm_native": gn_native,
            "group_norm_fallback": gn_fallback,
            "group_norm_fused": int(report.get("group_norm_fused", 0)),
            "silu_fused": int(report.get("silu_fused", 0)),
            "fusion_patterns": dict(report.get("patterns", {})),
            "inputs": [(a.name, a.type, a.shape) for a in self.get_inputs()],
            "outputs": [(a.name, a.type, a.shape) for a in self.get_outputs()],
            "last_output_shapes": dict(self._last_output_shapes),
            "load_seconds": self._load_seconds,
            "num_threads": self._num_threads,
            "options": dict(self._options),
            "profile": self._last_profile,
        }

    def summary(self) -> str:
        s = self.stats()
        lines = [f"gncpu.onnx session ({s['engine']} engine): {s['producer'] or 'unknown producer'}, opsets "
                 + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(s["opsets"].items())),
                 f"  nodes: {s['nodes_in_file']} in file, {s['nodes_folded']} folded at load, "
                 f"{s['nodes_removed_dead']} dead removed, {s['nodes_run']} run "
                 f"({s['native_nodes']} native, {s['control_flow_nodes']} control flow, "
                 + (f"{s['onnxruntime_nodes']} in onnxruntime" if s["partition"] else
                    f"{s['fallback_nodes']} via onnx.reference")
                 + f"); loaded in {s['load_seconds'] * 1e3:.0f} ms",
                 f"  GroupNorm: {s['group_norm_native']} run natively, {s['group_norm_fused']} of them fused "
                 f"from exporter patterns, {s['silu_fused']} SiLU fused"
                 + (f", {s['group_norm_fallback']} NOT native" if s["group_norm_fallback"] else "")]
        if s["partition"]:
            lines.extend(_partition_lines(s["partition"]))
        if s["fusion_patterns"]:
            lines.append("  fused patterns: " + ", ".join(f"{k} x{v}" for k, v in sorted(s["fusion_patterns"].items())))
        if s["partition"]:
            pass  # onnxruntime runs every node that is not claimed: there is no fallback
        elif s["fallback_ops"]:
            lines.append("  fallback ops (onnx.reference): "
                         + ", ".join(f"{op} x{n}" for op, n in sorted(s["fallback_ops"].items())))
        else:
            lines.append("  fallback ops: none")
        lines.append("  ops run: " + ", ".join(f"{op} x{n}" for op, n in
                                                sorted(s["op_types_run"].items(), key=lambda kv: (-kv[1], kv[0]))))
        for title, values in (("inputs", s["inputs"]), ("outputs", s["outputs"])):
            for name, type_, shape in values:
                got = s["last_output_shapes"].get(name) if title == "outputs" else None
                lines.append(f"  {title[:-1]} {name}: {type_} {_shape_str(shape)}"
                             + (f" -> last run {_shape_str(got)}" if got is not None else ""))
        if s["profile"]:
            total = sum(p["seconds"] for p in s["profile"].values()) or 1.0
            lines.append("  time per part (last profiled run):" if s["partition"] else
                         "  time per op type (last profiled run):")
            for op, p in s["profile"].items():
                lines.append(f"    {op:<{_label_width(s['profile'])}} {p['calls']:5d} calls {p['seconds'] * 1e3:10.2f} ms "
                             f"{100 * p['seconds'] / total:5.1f}%")
        return "\n".join(lines)

    def __repr__(self):
        s = self.stats()
        return (f"<gncpu.onnx.InferenceSession ({s['engine']}): {s['nodes_run']} nodes, {s['group_norm_native']} native GroupNorm, "
                f"{s['fallback_nodes']} fallback>")

    def __reduce__(self):
        """Pickle as the model's bytes and the constructor's options (see pickling.py)."""
        return rebuild_session, (self._model_source.model_bytes(), dict(self._options))

    # ------------------------------------------------------------------ internals
    def _run(self, output_names, input_feed, on_step):
        names = self._check_output_names(output_names)
        feeds = self._check_feeds(input_feed)
        if self._ort is not None:
            # GroupNorm kernels take the session's thread count; onnxruntime has its own.
            env = self._ort.execute(feeds, on_step)
            return self._collect(names, env, feeds, self._ort.fresh_outputs)
        env = dict(self._graph.initializers)
        env.update(feeds)
        if self._threadpools is not None:
            # Ops split big products over our own threads with BLAS held to one thread each
            # (see ops/parallel.py); without threadpoolctl BLAS does its own threading.
            op_threads = self._num_threads if self._num_threads is not None else _default_threads()
            limit = _SingleThreadedBlas(self._threadpools)
        else:
            op_threads, limit = 1, _NoLimit()
        with context.using_threads(self._num_threads, op_threads), limit:
            env = self._plan.execute(env, names, on_step)
        return self._collect(names, env, feeds)

    def _collect(self, names, env, feeds, fresh=frozenset()) -> list:
        """The outputs `names` from `env`; those in `fresh` are known to be new buffers."""
        results = [env[name] for name in names]
        if not fresh.issuperset(names):
            for index, (name, value) in enumerate(zip(names, results)):
                if name not in fresh and isinstance(value, np.ndarray) and self._aliases_held_buffer(value, feeds):
                    results[index] = value.copy()  # never hand out the session's or the caller's buffers
        self._last_output_shapes = dict(zip(names, map(np.shape, results)))
        return results

    def _aliases_held_buffer(self, value, feeds) -> bool:
        """Whether `value` is (a view of) an initializer or a feed: Identity,
        Reshape and friends return views, and writing into such an output
        would change the model or the caller's array."""
        base = value
        while isinstance(base.base, np.ndarray):
            base = base.base
        held = self._held_arrays + [a for a in feeds.values() if isinstance(a, np.ndarray)]
        for array in held:
            root = array
            while isinstance(root.base, np.ndarray):
                root = root.base
            if root is base or np.may_share_memory(value, array):
                return True
        return False

    def _check_output_names(self, output_names):
        if output_names is None:
            return self._output_names
        available = self._output_names
        if isinstance(output_names, str):
            raise TypeError(f"output_names must be a list of names or None, got the string {output_names!r}")
        names = list(output_names)
        for name in names:
            if name not in available:
                raise ValueError(f"output_names: {name!r} is not an output of the model; outputs are {list(available)}")
        return names

    def _check_feeds(self, input_feed) -> Dict[str, np.ndarray]:
        feeds = self._feeds_as_declared(input_feed)
        return feeds if feeds is not None else self._checked_feeds(input_feed)

    @functools.cached_property
    def _feed_patterns(self):
        """Per declared input: (name, dtype, rank, the axes of its fixed dims, those dims),
        or None when an input is not a typed tensor (the full check handles those)."""
        patterns = []
        for info in self._declared_inputs:
            if info.dtype is None or info.shape is None:
                return None
            axes = tuple(axis for axis, d in enumerate(info.shape) if isinstance(d, int))
            patterns.append((info.name, np.dtype(info.dtype), len(info.shape),
                             axes, tuple(info.shape[axis] for axis in axes)))
        return patterns

    def _feeds_as_declared(self, input_feed) -> Optional[Dict[str, np.ndarray]]:
        """The feeds, when they are exactly the declared arrays (the usual run: ~0.4 us
        instead of the full check's ~1.2); None sends them through _checked_feeds,
        which raises the error."""
        patterns = self._feed_patterns
        if patterns is None or type(input_feed) is not dict or len(input_feed) != len(patterns):
            return None
        feeds = {}
        for name, dtype, rank, axes, dims in patterns:
            value = input_feed.get(name)
            if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != rank:
                return None
            shape = value.shape
            if len(axes) == rank:
                if shape != dims:
                    return None
            elif tuple([shape[axis] for axis in axes]) != dims:
                return None
            feeds[name] = value
        return feeds

    def _checked_feeds(self, input_feed) -> Dict[str, np.ndarray]:
        if not isinstance(input_feed, dict):
            raise TypeError(f"input_feed must be a dict of name -> array, got {type(input_feed).__name__}")
        expected = {v.name: v for v in self._declared_inputs}
        for name in input_feed:
            if name not in expected:
                raise ValueError(f"input_feed: {name!r} is not an input of the model; inputs are "
                                 f"{[_describe_info(v) for v in self._declared_inputs]}")
        feeds = {}
        for info in self._declared_inputs:
            if info.name not in input_feed:
                raise ValueError(f"input_feed: missing input {info.name!r} (expected {_describe_info(info)})")
            value = input_feed[info.name]
            if info.dtype is None and info.shape is None:
                feeds[info.name] = value  # a sequence, map or optional: passed through as given
                continue
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if info.dtype is not None and value.dtype != info.dtype:
                raise ValueError(f"input {info.name!r}: expected dtype {info.dtype} ({_type_string(info.dtype)}), "
                                 f"got {value.dtype}")
            if info.shape is not None:
                if value.ndim != len(info.shape):
                    raise ValueError(f"input {info.name!r}: expected rank {len(info.shape)} "
                                     f"(shape {_shape_str(info.shape)}), got rank {value.ndim} with shape "
                                     f"{tuple(value.shape)}")
                for axis, (want, got) in enumerate(zip(info.shape, value.shape)):
                    if isinstance(want, int) and want != got:
                        raise ValueError(f"input {info.name!r}: expected shape {_shape_str(info.shape)}, got "
                                         f"{tuple(value.shape)} (dimension {axis} must be {want}, is {got})")
            feeds[info.name] = value
        return feeds


ENGINES = ("auto", "onnxruntime", "gncpu")


def _resolve_engine(engine) -> str:
    """The engine `engine` names: "auto" is onnxruntime when it imports, else gncpu."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not an engine; expected one of {list(ENGINES)}")
    from .engine_ort import import_onnxruntime, onnxruntime_available
    if engine == "auto":
        return "onnxruntime" if onnxruntime_available() else "gncpu"
    if engine == "onnxruntime":
        import_onnxruntime()  # raises ImportError with the install command
    return engine


def _partition_lines(info: dict) -> List[str]:
    sizes = info["region_nodes"]
    lines = [f"  split: {info['regions']} onnxruntime region(s) of {sum(sizes)} nodes "
             f"({', '.join(map(str, sizes)) or 'none'}), {info['claimed_group_norms']} GroupNorm on gncpu"
             + (f", {info['claimed_control_flow']} If/Loop holding GroupNorm on gncpu"
                if info["claimed_control_flow"] else "")
             + f"; onnxruntime intra_op_num_threads={info['intra_op_num_threads']} "
               f"(per region: {', '.join('per shape' if t is None else str(t) for t in info['region_threads'])})"]
    if "bound_signatures" in info:
        lines.append(f"  bound runs (buffers and IO bindings fixed, see docs/onnx.md): "
                     f"{info['bound_signatures']} feed signature(s) bound, {info['unbound_signatures']} run unbound "
                     f"(a region's output shape follows its input values)")
    return lines


def _label_width(profile) -> int:
    return max([24] + [len(op) for op in profile])


def _op_key(node):
    return (normalize_domain(node.domain), node.op_type)


def _node_arg(info: ValueInfo) -> NodeArg:
    shape = [] if info.shape is None else [d if d != "" else None for d in info.shape]
    return NodeArg(info.name, shape, _type_string(info.dtype))


def _shape_str(shape) -> str:
    if shape is None:
        return "(unknown rank)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _describe_info(info: ValueInfo) -> str:
    return f"{info.name!r} {_type_string(info.dtype)} {_shape_str(info.shape)}"


_controller = None


def _threadpool_controller():
    """One threadpoolctl controller per process (building one scans the loaded libraries)."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _controller = ThreadpoolController()
    return _controller


def _default_threads():
    from .._config import get_num_threads
    return get_num_threads()


@functools.lru_cache(maxsize=None)
def _blas_libraries(controller):
    """Per BLAS library: (get_num_threads(), set_num_threads(n)) callables."""
    return tuple(_thread_count_functions(lib) for lib in controller.select(user_api="blas").lib_controllers)


def _thread_count_functions(lib):
    """OpenBLAS with its own threads (not OpenMP): its C entry points, called
    directly (~0.2 us each); threadpoolctl's wrappers look the symbol up and
    check the controlling thread on every call (~6.6 us per run for the pair
    of changes). Any other library: through threadpoolctl."""
    get_symbol = getattr(lib, "_get_symbol", None)
    if (get_symbol is not None and getattr(lib, "internal_api", None) == "openblas"
            and getattr(lib, "threading_layer", None) != "openmp"):
        try:
            get, set_ = get_symbol("openblas_get_num_threads"), get_symbol("openblas_set_num_threads")
        except Exception:  # a threadpoolctl without the private helper's signature
            get = set_ = None
        if get is not None and set_ is not None:
            return get, set_
    return lib.get_num_threads, functools.partial(_set_blas_threads, lib)


class _SingleThreadedBlas:
    """Hold BLAS to one thread while any session run is under way in this process.

    threadpoolctl's limit is process-wide: with one limit per run, the first of
    two concurrent runs to finish would restore multi-threaded BLAS under the
    other, whose products would then be partitioned by OpenBLAS (differently
    from run to run) and change in the last bits. A count of active runs makes
    the first run in set the limit and the last run out lift it."""
    _lock = threading.Lock()
    _active = 0
    _saved = None

    def __init__(self, controller):
        # The BLAS libraries' thread-count functions (see _thread_count_functions):
        # threadpoolctl's limit() re-inspects every library per call (~9 us a run).
        self._blas = _blas_libraries(controller)

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._active == 0:
                cls._saved = [(set_threads, get_threads()) for get_threads, set_threads in self._blas]
                for set_threads, _ in cls._saved:
                    set_threads(1)
            cls._active += 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        with cls._lock:
            cls._active -= 1
            if cls._active == 0:
                cls._restore()
        return False

    @classmethod
    def _restore(cls):
        for set_threads, threads in cls._saved or ():
            set_threads(threads)
        cls._saved = None

    @classmethod
    def _reset_in_forked_child(cls):
        """A fork taken while another thread was inside a run copies its count
        (and maybe the held lock) into a child where that run does not exist:
        start from no runs, with BLAS's limit lifted as the last run out would."""
        cls._lock = threading.Lock()
        if cls._active:
            cls._restore()
        cls._active = 0


def _set_blas_threads(lib, threads):
    """lib.set_num_threads(threads), from whichever Python thread calls it.

    threadpoolctl (3.8+) lets only the Python thread that first set OpenBLAS's
    (process-wide) thread count set it again while that thread lives: a limit
    set from any other thread is silently ignored, and BLAS then splits
    products over its threads (changing their last bits). Runs start and finish
    in whichever thread calls run(), and _SingleThreadedBlas already arbitrates
    between them: release that control around each change, so the change takes
    effect from any thread and leaves no thread holding it."""
    release = getattr(lib, "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    lib.set_num_threads(threads)
    if release is not None:
        release(force=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SingleThreadedBlas._reset_in_forked_child)


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

