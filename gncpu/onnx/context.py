"""Per-run settings that ops read while a session runs (thread count).

Ops stay plain functions of (inputs, attributes); what the caller chose for the
whole run, such as InferenceSession(num_threads=...), reaches them here.
`gncpu.group_norm(..., num_threads=context.num_threads())` is how a GN op honours it.

`op_threads()` is how many threads an op may split its own work over. It is
above 1 only while the session holds BLAS to one thread: splitting a matmul
over our threads while BLAS also threads would oversubscribe the cores.
"""
import contextvars

_num_threads = contextvars.ContextVar("gncpu_onnx_num_threads", default=None)
_op_threads = contextvars.ContextVar("gncpu_onnx_op_threads", default=1)


def num_threads():
    """The thread count the running session asked for, or None (library default)."""
    return _num_threads.get()


def op_threads():
    """Threads an op may split its work over (1 outside a session run)."""
    return _op_threads.get()


class using_threads:
    """`with using_threads(count, op_split):` sets both for the block.

    A class rather than a generator context manager: it runs around every
    session run and every small GroupNorm of the onnxruntime engine, and costs
    a third as much."""
    __slots__ = ("_count", "_split", "_tokens")

    def __init__(self, count, op_split=1):
        self._count = count
        self._split = max(int(op_split), 1)

    def __enter__(self):
        self._tokens = (_num_threads.set(self._count), _op_threads.set(self._split))
        return self

    def __exit__(self, *exc):
        count_token, split_token = self._tokens
        _op_threads.reset(split_token)
        _num_threads.reset(count_token)
        return False
