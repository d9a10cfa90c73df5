"""Run the launch plan on a GPU through CuPy. Imported only when a CUDA
array is normalized, so importing gncpu never imports CuPy."""
import sys

import numpy as np

from ..functional import _check_eps, _check_groups
from . import ACTIVATIONS, plan as cuda_plan, source_path
from ._arrays import is_cuda_array

_module = None
_functions = {}

# What CuPy's RawModule (CuPy 14, cupy/cuda/compiler.py) adds to our
# options when it compiles with NVRTC, besides -arch=sm_XX of the current
# device. tests/test_cuda_build.py compiles with exactly this set, and checks
# that the installed CuPy still adds them.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError("the CUDA path needs CuPy: pip install cupy-cuda12x (CUDA 12) "
                          "or cupy-cuda13x (CUDA 13)") from exc
    return cupy


def _raw_module(cupy):
    """The kernels as one RawModule; CuPy compiles it once per device (and
    caches the cubin on disk) the first time a function is asked for."""
    global _module
    if _module is None:
        # '#line' makes NVRTC's messages point at group_norm.cu's real lines
        code = f'#line 1 "{cuda_plan.KERNEL_SOURCE}"\n' + source_path().read_text()
        _module = cupy.RawModule(code=code, options=cuda_plan.compile_options(), backend="nvrtc")
    return _module


def _function(cupy, name):
    key = (cupy.cuda.Device().id, name)
    if key not in _functions:
        _functions[key] = _raw_module(cupy).get_function(name)
    return _functions[key]


def _to_cupy(cupy, obj, name):
    if isinstance(obj, cupy.ndarray):
        return obj
    if is_cuda_array(obj):
        if hasattr(obj, "__dlpack__"):
            # DLPack, unlike __cuda_array_interface__, orders the producer's
            # stream before CuPy's current one.
            return cupy.from_dlpack(obj)
        return cupy.asarray(obj)
    raise TypeError(f"{name} must be a CUDA array (CuPy, or an object with __cuda_array_interface__ "
                    f"or DLPack on a CUDA device), got {type(obj).__name__}")


def _like_input(cupy, result, input):
    """Return `result` (a CuPy array) as the kind of array the caller gave."""
    if isinstance(input, cupy.ndarray):
        return result
    module = type(input).__module__.partition(".")[0]
    if module == "torch":
        return sys.modules["torch"].from_dlpack(result)
    return result


def _channel_param(cupy, value, name, channels):
    if value is None:
        return None
    if isinstance(value, cupy.ndarray):
        arr = value
    elif is_cuda_array(value):
        arr = _to_cupy(cupy, value, name)
    else:
        arr = cupy.asarray(np.asarray(value))
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating-point values, got dtype {arr.dtype}")
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel C={channels}), "
                         f"got shape {arr.shape}")
    return cupy.ascontiguousarray(arr, dtype=cupy.float32)


def _extent(arr):
    """[first byte, last byte + 1) that a strided array can touch."""
    start = end = arr.data.ptr
    for size, stride in zip(arr.shape, arr.strides):
        if size == 0:
            return start, start
        if stride > 0:
            end += (size - 1) * stride
        else:
            start += (size - 1) * stride
    return start, end + arr.itemsize


def _check_out(cupy, out, x, shape, dtype):
    if not isinstance(out, cupy.ndarray):
        raise TypeError(f"out must be a CUDA array of the input's kind, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected the input's shape {shape}")
    if out.dtype != dtype:
        raise ValueError(f"out has dtype {out.dtype}, expected the input's dtype {dtype}")
    if out.data.ptr == x.data.ptr and out.strides == x.strides:
        return  # in place: each element is read (stats, then apply) before it is written
    (a0, a1), (b0, b1) = _extent(out), _extent(x)
    if a0 < b1 and b0 < a1:
        raise ValueError("out overlaps the input without being it: pass the input itself for in-place, "
                         "or a separate array")


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None, channels_last=False,
               out=None):
    cupy = _import_cupy()
    x = _to_cupy(cupy, input, "input")
    if x.dtype not in (np.float32, np.float16):
        raise TypeError(f"input dtype {x.dtype} is not supported by the CUDA path: expected float32 "
                        f"(or float16, computed in float32); use the CPU path for float64")
    shape = x.shape
    if x.ndim < 2:
        raise ValueError(f"input must have rank >= 2 (N, C, *spatial), got shape {shape}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported by the CUDA path: it fuses "
                         f"{' or '.join(repr(a) for a in ACTIVATIONS)}")
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__} {channels_last!r}")
    channels = shape[-1] if channels_last else shape[1]
    groups = _check_groups(num_groups, shape, channels)
    eps = _check_eps(eps)
    out_kind = out
    if out is not None:
        out = _to_cupy(cupy, out, "out")
        _check_out(cupy, out, x, shape, x.dtype)

    with x.device:
        weight = _channel_param(cupy, weight, "weight", channels)
        bias = _channel_param(cupy, bias, "bias", channels)
        # The kernels read C-contiguous (N, C, HW) or (N, HW, C). An NCHW array
        # with channels-last strides (a torch channels_last tensor) is the
        # latter already: run the NHWC kernels on it, no copy.
        nhwc = bool(channels_last)
        if nhwc:
            src = x
        else:
            src = x
            if not x.flags.c_contiguous:
                moved = cupy.moveaxis(x, 1, -1)
                if moved.flags.c_contiguous:
                    src, nhwc = moved, True
        src = cupy.ascontiguousarray(src, dtype=cupy.float32)
        to_caller = (lambda a: cupy.moveaxis(a, -1, 1)) if nhwc and not channels_last else (lambda a: a)

        target = None  # write the kernels' output straight into out when its layout allows
        if out is not None and out.dtype == cupy.float32:
            view = cupy.moveaxis(out, 1, -1) if nhwc and not channels_last else out
            if view.flags.c_contiguous:
                target = view
        y = target if target is not None else cupy.empty(src.shape, cupy.float32)

        plan = cuda_plan.plan_for_arrays(src.shape, groups, eps=eps, channels_last=nhwc, silu=activation == "silu",
                                         x_address=src.data.ptr, y_address=y.data.ptr)
        buffers = {
            cuda_plan.X: src,
            cuda_plan.Y: y,
            cuda_plan.WEIGHT: cupy.ones(channels, cupy.float32) if weight is None else weight,
            cuda_plan.BIAS: cupy.zeros(channels, cupy.float32) if bias is None else bias,
            cuda_plan.PARTIALS: cupy.empty(max(plan.partials_floats, 1), cupy.float32),
            cuda_plan.COEFFS: cupy.empty(max(plan.coeffs_floats, 4), cupy.float32),
        }
        for launch in plan.launches:
            args = tuple(buffers[a] if isinstance(a, str) else a for a in launch.args)
            _function(cupy, launch.kernel)(launch.grid, launch.block, args)

        result = to_caller(y)
        if out is not None:
            if target is None:
                out[...] = result.astype(out.dtype, copy=False)
            return out_kind
        return _like_input(cupy, result.astype(x.dtype, copy=False), input)
