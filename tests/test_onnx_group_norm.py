"""The group-norm ONNX ops (gncpu/onnx/ops/group_norm.py), one node at a time:
ai.onnx GroupNormalization-18 (per-group scale) and -21 (per-channel scale),
com.microsoft GroupNorm / SkipGroupNorm and gncpu's own fused GroupNorm,
against onnx.reference or the float64 oracle."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import gncpu.onnx  # noqa: E402
from gncpu import reference  # noqa: E402
from gncpu.onnx.errors import NodeExecutionError  # noqa: E402

RTOL = {np.float32: 1e-4, np.float16: 2e-3}
_ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


@pytest.fixture(params=["gncpu", "onnxruntime"])
def engine(request):
    """Both engines run a GroupNorm node on the same gncpu kernel; each must get it right."""
    return request.param


def _max_rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return np.max(np.abs(np.asarray(got, dtype=np.float64) - want)) / max(np.max(np.abs(want)), 1e-30)


def _one_node_model(op_type, x_shape, params, attrs, *, opset, dtype=np.float32, domain="",
                    weights_as="initializer", extra_inputs=(), outputs=("y",), name="the_gn"):
    """A model with one node reading x then `params` (name -> array)."""
    elem = _ELEM[dtype]
    inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    initializers = []
    for pname, value in params.items():
        if weights_as == "initializer":
            initializers.append(numpy_helper.from_array(value, pname))
        else:
            inputs.append(helper.make_tensor_value_info(pname, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        value.shape))
    for pname, shape in extra_inputs:
        inputs.append(helper.make_tensor_value_info(pname, elem, shape))
    node = helper.make_node(op_type, ["x", *params, *(p for p, _ in extra_inputs)], list(outputs),
                            name=name, domain=domain or None, **attrs)
    graph = helper.make_graph([node], "one_node", inputs,
                              [helper.make_tensor_value_info(o, elem, None) for o in outputs],
                              initializer=initializers)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


def _feeds(model, x, params, weights_as):
    feeds = {"x": x}
    if weights_as == "input":
        feeds.update(params)
    return feeds


@pytest.mark.parametrize("weights_as", ["initializer", "input"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,groups", [((3, 8), 4), ((2, 6, 10), 3), ((1, 8, 5, 7), 2),
                                          ((2, 4, 3, 4, 5), 4), ((1, 6, 4, 4), 1), ((1, 6, 4, 4), 6)])
def test_group_normalization_21_matches_onnx_reference(engine, shape, groups, dtype, weights_as):
    rng = np.random.default_rng(0)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    params = {"scale": (1 + rng.standard_normal(channels) * 0.5).astype(dtype),
              "bias": rng.standard_normal(channels).astype(dtype)}
    model = _one_node_model("GroupNormalization", shape, params, {"num_groups": groups, "epsilon": 1e-4},
                            opset=21, dtype=dtype, weights_as=weights_as)
    feeds = _feeds(model, x, params, weights_as)
    (got,) = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, feeds)
    # onnx.reference computes in the input dtype; the oracle is float64.
    want = reference.group_norm(x, groups, params["scale"], params["bias"], 1e-4)
    assert got.dtype == dtype and got.shape == shape
    assert _max_rel(got, want) <= RTOL[dtype]
    if dtype == np.float32:
        (ref,) = ReferenceEvaluator(model).run(None, feeds)
        assert _max_rel(got, ref) <= 1e-4


@pytest.mark.parametrize("weights_as", ["initializer", "input"])
@pytest.mark.parametrize("shape,groups", [((2, 8, 5, 5), 4), ((1, 6, 9), 2), ((2, 4), 2)])
def test_group_normalization_18_scales_per_group(engine, shape, groups, weights_as):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    params = {"scale": rng.standard_normal(groups).astype(np.float32),
              "bias": rng.standard_normal(groups).astype(np.float32)}
    model = _one_node_model("GroupNormalization", shape, params, {"num_groups": groups},
                            opset=18, weights_as=weights_as)
    (got,) = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, _feeds(model, x, params, weights_as))
    per_group = shape[1] // groups
    want = reference.group_norm(x, groups, np.repeat(params["scale"], per_group),
                                np.repeat(params["bias"], per_group), 1e-5)
    assert _max_rel(got, want) <= 1e-5


def test_opset_18_and_21_differ_on_the_same_weights(engine):
    """Opset 21 reads a (C,) scale per channel; read per group it would differ."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    scale21 = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    bias21 = np.zeros(4, np.float32)
    model = _one_node_model("GroupNormalization", x.shape, {"scale": scale21, "bias": bias21},
                            {"num_groups": 2}, opset=21)
    (got,) = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, {"x": x})
    assert _max_rel(got, reference.group_norm(x, 2, scale21, bias21)) <= 1e-5


@pytest.mark.parametrize("opset", [18, 21])
def test_num_groups_not_dividing_channels_names_the_node(engine, opset):
    channels = 6
    params = {"scale": np.ones(4 if opset == 18 else channels, np.float32),
              "bias": np.zeros(4 if opset == 18 else channels, np.float32)}
    model = _one_node_model("GroupNormalization", (1, channels, 4, 4), params, {"num_groups": 4},
                            opset=opset, name="bad_groups")
    session = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine)
    with pytest.raises(NodeExecutionError, match=r"bad_groups.*num_groups=4 must .*divide.*C=6"):
        session.run(None, {"x": np.zeros((1, channels, 4, 4), np.float32)})


@pytest.mark.parametrize("opset,bad_shape,expected", [(21, (4,), r"\(C,\) = \(8,\)"),
                                                       (18, (8,), r"\(num_groups,\) = \(4,\)")])
