"""The compiled kernels behind Sigmoid, Erf, Gelu, Softmax, LayerNormalization
and small convolutions (gncpu/kernel/_onnx_ops.pxi, gncpu/onnx/ops/native.py).

Accuracy is checked in float32 ulps against float64 oracles (math.erf/erfc,
exp) on dense sweeps, random data and adversarial values; the ops against
onnx.reference through one-node models; thread counts against each other
(bit-identical); and outputs the kernels write into are poisoned with NaN
first, so an element left unwritten shows.
"""
import math
import subprocess

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from conftest import python_command, subprocess_env  # noqa: E402
from gncpu.kernel import kernels  # noqa: E402
from gncpu.onnx import InferenceSession as _Session  # noqa: E402


def InferenceSession(model, **options):
    # These are the embedded engine's own kernels (onnxruntime would run these nodes itself).
    return _Session(model, engine="gncpu", **options)

RNG = np.random.default_rng(20261201)

# Max error in float32 ulps of the float64 value, as gncpu/kernel/_mathf64.h states them.
ULP_BOUND = {"sigmoid": 0.51, "erf": 1.5, "gelu": 2.5, "gelu_tanh": 0.51}


def _erf64(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _erfc64(x):
    return np.vectorize(math.erfc, otypes=[np.float64])(x)


def _exp64(x):
    with np.errstate(over="ignore"):
        return np.exp(x)


ORACLE = {
    "sigmoid": lambda x: 1.0 / (1.0 + _exp64(-x)),
    "erf": _erf64,
    # erfc form: accurate in the negative tail, where 1 + erf cancels.
    "gelu": lambda x: 0.5 * x * _erfc64(-x / math.sqrt(2.0)),
    "gelu_tanh": lambda x: x / (1.0 + _exp64(-2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
}


def _sweep():
    dense = np.linspace(-30.0, 30.0, 600_001)
    special = [0.0, -0.0, 1e-38, -1e-38, 1e-45, 3e-8, -3e-8, 0.7499, 0.75, 0.7501, 1.06, -1.06, 87.0, -87.0,
               88.8, -88.8, 104.0, -104.0, 1e10, -1e10, 3e38, -3e38]
    return np.concatenate([dense, RNG.standard_normal(100_000) * 3, RNG.standard_normal(20_000) * 1e-4,
                           special]).astype(np.float32)


def _ulp_error(got, want):
    """|got - want| in ulps of float32 at want (want float64, finite)."""
    spacing = np.spacing(np.abs(want.astype(np.float32))).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(got.astype(np.float64) - want) / spacing


def _unary(x, name, threads=1, out=None):
    out = np.full_like(x, np.nan) if out is None else out
    kernels.unary(x, out, kernels.UNARY_CODES[name], threads)
    return out


@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_unary_float32_within_stated_ulps_of_float64(name):
    x = _sweep()
    got = _unary(x, name)
    want = ORACLE[name](x.astype(np.float64))
    finite = np.isfinite(want)
    error = _ulp_error(got[finite], want[finite])
    assert error.max() <= ULP_BOUND[name], (name, float(error.max()), float(x[finite][np.argmax(error)]))
    # Where the float64 value is not finite (never, for these functions on finite input) it must match.
    np.testing.assert_array_equal(got[~finite], want[~finite].astype(np.float32))


@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_unary_nan_and_inf_follow_the_float64_composition(name):
    x = np.float32([np.nan, np.inf, -np.inf, -np.nan])
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.float32(ORACLE[name](x.astype(np.float64)))
    got = _unary(x, name)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_unary_float64_matches_libm(name):
    x = np.concatenate([np.linspace(-30, 30, 20001), RNG.standard_normal(1000) * 1e-3, [0.0, 1e-300, -5e-324]])
    want = ORACLE[name](x)
    # 1e-12, not a few ulps: erfc(z) has condition number ~2 z^2 (900 at z = 21), so the
    # last-bit difference between x / sqrt(2) and x * (1 / sqrt(2)) shows up that much.
    np.testing.assert_allclose(_unary(x, name), want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_unary_in_place_and_odd_sizes(name):
    for size in (0, 1, 15, 16383, 16384, 16385, 40001):
        x = (RNG.standard_normal(size) * 4).astype(np.float32)
        want = _unary(x, name)
        work = x.copy()
        kernels.unary(work, work, kernels.UNARY_CODES[name], 2)
        np.testing.assert_array_equal(work, want)


@pytest.mark.parametrize("name", sorted(ULP_BOUND))
def test_unary_is_identical_for_every_thread_count(name):
    x = (RNG.standard_normal(200_003) * 5).astype(np.float32)
    one = _unary(x, name, threads=1)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(_unary(x, name, threads=threads), one)


def test_kernels_reject_bad_arrays():
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.unary(np.zeros(8, np.int32), np.zeros(8, np.int32), 0, 1)
    with pytest.raises(TypeError, match="share one dtype"):
        kernels.unary(x, np.zeros(8, np.float64), 0, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.unary(np.zeros(16, np.float32)[::2], x, 0, 1)
    with pytest.raises(ValueError, match="sizes"):
        kernels.unary(x, np.zeros(9, np.float32), 0, 1)
    with pytest.raises(ValueError, match="code"):
        kernels.unary(x, x.copy(), 99, 1)
    with pytest.raises(ValueError, match="3-D"):
        kernels.softmax(x, x.copy(), 1)
    with pytest.raises(ValueError, match="bad geometry"):
        kernels.im2col_2d(np.zeros((1, 4, 4), np.float32), np.zeros((9, 4), np.float32), 3, 3, 1, 1, 1, 1, 0, 0,
                          3, 3)


# ---------------------------------------------------------------- one-node models vs onnx.reference

def _one_node(op, inputs, attrs, opset, n_outputs=1, domain_opsets=None):
    names = [f"in{i}" for i in range(len(inputs))]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for n, v in zip(names, inputs)],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, dict(zip(names, inputs))


def _run_both(op, inputs, attrs, opset, n_outputs=1, threads=2):
    model, feeds = _one_node(op, inputs, attrs, opset, n_outputs)
    ours = InferenceSession(model, num_threads=threads, allow_fallback=False).run(None, feeds)
    theirs = ReferenceEvaluator(model).run(None, feeds)
    return ours, theirs


ADVERSARIAL = np.float32([0.0, -0.0, 1e-30, -1e-30, 5.5, -5.5, 12.0, -12.0, 40.0, -40.0, 1e4, -1e4])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op, attrs, opset", [("Erf", {}, 13), ("Sigmoid", {}, 13), ("Gelu", {}, 20),
                                              ("Gelu", {"approximate": "none"}, 20),
                                              ("Gelu", {"approximate": "tanh"}, 20)])
def test_unary_ops_match_reference(op, attrs, opset, dtype):
    x = np.concatenate([(RNG.standard_normal(3 * 7 * 13) * 3).astype(np.float32), ADVERSARIAL])
    x = x[:3 * 7 * 13].reshape(3, 7, 13).astype(dtype)
    x.reshape(-1)[:len(ADVERSARIAL)] = ADVERSARIAL.astype(dtype)
    (got,), (want,) = _run_both(op, [x], attrs, opset)
    assert got.dtype == x.dtype and got.shape == x.shape
    # onnx.reference computes in float32 (float16 for float16) and loses the relative
    # accuracy of Gelu's negative tail: compare with it at its own accuracy...
    np.testing.assert_allclose(got, want, rtol=2e-3 if dtype == np.float16 else 2e-6, atol=2e-3 if dtype ==
                               np.float16 else 1e-6)
    # ... and with the float64 oracle at ours.
    name = {"Erf": "erf", "Sigmoid": "sigmoid"}.get(op) or ("gelu_tanh" if attrs.get("approximate") == "tanh"
                                                            else "gelu")
    exact = ORACLE[name](x.astype(np.float64))
    if dtype == np.float32:
        assert _ulp_error(got, exact).max() <= ULP_BOUND[name]
    else:
        np.testing.assert_allclose(got, exact.astype(dtype), rtol=1e-12 if dtype == np.float64 else 1e-3,
                                   atol=1e-300 if dtype == np.float64 else 1e-7)


def test_erf_of_integers_rounds_like_the_spec():
    x = np.array([-3, -1, 0, 1, 2], np.int32)
    (got,), (want,) = _run_both("Erf", [x], {}, 13)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def _softmax64(x, axis):
    x = x.astype(np.float64)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


@pytest.mark.parametrize("shape, axis", [((2, 3, 5), -1), ((2, 3, 5), 0), ((2, 3, 5), 1), ((7,), 0),
                                         ((1, 4, 1, 9), 2), ((3, 1), -1), ((2, 64, 64), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_softmax_matches_reference_every_axis(shape, axis, dtype):
    x = (RNG.standard_normal(shape) * 4).astype(dtype)
    (got,), (want,) = _run_both("Softmax", [x], {"axis": axis}, 13)
    assert got.dtype == x.dtype and got.shape == x.shape
    # float16 computes in float32 here; onnx.reference stays in float16 (off by up to 4 ulps).
    rtol = {np.float32: 1e-6, np.float64: 1e-13, np.float16: 4e-3}[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3)
    np.testing.assert_allclose(got, _softmax64(x, axis).astype(dtype), rtol=min(rtol, 1e-3), atol=1e-7)
    if dtype == np.float32:
        # Within ~1 ulp of float64 (the exponentials rounded once, then one scaling).
        error = _ulp_error(got, _softmax64(x, axis))
        assert error.max() <= 1.5


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_legacy_coerces_to_2d(axis):
    # Before opset 13: one softmax per leading index over all dims from `axis` on
    # (onnx.reference ignores the coercion, so the oracle is computed here).
    x = (RNG.standard_normal((2, 3, 4)) * 2).astype(np.float32)
    model, feeds = _one_node("Softmax", [x], {"axis": axis}, 11)
    got = InferenceSession(model, allow_fallback=False).run(None, feeds)[0]
    rows = int(np.prod(x.shape[:axis % x.ndim]))
    want = _softmax64(x.reshape(rows, -1), 1).reshape(x.shape)
    assert got.shape == x.shape
    assert _ulp_error(got, want).max() <= 1.5


def test_softmax_adversarial_rows():
    x = np.float32([[1e4, 1e4 + 1, 1e4 - 3, 0.0],          # large offset: shifted by the max
                    [-np.inf, 0.0, 1.0, -np.inf],           # -inf entries give exact zeros
                    [np.nan, 0.0, 1.0, 2.0],                # NaN: the whole row is NaN
                    [np.inf, 0.0, 1.0, 2.0],                # +inf: inf - inf = NaN, as in NumPy
                    [-np.inf, -np.inf, -np.inf, -np.inf],   # no finite entry: NaN
                    [-80.0, 80.0, 0.0, 1e-30]])
    with np.errstate(invalid="ignore"):
        want = _softmax64(x, -1)
    model, feeds = _one_node("Softmax", [x], {"axis": -1}, 13)
    got = InferenceSession(model).run(None, feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    assert _ulp_error(got[finite], want[finite]).max() <= 1.5


def _layer_norm64(x, scale, bias, axis, epsilon):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + epsilon)
    y = (x64 - mean) * rstd * scale.astype(np.float64)
    return (y + bias.astype(np.float64) if bias is not None else y), mean, rstd


@pytest.mark.parametrize("shape, axis, scale_shape", [((2, 5, 7), -1, (7,)), ((2, 5, 7), 1, (5, 7)),
                                                      ((2, 5, 7), 1, (1, 7)), ((2, 5, 7), 0, (2, 5, 7)),
                                                      ((3, 33), -1, (33,)), ((1, 1), -1, (1,)),
                                                      ((4, 2, 3, 9), -2, (3, 9))])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("stash_type", [1, 11])
def test_layer_norm_matches_reference(shape, axis, scale_shape, with_bias, stash_type):
    x = (RNG.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    scale = RNG.standard_normal(scale_shape).astype(np.float32)
    inputs = [x, scale] + ([RNG.standard_normal(scale_shape).astype(np.float32)] if with_bias else [])
    attrs = {"axis": axis, "epsilon": 1e-3, "stash_type": stash_type}
    model, feeds = _one_node("LayerNormalization", inputs, attrs, 17, n_outputs=3)
    ours = InferenceSession(model, allow_fallback=False).run(None, feeds)
    stash = np.float32 if stash_type == 1 else np.float64
    assert [o.dtype for o in ours] == [np.float32, stash, stash]
    if stash_type == 1:  # onnx.reference implements only stash_type=1
        for got, want in zip(ours, ReferenceEvaluator(model).run(None, feeds)):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    y64, mean64, rstd64 = _layer_norm64(x, scale, inputs[2] if with_bias else None, axis, 1e-3)
    np.testing.assert_allclose(ours[0], y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], mean64, rtol=1e-7)
    np.testing.assert_allclose(ours[2], rstd64, rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_layer_norm_other_dtypes(dtype):
    x = RNG.standard_normal((3, 8)).astype(dtype)
    scale, bias = RNG.standard_normal(8).astype(dtype), RNG.standard_normal(8).astype(dtype)
    ours, theirs = _run_both("LayerNormalization", [x, scale, bias], {}, 17, n_outputs=1)
    assert ours[0].dtype == dtype
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-3 if dtype == np.float16 else 1e-12, atol=1e-3)


def test_layer_norm_is_stable_at_large_offsets():
    # 1e4 + N(0, 1): E[x^2] - E[x]^2 in float32 would lose every digit of the variance.
    x = (1e4 + RNG.standard_normal((4, 4096))).astype(np.float32)
    scale, bias = np.ones(4096, np.float32), np.zeros(4096, np.float32)
    model, feeds = _one_node("LayerNormalization", [x, scale, bias], {"epsilon": 1e-5}, 17)
    got = InferenceSession(model).run(None, feeds)[0]
    want, _, _ = _layer_norm64(x, scale, bias, -1, 1e-5)
    assert np.abs(got - want).max() < 1e-5


def test_layer_norm_constant_rows_and_nan():
    x = np.float32([[3.0] * 6, [1.0, 2.0, np.nan, 4.0, 5.0, 6.0], [1.0, np.inf, 0.0, 0.0, 0.0, 0.0]])
    scale, bias = np.full(6, 2.0, np.float32), np.full(6, 0.25, np.float32)
    model, feeds = _one_node("LayerNormalization", [x, scale, bias], {}, 17)
    got = InferenceSession(model).run(None, feeds)[0]
    np.testing.assert_array_equal(got[0], np.full(6, 0.25, np.float32))  # constant row: bias
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()


def test_layer_norm_bad_scale_names_shapes():
    x, scale = np.zeros((2, 5), np.float32), np.zeros(4, np.float32)
    model, feeds = _one_node("LayerNormalization", [x, scale], {}, 17)
    with pytest.raises(Exception, match=r"scale/bias of shape \(4,\) does not broadcast"):
        InferenceSession(model).run(None, feeds)


def test_row_kernels_write_every_output_element():
    x = RNG.standard_normal((5, 3, 7)).astype(np.float32)
    y = np.full_like(x, np.nan)
    kernels.softmax(x, y, 2)
    np.testing.assert_allclose(y, _softmax64(x, 1), rtol=1e-6)
    x2 = x.reshape(15, 7)
    y2, mean, rstd = np.full_like(x2, np.nan), np.full(15, np.nan), np.full(15, np.nan)
    scale = np.ones(7, np.float32)
    kernels.layer_norm(x2, scale, None, y2, mean, rstd, 1e-5, 2)
    want, mean64, rstd64 = _layer_norm64(x2, scale, None, -1, 1e-5)
    np.testing.assert_allclose(y2, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean, mean64.ravel(), rtol=1e-12)
    np.testing.assert_allclose(rstd, rstd64.ravel(), rtol=1e-12)


@pytest.mark.parametrize("op, attrs, opset, n_outputs", [
    ("Softmax", {"axis": -1}, 13, 1), ("Softmax", {"axis": 1}, 13, 1),
    ("LayerNormalization", {"axis": -1}, 17, 3), ("LayerNormalization", {"axis": 1}, 17, 3),
    ("Erf", {}, 13, 1), ("Sigmoid", {}, 13, 1), ("Gelu", {}, 20, 1), ("Gelu", {"approximate": "tanh"}, 20, 1)])
def test_ops_identical_for_every_thread_count(op, attrs, opset, n_outputs):
    x = (RNG.standard_normal((8, 96, 130)) * 3 + 1).astype(np.float32)
    inputs = [x]
    if op == "LayerNormalization":
        tail = x.shape[attrs["axis"] % x.ndim:]
        inputs += [RNG.standard_normal(tail).astype(np.float32), RNG.standard_normal(tail).astype(np.float32)]
    model, feeds = _one_node(op, inputs, attrs, opset, n_outputs)
    results = [InferenceSession(model, num_threads=t).run(None, feeds) for t in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_no_scipy_needed():
    # Erf and Gelu run on the compiled kernels: with scipy unimportable they still run, exactly.
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import math, numpy as np\n"
        "from gncpu.onnx.ops import elementwise\n"
        "x = np.linspace(-6, 6, 101)\n"
        "assert np.allclose(elementwise.erf_array(x), [math.erf(v) for v in x], rtol=1e-15, atol=0)\n"
        "assert elementwise.gelu(np.float32([1.0]))[0] == np.float32(0.8413447460685429)\n"
        "print('ok')\n")
    result = subprocess.run(python_command("-c", code), env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ---------------------------------------------------------------- small convolutions

def _im2col_oracle(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow):
    c, h, w = x.shape
    big = np.zeros((c, h + ph + kh * dh + oh * sh, w + pw + kw * dw + ow * sw), x.dtype)
    big[:, ph:ph + h, pw:pw + w] = x
    cols = np.empty((c, kh, kw, oh, ow), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, ky, kx] = big[:, ky * dh:ky * dh + sh * oh:sh, kx * dw:kx * dw + sw * ow:sw][:, :oh, :ow]
    return cols.reshape(c * kh * kw, oh * ow)


@pytest.mark.parametrize("geometry", [(3, 3, 1, 1, 1, 1, 1, 1), (3, 3, 2, 2, 1, 1, 1, 1), (1, 1, 1, 1, 1, 1, 0, 0),
                                      (3, 5, 1, 3, 2, 1, 2, 0), (2, 2, 3, 1, 1, 2, 0, 3), (1, 4, 1, 5, 1, 1, 0, 2),
                                      (5, 5, 1, 1, 3, 3, 6, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_matches_oracle_and_fills_every_column(geometry, dtype):
    kh, kw, sh, sw, dh, dw, ph, pw = geometry
    x = RNG.standard_normal((3, 7, 9)).astype(dtype)
    oh = (7 + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (9 + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.full((3 * kh * kw, oh * ow), np.nan, dtype)
    kernels.im2col_2d(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow)
    np.testing.assert_array_equal(cols, _im2col_oracle(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow))


SMALL_CONVS = [
    ((1, 4, 8, 8), (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 6, 9, 7), (4, 3, 3, 3), {"group": 2, "strides": [2, 1], "pads": [0, 1, 2, 1]}),
    ((1, 3, 10, 10), (5, 3, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ((1, 3, 10, 10), (5, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 6, 6), (2, 3, 3, 3), {"auto_pad": "VALID", "dilations": [2, 2]}),
    ((1, 1, 400), (16, 1, 10), {"strides": [5]}),
    ((1, 16, 79), (16, 16, 3), {"strides": [2], "pads": [1, 0]}),
    ((1, 1, 1, 40), (16, 1, 1, 5), {"strides": [1, 2]}),
    ((1, 8, 4, 4), (16, 8, 1, 1), {}),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", SMALL_CONVS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_small_conv_matches_reference(x_shape, w_shape, attrs, dtype, with_bias):
    from gncpu.onnx.ops import conv

    x = RNG.standard_normal(x_shape).astype(dtype)
    w = (RNG.standard_normal(w_shape) * 0.3).astype(dtype)
    inputs = [x, w] + ([RNG.standard_normal(w_shape[0]).astype(dtype)] if with_bias else [])
    conv._geometries.clear()
    (got,), (want,) = _run_both("Conv", inputs, attrs, 17)
    assert [g.path for g in conv._geometries.values()] == ["small"]
    assert got.dtype == dtype and got.shape == want.shape
    rtol = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 3e-3}[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 5)


def test_small_conv_identical_for_every_thread_count():
    x = RNG.standard_normal((2, 32, 16, 16)).astype(np.float32)
    w = RNG.standard_normal((32, 32, 3, 3)).astype(np.float32)
    model, feeds = _one_node("Conv", [x, w], {"pads": [1, 1, 1, 1]}, 17)
    results = [InferenceSession(model, num_threads=t).run(None, feeds)[0] for t in (1, 2, 4)]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_conv_geometry_is_reused_and_errors_still_name_the_node():
    from gncpu.onnx.ops import conv

    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    model, feeds = _one_node("Conv", [x, RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)], {}, 17)
    session = InferenceSession(model)
    conv._geometries.clear()
    first = session.run(None, feeds)[0]
    assert len(conv._geometries) == 1
    np.testing.assert_array_equal(session.run(None, feeds)[0], first)
    assert len(conv._geometries) == 1
    bad, feeds_bad = _one_node("Conv", [x, RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)], {}, 17)
    with pytest.raises(Exception, match=r"Conv.*group=1 does not fit input channels 4"):
        InferenceSession(bad).run(None, feeds_bad)
