"""Per-run settings that ops read while a session runs (thread count).

Ops stay plain functions of (inputs, attributes); what the caller chose for the
whole run, such as InferenceSession(num_threads=...), reaches them here.
`gncpu.group_norm(..., num_threads=context.num_threads())` is how a GN op honours it.
"""
import contextlib
import contextvars

_num_threads = contextvars.ContextVar("gncpu_onnx_num_threads", default=None)


def num_threads():
    """The thread count the running session asked for, or None (library default)."""
    return _num_threads.get()


@contextlib.contextmanager
def using_threads(count):
    token = _num_threads.set(count)
    try:
        yield
    finally:
        _num_threads.reset(token)
