"""GroupNorm: a callable holding num_groups, eps and the affine parameters."""
import numpy as np

from .functional import group_norm

__all__ = ["GroupNorm"]


class GroupNorm:
    """Like torch.nn.GroupNorm: `GroupNorm(32, 320)(x)`.

    weight (ones) and bias (zeros) are float32 arrays of shape (num_channels,)
    that may be replaced or modified in place; affine=False holds none.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
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
        self.weight = np.ones(self.num_channels, np.float32) if affine else None
        self.bias = np.zeros(self.num_channels, np.float32) if affine else None

    def __call__(self, input, *, out=None, num_threads=None):
        shape = getattr(input, "shape", None)
        if shape is not None and len(shape) >= 2 and shape[1] != self.num_channels:
            raise ValueError(f"input has C={shape[1]} channels (shape {tuple(shape)}), "
                             f"this GroupNorm expects num_channels={self.num_channels}")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                          out=out, num_threads=num_threads)

    forward = __call__

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine})")
