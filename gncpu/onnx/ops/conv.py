"""Conv (any spatial rank, groups, strides, pads, dilations), MatMul, Gemm.

Convolution becomes one BLAS matrix product per group:
    Y[m, pos] = sum over (c, kernel offset) of W[m, c, offset] * Xpad[c, pos + offset]

The input is zero-padded once and its spatial dims flattened; every kernel
offset is then a contiguous window of that flat buffer, so the column matrix
is built from C*K large contiguous copies (not C*K*rows short ones), and the
product runs over "padded-width" rows whose few extra columns per row are
dropped when cropping. Strided convs first split the input into stride-phase
planes (space-to-depth), which makes each tap a unit-stride window again.
The crop and bias add happen in one pass over the output. 3x3 stride-1 convs
with many channels use Winograd F(2x2, 3x3) instead (winograd.py).
"""
import itertools
import threading

import numpy as np

from ...kernel import kernels
from ..registry import register
from .derived import as_dtype
from .parallel import run_tasks, split_count
from .winograd import conv3x3_winograd, winograd_applies

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


class _ConvGeometry:
    """What a Conv call with given shapes and attributes does, worked out once."""
    __slots__ = ("spatial", "kernel", "strides", "dilations", "begins", "ends", "out_dims", "dtype", "path",
                 "small")


# (shapes, dtype, attributes) -> _ConvGeometry: a run then skips the validation and
# pad/size arithmetic (tens of microseconds of Python, more than a small conv's math).
_geometries = {}
_MAX_GEOMETRIES = 1024


@register("Conv", 1)
@register("Conv", 11)
@register("Conv", 22)
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    key = (x.shape, w.shape, x.dtype, group, auto_pad, dilations and tuple(dilations),
           kernel_shape and tuple(kernel_shape), pads and tuple(pads), strides and tuple(strides))
    geo = _geometries.get(key)
    if geo is None:
        geo = _conv_geometry(x, w, auto_pad, dilations, group, kernel_shape, pads, strides)
        if len(_geometries) >= _MAX_GEOMETRIES:
            _geometries.clear()
        _geometries[key] = geo
    dtype = geo.dtype
    weight = as_dtype(w, dtype)
    bias = as_dtype(b, dtype)
    n, m = x.shape[0], w.shape[0]
    if geo.path == "small":
        y = _conv_small(x, weight, bias, group, geo)
        return y if y.dtype == x.dtype else y.astype(x.dtype)
    xp = _padded(x, geo.begins, geo.ends, dtype)
    if geo.path == "depthwise":
        y = _depthwise(xp, weight, geo.out_dims, geo.strides, geo.dilations)
        if bias is not None:
            y += bias.reshape((1, m) + (1,) * geo.spatial)
        return y.astype(x.dtype, copy=False)
    y = np.empty((n, m) + geo.out_dims, dtype=dtype)
    for i in range(n):
        if geo.path == "winograd":
            conv3x3_winograd(xp[i], weight, bias, geo.out_dims, y[i])
        else:
            _conv_windows(xp[i], weight, bias, group, geo.kernel, geo.strides, geo.dilations, geo.out_dims, y[i])
    return y.astype(x.dtype, copy=False)


