"""The onnxruntime engine: GroupNorm on gncpu's kernels, everything else in onnxruntime.

    engine = OrtEngine(graph, num_threads=2)      # graph: validated, folded, fused
    env = engine.execute(feeds, on_step=None)     # name -> value of every part's outputs

At load the graph is partitioned (gncpu.onnx.partition), each region becomes a
sub-model with the weights it reads and gets its own onnxruntime session, and
each claimed node is bound to its gncpu kernel (gncpu.onnx.plan.bind_kernel).
A run walks the parts in order over one dict of the tensors that cross them.

Per-run cost, measured on onnxruntime 1.32 (AMD EPYC Zen 4, 2 threads): the
first run with a feed signature goes part by part over a dict, calling each
binding's `run(names, feeds)` (~3.7-6 us for a one-node graph; its outputs come
back as NumPy arrays over onnxruntime's buffers, its inputs are read in place),
and records the shapes that cross parts. Later runs with that signature are
bound (gncpu.onnx.bound_run): buffers and IO bindings fixed once, ~3-5 us per
region. IO binding only wins when bound once: binding an output costs ~4.5 us.
The public `InferenceSession.run` adds ~1.5 us of name checks that
`_check_feeds` has already made, so the binding's own `run` is called.

Threads: a region session gets intra_op_num_threads = the session's thread
count (inter_op 1, sequential), unless the region is too small to pay for a
thread pool (gncpu.onnx.region_cost): then one thread, so no pool at all.
Each pooled region's workers spin while it runs and stop when it returns
("session.force_spinning_stop"): an onnxruntime worker left spinning burns
~50 ms of a core after a run (measured on a 2-vCPU AMD EPYC VM), and with a
pool per region they took the cores from each other and from the GroupNorms
(torch_legacy_dynamic_vae_decoder_block_opset17: 12-34 ms a run with
spinning pools, 3.1-3.3 ms with stopped ones; plain onnxruntime 2.5-2.7).
Waking a stopped worker costs tens of microseconds, small against a region
big enough to get a pool. GroupNorm kernels below THREADED_GROUP_NORM_ELEMENTS
run on one thread. libgomp's own idle spin is cut to ~0.3 ms at import (see
gncpu.kernel).
`bench/bench_onnx.py --spin-policies` times the alternatives.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from . import context
from .errors import InvalidModelError, NodeExecutionError
from .graph import Graph, node_to_proto, tensor_dtype
from .partition import Claimed, Part, Region, describe_partition, is_group_norm, partition_graph
from .plan import Kernel, _describe_value, bind_kernel, node_reads, specialize
from .bound_run import BindingMismatch, build_bound_plan
from .region_cost import HUGE_REGION_WORK, SMALL_REGION_WORK, region_work

# How onnxruntime's workers wait for work: policy -> (allow_spinning, force_spinning_stop).
SPIN_POLICIES = {"during_run": ("1", "1"), "off": ("0", "1"), "always": ("1", "0")}
SPIN_POLICY = "during_run"  # see the module docstring; bench/bench_onnx.py --spin-policies measures all three
# A GroupNorm over fewer elements runs on one thread: its second OpenMP thread would
# wait for a core that a region's onnxruntime worker is still spinning on (measured on
# torch_legacy_dynamic_vae_decoder_block_opset17: 10x plain onnxruntime's time with
# 2-thread GroupNorms of 37k elements, 0.7x with 1-thread ones). Above it the kernel
# takes ~0.3 ms or more, and two threads win.
THREADED_GROUP_NORM_ELEMENTS = 1 << 19
INSTALL_HINT = 'pip install "gncpu[ort]" (or: pip install onnxruntime)'


class OnnxruntimeCannotLoad(InvalidModelError):
    """onnxruntime refused a region (an op or type it has no kernel for): the
    model is valid, and engine="gncpu" can run it."""


def import_onnxruntime():
    """onnxruntime, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f'engine="onnxruntime" needs the onnxruntime package, which is not installed; '
                          f'install it with: {INSTALL_HINT}, or use engine="gncpu"') from exc
    return onnxruntime


def onnxruntime_available() -> bool:
    try:
        import_onnxruntime()
    except ImportError:
        return False
    return True


