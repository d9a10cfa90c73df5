"""Bound runs of the onnxruntime engine (gncpu.onnx.bound_run): from the second
run with a feed signature on, buffers and IO bindings are fixed. They must give
the bytes of the unbound path on fresh data every run, never hand the caller a
buffer a later run writes, survive concurrent runs, and fall back cleanly when
a region's output shape follows its input values."""
import glob
import os
import threading
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from gncpu.onnx import InferenceSession, NodeExecutionError  # noqa: E402
from gncpu.onnx.bound_run import BIND_OUTPUT_PER_RUN_BYTES, BoundPlan  # noqa: E402
from test_onnx_engine_ort import _conv, _gn, _max_rel, _model, _skip_model, _vi  # noqa: E402
from test_onnx_fusion import _random_feed  # noqa: E402

MODELS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "models", "*.onnx")))
RNG = np.random.default_rng(23)


def _sessions(model, **kwargs):
    """(bound session, unbound session) of one model."""
    source = model if isinstance(model, str) else model.SerializeToString()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bound = InferenceSession(source, engine="onnxruntime", **kwargs)
        unbound = InferenceSession(source, engine="onnxruntime", **kwargs)
    unbound._ort.bind = False
    return bound, unbound


def _plans(session):
    return list(session._ort._bound.values())


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("path", MODELS, ids=[os.path.basename(p)[:-5] for p in MODELS])
def test_committed_model_bound_runs_equal_unbound_runs_on_fresh_data(path):
    model = onnx.load(path)
    bound, unbound = _sessions(path, num_threads=2)
    kept = []
    for seed in range(4):
        feed = _random_feed(model, seed=seed)
        got = bound.run(None, feed)
        _assert_same(got, unbound.run(None, feed))
        kept.append((got, [g.copy() for g in got]))
    assert any(isinstance(p, BoundPlan) for p in _plans(bound))
    assert bound.stats()["partition"]["bound_signatures"] >= 1
    # Outputs of earlier runs are the caller's: later runs did not write into them.
    for got, copy in kept:
        _assert_same(got, copy)


def test_outputs_big_and_small_crossing_and_constant_all_stay_the_callers():
    """y (a GroupNorm), big (a region's >= 1 MiB output, bound per run), small (a
    region's output copied out, also read by a later region), const (a weight),
    x itself (a feed) are all outputs."""
    channels = 8
    gn1, p1 = _gn("x", "h", channels, prefix="g1")
    conv, w = _conv("h", "big", channels, "w")
    gn2, p2 = _gn("small", "y", channels, prefix="g2")
    nodes = [gn1, conv, helper.make_node("ReduceMean", ["big", "axes"], ["small"], keepdims=1), gn2,
             helper.make_node("Identity", ["cw"], ["const"])]
    side = 192
    big_bytes = channels * side * side * 4
    assert big_bytes >= BIND_OUTPUT_PER_RUN_BYTES
    weights = p1 + w + p2 + [numpy_helper.from_array(np.arange(6, dtype=np.float32), "cw"),
                             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    model = _model(nodes, [_vi("x", [1, channels, side, side])],
                   [_vi("y", None), _vi("big", None), _vi("small", None), _vi("const", None), _vi("x", None)],
                   weights)
    bound, unbound = _sessions(model)
    kept = []
    for _ in range(3):
        x = RNG.standard_normal((1, channels, side, side)).astype(np.float32)
        got = bound.run(None, {"x": x})
        _assert_same(got, unbound.run(None, {"x": x}))
        assert got[-1] is not x and not np.shares_memory(got[-1], x)
        kept.append((got, [g.copy() for g in got]))
    for got, copy in kept:
        _assert_same(got, copy)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for g, w in zip(got, want):
        assert _max_rel(g, w) <= 1e-4


def test_alternating_signatures_and_a_strided_feed():
    bound, unbound = _sessions(_skip_model())
    shapes = [(1, 4, 3, 3), (3, 4, 7, 5), (1, 4, 3, 3), (2, 4, 16, 1), (3, 4, 7, 5)]
    for shape in shapes * 2:
        x = RNG.standard_normal(shape).astype(np.float32)
        _assert_same(bound.run(None, {"x": x}), unbound.run(None, {"x": x}))
        wide = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)
        wide[..., ::2] = x
        _assert_same(bound.run(None, {"x": wide[..., ::2]}), unbound.run(None, {"x": x}))
    assert len(_plans(bound)) == 3 and all(isinstance(p, BoundPlan) for p in _plans(bound))


def test_concurrent_bound_runs_each_get_their_own_buffers():
    bound, unbound = _sessions(_skip_model(), num_threads=2)
    feeds = [RNG.standard_normal((2, 4, 9, 9)).astype(np.float32) for _ in range(8)]
    want = [unbound.run(None, {"x": x}) for x in feeds]
    bound.run(None, {"x": feeds[0]})  # records the shapes; the threads then run bound
    results, errors = {}, []

    def worker(index):
        try:
            for _ in range(20):
                got = bound.run(None, {"x": feeds[index]})
                _assert_same(got, want[index])
            results[index] = True
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    plan = _plans(bound)[0]
    assert 1 <= len(plan._free) <= 8  # a context per concurrent run at most


