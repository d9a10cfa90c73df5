"""Shape plumbing: constants, reshapes, slicing, gathering, concatenation.

These ops move or view data and compute nothing; where NumPy can return a
view they do (ops never write into their inputs, so views are safe).
"""
import numpy as np

from ..graph import Node, constant_node_value
from ..registry import register


def _ints(array):
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _axis(axis, rank, what="axis"):
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"{what}={axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


@register("Constant", 1)
@register("Constant", 9)
@register("Constant", 11)
@register("Constant", 12)
@register("Constant", 13)
@register("Constant", 19)
@register("Constant", 21)
def constant(**attrs):
    value = constant_node_value(Node("Constant", [], [], attrs))
    if value is None:
        raise ValueError(f"Constant needs one value attribute, got {sorted(attrs)}")
    return value


@register("Shape", 1)
@register("Shape", 13)
@register("Shape", 15)
@register("Shape", 19)
@register("Shape", 21)
def shape(x, *, start=0, end=None):
    dims = np.array(x.shape, dtype=np.int64)
    return dims[start:end] if end is not None else dims[start:]


@register("Size", 1)
@register("Size", 13)
@register("Size", 19)
@register("Size", 21)
def size(x):
    return np.array(x.size, dtype=np.int64)


@register("Reshape", 5)
@register("Reshape", 13)
@register("Reshape", 14)
@register("Reshape", 19)
@register("Reshape", 21)
def reshape(x, new_shape, *, allowzero=0):
    dims = _ints(new_shape)
    if not allowzero:
        # 0 copies the input's dimension at that index.
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Flatten", 1)
@register("Flatten", 9)
@register("Flatten", 11)
@register("Flatten", 13)
@register("Flatten", 21)
def flatten(x, *, axis=1):
    axis = axis + x.ndim if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, -1) if x.size else x.reshape(outer, int(np.prod(x.shape[axis:], dtype=np.int64)))


@register("Transpose", 1)
@register("Transpose", 13)
@register("Transpose", 21)
def transpose(x, *, perm=None):
    return np.transpose(x, perm if perm is not None else None)


@register("Squeeze", 1)
@register("Squeeze", 11)
def squeeze_attr(x, *, axes=None):
    return squeeze(x, None if axes is None else np.array(axes))


@register("Squeeze", 13)
@register("Squeeze", 21)
def squeeze(x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in _ints(axes)))


@register("Unsqueeze", 1)
@register("Unsqueeze", 11)
def unsqueeze_attr(x, *, axes):
    return unsqueeze(x, np.array(axes))


@register("Unsqueeze", 13)
@register("Unsqueeze", 21)
def unsqueeze(x, axes):
    rank = x.ndim + len(_ints(axes))
    positions = sorted(_axis(a, rank) for a in _ints(axes))
    return x.reshape(_insert_ones(x.shape, positions))


def _insert_ones(shape, positions):
    dims = list(shape)
    for p in positions:
        dims.insert(p, 1)
    return dims


@register("Concat", 4)
@register("Concat", 11)
@register("Concat", 13)
def concat(*inputs, axis):
    return np.concatenate(inputs, axis=axis)


@register("Split", 2, wants_output_count=True)
def split_2(x, *, axis=0, split=None, _num_outputs):
    return split_13(x, None if split is None else np.array(split), axis=axis, _num_outputs=_num_outputs)


@register("Split", 11, wants_output_count=True)
def split_11(x, *, axis=0, split=None, _num_outputs):
    return split_13(x, None if split is None else np.array(split), axis=axis, _num_outputs=_num_outputs)


