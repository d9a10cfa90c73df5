"""Every validation rule of gncpu.group_norm: the exception type, and a message
naming the argument, the value given and what was expected."""
import re

import numpy as np
import pytest

import gncpu
from conftest import F32_TOL, assert_bitwise_equal, assert_close, oracle

SHAPE = (2, 4, 3)


@pytest.fixture
def x():
    return np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)


def raises(exc, *fragments):
    """pytest.raises matching every fragment, in order, literally."""
    return pytest.raises(exc, match=".*".join(re.escape(f) for f in fragments))


# --------------------------------------------------------------------------- input


@pytest.mark.parametrize("value, type_name", [
    ([[1.0, 2.0], [3.0, 4.0]], "list"),
    (((1.0, 2.0),), "tuple"),
    (3.0, "float"),
    ("abc", "str"),
    (None, "NoneType"),
    ({"a": 1}, "dict"),
])
def test_non_array_input_is_a_type_error(value, type_name):
    with raises(TypeError, "input must be a NumPy array", f"got {type_name}"):
        gncpu.group_norm(value, 1)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_,
                                   np.complex64, np.complex128, np.object_, np.longdouble,
                                   "U3", "V8", "M8[s]"], ids=str)
def test_unsupported_input_dtype_is_a_type_error_naming_it(dtype):
    x = np.zeros(SHAPE, dtype)
    with raises(TypeError, f"input dtype {x.dtype}", "float32, float64 or float16"):
        gncpu.group_norm(x, 2)


@pytest.mark.parametrize("shape", [(), (4,), (0,)], ids=str)
def test_rank_below_two(shape):
    with raises(ValueError, "input must have rank >= 2", f"got shape {shape}"):
        gncpu.group_norm(np.zeros(shape, np.float32), 1)


# --------------------------------------------------------------------------- num_groups


@pytest.mark.parametrize("groups", [3, 5, 8])
def test_num_groups_must_divide_channels(x, groups):
    with raises(ValueError, f"num_groups={groups} must divide C=4", f"{SHAPE}"):
        gncpu.group_norm(x, groups)


@pytest.mark.parametrize("groups", [0, -1, -4])
def test_num_groups_must_be_positive(x, groups):
    with raises(ValueError, f"num_groups={groups} must be positive", f"{SHAPE}"):
        gncpu.group_norm(x, groups)


@pytest.mark.parametrize("groups", [2.0, True, "2", None, np.float32(2)], ids=repr)
def test_num_groups_must_be_an_int(x, groups):
    with raises(TypeError, "num_groups must be an int", f"got {type(groups).__name__}"):
        gncpu.group_norm(x, groups)


def test_num_groups_accepts_numpy_integers(x):
    assert_bitwise_equal(gncpu.group_norm(x, np.int64(2)), gncpu.group_norm(x, 2))


# --------------------------------------------------------------------------- weight / bias


@pytest.mark.parametrize("shape", [(3,), (5,), (4, 1), (1, 4), (), (8,)], ids=str)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_parameter_shape_must_be_channels(x, which, shape):
    with raises(ValueError, f"{which} must have shape (4,)", "C=4", f"got shape {shape}"):
        gncpu.group_norm(x, 2, **{which: np.ones(shape, np.float32)})


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.object_, "U3"],
                         ids=str)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_parameter_dtype_must_be_floating(x, which, dtype):
    value = np.ones(4, dtype)
    with raises(ValueError, f"{which} must hold floating-point values", f"got dtype {value.dtype}"):
        gncpu.group_norm(x, 2, **{which: value})


def test_parameters_may_be_strided_or_any_float_dtype(x):
    weight = np.arange(8, dtype=np.float64)[::2] / 4
    bias = np.linspace(-1, 1, 4).astype(np.float16)
    y = gncpu.group_norm(x, 2, weight, bias)
    assert_close(y, oracle(x, 2, weight.astype(np.float32), bias), F32_TOL["normal"])


# --------------------------------------------------------------------------- eps


@pytest.mark.parametrize("eps", [-1, -1e-12, float("nan"), float("inf"), float("-inf"), np.float32(-1)],
                         ids=repr)
def test_eps_must_be_finite_and_non_negative(x, eps):
    with raises(ValueError, f"eps={eps!r}", "must be finite and >= 0"):
        gncpu.group_norm(x, 2, eps=eps)


@pytest.mark.parametrize("eps", [None, [1e-5], 1j, object(), "0.1", True, np.array([1e-5])],
                         ids=lambda v: type(v).__name__)
def test_eps_must_be_a_real_number(x, eps):
    with raises(TypeError, "eps must be a real number", f"got {type(eps).__name__}"):
        gncpu.group_norm(x, 2, eps=eps)


