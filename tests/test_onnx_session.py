"""InferenceSession: loading, feeds, plan, folding, fallback, control flow,
summary, CLI; and the errors users meet on bad models and bad feeds."""
import os
import subprocess
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from gncpu.onnx import InferenceSession, NodeArg  # noqa: E402
from gncpu.onnx.cli import main as cli_main  # noqa: E402
from gncpu.onnx.errors import InvalidModelError  # noqa: E402
from gncpu.onnx.session import FallbackWarning  # noqa: E402
from conftest import python_command, subprocess_env

MODELS = os.path.join(os.path.dirname(__file__), "models")
RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _conv_relu_model(shape=(1, 3, 8, 8)):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["y"])],
                  [_vi("x", list(shape))], [_vi("y", None)], [numpy_helper.from_array(w, "w")])


# ---------------------------------------------------------------- loading

def test_accepts_path_bytes_and_modelproto(tmp_path):
    model = _conv_relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    results = [InferenceSession(src).run(None, {"x": x})[0]
               for src in (str(path), path, model.SerializeToString(), model)]
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_external_data_loads_from_path(tmp_path):
    model = _conv_relu_model()
    path = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # onnx.save moves tensors out of the proto it is given
    onnx.save(saved, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(InferenceSession(str(path)).run(None, {"x": x})[0],
                               ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidModelError, match="external"):
        InferenceSession(onnx.load(str(path), load_external_data=False))


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\x08\x07\x12\x03abc" + bytes(range(256)) * 3, "not"),
    (os.urandom(4096), "not"),
    (b"hello, this is plain text and not a model", "not"),
], ids=["empty", "garbage_after_header", "random", "text"])
def test_non_onnx_bytes_raise_clear_error(data, message):
    with pytest.raises(InvalidModelError, match=message):
        InferenceSession(data)


def test_truncated_model_raises_clear_error():
    data = _conv_relu_model().SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        with pytest.raises(InvalidModelError):
            InferenceSession(data[:cut])


def test_onnxruntime_style_providers():
    model = _conv_relu_model()
    InferenceSession(model, providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="CPU only"):
        InferenceSession(model, providers=["CUDAExecutionProvider"])


@pytest.mark.parametrize("engine", ["gncpu", "onnxruntime"])
def test_corrupted_model_bytes_never_crash(engine):
    # Random byte flips in a real exported model: loading either succeeds or raises
    # InvalidModelError; running what loaded either works or raises a node-named error.
    from gncpu.onnx import NodeExecutionError
    from gncpu.onnx.cli import _random_input

    data = open(os.path.join(MODELS, "torch_legacy_conv_gn_silu_opset17.onnx"), "rb").read()
    rng = np.random.default_rng(3)
    loaded = 0
    for _ in range(300):
        corrupted = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            corrupted[rng.integers(len(corrupted))] = rng.integers(256)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                session = InferenceSession(bytes(corrupted), engine=engine)
            except InvalidModelError:
                continue
            loaded += 1
            feed = {arg.name: _random_input(arg, {}, rng) for arg in session.get_inputs()}
            try:
                session.run(None, feed)
            except (ValueError, NodeExecutionError):
                pass
    assert 0 < loaded < 300


def test_missing_file_and_wrong_type():
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        InferenceSession("/nonexistent/nope.onnx")
    with pytest.raises(TypeError, match="path, bytes or onnx.ModelProto"):
        InferenceSession(3.5)


