"""Split an op's work over a few threads: NumPy's matmul and copies release
the GIL, so independent column blocks of a convolution run concurrently.

Why not let BLAS thread each product? OpenBLAS's threads spin-wait at every
call; on a machine where other processes hold cores (or for many small
products, as in a conv with groups) that costs more than the work. Tasks
here are pulled from a shared counter, so a thread that gets descheduled
delays only its current block, and the caller always works too.
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import context

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(workers):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gncpu-onnx")
            _pool_size = workers
        return _pool


def _forget_pool_in_child():
    """A forked child inherits the executor but not its worker threads: work
    submitted to it would wait forever. The child starts a pool of its own
    when it first needs one (and a fresh lock: another thread may have held
    the parent's at the fork)."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def split_count(work_items, minimum_per_thread=1):
    """How many threads to use for `work_items` units (1 when not in a session run)."""
    threads = context.op_threads()
    return max(1, min(threads, work_items // max(minimum_per_thread, 1)))


def run_tasks(tasks, threads):
    """Run the zero-argument callables `tasks` on up to `threads` threads (the
    caller included); re-raises the first exception."""
    if threads <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    counter = itertools.count()
    errors = []

    def worker():
        while not errors:
            index = next(counter)
            if index >= len(tasks):
                return
            try:
                tasks[index]()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)
                return

    helpers = [_executor(threads - 1).submit(worker) for _ in range(min(threads, len(tasks)) - 1)]
    worker()
    for future in helpers:
        future.result()
    if errors:
        raise errors[0]
