"""Thread policy and build/run-time configuration report."""
import os
import platform
import sys

from . import _fork
from .kernel import LEVELS, kernels, _baseline, omp_spin_setting

__all__ = ["set_num_threads", "get_num_threads", "resolve_threads", "show_config", "config"]

# Each thread gets at least this many elements (so inputs under twice this
# run on one thread): an OpenMP fork/join costs a few microseconds, more than
# the work it would split. On a many-core machine a medium tensor thus uses a
# few threads, not all of them.
MIN_ELEMENTS_PER_THREAD = 1 << 14

_num_threads = None  # set by set_num_threads(); None = follow OpenMP


def _count(n, name):
    """Turn a user thread count into a positive count (negative counts back
    from the maximum: -1 = all, -2 = all but one)."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be an int or None, got {type(n).__name__} {n!r}")
    n = n.__index__()
    if n == 0:
        raise ValueError(f"{name}=0 is not a thread count: use a positive count, or -1 for all cores")
    if n < 0:
        avail = kernels.max_threads()
        count = avail + 1 + n
        if count < 1:
            raise ValueError(f"{name}={n} leaves no thread: only {avail} available")
        return count
    return n


def set_num_threads(n):
    """Default thread count for gncpu calls. None restores the OpenMP default
    (OMP_NUM_THREADS, or what threadpoolctl's limit sets)."""
    global _num_threads
    _num_threads = None if n is None else _count(n, "n")


def get_num_threads():
    """Threads a gncpu call uses by default (large inputs)."""
    return _num_threads if _num_threads is not None else kernels.max_threads()


def resolve_threads(num_threads, elements):
    """Threads for one call: the per-call value, else the default, capped so
    each thread has MIN_ELEMENTS_PER_THREAD elements (results do not depend
    on the count), and 1 in a child forked after OpenMP ran (see _fork.py)."""
    if num_threads is not None:
        threads = _count(num_threads, "num_threads")
    elif elements < 2 * MIN_ELEMENTS_PER_THREAD:
        return 1  # without asking OpenMP: this is the tiny-input fast path
    else:
        threads = get_num_threads()
    threads = max(1, min(threads, elements // MIN_ELEMENTS_PER_THREAD))
    if threads > 1:
        if _fork.team_unusable():
            return 1
        _fork.note_team_used()
    return threads


def config():
    """What was built and what runs, as a dict (see show_config)."""
    from . import __version__

    info = kernels.build_info()
    cpu_level = _baseline.cpu_level()
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "compiler": info["compiler"],
        "openmp": info["openmp"],
        "threads": get_num_threads(),
        "omp_max_threads": kernels.max_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "fork": _fork.describe(),
        "omp_idle_spin": omp_spin_setting(),
        "kernel_variant": info["variant"],
        "cpu_supports": LEVELS[cpu_level] if cpu_level < len(LEVELS) else LEVELS[-1],
        "cflags": info["cflags"],
        "min_elements_per_thread": MIN_ELEMENTS_PER_THREAD,
        "chunk_elements": info["chunk"],
        "stream_stores_from": stream_setting(),
    }


def stream_setting():
    """From which output size the NCHW apply stores past the cache."""
    threshold = kernels.stream_threshold()
    cache = kernels.last_level_cache_bytes() / 2**20
    if threshold < 0:
        return f"never (last-level cache {cache:.0f} MiB)"
    return f"{threshold / 2**20:.1f} MiB of output (last-level cache {cache:.0f} MiB)"


def show_config():
    """Print the configuration: version, compiler, OpenMP, threads, SIMD
    variant, and what the CUDA path would use (imports CuPy if installed)."""
    from . import cuda

    for key, value in {**config(), **cuda.config()}.items():
        print(f"{key:>24}: {value}")