def test_undefined_tensor_is_named():
    model = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")],
                   [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(InvalidModelError, match=r"'adder'.*'ghost'.*no node, initializer or graph input"):
        InferenceSession(model)


def test_cycle_is_reported():
    model = _model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                    helper.make_node("Relu", ["a"], ["b"], name="second"),
                    helper.make_node("Identity", ["a"], ["y"])],
                   [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(InvalidModelError, match="cycle"):
        InferenceSession(model)


def test_duplicate_definition_and_unproduced_output():
    twice = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])],
                   [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(InvalidModelError, match="'y'.*already defined"):
        InferenceSession(twice)
    orphan = _model([helper.make_node("Relu", ["x"], ["z"])], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(InvalidModelError, match="graph output 'y'"):
        InferenceSession(orphan)


def test_unknown_op_lists_what_is_supported():
    model = _model([helper.make_node("NoSuchOp", ["x"], ["y"], domain="my.domain")],
                   [_vi("x", [2])], [_vi("y", [2])])
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    with pytest.raises(InvalidModelError, match="NoSuchOp.*'my.domain'"):
        InferenceSession(model, engine="gncpu")
    # onnxruntime's engine hands it to onnxruntime, which cannot load it either: the error
    # names the region, its ops and the other engine.
    with pytest.raises(InvalidModelError, match=r"onnxruntime cannot load onnxruntime region 0.*my.domain::NoSuchOp.*"
                                                r"engine=\"gncpu\""):
        InferenceSession(model, engine="onnxruntime")


def test_unknown_attribute_rejected_at_load():
    model = _model([helper.make_node("Relu", ["x"], ["y"], bogus=3)], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(InvalidModelError, match="bogus"):
        InferenceSession(model)


# ---------------------------------------------------------------- feeds and outputs

def test_inputs_and_outputs_describe_the_model():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["batch", 3, None])],
                   [_vi("y", ["batch", 3, None])])
    session = InferenceSession(model)
    assert session.get_inputs() == [NodeArg("x", ["batch", 3, None], "tensor(float)")]
    assert session.get_outputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("feed, message", [
    ({"x": np.zeros((1, 3, 8, 8), np.float32), "extra": np.zeros(1)}, r"'extra' is not an input.*'x'"),
    ({}, r"missing input 'x' \(expected 'x' tensor\(float\) \(\?, 3, 8, 8\)\)"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, r"input 'x': expected dtype float32.*got float64"),
    ({"x": np.zeros((3, 8, 8), np.float32)}, r"input 'x': expected rank 4.*got rank 3 with shape \(3, 8, 8\)"),
    ({"x": np.zeros((1, 2, 8, 8), np.float32)}, r"input 'x': expected shape \(\?, 3, 8, 8\).*dimension 1 must be 3, is 2"),
], ids=["unknown", "missing", "dtype", "rank", "static_dim"])
@pytest.mark.parametrize("engine", ["gncpu", "onnxruntime"])
def test_bad_feeds_raise_value_error_naming_input(feed, message, engine):
    session = InferenceSession(_conv_relu_model(shape=(None, 3, 8, 8)), engine=engine)
    with pytest.raises(ValueError, match=message):
        session.run(None, feed)


def test_bad_output_names():
    session = InferenceSession(_conv_relu_model())
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"'c' is not an output.*\['y'\]"):
        session.run(["c"], {"x": x})
    with pytest.raises(TypeError, match="list of names"):
        session.run("y", {"x": x})


def test_dynamic_dims_run_at_several_sizes():
    model = _conv_relu_model(shape=("n", 3, "h", "w"))
    session = InferenceSession(model)
    reference = ReferenceEvaluator(model)
    for shape in ((1, 3, 5, 7), (3, 3, 16, 9)):
        x = RNG.standard_normal(shape).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert y.shape == (shape[0], 4) + shape[2:]
        np.testing.assert_allclose(y, reference.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_outputs_never_alias_session_or_caller_buffers():
    const = numpy_helper.from_array(np.arange(3, dtype=np.float32), "k")
    shape = numpy_helper.from_array(np.array([3, 1], np.int64), "shape")
    model = _model([helper.make_node("Identity", ["x"], ["xy"]), helper.make_node("Reshape", ["k", "shape"], ["kr"])],
                   [_vi("x", [3])], [_vi("k", [3]), _vi("xy", [3]), _vi("kr", [3, 1])], [const, shape])
    session = InferenceSession(model)
    x = np.ones(3, np.float32)
    for value in session.run(None, {"x": x}):
        value[...] = -1
    assert session.run(["k"], {"x": x})[0].tolist() == [0, 1, 2]
    assert session.run(["kr"], {"x": x})[0].ravel().tolist() == [0, 1, 2]
    assert x.tolist() == [1, 1, 1]


# ---------------------------------------------------------------- plan

def test_constants_fold_and_intermediates_are_freed():
    shape_const = helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64)))
    nodes = [shape_const,
             helper.make_node("Unsqueeze", ["w", "axes"], ["w1"]),      # constant: folded
             helper.make_node("Mul", ["x", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["y"])]
    w = numpy_helper.from_array(np.array([1.0, -2.0, 3.0], np.float32), "w")
    model = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], [w])
    session = InferenceSession(model, engine="gncpu")
    stats = session.stats()
    assert stats["nodes_folded"] == 2 and stats["nodes_run"] == 3
    # The unsqueezed weight replaced "w" and the axes constant: the session keeps only what it reads.
    assert set(session.graph.initializers) == {"w1"}
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    env = dict(session.graph.initializers, x=x)
    session._plan.execute(env)
    # Only initializers and the output remain: "x", "a" and "b" were dropped after their last use.
    assert set(env) == set(session.graph.initializers) | {"y"}
    np.testing.assert_allclose(env["y"], -np.maximum(x * np.array([1, -2, 3], np.float32), 0))


