"""group_norm(): validate the arguments, pick the kernel, return the output.

Python checks, Cython computes: everything the kernels rely on (dtype,
contiguity, shapes, aliasing) is established here, with errors that name the
argument, the value given and what was expected.
"""
import functools
import math
import numbers
import operator

import numpy as np

from . import _config
from . import cuda as _cuda  # imports no CuPy: only the array-kind check
from .kernel import kernels

__all__ = ["group_norm"]

# dtype of the array the caller passes -> dtype the kernel computes in.
_COMPUTE_DTYPE = {
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
    np.dtype(np.float16): np.dtype(np.float32),
}


def _as_array(input, name="input"):
    if type(input) is np.ndarray:
        return input
    if isinstance(input, np.ndarray):
        return input.view(np.ndarray)
    if hasattr(input, "__array__") and not isinstance(input, (list, tuple)):
        # e.g. a CPU torch tensor: a view, no copy
        return np.asarray(input)
    if hasattr(input, "__dlpack__"):
        return np.from_dlpack(input)
    raise TypeError(f"{name} must be a NumPy array (or an array object on the CPU), "
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
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps={eps!r} must be finite and >= 0")
    return value


def _check_groups(num_groups, shape, channels=None):
    """num_groups as an int that divides the channel count (shape[1] unless given)."""
    channels = shape[1] if channels is None else channels
    if type(num_groups) is int and num_groups > 0 and channels % num_groups == 0:
        return num_groups
    if isinstance(num_groups, bool) or not hasattr(num_groups, "__index__"):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__} {num_groups!r}")
    groups = operator.index(num_groups)
    if groups <= 0:
        raise ValueError(f"num_groups={groups} must be positive (input shape {shape})")
    if channels % groups:
        raise ValueError(f"num_groups={groups} must divide C={channels} (input shape {shape})")
    return groups


