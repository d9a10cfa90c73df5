"""gncpu: fast, accurate Group Normalization inference on CPUs.

    import gncpu
    y = gncpu.group_norm(x, num_groups=32, weight=gamma, bias=beta)

Importing gncpu starts no threads, compiles nothing and imports no optional
dependency (onnx, CuPy, torch).
"""
__version__ = "0.1.0"

from ._config import get_num_threads, set_num_threads, show_config  # noqa: E402
from .functional import group_norm  # noqa: E402
from .modules import GroupNorm  # noqa: E402
from . import reference  # noqa: E402

__all__ = ["group_norm", "GroupNorm", "set_num_threads", "get_num_threads", "show_config",
           "reference", "__version__"]
