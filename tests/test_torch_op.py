"""torch.ops.gncpu.group_norm: against the float64 oracle on dtypes, memory
formats and shapes; zero-copy in and out; compile/export; autograd fallback;
the CUDA dispatch decision (no GPU here)."""
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import gncpu  # noqa: E402
import gncpu.torch as gt  # noqa: E402
from gncpu.torch import _op  # noqa: E402

from conftest import (assert_close, assert_f16_close, make_data, oracle, python_command,  # noqa: E402
                      subprocess_env, tolerance)

SHAPES = [((2, 8, 5, 5), 4), ((1, 32, 16, 16), 32), ((3, 6, 7), 3), ((2, 4, 3, 3, 3), 2),
          ((1, 64, 4, 4), 1), ((1, 2, 1, 1), 2)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ACTIVATIONS = [None, "silu", "relu", "gelu", "gelu_tanh"]
# bfloat16 keeps 8 significant bits: the result is the float32 one rounded,
# within half a bfloat16 ulp (2**-8 relative) of the oracle plus float32's error.
BF16_REL = 2.0 ** -8


def channels_last(t):
    """t with channels-last strides (torch's memory formats for 4-D/5-D)."""
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


def to_numpy64(t):
    return t.detach().to(torch.float64).numpy()


def assert_matches(y, x, groups, weight, bias, eps, activation, kind="normal"):
    ref = oracle(to_numpy64(x), groups, None if weight is None else to_numpy64(weight),
                 None if bias is None else to_numpy64(bias), eps, activation=activation)
    fused = activation is not None
    if y.dtype == torch.float16:
        assert_f16_close(y.numpy(), ref, kind, fused)
    elif y.dtype == torch.bfloat16:
        err = np.abs(to_numpy64(y) - ref)
        bound = BF16_REL * np.abs(ref) + tolerance(np.float32, kind, fused)
        assert np.array_equal(np.isnan(to_numpy64(y)), np.isnan(ref))
        assert np.all(err[~np.isnan(ref)] <= bound[~np.isnan(ref)]), float(np.nanmax(err - bound))
    else:
        assert_close(y.numpy(), ref, tolerance(y.numpy().dtype, kind, fused))


def random_case(rng, shape, dtype, kind="normal", affine=True):
    x, eps = make_data(rng, shape, np.float64, kind)
    x = torch.from_numpy(x).to(dtype)
    c = shape[1]
    weight = torch.from_numpy(rng.standard_normal(c)).to(dtype) if affine else None
    bias = torch.from_numpy(rng.standard_normal(c)).to(dtype) if affine else None
    return x, weight, bias, eps


@pytest.mark.parametrize("shape, groups", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_matches_oracle(rng, shape, groups, dtype, memory_format):
    x, weight, bias, eps = random_case(rng, shape, dtype)
    if memory_format == "channels_last":
        x = channels_last(x)
    before = x.clone()
    y = torch.ops.gncpu.group_norm(x, groups, weight, bias, eps, "silu")
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    assert_matches(y, x, groups, weight, bias, eps, "silu")
    assert torch.equal(x, before)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("affine", [True, False])
def test_activations_and_affine(rng, activation, affine):
    x, weight, bias, eps = random_case(rng, (2, 12, 6, 6), torch.float32, affine=affine)
    y = gt.group_norm(x, 3, weight, bias, eps, activation)
    assert_matches(y, x, 3, weight, bias, eps, activation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_offset(rng, dtype):
    kind = "offset_1e4" if dtype == torch.float32 else "offset_1e3"
    x, weight, bias, eps = random_case(rng, (1, 16, 32, 32), dtype, kind)
    assert_matches(gt.group_norm(x, 4, weight, bias, eps), x, 4, weight, bias, eps, None, kind)


def test_constant_and_nonfinite_groups():
    x = torch.zeros(1, 8, 4, 4)
    x[0, 2:4] = 7.0                   # a constant group -> bias
    x[0, 4, 0, 0] = float("nan")      # a group with NaN -> all NaN
    x[0, 6, 1, 1] = float("inf")
    bias = torch.arange(8.0)
    y = gt.group_norm(x, 4, None, bias)
    assert torch.equal(y[0, 0:4], bias[0:4, None, None].expand(4, 4, 4))
    assert torch.isnan(y[0, 4:8]).all()


def test_strided_input_is_copied_and_correct(rng):
    x, weight, bias, eps = random_case(rng, (2, 8, 6, 10), torch.float32)
    view = x[:, :, :, ::2]           # neither contiguous nor channels-last
    y = gt.group_norm(view, 4, weight, bias, eps)
    assert y.is_contiguous()
    assert_matches(y, view, 4, weight, bias, eps, None)


def test_empty_batch():
    y = gt.group_norm(torch.empty(0, 8, 3, 3), 4)
    assert y.shape == (0, 8, 3, 3)


class Spy:
    """Records the data pointers gncpu.group_norm is given."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = gncpu.group_norm

        def spy(x, *args, out=None, **kwargs):
            self.calls.append((x.__array_interface__["data"][0], out.__array_interface__["data"][0]))
            return real(x, *args, out=out, **kwargs)

        monkeypatch.setattr(gncpu, "group_norm", spy)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_zero_copy_in_and_out(rng, monkeypatch, memory_format):
    x, weight, bias, eps = random_case(rng, (2, 16, 8, 8), torch.float32)
    if memory_format == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    spy = Spy(monkeypatch)
    with torch.inference_mode():
        y = gt.group_norm(x, 4, weight, bias, eps, "silu")
    assert spy.calls == [(x.data_ptr(), y.data_ptr())]
    assert y.stride() == x.stride()
    if memory_format == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_computes_in_one_float32_buffer(rng, monkeypatch, dtype):
    x, weight, bias, eps = random_case(rng, (1, 8, 4, 4), dtype)
    x = channels_last(x)
    spy = Spy(monkeypatch)
    y = gt.group_norm(x, 2, weight, bias, eps)
    (src, dst), = spy.calls
    assert src == dst                        # normalized in place in the float32 copy
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("call, match", [
    (lambda x: gt.group_norm(x, 3), r"num_groups=3 must .*divide C=8"),
    (lambda x: gt.group_norm(x, 0), r"num_groups=0 must be positive"),
    (lambda x: gt.group_norm(x, 2, torch.ones(4)), r"weight must have shape \(8,\).*\(4,\)"),
    (lambda x: gt.group_norm(x, 2, None, torch.ones(3)), r"bias must have shape \(8,\)"),
    (lambda x: gt.group_norm(x, 2, activation="tanh"), r"activation='tanh' is not supported"),
    (lambda x: gt.group_norm(x[0, 0, 0], 1), r"rank >= 2"),
    (lambda x: gt.group_norm(x.to(torch.int32), 2), r"dtype torch.int32 is not supported"),
])
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.randn(2, 8, 3, 3))


def test_autograd_falls_back_to_torch(rng, monkeypatch):
    x, weight, bias, eps = random_case(rng, (2, 8, 5, 5), torch.float32)
    x.requires_grad_()
    weight.requires_grad_()
    spy = Spy(monkeypatch)
    y = gt.group_norm(x, 4, weight, bias, eps, "silu")
    assert spy.calls == [] and y.grad_fn is not None
    y.square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    F.silu(F.group_norm(x2, 4, w2, bias, eps)).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)
    with torch.no_grad():            # parameters that require grad, no recording: the op
        y = gt.group_norm(x, 4, weight, bias, eps, "silu")
    assert len(spy.calls) == 1 and y.grad_fn is None


def test_fullgraph_compile_keeps_one_node(rng):
    from torch._dynamo.testing import CompileCounterWithBackend

    x, weight, bias, eps = random_case(rng, (2, 8, 5, 5), torch.float32)
    counter = CompileCounterWithBackend("eager")
    fn = torch.compile(lambda t: gt.group_norm(t, 4, weight, bias, eps, "silu") * 2,
                       backend=counter, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(fn(x), gt.group_norm(x, 4, weight, bias, eps, "silu") * 2)
    assert counter.frame_count == 1
    targets = [n.target for n in counter.graphs[0].graph.nodes if n.op == "call_function"]
    # dynamo records the op packet; AOT graphs and export the overload
    assert targets.count(torch.ops.gncpu.group_norm) == 1


def test_export_keeps_one_node(rng):
    module = gt.GroupNorm(4, 8, activation="silu").eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():  # with grad recording, the wrapper would trace torch's ops
        exported = torch.export.export(module, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.gncpu.group_norm.default]
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), module(x))


def test_fake_kernel_gives_the_real_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = channels_last(torch.randn(2, 8, 5, 5))
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(real)
        out = torch.ops.gncpu.group_norm(fake, 4, None, None, 1e-5, None)
        assert out.stride() == real.stride() and out.dtype == real.dtype
        with pytest.raises(ValueError, match="num_groups=3"):
            torch.ops.gncpu.group_norm(fake, 3, None, None, 1e-5, None)


def test_cuda_kernel_registered_and_dispatch_decision():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gncpu::group_norm", "CUDA")
    assert _op.cuda_supports(torch.float32, "silu") and _op.cuda_supports(torch.float16, None)
    assert not _op.cuda_supports(torch.bfloat16, "silu")    # no bfloat16 CUDA kernel
    assert not _op.cuda_supports(torch.float32, "gelu")     # the CUDA apply fuses SiLU only
    assert not _op.cuda_supports(torch.float64, None)


def test_cuda_kernel_calls_the_cuda_path(monkeypatch):
    """The CUDA kernel's logic on CPU tensors (no GPU here): gncpu.cuda gets
    the input and an `out` of the input's memory format; unsupported cases
    go to torch's ops."""
    calls = []

    def fake_cuda(x, groups, weight, bias, eps, *, activation, out):
        calls.append((x.data_ptr(), out.stride(), activation))
        out.copy_(_op.torch_group_norm(x, groups, weight, bias, eps, activation))
        return out

    monkeypatch.setattr(_op.gncpu_cuda, "group_norm", fake_cuda)
    x = channels_last(torch.randn(2, 8, 4, 4))
    y = _op._group_norm_cuda(x, 4, None, None, 1e-5, "silu")
    assert calls == [(x.data_ptr(), x.stride(), "silu")]
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 4)))
    y = _op._group_norm_cuda(x, 4, None, None, 1e-5, "gelu")
    assert len(calls) == 1
    torch.testing.assert_close(y, F.gelu(F.group_norm(x, 4)))


def test_import_gncpu_does_not_import_torch():
    code = ("import sys, gncpu; assert 'torch' not in sys.modules, 'torch imported'; "
            "import gncpu.torch, torch._dynamo; assert 'gncpu' in torch._dynamo.list_backends(); "
            "print('ok')")
    result = subprocess.run(python_command("-c", code), env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr

