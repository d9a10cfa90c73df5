"""MaxPool, AveragePool (any spatial rank, pads, strides, dilations, ceil_mode)
and the global pools.

A pool is a reduction over kernel offsets: for each offset, one strided view
of the padded input covers every output position, so the loop runs over the
(few) kernel taps, not over the (many) outputs.
"""
import itertools

import numpy as np

from ..registry import register
from .conv import conv_pads


def _pool_geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
    spatial = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides) if strides else [1] * spatial
    dilations = list(dilations) if dilations else [1] * spatial
    begins, ends = conv_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    out_dims, extra = [], []
    for size, b, e, k, s, d in zip(x.shape[2:], begins, ends, kernel, strides, dilations):
        span = size + b + e - d * (k - 1) - 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // s)
        elif ceil_mode:
            out = -(-span // s) + 1
            # A window starting entirely in the end padding is dropped (as in PyTorch and the spec's reference).
            if (out - 1) * s >= size + b:
                out -= 1
        else:
            out = span // s + 1
        out_dims.append(out)
        extra.append(max((out - 1) * s + d * (k - 1) + 1 - (size + b + e), 0))
    return kernel, strides, dilations, begins, ends, out_dims, extra


def _windows(padded, kernel, strides, dilations, out_dims):
    for index in itertools.product(*(range(k) for k in kernel)):
        yield padded[(slice(None), slice(None)) + tuple(
            slice(i * d, i * d + s * (o - 1) + 1, s) for i, d, s, o in zip(index, dilations, strides, out_dims))]


def _pad_to(x, begins, ends, extra, fill):
    widths = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(begins, ends, extra)]
    if not any(b or e for b, e in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=fill)


def maxpool_supported(node):
    # The Indices output (argmax positions) is rarely used by exported models.
    return len([o for o in node.outputs if o]) == 1 and node.attrs.get("storage_order", 0) == 0


@register("MaxPool", 1, supports=maxpool_supported)
@register("MaxPool", 8, supports=maxpool_supported)
@register("MaxPool", 10, supports=maxpool_supported)
@register("MaxPool", 11, supports=maxpool_supported)
@register("MaxPool", 12, supports=maxpool_supported)
@register("MaxPool", 22, supports=maxpool_supported)
def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None, storage_order=0,
             strides=None):
    kernel, strides, dilations, begins, ends, out_dims, extra = _pool_geometry(
        x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    fill = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    padded = _pad_to(x, begins, ends, extra, fill)
    result = None
    for window in _windows(padded, kernel, strides, dilations, out_dims):
        result = window.copy() if result is None else np.maximum(result, window, out=result)
    return result


@register("AveragePool", 1)
@register("AveragePool", 7)
@register("AveragePool", 10)
@register("AveragePool", 11)
@register("AveragePool", 19)
@register("AveragePool", 22)
def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape, pads=None,
                 strides=None):
    kernel, strides, dilations, begins, ends, out_dims, extra = _pool_geometry(
        x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    work = np.float32 if x.dtype == np.float16 else x.dtype
    padded = _pad_to(x.astype(work, copy=False), begins, ends, extra, 0)
    total = np.zeros(x.shape[:2] + tuple(out_dims), dtype=work)
    for window in _windows(padded, kernel, strides, dilations, out_dims):
        total += window
    # Divisor per output position: count the taps on real data (plus the declared pads
    # when count_include_pad); the ceil_mode overhang never counts.
    ones = np.ones((1, 1) + x.shape[2:], dtype=work)
    if count_include_pad:
        mask = _pad_to(_pad_to(ones, begins, ends, [0] * len(extra), 1), [0] * len(begins), [0] * len(ends), extra, 0)
    else:
        mask = _pad_to(ones, begins, ends, extra, 0)
    count = np.zeros((1, 1) + tuple(out_dims), dtype=work)
    for window in _windows(mask, kernel, strides, dilations, out_dims):
        count += window
    return (total / np.maximum(count, 1)).astype(x.dtype, copy=False)


@register("GlobalAveragePool", 1)
@register("GlobalAveragePool", 22)
def global_average_pool(x):
    work = np.float32 if x.dtype == np.float16 else None
    return np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, dtype=work).astype(x.dtype, copy=False)


@register("GlobalMaxPool", 1)
@register("GlobalMaxPool", 22)
def global_max_pool(x):
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)
