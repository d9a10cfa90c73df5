"""The float64 NumPy oracle for Group Normalization.

Slow, simple and exact to float64 rounding: every fast path in gncpu (CPU
kernels, ONNX ops, CUDA kernels) is tested against this. Users may call it to
check gncpu on their own data.

    y = (x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c

with mean_g and var_g (biased) over the C/G channels and all spatial
positions of each (sample, group).
"""
import math

import numpy as np

__all__ = ["group_norm", "apply_activation", "ACTIVATIONS"]


def _gelu_erf(y):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * y * (1.0 + erf(y / math.sqrt(2.0)))


def _gelu_tanh(y):
    return 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))


def _silu(y):
    # y * sigmoid(y); the exp is taken of -|y| so it never overflows.
    e = np.exp(-np.abs(y))
    sig = np.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return y * sig


def _relu(y):
    # NaN stays NaN (np.maximum propagates it), as in torch.relu.
    return np.maximum(y, 0.0)


ACTIVATIONS = {
    None: lambda y: y,
    "silu": _silu,
    "relu": _relu,
    "gelu": _gelu_erf,
    "gelu_tanh": _gelu_tanh,
}


def apply_activation(y, name):
    """Apply the activation `name` (None, 'silu', 'relu', 'gelu', 'gelu_tanh') in float64."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {sorted(k for k in ACTIVATIONS if k)} or None")
    with np.errstate(all="ignore"):
        return ACTIVATIONS[name](np.asarray(y, dtype=np.float64))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *,
               activation=None, skip=None, skip_bias=None, channels_last=False,
               return_sum=False):
    """Float64 Group Normalization of `input` shaped (N, C, *spatial).

    channels_last=True takes (N, *spatial, C). skip (same shape as input) and
    skip_bias (shape (C,)) are added to the input first (onnxruntime's
    SkipGroupNorm); with return_sum=True the pair (y, input + skip + skip_bias)
    is returned. The sum is rounded to the precision gncpu computes it in
    (float32 for float16/float32 inputs, as onnxruntime forms it) after each
    addition, and that rounded sum is what gets normalized. activation is
    applied after the affine. Always returns float64.
    """
    in_dtype = np.asarray(input).dtype
    sum_dtype = np.float64 if in_dtype == np.float64 else np.float32
    x = np.array(input, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"input must have rank >= 2, got shape {x.shape}")
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    n, c = x.shape[:2]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"num_groups={num_groups} must be positive and divide C={c}")
    bshape = (1, c) + (1,) * (x.ndim - 2)
    if skip is not None:
        s = np.array(skip, dtype=np.float64)
        x = (x + (np.moveaxis(s, -1, 1) if channels_last else s)).astype(sum_dtype).astype(np.float64)
    if skip_bias is not None:
        sb = np.asarray(skip_bias, dtype=sum_dtype).astype(np.float64).reshape(bshape)
        x = (x + sb).astype(sum_dtype).astype(np.float64)
    summed = x
    if x.size == 0:
        y = np.empty(x.shape, np.float64)
        if channels_last:
            y, summed = np.moveaxis(y, 1, -1), np.moveaxis(summed, 1, -1)
        return (y, summed) if return_sum else y
    with np.errstate(all="ignore"):
        g = x.reshape(n, num_groups, -1)
        mean = g.mean(axis=2, keepdims=True)
        var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
        y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
        if weight is not None:
            y = y * np.asarray(weight, dtype=np.float64).reshape(bshape)
        if bias is not None:
            y = y + np.asarray(bias, dtype=np.float64).reshape(bshape)
    y = apply_activation(y, activation)
    if channels_last:
        y = np.moveaxis(y, 1, -1)
        summed = np.moveaxis(summed, 1, -1)
    return (y, summed) if return_sum else y