def _value_shaped_model():
    """y = GN(Slice(x, 0:k on the last axis)): the region's output shape follows k's value."""
    gn, p = _gn("s", "y", 4)
    nodes = [helper.make_node("Slice", ["x", "zero", "k", "axis"], ["s"]), gn]
    weights = p + [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                   numpy_helper.from_array(np.array([3], np.int64), "axis")]
    return _model(nodes, [_vi("x", [2, 4, 6, 6]), _vi("k", [1], TensorProto.INT64)], [_vi("y", None)], weights)


def test_output_shape_that_follows_values_falls_back_to_the_unbound_path():
    model = _value_shaped_model()
    bound, _ = _sessions(model)
    reference = ReferenceEvaluator(model)
    x = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)
    for k in (6, 6, 4, 6, 2):
        feed = {"x": x, "k": np.array([k], np.int64)}
        got = bound.run(None, feed)[0]
        want = reference.run(None, feed)[0]
        assert got.shape == want.shape == (2, 4, 6, k)
        assert _max_rel(got, want) <= 1e-4
    assert _plans(bound) == [None]   # the signature now runs unbound
    split = bound.stats()["partition"]
    assert split["bound_signatures"] == 0 and split["unbound_signatures"] == 1
    assert "0 feed signature(s) bound, 1 run unbound" in bound.summary()


def test_an_error_in_a_bound_run_is_the_models_and_keeps_the_plan():
    gn, p = _gn("g", "y", 4)
    model = _model([helper.make_node("Gather", ["x", "i"], ["g"], axis=0), gn],
                   [_vi("x", [3, 4, 5, 5]), _vi("i", [2], TensorProto.INT64)], [_vi("y", None)], p)
    bound, unbound = _sessions(model)
    x = RNG.standard_normal((3, 4, 5, 5)).astype(np.float32)
    for _ in range(2):
        feed = {"x": x, "i": np.array([0, 2], np.int64)}
        _assert_same(bound.run(None, feed), unbound.run(None, feed))
    with pytest.raises(NodeExecutionError, match="onnxruntime region 0"):
        bound.run(None, {"x": x, "i": np.array([0, 7], np.int64)})
    assert isinstance(_plans(bound)[0], BoundPlan)
    feed = {"x": x, "i": np.array([1, 0], np.int64)}
    _assert_same(bound.run(None, feed), unbound.run(None, feed))


def test_results_do_not_change_with_the_thread_count():
    path = next(p for p in MODELS if "hf_sd_vae_decoder" in p)
    model = onnx.load(path)
    feed = _random_feed(model, seed=3)
    results = []
    for threads in (1, 2, 3):
        session, _ = _sessions(path, num_threads=threads)
        for _ in range(3):
            got = session.run(None, feed)
        results.append(got)
    for got in results[1:]:
        for g, w in zip(got, results[0]):
            # GroupNorm and onnxruntime's own kernels at a fixed thread count repeat bit for
            # bit; across counts onnxruntime's convolutions may round differently.
            assert _max_rel(g, w) <= 1e-5


def test_plans_kept_are_bounded_by_count_and_bytes(monkeypatch):
    """A service that sees ever new shapes keeps a bounded set of bound plans,
    least recently used dropped first, and every run stays right."""
    from gncpu.onnx import engine_ort

    bound, unbound = _sessions(_skip_model())
    shapes = [(1, 4, h, 5) for h in range(3, 13)]
    one_plan = None
    for shape in shapes[:2]:
        x = RNG.standard_normal(shape).astype(np.float32)
        _assert_same(bound.run(None, {"x": x}), unbound.run(None, {"x": x}))
        one_plan = _plans(bound)[-1]
    monkeypatch.setattr(engine_ort, "BOUND_PLANS_KEPT", 4)
    for shape in shapes:
        for _ in range(2):
            x = RNG.standard_normal(shape).astype(np.float32)
            _assert_same(bound.run(None, {"x": x}), unbound.run(None, {"x": x}))
        assert len(_plans(bound)) <= 4
    last = [((1, 4, h, 5), np.dtype(np.float32)) for h in (9, 10, 11, 12)]
    assert [signature[0] for signature in bound._ort._bound] == last   # the four most recent
    # Bytes: a budget of about two plans keeps two; the newest is kept even alone.
    monkeypatch.setattr(engine_ort, "BOUND_PLANS_KEPT", 64)
    monkeypatch.setattr(engine_ort, "BOUND_BYTES_KEPT", 2 * one_plan.buffer_bytes + 1)
    for shape in [(1, 4, 3, 5), (1, 4, 3, 6), (1, 4, 3, 7)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        _assert_same(bound.run(None, {"x": x}), unbound.run(None, {"x": x}))
    kept = bound._ort._bound
    assert sum(p.buffer_bytes for p in kept.values()) <= 2 * one_plan.buffer_bytes + 1 or len(kept) == 1
    assert list(kept)[-1][0][0] == (1, 4, 3, 7)
    monkeypatch.setattr(engine_ort, "BOUND_BYTES_KEPT", 1)
    x = RNG.standard_normal((1, 4, 20, 20)).astype(np.float32)
    _assert_same(bound.run(None, {"x": x}), unbound.run(None, {"x": x}))
    assert len(kept) == 1 and isinstance(next(iter(kept.values())), BoundPlan)
