"""gncpu.group_norm against the float64 oracle: shapes, dtypes, adversarial
data, special values, memory layouts, out= and in-place, input safety, leaks."""
import gc
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gncpu
from conftest import (F32_GENERIC_ULPS, F32_TOL, F64_TOL, VARIANTS, assert_bitwise_equal,
                      assert_close, assert_f16_close, assert_matches_oracle, make_affine, make_data,
                      offset_kind, oracle, run_variant, tolerance)
from gncpu import reference

FLOAT_DTYPES = [np.float32, np.float64, np.float16]

# Spatial shapes for ranks 2-5, with sizes 1, odd and prime.
SPATIAL = [(), (1,), (7,), (13,), (1, 1), (5, 7), (11, 3), (3, 5, 2), (1, 7, 1)]
CHANNELS = 12
GROUPS = [1, 3, CHANNELS]  # one group, a divisor, one channel per group

# A couple of shapes big enough to run multi-threaded and to span several
# 4096-element chunks per group, with group lengths that are not multiples of
# the kernel's 64 lanes.
LARGE = [
    ((1, 32, 64, 64), 32),   # SD-like: 32 groups of exactly one chunk
    ((1, 32, 64, 64), 1),    # LayerNorm-like: one group of 32 chunks
    ((1, 6, 83, 79), 2),     # 2 groups of 19671 = 4 chunks + 3287 (3287 % 64 = 23)
    ((1, 6, 83, 79), 3),     # 3 groups of 13114 = 3 chunks + 826 (826 % 64 = 58)
]