def _conv_geometry(x, w, auto_pad, dilations, group, kernel_shape, pads, strides):
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"Conv: input rank {x.ndim} and weight rank {w.ndim} must be equal and >= 3")
    geo = _ConvGeometry()
    geo.spatial = spatial = x.ndim - 2
    geo.kernel = kernel = tuple(w.shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise ValueError(f"Conv: kernel_shape={list(kernel_shape)} disagrees with weight shape {w.shape}")
    geo.strides = list(strides) if strides else [1] * spatial
    geo.dilations = list(dilations) if dilations else [1] * spatial
    c, m = x.shape[1], w.shape[0]
    if c % group or m % group or w.shape[1] * group != c:
        raise ValueError(f"Conv: group={group} does not fit input channels {c} and weight shape {w.shape}")
    geo.begins, geo.ends = conv_pads(auto_pad, pads, x.shape[2:], kernel, geo.strides, geo.dilations)
    geo.out_dims = tuple((size + bp + ep - d * (k - 1) - 1) // s + 1 for size, bp, ep, k, s, d
                         in zip(x.shape[2:], geo.begins, geo.ends, kernel, geo.strides, geo.dilations))
    if any(o <= 0 for o in geo.out_dims):
        raise ValueError(f"Conv: output spatial size {geo.out_dims} is empty for input {x.shape}, kernel {kernel}")
    geo.dtype = _compute_dtype(x.dtype)
    macs = m * (c // group) * int(np.prod(kernel)) * int(np.prod(geo.out_dims))
    if group == c and group == m and group > 1:
        geo.path = "depthwise"
    elif spatial <= 2 and macs <= _SMALL_CONV_MACS:
        geo.path = "small"
        geo.small = _small_geometry(x, w, group, geo)
    elif winograd_applies(x, w, group, geo.strides, geo.dilations, geo.out_dims):
        geo.path = "winograd"
    else:
        geo.path = "windows"
    return geo


# Per sample, a conv this small runs as one im2col (compiled) and one matmul per
# group on the calling thread: below two threads' worth of work (see
# _MIN_MACS_PER_THREAD) the blocked path would run one block on one thread too,
# after tens of microseconds of NumPy calls building padded and phase planes.
# Which path runs depends on the shape alone, so results stay the same for
# every thread count.
_SMALL_CONV_MACS = 1 << 22


def _small_geometry(x, w, group, geo):
    """The im2col arguments of a 1-D or 2-D conv, as a 2-D one (height 1 for 1-D)."""
    def as_2d(dims, fill=1):
        return ((fill,) if geo.spatial == 1 else ()) + tuple(int(d) for d in dims)

    c, m = x.shape[1], w.shape[0]
    (kh, kw), (oh, ow) = as_2d(geo.kernel), as_2d(geo.out_dims)
    im2col = as_2d(geo.kernel) + as_2d(geo.strides) + as_2d(geo.dilations) + as_2d(geo.begins, 0) + (oh, ow)
    return (as_2d(x.shape[2:]), im2col, (c * kh * kw, oh * ow), c // group * kh * kw, m // group)


def _conv_small(x, weight, bias, group, geo):
    """1-D and 2-D convs: columns straight from the unpadded input (the kernel
    zero-fills what falls in the pads), then W_g @ columns into y."""
    (in_h, in_w), im2col, cols_shape, depth, mg = geo.small
    n, c, m = x.shape[0], x.shape[1], weight.shape[0]
    src = x.reshape(n, c, in_h, in_w)
    if src.dtype != geo.dtype or not src.flags.c_contiguous:
        src = np.ascontiguousarray(src, dtype=geo.dtype)
    cols = np.empty(cols_shape, geo.dtype)
    y = np.empty((n, m) + geo.out_dims, dtype=geo.dtype)
    out = y.reshape(n, group, mg, cols_shape[1])
    w_groups = weight.reshape(group, mg, depth)
    for i in range(n):
        kernels.im2col_2d(src[i], cols, *im2col)
        for g in range(group):
            np.matmul(w_groups[g], cols[g * depth:(g + 1) * depth], out=out[i, g])
    if bias is not None:
        out += bias.reshape(group, mg, 1)
    return y


# Work is cut into blocks whose bounds depend only on the problem's shape, never on
# the thread count, so every output element comes from the same BLAS call (same
# operand shapes, same kernel, same summation order) whether 1 or 8 threads run
# the blocks: results are bit-identical for every thread count and under
# concurrent runs. Blocks hold about this many multiply-adds (~0.2-0.4 ms on one
# core): enough to amortize the ~10 NumPy calls a block costs, small enough that
# 2-8 threads get several blocks each.
_MACS_PER_BLOCK = 1 << 23
_MIN_BLOCK_COLUMNS = 256
# Below ~2M multiply-adds per thread (~0.1 ms) handing work to a thread costs more than it saves.
_MIN_MACS_PER_THREAD = 1 << 21


# Column-matrix bytes per block: a 128-channel 3x3 conv at 512x512 would otherwise
# build a 1.2 GiB matrix in one piece.
_MAX_BLOCK_BYTES = 32 << 20


def fixed_blocks(total, macs_per_unit, align, min_units, max_units=None):
    """[(start, stop), ...] over range(total): about _MACS_PER_BLOCK multiply-adds
    per block, between `min_units` and `max_units` units, `align`-aligned.
    Depends on the shape alone (see above)."""
    units = max(min_units, _MACS_PER_BLOCK // max(int(macs_per_unit), 1))
    if max_units is not None:
        units = min(units, max_units)
    units = max(align, -(-units // align) * align)
    return [(start, min(start + units, total)) for start in range(0, total, units)]


def _column_blocks(columns, rows_times_depth, depth, itemsize):
    """Column ranges for the products and the thread count to run them on."""
    threads = split_count(columns * rows_times_depth, _MIN_MACS_PER_THREAD)
    by_memory = _MAX_BLOCK_BYTES // max(depth * itemsize, 1) // 16 * 16
    return fixed_blocks(columns, rows_times_depth, 16, _MIN_BLOCK_COLUMNS, by_memory), threads


def _phase_planes(xp, strides):
    """Split a padded sample (C, *P) into prod(strides) phase planes
    (phases, C, *Q), Q = ceil(P / stride): plane r holds xp[:, r + stride * q].
    A strided convolution is then, per kernel tap, a unit-stride window of one
    plane, so the columns are built from contiguous copies as for stride 1."""
    if all(s == 1 for s in strides):
        return xp[None], (0,)
    c, padded = xp.shape[0], xp.shape[1:]
    plane_dims = tuple(-(-p // s) for p, s in zip(padded, strides))
    phases = list(itertools.product(*(range(s) for s in strides)))
    planes = np.zeros((len(phases), c) + plane_dims, dtype=xp.dtype)
    for index, phase in enumerate(phases):
        source = xp[(slice(None),) + tuple(slice(r, None, s) for r, s in zip(phase, strides))]
        planes[(index, slice(None)) + tuple(slice(0, n) for n in source.shape[1:])] = source
    return planes, phases


def _conv_windows(xp, weight, bias, group, kernel, strides, dilations, out_dims, y):
    """One sample: columns from contiguous windows of the flattened (phase
    planes of the) padded input, one matmul per group and column block."""
    c = xp.shape[0]
    m = weight.shape[0]
    planes, phases = _phase_planes(xp, strides)
    plane_dims = planes.shape[2:]
    flat = planes.reshape(len(phases), c, -1)
    # Element strides of a plane's spatial dims (row-major).
    qstrides = [int(np.prod(plane_dims[k + 1:])) for k in range(len(plane_dims))]
    span = sum((o - 1) * qs for o, qs in zip(out_dims, qstrides)) + 1
    taps = []
    for index in itertools.product(*(range(k) for k in kernel)):
        shifted = [i * d for i, d in zip(index, dilations)]
        phase = tuple(t % s for t, s in zip(shifted, strides))
        offset = sum((t // s) * qs for t, s, qs in zip(shifted, strides, qstrides))
        taps.append((phases.index(phase) if len(phases) > 1 else 0, offset))
    k_count = len(taps)
    pointwise = k_count == 1 and taps[0][1] == 0 and span == flat.shape[2]
    cg, mg = c // group, m // group
    result = y.reshape(m, -1) if pointwise else np.empty((m, span), dtype=y.dtype)
    blocks, threads = _column_blocks(span, m * cg * k_count, 0 if pointwise else cg * k_count, y.itemsize)
    w_groups = [weight[g * mg:(g + 1) * mg].reshape(mg, cg * k_count) for g in range(group)]

    def block_task(g, start, stop):
        def task():
            out = result[g * mg:(g + 1) * mg, start:stop]
            if pointwise:
                np.matmul(w_groups[g], flat[taps[0][0], g * cg:(g + 1) * cg, start:stop], out=out)
                return
            cols = _scratch((cg, k_count, stop - start), y.dtype)
            for k, (plane, offset) in enumerate(taps):
                cols[:, k, :] = flat[plane, g * cg:(g + 1) * cg, offset + start:offset + stop]
            np.matmul(w_groups[g], cols.reshape(cg * k_count, stop - start), out=out)
        return task

    run_tasks([block_task(g, start, stop) for g in range(group) for start, stop in blocks], threads)
    if not pointwise:
        # View the plane-width rows as the output grid (dropping the wrap-around columns).
        itemsize = result.itemsize
        grid = np.lib.stride_tricks.as_strided(
            result, shape=(m,) + out_dims,
            strides=(result.strides[0],) + tuple(qs * itemsize for qs in qstrides), writeable=False)
        if bias is not None:
            np.add(grid, bias.reshape((m,) + (1,) * len(out_dims)), out=y)
        else:
            y[...] = grid
    elif bias is not None:
        y += bias.reshape((m,) + (1,) * len(out_dims))


def _depthwise(xp, weight, out_dims, strides, dilations):
    """One filter per channel: a multiply-accumulate per kernel tap over a
    block of channels (a matmul per channel would be C tiny products). Blocks
    are sized to stay in L2 across the taps; with unit strides each tap is a
    contiguous window of the flattened padded input (as in _conv_windows)."""
    n, c = xp.shape[:2]
    kernel = weight.shape[2:]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    unit = all(s == 1 for s in strides)
    padded_dims = xp.shape[2:]
    pstrides = [int(np.prod(padded_dims[k + 1:])) for k in range(len(padded_dims))]
    span = sum((o - 1) * ps for o, ps in zip(out_dims, pstrides)) + 1
    plane = span if unit else int(np.prod(out_dims))
    y = np.empty((n, c) + out_dims, dtype=xp.dtype)
    threads = split_count(n * c * plane * len(taps), 1 << 18)
    block = max(1, min(c, (192 << 10) // max(plane * xp.itemsize, 1)))
    flat = xp.reshape(n, c, -1)
    itemsize = xp.itemsize

    def block_task(i, c0, c1):
        def task():
            acc = np.zeros((c1 - c0, plane), dtype=xp.dtype)
            product = np.empty_like(acc)
            for index in taps:
                tap = weight[(slice(c0, c1), 0) + index].reshape(c1 - c0, 1)
                if unit:
                    offset = sum(t * d * ps for t, d, ps in zip(index, dilations, pstrides))
                    source = flat[i, c0:c1, offset:offset + span]
                else:
                    window = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                                   for t, d, s, o in zip(index, dilations, strides, out_dims))
                    source = xp[(i, slice(c0, c1)) + window].reshape(c1 - c0, plane)
                np.multiply(source, tap, out=product)
                acc += product
            if unit:
                acc = np.lib.stride_tricks.as_strided(
                    acc, shape=(c1 - c0,) + out_dims,
                    strides=(acc.strides[0],) + tuple(ps * itemsize for ps in pstrides), writeable=False)
            y[i, c0:c1] = acc.reshape((c1 - c0,) + out_dims)
        return task

    tasks = [block_task(i, c0, min(c0 + block, c)) for i in range(n) for c0 in range(0, c, block)]
    run_tasks(tasks, threads)
    return y


def parallel_matmul(a, b):
    """np.matmul(a, b), split over rows of `a` (or over the batch) on the op threads."""
    if a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b)
    rows, depth = a.shape[-2], a.shape[-1]
    batch_a, batch_b = a.shape[:-2], b.shape[:-2]
    total = int(np.prod(batch_a, dtype=np.int64)) * rows * depth * b.shape[-1]
    if total <= _MACS_PER_BLOCK:
        # One block whatever the split below (each holds ~_MACS_PER_BLOCK): the same
        # single product it would run, without building tasks.
        if b.ndim == 2:
            return np.matmul(a.reshape(-1, depth), b).reshape(a.shape[:-1] + (b.shape[1],))
        batch = np.broadcast_shapes(batch_a, batch_b)
        a_full = np.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
        b_full = np.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
        return np.matmul(a_full, b_full).reshape(batch + (rows, b.shape[-1]))
    threads = split_count(total, _MIN_MACS_PER_THREAD)
    if b.ndim == 2:
        flat_a = a.reshape(-1, depth)
        out = np.empty((flat_a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
        # Each block's product packs its own panels: split the larger side so that the
        # shared operand (packed once per block) is the smaller one. Bounds are fixed by
        # the shapes alone (see _MACS_PER_BLOCK).
        if flat_a.shape[0] >= b.shape[1]:
            blocks = fixed_blocks(flat_a.shape[0], depth * b.shape[1], 8, 64)
            tasks = [lambda r0=r0, r1=r1: np.matmul(flat_a[r0:r1], b, out=out[r0:r1]) for r0, r1 in blocks]
        else:
            blocks = fixed_blocks(b.shape[1], depth * flat_a.shape[0], 16, 256)
            tasks = [lambda c0=c0, c1=c1: np.matmul(flat_a, b[:, c0:c1], out=out[:, c0:c1]) for c0, c1 in blocks]
        run_tasks(tasks, threads)
        return out.reshape(a.shape[:-1] + (b.shape[1],))
    batch = np.broadcast_shapes(batch_a, batch_b)
    a_full = np.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b_full = np.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    out = np.empty((a_full.shape[0], rows, b.shape[-1]), dtype=np.result_type(a, b))
    # One product per batch item, each whole: a batched matmul's items never share a
    # reduction, so how items are grouped into tasks cannot change any result.
    per_item = rows * depth * b.shape[-1]
    items = fixed_blocks(a_full.shape[0], per_item, 1, 1)
    tasks = [lambda i0=i0, i1=i1: np.matmul(a_full[i0:i1], b_full[i0:i1], out=out[i0:i1]) for i0, i1 in items]
    run_tasks(tasks, threads)
    return out.reshape(batch + (rows, b.shape[-1]))


@register("MatMul", 1)
@register("MatMul", 9)
@register("MatMul", 13)
def matmul(a, b):
    dtype = _compute_dtype(a.dtype)
    return parallel_matmul(as_dtype(a, dtype), as_dtype(b, dtype)).astype(a.dtype, copy=False)


@register("Gemm", 7)
@register("Gemm", 9)
@register("Gemm", 11)
@register("Gemm", 13)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    dtype = np.dtype(_compute_dtype(a.dtype))
    a_ = as_dtype(a, dtype).T if transA else as_dtype(a, dtype)
    b_ = as_dtype(b, dtype).T if transB else as_dtype(b, dtype)
    y = parallel_matmul(a_, b_)
    if alpha != 1.0:
        y *= dtype.type(alpha)
    if c is not None and beta != 0.0:
        c_ = as_dtype(c, dtype)
        y += c_ * dtype.type(beta) if beta != 1.0 else c_
    return y.astype(a.dtype, copy=False)


def conv_transpose_geometry(in_dims, kernel, strides, dilations, pads, output_padding, output_shape, auto_pad):
    """(pad_begin, out_size) per spatial dim, per the ConvTranspose spec."""
    spatial = len(in_dims)
    natural = [s * (n - 1) + (k - 1) * d + 1 for n, k, s, d in zip(in_dims, kernel, strides, dilations)]
    output_padding = list(output_padding) if output_padding else [0] * spatial
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            target = list(output_shape)[-spatial:]
        else:
            target = [n * s for n, s in zip(in_dims, strides)]
        begins = []
        for full, extra, want in zip(natural, output_padding, target):
            total = full + extra - want
            # SAME_UPPER puts the smaller half first; otherwise the larger half goes first.
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return begins, target
    if auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    pads = list(pads) if pads is not None else [0] * (2 * spatial)
    begins, ends = pads[:spatial], pads[spatial:]
    outs = [full + extra - b - e for full, extra, b, e in zip(natural, output_padding, begins, ends)]
    return begins, outs


@register("ConvTranspose", 1)
@register("ConvTranspose", 11)
@register("ConvTranspose", 22)
def conv_transpose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    """Each input position scatters W * x into a kernel-sized window of the
    output: one matmul W^T @ x gives every (output channel, tap, position)
    product, then one strided add per kernel tap places them."""
    spatial = x.ndim - 2
    n, c = x.shape[:2]
    kernel = tuple(w.shape[2:])
    if w.shape[0] != c or c % group:
        raise ValueError(f"ConvTranspose: weight shape {w.shape} does not fit input channels {c} with group={group}")
    mg = w.shape[1]
    m = mg * group
    strides = list(strides) if strides else [1] * spatial
    dilations = list(dilations) if dilations else [1] * spatial
    in_dims = x.shape[2:]
    begins, out_dims = conv_transpose_geometry(in_dims, kernel, strides, dilations, pads, output_padding,
                                               output_shape, auto_pad)
    dtype = _compute_dtype(x.dtype)
    natural = [s * (i - 1) + (k - 1) * d + 1 for i, k, s, d in zip(in_dims, kernel, strides, dilations)]
    # Output index o sits at o + begin in the "natural" buffer; widen it when pads are negative.
    shift = [max(0, -bg) for bg in begins]
    size = [max(nat + sh, bg + sh + o) for nat, sh, bg, o in zip(natural, shift, begins, out_dims)]
    full = np.zeros((n, m) + tuple(size), dtype=dtype)
    cg = c // group
    k_count = int(np.prod(kernel))
    positions = int(np.prod(in_dims))
    taps = list(itertools.product(*(range(k) for k in kernel)))
    for i in range(n):
        for g in range(group):
            w_g = w[g * cg:(g + 1) * cg].astype(dtype, copy=False).reshape(cg, mg * k_count)
            x_g = x[i, g * cg:(g + 1) * cg].astype(dtype, copy=False).reshape(cg, positions)
            cols = parallel_matmul(np.ascontiguousarray(w_g.T), x_g).reshape((mg, k_count) + tuple(in_dims))
            target = full[i, g * mg:(g + 1) * mg]
            for t, index in enumerate(taps):
                window = tuple(slice(sh + k * d, sh + k * d + s * (nin - 1) + 1, s)
                               for sh, k, d, s, nin in zip(shift, index, dilations, strides, in_dims))
                target[(slice(None),) + window] += cols[:, t]
    crop = tuple(slice(sh + bg, sh + bg + o) for sh, bg, o in zip(shift, begins, out_dims))
    y = full[(slice(None), slice(None)) + crop]
    if b is not None:
        y = y + b.astype(dtype).reshape((1, m) + (1,) * spatial)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)
