"""GroupNorm fusion (gncpu/onnx/fusion.py): real exporter output must run with
every GroupNorm native and SiLU folded in, matching onnx.reference; patterns
the pass cannot prove must be left exactly as they were."""
import copy
import glob
import os
import re
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import gncpu.onnx  # noqa: E402
from gncpu.onnx.fusion import count_native_group_norms, fuse_graph  # noqa: E402
from gncpu.onnx.graph import graph_from_model  # noqa: E402

MODELS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "models", "*.onnx")))
RTOL = 1e-4
# Decomposed ops that must not survive fusion.
DECOMPOSITION = {"InstanceNormalization", "ReduceMean"}  # (the attention scale has a Sqrt)


def _max_rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return np.max(np.abs(np.asarray(got, dtype=np.float64) - want)) / max(np.max(np.abs(want)), 1e-30)


def _random_feed(model, seed=0, batch=2, other=24):
    """Random inputs; symbolic dims become `batch` (axis 0) or `other`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (batch if axis == 0 else other)
                for axis, d in enumerate(inp.type.tensor_type.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = (rng.standard_normal(dims) * 2 + 0.5).astype(dtype)
    return feeds


def _session(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gncpu.onnx.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString")
                                           else model)


def _expected_group_norms(model):
    """How many GroupNorms the exported source model had (make_models.py
    counts the torch / Keras modules and records it in the file)."""
    props = {p.key: p.value for p in model.metadata_props}
    return int(props["gncpu.group_norms"])


@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p)[:-5] for p in MODELS])
def test_exported_model_runs_native_and_matches_reference(path):
    model = onnx.load(path)
    session = _session(path)
    ops_run = [n.op_type for n in session.graph.nodes]
    expected = _expected_group_norms(model)
    assert expected >= 1
    assert count_native_group_norms(session.graph) == expected
    assert not DECOMPOSITION & set(ops_run), ops_run
    stats = session.stats()
    assert stats["group_norm_native"] == expected
    if "silu" in path or "vae" in path or "unet" in path:
        assert "Sigmoid" not in ops_run
        assert stats["silu_fused"] >= 1
    if "wav2vec2_conv1d" in path:  # GELU follows the GN
        assert "Erf" not in ops_run and "Gelu" not in ops_run
    feeds = _random_feed(model)
    got = session.run(None, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    # onnx.reference rounds float16 models to half precision at every op;
    # gncpu computes GN in float32 and rounds once.
    rtol = RTOL if feeds[model.graph.input[0].name].dtype != np.float16 else 2e-3
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert _max_rel(g, w) <= rtol


def test_models_cover_every_exporter_and_shape_family():
    names = " ".join(os.path.basename(p) for p in MODELS)
    for needed in ("torch_legacy_.*opset14", "torch_legacy_.*opset17", "torch_dynamo_.*opset21",
                   "tf2onnx_keras3_", "tf2onnx_keras2_", "tf2onnx_.*opset18", "function_body_.*opset18", "function_body_.*opset21",
                   "_g1_", "_g_equals_c_", "conv1d", "rank3", "silu", "vae_decoder_block",
                   "hf_sd_vae_decoder", "hf_ddpm_unet", "hf_wav2vec2", "legacy_dynamic_", "legacy_fp16_"):
        assert re.search(needed, names), needed


def test_exported_model_survives_large_offsets():
    """Fused GN keeps its accuracy where onnxruntime's expansion breaks down."""
    path = next(p for p in MODELS if "function_body_gn_silu_opset21" in p)
    model = onnx.load(path)
    x = (np.random.default_rng(0).standard_normal((1, 8, 6, 6)) + 1e4).astype(np.float32)
    (got,) = _session(model).run(None, {"x": x})
    assert np.all(np.isfinite(got))


# ----------------------------------------------------------------------------
# hand-built variants of the torch pattern