def large_id(case):
    shape, groups = case
    return "x".join(map(str, shape)) + f"/{groups}"


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("data", ["normal", "offset"])
@pytest.mark.parametrize("affine", ["unit", "normal"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("spatial", SPATIAL, ids=str)
def test_matches_oracle(rng, spatial, n, groups, dtype, affine, data):
    kind = offset_kind(dtype) if data == "offset" else "normal"
    shape = (n, CHANNELS) + spatial
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, CHANNELS, dtype, affine)
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    assert_matches_oracle(y, oracle(x, groups, weight, bias, eps), dtype, kind)


@pytest.mark.parametrize("data", ["normal", "offset"])
@pytest.mark.parametrize("affine", ["unit", "normal"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", LARGE, ids=large_id)
def test_large_shapes_match_oracle(rng, case, dtype, affine, data):
    kind = offset_kind(dtype) if data == "offset" else "normal"
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, affine)
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    assert_matches_oracle(y, oracle(x, groups, weight, bias, eps), dtype, kind)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_without_affine_matches_oracle(rng, dtype):
    x, eps = make_data(rng, (2, 6, 9, 5), dtype)
    assert_matches_oracle(gncpu.group_norm(x, 3), oracle(x, 3), dtype, "normal")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_weight_or_bias_alone(rng, dtype, which):
    x, eps = make_data(rng, (2, 6, 9, 5), dtype)
    param = {which: rng.standard_normal(6).astype(dtype)}
    y = gncpu.group_norm(x, 3, **param)
    assert_matches_oracle(y, oracle(x, 3, **param), dtype, "normal")


@pytest.mark.parametrize("param_dtype", [np.float16, np.float32, np.float64, ">f4"], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_weights_of_another_float_dtype_or_a_list(rng, dtype, param_dtype):
    """Weights are cast to the compute dtype (float32 for float16 input)."""
    x, eps = make_data(rng, (2, 6, 9, 5), dtype)
    weight = rng.standard_normal(6).astype(param_dtype)
    bias = rng.standard_normal(6).astype(param_dtype).tolist()
    y = gncpu.group_norm(x, 3, weight, bias)
    compute = np.float32 if np.dtype(dtype) == np.float16 else dtype
    # the oracle sees the weights as the kernel does: rounded to the compute dtype
    ref = oracle(x, 3, weight.astype(compute), np.asarray(bias, compute))
    assert_matches_oracle(y, ref, dtype, "normal")


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 0.1, 10.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_eps_values(rng, dtype, eps):
    x, _ = make_data(rng, (2, 8, 6, 7), dtype)
    assert_close(gncpu.group_norm(x, 4, eps=eps), oracle(x, 4, eps=eps),
                 F32_TOL["normal"] if dtype == np.float32 else F64_TOL["normal"])


def test_eps_accepts_numpy_scalars(rng):
    x, _ = make_data(rng, (2, 8, 6), np.float32)
    y = gncpu.group_norm(x, 4, eps=np.float32(1e-3))
    assert_close(y, oracle(x, 4, eps=float(np.float32(1e-3))), F32_TOL["normal"])


def test_output_dtype_follows_input(rng):
    for dtype in FLOAT_DTYPES:
        x, _ = make_data(rng, (2, 4, 5), dtype)
        assert gncpu.group_norm(x, 2).dtype == np.dtype(dtype)


def test_float16_is_computed_in_float32_not_float16(rng):
    """Summing 2048 values near 1e3 overflows float16 (max 65504); computed in
    float32 the result stays within 1 ulp."""
    x, eps = make_data(rng, (2, 8, 16, 16), np.float16, "offset_1e3")
    assert np.ptp(x) > 0
    assert_f16_close(gncpu.group_norm(x, 4), oracle(x, 4), "offset_1e3")


# --------------------------------------------------------------------------- adversarial data


# 1e6 is beyond float16's range (65504): float16 gets the other kinds only.
ADVERSARIAL = [(dtype, kind) for dtype in FLOAT_DTYPES
               for kind in ["offset_1e6", "tiny_std", "tiny_std_offset"]
               if not (dtype == np.float16 and kind == "offset_1e6")]


@pytest.mark.parametrize("affine", ["unit", "normal"])
@pytest.mark.parametrize("dtype, kind", ADVERSARIAL,
                         ids=[f"{np.dtype(d).name}-{k}" for d, k in ADVERSARIAL])
@pytest.mark.parametrize("case", [((2, 12, 7, 5), 3), ((5, 12, 13), 12), LARGE[1], LARGE[3]],
                         ids=large_id)
def test_adversarial_data_matches_oracle(rng, case, dtype, kind, affine):
    shape, groups = case
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, affine)
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    assert_matches_oracle(y, oracle(x, groups, weight, bias, eps), dtype, kind)


def chunk_start_outliers(rng, shape, dtype):
    """1e4 + N(0,1) data whose every 4096-element chunk (the kernel's
    statistics block) starts with 8 values 1e3 above the rest: a centre taken
    from a chunk's first 64 elements lies ~3 standard deviations from its mean."""
    x = 1e4 + rng.standard_normal(shape)
    flat = x.reshape(-1)
    for start in range(0, flat.size, 4096):
        flat[start:start + 8] += 1e3
    return x.astype(dtype)


def channel_mean_spread(rng, shape, dtype):
    """Channels whose means differ by ~50 standard deviations, on an offset of
    1e4: each chunk of a 16x16 map spans 16 channels, and its first elements
    all belong to the first one."""
    means = 1e4 + 50 * rng.standard_normal(shape[1])
    return (means[:, None, None] + rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("make", [chunk_start_outliers, channel_mean_spread])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
def test_chunks_far_from_their_first_elements(rng, variant, dtype, threads, make):
    """The statistics centre each chunk on its first elements; a chunk whose
    mean lies far from them must be summed again about its mean rather than
    lose digits to cancellation."""
    shape, groups = (2, 64, 16, 16), 4    # groups of 4096 * 4: 4 chunks each
    x = make(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    module = dict(VARIANTS)[variant]
    y = run_variant(module, x, groups, weight, bias, 1e-5, threads)
    assert_matches_oracle(y, oracle(x, groups, weight, bias, 1e-5), dtype, "offset_1e4")


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e36])
@pytest.mark.parametrize("case", [((2, 8, 5, 7), 4), LARGE[0], LARGE[1]], ids=large_id)
def test_huge_float32_magnitudes(rng, case, scale):
    """(x - mean)**2 overflows float32 beyond ~1e19: the kernel must fall back
    to float64 statistics rather than return NaN or 0."""
    shape, groups = case
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    assert np.isfinite(x).all()
    y = gncpu.group_norm(x, groups)
    assert np.isfinite(y).all()
    assert_close(y, oracle(x, groups), F32_TOL["normal"])


@pytest.mark.parametrize("data", ["constant_3e38", "alternating_3e38", "constant_1e37_long_group",
                                  "normal_times_1e38"])
def test_float32_values_near_the_maximum(data):
    rng = np.random.default_rng(11)
    if data == "constant_3e38":
        x, groups = np.full((1, 4, 100), 3e38, np.float32), 2          # expected: all 0 (beta)
    elif data == "alternating_3e38":
        x, groups = np.full((1, 4, 100), 3e38, np.float32), 2
        x[..., ::2] = -3e38                                             # expected: -1, +1, ...
    elif data == "constant_1e37_long_group":
        x, groups = np.full((1, 2, 64, 64), 1e37, np.float32), 1       # 64 lanes x 128 values
    else:
        x, groups = (np.clip(rng.standard_normal((1, 8, 16, 16)), -3, 3) * 1e38).astype(np.float32), 2
    assert np.isfinite(x).all()
    y = gncpu.group_norm(x, groups)
    assert_close(y, oracle(x, groups), F32_TOL["normal"])


@pytest.mark.parametrize("scale", [1e-20, 1e100, 1e150])
def test_extreme_float64_magnitudes(rng, scale):
    x = rng.standard_normal((2, 8, 5, 7)) * scale
    y = gncpu.group_norm(x, 4, eps=0.0)
    assert_close(y, oracle(x, 4, eps=0.0), F64_TOL["normal"])


def test_tiny_float32_magnitudes_with_zero_eps(rng):
    """Squares of |x| ~ 1e-25 underflow float32: normalization must still
    be scale-free with eps = 0."""
    x = (rng.standard_normal((1, 8, 8, 8)) * 1e-25).astype(np.float32)
    assert_close(gncpu.group_norm(x, 2, eps=0.0), oracle(x, 2, eps=0.0), F32_TOL["normal"])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [1e160, 1e300])
def test_huge_float64_magnitudes_are_scale_invariant(rng, scale, channels_last):
    x = rng.standard_normal((1, 8, 8, 8))
    y = gncpu.group_norm(x * scale, 2, eps=0.0, channels_last=channels_last)
    assert_close(y, oracle(x, 2, eps=0.0, channels_last=channels_last), F64_TOL["normal"])


@pytest.mark.parametrize("activation", [None, "silu"], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [1e-40, 1e-44])
def test_subnormal_float32_magnitudes_with_zero_eps(rng, scale, channels_last, activation):
    """1/std ~ 1e40 is beyond float32: the scale must not overflow to Inf."""
    x = (rng.standard_normal((1, 8, 8, 8)) * scale).astype(np.float32)
    weight, bias = make_affine(rng, 8, np.float32, "normal")
    y = gncpu.group_norm(x, 2, weight, bias, eps=0.0, channels_last=channels_last,
                         activation=activation)
    ref = reference.apply_activation(oracle(x, 2, weight, bias, eps=0.0, channels_last=channels_last),
                                     activation)
    assert_close(y, ref, tolerance(np.float32, "normal", fused=activation is not None))


def test_small_float32_magnitudes_with_zero_eps(rng):
    """Down to |x| ~ 1e-15 the float32 squares are normal numbers: exact scaling."""
    x = (rng.standard_normal((1, 8, 8, 8)) * 1e-15).astype(np.float32)
    assert_close(gncpu.group_norm(x, 2, eps=0.0), oracle(x, 2, eps=0.0), F32_TOL["normal"])


# --------------------------------------------------------------------------- special values


CONSTANTS = [0.0, 1.0, 0.1, -3.3e5, 1e4 + 0.5, 1e30, 1e-30, -7.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("value", CONSTANTS)
@pytest.mark.parametrize("case", [((2, 6, 5, 7), 3), LARGE[1], LARGE[3]], ids=large_id)
def test_constant_groups_give_bias_exactly(rng, case, value, dtype):
    shape, groups = case
    x = np.full(shape, value, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    y = gncpu.group_norm(x, groups, weight, bias)
    assert_bitwise_equal(y, np.broadcast_to(bias.reshape((1, -1) + (1,) * (len(shape) - 2)), shape))
    y = gncpu.group_norm(x, groups)
    assert not np.any(y), "a constant group without bias must normalize to exactly 0"


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, -3.3e3, 1e4 + 0.5])
def test_constant_groups_give_bias_float16(rng, value):
    x = np.full((2, 6, 5, 7), value, np.float16)
    bias = rng.standard_normal(6).astype(np.float16)
    y = gncpu.group_norm(x, 3, None, bias)
    assert_bitwise_equal(y, np.broadcast_to(bias[None, :, None, None], x.shape))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_constant_group_among_random_groups(rng, dtype):
    x, eps = make_data(rng, (2, 8, 9, 11), dtype)
    x[1, 2:4] = 3.25  # sample 1, group 1 (channels 2, 3) constant
    weight, bias = make_affine(rng, 8, dtype, "normal")
    y = gncpu.group_norm(x, 4, weight, bias)
    assert_bitwise_equal(y[1, 2:4], np.broadcast_to(bias[2:4, None, None], (2, 9, 11)))
    assert_matches_oracle(y, oracle(x, 4, weight, bias), dtype, "normal")


def _position_in_group(where, length):
    return {"first": 0, "last": length - 1, "middle": length // 2, "near_end": length - 2,
            "second_chunk": min(4096 + 5, length - 1)}[where]


# (shape, groups, threads): per-(sample, group) plan, and the chunk-split plan
# (3 groups for 2 threads) with groups spanning several chunks.
NONFINITE_CASES = [((2, 6, 9, 7), 3, 1), ((1, 6, 83, 79), 3, 2), ((1, 6, 83, 79), 3, 1)]


@pytest.mark.parametrize("where", ["first", "last", "middle", "near_end", "second_chunk"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "inf_and_-inf"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: f"{large_id(c[:2])}-threads{c[2]}")
def test_non_finite_value_poisons_only_its_group(rng, case, dtype, value, where):
    shape, groups, threads = case
    x, _ = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    clean = gncpu.group_norm(x, groups, weight, bias, num_threads=threads)

    sample, group = shape[0] - 1, 1
    cpg = shape[1] // groups
    block = x[sample, group * cpg:(group + 1) * cpg].reshape(-1)  # a view into x
    pos = _position_in_group(where, block.size)
    if value == "inf_and_-inf":
        block[pos], block[(pos + 1) % block.size] = np.inf, -np.inf
    else:
        block[pos] = float(value)
    y = gncpu.group_norm(x, groups, weight, bias, num_threads=threads)

    bad = y[sample, group * cpg:(group + 1) * cpg]
    assert np.isnan(bad).all(), f"{int((~np.isnan(bad)).sum())} outputs of the poisoned group are not NaN"
    bad[...] = 0
    clean[sample, group * cpg:(group + 1) * cpg] = 0
    assert_bitwise_equal(y, clean, "outside the poisoned group")


@pytest.mark.parametrize("which", ["weight", "bias"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_parameter_poisons_only_its_channel(rng, dtype, which):
    x, _ = make_data(rng, (2, 6, 5, 7), dtype)
    weight, bias = make_affine(rng, 6, dtype, "normal")
    clean = gncpu.group_norm(x, 3, weight, bias)
    {"weight": weight, "bias": bias}[which][4] = np.nan
    y = gncpu.group_norm(x, 3, weight, bias)
    assert np.isnan(y[:, 4]).all()
    y[:, 4] = clean[:, 4] = 0
    assert_bitwise_equal(y, clean, "outside the NaN channel")


# --------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3), (2, 4, 0), (2, 4, 3, 0), (2, 4, 0, 5, 3), (2, 0, 3)],
                         ids=str)
def test_empty_input_returns_empty_result(shape, dtype):
    x = np.empty(shape, dtype)
    channels = shape[1]
    groups = 2 if channels else 1
    weight = np.ones(channels, dtype)
    y = gncpu.group_norm(x, groups, weight, weight)
    assert y.shape == shape and y.dtype == np.dtype(dtype)
    out = np.empty(shape, dtype)
    assert gncpu.group_norm(x, groups, out=out, num_threads=2) is out


@pytest.mark.parametrize("shape", [(0, 4, 3), (0, 4)], ids=str)
def test_reference_handles_empty_input(shape):
    y = reference.group_norm(np.empty(shape, np.float32), 2)
    assert y.shape == shape and y.dtype == np.float64


# --------------------------------------------------------------------------- layouts


def _strided_views(x):
    """Non-contiguous views of x's values that are not channels-last either
    (those run without a copy: tests/test_channels_last.py)."""
    wide = np.repeat(x, 2, axis=-1)
    reversed_ = np.ascontiguousarray(x[..., ::-1])
    return {
        "every_other": wide[..., ::2],
        "fortran": np.asfortranarray(x),
        "negative_strides": reversed_[..., ::-1],
        "broadcast_batch": np.broadcast_to(x[:1], x.shape),
    }


@pytest.mark.parametrize("layout", ["every_other", "fortran", "negative_strides", "broadcast_batch"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_non_contiguous_input(rng, dtype, layout):
    x, _ = make_data(rng, (3, 6, 5, 7), dtype)
    view = _strided_views(x)[layout]
    assert not view.flags.c_contiguous
    before = view.copy()
    weight, bias = make_affine(rng, 6, dtype, "normal")
    y = gncpu.group_norm(view, 3, weight, bias)
    assert y.flags.c_contiguous
    assert_bitwise_equal(y, gncpu.group_norm(np.ascontiguousarray(view), 3, weight, bias))
    assert_matches_oracle(y, oracle(view, 3, weight, bias), dtype, "normal")
    out = np.full(view.shape, np.nan, dtype)
    assert gncpu.group_norm(view, 3, weight, bias, out=out) is out
    assert_bitwise_equal(out, y)
    assert_bitwise_equal(view, before, "(input modified)")


def test_read_only_input(rng):
    x, _ = make_data(rng, (2, 6, 5, 7), np.float32)
    x.flags.writeable = False
    assert_close(gncpu.group_norm(x, 3), oracle(x, 3), F32_TOL["normal"])


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_misaligned_buffers(rng, variant):
    """Arrays from a byte buffer at an odd offset (e.g. parsed from a file) are
    C-contiguous but not float-aligned: no crash, same results."""
    module = dict(VARIANTS)[variant]
    x0, _ = make_data(rng, (2, 16, 33, 35), np.float32)
    x = np.ndarray(x0.shape, np.float32, buffer=memoryview(bytearray(x0.nbytes + 1))[1:])
    out = np.ndarray(x0.shape, np.float32, buffer=memoryview(bytearray(x0.nbytes + 3))[3:])
    x[...] = x0
    assert not x.flags.aligned and not out.flags.aligned
    for groups, threads in [(4, 1), (4, 2), (1, 2)]:
        run_variant(module, x, groups, threads=threads, out=out)
        assert_bitwise_equal(out, run_variant(module, x0, groups, threads=threads))
    assert_close(gncpu.group_norm(x, 4, out=out), oracle(x0, 4), F32_TOL["normal"])


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_big_endian_input(rng, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    x, _ = make_data(rng, (2, 6, 5, 7), native)
    x_be = x.astype(dtype)
    before = x_be.copy()
    weight = rng.standard_normal(6).astype(dtype)
    y = gncpu.group_norm(x_be, 3, weight)
    assert y.dtype == native
    assert_bitwise_equal(y, gncpu.group_norm(x, 3, weight.astype(native)))
    assert_matches_oracle(y, oracle(x, 3, weight), native, "normal")
    out = np.empty(x.shape, native)
    assert gncpu.group_norm(x_be, 3, weight, out=out) is out
    assert_bitwise_equal(out, y)
    assert_bitwise_equal(x_be, before, "(input modified)")


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_big_endian_out_like_the_input(rng, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    x = make_data(rng, (2, 6, 5, 7), native)[0].astype(dtype)
    out = np.empty_like(x)
    assert gncpu.group_norm(x, 3, out=out) is out
    assert out.dtype == np.dtype(dtype)
    assert_bitwise_equal(out.astype(native), gncpu.group_norm(x, 3))


class _ArrayLike:
    def __init__(self, array):
        self._array = array

    def __array__(self, dtype=None, copy=None):
        return self._array


class _DLPackOnly:
    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("wrap", [_ArrayLike, _DLPackOnly, lambda a: a.view(_Subclass)],
                         ids=["__array__", "__dlpack__", "ndarray_subclass"])
def test_array_like_inputs(rng, wrap):
    x, _ = make_data(rng, (2, 6, 5, 7), np.float32)
    y = gncpu.group_norm(wrap(x), 3)
    assert type(y) is np.ndarray
    assert_bitwise_equal(y, gncpu.group_norm(x, 3))


# --------------------------------------------------------------------------- out= and in-place


POISONS = {"nan": np.nan, "inf": np.inf, "huge": 1.2345e30, "neg_zero": -0.0}


@pytest.mark.parametrize("poison", [*POISONS, "ff_bytes"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [((2, 6, 5, 7), 3), ((3, 4, 1), 4), LARGE[0], LARGE[1], LARGE[3]],
                         ids=large_id)
def test_poisoned_out_is_fully_overwritten(rng, case, dtype, poison):
    shape, groups = case
    x, _ = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    out = np.empty(shape, dtype)
    if poison == "ff_bytes":
        out.view(np.uint8)[...] = 0xFF  # a NaN pattern in every float width
    else:
        out[...] = POISONS[poison]
    assert gncpu.group_norm(x, groups, weight, bias, out=out) is out
    assert_bitwise_equal(out, gncpu.group_norm(x, groups, weight, bias))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", [((2, 6, 5, 7), 3), ((8, 96, 7, 7), 2), LARGE[0], LARGE[1], LARGE[3]],
                         ids=large_id)
def test_in_place(rng, case, dtype, threads):
    shape, groups = case
    x, _ = make_data(rng, shape, dtype, "offset_1e4" if dtype != np.float16 else "normal")
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    expected = gncpu.group_norm(x, groups, weight, bias, num_threads=threads)
    assert gncpu.group_norm(x, groups, weight, bias, out=x, num_threads=threads) is x
    assert_bitwise_equal(x, expected)


def test_in_place_through_an_identical_view(rng):
    """out may be a different array object over exactly the input's memory."""
    x, _ = make_data(rng, (2, 6, 5, 7), np.float32)
    expected = gncpu.group_norm(x, 3)
    alias = x[...]
    assert alias is not x
    assert gncpu.group_norm(x, 3, out=alias) is alias
    assert_bitwise_equal(x, expected)


def test_out_disjoint_from_input_in_one_buffer(rng):
    """Two non-overlapping halves of one buffer: input one half, out the other."""
    buffer = np.empty(2 * 6 * 35, np.float32)
    x = buffer[:6 * 35].reshape(1, 6, 5, 7)
    out = buffer[6 * 35:].reshape(1, 6, 5, 7)
    x[...] = rng.standard_normal(x.shape)
    before = x.copy()
    gncpu.group_norm(x, 3, out=out)
    assert_close(out, oracle(before, 3), F32_TOL["normal"])
    assert_bitwise_equal(x, before, "(input modified)")


# --------------------------------------------------------------------------- input safety


@pytest.mark.parametrize("path", ["contiguous", "strided", "big_endian", "with_out", "large"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_input_and_parameters_not_modified(rng, dtype, path):
    shape = LARGE[1][0] if path == "large" else (2, 6, 5, 7)
    x, _ = make_data(rng, shape, dtype)
    if path == "strided":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif path == "big_endian":
        x = x.astype(np.dtype(dtype).newbyteorder(">"))
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    saved = [a.copy() for a in (x, weight, bias)]
    out = np.empty(shape, x.dtype.newbyteorder("=")) if path == "with_out" else None
    gncpu.group_norm(x, 2, weight, bias, out=out)
    for name, now, then in zip(["input", "weight", "bias"], (x, weight, bias), saved):
        assert_bitwise_equal(now, then, f"({name} modified)")


# --------------------------------------------------------------------------- property-based


@st.composite
def group_norm_problems(draw):
    rank = draw(st.integers(2, 5))
    n = draw(st.integers(0, 3))
    groups = draw(st.integers(1, 4))
    channels = groups * draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(0, 6), min_size=rank - 2, max_size=rank - 2)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    kind = draw(st.sampled_from(["normal", offset_kind(dtype)]))
    affine = draw(st.sampled_from(["none", "unit", "normal"]))
    strided = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, channels) + spatial, groups, dtype, kind, affine, strided, seed


@settings(max_examples=50, deadline=None)
@given(group_norm_problems())
def test_random_shapes_match_oracle(problem):
    shape, groups, dtype, kind, affine, strided, seed = problem
    rng = np.random.default_rng(seed)
    x, eps = make_data(rng, shape, dtype, kind)
    if strided:
        x = np.repeat(x, 2, axis=1)[:, ::2]
    weight, bias = make_affine(rng, shape[1], dtype, affine)
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    assert y.shape == shape
    assert_matches_oracle(y, oracle(x, groups, weight, bias, eps), dtype, kind)


def generic_f32_bound(x, groups, weight, bias, eps):
    """Per-element error allowed for arbitrary float32 values: a few dozen
    roundings of |(x - mean) * rstd * w| (bounded through the group's spread,
    as the kernel centres its sums) plus |b|; plus subnormal rounding
    (2**-149) of the mean's two float32 parts, which rstd * w scales, and of
    the kernel's folded factor rstd * w for tiny weights, which x - mean
    scales."""
    x64 = x.astype(np.float64)
    n, c = x.shape[:2]
    g = x64.reshape(n, groups, -1)
    spread = g.max(axis=2) - g.min(axis=2)
    rstd = 1.0 / np.sqrt(g.var(axis=2) + eps)
    expand = (n, c) + (1,) * (x.ndim - 2)
    per_channel = lambda v: np.repeat(v, c // groups, axis=1).reshape(expand)  # noqa: E731
    spread, rstd = per_channel(spread), per_channel(rstd)
    w, b = np.abs(weight).reshape(expand[1:]), np.abs(bias).reshape(expand[1:])
    return F32_GENERIC_ULPS * (np.finfo(np.float32).eps * (spread * rstd * w + b)
                               + 2.0**-149 * (1.0 + spread + rstd * w))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_float32_values_match_oracle(data):
    groups = data.draw(st.integers(1, 3))
    shape = (data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 3)),
             data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    values = st.floats(-1e6, 1e6, width=32, allow_subnormal=True)
    x = data.draw(hnp.arrays(np.float32, shape, elements=values))
    weight = data.draw(hnp.arrays(np.float32, shape[1], elements=st.floats(-10, 10, width=32)))
    bias = data.draw(hnp.arrays(np.float32, shape[1], elements=st.floats(-10, 10, width=32)))
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    ref = oracle(x, groups, weight, bias, eps)
    bound = generic_f32_bound(x, groups, weight, bias, eps)
    excess = np.abs(y.astype(np.float64) - ref) - bound
    assert excess.max() <= 0, f"error exceeds the bound by {excess.max():.3e} at {np.argmax(excess)}"


@settings(max_examples=50, deadline=None)
@given(problem=group_norm_problems())
def test_groups_and_samples_are_independent(problem):
    """Normalizing a batch equals normalizing each sample alone, and each group
    alone as a one-group problem with its channels' weights: bitwise."""
    shape, groups, dtype, kind, _, _, seed = problem
    rng = np.random.default_rng(seed)
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    y = gncpu.group_norm(x, groups, weight, bias, eps)
    cpg = shape[1] // groups
    for n in range(shape[0]):
        for g in range(groups):
            part = slice(g * cpg, (g + 1) * cpg)
            alone = gncpu.group_norm(np.ascontiguousarray(x[n:n + 1, part]), 1, weight[part],
                                     bias[part], eps)
            assert_bitwise_equal(y[n:n + 1, part], alone, f"(sample {n}, group {g})")


# --------------------------------------------------------------------------- memory


def test_no_reference_leaks(rng):
    x, _ = make_data(rng, (2, 8, 6, 6), np.float32)
    weight, bias = make_affine(rng, 8, np.float32, "normal")
    out = np.empty_like(x)
    counts = [sys.getrefcount(a) for a in (x, weight, bias, out)]
    for _ in range(1000):
        gncpu.group_norm(x, 4, weight, bias, out=out)
        gncpu.group_norm(x, 4, weight, bias)
        with pytest.raises(ValueError):
            gncpu.group_norm(x, 3, weight, bias)
    gc.collect()
    assert [sys.getrefcount(a) for a in (x, weight, bias, out)] == counts


def test_memory_stable_over_ten_thousand_calls(rng):
    """10^4 calls through every Python path, both layouts and the epilogues.
    Each call allocates >= 4 KiB of output, and the wide channels-last call
    ~0.5 MB of kernel scratch, so leaking either would add >= 40 MB."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    x32, _ = make_data(rng, (1, 8, 12, 12), np.float32)
    x16 = x32.astype(np.float16)
    strided = np.repeat(x32, 2, axis=-1)[..., ::2]
    channels_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x32, 1, -1)), -1, 1)
    skip = np.ones_like(x32)
    wide, _ = make_data(rng, (8, 1, 1, 1280), np.float32)  # NHWC scratch: ~46 KB per row block
    weight, bias = make_affine(rng, 8, np.float32, "normal")
    chunked, _ = make_data(rng, (1, 3, 40, 40), np.float32)  # 3 groups, 2 threads: chunk plan
    chunked_out = np.empty_like(chunked)
    kernel = VARIANTS[-1][1]

    def calls(count):
        for i in range(count):
            step = i % 6
            if i % 50 == 0:
                # few: a 2-thread fork/join on a loaded machine can take milliseconds
                run_variant(kernel, chunked, 3, threads=2, out=chunked_out)
            if step == 0:
                gncpu.group_norm(x32, 4, weight, bias)
            elif step == 1:
                gncpu.group_norm(x16, 2, activation="silu")
            elif step == 2:
                gncpu.group_norm(strided, 8, weight)
            elif step == 3:
                gncpu.group_norm(channels_last, 4, weight, bias, skip=skip, return_sum=True)
            elif step == 4:
                gncpu.group_norm(wide, 32, channels_last=True, activation="gelu")
            else:
                try:
                    gncpu.group_norm(x32, 4, out=x16)
                except ValueError:
                    pass

    calls(1000)  # warm up allocator pools and OpenMP thread stacks
    gc.collect()
    before = process.memory_info().rss
    calls(10_000)
    gc.collect()
    grown = process.memory_info().rss - before
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 10^4 calls"
