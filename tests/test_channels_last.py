"""Channels-last: (N, *spatial, C) arrays with channels_last=True, and
(N, C, *spatial)-shaped arrays with channels-last strides (np.transpose of an
NHWC array, a torch channels_last tensor), which run the NHWC kernel without
a copy and keep their layout."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gncpu
from conftest import (F32_TOL, VARIANTS, assert_bitwise_equal, assert_close, assert_matches_oracle,
                      assert_same_layout,
                      is_channels_last, make_affine, make_data, offset_kind, oracle, run_variant,
                      to_layout, tolerance)

FLOAT_DTYPES = [np.float32, np.float64, np.float16]
CL_LAYOUTS = ["nhwc", "nchw_strided"]

# (N, C, *spatial) problems, given in NCHW terms and converted per layout.
# Spatial sizes 1, odd, prime; rows (the product of spatial dims) below, at
# and above the kernel's 64-row blocks; channel counts that are not
# multiples of its 64 lanes.
CASES = [
    ((1, 12, 1), 3),
    ((2, 12, 7), 12),
    ((5, 12, 13), 1),
    ((2, 3, 5, 7), 1),
    ((2, 96, 8, 8), 32),      # exactly one 64-row block
    ((1, 24, 65), 4),         # 64 + 1 rows
    ((2, 40, 11, 13), 8),     # 143 rows: 2 blocks + 15
    ((1, 20, 3, 5, 7), 5),    # rank 5
    ((2, 1280, 2, 2), 32),    # wide channels, few rows
    # The kernel walks rows a "line" of max(1, 512 // C) rows at a time, in
    # blocks of max(64, ~65536 / C) rows summed 64 lines at a time in the
    # working precision: partial lines, sub-blocks and blocks.
    ((1, 3, 5000), 3),        # lines of 170 rows, blocks of 21760: 29 lines + 70 rows
    ((2, 12, 25, 28), 4),     # lines of 42 rows, blocks of 5460: 16 lines + 28 rows
    ((1, 32, 300), 8),        # lines of 16 rows, blocks of 2048: 18 lines + 12 rows
    ((2, 513, 67), 27),       # one row per line (C > 512), blocks of 127: 67 rows, 2 sub-blocks
    ((1, 256, 9, 15), 16),    # 2 rows per line, blocks of 256: 135 rows = 67 lines + 1 row
    ((2, 32, 4500), 8),       # blocks of 2048 rows (2 sub-blocks): 2 blocks + 404 rows
    ((1, 4, 30000), 2),       # lines of 128 rows, blocks of 16384: 1 block + 106 lines + 48 rows
]
LARGE = [((1, 320, 64, 64), 32), ((2, 64, 33, 35), 1)]


def case_id(case):
    shape, groups = case
    return "x".join(map(str, shape)) + f"/{groups}"


def run(x_nchw, layout, groups, weight=None, bias=None, eps=1e-5, **kwargs):
    """gncpu and the oracle on the same problem in `layout`: (y, ref, input)."""
    x, layout_kwargs = to_layout(x_nchw, layout)
    y = gncpu.group_norm(x, groups, weight, bias, eps, **layout_kwargs, **kwargs)
    ref = oracle(x, groups, weight, bias, eps, **layout_kwargs)
    return y, ref, x


@pytest.mark.parametrize("data", ["normal", "offset"])
@pytest.mark.parametrize("affine", ["unit", "normal"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", CL_LAYOUTS)
@pytest.mark.parametrize("case", CASES + LARGE, ids=case_id)
def test_matches_oracle(rng, case, layout, dtype, affine, data):
    shape, groups = case
    kind = offset_kind(dtype) if data == "offset" else "normal"
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, affine)
    y, ref, given = run(x, layout, groups, weight, bias, eps)
    assert y.shape == given.shape
    assert_matches_oracle(y, ref, dtype, kind)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES[1:5] + LARGE[:1], ids=case_id)
def test_strided_view_equals_channels_last_flag(rng, case, dtype):
    """An NCHW-shaped view of NHWC memory and the NHWC array itself with
    channels_last=True are the same problem for the same kernel: same bits."""
    shape, groups = case
    x, _ = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    nhwc, _ = to_layout(x, "nhwc")
    view, _ = to_layout(x, "nchw_strided")
    y_view = gncpu.group_norm(view, groups, weight, bias)
    y_nhwc = gncpu.group_norm(nhwc, groups, weight, bias, channels_last=True)
    assert_bitwise_equal(np.moveaxis(y_view, 1, -1), y_nhwc)


ADVERSARIAL = [(dtype, kind) for dtype in FLOAT_DTYPES
               for kind in ["offset_1e6", "tiny_std", "tiny_std_offset"]
               if not (dtype == np.float16 and kind == "offset_1e6")]


@pytest.mark.parametrize("dtype, kind", ADVERSARIAL,
                         ids=[f"{np.dtype(d).name}-{k}" for d, k in ADVERSARIAL])
@pytest.mark.parametrize("layout", CL_LAYOUTS)
@pytest.mark.parametrize("case", [CASES[2], CASES[6], LARGE[1]], ids=case_id)
def test_adversarial_data(rng, case, layout, dtype, kind):
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    y, ref, _ = run(x, layout, groups, weight, bias, eps)
    assert_matches_oracle(y, ref, dtype, kind)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e36])
@pytest.mark.parametrize("case", [CASES[6], LARGE[0]], ids=case_id)
def test_huge_float32_magnitudes(rng, case, scale):
    """Squared deviations overflow float32: the float64 fallback must run."""
    shape, groups = case
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    y, ref, _ = run(x, "nhwc", groups)
    assert np.isfinite(y).all()
    assert_close(y, ref, F32_TOL["normal"])


@pytest.mark.parametrize("scale", [1e-15, 1e-25])
@pytest.mark.parametrize("layout", CL_LAYOUTS)
def test_tiny_float32_magnitudes_with_zero_eps(rng, layout, scale):
    """Squares of |x| ~ 1e-25 underflow float32: normalization must stay
    scale-free with eps = 0."""
    x = (rng.standard_normal((2, 40, 11, 13)) * scale).astype(np.float32)
    y, ref, _ = run(x, layout, 8, eps=0.0)
    assert_close(y, ref, F32_TOL["normal"])


CONSTANTS = [(dtype, value) for dtype in (np.float32, np.float64)
             for value in (0.0, -3.3e5, 1e4 + 0.5, 0.1, 1 / 3, 1e4 + 0.1, 1e30)]


@pytest.mark.parametrize("dtype, value", CONSTANTS, ids=[f"{np.dtype(d).name}-{v:g}" for d, v in CONSTANTS])
@pytest.mark.parametrize("case", [CASES[6], LARGE[0]], ids=case_id)
def test_constant_groups_give_bias_exactly(rng, case, dtype, value):
    shape, groups = case
    x = np.full(shape, value, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    for layout in CL_LAYOUTS:
        y, _, _ = run(x, layout, groups, weight, bias)
        y_nchw = np.moveaxis(y, -1, 1) if layout == "nhwc" else y
        assert_bitwise_equal(y_nchw, np.broadcast_to(bias.reshape((1, -1) + (1,) * (len(shape) - 2)),
                                                     shape), f"({layout})")


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e4 + 0.1, 1e30], ids=lambda v: f"{v:g}")
def test_float64_constant_groups_with_inexact_sums(value):
    """k * value / k is not value in float64 for k = 10: the kernel must not
    get a variance > 0 out of a mean of channel means."""
    x = np.full((1, 64, 10), value)           # 64 rows, one group of 10 channels
    y = gncpu.group_norm(x, 1, channels_last=True)
    assert not np.any(y), f"max |y| = {np.abs(y).max():.3g}, expected exactly 0"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["first_row", "last_row", "second_block"])
@pytest.mark.parametrize("threads", [1, 2])
def test_non_finite_value_poisons_only_its_group(rng, threads, where, dtype, value):
    shape, groups = (1, 40, 150, 11), 8                     # 1650 rows: a block of 1632 + 18
    nhwc, _ = make_data(rng, (shape[0],) + shape[2:] + (shape[1],), dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    clean = gncpu.group_norm(nhwc, groups, weight, bias, channels_last=True, num_threads=threads)
    rows = nhwc.reshape(shape[0], -1, shape[1])
    row = {"first_row": 0, "last_row": rows.shape[1] - 1, "second_block": 1632 + 7}[where]
    group, cpg = 3, shape[1] // groups
    rows[0, row, group * cpg + 2] = float(value)
    y = gncpu.group_norm(nhwc, groups, weight, bias, channels_last=True, num_threads=threads)
    bad = y[..., group * cpg:(group + 1) * cpg]
    assert np.isnan(bad).all()
    bad[...] = 0
    clean[..., group * cpg:(group + 1) * cpg] = 0
    assert_bitwise_equal(y, clean, "outside the poisoned group")


@st.composite
def channels_last_problems(draw):
    """Small random problems whose rows straddle the kernel's 64-row blocks
    and whose channel counts straddle its 64 lanes."""
    groups = draw(st.integers(1, 4))
    channels = groups * draw(st.sampled_from([1, 2, 3, 5, 16, 17, 33]))
    rank = draw(st.integers(3, 5))
    spatial = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 7, 9, 13, 65]), min_size=rank - 2,
                                  max_size=rank - 2).filter(lambda s: np.prod(s) <= 5000)))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    return ((n, channels) + spatial, groups, dtype, draw(st.sampled_from(CL_LAYOUTS)),
            draw(st.sampled_from(["normal", offset_kind(dtype)])), draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=50, deadline=None)
@given(channels_last_problems())
def test_random_channels_last_problems(problem):
    shape, groups, dtype, layout, kind, seed = problem
    rng = np.random.default_rng(seed)
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    y, ref, given_array = run(x, layout, groups, weight, bias, eps, num_threads=2)
    assert_same_layout(y, given_array)
    assert_matches_oracle(y, ref, dtype, kind)


# --------------------------------------------------------------------------- threads, variants


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5], CASES[6], CASES[9], CASES[10], CASES[12],
                                  CASES[14], CASES[15], LARGE[1],
                                  # 3 samples: whole samples per thread at 3 threads, the
                                  # barrier plan at 2 and 4
                                  ((3, 32, 4500), 8)], ids=case_id)
def test_variant_bitwise_across_thread_counts(rng, case, variant, dtype):
    module = dict(VARIANTS)[variant]
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, "offset_1e4")
    nhwc, _ = to_layout(x, "nhwc")
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    single = run_variant(module, nhwc, groups, weight, bias, eps, threads=1, channels_last=True)
    assert_matches_oracle(single, oracle(nhwc, groups, weight, bias, eps, channels_last=True), dtype,
                          "offset_1e4")
    for threads in (2, 3, 4):
        y = run_variant(module, nhwc, groups, weight, bias, eps, threads=threads, channels_last=True)
        assert_bitwise_equal(y, single, f"({variant}: {threads} threads vs 1)")


@pytest.mark.parametrize("layout", CL_LAYOUTS)
def test_public_api_bitwise_across_thread_counts(rng, layout):
    x, _ = make_data(rng, LARGE[0][0], np.float32)
    given, kwargs = to_layout(x, layout)
    single = gncpu.group_norm(given, 32, num_threads=1, **kwargs)
    for threads in (2, 3, None):
        assert_bitwise_equal(gncpu.group_norm(given, 32, num_threads=threads, **kwargs), single)


# --------------------------------------------------------------------------- layout and memory


def traced_peak(fn):
    """Peak bytes NumPy allocated while fn ran (NumPy reports its buffers to
    tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_strided_input_runs_without_a_copy_and_keeps_its_layout(rng, dtype):
    x, _ = make_data(rng, LARGE[0][0], dtype)
    view, _ = to_layout(x, "nchw_strided")
    assert not view.flags.c_contiguous and is_channels_last(view)
    gncpu.group_norm(view, 32)  # warm up: first-call allocations are not the call's
    result = {}
    peak = traced_peak(lambda: result.setdefault("y", gncpu.group_norm(view, 32)))
    y = result["y"]
    assert peak < 1.1 * view.nbytes, f"{peak / view.nbytes:.2f}x the input allocated: a copy was made"
    assert_same_layout(y, view)
    assert_matches_oracle(y, oracle(view, 32), dtype, "normal")

    out = np.moveaxis(np.full(to_layout(x, "nhwc")[0].shape, np.nan, dtype), -1, 1)
    peak = traced_peak(lambda: gncpu.group_norm(view, 32, out=out))
    assert peak < 0.01 * view.nbytes, f"{peak} bytes allocated with out= given"
    assert_bitwise_equal(out, y)


def test_float16_strided_input_keeps_its_layout(rng):
    x, _ = make_data(rng, (2, 40, 11, 13), np.float16)
    view, _ = to_layout(x, "nchw_strided")
    y = gncpu.group_norm(view, 8)
    assert y.dtype == np.float16
    assert_same_layout(y, view)
    assert_matches_oracle(y, oracle(view, 8), np.float16, "normal")
    out = np.moveaxis(np.empty((2, 11, 13, 40), np.float16), -1, 1)
    assert gncpu.group_norm(view, 8, out=out) is out
    assert_bitwise_equal(out, y)


def test_strided_input_needs_a_channels_last_out(rng):
    view, _ = to_layout(make_data(rng, (2, 8, 5, 6), np.float32)[0], "nchw_strided")
    out = np.empty(view.shape, np.float32)  # C-contiguous: not the input's layout
    with pytest.raises(ValueError, match=r"out must.*channels-last.*strides \(960, 120, 24, 4\)"):
        gncpu.group_norm(view, 2, out=out)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", CL_LAYOUTS)
def test_in_place(rng, layout, dtype):
    x, _ = make_data(rng, LARGE[1][0], dtype)
    given, kwargs = to_layout(x, layout)
    weight, bias = make_affine(rng, x.shape[1], dtype, "normal")
    expected = gncpu.group_norm(given, 1, weight, bias, **kwargs)
    assert gncpu.group_norm(given, 1, weight, bias, out=given, **kwargs) is given
    assert_bitwise_equal(given, expected)


@pytest.mark.parametrize("poison", [np.nan, np.inf, 1.2345e30])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", CL_LAYOUTS)
def test_poisoned_out_is_fully_overwritten(rng, layout, dtype, poison):
    x, _ = make_data(rng, CASES[6][0], dtype)
    given, kwargs = to_layout(x, layout)
    out = np.empty_like(given)  # empty_like keeps the channels-last strides
    out[...] = poison
    assert gncpu.group_norm(given, 8, out=out, **kwargs) is out
    assert_bitwise_equal(out, gncpu.group_norm(given, 8, **kwargs))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["strided_nhwc", "nchw_memory"])
