"""group_norm(): validate the arguments, pick the kernel, return the output.

Python checks, Cython computes: everything the kernels rely on (dtype,
contiguity, shapes, aliasing) is established here, with errors that name the
argument, the value given and what was expected.
"""
import math
import operator

import numpy as np

from . import _config
from .kernel import kernels

__all__ = ["group_norm"]

# dtype of the array the caller passes -> dtype the kernel computes in.
_COMPUTE_DTYPE = {
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
    np.dtype(np.float16): np.dtype(np.float32),
}


def _as_array(input):
    if type(input) is np.ndarray:
        return input
    if isinstance(input, np.ndarray):
        return input.view(np.ndarray)
    if hasattr(input, "__array__") and not isinstance(input, (list, tuple)):
        # e.g. a CPU torch tensor: a view, no copy
        return np.asarray(input)
    if hasattr(input, "__dlpack__"):
        return np.from_dlpack(input)
    raise TypeError(f"input must be a NumPy array (or an array object on the CPU), "
                    f"got {type(input).__name__}")


def _input_dtype(x):
    dtype = x.dtype
    if dtype in _COMPUTE_DTYPE:
        return dtype
    if dtype.kind == "f" and dtype.newbyteorder("=") in _COMPUTE_DTYPE:
        return None  # non-native byte order: caller converts
    raise TypeError(f"input dtype {dtype} is not supported: expected float32, float64 or float16")


def _channel_param(value, name, channels, dtype):
    """weight / bias: None or C values, returned C-contiguous in the kernel dtype."""
    if value is None:
        return None
    if type(value) is np.ndarray and value.dtype == dtype and value.shape == (channels,) \
            and value.flags.c_contiguous:
        return value
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating-point values, got dtype {arr.dtype}")
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel C={channels}), "
                         f"got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_eps(eps):
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps={eps!r} must be finite and >= 0")
    return value


def _check_groups(num_groups, shape):
    if isinstance(num_groups, bool) or not hasattr(num_groups, "__index__"):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__} {num_groups!r}")
    groups = operator.index(num_groups)
    channels = shape[1]
    if groups <= 0:
        raise ValueError(f"num_groups={groups} must be positive (input shape {shape})")
    if channels % groups:
        raise ValueError(f"num_groups={groups} must divide C={channels} (input shape {shape})")
    return groups


def _check_out(out, x, dtype):
    """out must be a writeable C-contiguous array of x's shape and dtype that
    is either x itself or does not overlap it."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected the input's shape {x.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out has dtype {out.dtype}, expected the input's dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only: expected a writeable array")
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous, got strides {out.strides} for shape {out.shape}")
    if out is not x and np.may_share_memory(out, x):
        same = out.ctypes.data == x.ctypes.data and out.strides == x.strides
        if not same:
            raise ValueError("out partially overlaps the input: pass the input itself for in-place, "
                             "or a separate array")


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, out=None, num_threads=None):
    """Group Normalization of `input` shaped (N, C, *spatial), any rank >= 2.

        y = (x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c

    mean_g and var_g (biased) are taken over the C/num_groups channels and all
    spatial positions of each sample and group.

    input: float32 (native fast path), float64 (computed in float64) or
        float16 (computed in float32, returned as float16). Non-contiguous
        inputs are copied first. The input is never modified unless out is it.
    weight, bias: None or shape (C,); cast to the compute dtype.
    eps: finite, >= 0.
    out: optional C-contiguous array of the input's shape and dtype to write
        into; may be the input itself (in-place).
    num_threads: None = gncpu.get_num_threads(); a positive count; or
        negative to count back from the maximum (-1 = all).

    Returns out (a new array if out is None). Float32 accuracy: max error
    ~1e-6 of float64 on N(0,1) data, and ~1e-5 with an offset of 1e4 (the
    statistics are shifted, the mean kept in two parts through the apply).
    A group containing NaN or Inf comes out all NaN; a constant group
    gives bias.
    """
    x = _as_array(input)
    dtype = _input_dtype(x)
    if dtype is None:  # non-native byte order
        x = x.astype(x.dtype.newbyteorder("="))
        dtype = x.dtype
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"input must have rank >= 2 (N, C, *spatial), got shape {shape}")
    groups = _check_groups(num_groups, shape)
    compute = _COMPUTE_DTYPE[dtype]
    channels = shape[1]
    weight = _channel_param(weight, "weight", channels, compute)
    bias = _channel_param(bias, "bias", channels, compute)
    eps = _check_eps(eps)
    if out is not None:
        _check_out(out, x, dtype)
    threads = _config.resolve_threads(num_threads, x.size)

    if compute != dtype or not x.flags.c_contiguous:
        # float16, or a strided view: compute on a contiguous copy.
        src = np.ascontiguousarray(x, dtype=compute)
        result = kernels.group_norm_nchw(src, src, weight, bias, groups, eps, 0, threads)
        if out is None:
            return result.astype(dtype, copy=False)
        np.copyto(out, result, casting="unsafe")
        return out
    if out is None:
        out = np.empty(shape, dtype)
    return kernels.group_norm_nchw(x, out, weight, bias, groups, eps, 0, threads)
