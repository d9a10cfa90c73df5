"""gncpu.torch.GroupNorm: torch.nn.GroupNorm running torch.ops.gncpu.group_norm."""
import torch

from ._op import check_activation, group_norm

__all__ = ["GroupNorm"]


class GroupNorm(torch.nn.GroupNorm):
    """torch.nn.GroupNorm with an optional fused activation.

    Same constructor (plus activation: None, "silu", "relu", "gelu",
    "gelu_tanh"), same parameters and state_dict keys. forward(x,
    activation=...) overrides the module's activation for one call: that is
    how optimize() fuses a SiLU at one call site while the module stays
    plain elsewhere.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, activation=None,
                 device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        check_activation(activation)
        self.activation = activation

    @classmethod
    def from_module(cls, module, activation=None):
        """A GroupNorm sharing `module`'s parameters (the same Parameter
        objects: tied weights and optimizers still see them) and mode."""
        if not isinstance(module, torch.nn.GroupNorm):
            raise TypeError(f"from_module expects a torch.nn.GroupNorm, got {type(module).__name__}")
        new = cls(module.num_groups, module.num_channels, module.eps, module.affine,
                  activation=activation, device="meta")
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.train(module.training)
        return new

    def forward(self, input, activation=...):
        activation = self.activation if activation is ... else activation
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, activation)

    def extra_repr(self):
        extra = super().extra_repr()
        return extra if self.activation is None else f"{extra}, activation={self.activation!r}"