class Step:
    """One part at run time: `run(env)` reads its inputs from env and writes its outputs."""

    def __init__(self, part: Part, kernel: Kernel, run: Callable, free_after: List[str]):
        self.part = part
        self.kernel = kernel          # kind "onnxruntime" or "native"/"control"; label for profiles
        self.run = run
        self.threads = None           # a region's intra-op threads (None: chosen per input shape)
        self.session_for = None       # a region's onnxruntime session for a tuple of input shapes
        self.free_after = free_after  # crossing tensors no later part reads


# Bound plans a session keeps, least recently used dropped first: at most this many
# feed signatures (shapes and dtypes), and at most this many bytes of their buffers
# (a service that sees ever new shapes of a large model would otherwise keep a set
# of activations per shape). The newest plan is kept whatever its size.
BOUND_PLANS_KEPT = 64
BOUND_BYTES_KEPT = 1 << 30
_UNSEEN = object()


class OrtEngine:
    def __init__(self, graph: Graph, num_threads: int, spin_policy: Optional[str] = None,
                 context_threads: Optional[int] = None, bind: bool = True):
        self._ort = import_onnxruntime()
        self.ort_capi = self._ort.capi._pybind_state
        self.graph = graph
        self.num_threads = num_threads
        self.context_threads = context_threads    # what ops read from gncpu.onnx.context (None: default)
        self.threaded_group_norm_elements = THREADED_GROUP_NORM_ELEMENTS
        self.bind = bind                          # bound runs (gncpu.onnx.bound_run) after the first
        self._bound: Dict[tuple, object] = {}     # feed signature -> BoundPlan, or None: not bindable
        self._bound_lock = threading.Lock()
        self.spin_policy = SPIN_POLICY if spin_policy is None else spin_policy
        self.parts = partition_graph(graph)
        self._types = _known_types(graph)
        self._shape_models: Dict[int, onnx.ModelProto] = {}  # per region, for region_work
        self.output_names = [v.name for v in graph.outputs]
        # What the run dict starts with: the weights claimed nodes read (GroupNorm
        # scale/bias, If/Loop bodies' outer reads) and graph outputs that are constants.
        wanted = {name for p in self.parts if isinstance(p, Claimed) for name in node_reads(p.node)}
        wanted |= set(self.output_names)
        self.held = {name: graph.initializers[name] for name in wanted if name in graph.initializers}
        steps = [self._region_step(p) if isinstance(p, Region) else self._claimed_step(p) for p in self.parts]
        _assign_frees(steps, set(self.output_names))
        self.steps = steps
        # Outputs that are always new buffers: onnxruntime never hands back a feed's or a
        # weight's memory (its outputs are its own), nor does a GroupNorm kernel.
        self.fresh_outputs = frozenset(
            name for p in self.parts if isinstance(p, Region) or is_group_norm(p.node)
            for name in (p.outputs if isinstance(p, Region) else p.node.outputs) if name)

    # ------------------------------------------------------------------ load
    def _session_options(self, threads: int, spin_policy: str):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 4  # load and run errors come back as exceptions, re-raised naming the region
        allow, force_stop = SPIN_POLICIES[spin_policy]
        options.add_session_config_entry("session.intra_op.allow_spinning", allow)
        options.add_session_config_entry("session.inter_op.allow_spinning", allow)
        options.add_session_config_entry("session.force_spinning_stop", force_stop)
        return options

    def _region_session(self, region: Region, setting):
        """A new onnxruntime session for `region` with `setting` = (threads, spin policy)."""
        model = self._region_model(region)
        try:  # (serializing fails on a region over protobuf's 2 GiB)
            session = self._ort.InferenceSession(model.SerializeToString(), self._session_options(*setting),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            ops = sorted({(f"{n.domain}::" if n.domain else "") + n.op_type for n in region.nodes})
            raise OnnxruntimeCannotLoad(
                f"onnxruntime cannot load {region.describe()}, ops {ops}: {type(exc).__name__}: {exc}; "
                f'engine="gncpu" runs the model without onnxruntime') from exc
        for out in session.get_outputs():
            self._types.setdefault(out.name, (_dtype_of_type_string(out.type), _static_dims(out.shape)))
        return session

    def _setting_for(self, region: Region, shapes) -> tuple:
        """(threads, spin policy) of the session for `region` on inputs of `shapes`:
        one thread for a region too small to pay for a pool; the session's
        policy for a medium one; workers that stop spinning when the region
        returns for a huge one, whose wake-up cost is lost in its run time
        (gncpu.onnx.region_cost)."""
        if self.num_threads == 1:
            return (1, self.spin_policy)
        if region.index not in self._shape_models:
            self._shape_models[region.index] = self._region_model(region, weights=False)
        work = region_work(self._shape_models[region.index], dict(zip(region.inputs, shapes)))
        if work < SMALL_REGION_WORK:
            return (1, self.spin_policy)
        return (self.num_threads, "during_run" if work >= HUGE_REGION_WORK else self.spin_policy)

    def _region_step(self, region: Region) -> Step:
        inputs, outputs = list(region.inputs), list(region.outputs)
        label = region.describe()
        static = [self._types.get(name, (None, None))[1] for name in inputs]
        by_setting: Dict[tuple, object] = {}
        lock = threading.Lock()

        def session_with(setting):
            with lock:
                if setting not in by_setting:
                    by_setting[setting] = self._region_session(region, setting)
                return by_setting[setting]

        if all(shape is not None and None not in shape for shape in static):
            # Shapes fixed at load: one session, its thread count chosen now.
            fixed_session = session_with(self._setting_for(region, static))
            fixed = _run_method(fixed_session)
            threads = next(iter(by_setting))[0]

            def session_for(shapes):
                return fixed_session
        else:
            # Shapes known only per run: a session on all threads now (it also tells the types
            # later regions read), the thread count chosen per input-shape signature.
            fixed = None
            session_with((self.num_threads, self.spin_policy))
            chosen: Dict[tuple, Callable] = {}
            threads = None  # chosen per run

            def session_for(shapes):
                if len(chosen) > 256:  # a service seeing ever new shapes: forget, re-estimate
                    chosen.clear()
                session = session_with(self._setting_for(region, shapes))
                chosen[shapes] = _run_method(session)
                return session

        def run(env):
            feeds = {name: env[name] for name in inputs}
            binding = fixed
            if binding is None:
                shapes = tuple(np.shape(v) for v in feeds.values())
                binding = chosen.get(shapes)
                if binding is None:
                    session_for(shapes)
                    binding = chosen[shapes]
            try:
                results = binding(outputs, feeds, None)
            except Exception as exc:
                shapes = ", ".join(f"{name}: {_describe_value(v)}" for name, v in feeds.items())
                raise NodeExecutionError(f"{label} failed in onnxruntime on inputs ({shapes}): "
                                         f"{type(exc).__name__}: {exc}") from exc
            for name, value in zip(outputs, results):
                env[name] = value

        step = Step(region, Kernel("onnxruntime", None, label), run, [])
        step.threads = threads
        step.session_for = session_for
        return step

    def _region_model(self, region: Region, weights: bool = True) -> onnx.ModelProto:
        """The region as a model: its inputs typed, its weights as initializers (weights=False:
        weights over 1024 elements become typed inputs instead, for shape inference)."""
        try:
            return self._build_region_model(region, weights)
        except InvalidModelError:
            raise
        except Exception as exc:  # a corrupt attribute (a name that is not UTF-8, a bad tensor)
            raise InvalidModelError(f"cannot rebuild {region.describe()} for onnxruntime (corrupt node "
                                    f"attribute?): {type(exc).__name__}: {exc}") from exc

    def _build_region_model(self, region: Region, weights: bool) -> onnx.ModelProto:
        inputs = []
        for name in region.inputs:
            dtype, shape = self._types.get(name, (None, None))
            if dtype is None:
                raise InvalidModelError(
                    f"{region.describe()} reads tensor {name!r}, whose type the model does not declare and "
                    f"gncpu cannot infer; onnxruntime needs it. engine=\"gncpu\" runs the model as it is")
            inputs.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype),
                                                             shape))
        outputs = [onnx.ValueInfoProto(name=name) for name in region.outputs]  # onnxruntime infers them
        initializers = []
        for name in region.initializers:
            value = np.asarray(self.graph.initializers[name])
            if weights or value.size <= 1024:
                initializers.append(numpy_helper.from_array(value, name))
            else:
                inputs.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        body = onnx.helper.make_graph([node_to_proto(n) for n in region.nodes], f"region_{region.index}",
                                      inputs, outputs, initializer=initializers)
        opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in self.graph.opsets.items()
                  if domain != "gncpu"]
        return onnx.helper.make_model(body, opset_imports=opsets)

    def _claimed_step(self, part: Claimed) -> Step:
        node = part.node
        kernel = specialize(node, bind_kernel(node, self.graph.opsets, set(self._types) | _produced(self.graph)),
                            self.graph.initializers)
        self._record_claimed_types(node)
        inputs, outputs = list(node.inputs), list(node.outputs)
        threaded_from = self.threaded_group_norm_elements if is_group_norm(node) and self.num_threads > 1 else 0

        def run(env):
            args = [env[name] if name else None for name in inputs]
            try:
                if threaded_from and np.size(args[0]) < threaded_from:
                    with context.using_threads(1):  # see THREADED_GROUP_NORM_ELEMENTS
                        results = kernel.run(args, env)
                else:
                    results = kernel.run(args, env)
            except NodeExecutionError:
                raise
            except Exception as exc:
                shapes = ", ".join(f"{name}: {_describe_value(v)}" for name, v in zip(inputs, args) if name)
                raise NodeExecutionError(
                    f"{node.describe()} failed on inputs ({shapes}): {type(exc).__name__}: {exc}") from exc
            for name, value in zip(outputs, results):
                if name:
                    env[name] = value

        return Step(part, kernel, run, [])

    def _record_claimed_types(self, node) -> None:
        """Output types of a node gncpu runs, for the regions that read them."""
        if node.op_type in ("If", "Loop") and node.domain == "":
            body = node.attrs.get("then_branch") or node.attrs.get("body")
            declared = body.outputs[1:] if node.op_type == "Loop" else body.outputs
            for name, info in zip(node.outputs, declared):
                if name and name not in self._types:
                    self._types[name] = (info.dtype, None)
            return
        # GroupNorm: every output (y, and SkipGroupNorm's sum) has x's type and shape.
        x_type = self._types.get(node.inputs[0], (None, None))
        for name in node.outputs:
            if name:
                self._types[name] = x_type

    # ------------------------------------------------------------------ run
    def execute(self, feeds: Dict[str, object], on_step: Optional[Callable] = None) -> Dict[str, object]:
        """Every output of the run, by name (plus the feeds and weights it read).

        The first run with a feed signature runs part by part over a dict and
        records the shapes of what crosses parts; later ones run bound
        (gncpu.onnx.bound_run). A bound run that meets a shape its buffers do
        not fit (a region whose output shape follows its input values) is run
        again unbound; if that succeeds the signature is run unbound from then
        on, if it fails its error is the model's."""
        signature = _feed_signature(feeds) if self.bind else None
        plan = _UNSEEN if signature is None else self._bound.get(signature, _UNSEEN)
        if plan is not _UNSEEN and plan is not None:
            if len(self._bound) > 1:
                with self._bound_lock:  # most recently used last
                    self._bound[signature] = self._bound.pop(signature, plan)
            try:
                return plan.execute(feeds, on_step)
            except BindingMismatch:
                env = self._execute_parts(feeds, on_step, None)
                with self._bound_lock:
                    self._bound[signature] = None
                return env
        record = {} if signature is not None and plan is _UNSEEN else None
        env = self._execute_parts(feeds, on_step, record)
        if record is not None:
            self._keep_bound_plan(signature, build_bound_plan(self, record, list(feeds)))
        return env

    def _keep_bound_plan(self, signature, plan) -> None:
        """Add `plan`, first dropping the least recently used plans beyond
        BOUND_PLANS_KEPT signatures or BOUND_BYTES_KEPT bytes of buffers."""
        new_bytes = plan.buffer_bytes if plan is not None else 0
        with self._bound_lock:
            kept = self._bound
            while kept and (len(kept) >= BOUND_PLANS_KEPT or new_bytes + sum(
                    p.buffer_bytes for p in kept.values() if p is not None) > BOUND_BYTES_KEPT):
                kept.pop(next(iter(kept)))
            kept[signature] = plan

    def _execute_parts(self, feeds, on_step, record: Optional[dict]) -> Dict[str, object]:
        """The unbound run; `record`, if given, gets (shape, dtype) of every tensor
        that crosses parts (None for a value that is not an array)."""
        env = dict(self.held)
        env.update(feeds)
        if record is not None:
            for name, value in feeds.items():
                record[name] = _shape_and_dtype(value)
        with context.using_threads(self.context_threads, 1):
            for step in self.steps:
                if on_step is None:
                    step.run(env)
                else:
                    start = time.perf_counter()
                    step.run(env)
                    on_step(step, time.perf_counter() - start)
                if record is not None:
                    part = step.part
                    for name in (part.outputs if isinstance(part, Region) else part.node.outputs):
                        if name:
                            record[name] = _shape_and_dtype(env.get(name))
                for name in step.free_after:
                    env.pop(name, None)
        return env

    def describe(self) -> dict:
        """The split, for stats(): counts plus one entry per part in run order."""
        info = describe_partition(self.parts)
        info["parts"] = [
            {"kind": "onnxruntime", "label": p.describe(), "nodes": len(p.nodes),
             "inputs": list(p.inputs), "outputs": list(p.outputs)} if isinstance(p, Region) else
            {"kind": "gncpu", "label": p.node.describe(), "nodes": 1,
             "inputs": [n for n in p.node.inputs if n], "outputs": [n for n in p.node.outputs if n]}
            for p in self.parts]
        info["region_threads"] = [s.threads for s in self.steps if isinstance(s.part, Region)]
        info["intra_op_num_threads"] = self.num_threads
        info["spin_policy"] = self.spin_policy
        with self._bound_lock:
            plans = list(self._bound.values())
        info["bound_signatures"] = sum(plan is not None for plan in plans)
        info["unbound_signatures"] = sum(plan is None for plan in plans)
        return info


