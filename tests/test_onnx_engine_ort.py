"""engine="onnxruntime": GroupNorm on gncpu's kernels, every other node in onnxruntime.

The partition (gncpu.onnx.partition) is tested on its own, on hand-built
graphs for each shape of cut; the engine is tested end to end against
onnx.reference, plain onnxruntime and the float64 oracle (gncpu.reference)."""
import glob
import math
import os
import sys
import threading
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from gncpu import reference  # noqa: E402
from gncpu.onnx import InferenceSession, InvalidModelError  # noqa: E402
from gncpu.onnx.graph import graph_from_model  # noqa: E402
from gncpu.onnx.partition import Claimed, Region, partition_graph  # noqa: E402
from test_onnx_fusion import _random_feed  # noqa: E402

MODELS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "models", "*.onnx")))
ENGINES = ["onnxruntime", "gncpu"]
RTOL = 1e-4
RTOL_FLOAT16 = 2e-3  # onnx.reference and onnxruntime round to half at every op; gncpu's GN once
RNG = np.random.default_rng(11)


def _max_rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=21):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _session(model, engine="onnxruntime", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = model.SerializeToString() if hasattr(model, "SerializeToString") else model
        return InferenceSession(source, engine=engine, **kwargs)


def _plain_onnxruntime(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _gn(x, y, channels, groups=2, prefix=None):
    """A GroupNormalization-21 node and its (C,) weights as initializers."""
    prefix = prefix or y
    scale = (1 + 0.3 * RNG.standard_normal(channels)).astype(np.float32)
    bias = (0.3 * RNG.standard_normal(channels)).astype(np.float32)
    node = helper.make_node("GroupNormalization", [x, f"{prefix}_s", f"{prefix}_b"], [y], num_groups=groups,
                            epsilon=1e-5)
    return node, [numpy_helper.from_array(scale, f"{prefix}_s"), numpy_helper.from_array(bias, f"{prefix}_b")]


def _conv(x, y, channels, name):
    w = (0.2 * RNG.standard_normal((channels, channels, 3, 3))).astype(np.float32)
    return (helper.make_node("Conv", [x, name], [y], pads=[1, 1, 1, 1]), [numpy_helper.from_array(w, name)])


def _check_against_reference(model, feed, engines=ENGINES):
    want = ReferenceEvaluator(model).run(None, feed)
    for engine in engines:
        got = _session(model, engine).run(None, feed)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, engine
            assert _max_rel(g, w) <= RTOL, (engine, _max_rel(g, w))


# ---------------------------------------------------------------- every committed model

_reference_cache = {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p)[:-5] for p in MODELS])
def test_committed_model_matches_reference_and_onnxruntime(path, engine):
    model = onnx.load(path)
    feed = _random_feed(model)
    if path not in _reference_cache:
        _reference_cache[path] = (ReferenceEvaluator(model).run(None, feed), _plain_onnxruntime(model).run(None, feed))
    from_reference, from_onnxruntime = _reference_cache[path]
    session = _session(path, engine)
    assert session.engine == engine
    got = session.run(None, feed)
    rtol = RTOL if feed[model.graph.input[0].name].dtype != np.float16 else RTOL_FLOAT16
    for g, ref, theirs in zip(got, from_reference, from_onnxruntime):
        assert g.shape == ref.shape and g.dtype == ref.dtype
        assert _max_rel(g, ref) <= rtol, _max_rel(g, ref)
        assert _max_rel(g, theirs) <= rtol, _max_rel(g, theirs)
    stats = session.stats()
    expected = int({p.key: p.value for p in model.metadata_props}["gncpu.group_norms"])
    assert stats["group_norm_native"] == expected
    if engine == "onnxruntime":
        split = stats["partition"]
        assert split["claimed_group_norms"] == expected
        # Every node is accounted for: in a region or on gncpu.
        assert sum(split["region_nodes"]) + split["claimed_nodes"] == stats["nodes_run"] == len(session.graph.nodes)


# ---------------------------------------------------------------- the partition on its own

def _parts(model):
    return partition_graph(graph_from_model(model))