@pytest.mark.parametrize("eps", [0, 0.0, 1e-5, np.float32(1e-5), np.float64(0.1), 3], ids=repr)
def test_eps_accepts_real_numbers(x, eps):
    assert_close(gncpu.group_norm(x, 2, eps=eps), oracle(x, 2, eps=float(eps)), F32_TOL["normal"])


# --------------------------------------------------------------------------- out


def test_out_wrong_shape(x):
    with raises(ValueError, "out has shape (2, 4, 4)", f"expected the input's shape {SHAPE}"):
        gncpu.group_norm(x, 2, out=np.empty((2, 4, 4), np.float32))


@pytest.mark.parametrize("in_dtype, out_dtype", [(np.float32, np.float64), (np.float64, np.float32),
                                                 (np.float16, np.float32), (np.float32, np.float16),
                                                 (np.float32, np.int32)], ids=str)
def test_out_wrong_dtype(in_dtype, out_dtype):
    x = np.zeros(SHAPE, in_dtype)
    with raises(ValueError, f"out has dtype {np.dtype(out_dtype)}",
                f"expected the input's dtype {np.dtype(in_dtype)}"):
        gncpu.group_norm(x, 2, out=np.empty(SHAPE, out_dtype))


def test_out_read_only(x):
    out = np.empty(SHAPE, np.float32)
    out.flags.writeable = False
    with raises(ValueError, "out is read-only", "expected a writeable array"):
        gncpu.group_norm(x, 2, out=out)


