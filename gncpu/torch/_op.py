"""The custom op torch.ops.gncpu.group_norm and its Python wrapper.

The op is the contract: the module, optimize() and the compile backend all
call it. Its CPU kernel hands the tensors' memory to gncpu.group_norm as
NumPy views (no copy in, the output written in place into a tensor of the
input's memory format); CUDA tensors go to gncpu's CUDA path where it
supports the dtype and activation, and to torch's own ops otherwise.
"""
from typing import Optional

import torch
import torch.nn.functional as F

import gncpu
from gncpu import cuda as gncpu_cuda

__all__ = ["group_norm", "torch_group_norm", "ACTIVATIONS"]

# activation name -> torch's own function (the fallback and the oracle's peer)
ACTIVATIONS = {
    None: None,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
}
_CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Computed in float32 around the kernel (NumPy has no bfloat16; torch's
# conversion is vectorized and threaded, NumPy's float16 one is not).
_REDUCED_DTYPES = (torch.float16, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.float16)


def torch_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None):
    """What the op computes, in torch's own ops: the autograd fallback."""
    y = F.group_norm(input, num_groups, weight, bias, eps)
    act = ACTIVATIONS[activation]
    return y if act is None else act(y)


def check_activation(activation):
    if activation not in ACTIVATIONS:
        names = sorted(k for k in ACTIVATIONS if k is not None)
        raise ValueError(f"activation={activation!r} is not supported: expected None or one of {names}")


def _check(input, num_groups, weight, bias, activation):
    """The errors the op raises at trace time too (the fake kernel runs this)."""
    check_activation(activation)
    if input.dim() < 2:
        raise ValueError(f"input must have rank >= 2 (N, C, *spatial), got shape {tuple(input.shape)}")
    if input.dtype not in _CPU_DTYPES:
        raise TypeError(f"input dtype {input.dtype} is not supported: expected float32, float16, "
                        f"bfloat16 or float64")
    channels = input.shape[1]
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(f"num_groups={num_groups} must be positive and divide C={channels} "
                         f"(input shape {tuple(input.shape)})")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) (one value per channel), "
                             f"got shape {tuple(param.shape)}")
        if param is not None and param.device != input.device:
            raise ValueError(f"{name} is on {param.device}, expected the input's device {input.device}")


def _kernel_layout(x):
    """x itself if gncpu reads it without a copy: contiguous, or channels-last
    strides (torch's channels_last / channels_last_3d, or an (N, C, L) view of
    (N, L, C) memory, as attention blocks pass); else a contiguous copy."""
    if x.is_contiguous() or (x.dim() >= 3 and x.movedim(1, -1).is_contiguous()):
        return x
    return x.contiguous()


def _output_like(x):
    # empty_like keeps a dense tensor's exact strides: the output has the
    # input's memory format, and gncpu's layout check sees identical strides.
    return torch.empty_like(_kernel_layout(x))


def _as_numpy_param(param, dtype):
    if param is None:
        return None
    return param.detach().to(dtype).contiguous().numpy()


@torch.library.custom_op("gncpu::group_norm", mutates_args=(), device_types="cpu")
def _group_norm_cpu(input: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], eps: float,
                    activation: Optional[str]) -> torch.Tensor:
    _check(input, num_groups, weight, bias, activation)
    x = _kernel_layout(input.detach())
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    if x.dtype in _REDUCED_DTYPES:
        _reduced_precision(x, out, num_groups, weight, bias, eps, activation)
    else:
        _kernel(x, out, num_groups, weight, bias, eps, activation)
    return out


def _kernel(x, out, num_groups, weight, bias, eps, activation):
    """gncpu.group_norm on the tensors' memory (NumPy views, no copy)."""
    gncpu.group_norm(x.numpy(), num_groups, _as_numpy_param(weight, x.dtype),
                     _as_numpy_param(bias, x.dtype), eps, activation=activation,
                     out=out.numpy(), num_threads=torch.get_num_threads())


def _reduced_precision(x, out, num_groups, weight, bias, eps, activation):
    """float16/bfloat16: one float32 copy (torch's threaded conversion, memory
    format kept), normalized in place, converted back into out: two extra
    passes over the data. Cache-sized float32 slabs (convert, normalize,
    convert back per run of groups) were tried and measured 2-6x slower on
    this shared 2-vCPU machine: three parallel regions per slab instead of
    three in all."""
    work = x.to(torch.float32)
    _kernel(work, work, num_groups, weight, bias, eps, activation)
    out.copy_(work)


def cuda_supports(dtype, activation):
    """Whether gncpu's CUDA kernels compute this case (else torch's ops do)."""
    return dtype in _CUDA_DTYPES and activation in gncpu_cuda.ACTIVATIONS


@_group_norm_cpu.register_kernel("cuda")
def _group_norm_cuda(input, num_groups, weight, bias, eps, activation):
    _check(input, num_groups, weight, bias, activation)
    if not cuda_supports(input.dtype, activation):
        return torch_group_norm(input, num_groups, weight, bias, eps, activation)
    out = _output_like(input)
    if out.numel() == 0:
        return out
    gncpu_cuda.group_norm(_kernel_layout(input.detach()), num_groups,
                          None if weight is None else weight.detach(),
                          None if bias is None else bias.detach(), eps,
                          activation=activation, out=out)
    return out


@_group_norm_cpu.register_fake
def _group_norm_fake(input, num_groups, weight, bias, eps, activation):
    _check(input, num_groups, weight, bias, activation)
    return _output_like(input)


def _needs_autograd(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None):
    """act(group_norm(input)) in one pass: torch.ops.gncpu.group_norm.

    input: (N, C, *spatial), float32, float16, bfloat16 (the last two
    computed in float32) or float64; contiguous or channels_last (read and
    written in place; other strides are copied first). The output has the
    input's dtype and memory format. activation: None, "silu", "relu",
    "gelu" or "gelu_tanh". While autograd records (an input requires grad,
    outside no_grad/inference_mode), torch's own ops compute it instead, so
    training stays differentiable.
    """
    if _needs_autograd(input, weight, bias):
        check_activation(activation)
        return torch_group_norm(input, num_groups, weight, bias, eps, activation)
    return torch.ops.gncpu.group_norm(input, num_groups, weight, bias, float(eps), activation)
