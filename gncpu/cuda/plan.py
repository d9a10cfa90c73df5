"""The launch plan of the CUDA Group Normalization kernels, in pure Python.

One function, `plan_group_norm`, turns a problem (shape, groups, layout,
alignment) into the exact list of kernel launches: kernel name, grid, block
and arguments. The CuPy launcher sends these launches to a GPU; the CPU
emulation used by the tests (tests/cuda_emulation) runs the same launches
through the unchanged .cu on host threads. So the tests exercise the plan
users run, not a copy of it.

Arguments are buffer names (the strings in BUFFERS, bound to device arrays
by whoever runs the plan) or NumPy scalars whose dtype is the kernel's C
parameter type: CuPy passes a scalar by its dtype and checks nothing.
"""
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK_THREADS", "CHUNK_ELEMENTS", "KERNEL_SOURCE", "BUFFERS", "KERNEL_NAMES",
           "Launch", "Plan", "plan_group_norm", "compile_options"]

KERNEL_SOURCE = "group_norm.cu"

# Threads per block for every kernel; compiled into the source as
# GN_BLOCK_THREADS (shared-memory sizes, __launch_bounds__).
BLOCK_THREADS = 256
# Elements one block of the stats and apply kernels covers. Fixed (not
# derived from the device's SM count) so that the reduction tree, and so
# every output bit, is the same on every GPU. 4096 floats = 16 per thread:
# enough blocks to fill a large GPU even for one SD-sized group.
CHUNK_ELEMENTS = 4096
# gridDim.y limit; chunks per group or sample must fit.
MAX_GRID_Y = 65535
# Per-group and per-sample element indices are 32-bit in the kernels.
MAX_INDEXED_ELEMENTS = 2**31 - 1
WARPS_PER_BLOCK = BLOCK_THREADS // 32

X, Y, WEIGHT, BIAS, PARTIALS, COEFFS = "x", "y", "weight", "bias", "partials", "coeffs"
BUFFERS = (X, Y, WEIGHT, BIAS, PARTIALS, COEFFS)

KERNEL_NAMES = (
    "gn_stats_nchw", "gn_stats_nchw_vec4", "gn_stats_nhwc", "gn_stats_nhwc_tiled",
    "gn_finalize",
    "gn_apply_nchw", "gn_apply_nchw_vec4", "gn_apply_nchw_silu", "gn_apply_nchw_vec4_silu",
    "gn_apply_nhwc", "gn_apply_nhwc_vec4", "gn_apply_nhwc_silu", "gn_apply_nhwc_vec4_silu",
    "gn_apply_nhwc_tiled", "gn_apply_nhwc_tiled_silu",
)


def compile_options():
    """Options for NVRTC (CuPy's RawModule) and nvcc alike; the architecture
    is added by whoever compiles."""
    return ("--std=c++17", f"-DGN_BLOCK_THREADS={BLOCK_THREADS}")


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    args: tuple


@dataclass(frozen=True)
class Plan:
    """launches run in order on one stream; partials_floats and
    coeffs_floats are the float32 scratch sizes (coeffs must be 16-byte
    aligned: it is read as float4)."""
    launches: tuple
    partials_floats: int
    coeffs_floats: int