def _feed_signature(feeds) -> Optional[tuple]:
    """(shape, dtype) of every feed in order, or None if one is not an array."""
    try:
        return tuple([(value.shape, value.dtype) for value in feeds.values()])
    except AttributeError:
        return None


def _shape_and_dtype(value):
    return (value.shape, value.dtype) if isinstance(value, np.ndarray) else (None, np.dtype(object))


def _run_method(session):
    """The binding's own run(names, feeds, options) (see the module docstring)."""
    return getattr(session, "_sess", session).run


def _assign_frees(steps: List[Step], keep: set) -> None:
    """Drop each crossing tensor after the last part that reads it."""
    last_reader: Dict[str, int] = {}
    for index, step in enumerate(steps):
        reads = step.part.inputs if isinstance(step.part, Region) else node_reads(step.part.node)
        for name in reads:
            last_reader[name] = index
    for name, index in last_reader.items():
        if name not in keep:
            steps[index].free_after.append(name)


def _known_types(graph: Graph) -> Dict[str, tuple]:
    """(dtype, static shape) of the names the file declares: inputs, value_info, weights."""
    types = {name: (info.dtype, _static_dims(info.shape)) for name, info in graph.value_info.items()}
    types.update({v.name: (v.dtype, _static_dims(v.shape)) for v in graph.inputs})
    for name, value in graph.initializers.items():
        if isinstance(value, np.ndarray):
            types[name] = (value.dtype, list(value.shape))
    return types


def _static_dims(shape):
    """A shape for a region input: fixed dims kept, symbolic ones unnamed (onnxruntime
    would take two inputs sharing a dim name as equal in that dim)."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


def _produced(graph: Graph) -> set:
    return {name for node in graph.nodes for name in node.outputs if name}


_TYPE_STRINGS = {f"tensor({name.lower()})": value for name, value in onnx.TensorProto.DataType.items()}


def _dtype_of_type_string(type_string: str):
    elem = _TYPE_STRINGS.get(type_string)
    return None if elem is None else tensor_dtype(elem)