def test_channels_last_flag_with_non_contiguous_input(rng, dtype, layout):
    """channels_last=True on an (N, *spatial, C) array that is not
    C-contiguous: copied, then normalized."""
    x, _ = make_data(rng, (2, 12, 9, 7), dtype)
    if layout == "strided_nhwc":
        nhwc = np.repeat(to_layout(x, "nhwc")[0], 2, axis=2)[:, :, ::2]
    else:
        nhwc = np.moveaxis(x, 1, -1)  # NHWC shape over NCHW memory
    assert not nhwc.flags.c_contiguous
    before = nhwc.copy()
    y = gncpu.group_norm(nhwc, 3, channels_last=True)
    assert_matches_oracle(y, oracle(nhwc, 3, channels_last=True), dtype, "normal")
    assert_bitwise_equal(nhwc, before, "(input modified)")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", CL_LAYOUTS)
def test_input_and_parameters_not_modified(rng, layout, dtype):
    x, _ = make_data(rng, CASES[6][0], dtype)
    given, kwargs = to_layout(x, layout)
    weight, bias = make_affine(rng, x.shape[1], dtype, "normal")
    saved = [a.copy() for a in (given, weight, bias)]
    gncpu.group_norm(given, 8, weight, bias, **kwargs)
    for now, then in zip((given, weight, bias), saved):
        assert_bitwise_equal(now, then, "(modified)")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0, 5, 8), (2, 0, 8), (2, 3, 0, 8), (2, 5, 0)], ids=str)
