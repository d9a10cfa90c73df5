"""Conv (any spatial rank, groups, strides, pads, dilations), MatMul, Gemm.

Convolution becomes one BLAS matrix product per group:
    Y[m, pos] = sum over (c, kernel offset) of W[m, c, offset] * Xpad[c, pos + offset]

For unit strides the input is zero-padded once and its spatial dims
flattened; every kernel offset is then a contiguous window of that flat
buffer, so the column matrix is built from C*K large contiguous copies (not
C*K*rows short ones), and the product runs over "padded-width" rows whose
few extra columns per row are dropped when cropping. The crop, bias add and
dtype conversion happen in one pass over the output.
"""
import itertools
import threading

import numpy as np

from ..registry import register

_workspace = threading.local()


def _scratch(shape, dtype):
    """A reusable buffer: the column matrix is tens of MiB for SD-sized convs,
    and a fresh allocation each call pays its page faults every time."""
    count = int(np.prod(shape))
    nbytes = count * np.dtype(dtype).itemsize
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = np.empty(max(nbytes, 1), dtype=np.uint8)
        _workspace.buffer = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def _compute_dtype(dtype):
    # NumPy's float16 (and ml_dtypes' bfloat16) matmul has no BLAS path and returns
    # other types: compute in float32, cast the result back.
    return np.float32 if dtype == np.float16 or dtype.name == "bfloat16" else dtype


def conv_pads(auto_pad, pads, in_dims, kernel, strides, dilations):
    """(begin pads, end pads) per spatial dim, resolving auto_pad."""
    spatial = len(in_dims)
    if auto_pad in ("", "NOTSET"):
        pads = list(pads) if pads is not None else [0] * (2 * spatial)
        return pads[:spatial], pads[spatial:]
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad={auto_pad!r} must be NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    begins, ends = [], []
    for size, k, s, d in zip(in_dims, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if auto_pad == "SAME_LOWER" else small)
        ends.append(small if auto_pad == "SAME_LOWER" else large)
    return begins, ends


def _padded(x, begins, ends, dtype):
    if not any(begins) and not any(ends) and x.dtype == dtype:
        return np.ascontiguousarray(x)
    shape = x.shape[:2] + tuple(n + b + e for n, b, e in zip(x.shape[2:], begins, ends))
    out = np.zeros(shape, dtype=dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begins, x.shape[2:]))] = x
    return out


