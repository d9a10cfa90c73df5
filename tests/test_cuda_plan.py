"""The launch plan (pure Python) shared by the CuPy launcher and the CPU
emulation: grids that fit the hardware limits, chunks that tile each group
exactly, float4 kernels only where alignment allows, clear errors."""
import numpy as np
import pytest

from gncpu.cuda import plan as cuda_plan


def launches(**kw):
    args = dict(batch=2, channels=32, spatial=64, groups=8, eps=1e-5)
    args.update(kw)
    return cuda_plan.plan_group_norm(**args).launches


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch,channels,spatial,groups", [
    (1, 320, 64 * 64, 32),        # SD: 3 chunks a group -> 320 blocks
    (1, 128, 512 * 512, 32),      # 4 MiB groups
    (1, 32, 64 * 64, 1),          # LayerNorm-like, one group
    (1, 1, 2**31 - 1, 1),         # the largest group: chunks grow to fit gridDim.y
    (64, 2048, 1, 2048),          # G = C, 131072 tiny groups
    (3, 6, 7, 3),
])
def test_grids_and_chunks(channels_last, batch, channels, spatial, groups):
    plan = cuda_plan.plan_group_norm(batch, channels, spatial, groups, eps=1e-5, channels_last=channels_last)
    stats, finalize, apply = plan.launches
    group_size = channels // groups * spatial
    for launch in plan.launches:
        assert launch.block == (cuda_plan.BLOCK_THREADS, 1, 1)
        assert 1 <= launch.grid[0] <= 2**31 - 1 and 1 <= launch.grid[1] <= 65535 and launch.grid[2] == 1
    rows = batch * groups
    if stats.kernel == "gn_stats_nhwc_tiled":
        tile, rows_per_chunk = int(stats.args[5]), int(stats.args[6])
        assert channels % tile == 0 and tile % 4 == 0 and (tile % (channels // groups) == 0 or
                                                            (channels // groups) % tile == 0)
        assert stats.grid[0] == batch * (channels // tile)
        row_chunks = stats.grid[1]
        assert (row_chunks - 1) * rows_per_chunk < spatial <= row_chunks * rows_per_chunk
        chunks = row_chunks * max(1, (channels // groups) // tile)
    else:
        chunks, chunk = stats.grid[1], int(stats.args[-1])
        assert stats.grid[0] == rows
        assert chunk % 4 == 0 and (chunks - 1) * chunk < group_size <= chunks * chunk
    assert plan.partials_floats == 3 * rows * chunks
    assert plan.coeffs_floats == 4 * batch * channels
    assert finalize.grid[0] * cuda_plan.WARPS_PER_BLOCK >= rows
    assert int(finalize.args[8]) == chunks  # the finalize merges exactly the stats' chunks
    if apply.kernel.startswith("gn_apply_nhwc_tiled"):
        tile, rows_per_chunk = int(apply.args[5]), int(apply.args[6])
        assert channels % tile == 0 and apply.grid[0] == batch * (channels // tile)
        assert (apply.grid[1] - 1) * rows_per_chunk < spatial <= apply.grid[1] * rows_per_chunk
    else:
        length = channels * spatial if channels_last else group_size
        apply_chunk, apply_chunks = int(apply.args[-1]), apply.grid[1]
        assert (apply_chunks - 1) * apply_chunk < length <= apply_chunks * apply_chunk


def test_sd_shape_fills_a_large_gpu():
    # N * G = 32 groups would leave most of a 132-SM GPU idle without chunks
    stats = launches(batch=1, channels=320, spatial=64 * 64, groups=32)[0]
    assert stats.grid[0] * stats.grid[1] >= 256


def test_chunking_does_not_depend_on_the_device():
    a = cuda_plan.plan_group_norm(1, 64, 4096, 4, eps=1e-5)
    b = cuda_plan.plan_group_norm(1, 64, 4096, 4, eps=1e-5)
    assert a == b


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("silu", [False, True])
def test_kernel_choice(channels_last, silu):
    suffix = "_silu" if silu else ""
    layout = "nhwc" if channels_last else "nchw"
    fast_stats = "gn_stats_nhwc_tiled" if channels_last else "gn_stats_nchw_vec4"
    fast_apply = f"gn_apply_nhwc_tiled{suffix}" if channels_last else f"gn_apply_nchw_vec4{suffix}"
    kernels = [l.kernel for l in launches(channels_last=channels_last, silu=silu)]
    assert kernels == [fast_stats, "gn_finalize", fast_apply]
    kernels = [l.kernel for l in launches(channels_last=channels_last, silu=silu, x_aligned=False)]
    assert kernels == [f"gn_stats_{layout}", "gn_finalize", f"gn_apply_{layout}{suffix}"]
    # a misaligned output only affects the apply
    kernels = [l.kernel for l in launches(channels_last=channels_last, silu=silu, y_aligned=False)]
    assert kernels == [fast_stats, "gn_finalize", f"gn_apply_{layout}{suffix}"]


def test_vec4_needs_whole_vectors():
    # NCHW: stats need group_size % 4 == 0; the apply needs HW % 4 == 0
    assert [l.kernel for l in launches(channels=8, groups=2, spatial=9)] == \
        ["gn_stats_nchw_vec4", "gn_finalize", "gn_apply_nchw"]
    assert launches(channels=6, groups=2, spatial=9)[0].kernel == "gn_stats_nchw"
    # NHWC: the tiled stats and the float4 apply need C % 4 == 0 (any C/G)
    assert [l.kernel for l in launches(channels=12, groups=6, channels_last=True)] == \
        ["gn_stats_nhwc_tiled", "gn_finalize", "gn_apply_nhwc_tiled"]
    # C = 4 x 263: the only tiles are 4 channels wide: the flat float4 apply
    assert launches(channels=1052, groups=4, channels_last=True)[2].kernel == "gn_apply_nhwc_vec4"
    assert [l.kernel for l in launches(channels=6, groups=3, channels_last=True)] == \
        ["gn_stats_nhwc", "gn_finalize", "gn_apply_nhwc"]
    # no tile when C/G has no multiple of 4 within 1024 channels, nor a divisor that is one
    assert launches(channels=2056, groups=4, channels_last=True)[0].kernel == "gn_stats_nhwc"


@pytest.mark.parametrize("channels,group_channels,tile", [
    (320, 10, 320), (1280, 40, 640), (8, 2, 8), (4, 1, 4), (2560, 2560, 640), (4096, 4096, 1024),
    (12, 3, 12), (6, 3, None), (2056, 514, None), (4096, 1, 1024),
])
def test_nhwc_tiles(channels, group_channels, tile):
    assert cuda_plan.nhwc_tile_channels(channels, group_channels) == tile


@pytest.mark.parametrize("channels,tile", [(320, 320), (1280, 640), (8, 8), (2048, 1024), (1000, 1000),
                                           (1052, None), (6, None), (4 * 521, None), (1072, 536)])
def test_nhwc_apply_tiles(channels, tile):
    assert cuda_plan.nhwc_apply_tile_channels(channels) == tile


def test_scalar_types_are_explicit():
    for launch in launches() + launches(channels_last=True):
        for arg in launch.args:
            assert isinstance(arg, str) and arg in cuda_plan.BUFFERS or \
                type(arg) in (np.uint32, np.uint64, np.float32), (launch.kernel, arg)


def test_empty_input_has_no_launch():
    assert cuda_plan.plan_group_norm(0, 8, 16, 2, eps=1e-5).launches == ()
    assert cuda_plan.plan_group_norm(2, 8, 0, 2, eps=1e-5).launches == ()


def test_errors():
    with pytest.raises(ValueError, match="one group .* 4294967296 elements"):
        cuda_plan.plan_group_norm(1, 2, 2**31, 1, eps=1e-5)
    with pytest.raises(ValueError, match="one sample"):
        cuda_plan.plan_group_norm(1, 4, 2**29, 2, eps=1e-5, channels_last=True)
    with pytest.raises(ValueError, match="groups=3 must be positive and divide channels=8"):
        cuda_plan.plan_group_norm(1, 8, 4, 3, eps=1e-5)
    with pytest.raises(ValueError, match="chunk_elements=6"):
        cuda_plan.plan_group_norm(1, 8, 4, 2, eps=1e-5, chunk_elements=6)


@pytest.mark.parametrize("shape,channels_last,expected", [
    ((2, 3), False, (2, 3, 1)),
    ((2, 3, 4, 5), False, (2, 3, 20)),
    ((2, 4, 5, 3), True, (2, 3, 20)),
    ((2, 3, 4, 5, 6), False, (2, 3, 120)),
])
def test_flatten_shape(shape, channels_last, expected):
    assert cuda_plan.flatten_shape(shape, channels_last) == expected
