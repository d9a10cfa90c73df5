"""GroupNorm: a callable holding num_groups, eps and the affine parameters."""
import numpy as np

from .functional import _check_activation, group_norm

__all__ = ["GroupNorm"]


class GroupNorm:
    """Like torch.nn.GroupNorm: `GroupNorm(32, 320)(x)`.

    weight (ones) and bias (zeros) are float32 arrays of shape (num_channels,)
    that may be replaced or modified in place; affine=False holds none.
    activation (None, "silu", "relu", "gelu", "gelu_tanh") is fused into the
    normalization; channels_last=True takes (N, *spatial, C) inputs.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, activation=None,
                 channels_last=False):
        if isinstance(num_channels, bool) or not hasattr(num_channels, "__index__") \
                or num_channels.__index__() <= 0:
            raise ValueError(f"num_channels={num_channels!r} must be a positive int")
        if isinstance(num_groups, bool) or not hasattr(num_groups, "__index__") \
                or num_groups.__index__() <= 0 or num_channels % num_groups:
            raise ValueError(f"num_groups={num_groups!r} must be a positive int dividing "
                             f"num_channels={num_channels}")
        self.num_groups = num_groups.__index__()
        self.num_channels = num_channels.__index__()
        self.eps = eps
        self.affine = affine
        _check_activation(activation)
        self.activation = activation
        self.channels_last = bool(channels_last)
        self.weight = np.ones(self.num_channels, np.float32) if affine else None
        self.bias = np.zeros(self.num_channels, np.float32) if affine else None

    def __call__(self, input, *, skip=None, skip_bias=None, return_sum=False, out=None,
                 num_threads=None):
        shape = getattr(input, "shape", None)
        if shape is not None and len(shape) >= 2:
            channels = shape[-1] if self.channels_last else shape[1]
            if channels != self.num_channels:
                raise ValueError(f"input has C={channels} channels (shape {tuple(shape)}), "
                                 f"this GroupNorm expects num_channels={self.num_channels}")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                          activation=self.activation, skip=skip, skip_bias=skip_bias,
                          return_sum=return_sum, channels_last=self.channels_last, out=out,
                          num_threads=num_threads)

    forward = __call__

    def __repr__(self):
        extra = f", activation={self.activation!r}" if self.activation else ""
        extra += ", channels_last=True" if self.channels_last else ""
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}{extra})")
