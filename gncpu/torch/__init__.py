"""gncpu inside PyTorch models (needs torch; `import gncpu` alone never imports it).

    import gncpu.torch
    y = gncpu.torch.group_norm(x, 32, weight, bias, activation="silu")  # torch.ops.gncpu.group_norm
    model = gncpu.torch.optimize(model)            # GroupNorm modules -> gncpu, SiLU fused
    compiled = torch.compile(model, backend="gncpu")

Importing this package registers the op and the "gncpu" compile backend.
"""
from ._op import group_norm, torch_group_norm
from .module import GroupNorm
from .optimize import OptimizeReport, optimize
from .backend import gncpu_backend, register as _register_backend

_register_backend()

__all__ = ["group_norm", "torch_group_norm", "GroupNorm", "optimize", "OptimizeReport", "gncpu_backend"]
