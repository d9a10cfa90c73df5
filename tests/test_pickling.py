"""Pickling what a service holds: InferenceSession (as its model bytes and
constructor options, rebuilt on load), GroupNorm, NodeArg, the ONNX errors and
the onnx.backend rep. Unpickled copies compute bit-identical results, in this
process and in a spawn-context multiprocessing pool (which ships by pickling)."""
import multiprocessing
import os
import pickle

import numpy as np
import pytest

import gncpu
from conftest import assert_bitwise_equal
from service_models import VAE_DECODER, call_module, conv_gn_silu_model, feeds_for, run_session

onnx = pytest.importorskip("onnx")
from gncpu.onnx import InferenceSession, InvalidModelError, NodeArg, NodeExecutionError  # noqa: E402
from gncpu.onnx.backend import GncpuBackend  # noqa: E402
from gncpu.onnx.session import FallbackWarning  # noqa: E402


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def model_as(kind, tmp_path):
    data = conv_gn_silu_model(shape=(1, 32, 16, 16))
    if kind == "bytes":
        return data
    if kind == "proto":
        return onnx.load_from_string(data)
    path = tmp_path / "model.onnx"
    proto = onnx.load_from_string(data)
    if kind == "external_data_path":
        onnx.save(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("kind", ["path", "bytes", "proto", "external_data_path"])
def test_session_pickles_and_computes_the_same_bytes(kind, tmp_path):
    session = InferenceSession(model_as(kind, tmp_path), num_threads=2)
    feeds = feeds_for(session)
    copy = roundtrip(session)
    assert isinstance(copy, InferenceSession) and copy is not session
    assert copy.stats()["num_threads"] == 2
    assert [a.name for a in copy.get_inputs()] == [a.name for a in session.get_inputs()]
    assert_bitwise_equal(copy.run(None, feeds)[0], session.run(None, feeds)[0], f"(unpickled, from {kind})")


def test_unpickled_session_keeps_every_constructor_option():
    session = InferenceSession(VAE_DECODER, 1, fuse=False, allow_fallback=False,
                               providers=[("CPUExecutionProvider", {})])
    copy = roundtrip(session)
    assert copy._options == session._options == {
        "num_threads": 1, "fuse": False, "allow_fallback": False, "providers": [("CPUExecutionProvider", {})],
        "engine": "auto"}
    assert copy.stats()["group_norm_fused"] == 0  # fuse=False really reached the rebuilt session
    feeds = feeds_for(session)
    assert_bitwise_equal(copy.run(None, feeds)[0], session.run(None, feeds)[0])


def test_pickle_is_a_snapshot_of_the_model_given():
    proto = onnx.load_from_string(conv_gn_silu_model(shape=(1, 32, 8, 8)))
    session = InferenceSession(proto)
    proto.graph.node[0].op_type = "NotAnOp"  # the caller changes its proto afterwards
    feeds = feeds_for(session)
    assert_bitwise_equal(roundtrip(session).run(None, feeds)[0], session.run(None, feeds)[0])


def test_pickling_a_session_whose_file_changed_raises(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_gn_silu_model(shape=(1, 32, 8, 8)))
    session = InferenceSession(str(path))
    path.write_bytes(conv_gn_silu_model(shape=(1, 32, 8, 8), seed=5))
    os.utime(path, ns=(1, 1))
    with pytest.raises(RuntimeError, match="model file .* changed"):
        pickle.dumps(session)


def test_unpickling_warns_again_about_fallback_nodes():
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Einsum", ["a", "b"], ["y"], equation="ij,jk->ik")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.warns(FallbackWarning):
        session = InferenceSession(model, engine="gncpu")  # onnxruntime would run Einsum itself
    data = pickle.dumps(session)
    with pytest.warns(FallbackWarning):
        pickle.loads(data)


@pytest.mark.parametrize("kwargs", [
    {}, {"affine": False}, {"activation": "silu"}, {"channels_last": True, "eps": 1e-3},
], ids=["affine", "no_affine", "silu", "channels_last"])
def test_group_norm_module_pickles(kwargs, rng):
    module = gncpu.GroupNorm(4, 16, **kwargs)
    if module.affine:
        module.weight[:] = rng.standard_normal(16)  # changed in place, as a loaded checkpoint would
        module.bias[:] = rng.standard_normal(16)
    copy = roundtrip(module)
    assert repr(copy) == repr(module)
    shape = (2, 8, 8, 16) if module.channels_last else (2, 16, 8, 8)
    x = rng.standard_normal(shape).astype(np.float32)
    assert_bitwise_equal(copy(x), module(x))


def test_other_public_objects_pickle():
    arg = NodeArg("x", [1, "batch", None], "tensor(float)")
    assert roundtrip(arg) == arg
    for error in (InvalidModelError("bad model"), NodeExecutionError("node 'c' failed")):
        copy = roundtrip(error)
        assert type(copy) is type(error) and str(copy) == str(error)
    rep = GncpuBackend.prepare(onnx.load(VAE_DECODER))
    x = feeds_for(rep.session)["x"]
    assert_bitwise_equal(roundtrip(rep).run([x])[0], rep.run([x])[0])


def test_spawn_pool_workers_compute_the_same_bytes():
    session = InferenceSession(VAE_DECODER, num_threads=1)
    feeds = feeds_for(session)
    module = gncpu.GroupNorm(8, 32, activation="silu")
    module.weight[:] = np.linspace(-2, 2, 32, dtype=np.float32)
    x = np.random.default_rng(4).standard_normal((2, 32, 64, 64)).astype(np.float32)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        from_session = pool.apply_async(run_session, (session, feeds))
        from_module = pool.apply_async(call_module, (module, x))
        session_result, module_result = from_session.get(timeout=120), from_module.get(timeout=120)
    assert_bitwise_equal(session_result, session.run(None, feeds)[0], "(session in a spawn worker)")
    assert_bitwise_equal(module_result, module(x), "(GroupNorm in a spawn worker)")
