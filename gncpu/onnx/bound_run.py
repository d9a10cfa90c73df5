"""Runs of the onnxruntime engine with every buffer and IO binding fixed per feed shape.

    plan = build_bound_plan(engine, shapes)   # shapes: name -> (shape, dtype), recorded on a run
    env = plan.execute(feeds, on_step)        # as OrtEngine.execute, or raises BindingMismatch

Why: a region's `run(names, feeds)` costs ~6 us more than its kernels (wrapping
each feed, allocating and wrapping each output), and a GroupNorm step ~2.5 us
more than its kernel (a thread-count context, argument lists). On the
committed exporter models, whose regions run in 2-40 us, that was most of
the gap to plain onnxruntime. Once the shapes of a run are known, every
tensor that crosses parts can live in a buffer that is allocated once, every
region gets an IO binding whose inputs and outputs point at those buffers
(bound once: `run_with_iobinding` then costs ~3 us for a one-node region),
and every GroupNorm writes straight into its buffer with its thread count
fixed.

Per run only these change: the feeds (bound again, ~1.2 us each, no copy),
and the graph outputs, which are new arrays the caller keeps: a GroupNorm
writes them directly, a region's large outputs get a new buffer bound per run
(binding an output costs ~4.5 us, less than copying 1 MiB), and its small
ones are copied out of the region's buffer (~0.5 us).

A set of buffers and bindings (a Context) serves one run at a time: runs from
several Python threads each take one from a free list, making a new one when
none is free. Tensors whose lifetimes do not overlap share a buffer.

Shapes are recorded on the first run with a feed signature (OrtEngine.execute).
Where a region's output shape depends on its input values rather than shapes,
a later run can disagree with the bound buffer: onnxruntime then refuses the
run, and the engine runs those feeds the unbound way (see OrtEngine.execute).
Results are bit-identical to the unbound path: the same sessions and kernels
run on the same data with the same thread counts.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..kernel import kernels
from . import context
from .partition import Claimed, Region, is_group_norm

# A region's graph output from this size on gets a new buffer bound per run;
# below it, it is copied out of the region's bound buffer (see the docstring).
BIND_OUTPUT_PER_RUN_BYTES = 1 << 20

# Buffers start on a 64-byte boundary, as onnxruntime's own do (NumPy's large arrays start
# 16 bytes past a page, so a 64-byte vector load of them straddles two cache lines).
ALIGNMENT = 64
_BUFFER, _PER_RUN = 0, 1   # where a step's input lives: the context's buffers or this run's values


class BindingMismatch(Exception):
    """A bound run met a shape its buffers were not made for."""


class _RegionStep:
    __slots__ = ("step", "session", "once_inputs", "per_run_inputs", "once_outputs", "per_run_outputs",
                 "copied_outputs")

    def __init__(self, step, session):
        self.step, self.session = step, session
        self.once_inputs: List[str] = []      # bound to context buffers when the context is made
        self.per_run_inputs: List[str] = []   # feeds and per-run outputs: bound on every run
        self.once_outputs: List[str] = []
        self.per_run_outputs: List[Tuple[str, tuple, np.dtype]] = []
        self.copied_outputs: List[str] = []   # graph outputs copied out of their buffer


class _GroupNormStep:
    __slots__ = ("step", "sources", "outputs", "into", "threads")

    def __init__(self, step):
        self.step = step
        self.sources: List[Tuple[int, str]] = []          # (where, name); name "" for absent
        self.outputs: List[Tuple[int, str, tuple, np.dtype]] = []
        self.into = None      # prepared fused GroupNorm: into(x, y, threads)
        self.threads = 1


class Context:
    """One run's buffers and IO bindings."""
    __slots__ = ("buffers", "bindings")

    def __init__(self, buffers, bindings):
        self.buffers = buffers
        self.bindings = bindings


class BoundPlan:
    def __init__(self, engine, shapes: Dict[str, tuple], feed_names: List[str]):
        self._engine = engine
        self._shapes = shapes
        self._free: List[Context] = []
        self._contexts_made = 0
        self._device = _cpu_device(engine.ort_capi)
        outputs = set(engine.output_names)
        feeds = set(feed_names)
        produced_per_run = set()  # graph outputs made fresh on every run
        copied_out = set()        # graph outputs copied out of a region's buffer
        self._steps = []
        for step in engine.steps:
            part = step.part
            if isinstance(part, Region):
                in_shapes = tuple(shapes[name][0] for name in part.inputs)
                bound = _RegionStep(step, step.session_for(in_shapes))
                for name in part.inputs:
                    (bound.per_run_inputs if name in feeds or name in produced_per_run
                     else bound.once_inputs).append(name)
                for name in part.outputs:
                    shape, dtype = shapes[name]
                    if name in outputs and int(np.prod(shape)) * dtype.itemsize >= BIND_OUTPUT_PER_RUN_BYTES:
                        bound.per_run_outputs.append((name, shape, dtype))
                        produced_per_run.add(name)
                    else:
                        bound.once_outputs.append(name)
                        if name in outputs:
                            bound.copied_outputs.append(name)
                            copied_out.add(name)
                self._steps.append(bound)
            else:
                node = part.node
                bound = _GroupNormStep(step)
                for name in node.inputs:
                    bound.sources.append((_PER_RUN if name in feeds or name in produced_per_run else _BUFFER, name))
                for name in node.outputs:
                    if not name:
                        continue
                    shape, dtype = shapes[name]
                    where = _PER_RUN if name in outputs else _BUFFER
                    if where == _PER_RUN:
                        produced_per_run.add(name)
                    bound.outputs.append((where, name, shape, dtype))
                into = getattr(step.kernel.call, "into", None)
                if into is not None and len(bound.outputs) == 1:
                    bound.into = into
                    size = int(np.prod(shapes[node.inputs[0]][0]))
                    bound.threads = (1 if engine.num_threads > 1 and size < engine.threaded_group_norm_elements
                                     else engine.num_threads)
                self._steps.append(bound)
        self._held_outputs = [name for name in engine.output_names
                              if name not in produced_per_run and name not in copied_out and name not in feeds]
        self._buffer_slots = self._share_buffers(outputs)
        self._scratch_specs: Dict[str, tuple] = {}  # per-context work buffers of float16 GroupNorms
        self._runners = self._make_runners()

    # ------------------------------------------------------------------ buffers
    def _share_buffers(self, outputs) -> Dict[str, int]:
        """Buffer index per context-held tensor: a tensor takes over the buffer of
        one of its shape and dtype that no later step reads (graph outputs
        copied out at the end keep theirs to the end)."""
        written: List[List[str]] = []
        last_read: Dict[str, int] = {}
        for index, bound in enumerate(self._steps):
            if isinstance(bound, _RegionStep):
                reads, writes = bound.once_inputs, bound.once_outputs
            else:
                reads = [name for where, name in bound.sources if name and where == _BUFFER]
                writes = [name for where, name, _, _ in bound.outputs if where == _BUFFER]
            for name in reads:
                last_read[name] = index
            written.append(writes)
        end = len(self._steps)
        slots: Dict[str, int] = {}
        self._slot_specs: List[Tuple[tuple, np.dtype]] = []
        free: Dict[tuple, List[int]] = {}
        releases: Dict[int, List[str]] = {}
        for index, writes in enumerate(written):
            for name in writes:
                shape, dtype = self._shapes[name]
                key = (tuple(shape), dtype.str)
                pool = free.get(key)
                if pool:
                    slots[name] = pool.pop()
                else:
                    slots[name] = len(self._slot_specs)
                    self._slot_specs.append((tuple(shape), dtype))
                done = end if name in outputs else last_read.get(name, index)
                releases.setdefault(done, []).append(name)
            for name in releases.pop(index, ()):
                shape, dtype = self._shapes[name]
                free.setdefault((tuple(shape), dtype.str), []).append(slots[name])
        return slots

    @property
    def buffer_bytes(self) -> int:
        """Bytes of buffers the contexts made so far hold (one context's worth before
        the first run)."""
        specs = self._slot_specs + list(self._scratch_specs.values())
        one = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize + ALIGNMENT for shape, dtype in specs)
        return one * max(1, self._contexts_made)

    def _new_context(self) -> Context:
        self._contexts_made += 1
        arrays = [aligned_empty(shape, dtype) for shape, dtype in self._slot_specs]
        buffers = {name: arrays[slot] for name, slot in self._buffer_slots.items()}
        for key, (shape, dtype) in self._scratch_specs.items():
            buffers[key] = aligned_empty(shape, dtype)
        buffers.update(self._engine.held)
        bindings = []
        device = self._device
        for bound in self._steps:
            if not isinstance(bound, _RegionStep):
                bindings.append(None)
                continue
            binding = bound.session.io_binding()._iobinding
            for name in bound.once_inputs:
                binding.bind_input(name, buffers[name])
            for name in bound.once_outputs:
                array = buffers[name]
                binding.bind_output(name, device, array.dtype, list(array.shape), array.ctypes.data)
            bindings.append(binding)
        return Context(buffers, bindings)

    # ------------------------------------------------------------------ run
    def execute(self, feeds: Dict[str, object], on_step=None) -> Dict[str, object]:
        try:
            ctx = self._free.pop()
        except IndexError:
            ctx = self._new_context()
        try:
            values = self._run(ctx, dict(feeds), on_step)
        finally:
            self._free.append(ctx)
        return values

    def _run(self, ctx: Context, values: Dict[str, object], on_step) -> Dict[str, object]:
        if on_step is None:
            for runner in self._runners:
                runner(ctx, values)
        else:
            for runner, bound in zip(self._runners, self._steps):
                start = time.perf_counter()
                runner(ctx, values)
                on_step(bound.step, time.perf_counter() - start)
        for name in self._held_outputs:
            values[name] = self._engine.held[name]
        return values

    def _make_runners(self) -> list:
        """One function per step, runner(ctx, values), with everything that does not
        change between runs looked up now."""
        return [self._region_runner(index, bound) if isinstance(bound, _RegionStep) else
                self._group_norm_runner(bound) for index, bound in enumerate(self._steps)]

    def _region_runner(self, index: int, bound: _RegionStep):
        run_bound = bound.session._sess.run_with_iobinding
        per_run_inputs, per_run_outputs, copied = bound.per_run_inputs, bound.per_run_outputs, bound.copied_outputs
        device, label = self._device, bound.step.part.describe()

        def run(ctx, values):
            binding = ctx.bindings[index]
            for name in per_run_inputs:
                binding.bind_input(name, values[name])
            for name, shape, dtype in per_run_outputs:
                array = values[name] = np.empty(shape, dtype)
                binding.bind_output(name, device, dtype, list(shape), array.ctypes.data)
            try:
                run_bound(binding, None)
            except Exception as exc:
                raise BindingMismatch(f"{label}: {exc}") from exc
            for name in copied:
                values[name] = ctx.buffers[name].copy()

        return run

    def _group_norm_runner(self, bound: _GroupNormStep):
        if bound.into is None:
            return lambda ctx, values: self._run_general(bound, ctx.buffers, values)
        x_where, x_name = bound.sources[0]
        y_where, y_name, y_shape, y_dtype = bound.outputs[0]
        half = y_dtype == np.float16
        kernel_arguments = getattr(bound.step.kernel.call, "kernel_arguments", None)
        arguments = None
        if (kernel_arguments is not None and x_where == _BUFFER and bound.threads == 1
                and (kernels.HAVE_FLOAT16 or not half)):
            # The input is a buffer of this plan: its dtype, shape and layout are the
            # recorded ones, which the prepared call accepts; only the kernel is left
            # (float16: computed in float32 as the prepared call does, in a work buffer).
            arguments = kernel_arguments(np.float32 if half else y_dtype)
        if arguments is not None:
            group_norm = kernels.group_norm
            weight, bias, groups, epsilon, code, channels_last = arguments
            if half:
                widen, narrow = kernels.half_to_float, kernels.float_to_half
                work_key = f"\0work:{y_name}"
                self._scratch_specs[work_key] = (tuple(y_shape), np.dtype(np.float32))

                def run_half(ctx, values):
                    buffers = ctx.buffers
                    work = widen(buffers[x_name], buffers[work_key], 1)
                    group_norm(work, work, weight, bias, groups, epsilon, code, 1, channels_last)
                    if y_where == _BUFFER:
                        narrow(work, buffers[y_name], 1)
                    else:
                        values[y_name] = narrow(work, np.empty(y_shape, y_dtype), 1)

                return run_half
            if y_where == _BUFFER:
                return lambda ctx, values: group_norm(ctx.buffers[x_name], ctx.buffers[y_name], weight, bias,
                                                      groups, epsilon, code, 1, channels_last)

            def run_into_output(ctx, values):
                y = values[y_name] = np.empty(y_shape, y_dtype)
                group_norm(ctx.buffers[x_name], y, weight, bias, groups, epsilon, code, 1, channels_last)

            return run_into_output
        into, threads = bound.into, bound.threads

        def run(ctx, values):
            x = ctx.buffers[x_name] if x_where == _BUFFER else values[x_name]
            if y_where == _BUFFER:
                y = ctx.buffers[y_name]
            else:
                y = values[y_name] = np.empty(y_shape, y_dtype)
            into(x, y, threads)

        return run

    def _run_general(self, bound: _GroupNormStep, buffers, values) -> None:
        """A GroupNorm without a prepared call (SkipGroupNorm, weights computed
        at run time): the general kernel, its results copied in."""
        args = [None if not name else (buffers[name] if where == _BUFFER else values[name])
                for where, name in bound.sources]
        with context.using_threads(self._engine.context_threads, 1):
            results = bound.step.kernel.run(args, {})
        for (where, name, shape, dtype), result in zip(bound.outputs, results):
            result = np.asarray(result)
            if result.shape != tuple(shape) or result.dtype != dtype:
                raise BindingMismatch(f"{bound.step.part.node.describe()} returned {result.dtype}{result.shape}, "
                                      f"bound {dtype}{tuple(shape)}")
            if where == _BUFFER:
                np.copyto(buffers[name], result)
            else:
                values[name] = result


def aligned_empty(shape, dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """np.empty(shape, dtype) starting on an `alignment`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _cpu_device(capi):
    return capi.OrtDevice(capi.OrtDevice.cpu(), capi.OrtDevice.default_memory(), 0)


def bindable(engine, shapes: Dict[str, tuple]) -> bool:
    """Whether a run with these recorded shapes can be bound: every part is a region
    or a GroupNorm (If/Loop read their enclosing scope by name), every crossing
    tensor a non-empty numeric array."""
    for part in engine.parts:
        if isinstance(part, Claimed) and not is_group_norm(part.node):
            return False
    for name, (shape, dtype) in shapes.items():
        if shape is None or dtype.kind not in "biuf" or 0 in shape:
            return False
    return True


def build_bound_plan(engine, shapes: Dict[str, tuple], feed_names: List[str]) -> Optional[BoundPlan]:
    if not bindable(engine, shapes):
        return None
    return BoundPlan(engine, shapes, feed_names)
