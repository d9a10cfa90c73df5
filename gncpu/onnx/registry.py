"""Opset-keyed registry of native op implementations.

    @register("Conv", since=11)
    def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, ...):

Inputs arrive positionally (None for an absent optional input), attributes as
keyword arguments carrying the spec's defaults; an op returns an array or a
tuple of arrays. `lookup` picks the highest `since` not above the model's opset
for that domain, the way ONNX versions ops: an op's behaviour at opset v is the
one defined by its latest version <= v.

An op that must know how many outputs the node asks for (Split before opset 18,
Dropout's mask, ...) registers with `wants_output_count=True` and receives it as
the keyword `_num_outputs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class OpEntry:
    op_type: str
    domain: str
    since: int
    fn: Callable
    wants_output_count: bool = False
    supports: Optional[Callable] = None   # supports(node) -> bool; False: the node runs via fallback


_REGISTRY: Dict[Tuple[str, str], List[OpEntry]] = {}


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op_type: str, since: int, domain: str = "", *, wants_output_count: bool = False,
             supports: Optional[Callable] = None):
    """Register `fn` as the implementation of `domain::op_type` from opset `since` on.

    `supports(node) -> bool`, if given, says whether this implementation
    covers that node (e.g. its Resize mode, or how many outputs it asks for);
    nodes it does not cover run through the onnx.reference fallback instead."""
    if not isinstance(since, int) or since < 1:
        raise ValueError(f"register({op_type!r}): since={since!r} must be an opset version >= 1")

    def decorator(fn: Callable) -> Callable:
        entries = _REGISTRY.setdefault((_domain(domain), op_type), [])
        entries[:] = [e for e in entries if e.since != since]  # re-registration replaces
        entries.append(OpEntry(op_type, _domain(domain), since, fn, wants_output_count, supports))
        entries.sort(key=lambda e: e.since)
        return fn

    return decorator


def lookup_entry(op_type: str, domain: str, opset_version: int) -> Optional[OpEntry]:
    best = None
    for entry in _REGISTRY.get((_domain(domain), op_type), ()):
        if entry.since <= opset_version:
            best = entry
    return best


def lookup(op_type: str, domain: str, opset_version: int) -> Optional[Callable]:
    """The implementation of `domain::op_type` at `opset_version`, or None."""
    entry = lookup_entry(op_type, domain, opset_version)
    return entry.fn if entry is not None else None


def supported() -> List[Tuple[str, str, int]]:
    """(domain, op_type, since) for every registered implementation, sorted."""
    return sorted((e.domain, e.op_type, e.since) for entries in _REGISTRY.values() for e in entries)


def supported_op_types(domain: str = "") -> List[str]:
    return sorted({op for (d, op) in _REGISTRY if d == _domain(domain)})
