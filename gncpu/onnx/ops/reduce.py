"""Reductions: ReduceMean/Sum/Max/Min/Prod/SumSquare/L1/L2/LogSum(Exp), ArgMax/ArgMin.

Axes moved from an attribute to an optional input (ReduceSum at opset 13, the
others at 18); both versions share one implementation.
"""
import numpy as np

from ..registry import register


def _reduce_axes(x, axes, noop_with_empty_axes):
    if axes is None or len(axes) == 0:
        return None if not noop_with_empty_axes else ()
    return tuple(int(a) + x.ndim if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))


def _accumulator(x):
    # float16 sums lose digits fast: accumulate in float32 and cast back.
    return np.float32 if x.dtype == np.float16 else None


def _make(name, compute, attr_versions, input_versions):
    def reduce_with_input(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        axes = _reduce_axes(x, None if axes is None else np.asarray(axes), noop_with_empty_axes)
        if axes == ():
            return x
        with np.errstate(all="ignore"):
            result = compute(x, axes, bool(keepdims))
        return np.asarray(result).astype(x.dtype, copy=False)

    def reduce_with_attr(x, *, axes=None, keepdims=1):
        return reduce_with_input(x, None if axes is None else np.array(axes, dtype=np.int64), keepdims=keepdims)

    reduce_with_input.__name__ = reduce_with_attr.__name__ = name
    for since in attr_versions:
        register(name, since)(reduce_with_attr)
    for since in input_versions:
        register(name, since)(reduce_with_input)


def _identity(which, dtype):
    """The value a max (lowest) or min (highest) over nothing returns, per dtype."""
    if dtype == bool:
        return which == "highest"
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.min if which == "lowest" else info.max
    return -np.inf if which == "lowest" else np.inf


def _empty_safe(fn, identity):
    def compute(x, axes, keepdims):
        if x.size == 0:
            shape = np.sum(np.zeros(x.shape), axis=axes, keepdims=keepdims).shape
            return np.full(shape, _identity(identity, x.dtype), dtype=x.dtype)
        return fn(x, axes, keepdims)
    return compute


_make("ReduceMean", lambda x, a, k: np.mean(x, axis=a, keepdims=k, dtype=_accumulator(x)), (1, 11, 13), (18,))
_make("ReduceSum", lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=_accumulator(x)), (1, 11), (13,))
_make("ReduceMax", _empty_safe(lambda x, a, k: np.max(x, axis=a, keepdims=k), "lowest"), (1, 11, 12, 13), (18, 20))
_make("ReduceMin", _empty_safe(lambda x, a, k: np.min(x, axis=a, keepdims=k), "highest"), (1, 11, 12, 13), (18, 20))
_make("ReduceProd", lambda x, a, k: np.prod(x, axis=a, keepdims=k), (1, 11, 13), (18,))
_make("ReduceSumSquare", lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k, dtype=_accumulator(x)),
      (1, 11, 13), (18,))
_make("ReduceL1", lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k, dtype=_accumulator(x)), (1, 11, 13), (18,))
_make("ReduceL2", lambda x, a, k: np.sqrt(np.sum(np.square(x.astype(np.float64)), axis=a, keepdims=k)),
      (1, 11, 13), (18,))
_make("ReduceLogSum", lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)), (1, 11, 13), (18,))


def _log_sum_exp(x, axes, keepdims):
    peak = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros((1,) * x.ndim, x.dtype)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
    return total if keepdims else np.squeeze(total, axis=axes if axes is not None else None)


_make("ReduceLogSumExp", _log_sum_exp, (1, 11, 13), (18,))


def _arg(name, fn):
    def op(x, *, axis=0, keepdims=1, select_last_index=0):
        axis = axis + x.ndim if axis < 0 else axis
        data = np.flip(x, axis) if select_last_index else x
        index = fn(data, axis=axis)
        if select_last_index:
            index = x.shape[axis] - 1 - index
        index = index.astype(np.int64)
        return np.expand_dims(index, axis) if keepdims else index
    op.__name__ = name
    for since in (1, 11, 12, 13):
        register(name, since)(op)


_arg("ArgMax", np.argmax)
_arg("ArgMin", np.argmin)
