"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 block of outputs is computed from a 4x4 input tile with 16
multiplies per (input channel, output channel) instead of 36: the tiles'
transforms V (16, C, tiles) and the filters' transforms U (16, M, C) turn
the convolution into 16 matrix products U[k] @ V[k] -- 2.25x fewer flops
than im2col's single product, on BLAS-friendly shapes -- followed by a
cheap output transform. F(2x2, 3x3)'s transforms use only 0, +-1 and 1/2,
so rounding stays within a few float32 ulps of the direct sum (larger tiles
such as F(4x4, 3x3) save more but amplify rounding by ~10x).

The input transform runs on whole strided planes, not per tile: rows of
tiles first (4 combinations of rows 2t..2t+3), then columns, so every NumPy
loop runs over long rows instead of 4-element tile edges.

Transforms (Lavin & Gray, 2015):
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
"""
import numpy as np

from .derived import derived
from .parallel import run_tasks, split_count

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_applies(x, w, group, strides, dilations, out_dims):
    """F(2x2, 3x3) pays off for 3x3, stride 1, undilated, ungrouped 2-D convs
    with enough channels: the products save work in proportion to C*M, the
    transforms cost in proportion to C+M. Measured here (one thread, vs
    im2col): 0.6-0.8x the time from 128 channels up to 64x64 outputs and from
    256 channels at any size; 1.1-1.6x slower at 64-96 channels or 128 channels
    at 128x128."""
    if not (x.ndim == 4 and w.shape[2:] == (3, 3) and group == 1 and all(s == 1 for s in strides)
            and all(d == 1 for d in dilations) and out_dims[0] >= 4 and out_dims[1] >= 4):
        return False
    channels = min(w.shape[0], w.shape[1])
    return channels >= 256 or (channels >= 128 and out_dims[0] * out_dims[1] <= 64 * 64)


def filter_transform(w, dtype):
    """U (16, M, C): G g G^T for every (output, input) channel pair, in float64
    then cast; computed once per constant weight (see derived.py)."""
    def compute(weights):
        u = np.einsum("ai,mcij,bj->abmc", _G, weights.astype(np.float64), _G, optimize=True)
        return np.ascontiguousarray(u.reshape(16, weights.shape[0], weights.shape[1]).astype(dtype))

    return derived(w, ("winograd_f2x3", np.dtype(dtype).str), compute)


def _input_transform(xp, tiles_h, tiles_w, v, c0, c1):
    """V[4a+b, c, ti, tj] = (B^T d B)[a, b] for the tile at (2ti, 2tj), channels c0:c1.

    Even and odd input columns are split into contiguous planes first, so the
    column step of the transform (which pairs columns 2t+u) reads contiguous
    runs instead of every other float."""
    x = xp[c0:c1]
    even = np.ascontiguousarray(x[:, :, 0:2 * tiles_w + 1:2])   # columns 0, 2, ..., 2*tiles_w
    odd = np.ascontiguousarray(x[:, :, 1:2 * tiles_w + 2:2])    # columns 1, 3, ..., 2*tiles_w + 1
    shape = (c1 - c0, tiles_h, tiles_w + 1)
    transformed = []
    for plane in (even, odd):
        rows = [plane[:, u:u + 2 * tiles_h - 1:2, :] for u in range(4)]
        r = [np.empty(shape, dtype=x.dtype) for _ in range(4)]
        np.subtract(rows[0], rows[2], out=r[0])
        np.add(rows[1], rows[2], out=r[1])
        np.subtract(rows[2], rows[1], out=r[2])
        np.subtract(rows[1], rows[3], out=r[3])
        transformed.append(r)
    r_even, r_odd = transformed
    for a in range(4):
        col0, col2 = r_even[a][:, :, :tiles_w], r_even[a][:, :, 1:]
        col1, col3 = r_odd[a][:, :, :tiles_w], r_odd[a][:, :, 1:]
        out = [v[4 * a + b, c0:c1].reshape(c1 - c0, tiles_h, tiles_w) for b in range(4)]
        np.subtract(col0, col2, out=out[0])
        np.add(col1, col2, out=out[1])
        np.subtract(col2, col1, out=out[2])
        np.subtract(col1, col3, out=out[3])


def _output_transform(m, tiles_h, tiles_w, bias, y_full, m0, m1):
    """y (2x2 per tile) = A^T M A for output channels m0:m1, plus bias."""
    k = [m[i, m0:m1] for i in range(16)]                            # (channels, tiles) each, contiguous
    shape = k[0].shape
    s0 = [np.empty(shape, dtype=m.dtype) for _ in range(4)]
    s1 = [np.empty(shape, dtype=m.dtype) for _ in range(4)]
    for a in range(4):
        row = k[4 * a:4 * a + 4]
        np.add(row[0], row[1], out=s0[a])
        s0[a] += row[2]
        np.subtract(row[1], row[2], out=s1[a])
        s1[a] -= row[3]
    grid = y_full[m0:m1].reshape(m1 - m0, tiles_h, 2, tiles_w, 2)
    result = np.empty(shape, dtype=m.dtype)
    for (dy, dx), (first, second, third, sign) in (((0, 0), (s0[0], s0[1], s0[2], 1)), ((0, 1), (s1[0], s1[1], s1[2], 1)),
                                                   ((1, 0), (s0[1], s0[2], s0[3], -1)), ((1, 1), (s1[1], s1[2], s1[3], -1))):
        if sign > 0:
            np.add(first, second, out=result)
            result += third
        else:
            np.subtract(first, second, out=result)
            result -= third
        if bias is not None:
            result += bias[m0:m1, None]
        grid[:, :, dy, :, dx] = result.reshape(m1 - m0, tiles_h, tiles_w)


# Transform buffers (V and the 16 products) per band of tile rows: bounded so that a
# 256-channel conv at 256x256 does not allocate half a GiB at once.
_BAND_BYTES = 64 << 20
_BLOCK_ELEMENTS = 1 << 17


def conv3x3_winograd(xp, w, bias, out_dims, y):
    """One sample: xp (C, Hp, Wp) zero-padded input, y (M, OH, OW) output.
    Works in bands of tile rows whose transform buffers fit _BAND_BYTES."""
    c = xp.shape[0]
    m = w.shape[0]
    oh, ow = out_dims
    tiles_h, tiles_w = -(-oh // 2), -(-ow // 2)
    need_h, need_w = 2 * tiles_h + 2, 2 * tiles_w + 2
    if xp.shape[1] < need_h or xp.shape[2] < need_w:
        # Odd output sizes: the last tile row/column reads past the padded input; zeros there only
        # feed outputs that are cropped away.
        grown = np.zeros((c, max(need_h, xp.shape[1]), max(need_w, xp.shape[2])), dtype=xp.dtype)
        grown[:, :xp.shape[1], :xp.shape[2]] = xp
        xp = grown
    u = filter_transform(w, xp.dtype)
    even = oh == 2 * tiles_h and ow == 2 * tiles_w
    y_full = y if even else np.empty((m, 2 * tiles_h, 2 * tiles_w), dtype=xp.dtype)
    band_rows = max(1, min(tiles_h, _BAND_BYTES // (16 * (c + m) * tiles_w * xp.itemsize)))
    v_buffer = np.empty(16 * c * band_rows * tiles_w, dtype=xp.dtype)
    products_buffer = np.empty(16 * m * band_rows * tiles_w, dtype=xp.dtype)
    for r0 in range(0, tiles_h, band_rows):
        rows = min(band_rows, tiles_h - r0)
        tiles = rows * tiles_w
        v = v_buffer[:16 * c * tiles].reshape(16, c, tiles)
        products = products_buffer[:16 * m * tiles].reshape(16, m, tiles)
        band_in = xp[:, 2 * r0:2 * (r0 + rows) + 2]
        band_out = y_full[:, 2 * r0:2 * (r0 + rows)]
        threads = split_count(16 * m * c * tiles, 1 << 21)
        # Channel blocks of ~128K elements per plane: smaller blocks pay NumPy's per-call
        # overhead (and, threaded, a GIL hand-off) too often; larger ones fall out of cache.
        block = max(1, min(c, _BLOCK_ELEMENTS // tiles))
        run_tasks([lambda c0=c0: _input_transform(band_in, rows, tiles_w, v, c0, min(c0 + block, c))
                   for c0 in range(0, c, block)], threads)
        run_tasks([lambda k=k: np.matmul(u[k], v[k], out=products[k]) for k in range(16)], threads)
        block = max(1, min(m, _BLOCK_ELEMENTS // tiles))
        run_tasks([lambda m0=m0: _output_transform(products, rows, tiles_w, bias, band_out, m0, min(m0 + block, m))
                   for m0 in range(0, m, block)], threads)
    if not even:
        y[...] = y_full[:, :oh, :ow]
