"""Resize (and the older Upsample): nearest and (multi)linear, separable per axis.

Each resized axis maps output index -> input coordinate by the node's
coordinate_transformation_mode; nearest gathers along that axis, linear
blends the two neighbours. Cubic, antialiasing, tf_crop_and_resize and the
aspect-ratio policies run through the reference fallback.
"""
import itertools

import numpy as np

from ..registry import register

_MODES = ("nearest", "linear")
_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                     "tf_half_pixel_for_nn")


def resize_supported(node):
    attrs = node.attrs
    return (attrs.get("mode", "nearest") in _MODES
            and attrs.get("coordinate_transformation_mode", "half_pixel") in _COORDINATE_MODES
            and not attrs.get("antialias", 0)
            and attrs.get("keep_aspect_ratio_policy", "stretch") == "stretch")


def _source_coordinates(out_size, in_size, scale, mode):
    x = np.arange(out_size, dtype=np.float64)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    if mode == "align_corners":
        # The spec divides by the unrounded output length, in_size * scale.
        return x * (in_size - 1) / (in_size * scale - 1) if out_size > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    # half_pixel_symmetric: half_pixel, re-centred when out_size is not exactly in_size * scale.
    adjustment = out_size / (scale * in_size)
    offset = in_size / 2 * (1 - adjustment)
    return offset + (x + 0.5) / scale - 0.5


def _nearest_index(coords, in_size, nearest_mode):
    if nearest_mode == "round_prefer_floor":
        index = np.ceil(coords - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        index = np.floor(coords + 0.5)
    elif nearest_mode == "floor":
        index = np.floor(coords)
    elif nearest_mode == "ceil":
        index = np.ceil(coords)
    else:
        raise ValueError(f"Resize nearest_mode={nearest_mode!r} is not a valid mode")
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def _resize_axis(x, axis, out_size, scale, mode, coordinate_mode, nearest_mode):
    in_size = x.shape[axis]
    coords = _source_coordinates(out_size, in_size, scale, coordinate_mode)
    if mode == "nearest":
        return np.take(x, _nearest_index(coords, in_size, nearest_mode), axis=axis)
    low = np.floor(coords)
    weight_high = coords - low
    low = low.astype(np.int64)
    low_c, high_c = np.clip(low, 0, in_size - 1), np.clip(low + 1, 0, in_size - 1)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w_high = weight_high.astype(x.dtype).reshape(shape)
    below = np.take(x, low_c, axis=axis)
    above = np.take(x, high_c, axis=axis)
    return below + (above - below) * w_high


def _resize(x, scales, sizes, axes, mode, coordinate_mode, nearest_mode):
    axes = list(range(x.ndim)) if axes is None else [a + x.ndim if a < 0 else a for a in axes]
    if sizes is not None and np.size(sizes) > 0:
        out_sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        factors = [o / x.shape[a] for o, a in zip(out_sizes, axes)]
    elif scales is not None and np.size(scales) > 0:
        factors = [float(s) for s in np.asarray(scales).reshape(-1)]
        out_sizes = [int(np.floor(x.shape[a] * f)) for a, f in zip(axes, factors)]
    else:
        raise ValueError("Resize needs scales or sizes")
    if len(factors) != len(axes):
        raise ValueError(f"Resize: {len(factors)} scales/sizes for {len(axes)} axes")
    if mode == "nearest":
        repeated = _integer_repeat(x, axes, out_sizes, factors, coordinate_mode, nearest_mode)
        if repeated is not None:
            return repeated
    work = np.float32 if (mode == "linear" and x.dtype == np.float16) else None
    y = x.astype(work) if work else x
    for axis, out_size, factor in zip(axes, out_sizes, factors):
        if out_size == y.shape[axis] and factor == 1.0:
            continue
        if mode == "linear" and not np.issubdtype(y.dtype, np.floating):
            y = y.astype(np.float32)
        y = _resize_axis(y, axis, out_size, factor, mode, coordinate_mode, nearest_mode)
    if y is x:
        return x.copy()
    if mode == "linear" and np.issubdtype(x.dtype, np.integer):
        return np.rint(y).astype(x.dtype)
    return y.astype(x.dtype, copy=False)


def _integer_repeat(x, axes, out_sizes, factors, coordinate_mode, nearest_mode):
    """Nearest upsampling by whole factors (SD's 2x upsample) where every output
    index i reads input i // r: written as prod(r) strided copies of x into the
    output viewed as (..., in, r, ...), about twice as fast as gathers per axis."""
    repeats = {}
    for axis, out_size, factor in zip(axes, out_sizes, factors):
        in_size = x.shape[axis]
        if out_size == in_size:
            continue
        if out_size % in_size:
            return None
        r = out_size // in_size
        coords = _source_coordinates(out_size, in_size, factor, coordinate_mode)
        if not np.array_equal(_nearest_index(coords, in_size, nearest_mode), np.arange(out_size) // r):
            return None
        repeats[axis] = r
    if not repeats:
        return None
    view_shape = []
    for axis, size in enumerate(x.shape):
        view_shape += [size, repeats[axis]] if axis in repeats else [size]
    y = np.empty([size * repeats.get(axis, 1) for axis, size in enumerate(x.shape)], dtype=x.dtype)
    view = y.reshape(view_shape)
    source = x.reshape([d for axis, size in enumerate(x.shape) for d in ((size, 1) if axis in repeats else (size,))])
    for offsets in itertools.product(*(range(repeats[axis]) for axis in sorted(repeats))):
        index, position = [], iter(offsets)
        for axis in range(x.ndim):
            index += [slice(None), slice(next(position), None, repeats[axis])] if axis in repeats else [slice(None)]
        view[tuple(index)] = source
    return y


@register("Resize", 11, supports=resize_supported)
@register("Resize", 13, supports=resize_supported)
@register("Resize", 18, supports=resize_supported)
@register("Resize", 19, supports=resize_supported)
def resize(x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None, coordinate_transformation_mode="half_pixel",
           cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
           mode="nearest", nearest_mode="round_prefer_floor"):
    return _resize(x, scales, sizes, axes, mode, coordinate_transformation_mode, nearest_mode)


@register("Resize", 10, supports=lambda node: node.attrs.get("mode", "nearest") in _MODES)
@register("Upsample", 9, supports=lambda node: node.attrs.get("mode", "nearest") in _MODES)
def resize_10(x, scales, *, mode="nearest"):
    # Opset 10 Resize and Upsample: input coordinate = output / scale, nearest rounds down.
    return _resize(x, scales, None, None, mode, "asymmetric", "floor")