@register("Conv", 1)
@register("Conv", 11)
@register("Conv", 22)
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"Conv: input rank {x.ndim} and weight rank {w.ndim} must be equal and >= 3")
    spatial = x.ndim - 2
    kernel = tuple(w.shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise ValueError(f"Conv: kernel_shape={list(kernel_shape)} disagrees with weight shape {w.shape}")
    strides = list(strides) if strides else [1] * spatial
    dilations = list(dilations) if dilations else [1] * spatial
    n, c = x.shape[:2]
    m = w.shape[0]
    if c % group or m % group or w.shape[1] * group != c:
        raise ValueError(f"Conv: group={group} does not fit input channels {c} and weight shape {w.shape}")
    begins, ends = conv_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    out_dims = tuple((size + bp + ep - d * (k - 1) - 1) // s + 1
                     for size, bp, ep, k, s, d in zip(x.shape[2:], begins, ends, kernel, strides, dilations))
    if any(o <= 0 for o in out_dims):
        raise ValueError(f"Conv: output spatial size {out_dims} is empty for input {x.shape}, kernel {kernel}")
    dtype = _compute_dtype(x.dtype)
    weight = w.astype(dtype, copy=False)
    bias = None if b is None else b.astype(dtype, copy=False)
    xp = _padded(x, begins, ends, dtype)

    if group == c and group == m and group > 1:
        y = _depthwise(xp, weight, out_dims, strides, dilations)
        if bias is not None:
            y += bias.reshape((1, m) + (1,) * spatial)
        return y.astype(x.dtype, copy=False)

    y = np.empty((n, m) + out_dims, dtype=dtype)
    unit = all(s == 1 for s in strides)
    for i in range(n):
        if unit:
            _conv_unit_stride(xp[i], weight, bias, group, kernel, dilations, out_dims, y[i])
        else:
            _conv_strided(xp[i], weight, bias, group, kernel, strides, dilations, out_dims, y[i])
    return y.astype(x.dtype, copy=False)


def _conv_unit_stride(xp, weight, bias, group, kernel, dilations, out_dims, y):
    """One sample, strides 1: windows of the flattened padded input."""
    c = xp.shape[0]
    m = weight.shape[0]
    padded_dims = xp.shape[1:]
    flat = xp.reshape(c, -1)
    # Element strides of the padded spatial dims (row-major).
    pstrides = [int(np.prod(padded_dims[k + 1:])) for k in range(len(padded_dims))]
    span = sum((o - 1) * ps for o, ps in zip(out_dims, pstrides)) + 1
    offsets = [sum(i * d * ps for i, d, ps in zip(index, dilations, pstrides))
               for index in itertools.product(*(range(k) for k in kernel))]
    k_count = len(offsets)
    pointwise = k_count == 1 and offsets[0] == 0 and span == flat.shape[1]
    cg, mg = c // group, m // group
    result = np.empty((m, span), dtype=y.dtype) if not pointwise else None
    for g in range(group):
        w_g = weight[g * mg:(g + 1) * mg].reshape(mg, cg * k_count)
        x_g = flat[g * cg:(g + 1) * cg]
        if pointwise:
            cols = x_g
        else:
            cols = _scratch((cg, k_count, span), y.dtype)
            for k, offset in enumerate(offsets):
                cols[:, k, :] = x_g[:, offset:offset + span]
            cols = cols.reshape(cg * k_count, span)
        if pointwise:
            np.matmul(w_g, cols, out=y[g * mg:(g + 1) * mg].reshape(mg, -1))
        else:
            np.matmul(w_g, cols, out=result[g * mg:(g + 1) * mg])
    if not pointwise:
        # View the padded-width rows as the output grid (dropping the wrap-around columns).
        itemsize = result.itemsize
        grid = np.lib.stride_tricks.as_strided(
            result, shape=(m,) + out_dims,
            strides=(result.strides[0],) + tuple(ps * itemsize for ps in pstrides), writeable=False)
        if bias is not None:
            np.add(grid, bias.reshape((m,) + (1,) * len(out_dims)), out=y)
        else:
            y[...] = grid
    elif bias is not None:
        y += bias.reshape((m,) + (1,) * len(out_dims))


def _conv_strided(xp, weight, bias, group, kernel, strides, dilations, out_dims, y):
    """One sample, any strides: one strided copy per kernel offset into the columns."""
    c = xp.shape[0]
    m = weight.shape[0]
    cg, mg = c // group, m // group
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    positions = int(np.prod(out_dims))
    cols = _scratch((c, len(offsets)) + out_dims, y.dtype)
    for k, index in enumerate(offsets):
        window = tuple(slice(i * d, i * d + s * (o - 1) + 1, s)
                       for i, d, s, o in zip(index, dilations, strides, out_dims))
        cols[(slice(None), k) + (slice(None),) * len(out_dims)] = xp[(slice(None),) + window]
    cols = cols.reshape(c, len(offsets), positions)
    out = y.reshape(m, positions)
    for g in range(group):
        w_g = weight[g * mg:(g + 1) * mg].reshape(mg, cg * len(offsets))
        np.matmul(w_g, cols[g * cg:(g + 1) * cg].reshape(cg * len(offsets), positions), out=out[g * mg:(g + 1) * mg])
    if bias is not None:
        out += bias[:, None]


def _depthwise(xp, weight, out_dims, strides, dilations):
    """One filter per channel: a multiply-accumulate per kernel offset over all
    channels at once (a matmul per channel would be C tiny products)."""
    n, c = xp.shape[:2]
    kernel = weight.shape[2:]
    y = np.zeros((n, c) + out_dims, dtype=xp.dtype)
    bshape = (1, c) + (1,) * len(out_dims)
    for index in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(i * d, i * d + s * (o - 1) + 1, s)
                       for i, d, s, o in zip(index, dilations, strides, out_dims))
        tap = weight[(slice(None), 0) + index].reshape(bshape)
        y += xp[(slice(None), slice(None)) + window] * tap
    return y


@register("MatMul", 1)
@register("MatMul", 9)
@register("MatMul", 13)
def matmul(a, b):
    dtype = _compute_dtype(a.dtype)
    return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False)).astype(a.dtype, copy=False)


@register("Gemm", 7)
@register("Gemm", 9)
@register("Gemm", 11)
@register("Gemm", 13)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    dtype = _compute_dtype(a.dtype)
    a_ = (a.T if transA else a).astype(dtype, copy=False)
    b_ = (b.T if transB else b).astype(dtype, copy=False)
    y = np.matmul(a_, b_)
    if alpha != 1.0:
        y *= np.dtype(dtype).type(alpha)
    if c is not None and beta != 0.0:
        y += (c.astype(dtype, copy=False) * np.dtype(dtype).type(beta)) if beta != 1.0 else c.astype(dtype, copy=False)
    return y.astype(a.dtype, copy=False)