def _torch_pattern(*, groups=2, channels=4, spatial=(3, 3), in_scale=None, in_bias=None, eps=1e-5,
                   weights_via="initializer", swap_operands=False, affine=True, silu=None,
                   extra_output=None, mul_shape=None, dtype=np.float32, dynamic_batch=False):
    """x -> Reshape[0,G,-1] -> InstanceNormalization -> Reshape(Shape(x)) -> Mul W -> Add B
    [-> Sigmoid -> Mul], with knobs for each way exporters (or users) vary it."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rank = 2 + len(spatial)
    batch = "N" if dynamic_batch else 2
    x_shape = [batch, channels, *spatial]
    inits = [numpy_helper.from_array(np.array([0, groups, -1], np.int64), "target"),
             numpy_helper.from_array(np.asarray(np.ones(groups) if in_scale is None else in_scale, dtype), "in_s"),
             numpy_helper.from_array(np.asarray(np.zeros(groups) if in_bias is None else in_bias, dtype), "in_b")]
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("InstanceNormalization", ["r", "in_s", "in_b"], ["n"], epsilon=eps),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Reshape", ["n", "xs"], ["y0"])]
    w = (1 + 0.5 * rng.standard_normal(channels)).astype(dtype)
    b = (0.5 * rng.standard_normal(channels)).astype(dtype)
    bshape = mul_shape or (channels,) + (1,) * (rank - 2)
    if not affine:
        w, b = np.ones(1, dtype), np.zeros(1, dtype)
        bshape = (1,) * (rank - 1)
    w_full = np.broadcast_to(w.reshape(-1, *([1] * (len(bshape) - 1))) if affine else w, bshape).astype(dtype)
    if mul_shape is not None:
        w_full = (1 + 0.5 * rng.standard_normal(mul_shape)).astype(dtype)
    b_full = b.reshape(-1, *([1] * (len(bshape) - 1))).astype(dtype) if affine else b.reshape(bshape)

    def weight(name, value):
        if weights_via == "initializer":
            inits.append(numpy_helper.from_array(value, name))
        elif weights_via == "constant":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value)))
        elif weights_via == "identity":
            inits.append(numpy_helper.from_array(value, name + "_raw"))
            nodes.append(helper.make_node("Identity", [name + "_raw"], [name]))
        elif weights_via == "unsqueeze":  # (C,) -> (C, 1, ..., 1), as the legacy exporter without folding
            flat = value.reshape(value.shape[0])
            inits.append(numpy_helper.from_array(flat, name + "_raw"))
            inits.append(numpy_helper.from_array(np.arange(1, value.ndim, dtype=np.int64), name + "_axes"))
            nodes.append(helper.make_node("Unsqueeze", [name + "_raw", name + "_axes"], [name]))
        return name

    wn, bn = weight("W", w_full), weight("B", b_full)
    mul_in = [wn, "y0"] if swap_operands else ["y0", wn]
    add_in = [bn, "y1"] if swap_operands else ["y1", bn]
    nodes += [helper.make_node("Mul", mul_in, ["y1"]), helper.make_node("Add", add_in, ["y"])]
    outputs = ["y"]
    if silu:
        nodes += [helper.make_node("Sigmoid", ["y"], ["sig"]),
                  helper.make_node("Mul", ["sig", "y"] if silu == "swapped" else ["y", "sig"], ["out"])]
        outputs = ["out"]
    if extra_output:
        outputs.append(extra_output)
    graph = helper.make_graph(nodes, "torch_pattern", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info(o, elem, None) for o in outputs], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused_counts(model):
    graph = graph_from_model(model)
    counts = fuse_graph(graph)
    return counts, graph


def _check_against_reference(model, rtol=RTOL):
    feeds = _random_feed(model)
    got = _session(model).run(None, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    for g, w in zip(got, want):
        assert _max_rel(g, w) <= rtol


@pytest.mark.parametrize("swap_operands", [False, True])
@pytest.mark.parametrize("weights_via", ["initializer", "constant", "identity", "unsqueeze"])
def test_torch_pattern_weights_any_source_operands_either_order(weights_via, swap_operands):
    model = _torch_pattern(weights_via=weights_via, swap_operands=swap_operands)
    counts, graph = _fused_counts(model)
    assert counts["torch_instance_norm"] == 1
    assert [n.op_type for n in graph.nodes] == ["GroupNorm"]
    assert graph.nodes[0].inputs[1] and graph.nodes[0].inputs[2]  # the affine was folded in
    _check_against_reference(model)


@pytest.mark.parametrize("silu", ["plain", "swapped"])
@pytest.mark.parametrize("affine", [True, False])
def test_torch_pattern_silu_either_order_affine_or_not(affine, silu):
    model = _torch_pattern(affine=affine, silu=silu)
    counts, graph = _fused_counts(model)
    assert (counts["torch_instance_norm"], counts["silu"]) == (1, 1)
    (node,) = graph.nodes
    assert node.attrs["activation"] == "silu" and node.outputs == ["out"]
    if not affine:
        assert node.inputs[1:] == ["", ""]  # ones and zeros are dropped, not multiplied
    _check_against_reference(model)


@pytest.mark.parametrize("spatial", [(), (9,), (2, 3, 4)])
@pytest.mark.parametrize("groups,channels", [(1, 6), (6, 6), (3, 6)])
def test_torch_pattern_ranks_and_group_extremes(groups, channels, spatial):
    model = _torch_pattern(groups=groups, channels=channels, spatial=spatial)
    counts, _ = _fused_counts(model)
    assert counts["torch_instance_norm"] == 1
    _check_against_reference(model)


def test_torch_pattern_with_dynamic_batch():
    model = _torch_pattern(dynamic_batch=True, silu="plain")
    counts, _ = _fused_counts(model)
    assert (counts["torch_instance_norm"], counts["silu"]) == (1, 1)
    _check_against_reference(model)


def test_torch_pattern_float16():
    model = _torch_pattern(dtype=np.float16, silu="plain")
    counts, graph = _fused_counts(model)
    assert counts["torch_instance_norm"] == 1
    feeds = _random_feed(model)
    (got,) = _session(model).run(None, feeds)
    assert got.dtype == np.float16
    # float16 reference arithmetic rounds at every one of its steps.
    (want,) = ReferenceEvaluator(model).run(None, {"x": feeds["x"]})
    assert _max_rel(got, want) <= 5e-3


# ----------------------------------------------------------------------------
# what must be left alone

def _unchanged(model):
    graph = graph_from_model(model)
    before = copy.deepcopy(graph.nodes)
    counts = fuse_graph(graph)
    return counts, [n.op_type for n in graph.nodes] == [n.op_type for n in before]


@pytest.mark.parametrize("case", ["non_unit_in_scale", "non_zero_in_bias", "intermediate_is_output"])
def test_unprovable_torch_pattern_left_alone(case):
    kwargs = {"non_unit_in_scale": {"in_scale": [1.0, 2.0]},
              "non_zero_in_bias": {"in_bias": [0.0, 0.5]},
              "intermediate_is_output": {"extra_output": "n"}}[case]
    model = _torch_pattern(**kwargs)
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged
    _check_against_reference(model)


def test_spatially_varying_mul_is_not_folded_into_the_affine():
    # A (C, H, 1) multiplier is not a per-channel scale: GN fuses, the Mul stays.
    model = _torch_pattern(mul_shape=(4, 3, 1))
    counts, graph = _fused_counts(model)
    assert counts["torch_instance_norm"] == 1
    assert [n.op_type for n in graph.nodes] == ["GroupNorm", "Mul", "Add"]
    _check_against_reference(model)


def test_groups_not_dividing_channels_left_alone():
    # Reshape(x, [0, 4, -1]) with C = 6 mixes channels across "groups": not GN.
    model = _torch_pattern(groups=4, channels=6, spatial=(2, 2))
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged
    _check_against_reference(model)


def test_silu_not_fused_when_the_pre_activation_is_read_elsewhere():
    model = _torch_pattern(silu="plain", extra_output="y")
    counts, graph = _fused_counts(model)
    assert counts["torch_instance_norm"] == 1 and counts["silu"] == 0
    assert {"Sigmoid", "Mul"} <= {n.op_type for n in graph.nodes}
    _check_against_reference(model)


def test_unknown_rank_left_alone():
    model = _torch_pattern()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged


# ----------------------------------------------------------------------------
# hand-built channels-last decomposition (the E[x^2] - E[x]^2 variance of Keras 3's
# own moments(), which tf2onnx did not emit for our models)

def _keras_moments_pattern(variance="mean_of_square", groups=2, channels=6, eps=1e-3, axes=(1, 2, 4)):
    rng = np.random.default_rng(1)
    g = (1 + 0.5 * rng.standard_normal((1, 1, 1, groups, channels // groups))).astype(np.float32)
    b = (0.5 * rng.standard_normal((1, 1, 1, groups, channels // groups))).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([-1, 4, 5, groups, channels // groups], np.int64), "grouped"),
             numpy_helper.from_array(np.array([-1, 4, 5, channels], np.int64), "back"),
             numpy_helper.from_array(np.array(axes, np.int64), "axes"),
             numpy_helper.from_array(np.array(eps, np.float32), "eps"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "minus_half"),
             numpy_helper.from_array(g, "gamma"), numpy_helper.from_array(b, "beta")]
    nodes = [helper.make_node("Reshape", ["x", "grouped"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["mean"])]
    if variance == "mean_of_square":
        nodes += [helper.make_node("Mul", ["r", "r"], ["sq"]),
                  helper.make_node("ReduceMean", ["sq", "axes"], ["mean_sq"]),
                  helper.make_node("Mul", ["mean", "mean"], ["sq_mean"]),
                  helper.make_node("Sub", ["mean_sq", "sq_mean"], ["var"])]
    else:
        nodes += [helper.make_node("Sub", ["r", "mean"], ["d"]),
                  helper.make_node("Pow", ["d", "two"], ["d2"]),
                  helper.make_node("ReduceMean", ["d2", "axes"], ["var"])]
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    nodes += [helper.make_node("Add", ["var", "eps"], ["ve"]),
              helper.make_node("Pow", ["ve", "minus_half"], ["inv"]),
              helper.make_node("Mul", ["inv", "gamma"], ["inv_g"]),
              helper.make_node("Mul", ["r", "inv_g"], ["xs"]),
              helper.make_node("Mul", ["mean", "inv_g"], ["ms"]),
              helper.make_node("Sub", ["beta", "ms"], ["shift"]),
              helper.make_node("Add", ["xs", "shift"], ["yr"]),
              helper.make_node("Reshape", ["yr", "back"], ["y"])]
    graph = helper.make_graph(nodes, "keras_moments",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, channels])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("variance", ["mean_of_square", "mean_of_centered_square"])
def test_channels_last_moments_variants(variance):
    model = _keras_moments_pattern(variance)
    counts, graph = _fused_counts(model)
    assert counts["channels_last_decomposition"] == 1
    (node,) = graph.nodes
    assert node.attrs["channels_last"] == 1 and node.attrs["num_groups"] == 2
    assert node.attrs["epsilon"] == pytest.approx(1e-3)
    _check_against_reference(model)


@pytest.mark.parametrize("axes", [(1, 2), (1, 2, 3, 4), (2, 4)])
def test_channels_last_statistics_over_other_than_a_group_left_alone(axes):
    model = _keras_moments_pattern(axes=axes)
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged
    _check_against_reference(model)


def test_channels_last_scaled_variance_left_alone():
    model = _keras_moments_pattern()
    # var * 2: no longer var + eps under the square root.
    for node in model.graph.node:
        if node.output[0] == "var":
            node.output[0] = "var_half"
    model.graph.node.append(helper.make_node("Mul", ["var_half", "two_f"], ["var"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two_f"))
    # keep the graph topologically sorted: the new Mul goes before its reader
    nodes = list(model.graph.node)
    new = nodes.pop()
    nodes.insert(next(i for i, n in enumerate(nodes) if "var" in n.input), new)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged
    _check_against_reference(model)


# ----------------------------------------------------------------------------
# native nodes become fused nodes (so SiLU folds into them too)

def test_contrib_group_norm_converted_and_runs():
    params = [numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "gamma"),
              numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "beta")]
    node = helper.make_node("GroupNorm", ["x", "gamma", "beta"], ["y"], domain="com.microsoft",
                            groups=2, activation=1, channels_last=1, epsilon=1e-5)
    graph = helper.make_graph([node], "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    counts, fused = _fused_counts(model)
    assert counts["contrib_group_norm"] == 1
    assert fused.nodes[0].domain == "gncpu" and fused.nodes[0].attrs["activation"] == "silu"
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 8)).astype(np.float32)
    (got,) = _session(model).run(None, {"x": x})
    want = gncpu.reference.group_norm(x, 2, np.linspace(0.5, 1.5, 8), np.linspace(-1, 1, 8),
                                      activation="silu", channels_last=True)
    assert _max_rel(got, want) <= 1e-5


def test_group_normalization_21_with_converter_left_per_group_scale_is_not_renamed():
    # onnx.version_converter 20 -> 21 leaves scale at (G): that model is invalid
    # at 21, and the native op must say so, not a silently wrong fused node.
    params = [numpy_helper.from_array(np.ones(2, np.float32), "s"), numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, name="converted")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    counts, fused = _fused_counts(model)
    assert counts["group_normalization"] == 0 and fused.nodes[0].op_type == "GroupNormalization"
    with pytest.raises(gncpu.onnx.errors.NodeExecutionError, match=r"converted.*scale must have shape \(C,\)"):
        _session(model).run(None, {"x": np.zeros((1, 4, 2, 2), np.float32)})


# ----------------------------------------------------------------------------
# GELU written out with Erf after a GroupNorm (wav2vec2's feature encoder)

def _gn21_then(nodes_after, extra_inits=()):
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, 6).astype(np.float32), "s"),
             numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "b"),
             *[numpy_helper.from_array(np.array(v, np.float32), k) for k, v in extra_inits]]
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=3)] + nodes_after
    graph = helper.make_graph(nodes, "gn_then", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


_GELU_CONSTS = [("sqrt2", np.sqrt(2.0)), ("inv_sqrt2", np.sqrt(0.5)), ("one", 1.0), ("half", 0.5)]


@pytest.mark.parametrize("form", ["torch_legacy", "dynamo", "half_first", "mul_by_inverse"])
def test_erf_gelu_after_group_norm_is_fused(form):
    mk = helper.make_node
    scale = (mk("Mul", ["inv_sqrt2", "g"], ["d"]) if form == "mul_by_inverse" else mk("Div", ["g", "sqrt2"], ["d"]))
    head = [scale, mk("Erf", ["d"], ["e"]), mk("Add", ["e", "one"], ["a"])]
    tail = {"torch_legacy": [mk("Mul", ["g", "a"], ["m"]), mk("Mul", ["m", "half"], ["out"])],
            "mul_by_inverse": [mk("Mul", ["g", "a"], ["m"]), mk("Mul", ["m", "half"], ["out"])],
            "dynamo": [mk("Mul", ["half", "a"], ["m"]), mk("Mul", ["g", "m"], ["out"])],
            "half_first": [mk("Mul", ["g", "half"], ["h"]), mk("Mul", ["h", "a"], ["out"])]}[form]
    model = _gn21_then(head + tail, _GELU_CONSTS)
    counts, graph = _fused_counts(model)
    assert counts["gelu"] == 1
    (node,) = graph.nodes
    assert node.attrs["activation"] == "gelu" and node.outputs == ["out"]
    _check_against_reference(model)


def test_erf_pattern_with_wrong_constant_is_not_gelu():
    mk = helper.make_node
    nodes = [mk("Div", ["g", "sqrt2"], ["d"]), mk("Erf", ["d"], ["e"]), mk("Add", ["e", "one"], ["a"]),
             mk("Mul", ["g", "a"], ["m"]), mk("Mul", ["m", "third"], ["out"])]
    model = _gn21_then(nodes, _GELU_CONSTS + [("third", 1 / 3)])
    counts, graph = _fused_counts(model)
    assert counts["gelu"] == 0 and len(graph.nodes) == 6
    _check_against_reference(model)


def test_two_group_norms_reading_the_same_tensor_both_fuse():
    # Two branches, G = 2 and G = 4, both starting at x; then summed.
    first = _torch_pattern(groups=2)
    second = _torch_pattern(groups=4)
    graph = first.graph
    for node in second.graph.node:
        copy_ = onnx.NodeProto()
        copy_.CopyFrom(node)
        copy_.input[:] = [i if i == "x" else f"b2_{i}" for i in node.input]
        copy_.output[:] = [f"b2_{o}" for o in node.output]
        graph.node.append(copy_)
    for init in second.graph.initializer:
        renamed = onnx.TensorProto()
        renamed.CopyFrom(init)
        renamed.name = f"b2_{init.name}"
        graph.initializer.append(renamed)
    graph.node.append(helper.make_node("Add", ["y", "b2_y"], ["sum"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, None))
    counts, fused = _fused_counts(first)
    assert counts["torch_instance_norm"] == 2
    assert sorted(n.attrs["num_groups"] for n in fused.nodes if n.op_type == "GroupNorm") == [2, 4]
    _check_against_reference(first)


def test_fusion_is_idempotent():
    graph = graph_from_model(_torch_pattern(silu="plain"))
    fuse_graph(graph)
    before = copy.deepcopy(graph)
    counts = fuse_graph(graph)
    assert counts["group_norm_fused"] == 0 and counts["silu"] == 0
    assert graph.nodes == before.nodes and set(graph.initializers) == set(before.initializers)


def test_intermediate_read_inside_a_subgraph_blocks_fusion():
    # An If branch reads the instance-norm output from the outer scope: the
    # pattern's intermediate is needed, so it must stay.
    model = _torch_pattern()
    branch_out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)
    then_graph = helper.make_graph([helper.make_node("Identity", ["n"], ["branch"])], "then", [], [branch_out])
    else_graph = helper.make_graph([helper.make_node("Identity", ["n"], ["branch"])], "else", [], [branch_out])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    model.graph.node.append(helper.make_node("If", ["flag"], ["picked"], then_branch=then_graph,
                                             else_branch=else_graph))
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    counts, unchanged = _unchanged(model)
    assert counts["native_group_norms"] == 0 and unchanged
    _check_against_reference(model)
