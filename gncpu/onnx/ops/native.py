"""Calls into the compiled kernels for the ONNX ops other than GroupNorm
(gncpu/kernel/_onnx_ops.pxi): dtype handling and the thread count.

float32 and float64 run natively; float16 (and bfloat16) compute in float32
and round back, as the rest of gncpu.onnx does. The kernels' results do not
depend on the thread count, so it is chosen for speed alone.
"""
import numpy as np

from ... import _config
from ...kernel import kernels
from .. import context
from .derived import derived

# An exp/erf evaluated in double costs several element copies: thread a
# transcendental op at 1/4 of the size at which a copy would be threaded (32K
# elements), which keeps each thread's share well above what waking a thread costs.
_TRANSCENDENTAL_WEIGHT = 4


def threads_for(elements, weight=1):
    """Threads for a kernel over `elements` elements, each costing `weight` copies."""
    return _config.resolve_threads(context.num_threads(), elements * weight)


def native_dtype(dtype):
    """The dtype a kernel computes `dtype` in, or None when no kernel takes it."""
    if dtype == np.float32 or dtype == np.float64:
        return dtype
    if dtype == np.float16 or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return None


def unary(x, name):
    """Sigmoid, erf, gelu or gelu_tanh of a floating-point array, in x's dtype."""
    compute = native_dtype(x.dtype)
    src = np.ascontiguousarray(x, dtype=compute)
    out = np.empty(x.shape, compute) if src is x or not src.flags.owndata else src
    kernels.unary(src, out, kernels.UNARY_CODES[name],
                  threads_for(src.size, _TRANSCENDENTAL_WEIGHT))
    return out if compute == x.dtype else out.astype(x.dtype)


def softmax(x, axis):
    """Softmax of x along `axis` (already made non-negative), in x's dtype."""
    if x.size == 0:
        return x.copy()
    compute = native_dtype(x.dtype)
    src = np.ascontiguousarray(x, dtype=compute)
    view = src.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), x.shape[axis], -1)
    out = np.empty(view.shape, compute)
    kernels.softmax(view, out, threads_for(src.size, _TRANSCENDENTAL_WEIGHT))
    out = out.reshape(x.shape)
    return out if compute == x.dtype else out.astype(x.dtype)


def layer_norm(x, scale, bias, axis, epsilon):
    """(y, mean, inv_std_dev) of LayerNormalization over dims axis..end;
    mean and inv_std_dev in float64, shaped x.shape[:axis] + (1,) * (rank - axis)."""
    compute = native_dtype(x.dtype)
    src = np.ascontiguousarray(x, dtype=compute)
    tail = x.shape[axis:]
    n = int(np.prod(tail, dtype=np.int64))
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    flat_scale = _row_param(scale, tail, compute)
    flat_bias = None if bias is None else _row_param(bias, tail, compute)
    y = np.empty((rows, n), compute)
    mean = np.empty(rows, np.float64)
    rstd = np.empty(rows, np.float64)
    kernels.layer_norm(src.reshape(rows, n), flat_scale, flat_bias, y, mean, rstd, float(epsilon),
                       threads_for(src.size, 2))
    stats_shape = x.shape[:axis] + (1,) * len(tail)
    y = y.reshape(x.shape)
    return (y if compute == x.dtype else y.astype(x.dtype)), mean.reshape(stats_shape), rstd.reshape(stats_shape)


def _row_param(value, tail, dtype):
    """scale or bias broadcast to the normalized dims, flattened, contiguous
    (computed once per constant weight)."""
    value = np.asarray(value)
    try:
        fits = np.broadcast_shapes(value.shape, tail) == tuple(tail)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"LayerNormalization: scale/bias of shape {value.shape} does not broadcast to the "
                         f"normalized dims {tuple(tail)}")
    return derived(value, ("layer_norm_row", tuple(tail), np.dtype(dtype).str),
                   lambda v: np.ascontiguousarray(np.broadcast_to(v, tail), dtype=dtype).reshape(-1))
