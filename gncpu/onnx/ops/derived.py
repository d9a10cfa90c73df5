"""Values derived from constant weights -- a float32 copy of float16 weights,
Winograd filter transforms -- computed once per weight instead of every run.

Entries are keyed by the identity of a read-only array (the session makes
every initializer read-only at load) and dropped when the array is freed. A
writable array, such as weights a caller feeds as a graph input, is never
cached: it could change between runs while keeping its identity.
"""
import weakref

import numpy as np

_cache = {}  # (id(array), tag) -> (weak reference to array, derived value)


def derived(array: np.ndarray, tag, compute):
    """compute(array), cached per (array, tag) when `array` is read-only.
    Cached values are made read-only too, so they can key further derivations."""
    if array.flags.writeable:
        return compute(array)
    key = (id(array), tag)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    value = compute(array)
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    try:
        ref = weakref.ref(array, lambda _, key=key: _cache.pop(key, None))
    except TypeError:  # not weak-referenceable: do not cache
        return value
    _cache[key] = (ref, value)
    return value


def as_dtype(array, dtype):
    """`array` in `dtype`, the conversion cached for read-only arrays."""
    if array is None or array.dtype == dtype:
        return array
    return derived(array, ("astype", np.dtype(dtype).str), lambda a: a.astype(dtype))