def _shape_of(parts):
    """Parts as ("ort", [op types]) / ("gncpu", op type), in run order."""
    return [("ort", [n.op_type for n in p.nodes]) if isinstance(p, Region) else ("gncpu", p.node.op_type)
            for p in parts]


def _single_gn_model():
    gn, weights = _gn("x", "y", 4)
    return _model([gn], [_vi("x", [2, 4, 5, 5])], [_vi("y", [2, 4, 5, 5])], weights)


def test_single_group_norm_is_one_claimed_node_and_no_region():
    parts = _parts(_single_gn_model())
    assert _shape_of(parts) == [("gncpu", "GroupNormalization")]
    _check_against_reference(_single_gn_model(), {"x": RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)})


def test_model_without_group_norm_is_one_region():
    conv, w = _conv("x", "c", 3, "w")
    model = _model([conv, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                   [_vi("x", [1, 3, 6, 6])], [_vi("y", None)], w)
    parts = _parts(model)
    assert _shape_of(parts) == [("ort", ["Conv", "Relu", "Neg"])]
    assert parts[0].inputs == ["x"] and parts[0].outputs == ["y"] and parts[0].initializers == ["w"]
    _check_against_reference(model, {"x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)})


def _skip_model(shape=(2, 4, 6, 6)):
    """x -> Conv(a) -> GN(b) -> Conv(c) -> Add(c, a) -> GN(d) -> Add(d, b) -> y; b is also an output.

    a crosses a GroupNorm through the skip connection; b (a GN output) has three readers
    in two later regions and is a graph output too."""
    channels = shape[1]
    conv_a, wa = _conv("x", "a", channels, "wa")
    gn_b, pb = _gn("a", "b", channels)
    conv_c, wc = _conv("b", "c", channels, "wc")
    gn_d, pd = _gn("s", "d", channels)
    nodes = [conv_a, gn_b, conv_c, helper.make_node("Add", ["c", "a"], ["s"]), gn_d,
             helper.make_node("Add", ["d", "b"], ["y"])]
    dims = ["N", channels, "H", "W"]
    return _model(nodes, [_vi("x", dims)], [_vi("y", dims), _vi("b", dims)], wa + pb + wc + pd)


def test_skip_connection_and_fan_out_cross_regions():
    parts = _parts(_skip_model())
    assert _shape_of(parts) == [("ort", ["Conv"]), ("gncpu", "GroupNormalization"), ("ort", ["Conv", "Add"]),
                                ("gncpu", "GroupNormalization"), ("ort", ["Add"])]
    first, second, third = (p for p in parts if isinstance(p, Region))
    assert first.outputs == ["a"]                         # read by the GN and, later, by the skip Add
    assert set(second.inputs) == {"b", "a"} and second.outputs == ["s"]
    assert set(third.inputs) == {"d", "b"} and third.outputs == ["y"]
    _check_against_reference(_skip_model(), {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("shape", [(1, 4, 3, 3), (3, 4, 7, 5), (2, 4, 16, 1)])
def test_dynamic_batch_and_spatial_dims(shape):
    model = _skip_model()
    session, reference_model = _session(model), ReferenceEvaluator(model)
    x = RNG.standard_normal(shape).astype(np.float32)
    for got, want in zip(session.run(None, {"x": x}), reference_model.run(None, {"x": x})):
        assert got.shape == want.shape and _max_rel(got, want) <= RTOL
    # A non-contiguous feed of the same values gives the same result.
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(session.run(None, {"x": strided})[0], session.run(None, {"x": x})[0])


def test_group_norms_back_to_back_and_at_input_and_output():
    gn1, p1 = _gn("x", "h", 4, prefix="g1")
    gn2, p2 = _gn("h", "y", 4, prefix="g2")
    model = _model([gn1, gn2], [_vi("x", [2, 4, 3, 3])], [_vi("y", [2, 4, 3, 3])], p1 + p2)
    assert _shape_of(_parts(model)) == [("gncpu", "GroupNormalization"), ("gncpu", "GroupNormalization")]
    _check_against_reference(model, {"x": RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)})


def _if_model(gn_in_branch):
    then_nodes, then_weights = _gn("x", "t", 4, prefix="then") if gn_in_branch else \
        (helper.make_node("Relu", ["x"], ["t"]), [])
    then_graph = helper.make_graph([then_nodes], "then", [], [_vi("t", [2, 4, 3, 3])], then_weights)
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [2, 4, 3, 3])])
    nodes = [helper.make_node("Exp", ["x0"], ["x"]),
             helper.make_node("If", ["c"], ["z"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Sigmoid", ["z"], ["y"])]
    return _model(nodes, [_vi("x0", [2, 4, 3, 3]), _vi("c", [], TensorProto.BOOL)], [_vi("y", [2, 4, 3, 3])])


@pytest.mark.parametrize("gn_in_branch", [True, False])
def test_if_holding_group_norm_runs_on_gncpu_else_inside_its_region(gn_in_branch):
    parts = _parts(_if_model(gn_in_branch))
    if gn_in_branch:
        assert _shape_of(parts) == [("ort", ["Exp"]), ("gncpu", "If"), ("ort", ["Sigmoid"])]
    else:
        assert _shape_of(parts) == [("ort", ["Exp", "If", "Sigmoid"])]
    x0 = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    for cond in (True, False):
        _check_against_reference(_if_model(gn_in_branch), {"x0": x0, "c": np.array(cond)})


def test_loop_holding_group_norm_runs_on_gncpu():
    gn, weights = _gn("acc_in", "acc_out", 4, prefix="body")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), gn],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("acc_in", [2, 4, 3, 3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [2, 4, 3, 3])], weights)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("Loop", ["n", "", "sq"], ["acc"], body=body),
             helper.make_node("Add", ["acc", "x"], ["y"])]
    model = _model(nodes, [_vi("x", [2, 4, 3, 3]), _vi("n", [], TensorProto.INT64)], [_vi("y", [2, 4, 3, 3])])
    assert _shape_of(_parts(model)) == [("ort", ["Mul"]), ("gncpu", "Loop"), ("ort", ["Add"])]
    x = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    scale, bias = (numpy_helper.to_array(w).astype(np.float64) for w in weights)
    for trips in (0, 1, 3):
        # Oracle by hand: onnx.reference (1.23) gets a GroupNormalization inside a Loop body wrong.
        acc = x.astype(np.float64) ** 2
        for _ in range(trips):
            acc = reference.group_norm(acc, 2, scale, bias, 1e-5)
        for engine in ENGINES:
            (got,) = _session(model, engine).run(None, {"x": x, "n": np.array(trips, np.int64)})
            assert _max_rel(got, acc + x) <= RTOL, (engine, trips)