def _chunking(length, chunk_elements):
    """(chunk size, chunk count) covering `length` elements: the chunk size
    doubles until the count fits in gridDim.y."""
    chunk = chunk_elements
    while -(-length // chunk) > MAX_GRID_Y:
        chunk *= 2
    return chunk, -(-length // chunk)


# Channels of one NHWC stats tile at most: one float4 column per thread.
MAX_TILE_CHANNELS = 4 * BLOCK_THREADS


def nhwc_tile_channels(channels, group_channels):
    """Channels per tile of gn_stats_nhwc_tiled, or None if no tile fits.

    A tile must be a multiple of 4 and either hold whole groups or be a
    whole fraction of one group. Among those, the widest that divides C (no
    ragged last tile; T == C makes every block's reads one contiguous range).
    """
    if channels % 4:
        return None
    step = math.lcm(group_channels, 4)
    if step <= MAX_TILE_CHANNELS:
        return max(t for t in range(step, min(channels, MAX_TILE_CHANNELS) + 1, step) if channels % t == 0)
    fractions = [t for t in range(4, MAX_TILE_CHANNELS + 1, 4) if group_channels % t == 0]
    return max(fractions) if fractions else None


# The tiled NHWC apply needs a tile this wide (or all of C) for a warp's
# loads to cover whole 128-byte lines.
MIN_APPLY_TILE_CHANNELS = 128


def nhwc_apply_tile_channels(channels):
    """Channels per tile of gn_apply_nhwc_tiled (the widest multiple of 4
    dividing C, at most 4 * BLOCK_THREADS), or None when C % 4 != 0 or the
    only such tiles are too narrow to read whole cache lines."""
    if channels % 4:
        return None
    tile = max(t for t in range(4, min(channels, MAX_TILE_CHANNELS) + 1, 4) if channels % t == 0)
    return tile if tile == channels or tile >= MIN_APPLY_TILE_CHANNELS else None


def _check_index_range(count, what):
    if count > MAX_INDEXED_ELEMENTS:
        raise ValueError(f"{what} has {count} elements; the CUDA kernels index within it in 32 bits "
                         f"and accept at most {MAX_INDEXED_ELEMENTS}")


def plan_group_norm(batch, channels, spatial, groups, *, eps, channels_last=False, silu=False,
                    x_aligned=True, y_aligned=True, chunk_elements=CHUNK_ELEMENTS):
    """Launches for GN of a float32 array of `batch` samples, `channels`
    channels and `spatial` positions (the product of the spatial dims),
    C-contiguous as (N, C, HW), or as (N, HW, C) with channels_last.

    x_aligned / y_aligned: the input / output data start on a 16-byte
    boundary (enables the float4 kernels). chunk_elements: tests lower it to
    get many chunks per group from small arrays; a positive multiple of 4.
    """
    if chunk_elements <= 0 or chunk_elements % 4:
        raise ValueError(f"chunk_elements={chunk_elements} must be a positive multiple of 4")
    if groups <= 0 or channels % groups:
        raise ValueError(f"groups={groups} must be positive and divide channels={channels}")
    group_channels = channels // groups
    group_size = group_channels * spatial
    rows = batch * groups
    if batch == 0 or group_size == 0:
        return Plan(launches=(), partials_floats=0, coeffs_floats=0)
    _check_index_range(group_size, "one group (C/G x spatial)")
    _check_index_range(rows, "N x G")
    block = (BLOCK_THREADS, 1, 1)
    u32, u64 = np.uint32, np.uint64

    stats_chunk, stats_chunks = _chunking(group_size, chunk_elements)
    tile = nhwc_tile_channels(channels, group_channels) if channels_last and x_aligned else None
    if tile is not None:
        _check_index_range(spatial * channels, "one sample (spatial x C)")
        # rows per block: about chunk_elements elements, whole rows of the tile
        rows_per_chunk, row_chunks = _chunking(spatial, max(1, chunk_elements // tile))
        _check_index_range(batch * (channels // tile), "N x channel tiles (the grid's x size)")
        tiles_per_group = group_channels // tile if group_channels > tile else 1
        stats_chunks = row_chunks * tiles_per_group
        stats = Launch("gn_stats_nhwc_tiled", (batch * (channels // tile), row_chunks, 1), block,
                       (X, PARTIALS, u32(channels), u32(groups), u32(spatial), u32(tile), u32(rows_per_chunk)))
        sample_stride, group_stride = spatial * channels, group_channels
    elif channels_last:
        _check_index_range(spatial * channels, "one sample (spatial x C)")
        stats = Launch("gn_stats_nhwc", (rows, stats_chunks, 1), block,
                       (X, PARTIALS, u32(channels), u32(groups), u32(spatial), u32(stats_chunk)))
        sample_stride, group_stride = spatial * channels, group_channels
    else:
        vec4 = x_aligned and group_size % 4 == 0
        stats = Launch("gn_stats_nchw" + ("_vec4" if vec4 else ""), (rows, stats_chunks, 1), block,
                       (X, PARTIALS, u32(group_size), u32(stats_chunk)))
        sample_stride, group_stride = channels * spatial, group_size

    finalize = Launch("gn_finalize", (-(-rows // WARPS_PER_BLOCK), 1, 1), block,
                      (X, PARTIALS, WEIGHT, BIAS, COEFFS, u32(rows), u32(groups), u32(group_channels),
                       u32(stats_chunks), u64(sample_stride), u64(group_stride), np.float32(eps)))

    suffix = "_silu" if silu else ""
    apply_tile = nhwc_apply_tile_channels(channels) if channels_last and x_aligned and y_aligned else None
    if apply_tile is not None:
        rows_per_chunk, row_chunks = _chunking(spatial, max(1, chunk_elements // apply_tile))
        apply = Launch("gn_apply_nhwc_tiled" + suffix, (batch * (channels // apply_tile), row_chunks, 1), block,
                       (X, COEFFS, Y, u32(channels), u32(spatial), u32(apply_tile), u32(rows_per_chunk)))
    elif channels_last:
        apply_chunk, apply_chunks = _chunking(spatial * channels, chunk_elements)
        vec4 = x_aligned and y_aligned and channels % 4 == 0
        apply = Launch("gn_apply_nhwc" + ("_vec4" if vec4 else "") + suffix, (batch, apply_chunks, 1), block,
                       (X, COEFFS, Y, u32(channels), u32(spatial), u32(apply_chunk)))
    else:
        apply_chunk, apply_chunks = stats_chunk, stats_chunks
        # a float4 must not straddle two channels: HW % 4 == 0
        vec4 = x_aligned and y_aligned and spatial % 4 == 0
        apply = Launch("gn_apply_nchw" + ("_vec4" if vec4 else "") + suffix, (rows, apply_chunks, 1), block,
                       (X, COEFFS, Y, u32(group_channels), u32(spatial), u32(apply_chunk)))

    return Plan(launches=(stats, finalize, apply), partials_floats=3 * rows * stats_chunks,
                coeffs_floats=4 * batch * channels)


def flatten_shape(shape, channels_last):
    """(N, C, HW) of an input of `shape`: (N, C, *spatial), or
    (N, *spatial, C) with channels_last. HW is 1 for rank 2."""
    if len(shape) < 2:
        raise ValueError(f"input must have rank >= 2, got shape {tuple(shape)}")
    batch = shape[0]
    channels = shape[-1] if channels_last else shape[1]
    spatial_dims = shape[1:-1] if channels_last else shape[2:]
    spatial = 1
    for d in spatial_dims:
        spatial *= d
    return batch, channels, spatial


def plan_for_arrays(shape, groups, *, eps, channels_last, silu, x_address, y_address,
                    chunk_elements=CHUNK_ELEMENTS):
    """plan_group_norm for C-contiguous input and output arrays of `shape`
    whose data start at the given device addresses."""
    batch, channels, spatial = flatten_shape(shape, channels_last)
    return plan_group_norm(batch, channels, spatial, groups, eps=eps, channels_last=channels_last, silu=silu,
                           x_aligned=x_address % 16 == 0, y_aligned=y_address % 16 == 0,
                           chunk_elements=chunk_elements)
