"""gncpu.GroupNorm: construction, parameters, calls, errors."""
import re

import numpy as np
import pytest

import gncpu
from conftest import F32_TOL, F64_TOL, assert_bitwise_equal, assert_close, make_data, oracle


def test_defaults_are_identity_affine(rng):
    module = gncpu.GroupNorm(4, 8)
    assert (module.num_groups, module.num_channels, module.eps, module.affine) == (4, 8, 1e-5, True)
    assert module.weight.dtype == np.float32 and module.weight.shape == (8,)
    assert module.bias.dtype == np.float32 and module.bias.shape == (8,)
    assert (module.weight == 1).all() and (module.bias == 0).all()
    x, _ = make_data(rng, (2, 8, 5, 5), np.float32)
    assert_bitwise_equal(module(x), gncpu.group_norm(x, 4))
    assert_close(module(x), oracle(x, 4), F32_TOL["normal"])


def test_weights_can_be_replaced(rng):
    module = gncpu.GroupNorm(2, 6, eps=1e-3)
    module.weight = rng.standard_normal(6).astype(np.float32)
    module.bias = rng.standard_normal(6).astype(np.float32)
    x, _ = make_data(rng, (3, 6, 7), np.float32)
    assert_close(module(x), oracle(x, 2, module.weight, module.bias, 1e-3), F32_TOL["normal"])


def test_weights_can_be_modified_in_place(rng):
    module = gncpu.GroupNorm(3, 6)
    x, _ = make_data(rng, (2, 6, 4, 4), np.float32)
    before = module(x)
    module.weight[:] = 2.0
    module.bias[1] = 5.0
    after = module(x)
    expected = oracle(x, 3, np.full(6, 2.0), np.array([0, 5.0, 0, 0, 0, 0]))
    assert_close(after, expected, 2 * F32_TOL["normal"])
    assert not np.array_equal(before, after)


def test_affine_false_has_no_parameters(rng):
    module = gncpu.GroupNorm(2, 4, affine=False)
    assert module.weight is None and module.bias is None
    x, _ = make_data(rng, (2, 4, 9), np.float32)
    assert_bitwise_equal(module(x), gncpu.group_norm(x, 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=lambda d: np.dtype(d).name)
def test_other_input_dtypes(rng, dtype):
    module = gncpu.GroupNorm(2, 4)
    module.weight = rng.standard_normal(4).astype(np.float32)
    x, _ = make_data(rng, (2, 4, 9), dtype)
    y = module(x)
    assert y.dtype == np.dtype(dtype)
    expected = gncpu.group_norm(x, 2, module.weight, module.bias)
    assert_bitwise_equal(y, expected)
    if dtype == np.float64:
        # float32 weights widen exactly: float64 accuracy is kept
        assert_close(y, oracle(x, 2, module.weight, module.bias), F64_TOL["normal"])


def test_out_and_num_threads_pass_through(rng):
    module = gncpu.GroupNorm(4, 32)
    x, _ = make_data(rng, (1, 32, 64, 64), np.float32)
    out = np.full_like(x, np.nan)
    assert module(x, out=out, num_threads=1) is out
    assert_bitwise_equal(out, module(x, num_threads=2))


def test_forward_is_call(rng):
    module = gncpu.GroupNorm(2, 4)
    x, _ = make_data(rng, (2, 4, 3), np.float32)
    assert_bitwise_equal(module.forward(x), module(x))


@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 16, 3, 3), (1, 4)], ids=str)
def test_wrong_channel_count(shape):
    module = gncpu.GroupNorm(4, 8)
    with pytest.raises(ValueError, match=re.escape(f"input has C={shape[1]} channels (shape {shape})")
                       + ".*" + re.escape("expects num_channels=8")):
        module(np.zeros(shape, np.float32))


@pytest.mark.parametrize("groups, channels, wrong", [
    (3, 8, "num_groups=3"), (0, 8, "num_groups=0"), (-2, 8, "num_groups=-2"), (2.0, 8, "num_groups=2.0"),
    (True, 8, "num_groups=True"), (2, 0, "num_channels=0"), (2, -4, "num_channels=-4"),
    (2, 8.0, "num_channels=8.0"),
])
def test_bad_construction(groups, channels, wrong):
    with pytest.raises(ValueError, match=re.escape(wrong)):
        gncpu.GroupNorm(groups, channels)


def test_errors_from_the_call_still_apply():
    module = gncpu.GroupNorm(2, 4)
    with pytest.raises(TypeError, match="input dtype int32"):
        module(np.zeros((2, 4, 3), np.int32))
    module.eps = -1.0
    with pytest.raises(ValueError, match=re.escape("eps=-1.0")):
        module(np.zeros((2, 4, 3), np.float32))
    module.eps = 1e-5
    module.weight = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=re.escape("weight must have shape (4,)")):
        module(np.zeros((2, 4, 3), np.float32))


def test_repr():
    assert repr(gncpu.GroupNorm(32, 320)) == "GroupNorm(32, 320, eps=1e-05, affine=True)"
    assert repr(gncpu.GroupNorm(1, 4, eps=0.1, affine=False)) == "GroupNorm(1, 4, eps=0.1, affine=False)"


def test_numpy_integer_sizes():
    module = gncpu.GroupNorm(np.int64(2), np.int32(4))
    assert type(module.num_groups) is int and type(module.num_channels) is int
    assert module.weight.shape == (4,)


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu", "gelu_tanh"])
def test_fused_activation(rng, activation):
    module = gncpu.GroupNorm(4, 8, activation=activation)
    module.weight = rng.standard_normal(8).astype(np.float32)
    x, _ = make_data(rng, (2, 8, 5, 5), np.float32)
    assert_bitwise_equal(module(x), gncpu.group_norm(x, 4, module.weight, module.bias,
                                                     activation=activation))


def test_unknown_activation_fails_at_construction():
    with pytest.raises(ValueError, match=r"activation='swish' is not supported"):
        gncpu.GroupNorm(4, 8, activation="swish")


def test_channels_last(rng):
    module = gncpu.GroupNorm(4, 8, channels_last=True)
    nhwc, _ = make_data(rng, (2, 5, 6, 8), np.float32)
    assert_bitwise_equal(module(nhwc), gncpu.group_norm(nhwc, 4, channels_last=True))
    with pytest.raises(ValueError, match=re.escape("input has C=5 channels (shape (2, 6, 8, 5))")):
        module(np.zeros((2, 6, 8, 5), np.float32))


def test_residual_pass_through(rng):
    module = gncpu.GroupNorm(2, 4, activation="silu")
    x, _ = make_data(rng, (2, 4, 9), np.float32)
    skip, _ = make_data(rng, (2, 4, 9), np.float32)
    skip_bias = rng.standard_normal(4).astype(np.float32)
    y, total = module(x, skip=skip, skip_bias=skip_bias, return_sum=True)
    expected_y, expected_total = gncpu.group_norm(x, 2, module.weight, module.bias, activation="silu",
                                                  skip=skip, skip_bias=skip_bias, return_sum=True)
    assert_bitwise_equal(y, expected_y)
    assert_bitwise_equal(total, expected_total)


def test_repr_shows_the_epilogue():
    assert repr(gncpu.GroupNorm(32, 320, activation="silu", channels_last=True)) == \
        "GroupNorm(32, 320, eps=1e-05, affine=True, activation='silu', channels_last=True)"