def test_fused_exporter_pattern_is_one_claimed_node_with_its_silu():
    path = next(p for p in MODELS if "torch_legacy_conv_gn_silu_opset17" in p)
    session = _session(path)
    claimed = [p.node for p in session._ort.parts if isinstance(p, Claimed)]
    assert [(n.domain, n.op_type, n.attrs["activation"]) for n in claimed] == [("gncpu", "GroupNorm", "silu")]
    assert [n.op_type for p in session._ort.parts if isinstance(p, Region) for n in p.nodes] == ["Conv"]


# ---------------------------------------------------------------- outputs, threads, accuracy

def test_outputs_never_alias_feeds_or_weights():
    gn, weights = _gn("x", "g", 4)
    nodes = [gn, helper.make_node("Identity", ["x"], ["same"]),
             helper.make_node("Constant", [], ["const"], value=numpy_helper.from_array(np.float32([1, 2])))]
    model = _model(nodes, [_vi("x", [1, 4, 2, 2])], [_vi("g", None), _vi("same", None), _vi("const", None)], weights)
    session = _session(model)
    x = RNG.standard_normal((1, 4, 2, 2)).astype(np.float32)
    keep = x.copy()
    g, same, const = session.run(None, {"x": x})
    for out in (g, same, const):
        out[...] = np.nan  # the caller owns what it got
    np.testing.assert_array_equal(x, keep)
    g2, same2, const2 = session.run(None, {"x": x})
    np.testing.assert_array_equal(same2, x)
    np.testing.assert_array_equal(const2, [1, 2])
    assert np.all(np.isfinite(g2))


