"""What `python -m gncpu bench` times: the cases, their input buffers, and
the contenders (gncpu, the copy floor, NumPy and the optional peers).

A contender's `prepare(workload, threads)` returns `run(slot)`, which
normalizes input slot `slot` and returns the output (any array-like the
accuracy check can turn into NumPy, in NCHW order). A peer that is not
installed raises `Skipped`: it is reported, never an error.
"""
import importlib
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

__all__ = ["Case", "Workload", "Contender", "Skipped", "make_workload", "touched_empty", "import_optional",
           "as_numpy", "CONTENDERS", "numpy_group_norm", "variant_contenders"]


class Skipped(Exception):
    """A contender cannot run here (peer not installed, API not in this build)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


_CASE = re.compile(r"^\s*(\d+(?:x\d+)+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Case:
    """One benchmark shape: an (N, C, *spatial) float32 input and its group count."""
    shape: tuple
    groups: int

    def __post_init__(self):
        if len(self.shape) < 3:
            raise ValueError(f"shape {self.shape} must be (N, C, *spatial) with at least one spatial dim")
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a non-positive dimension")
        if self.groups <= 0 or self.shape[1] % self.groups:
            raise ValueError(f"groups={self.groups} must be positive and divide C={self.shape[1]} "
                             f"(shape {self.shape})")

    @classmethod
    def parse(cls, text):
        """'1x320x64x64/32' -> Case((1, 320, 64, 64), 32)."""
        match = _CASE.match(text)
        if not match:
            raise ValueError(f"shape {text!r} is not of the form NxCxHxW/G (e.g. 1x320x64x64/32)")
        return cls(tuple(int(d) for d in match.group(1).split("x")), int(match.group(2)))

    @property
    def label(self):
        return "x".join(map(str, self.shape)) + f"/{self.groups}"

    @property
    def elements(self):
        return int(np.prod(self.shape))

    @property
    def nbytes(self):
        return 4 * self.elements  # float32


@dataclass
class Workload:
    """Rotating float32 NCHW input slots (cold in cache when read), one
    reused output buffer (already written once, so no contender pays its
    page faults; reused call after call, as torch's allocator and
    onnxruntime's arena hand back the same memory), and the affine
    parameters every contender uses."""
    case: Case
    inputs: list
    output: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    eps: float = 1e-5
    _derived: dict = field(default_factory=dict, repr=False)

    @property
    def slots(self):
        return len(self.inputs)

    def derived(self, key, make):
        """Buffers several contenders build from the slots (e.g. NHWC copies):
        made once per workload by `make(self)`, then shared."""
        if key not in self._derived:
            self._derived[key] = make(self)
        return self._derived[key]


def make_workload(case, slots, *, offset=0.0, seed=0, eps=1e-5):
    """x = offset + N(0, 1) in every slot (distinct data per slot), weight ~
    1 + N(0, 0.1), bias ~ N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(slots):
        x = rng.standard_normal(case.shape, dtype=np.float32)
        if offset:
            x += np.float32(offset)
        inputs.append(x)
    output = touched_empty(case.shape)
    channels = case.shape[1]
    weight = (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    return Workload(case, inputs, output, weight, bias, eps)


def touched_empty(shape):
    """A float32 array whose pages are already mapped (fresh allocations are
    mapped lazily, and the first write would pay the page faults)."""
    out = np.empty(shape, np.float32)
    out.fill(1.0)
    return out


@dataclass(frozen=True)
class Contender:
    """name: key in results and on the command line; label: column heading;
    computes: which reference its output is checked against (None: nothing
    to check, e.g. the copy floor)."""
    name: str
    label: str
    prepare: Callable
    computes: Optional[str] = "group_norm"
    note: str = field(default="", compare=False)


def import_optional(module, extra="bench"):
    """Import a peer, or raise Skipped saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Skipped(f"{module} is not installed (in gncpu's '{extra}' extra)") from None
    except Exception as exc:  # e.g. a wheel whose shared libraries fail to load
        raise Skipped(f"{module} failed to import: {type(exc).__name__}: {exc}") from None


def as_numpy(result):
    """A contender's output as a NumPy array (torch tensors, OrtValues, views)."""
    if isinstance(result, np.ndarray):
        return result
    if hasattr(result, "numpy"):
        return np.asarray(result.numpy())
    return np.asarray(result)


# --- the floor and gncpu ------------------------------------------------------

def _prepare_floor(work, threads):
    from .._config import resolve_threads
    from ..kernel import kernels

    inputs, output = work.inputs, work.output
    copy = kernels.parallel_copy
    # The threads gncpu would use: tiny inputs run on one thread there, and a
    # fork/join would dominate a copy of a few KiB.
    threads = resolve_threads(threads, work.case.elements)

    def run(slot):
        return copy(inputs[slot], output, threads)
    return run


def _prepare_gncpu(work, threads):
    from ..functional import group_norm

    inputs, output = work.inputs, work.output
    groups, weight, bias, eps = work.case.groups, work.weight, work.bias, work.eps

    def run(slot):
        return group_norm(inputs[slot], groups, weight, bias, eps, out=output, num_threads=threads)
    return run


def _prepare_gncpu_allocating(work, threads):
    from ..functional import group_norm

    inputs = work.inputs
    groups, weight, bias, eps = work.case.groups, work.weight, work.bias, work.eps

    def run(slot):
        return group_norm(inputs[slot], groups, weight, bias, eps, num_threads=threads)
    return run


def _variant_runner(level):
    """gncpu's kernel compiled for one instruction-set level, called directly
    (the arrays are already what the kernel takes), on the threads
    gncpu.group_norm would use: every variant this CPU runs, in one run."""
    def prepare(work, threads):
        from .._config import resolve_threads
        from ..kernel import available_variants

        module = dict(available_variants()).get(level)
        if module is None:
            raise Skipped(f"kernel variant {level} is not built or this CPU cannot run it")
        inputs, output = work.inputs, work.output
        groups, weight, bias, eps = work.case.groups, work.weight, work.bias, work.eps
        threads = resolve_threads(threads, work.case.elements)
        kernel = module.group_norm

        def run(slot):
            return kernel(inputs[slot], output, weight, bias, groups, eps, 0, threads)
        return run
    return prepare


def variant_contenders():
    """One contender per compiled instruction-set level (gncpu-baseline, ...)."""
    from ..kernel import LEVELS

    return [Contender(f"gncpu-{level}", f"gncpu {level}", _variant_runner(level),
                      note=f"the {level} build of gncpu's kernel (as GNCPU_KERNEL={level} selects), "
                           "called directly")
            for level in LEVELS]


# --- NumPy ----------------------------------------------------------------------

def numpy_group_norm(x, groups, weight, bias, eps, out, scratch):
    """Two-pass float32 GN in NumPy, writing into `out` (scratch: x-sized
    buffer). Single-threaded: NumPy's elementwise loops and reductions are."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    centred = out.reshape(n, groups, -1)
    mean = grouped.mean(axis=2, keepdims=True)
    np.subtract(grouped, mean, out=centred)
    squares = np.square(centred, out=scratch.reshape(n, groups, -1))
    rstd = 1.0 / np.sqrt(squares.mean(axis=2, keepdims=True) + np.float32(eps))
    centred *= rstd
    per_channel = out.reshape(n, c, -1)
    per_channel *= weight[:, None]
    per_channel += bias[:, None]
    return out


def _prepare_numpy(work, threads):
    inputs, output = work.inputs, work.output
    groups, weight, bias, eps = work.case.groups, work.weight, work.bias, work.eps
    scratch = touched_empty(work.case.shape)

    def run(slot):
        return numpy_group_norm(inputs[slot], groups, weight, bias, eps, output, scratch)
    return run


# --- torch ----------------------------------------------------------------------

_torch_interop_set = False


def set_torch_threads(torch, threads):
    """Same thread count as everyone else; one inter-op thread (settable once)."""
    global _torch_interop_set
    torch.set_num_threads(threads)
    if not _torch_interop_set:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started by someone else in this process
            pass
        _torch_interop_set = True


def _prepare_torch(work, threads):
    torch = import_optional("torch")
    set_torch_threads(torch, threads)
    tensors = [torch.from_numpy(x) for x in work.inputs]
    weight, bias = torch.from_numpy(work.weight), torch.from_numpy(work.bias)
    groups, eps = work.case.groups, work.eps
    group_norm = torch.nn.functional.group_norm

    def run(slot):
        return group_norm(tensors[slot], groups, weight, bias, eps)
    return run


# --- onnxruntime ----------------------------------------------------------------

def _gn21_model(onnx, case, weight, bias, eps):
    """One GroupNormalization-21 node, weight and bias as initializers."""
    h = onnx.helper
    node = h.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"],
                       num_groups=case.groups, epsilon=eps)
    graph = h.make_graph(
        [node], "group_norm",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(case.shape))],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(case.shape))],
        [onnx.numpy_helper.from_array(weight, "scale"), onnx.numpy_helper.from_array(bias, "bias")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])


def _legacy_pattern_model(onnx, case, weight, bias, eps):
    """What torch's legacy exporter emits for GroupNorm: Reshape ->
    InstanceNormalization over G pseudo-channels -> Reshape -> Mul -> Add."""
    h, nh = onnx.helper, onnx.numpy_helper
    n, c, groups = case.shape[0], case.shape[1], case.groups
    affine = (c,) + (1,) * (len(case.shape) - 2)
    inits = [
        nh.from_array(np.array([n, groups, -1], np.int64), "grouped_shape"),
        nh.from_array(np.array(case.shape, np.int64), "shape"),
        nh.from_array(np.ones(groups, np.float32), "ones"),
        nh.from_array(np.zeros(groups, np.float32), "zeros"),
        nh.from_array(weight.reshape(affine), "weight"),
        nh.from_array(bias.reshape(affine), "bias"),
    ]
    nodes = [
        h.make_node("Reshape", ["x", "grouped_shape"], ["grouped"]),
        h.make_node("InstanceNormalization", ["grouped", "ones", "zeros"], ["normed"], epsilon=eps),
        h.make_node("Reshape", ["normed", "shape"], ["unflat"]),
        h.make_node("Mul", ["unflat", "weight"], ["scaled"]),
        h.make_node("Add", ["scaled", "bias"], ["y"]),
    ]
    graph = h.make_graph(
        nodes, "group_norm_legacy",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(case.shape))],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(case.shape))], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _ort_session(ort, model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_runner(build_model):
    def prepare(work, threads):
        ort = import_optional("onnxruntime")
        onnx = import_optional("onnx")  # to build the model
        session = _ort_session(ort, build_model(onnx, work.case, work.weight, work.bias, work.eps), threads)
        # OrtValues wrap the NumPy slots without copying; ORT allocates the
        # output from its arena (reused across calls).
        values = [ort.OrtValue.ortvalue_from_numpy(x) for x in work.inputs]
        run_values = session.run_with_ort_values

        def run(slot):
            return run_values(["y"], {"x": values[slot]})[0]
        return run
    return prepare


# --- OpenVINO -------------------------------------------------------------------

def openvino_compile(ov, model, threads):
    """Compile for the CPU plugin with one stream on `threads` threads, in
    float32 (on CPUs with bf16 support OpenVINO would otherwise pick bf16)."""
    return ov.Core().compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    })


def _prepare_openvino(work, threads):
    ov = import_optional("openvino")
    ops = import_optional("openvino.opset12")
    case = work.case
    x = ops.parameter(list(case.shape), np.float32, name="x")
    y = ops.group_normalization(x, ops.constant(work.weight), ops.constant(work.bias), case.groups, work.eps)
    compiled = openvino_compile(ov, ov.Model([y], [x], "group_norm"), threads)
    request = compiled.create_infer_request()
    # Tensors share the NumPy buffers, so OpenVINO reads our rotating inputs
    # and writes our output buffer, as gncpu does.
    in_tensors = [ov.Tensor(a, shared_memory=True) for a in work.inputs]
    request.set_output_tensor(ov.Tensor(work.output, shared_memory=True))
    output = work.output
    set_input, infer = request.set_input_tensor, request.infer

    def run(slot):
        set_input(in_tensors[slot])
        infer()
        return output
    return run


CONTENDERS = [
    Contender("floor", "copy floor", _prepare_floor, computes=None,
              note="gncpu.kernel.kernels.parallel_copy of the same bytes on the threads gncpu uses "
                   "(one below gncpu's serial threshold)"),
    Contender("gncpu", "gncpu", _prepare_gncpu, note="gncpu.group_norm(x, G, w, b, out=..., num_threads=t)"),
    Contender("gncpu-alloc", "gncpu, new out", _prepare_gncpu_allocating,
              note="gncpu.group_norm(x, G, w, b, num_threads=t): allocates its output, as torch does"),
    *variant_contenders(),
    Contender("numpy", "NumPy", _prepare_numpy, note="two-pass float32 NumPy, single-threaded"),
    Contender("torch", "torch", _prepare_torch,
              note="torch.nn.functional.group_norm (allocates its output; torch has no out=)"),
    Contender("onnxruntime", "ORT GN-21", _ort_runner(_gn21_model),
              note="onnxruntime, one GroupNormalization-21 node"),
    Contender("ort-legacy", "ORT legacy", _ort_runner(_legacy_pattern_model),
              note="onnxruntime, torch legacy export pattern Reshape-InstanceNormalization-Reshape-Mul-Add"),
    Contender("openvino", "OpenVINO", _prepare_openvino,
              note="OpenVINO CPU plugin, GroupNormalization-12, f32, 1 stream"),
]