def _check_out(out, x, dtype, moved):
    """out must be a writeable array of x's shape, dtype and layout (C-contiguous
    in the kernel's layout) that is either x itself or does not overlap it."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected the input's shape {x.shape}")
    if out.dtype != dtype and out.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"out has dtype {out.dtype}, expected the input's dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only: expected a writeable array")
    if not (_to_nhwc(out) if moved else out).flags.c_contiguous:
        layout = "channels-last strides" if moved else "C-contiguous"
        raise ValueError(f"out must have the input's memory layout ({layout}), "
                         f"got strides {out.strides} for shape {out.shape}")
    if out is not x and np.may_share_memory(out, x):
        same = out.ctypes.data == x.ctypes.data and out.strides == x.strides
        if not same:
            raise ValueError("out partially overlaps the input: pass the input itself for in-place, "
                             "or a separate array")


def _check_activation(activation):
    try:
        return kernels.ACTIVATION_CODES[activation]
    except (KeyError, TypeError):
        names = sorted(k for k in kernels.ACTIVATION_CODES if k is not None)
        raise ValueError(f"activation={activation!r} is not supported: expected None or one of "
                         f"{names}") from None


def _has_channels_last_strides(x):
    """True for an (N, C, *spatial) array that is not C-contiguous but whose
    (N, *spatial, C) view is: a torch channels_last tensor, np.transpose of
    an NHWC array."""
    return x.ndim >= 3 and not x.flags.c_contiguous and _to_nhwc(x).flags.c_contiguous


@functools.lru_cache(maxsize=None)
def _axes_to_nhwc(ndim):
    return (0,) + tuple(range(2, ndim)) + (1,)


@functools.lru_cache(maxsize=None)
def _axes_to_nchw(ndim):
    return (0, ndim - 1) + tuple(range(1, ndim - 1))


# (N, C, *spatial) <-> (N, *spatial, C) views; transpose with cached axes is
# several times cheaper than np.moveaxis, which matters on small inputs.
def _to_nhwc(a):
    return a.transpose(_axes_to_nhwc(a.ndim))


def _to_nchw(a):
    return a.transpose(_axes_to_nchw(a.ndim))


def _check_skip(skip, x, dtype, moved):
    """skip as a C-contiguous array of the compute dtype in the kernel's layout."""
    arr = _as_array(skip, "skip")
    if arr.shape != x.shape:
        raise ValueError(f"skip has shape {arr.shape}, expected the input's shape {x.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"skip must hold floating-point values, got dtype {arr.dtype}")
    return _to_compute(_to_nhwc(arr) if moved else arr, dtype)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None,
               skip=None, skip_bias=None, return_sum=False, channels_last=False, out=None,
               num_threads=None):
    """Group Normalization of `input` shaped (N, C, *spatial), any rank >= 2.

        y = act((x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c)

    mean_g and var_g (biased) are taken over the C/num_groups channels and all
    spatial positions of each sample and group.

    input: a NumPy array (or CPU array object; a CUDA array, e.g. CuPy or a
        torch CUDA tensor, runs on its device: see gncpu.cuda.group_norm).
        float32 (native fast path), float64 (computed in float64) or
        float16 (computed in float32, returned as float16). Arrays whose
        strides are channels-last (a torch channels_last tensor, or
        np.transpose of an NHWC array) run the channels-last kernel without a
        copy, and the output keeps that layout. Other non-contiguous inputs
        are copied first. The input is never modified unless out is it.
    weight, bias: None or shape (C,); cast to the compute dtype.
    eps: finite, >= 0.
    activation: None, "silu", "relu", "gelu" (erf form) or "gelu_tanh",
        applied inside the same pass. float32 accuracy of the activation
        itself: 1.4e-7 * max(1, |y|) (see gncpu/kernel/_vecmath.h).
    skip: None or an array of the input's shape; skip_bias: None or (C,).
        Both are added to the input before normalizing (onnxruntime's
        SkipGroupNorm); the sum is formed in the compute precision.
    return_sum: return (y, input + skip + skip_bias) instead of y.
    channels_last: input is (N, *spatial, C) (rank >= 3).
    out: optional array of the input's shape, dtype and memory layout
        (C-contiguous, or channels-last like the input) to write y into; may
        be the input itself (in-place).
    num_threads: None = gncpu.get_num_threads(); a positive count; or
        negative to count back from the maximum (-1 = all).

    Returns out (a new array if out is None), or (out, sum) with return_sum.
    Float32 accuracy: max error ~1e-6 of float64 on N(0,1) data, and ~3e-6
    with an offset of 1e4 (shifted statistics; the mean is kept in two parts
    through the apply). A group containing NaN or Inf comes out all NaN; a
    constant group gives bias (after the activation).
    """
    if type(input) is not np.ndarray and _cuda.is_cuda_array(input):
        if skip is not None or skip_bias is not None or return_sum:
            raise ValueError("skip, skip_bias and return_sum are not supported for CUDA arrays")
        return _cuda.group_norm(input, num_groups, weight, bias, eps, activation=activation,
                                channels_last=channels_last, out=out)
    if type(input) is np.ndarray and skip is None and skip_bias is None \
            and return_sum is False and type(channels_last) is bool:
        # the usual call, checked in C (see kernels.common_call)
        y = kernels.common_call(input, num_groups, weight, bias, eps, activation, channels_last,
                                out, num_threads, _config.resolve_threads)
        if y is not None:
            return y
    x = _as_array(input)
    dtype = _input_dtype(x)
    if dtype is None:  # non-native byte order
        x = x.astype(x.dtype.newbyteorder("="))
        dtype = x.dtype
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"input must have rank >= 2 (N, C, *spatial), got shape {shape}")
    if channels_last and len(shape) < 3:
        raise ValueError(f"channels_last=True needs rank >= 3 ((N, *spatial, C)), got shape {shape}")
    channels = shape[-1] if channels_last else shape[1]
    groups = _check_groups(num_groups, shape, channels)
    act = _check_activation(activation)
    compute = _COMPUTE_DTYPE[dtype]
    weight = _channel_param(weight, "weight", channels, compute)
    bias = _channel_param(bias, "bias", channels, compute)
    skip_bias = _channel_param(skip_bias, "skip_bias", channels, compute)
    eps = _check_eps(eps)
    if return_sum and skip is None and skip_bias is None:
        raise ValueError("return_sum=True needs skip or skip_bias: there is no sum to return")
    threads = _config.resolve_threads(num_threads, x.size)

    # The kernel's layout: NCHW, or NHWC for channels_last=True and for
    # NCHW-shaped arrays with channels-last strides (`moved`: the kernel sees
    # np.moveaxis(x, 1, -1), a C-contiguous view).
    moved = not channels_last and _has_channels_last_strides(x)
    if out is not None:
        _check_out(out, x, dtype, moved)
    if skip is not None:
        skip = _check_skip(skip, x, compute, moved)
        if out is not None and out is not x and np.may_share_memory(out, skip):
            raise ValueError("out overlaps skip: expected a separate array")

    src = _to_nhwc(x) if moved else x
    direct = compute == dtype and src.flags.c_contiguous and (out is None or out.dtype == dtype)
    if direct:
        y = np.empty(src.shape, compute) if out is None else (_to_nhwc(out) if moved else out)
    else:
        # float16, or a strided view: compute in place on a contiguous copy.
        src = y = _to_compute(src, compute, threads)
    total = np.empty(src.shape, compute) if return_sum else None
    kernels.group_norm(src, y, weight, bias, groups, eps, act, threads, channels_last or moved,
                       skip, skip_bias, total)
    result = _to_nchw(y) if moved else y
    if not direct:
        if out is None:
            result = _from_compute(y, dtype, threads)
            result = _to_nchw(result) if moved else result
        else:
            target = _to_nhwc(out) if moved else out
            if not _half_into(y, target, threads):
                np.copyto(out, result, casting="unsafe")
    if out is not None:
        result = out
    if return_sum:
        total = _from_compute(total, dtype, threads)
        return result, (_to_nchw(total) if moved else total)
    return result


def _to_compute(arr, compute, threads=1):
    """arr as a new C-contiguous array of the compute dtype. float16 goes
    through the kernels' F16C conversion where the build has one (NumPy's
    cast costs 2-4 ns per element, ~20x more; the bits are the same)."""
    if arr.dtype == np.float16 and compute == np.float32 and kernels.HAVE_FLOAT16:
        arr = np.ascontiguousarray(arr)
        return kernels.half_to_float(arr, np.empty(arr.shape, np.float32), threads)
    return np.ascontiguousarray(arr, dtype=compute)


def _from_compute(arr, dtype, threads=1):
    """C-contiguous compute-dtype `arr` as `dtype` (itself when they agree)."""
    if arr.dtype == dtype:
        return arr
    if dtype == np.float16 and arr.dtype == np.float32 and kernels.HAVE_FLOAT16:
        return kernels.float_to_half(arr, np.empty(arr.shape, np.float16), threads)
    return arr.astype(dtype)


def _half_into(arr, target, threads=1) -> bool:
    """Round C-contiguous float32 `arr` into `target` if it is a C-contiguous
    float16 array of its shape (True), else do nothing (False)."""
    if (kernels.HAVE_FLOAT16 and target.dtype == np.float16 and arr.dtype == np.float32
            and target.shape == arr.shape and target.flags.c_contiguous and target.flags.writeable):
        kernels.float_to_half(arr, target, threads)
        return True
    return False