def test_empty_input(shape, dtype):
    x = np.empty(shape, dtype)
    groups = 2 if shape[-1] else 1
    y = gncpu.group_norm(x, groups, np.ones(shape[-1], dtype), channels_last=True)
    assert y.shape == shape and y.dtype == np.dtype(dtype)


# --------------------------------------------------------------------------- arguments


def test_channels_last_needs_rank_three():
    with pytest.raises(ValueError, match=r"channels_last=True needs rank >= 3.*got shape \(4, 6\)"):
        gncpu.group_norm(np.zeros((4, 6), np.float32), 2, channels_last=True)


def test_channels_are_the_last_axis():
    x = np.zeros((2, 5, 6), np.float32)  # C = 6 with channels_last
    gncpu.group_norm(x, 3, np.ones(6, np.float32), channels_last=True)
    with pytest.raises(ValueError, match=r"num_groups=5 must divide C=6"):
        gncpu.group_norm(x, 5, channels_last=True)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\).*got shape \(5,\)"):
        gncpu.group_norm(x, 3, np.ones(5, np.float32), channels_last=True)


def test_ambiguous_layouts_take_the_nchw_path(rng):
    """With C = 1 or one spatial position both layouts are C-contiguous: the
    array is plain NCHW, and the results are right either way."""
    for shape, groups in [((2, 1, 5, 7), 1), ((2, 12, 1, 1), 3)]:
        x, _ = make_data(rng, shape, np.float32)
        y, ref, given = run(x, "nchw_strided", groups)
        assert given.flags.c_contiguous
        assert_close(y, ref, tolerance(np.float32, "normal"))
