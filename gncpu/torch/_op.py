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


# float16/bfloat16 run through float32 slabs of at most this many elements
# (2 MiB: the two cores' L2 here): each slab is converted, normalized in place and
# converted back while it is in cache, so memory sees the 2-byte data only
# (one read, one write) instead of a full float32 copy each way.
SLAB_ELEMENTS = 1 << 19


def _slabs(x, num_groups):
    """(index, channel slice, groups): pieces of x that normalize on their
    own: whole samples, or (contiguous x) runs of groups within a sample."""
    n, channels = x.shape[:2]
    sample = x[0].numel() if n else 0
    if sample <= SLAB_ELEMENTS or not x.is_contiguous():
        step = max(1, SLAB_ELEMENTS // max(sample, 1))
        for start in range(0, n, step):
            yield (slice(start, start + step),), slice(None), num_groups
        return
    group_channels = channels // num_groups
    step = max(1, SLAB_ELEMENTS // (sample // num_groups))
    for i in range(n):
        for g in range(0, num_groups, step):
            k = min(step, num_groups - g)
            chans = slice(g * group_channels, (g + k) * group_channels)
            yield (slice(i, i + 1), chans), chans, k


def _reduced_precision(x, out, num_groups, weight, bias, eps, activation):
    weight = None if weight is None else weight.detach().float()
    bias = None if bias is None else bias.detach().float()
    buffer = None
    for index, chans, groups in _slabs(x, num_groups):
        src = x[index]
        if buffer is None:  # the first slab is the largest
            buffer = torch.empty_like(src, dtype=torch.float32)
        work = buffer[tuple(slice(0, size) for size in src.shape)]
        work.copy_(src)
        _kernel(work, work, groups, None if weight is None else weight[chans],
                None if bias is None else bias[chans], eps, activation)
        out[index].copy_(work)


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
