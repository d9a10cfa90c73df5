"""gncpu.cuda.group_norm's own code, end to end without a GPU: CuPy is
replaced by tests/cuda_emulation/fake_cupy.py, whose kernels are the
emulated .cu. What this proves: the launcher builds the module with the
options the build tests check, sends the plan's launches with correctly
typed arguments, handles layouts, out=, in-place, float16 and errors, and
its results match the oracle. What it cannot: CuPy's real behaviour."""
import sys

import numpy as np
import pytest

import gncpu.cuda
from cuda_emulation import unavailable
from gncpu import reference
from gncpu.cuda import _launcher, plan as cuda_plan

driver = pytest.importorskip("cuda_emulation.driver", reason="tests/cuda_emulation is not importable")
if driver.compiler() is None:
    unavailable("no C++ compiler (g++ or $CXX) to build the CUDA emulation")
from cuda_emulation.fake_cupy import FakeArray, FakeCuPy, FakeRawModule  # noqa: E402


@pytest.fixture
def cupy(monkeypatch):
    fake = FakeCuPy(driver.build())
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_launcher, "_module", None)
    monkeypatch.setattr(_launcher, "_functions", {})
    FakeRawModule.instances.clear()
    return fake


def device(x):
    return np.array(x).view(FakeArray)


def case(shape, channels_last=False, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    c = shape[-1] if channels_last else shape[1]
    return x, rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_oracle(cupy, channels_last, activation):
    shape = (2, 5, 6, 16) if channels_last else (2, 16, 5, 6)
    x, w, b = case(shape, channels_last, offset=1e4)
    y = gncpu.cuda.group_norm(device(x), 4, device(w), device(b), activation=activation,
                              channels_last=channels_last)
    assert isinstance(y, FakeArray) and y.dtype == np.float32 and y.shape == x.shape
    expected = reference.group_norm(x, 4, w, b, activation=activation, channels_last=channels_last)
    assert np.abs(y - expected).max() <= 2e-5


def test_module_is_built_once_with_the_checked_options(cupy):
    x, w, b = case((1, 8, 4, 4))
    for _ in range(3):
        gncpu.cuda.group_norm(device(x), 2, w, b)
    (module,) = FakeRawModule.instances
    assert module.options == cuda_plan.compile_options()
    assert module.backend == "nvrtc"
    assert module.code.startswith('#line 1 "group_norm.cu"\n')
    assert module.code.endswith(gncpu.cuda.source_path().read_text())
    assert sorted(set(module.functions_asked)) == sorted(module.functions_asked)  # each fetched once


def test_channels_last_strides_run_nhwc_without_a_copy(cupy):
    # an NCHW-shaped array whose memory is NHWC, as a torch channels_last tensor arrives
    x, w, b = case((2, 8, 3, 5))
    nhwc = device(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    xcl = np.moveaxis(nhwc, -1, 1)
    assert isinstance(xcl, FakeArray) and not xcl.flags.c_contiguous
    y = gncpu.cuda.group_norm(xcl, 2, w, b)
    assert "copy" not in cupy.calls
    assert y.strides == xcl.strides  # comes back channels-last too
    assert np.abs(y - reference.group_norm(x, 2, w, b)).max() <= 1e-5


def test_other_strides_are_copied(cupy):
    x, w, b = case((2, 8, 6, 6))
    view = device(x)[:, :, ::2, ::2]
    y = gncpu.cuda.group_norm(view, 2, w, b)
    assert "copy" in cupy.calls
    assert np.abs(y - reference.group_norm(np.asarray(view), 2, w, b)).max() <= 1e-5


def test_out_and_in_place(cupy):
    x, w, b = case((2, 8, 4, 4))
    expected = reference.group_norm(x, 2, w, b)
    out = device(np.zeros_like(x))
    assert gncpu.cuda.group_norm(device(x), 2, w, b, out=out) is out
    assert np.abs(out - expected).max() <= 1e-5
    xd = device(x)
    gncpu.cuda.group_norm(xd, 2, w, b, out=xd)
    assert np.abs(xd - expected).max() <= 1e-5


def test_out_overlapping_the_input_is_refused(cupy):
    flat = device(np.zeros(2 * 8 * 16 + 1, np.float32))
    x = flat[1:].reshape(2, 8, 4, 4)
    with pytest.raises(ValueError, match="overlaps the input"):
        gncpu.cuda.group_norm(x, 2, out=flat[:-1].reshape(2, 8, 4, 4))


def test_misaligned_input(cupy):
    x, w, b = case((2, 8, 4, 4))
    flat = device(np.zeros(x.size + 1, np.float32))
    xd = flat[1:].reshape(x.shape)
    xd[...] = x
    y = gncpu.cuda.group_norm(xd, 2, w, b, activation="silu")
    assert np.abs(y - reference.group_norm(x, 2, w, b, activation="silu")).max() <= 1e-5


def test_float16(cupy):
    x = case((2, 8, 4, 4))[0].astype(np.float16)
    y = gncpu.cuda.group_norm(device(x), 4)
    assert y.dtype == np.float16
    assert np.abs(y.astype(np.float64) - reference.group_norm(x, 4)).max() <= 2e-3
    out = device(np.zeros_like(x))
    gncpu.cuda.group_norm(device(x), 4, out=out)
    np.testing.assert_array_equal(out, y)


def test_empty_input(cupy):
    y = gncpu.cuda.group_norm(device(np.zeros((0, 4, 3), np.float32)), 2)
    assert y.shape == (0, 4, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(activation="relu"), ValueError, r"activation='relu' is not supported by the CUDA path: it fuses None or 'silu'"),
    (dict(num_groups=3), ValueError, r"num_groups=3 must divide C=8"),
    (dict(num_groups=0), ValueError, r"num_groups=0 must be positive"),
    (dict(num_groups=2.0), TypeError, r"num_groups must be an int"),
    (dict(eps=-1.0), ValueError, r"eps=-1.0 must be finite and >= 0"),
    (dict(weight=np.ones(4, np.float32)), ValueError, r"weight must have shape \(8,\)"),
    (dict(bias=np.ones(8, np.int64)), ValueError, r"bias must hold floating-point values"),
    (dict(channels_last="yes"), TypeError, r"channels_last must be a bool"),
    (dict(out=np.zeros((2, 8, 4), np.float32)), TypeError, r"out must be a CUDA array"),
])
def test_argument_errors(cupy, kwargs, error, match):
    args = dict(num_groups=2)
    args.update(kwargs)
    groups = args.pop("num_groups")
    with pytest.raises(error, match=match):
        gncpu.cuda.group_norm(device(np.zeros((2, 8, 4), np.float32)), groups, **args)


def test_channels_last_errors_name_the_real_shape(cupy):
    with pytest.raises(ValueError, match=r"num_groups=3 must divide C=8 \(input shape \(2, 4, 8\)\)"):
        gncpu.cuda.group_norm(device(np.zeros((2, 4, 8), np.float32)), 3, channels_last=True)


def test_input_errors(cupy):
    with pytest.raises(TypeError, match="float64"):
        gncpu.cuda.group_norm(device(np.zeros((2, 8), np.float64)), 2)
    with pytest.raises(ValueError, match="rank >= 2"):
        gncpu.cuda.group_norm(device(np.zeros(8, np.float32)), 2)
    with pytest.raises(TypeError, match="input must be a CUDA array"):
        gncpu.cuda.group_norm([[1.0, 2.0]], 1)
