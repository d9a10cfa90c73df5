"""The prepared call of a fused gncpu GroupNorm node (weights checked once at
load) gives the general op's bytes, and hands everything it does not cover
(float16, strided views, wrong shapes) to the general op and its errors."""
import numpy as np
import pytest

pytest.importorskip("onnx")

from gncpu.onnx.graph import Node  # noqa: E402
from gncpu.onnx.ops.group_norm import fused_group_norm, prepare_fused_group_norm  # noqa: E402

RNG = np.random.default_rng(5)


def _node(activation="silu", channels_last=0, inputs=("x", "scale", "bias"), groups=4, epsilon=1e-5):
    return Node(op_type="GroupNorm", inputs=list(inputs), outputs=["y"], domain="gncpu", name="gn",
                attrs={"num_groups": groups, "epsilon": epsilon, "activation": activation,
                       "channels_last": channels_last})


def _constants(channels=8, dtype=np.float32):
    return {"scale": RNG.standard_normal(channels).astype(dtype), "bias": RNG.standard_normal(channels).astype(dtype)}


@pytest.mark.parametrize("activation", ["", "silu", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_prepared_call_equals_the_general_op(activation, channels_last, dtype):
    constants = _constants()
    node = _node(activation, channels_last)
    call = prepare_fused_group_norm(node, constants)
    assert call is not None
    shape = (2, 5, 6, 8) if channels_last else (2, 8, 5, 6)
    x = (1e4 + RNG.standard_normal(shape)).astype(dtype) if dtype != np.float16 else RNG.standard_normal(shape).astype(dtype)
    before = x.copy()
    got = call(x, constants["scale"], constants["bias"])
    want = fused_group_norm(x, constants["scale"], constants["bias"], num_groups=4, epsilon=1e-5,
                            activation=activation, channels_last=channels_last)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)  # the input is never modified


def test_strided_and_wrong_inputs_go_to_the_general_op():
    constants = _constants()
    call = prepare_fused_group_norm(_node(), constants)
    x = RNG.standard_normal((2, 16, 5, 6)).astype(np.float32)[:, ::2]   # strided view, 8 channels
    want = fused_group_norm(np.ascontiguousarray(x), constants["scale"], constants["bias"], num_groups=4,
                            activation="silu")
    np.testing.assert_array_equal(call(x, constants["scale"], constants["bias"]), want)
    with pytest.raises(ValueError, match="scale must have shape"):
        call(np.zeros((2, 12, 3, 3), np.float32), constants["scale"], constants["bias"])
    with pytest.raises(TypeError, match="dtype int32"):
        call(np.zeros((2, 8, 3, 3), np.int32), constants["scale"], constants["bias"])


def test_not_prepared_when_the_node_needs_the_general_op():
    constants = _constants()
    assert prepare_fused_group_norm(_node(inputs=("x", "scale", "bias", "skip")), constants) is None
    assert prepare_fused_group_norm(_node(inputs=("x", "s", "bias")), constants) is None  # not a constant
    assert prepare_fused_group_norm(_node(groups=3), constants) is None                    # 3 does not divide 8
    assert prepare_fused_group_norm(_node(activation="tanh"), constants) is None
    assert prepare_fused_group_norm(_node(epsilon=-1.0), constants) is None
    bad = {"scale": np.ones(8, np.int64), "bias": constants["bias"]}
    assert prepare_fused_group_norm(_node(), bad) is None
    # Only one of scale/bias a constant while the other is computed: the general op.
    assert prepare_fused_group_norm(_node(inputs=("x", "scale", "b")), constants) is None


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_without_scale_and_bias_any_channel_count_the_groups_divide(channels_last, dtype):
    # Exporters drop an identity affine: the channel count is then known only per run.
    call = prepare_fused_group_norm(_node(inputs=("x", "", ""), channels_last=channels_last), {})
    assert call is not None
    for channels in (4, 8, 12):
        shape = (2, 5, 3, channels) if channels_last else (2, channels, 5, 3)
        x = (3e3 + RNG.standard_normal(shape)).astype(dtype)
        want = fused_group_norm(x, num_groups=4, activation="silu", channels_last=channels_last)
        np.testing.assert_array_equal(call(x), want)
        y = np.full(shape, np.nan, dtype)
        call.into(x, y, 2)
        np.testing.assert_array_equal(y, want)
    with pytest.raises(ValueError, match="6"):
        call(np.zeros((2, 3, 3, 6) if channels_last else (2, 6, 3, 3), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_into_writes_every_element_and_equals_the_call(dtype):
    constants = _constants()
    call = prepare_fused_group_norm(_node(), constants)
    x = (1e4 + RNG.standard_normal((3, 8, 7, 5))).astype(dtype)
    want = call(x, constants["scale"], constants["bias"])
    for threads in (1, 2, 3):
        y = np.full_like(x, np.nan)
        call.into(x, y, threads)
        np.testing.assert_array_equal(y, want)
    strided = np.repeat(x, 2, axis=2)[:, :, ::2]
    y = np.full_like(x, np.nan)
    call.into(strided, y, 2)                      # a strided input takes the general op
    np.testing.assert_array_equal(y, want)