def test_wrong_scale_shape_names_the_node(engine, opset, bad_shape, expected):
    params = {"scale": np.ones(bad_shape, np.float32), "bias": np.zeros(bad_shape, np.float32)}
    model = _one_node_model("GroupNormalization", (1, 8, 4, 4), params, {"num_groups": 4},
                            opset=opset, weights_as="input", name="bad_scale")
    session = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine)
    feeds = {"x": np.zeros((1, 8, 4, 4), np.float32), **params}
    with pytest.raises(NodeExecutionError, match=rf"bad_scale.*scale must have shape {expected}.*got shape"):
        session.run(None, feeds)


def test_missing_num_groups_names_the_node(engine):
    params = {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}
    model = _one_node_model("GroupNormalization", (1, 8, 4, 4), params, {}, opset=21, name="no_groups")
    session = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine)
    with pytest.raises(NodeExecutionError, match=r"no_groups.*num_groups is missing"):
        session.run(None, {"x": np.zeros((1, 8, 4, 4), np.float32)})


# ----------------------------------------------------------------------------
# com.microsoft contrib ops

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("activation", [0, 1])
@pytest.mark.parametrize("channels_last", [1, 0])
def test_contrib_group_norm(engine, channels_last, activation, dtype):
    rng = np.random.default_rng(3)
    shape = (2, 5, 6, 16) if channels_last else (2, 16, 5, 6)
    x = rng.standard_normal(shape).astype(dtype)
    params = {"gamma": rng.standard_normal(16).astype(np.float32),
              "beta": rng.standard_normal(16).astype(np.float32)}
    model = _one_node_model("GroupNorm", shape, params,
                            {"groups": 4, "activation": activation, "channels_last": channels_last,
                             "epsilon": 1e-5}, opset=17, dtype=dtype, domain="com.microsoft")
    (got,) = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, {"x": x})
    want = reference.group_norm(x, 4, params["gamma"], params["beta"], 1e-5,
                                activation="silu" if activation else None, channels_last=bool(channels_last))
    assert got.dtype == dtype
    assert _max_rel(got, want) <= RTOL[dtype]


@pytest.mark.parametrize("skip_shape", ["full", "per_sample_channel", "broadcast_hw"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_contrib_skip_group_norm_returns_the_sum(engine, skip_shape, with_bias):
    rng = np.random.default_rng(4)
    shape = (2, 3, 4, 8)
    x = rng.standard_normal(shape).astype(np.float32)
    skip = {"full": rng.standard_normal(shape), "per_sample_channel": rng.standard_normal((2, 8)),
            "broadcast_hw": rng.standard_normal((2, 1, 1, 8))}[skip_shape].astype(np.float32)
    params = {"gamma": rng.standard_normal(8).astype(np.float32),
              "beta": rng.standard_normal(8).astype(np.float32)}
    extra = [("skip", skip.shape)] + ([("skip_bias", (8,))] if with_bias else [])
    model = _one_node_model("SkipGroupNorm", shape, params,
                            {"groups": 2, "activation": 1, "epsilon": 1e-5}, opset=17,
                            domain="com.microsoft", extra_inputs=extra, outputs=("y", "s"))
    feeds = {"x": x, "skip": skip}
    skip_bias = rng.standard_normal(8).astype(np.float32)
    if with_bias:
        feeds["skip_bias"] = skip_bias
    y, total = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, feeds)
    summed = x + np.broadcast_to(skip.reshape(2, 1, 1, 8) if skip.ndim == 2 else skip, shape)
    if with_bias:
        summed = summed + skip_bias
    want = reference.group_norm(summed, 2, params["gamma"], params["beta"], activation="silu",
                                channels_last=True)
    assert _max_rel(total, summed) <= 1e-6
    assert _max_rel(y, want) <= 1e-4


def test_contrib_rejects_unknown_activation(engine):
    params = {"gamma": np.ones(8, np.float32), "beta": np.zeros(8, np.float32)}
    model = _one_node_model("GroupNorm", (1, 4, 4, 8), params, {"groups": 2, "activation": 2},
                            opset=17, domain="com.microsoft", name="odd_act")
    # The fusion pass leaves a node it cannot read to the op, which names it.
    session = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine)
    with pytest.raises(NodeExecutionError, match=r"odd_act.*activation=2 is not supported"):
        session.run(None, {"x": np.zeros((1, 4, 4, 8), np.float32)})


# ----------------------------------------------------------------------------
# gncpu's fused node

@pytest.mark.parametrize("activation", ["", "silu", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("channels_last", [0, 1])
def test_fused_node(engine, activation, channels_last):
    rng = np.random.default_rng(5)
    shape = (1, 4, 5, 12) if channels_last else (1, 12, 4, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    params = {"scale": rng.standard_normal(12).astype(np.float32),
              "bias": rng.standard_normal(12).astype(np.float32)}
    model = _one_node_model("GroupNorm", shape, params,
                            {"num_groups": 3, "epsilon": 1e-6, "activation": activation,
                             "channels_last": channels_last}, opset=17, domain="gncpu")
    (got,) = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine).run(None, {"x": x})
    want = reference.group_norm(x, 3, params["scale"], params["bias"], 1e-6,
                                activation=activation or None, channels_last=bool(channels_last))
    assert _max_rel(got, want) <= 1e-5


def test_fused_node_rejects_unknown_activation(engine):
    params = {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}
    model = _one_node_model("GroupNorm", (1, 8, 2, 2), params,
                            {"num_groups": 2, "activation": "swish"}, opset=17, domain="gncpu", name="fz")
    session = gncpu.onnx.InferenceSession(model.SerializeToString(), engine=engine)
    with pytest.raises(NodeExecutionError, match=r"fz.*activation='swish' is not one of"):
        session.run(None, {"x": np.zeros((1, 8, 2, 2), np.float32)})
