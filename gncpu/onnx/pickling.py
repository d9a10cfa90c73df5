"""How an InferenceSession pickles: as its model's serialized bytes and the
keyword arguments its constructor was given; unpickling builds a new session
from them. The plan (closures over NumPy arrays, derived weight caches, thread
pools) is never pickled: rebuilding it costs one model load, and the rebuilt
session computes bit-identical results (see docs/onnx.md, "Determinism").

Ray, Dask and multiprocessing's spawn context ship objects this way.
"""
import os

import onnx


class ModelSource:
    """What a session needs to hand its model on: the bytes, or for a model
    loaded from a file only the path (so a session does not hold a second copy
    of the weights), read again when pickled."""

    def __init__(self, model):
        self._bytes = self._path = self._signature = None
        if isinstance(model, onnx.ModelProto):
            # A snapshot: the caller may change the proto after building the session.
            self._bytes = model.SerializeToString()
        elif isinstance(model, (bytes, bytearray, memoryview)):
            self._bytes = bytes(model)  # the very object for bytes; a copy of a mutable buffer
        else:
            self._path = os.path.abspath(os.fspath(model))
            self._signature = _file_signature(self._path)

    def model_bytes(self) -> bytes:
        if self._bytes is not None:
            return self._bytes
        if _file_signature(self._path) != self._signature:
            raise RuntimeError(f"cannot pickle the session: its model file {self._path!r} changed (or "
                               f"vanished) after the session was built from it; build a new session")
        from .session import load_model_proto

        # Through the loader: a model keeping its tensors in external files gets them inlined.
        return load_model_proto(self._path).SerializeToString()


def _file_signature(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


def rebuild_session(model_bytes, options):
    """Unpickling: a new session from the model's bytes and the constructor's keyword arguments."""
    from .session import InferenceSession

    return InferenceSession(model_bytes, **options)
