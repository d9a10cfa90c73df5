"""The compiled kernels, one build per instruction-set level.

`kernels` is the module for the best level this CPU supports; set
GNCPU_KERNEL=baseline|avx2|avx512 to force one (tests run every variant).
"""
import importlib
import os

try:
    from . import _baseline
except ImportError as exc:  # the source tree without its compiled kernels
    raise ImportError(
        f"gncpu's compiled kernels are missing from {__path__[0]}: this looks like the "
        "source tree, not an installed gncpu. Run from another directory (or use the "
        "`gncpu` command), or build in place: python setup.py build_ext --inplace") from exc

LEVELS = ("baseline", "avx2", "avx512")


def available_variants():
    """Variants that were compiled and that this CPU can run, slowest first."""
    found = []
    for level, name in enumerate(LEVELS):
        if level > _baseline.cpu_level():
            break
        try:
            found.append((name, importlib.import_module(f"{__name__}._{name}")))
        except ImportError:  # not built on this platform (e.g. non-x86)
            pass
    return found


def _select():
    variants = dict(available_variants())
    wanted = os.environ.get("GNCPU_KERNEL")
    if wanted:
        if wanted not in variants:
            raise ImportError(f"GNCPU_KERNEL={wanted!r}: available variants on this CPU are {sorted(variants)}")
        return variants[wanted]
    return list(variants.values())[-1]


kernels = _select()
