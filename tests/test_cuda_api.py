"""gncpu.cuda's Python API: lazy imports, array recognition, availability,
and, on a machine with a CUDA GPU, real launches through CuPy (and torch)
against the float64 oracle. The GPU tests skip, saying why, elsewhere."""
import subprocess
import sys

import numpy as np
import pytest

import gncpu
import gncpu.cuda
from gncpu import reference
from gncpu.cuda import is_cuda_array
from conftest import python_command, subprocess_env


def test_importing_gncpu_imports_no_gpu_library():
    code = ("import sys, gncpu, gncpu.cuda, gncpu.cuda.plan; "
            "print(sorted(m for m in ('cupy', 'torch', 'cupy_backends') if m in sys.modules))")
    out = subprocess.run(python_command("-c", code), capture_output=True, text=True, check=True,
                         env=subprocess_env()).stdout
    assert out.strip() == "[]"


class _CAI:
    def __init__(self, interface):
        self._interface = interface

    @property
    def __cuda_array_interface__(self):
        if isinstance(self._interface, Exception):
            raise self._interface
        return self._interface


class _DLPack:
    def __init__(self, device):
        self._device = device

    def __dlpack_device__(self):
        if isinstance(self._device, Exception):
            raise self._device
        return self._device


@pytest.mark.parametrize("obj,expected", [
    (_CAI({"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}), True),
    (_CAI(AttributeError("not a CUDA tensor")), False),   # torch CPU tensors raise
    (_CAI(RuntimeError("odd")), False),
    (_DLPack((2, 0)), True),     # kDLCUDA
    (_DLPack((13, 1)), True),    # kDLCUDAManaged
    (_DLPack((1, 0)), False),    # kDLCPU
    (_DLPack((3, 0)), False),    # kDLCUDAHost: pinned host memory
    (_DLPack((10, 0)), False),   # ROCm
    (_DLPack(ValueError("no")), False),
    (np.zeros(3), False),
    ([1.0, 2.0], False),
    (None, False),
    (_CAI, False),               # a class, not an array
])
def test_is_cuda_array(obj, expected):
    assert is_cuda_array(obj) is expected


def test_is_available_never_raises():
    assert gncpu.cuda.is_available() in (True, False)


def test_source_ships_with_the_package():
    text = gncpu.cuda.source_path().read_text()
    from gncpu.cuda import plan

    for name in plan.KERNEL_NAMES:
        assert name in text


def test_without_cupy_the_error_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert gncpu.cuda.is_available() is False
    with pytest.raises(ImportError, match=r"cupy-cuda12x.*cupy-cuda13x"):
        gncpu.cuda.group_norm(_DLPack((2, 0)), 1)


# ---------------------------------------------------------------------------
# On a real GPU.

gpu = pytest.mark.skipif(not gncpu.cuda.is_available(),
                         reason="no CUDA device visible to CuPy (or CuPy not installed): "
                                "the GPU launches are verified by the CPU emulation instead")


@pytest.fixture
def cupy():
    return pytest.importorskip("cupy")


def _case(rng, shape, channels_last=False, offset=0.0):
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    c = shape[-1] if channels_last else shape[1]
    return x, rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)


@gpu
@pytest.mark.parametrize("shape,groups", [((2, 32, 16, 16), 8), ((1, 320, 64, 64), 32), ((3, 6, 5, 7), 3),
                                          ((1, 4, 300, 300), 1), ((4, 10), 10), ((2, 8, 3, 3, 3), 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("offset,tol", [(0.0, 1e-5), (1e4, 2e-5)])
def test_gpu_matches_oracle(cupy, shape, groups, channels_last, activation, offset, tol):
    rng = np.random.default_rng(0)
    if channels_last:
        shape = (shape[0], *shape[2:], shape[1])
    x, w, b = _case(rng, shape, channels_last, offset)
    y = gncpu.cuda.group_norm(cupy.asarray(x), groups, cupy.asarray(w), cupy.asarray(b), activation=activation,
                              channels_last=channels_last)
    assert isinstance(y, cupy.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    expected = reference.group_norm(x, groups, w, b, activation=activation, channels_last=channels_last)
    assert np.abs(cupy.asnumpy(y) - expected).max() <= tol


@gpu
def test_gpu_misaligned_view_out_and_in_place(cupy):
    rng = np.random.default_rng(1)
    x, w, b = _case(rng, (2, 8, 4, 4))
    flat = cupy.empty(x.size + 1, cupy.float32)
    xd = flat[1:].reshape(x.shape)  # 4 bytes off alignment: scalar kernels
    xd[...] = cupy.asarray(x)
    expected = reference.group_norm(x, 2, w, b)
    out = cupy.empty_like(xd)
    assert gncpu.cuda.group_norm(xd, 2, w, b, out=out) is out
    assert np.abs(cupy.asnumpy(out) - expected).max() <= 1e-5
    gncpu.cuda.group_norm(xd, 2, w, b, out=xd)
    assert np.abs(cupy.asnumpy(xd) - expected).max() <= 1e-5
    with pytest.raises(ValueError, match="overlaps"):
        gncpu.cuda.group_norm(xd, 2, out=flat[:-1].reshape(x.shape))


@gpu
def test_gpu_deterministic_and_on_current_stream(cupy):
    rng = np.random.default_rng(2)
    x = cupy.asarray(_case(rng, (1, 64, 128, 128))[0])
    first = gncpu.cuda.group_norm(x, 32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        again = gncpu.cuda.group_norm(x, 32)
    stream.synchronize()
    assert bool((first == again).all())


@gpu
def test_gpu_float16(cupy):
    rng = np.random.default_rng(3)
    x = _case(rng, (2, 8, 6, 6))[0].astype(np.float16)
    y = gncpu.cuda.group_norm(cupy.asarray(x), 4)
    assert y.dtype == np.float16
    assert np.abs(cupy.asnumpy(y) - reference.group_norm(x, 4)).max() <= 2e-3


@gpu
def test_gpu_argument_errors(cupy):
    x = cupy.zeros((2, 8, 4, 4), cupy.float32)
    with pytest.raises(ValueError, match="activation='relu' is not supported by the CUDA path"):
        gncpu.cuda.group_norm(x, 2, activation="relu")
    with pytest.raises(ValueError, match="num_groups=3 must divide C=8"):
        gncpu.cuda.group_norm(x, 3)
    with pytest.raises(ValueError, match="eps"):
        gncpu.cuda.group_norm(x, 2, eps=-1.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        gncpu.cuda.group_norm(x, 2, weight=cupy.ones(4))
    with pytest.raises(TypeError, match="float64"):
        gncpu.cuda.group_norm(x.astype(cupy.float64), 2)
    with pytest.raises(ValueError, match="rank >= 2"):
        gncpu.cuda.group_norm(x.ravel(), 2)


@gpu
def test_gpu_torch_tensors(cupy):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    rng = np.random.default_rng(4)
    x, w, b = _case(rng, (2, 16, 8, 8))
    xt = torch.from_numpy(x).cuda()
    y = gncpu.cuda.group_norm(xt, 4, torch.from_numpy(w).cuda(), torch.from_numpy(b).cuda(), activation="silu")
    assert isinstance(y, torch.Tensor) and y.is_cuda
    expected = reference.group_norm(x, 4, w, b, activation="silu")
    assert np.abs(y.cpu().numpy() - expected).max() <= 1e-5
    # a channels_last tensor runs the NHWC kernels in place of a copy, and comes back channels_last
    xcl = xt.contiguous(memory_format=torch.channels_last)
    ycl = gncpu.cuda.group_norm(xcl, 4, w, b)
    assert ycl.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(ycl.cpu().numpy() - reference.group_norm(x, 4, w, b)).max() <= 1e-5


def test_config_reports_without_raising(monkeypatch):
    info = gncpu.cuda.config()
    assert info["cuda_block_threads"] == 256 and "cupy" in info
    if not gncpu.cuda.is_available():
        assert info.get("cuda_devices", "none").startswith("none") or info["cupy"].startswith("not available")
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert gncpu.cuda.config()["cupy"].startswith("not available (")