def _two_gn_elementwise_model(shape):
    """GN -> Mul -> GN: the onnxruntime part is elementwise, so any thread count gives the
    same bits there, and any difference would come from the GroupNorm nodes."""
    channels = shape[1]
    gn1, p1 = _gn("x", "h", channels, groups=8, prefix="g1")
    gn2, p2 = _gn("m", "y", channels, groups=8, prefix="g2")
    w = numpy_helper.from_array((1 + RNG.standard_normal((channels, 1, 1))).astype(np.float32), "w")
    nodes = [gn1, helper.make_node("Mul", ["h", "w"], ["m"]), gn2]
    return _model(nodes, [_vi("x", list(shape))], [_vi("y", list(shape)), _vi("h", list(shape))], p1 + p2 + [w])


def test_group_norm_nodes_are_bit_identical_for_every_thread_count():
    from gncpu.onnx.engine_ort import THREADED_GROUP_NORM_ELEMENTS

    shape = (2, 32, 96, 96)
    assert np.prod(shape) >= THREADED_GROUP_NORM_ELEMENTS  # big enough to run on several threads
    model = _two_gn_elementwise_model(shape)
    x = (RNG.standard_normal(shape) * 3 + 100).astype(np.float32)
    first = None
    for threads in (1, 2, 3, 4):
        session = _session(model, num_threads=threads)
        assert session.stats()["partition"]["intra_op_num_threads"] == threads
        got = session.run(None, {"x": x})
        if first is None:
            first = got
        for g, f in zip(got, first):
            np.testing.assert_array_equal(g, f)


def test_concurrent_runs_of_one_session_match_serial_runs():
    session = _session(_skip_model(), num_threads=2)
    feeds = [RNG.standard_normal((2, 4, 5, 5)).astype(np.float32) for _ in range(6)]
    serial = [session.run(None, {"x": x}) for x in feeds]
    results = [None] * len(feeds)

    def work(index):
        results[index] = session.run(None, {"x": feeds[index]})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def _offset_model(shape, groups):
    """x -> Add(bias) -> GroupNormalization-21 -> Neg: a region, the GN, a region."""
    channels = shape[1]
    gn, weights = _gn("a", "g", channels, groups=groups)
    offset = numpy_helper.from_array(np.zeros((channels, 1, 1), np.float32) + 0.5, "offset")
    nodes = [helper.make_node("Add", ["x", "offset"], ["a"]), gn, helper.make_node("Neg", ["g"], ["y"])]
    return _model(nodes, [_vi("x", list(shape))], [_vi("y", list(shape))], weights + [offset]), weights


@pytest.mark.parametrize("engine", ENGINES)
def test_large_offset_stays_within_1e4_of_the_float64_reference(engine):
    # onnxruntime runs GroupNormalization-21 as its function body, E[x^2] - E[x]^2 in
    # float32: at x = 1e4 + N(0,1) that is NaN or off by ~1e3. gncpu's kernel is exact.
    shape, groups = (2, 8, 16, 16), 4
    model, (scale, bias) = _offset_model(shape, groups)
    x = (1e4 + RNG.standard_normal(shape)).astype(np.float32)
    want = -reference.group_norm(x.astype(np.float64) + 0.5, groups, numpy_helper.to_array(scale).astype(np.float64),
                                 numpy_helper.to_array(bias).astype(np.float64), 1e-5)
    (got,) = _session(model, engine).run(None, {"x": x})
    (plain,) = _plain_onnxruntime(model).run(None, {"x": x})
    plain_error = _max_rel(plain, want) if np.all(np.isfinite(plain)) else float("nan")
    assert _max_rel(got, want) <= 1e-4, (engine, _max_rel(got, want), f"plain onnxruntime: {plain_error}")


# ---------------------------------------------------------------- choosing the engine

