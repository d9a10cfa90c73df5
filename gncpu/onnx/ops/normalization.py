"""Softmax family and the normalizations other than GroupNorm: LayerNormalization,
InstanceNormalization, BatchNormalization (inference), LpNormalization.

Statistics are computed in float32 at least (float16 inputs would lose digits
in their sums) and as mean-then-centered variance, never E[x^2] - E[x]^2.
"""
import numpy as np

from ..registry import register
from . import native


def _work_dtype(x):
    return np.float32 if x.dtype == np.float16 else x.dtype


def _softmax_along(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted, axis=axis, keepdims=True)
    return shifted


def _flattened(x, axis):
    # Before opset 13 Softmax coerced the input to 2-D at `axis`.
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _axis(axis, rank, op):
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"{op}: axis={axis} is out of range for an input of rank {rank}")
    return axis + rank if axis < 0 else axis


@register("Softmax", 1)
@register("Softmax", 11)
def softmax_legacy(x, *, axis=1):
    # Before opset 13 Softmax coerced the input to 2-D at `axis`: one row per leading index.
    axis = _axis(axis, x.ndim, "Softmax")
    if native.native_dtype(x.dtype) is None:
        return _softmax_along(_flattened(x, axis).astype(_work_dtype(x)), 1).reshape(x.shape).astype(x.dtype)
    return native.softmax(_flattened(x, axis), 1).reshape(x.shape)


@register("Softmax", 13)
def softmax(x, *, axis=-1):
    """Native for floating-point inputs: within 1 float32 ulp of float64 (see native.py)."""
    axis = _axis(axis, x.ndim, "Softmax")
    if native.native_dtype(x.dtype) is None:
        return _softmax_along(x.astype(_work_dtype(x)), axis).astype(x.dtype, copy=False)
    return native.softmax(x, axis)


def _log_softmax_along(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


@register("LogSoftmax", 1)
@register("LogSoftmax", 11)
def log_softmax_legacy(x, *, axis=1):
    return _log_softmax_along(_flattened(x, axis).astype(_work_dtype(x)), 1).reshape(x.shape).astype(x.dtype, copy=False)


@register("LogSoftmax", 13)
def log_softmax(x, *, axis=-1):
    with np.errstate(invalid="ignore", over="ignore"):
        return _log_softmax_along(x.astype(_work_dtype(x)), axis).astype(x.dtype, copy=False)


@register("Hardmax", 13)
def hardmax(x, *, axis=-1):
    index = np.expand_dims(np.argmax(x, axis=axis), axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, index, 1, axis=axis)
    return out


@register("LayerNormalization", 17)
def layer_normalization(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """Native for floating-point inputs: statistics in float64 whatever
    stash_type says (float32 stashing only loses digits), two-pass, so stable
    at large offsets; Mean and InvStdDev returned in the stash type."""
    axis = _axis(axis, x.ndim, "LayerNormalization")
    if native.native_dtype(x.dtype) is not None:
        y, mean, rstd = native.layer_norm(x, scale, bias, axis, epsilon)
        stash = np.float64 if stash_type == 11 else np.float32
        return y, mean.astype(stash), rstd.astype(stash)
    return _layer_normalization_numpy(x, scale, bias, axis, epsilon, stash_type)


def _layer_normalization_numpy(x, scale, bias, axis, epsilon, stash_type):
    axes = tuple(range(axis, x.ndim))
    work = x.astype(np.float64 if stash_type == 11 else _work_dtype(x), copy=False)
    mean = np.mean(work, axis=axes, keepdims=True)
    centered = work - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + work.dtype.type(epsilon))
    y = centered * inv_std
    y = y.astype(_work_dtype(x), copy=False) * scale.astype(_work_dtype(x), copy=False)
    if bias is not None:
        y += bias.astype(_work_dtype(x), copy=False)
    return (y.astype(x.dtype, copy=False), mean.astype(np.float32 if stash_type == 1 else work.dtype),
            inv_std.astype(np.float32 if stash_type == 1 else work.dtype))


@register("InstanceNormalization", 6)
@register("InstanceNormalization", 22)
def instance_normalization(x, scale, bias, *, epsilon=1e-5):
    axes = tuple(range(2, x.ndim))
    work = x.astype(_work_dtype(x), copy=False)
    mean = np.mean(work, axis=axes, keepdims=True)
    centered = work - mean
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    factor = scale.astype(work.dtype).reshape(channel) / np.sqrt(var + work.dtype.type(epsilon))
    centered *= factor
    centered += bias.astype(work.dtype).reshape(channel)
    return centered.astype(x.dtype, copy=False)


def _batch_norm(x, scale, bias, mean, var, epsilon):
    channel = (1, x.shape[1]) + (1,) * (x.ndim - 2) if x.ndim > 1 else (x.shape[0],)
    dtype = np.dtype(_work_dtype(x))
    factor = scale.astype(dtype) / np.sqrt(var.astype(dtype) + dtype.type(epsilon))
    shift = bias.astype(dtype) - mean.astype(dtype) * factor
    y = x.astype(dtype, copy=False) * factor.reshape(channel) + shift.reshape(channel)
    return y.astype(x.dtype, copy=False)


def _inference_batch_norm(node):
    return not node.attrs.get("training_mode", 0) and len([o for o in node.outputs if o]) == 1


@register("BatchNormalization", 9, supports=_inference_batch_norm)
@register("BatchNormalization", 14, supports=_inference_batch_norm)
@register("BatchNormalization", 15, supports=_inference_batch_norm)
def batch_normalization(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise ValueError("BatchNormalization with training_mode=1 is not supported for inference")
    return _batch_norm(x, scale, bias, mean, var, epsilon)


@register("BatchNormalization", 7)
def batch_normalization_7(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1):
    return _batch_norm(x, scale, bias, mean, var, epsilon)


@register("LpNormalization", 1)
@register("LpNormalization", 22)
def lp_normalization(x, *, axis=-1, p=2):
    if p == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        # An all-zero slice normalizes to zeros, not NaN.
        return np.where(norm == 0, 0, x / norm).astype(x.dtype, copy=False)


def _inference_dropout(node):
    # A training_mode input may switch dropout on at run time; that needs the reference's RNG.
    return len(node.inputs) < 3 or not node.inputs[2]


@register("Dropout", 12, wants_output_count=True, supports=_inference_dropout)
@register("Dropout", 13, wants_output_count=True, supports=_inference_dropout)
@register("Dropout", 22, wants_output_count=True, supports=_inference_dropout)
def dropout(x, ratio=None, training_mode=None, *, seed=None, _num_outputs):
    # Inference: dropout is the identity.
    if _num_outputs > 1:
        return x, np.ones(x.shape, dtype=bool)
    return x


@register("Dropout", 7, wants_output_count=True)
@register("Dropout", 10, wants_output_count=True)
def dropout_7(x, *, ratio=0.5, _num_outputs):
    return dropout(x, _num_outputs=_num_outputs)