@pytest.mark.parametrize("layout", ["strided", "fortran"])
def test_out_not_contiguous(x, layout):
    out = np.empty((2, 4, 6), np.float32)[..., ::2] if layout == "strided" \
        else np.asfortranarray(np.empty(SHAPE, np.float32))
    with raises(ValueError, "out must", "C-contiguous", f"strides {out.strides} for shape {SHAPE}"):
        gncpu.group_norm(x, 2, out=out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shift", [1, 3, 12])
def test_out_partially_overlapping_the_input(dtype, shift):
    buffer = np.zeros(24 + shift, dtype)
    x, out = buffer[:24].reshape(SHAPE), buffer[shift:].reshape(SHAPE)
    with raises(ValueError, "out partially overlaps the input", "the input itself for in-place"):
        gncpu.group_norm(x, 2, out=out)


def test_out_overlapping_a_strided_input():
    """A strided input and a contiguous out interleaved in one buffer."""
    buffer = np.zeros(48, np.float32)
    x, out = buffer[::2].reshape(SHAPE), buffer[1:25].reshape(SHAPE)
    with raises(ValueError, "out partially overlaps the input"):
        gncpu.group_norm(x, 2, out=out)


@pytest.mark.parametrize("out", [[0.0] * 24, 0.0, "out"], ids=repr)
def test_out_must_be_an_array(x, out):
    with raises(TypeError, "out must be a NumPy array", f"got {type(out).__name__}"):
        gncpu.group_norm(x, 2, out=out)


# --------------------------------------------------------------------------- num_threads


def test_num_threads_zero(x):
    with raises(ValueError, "num_threads=0 is not a thread count", "positive count, or -1"):
        gncpu.group_norm(x, 2, num_threads=0)


def test_num_threads_counting_back_past_zero(x):
    too_many = -(gncpu.kernel.kernels.max_threads() + 1)
    with raises(ValueError, f"num_threads={too_many} leaves no thread",
                f"only {gncpu.kernel.kernels.max_threads()} available"):
        gncpu.group_norm(x, 2, num_threads=too_many)


@pytest.mark.parametrize("threads", [1.5, "2", True], ids=repr)
def test_num_threads_must_be_an_int(x, threads):
    with raises(TypeError, "num_threads must be an int or None", f"got {type(threads).__name__}"):
        gncpu.group_norm(x, 2, num_threads=threads)


@pytest.mark.parametrize("threads", [None, 1, 2, 7, -1, np.int32(2)], ids=repr)
def test_valid_thread_counts(x, threads):
    assert_bitwise_equal(gncpu.group_norm(x, 2, num_threads=threads), gncpu.group_norm(x, 2))


def test_set_num_threads_validates(restore_threads):
    with raises(ValueError, "n=0 is not a thread count"):
        gncpu.set_num_threads(0)
    with raises(TypeError, "n must be an int or None", "got float"):
        gncpu.set_num_threads(1.0)


# --------------------------------------------------------------------------- failed calls


@pytest.mark.parametrize("bad", [
    {"num_groups": 3}, {"weight": np.ones(3, np.float32)}, {"bias": np.ones(4, np.int32)},
    {"eps": -1.0}, {"num_threads": 0},
], ids=lambda d: next(iter(d)))
def test_failed_calls_touch_neither_input_nor_out(x, bad):
    kwargs = {"num_groups": 2, **bad}
    out = np.full(SHAPE, 7.0, np.float32)
    before = x.copy()
    with pytest.raises((ValueError, TypeError)):
        gncpu.group_norm(x, out=out, **kwargs)
    assert_bitwise_equal(x, before, "(input modified)")
    assert (out == 7.0).all(), "out was written by a call that raised"


class _Subclass(np.ndarray):
    """An ndarray subclass: group_norm takes its general path for it."""


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("out", ["none", "separate", "in-place"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_the_common_call_fast_path_matches_the_general_path(rng, channels_last, dtype, out,
                                                             activation):
    """kernels.common_call (plain ndarrays, the usual arguments, checked in C)
    returns the same bits as the fully checked general path."""
    x = rng.standard_normal((2, 5, 6, 12)).astype(dtype)
    weight, bias = (rng.standard_normal(12 if channels_last else 5).astype(dtype) for _ in "wb")
    groups = 4 if channels_last else 5
    results = []
    for given in (x.copy(), x.copy().view(_Subclass)):
        target = {"none": None, "separate": np.empty_like(given), "in-place": given}[out]
        y = gncpu.group_norm(given, groups, weight, bias, 1e-5, activation=activation,
                             channels_last=channels_last, out=target)
        assert target is None or y is target
        results.append(np.asarray(y))
    assert_bitwise_equal(results[0], results[1])


def _fast_call(x, groups=2, weight=None, bias=None, eps=1e-5, activation=None,
               channels_last=False, out=None, num_threads=None):
    from gncpu import _config
    from gncpu.kernel import kernels
    return kernels.common_call(x, groups, weight, bias, eps, activation, channels_last, out,
                               num_threads, _config.resolve_threads)


def test_the_fast_path_declines_everything_it_does_not_check(rng):
    """kernels.common_call returns None (the general path then decides) for
    every argument outside the usual call, and computes the usual call."""
    x = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    w = np.ones(4, np.float32)
    y = _fast_call(x, weight=w, bias=w)
    assert_bitwise_equal(y, np.asarray(gncpu.group_norm(x.view(_Subclass), 2, w, w)))
    declined = {
        "float16": dict(x=x.astype(np.float16)),
        "int": dict(x=x.astype(np.int32)),
        "big-endian": dict(x=x.astype(">f4")),
        "subclass": dict(x=x.view(_Subclass)),
        "strided": dict(x=x[:, :, :, ::2]),
        "rank 1": dict(x=x.reshape(-1)),
        "rank 2 channels_last": dict(x=x.reshape(2, -1), channels_last=True, groups=1),
        "numpy int groups": dict(x=x, groups=np.int64(2)),
        "bool groups": dict(x=x, groups=True),
        "groups not dividing": dict(x=x, groups=3),
        "zero groups": dict(x=x, groups=0),
        "huge groups": dict(x=x, groups=2**70),
        "int eps": dict(x=x, eps=0),
        "negative eps": dict(x=x, eps=-1.0),
        "inf eps": dict(x=x, eps=float("inf")),
        "nan eps": dict(x=x, eps=float("nan")),
        "unknown activation": dict(x=x, activation="tanh"),
        "activation not a str": dict(x=x, activation=1),
        "float64 weight": dict(x=x, weight=w.astype(np.float64)),
        "short weight": dict(x=x, weight=w[:3]),
        "list bias": dict(x=x, bias=[0.0] * 4),
        "2-d weight": dict(x=x, weight=w.reshape(2, 2)),
        "out of another dtype": dict(x=x, out=np.empty(x.shape, np.float64)),
        "out of another shape": dict(x=x, out=np.empty((2, 4, 15), np.float32)),
        "strided out": dict(x=x, out=np.empty((2, 4, 3, 10), np.float32)[..., ::2]),
    }
    base = np.zeros(x.size + 8, np.float32)
    declined["out overlapping"] = dict(x=base[:x.size].reshape(x.shape),
                                       out=base[8:].reshape(x.shape))
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    declined["read-only out"] = dict(x=x, out=read_only)
    for name, kwargs in declined.items():
        assert _fast_call(**kwargs) is None, name


def test_the_fast_path_still_rejects_partial_overlap_and_read_only_out(rng):
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gncpu.group_norm(x, 2, out=read_only)
    base = np.zeros(x.size + 8, np.float32)
    shifted_in, shifted_out = base[:x.size].reshape(x.shape), base[8:].reshape(x.shape)
    with pytest.raises(ValueError, match="partially overlaps"):
        gncpu.group_norm(shifted_in, 2, out=shifted_out)
