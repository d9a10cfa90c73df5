"""Fused epilogues: activation after the affine, and the residual add before
normalizing (skip, skip_bias, return_sum), on every layout and dtype, against
the float64 oracle composed with a float64 activation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gncpu
from gncpu import reference
from conftest import (ACTIVATION_REL_TOL, LAYOUTS, VARIANTS, assert_bitwise_equal, assert_close,
                      assert_same_layout,
                      assert_matches_oracle, assert_same_nans, make_affine, make_data, offset_kind,
                      oracle, run_variant, to_layout, tolerance)

FLOAT_DTYPES = [np.float32, np.float64, np.float16]
ACTIVATIONS = [None, "silu", "relu", "gelu", "gelu_tanh"]

# (N, C, *spatial) problems, in NCHW terms (converted per layout).
CASES = [
    ((2, 12, 7), 3),
    ((1, 24, 65), 4),
    ((2, 40, 11, 13), 8),
    ((1, 6, 83, 79), 3),     # NCHW: chunk-split plan, groups of several chunks
]
LARGE = ((1, 320, 32, 32), 32)


def case_id(case):
    shape, groups = case
    return "x".join(map(str, shape)) + f"/{groups}"


def layout_kwargs_for(layout, arrays):
    """Convert NCHW `arrays` (a dict of name -> array or None) to `layout`."""
    return {name: None if a is None else to_layout(a, layout)[0] for name, a in arrays.items()}


@pytest.mark.parametrize("data", ["normal", "offset"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES + [LARGE], ids=case_id)
def test_activation_matches_composed_oracle(rng, case, layout, dtype, activation, data):
    shape, groups = case
    kind = offset_kind(dtype) if data == "offset" else "normal"
    x, eps = make_data(rng, shape, dtype, kind)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    given, kwargs = to_layout(x, layout)
    y = gncpu.group_norm(given, groups, weight, bias, eps, activation=activation, **kwargs)
    ref = reference.apply_activation(oracle(given, groups, weight, bias, eps, **kwargs), activation)
    assert_same_layout(y, given)
    assert_matches_oracle(y, ref, dtype, kind, fused=True)


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])  # the kernel's two layouts
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
def test_activation_accuracy_over_a_wide_range(rng, variant, layout, activation):
    """The float32 activation itself, on the kernel's own pre-activation
    output spanning |y| from 1e-3 to 3e3 (channels scaled by the weights),
    within ACTIVATION_REL_TOL * max(1, |y|) of float64."""
    module = dict(VARIANTS)[variant]
    channels = 64
    x, _ = make_data(rng, (1, channels, 40, 41), np.float32)
    signs = np.where(np.arange(channels) % 2, 1.0, -1.0)
    weight = (np.logspace(-3, 3.5, channels) * signs).astype(np.float32)
    given, kwargs = to_layout(x, layout)
    plain = run_variant(module, given, 4, weight, threads=2, **kwargs)
    fused = run_variant(module, given, 4, weight, threads=2, activation=activation, **kwargs)
    ref = reference.apply_activation(plain, activation)
    relative = np.abs(fused - ref) / np.maximum(1.0, np.abs(ref))
    assert relative.max() <= ACTIVATION_REL_TOL, \
        f"{relative.max():.2e} at y = {plain.flat[np.argmax(relative)]!r}"


EXTREMES = [np.inf, -np.inf, np.nan, 3e38, -3e38, 1e30, -1e30, 100.0, -100.0, 88.5, -88.5, -104.0,
            -110.0, 20.0, -20.0, 1e-40, -1e-40, 0.0, -0.0]


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_extreme_pre_activation_values_behave_as_the_unfused_composition(rng, layout, dtype,
                                                                         activation):
    """Zero weights make y = bias exactly, so the activation sees the bias
    values: +-Inf, NaN, near-overflow, exp's over/underflow points,
    subnormals, signed zeros. NaN and Inf come out where act(y) has them."""
    bias = np.array(EXTREMES, dtype)
    channels = bias.size
    x, _ = make_data(rng, (2, channels, 9, 8), dtype)
    given, kwargs = to_layout(x, layout)
    y = gncpu.group_norm(given, 1, np.zeros(channels, dtype), bias, activation=activation, **kwargs)
    channel_axis = -1 if layout == "nhwc" else 1
    per_channel = np.moveaxis(y, channel_axis, -1).reshape(-1, channels)
    nan = np.isnan(per_channel)
    assert ((per_channel == per_channel[0]) | (nan & nan[0])).all(), "a channel's outputs differ"
    got = per_channel[0].astype(np.float64)
    expected = reference.apply_activation(bias, activation)
    assert_same_nans(got, expected)
    finite = np.isfinite(expected)
    assert np.array_equal(got[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    relative = np.abs(got[finite] - expected[finite]) / np.maximum(1.0, np.abs(expected[finite]))
    assert relative.max() <= ACTIVATION_REL_TOL


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_finite_input_with_activation(rng, layout, dtype, activation):
    """A NaN or Inf poisons its group (all NaN after any activation, relu
    included); every other group matches the composed oracle."""
    shape, groups = (2, 12, 9, 7), 3
    x, _ = make_data(rng, shape, dtype)
    x[0, 4, 2, 3] = np.nan     # sample 0, group 1
    x[1, 11, 0, 0] = np.inf    # sample 1, group 2
    x[1, 0, 8, 6] = -np.inf    # sample 1, group 0
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    given, kwargs = to_layout(x, layout)
    y = gncpu.group_norm(given, groups, weight, bias, activation=activation, **kwargs)
    ref = reference.apply_activation(oracle(given, groups, weight, bias, **kwargs), activation)
    y_nchw = np.moveaxis(y, -1, 1) if layout == "nhwc" else y
    assert np.isnan(y_nchw[0, 4:8]).all() and np.isnan(y_nchw[1, 8:12]).all() \
        and np.isnan(y_nchw[1, 0:4]).all()
    assert_matches_oracle(y, ref, dtype, "normal", fused=True)


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_constant_group_gives_activated_bias(rng, layout, activation):
    x = np.full((2, 8, 6, 5), 2.5, np.float32)
    weight, bias = make_affine(rng, 8, np.float32, "normal")
    given, kwargs = to_layout(x, layout)
    y = gncpu.group_norm(given, 4, weight, bias, activation=activation, **kwargs)
    ref = reference.apply_activation(oracle(given, 4, weight, bias, **kwargs), activation)
    assert_close(y, ref, ACTIVATION_REL_TOL * 4)


# --------------------------------------------------------------------------- residual add

RESIDUALS = ["skip", "skip_bias", "both"]


def residual_inputs(rng, shape, dtype, residual):
    skip = rng.standard_normal(shape).astype(dtype) if residual in ("skip", "both") else None
    skip_bias = rng.standard_normal(shape[1]).astype(dtype) if residual in ("skip_bias", "both") \
        else None
    return skip, skip_bias


@pytest.mark.parametrize("return_sum, activation", [(False, None), (True, "silu")],
                         ids=["y_only", "with_sum_silu"])
@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES + [LARGE], ids=case_id)
def test_residual_matches_oracle(rng, case, layout, dtype, residual, return_sum, activation):
    """y vs the oracle; the returned sum bitwise equal to the oracle's sum,
    which rounds to the compute precision after each addition as gncpu does.
    (Other activation x residual pairs: test_random_epilogue_combinations.)"""
    shape, groups = case
    x, eps = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    skip, skip_bias = residual_inputs(rng, shape, dtype, residual)
    given, kwargs = to_layout(x, layout)
    skip_given = None if skip is None else to_layout(skip, layout)[0]
    result = gncpu.group_norm(given, groups, weight, bias, eps, activation=activation, skip=skip_given,
                              skip_bias=skip_bias, return_sum=return_sum, **kwargs)
    ref_y, ref_sum = oracle(given, groups, weight, bias, eps, skip=skip_given, skip_bias=skip_bias,
                            return_sum=True, **kwargs)
    ref_y = reference.apply_activation(ref_y, activation)
    if return_sum:
        y, total = result
        assert total.dtype == np.dtype(dtype)
        assert_same_layout(total, given)
        assert_bitwise_equal(total, ref_sum.astype(dtype), "(sum vs oracle)")
    else:
        y = result
    assert_same_layout(y, given)
    assert_matches_oracle(y, ref_y, dtype, "normal", fused=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_residual_with_offset_data(rng, layout, dtype):
    """skip carries the large offset: the sum must be normalized as accurately."""
    shape, groups = CASES[2]
    x, eps = make_data(rng, shape, dtype)
    skip, _ = make_data(rng, shape, dtype, "offset_1e4")
    given, kwargs = to_layout(x, layout)
    skip_given = to_layout(skip, layout)[0]
    y = gncpu.group_norm(given, groups, skip=skip_given, activation="silu", **kwargs)
    ref = reference.apply_activation(oracle(given, groups, skip=skip_given, **kwargs), "silu")
    assert_close(y, ref, tolerance(dtype, "offset_1e4", fused=True))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_finite_skip_poisons_its_group_and_sum_element(rng, layout, dtype):
    shape, groups = (2, 12, 9, 7), 3
    x, _ = make_data(rng, shape, dtype)
    skip = rng.standard_normal(shape).astype(dtype)
    skip[1, 5, 4, 4] = np.nan           # sample 1, group 1
    skip[0, 0, 0, 0] = np.inf
    x[0, 0, 0, 0] = -np.inf             # inf + -inf = NaN: sample 0, group 0
    given, kwargs = to_layout(x, layout)
    skip_given = to_layout(skip, layout)[0]
    y, total = gncpu.group_norm(given, groups, skip=skip_given, return_sum=True, activation="relu",
                                **kwargs)
    ref_y, ref_sum = oracle(given, groups, skip=skip_given, return_sum=True, **kwargs)
    assert_matches_oracle(y, reference.apply_activation(ref_y, "relu"), dtype, "normal", fused=True)
    assert_same_nans(total, ref_sum)
    y_nchw = np.moveaxis(y, -1, 1) if layout == "nhwc" else y
    total_nchw = np.moveaxis(total, -1, 1) if layout == "nhwc" else total
    assert np.isnan(y_nchw[1, 4:8]).all() and np.isnan(y_nchw[0, 0:4]).all()
    assert np.isnan(total_nchw).sum() == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_skip_of_another_dtype_or_layout(rng, layout):
    """skip is cast to the compute dtype and may be strided or have any
    memory layout."""
    shape, groups = CASES[2]
    x, _ = make_data(rng, shape, np.float32)
    skip64 = rng.standard_normal(shape)
    given, kwargs = to_layout(x, layout)
    skip_given = np.asfortranarray(to_layout(skip64, layout)[0])
    y = gncpu.group_norm(given, groups, skip=skip_given, **kwargs)
    expected = gncpu.group_norm(given, groups, skip=np.ascontiguousarray(skip_given, np.float32),
                                **kwargs)
    assert_bitwise_equal(y, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_residual_in_place_and_with_out(rng, layout, dtype):
    shape, groups = CASES[3]
    x, _ = make_data(rng, shape, dtype)
    skip, skip_bias = residual_inputs(rng, shape, dtype, "both")
    given, kwargs = to_layout(x, layout)
    skip_given = to_layout(skip, layout)[0]
    args = dict(skip=skip_given, skip_bias=skip_bias, activation="gelu", **kwargs)
    expected_y, expected_sum = gncpu.group_norm(given, groups, return_sum=True, **args)

    out = np.empty_like(given)
    out[...] = np.nan
    y, total = gncpu.group_norm(given, groups, out=out, return_sum=True, **args)
    assert y is out
    assert_bitwise_equal(out, expected_y)
    assert_bitwise_equal(total, expected_sum)

    skip_before = skip_given.copy()
    assert gncpu.group_norm(given, groups, out=given, **args) is given
    assert_bitwise_equal(given, expected_y)
    assert_bitwise_equal(skip_given, skip_before, "(skip modified)")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_not_modified(rng, layout, dtype):
    shape, groups = CASES[2]
    x, _ = make_data(rng, shape, dtype)
    skip, skip_bias = residual_inputs(rng, shape, dtype, "both")
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    given, kwargs = to_layout(x, layout)
    skip_given = to_layout(skip, layout)[0]
    arrays = [given, skip_given, skip_bias, weight, bias]
    saved = [a.copy() for a in arrays]
    gncpu.group_norm(given, groups, weight, bias, skip=skip_given, skip_bias=skip_bias,
                     return_sum=True, activation="silu", **kwargs)
    for now, then in zip(arrays, saved):
        assert_bitwise_equal(now, then, "(modified)")


@settings(max_examples=50, deadline=None)
@given(shape=st.sampled_from([c[0] for c in CASES[:3]] + [(3, 8, 5), (1, 16, 3, 3, 3)]),
       dtype=st.sampled_from(FLOAT_DTYPES), layout=st.sampled_from(LAYOUTS),
       activation=st.sampled_from(ACTIVATIONS), residual=st.sampled_from([None] + RESIDUALS),
       seed=st.integers(0, 2**32 - 1))
def test_random_epilogue_combinations(shape, dtype, layout, activation, residual, seed):
    rng = np.random.default_rng(seed)
    groups = 4 if shape[1] % 4 == 0 else 1
    x, eps = make_data(rng, shape, dtype)
    weight, bias = make_affine(rng, shape[1], dtype, "normal")
    skip, skip_bias = residual_inputs(rng, shape, dtype, residual) if residual else (None, None)
    given_array, kwargs = to_layout(x, layout)
    skip_given = None if skip is None else to_layout(skip, layout)[0]
    y = gncpu.group_norm(given_array, groups, weight, bias, eps, activation=activation,
                         skip=skip_given, skip_bias=skip_bias, **kwargs)
    ref = oracle(given_array, groups, weight, bias, eps, skip=skip_given, skip_bias=skip_bias, **kwargs)
    assert_same_layout(y, given_array)
    assert_matches_oracle(y, reference.apply_activation(ref, activation), dtype, "normal", fused=True)


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("variant", [name for name, _ in VARIANTS])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=case_id)
def test_fused_bitwise_across_thread_counts(rng, case, variant, layout):
    module = dict(VARIANTS)[variant]
    shape, groups = case
    x, eps = make_data(rng, shape, np.float32)
    skip, skip_bias = residual_inputs(rng, shape, np.float32, "both")
    weight, bias = make_affine(rng, shape[1], np.float32, "normal")
    given, kwargs = to_layout(x, layout)
    skip_given = to_layout(skip, layout)[0]

    def call(threads):
        total = np.empty_like(given)
        y = run_variant(module, given, groups, weight, bias, eps, threads=threads, activation="gelu",
                        skip=skip_given, skip_bias=skip_bias, sum_out=total, **kwargs)
        return y, total

    y1, total1 = call(1)
    for threads in (2, 3):
        y, total = call(threads)
        assert_bitwise_equal(y, y1, f"({threads} threads vs 1)")
        assert_bitwise_equal(total, total1, f"(sum, {threads} threads vs 1)")


# --------------------------------------------------------------------------- arguments


@pytest.fixture
def x():
    return np.random.default_rng(5).standard_normal((2, 4, 3)).astype(np.float32)


@pytest.mark.parametrize("name", ["swish", "SiLU", "", "none", 1, ("silu",)], ids=repr)
def test_unknown_activation(x, name):
    with pytest.raises(ValueError, match=r"activation=.* is not supported: expected None or one of "
                                         r"\['gelu', 'gelu_tanh', 'relu', 'silu'\]"):
        gncpu.group_norm(x, 2, activation=name)


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 4, 3), (2, 4), (2, 4, 3, 1)], ids=str)
def test_skip_of_wrong_shape(x, shape):
    with pytest.raises(ValueError, match=rf"skip has shape {re_shape(shape)}, expected the input's "
                                         rf"shape \(2, 4, 3\)"):
        gncpu.group_norm(x, 2, skip=np.zeros(shape, np.float32))


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64], ids=str)
def test_skip_of_wrong_dtype(x, dtype):
    with pytest.raises(ValueError, match=rf"skip must hold floating-point values, got dtype "
                                         rf"{np.dtype(dtype)}"):
        gncpu.group_norm(x, 2, skip=np.zeros(x.shape, dtype))


def test_non_array_skip_is_named(x):
    with pytest.raises(TypeError, match="skip"):
        gncpu.group_norm(x, 2, skip=x.tolist())


@pytest.mark.parametrize("value, message", [
    (np.zeros(3, np.float32), r"skip_bias must have shape \(4,\).*got shape \(3,\)"),
    (np.zeros((4, 1), np.float32), r"skip_bias must have shape \(4,\).*got shape \(4, 1\)"),
    (np.zeros(4, np.int64), r"skip_bias must hold floating-point values, got dtype int64"),
])
def test_skip_bias_validation(x, value, message):
    with pytest.raises(ValueError, match=message):
        gncpu.group_norm(x, 2, skip_bias=value)


def test_return_sum_needs_a_residual(x):
    with pytest.raises(ValueError, match=r"return_sum=True needs skip or skip_bias"):
        gncpu.group_norm(x, 2, return_sum=True)


def test_out_overlapping_skip(x):
    skip = np.zeros_like(x)
    with pytest.raises(ValueError, match=r"out overlaps skip"):
        gncpu.group_norm(x, 2, skip=skip, out=skip)


def test_channels_last_with_rank_two(x):
    with pytest.raises(ValueError, match=r"channels_last=True needs rank >= 3"):
        gncpu.group_norm(x[0], 2, channels_last=True, activation="silu")


def test_skip_must_match_the_channels_last_shape():
    nhwc = np.zeros((2, 5, 6), np.float32)
    with pytest.raises(ValueError, match=r"skip has shape \(2, 6, 5\)"):
        gncpu.group_norm(nhwc, 3, skip=np.zeros((2, 6, 5), np.float32), channels_last=True)


@pytest.mark.parametrize("return_sum", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=case_id)
def test_skip_may_be_the_input_itself_even_in_place(rng, case, layout, return_sum):
    shape, groups = case
    x, _ = make_data(rng, shape, np.float32)
    given, kwargs = to_layout(x, layout)
    expected = gncpu.group_norm(given, groups, skip=given.copy(), **kwargs)
    alias = given.copy()
    result = gncpu.group_norm(alias, groups, skip=alias, out=alias, return_sum=return_sum, **kwargs)
    y = result[0] if return_sum else result
    assert y is alias
    assert_bitwise_equal(y, expected)
    if return_sum:
        assert_bitwise_equal(result[1], given + given)