def test_constant_subgraph_of_fallback_ops_folds_without_warning():
    # Einsum has no native implementation; on constant inputs it is evaluated once at load.
    a = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "a")
    nodes = [helper.make_node("Einsum", ["a", "a"], ["gram"], equation="ij,kj->ik"),
             helper.make_node("MatMul", ["x", "gram"], ["y"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        session = InferenceSession(_model(nodes, [_vi("x", [1, 2])], [_vi("y", [1, 2])], [a]), allow_fallback=False)
    assert session.stats()["nodes_folded"] == 1
    x = np.float32([[1, -1]])
    gram = np.arange(6, dtype=np.float32).reshape(2, 3) @ np.arange(6, dtype=np.float32).reshape(2, 3).T
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ gram)


def test_shape_of_static_input_folds_to_a_constant():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    session = InferenceSession(_model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])]))
    assert session.stats()["nodes_folded"] == 1


def test_unused_branches_are_removed():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Exp", ["x"], ["unused"])]
    session = InferenceSession(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))
    assert session.stats()["nodes_removed_dead"] == 1


def test_results_do_not_depend_on_thread_count():
    w = RNG.standard_normal((32, 32, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["y"])],
                   [_vi("x", [2, 32, 64, 64])], [_vi("y", None)], [numpy_helper.from_array(w, "w")])
    x = RNG.standard_normal((2, 32, 64, 64)).astype(np.float32)
    one = InferenceSession(model, num_threads=1, engine="gncpu").run(None, {"x": x})[0]
    # Bit-identical: conv blocks are fixed by the shape, BLAS runs one thread per block.
    for threads in (2, 3, 8):
        session = InferenceSession(model, num_threads=threads, engine="gncpu")
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], one)
    with pytest.raises(ValueError, match="num_threads=0"):
        InferenceSession(model, num_threads=0)



_THREAD_COUNT_CHILD = """
import numpy as np, sys
from onnx import TensorProto, helper, numpy_helper
from gncpu.onnx import InferenceSession
rng = np.random.default_rng(7)
w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
m = helper.make_model(helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 64, 64])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")]),
    opset_imports=[helper.make_opsetid("", 17)])
x = rng.standard_normal((2, 32, 64, 64)).astype(np.float32)
one = InferenceSession(m, num_threads=1, engine="gncpu").run(None, {"x": x})[0]
two = InferenceSession(m, num_threads=2, engine="gncpu").run(None, {"x": x})[0]
print(int(np.array_equal(one, two)))
"""


def test_thread_count_invariance_with_an_avx2_hosts_blas():
    # An AVX2-only host (Zen 3) runs OpenBLAS's Haswell kernels, whose results depended on
    # how a product was split; OPENBLAS_CORETYPE picks those kernels on any AVX2 CPU.
    result = subprocess.run(python_command("-c", _THREAD_COUNT_CHILD), capture_output=True, text=True,
                            env=subprocess_env(OPENBLAS_CORETYPE="Haswell"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"

# ---------------------------------------------------------------- fallback and control flow

def _einsum_model():
    return _model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="ij,jk->ik")],
                  [_vi("a", [2, 3]), _vi("b", [3, 4])], [_vi("y", [2, 4])])


def test_unimplemented_op_falls_back_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = InferenceSession(_einsum_model(), engine="gncpu")
    fallback = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallback) == 1 and "Einsum x1" in str(fallback[0].message)
    a, b = RNG.standard_normal((2, 3)).astype(np.float32), RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"a": a, "b": b})[0], a @ b, rtol=1e-5)
    assert "Einsum x1" in session.summary()
    with pytest.raises(InvalidModelError, match="Einsum"):
        InferenceSession(_einsum_model(), allow_fallback=False, engine="gncpu")


def test_if_and_loop_with_outer_scope_reads():
    # The then-branch has its own initializer; both read "x" from the enclosing graph.
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "two"], ["t"])], "then", [], [_vi("t", [3])],
                                   [numpy_helper.from_array(np.float32([2, 2, 2]), "two")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan"])],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("acc_in", [3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [3]), _vi("scan", [3])])
    nodes = [helper.make_node("If", ["c"], ["z"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Loop", ["n", "go", "z"], ["acc", "scans"], body=body)]
    model = _model(nodes, [_vi("x", [3]), _vi("c", [], TensorProto.BOOL), _vi("n", [], TensorProto.INT64),
                           _vi("go", [], TensorProto.BOOL)],
                   [_vi("acc", [3]), _vi("scans", [None, 3])])
    session = InferenceSession(model, allow_fallback=False)
    reference = ReferenceEvaluator(model)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    for cond in (True, False):
        feed = {"x": x, "c": np.array(cond), "n": np.array(4, np.int64), "go": np.array(True)}
        for ours, ref in zip(session.run(None, feed), reference.run(None, feed)):
            np.testing.assert_allclose(ours, ref)


# ---------------------------------------------------------------- GroupNorm report and CLI

def test_summary_reports_fused_group_norms_and_shapes():
    path = os.path.join(MODELS, "torch_legacy_conv_gn_silu_opset17.onnx")
    session = InferenceSession(path)
    x = RNG.standard_normal([d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]).astype(np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    stats = session.stats()
    assert stats["group_norm_native"] == 1 and stats["group_norm_fused"] == 1 and stats["silu_fused"] == 1
    assert stats["fallback_nodes"] == 0
    text = session.summary()
    assert "GroupNorm: 1 run natively, 1 of them fused" in text and "1 SiLU fused" in text
    assert "-> last run (1, 8, 8, 8)" in text


def test_cli_run_profile_and_reference(tmp_path, capsys):
    path = os.path.join(MODELS, "torch_dynamo_vae_decoder_block_opset18.onnx")
    out = tmp_path / "out.npz"
    status = cli_main([path, "--repeat", "2", "--threads", "1", "--profile", "--compare-reference", "--save", str(out),
                       "--engine", "gncpu"])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "GroupNorm: 8 run natively" in text and "time per op type" in text and "Conv" in text
    assert "relative to max |ref|" in text and "ok" in text
    assert np.load(out)["y"].shape == (1, 3, 16, 16)


def test_cli_run_shows_the_onnxruntime_split(capsys):
    path = os.path.join(MODELS, "torch_dynamo_vae_decoder_block_opset18.onnx")
    status = cli_main([path, "--repeat", "2", "--threads", "2", "--profile", "--compare-reference",
                       "--engine", "onnxruntime"])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "(onnxruntime engine)" in text and "GroupNorm: 8 run natively" in text
    assert "split: 9 onnxruntime region(s)" in text and "8 GroupNorm on gncpu" in text
    assert "time per part" in text and "onnxruntime region 0" in text and "GroupNorm" in text
    assert "relative to max |ref|" in text and "ok" in text


def test_cli_inputs_from_files_and_errors(tmp_path, capsys):
    model = _conv_relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "feeds.npz", x=x)
    for args in (["--input", f"x={tmp_path / 'x.npy'}"], ["--inputs", str(tmp_path / "feeds.npz")]):
        assert cli_main([str(path), *args, "--save", str(tmp_path / "y.npz")]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], ReferenceEvaluator(model).run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)
    assert cli_main([str(path), "--input", "nope=1.npy"]) == 2
    assert "'nope' is not a model input" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert cli_main([str(tmp_path / "bad.onnx")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_importing_gncpu_does_not_import_onnx():
    code = "import sys, gncpu; print('onnx' in sys.modules, 'gncpu.onnx' in sys.modules)"
    result = subprocess.run(python_command("-c", code), capture_output=True, text=True,
                            env=subprocess_env(), check=True)
    assert result.stdout.split() == ["False", "False"]


def test_cli_progress_line_appears_only_on_long_runs(capsys):
    from gncpu.onnx.cli import _Progress

    quick = _Progress(delay=60.0)
    for done in range(1, 4):
        quick(done, 3, "Conv")
    assert capsys.readouterr().err == ""
    slow = _Progress(delay=0.0)
    slow(1, 4, "Conv")
    slow(4, 4, "GroupNorm")
    slow.finish()
    err = capsys.readouterr().err
    assert "node 1/4 (25%) Conv" in err and "node 4/4 (100%) GroupNorm" in err


def test_backend_run_node_and_rep_run():
    from gncpu.onnx import backend

    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])
    x = RNG.standard_normal((1, 2, 9)).astype(np.float32)
    w = RNG.standard_normal((3, 2, 3)).astype(np.float32)
    (y,) = backend.run_node(node, [x, w])
    expected = ReferenceEvaluator(_model([node], [_vi("x", [1, 2, 9]), _vi("w", [3, 2, 3])], [_vi("y", None)])).run(
        None, {"x": x, "w": w})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    rep = backend.prepare(_conv_relu_model())
    with pytest.raises(ValueError, match="takes 1 inputs"):
        rep.run([x, x])
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