def test_auto_means_onnxruntime_when_installed_and_options_are_kept():
    session = InferenceSession(_single_gn_model().SerializeToString(), num_threads=2)
    assert session.engine == "onnxruntime"
    assert session.stats()["options"] == {"num_threads": 2, "fuse": True, "allow_fallback": True,
                                          "providers": None, "engine": "auto"}
    assert _session(_single_gn_model(), "gncpu").engine == "gncpu"


def test_bad_engine_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"engine='ort' is not an engine; expected one of "
                                         r"\['auto', 'onnxruntime', 'gncpu'\]"):
        InferenceSession(_single_gn_model(), engine="ort")


def test_without_onnxruntime_auto_is_gncpu_and_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert InferenceSession(_single_gn_model()).engine == "gncpu"
    with pytest.raises(ImportError, match=r'engine="onnxruntime" needs the onnxruntime package.*'
                                          r'pip install "gncpu\[ort\]"'):
        InferenceSession(_single_gn_model(), engine="onnxruntime")


def test_summary_and_profile_show_the_split_and_time_per_part():
    session = _session(_skip_model(), num_threads=2)
    x = RNG.standard_normal((1, 4, 4, 4)).astype(np.float32)
    _, profile = session.run_with_profile(None, {"x": x})
    assert set(profile) == {"onnxruntime region 0 (1 nodes)", "onnxruntime region 1 (2 nodes)",
                            "onnxruntime region 2 (1 nodes)", "GroupNorm"}
    assert profile["GroupNorm"]["calls"] == 2 and all(p["seconds"] > 0 for p in profile.values())
    text = session.summary()
    assert "(onnxruntime engine)" in text
    assert "split: 3 onnxruntime region(s) of 4 nodes (1, 2, 1), 2 GroupNorm on gncpu" in text
    assert "intra_op_num_threads=2" in text and "time per part" in text
    parts = session.stats()["partition"]["parts"]
    assert [p["kind"] for p in parts] == ["onnxruntime", "gncpu", "onnxruntime", "gncpu", "onnxruntime"]


def test_run_errors_name_the_region():
    # A Reshape whose target only fails at run time, in the region after a GroupNorm.
    gn, weights = _gn("x", "g", 4)
    nodes = [gn, helper.make_node("Reshape", ["g", "target"], ["y"])]
    model = _model(nodes, [_vi("x", [1, 4, 2, 2]), _vi("target", [2], TensorProto.INT64)], [_vi("y", None)],
                   weights)
    session = _session(model)
    from gncpu.onnx import NodeExecutionError
    with pytest.raises(NodeExecutionError, match=r"onnxruntime region 0 \(1 nodes\) failed in onnxruntime on "
                                                 r"inputs \(g: float32\[1, 4, 2, 2\], target: int64\[2\]\)"):
        session.run(None, {"x": np.zeros((1, 4, 2, 2), np.float32), "target": np.array([3, 5], np.int64)})


def test_malformed_model_still_fails_at_load():
    gn, weights = _gn("x", "y", 4)
    model = _model([gn, helper.make_node("Relu", ["nowhere"], ["z"])], [_vi("x", [1, 4, 2, 2])],
                   [_vi("y", None), _vi("z", None)], weights)
    with pytest.raises(InvalidModelError, match="reads tensor 'nowhere'"):
        _session(model)


def _float64_erf_model():
    # onnxruntime has no float64 Erf kernel; the embedded engine has one.
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "erf64",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_auto_falls_back_to_the_embedded_engine_when_onnxruntime_cannot_load_the_model():
    from gncpu.onnx import EngineFallbackWarning

    model = _float64_erf_model()
    with pytest.warns(EngineFallbackWarning, match="Erf"):
        session = InferenceSession(model, engine="auto")
    assert session.engine == "gncpu"
    x = np.linspace(-3, 3, 15).reshape(3, 5)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], [[math.erf(v) for v in row] for row in x],
                               rtol=1e-15, atol=1e-15)
    with pytest.raises(InvalidModelError, match=r"onnxruntime cannot load .*Erf.*engine=\"gncpu\""):
        InferenceSession(model, engine="onnxruntime")
