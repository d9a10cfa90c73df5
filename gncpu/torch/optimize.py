"""optimize(model): gncpu GroupNorms in place of torch's, SiLU fused where the code allows."""
import dataclasses
import logging

import torch

from . import fusion
from .module import GroupNorm

__all__ = ["optimize", "OptimizeReport"]

log = logging.getLogger("gncpu.torch")


@dataclasses.dataclass
class OptimizeReport:
    """What optimize() changed: qualified module names."""
    replaced: list = dataclasses.field(default_factory=list)   # GroupNorm modules
    fused: list = dataclasses.field(default_factory=list)      # "block: norm1+nonlinearity"
    skipped: list = dataclasses.field(default_factory=list)    # "name: why"

    @property
    def fused_count(self):
        return len(self.fused)

    def __str__(self):
        lines = [f"gncpu.torch.optimize: {len(self.replaced)} GroupNorm replaced, "
                 f"{len(self.fused)} activation(s) fused"]
        lines += [f"  fused {site}" for site in self.fused]
        lines += [f"  skipped {item}" for item in self.skipped]
        return "\n".join(lines)


def optimize(model, *, fuse=True):
    """Replace every torch.nn.GroupNorm in `model` (in place) by
    gncpu.torch.GroupNorm, sharing its parameters, and fuse the activation
    that follows a norm where the module's forward code shows it is safe
    (see gncpu.torch.fusion). Returns the model; the report is
    `model.gncpu_report` (an OptimizeReport) and is logged to "gncpu.torch".

    Subclasses of torch.nn.GroupNorm (their forward may differ) are left
    alone and listed in report.skipped.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"optimize expects a torch.nn.Module, got {type(model).__name__}")
    report = OptimizeReport()
    replacements = {}  # id(old) -> new: a module shared by two parents stays shared
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in list(parent._modules.items()):
            if child is None or not isinstance(child, torch.nn.GroupNorm) or isinstance(child, GroupNorm):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not torch.nn.GroupNorm:
                report.skipped.append(f"{name}: {type(child).__name__} subclasses GroupNorm")
                continue
            if id(child) not in replacements:
                replacements[id(child)] = GroupNorm.from_module(child)
                report.replaced.append(name)
            parent._modules[child_name] = replacements[id(child)]
    if isinstance(model, torch.nn.GroupNorm) and type(model) is torch.nn.GroupNorm:
        report.skipped.append("(root): a bare GroupNorm cannot be replaced in place: "
                              "use gncpu.torch.GroupNorm.from_module")
    if fuse:
        _fuse(model, report)
    object.__setattr__(model, "gncpu_report", report)
    log.info("%s", report)
    return model


def _fuse(model, report):
    for name, module in model.named_modules():
        if isinstance(module, GroupNorm) or not module._modules:
            continue
        forward, pairs = fusion.fused_forward(type(module))
        if forward is None:
            continue
        live = [(norm, act) for norm, act in pairs
                if fusion.can_fuse(getattr(module, norm, None), getattr(module, act, None))]
        if not live:
            continue
        fusion.install(module, forward)
        prefix = f"{name}: " if name else ""
        report.fused += [f"{prefix}{norm}+{act}" for norm, act in live]