@register("Split", 13, wants_output_count=True)
def split_13(x, split=None, *, axis=0, _num_outputs):
    axis = _axis(axis, x.ndim)
    if split is None:
        if x.shape[axis] % _num_outputs:
            raise ValueError(f"Split: axis {axis} of size {x.shape[axis]} does not divide into {_num_outputs} outputs")
        return tuple(np.split(x, _num_outputs, axis=axis))
    sizes = _ints(split)
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"Split: sizes {sizes} sum to {sum(sizes)}, axis {axis} has {x.shape[axis]}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@register("Split", 18, wants_output_count=True)
def split_18(x, split=None, *, axis=0, num_outputs=None, _num_outputs):
    if split is None and num_outputs is not None:
        axis_n = _axis(axis, x.ndim)
        chunk = -(-x.shape[axis_n] // num_outputs)  # ceil: the last chunk takes the remainder
        bounds = list(range(chunk, x.shape[axis_n], chunk))
        return tuple(np.split(x, bounds, axis=axis_n))
    return split_13(x, split, axis=axis, _num_outputs=_num_outputs)


@register("Slice", 1)
def slice_1(x, *, starts, ends, axes=None):
    return slice_(x, np.array(starts), np.array(ends), None if axes is None else np.array(axes))


@register("Slice", 10)
@register("Slice", 11)
@register("Slice", 13)
def slice_(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [_axis(a, x.ndim) for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ValueError("Slice: steps must not be 0")
        # Python slices clamp out-of-range bounds (INT64_MAX = to the end) exactly as the spec asks.
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@register("Gather", 1)
@register("Gather", 11)
@register("Gather", 13)
def gather(x, indices, *, axis=0):
    axis = _axis(axis, x.ndim)
    return np.take(x, _wrapped_indices(indices, x.shape[axis]), axis=axis)


@register("GatherElements", 11)
@register("GatherElements", 13)
def gather_elements(x, indices, *, axis=0):
    axis = _axis(axis, x.ndim)
    return np.take_along_axis(x, _wrapped_indices(indices, x.shape[axis]), axis=axis)


def _wrapped_indices(indices, size):
    """ONNX indices may count back from the end (-1 = last)."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.where(idx < 0, idx + size, idx)


@register("Expand", 8)
@register("Expand", 13)
def expand(x, new_shape):
    dims = _ints(new_shape)
    # ONNX broadcasting is bidirectional: a 1 in the target keeps the input's size.
    target = np.broadcast_shapes(x.shape, tuple(dims))
    return np.broadcast_to(x, target)


@register("Tile", 6)
@register("Tile", 13)
def tile(x, repeats):
    return np.tile(x, _ints(repeats))


@register("ConstantOfShape", 9)
@register("ConstantOfShape", 20)
@register("ConstantOfShape", 21)
def constant_of_shape(new_shape, *, value=None):
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(_ints(new_shape), fill[0], dtype=fill.dtype)


@register("Range", 11)
def range_(start, limit, delta):
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype, copy=False)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@register("Pad", 2)
def pad_2(x, *, pads, mode="constant", value=0.0):
    return pad(x, np.array(pads), np.array(value, dtype=x.dtype), mode=mode)


@register("Pad", 11)
@register("Pad", 13)
@register("Pad", 18)
@register("Pad", 19)
@register("Pad", 21)
def pad(x, pads, constant_value=None, axes=None, *, mode="constant"):
    if mode not in _PAD_MODES:
        raise ValueError(f"Pad mode={mode!r} must be one of {sorted(_PAD_MODES)}")
    amounts = _ints(pads)
    axes = list(range(x.ndim)) if axes is None else [_axis(a, x.ndim) for a in _ints(axes)]
    if len(amounts) != 2 * len(axes):
        raise ValueError(f"Pad: {len(amounts)} pads given for {len(axes)} axes (need 2 per axis)")
    begins, ends = amounts[:len(axes)], amounts[len(axes):]
    # Negative pads crop: crop first, then pad with the non-negative remainder.
    index = [slice(None)] * x.ndim
    widths = [(0, 0)] * x.ndim
    for axis, b, e in zip(axes, begins, ends):
        index[axis] = slice(max(-b, 0), x.shape[axis] - max(-e, 0))
        widths[axis] = (max(b, 0), max(e, 0))
    cropped = x[tuple(index)]
    if mode == "constant":
        fill = 0 if constant_value is None or np.size(constant_value) == 0 else np.asarray(constant_value).reshape(-1)[0]
        return np.pad(cropped, widths, mode="constant", constant_values=fill)
    return np.pad(cropped, widths, mode=_PAD_MODES[mode])


@register("CumSum", 11)
@register("CumSum", 14)
def cumsum(x, axis, *, exclusive=0, reverse=0):
    axis = _axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    data = np.flip(x, axis) if reverse else x
    out = np.cumsum(data, axis=axis, dtype=x.dtype)
    if exclusive:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                              np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(out, axis) if reverse else out


@register("NonZero", 9)
@register("NonZero", 13)
def non_zero(x):
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@register("Trilu", 14)
def trilu(x, k=None, *, upper=1):
    offset = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(x, offset) if upper else np.tril(x, offset)


@register("DepthToSpace", 13)
def depth_to_space(x, *, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


@register("SpaceToDepth", 13)
def space_to_depth(x, *, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    order = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    t = x.reshape(n, c, h // b, b, w // b, b).transpose(order)
    return t.reshape(n, c * b * b, h // b, w // b)


@register("ScatterND", 11)
@register("ScatterND", 13)
@register("ScatterND", 16)
@register("ScatterND", 18)
def scatter_nd(x, indices, updates, *, reduction="none"):
    out = x.copy()
    idx = np.asarray(indices, dtype=np.int64)
    flat_idx = idx.reshape(-1, idx.shape[-1])
    flat_updates = updates.reshape((flat_idx.shape[0],) + updates.shape[idx.ndim - 1:])
    combine = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
    if reduction not in combine:
        raise ValueError(f"ScatterND reduction={reduction!r} must be one of {sorted(combine)}")
    for position, update in zip(flat_idx, flat_updates):
        key = tuple(position)
        out[key] = update if combine[reduction] is None else combine[reduction](out[key], update)
    return out
