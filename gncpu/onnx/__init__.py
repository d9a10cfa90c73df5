"""ONNX front end: load a model, fuse its GroupNorm patterns, run it natively.

    import gncpu.onnx
    session = gncpu.onnx.InferenceSession("unet.onnx")
    (y,) = session.run(None, {"sample": x})
    print(session.summary())

Requires the `onnx` package (gncpu's `onnx` extra: onnx, threadpoolctl, scipy).
"""
try:
    import onnx as _onnx  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without onnx installed
    raise ImportError(
        'gncpu.onnx needs the "onnx" package, which is not installed; '
        'install it with: pip install onnx threadpoolctl scipy (the onnx extra)') from exc

from .errors import InvalidModelError, NodeExecutionError  # noqa: E402
from .session import EngineFallbackWarning, FallbackWarning, InferenceSession, NodeArg  # noqa: E402

__all__ = ["InferenceSession", "NodeArg", "InvalidModelError", "NodeExecutionError", "FallbackWarning",
           "EngineFallbackWarning"]
